//! abgate's data plane: listeners from Gateway servers (HTTP and HTTPS), Istio routing,
//! weighted and sticky splits, streaming forwarding with faults, timeouts, retries and
//! mirrors, and the admin listener.
#![forbid(unsafe_code)]

mod admin;
mod body;
mod client_body;
mod conn;
mod cors;
mod error;
mod headers;
mod load_scraper;
mod meter;
mod observe;
mod service;
mod slow_client;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use abgate_config::model::Experiment;
use abgate_config::Config;
use abgate_router::{BuildOptions, RouteTable};
use abgate_telemetry::Telemetry;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use admin::{AdminApi, ApiFuture, ApiRequest};
pub use body::ProxyBody;
use conn::ConnectionCap;
pub use error::{error_response, ProxyError, FLAGS_HEADER};
use load_scraper::LoadScrapers;
pub use observe::AccessLogTarget;
use observe::Observers;
pub use service::{ConnInfo, Shared};
use slow_client::Watched;

/// How `abgate serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address for every plain-HTTP Gateway server (or, with no Gateway, for the mesh view).
    pub listen: Option<SocketAddr>,
    /// Address for every HTTPS Gateway server (instead of the declared ports).
    pub listen_tls: Option<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Where `credentialName` secrets are: `<certs>/<name>/tls.crt` and `tls.key`.
    pub certs: Option<PathBuf>,
    /// Where access log lines go (none when `None`).
    pub access_log: Option<AccessLogTarget>,
    /// OTLP/HTTP collector base URL (`http://host:4318`) for spans (none when `None`).
    pub otlp_endpoint: Option<String>,
    /// Length of the per-variant store's windows (`None`: the store's default).
    pub analysis_window: Option<Duration>,
}

/// Limits on what clients may send, so that hostile or broken input costs little and
/// gets a clear answer. Every field has a default ([`Limits::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest HTTP/1.1 request head (request line and headers), in bytes: hyper answers
    /// `431` and closes the connection. At least 8 KiB (hyper's smallest read buffer).
    /// For HTTP/2 it is the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_bytes: usize,
    /// Most HTTP/1.1 request headers: beyond, hyper answers `431`.
    pub max_headers: usize,
    /// Largest request body, in bytes: `413` at once when `Content-Length` says more,
    /// and while streaming when a chunked body grows past it.
    pub max_request_body: u64,
    /// Time a client has to send a complete HTTP/1.1 request head, from when the
    /// connection waits for one, which is also after each response on a kept-alive
    /// connection (so this is the idle timeout of HTTP/1.1 connections too), and the
    /// time a new connection has to send its first byte. A request under way gets `408`
    /// and the connection closes; an idle kept-alive connection is closed silently.
    pub header_read_timeout: Duration,
    /// Streams a client may have open at once on one HTTP/2 connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Time allowed between two chunks of a request body, from the head on: a body that
    /// stops arriving gets `408` (`SI`) and its upstream exchange is abandoned.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY). Pings do not count as requests.
    pub idle_timeout: Duration,
    /// Client connections open at once across the data listeners; more are closed at
    /// accept and counted (`abgate_connections_refused_total`). The admin listener has
    /// its own [`ADMIN_MAX_CONNECTIONS`], so it stays reachable.
    pub max_connections: usize,
}

/// Connections the admin listener holds at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// File descriptors kept out of the connection cap's reach: listeners, the state file, the
/// log, scrapers, webhooks and the admin listener's connections.
const RESERVED_FDS: u64 = 256 + ADMIN_MAX_CONNECTIONS as u64;

/// Raises the process's open-file soft limit to its hard limit; returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The default `max_connections` for an open-file limit: each client connection may hold
/// an upstream connection too, so half of what is left after a reserve.
pub fn default_max_connections(open_file_limit: u64) -> usize {
    usize::try_from(open_file_limit.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(64)
}

impl Default for Limits {
    /// 60 KiB of headers and 100 of them (Envoy's `max_request_headers_kb` and
    /// `max_headers_count` defaults), 10 MiB of body, 30 s to send a head (hyper's
    /// default), 256 streams per HTTP/2 connection, 60 s between body chunks, 300 s idle,
    /// and connections capped from the open-file limit as it stands
    /// ([`default_max_connections`]).
    fn default() -> Self {
        let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        Self {
            max_header_bytes: 60 << 10,
            max_headers: 100,
            max_request_body: 10 << 20,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_connections: default_max_connections(open_files),
        }
    }
}

/// hyper's default limit on HTTP/1.1 request headers.
const HYPER_MAX_HEADERS: usize = 100;

impl Limits {
    /// The server connection builder these limits configure.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes.max(8192));
        // hyper's own limit is 100 headers, checked in an array on the stack; setting a
        // limit (even 100) makes it fill a vector of that size for every request head.
        if self.max_headers != HYPER_MAX_HEADERS {
            builder.http1().max_headers(self.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}

/// A running gateway: its bound addresses and the handles to reload or stop it.
pub struct Running {
    control: Arc<Control>,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::ops::Deref for Running {
    type Target = Control;

    fn deref(&self) -> &Control {
        &self.control
    }
}

/// What can be changed or read while the gateway runs, shareable (`Running::control`)
/// with an experiment controller or an API.
pub struct Control {
    api: admin::ApiSlot,
    shared: Arc<Shared>,
    live: std::sync::Mutex<Live>,
    build_options: BuildOptions,
    scrapers: LoadScrapers,
    /// Bound proxy listeners: route-table port, actual address, TLS.
    pub listeners: Vec<(u16, SocketAddr, bool)>,
    /// The admin listener's address.
    pub admin: SocketAddr,
}

impl Running {
    /// A shareable handle on the running gateway's configuration and telemetry.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Stops accepting, lets requests and streams in flight finish for up to `grace`, then
    /// returns. Readiness fails from the first moment.
    pub async fn shutdown(mut self, grace: Duration) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "grace period over; closing the connections still open"
            );
            // Aborting an accept loop drops its connection tasks, closing them.
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

impl Control {
    /// The address of the first plain-HTTP listener.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(_, _, tls)| !tls)
            .map(|(_, a, _)| *a)
    }

    /// The address of the first HTTPS listener.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(_, _, tls)| *tls)
            .map(|(_, a, _)| *a)
    }

    /// Serves `/api/...` on the admin listener with `api` from now on.
    pub fn install_api(&self, api: Box<dyn AdminApi>) {
        self.api.store(Some(Arc::new(api)));
    }

    /// The gateway's metrics and per-variant store.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }

    /// Swaps in a new configuration from files: the table is built aside, then replaces the
    /// old one in one atomic store; requests in flight finish on the table they started
    /// with. Runtime changes (API experiments, controller splits) stay layered on top.
    pub fn reload(&self, config: &Config) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.files = config.clone();
        self.rebuild(&live);
    }

    /// The configuration in force: from files, with the runtime changes layered on it.
    pub fn config(&self) -> Config {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .effective()
    }

    /// The experiments in force: from files and the API, with the splits set at runtime.
    pub fn experiments(&self) -> Vec<Experiment> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.effective().experiments
    }

    /// Sets an experiment's split; the next request already takes it. Refused when a
    /// variant given traffic has no endpoint to send it to.
    pub fn set_weights(&self, id: &str, weights: &[u32]) -> Result<(), LiveError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let effective = live.effective();
        let experiment = effective
            .experiments
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| LiveError::NoSuchExperiment(id.to_owned()))?;
        if weights.len() != experiment.variants.len() {
            return Err(LiveError::Invalid(format!(
                "{} weights given for {} variants",
                weights.len(),
                experiment.variants.len()
            )));
        }
        if weights.iter().all(|w| *w == 0) {
            return Err(LiveError::Invalid("the weights sum to 0".into()));
        }
        for (variant, weight) in experiment.variants.iter().zip(weights) {
            let endpoints = effective.subset_endpoints(&experiment.host, Some(&variant.subset));
            if *weight > 0 && endpoints.is_none_or(|e| e.is_empty()) {
                return Err(LiveError::NoEndpoints {
                    host: experiment.host.clone(),
                    subset: variant.subset.clone(),
                });
            }
        }
        live.weights.insert(id.to_owned(), weights.to_vec());
        self.rebuild(&live);
        Ok(())
    }

    /// Adds (or replaces) an experiment created at runtime; its rule goes ahead of its
    /// host's rules at once.
    pub fn upsert_experiment(&self, experiment: Experiment) -> Result<(), LiveError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let effective = live.effective();
        for variant in experiment.variants.iter().filter(|v| v.weight > 0) {
            let endpoints = effective.subset_endpoints(&experiment.host, Some(&variant.subset));
            if endpoints.is_none_or(|e| e.is_empty()) {
                return Err(LiveError::NoEndpoints {
                    host: experiment.host.clone(),
                    subset: variant.subset.clone(),
                });
            }
        }
        live.removed.remove(&experiment.id);
        live.weights.remove(&experiment.id);
        live.added.retain(|e| e.id != experiment.id);
        live.added.push(experiment);
        self.rebuild(&live);
        Ok(())
    }

    /// Removes an experiment's rule, leaving its host as it was.
    pub fn remove_experiment(&self, id: &str) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let known = live.effective().experiments.iter().any(|e| e.id == id);
        live.added.retain(|e| e.id != id);
        live.weights.remove(id);
        live.removed.insert(id.to_owned());
        self.rebuild(&live);
        known
    }

    fn rebuild(&self, live: &Live) {
        let config = live.effective();
        let previous = self.shared.table.load();
        let table = RouteTable::build(&config, &self.build_options, Some(&previous));
        for listener in &table.listeners {
            if !self
                .listeners
                .iter()
                .any(|(port, _, _)| *port == listener.port)
            {
                tracing::warn!(
                    port = listener.port,
                    "the new configuration adds a listener; restart to bind it"
                );
            }
        }
        for note in &table.notes {
            tracing::warn!("{note}");
        }
        let table = Arc::new(table);
        self.shared.table.store(Arc::clone(&table));
        self.scrapers.sync(&table);
    }
}

/// Why a runtime change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// No experiment has that id.
    #[error("no experiment {0}")]
    NoSuchExperiment(String),
    /// The change would send traffic where nothing can answer.
    #[error("subset {subset} of {host} has no endpoint; refusing to route traffic to it")]
    NoEndpoints {
        /// Host.
        host: String,
        /// Subset.
        subset: String,
    },
    /// The change is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// The configuration from files with the runtime changes layered on it.
#[derive(Default)]
struct Live {
    files: Config,
    /// Experiments created through the API.
    added: Vec<Experiment>,
    /// Splits set at runtime, by experiment id.
    weights: std::collections::HashMap<String, Vec<u32>>,
    /// Experiments deleted at runtime (file-defined ones stay deleted for this process).
    removed: std::collections::HashSet<String>,
}

impl Live {
    fn effective(&self) -> Config {
        let mut config = self.files.clone();
        config
            .experiments
            .retain(|e| !self.added.iter().any(|a| a.id == e.id));
        config.experiments.extend(self.added.iter().cloned());
        config.experiments.retain(|e| !self.removed.contains(&e.id));
        for experiment in &mut config.experiments {
            if let Some(weights) = self.weights.get(&experiment.id) {
                for (variant, weight) in experiment.variants.iter_mut().zip(weights) {
                    variant.weight = *weight;
                }
            }
        }
        config
    }
}

/// Binds every listener the configuration asks for and starts serving, with the default
/// [`Limits`].
pub async fn start(config: &Config, options: &ServeOptions) -> std::io::Result<Running> {
    start_with(config, options, &Limits::default()).await
}

/// [`start`] with the given limits on client input.
pub async fn start_with(
    config: &Config,
    options: &ServeOptions,
    limits: &Limits,
) -> std::io::Result<Running> {
    // A plain listener given by flag is bound first: its real port (maybe from :0) is the
    // route table's port for plain HTTP.
    let plain = match options.listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let tls_socket = match options.listen_tls {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let telemetry = match options.analysis_window {
        Some(window) => Telemetry::with_window(window),
        None => Telemetry::new(),
    };
    let build_options = BuildOptions {
        telemetry: Arc::clone(&telemetry),
        plain_http_port: plain
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?
            .map(|a| a.port()),
        tls_port: tls_socket
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?
            .map(|a| a.port()),
        own_addresses: Vec::new(),
    };
    let table = RouteTable::build(config, &build_options, None);
    for note in &table.notes {
        tracing::warn!("{note}");
    }

    let mut sockets: Vec<(u16, TcpListener, Option<Arc<rustls::ServerConfig>>)> = Vec::new();
    let mut plain = plain;
    let mut tls_socket = tls_socket;
    for listener in &table.listeners {
        let tls_config = if listener.tls {
            match tls::server_config(&listener.servers, options.certs.as_deref()) {
                Some(c) => Some(c),
                None => continue,
            }
        } else {
            None
        };
        let socket = match (listener.tls, plain.take(), tls_socket.take()) {
            (false, Some(s), t) => {
                tls_socket = t;
                s
            }
            (true, p, Some(s)) => {
                plain = p;
                s
            }
            (_, p, t) => {
                plain = p;
                tls_socket = t;
                let bind = listener
                    .servers
                    .iter()
                    .find_map(|s| s.bind.clone())
                    .unwrap_or_else(|| "0.0.0.0".into());
                TcpListener::bind((bind.as_str(), listener.port))
                    .await
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot listen on {bind}:{}: {e}", listener.port),
                        )
                    })?
            }
        };
        sockets.push((listener.port, socket, tls_config));
    }

    let observers =
        Observers::start(options.access_log.clone(), options.otlp_endpoint.as_deref()).await?;
    let mut shared = Shared::new(table, Arc::clone(&telemetry), observers);
    shared.max_request_body = limits.max_request_body;
    shared.body_read_timeout = limits.body_read_timeout;
    let shared = Arc::new(shared);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut bound = Vec::new();
    let builder = Arc::new(limits.builder());
    let cap = ConnectionCap::new(limits.max_connections);
    let admin_socket = TcpListener::bind(options.admin).await?;
    let admin_addr = admin_socket.local_addr()?;
    let mut own_addresses = vec![admin_addr];
    for (port, socket, tls_config) in sockets {
        let addr = socket.local_addr()?;
        bound.push((port, addr, tls_config.is_some()));
        own_addresses.push(addr);
        let listener = Listener {
            port,
            tls: tls_config.map(tokio_rustls::TlsAcceptor::from),
            builder: Arc::clone(&builder),
            limits: limits.clone(),
            cap: Arc::clone(&cap),
            counted: true,
        };
        tasks.spawn(accept_loop(
            socket,
            listener,
            Arc::clone(&shared),
            stopped.clone(),
        ));
    }
    // Now that the addresses are known, endpoints that are the gateway itself are marked,
    // and so will be those of every table built on a reload.
    shared.table.load().mark_own_addresses(&own_addresses);
    let build_options = BuildOptions {
        own_addresses,
        ..build_options
    };
    let api: admin::ApiSlot = Arc::default();
    tasks.spawn(admin::serve(
        admin_socket,
        admin::Context {
            ready: Arc::clone(&ready),
            telemetry: Arc::clone(&telemetry),
            api: Arc::clone(&api),
            shared: Arc::clone(&shared),
        },
        Listener {
            port: admin_addr.port(),
            tls: None,
            builder: Arc::clone(&builder),
            limits: limits.clone(),
            cap: ConnectionCap::new(ADMIN_MAX_CONNECTIONS),
            counted: false,
        },
        stopped.clone(),
    ));
    tasks.spawn(housekeep(Arc::clone(&telemetry), stopped.clone()));
    let scrapers = LoadScrapers::new(stopped.clone());
    scrapers.sync(&shared.table.load());
    ready.store(true, Ordering::SeqCst);
    let control = Arc::new(Control {
        api,
        shared,
        live: std::sync::Mutex::new(Live {
            files: config.clone(),
            ..Live::default()
        }),
        build_options,
        scrapers,
        listeners: bound,
        admin: admin_addr,
    });
    Ok(Running {
        control,
        ready,
        stop,
        tasks,
    })
}

/// Clears the variant store's next windows before they start, so recording never waits.
async fn housekeep(telemetry: Arc<Telemetry>, mut stopped: watch::Receiver<bool>) {
    let period = (telemetry.store().window_len() / 2).max(Duration::from_millis(100));
    loop {
        telemetry.store().housekeep(std::time::Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// One listening socket's settings: its route-table port, TLS, and the limits its
/// connections live under.
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(crate) limits: Limits,
    pub(crate) cap: Arc<ConnectionCap>,
    /// Whether its connections count in the gateway's client-connection figures (the
    /// admin listener's do not).
    pub(crate) counted: bool,
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Listener {
    /// Accepts on `socket` until `stopped`, then lets the connections finish. Each runs
    /// `make_service` for its client under the listener's limits. Connections are owned
    /// here, so that aborting this task (when the grace period is over) closes them too.
    pub(crate) async fn run<F, S, B>(
        &self,
        socket: TcpListener,
        telemetry: &Arc<Telemetry>,
        make_service: F,
        mut stopped: watch::Receiver<bool>,
    ) where
        F: Fn(SocketAddr, Arc<conn::Activity>) -> S,
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<B>,
            > + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut connections = JoinSet::new();
        loop {
            let (stream, remote) = tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = socket.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            let Some(slot) = self.cap.try_take() else {
                if self.counted {
                    telemetry.gateway().record_connection_refused();
                }
                tracing::debug!(%remote, "connection refused: too many open");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let activity = conn::Activity::new();
            let service = make_service(remote, Arc::clone(&activity));
            let client = ClientConnection {
                builder: Arc::clone(&self.builder),
                service,
                activity,
                head_timeout: self.limits.header_read_timeout,
                idle: self.limits.idle_timeout,
                stopped: stopped.clone(),
            };
            let tls = self.tls.clone();
            let telemetry = self.counted.then(|| Arc::clone(telemetry));
            connections.spawn(async move {
                let _slot = slot;
                let _open = telemetry.as_ref().map(|t| t.gateway().track_connection());
                match tls {
                    None => client.serve(stream).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => client.serve(stream).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        // Refuse new connections at once, then let those open drain (they were told to
        // close gracefully).
        drop(socket);
        while connections.join_next().await.is_some() {}
    }
}

/// One accepted client connection and what serving it takes.
struct ClientConnection<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    activity: Arc<conn::Activity>,
    head_timeout: Duration,
    idle: Duration,
    stopped: watch::Receiver<bool>,
}

impl<S, B> ClientConnection<S>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Serves the connection over `stream` (plain, or TLS once the handshake is done),
    /// watched for a slow or missing request head (408).
    async fn serve<IO>(self, stream: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, returned) = Watched::new(stream, self.head_timeout);
        let served = conn::serve(
            &self.builder,
            stream,
            self.service,
            &self.activity,
            self.idle,
            self.stopped,
        )
        .await;
        if let Err(e) = served {
            connection_error(&*e, returned, self.head_timeout).await;
        }
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: Listener,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) {
    let tls = listener.tls.is_some();
    let port = listener.port;
    let telemetry = Arc::clone(&shared.telemetry);
    listener
        .run(
            socket,
            &telemetry,
            move |remote, activity| {
                let conn = ConnInfo { port, tls, remote };
                let shared = Arc::clone(&shared);
                // Boxed: hyper keeps room for the service's future in every HTTP/1.1
                // connection, idle or not (`Box::pin(None)` sized for it), so an unboxed
                // future of a few KiB would cost that much per kept-alive connection.
                service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let open = activity.request();
                    Box::pin(async move {
                        let response = service::handle(shared, conn, req).await;
                        Ok::<_, std::convert::Infallible>(conn::counted(response, open))
                    })
                })
            },
            stopped,
        )
        .await;
}

/// A client connection ended with `error`: a slow client mid-request gets its 408.
async fn connection_error<S: tokio::io::AsyncWrite + Unpin>(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    returned: tokio::sync::oneshot::Receiver<slow_client::Returned<S>>,
    head_timeout: Duration,
) {
    if slow_client::is_head_timeout(error) {
        tracing::debug!(error = %error, "no request head in time");
        slow_client::answer_timeout(returned, head_timeout).await;
    } else {
        tracing::debug!(error = %error, "connection ended with an error");
    }
}
