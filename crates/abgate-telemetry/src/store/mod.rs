//! The per-variant sample store that experiment analysis reads.
//!
//! Each (experiment, variant) has a [`VariantCell`]: a ring of time windows of atomic
//! accumulators. A sample goes into the window its instant falls in,
//! `ring[window % len]`; recorders never wait. A slot is zeroed before it is reused for a
//! newer window, by [`VariantStore::housekeep`] ahead of time (so the hot path never
//! pays for it), or, if housekeeping fell behind, by the first recorder to reach it. Each
//! slot remembers which window it holds, so reads skip slots holding older data or
//! being zeroed, and reads never block recording.

mod sketch;
mod stats;
mod window;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use sketch::Sketch;
pub use stats::{Distribution, Moments, WindowStats};

use crate::record::{LlmRecord, RequestRecord};
use window::{WindowAcc, WindowClock, LATENCY, RESETTING, TOKENS, TPOT, TPS, TTFT};

/// A duration in milliseconds, from whole nanoseconds (so whole milliseconds are exact).
fn millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// How many windows past the current one [`VariantStore::housekeep`] prepares.
const AHEAD: u64 = 2;

/// How many turns a recorder spins while another zeroes the slot it needs (zeroing takes a
/// few microseconds; this bound is far above that, and keeps a stalled zeroer from
/// holding recorders up).
const SPIN_TURNS: u32 = 100_000;

/// The windows of every experiment variant, and the clock that numbers them.
pub struct VariantStore {
    clock: WindowClock,
    windows: usize,
    cells: Mutex<BTreeMap<(String, String), Arc<VariantCell>>>,
}

impl VariantStore {
    /// A store with windows of `window` (at least 1 ms), keeping the last `windows` of
    /// them (at least `AHEAD + 2` = 4), numbered from `origin`.
    pub(crate) fn new(window: Duration, windows: usize, origin: Instant) -> Self {
        Self {
            clock: WindowClock::new(origin, window.max(Duration::from_millis(1))),
            windows: windows.max(AHEAD as usize + 2),
            cells: Mutex::new(BTreeMap::new()),
        }
    }

    /// The cell of `variant` in `experiment_id`, created on first use; the same names
    /// return the same cell. Called when a route table is built, not per request.
    pub fn cell(&self, experiment_id: &str, variant: &str) -> Arc<VariantCell> {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells
            .entry((experiment_id.to_owned(), variant.to_owned()))
            .or_insert_with(|| {
                Arc::new(VariantCell::new(
                    experiment_id,
                    variant,
                    self.clock,
                    self.windows,
                ))
            })
            .clone()
    }

    /// The cell of `variant` in `experiment_id`, if one was created.
    pub fn get(&self, experiment_id: &str, variant: &str) -> Option<Arc<VariantCell>> {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells
            .get(&(experiment_id.to_owned(), variant.to_owned()))
            .cloned()
    }

    /// The cells of one experiment, by variant name.
    pub fn variants(&self, experiment_id: &str) -> Vec<Arc<VariantCell>> {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells
            .iter()
            .filter(|((e, _), _)| e == experiment_id)
            .map(|(_, cell)| cell.clone())
            .collect()
    }

    /// Every cell, ordered by experiment and variant.
    pub fn cells(&self) -> Vec<Arc<VariantCell>> {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells.values().cloned().collect()
    }

    /// Forgets an experiment's cells (after cleanup); series still holding them keep
    /// recording into them until the next table build drops those series' references.
    pub fn remove_experiment(&self, experiment_id: &str) {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells.retain(|(e, _), _| e != experiment_id);
    }

    /// Zeroes the ring slots of the current window and the next two in every cell, where
    /// they still hold older windows, so that recorders find them ready. Call it from a
    /// background tick at least once per window.
    pub fn housekeep(&self, now: Instant) {
        for cell in self.cells() {
            cell.housekeep(now);
        }
    }

    /// The window `at` falls in.
    pub fn window_of(&self, at: Instant) -> u64 {
        self.clock.window_of(at)
    }

    /// When window `w` begins.
    pub fn window_start(&self, w: u64) -> Instant {
        self.clock.start_of(w)
    }

    /// The length of a window.
    pub fn window_len(&self) -> Duration {
        self.clock.len()
    }

    /// How many windows each cell's ring holds. The current window and the `windows − 3`
    /// before it are always readable: housekeeping reuses the two oldest slots for the
    /// next two windows.
    pub fn windows(&self) -> usize {
        self.windows
    }

    /// The instant window 0 begins.
    pub fn origin(&self) -> Instant {
        self.clock.origin
    }

    /// Bytes one cell takes.
    pub fn bytes_per_cell(&self) -> usize {
        std::mem::size_of::<VariantCell>() + self.windows * WindowAcc::BYTES
    }
}

/// One experiment variant's ring of windows. Shared (through `Arc`) by every
/// destination series routed to the variant, so a variant's figures add up across
/// endpoints, subsets and table rebuilds.
pub struct VariantCell {
    experiment_id: String,
    variant: String,
    clock: WindowClock,
    ring: Box<[WindowAcc]>,
    dropped: AtomicU64,
}

impl VariantCell {
    fn new(experiment_id: &str, variant: &str, clock: WindowClock, windows: usize) -> Self {
        Self {
            experiment_id: experiment_id.to_owned(),
            variant: variant.to_owned(),
            clock,
            ring: (0..windows).map(|_| WindowAcc::new()).collect(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The experiment this cell belongs to.
    pub fn experiment_id(&self) -> &str {
        &self.experiment_id
    }

    /// The variant this cell counts.
    pub fn variant(&self) -> &str {
        &self.variant
    }

    /// Counts one finished request: count, errors and latency; a client's cancel is not
    /// counted. The destination series of a variant calls this; call it directly only
    /// for a request no series records.
    pub fn record_request(&self, r: &RequestRecord) {
        if r.is_client_cancel() {
            return;
        }
        let Some(acc) = self.slot_for(self.clock.window_of(r.at)) else {
            return;
        };
        acc.count(r.is_error());
        acc.observe(LATENCY, millis(r.duration));
    }

    /// Counts one response's LLM figures. Latencies and token figures only from
    /// successful responses (a stream cut short would look fast); TTFT from any response
    /// that produced a first token.
    pub fn record_llm(&self, s: &LlmRecord) {
        let Some(acc) = self.slot_for(self.clock.window_of(s.at)) else {
            return;
        };
        if let Some(ttft) = s.ttft {
            acc.observe(TTFT, millis(ttft));
        }
        if !s.success {
            return;
        }
        if let Some(tpot) = s.time_per_output_token() {
            acc.observe(TPOT, millis(tpot));
        }
        acc.observe(TOKENS, s.completion_tokens as f64);
        if let Some(tps) = s.tokens_per_second() {
            acc.observe(TPS, tps);
        }
    }

    /// Prepares the slots of the window `now` is in and the next two.
    pub fn housekeep(&self, now: Instant) {
        let current = self.clock.window_of(now);
        for w in current..=current + AHEAD {
            self.claim(w);
        }
    }

    /// The figures of windows `from..to` (half-open) merged. Windows no longer in the
    /// ring, or never written, add nothing.
    pub fn snapshot(&self, from: u64, to: u64) -> WindowStats {
        let mut total = WindowStats::default();
        for w in self.readable(from..to) {
            if let Some(stats) = self.read(w) {
                total.merge(&stats);
            }
        }
        total
    }

    /// Each window of `range` that holds data, with its figures, oldest first (for
    /// analysis stratified by window, e.g. across traffic ramps).
    pub fn windows(&self, range: Range<u64>) -> Vec<(u64, WindowStats)> {
        self.readable(range)
            .filter_map(|w| self.read(w).map(|s| (w, s)))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    /// Samples not recorded because their window had already left the ring (an instant
    /// older than the ring holds) or was being zeroed at that moment.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The window of `w`'s slot, ready to record into, or `None` (counted as dropped).
    #[inline]
    fn slot_for(&self, w: u64) -> Option<&WindowAcc> {
        let slot = self.claim(w);
        if slot.is_none() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// Makes the slot of window `w` hold `w`, zeroing it when it holds an older window.
    /// `None` when it holds a newer window. When another thread is zeroing it for `w`
    /// (a few microseconds, at most once per window, and only when housekeeping fell
    /// behind), waits for that by spinning a bounded number of turns rather than lose the
    /// sample; past the bound the sample is dropped (and counted).
    fn claim(&self, w: u64) -> Option<&WindowAcc> {
        let acc = &self.ring[(w % self.ring.len() as u64) as usize];
        let want = w + 1;
        let mut seen = acc.epoch.load(Ordering::Acquire);
        if seen == RESETTING {
            seen = wait_reset(acc);
        }
        if seen == want {
            return Some(acc);
        }
        if seen > want {
            return None;
        }
        if acc
            .epoch
            .compare_exchange(seen, RESETTING, Ordering::Acquire, Ordering::Acquire)
            .is_err()
        {
            return (wait_reset(acc) == want).then_some(acc);
        }
        // Readers that see a zeroed counter will see RESETTING or the new epoch after it.
        fence(Ordering::Release);
        acc.zero();
        acc.epoch.store(want, Ordering::Release);
        Some(acc)
    }

    /// The part of `range` that can still be in the ring: at most its length, ending at
    /// the newest window any slot holds.
    fn readable(&self, range: Range<u64>) -> Range<u64> {
        let newest = self
            .ring
            .iter()
            .map(|acc| acc.epoch.load(Ordering::Relaxed))
            .filter(|&e| e != RESETTING)
            .max()
            .unwrap_or(0);
        // Epochs are window + 1, so `newest` is one past the newest window.
        let oldest = newest.saturating_sub(self.ring.len() as u64);
        range.start.max(oldest)..range.end.min(newest)
    }

    /// Window `w`'s figures, if its slot holds `w` from before to after the read.
    fn read(&self, w: u64) -> Option<WindowStats> {
        let acc = &self.ring[(w % self.ring.len() as u64) as usize];
        let want = w + 1;
        if acc.epoch.load(Ordering::Acquire) != want {
            return None;
        }
        let stats = acc.read();
        fence(Ordering::Acquire);
        (acc.epoch.load(Ordering::Relaxed) == want).then_some(stats)
    }
}

#[cfg(test)]
mod tests;

/// The slot's epoch once no thread is zeroing it (spinning a bounded number of turns; a
/// zeroing takes a few microseconds), or `RESETTING` if it still is.
fn wait_reset(acc: &WindowAcc) -> u64 {
    for _ in 0..SPIN_TURNS {
        let epoch = acc.epoch.load(Ordering::Acquire);
        if epoch != RESETTING {
            return epoch;
        }
        std::hint::spin_loop();
    }
    acc.epoch.load(Ordering::Acquire)
}
