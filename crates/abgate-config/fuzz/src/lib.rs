//! Shared code of the `abgate-config` fuzz targets: loading and exercising the result
//! ([`exercise`]) and the Istio-looking YAML generator ([`gen`]).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use abgate_config::model::{Destination, MatchBlock, RouteAction, StringMatcher};
use abgate_config::{load_sources, FieldPath, Loaded, SourceFile, Summary};

pub mod gen;

/// Values matchers are tried against.
const PROBES: &[&str] = &[
    "",
    "/",
    "/v1/chat",
    "GET",
    "https",
    "abc",
    "ÄÖ",
    "x-user-id",
];

/// Loads `files` (name, text) with [`load_sources`] and touches everything that came out:
/// diagnostics are displayed and serialized, the model is walked and queried as the
/// router would. The property checked is that none of it panics (plus, with the
/// `invariants` feature, the model's documented invariants).
pub fn exercise(files: &[(&str, String)]) {
    let sources: Vec<SourceFile> = files
        .iter()
        .map(|(name, text)| SourceFile {
            path: Arc::from(Path::new(name)),
            text: text.clone(),
        })
        .collect();
    let loaded = load_sources(&sources);
    exercise_loaded(&loaded);
}

fn exercise_loaded(loaded: &Loaded) {
    black_box(loaded.has_errors());
    black_box(Summary::of(&loaded.diagnostics).to_string());
    for d in &loaded.diagnostics {
        black_box(d.to_string());
        let json = serde_json::to_string(d).expect("a diagnostic serializes");
        black_box(json);
        black_box(d.is_error());
        // A diagnostic's field path survives printing and parsing (keys without `.`/`[`).
        black_box(FieldPath::parse(&d.field.to_string()));
    }
    black_box(serde_json::to_value(&loaded.diagnostics).expect("diagnostics serialize"));

    let config = &loaded.config;
    black_box(format!("{config:?}"));

    let mut destinations: Vec<&Destination> = Vec::new();
    for vs in &config.virtual_services {
        touch_meta(&vs.meta);
        black_box((&vs.hosts, &vs.gateways));
        for host in &vs.hosts {
            black_box(config.destination_rule(host));
            black_box(config.service(host));
        }
        for route in &vs.http {
            black_box(&route.name);
            route.matches.iter().for_each(touch_match);
            match &route.action {
                RouteAction::Forward(dests) => {
                    invariant(!dests.is_empty(), "a forward action has destinations");
                    invariant(
                        dests.iter().any(|d| d.weight > 0),
                        "a forward action has a positive weight",
                    );
                    for d in dests {
                        black_box(d.destination.to_string());
                        black_box((d.weight, d.headers.request.is_empty()));
                        destinations.push(&d.destination);
                    }
                }
                RouteAction::Redirect(r) => {
                    black_box((&r.uri, &r.authority, r.port, &r.scheme, r.code));
                }
                RouteAction::DirectResponse { status, body } => {
                    black_box((status, body.len()));
                }
            }
            black_box((&route.rewrite, route.timeout, &route.retries, &route.cors));
            if let Some(fault) = &route.fault {
                if let Some((delay, pct)) = fault.delay {
                    black_box(delay);
                    invariant(
                        (0.0..=100.0).contains(&pct),
                        "fault delay percentage in 0..=100",
                    );
                }
                if let Some((_, pct)) = &fault.abort {
                    invariant(
                        (0.0..=100.0).contains(pct),
                        "fault abort percentage in 0..=100",
                    );
                }
            }
            for m in &route.mirrors {
                black_box(m.destination.to_string());
                invariant(
                    (0.0..=100.0).contains(&m.percentage),
                    "mirror percentage in 0..=100",
                );
                destinations.push(&m.destination);
            }
        }
    }
    for dest in destinations {
        black_box(config.destination_rule(&dest.host));
        black_box(config.subset_endpoints(&dest.host, dest.subset.as_deref()));
        black_box(config.subset_endpoints(&dest.host, None));
        if let Some(rule) = config.destination_rule(&dest.host) {
            black_box(rule.policy_for(dest.subset.as_deref()));
        }
    }
    for dr in &config.destination_rules {
        touch_meta(&dr.meta);
        black_box((&dr.host, &dr.traffic_policy));
        black_box(dr.policy_for(None));
        for subset in &dr.subsets {
            black_box(dr.policy_for(Some(&subset.name)));
            black_box(config.subset_endpoints(&dr.host, Some(&subset.name)));
        }
    }
    for gw in &config.gateways {
        touch_meta(&gw.meta);
        for server in &gw.servers {
            black_box((
                server.index,
                server.port,
                server.protocol,
                &server.port_name,
            ));
            black_box((&server.bind, &server.hosts, &server.tls));
            if let Some(abgate_config::model::Credential::Named(name)) =
                server.tls.as_ref().and_then(|t| t.credential.as_ref())
            {
                invariant(
                    abgate_config::syntax::check_credential_name(name).is_ok(),
                    "a valid Gateway's credentialName is a Secret reference",
                );
            }
        }
    }
    for se in &config.service_entries {
        touch_meta(&se.meta);
        black_box((&se.hosts, &se.ports, &se.endpoints, &se.workload_selector));
        for host in &se.hosts {
            black_box(config.service(host));
        }
    }
    for we in &config.workload_entries {
        touch_meta(&we.meta);
        black_box(&we.endpoint);
    }
    for exp in &config.experiments {
        touch_meta(&exp.meta);
        black_box((
            &exp.id,
            &exp.description,
            &exp.host,
            &exp.stickiness,
            exp.strategy,
        ));
        black_box((exp.interval, exp.duration, &exp.target_metrics));
        black_box((&exp.success_criteria, &exp.rollback_criteria));
        invariant(
            exp.baseline < exp.variants.len(),
            "an experiment's baseline indexes its variants",
        );
        for v in &exp.variants {
            black_box(config.subset_endpoints(&exp.host, Some(&v.subset)));
        }
        exp.matches.iter().for_each(touch_match);
    }
}

fn touch_meta(meta: &abgate_config::model::Meta) {
    black_box((meta.kind.as_str(), &meta.name, &meta.namespace, meta.line()));
    black_box((&meta.labels, &meta.annotations, &meta.file));
    black_box(meta.node.to_json());
    for path in [
        "spec",
        "spec.http[0].route[0].weight",
        "spec.subsets[1].name",
        "x[9]",
    ] {
        black_box(meta.node.line_of(&FieldPath::parse(path)));
    }
}

fn touch_match(m: &MatchBlock) {
    black_box((&m.name, m.port, m.ignore_uri_case, &m.gateways));
    let singles = [&m.uri, &m.scheme, &m.method, &m.authority];
    let matchers = singles.into_iter().flatten().chain(
        m.headers
            .iter()
            .chain(&m.without_headers)
            .chain(&m.query_params)
            .map(|(_, s)| s),
    );
    for s in matchers {
        touch_matcher(s);
    }
}

fn touch_matcher(s: &StringMatcher) {
    for probe in PROBES {
        black_box(s.matches(probe));
        black_box(s.matches_ignore_case(probe));
    }
    black_box(s.same_as(s));
    if let StringMatcher::Exact(v) | StringMatcher::Prefix(v) = s {
        black_box(s.matches(v));
        black_box(s.matches_ignore_case(&v.to_uppercase()));
    }
}

/// With the `invariants` feature, panics when a documented property of the validated
/// model does not hold. Without it, does nothing: the default property is "no panic".
#[inline]
fn invariant(holds: bool, what: &str) {
    if cfg!(feature = "invariants") && !holds {
        panic!("model invariant violated: {what}");
    }
}
