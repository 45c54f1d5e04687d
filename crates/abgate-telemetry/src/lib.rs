//! Request and LLM telemetry for abgate: lock-free recording, Prometheus rendering with
//! Istio's names, and the per-variant sample store that experiment analysis reads.
//!
//! The route table asks [`Telemetry::destination`] for one [`DestinationSeries`] per
//! label set when it is built; the proxy then calls
//! [`DestinationSeries::record_request`], [`record_llm`](DestinationSeries::record_llm)
//! and [`record_chunk_gap`](DestinationSeries::record_chunk_gap) on every request. No
//! lock shared across requests is taken and nothing is allocated: a series holds a
//! fixed table of 64 slots keyed by (status, flags, protocol), each claimed once by a
//! compare-exchange and counted with relaxed `fetch_add`s, and its label text is escaped
//! once. [`Telemetry::render`] writes the text exposition format from those atomics.
//!
//! Series routed by an experiment also feed the [`VariantCell`] of their variant in the
//! [`VariantStore`]: windows of counts, moments and quantile sketches, read by
//! [`VariantCell::snapshot`] and [`VariantCell::windows`] without stopping recorders.
//!
//! # Rendered families
//!
//! - `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//!   `istio_response_bytes`, with `reporter="source"`, `source_workload="abgate"` and
//!   Istio's destination labels. `experiment_id` and `variant` are added only to series an
//!   experiment routed (an absent label and an empty one are the same to PromQL).
//!   Duration buckets are Istio's defaults (0.5 ms … 3.6e+06 ms); byte buckets are the
//!   decades 1 B … 1e+07 B of Istio's `requestsize`/`responsesize` metrics.
//! - `llm_tokens_generated_total`, `llm_prompt_tokens_total`, `llm_requests_total{success}`
//!   and the histograms `llm_time_to_first_token_seconds` (1 ms … 120 s),
//!   `llm_time_per_output_token_seconds` and `llm_inter_chunk_gap_seconds` (1 ms … 10 s),
//!   `llm_e2e_request_latency_seconds` (0.1 s … 960 s), after vLLM's buckets; labelled
//!   `model_name`, `version`, `destination_service_name`, `destination_subset` (and the
//!   experiment's). Shown for destinations that have seen an LLM response.
//! - `abgate_config_reloads_total{result}`, `abgate_endpoint_ejections_total`,
//!   `abgate_pool_overflows_total`, `abgate_requests_in_flight`, `abgate_connections_open`,
//!   `abgate_connections_refused_total`.
//!
//! A series counts up to 64 distinct (status, flags, protocol) combinations; any more are
//! counted together and rendered with `response_code="other",response_flags="other"`.
//! Series live as long as the [`Telemetry`] (counters must not vanish between scrapes); a
//! reload asking for the same labels gets the same series back.
//!
//! # Memory
//!
//! About 22 KiB per [`DestinationSeries`] (64 slots of 320 bytes: a count, 19 duration
//! buckets, 2 × 8 byte buckets and 3 sums, all `AtomicU64`; plus overflow slots and LLM
//! meters). About 13 KiB per window per [`VariantCell`] (3 sketches of 1,101 `AtomicU32`
//! buckets, 5 metrics' moments), so 4.8 MB per variant with the default 360 windows.
//!
//! # Precision
//!
//! Histogram sums are integers (µs for durations, bytes for sizes) and render as exact
//! decimals. The store's sums are `f64` (squares of latencies overflow fixed point);
//! its sketches answer quantiles within 1% relative error ([`Sketch`]).
#![forbid(unsafe_code)]

mod flags;
mod gateway;
mod histogram;
mod labels;
mod record;
mod render;
mod series;
mod store;
mod telemetry;

pub use flags::{ResponseFlags, UnknownResponseFlag};
pub use gateway::{GatewayStats, InFlight};
pub use labels::{service_name_of, DestinationLabels, RequestProtocol};
pub use record::{LlmRecord, RequestRecord};
pub use series::DestinationSeries;
pub use store::{Distribution, Moments, Sketch, VariantCell, VariantStore, WindowStats};
pub use telemetry::{Telemetry, TelemetryOptions};

#[cfg(test)]
mod tests;
