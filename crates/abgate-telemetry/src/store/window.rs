//! One analysis window's accumulators, all atomics, and the clock that numbers windows.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::sketch::{bucket_of, Sketch, BUCKETS};
use super::stats::{Distribution, Moments, WindowStats};
use crate::histogram::nanos;

/// Numbers windows: window `w` covers `[origin + w·len, origin + (w+1)·len)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowClock {
    pub origin: Instant,
    pub len_ns: u64,
}

impl WindowClock {
    pub(crate) fn new(origin: Instant, len: Duration) -> Self {
        Self {
            origin,
            len_ns: nanos(len).max(1),
        }
    }

    /// The window `at` falls in; instants before the origin fall in window 0.
    #[inline]
    pub(crate) fn window_of(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin)) / self.len_ns
    }

    /// When window `w` begins.
    pub(crate) fn start_of(&self, w: u64) -> Instant {
        let offset = Duration::from_nanos(w.saturating_mul(self.len_ns));
        self.origin.checked_add(offset).unwrap_or(self.origin)
    }

    pub(crate) fn len(&self) -> Duration {
        Duration::from_nanos(self.len_ns)
    }
}

/// The numeric metrics, as indices into [`WindowAcc::moments`]; the first
/// [`SKETCHED`] also have a sketch.
pub(crate) const LATENCY: usize = 0;
pub(crate) const TTFT: usize = 1;
pub(crate) const TPOT: usize = 2;
pub(crate) const TOKENS: usize = 3;
pub(crate) const TPS: usize = 4;
const METRICS: usize = 5;
const SKETCHED: usize = 3;

/// Count, Σx and Σx² on atomics. The sums are `f64` bit patterns updated by a CAS loop:
/// squares of latencies overflow any fixed-point `u64` (an hour in µs, squared, is 1.3e19),
/// and `f64` keeps a 2⁻⁵³ relative rounding per addition.
struct AtomicMoments {
    n: AtomicU64,
    sum: AtomicU64,
    sum_sq: AtomicU64,
}

fn add_f64(cell: &AtomicU64, x: f64) {
    let mut current = cell.load(Relaxed);
    loop {
        let next = (f64::from_bits(current) + x).to_bits();
        match cell.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

impl AtomicMoments {
    fn new() -> Self {
        Self {
            n: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
            sum_sq: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn add(&self, x: f64) {
        self.n.fetch_add(1, Relaxed);
        add_f64(&self.sum, x);
        add_f64(&self.sum_sq, x * x);
    }

    fn zero(&self) {
        self.n.store(0, Relaxed);
        self.sum.store(0f64.to_bits(), Relaxed);
        self.sum_sq.store(0f64.to_bits(), Relaxed);
    }

    fn read(&self) -> Moments {
        Moments {
            n: self.n.load(Relaxed),
            sum: f64::from_bits(self.sum.load(Relaxed)),
            sum_sq: f64::from_bits(self.sum_sq.load(Relaxed)),
        }
    }
}

/// One ring slot: the accumulators of whichever window its `epoch` names.
pub(crate) struct WindowAcc {
    /// `window + 1` of the window these counters belong to; 0 before first use,
    /// [`RESETTING`] while being zeroed.
    pub epoch: AtomicU64,
    count: AtomicU64,
    errors: AtomicU64,
    moments: [AtomicMoments; METRICS],
    /// `SKETCHED` sketches of `BUCKETS` counts each. `u32` halves the ring's memory; a
    /// bucket would need 4.3e9 samples in one window to wrap.
    sketches: Box<[AtomicU32]>,
}

/// The epoch of a slot being zeroed.
pub(crate) const RESETTING: u64 = u64::MAX;

impl WindowAcc {
    pub(crate) fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            moments: std::array::from_fn(|_| AtomicMoments::new()),
            sketches: (0..SKETCHED * BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Bytes one slot takes, heap included.
    pub(crate) const BYTES: usize =
        std::mem::size_of::<Self>() + SKETCHED * BUCKETS * std::mem::size_of::<AtomicU32>();

    #[inline]
    pub(crate) fn count(&self, error: bool) {
        self.count.fetch_add(1, Relaxed);
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// Adds `x` to metric `metric`'s moments, and to its sketch if it has one.
    #[inline]
    pub(crate) fn observe(&self, metric: usize, x: f64) {
        self.moments[metric].add(x);
        if metric < SKETCHED {
            self.sketches[metric * BUCKETS + bucket_of(x)].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn zero(&self) {
        self.count.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        for m in &self.moments {
            m.zero();
        }
        for c in self.sketches.iter() {
            c.store(0, Relaxed);
        }
    }

    fn distribution(&self, metric: usize) -> Distribution {
        let counts = &self.sketches[metric * BUCKETS..(metric + 1) * BUCKETS];
        Distribution {
            moments: self.moments[metric].read(),
            sketch: Sketch::from_dense(counts.iter().map(|c| u64::from(c.load(Relaxed)))),
        }
    }

    pub(crate) fn read(&self) -> WindowStats {
        WindowStats {
            count: self.count.load(Relaxed),
            errors: self.errors.load(Relaxed),
            latency_ms: self.distribution(LATENCY),
            ttft_ms: self.distribution(TTFT),
            tpot_ms: self.distribution(TPOT),
            completion_tokens: self.moments[TOKENS].read(),
            tokens_per_second: self.moments[TPS].read(),
        }
    }
}
