//! Shared helpers for the end-to-end tests: real TCP on 127.0.0.1 with ephemeral ports,
//! everything in-process.
//!
//! - [`Mesh`] builds Gateway-less (mesh view) YAML: ServiceEntries with `127.0.0.1`
//!   endpoints on the ports of the backends started by the test, DestinationRules whose
//!   subsets select them by `version` label, and VirtualService text written by the test.
//! - [`Gateway`] loads YAML, starts `abgate_proxy::start` on `127.0.0.1:0`, sends requests
//!   with hyper-util's legacy client (`Host: models.local` unless told otherwise), reloads
//!   and shuts down.
//! - [`Backend`] is a tiny hyper server that records every request (method, path, headers,
//!   body) and answers as the test says (a status, or never).
//! - [`Sim`] is `abgate_sim::serve` on an ephemeral port.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abgate_config::{Config, SourceFile};
use abgate_proxy::{Running, ServeOptions, FLAGS_HEADER};
use abgate_sim::SimArgs;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The host the tests' VirtualServices serve.
pub const HOST: &str = "models.local";

/// How long any single request may take before the test gives up on it.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Configuration

/// Parses YAML text into the effective configuration; panics (printing the diagnostics)
/// when a resource is refused, since a test config that does not load tests nothing.
pub fn load(yaml: &str) -> Config {
    let loaded = abgate_config::load_sources(&[SourceFile {
        path: Arc::from(Path::new("test.yaml")),
        text: yaml.to_owned(),
    }]);
    if loaded.has_rejected() {
        let text: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        panic!(
            "test configuration refused:\n{}\n---\n{yaml}",
            text.join("\n")
        );
    }
    loaded.config
}

/// Mesh-view configuration text, built from parts.
#[derive(Default, Clone)]
pub struct Mesh {
    docs: Vec<String>,
}

impl Mesh {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ServiceEntry for `host` whose endpoints are `127.0.0.1:<port>` labelled
    /// `version: <version>`.
    pub fn service(mut self, host: &str, endpoints: &[(u16, &str)]) -> Self {
        let mut text = format!(
            "apiVersion: networking.istio.io/v1\n\
             kind: ServiceEntry\n\
             metadata:\n  name: se-{name}\n  namespace: default\n\
             spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports:\n  - number: 8000\n    name: http\n    protocol: HTTP\n\
             \x20 endpoints:\n",
            name = host.replace('.', "-"),
        );
        for (port, version) in endpoints {
            text.push_str(&format!(
                "  - address: 127.0.0.1\n    ports: {{http: {port}}}\n    labels: {{version: {version}}}\n"
            ));
        }
        self.docs.push(text);
        self
    }

    /// A DestinationRule for `host` with one subset per name, selecting `version: <name>`.
    pub fn subsets(mut self, host: &str, names: &[&str]) -> Self {
        let mut text = format!(
            "apiVersion: networking.istio.io/v1\n\
             kind: DestinationRule\n\
             metadata:\n  name: dr-{name}\n  namespace: default\n\
             spec:\n  host: {host}\n  subsets:\n",
            name = host.replace('.', "-"),
        );
        for subset in names {
            text.push_str(&format!(
                "  - name: {subset}\n    labels: {{version: {subset}}}\n"
            ));
        }
        self.docs.push(text);
        self
    }

    /// A ServiceEntry and a DestinationRule with a subset per distinct version.
    pub fn backend(self, host: &str, endpoints: &[(u16, &str)]) -> Self {
        let mut versions: Vec<&str> = Vec::new();
        for (_, v) in endpoints {
            if !versions.contains(v) {
                versions.push(v);
            }
        }
        self.service(host, endpoints).subsets(host, &versions)
    }

    /// Any other document (a VirtualService, an Experiment ...).
    pub fn doc(mut self, yaml: &str) -> Self {
        self.docs.push(yaml.trim_matches('\n').to_owned());
        self
    }

    /// The multi-document YAML.
    pub fn yaml(&self) -> String {
        self.docs.join("\n---\n")
    }
}

/// `{{NAME}}` → value, for YAML written in the test.
pub fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in vars {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "unfilled placeholder in template:\n{text}"
    );
    text
}

// ---------------------------------------------------------------------------------------
// The gateway

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Reply {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-abgate-response-flags`, or "" when absent.
    pub fn flags(&self) -> &str {
        self.header(FLAGS_HEADER).unwrap_or("")
    }

    /// The flags as a list.
    pub fn flag_list(&self) -> Vec<&str> {
        self.flags()
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks that the body is an OpenAI-shaped error (`{"error": {"message", "type",
    /// "param", "code"}}`) and returns its `error` object.
    pub fn openai_error(&self) -> serde_json::Value {
        let json = self.json();
        let error = json
            .get("error")
            .unwrap_or_else(|| panic!("no `error` object in {json}"))
            .clone();
        for key in ["message", "type", "param", "code"] {
            assert!(error.get(key).is_some(), "error body lacks `{key}`: {json}");
        }
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        assert!(error["type"].is_string(), "{json}");
        assert!(error["code"].is_string(), "{json}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error content type"
        );
        error
    }
}

/// A cloneable HTTP/1.1 client aimed at one gateway address.
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        Self { addr, client }
    }

    /// A request to `path` with `Host: models.local`; add headers and a body to it.
    pub fn req(&self, method: &str, path: &str) -> http::request::Builder {
        self.req_for(HOST, method, path)
    }

    /// A request to `path` with the given `Host`.
    pub fn req_for(&self, host: &str, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("http://{}{}", self.addr, path))
            .header(http::header::HOST, host)
    }

    /// Sends and reads the whole response; panics on a transport error or after
    /// [`REQUEST_LIMIT`].
    pub async fn send(&self, req: http::request::Builder, body: impl Into<Bytes>) -> Reply {
        self.try_send(req, body)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    /// Like [`Http::send`], reporting failures instead of panicking.
    pub async fn try_send(
        &self,
        req: http::request::Builder,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(req).await.map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok::<_, String>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
                elapsed: started.elapsed(),
            })
        };
        match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete response within {REQUEST_LIMIT:?}")),
        }
    }

    /// Sends and returns the response with its body unread (for streams).
    pub async fn stream(
        &self,
        req: http::request::Builder,
        body: impl Into<Bytes>,
    ) -> Response<Incoming> {
        let req = req.body(Full::new(body.into())).expect("request");
        tokio::time::timeout(REQUEST_LIMIT, self.client.request(req))
            .await
            .expect("response headers in time")
            .expect("response")
    }

    /// `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.req("GET", path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req, Bytes::new()).await
    }

    /// `POST /v1/chat/completions` with a small JSON body and extra headers.
    pub async fn chat(&self, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .req("POST", "/v1/chat/completions")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req, chat_body("test-model", false)).await
    }
}

/// A small OpenAI chat request body (no `max_tokens`: the sim's `output_tokens` decides
/// the length).
pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "say something"}],
        "stream": stream,
        "temperature": 0.5,
    })
    .to_string()
}

/// A running gateway on ephemeral ports.
pub struct Gateway {
    running: Option<Running>,
    pub addr: SocketAddr,
    pub http: Http,
}

impl Gateway {
    /// Starts the mesh view (no Gateway resource) of `yaml` on `127.0.0.1:0`.
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_config(&load(yaml)).await
    }

    /// Starts a configuration on `127.0.0.1:0` (plain HTTP only).
    pub async fn start_config(config: &Config) -> Gateway {
        Self::start_limited(config, &abgate_proxy::Limits::default()).await
    }

    /// Starts a configuration on `127.0.0.1:0` with limits on client input.
    pub async fn start_limited(config: &Config, limits: &abgate_proxy::Limits) -> Gateway {
        let running = abgate_proxy::start_with(
            config,
            &ServeOptions {
                listen: Some("127.0.0.1:0".parse().expect("addr")),
                listen_tls: None,
                admin: "127.0.0.1:0".parse().expect("addr"),
                certs: None,
                access_log: None,
                otlp_endpoint: None,
                analysis_window: None,
            },
            limits,
        )
        .await
        .expect("the gateway starts");
        Self::from_running(running)
    }

    /// Wraps a gateway started by the test itself.
    pub fn from_running(running: Running) -> Gateway {
        let addr = running
            .http_addr()
            .or_else(|| running.https_addr())
            .expect("a listener");
        Gateway {
            running: Some(running),
            addr,
            http: Http::new(addr),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Swaps in a new configuration.
    pub fn reload(&self, yaml: &str) {
        self.running().reload(&load(yaml));
    }

    /// `GET /endpoints` from the admin listener.
    pub async fn endpoints(&self) -> serde_json::Value {
        let reply = Http::new(self.running().admin).get("/endpoints", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        reply.json()
    }

    /// How `/endpoints` lists the endpoint `127.0.0.1:<port>` of cluster `cluster`.
    pub async fn endpoint(&self, cluster: &str, port: u16) -> serde_json::Value {
        let json = self.endpoints().await;
        let cluster = json["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap_or_else(|| panic!("no cluster {cluster} in {json}"))
            .clone();
        cluster["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["address"] == format!("127.0.0.1:{port}"))
            .unwrap_or_else(|| panic!("no endpoint {port} in {cluster}"))
            .clone()
    }

    /// Graceful stop with a short grace period.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(2)).await;
    }

    /// Graceful stop with the given grace period.
    pub async fn stop_within(mut self, grace: Duration) {
        if let Some(running) = self.running.take() {
            running.shutdown(grace).await;
        }
    }
}

/// Writes `request` on a new connection to `addr` (then closes the writing half when
/// `half_close`, so the gateway reads an end), and reads until the connection closes (or
/// 5 s pass); returns what came back and how long the connection stayed open.
pub async fn raw(addr: SocketAddr, request: &[u8], half_close: bool) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    // A connection refused at accept may already be closed: what came back tells.
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// The first line of a raw HTTP/1.1 answer.
pub fn status_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// Recording backends

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub version: http::Version,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn host(&self) -> Option<&str> {
        self.header("host")
    }
}

/// How a backend answers its `n`th request (0-based).
pub enum Answer {
    /// A status with a body; the backend adds `x-backend: <name>`.
    Status(u16, String),
    /// The same, after a delay.
    After(Duration, u16, String),
    /// Never sends response headers.
    Hang,
}

type Handler = dyn Fn(usize, &Seen) -> Answer + Send + Sync;

/// A tiny hyper server that records requests.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    load: Arc<Load>,
    accept: tokio::task::JoinHandle<()>,
}

/// Connections accepted, requests in flight and their peak.
#[derive(Default)]
struct Load {
    connections: AtomicUsize,
    active: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts a request in flight at a backend until dropped.
struct Busy(Arc<Load>);

impl Busy {
    fn new(load: &Arc<Load>) -> Busy {
        let now = load.active.fetch_add(1, Ordering::SeqCst) + 1;
        load.peak.fetch_max(now, Ordering::SeqCst);
        Busy(Arc::clone(load))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Backend {
    /// Starts a backend answering with `handler`.
    pub async fn spawn(
        name: &str,
        handler: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        Self::spawn_at("127.0.0.1:0".parse().expect("addr"), name, handler).await
    }

    /// Starts a backend on `addr` (a port freed by a backend that was dropped, to bring
    /// an endpoint back). Dropping a backend kills it: its listener and every connection
    /// it accepted are closed at once.
    pub async fn spawn_at(
        addr: SocketAddr,
        name: &str,
        handler: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let load: Arc<Load> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let name_owned = name.to_owned();
        let seen_in = Arc::clone(&seen);
        let load_in = Arc::clone(&load);
        let accept = tokio::spawn(async move {
            let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
            // Owned here, so that aborting this task closes the connections too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                load_in.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let load = Arc::clone(&load_in);
                let seen = Arc::clone(&seen_in);
                let handler = Arc::clone(&handler);
                let name = name_owned.clone();
                let builder = Arc::clone(&builder);
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        let handler = Arc::clone(&handler);
                        let name = name.clone();
                        let busy = Busy::new(&load);
                        async move {
                            let _busy = busy;
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let record = Seen {
                                method: parts.method,
                                version: parts.version,
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".into(), |p| p.as_str().to_owned()),
                                headers: parts.headers,
                                body,
                            };
                            let index = {
                                let mut all = seen.lock().expect("lock");
                                all.push(record.clone());
                                all.len() - 1
                            };
                            let answer = match handler(index, &record) {
                                Answer::After(delay, status, text) => {
                                    tokio::time::sleep(delay).await;
                                    Answer::Status(status, text)
                                }
                                other => other,
                            };
                            match answer {
                                Answer::Status(status, text) => {
                                    let mut r = Response::new(Full::new(Bytes::from(text)));
                                    *r.status_mut() = StatusCode::from_u16(status).expect("status");
                                    r.headers_mut()
                                        .insert("x-backend", name.parse().expect("name"));
                                    Ok::<_, Infallible>(r)
                                }
                                Answer::Hang | Answer::After(..) => std::future::pending().await,
                            }
                        }
                    });
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            seen,
            load,
            accept,
        }
    }

    /// 200 `{"backend": "<name>"}` after `delay`.
    pub async fn slow(name: &str, delay: Duration) -> Backend {
        let body = serde_json::json!({ "backend": name }).to_string();
        Self::spawn(name, move |_, _| Answer::After(delay, 200, body.clone())).await
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.load.connections.load(Ordering::SeqCst)
    }

    /// The most requests it had in flight at once.
    pub fn peak(&self) -> usize {
        self.load.peak.load(Ordering::SeqCst)
    }

    /// Always 200 with body `{"backend": "<name>"}`.
    pub async fn ok(name: &str) -> Backend {
        let body = serde_json::json!({ "backend": name }).to_string();
        Self::spawn(name, move |_, _| Answer::Status(200, body.clone())).await
    }

    /// `status` for the first `n` requests, then 200.
    pub async fn failing_then_ok(name: &str, status: u16, n: usize) -> Backend {
        Self::spawn(name, move |i, _| {
            if i < n {
                Answer::Status(status, format!("failure {}", i + 1))
            } else {
                Answer::Status(200, "ok".into())
            }
        })
        .await
    }

    /// Never answers.
    pub async fn hang(name: &str) -> Backend {
        Self::spawn(name, |_, _| Answer::Hang).await
    }

    /// Never answers the first `n` requests, then 200.
    pub async fn hang_first(name: &str, n: usize) -> Backend {
        Self::spawn(name, move |i, _| {
            if i < n {
                Answer::Hang
            } else {
                Answer::Status(200, "ok".into())
            }
        })
        .await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests seen so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("at least one request")
    }

    /// Waits until at least `n` requests were seen, up to `limit`; returns the count.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let count = self.count();
            if count >= n || Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A port that refuses connections: bound but never listening, so that no other test's
/// `bind(127.0.0.1:0)` can be handed the same port while this test relies on it being
/// closed (a port bound and released at once is soon reused by the next ephemeral bind).
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let port = socket.local_addr().expect("addr").port();
        ClosedPort {
            _socket: socket,
            port,
        }
    }
}

/// A port whose connections hang: listening with a backlog of 0 and never accepting, its
/// accept queue is filled by one connection, after which Linux drops every SYN, so a
/// `connect` waits (retransmitting) until its own timeout.
pub struct Blackhole {
    _listener: TcpListener,
    _filler: Vec<tokio::net::TcpStream>,
    pub port: u16,
}

impl Blackhole {
    pub async fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let listener = socket.listen(0).expect("listen");
        let mut filler = Vec::new();
        // Fill the accept queue; stop once a connect no longer completes.
        for _ in 0..4 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            {
                Ok(Ok(s)) => filler.push(s),
                _ => break,
            }
        }
        Blackhole {
            _listener: listener,
            _filler: filler,
            port,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Simulated model servers

/// A sim that streams for a long time: 10 tokens/s, 1,000 tokens.
pub fn long_stream() -> SimArgs {
    SimArgs {
        model: "long".into(),
        tokens_per_second: 10.0,
        output_tokens: 1000,
        ..SimArgs::default()
    }
}

/// `abgate_sim::serve` on an ephemeral port; stops when dropped.
pub struct Sim {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    pub async fn spawn(args: SimArgs) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(abgate_sim::serve(listener, args, async move {
            let _ = stopped.await;
        }));
        Sim { addr, _stop: stop }
    }

    /// A sim reporting `model`, answering at once with `output_tokens: 2`.
    pub async fn model(model: &str) -> Sim {
        Self::spawn(SimArgs {
            model: model.into(),
            output_tokens: 2,
            ..SimArgs::default()
        })
        .await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `vllm:num_requests_running` from the sim's own `/metrics`.
    pub async fn running(&self) -> u64 {
        let reply = Http::new(self.addr).get("/metrics", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let text = reply.text();
        text.lines()
            .find(|l| l.starts_with("vllm:num_requests_running"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no vllm:num_requests_running in\n{text}"))
    }

    /// Polls `running()` until it equals `want` or `limit` passes; returns the last value.
    pub async fn wait_running(&self, want: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.running().await;
            if now == want || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// Runs `f(0..n)` on `workers` concurrent tasks; results in index order.
pub async fn run_many<T, F, Fut>(n: usize, workers: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let f = Arc::clone(&f);
        let next = Arc::clone(&next);
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, f(i).await));
            }
        });
    }
    let mut all: Vec<(usize, T)> = Vec::with_capacity(n);
    while let Some(part) = set.join_next().await {
        all.extend(part.expect("worker panicked"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Whether `count` successes out of `n` trials is within `sds` standard deviations of a
/// Binomial(n, p) mean; returns a message for the assertion either way.
pub fn within_binomial(count: usize, n: usize, p: f64, sds: f64) -> (bool, String) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let ok = (count as f64 - mean).abs() <= sds * sd;
    (
        ok,
        format!(
            "{count} of {n}: expected {mean:.1} ± {:.1} ({sds} sd of Binomial({n}, {p}), sd {sd:.2})",
            sds * sd
        ),
    )
}
