//! The label sets of a destination, and how label values are written in the exposition
//! format.

/// The labels shared by every request to one destination: a cluster's endpoints that
/// carry the same `version`, reached through one subset, under one experiment variant.
///
/// Built once per route-table build; [`crate::Telemetry::destination`] turns it into the
/// series block the proxy records into.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationLabels {
    /// The destination host as routed, e.g. `llama-3.1-8b-service` or
    /// `reviews.default.svc.cluster.local`.
    pub destination_service: String,
    /// The service's short name: the first DNS label of a `*.svc.cluster.local` host, else
    /// the host (see [`service_name_of`]).
    pub destination_service_name: String,
    /// The namespace of the resource that defines the host; also rendered as
    /// `destination_workload_namespace`.
    pub destination_service_namespace: String,
    /// The endpoints' `version` label, `unknown` when they have none.
    pub destination_version: String,
    /// The endpoints' `app` label, else the service name.
    pub destination_workload: String,
    /// The DestinationRule subset routed to, or empty.
    pub destination_subset: String,
    /// The experiment that routed the request, or empty.
    pub experiment_id: String,
    /// The experiment variant the request went to, or empty.
    pub variant: String,
    /// The endpoints' `model` label, else the service name.
    pub model_name: String,
}

impl DestinationLabels {
    /// Labels for `host` defined in `namespace`, with Istio's defaults: the service name
    /// derived from the host, version `unknown`, workload and model named after the
    /// service, no subset and no experiment. Set the other fields as the endpoints say.
    pub fn new(host: &str, namespace: &str) -> Self {
        let name = service_name_of(host).to_owned();
        Self {
            destination_service: host.to_owned(),
            destination_service_namespace: namespace.to_owned(),
            destination_version: "unknown".to_owned(),
            destination_workload: name.clone(),
            destination_subset: String::new(),
            experiment_id: String::new(),
            variant: String::new(),
            model_name: name.clone(),
            destination_service_name: name,
        }
    }

    /// Whether an experiment routed to this destination (so its requests feed a
    /// [`crate::VariantCell`]).
    pub fn has_experiment(&self) -> bool {
        !self.experiment_id.is_empty() || !self.variant.is_empty()
    }
}

/// The short service name Istio reports as `destination_service_name`: the first DNS
/// label of a Kubernetes service host (`reviews.default.svc.cluster.local` → `reviews`),
/// and the host itself otherwise (`llama-3.1-8b-service`, `api.example.com`).
pub fn service_name_of(host: &str) -> &str {
    if host.ends_with(".svc.cluster.local") {
        host.split('.').next().unwrap_or(host)
    } else {
        host
    }
}

/// The protocol of a request, Istio's `request_protocol` label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestProtocol {
    /// Plain HTTP/1.1 or HTTP/2.
    #[default]
    Http,
    /// gRPC (`content-type: application/grpc`).
    Grpc,
}

impl RequestProtocol {
    /// The label value: `http` or `grpc`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            RequestProtocol::Http => 0,
            RequestProtocol::Grpc => 1,
        }
    }
}

/// Appends `name="value"` with the value escaped as the text format requires (backslash,
/// double quote and line feed), preceded by a comma unless `out` is empty.
pub(crate) fn push_label(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_is_first_label_of_cluster_local_hosts() {
        assert_eq!(
            service_name_of("reviews.default.svc.cluster.local"),
            "reviews"
        );
        assert_eq!(
            service_name_of("llama-3.1-8b-service"),
            "llama-3.1-8b-service"
        );
        assert_eq!(service_name_of("api.example.com"), "api.example.com");
    }

    #[test]
    fn new_labels_take_istio_defaults() {
        let l = DestinationLabels::new("reviews.prod.svc.cluster.local", "prod");
        assert_eq!(l.destination_service_name, "reviews");
        assert_eq!(l.destination_version, "unknown");
        assert_eq!(l.destination_workload, "reviews");
        assert_eq!(l.model_name, "reviews");
        assert!(!l.has_experiment());
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut out = String::new();
        push_label(&mut out, "a", "x");
        push_label(&mut out, "b", "q\"b\\n\nz");
        assert_eq!(out, r#"a="x",b="q\"b\\n\nz""#);
    }
}
