//! The syntax Istio and Envoy accept for names, hosts and header values.
//!
//! Each check returns the reason a value is refused, so the caller can name the field.

use std::net::IpAddr;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DOMAIN_MAX: usize = 255;

/// A DNS-1123 label as Istio checks it: letters, digits and inner hyphens, at most 63
/// characters (Istio allows upper case here; Kubernetes object names do not).
pub(crate) fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A Kubernetes object name label: a lowercase DNS-1123 label.
pub(crate) fn is_k8s_label(label: &str) -> bool {
    is_dns1123_label(label) && !label.bytes().any(|b| b.is_ascii_uppercase())
}

/// A Kubernetes object name such as a Secret's: a lowercase DNS-1123 subdomain.
pub(crate) fn is_k8s_subdomain(name: &str) -> bool {
    name.len() <= DNS1123_SUBDOMAIN_MAX && !name.is_empty() && name.split('.').all(is_k8s_label)
}

/// A first DNS label that may be a wildcard: `*`, or a label optionally preceded by `*`
/// or `*-` (Istio accepts `*foo` in VirtualService and DestinationRule hosts).
fn is_wildcard_label(label: &str) -> bool {
    if label.len() > DNS1123_LABEL_MAX {
        return false;
    }
    if label == "*" {
        return true;
    }
    let rest = label
        .strip_prefix("*-")
        .or_else(|| label.strip_prefix('*'))
        .unwrap_or(label);
    is_dns1123_label(rest)
}

fn check_length(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty name is not allowed".to_owned());
    }
    if name.len() > DOMAIN_MAX {
        return Err(format!(
            "`{name}` is too long (at most {DOMAIN_MAX} characters)"
        ));
    }
    Ok(())
}

fn check_labels(domain: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    let last = parts[parts.len() - 1];
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{domain}` is not a valid domain name: its top-level label `{last}` is all digits"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`example.com.`) is an unambiguous absolute name.
        if i == parts.len() - 1 && label.is_empty() {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "`{domain}` is not a valid domain name: label `{label}` is not a DNS-1123 label"
            ));
        }
    }
    Ok(())
}

/// A fully qualified name with no wildcard (Istio's FQDN check).
pub(crate) fn check_fqdn(name: &str) -> Result<(), String> {
    check_length(name)?;
    check_labels(name, name)
}

/// A domain whose first label may be a wildcard (Istio's wildcard-domain check).
pub(crate) fn check_wildcard_domain(name: &str) -> Result<(), String> {
    check_length(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "`{name}` is not a valid host: label `{first}` is not a DNS-1123 label or wildcard"
        ));
    }
    match rest {
        Some(rest) => check_labels(name, rest),
        None => Ok(()),
    }
}

/// A wildcard only as the whole host or as a leading `*.` label.
pub(crate) fn check_no_partial_wildcard(name: &str) -> Result<(), String> {
    if name.contains('*') && name != "*" && !name.starts_with("*.") {
        return Err(format!(
            "`{name}` has a partial wildcard; a wildcard must be the whole first label (`*.example.com`)"
        ));
    }
    Ok(())
}

/// Whether the text is an IPv4 or IPv6 address.
pub(crate) fn is_ip(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok()
}

/// A Gateway server host: `[namespace/]host`, where the namespace is a label, `.` or `*`
/// and the host is `*`, a fully qualified name (optionally `*.`-prefixed) or an IP.
pub(crate) fn check_gateway_host(entry: &str) -> Result<(), String> {
    let host = match entry.split_once('/') {
        Some((ns, host)) => {
            if ns.is_empty() || host.is_empty() {
                return Err(format!(
                    "`{entry}`: the namespace and the host around `/` must not be empty"
                ));
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                return Err(format!(
                    "`{entry}`: `{ns}` is not a namespace, `.` (this namespace) or `*` (any)"
                ));
            }
            host
        }
        None => entry,
    };
    if host != "*" && !host.contains('.') {
        return Err(format!(
            "`{host}` is a short name; Gateway hosts must be fully qualified (`{host}.example.com`) or `*`"
        ));
    }
    if !is_ip(host) {
        check_wildcard_domain(host)?;
    }
    check_no_partial_wildcard(host)
}

/// A gateway reference in a VirtualService: `mesh`, `name`, `namespace/name`, or Istio's
/// legacy `name.namespace.svc.cluster.local`.
pub(crate) fn check_gateway_reference(reference: &str) -> Result<(), String> {
    match reference.split_once('/') {
        None => check_fqdn(reference).map_err(|e| {
            format!("`{reference}` is not `mesh`, a gateway name or `namespace/name`: {e}")
        }),
        Some((ns, name)) => {
            if !is_dns1123_label(ns) {
                return Err(format!(
                    "`{reference}`: `{ns}` is not a namespace (a DNS-1123 label)"
                ));
            }
            if !is_dns1123_label(name) {
                return Err(format!(
                    "`{reference}`: `{name}` is not a gateway name (a DNS-1123 label)"
                ));
            }
            Ok(())
        }
    }
}

/// A Kubernetes qualified name (a label key's name part, a label value): letters, digits,
/// `-`, `_` and `.`, starting and ending with a letter or digit, at most 63 characters.
fn is_qualified_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A label key as Kubernetes and Istio take it: `[prefix/]name`, the prefix a DNS
/// subdomain of at most 253 characters.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.len() > DNS1123_SUBDOMAIN_MAX
            || prefix.is_empty()
            || !prefix.split('.').all(is_dns1123_label)
        {
            return Err(format!(
                "label key `{key}`: `{prefix}` is not a DNS subdomain prefix"
            ));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "label key `{key}` is not a valid label name (letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit, at most 63 characters)"
        ));
    }
    Ok(())
}

/// A label value: empty, or a qualified name.
pub(crate) fn check_label_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label `{key}`: value `{value}` is not a valid label value (letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit, at most 63 characters)"
        ))
    }
}

/// A port protocol Istio knows (case-insensitive); the empty protocol is left to
/// protocol sniffing.
pub(crate) fn is_known_protocol(protocol: &str) -> bool {
    protocol.is_empty()
        || protocol == "DoubleHBONE"
        || matches!(
            protocol.to_ascii_lowercase().as_str(),
            "tcp"
                | "udp"
                | "grpc"
                | "grpc-web"
                | "http"
                | "http_proxy"
                | "http2"
                | "https"
                | "tls"
                | "mongo"
                | "redis"
                | "mysql"
        )
}

/// A unix socket address after `unix://`: an absolute path, or `@` and an abstract name.
pub(crate) fn check_unix_address(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a unix address needs a path".to_owned());
    }
    if path.starts_with('@') || path.starts_with('/') {
        return Ok(());
    }
    Err(format!(
        "unix address `{path}` must be an absolute path or an abstract name (`@name`)"
    ))
}

/// `exportTo` as Istio takes it: `.` (this namespace), `*` (every namespace) alone, `~`
/// (no one) alone and only on a ServiceEntry, or namespace names; nothing twice.
/// Returns the index of each bad entry with the reason.
pub(crate) fn check_export_to(
    entries: &[String],
    namespace: &str,
    service_entry: bool,
) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    // Each namespace seen, with the entry that named it (`.` names this one).
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = if entry == "." {
            namespace
        } else {
            entry.as_str()
        };
        if let Some((_, earlier)) = seen.iter().find(|(k, _)| *k == key) {
            problems.push((
                i,
                if earlier == entry {
                    format!("`{entry}` is listed twice")
                } else {
                    format!("`.` and `{namespace}` are the same namespace, listed twice")
                },
            ));
            continue;
        }
        let valid = match key {
            "*" => true,
            "~" => service_entry,
            _ => is_dns1123_label(key),
        };
        if !valid {
            problems.push((
                i,
                if key == "~" {
                    "`~` (export to no one) is only for ServiceEntries".to_owned()
                } else {
                    format!("`{entry}` is not `.`, `*` or a namespace name")
                },
            ));
            continue;
        }
        seen.push((key, entry));
    }
    if entries.len() > 1 {
        for alone in ["*", "~"] {
            if seen.iter().any(|(k, _)| *k == alone) {
                let i = entries.iter().position(|e| e == alone).unwrap_or(0);
                problems.push((
                    i,
                    format!("`{alone}` cannot be combined with other exportTo entries"),
                ));
            }
        }
    }
    problems
}

/// A Kubernetes Secret reference as `credentialName` takes it: `name` or
/// `namespace/name`, with the name a DNS-1123 subdomain and the namespace a label.
pub fn check_credential_name(reference: &str) -> Result<(), String> {
    let (ns, name) = match reference.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, reference),
    };
    if let Some(ns) = ns {
        if !is_k8s_label(ns) {
            return Err(format!(
                "`{reference}` is not a Secret reference: `{ns}` is not a namespace (a lowercase DNS-1123 label)"
            ));
        }
    }
    if !is_k8s_subdomain(name) {
        return Err(format!(
            "`{reference}` is not a Secret reference: `{name}` is not a Kubernetes name (lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// An HTTP header value as Envoy takes it in a header rule: no control characters but
/// tab, and `%` only doubled (`%%`) or around a `%VARIABLE%` / `%VAR(args)%`.
pub(crate) fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("header value must not contain control characters".to_owned());
    }
    check_envoy_format(value)
}

/// Envoy's header formatter grammar: literal text with `%%` escapes and `%NAME%` or
/// `%NAME(args)%` variables, where args are a bare string or a JSON array of strings.
fn check_envoy_format(value: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum State {
        Literal,
        Name,
        ExpectArgs,
        ExpectString,
        InString,
        AfterString,
        ExpectClose,
        ExpectPercent,
    }
    let unescaped = || {
        Err(format!(
            "`{value}` has an unescaped `%`: write `%%` for a literal percent sign"
        ))
    };
    let bytes = value.as_bytes();
    let mut state = State::Literal;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match state {
            State::Literal if c == b'%' => match bytes.get(i + 1) {
                None => return unescaped(),
                Some(b'%') => i += 1,
                Some(_) => state = State::Name,
            },
            State::Literal => {}
            State::Name if c == b'%' => state = State::Literal,
            State::Name if c == b'(' => state = State::ExpectArgs,
            State::Name => {}
            State::ExpectArgs if c == b'[' => state = State::ExpectString,
            State::ExpectArgs if c != b' ' => state = State::InString,
            State::ExpectArgs => {}
            State::ExpectString if c == b'"' => state = State::InString,
            State::ExpectString if c != b' ' => {
                return Err(format!(
                    "`{value}`: expected `\"` in a variable's arguments"
                ))
            }
            State::ExpectString => {}
            State::InString if c == b'\\' => {
                if i + 1 >= bytes.len() {
                    return Err(format!("`{value}` ends inside an escape"));
                }
                i += 1;
            }
            State::InString if c == b')' => state = State::ExpectPercent,
            State::InString if c == b'"' => state = State::AfterString,
            State::InString => {}
            State::AfterString if c == b',' => state = State::ExpectString,
            State::AfterString if c == b']' => state = State::ExpectClose,
            State::AfterString if c != b' ' => {
                return Err(format!(
                    "`{value}`: expected `,` or `]` in a variable's arguments"
                ))
            }
            State::AfterString => {}
            State::ExpectClose if c == b')' => state = State::ExpectPercent,
            State::ExpectClose if c != b' ' => {
                return Err(format!(
                    "`{value}`: expected `)` after a variable's arguments"
                ))
            }
            State::ExpectClose => {}
            State::ExpectPercent if c == b'%' => state = State::Literal,
            State::ExpectPercent if c != b' ' => {
                return Err(format!("`{value}`: expected `%` to close a variable"))
            }
            State::ExpectPercent => {}
        }
        i += 1;
    }
    if state == State::Literal {
        Ok(())
    } else if state == State::Name {
        unescaped()
    } else {
        Err(format!("`{value}` has an unterminated `%VARIABLE(...)%`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(check_wildcard_domain("foo.example.com").is_ok());
        assert!(check_wildcard_domain("*.example.com").is_ok());
        assert!(check_wildcard_domain("*").is_ok());
        assert!(check_wildcard_domain("reviews").is_ok());
        assert!(check_wildcard_domain("foo.ba!r").is_err());
        assert!(check_wildcard_domain("foo.*.bar.com").is_err());
        assert!(check_wildcard_domain("example.123").is_err());
        assert!(check_fqdn("*.example.com").is_err());
        assert!(check_no_partial_wildcard("*bar.com").is_err());
    }

    #[test]
    fn gateway_hosts_and_references() {
        for ok in [
            "*",
            "*.example.com",
            "ns/api.example.com",
            "./a.b",
            "*/a.b",
            "10.0.0.1",
        ] {
            assert!(check_gateway_host(ok).is_ok(), "{ok}");
        }
        for bad in ["foo", "*bar.com", "foo.*.bar.com", "n@s/a.b", "/a.b"] {
            assert!(check_gateway_host(bad).is_err(), "{bad}");
        }
        for ok in ["gw", "ns/gw", "gw.ns.svc.cluster.local"] {
            assert!(check_gateway_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["b@dgateway", "ns1/*", "*/gateway", "ns/"] {
            assert!(check_gateway_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_names() {
        for ok in ["tls-cert", "my.cert", "istio-system/tls-cert"] {
            assert!(check_credential_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../etc", "a/../b", "/abs", "Upper", "a/b/c", "", "ns/", "a_b", ".hidden",
        ] {
            assert!(check_credential_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values_follow_envoy_format() {
        for ok in [
            "foo",
            "%HOSTNAME%",
            "100%%",
            "a %REQ(x-id)% b",
            "%VAR([\"a\", \"b\"])%",
        ] {
            assert!(check_header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%START_TIME%%", "50%", "a\u{1}b", "%VAR([x])%"] {
            assert!(check_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "security.istio.io/tlsMode",
            "a_b",
        ] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-app", "app-", "bad prefix/app", "/app", "a*"] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("k", "").is_ok());
        assert!(check_label_value("k", "v1.2_3").is_ok());
        for bad in ["-v", "v-", "a b", &"v".repeat(64)] {
            assert!(check_label_value("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_to_follows_istio() {
        let check = |entries: &[&str], se: bool| {
            let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
            check_export_to(&entries, "ns5", se)
                .into_iter()
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert!(check(&[], false).is_empty());
        assert!(check(&[".", "ns1"], false).is_empty());
        assert!(check(&["*"], false).is_empty());
        assert!(check(&["~"], true).is_empty());
        assert_eq!(check(&["~"], false), [0]);
        assert_eq!(check(&[".", "ns5"], false), [1]);
        assert_eq!(check(&["ns1", "ns2", "ns1"], false), [2]);
        assert_eq!(check(&[".", "*"], false), [1]);
        assert_eq!(check(&["~", "ns1"], true), [0]);
        assert_eq!(check(&["ns1_"], false), [0]);
    }

    #[test]
    fn protocols_and_unix_addresses() {
        for known in ["HTTP", "http", "GRPC-Web", "Mongo", "", "TCP"] {
            assert!(is_known_protocol(known), "{known}");
        }
        assert!(!is_known_protocol("kafka"));
        assert!(check_unix_address("/run/a.sock").is_ok());
        assert!(check_unix_address("@abstract").is_ok());
        assert!(check_unix_address("./relative.sock").is_err());
    }
}
