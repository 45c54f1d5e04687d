//! Prometheus metrics under vLLM's names, kept in atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a generation finished, as vLLM's `finished_reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Counters and the in-flight gauge; every update is one relaxed atomic operation.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    in_flight: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success_stop: AtomicU64,
    success_length: AtomicU64,
    injected_errors: AtomicU64,
}

impl Metrics {
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn add_prompt_tokens(&self, n: u32) {
        self.prompt_tokens.fetch_add(u64::from(n), Relaxed);
    }

    pub(crate) fn add_generation_tokens(&self, n: u32) {
        if n > 0 {
            self.generation_tokens.fetch_add(u64::from(n), Relaxed);
        }
    }

    pub(crate) fn request_succeeded(&self, finish: Finish) {
        match finish {
            Finish::Stop => &self.success_stop,
            Finish::Length => &self.success_length,
        }
        .fetch_add(1, Relaxed);
    }

    pub(crate) fn error_injected(&self) {
        self.injected_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4). `model_label` is the
    /// already-escaped label value.
    pub(crate) fn render(&self, model_label: &str, max_concurrency: u32) -> String {
        let in_flight = self.in_flight.load(Relaxed);
        let capacity = u64::from(max_concurrency);
        let running = in_flight.min(capacity);
        let waiting = in_flight - running;
        let kv_usage = running as f64 / capacity as f64;

        let mut out = String::with_capacity(2048);
        let labels = format!("model_name=\"{model_label}\"");
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (extra, value) in samples {
                let _ = writeln!(out, "{name}{{{extra}{labels}}} {value}");
            }
        };
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            &[("", running.to_string())],
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            &[("", waiting.to_string())],
        );
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            &[("", kv_usage.to_string())],
        );
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            &[("", self.prompt_tokens.load(Relaxed).to_string())],
        );
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            &[("", self.generation_tokens.load(Relaxed).to_string())],
        );
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            &[
                (
                    "finished_reason=\"stop\",",
                    self.success_stop.load(Relaxed).to_string(),
                ),
                (
                    "finished_reason=\"length\",",
                    self.success_length.load(Relaxed).to_string(),
                ),
            ],
        );
        metric(
            "abgate_sim_injected_errors_total",
            "counter",
            "Requests answered with a simulated error (--error-rate).",
            &[("", self.injected_errors.load(Relaxed).to_string())],
        );
        out
    }
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_vllm_names() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.request_started();
        }
        m.add_prompt_tokens(7);
        m.add_generation_tokens(5);
        m.request_succeeded(Finish::Length);
        let text = m.render("m", 2);
        assert!(text.contains("# TYPE vllm:num_requests_running gauge\n"));
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\"} 2\n"));
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\"} 1\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\"} 1\n"));
        assert!(text.contains("vllm:prompt_tokens_total{model_name=\"m\"} 7\n"));
        assert!(text.contains("vllm:generation_tokens_total{model_name=\"m\"} 5\n"));
        assert!(text.contains(
            "vllm:request_success_total{finished_reason=\"length\",model_name=\"m\"} 1\n"
        ));
        m.request_ended();
        m.request_ended();
        assert!(m
            .render("m", 4)
            .contains("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n"));
    }

    #[test]
    fn escapes_labels() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
