//! Access log and traces: what each request did, for people and for tracing backends.
//!
//! Both are off unless configured, and then cost one small allocation per request; lines
//! and spans go to a background task through a bounded channel, so a slow disk or
//! collector never slows a request (when the channel is full the record is dropped and
//! counted).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The optional observers of every request.
#[derive(Default)]
pub struct Observers {
    access_log: Option<mpsc::Sender<String>>,
    tracer: Option<mpsc::Sender<Value>>,
    /// Records dropped because a writer or exporter fell behind.
    pub dropped: AtomicU64,
}

impl Observers {
    /// Starts the writer and exporter tasks that are configured.
    pub async fn start(
        access_log: Option<AccessLogTarget>,
        otlp_endpoint: Option<&str>,
    ) -> std::io::Result<Self> {
        let access_log = match access_log {
            None => None,
            Some(target) => Some(spawn_access_log(target).await?),
        };
        let tracer = match otlp_endpoint {
            None => None,
            Some(endpoint) => Some(spawn_exporter(endpoint)?),
        };
        Ok(Self {
            access_log,
            tracer,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether anything observes requests (so their details are worth collecting).
    pub fn active(&self) -> bool {
        self.access_log.is_some() || self.tracer.is_some()
    }

    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.tracer.is_some()
    }

    /// Logs and exports one finished request.
    pub fn emit(&self, info: &RequestInfo, outcome: &Outcome) {
        if let Some(tx) = &self.access_log {
            let mut line = access_line(info, outcome).to_string();
            line.push('\n');
            if tx.try_send(line).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let (Some(tx), Some(trace)) = (&self.tracer, &info.trace) {
            if tx.try_send(spans(info, trace, outcome)).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What is known of a request when it arrives, and what routing adds.
#[derive(Debug)]
pub struct RequestInfo {
    start: SystemTime,
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    user_agent: Option<String>,
    forwarded_for: Option<String>,
    request_id: String,
    /// The rule taken.
    pub route: Option<Arc<str>>,
    /// The last endpoint tried.
    pub upstream_host: Option<String>,
    /// The cluster (`host/subset`).
    pub upstream_cluster: Option<String>,
    /// Trace state, when spans are exported.
    pub trace: Option<TraceState>,
}

impl RequestInfo {
    /// Captures a request's description.
    pub fn new<B>(req: &Request<B>, request_id: &HeaderValue, tracing: bool) -> Self {
        let text = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            start: SystemTime::now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.to_string()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| text("host"))
                .unwrap_or_default(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: text("user-agent"),
            forwarded_for: text("x-forwarded-for"),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            route: None,
            upstream_host: None,
            upstream_cluster: None,
            trace: tracing.then(|| TraceState::from_headers(req.headers())),
        }
    }
}

/// What the request came to, filled in when its response ends.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status sent.
    pub code: u16,
    /// Envoy flags.
    pub flags: String,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// First byte received to last byte sent.
    pub duration: Duration,
    /// Time to the first content chunk, for streamed completions.
    pub ttft: Option<Duration>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// The experiment that routed it.
    pub experiment_id: String,
    /// Its variant.
    pub variant: String,
    /// The endpoint's version label.
    pub version: String,
}

/// A trace the request continues (or starts), and the spans made for it.
#[derive(Debug)]
pub struct TraceState {
    trace_id: u128,
    /// The caller's span, if the request carried one.
    parent: Option<u64>,
    /// The gateway's span for the whole request.
    server_span: u64,
    sampled: bool,
    /// Whether the caller used B3 headers (which are then propagated too).
    b3: bool,
    attempts: Vec<AttemptSpan>,
}

#[derive(Debug)]
struct AttemptSpan {
    span: u64,
    start: SystemTime,
    end: SystemTime,
    endpoint: String,
    status: Option<u16>,
}

impl TraceState {
    /// Continues the caller's trace from `traceparent` (W3C) or B3 headers, or starts one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let w3c = text("traceparent").and_then(|tp| {
            let mut parts = tp.split('-');
            let (_version, trace, span, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
            let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
            let flags = u8::from_str_radix(flags, 16).ok()?;
            Some((trace, span, flags & 1 == 1, false))
        });
        let b3 = || {
            let single = text("b3").and_then(|b| {
                let mut parts = b.split('-');
                let trace = parse_b3_trace(parts.next()?)?;
                let span = u64::from_str_radix(parts.next()?, 16).ok()?;
                let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
                Some((trace, span, sampled, true))
            });
            single.or_else(|| {
                let trace = parse_b3_trace(text("x-b3-traceid")?)?;
                let span = u64::from_str_radix(text("x-b3-spanid")?, 16).ok()?;
                let sampled = text("x-b3-sampled").is_none_or(|s| s == "1" || s == "true");
                Some((trace, span, sampled, true))
            })
        };
        let (trace_id, parent, sampled, b3) = match w3c.or_else(b3) {
            Some((trace, span, sampled, b3)) => (trace, Some(span), sampled, b3),
            None => (nonzero_u128(), None, true, false),
        };
        Self {
            trace_id,
            parent,
            server_span: nonzero_u64(),
            sampled,
            b3,
            attempts: Vec::new(),
        }
    }

    /// Opens a span for an upstream attempt and writes the headers that carry it.
    pub fn start_attempt(&mut self, endpoint: &str, headers: &mut HeaderMap) {
        let span = nonzero_u64();
        let flags = u8::from(self.sampled);
        let traceparent = format!("00-{:032x}-{span:016x}-{flags:02x}", self.trace_id);
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert("traceparent", v);
        }
        if self.b3 {
            headers.remove("b3");
            for (name, value) in [
                ("x-b3-traceid", format!("{:032x}", self.trace_id)),
                ("x-b3-spanid", format!("{span:016x}")),
                ("x-b3-parentspanid", format!("{:016x}", self.server_span)),
                (
                    "x-b3-sampled",
                    if self.sampled { "1" } else { "0" }.to_owned(),
                ),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
        }
        let now = SystemTime::now();
        self.attempts.push(AttemptSpan {
            span,
            start: now,
            end: now,
            endpoint: endpoint.to_owned(),
            status: None,
        });
    }

    /// Closes the latest attempt span with the status it got (none for a failure).
    pub fn end_attempt(&mut self, status: Option<u16>) {
        if let Some(a) = self.attempts.last_mut() {
            a.end = SystemTime::now();
            a.status = status;
        }
    }
}

fn parse_b3_trace(text: &str) -> Option<u128> {
    u128::from_str_radix(text, 16).ok().filter(|t| *t != 0)
}

fn nonzero_u64() -> u64 {
    rand::random::<u64>().max(1)
}

fn nonzero_u128() -> u128 {
    rand::random::<u128>().max(1)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// One access log line: Envoy's default fields, plus the LLM and experiment ones.
fn access_line(info: &RequestInfo, o: &Outcome) -> Value {
    json!({
        "start_time": rfc3339(info.start),
        "method": info.method,
        "path": info.path,
        "protocol": info.protocol,
        "response_code": o.code,
        "response_flags": o.flags,
        "bytes_received": o.bytes_received,
        "bytes_sent": o.bytes_sent,
        "duration_ms": o.duration.as_secs_f64() * 1000.0,
        "x_forwarded_for": info.forwarded_for,
        "user_agent": info.user_agent,
        "request_id": info.request_id,
        "authority": info.authority,
        "route_name": info.route.as_deref(),
        "upstream_host": info.upstream_host,
        "upstream_cluster": info.upstream_cluster,
        "destination_version": o.version,
        "ttft_ms": o.ttft.map(|t| t.as_secs_f64() * 1000.0),
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "experiment_id": (!o.experiment_id.is_empty()).then_some(&o.experiment_id),
        "variant": (!o.variant.is_empty()).then_some(&o.variant),
        "trace_id": info.trace.as_ref().map(|t| format!("{:032x}", t.trace_id)),
    })
}

fn attribute(key: &str, value: Value) -> Value {
    let value = match value {
        Value::Number(n) if n.is_u64() || n.is_i64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// The request's spans in OTLP/JSON: the server span and one client span per attempt.
fn spans(info: &RequestInfo, trace: &TraceState, o: &Outcome) -> Value {
    let trace_id = format!("{:032x}", trace.trace_id);
    let end = info.start + o.duration;
    let mut attributes = vec![
        attribute("http.request.method", json!(info.method)),
        attribute("url.path", json!(info.path)),
        attribute("server.address", json!(info.authority)),
        attribute("http.response.status_code", json!(o.code)),
        attribute("abgate.response_flags", json!(o.flags)),
        attribute("abgate.request_id", json!(info.request_id)),
    ];
    if let Some(route) = &info.route {
        attributes.push(attribute("abgate.route", json!(route.as_ref())));
    }
    if !o.variant.is_empty() {
        attributes.push(attribute("abgate.experiment_id", json!(o.experiment_id)));
        attributes.push(attribute("abgate.variant", json!(o.variant)));
    }
    if let Some(tokens) = o.completion_tokens {
        attributes.push(attribute("gen_ai.usage.output_tokens", json!(tokens)));
    }
    if let Some(tokens) = o.prompt_tokens {
        attributes.push(attribute("gen_ai.usage.input_tokens", json!(tokens)));
    }
    let error = o.code >= 500 || o.code == 0;
    let mut server = json!({
        "traceId": trace_id,
        "spanId": format!("{:016x}", trace.server_span),
        "name": format!("{} {}", info.method, info.route.as_deref().unwrap_or("unrouted")),
        "kind": 2,
        "startTimeUnixNano": unix_nanos(info.start),
        "endTimeUnixNano": unix_nanos(end),
        "attributes": attributes,
        "status": { "code": if error { 2 } else { 0 } },
    });
    if let Some(parent) = trace.parent {
        server["parentSpanId"] = json!(format!("{parent:016x}"));
    }
    let mut all = vec![server];
    for a in &trace.attempts {
        all.push(json!({
            "traceId": trace_id,
            "spanId": format!("{:016x}", a.span),
            "parentSpanId": format!("{:016x}", trace.server_span),
            "name": format!("upstream {}", a.endpoint),
            "kind": 3,
            "startTimeUnixNano": unix_nanos(a.start),
            "endTimeUnixNano": unix_nanos(a.end),
            "attributes": [
                attribute("server.address", json!(a.endpoint)),
                attribute("http.response.status_code", json!(a.status)),
            ],
            "status": { "code": if a.status.is_none_or(|s| s >= 500) { 2 } else { 0 } },
        }));
    }
    Value::Array(all)
}

async fn spawn_access_log(target: AccessLogTarget) -> std::io::Result<mpsc::Sender<String>> {
    let (tx, mut rx) = mpsc::channel::<String>(8192);
    let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &target {
        AccessLogTarget::Stdout => Box::new(tokio::io::stdout()),
        AccessLogTarget::File(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await?,
        ),
    };
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let mut batch = line;
            while let Ok(more) = rx.try_recv() {
                batch.push_str(&more);
            }
            if out.write_all(batch.as_bytes()).await.is_err() || out.flush().await.is_err() {
                tracing::warn!("access log write failed");
            }
        }
    });
    Ok(tx)
}

/// Batches spans and posts them as OTLP/HTTP JSON to `<endpoint>/v1/traces`.
fn spawn_exporter(endpoint: &str) -> std::io::Result<mpsc::Sender<Value>> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let uri: Uri = url.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("OTLP endpoint {url}: {e}"),
        )
    })?;
    let (tx, mut rx) = mpsc::channel::<Value>(4096);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut spans: Vec<Value> = first.as_array().cloned().unwrap_or_default();
            // Gather what else is ready, briefly, into one export.
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while spans.len() < 512 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(more)) => spans.extend(more.as_array().cloned().unwrap_or_default()),
                    _ => break,
                }
            }
            let body = json!({
                "resourceSpans": [{
                    "resource": { "attributes": [attribute("service.name", json!("abgate"))] },
                    "scopeSpans": [{ "scope": { "name": "abgate" }, "spans": spans }],
                }]
            });
            let request = Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())));
            let Ok(request) = request else { continue };
            match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    if !status.is_success() {
                        tracing::warn!(%status, "OTLP export refused");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "OTLP export failed"),
                Err(_) => tracing::warn!("OTLP export timed out"),
            }
        }
    });
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_context_is_continued_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut trace = TraceState::from_headers(&headers);
        assert_eq!(trace.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.parent, Some(0x00f067aa0ba902b7));
        let mut upstream = HeaderMap::new();
        trace.start_attempt("127.0.0.1:1", &mut upstream);
        let sent = upstream
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "the upstream's parent is the gateway's span"
        );
    }

    #[test]
    fn b3_context_is_continued_and_propagated_as_b3() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-b3-traceid",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7"),
        );
        headers.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        headers.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let mut trace = TraceState::from_headers(&headers);
        let mut upstream = HeaderMap::new();
        trace.start_attempt("e", &mut upstream);
        assert_eq!(
            upstream.get("x-b3-traceid").map(|v| v.as_bytes()),
            Some(&b"80f198ee56343ba864fe8b2a57d3eff7"[..])
        );
        let parent = format!("{:016x}", trace.server_span);
        assert_eq!(
            upstream.get("x-b3-parentspanid").map(|v| v.as_bytes()),
            Some(parent.as_bytes())
        );
    }

    #[test]
    fn spans_link_attempts_to_the_server_span() {
        let req = Request::get("/v1/models")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .expect("request");
        let mut info = RequestInfo::new(&req, &HeaderValue::from_static("rid"), true);
        let trace = info.trace.as_mut().expect("tracing");
        trace.start_attempt("10.0.0.1:80", &mut HeaderMap::new());
        trace.end_attempt(Some(200));
        let spans = spans(
            &info,
            info.trace.as_ref().expect("tracing"),
            &Outcome {
                code: 200,
                ..Outcome::default()
            },
        );
        let server = &spans[0];
        assert_eq!(server["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(spans[1]["parentSpanId"], server["spanId"]);
        assert_eq!(spans[1]["traceId"], "0af7651916cd43dd8448eb211c80319c");
    }
}
