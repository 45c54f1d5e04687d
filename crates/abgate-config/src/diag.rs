//! Diagnostics: what is wrong with a configuration, where, and what to do about it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::source::FieldPath;

/// How bad a diagnostic is. Errors keep a resource from taking effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource is rejected (or, for cross-resource checks, will not work as written).
    Error,
    /// It takes effect, but probably not as meant.
    Warning,
    /// Worth knowing.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// The diagnostic codes. Istio's where Istio has one, `ABG####` for what Istio misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// IST0101: a referenced host, subset or gateway does not exist.
    ReferencedResourceNotFound,
    /// IST0106: the resource breaks the schema or a validation rule.
    SchemaValidationError,
    /// IST0130: a rule can never be reached.
    VirtualServiceUnreachableRule,
    /// IST0131: a match can never be the one that matches.
    VirtualServiceIneffectiveMatch,
    /// IST0132: a VirtualService host is not served by its gateway.
    VirtualServiceHostNotFoundInGateway,
    /// IST0133: deprecated or doubtful but accepted.
    SchemaWarning,
    /// IST0173: a subset's labels select no endpoint.
    DestinationRuleSubsetNotSelectPods,
    /// IST0174: a DestinationRule for a host nothing defines.
    UnknownDestinationRuleHost,
    /// ABG0001: YAML that does not parse.
    YamlSyntax,
    /// ABG0002: `apiVersion`, `kind` or `metadata.name` missing.
    MissingTypeMeta,
    /// ABG0003: a kind or apiVersion abgate does not handle.
    UnsupportedKind,
    /// ABG0004: a valid Istio field abgate accepts but does not act on.
    UnsupportedField,
    /// ABG0005: accepted by abgate, but Istio in a cluster would refuse it or read it
    /// otherwise.
    IstioDivergence,
    /// ABG0010: two resources of one kind, namespace and name.
    DuplicateResource,
    /// ABG0011: two DestinationRules for one host (Istio merges them silently).
    ConflictingDestinationRules,
    /// ABG0020: weights that do not sum to 100.
    WeightsNotHundred,
    /// ABG0021: a weighted split whose destinations are identical.
    IdenticalSplitDestinations,
    /// ABG0022: stickiness that a weighted split scatters.
    StickinessScatteredBySplit,
    /// ABG0023: a subset policy that replaces a whole section of the host's policy.
    SubsetPolicyReplacesSection,
    /// ABG0030: an experiment whose variants are not subsets of its host.
    ExperimentVariantNotSubset,
    /// ABG0032: an endpoint that is one of the gateway's own listeners.
    EndpointIsOwnListener,
}

impl Code {
    /// The code as printed: `IST0101`, `ABG0021`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ReferencedResourceNotFound => "IST0101",
            Code::SchemaValidationError => "IST0106",
            Code::VirtualServiceUnreachableRule => "IST0130",
            Code::VirtualServiceIneffectiveMatch => "IST0131",
            Code::VirtualServiceHostNotFoundInGateway => "IST0132",
            Code::SchemaWarning => "IST0133",
            Code::DestinationRuleSubsetNotSelectPods => "IST0173",
            Code::UnknownDestinationRuleHost => "IST0174",
            Code::YamlSyntax => "ABG0001",
            Code::MissingTypeMeta => "ABG0002",
            Code::UnsupportedKind => "ABG0003",
            Code::UnsupportedField => "ABG0004",
            Code::IstioDivergence => "ABG0005",
            Code::DuplicateResource => "ABG0010",
            Code::ConflictingDestinationRules => "ABG0011",
            Code::WeightsNotHundred => "ABG0020",
            Code::IdenticalSplitDestinations => "ABG0021",
            Code::StickinessScatteredBySplit => "ABG0022",
            Code::SubsetPolicyReplacesSection => "ABG0023",
            Code::ExperimentVariantNotSubset => "ABG0030",
            Code::EndpointIsOwnListener => "ABG0032",
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Istio's or abgate's code.
    pub code: Code,
    /// How bad it is.
    pub severity: Severity,
    /// The file, as given on the command line.
    #[serde(serialize_with = "serialize_path")]
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: u32,
    /// The resource's kind (empty when the resource could not be identified).
    pub kind: String,
    /// The resource's name (empty when unknown).
    pub name: String,
    /// The resource's namespace (empty when unknown).
    pub namespace: String,
    /// The field, as a path from the resource's root (`spec.http[0].route[1].weight`).
    #[serde(serialize_with = "serialize_display")]
    pub field: FieldPath,
    /// A sentence a person can act on.
    pub message: String,
}

fn serialize_path<S: serde::Serializer>(path: &Arc<Path>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.display().to_string())
}

fn serialize_display<S: serde::Serializer, T: fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Diagnostic {
    /// Whether this diagnostic keeps something from working.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Whether this diagnostic refused a resource (or a whole document) outright, as the
    /// API server would, rather than pointing out a problem between valid resources.
    pub fn rejects_resource(&self) -> bool {
        self.is_error()
            && matches!(
                self.code,
                Code::YamlSyntax
                    | Code::SchemaValidationError
                    | Code::MissingTypeMeta
                    | Code::UnsupportedKind
                    | Code::UnsupportedField
            )
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line: severity[code] Kind/name field: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}[{}] ",
            self.file.display(),
            self.line,
            self.severity,
            self.code
        )?;
        if !self.kind.is_empty() || !self.name.is_empty() {
            write!(f, "{}/{} ", self.kind, self.name)?;
        }
        let field = self.field.to_string();
        if !field.is_empty() {
            write!(f, "{field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Counts by severity, for the one-line summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Infos.
    pub infos: usize,
}

impl Summary {
    /// Counts the diagnostics.
    pub fn of(diagnostics: &[Diagnostic]) -> Self {
        let mut s = Self::default();
        for d in diagnostics {
            match d.severity {
                Severity::Error => s.errors += 1,
                Severity::Warning => s.warnings += 1,
                Severity::Info => s.infos += 1,
            }
        }
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn plural(n: usize, word: &str) -> String {
            format!("{n} {word}{}", if n == 1 { "" } else { "s" })
        }
        write!(
            f,
            "{}, {}, {}",
            plural(self.errors, "error"),
            plural(self.warnings, "warning"),
            plural(self.infos, "info")
        )
    }
}
