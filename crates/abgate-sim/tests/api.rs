//! Non-streaming API behaviour over real TCP: responses, errors, metrics, HTTP/2.

mod common;

use std::time::{Duration, Instant};

use abgate_sim::{serve, SimArgs};
use common::{args, assert_openai_error, get, http1_client, http2_client, json, post, TestServer};
use hyper::{Method, StatusCode, Version};
use serde_json::Value;

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn chat_completion_reports_model_name_and_usage() {
    let server = TestServer::start(SimArgs {
        output_tokens: 7,
        ..args()
    })
    .await;
    let client = http1_client();
    let (status, body) = post(
        &client,
        &server.url(CHAT),
        r#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"say hello world"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["model"], "test-model");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 7, "{content:?}");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 12);
    server.stop().await;
}

#[tokio::test]
async fn max_tokens_caps_output_with_finish_reason_length() {
    let server = TestServer::start(args()).await;
    let client = http1_client();
    for (path, body, object) in [
        (
            CHAT,
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#,
            "chat.completion",
        ),
        (
            CHAT,
            r#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":3,"max_tokens":99}"#,
            "chat.completion",
        ),
        (
            "/v1/completions",
            r#"{"model":"m","prompt":"once upon a time","max_tokens":3}"#,
            "text_completion",
        ),
    ] {
        let (status, bytes) = post(&client, &server.url(path), body).await;
        assert_eq!(status, StatusCode::OK);
        let v = json(&bytes);
        assert_eq!(v["object"], object);
        assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    }
    // A cap above the configured length changes nothing.
    let (_, bytes) = post(
        &client,
        &server.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#,
    )
    .await;
    let v = json(&bytes);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    server.stop().await;
}

#[tokio::test]
async fn text_completion_shape() {
    let server = TestServer::start(SimArgs {
        output_tokens: 4,
        ..args()
    })
    .await;
    let (status, bytes) = post(
        &http1_client(),
        &server.url("/v1/completions"),
        r#"{"model":"m","prompt":["a b","c"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&bytes);
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], "test-model");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap().split(' ').count(),
        4
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    server.stop().await;
}

#[tokio::test]
async fn same_seed_same_content() {
    let a = TestServer::start(args()).await;
    let b = TestServer::start(args()).await;
    let c = TestServer::start(SimArgs {
        seed: Some(2),
        ..args()
    })
    .await;
    let client = http1_client();
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let content = |bytes: &[u8]| json(bytes)["choices"][0]["message"]["content"].clone();
    let (_, ra) = post(&client, &a.url(CHAT), body).await;
    let (_, rb) = post(&client, &b.url(CHAT), body).await;
    let (_, rc) = post(&client, &c.url(CHAT), body).await;
    assert_eq!(content(&ra), content(&rb));
    assert_ne!(content(&ra), content(&rc));
    // The next request of the same server says something else.
    let (_, ra2) = post(&client, &a.url(CHAT), body).await;
    assert_ne!(content(&ra), content(&ra2));
    for s in [a, b, c] {
        s.stop().await;
    }
}

#[tokio::test]
async fn non_streaming_waits_for_the_whole_generation() {
    // 40 ms to the first token, then 5 tokens at 100 tokens/s: 90 ms in all.
    let server = TestServer::start(SimArgs {
        ttft_ms: 40,
        tokens_per_second: 100.0,
        output_tokens: 5,
        ..args()
    })
    .await;
    let client = http1_client();
    let started = Instant::now();
    let (status, _) = post(
        &client,
        &server.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(72), "answered after {took:?}");
    server.stop().await;
}

#[tokio::test]
async fn error_rate_one_always_fails_with_the_configured_status() {
    let server = TestServer::start(SimArgs {
        error_rate: 1.0,
        error_status: 503,
        ..args()
    })
    .await;
    let client = http1_client();
    for path in [CHAT, "/v1/completions", "/v1/embeddings"] {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"prompt":"p","input":"i"}"#;
        let (status, bytes) = post(&client, &server.url(path), body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_openai_error(&bytes, "server_error");
    }
    let (_, metrics) = get(&client, &server.url("/metrics")).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("abgate_sim_injected_errors_total{model_name=\"test-model\"} 3\n"),
        "{metrics}"
    );
    server.stop().await;

    let server = TestServer::start(SimArgs {
        error_rate: 1.0,
        error_status: 429,
        ..args()
    })
    .await;
    let (status, bytes) = post(
        &client,
        &server.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_openai_error(&bytes, "invalid_request_error");
    server.stop().await;
}

#[tokio::test]
async fn seeded_errors_are_reproducible_and_binomial() {
    const REQUESTS: usize = 200;
    let settings = SimArgs {
        error_rate: 0.3,
        seed: Some(12_345),
        output_tokens: 1,
        ..args()
    };
    let client = http1_client();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = TestServer::start(settings.clone()).await;
        let mut statuses = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let (status, _) = post(
                &client,
                &server.url(CHAT),
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            )
            .await;
            statuses.push(status.as_u16());
        }
        server.stop().await;
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same sequence");
    assert!(runs[0].iter().all(|&s| s == 200 || s == 500));
    let errors = runs[0].iter().filter(|&&s| s == 500).count();
    // Binomial(200, 0.3): mean 60, sd ~6.5; allow 5 sd.
    assert!((28..=92).contains(&errors), "{errors} errors");
}

#[tokio::test]
async fn models_lists_the_model_name() {
    let server = TestServer::start(args()).await;
    let (status, bytes) = get(&http1_client(), &server.url("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&bytes);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], "test-model");
    assert_eq!(v["data"][0]["object"], "model");
    server.stop().await;
}

#[tokio::test]
async fn health_is_ok() {
    let server = TestServer::start(args()).await;
    let (status, _) = get(&http1_client(), &server.url("/health")).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn metrics_use_vllm_names_and_count_requests() {
    let server = TestServer::start(SimArgs {
        output_tokens: 4,
        ..args()
    })
    .await;
    let client = http1_client();
    for max_tokens in [2, 10] {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"one two three"}}],"max_tokens":{max_tokens}}}"#
        );
        let (status, _) = post(&client, &server.url(CHAT), &body).await;
        assert_eq!(status, StatusCode::OK);
    }
    let res = common::send(&client, Method::GET, &server.url("/metrics"), "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
    }
    let label = "model_name=\"test-model\"";
    for line in [
        format!("vllm:num_requests_running{{{label}}} 0"),
        format!("vllm:num_requests_waiting{{{label}}} 0"),
        format!("vllm:kv_cache_usage_perc{{{label}}} 0"),
        format!("vllm:prompt_tokens_total{{{label}}} 6"),
        format!("vllm:generation_tokens_total{{{label}}} 6"),
        format!("vllm:request_success_total{{finished_reason=\"stop\",{label}}} 1"),
        format!("vllm:request_success_total{{finished_reason=\"length\",{label}}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    server.stop().await;
}

/// Reads the value of the sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}:\n{text}"))
}

#[tokio::test]
async fn gauges_count_in_flight_requests_beyond_max_concurrency_as_waiting() {
    let server = TestServer::start(SimArgs {
        ttft_ms: 400,
        max_concurrency: 2,
        ..args()
    })
    .await;
    let client = http1_client();
    let url = server.url(CHAT);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                post(
                    &client,
                    &url,
                    r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, bytes) = get(&client, &server.url("/metrics")).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let label = "{model_name=\"test-model\"} ";
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_running{label}")),
        2.0
    );
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_waiting{label}")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("vllm:kv_cache_usage_perc{label}")),
        1.0
    );
    for task in slow {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    let (_, bytes) = get(&client, &server.url("/metrics")).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_running{label}")),
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn queue_serves_at_most_max_concurrency_at_once_in_arrival_order() {
    // One place in the batch and 300 ms per request: three requests sent together finish
    // one after another, about 300, 600 and 900 ms after they were sent.
    let server = TestServer::start(SimArgs {
        ttft_ms: 300,
        max_concurrency: 1,
        queue: true,
        ..args()
    })
    .await;
    let client = http1_client();
    let url = server.url(CHAT);
    let sent = std::time::Instant::now();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let answer = post(
                    &client,
                    &url,
                    r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                )
                .await;
                (answer.0, sent.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, bytes) = get(&client, &server.url("/metrics")).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let label = "{model_name=\"test-model\"} ";
    assert_eq!(
        sample(&text, &format!("vllm:num_requests_waiting{label}")),
        2.0
    );
    let mut finished = Vec::new();
    for request in requests {
        let (status, elapsed) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        finished.push(elapsed);
    }
    finished.sort();
    for (i, elapsed) in finished.iter().enumerate() {
        let served_after = Duration::from_millis(300 * (i as u64 + 1));
        assert!(
            *elapsed >= served_after,
            "request {i} done after {elapsed:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_openai_error() {
    let server = TestServer::start(args()).await;
    let client = http1_client();
    for body in [
        "{not json",
        "",
        r#"{"messages":"hi"}"#,
        r#"{"messages":[],"max_tokens":"many"}"#,
    ] {
        let (status, bytes) = post(&client, &server.url(CHAT), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_openai_error(&bytes, "invalid_request_error");
    }
    // Well-formed JSON without the required field.
    let (status, bytes) = post(&client, &server.url(CHAT), r#"{"model":"m"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&bytes, "invalid_request_error");
    assert_eq!(json(&bytes)["error"]["param"], "messages");
    let (status, bytes) = post(&client, &server.url("/v1/completions"), "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&bytes)["error"]["param"], "prompt");
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_openai_errors() {
    let server = TestServer::start(args()).await;
    let client = http1_client();
    let (status, bytes) = get(&client, &server.url("/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&bytes, "invalid_request_error");
    assert_eq!(json(&bytes)["error"]["param"], Value::Null);
    // Right path, wrong method.
    let (status, bytes) = get(&client, &server.url(CHAT)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&bytes, "invalid_request_error");
    server.stop().await;
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let server = TestServer::start(args()).await;
    let client = http1_client();
    let (status, bytes) = post(
        &client,
        &server.url("/v1/embeddings"),
        r#"{"model":"e","input":["hello world","other text here","hello world"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&bytes);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "test-model");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 7);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vectors: Vec<Vec<f64>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(vectors[0].len(), 8);
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
    let norm: f64 = vectors[1].iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");

    let (status, bytes) = post(
        &client,
        &server.url("/v1/embeddings"),
        r#"{"input":"hello world","encoding_format":"base64"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let encoded = json(&bytes)["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(encoded.len(), 44, "8 f32 = 32 bytes = 44 base64 chars");
    server.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let server = TestServer::start(SimArgs {
        output_tokens: 3,
        ..args()
    })
    .await;
    let client = http2_client();
    let res = common::send(
        &client,
        Method::POST,
        &server.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(json(&bytes)["usage"]["completion_tokens"], 3);

    // Streams multiplexed on one connection.
    let stream = common::send(
        &client,
        Method::POST,
        &server.url(CHAT),
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    assert_eq!(stream.version(), Version::HTTP_2);
    let events = common::read_events(stream).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let (status, _) = get(&client, &server.url("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn invalid_settings_are_rejected() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(
        listener,
        SimArgs {
            error_rate: 2.0,
            ..args()
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("--error-rate"), "{err}");
}
