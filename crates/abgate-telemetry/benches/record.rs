//! What recording one finished request costs on the hot path: `record_request` plus
//! `record_llm` on a series resolved ahead of time, with and without an experiment
//! variant (whose cell also takes the samples), on one thread and on two.
//!
//! `cargo bench -p abgate-telemetry --bench record`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abgate_telemetry::{
    DestinationLabels, DestinationSeries, LlmRecord, RequestProtocol, RequestRecord, ResponseFlags,
    Telemetry,
};
use criterion::{criterion_group, criterion_main, Criterion};

fn series(telemetry: &Telemetry, experiment: bool) -> Arc<DestinationSeries> {
    let mut labels = DestinationLabels::new("llama-3.1-8b-service", "default");
    labels.destination_version = "v1".to_owned();
    labels.destination_subset = "stable".to_owned();
    if experiment {
        labels.experiment_id = "exp-1".to_owned();
        labels.variant = "stable".to_owned();
    }
    telemetry.destination(labels)
}

/// One request's worth of recording; `i` varies the code and the figures a little.
#[inline]
fn record(series: &DestinationSeries, i: u64, at: Instant) {
    let code = if i.is_multiple_of(50) { 503 } else { 200 };
    let ms = 20 + i % 400;
    series.record_request(black_box(&RequestRecord {
        code,
        flags: ResponseFlags::NONE,
        protocol: RequestProtocol::Http,
        duration: Duration::from_millis(ms),
        request_bytes: 512,
        response_bytes: 2_048 + i % 1_000,
        at,
    }));
    series.record_llm(black_box(&LlmRecord {
        ttft: Some(Duration::from_millis(ms / 4)),
        e2e: Duration::from_millis(ms),
        prompt_tokens: 40,
        completion_tokens: 64,
        success: true,
        at,
    }));
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_request+record_llm");
    for experiment in [false, true] {
        let name = if experiment { "experiment" } else { "plain" };
        let telemetry = Telemetry::new();
        let series = series(&telemetry, experiment);
        let at = Instant::now();
        telemetry.store().housekeep(at);

        group.bench_function(format!("{name}/1-thread"), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                record(&series, i, at);
            });
        });

        // Two threads on one series: time per iteration is the wall time for two
        // records, one per thread.
        group.bench_function(format!("{name}/2-threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..2u64 {
                        let series = &series;
                        scope.spawn(move || {
                            for i in 0..iters {
                                record(series, i * 2 + t, at);
                            }
                        });
                    }
                });
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
