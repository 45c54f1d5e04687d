//! An HTTP/1.1 request head (parsed with `httparse`, as hyper does) routed through a fixed
//! route table the way `abgate-proxy` routes it: host, listener, gateway, virtual host,
//! first matching rule, split target, endpoint. Nothing on that path may panic.
//!
//! Input layout: the request head, then (optionally) a "body": its first byte picks the
//! listener (odd: the HTTPS one), the rest seeds the random draws and, for POST requests
//! to a host that routes on the model, is the body the proxy reads the model from (a
//! JSON object's `model`, refused when named twice; any other bytes stand in for a
//! model name). `Via` hops past the limit are refused as the proxy refuses them.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use abgate_config::SourceFile;
use abgate_router::openai::{model_of, MAX_MODEL_LEN};
use abgate_router::request::{block_matches, hash_of, hops, key_value, rule_matches, MAX_HOPS};
use abgate_router::{hash64, host_of, Action, BuildOptions, RequestView, RouteTable, MODEL_HEADER};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = include_str!("config.yaml");
const PLAIN_PORT: u16 = 8080;
/// The HTTPS server keeps its own port: only `plain_http_port` is overridden.
const TLS_PORT: u16 = 443;

/// `ROUTE_FUZZ_DUMP=1`: print the config's diagnostics, the listeners and each decision.
fn dump() -> bool {
    static DUMP: OnceLock<bool> = OnceLock::new();
    *DUMP.get_or_init(|| std::env::var_os("ROUTE_FUZZ_DUMP").is_some())
}

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let loaded = abgate_config::load_sources(&[SourceFile {
            path: Arc::from(Path::new("route_request.yaml")),
            text: CONFIG.to_owned(),
        }]);
        if dump() {
            for d in &loaded.diagnostics {
                eprintln!("{d:?}");
            }
        }
        // A harness bug, not a finding: the embedded config must be clean.
        assert!(!loaded.has_errors(), "config.yaml has errors: {:#?}", loaded.diagnostics);
        let table = RouteTable::build(
            &loaded.config,
            &BuildOptions {
                plain_http_port: Some(PLAIN_PORT),
                ..Default::default()
            },
            None,
        );
        if dump() {
            eprintln!("notes: {:?}", table.notes);
            for l in &table.listeners {
                eprintln!("listener {} tls={} servers={:?}", l.port, l.tls, l.servers);
            }
        }
        table
    })
}

/// splitmix64 over a seed taken from the input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn route(data: &[u8]) {
    let mut raw_headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut raw_headers);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return,
    };
    let rest = &data[head_len..];
    let (tls, rest) = match rest.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => (false, rest),
    };
    let mut rng = Rng(hash64(rest));
    let mut draw = || rng.next();

    // What hyper would refuse with a 400 never reaches routing.
    let Some(method) = req.method.and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
    else {
        return;
    };
    let Some(uri) = req.path.and_then(|p| p.parse::<http::Uri>().ok()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }

    let table = table();
    let authority = match uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    }) {
        Some(a) => a,
        None => return,
    };
    let host = host_of(&authority);
    let Some(listener) = table.listener(if tls { TLS_PORT } else { PLAIN_PORT }) else {
        return;
    };
    let Some(server) = listener.gateway_for(&host) else {
        return;
    };
    let Some(vhost) = listener.virtual_host(&server.gateway, &host) else {
        return;
    };
    // A request that has looped through the gateway too often is refused (508).
    if hops(&headers) >= MAX_HOPS {
        return;
    }
    if vhost.reads_model {
        headers.remove(MODEL_HEADER);
        if method == http::Method::POST {
            // The body's `model` as the proxy reads it; a body that is not JSON stands in
            // for a model name itself, so that matching still sees arbitrary values.
            let model = match model_of(rest) {
                Ok(Some(model)) => {
                    assert!(model.len() <= MAX_MODEL_LEN);
                    Some(model)
                }
                Ok(None) => HeaderValue::from_bytes(rest).ok(),
                // Refused with 400 before routing.
                Err(_) => return,
            };
            if let Some(model) = model {
                headers.insert(HeaderName::from_static(MODEL_HEADER), model);
            }
        }
    }

    let view = RequestView {
        method: method.as_str(),
        scheme: if tls { "https" } else { "http" },
        authority: &authority,
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
        port: server.port,
        gateway: &server.gateway,
    };
    let first = vhost.routes.iter().find(|r| rule_matches(&r.matches, &view));
    // The proxy's own walk (which block matched) and `Listener::route` must agree.
    let proxy_walk = vhost.routes.iter().find(|r| {
        r.matches.is_empty() || r.matches.iter().any(|b| block_matches(b, &view))
    });
    assert_eq!(
        first.map(Arc::as_ptr),
        proxy_walk.map(Arc::as_ptr),
        "rule_matches and block_matches disagree"
    );
    let via_listener = listener.route(&host, &view).ok().map(|r| Arc::as_ptr(r.route));
    assert_eq!(first.map(Arc::as_ptr), via_listener, "Listener::route disagrees");
    let Some(route) = first else {
        return;
    };

    let Action::Forward(split) = &route.action else {
        return;
    };
    let key = split
        .stickiness
        .as_ref()
        .and_then(|s| key_value(&s.source, &headers));
    let target = split.choose(key.as_deref(), &mut draw);
    if key.is_some() {
        // Sticky: the same key gets the same target whatever the draw.
        let again = split.choose(key.as_deref(), &mut draw);
        assert!(std::ptr::eq(target, again), "sticky choice is not stable");
    }
    let cluster = &target.cluster;
    let endpoints = &cluster.endpoints;
    if endpoints.is_empty() {
        return;
    }
    let hash = cluster
        .balancer
        .hash_key()
        .and_then(|k| hash_of(k, &headers, uri.query(), std::net::Ipv4Addr::new(192, 0, 2, 7).into()));
    let index = cluster.balancer.pick(endpoints, hash, &mut draw, abgate_router::now_ms());
    assert!(index < endpoints.len(), "balancer picked {index} of {}", endpoints.len());
    if hash.is_some() {
        let again = cluster.balancer.pick(endpoints, hash, &mut draw, abgate_router::now_ms());
        if matches!(cluster.balancer, abgate_router::Balancer::ConsistentHash { .. }) {
            assert_eq!(index, again, "consistent hash is not consistent");
        }
    }
    let index = cluster.pick(hash, &mut draw, abgate_router::now_ms());
    assert!(index < endpoints.len(), "cluster picked {index} of {}", endpoints.len());
    let _ = target.series.get(index);
    if dump() {
        eprintln!(
            "{host} {} -> {} -> {} key={key:?} hash={hash:?} -> {}",
            view.path,
            route.name,
            cluster.name(),
            endpoints[index].authority
        );
    }
}

fuzz_target!(|data: &[u8]| route(data));
