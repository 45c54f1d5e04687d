//! The experiment state file: opening it for `abgate serve` (refusing a damaged one,
//! `--state-reset`), checkpointing it while the gateway runs, and `abgate state backup`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use abgate_state::{StateError, Store};
use anyhow::Context as _;

/// How often the gateway folds the state's write-ahead log into the main file, when
/// anything was written. A timer rather than a hook in each writer: decisions, the admin
/// API and feedback all write, and one timer covers them all; a second is short next to
/// any controller interval, so the main file is at most that far behind.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Opens the state file for the gateway. With `reset`, an existing file (and its `-wal`
/// and `-shm`) is first moved aside, never deleted. A damaged or foreign file stops
/// startup with what to do about it.
pub fn open_for_serve(path: &Path, reset: bool) -> anyhow::Result<Store> {
    if reset {
        if let Some(aside) = move_aside(path)? {
            let note = format!(
                "--state-reset: moved the state file {} (with its -wal and -shm, if any) to {}; starting with no stored experiments",
                path.display(),
                aside.display()
            );
            eprintln!("abgate serve: {note}");
            tracing::warn!("{note}");
        }
    }
    Store::open(path).map_err(|e| match e {
        StateError::Corrupt { .. } | StateError::Foreign { .. } => {
            anyhow::anyhow!("{e}\n{}", remedy(path))
        }
        e => anyhow::Error::new(e).context(format!("opening the state file {}", path.display())),
    })
}

/// What to do about a state file that cannot be used.
fn remedy(path: &Path) -> String {
    let p = path.display();
    format!(
        "abgate did not start and left the file as it is. Either restore a backup (copy it over {p} and remove {p}-wal and {p}-shm), \
         or start with --state-reset to move the file aside and begin with no stored experiments \
         (experiments in the configuration files start again from their first step)."
    )
}

/// Moves the state file and its `-wal` and `-shm` to `<file>.reset-<UTC time>` (and
/// `-wal`, `-shm` after that, so SQLite opens the set together); `None` when there is no
/// state file.
pub fn move_aside(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let aside = (0..)
        .map(|n| {
            let suffix = if n == 0 {
                format!(".reset-{stamp}")
            } else {
                format!(".reset-{stamp}-{n}")
            };
            with_suffix(path, &suffix)
        })
        .find(|candidate| {
            ["", "-wal", "-shm"]
                .iter()
                .all(|s| std::fs::symlink_metadata(with_suffix(candidate, s)).is_err())
        })
        .expect("some suffix is free");
    // The log first: should a move fail half-way, the main file stays where it was
    // rather than being left without its log.
    for suffix in ["-wal", "-shm", ""] {
        let from = with_suffix(path, suffix);
        if std::fs::symlink_metadata(&from).is_ok() {
            let to = with_suffix(&aside, suffix);
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} aside to {}", from.display(), to.display()))?;
        }
    }
    Ok(Some(aside))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Checkpoints `store` every [`CHECKPOINT_EVERY`], on the blocking pool (a checkpoint
/// writes and fsyncs the main file). Runs until the task is dropped.
pub async fn checkpoint_periodically(store: Store) {
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::debug!("state checkpoint held up by a reader; trying again")
            }
            Ok(Err(e)) => tracing::warn!("state checkpoint: {e}"),
            Err(e) => tracing::warn!("state checkpoint: {e}"),
        }
    }
}

/// Arguments of `abgate state`.
#[derive(clap::Args, Debug)]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(clap::Subcommand, Debug)]
enum StateCommand {
    /// Copy the experiment state to FILE with SQLite's online backup API: one consistent
    /// snapshot, safe while the gateway runs. To restore: stop the gateway, copy the
    /// backup over the state file, remove the state file's -wal and -shm, start it.
    Backup {
        /// Where to write the backup (replaced if it exists; mode 0600).
        file: PathBuf,
        /// The state file; default $XDG_STATE_HOME/abgate/state.db, as `abgate serve`.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Runs `abgate state ...`.
pub fn run(args: StateArgs) -> ExitCode {
    match args.command {
        StateCommand::Backup { file, state } => {
            let state = state.unwrap_or_else(crate::serve::default_state_path);
            match backup(&state, &file) {
                Ok(summary) => {
                    println!(
                        "backed up {} to {}: {} experiment(s), {} decision(s), {} bytes",
                        state.display(),
                        file.display(),
                        summary.experiments,
                        summary.decisions,
                        summary.bytes
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("abgate state backup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn backup(state: &Path, file: &Path) -> anyhow::Result<abgate_state::BackupSummary> {
    anyhow::ensure!(
        std::fs::symlink_metadata(state).is_ok(),
        "there is no state file at {} (give its path with --state)",
        state.display()
    );
    if let (Ok(a), Ok(b)) = (state.canonicalize(), file.canonicalize()) {
        anyhow::ensure!(a != b, "the backup would overwrite the state file itself");
    }
    Ok(abgate_state::backup(state, file)?)
}
