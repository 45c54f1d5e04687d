//! Streaming (server-sent events) behaviour over real TCP, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use abgate_sim::SimArgs;
use common::{args, http1_client, json, post, read_events, send, Event, TestServer};
use hyper::{Method, StatusCode};
use serde_json::Value;

const CHAT: &str = "/v1/chat/completions";

fn chunks(events: &[Event]) -> Vec<Value> {
    let (done, rest) = events.split_last().expect("at least one event");
    assert_eq!(done.data, "[DONE]", "[DONE] comes last");
    rest.iter().map(|e| json(e.data.as_bytes())).collect()
}

/// The `delta.content` of chat chunks that carry text.
fn contents(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn chat_stream_has_role_tokens_finish_usage_and_done() {
    let server = TestServer::start(SimArgs {
        output_tokens: 5,
        ..args()
    })
    .await;
    let client = http1_client();
    let res = send(
        &client,
        Method::POST,
        &server.url(CHAT),
        r#"{"model":"x","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"user","content":"tell me a story"}]}"#,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let chunks = chunks(&read_events(res).await);

    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "test-model");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(c["id"], chunks[0]["id"], "one id per stream");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(contents(&chunks).len(), 5);

    // ... then the finish chunk, then the usage chunk.
    let n = chunks.len();
    let finish = &chunks[n - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(chunks[..n - 2]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let usage = &chunks[n - 1];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["prompt_tokens"], 4);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["usage"]["total_tokens"], 9);
    server.stop().await;
}

#[tokio::test]
async fn stream_without_include_usage_and_with_max_tokens() {
    let server = TestServer::start(args()).await;
    let client = http1_client();
    let res = send(
        &client,
        Method::POST,
        &server.url(CHAT),
        r#"{"stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let chunks = chunks(&read_events(res).await);
    assert_eq!(contents(&chunks).len(), 3);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    server.stop().await;
}

#[tokio::test]
async fn streamed_text_matches_non_streamed_text_for_the_same_seed() {
    let a = TestServer::start(args()).await;
    let b = TestServer::start(args()).await;
    let client = http1_client();
    let (_, bytes) = post(
        &client,
        &a.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let whole = json(&bytes)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = send(
        &client,
        Method::POST,
        &b.url(CHAT),
        r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let streamed: String = contents(&chunks(&read_events(res).await)).concat();
    assert_eq!(streamed, whole);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn completion_stream_uses_text_completion_chunks() {
    let server = TestServer::start(SimArgs {
        output_tokens: 4,
        ..args()
    })
    .await;
    let res = send(
        &http1_client(),
        Method::POST,
        &server.url("/v1/completions"),
        r#"{"stream":true,"stream_options":{"include_usage":true},"prompt":"a b c"}"#,
    )
    .await;
    let chunks = chunks(&read_events(res).await);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    let texts: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts.len(), 4);
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 1]["usage"]["prompt_tokens"], 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_spaced_in_time() {
    // First token after 100 ms, then one every 25 ms: tokens 2..=6 span 125 ms.
    const TTFT: Duration = Duration::from_millis(100);
    const TOKENS: u32 = 6;
    const INTERVAL: Duration = Duration::from_millis(25);
    let server = TestServer::start(SimArgs {
        ttft_ms: 100,
        tokens_per_second: 40.0,
        output_tokens: TOKENS,
        ..args()
    })
    .await;
    let client = http1_client();
    let sent = Instant::now();
    let res = send(
        &client,
        Method::POST,
        &server.url(CHAT),
        r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let events = read_events(res).await;
    let token_times: Vec<Instant> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter(|e| {
            json(e.data.as_bytes())["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .map(|e| e.at)
        .collect();
    assert_eq!(token_times.len(), TOKENS as usize);
    let first = token_times[0].duration_since(sent);
    assert!(first >= TTFT.mul_f64(0.8), "first token after {first:?}");
    let spread = token_times[TOKENS as usize - 1].duration_since(token_times[0]);
    let expected = INTERVAL * (TOKENS - 1);
    assert!(
        spread >= expected.mul_f64(0.8),
        "tokens spread over {spread:?}, expected about {expected:?}"
    );
    // Each token is its own frame: consecutive arrivals are distinct.
    assert!(token_times.windows(2).all(|w| w[1] > w[0]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_streams_finish() {
    let server = TestServer::start(SimArgs {
        tokens_per_second: 20.0,
        output_tokens: 8,
        ..args()
    })
    .await;
    let addr = server.addr;
    let url = server.url(CHAT);
    let client = http1_client();
    let res = send(
        &client,
        Method::POST,
        &url,
        r#"{"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // The stream has started; now ask the server to stop.
    let serving = server.begin_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
    assert!(!serving.is_finished(), "waits for the in-flight stream");
    let chunks = chunks(&read_events(res).await);
    assert_eq!(contents(&chunks).len(), 8);
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns once the stream is done")
        .unwrap()
        .unwrap();
}
