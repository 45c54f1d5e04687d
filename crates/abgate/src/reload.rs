//! Hot reload: watching the configuration files, waiting for them to settle, and
//! replacing the running configuration only with one that adds no error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use abgate_config::{Diagnostic, Loaded, Severity};
use abgate_proxy::Control;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use abgate_control::Controller;

/// How long the files must see no change before a reload reads them, unless
/// `--reload-settle` says otherwise. Editors and `scp` write in bursts well under this.
pub const DEFAULT_SETTLE: &str = "500ms";

/// Logs each diagnostic at its severity.
pub fn log_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
            Severity::Info => tracing::info!("{d}"),
        }
    }
}

/// What identifies a finding across edits: its code and where it points (resource and
/// field), never its line, which moves whenever a line is added above it. A finding
/// that names no resource (YAML that does not parse) is identified by its file too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FindingId {
    code: &'static str,
    kind: String,
    namespace: String,
    name: String,
    field: String,
    file: Option<PathBuf>,
}

impl FindingId {
    fn of(d: &Diagnostic) -> Self {
        let anonymous = d.kind.is_empty() && d.name.is_empty();
        FindingId {
            code: d.code.as_str(),
            kind: d.kind.clone(),
            namespace: d.namespace.clone(),
            name: d.name.clone(),
            field: d.field.to_string(),
            file: anonymous.then(|| d.file.to_path_buf()),
        }
    }
}

/// The error-level findings of a configuration, counted by identity.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Errors(BTreeMap<FindingId, usize>);

impl Errors {
    /// The errors among `diagnostics`.
    pub fn of(diagnostics: &[Diagnostic]) -> Self {
        let mut counts = BTreeMap::new();
        for d in diagnostics.iter().filter(|d| d.is_error()) {
            *counts.entry(FindingId::of(d)).or_insert(0) += 1;
        }
        Errors(counts)
    }

    /// The errors of `diagnostics` beyond these: those whose identity is new, and the
    /// extra ones of an identity that now occurs more often.
    fn added<'a>(&self, diagnostics: &'a [Diagnostic]) -> Vec<&'a Diagnostic> {
        let mut allowance = self.0.clone();
        diagnostics
            .iter()
            .filter(|d| d.is_error())
            .filter(|d| match allowance.get_mut(&FindingId::of(d)) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    false
                }
                _ => true,
            })
            .collect()
    }
}

/// Replaces the running configuration on request, keeping it when the new one is
/// unreadable or adds errors.
pub struct Reloader {
    control: Arc<Control>,
    controller: Arc<Controller>,
    files: Vec<PathBuf>,
    strict: bool,
    /// The running configuration's errors.
    running: Mutex<Errors>,
}

impl Reloader {
    /// A reloader for a gateway started with `loaded` from `files`.
    pub fn new(
        control: Arc<Control>,
        controller: Arc<Controller>,
        files: Vec<PathBuf>,
        strict: bool,
        loaded: &Loaded,
    ) -> Self {
        Reloader {
            control,
            controller,
            files,
            strict,
            running: Mutex::new(Errors::of(&loaded.diagnostics)),
        }
    }

    /// Reloads on the blocking pool: reading, checking and compiling a large
    /// configuration takes milliseconds that a one-thread runtime would otherwise take
    /// from the requests.
    pub async fn reload_aside(self: &Arc<Self>) {
        let this = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || this.reload()).await {
            tracing::error!("reload failed: {e}");
        }
    }

    /// Reads the files and applies them, or refuses them and says why.
    ///
    /// A named file or directory that no longer exists was deleted: it contributes
    /// nothing, like a deleted file inside a named directory. When none of them exists,
    /// that is a lost volume or a wrong working directory rather than an edit, and the
    /// reload is refused.
    pub fn reload(&self) {
        let gateway = self.control.telemetry().gateway();
        let present: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .cloned()
            .collect();
        if present.is_empty() {
            gateway.record_config_reload(false);
            tracing::error!(
                "reload refused: none of the configuration paths exists any more; the running configuration stays"
            );
            return;
        }
        for gone in self.files.iter().filter(|p| !present.contains(p)) {
            tracing::warn!("reload: {} was deleted; its resources go", gone.display());
        }
        let loaded = match abgate_config::load(&present) {
            Ok(loaded) => loaded,
            Err(e) => {
                gateway.record_config_reload(false);
                tracing::error!("reload refused: {e}; the running configuration stays");
                return;
            }
        };
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let added = if self.strict {
            loaded.diagnostics.iter().filter(|d| d.is_error()).collect()
        } else {
            running.added(&loaded.diagnostics)
        };
        if !added.is_empty() {
            gateway.record_config_reload(false);
            for d in &added {
                tracing::error!("reload refused: {d}");
            }
            let why = if self.strict {
                "the configuration has errors and --strict is set"
            } else {
                "the configuration adds errors the running one does not have"
            };
            tracing::error!(
                errors = added.len(),
                "reload refused: {why}; the running configuration stays"
            );
            return;
        }
        log_diagnostics(&loaded.diagnostics);
        self.control.reload(&loaded.config);
        *running = Errors::of(&loaded.diagnostics);
        drop(running);
        gateway.record_config_reload(true);
        if let Err(e) = self.controller.sync() {
            tracing::error!("experiments after reload: {e:#}");
        }
        tracing::info!("configuration reloaded");
    }
}

/// Waits for the files to settle: due a fixed time after the latest change, so a file
/// written in several steps is read once, after the last.
#[derive(Debug)]
pub struct Settle {
    quiet_for: Duration,
    due: Option<Instant>,
}

impl Settle {
    /// Settles once `quiet_for` has passed without a change.
    pub fn new(quiet_for: Duration) -> Self {
        Settle {
            quiet_for,
            due: None,
        }
    }

    /// A change was seen: the files settle `quiet_for` from now.
    pub fn changed(&mut self) {
        self.due = Some(Instant::now() + self.quiet_for);
    }

    /// Forgets a pending change (a reload happened for another reason).
    pub fn clear(&mut self) {
        self.due = None;
    }

    /// Returns once the files have settled after a change; never while none is pending.
    pub async fn settled(&mut self) {
        match self.due {
            Some(due) => {
                tokio::time::sleep_until(due).await;
                self.due = None;
            }
            None => std::future::pending().await,
        }
    }
}

/// Watches the configuration: a directory recursively; a file through its directory, so
/// that an editor that replaces the file (writes a copy, renames it over) or deletes it
/// is seen too. Each relevant change sends on `tx`.
pub fn watch_files(paths: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let watched: Vec<(PathBuf, bool)> = paths.iter().map(|p| (absolute(p), p.is_dir())).collect();
    let targets = watched.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !(event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove()) {
            return;
        }
        if event.paths.iter().any(|p| relevant(&targets, p)) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!("file watching unavailable ({e}); reload with SIGHUP"))
    .ok()?;
    for (path, is_dir) in &watched {
        let (target, mode) = match (is_dir, path.parent()) {
            (false, Some(parent)) => (parent, notify::RecursiveMode::NonRecursive),
            _ => (path.as_path(), notify::RecursiveMode::Recursive),
        };
        if let Err(e) = watcher.watch(target, mode) {
            tracing::warn!("cannot watch {}: {e}; reload with SIGHUP", path.display());
        }
    }
    Some(watcher)
}

/// Whether a change to `changed` concerns the configuration: it is a named path or a
/// directory above one, or,
/// under a named directory, what the loader reads there (a `.yaml` or `.yml` file) or
/// may be a directory holding some (a name without extension). Kubernetes mounts a
/// ConfigMap as symlinks into a `..data` directory that it swaps whole, so a change to a
/// `..`-named entry counts too. Editors' swap and backup files, and anything else kept
/// beside the configuration (a state file, logs), do not.
fn relevant(watched: &[(PathBuf, bool)], changed: &Path) -> bool {
    let name = changed
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let kubernetes = name.starts_with("..");
    watched.iter().any(|(path, is_dir)| {
        if path.starts_with(changed) {
            // The file itself, or a directory above it moved or deleted.
            true
        } else if *is_dir {
            changed.starts_with(path)
                && (kubernetes
                    || match changed.extension().and_then(|e| e.to_str()) {
                        None => true,
                        Some(ext) => matches!(ext, "yaml" | "yml"),
                    })
        } else {
            changed.parent() == path.parent() && kubernetes
        }
    })
}

/// `path` made absolute (as the watcher reports paths), without resolving symlinks.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(code: abgate_config::Code, name: &str, line: u32) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            file: Arc::from(Path::new("mesh.yaml")),
            line,
            kind: "VirtualService".to_owned(),
            name: name.to_owned(),
            namespace: "default".to_owned(),
            field: Default::default(),
            message: "wrong".to_owned(),
        }
    }

    #[test]
    fn an_error_that_only_moved_lines_is_not_new() {
        use abgate_config::Code::ReferencedResourceNotFound as Missing;
        let running = Errors::of(&[finding(Missing, "a", 10)]);
        let moved = [finding(Missing, "a", 14)];
        assert!(running.added(&moved).is_empty());
    }

    #[test]
    fn a_new_resource_error_or_a_second_one_of_a_kind_is_new() {
        use abgate_config::Code::ReferencedResourceNotFound as Missing;
        let running = Errors::of(&[finding(Missing, "a", 10)]);
        let other = [finding(Missing, "a", 10), finding(Missing, "b", 20)];
        assert_eq!(running.added(&other).len(), 1);
        assert_eq!(running.added(&other)[0].name, "b");
        let twice = [finding(Missing, "a", 10), finding(Missing, "a", 30)];
        assert_eq!(running.added(&twice).len(), 1);
    }

    #[test]
    fn changes_that_concern_the_configuration() {
        let watched = [
            (PathBuf::from("/etc/abgate/conf.d"), true),
            (PathBuf::from("/etc/abgate/mesh.yaml"), false),
        ];
        for changed in [
            "/etc/abgate/conf.d/routes.yaml",
            "/etc/abgate/conf.d/team/x.yml",
            "/etc/abgate/conf.d/team",
            "/etc/abgate/mesh.yaml",
            "/etc/abgate/..data",
            "/etc/abgate/conf.d/..2026_12_03_18_00_00.123",
            "/etc/abgate",
        ] {
            assert!(relevant(&watched, Path::new(changed)), "{changed}");
        }
        for changed in [
            "/etc/abgate/conf.d/.routes.yaml.swp",
            "/etc/abgate/conf.d/routes.yaml~",
            "/etc/abgate/conf.d/state.db-wal",
            "/etc/abgate/other.yaml",
            "/etc/abgate-other/mesh.yaml",
        ] {
            assert!(!relevant(&watched, Path::new(changed)), "{changed}");
        }
    }

    #[test]
    fn warnings_never_count() {
        use abgate_config::Code::ReferencedResourceNotFound as Missing;
        let mut warning = finding(Missing, "a", 10);
        warning.severity = Severity::Warning;
        assert!(Errors::default().added(&[warning]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn settles_only_after_a_quiet_period_since_the_last_change() {
        let quiet = Duration::from_millis(500);
        let mut settle = Settle::new(quiet);
        let start = Instant::now();
        settle.changed();
        tokio::time::advance(Duration::from_millis(300)).await;
        settle.changed();
        settle.settled().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(800));
        // Nothing pending: never settles.
        let waited = tokio::time::timeout(Duration::from_secs(60), settle.settled()).await;
        assert!(waited.is_err());
    }
}
