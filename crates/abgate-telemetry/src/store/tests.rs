use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::flags::ResponseFlags;
use crate::labels::RequestProtocol;

const WINDOW: Duration = Duration::from_secs(10);

fn store(windows: usize) -> (VariantStore, Instant) {
    let origin = Instant::now();
    (VariantStore::new(WINDOW, windows, origin), origin)
}

/// An instant `secs` seconds after `origin`.
fn at(origin: Instant, secs: f64) -> Instant {
    origin + Duration::from_secs_f64(secs)
}

fn req(at: Instant, ms: u64, code: u16, flags: ResponseFlags) -> RequestRecord {
    RequestRecord {
        code,
        flags,
        protocol: RequestProtocol::Http,
        duration: Duration::from_millis(ms),
        request_bytes: 0,
        response_bytes: 0,
        at,
    }
}

fn ok(at: Instant, ms: u64) -> RequestRecord {
    req(at, ms, 200, ResponseFlags::NONE)
}

#[test]
fn windows_are_numbered_from_the_origin() {
    let (s, t0) = store(8);
    assert_eq!(s.window_of(t0), 0);
    assert_eq!(s.window_of(at(t0, 9.999)), 0);
    assert_eq!(s.window_of(at(t0, 10.0)), 1);
    assert_eq!(s.window_of(at(t0, 125.0)), 12);
    assert_eq!(s.window_start(12), at(t0, 120.0));
    // Before the origin counts as window 0.
    assert_eq!(s.window_of(t0.checked_sub(WINDOW).unwrap_or(t0)), 0);
    assert_eq!(s.window_len(), WINDOW);
}

#[test]
fn same_names_return_the_same_cell() {
    let (s, _) = store(8);
    let a = s.cell("exp", "a");
    assert!(Arc::ptr_eq(&a, &s.cell("exp", "a")));
    assert!(!Arc::ptr_eq(&a, &s.cell("exp", "b")));
    s.cell("other", "a");
    let variants: Vec<String> = s
        .variants("exp")
        .iter()
        .map(|c| c.variant().to_owned())
        .collect();
    assert_eq!(variants, ["a", "b"]);
    assert!(s.get("exp", "c").is_none());
    s.remove_experiment("exp");
    assert_eq!(s.cells().len(), 1);
}

#[test]
fn old_window_not_counted_after_its_slot_is_reused() {
    let (s, t0) = store(4);
    let cell = s.cell("exp", "a");
    for _ in 0..5 {
        cell.record_request(&ok(at(t0, 1.0), 10));
    }
    assert_eq!(cell.snapshot(0, 1).count, 5);
    // Window 4 uses window 0's slot: the first record there zeroes it.
    cell.record_request(&ok(at(t0, 41.0), 20));
    cell.record_request(&ok(at(t0, 42.0), 20));
    assert_eq!(cell.snapshot(0, 1).count, 0);
    assert_eq!(cell.snapshot(4, 5).count, 2);
    assert_eq!(cell.snapshot(0, 100).count, 2);
    let windows = cell.windows(0..100);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].0, 4);
    assert_eq!(windows[0].1.latency_ms.moments.sum, 40.0);
}

#[test]
fn housekeep_zeroes_the_next_windows_before_they_start() {
    let (s, t0) = store(4);
    let cell = s.cell("exp", "a");
    for w in 0..4 {
        for _ in 0..3 {
            cell.record_request(&ok(at(t0, w as f64 * 10.0 + 1.0), 10));
        }
    }
    assert_eq!(cell.snapshot(0, 4).count, 12);
    // In window 3: windows 4 and 5 are prepared in the slots of windows 0 and 1.
    s.housekeep(at(t0, 35.0));
    assert_eq!(cell.ring[0].epoch.load(Ordering::Relaxed), 5);
    assert_eq!(cell.ring[1].epoch.load(Ordering::Relaxed), 6);
    assert!(cell.ring[0].read().is_empty());
    assert!(cell.ring[1].read().is_empty());
    assert_eq!(cell.snapshot(0, 2).count, 0, "old windows are gone");
    assert_eq!(cell.snapshot(2, 4).count, 6, "recent windows are kept");
    // Recording in window 4 finds its slot ready and clean.
    cell.record_request(&ok(at(t0, 41.0), 10));
    assert_eq!(cell.ring[0].epoch.load(Ordering::Relaxed), 5);
    assert_eq!(cell.snapshot(4, 5).count, 1);
    // Prepared but empty windows are not listed.
    let listed: Vec<u64> = cell.windows(0..10).into_iter().map(|(w, _)| w).collect();
    assert_eq!(listed, [2, 3, 4]);
    assert_eq!(cell.dropped(), 0);
}

#[test]
fn record_older_than_the_ring_is_dropped() {
    let (s, t0) = store(4);
    let cell = s.cell("exp", "a");
    cell.record_request(&ok(at(t0, 101.0), 10)); // window 10, slot 2
    cell.record_request(&ok(at(t0, 21.0), 10)); // window 2, slot 2: too old
    assert_eq!(cell.dropped(), 1);
    assert_eq!(cell.snapshot(0, 11).count, 1);
    assert_eq!(cell.snapshot(10, 11).count, 1);
}

#[test]
fn snapshot_merges_the_windows_in_range() {
    let (s, t0) = store(16);
    let cell = s.cell("exp", "a");
    let mut values = Vec::new();
    for w in 0..6u64 {
        for i in 0..10u64 {
            let ms = 5 + w * 100 + i;
            cell.record_request(&ok(at(t0, w as f64 * 10.0 + 0.5), ms));
            if (1..4).contains(&w) {
                values.push(ms as f64);
            }
        }
    }
    let merged = cell.snapshot(1, 4);
    assert_eq!(merged.count, 30);
    assert_eq!(
        merged.latency_ms.moments,
        Moments::of(values.iter().copied())
    );
    assert_eq!(merged.latency_ms.sketch, Sketch::of(values.iter().copied()));
    // The same as merging the listed windows one by one.
    let mut by_window = WindowStats::default();
    for (_, stats) in cell.windows(1..4) {
        by_window.merge(&stats);
    }
    assert_eq!(by_window, merged);
}

#[test]
fn errors_count_5xx_and_flags_other_than_di() {
    let (s, t0) = store(8);
    let cell = s.cell("exp", "a");
    let t = at(t0, 1.0);
    cell.record_request(&ok(t, 10));
    cell.record_request(&req(t, 10, 200, ResponseFlags::DI));
    cell.record_request(&req(t, 10, 404, ResponseFlags::NONE));
    cell.record_request(&req(t, 10, 503, ResponseFlags::NONE));
    cell.record_request(&req(t, 10, 200, ResponseFlags::URX));
    let stats = cell.snapshot(0, 1);
    assert_eq!((stats.count, stats.errors), (5, 2));
    assert_eq!(stats.error_rate(), Some(0.4));
}

#[test]
fn a_client_cancel_is_no_evidence_but_an_upstream_failure_with_it_is() {
    let (s, t0) = store(8);
    let cell = s.cell("exp", "a");
    let t = at(t0, 1.0);
    // Left before the response began, and in the middle of a stream: not counted.
    cell.record_request(&req(t, 10, 0, ResponseFlags::DC));
    cell.record_request(&req(t, 10, 200, ResponseFlags::DC));
    let stats = cell.snapshot(0, 1);
    assert_eq!((stats.count, stats.errors), (0, 0));
    // A reset by the upstream, or a 5xx, that the client then left: still an error.
    cell.record_request(&req(t, 10, 200, ResponseFlags::DC | ResponseFlags::UC));
    cell.record_request(&req(t, 10, 503, ResponseFlags::DC));
    let stats = cell.snapshot(0, 1);
    assert_eq!((stats.count, stats.errors), (2, 2));
}

#[test]
fn llm_figures_feed_ttft_tpot_and_tokens() {
    let (s, t0) = store(8);
    let cell = s.cell("exp", "a");
    let t = at(t0, 1.0);
    let good = LlmRecord {
        ttft: Some(Duration::from_millis(100)),
        e2e: Duration::from_millis(1_100),
        prompt_tokens: 20,
        completion_tokens: 11,
        success: true,
        at: t,
    };
    cell.record_llm(&good);
    // A failed stream counts its TTFT only.
    cell.record_llm(&LlmRecord {
        success: false,
        ttft: Some(Duration::from_millis(300)),
        ..good
    });
    let stats = cell.snapshot(0, 1);
    assert_eq!(stats.ttft_ms.moments, Moments::of([100.0, 300.0]));
    assert_eq!(stats.tpot_ms.moments, Moments::of([100.0]));
    assert_eq!(stats.completion_tokens, Moments::of([11.0]));
    assert_eq!(stats.tokens_per_second, Moments::of([10.0]));
    let p50 = stats.tpot_ms.sketch.quantile(0.5).expect("one value");
    assert!((p50 - 100.0).abs() <= 100.0 * Sketch::RELATIVE_ACCURACY);
}

#[test]
fn a_cell_stays_near_its_stated_size() {
    let (s, _) = store(360);
    let bytes = s.bytes_per_cell();
    // 1,101 buckets × 3 sketches × 4 bytes, plus counters, per window.
    const { assert!(WindowAcc::BYTES < 13_500) };
    assert!(bytes < 5 * 1024 * 1024, "{bytes}");
}
