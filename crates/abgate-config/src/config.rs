//! The effective configuration: what serving would do with a set of resources.
//!
//! Resources are taken the way the Kubernetes API server and istiod take them: each is
//! validated on its own, an invalid one does not take effect, and a later resource with
//! the kind, namespace and name of an earlier one replaces it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::analyze;
use crate::diag::{Code, Diagnostic, Severity};
use crate::model::*;
use crate::source::{parse_stream, Document, FieldPath, SourceFile};
use crate::validate::validate_document;

/// A loaded configuration and everything found wrong with it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// What serving would use.
    pub config: Config,
    /// Every diagnostic, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Whether some resource or document was refused outright.
    pub fn has_rejected(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::rejects_resource)
    }
}

/// The valid resources in force, after replacement of duplicates.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// VirtualServices, in the order written.
    pub virtual_services: Vec<VirtualService>,
    /// DestinationRules, in the order written.
    pub destination_rules: Vec<DestinationRule>,
    /// ServiceEntries.
    pub service_entries: Vec<ServiceEntry>,
    /// WorkloadEntries.
    pub workload_entries: Vec<WorkloadEntry>,
    /// Experiments.
    pub experiments: Vec<Experiment>,
}

/// A host as the data plane sees it: its ports and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints: inline ones and WorkloadEntries selected by label.
    pub endpoints: Vec<Endpoint>,
}

impl Config {
    /// The DestinationRule for a host, as Istio merges several: the first rule's traffic
    /// policy, and the subsets of all of them (the first definition of a name wins).
    pub fn destination_rule(&self, host: &str) -> Option<DestinationRule> {
        let mut rules = self
            .destination_rules
            .iter()
            .filter(|r| host_matches(&r.host, host));
        let mut merged = rules.next()?.clone();
        for rule in rules {
            for subset in &rule.subsets {
                if merged.subset(&subset.name).is_none() {
                    merged.subsets.push(subset.clone());
                }
            }
        }
        Some(merged)
    }

    /// The service behind a host, from the ServiceEntries that list it.
    pub fn service(&self, host: &str) -> Option<ServiceView> {
        let mut found = false;
        let mut view = ServiceView::default();
        for entry in self
            .service_entries
            .iter()
            .filter(|e| e.hosts.iter().any(|h| host_matches(h, host)))
        {
            found = true;
            for port in &entry.ports {
                if !view.ports.contains(port) {
                    view.ports.push(port.clone());
                }
            }
            // An endpoint with no address is on another network, reached through that
            // network's gateway; abgate cannot reach it.
            let reachable = |e: &&Endpoint| !e.address.is_empty();
            view.endpoints
                .extend(entry.endpoints.iter().filter(reachable).cloned());
            if let Some(selector) = &entry.workload_selector {
                view.endpoints.extend(
                    self.workload_entries
                        .iter()
                        .filter(|w| {
                            w.meta.namespace == entry.meta.namespace
                                && w.endpoint.selected_by(selector)
                        })
                        .map(|w| &w.endpoint)
                        .filter(reachable)
                        .cloned(),
                );
            }
        }
        found.then_some(view)
    }

    /// The endpoints of a host's subset (all of the host's endpoints when `subset` is
    /// `None`); `None` when the host or the subset is not defined.
    pub fn subset_endpoints(&self, host: &str, subset: Option<&str>) -> Option<Vec<Endpoint>> {
        let service = self.service(host)?;
        let Some(subset) = subset else {
            return Some(service.endpoints);
        };
        let rule = self.destination_rule(host)?;
        let selector = &rule.subset(subset)?.labels;
        Some(
            service
                .endpoints
                .into_iter()
                .filter(|e| e.selected_by(selector))
                .collect(),
        )
    }
}

/// Whether a configured host (possibly `*.suffix` or `*`) covers a concrete one.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => false,
    }
}

/// A document that was identified (kind and name read), valid or not.
pub(crate) struct Seen {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: Arc<std::path::Path>,
    pub node: Arc<crate::source::Node>,
    pub valid: bool,
}

pub(crate) fn build(files: &[SourceFile]) -> Loaded {
    let mut diagnostics = Vec::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut in_force: Vec<Resource> = Vec::new();
    for file in files {
        let (documents, errors) = parse_stream(&file.path, &file.text);
        for e in errors {
            diagnostics.push(Diagnostic {
                code: Code::YamlSyntax,
                severity: Severity::Error,
                file: Arc::clone(&file.path),
                line: e.line,
                kind: String::new(),
                name: String::new(),
                namespace: String::new(),
                field: FieldPath::root(),
                message: format!("YAML syntax error: {}", e.message),
            });
        }
        for doc in documents {
            take(&doc, &mut diagnostics, &mut seen, &mut in_force);
        }
    }
    let mut config = Config::default();
    for resource in in_force {
        match resource {
            Resource::Gateway(r) => config.gateways.push(r),
            Resource::VirtualService(r) => config.virtual_services.push(r),
            Resource::DestinationRule(r) => config.destination_rules.push(r),
            Resource::ServiceEntry(r) => config.service_entries.push(r),
            Resource::WorkloadEntry(r) => config.workload_entries.push(r),
            Resource::Experiment(r) => config.experiments.push(r),
        }
    }
    diagnostics.extend(analyze::duplicates(&seen, &config));
    diagnostics.extend(analyze::analyze(&config));
    Loaded {
        config,
        diagnostics,
    }
}

fn take(
    doc: &Document,
    diagnostics: &mut Vec<Diagnostic>,
    seen: &mut Vec<Seen>,
    in_force: &mut Vec<Resource>,
) {
    let (resource, found) = validate_document(doc);
    let identified = found
        .iter()
        .all(|d| !matches!(d.code, Code::MissingTypeMeta | Code::UnsupportedKind));
    if identified {
        let text = |key: &str| {
            doc.root
                .get(key)
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let meta = doc.root.get("metadata");
        let meta_text = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        };
        seen.push(Seen {
            kind: text("kind"),
            namespace: meta_text("namespace")
                .unwrap_or_else(|| crate::DEFAULT_NAMESPACE.to_owned()),
            name: meta_text("name").unwrap_or_default(),
            file: Arc::clone(&doc.file),
            node: Arc::new(doc.root.clone()),
            valid: resource.is_some(),
        });
    }
    diagnostics.extend(found);
    if let Some(resource) = resource {
        let meta = resource.meta();
        let same = |r: &Resource| {
            let m = r.meta();
            m.kind == meta.kind && m.namespace == meta.namespace && m.name == meta.name
        };
        match in_force.iter().position(same) {
            Some(i) => in_force[i] = resource,
            None => in_force.push(resource),
        }
    }
}

/// The subsets a DestinationRule document defines, read from its raw tree (so that the
/// effect of an invalid duplicate can still be described).
pub(crate) fn raw_subsets(
    node: &crate::source::Node,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let subsets = node
        .get("spec")
        .and_then(|s| s.get("subsets"))
        .map(|n| n.to_json());
    let mut out = BTreeMap::new();
    if let Some(serde_json::Value::Array(items)) = subsets {
        for item in items {
            let name = item
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned();
            let labels = item
                .get("labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            out.insert(name, labels);
        }
    }
    out
}

/// Which routes use which subsets of which hosts: `(host, subset)` to the VirtualServices
/// and fields that reference them.
pub(crate) fn subset_references(
    config: &Config,
) -> HashMap<(String, String), Vec<(String, String)>> {
    let mut refs: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for vs in &config.virtual_services {
        for (i, route) in vs.http.iter().enumerate() {
            let mut add = |d: &Destination, field: String| {
                if let Some(subset) = &d.subset {
                    refs.entry((d.host.clone(), subset.clone()))
                        .or_default()
                        .push((format!("{}/{}", vs.meta.namespace, vs.meta.name), field));
                }
            };
            if let RouteAction::Forward(dests) = &route.action {
                for (j, d) in dests.iter().enumerate() {
                    add(&d.destination, format!("spec.http[{i}].route[{j}]"));
                }
            }
            for m in &route.mirrors {
                add(&m.destination, format!("spec.http[{i}] mirror"));
            }
        }
    }
    for exp in &config.experiments {
        for v in &exp.variants {
            refs.entry((exp.host.clone(), v.subset.clone()))
                .or_default()
                .push((
                    format!("Experiment {}/{}", exp.meta.namespace, exp.meta.name),
                    "spec.variants".to_owned(),
                ));
        }
    }
    refs
}
