//! Upstream connections: one pooled client per distinct connection setting of the
//! DestinationRules' `connectionPool` (`tcp.connectTimeout`, `tcp.tcpKeepalive`,
//! `http.idleTimeout`, and HTTP/1.1 or h2c), and `http.maxRequestsPerConnection`.
//!
//! hyper-util's legacy client pools connections per authority; it has no per-request
//! connect timeout nor a request budget per connection. So:
//! - a cluster whose settings differ from the defaults gets its own client (shared by
//!   every cluster with the same settings), built with those settings;
//! - when a cluster sets it, every connection carries a counter of the requests it served
//!   (a `Connected` extra), and after the N-th response a connection is poisoned, so the
//!   pool never hands it out again and it closes once its response ends (Envoy drains it
//!   the same way). Clusters without the limit use clients whose connections carry no
//!   extra: hyper-util copies a connection's extra into every response otherwise.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use abgate_config::model::ConnectionPool;
use http::{Extensions, Request, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::UpstreamBody;

/// Istio's default `connectTimeout` (the mesh's `connectTimeout`, 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle upstream connection stays pooled when `idleTimeout` is unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// When `tcpKeepalive` is given without `time`, the Linux default (2 h).
const DEFAULT_KEEPALIVE_TIME: Duration = Duration::from_secs(7200);

/// The pooled upstream client.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// The settings that need a client of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey {
    http2: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    keepalive: Option<(Option<Duration>, Option<Duration>, Option<u32>)>,
    /// Whether connections count their requests (`maxRequestsPerConnection`).
    budget: bool,
}

impl ClientKey {
    fn of(pool: Option<&ConnectionPool>, http2: bool) -> Self {
        let keepalive = pool.and_then(|p| {
            let k = (
                p.tcp_keepalive_time,
                p.tcp_keepalive_interval,
                p.tcp_keepalive_probes,
            );
            (k != (None, None, None)).then_some(k)
        });
        Self {
            http2,
            connect_timeout: pool
                .and_then(|p| p.connect_timeout)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: pool
                .and_then(|p| p.idle_timeout)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            keepalive,
            budget: pool
                .and_then(|p| p.max_requests_per_connection)
                .is_some_and(|n| n > 0),
        }
    }

    fn build(&self) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.enforce_http(true);
        if let Some((time, interval, probes)) = self.keepalive {
            http.set_keepalive(Some(time.unwrap_or(DEFAULT_KEEPALIVE_TIME)));
            http.set_keepalive_interval(interval);
            http.set_keepalive_retries(probes);
        }
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(self.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if self.http2 {
            builder.http2_only(true);
        }
        builder.build(Connector {
            inner: http,
            budget: self.budget,
        })
    }
}

/// Upstream clients by connection settings.
pub struct Clients {
    http1: UpstreamClient,
    http2: UpstreamClient,
    custom: RwLock<HashMap<ClientKey, UpstreamClient>>,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            http1: ClientKey::of(None, false).build(),
            http2: ClientKey::of(None, true).build(),
            custom: RwLock::default(),
        }
    }
}

impl Clients {
    /// The client for a cluster's `connectionPool`, speaking HTTP/2 (h2c) or HTTP/1.1.
    pub fn get(&self, pool: Option<&ConnectionPool>, http2: bool) -> UpstreamClient {
        let key = ClientKey::of(pool, http2);
        if key == ClientKey::of(None, http2) {
            return if http2 {
                self.http2.clone()
            } else {
                self.http1.clone()
            };
        }
        if let Some(client) = self
            .custom
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return client.clone();
        }
        self.custom
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| key.build())
            .clone()
    }

    /// The default HTTP/1.1 client.
    pub fn http1(&self) -> &UpstreamClient {
        &self.http1
    }
}

/// `HttpConnector`, with a request counter on every connection.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector,
    /// Whether each connection counts the requests it serves.
    budget: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.inner, uri);
        let budget = self.budget;
        Box::pin(async move {
            let io = connecting.await.map_err(BoxError::from)?;
            Ok(Conn {
                io,
                served: budget.then(Served::default),
            })
        })
    }
}

/// Requests a connection has served.
#[derive(Clone, Debug, Default)]
struct Served(Arc<AtomicU32>);

/// An upstream TCP connection.
pub struct Conn {
    io: TokioIo<TcpStream>,
    /// The request counter, when the cluster limits requests per connection.
    served: Option<Served>,
}

impl Connection for Conn {
    /// A plain connection. `TcpStream`'s own `connected()` attaches an `HttpInfo` extra
    /// (the addresses, two syscalls to read them) that hyper-util then copies into every
    /// response; nothing here reads it.
    fn connected(&self) -> Connected {
        match &self.served {
            Some(served) => Connected::new().extra(served.clone()),
            None => Connected::new(),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Watches which connection a request goes out on, to retire the connection after
/// `maxRequestsPerConnection` requests.
pub struct Budget {
    capture: CaptureConnection,
    limit: u32,
}

impl Budget {
    /// Watches `request` when the cluster limits requests per connection.
    pub fn watch<B>(pool: Option<&ConnectionPool>, request: &mut Request<B>) -> Option<Self> {
        let limit = pool?.max_requests_per_connection.filter(|n| *n > 0)?;
        Some(Self {
            capture: capture_connection(request),
            limit,
        })
    }

    /// The request got its response: count it against its connection, and poison the
    /// connection when this was its last.
    pub fn spend(&self) {
        let metadata = self.capture.connection_metadata();
        let Some(connected) = metadata.as_ref() else {
            return;
        };
        let mut extras = Extensions::new();
        connected.get_extras(&mut extras);
        if let Some(served) = extras.get::<Served>() {
            if served.0.fetch_add(1, Ordering::AcqRel) + 1 >= self.limit {
                connected.poison();
            }
        }
    }
}
