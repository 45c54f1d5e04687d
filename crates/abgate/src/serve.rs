//! `abgate serve`: the gateway, with hot reload on file change or SIGHUP and a graceful
//! drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use abgate_config::{Diagnostic, Loaded};
use abgate_proxy::{AccessLogTarget, Running, ServeOptions};
use anyhow::Context as _;
use std::path::Path;
use std::sync::Arc;

use crate::api::ExperimentsApi;
use crate::reload::{Reloader, Settle};
use abgate_control::Controller;
use abgate_outbound::{AllowList, Client as WebhookClient};
use tokio::sync::mpsc;

/// Arguments of `abgate serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A YAML file, or a directory searched recursively for *.yaml and *.yml. Repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Serve every plain-HTTP Gateway server on this address (so abgate runs unprivileged);
    /// with no Gateway in the configuration, serve every VirtualService here.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve every HTTPS Gateway server on this address.
    #[arg(long)]
    listen_tls: Option<SocketAddr>,
    /// The admin listener (/healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Directory of TLS secrets: <certs>/<credentialName>/tls.crt and tls.key.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Refuse to start, or to reload, on any error in the configuration.
    #[arg(long)]
    strict: bool,
    /// How long in-flight requests and streams may run after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// Access log of JSON lines: `off`, `stdout`, or a file path (appended to).
    #[arg(long, default_value = "off")]
    access_log: String,
    /// Export spans over OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Length of the windows of the per-variant sample store that analysis reads.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    analysis_window: Duration,
    /// The experiment state file (SQLite); default $XDG_STATE_HOME/abgate/state.db. A
    /// damaged or foreign file stops startup.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Start with no stored experiments: move the state file (and its -wal and -shm)
    /// aside to <file>.reset-<UTC time> first. Nothing is deleted.
    #[arg(long)]
    state_reset: bool,
    /// How long the configuration files must see no change before a reload reads them,
    /// so that a file written in stages is never loaded half-way.
    #[arg(long, default_value = crate::reload::DEFAULT_SETTLE, value_parser = parse_duration)]
    reload_settle: Duration,
    /// A file holding the admin API's bearer token, at least 16 bytes (else
    /// ABGATE_ADMIN_TOKEN, else one is generated beside the state file as admin.token).
    /// An empty or short token stops startup.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Only call gate and event webhooks whose address is in one of these networks
    /// (CIDRs or addresses, comma-separated), checked on the address connected to.
    /// Without it, webhooks may reach any address, internal ones included.
    #[arg(
        long,
        value_name = "CIDR,...",
        value_delimiter = ',',
        value_parser = abgate_outbound::parse_network
    )]
    gate_allow: Vec<ipnet::IpNet>,
    /// A PEM file of CA certificates trusted for `https://` webhooks, besides the
    /// Mozilla roots.
    #[arg(long, value_name = "PATH")]
    gate_ca_file: Option<PathBuf>,
    /// Largest request head (request line and headers) in bytes; beyond, 431.
    #[arg(long, default_value_t = 61440)]
    max_request_headers_size: usize,
    /// Most request headers; beyond, 431.
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// Largest request body in bytes; beyond, 413 (also while a chunked body streams).
    #[arg(long, default_value_t = 10 << 20)]
    max_request_body: u64,
    /// Time a client has to send a request head (also the idle timeout of HTTP/1.1
    /// keep-alive connections): a request under way gets 408, then the connection is
    /// closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Streams a client may have open at once on one HTTP/2 connection.
    #[arg(long, default_value_t = 256)]
    max_concurrent_streams: u32,
    /// Time allowed between two chunks of a request body: a body that stops arriving
    /// gets 408 and its upstream request is abandoned.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (HTTP/2
    /// with a GOAWAY; pings do not keep it open), on data and admin listeners.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Client connections open at once across the data listeners; more are closed at
    /// accept and counted. Default: half the open-file limit (raised to its hard limit
    /// at startup) less a reserve, so that each can hold an upstream connection too.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Runtime worker threads (default: one per core). `1` runs everything on one
    /// thread, whose scheduler serves connections in turn: under hundreds of
    /// connections its p99 is a fraction of a one-worker work-stealing runtime's.
    #[arg(long)]
    workers: Option<usize>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    abgate_config::duration::parse(text)
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> ExitCode {
    // One worker: the current-thread scheduler. With the work-stealing one at a single
    // worker, a tenth of the requests waited 30-300 ms behind the others at 256
    // connections and more (its LIFO slot runs a task woken by the running one ahead of
    // the queue, the likely cause); the current-thread one serves them in turn, with a
    // p99 four to six times lower (bench/results/2026-11-27-profile.md).
    let mut runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(workers.max(1));
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abgate serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

/// Whether a configuration may replace the running one (or start).
fn acceptable(loaded: &Loaded, strict: bool) -> bool {
    if strict {
        !loaded.diagnostics.iter().any(Diagnostic::is_error)
    } else {
        true
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    // Watching starts before the first read, so that no change after it goes unseen.
    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let _watcher = crate::reload::watch_files(&args.files, reload_tx);
    let loaded = match abgate_config::load(&args.files) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("abgate serve: {e}");
            return ExitCode::from(2);
        }
    };
    crate::reload::log_diagnostics(&loaded.diagnostics);
    if !acceptable(&loaded, args.strict) {
        eprintln!("abgate serve: the configuration has errors and --strict is set");
        return ExitCode::FAILURE;
    }
    let webhooks = match WebhookClient::new(
        args.gate_ca_file.as_deref(),
        AllowList::only(args.gate_allow.clone()),
    ) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("abgate serve: --gate-ca-file: {e:#}");
            return ExitCode::from(2);
        }
    };
    // A bad admin token stops startup before anything listens.
    let state_path = args.state.clone().unwrap_or_else(default_state_path);
    let token = match admin_token_beside(&args, &state_path) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("abgate serve: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = ServeOptions {
        listen: args.listen,
        listen_tls: args.listen_tls,
        admin: args.admin,
        certs: args.certs.clone(),
        access_log: match args.access_log.as_str() {
            "off" | "" => None,
            "stdout" | "-" => Some(AccessLogTarget::Stdout),
            path => Some(AccessLogTarget::File(PathBuf::from(path))),
        },
        otlp_endpoint: args.otlp_endpoint.clone(),
        analysis_window: Some(args.analysis_window),
    };
    let open_files = abgate_proxy::raise_open_file_limit();
    let limits = abgate_proxy::Limits {
        max_header_bytes: args.max_request_headers_size,
        max_headers: args.max_request_headers,
        max_request_body: args.max_request_body,
        header_read_timeout: args.header_read_timeout,
        max_concurrent_streams: args.max_concurrent_streams,
        body_read_timeout: args.body_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args
            .max_connections
            .unwrap_or_else(|| abgate_proxy::default_max_connections(open_files)),
    };
    tracing::info!(
        open_files,
        max_connections = limits.max_connections,
        "connection limits"
    );
    let running = match abgate_proxy::start_with(&loaded.config, &options, &limits).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("abgate serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = start_experiments(&running, &state_path, args.state_reset, token, webhooks);
    let (controller, store) = match started {
        Ok(started) => started,
        Err(e) => {
            eprintln!("abgate serve: {e:#}");
            running.shutdown(Duration::ZERO).await;
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(std::sync::Arc::clone(&controller).run(stop_rx));
    let reloader = Arc::new(Reloader::new(
        running.control(),
        Arc::clone(&controller),
        args.files.clone(),
        args.strict,
        &loaded,
    ));
    let mut settle = Settle::new(args.reload_settle);
    // Before announcing: a SIGHUP sent as soon as the addresses are printed must reload,
    // not end the process (the default action).
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup());
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate());
    announce(&running);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                settle.clear();
                reloader.reload_aside().await;
            }
            Some(()) = reload_rx.recv() => settle.changed(),
            () = settle.settled() => reloader.reload_aside().await,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = stop_tx.send(true);
    tracing::info!(grace = ?args.grace, "draining");
    running.shutdown(args.grace).await;
    // The main file whole on the way out, so that a stopped gateway's state file alone
    // is a usable copy.
    match tokio::task::spawn_blocking(move || store.checkpoint()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("state checkpoint: {e}"),
        Err(e) => tracing::warn!("state checkpoint: {e}"),
    }
    ExitCode::SUCCESS
}

/// The admin token, once the state file's directory (where a generated one goes) exists.
fn admin_token_beside(args: &ServeArgs, state_path: &Path) -> anyhow::Result<String> {
    if let Some(dir) = state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt as _;
        // Private: it holds the state and the generated admin token.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    admin_token(args, state_path)
}

/// Opens the state store (moving a damaged one aside first when `reset`), resumes the
/// experiments and installs the admin API; the controller and a handle on the store (to
/// checkpoint it).
fn start_experiments(
    running: &Running,
    state_path: &Path,
    reset: bool,
    token: String,
    webhooks: WebhookClient,
) -> anyhow::Result<(Arc<Controller>, abgate_state::Store)> {
    let store = crate::state::open_for_serve(state_path, reset)?;
    tokio::spawn(crate::state::checkpoint_periodically(store.clone()));
    let control = running.control();
    let controller =
        crate::actuator::start_controller(Arc::clone(&control), store.clone(), webhooks)?;
    let config = control.config();
    controller.restore_api_experiments(|doc| crate::api::parse_experiment(doc, &config))?;
    running.install_api(Box::new(ExperimentsApi::new(
        Arc::clone(&controller),
        control,
        token,
    )));
    tracing::info!(state = %state_path.display(), "experiment state");
    Ok((controller, store))
}

/// Where experiment state lives by default: `$XDG_STATE_HOME/abgate/state.db`, else
/// `~/.local/state/abgate/state.db`, else `./abgate-state.db`.
pub fn default_state_path() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map_or_else(
            || PathBuf::from("abgate-state.db"),
            |d| d.join("abgate/state.db"),
        )
}

/// The shortest admin token accepted: shorter ones can be guessed.
const MIN_TOKEN_BYTES: usize = 16;

/// The admin API's bearer token: from `--admin-token-file`, else `ABGATE_ADMIN_TOKEN`,
/// else one generated and written (mode 0600) beside the state file as `admin.token`.
/// Without a token given, the admin listener must be on a loopback address. A token
/// given is refused when it is empty, shorter than [`MIN_TOKEN_BYTES`], or not one
/// header-safe word, whatever the admin address.
fn admin_token(args: &ServeArgs, state_path: &Path) -> anyhow::Result<String> {
    if let Some(file) = &args.admin_token_file {
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return checked_token(&token, &format!("the admin token file {}", file.display()));
    }
    if let Some(token) = std::env::var_os("ABGATE_ADMIN_TOKEN") {
        let token = token
            .into_string()
            .map_err(|_| anyhow::anyhow!("ABGATE_ADMIN_TOKEN is not UTF-8"))?;
        return checked_token(&token, "ABGATE_ADMIN_TOKEN");
    }
    if !args.admin.ip().is_loopback() {
        anyhow::bail!(
            "the admin listener {} is not on a loopback address: give the API a token with --admin-token-file or ABGATE_ADMIN_TOKEN",
            args.admin
        );
    }
    let path = token_path(state_path);
    let token = format!("{:032x}", rand::random::<u128>());
    write_private(&path, &token)?;
    tracing::info!(path = %path.display(), "admin API token written");
    Ok(token)
}

/// A given token, trimmed of surrounding whitespace (a trailing newline above all), or
/// why it cannot guard the API; `source` names where it came from.
fn checked_token(text: &str, source: &str) -> anyhow::Result<String> {
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!(
            "{source} is empty: the admin API needs a token of at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        );
    }
    if token.len() < MIN_TOKEN_BYTES {
        anyhow::bail!(
            "{source} holds a token of {} bytes: an admin token needs at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)",
            token.len()
        );
    }
    // What an `Authorization: Bearer` header can carry as one credential.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "{source} holds a token with spaces, control or non-ASCII characters: an admin token is one word of visible ASCII"
        );
    }
    Ok(token.to_owned())
}

/// Where a generated admin token is written: beside the state file.
pub fn token_path(state_path: &Path) -> PathBuf {
    state_path.with_file_name("admin.token")
}

/// Writes `text` to `path`, readable by the owner only, also when the file existed.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to a file created now; tighten one that was there before
    // writing the secret into it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(kind)
        .expect("installing a signal handler succeeds in a Tokio runtime")
}

/// One line per listener on stdout, so that scripts and tests learn the bound addresses.
fn announce(running: &Running) {
    for (port, addr, tls) in &running.listeners {
        let scheme = if *tls { "https" } else { "http" };
        println!("listening {scheme} {addr} (gateway port {port})");
    }
    println!("listening admin {}", running.admin);
}
