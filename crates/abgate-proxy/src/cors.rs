//! CORS, as a VirtualService `corsPolicy` describes it.

use abgate_config::model::CorsPolicy;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::ProxyBody;

/// The answer to a preflight request whose origin the policy allows; `None` for anything
/// else (not a preflight, or an origin the policy does not allow, which Istio forwards).
pub fn preflight(
    policy: &CorsPolicy,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response<ProxyBody>> {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    if !allowed(policy, origin) {
        if policy.forward_unmatched_preflights {
            return None;
        }
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::OK;
        return Some(r);
    }
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    decorate(policy, origin, h);
    let join = |items: &[String]| HeaderValue::from_str(&items.join(",")).ok();
    if let Some(v) = join(&policy.allow_methods).filter(|_| !policy.allow_methods.is_empty()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = join(&policy.allow_headers).filter(|_| !policy.allow_headers.is_empty()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(age) = policy.max_age {
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.as_secs()),
        );
    }
    Some(r)
}

/// Adds the CORS response headers for an allowed origin.
pub fn decorate(policy: &CorsPolicy, origin: &HeaderValue, headers: &mut HeaderMap) {
    if !allowed(policy, origin) {
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !policy.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&policy.expose_headers.join(",")) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn allowed(policy: &CorsPolicy, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    policy.allow_origins.iter().any(|m| m.matches(origin))
}
