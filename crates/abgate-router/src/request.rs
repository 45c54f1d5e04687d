//! The parts of a request that routing looks at, and Istio's match semantics over them.

use std::net::IpAddr;

use abgate_config::model::{HashKey, KeySource, MatchBlock, StringMatcher};
use http::HeaderMap;

use crate::balancer::hash64;

/// The `Via` entry abgate adds to what it forwards, and counts to find loops.
pub const VIA_ENTRY: &str = "1.1 abgate";

/// Times a request may already have passed through abgate; one more is a loop (508).
/// Enough for tiers of gateways, few enough that a loop ends before it costs much.
pub const MAX_HOPS: usize = 8;

/// Times the request has passed through abgate, by its `Via` entries.
pub fn hops(headers: &HeaderMap) -> usize {
    headers
        .get_all(http::header::VIA)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter(|entry| entry.trim_ascii() == VIA_ENTRY.as_bytes())
        .count()
}

/// A borrowed view of a request: everything a VirtualService match can test.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The Host / `:authority` as sent, port included if the client sent one.
    pub authority: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The port of the listener the request arrived on.
    pub port: u16,
    /// The gateway (`namespace/name`) whose server took the request, or `mesh`.
    pub gateway: &'a str,
}

impl RequestView<'_> {
    /// A header's value as Envoy matches it: several values joined with `,`; `None` when
    /// absent or not valid text.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?.to_str().ok()?;
        match values.next() {
            None => Some(std::borrow::Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{}", second.to_str().ok()?);
                for v in values {
                    joined.push(',');
                    joined.push_str(v.to_str().ok()?);
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }

    /// The decoded value of a query parameter (`?key` alone gives `""`), first occurrence.
    fn query_param(&self, name: &str) -> Option<String> {
        self.query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

/// Decodes `%XX` escapes; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a match block accepts a request: every condition it sets must hold.
pub fn block_matches(block: &MatchBlock, req: &RequestView<'_>) -> bool {
    if !block.gateways.is_empty() && !block.gateways.iter().any(|g| g == req.gateway) {
        return false;
    }
    if block.port.is_some_and(|p| p != req.port) {
        return false;
    }
    if let Some(uri) = &block.uri {
        let ok = if block.ignore_uri_case {
            uri.matches_ignore_case(req.path)
        } else {
            uri.matches(req.path)
        };
        if !ok {
            return false;
        }
    }
    let simple = [
        (&block.method, req.method),
        (&block.scheme, req.scheme),
        (&block.authority, req.authority),
    ];
    if simple
        .iter()
        .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(v)))
    {
        return false;
    }
    let header_ok =
        |(name, m): &(String, StringMatcher)| req.header(name).is_some_and(|v| m.matches(&v));
    if !block.headers.iter().all(header_ok) {
        return false;
    }
    if block.without_headers.iter().any(header_ok) {
        return false;
    }
    block
        .query_params
        .iter()
        .all(|(name, m)| req.query_param(name).is_some_and(|v| m.matches(&v)))
}

/// Whether a rule's match list accepts a request: no blocks match everything; otherwise
/// any one block suffices.
pub fn rule_matches(blocks: &[MatchBlock], req: &RequestView<'_>) -> bool {
    blocks.is_empty() || blocks.iter().any(|b| block_matches(b, req))
}

/// The value of a stickiness key in a request: a header, or a cookie.
pub fn key_value(source: &KeySource, headers: &HeaderMap) -> Option<String> {
    match source {
        KeySource::Header(name) => headers.get(name.as_str())?.to_str().ok().map(str::to_owned),
        KeySource::Cookie(name) => cookie(headers, name),
    }
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|line| {
            line.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.to_owned())
            })
        })
}

/// The consistent-hash value of a request for a DestinationRule's hash key, from the
/// client's address `remote` when it hashes on the source IP; `None` when the request
/// lacks the key.
pub fn hash_of(
    key: &HashKey,
    headers: &HeaderMap,
    query: Option<&str>,
    remote: IpAddr,
) -> Option<u64> {
    let value = match key {
        HashKey::Header(name) => headers.get(name.as_str())?.to_str().ok()?.to_owned(),
        HashKey::Cookie { name, .. } => cookie(headers, name)?,
        HashKey::SourceIp => remote.to_string(),
        HashKey::QueryParameter(name) => query?.split('&').find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then(|| v.to_owned())
        })?,
    };
    Some(hash64(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; uid=u-42; b=2"),
        );
        assert_eq!(cookie(&headers, "uid").as_deref(), Some("u-42"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    fn view<'a>(headers: &'a HeaderMap, path: &'a str, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "POST",
            scheme: "http",
            authority: "api.example.com",
            path,
            query,
            headers,
            port: 8080,
            gateway: "prod/gw",
        }
    }

    fn exact(s: &str) -> StringMatcher {
        StringMatcher::Exact(s.to_owned())
    }

    #[test]
    fn all_conditions_in_a_block_must_hold() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tier", HeaderValue::from_static("premium"));
        let block = MatchBlock {
            uri: Some(StringMatcher::Prefix("/v1/".into())),
            method: Some(exact("POST")),
            headers: vec![("x-tier".into(), exact("premium"))],
            ..MatchBlock::default()
        };
        assert!(block_matches(
            &block,
            &view(&headers, "/v1/chat/completions", None)
        ));
        assert!(!block_matches(&block, &view(&headers, "/v2/chat", None)));
        let empty = HeaderMap::new();
        assert!(!block_matches(&block, &view(&empty, "/v1/chat", None)));
    }

    #[test]
    fn any_block_suffices_and_no_blocks_match_everything() {
        let headers = HeaderMap::new();
        let a = MatchBlock {
            uri: Some(exact("/a")),
            ..MatchBlock::default()
        };
        let b = MatchBlock {
            uri: Some(exact("/b")),
            ..MatchBlock::default()
        };
        let blocks = [a, b];
        assert!(rule_matches(&blocks, &view(&headers, "/b", None)));
        assert!(!rule_matches(&blocks, &view(&headers, "/c", None)));
        assert!(rule_matches(&[], &view(&headers, "/anything", None)));
    }

    #[test]
    fn without_headers_excludes_on_any_match() {
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        let block = MatchBlock {
            without_headers: vec![("x-debug".into(), StringMatcher::Present)],
            ..MatchBlock::default()
        };
        assert!(!block_matches(&block, &view(&headers, "/", None)));
        assert!(block_matches(&block, &view(&HeaderMap::new(), "/", None)));
    }

    #[test]
    fn query_params_are_decoded_and_bare_keys_are_empty() {
        let headers = HeaderMap::new();
        let block = MatchBlock {
            query_params: vec![
                ("model".into(), exact("llama 3")),
                ("debug".into(), exact("")),
            ],
            ..MatchBlock::default()
        };
        assert!(block_matches(
            &block,
            &view(&headers, "/", Some("model=llama%203&debug"))
        ));
        assert!(!block_matches(
            &block,
            &view(&headers, "/", Some("model=llama%203"))
        ));
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix() {
        let headers = HeaderMap::new();
        let block = MatchBlock {
            uri: Some(StringMatcher::Prefix("/V1/".into())),
            ignore_uri_case: true,
            ..MatchBlock::default()
        };
        assert!(block_matches(&block, &view(&headers, "/v1/models", None)));
    }

    #[test]
    fn several_header_values_are_joined_with_commas() {
        let mut headers = HeaderMap::new();
        headers.append("x-group", HeaderValue::from_static("a"));
        headers.append("x-group", HeaderValue::from_static("b"));
        let block = MatchBlock {
            headers: vec![("x-group".into(), exact("a,b"))],
            ..MatchBlock::default()
        };
        assert!(block_matches(&block, &view(&headers, "/", None)));
    }

    #[test]
    fn match_level_gateways_and_port_restrict() {
        let headers = HeaderMap::new();
        let block = MatchBlock {
            gateways: vec!["prod/other".into()],
            ..MatchBlock::default()
        };
        assert!(!block_matches(&block, &view(&headers, "/", None)));
        let block = MatchBlock {
            port: Some(9090),
            ..MatchBlock::default()
        };
        assert!(!block_matches(&block, &view(&headers, "/", None)));
    }
}
