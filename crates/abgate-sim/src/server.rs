//! Connection handling, routing and the request handlers.

use std::convert::Infallible;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::SimBody;
use crate::config::{scale, Config};
use crate::metrics::{escape_label, Finish, Metrics};
use crate::openai::{self, EncodingFormat, Usage};
use crate::stream::{SseStream, StreamPlan, TextApi};
use crate::words;
use crate::SimArgs;

/// Largest accepted request body.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Streams a client may open on one HTTP/2 connection: high enough that a gateway
/// multiplexing a benchmark over a single connection is not throttled by the simulator.
const H2_MAX_CONCURRENT_STREAMS: u32 = 4096;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const PROMETHEUS_TEXT: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// Serve on an already-bound listener until `shutdown` resolves (tests bind 127.0.0.1:0).
///
/// HTTP/1.1 and HTTP/2 cleartext (prior knowledge) share the port. When `shutdown`
/// resolves, the listener is closed and the call returns once in-flight requests
/// have finished. Fails at once if `args` holds an invalid setting.
pub async fn serve(
    listener: TcpListener,
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sim = Arc::new(Sim::new(&args)?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Idle keep-alive connections stay open until the client closes them (or shutdown):
    // hyper's default header-read timeout would also close pooled connections idle for
    // 30 s, racing with clients that reuse them — noise a benchmark backend must not add.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
        }
        let sim = Arc::clone(&sim);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&sim), req));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(%peer, %err, "connection closed with an error");
            }
        });
    }

    drop(listener);
    tracing::debug!(
        connections = graceful.count(),
        "stopped accepting; draining connections"
    );
    graceful.shutdown().await;
    Ok(())
}

/// State shared by every connection of one server.
pub(crate) struct Sim {
    pub(crate) cfg: Config,
    pub(crate) metrics: Metrics,
    /// The model name as a JSON string literal, quotes included.
    pub(crate) model_json: String,
    /// The model name as an escaped Prometheus label value.
    model_label: String,
    /// Generation requests accepted so far: the second half of each request's seed.
    requests: AtomicU64,
    models_body: Bytes,
    injected_error_body: Bytes,
    /// Places in the batch, when requests beyond it queue (`--queue`).
    batch: Option<Arc<Semaphore>>,
}

impl Sim {
    fn new(args: &SimArgs) -> std::io::Result<Self> {
        let cfg = Config::from_args(args)?;
        let model_json =
            serde_json::to_string(&cfg.model).expect("a string always serialises to JSON");
        let models_body = openai::to_json(&openai::ModelList {
            object: "list",
            data: [openai::Model {
                id: &cfg.model,
                object: "model",
                created: unix_now(),
                owned_by: "abgate-sim",
            }],
        });
        let injected_error_body = openai::error_json(
            "The server had an error while processing your request (simulated by abgate-sim --error-rate).",
            error_type(cfg.error_status),
            None,
        );
        Ok(Self {
            model_label: escape_label(&cfg.model),
            model_json,
            models_body: models_body.into(),
            injected_error_body: injected_error_body.into(),
            metrics: Metrics::default(),
            requests: AtomicU64::new(0),
            batch: args
                .queue
                .then(|| Arc::new(Semaphore::new(cfg.max_concurrency as usize))),
            cfg,
        })
    }

    /// The RNG of the next generation request.
    fn next_request_rng(&self) -> SmallRng {
        words::request_rng(self.cfg.seed, self.requests.fetch_add(1, Relaxed))
    }
}

/// A generation request in flight: holds the server state and keeps the in-flight
/// gauge up until dropped (at the end of the response or when the client goes away).
pub(crate) struct Active(Arc<Sim>, Option<OwnedSemaphorePermit>);

impl Active {
    fn new(sim: Arc<Sim>) -> Self {
        sim.metrics.request_started();
        Self(sim, None)
    }

    /// Waits for a place in the batch when the server queues (`--queue`).
    async fn admitted(mut self) -> Self {
        if let Some(batch) = &self.0.batch {
            self.1 = Arc::clone(batch).acquire_owned().await.ok();
        }
        self
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.metrics.request_ended();
    }
}

impl Deref for Active {
    type Target = Sim;

    fn deref(&self) -> &Sim {
        &self.0
    }
}

enum Route {
    Text(TextApi),
    Embeddings,
    Models,
    Metrics,
    Health,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Route::Text(TextApi::Chat),
        (&Method::POST, "/v1/completions") => Route::Text(TextApi::Completion),
        (&Method::POST, "/v1/embeddings") => Route::Embeddings,
        (&Method::GET, "/v1/models") => Route::Models,
        (&Method::GET, "/metrics") => Route::Metrics,
        (&Method::GET, "/health") => Route::Health,
        _ => Route::NotFound,
    }
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<SimBody>, Infallible> {
    Ok(match route(req.method(), req.uri().path()) {
        Route::Text(api) => match read_request(Active::new(sim), req).await {
            Ok((active, request)) => text(active.admitted().await, request, api).await,
            Err(res) => res,
        },
        Route::Embeddings => match read_request(Active::new(sim), req).await {
            Ok((active, request)) => embeddings(active, request).await,
            Err(res) => res,
        },
        Route::Models => with_type(
            StatusCode::OK,
            SimBody::Full(Some(sim.models_body.clone())),
            APPLICATION_JSON,
        ),
        Route::Metrics => with_type(
            StatusCode::OK,
            SimBody::full(
                sim.metrics
                    .render(&sim.model_label, sim.cfg.max_concurrency),
            ),
            PROMETHEUS_TEXT,
        ),
        Route::Health => Response::new(SimBody::empty()),
        Route::NotFound => api_error(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {})", req.method(), req.uri().path()),
            None,
        ),
    })
}

/// Reads and parses a generation request's body.
async fn read_request(
    active: Active,
    req: Request<Incoming>,
) -> Result<(Active, openai::Request), Response<SimBody>> {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return Err(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
                None,
            ))
        }
        Err(err) => {
            tracing::debug!(%err, "cannot read request body");
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
                None,
            ));
        }
    };
    match serde_json::from_slice(&body) {
        Ok(request) => Ok((active, request)),
        Err(err) => Err(api_error(
            StatusCode::BAD_REQUEST,
            &format!("We could not parse the JSON body of your request: {err}"),
            None,
        )),
    }
}

/// Draws the error decision and the latency factor, in that order, for reproducibility.
/// `None` means "answer with the injected error".
fn draw_outcome(active: &Active, rng: &mut SmallRng) -> Option<f64> {
    let draw: f64 = rng.random();
    if draw < active.cfg.error_rate {
        active.metrics.error_injected();
        return None;
    }
    let jitter = active.cfg.latency_jitter;
    Some(if jitter > 0.0 {
        rng.random_range((1.0 - jitter)..=(1.0 + jitter))
    } else {
        1.0
    })
}

/// The response of a request picked by `--error-rate`.
fn injected_error(active: &Active) -> Response<SimBody> {
    with_type(
        active.cfg.error_status,
        SimBody::Full(Some(active.injected_error_body.clone())),
        APPLICATION_JSON,
    )
}

/// `/v1/chat/completions` and `/v1/completions`.
async fn text(active: Active, request: openai::Request, api: TextApi) -> Response<SimBody> {
    let (prompt, cap, id_prefix) = match api {
        TextApi::Chat => (
            request.messages.map(|m| m.words).ok_or("messages"),
            request.max_completion_tokens.or(request.max_tokens),
            "chatcmpl-",
        ),
        TextApi::Completion => (
            request.prompt.map(|p| p.words).ok_or("prompt"),
            request.max_tokens.or(request.max_completion_tokens),
            "cmpl-",
        ),
    };
    let prompt_tokens = match prompt {
        Ok(words) => words.max(1),
        Err(param) => return missing_parameter(param),
    };
    if cap == Some(0) {
        let param = match (api, request.max_completion_tokens) {
            (TextApi::Chat, Some(_)) => "max_completion_tokens",
            _ => "max_tokens",
        };
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid '{param}': must be at least 1."),
            Some(param),
        );
    }

    let mut rng = active.next_request_rng();
    let Some(factor) = draw_outcome(&active, &mut rng) else {
        return injected_error(&active);
    };
    let output = active.cfg.output_tokens;
    let (completion_tokens, finish) = match cap {
        Some(cap) if cap < output => (cap, Finish::Length),
        _ => (output, Finish::Stop),
    };
    let ttft = scale(active.cfg.ttft, factor);
    let interval = scale(active.cfg.token_interval, factor);
    let id = format!("{id_prefix}{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    let created = unix_now();
    active.metrics.add_prompt_tokens(prompt_tokens);

    if request.stream == Some(true) {
        let include_usage = request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let plan = StreamPlan {
            api,
            id,
            created,
            completion_tokens,
            prompt_tokens,
            finish,
            include_usage,
            ttft,
            interval,
        };
        let body = SimBody::Sse(Box::new(SseStream::new(active, rng, plan)));
        let mut res = with_type(StatusCode::OK, body, EVENT_STREAM);
        res.headers_mut().insert(CACHE_CONTROL, NO_CACHE);
        return res;
    }

    let delay = ttft.saturating_add(interval.saturating_mul(completion_tokens));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let content = words::completion_text(&mut rng, completion_tokens);
    let usage = Usage::new(prompt_tokens, completion_tokens);
    let model = active.cfg.model.as_str();
    let json = match api {
        TextApi::Chat => openai::to_json(&openai::ChatCompletion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [openai::ChatChoice {
                index: 0,
                message: openai::ChatMessage {
                    role: "assistant",
                    content: &content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason: finish.as_str(),
            }],
            usage,
        }),
        TextApi::Completion => openai::to_json(&openai::TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices: [openai::TextChoice {
                text: &content,
                index: 0,
                logprobs: None,
                finish_reason: finish.as_str(),
            }],
            usage,
        }),
    };
    active.metrics.add_generation_tokens(completion_tokens);
    active.metrics.request_succeeded(finish);
    with_type(StatusCode::OK, SimBody::full(json), APPLICATION_JSON)
}

/// `/v1/embeddings`: one deterministic unit vector per input, after the TTFT delay.
async fn embeddings(active: Active, request: openai::Request) -> Response<SimBody> {
    let Some(inputs) = request.input else {
        return missing_parameter("input");
    };
    if inputs.0.is_empty() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "Invalid 'input': must not be empty.",
            Some("input"),
        );
    }
    let mut rng = active.next_request_rng();
    let Some(factor) = draw_outcome(&active, &mut rng) else {
        return injected_error(&active);
    };
    let delay = scale(active.cfg.ttft, factor);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let prompt_tokens = inputs
        .0
        .iter()
        .fold(0u32, |n, input| n.saturating_add(input.tokens))
        .max(1);
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let dim = active.cfg.embedding_dim;
    let data = inputs
        .0
        .iter()
        .zip(0u32..)
        .map(|(input, index)| {
            let vector = words::embedding(input.hash, dim);
            openai::Embedding {
                object: "embedding",
                index,
                embedding: if base64 {
                    openai::EmbeddingVector::Base64(words::base64_f32(&vector))
                } else {
                    openai::EmbeddingVector::Float(vector)
                },
            }
        })
        .collect();
    let json = openai::to_json(&openai::EmbeddingList {
        object: "list",
        data,
        model: &active.cfg.model,
        usage: openai::EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    });
    active.metrics.add_prompt_tokens(prompt_tokens);
    active.metrics.request_succeeded(Finish::Stop);
    with_type(StatusCode::OK, SimBody::full(json), APPLICATION_JSON)
}

/// OpenAI's `type` for an error status.
fn error_type(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    }
}

fn api_error(status: StatusCode, message: &str, param: Option<&str>) -> Response<SimBody> {
    let json = openai::error_json(message, error_type(status), param);
    with_type(status, SimBody::full(json), APPLICATION_JSON)
}

fn missing_parameter(param: &str) -> Response<SimBody> {
    api_error(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        Some(param),
    )
}

fn with_type(status: StatusCode, body: SimBody, content_type: HeaderValue) -> Response<SimBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, content_type);
    res
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
