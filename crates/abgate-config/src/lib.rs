//! Istio-compatible configuration for abgate: resource types, YAML loading with source
//! positions, per-resource validation, and the cross-resource analyzer behind
//! `abgate analyze`.
#![forbid(unsafe_code)]

mod analyze;
mod config;
mod diag;
pub mod duration;
pub mod model;
pub mod source;
pub mod syntax;
mod validate;
pub mod wire;

pub use config::{host_matches, Config, Loaded, ServiceView};
pub use diag::{Code, Diagnostic, Severity, Summary};
pub use source::{read_paths, FieldPath, ReadError, SourceFile};
pub use validate::{default_prometheus_queries, resolve_gateway, resolve_host, DEFAULT_NAMESPACE};

use std::path::PathBuf;

/// Reads every path (files, or directories searched for `*.yaml`/`*.yml`), validates each
/// resource and analyzes the whole. Fails only when a path cannot be read at all.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ReadError> {
    Ok(load_sources(&read_paths(paths)?))
}

/// Like [`load`], from files already read.
pub fn load_sources(files: &[SourceFile]) -> Loaded {
    config::build(files)
}
