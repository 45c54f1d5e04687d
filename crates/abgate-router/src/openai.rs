//! What routing reads of an OpenAI request body: its `model`, read the way the backend
//! will read it, or refused where the two could disagree.

use http::HeaderValue;

/// The longest `model` routed on: it is matched as a header value, and no model name
/// comes near it.
pub const MAX_MODEL_LEN: usize = 1024;

/// Why a body's `model` cannot be routed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelError {
    /// The key comes more than once: JSON parsers differ on which one counts.
    Repeated,
    /// Longer than [`MAX_MODEL_LEN`].
    TooLong,
    /// Control characters, which no header can carry.
    Unprintable,
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Repeated => {
                f.write_str("the request body has the key \"model\" more than once")
            }
            ModelError::TooLong => write!(f, "the model name is longer than {MAX_MODEL_LEN} bytes"),
            ModelError::Unprintable => f.write_str("the model name contains control characters"),
        }
    }
}

impl std::error::Error for ModelError {}

/// The OpenAI request's `model`, as a header value: `None` when the body is not a JSON
/// object or its `model` is not a string. A body that names `model` twice is refused
/// (parsers differ on which one counts, so the backend could read another model than the
/// one routed on), and so is a `model` no header could carry.
pub fn model_of(body: &[u8]) -> Result<Option<HeaderValue>, ModelError> {
    let Ok(ModelScan { model, times }) = serde_json::from_slice::<ModelScan>(body) else {
        return Ok(None);
    };
    if times > 1 {
        return Err(ModelError::Repeated);
    }
    let Some(model) = model else { return Ok(None) };
    if model.len() > MAX_MODEL_LEN {
        return Err(ModelError::TooLong);
    }
    HeaderValue::from_str(&model)
        .map(Some)
        .map_err(|_| ModelError::Unprintable)
}

/// A JSON object read for its top-level `model`: the last string value, and how many
/// times the key came. Other members are skipped without being built.
struct ModelScan {
    model: Option<String>,
    times: u32,
}

impl<'de> serde::Deserialize<'de> for ModelScan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = ModelScan;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ModelScan, A::Error> {
                let mut scan = ModelScan {
                    model: None,
                    times: 0,
                };
                while let Some(IsModel(is_model)) = map.next_key()? {
                    if is_model {
                        scan.times += 1;
                        scan.model = match map.next_value()? {
                            serde_json::Value::String(model) => Some(model),
                            _ => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(scan)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// An object key, compared with `model` as it is read (escapes decoded, nothing kept).
struct IsModel(bool);

impl<'de> serde::Deserialize<'de> for IsModel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = IsModel;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsModel, E> {
                Ok(IsModel(key == "model"))
            }
        }
        deserializer.deserialize_str(Key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_read_from_the_json_body() {
        assert_eq!(
            model_of(br#"{"messages":[],"model":"llama-3.1-8b"}"#).expect("read"),
            Some(HeaderValue::from_static("llama-3.1-8b"))
        );
        assert_eq!(model_of(b"not json").expect("read"), None);
        assert_eq!(model_of(br#"{"model":7}"#).expect("read"), None);
        assert_eq!(
            model_of(br#"{"m":{"model":"x"},"model":"y"}"#).expect("read"),
            Some(HeaderValue::from_static("y"))
        );
    }

    #[test]
    fn a_model_named_twice_is_refused_however_it_is_spelled() {
        assert!(model_of(br#"{"model":"a","x":1,"model":"b"}"#).is_err());
        assert!(model_of(br#"{"model":"a","mod\u0065l":"b"}"#).is_err());
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert!(model_of(long.as_bytes()).is_err());
    }
}
