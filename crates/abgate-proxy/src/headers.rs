//! Header changes from VirtualService rules and destinations, and hop-by-hop hygiene.

use abgate_config::model::HeaderOps;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `keep-alive`: hop-by-hop, and not one of `http`'s standard names.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection`: hop-by-hop, and not one of `http`'s standard names.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
///
/// It runs twice per request (request and response), so it first looks at the names
/// present (a handful) and removes only what is there: no name is parsed and nothing is
/// allocated unless `Connection` names a header the message carries.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Bit i: HOP_BY_HOP[i] is present.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Headers the `Connection` header names (`Connection: keep-alive, x-private`).
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if let Some(name) = headers
                    .keys()
                    .find(|n| n.as_str().eq_ignore_ascii_case(token))
                {
                    named.push(name.clone());
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Applies `set`, `add` and `remove` to request headers (in that order, as Envoy does).
pub fn apply_request_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    apply(headers, ops);
}

/// Applies `set`, `add` and `remove` to response headers.
pub fn apply_response_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    apply(headers, ops);
}

fn apply(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.is_empty() {
        return;
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_add_appends_remove_deletes() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        headers.insert("x-gone", HeaderValue::from_static("1"));
        let ops = HeaderOps {
            set: vec![("x-a".into(), "new".into())],
            add: vec![("x-a".into(), "more".into())],
            remove: vec!["x-gone".into()],
            authority: None,
        };
        apply_request_ops(&mut headers, &ops);
        let values: Vec<_> = headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["new", "more"]);
        assert!(!headers.contains_key("x-gone"));
    }

    #[test]
    fn connection_named_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-public", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-private") && !headers.contains_key("connection"));
        assert!(headers.contains_key("x-public"));
    }
}
