//! `abgate serve`: the gateway, with hot reload on file change or SIGHUP and a graceful
//! drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use abgate_config::{Diagnostic, Loaded, Severity};
use abgate_proxy::{AccessLogTarget, Running, ServeOptions};
use notify::Watcher;
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
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    abgate_config::duration::parse(text)
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abgate serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

fn log_diagnostics(loaded: &Loaded) {
    for d in &loaded.diagnostics {
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
            Severity::Info => tracing::info!("{d}"),
        }
    }
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
    let loaded = match abgate_config::load(&args.files) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("abgate serve: {e}");
            return ExitCode::from(2);
        }
    };
    log_diagnostics(&loaded);
    if !acceptable(&loaded, args.strict) {
        eprintln!("abgate serve: the configuration has errors and --strict is set");
        return ExitCode::FAILURE;
    }
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
    let running = match abgate_proxy::start(&loaded.config, &options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("abgate serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(&running);

    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let _watcher = watch_files(&args.files, reload_tx.clone());
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup());
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate());
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&running, &args),
            Some(()) = reload_rx.recv() => {
                // Editors write in several steps: let them finish before reading.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while reload_rx.try_recv().is_ok() {}
                reload(&running, &args);
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!(grace = ?args.grace, "draining");
    running.shutdown(args.grace).await;
    ExitCode::SUCCESS
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

fn reload(running: &Running, args: &ServeArgs) {
    let loaded = match abgate_config::load(&args.files) {
        Ok(l) => l,
        Err(e) => {
            running.telemetry().gateway().record_config_reload(false);
            tracing::error!("reload: {e}; the running configuration stays");
            return;
        }
    };
    log_diagnostics(&loaded);
    if loaded.has_rejected() || !acceptable(&loaded, args.strict) {
        running.telemetry().gateway().record_config_reload(false);
        tracing::error!(
            "reload refused: the configuration has errors; the running configuration stays"
        );
        return;
    }
    running.reload(&loaded.config);
    running.telemetry().gateway().record_config_reload(true);
    tracing::info!("configuration reloaded");
}

fn watch_files(paths: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!("file watching unavailable ({e}); reload with SIGHUP"))
    .ok()?;
    for path in paths {
        if let Err(e) = watcher.watch(path, notify::RecursiveMode::Recursive) {
            tracing::warn!("cannot watch {}: {e}; reload with SIGHUP", path.display());
        }
    }
    Some(watcher)
}
