//! One destination's counters: a lock-free slot table keyed by (code, flags, protocol)
//! for the Istio families, and the LLM meters.
//!
//! The label text is escaped once, when the series is made; recording is a hash, a short
//! probe and a few relaxed `fetch_add`s, with no lock and no allocation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::flags::ResponseFlags;
use crate::histogram::{
    micros, nanos, AtomicHistogram, HistogramSnapshot, Timer, BYTES, DURATION_MS, E2E_S,
    TOKEN_GAP_S, TTFT_S,
};
use crate::labels::{push_label, DestinationLabels, RequestProtocol};
use crate::record::{LlmRecord, RequestRecord};
use crate::store::VariantCell;

/// Slots per series: distinct (code, flags, protocol) combinations counted separately.
/// More than this are counted together as `response_code="other"`.
pub(crate) const SLOTS: usize = 64;

/// Set in every claimed key, so that 0 means a free slot.
const CLAIMED: u64 = 1 << 63;

fn pack(code: u16, flags: ResponseFlags, protocol: RequestProtocol) -> u64 {
    CLAIMED | (protocol.index() as u64) << 48 | u64::from(flags.bits()) << 16 | u64::from(code)
}

fn unpack(key: u64) -> (u16, ResponseFlags, RequestProtocol) {
    let code = (key & 0xffff) as u16;
    let flags = ResponseFlags::from_bits_truncate((key >> 16) as u32);
    let protocol = if (key >> 48) & 1 == 1 {
        RequestProtocol::Grpc
    } else {
        RequestProtocol::Http
    };
    (code, flags, protocol)
}

/// Where probing starts for a key (Fibonacci hashing to `SLOTS` = 2⁶ slots).
fn home(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The counters of one (code, flags, protocol): the request count (also the `+Inf`
/// bucket and `_count` of the three histograms) and three histograms.
struct Slot {
    key: AtomicU64,
    count: AtomicU64,
    duration: AtomicHistogram<19>,
    request_bytes: AtomicHistogram<8>,
    response_bytes: AtomicHistogram<8>,
}

impl Slot {
    fn new() -> Self {
        Self {
            key: AtomicU64::new(0),
            count: AtomicU64::new(0),
            duration: AtomicHistogram::new(),
            request_bytes: AtomicHistogram::new(),
            response_bytes: AtomicHistogram::new(),
        }
    }

    #[inline]
    fn record(&self, r: &RequestRecord) {
        self.duration
            .record(&DURATION_MS, nanos(r.duration), micros(r.duration));
        self.request_bytes
            .record(&BYTES, r.request_bytes, r.request_bytes);
        self.response_bytes
            .record(&BYTES, r.response_bytes, r.response_bytes);
        self.count.fetch_add(1, Relaxed);
    }

    fn snapshot(
        &self,
        code: Option<u16>,
        flags: ResponseFlags,
        protocol: RequestProtocol,
    ) -> SlotSnapshot {
        SlotSnapshot {
            code,
            flags,
            protocol,
            count: self.count.load(Relaxed),
            duration: self.duration.snapshot(),
            request_bytes: self.request_bytes.snapshot(),
            response_bytes: self.response_bytes.snapshot(),
        }
    }
}

/// A slot's counters copied for rendering; `code` is `None` for the overflow slot.
pub(crate) struct SlotSnapshot {
    pub code: Option<u16>,
    pub flags: ResponseFlags,
    pub protocol: RequestProtocol,
    pub count: u64,
    /// Durations: buckets by ns, sum in µs.
    pub duration: HistogramSnapshot<19>,
    pub request_bytes: HistogramSnapshot<8>,
    pub response_bytes: HistogramSnapshot<8>,
}

/// LLM meters of one destination.
struct LlmMeters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: Timer<20>,
    tpot: Timer<18>,
    e2e: Timer<20>,
    chunk_gap: Timer<18>,
}

/// The LLM meters copied for rendering. Sums are in µs.
pub(crate) struct LlmSnapshot {
    pub succeeded: u64,
    pub failed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttft: (u64, HistogramSnapshot<20>),
    pub tpot: (u64, HistogramSnapshot<18>),
    pub e2e: (u64, HistogramSnapshot<20>),
    pub chunk_gap: (u64, HistogramSnapshot<18>),
}

impl LlmSnapshot {
    /// Whether this destination ever saw an LLM response (otherwise its LLM families are
    /// left out, so plain HTTP services do not show empty LLM series).
    pub(crate) fn is_active(&self) -> bool {
        self.succeeded + self.failed + self.chunk_gap.0 > 0
    }
}

/// The counters of one destination: a cluster's endpoints that share a label set.
///
/// Made once per label set by [`crate::Telemetry::destination`] when a route table is
/// built and held by the table; the proxy calls the `record_*` methods on every request.
/// Recording takes no lock shared across requests and allocates nothing.
///
/// Memory: 64 slots of 320 bytes plus two overflow slots, the LLM meters and the label
/// text: about 22 KiB per series (see [`DestinationSeries::BYTES`]).
pub struct DestinationSeries {
    labels: DestinationLabels,
    /// The Istio labels before `request_protocol`, escaped.
    istio_labels: String,
    /// `,experiment_id="…",variant="…"` when an experiment routed, else empty.
    experiment_labels: String,
    /// The LLM families' labels, escaped (experiment labels included).
    llm_labels: String,
    slots: Box<[Slot]>,
    /// Overflow, by protocol.
    overflow: [Slot; 2],
    llm: LlmMeters,
    cell: Option<Arc<VariantCell>>,
}

impl DestinationSeries {
    /// Bytes the counters of one series take (labels excluded).
    pub const BYTES: usize = std::mem::size_of::<Self>() + SLOTS * std::mem::size_of::<Slot>();

    pub(crate) fn new(
        labels: DestinationLabels,
        source_namespace: &str,
        cell: Option<Arc<VariantCell>>,
    ) -> Self {
        let mut istio_labels = String::new();
        push_label(&mut istio_labels, "reporter", "source");
        push_label(&mut istio_labels, "source_workload", "abgate");
        push_label(
            &mut istio_labels,
            "source_workload_namespace",
            source_namespace,
        );
        push_label(
            &mut istio_labels,
            "destination_service",
            &labels.destination_service,
        );
        push_label(
            &mut istio_labels,
            "destination_service_name",
            &labels.destination_service_name,
        );
        push_label(
            &mut istio_labels,
            "destination_service_namespace",
            &labels.destination_service_namespace,
        );
        push_label(
            &mut istio_labels,
            "destination_version",
            &labels.destination_version,
        );
        push_label(
            &mut istio_labels,
            "destination_workload",
            &labels.destination_workload,
        );
        push_label(
            &mut istio_labels,
            "destination_workload_namespace",
            &labels.destination_service_namespace,
        );
        push_label(
            &mut istio_labels,
            "destination_subset",
            &labels.destination_subset,
        );

        // Leading comma: these always follow other labels.
        let mut experiment_labels = String::new();
        if labels.has_experiment() {
            experiment_labels.push(',');
            let mut tail = String::new();
            push_label(&mut tail, "experiment_id", &labels.experiment_id);
            push_label(&mut tail, "variant", &labels.variant);
            experiment_labels.push_str(&tail);
        }

        let mut llm_labels = String::new();
        push_label(&mut llm_labels, "model_name", &labels.model_name);
        push_label(&mut llm_labels, "version", &labels.destination_version);
        push_label(
            &mut llm_labels,
            "destination_service_name",
            &labels.destination_service_name,
        );
        push_label(
            &mut llm_labels,
            "destination_subset",
            &labels.destination_subset,
        );
        llm_labels.push_str(&experiment_labels);

        Self {
            labels,
            istio_labels,
            experiment_labels,
            llm_labels,
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            overflow: [Slot::new(), Slot::new()],
            llm: LlmMeters {
                succeeded: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                prompt_tokens: AtomicU64::new(0),
                completion_tokens: AtomicU64::new(0),
                ttft: Timer::new(),
                tpot: Timer::new(),
                e2e: Timer::new(),
                chunk_gap: Timer::new(),
            },
            cell,
        }
    }

    /// The labels this series was made for.
    pub fn labels(&self) -> &DestinationLabels {
        &self.labels
    }

    /// The experiment variant's cell this series also feeds, when an experiment routed.
    pub fn cell(&self) -> Option<&Arc<VariantCell>> {
        self.cell.as_ref()
    }

    /// One finished request (after the response ended or failed).
    #[inline]
    pub fn record_request(&self, r: &RequestRecord) {
        self.slot(r.code, r.flags, r.protocol).record(r);
        if let Some(cell) = &self.cell {
            cell.record_request(r);
        }
    }

    /// LLM figures for one finished response that carried OpenAI usage or a stream.
    ///
    /// Token counters and `llm_requests_total` count every response; the e2e and TPOT
    /// histograms only successful ones; TTFT any response that produced a first token.
    #[inline]
    pub fn record_llm(&self, s: &LlmRecord) {
        let llm = &self.llm;
        if s.success {
            llm.succeeded.fetch_add(1, Relaxed);
        } else {
            llm.failed.fetch_add(1, Relaxed);
        }
        llm.prompt_tokens.fetch_add(s.prompt_tokens, Relaxed);
        llm.completion_tokens
            .fetch_add(s.completion_tokens, Relaxed);
        if let Some(ttft) = s.ttft {
            llm.ttft.record(&TTFT_S, ttft);
        }
        if s.success {
            llm.e2e.record(&E2E_S, s.e2e);
            if let Some(tpot) = s.time_per_output_token() {
                llm.tpot.record(&TOKEN_GAP_S, tpot);
            }
        }
        if let Some(cell) = &self.cell {
            cell.record_llm(s);
        }
    }

    /// One gap between consecutive streamed content chunks.
    #[inline]
    pub fn record_chunk_gap(&self, gap: Duration) {
        self.llm.chunk_gap.record(&TOKEN_GAP_S, gap);
    }

    /// The slot of this (code, flags, protocol): found, or claimed by one compare-exchange
    /// on a free slot, probing linearly; the protocol's overflow slot when all are taken.
    #[inline]
    fn slot(&self, code: u16, flags: ResponseFlags, protocol: RequestProtocol) -> &Slot {
        let key = pack(code, flags, protocol);
        let mut i = home(key);
        for _ in 0..SLOTS {
            let slot = &self.slots[i];
            let seen = slot.key.load(Relaxed);
            if seen == key {
                return slot;
            }
            if seen == 0 {
                match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => return slot,
                    Err(now) if now == key => return slot,
                    Err(_) => {}
                }
            }
            i = (i + 1) % SLOTS;
        }
        &self.overflow[protocol.index()]
    }

    /// Copies of the claimed slots, sorted by (code, flags, protocol), then the overflow
    /// slots that counted anything.
    pub(crate) fn slot_snapshots(&self) -> Vec<SlotSnapshot> {
        let mut out: Vec<SlotSnapshot> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let key = slot.key.load(Relaxed);
                (key != 0).then(|| {
                    let (code, flags, protocol) = unpack(key);
                    slot.snapshot(Some(code), flags, protocol)
                })
            })
            .collect();
        out.sort_by_key(|s| (s.code, s.flags, s.protocol));
        for (slot, protocol) in self
            .overflow
            .iter()
            .zip([RequestProtocol::Http, RequestProtocol::Grpc])
        {
            let snap = slot.snapshot(None, ResponseFlags::NONE, protocol);
            if snap.count > 0 {
                out.push(snap);
            }
        }
        out
    }

    pub(crate) fn llm_snapshot(&self) -> LlmSnapshot {
        let llm = &self.llm;
        LlmSnapshot {
            succeeded: llm.succeeded.load(Relaxed),
            failed: llm.failed.load(Relaxed),
            prompt_tokens: llm.prompt_tokens.load(Relaxed),
            completion_tokens: llm.completion_tokens.load(Relaxed),
            ttft: llm.ttft.snapshot(),
            tpot: llm.tpot.snapshot(),
            e2e: llm.e2e.snapshot(),
            chunk_gap: llm.chunk_gap.snapshot(),
        }
    }

    pub(crate) fn istio_labels(&self) -> &str {
        &self.istio_labels
    }

    pub(crate) fn experiment_labels(&self) -> &str {
        &self.experiment_labels
    }

    pub(crate) fn llm_labels(&self) -> &str {
        &self.llm_labels
    }
}

impl std::fmt::Debug for DestinationSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationSeries")
            .field("labels", self.labels())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn series() -> DestinationSeries {
        DestinationSeries::new(DestinationLabels::new("svc", "ns"), "ns", None)
    }

    fn request(code: u16, flags: ResponseFlags, protocol: RequestProtocol) -> RequestRecord {
        RequestRecord {
            code,
            flags,
            protocol,
            duration: Duration::from_millis(3),
            request_bytes: 10,
            response_bytes: 100,
            at: Instant::now(),
        }
    }

    #[test]
    fn keys_pack_and_unpack() {
        for (code, flags, protocol) in [
            (200, ResponseFlags::NONE, RequestProtocol::Http),
            (
                0,
                ResponseFlags::DC | ResponseFlags::UDO,
                RequestProtocol::Grpc,
            ),
            (
                u16::MAX,
                ResponseFlags::from_bits_truncate(u32::MAX),
                RequestProtocol::Grpc,
            ),
        ] {
            let key = pack(code, flags, protocol);
            assert_ne!(key, 0);
            assert_eq!(unpack(key), (code, flags, protocol));
        }
    }

    #[test]
    fn same_key_reuses_its_slot() {
        let s = series();
        for _ in 0..3 {
            s.record_request(&request(200, ResponseFlags::NONE, RequestProtocol::Http));
        }
        s.record_request(&request(200, ResponseFlags::NONE, RequestProtocol::Grpc));
        let snaps = s.slot_snapshots();
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].count, 3);
        assert_eq!(snaps[0].protocol, RequestProtocol::Http);
        assert_eq!(snaps[1].count, 1);
    }

    #[test]
    fn slot_table_fills_then_overflows_into_other() {
        let s = series();
        // 64 distinct codes take every slot; the rest go to the overflow slot.
        for code in 100..(100 + SLOTS as u16 + 10) {
            s.record_request(&request(code, ResponseFlags::NONE, RequestProtocol::Http));
        }
        s.record_request(&request(999, ResponseFlags::UF, RequestProtocol::Grpc));
        // A key that has a slot keeps landing in it.
        s.record_request(&request(100, ResponseFlags::NONE, RequestProtocol::Http));
        let snaps = s.slot_snapshots();
        assert_eq!(snaps.len(), SLOTS + 2);
        let named: u64 = snaps
            .iter()
            .filter(|x| x.code.is_some())
            .map(|x| x.count)
            .sum();
        assert_eq!(named, SLOTS as u64 + 1);
        let http_other = &snaps[SLOTS];
        assert_eq!(
            (http_other.code, http_other.protocol),
            (None, RequestProtocol::Http)
        );
        assert_eq!(http_other.count, 10);
        let grpc_other = &snaps[SLOTS + 1];
        assert_eq!(
            (grpc_other.code, grpc_other.protocol),
            (None, RequestProtocol::Grpc)
        );
        assert_eq!(grpc_other.count, 1);
        assert_eq!(snaps[0].code, Some(100));
        assert_eq!(snaps[0].count, 2);
    }

    #[test]
    fn a_series_stays_near_its_stated_size() {
        // 320 bytes a slot; the whole series under 24 KiB.
        assert_eq!(std::mem::size_of::<Slot>(), 320);
        const { assert!(DestinationSeries::BYTES < 24 * 1024) };
    }
}
