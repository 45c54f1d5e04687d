//! Writing the Prometheus text exposition format (0.0.4).

use std::fmt::Write as _;

use crate::gateway::GatewayStats;
use crate::histogram::{Bound, HistogramSnapshot, BYTES, DURATION_MS, E2E_S, TOKEN_GAP_S, TTFT_S};
use crate::series::{DestinationSeries, LlmSnapshot, SlotSnapshot};

/// `# HELP` and `# TYPE` of a family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `value` / 10^`decimals`, as an exact decimal without trailing zeros (`12345`, 3 →
/// `12.345`; `12000`, 3 → `12`).
fn push_scaled(out: &mut String, value: u64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    let (whole, frac) = (value / scale, value % scale);
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let digits = format!("{frac:0width$}", width = decimals as usize);
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// The unit a histogram's sum is kept in and the power of ten that turns it into the
/// rendered unit: µs → ms is 3, µs → s is 6, bytes → bytes is 0.
#[derive(Clone, Copy)]
struct SumScale(u32);

/// Writes `_bucket` lines (cumulative, then `+Inf`), `_sum` and `_count`.
fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[Bound; N],
    count: u64,
    h: &HistogramSnapshot<N>,
    scale: SumScale,
) {
    let mut cumulative = 0u64;
    for (bound, n) in bounds.iter().zip(h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            bound.le
        );
    }
    // Read without a lock, the count may trail the buckets by a request in flight; keep
    // the series monotonic.
    let count = count.max(cumulative);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = write!(out, "{name}_sum{{{labels}}} ");
    push_scaled(out, h.sum, scale.0);
    out.push('\n');
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// A series' Istio labels for one slot: the destination's, then protocol, code and flags,
/// then the experiment's.
fn slot_labels(series: &DestinationSeries, slot: &SlotSnapshot) -> String {
    let mut labels = String::with_capacity(series.istio_labels().len() + 128);
    labels.push_str(series.istio_labels());
    let _ = write!(
        labels,
        ",request_protocol=\"{}\",response_code=\"",
        slot.protocol.as_str()
    );
    match slot.code {
        Some(code) => {
            let _ = write!(labels, "{code}\",response_flags=\"{}\"", slot.flags);
        }
        None => labels.push_str("other\",response_flags=\"other\""),
    }
    labels.push_str(series.experiment_labels());
    labels
}

/// Every family, each with its help and type, then its samples.
pub(crate) fn render(
    series: &[std::sync::Arc<DestinationSeries>],
    gateway: &GatewayStats,
) -> String {
    // One snapshot per series, so that the count of `istio_requests_total` and of the
    // histograms agree within this scrape.
    let slots: Vec<Vec<(String, SlotSnapshot)>> = series
        .iter()
        .map(|s| {
            s.slot_snapshots()
                .into_iter()
                .map(|slot| (slot_labels(s, &slot), slot))
                .collect()
        })
        .collect();
    let llm: Vec<(&str, LlmSnapshot)> = series
        .iter()
        .map(|s| (s.llm_labels(), s.llm_snapshot()))
        .filter(|(_, snap)| snap.is_active())
        .collect();
    let samples: usize = slots.iter().map(Vec::len).sum();
    let mut out = String::with_capacity(1024 + samples * 9_000 + llm.len() * 12_000);

    header(
        &mut out,
        "istio_requests_total",
        "counter",
        "Requests the gateway sent to a destination, by response code and flags.",
    );
    for (labels, slot) in slots.iter().flatten() {
        let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", slot.count);
    }
    header(
        &mut out,
        "istio_request_duration_milliseconds",
        "histogram",
        "Request duration in milliseconds, from the first request byte to the end of the response.",
    );
    for (labels, slot) in slots.iter().flatten() {
        histogram(
            &mut out,
            "istio_request_duration_milliseconds",
            labels,
            &DURATION_MS,
            slot.count,
            &slot.duration,
            SumScale(3),
        );
    }
    header(
        &mut out,
        "istio_request_bytes",
        "histogram",
        "Request body size in bytes.",
    );
    for (labels, slot) in slots.iter().flatten() {
        histogram(
            &mut out,
            "istio_request_bytes",
            labels,
            &BYTES,
            slot.count,
            &slot.request_bytes,
            SumScale(0),
        );
    }
    header(
        &mut out,
        "istio_response_bytes",
        "histogram",
        "Response body size in bytes.",
    );
    for (labels, slot) in slots.iter().flatten() {
        histogram(
            &mut out,
            "istio_response_bytes",
            labels,
            &BYTES,
            slot.count,
            &slot.response_bytes,
            SumScale(0),
        );
    }

    render_llm(&mut out, &llm);
    render_gateway(&mut out, gateway);
    out
}

fn render_llm(out: &mut String, llm: &[(&str, LlmSnapshot)]) {
    header(
        out,
        "llm_tokens_generated_total",
        "counter",
        "Completion tokens generated (from usage, or counted from stream chunks).",
    );
    for (labels, s) in llm {
        let _ = writeln!(
            out,
            "llm_tokens_generated_total{{{labels}}} {}",
            s.completion_tokens
        );
    }
    header(
        out,
        "llm_prompt_tokens_total",
        "counter",
        "Prompt tokens processed.",
    );
    for (labels, s) in llm {
        let _ = writeln!(
            out,
            "llm_prompt_tokens_total{{{labels}}} {}",
            s.prompt_tokens
        );
    }
    header(
        out,
        "llm_requests_total",
        "counter",
        "LLM responses finished, by whether they completed normally.",
    );
    for (labels, s) in llm {
        let _ = writeln!(
            out,
            "llm_requests_total{{{labels},success=\"true\"}} {}",
            s.succeeded
        );
        let _ = writeln!(
            out,
            "llm_requests_total{{{labels},success=\"false\"}} {}",
            s.failed
        );
    }
    header(
        out,
        "llm_time_to_first_token_seconds",
        "histogram",
        "Time from the request to the first content token, in seconds.",
    );
    for (labels, s) in llm {
        let (count, h) = &s.ttft;
        histogram(
            out,
            "llm_time_to_first_token_seconds",
            labels,
            &TTFT_S,
            *count,
            h,
            SumScale(6),
        );
    }
    header(
        out,
        "llm_time_per_output_token_seconds",
        "histogram",
        "Decode time per output token after the first, per successful streamed response, in seconds.",
    );
    for (labels, s) in llm {
        let (count, h) = &s.tpot;
        histogram(
            out,
            "llm_time_per_output_token_seconds",
            labels,
            &TOKEN_GAP_S,
            *count,
            h,
            SumScale(6),
        );
    }
    header(
        out,
        "llm_e2e_request_latency_seconds",
        "histogram",
        "End-to-end latency of successful LLM responses, in seconds.",
    );
    for (labels, s) in llm {
        let (count, h) = &s.e2e;
        histogram(
            out,
            "llm_e2e_request_latency_seconds",
            labels,
            &E2E_S,
            *count,
            h,
            SumScale(6),
        );
    }
    header(
        out,
        "llm_inter_chunk_gap_seconds",
        "histogram",
        "Gap between consecutive streamed content chunks, in seconds.",
    );
    for (labels, s) in llm {
        let (count, h) = &s.chunk_gap;
        histogram(
            out,
            "llm_inter_chunk_gap_seconds",
            labels,
            &TOKEN_GAP_S,
            *count,
            h,
            SumScale(6),
        );
    }
}

fn render_gateway(out: &mut String, g: &GatewayStats) {
    header(
        out,
        "abgate_config_reloads_total",
        "counter",
        "Configuration reloads after startup: applied, or refused with the running configuration kept.",
    );
    let _ = writeln!(
        out,
        "abgate_config_reloads_total{{result=\"applied\"}} {}",
        g.config_reloads_applied()
    );
    let _ = writeln!(
        out,
        "abgate_config_reloads_total{{result=\"refused\"}} {}",
        g.config_reloads_refused()
    );
    header(
        out,
        "abgate_endpoint_ejections_total",
        "counter",
        "Endpoints ejected by outlier detection.",
    );
    let _ = writeln!(
        out,
        "abgate_endpoint_ejections_total {}",
        g.endpoint_ejections()
    );
    header(
        out,
        "abgate_pool_overflows_total",
        "counter",
        "Requests refused because a connection pool was full (UO).",
    );
    let _ = writeln!(out, "abgate_pool_overflows_total {}", g.pool_overflows());
    header(
        out,
        "abgate_requests_in_flight",
        "gauge",
        "Requests being served.",
    );
    let _ = writeln!(out, "abgate_requests_in_flight {}", g.requests_in_flight());
    header(
        out,
        "abgate_connections_open",
        "gauge",
        "Downstream connections open.",
    );
    let _ = writeln!(out, "abgate_connections_open {}", g.connections_open());
    header(
        out,
        "abgate_connections_refused_total",
        "counter",
        "Downstream connections refused at accept because --max-connections were open.",
    );
    let _ = writeln!(
        out,
        "abgate_connections_refused_total {}",
        g.connections_refused()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_sums_print_exact_decimals() {
        let cases = [
            (12_345, 3, "12.345"),
            (12_000, 3, "12"),
            (7, 3, "0.007"),
            (1_500_000, 6, "1.5"),
            (1, 6, "0.000001"),
            (42, 0, "42"),
            (0, 6, "0"),
        ];
        for (value, decimals, want) in cases {
            let mut out = String::new();
            push_scaled(&mut out, value, decimals);
            assert_eq!(out, want);
        }
    }
}
