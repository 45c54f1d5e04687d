//! Helpers shared by the integration tests: a server on 127.0.0.1:0 and a small client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Instant;

use abgate_sim::{serve, SimArgs};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A simulator serving on an ephemeral port, stopped by [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(args: SimArgs) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, args, async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and returns the join handle of `serve`.
    pub fn begin_stop(self) -> JoinHandle<std::io::Result<()>> {
        let _ = self.stop.send(());
        self.task
    }

    pub async fn stop(self) {
        self.begin_stop().await.unwrap().unwrap();
    }
}

/// Simulator settings for tests: the defaults with a fixed model name and seed.
pub fn args() -> SimArgs {
    SimArgs {
        model: "test-model".into(),
        seed: Some(1),
        ..SimArgs::default()
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: &str,
) -> Response<hyper::body::Incoming> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    client.request(req).await.unwrap()
}

/// POSTs `body` and returns the status and the whole response body.
pub async fn post(client: &HttpClient, url: &str, body: &str) -> (StatusCode, Bytes) {
    let res = send(client, Method::POST, url, body).await;
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

pub async fn get(client: &HttpClient, url: &str) -> (StatusCode, Bytes) {
    let res = send(client, Method::GET, url, "").await;
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Asserts `body` is an OpenAI error of type `kind`.
pub fn assert_openai_error(body: &[u8], kind: &str) {
    let v = json(body);
    let err = &v["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert_eq!(err["type"], kind, "{v}");
    assert!(err.get("param").is_some(), "{v}");
    assert_eq!(err["code"], Value::Null, "{v}");
}

/// One server-sent event and when its last byte arrived.
pub struct Event {
    pub data: String,
    pub at: Instant,
}

/// Reads an SSE body frame by frame, splitting it into `data:` events.
pub async fn read_events(res: Response<hyper::body::Incoming>) -> Vec<Event> {
    let mut body = res.into_body();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let at = Instant::now();
        if let Some(data) = frame.data_ref() {
            buf.push_str(std::str::from_utf8(data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .trim_end()
                .to_owned();
            events.push(Event { data, at });
        }
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    events
}
