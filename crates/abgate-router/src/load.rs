//! Model servers' own load, for the LLM-aware balancer: how many requests each one has
//! queued and how full its KV cache is, read from its Prometheus metrics.
//!
//! Parsing is here (pure, fuzzable); fetching is the proxy's. The figures live in
//! atomics on the [`Endpoint`](crate::cluster::Endpoint), written by the scraper and read
//! by every pick without a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Metric names read as "requests waiting", summed over label sets: vLLM, SGLang,
/// llama.cpp's server, TGI.
const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "llamacpp:requests_deferred",
    "tgi_queue_size",
];

/// Metric names read as "KV-cache use" (a fraction, 0 to 1), the largest over label sets:
/// vLLM's current and pre-0.10 names, SGLang, llama.cpp.
const KV_CACHE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
];

/// One reading of a model server's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLoad {
    /// Requests the server has accepted but not started.
    pub waiting: u32,
    /// Fraction of its KV cache in use (0 when it does not say).
    pub kv_cache: f64,
}

impl ServerLoad {
    /// Reads the load from a Prometheus text exposition; `None` when it has no metric
    /// naming the server's queue (not a model server abgate knows, or a broken page).
    pub fn parse(text: &str) -> Option<Self> {
        let mut waiting: Option<f64> = None;
        let mut kv_cache: f64 = 0.0;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = sample(line) else {
                continue;
            };
            if WAITING.contains(&name) {
                *waiting.get_or_insert(0.0) += value;
            } else if KV_CACHE.contains(&name) {
                kv_cache = kv_cache.max(value);
            }
        }
        let waiting = waiting?;
        Some(Self {
            waiting: waiting.clamp(0.0, f64::from(u32::MAX)) as u32,
            kv_cache: kv_cache.clamp(0.0, 1.0),
        })
    }
}

/// A sample line's metric name and value (`name{labels} value [timestamp]`), when the
/// value is a finite number.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim_start();
    let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace())?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let rest = if rest.starts_with('{') {
        &rest[labels_end(rest)?..]
    } else {
        rest
    };
    let value = rest.split_ascii_whitespace().next()?;
    let value: f64 = value.parse().ok()?;
    value.is_finite().then_some((name, value))
}

/// The index just past the label set that `text` starts with, skipping quoted values
/// (which may hold `}` and escaped quotes).
fn labels_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The latest reading of an endpoint's load, shared between its scraper and the picks.
#[derive(Debug, Default)]
pub struct LoadReport {
    waiting: AtomicU32,
    /// KV-cache use in thousandths.
    kv_milli: AtomicU32,
    /// The gateway's own requests in flight to the endpoint when the reading was stored.
    in_flight: AtomicU32,
    /// [`now_ms`](crate::cluster::now_ms) of the reading; 0 when there is none yet.
    at: AtomicU64,
}

impl LoadReport {
    /// Stores a reading taken at `now`, when the gateway had `in_flight` requests at the
    /// endpoint (the reading already counts those).
    pub fn set(&self, load: ServerLoad, now: u64, in_flight: u32) {
        self.waiting.store(load.waiting, Ordering::Relaxed);
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.kv_milli
            .store((load.kv_cache * 1000.0).round() as u32, Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
    }

    /// The reading, when one was taken no more than `max_age` ms before `now`.
    pub fn fresh(&self, now: u64, max_age: u64) -> Option<Reading> {
        let at = self.at.load(Ordering::Relaxed);
        if at == 0 || now.saturating_sub(at) > max_age {
            return None;
        }
        Some(Reading {
            waiting: self.waiting.load(Ordering::Relaxed),
            kv_milli: self.kv_milli.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            age_ms: now.saturating_sub(at),
        })
    }
}

/// A reading as a pick (and the admin listing) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Requests queued at the server.
    pub waiting: u32,
    /// KV-cache use in thousandths.
    pub kv_milli: u32,
    /// The gateway's requests in flight to the endpoint when it was read.
    pub in_flight: u32,
    /// How old the reading is, in ms.
    pub age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_metrics_summing_queues_and_keeping_the_fullest_cache() {
        let text = "\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"a\"} 3.0
vllm:num_requests_waiting{engine=\"1\",model_name=\"a\"} 2
vllm:num_requests_running{model_name=\"a\"} 64
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"a\"} 0.25
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"a\"} 0.875 1700000000000
";
        assert_eq!(
            ServerLoad::parse(text),
            Some(ServerLoad {
                waiting: 5,
                kv_cache: 0.875
            })
        );
    }

    #[test]
    fn reads_other_servers_names() {
        let llama = "llamacpp:requests_deferred 4\nllamacpp:kv_cache_usage_ratio 0.5\n";
        assert_eq!(
            ServerLoad::parse(llama),
            Some(ServerLoad {
                waiting: 4,
                kv_cache: 0.5
            })
        );
        let sglang = "sglang:num_queue_reqs{name=\"m\"} 7\nsglang:token_usage{name=\"m\"} 0.1\n";
        assert_eq!(ServerLoad::parse(sglang).map(|l| l.waiting), Some(7));
        let old_vllm = "vllm:num_requests_waiting 1\nvllm:gpu_cache_usage_perc 0.3\n";
        assert_eq!(ServerLoad::parse(old_vllm).map(|l| l.kv_cache), Some(0.3));
        assert_eq!(
            ServerLoad::parse("tgi_queue_size 2\n").map(|l| l.waiting),
            Some(2)
        );
    }

    #[test]
    fn labels_may_hold_braces_spaces_and_escaped_quotes() {
        let text = "vllm:num_requests_waiting{model_name=\"a } \\\" b\"} 6\n";
        assert_eq!(ServerLoad::parse(text).map(|l| l.waiting), Some(6));
    }

    #[test]
    fn a_page_without_a_queue_metric_or_with_garbage_reads_as_unknown() {
        assert_eq!(ServerLoad::parse(""), None);
        assert_eq!(ServerLoad::parse("<html>not metrics</html>"), None);
        assert_eq!(ServerLoad::parse("vllm:kv_cache_usage_perc 0.5\n"), None);
        // A prefix of a known name is another metric.
        assert_eq!(
            ServerLoad::parse("vllm:num_requests_waiting_total 1\n"),
            None
        );
        // Unparsable and non-finite values are skipped; out-of-range ones clamped.
        let text = "vllm:num_requests_waiting{a=\"b\"} NaN\nvllm:num_requests_waiting -3\n\
                    vllm:num_requests_waiting{x=\"unterminated 4\nvllm:kv_cache_usage_perc 7\n";
        assert_eq!(
            ServerLoad::parse(text),
            Some(ServerLoad {
                waiting: 0,
                kv_cache: 1.0
            })
        );
    }

    #[test]
    fn a_reading_is_fresh_until_max_age() {
        let report = LoadReport::default();
        assert_eq!(report.fresh(100, 50), None);
        report.set(
            ServerLoad {
                waiting: 2,
                kv_cache: 0.4,
            },
            100,
            3,
        );
        let reading = report.fresh(150, 50).unwrap();
        assert_eq!(
            (reading.waiting, reading.kv_milli, reading.age_ms),
            (2, 400, 50)
        );
        assert_eq!(report.fresh(151, 50), None);
    }
}
