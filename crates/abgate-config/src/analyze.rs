//! Checks across resources: references, reachability, duplicates and the mistakes Istio
//! accepts silently.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::{host_matches, raw_subsets, subset_references, Config, Seen};
use crate::diag::{Code, Diagnostic, Severity};
use crate::model::*;
use crate::source::FieldPath;

fn at(
    meta: &Meta,
    code: Code,
    severity: Severity,
    field: FieldPath,
    message: String,
) -> Diagnostic {
    Diagnostic {
        code,
        severity,
        file: Arc::clone(&meta.file),
        line: meta.node.line_of(&field),
        kind: meta.kind.to_string(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        field,
        message,
    }
}

/// Every cross-resource diagnostic of a configuration.
pub(crate) fn analyze(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    conflicting_destination_rules(config, &mut out);
    for vs in &config.virtual_services {
        gateway_bindings(config, vs, &mut out);
        references(config, vs, &mut out);
        reachability(vs, &mut out);
        splits(config, vs, &mut out);
    }
    for rule in &config.destination_rules {
        subset_selection(config, rule, &mut out);
        subset_policy_sections(rule, &mut out);
    }
    for exp in &config.experiments {
        experiment_variants(config, exp, &mut out);
    }
    endpoints_on_own_listeners(config, &mut out);
    out
}

/// Whether an endpoint address reaches a listener bound to `bind` (every address when
/// unset): the same address, or this host's loopback or unspecified address.
fn reaches_listener(address: &str, bind: Option<&str>) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    let ip = |a: &str| -> Option<IpAddr> {
        if a.eq_ignore_ascii_case("localhost") {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            a.parse().ok()
        }
    };
    let Some(addr) = ip(address) else {
        return false;
    };
    let local = addr.is_loopback() || addr.is_unspecified();
    match bind.filter(|b| !b.is_empty()) {
        None => local,
        Some(bind) => match ip(bind) {
            Some(b) if b.is_unspecified() => local,
            Some(b) => addr == b || (addr.is_loopback() && b.is_loopback()),
            // A unix socket is not reached over TCP.
            None => false,
        },
    }
}

/// Endpoints that are one of the gateway's own listeners: a request sent there comes
/// back in and is forwarded again.
fn endpoints_on_own_listeners(config: &Config, out: &mut Vec<Diagnostic>) {
    let listeners: Vec<(String, u16, Option<&str>)> = config
        .gateways
        .iter()
        .flat_map(|g| {
            g.servers.iter().map(move |s| {
                (
                    format!("{}/{} servers[{}]", g.meta.namespace, g.meta.name, s.index),
                    s.port,
                    s.bind.as_deref(),
                )
            })
        })
        .collect();
    if listeners.is_empty() {
        return;
    }
    let mut check = |meta: &Meta, field: FieldPath, address: &str, ports: Vec<u16>| {
        for port in ports {
            let hit = listeners
                .iter()
                .find(|(_, p, bind)| *p == port && reaches_listener(address, *bind));
            if let Some((name, _, _)) = hit {
                out.push(at(
                    meta,
                    Code::EndpointIsOwnListener,
                    Severity::Warning,
                    field.clone(),
                    format!(
                        "endpoint {address}:{port} is the gateway's own listener ({name}): requests sent to it come back in and loop; point it at the model server's address"
                    ),
                ));
                return;
            }
        }
    };
    for entry in &config.service_entries {
        for (i, e) in entry.endpoints.iter().enumerate() {
            let ports: Vec<u16> = entry
                .ports
                .iter()
                .map(|p| {
                    e.ports
                        .get(&p.name)
                        .copied()
                        .or(p.target_port)
                        .unwrap_or(p.number)
                })
                .chain(e.ports.values().copied())
                .collect();
            check(
                &entry.meta,
                FieldPath::parse("spec.endpoints").index(i).key("address"),
                &e.address,
                ports,
            );
        }
    }
    for w in &config.workload_entries {
        check(
            &w.meta,
            FieldPath::parse("spec.address"),
            &w.endpoint.address,
            w.endpoint.ports.values().copied().collect(),
        );
    }
}

/// Two resources of one kind, namespace and name: the later replaces the earlier. For
/// DestinationRules the effect on subsets that routes use is spelt out.
pub(crate) fn duplicates(seen: &[Seen], config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let references = subset_references(config);
    for (i, later) in seen.iter().enumerate() {
        let Some(earlier) = seen[..i].iter().rev().find(|e| {
            e.kind == later.kind && e.namespace == later.namespace && e.name == later.name
        }) else {
            continue;
        };
        let mut severity = Severity::Warning;
        let mut message = format!(
            "{} {}/{} is defined twice (first at {}:{}); the later definition replaces the earlier one",
            later.kind,
            later.namespace,
            later.name,
            earlier.file.display(),
            earlier.node.line
        );
        if later.kind == "DestinationRule" {
            let (before, after) = (raw_subsets(&earlier.node), raw_subsets(&later.node));
            let host = later
                .node
                .get("spec")
                .and_then(|s| s.get("host"))
                .and_then(|h| h.as_str())
                .map(|h| crate::resolve_host(h, &later.namespace))
                .unwrap_or_default();
            for (name, labels) in &before {
                match after.get(name) {
                    None => {
                        let users = references.get(&(host.clone(), name.clone()));
                        message.push_str(&format!(", which removes subset `{name}`"));
                        if let Some(users) = users {
                            severity = Severity::Error;
                            let list: Vec<_> =
                                users.iter().map(|(vs, f)| format!("{vs} {f}")).collect();
                            message.push_str(&format!(
                                " still used by {}: those requests would fail with 503 NC (no such subset)",
                                list.join(", ")
                            ));
                        }
                    }
                    Some(new_labels) if new_labels != labels => {
                        message.push_str(&format!(
                            ", and changes subset `{name}` from labels {} to {}",
                            show_labels(labels),
                            show_labels(new_labels)
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if !later.valid {
            message.push_str("; this later definition is itself invalid, so it is rejected and the earlier one stays in force until it is fixed");
        } else {
            message.push_str("; give each resource its own name, or merge them");
        }
        out.push(Diagnostic {
            code: Code::DuplicateResource,
            severity,
            file: Arc::clone(&later.file),
            line: later.node.line_of(&FieldPath::parse("metadata.name")),
            kind: later.kind.clone(),
            name: later.name.clone(),
            namespace: later.namespace.clone(),
            field: FieldPath::parse("metadata.name"),
            message,
        });
    }
    out
}

fn show_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let parts: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn conflicting_destination_rules(config: &Config, out: &mut Vec<Diagnostic>) {
    for (i, rule) in config.destination_rules.iter().enumerate() {
        let Some(first) = config.destination_rules[..i]
            .iter()
            .find(|r| r.host == rule.host)
        else {
            continue;
        };
        let shared: Vec<_> = rule
            .subsets
            .iter()
            .filter(|s| first.subset(&s.name).is_some())
            .map(|s| format!("`{}`", s.name))
            .collect();
        let mut message = format!(
            "DestinationRules {}/{} and {}/{} both configure host {}; Istio merges them silently, keeping only the first one's trafficPolicy",
            first.meta.namespace, first.meta.name, rule.meta.namespace, rule.meta.name, rule.host
        );
        if !shared.is_empty() {
            message.push_str(&format!(
                " and the first definition of subsets {}",
                shared.join(", ")
            ));
        }
        message.push_str("; put everything for one host in one DestinationRule");
        out.push(at(
            &rule.meta,
            Code::ConflictingDestinationRules,
            Severity::Error,
            FieldPath::parse("spec.host"),
            message,
        ));
    }
}

fn gateway_bindings(config: &Config, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    for (i, reference) in vs.gateways.iter().enumerate() {
        if reference == "mesh" {
            continue;
        }
        let field = FieldPath::parse("spec.gateways").index(i);
        let gateway = config
            .gateways
            .iter()
            .find(|g| format!("{}/{}", g.meta.namespace, g.meta.name) == *reference);
        let Some(gateway) = gateway else {
            out.push(at(
                &vs.meta,
                Code::ReferencedResourceNotFound,
                Severity::Error,
                field,
                format!(
                    "gateway {reference} is not defined; this VirtualService is not served on it"
                ),
            ));
            continue;
        };
        for (j, host) in vs.hosts.iter().enumerate() {
            let served = gateway.servers.iter().any(|s| {
                s.hosts.iter().any(|h| {
                    host_matches(h, host) || (host.starts_with('*') && host_matches(host, h))
                })
            });
            if !served {
                out.push(at(
                    &vs.meta,
                    Code::VirtualServiceHostNotFoundInGateway,
                    Severity::Warning,
                    FieldPath::parse("spec.hosts").index(j),
                    format!("host {host} is not among the hosts of gateway {reference}, so that gateway never routes it here"),
                ));
            }
        }
    }
}

fn references(config: &Config, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    for (i, route) in vs.http.iter().enumerate() {
        let base = FieldPath::parse("spec.http").index(i);
        if let RouteAction::Forward(dests) = &route.action {
            for (j, d) in dests.iter().enumerate() {
                check_destination(
                    config,
                    vs,
                    &d.destination,
                    base.key("route").index(j).key("destination"),
                    out,
                );
            }
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            let field = if route.mirrors.len() == 1
                && vs.meta.node.line_of(&base.key("mirror")) != vs.meta.node.line_of(&base)
            {
                base.key("mirror")
            } else {
                base.key("mirrors").index(j).key("destination")
            };
            check_destination(config, vs, &m.destination, field, out);
        }
    }
}

fn check_destination(
    config: &Config,
    vs: &VirtualService,
    d: &Destination,
    field: FieldPath,
    out: &mut Vec<Diagnostic>,
) {
    let Some(service) = config.service(&d.host) else {
        out.push(at(
            &vs.meta,
            Code::ReferencedResourceNotFound,
            Severity::Error,
            field.key("host"),
            format!(
                "host {} is not defined by any ServiceEntry, so it has no endpoints and requests to it would fail with 503; add a ServiceEntry listing its endpoints",
                d.host
            ),
        ));
        return;
    };
    if let Some(subset) = &d.subset {
        let defined = config
            .destination_rule(&d.host)
            .is_some_and(|r| r.subset(subset).is_some());
        if !defined {
            out.push(at(
                &vs.meta,
                Code::ReferencedResourceNotFound,
                Severity::Error,
                field.key("subset"),
                format!(
                    "subset `{subset}` of host {} is not defined by any DestinationRule; requests routed here fail with 503 NC",
                    d.host
                ),
            ));
        }
    } else if service.endpoints.is_empty() {
        out.push(at(
            &vs.meta,
            Code::ReferencedResourceNotFound,
            Severity::Error,
            field.key("host"),
            format!(
                "host {} has no endpoints; requests to it would fail with 503 UH",
                d.host
            ),
        ));
    }
}

/// Istio's IST0130 and IST0131: rules after a catch-all, rules whose every match an
/// earlier rule already takes, and matches that repeat an earlier one.
fn reachability(vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    let mut catch_all: Option<usize> = None;
    let mut earlier: Vec<(usize, usize, &MatchBlock)> = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        let field = FieldPath::parse("spec.http").index(i);
        if let Some(k) = catch_all {
            out.push(at(
                &vs.meta,
                Code::VirtualServiceUnreachableRule,
                Severity::Warning,
                field,
                format!("this rule can never be reached: rule http[{k}] has no match and takes every request first"),
            ));
            continue;
        }
        if route.matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut all_taken = true;
        let mut duplicates = Vec::new();
        for (j, block) in route.matches.iter().enumerate() {
            match earlier.iter().find(|(_, _, b)| covers(b, block)) {
                Some((ri, mj, _)) => duplicates.push((j, *ri, *mj)),
                None => all_taken = false,
            }
        }
        if all_taken {
            out.push(at(
                &vs.meta,
                Code::VirtualServiceUnreachableRule,
                Severity::Warning,
                field,
                "this rule can never be reached: every one of its matches is taken by an earlier rule".to_owned(),
            ));
        } else {
            for (j, ri, mj) in duplicates {
                out.push(at(
                    &vs.meta,
                    Code::VirtualServiceIneffectiveMatch,
                    Severity::Info,
                    field.key("match").index(j),
                    format!("this match never applies: http[{ri}].match[{mj}] matches the same requests first"),
                ));
            }
        }
        earlier.extend(route.matches.iter().enumerate().map(|(j, b)| (i, j, b)));
    }
}

/// Whether every request `later` matches is matched by `earlier` (conservatively: the
/// same conditions, or a URI prefix that covers the later URI, as Istio checks).
fn covers(earlier: &MatchBlock, later: &MatchBlock) -> bool {
    let same = |a: &Option<StringMatcher>, b: &Option<StringMatcher>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    };
    let same_list = |a: &[(String, StringMatcher)], b: &[(String, StringMatcher)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, ma), (kb, mb))| ka == kb && ma.same_as(mb))
    };
    let uri_covered = match (&earlier.uri, &later.uri) {
        (None, _) => true,
        (
            Some(StringMatcher::Prefix(p)),
            Some(StringMatcher::Prefix(q) | StringMatcher::Exact(q)),
        ) => earlier.ignore_uri_case == later.ignore_uri_case && q.starts_with(p.as_str()),
        (a, b) => same(a, b) && earlier.ignore_uri_case == later.ignore_uri_case,
    };
    uri_covered
        && same(&earlier.scheme, &later.scheme)
        && same(&earlier.method, &later.method)
        && same(&earlier.authority, &later.authority)
        && same_list(&earlier.headers, &later.headers)
        && same_list(&earlier.without_headers, &later.without_headers)
        && same_list(&earlier.query_params, &later.query_params)
        && earlier.port == later.port
        && earlier.gateways == later.gateways
}

fn splits(config: &Config, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    for (i, route) in vs.http.iter().enumerate() {
        let RouteAction::Forward(dests) = &route.action else {
            continue;
        };
        let field = FieldPath::parse("spec.http").index(i).key("route");
        for (j, d) in dests.iter().enumerate() {
            let twin = dests[..j].iter().position(|e| {
                e.destination == d.destination
                    && e.headers.request.is_empty()
                    && e.headers.response.is_empty()
                    && d.headers.request.is_empty()
                    && d.headers.response.is_empty()
            });
            if let Some(k) = twin {
                out.push(at(
                    &vs.meta,
                    Code::IdenticalSplitDestinations,
                    Severity::Warning,
                    field.index(j).key("destination"),
                    format!(
                        "route[{j}] sends to the same destination as route[{k}] ({}), so the {} split is no split: all of it goes to one place; was another subset meant?",
                        d.destination,
                        dests.iter().map(|d| d.weight.to_string()).collect::<Vec<_>>().join("/")
                    ),
                ));
            }
        }
        // A split across subsets picks the subset at random per request; consistent
        // hashing in the DestinationRule only picks an endpoint inside the chosen subset.
        let subsets: BTreeSet<(&str, &str)> = dests
            .iter()
            .filter(|d| d.weight > 0)
            .filter_map(|d| {
                Some((
                    d.destination.host.as_str(),
                    d.destination.subset.as_deref()?,
                ))
            })
            .collect();
        let hosts: BTreeSet<&str> = subsets.iter().map(|(h, _)| *h).collect();
        for host in hosts {
            let names: Vec<&str> = subsets
                .iter()
                .filter(|(h, _)| *h == host)
                .map(|(_, s)| *s)
                .collect();
            if names.len() < 2 {
                continue;
            }
            let Some(rule) = config.destination_rule(host) else {
                continue;
            };
            let hashed = names
                .iter()
                .find_map(|s| match rule.policy_for(Some(s)).load_balancer {
                    Some(LoadBalancer::ConsistentHash(ch)) => Some(ch.key),
                    _ => None,
                });
            if let Some(key) = hashed {
                let key = match key {
                    HashKey::Header(h) => format!("header {h}"),
                    HashKey::Cookie { name, .. } => format!("cookie {name}"),
                    HashKey::SourceIp => "the client address".to_owned(),
                    HashKey::QueryParameter(q) => format!("query parameter {q}"),
                };
                out.push(at(
                    &vs.meta,
                    Code::StickinessScatteredBySplit,
                    Severity::Warning,
                    field.clone(),
                    format!(
                        "DestinationRule {}/{} hashes on {key} for sticky sessions, but this route picks between subsets {} at random per request, so one user still moves between them; hashing only picks an endpoint inside a subset. Use an Experiment with a stickiness key to keep each user on one variant",
                        rule.meta.namespace, rule.meta.name, names.join(", ")
                    ),
                ));
            }
        }
    }
}

fn subset_selection(config: &Config, rule: &DestinationRule, out: &mut Vec<Diagnostic>) {
    let Some(service) = config.service(&rule.host) else {
        out.push(at(
            &rule.meta,
            Code::UnknownDestinationRuleHost,
            Severity::Warning,
            FieldPath::parse("spec.host"),
            format!(
                "host {} is not defined by any ServiceEntry, so this rule applies to nothing",
                rule.host
            ),
        ));
        return;
    };
    for (i, subset) in rule.subsets.iter().enumerate() {
        if !service
            .endpoints
            .iter()
            .any(|e| e.selected_by(&subset.labels))
        {
            out.push(at(
                &rule.meta,
                Code::DestinationRuleSubsetNotSelectPods,
                Severity::Error,
                FieldPath::parse("spec.subsets").index(i).key("labels"),
                format!(
                    "subset `{}` selects no endpoint of {}: no endpoint has labels {}; requests routed to it fail with 503 UH",
                    subset.name,
                    rule.host,
                    show_labels(&subset.labels)
                ),
            ));
        }
    }
}

/// As in Istio, a subset's `connectionPool`, `loadBalancer` or `outlierDetection`
/// replaces the host's section whole; settings the subset does not repeat are lost.
fn subset_policy_sections(rule: &DestinationRule, out: &mut Vec<Diagnostic>) {
    let host = &rule.traffic_policy;
    for (i, subset) in rule.subsets.iter().enumerate() {
        let own = &subset.traffic_policy;
        let field = FieldPath::parse("spec.subsets")
            .index(i)
            .key("trafficPolicy");
        if let (Some(h), Some(s)) = (&host.connection_pool, &own.connection_pool) {
            let lost = lost_pool_settings(h, s);
            if !lost.is_empty() {
                out.push(at(
                    &rule.meta,
                    Code::SubsetPolicyReplacesSection,
                    Severity::Warning,
                    field.key("connectionPool"),
                    format!(
                        "subset `{}` sets its own connectionPool, which replaces the host's whole connectionPool (Istio does not merge inside it): {} no longer apply to this subset; repeat them here if they should",
                        subset.name,
                        lost.join(", ")
                    ),
                ));
            }
        }
        if host.outlier_detection.is_some()
            && own.outlier_detection.is_some()
            && host.outlier_detection != own.outlier_detection
        {
            out.push(at(
                &rule.meta,
                Code::SubsetPolicyReplacesSection,
                Severity::Info,
                field.key("outlierDetection"),
                format!("subset `{}` replaces the host's whole outlierDetection; fields it omits take Istio's defaults", subset.name),
            ));
        }
    }
}

fn lost_pool_settings(host: &ConnectionPool, subset: &ConnectionPool) -> Vec<String> {
    let mut lost = Vec::new();
    let mut check = |name: &str, h: Option<String>, s: bool| {
        if let (Some(v), false) = (h, s) {
            lost.push(format!("{name}={v}"));
        }
    };
    check(
        "tcp.maxConnections",
        host.max_connections.map(|v| v.to_string()),
        subset.max_connections.is_some(),
    );
    check(
        "tcp.connectTimeout",
        host.connect_timeout.map(|v| format!("{v:?}")),
        subset.connect_timeout.is_some(),
    );
    check(
        "http.http1MaxPendingRequests",
        host.http1_max_pending_requests.map(|v| v.to_string()),
        subset.http1_max_pending_requests.is_some(),
    );
    check(
        "http.http2MaxRequests",
        host.http2_max_requests.map(|v| v.to_string()),
        subset.http2_max_requests.is_some(),
    );
    check(
        "http.maxRequestsPerConnection",
        host.max_requests_per_connection.map(|v| v.to_string()),
        subset.max_requests_per_connection.is_some(),
    );
    check(
        "http.maxRetries",
        host.max_retries.map(|v| v.to_string()),
        subset.max_retries.is_some(),
    );
    check(
        "idleTimeout",
        host.idle_timeout.map(|v| format!("{v:?}")),
        subset.idle_timeout.is_some(),
    );
    lost
}

fn experiment_variants(config: &Config, exp: &Experiment, out: &mut Vec<Diagnostic>) {
    if config.service(&exp.host).is_none() {
        out.push(at(
            &exp.meta,
            Code::ReferencedResourceNotFound,
            Severity::Error,
            FieldPath::parse("spec.host"),
            format!("host {} is not defined by any ServiceEntry", exp.host),
        ));
        return;
    }
    let rule = config.destination_rule(&exp.host);
    let missing: Vec<_> = exp
        .variants
        .iter()
        .filter(|v| rule.as_ref().and_then(|r| r.subset(&v.subset)).is_none())
        .map(|v| format!("`{}`", v.subset))
        .collect();
    if !missing.is_empty() {
        out.push(at(
            &exp.meta,
            Code::ExperimentVariantNotSubset,
            Severity::Error,
            FieldPath::parse("spec.variants"),
            format!(
                "variants {} are not subsets of {} in any DestinationRule; the experiment could not route to them",
                missing.join(", "),
                exp.host
            ),
        ));
    }
}
