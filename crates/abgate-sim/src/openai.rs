//! OpenAI wire types: the few request fields the simulator reads, and its responses.
//!
//! Request parsing is allocation-light: texts are never copied, only their words
//! counted (and, for embedding inputs, hashed) while serde walks the body.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::words::{count_words, Fnv};

/// The fields of a generation request the simulator uses; everything else, including
/// `model`, is skipped without being materialised.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Request {
    pub(crate) stream: Option<bool>,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) max_completion_tokens: Option<u32>,
    /// Chat messages, reduced to the words of their contents.
    pub(crate) messages: Option<WordCount<Messages>>,
    /// Completion prompt, reduced to its token estimate.
    pub(crate) prompt: Option<WordCount<Prompt>>,
    /// Embedding inputs.
    pub(crate) input: Option<EmbeddingInputs>,
    pub(crate) encoding_format: Option<EncodingFormat>,
}

/// `stream_options` of a streaming request.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    pub(crate) include_usage: Option<bool>,
}

/// How `/v1/embeddings` encodes vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EncodingFormat {
    Float,
    Base64,
}

/// A token estimate of some JSON value, with `K` telling which shape is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WordCount<K> {
    pub(crate) words: u32,
    kind: std::marker::PhantomData<K>,
}

impl<K> WordCount<K> {
    fn new(words: u32) -> Self {
        Self {
            words,
            kind: std::marker::PhantomData,
        }
    }
}

/// Shape marker: `messages`, an array of objects whose `content` is a string or an
/// array of parts with `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Messages {}

/// Shape marker: `prompt`, a string, an array of strings, an array of token ids or an
/// array of such arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prompt {}

/// Shape marker: one chat message object.
enum Message {}

/// Shape marker: a message `content`.
enum Content {}

/// Shape marker: one content part object.
enum Part {}

/// Shape marker: one element of a `prompt` array.
enum PromptItem {}

fn saturating_sum(a: u32, b: u32) -> u32 {
    a.saturating_add(b)
}

/// Counts the elements of an array without looking at them.
fn count_elements<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<u32, A::Error> {
    let mut n = 0u32;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// Sums the estimates of the elements of an array.
fn sum_elements<'de, K, A>(mut seq: A) -> Result<u32, A::Error>
where
    A: SeqAccess<'de>,
    WordCount<K>: Deserialize<'de>,
{
    let mut n = 0u32;
    while let Some(item) = seq.next_element::<WordCount<K>>()? {
        n = saturating_sum(n, item.words);
    }
    Ok(n)
}

/// Object keys the simulator reads; any other key is skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Content,
    Text,
    #[serde(other)]
    Other,
}

/// Sums the estimates of the values under `wanted` in an object, skipping other keys.
fn sum_field<'de, K, A>(mut map: A, wanted: &Key) -> Result<u32, A::Error>
where
    A: MapAccess<'de>,
    WordCount<K>: Deserialize<'de>,
{
    let mut n = 0u32;
    while let Some(key) = map.next_key::<Key>()? {
        let is_wanted = matches!(
            (&key, wanted),
            (Key::Content, Key::Content) | (Key::Text, Key::Text)
        );
        if is_wanted {
            n = saturating_sum(n, map.next_value::<WordCount<K>>()?.words);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(n)
}

/// Implements `Deserialize` for `WordCount<$kind>` with a visitor body.
macro_rules! word_count_visitor {
    ($kind:ty, $expecting:literal, { $($body:tt)* }) => {
        impl<'de> Deserialize<'de> for WordCount<$kind> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = u32;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    $($body)*
                }
                deserializer.deserialize_any(V).map(WordCount::new)
            }
        }
    };
}

word_count_visitor!(Messages, "an array of messages", {
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u32, A::Error> {
        sum_elements::<Message, A>(seq)
    }
});

word_count_visitor!(Message, "a message object", {
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u32, A::Error> {
        sum_field::<Content, A>(map, &Key::Content)
    }
});

word_count_visitor!(Content, "a string or an array of content parts", {
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        Ok(count_words(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
        Ok(0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u32, A::Error> {
        sum_elements::<Part, A>(seq)
    }
});

word_count_visitor!(Part, "a content part object", {
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u32, A::Error> {
        sum_field::<Content, A>(map, &Key::Text)
    }
});

word_count_visitor!(Prompt, "a string or an array of strings or tokens", {
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        Ok(count_words(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u32, A::Error> {
        sum_elements::<PromptItem, A>(seq)
    }
});

word_count_visitor!(
    PromptItem,
    "a string, a token id or an array of token ids",
    {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            Ok(count_words(v))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<u32, E> {
            Ok(1)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<u32, E> {
            Ok(1)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u32, A::Error> {
            count_elements(seq)
        }
    }
);

/// One embedding input, reduced to what the response needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EmbeddingInput {
    /// Hash of the input's content: the vector is a function of it.
    pub(crate) hash: u64,
    /// Token estimate of the input.
    pub(crate) tokens: u32,
}

/// The `input` of `/v1/embeddings`: a string, an array of strings, an array of
/// token ids (one input) or an array of token-id arrays.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EmbeddingInputs(pub(crate) Vec<EmbeddingInput>);

fn text_input(v: &str) -> EmbeddingInput {
    let mut h = Fnv::default();
    h.write(b"s");
    h.write(v.as_bytes());
    EmbeddingInput {
        hash: h.finish(),
        tokens: count_words(v),
    }
}

/// Hashes a token-id array, counting its elements.
fn token_input<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<EmbeddingInput, A::Error> {
    let mut h = Fnv::default();
    h.write(b"t");
    let mut tokens = 0u32;
    while let Some(id) = seq.next_element::<i64>()? {
        h.write(&id.to_le_bytes());
        tokens = tokens.saturating_add(1);
    }
    Ok(EmbeddingInput {
        hash: h.finish(),
        tokens,
    })
}

/// One element of an `input` array.
enum InputElement {
    Text(EmbeddingInput),
    Token(i64),
    Tokens(EmbeddingInput),
}

impl<'de> Deserialize<'de> for InputElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputElement;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputElement, E> {
                Ok(InputElement::Text(text_input(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InputElement, E> {
                Ok(InputElement::Token(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InputElement, E> {
                i64::try_from(v)
                    .map(InputElement::Token)
                    .map_err(|_| E::custom("token id out of range"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<InputElement, A::Error> {
                token_input(seq).map(InputElement::Tokens)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for EmbeddingInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EmbeddingInputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string, an array of strings, an array of tokens or an array of token arrays",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EmbeddingInputs, E> {
                Ok(EmbeddingInputs(vec![text_input(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmbeddingInputs, A::Error> {
                let mut inputs = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                // Token ids directly in the array form a single input.
                let mut tokens: Option<(Fnv, u32)> = None;
                while let Some(element) = seq.next_element::<InputElement>()? {
                    match element {
                        InputElement::Text(input) | InputElement::Tokens(input) => {
                            inputs.push(input)
                        }
                        InputElement::Token(id) => {
                            let (h, n) = tokens.get_or_insert_with(|| {
                                let mut h = Fnv::default();
                                h.write(b"t");
                                (h, 0)
                            });
                            h.write(&id.to_le_bytes());
                            *n = n.saturating_add(1);
                        }
                    }
                }
                match tokens {
                    None => Ok(EmbeddingInputs(inputs)),
                    Some((h, tokens)) if inputs.is_empty() => {
                        Ok(EmbeddingInputs(vec![EmbeddingInput {
                            hash: h.finish(),
                            tokens,
                        }]))
                    }
                    Some(_) => Err(de::Error::custom(
                        "input mixes token ids with strings or token arrays",
                    )),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `usage` of a completion.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
}

impl Usage {
    pub(crate) fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// A non-streaming `/v1/chat/completions` response.
#[derive(Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [ChatChoice<'a>; 1],
    pub(crate) usage: Usage,
}

/// The one choice of a [`ChatCompletion`].
#[derive(Serialize)]
pub(crate) struct ChatChoice<'a> {
    pub(crate) index: u32,
    pub(crate) message: ChatMessage<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: &'static str,
}

/// An assistant message.
#[derive(Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
    pub(crate) refusal: Option<()>,
}

/// A non-streaming `/v1/completions` response.
#[derive(Serialize)]
pub(crate) struct TextCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [TextChoice<'a>; 1],
    pub(crate) usage: Usage,
}

/// The one choice of a [`TextCompletion`].
#[derive(Serialize)]
pub(crate) struct TextChoice<'a> {
    pub(crate) text: &'a str,
    pub(crate) index: u32,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: &'static str,
}

/// A `/v1/embeddings` response.
#[derive(Serialize)]
pub(crate) struct EmbeddingList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<Embedding>,
    pub(crate) model: &'a str,
    pub(crate) usage: EmbeddingUsage,
}

/// One vector of an [`EmbeddingList`].
#[derive(Serialize)]
pub(crate) struct Embedding {
    pub(crate) object: &'static str,
    pub(crate) index: u32,
    pub(crate) embedding: EmbeddingVector,
}

/// A vector as floats or as base64 of little-endian `f32`s.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

/// `usage` of an embeddings response.
#[derive(Serialize)]
pub(crate) struct EmbeddingUsage {
    pub(crate) prompt_tokens: u32,
    pub(crate) total_tokens: u32,
}

/// The `/v1/models` response.
#[derive(Serialize)]
pub(crate) struct ModelList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: [Model<'a>; 1],
}

/// One model of a [`ModelList`].
#[derive(Serialize)]
pub(crate) struct Model<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'static str,
}

/// OpenAI's error envelope.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// The JSON of an OpenAI error.
pub(crate) fn error_json(message: &str, kind: &str, param: Option<&str>) -> Vec<u8> {
    to_json(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code: None,
        },
    })
}

/// Serialises a response type. These types hold only strings, numbers and finite floats,
/// which always serialise.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, value).expect("response types always serialise");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_chat_fields() {
        let r = parse(
            r#"{"model":"x","stream":true,"stream_options":{"include_usage":true},
                "max_completion_tokens":5,"temperature":0.2,
                "messages":[{"role":"system","content":"be brief"},
                            {"role":"user","name":"u","content":[{"type":"text","text":"hello big world"},
                                                     {"type":"image_url","image_url":{"url":"x y z"}}]},
                            {"role":"assistant","content":null,"tool_calls":[]}]}"#,
        );
        assert_eq!(r.stream, Some(true));
        assert_eq!(r.stream_options.unwrap().include_usage, Some(true));
        assert_eq!(r.max_completion_tokens, Some(5));
        assert_eq!(r.messages.unwrap().words, 5);
    }

    #[test]
    fn reads_prompt_shapes() {
        assert_eq!(parse(r#"{"prompt":"a b c"}"#).prompt.unwrap().words, 3);
        assert_eq!(parse(r#"{"prompt":["a b","c"]}"#).prompt.unwrap().words, 3);
        assert_eq!(parse(r#"{"prompt":[1,2,3,4]}"#).prompt.unwrap().words, 4);
        assert_eq!(parse(r#"{"prompt":[[1,2],[3]]}"#).prompt.unwrap().words, 3);
        assert_eq!(
            parse(r#"{"prompt":"esc\"aped\u0020word"}"#)
                .prompt
                .unwrap()
                .words,
            2
        );
    }

    #[test]
    fn reads_embedding_inputs() {
        let one = parse(r#"{"input":"hello world"}"#).input.unwrap();
        assert_eq!(one.0.len(), 1);
        assert_eq!(one.0[0].tokens, 2);
        let many = parse(r#"{"input":["hello world","x"],"encoding_format":"base64"}"#);
        assert_eq!(many.encoding_format, Some(EncodingFormat::Base64));
        let many = many.input.unwrap();
        assert_eq!(many.0.len(), 2);
        assert_eq!(many.0[0], one.0[0], "same text, same hash");
        let tokens = parse(r#"{"input":[1,2,3]}"#).input.unwrap();
        assert_eq!(tokens.0.len(), 1);
        assert_eq!(tokens.0[0].tokens, 3);
        let nested = parse(r#"{"input":[[1,2,3],[4]]}"#).input.unwrap();
        assert_eq!(nested.0.len(), 2);
        assert_eq!(nested.0[0], tokens.0[0]);
    }

    #[test]
    fn rejects_wrong_shapes() {
        for json in [
            r#"{"messages":"hi"}"#,
            r#"{"messages":[1]}"#,
            r#"{"prompt":{"a":1}}"#,
            r#"{"input":[1,"a"]}"#,
            r#"{"max_tokens":"5"}"#,
            r#"{"encoding_format":"int8"}"#,
            r#"[1]"#,
        ] {
            assert!(serde_json::from_str::<Request>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn error_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_json("bad", "invalid_request_error", Some("x"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"bad","type":"invalid_request_error","param":"x","code":null}})
        );
    }
}
