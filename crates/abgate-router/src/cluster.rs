//! Clusters: a host's subset (or the whole host), its endpoints and how traffic is spread
//! over them; the cluster's circuit breakers (connection pool limits) and each endpoint's
//! outlier-detection state.
//!
//! Everything that lives longer than one route table is atomics behind an `Arc`, found
//! again by the next table: endpoints by address and labels, circuit-breaker counters by
//! cluster (`host`, `subset`, `port`). The hot path never takes a lock: admission is a
//! compare-and-swap, outlier bookkeeping a few relaxed adds. A lock is taken only to queue
//! a request for a connection (HTTP/1.1 `maxConnections` reached) and to eject an endpoint.
//!
//! Time is passed in as milliseconds of [`now_ms`], so the logic is testable without
//! sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use abgate_config::model::{ConnectionPool, OutlierDetection, TrafficPolicy};

use crate::balancer::Balancer;
use crate::load::{LoadReport, Reading};

/// Milliseconds on a process-wide monotonic clock; never 0 (0 means "never" below).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// The instant that [`now_ms`] value `ms` stands for.
pub fn instant_of(ms: u64) -> Instant {
    let now = now_ms();
    let current = Instant::now();
    if ms >= now {
        current + Duration::from_millis(ms - now)
    } else {
        current
            .checked_sub(Duration::from_millis(now - ms))
            .unwrap_or(current)
    }
}

/// Envoy's default `max_ejection_time` (300 s), or the base ejection time when larger.
const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;

/// One upstream address and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub authority: String,
    /// [`Endpoint::authority`] parsed once, for the upstream request's URI (`None` when it
    /// is not a valid URI authority).
    pub uri_authority: Option<http::uri::Authority>,
    /// The endpoint's labels (`version` names it in metrics).
    pub labels: BTreeMap<String, String>,
    /// The server's own load report, for the LLM-aware balancer.
    pub load: LoadReport,
    active: AtomicU32,
    health: Health,
    /// It is one of the gateway's own listeners: a request sent there would come back.
    loops_back: AtomicBool,
}

/// Outlier-detection state of an endpoint, as Envoy's `DetectorHostMonitorImpl` keeps it.
#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// [`now_ms`] until which the endpoint is out of rotation; 0 when it is in rotation
    /// and that has been acknowledged (see [`Endpoint::settle`]).
    ejected_until: AtomicU64,
    /// When it was last ejected.
    ejected_at: AtomicU64,
    /// When it last came back; 0 when it never was ejected.
    returned_at: AtomicU64,
    /// Envoy's `eject_time_backoff`: the multiplier of the base ejection time.
    backoff: AtomicU32,
    /// Ejections since the process started.
    ejections: AtomicU64,
}

/// An endpoint's state as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    /// Out of rotation until this [`now_ms`] (`None`: in rotation).
    pub ejected_until: Option<u64>,
    /// 5xx answers (or failures counted as such) in a row.
    pub consecutive_5xx: u32,
    /// 502/503/504 answers (or connect failures, resets, timeouts) in a row.
    pub consecutive_gateway_errors: u32,
    /// Times ejected since the process started.
    pub ejections: u64,
    /// The multiplier of the base ejection time its next ejection would start from.
    pub ejection_backoff: u32,
    /// Requests in flight to it.
    pub active: u32,
    /// The latest load report read from it, however old.
    pub load: Option<Reading>,
}

impl Endpoint {
    /// A new endpoint with no request in flight.
    pub fn new(authority: String, labels: BTreeMap<String, String>) -> Self {
        Self {
            uri_authority: authority.parse().ok(),
            authority,
            labels,
            load: LoadReport::default(),
            active: AtomicU32::new(0),
            health: Health::default(),
            loops_back: AtomicBool::new(false),
        }
    }

    /// Whether this endpoint is one of the gateway's own listeners (set at each table
    /// build, since an endpoint outlives the table that made it).
    pub fn loops_back(&self) -> bool {
        self.loops_back.load(Ordering::Relaxed)
    }

    pub(crate) fn set_loops_back(&self, loops: bool) {
        self.loops_back.store(loops, Ordering::Relaxed);
    }

    /// Requests in flight to this endpoint.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether outlier detection has this endpoint out of rotation at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.health.ejected_until.load(Ordering::Relaxed) > now
    }

    /// The endpoint's state at `now`.
    pub fn state(&self, now: u64) -> EndpointState {
        let until = self.health.ejected_until.load(Ordering::Relaxed);
        EndpointState {
            ejected_until: (until > now).then_some(until),
            consecutive_5xx: self.health.consecutive_5xx.load(Ordering::Relaxed),
            consecutive_gateway_errors: self.health.consecutive_gateway.load(Ordering::Relaxed),
            ejections: self.health.ejections.load(Ordering::Relaxed),
            ejection_backoff: self.health.backoff.load(Ordering::Relaxed),
            active: self.active(),
            load: self.load.fresh(now, u64::MAX),
        }
    }

    /// Acknowledges a return to rotation that happened at the ejection's end: Envoy resets
    /// the consecutive-error counters when it brings a host back.
    fn settle(&self, now: u64) {
        let h = &self.health;
        let until = h.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && until <= now
            && h.ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            h.returned_at.store(until, Ordering::Relaxed);
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_gateway.store(0, Ordering::Relaxed);
        }
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a cluster has nowhere to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No ServiceEntry defines the host.
    UnknownHost,
    /// No DestinationRule defines the subset (Envoy: no cluster, `NC`).
    NoSuchSubset,
    /// The subset exists but selects no endpoint (`UH`).
    NoEndpoints,
}

/// What an upstream attempt came to, for outlier detection. Envoy (with
/// `split_external_local_origin_errors` off, as Istio leaves it) maps local failures to
/// HTTP codes: a connect failure or reset counts as 503, a timeout as 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this status.
    Status(u16),
    /// Connecting failed.
    ConnectFailure,
    /// The exchange broke after connecting (reset, protocol error).
    Reset,
    /// No response within the per-try or route timeout.
    Timeout,
}

impl Outcome {
    fn code(self) -> u16 {
        match self {
            Outcome::Status(code) => code,
            Outcome::ConnectFailure | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        }
    }
}

/// Why outlier detection ejected an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionCause {
    /// `consecutive5xxErrors`.
    Consecutive5xx,
    /// `consecutiveGatewayErrors`.
    ConsecutiveGatewayErrors,
}

/// An ejection that just took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    /// The endpoint's index in the cluster.
    pub index: usize,
    /// Why.
    pub cause: EjectionCause,
    /// Out of rotation until this [`now_ms`] (the first interval sweep after the
    /// ejection time has passed, as Envoy returns hosts).
    pub until: u64,
    /// The multiplier of the base ejection time used.
    pub backoff: u32,
}

/// Envoy's default cap on retries in flight per cluster, which Istio lifts; abgate keeps it
/// for retries no configuration asked for, so that a failing upstream cannot multiply
/// the load on itself by the default retry policy.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// A cluster's circuit-breaker limits (Envoy's `circuit_breakers.thresholds`), from the
/// DestinationRule's `connectionPool` the way Istio translates it: an unset or zero
/// field is unlimited (Istio sets every threshold to 2³²−1 unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// `http.http2MaxRequests`: requests in flight to the cluster.
    pub max_requests: u32,
    /// `tcp.maxConnections`: HTTP/1.1 connections busy with a request.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending: u32,
    /// `http.maxRetries`: retries outstanding across the cluster.
    pub max_retries: u32,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_requests: u32::MAX,
            max_connections: u32::MAX,
            max_pending: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

impl PoolLimits {
    /// The limits a `connectionPool` section sets.
    pub fn from_pool(pool: Option<&ConnectionPool>) -> Self {
        let limit = |v: Option<u32>| v.filter(|n| *n > 0).unwrap_or(u32::MAX);
        match pool {
            None => Self::default(),
            Some(p) => Self {
                max_requests: limit(p.http2_max_requests),
                max_connections: limit(p.max_connections),
                max_pending: limit(p.http1_max_pending_requests),
                max_retries: limit(p.max_retries),
            },
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `http2MaxRequests`: too many requests in flight.
    MaxRequests,
    /// `http1MaxPendingRequests`: every connection busy and the queue full.
    MaxPending,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overflow::MaxRequests => "http2MaxRequests (requests in flight) reached",
            Overflow::MaxPending => {
                "maxConnections reached and http1MaxPendingRequests (queued requests) full"
            }
        })
    }
}

/// A cluster's live counters, shared by every route table that has the cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    active: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    overflows: AtomicU64,
    queue: Mutex<Queue>,
    /// Serializes ejections, so `maxEjectionPercent` holds under concurrency.
    eject: Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    next_id: u64,
    waiting: VecDeque<(u64, Option<Waker>)>,
}

/// The cluster's counters as the admin listing shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests holding a slot (in flight upstream).
    pub active: u32,
    /// Requests queued for a connection.
    pub pending: u32,
    /// Retries outstanding.
    pub retries: u32,
    /// Requests refused (`UO`) since the process started.
    pub overflows: u64,
}

impl ClusterState {
    fn try_acquire(&self, cap: u32) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < cap).then_some(a + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        if self.pending.load(Ordering::Acquire) > 0 {
            let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, Some(waker))) = queue.waiting.front() {
                waker.wake_by_ref();
            }
        }
    }

    /// The counters now.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            active: self.active.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
        }
    }
}

/// A request's place in the cluster's limits (`http2MaxRequests`, and for HTTP/1.1 one of
/// `maxConnections`); dropping it frees the place for the next request or queued one.
#[derive(Debug)]
pub struct Slot(Arc<ClusterState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// An outstanding retry (`maxRetries`); dropping it ends the count.
#[derive(Debug)]
pub struct RetryToken(Arc<ClusterState>);

impl Drop for RetryToken {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer of [`Cluster::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Go ahead.
    Now(Slot),
    /// Every connection is busy: wait in the queue (FIFO) for one.
    Queued(Waiter),
    /// Refused at once (`503 UO`).
    Overflow(Overflow),
}

/// A request queued for a connection; resolves to its [`Slot`]. Dropping it (a timeout,
/// the client leaving) leaves the queue.
#[derive(Debug)]
pub struct Waiter {
    state: Arc<ClusterState>,
    id: u64,
    cap: u32,
    done: bool,
}

impl Future for Waiter {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        let this = &mut *self;
        let state = Arc::clone(&this.state);
        let mut queue = state.queue.lock().unwrap_or_else(|e| e.into_inner());
        let front = queue.waiting.front().is_some_and(|(id, _)| *id == this.id);
        if front && state.try_acquire(this.cap) {
            queue.waiting.pop_front();
            state.pending.fetch_sub(1, Ordering::AcqRel);
            this.done = true;
            // More than one place may have freed: pass the turn on.
            if state.active.load(Ordering::Acquire) < this.cap {
                if let Some((_, Some(next))) = queue.waiting.front() {
                    next.wake_by_ref();
                }
            }
            return Poll::Ready(Slot(Arc::clone(&state)));
        }
        if let Some(entry) = queue.waiting.iter_mut().find(|(id, _)| *id == this.id) {
            match &entry.1 {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => entry.1 = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.state.queue.lock().unwrap_or_else(|e| e.into_inner());
        let was_front = queue.waiting.front().is_some_and(|(id, _)| *id == self.id);
        queue.waiting.retain(|(id, _)| *id != self.id);
        self.state.pending.fetch_sub(1, Ordering::AcqRel);
        if was_front && self.state.active.load(Ordering::Acquire) < self.cap {
            if let Some((_, Some(next))) = queue.waiting.front() {
                next.wake_by_ref();
            }
        }
    }
}

/// A destination cluster: host, subset, port, endpoints and policy.
#[derive(Debug)]
pub struct Cluster {
    /// Fully qualified host.
    pub host: String,
    /// Subset name.
    pub subset: Option<String>,
    /// Destination port, when the route names one.
    pub port: Option<u16>,
    /// The endpoints traffic may go to.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Why `endpoints` is empty, if it is.
    pub unavailable: Option<Unavailable>,
    /// The effective DestinationRule policy (subset sections over the host's).
    pub policy: TrafficPolicy,
    /// Picks an endpoint.
    pub balancer: Balancer,
    /// The circuit-breaker limits from `policy.connection_pool`.
    pub limits: PoolLimits,
    /// Live counters, kept across rebuilds.
    pub state: Arc<ClusterState>,
}

impl Cluster {
    /// A cluster with fresh counters and the limits its policy sets.
    pub fn new(
        host: String,
        subset: Option<String>,
        port: Option<u16>,
        endpoints: Vec<Arc<Endpoint>>,
        unavailable: Option<Unavailable>,
        policy: TrafficPolicy,
    ) -> Self {
        let balancer = Balancer::new(policy.load_balancer.as_ref(), &endpoints);
        let limits = PoolLimits::from_pool(policy.connection_pool.as_ref());
        Self {
            host,
            subset,
            port,
            endpoints,
            unavailable,
            policy,
            balancer,
            limits,
            state: Arc::default(),
        }
    }

    /// `host` or `host/subset`, as in logs and error bodies.
    pub fn name(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}/{s}", self.host),
            None => self.host.clone(),
        }
    }

    /// The key under which the cluster's counters survive rebuilds.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.host,
            self.subset.as_deref().unwrap_or(""),
            self.port.map(|p| p.to_string()).unwrap_or_default()
        )
    }

    /// Picks an endpoint (the cluster must have one). With outlier detection, ejected
    /// endpoints are skipped unless too few are healthy: below `minHealthPercent` (Envoy's
    /// panic threshold), or none at all, every endpoint is used.
    pub fn pick(&self, hash: Option<u64>, random: &mut dyn FnMut() -> u64, now: u64) -> usize {
        let n = self.endpoints.len();
        if n > 1 {
            if let Some(od) = &self.policy.outlier_detection {
                let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
                let healthy = n - ejected;
                let panic = healthy == 0 || healthy * 100 < od.min_health_percent as usize * n;
                if ejected > 0 && !panic {
                    let among: Vec<usize> = (0..n)
                        .filter(|i| !self.endpoints[*i].is_ejected(now))
                        .collect();
                    return self.balancer.pick_among(
                        &self.endpoints,
                        Some(&among),
                        hash,
                        random,
                        now,
                    );
                }
            }
        }
        self.balancer.pick(&self.endpoints, hash, random, now)
    }

    /// Asks for a place in the cluster's limits for one upstream attempt. `http1`: the
    /// attempt goes over HTTP/1.1, where each request in flight holds a connection, so
    /// `maxConnections` applies too (a request beyond it queues, up to
    /// `http1MaxPendingRequests`).
    pub fn admit(&self, http1: bool) -> Admission {
        let limits = &self.limits;
        let state = &self.state;
        if state.active.load(Ordering::Acquire) >= limits.max_requests {
            return self.overflow(Overflow::MaxRequests);
        }
        let cap = if http1 {
            limits.max_requests.min(limits.max_connections)
        } else {
            limits.max_requests
        };
        if cap == limits.max_requests {
            // No connection limit in play: `http2MaxRequests` refuses, it never queues.
            return match state.try_acquire(cap) {
                true => Admission::Now(Slot(Arc::clone(state))),
                false => self.overflow(Overflow::MaxRequests),
            };
        }
        if state.pending.load(Ordering::Acquire) == 0 && state.try_acquire(cap) {
            return Admission::Now(Slot(Arc::clone(state)));
        }
        let queued = state
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < limits.max_pending).then_some(p + 1)
            })
            .is_ok();
        if !queued {
            return self.overflow(Overflow::MaxPending);
        }
        let mut queue = state.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.next_id += 1;
        let id = queue.next_id;
        queue.waiting.push_back((id, None));
        Admission::Queued(Waiter {
            state: Arc::clone(state),
            id,
            cap,
            done: false,
        })
    }

    /// A place taken without waiting, or `None` when the cluster is at a limit (for
    /// mirrored copies, which are dropped rather than queued). Counts the overflow.
    pub fn try_admit(&self) -> Option<Slot> {
        if self.state.pending.load(Ordering::Acquire) == 0
            && self
                .state
                .try_acquire(self.limits.max_requests.min(self.limits.max_connections))
        {
            return Some(Slot(Arc::clone(&self.state)));
        }
        self.state.overflows.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn overflow(&self, why: Overflow) -> Admission {
        self.state.overflows.fetch_add(1, Ordering::Relaxed);
        Admission::Overflow(why)
    }

    /// A retry may go ahead while fewer than `maxRetries` are outstanding across the
    /// cluster, or `default_limit` when the cluster sets none; the token counts it until
    /// dropped (Envoy holds it from the retry's scheduling until its outcome is known).
    /// `None`: no retry (Envoy flags `UO`).
    pub fn try_retry(&self, default_limit: u32) -> Option<RetryToken> {
        let max = match self.limits.max_retries {
            u32::MAX => default_limit,
            set => set,
        };
        let ok = self
            .state
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r < max).then_some(r + 1)
            })
            .is_ok();
        if ok {
            Some(RetryToken(Arc::clone(&self.state)))
        } else {
            self.state.overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Records an attempt's outcome at endpoint `index` for outlier detection (nothing
    /// without an `outlierDetection` policy). Follows Envoy's detector: a 5xx raises the
    /// 5xx count, a 502/503/504 the gateway count (another 5xx clears it), anything else
    /// clears both; reaching a threshold exactly ejects the endpoint unless that would
    /// take more than `maxEjectionPercent` of the cluster out (Envoy ≥ 1.27:
    /// `(ejected + 1) / endpoints ≤ maxEjectionPercent`, so with the default 10% a
    /// cluster of fewer than 10 endpoints never ejects). Returns the ejection, if one
    /// took effect.
    pub fn report(&self, index: usize, outcome: Outcome, now: u64) -> Option<Ejection> {
        let od = self.policy.outlier_detection.as_ref()?;
        let endpoint = self.endpoints.get(index)?;
        endpoint.settle(now);
        let h = &endpoint.health;
        let code = outcome.code();
        if !(500..600).contains(&code) {
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let mut ejection = None;
        if matches!(code, 502..=504) {
            let n = h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            if od.consecutive_gateway_errors > 0 && n == od.consecutive_gateway_errors {
                ejection =
                    self.consecutive_error(index, EjectionCause::ConsecutiveGatewayErrors, now);
            }
        } else {
            h.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        let n = h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        if od.consecutive_5xx_errors > 0 && n == od.consecutive_5xx_errors {
            ejection =
                ejection.or(self.consecutive_error(index, EjectionCause::Consecutive5xx, now));
        }
        ejection
    }

    /// Envoy's `onConsecutiveErrorWorker`: nothing when already ejected; else try to
    /// eject, and reset the counter that triggered, ejected or not.
    fn consecutive_error(&self, index: usize, cause: EjectionCause, now: u64) -> Option<Ejection> {
        let od = self.policy.outlier_detection.as_ref()?;
        let endpoint = &self.endpoints[index];
        let _serial = self.state.eject.lock().unwrap_or_else(|e| e.into_inner());
        if endpoint.is_ejected(now) {
            return None;
        }
        let ejection = self.eject(index, cause, od, now);
        let counter = match cause {
            EjectionCause::Consecutive5xx => &endpoint.health.consecutive_5xx,
            EjectionCause::ConsecutiveGatewayErrors => &endpoint.health.consecutive_gateway,
        };
        counter.store(0, Ordering::Relaxed);
        ejection
    }

    /// Envoy's `ejectHost`, with unejection done lazily: the endpoint is out until the
    /// first interval sweep at or after `min(base × backoff, max)` has passed.
    fn eject(
        &self,
        index: usize,
        cause: EjectionCause,
        od: &OutlierDetection,
        now: u64,
    ) -> Option<Ejection> {
        let n = self.endpoints.len() as u64;
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count() as u64;
        // `(ejected + 1) / n × 100 ≤ max` in integers.
        if (ejected + 1) * 100 > u64::from(od.max_ejection_percent.min(100)) * n {
            return None;
        }
        let endpoint = &self.endpoints[index];
        endpoint.settle(now);
        let h = &endpoint.health;
        let interval = (od.interval.as_millis() as u64).max(1);
        let base = (od.base_ejection_time.as_millis() as u64).max(1);
        let max = DEFAULT_MAX_EJECTION_MS.max(base);
        // Envoy lowers the backoff by one at each interval sweep the host spends in
        // rotation, from the first sweep a full interval after its return.
        let mut backoff = u64::from(h.backoff.load(Ordering::Relaxed));
        let returned = h.returned_at.load(Ordering::Relaxed);
        if returned != 0 {
            backoff = backoff.saturating_sub(now.saturating_sub(returned) / interval);
        }
        if backoff * base < max + base {
            backoff += 1;
        }
        let duration = (base * backoff).min(max);
        let until = (now + duration).div_ceil(interval) * interval;
        h.backoff.store(backoff as u32, Ordering::Relaxed);
        h.ejected_at.store(now, Ordering::Relaxed);
        h.ejected_until.store(until, Ordering::Relaxed);
        h.ejections.fetch_add(1, Ordering::Relaxed);
        Some(Ejection {
            index,
            cause,
            until,
            backoff: backoff as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    fn cluster(n: usize, od: Option<OutlierDetection>, pool: Option<ConnectionPool>) -> Cluster {
        let endpoints = (0..n)
            .map(|i| Arc::new(Endpoint::new(format!("10.0.0.{i}:80"), BTreeMap::new())))
            .collect();
        Cluster::new(
            "h".into(),
            None,
            None,
            endpoints,
            None,
            TrafficPolicy {
                load_balancer: Some(abgate_config::model::LoadBalancer::RoundRobin),
                connection_pool: pool,
                outlier_detection: od,
            },
        )
    }

    fn od(gateway: u32, max_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: gateway,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: max_percent,
            min_health_percent: 0,
        }
    }

    fn rnd() -> impl FnMut() -> u64 {
        let mut s = 7u64;
        move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            s >> 11
        }
    }

    #[test]
    fn consecutive_gateway_errors_eject_and_the_endpoint_returns_at_the_sweep() {
        let c = cluster(3, Some(od(2, 100)), None);
        let t = 10_500;
        assert_eq!(c.report(1, Outcome::ConnectFailure, t), None);
        let e = c.report(1, Outcome::Status(502), t).expect("ejected");
        assert_eq!(e.cause, EjectionCause::ConsecutiveGatewayErrors);
        // 30 s from 10.5 s, rounded up to the 1 s sweep grid.
        assert_eq!((e.until, e.backoff), (41_000, 1));
        assert!(c.endpoints[1].is_ejected(t));
        let mut r = rnd();
        assert!((0..30).all(|_| c.pick(None, &mut r, t + 1) != 1));
        assert!(!c.endpoints[1].is_ejected(41_000));
        assert!((0..30).any(|_| c.pick(None, &mut r, 41_000) == 1));
    }

    #[test]
    fn a_success_or_a_non_gateway_5xx_breaks_the_run() {
        let c = cluster(3, Some(od(3, 100)), None);
        for outcome in [
            Outcome::Status(503),
            Outcome::Status(503),
            Outcome::Status(500),
            Outcome::Status(503),
            Outcome::Status(200),
            Outcome::Timeout,
            Outcome::Reset,
        ] {
            assert_eq!(c.report(0, outcome, 1_000), None);
        }
        // The 5xx run (503, 503, 500, 503) reached 4 < 5 and was cleared by the 200.
        assert_eq!(c.endpoints[0].state(1_000).consecutive_5xx, 2);
        let e = c
            .report(0, Outcome::Status(504), 1_000)
            .expect("third gateway error");
        assert_eq!(e.cause, EjectionCause::ConsecutiveGatewayErrors);
    }

    #[test]
    fn five_consecutive_5xx_eject_by_default() {
        let c = cluster(2, Some(od(0, 100)), None);
        for _ in 0..4 {
            assert_eq!(c.report(0, Outcome::Status(500), 5), None);
        }
        let e = c.report(0, Outcome::Status(500), 5).expect("fifth");
        assert_eq!(e.cause, EjectionCause::Consecutive5xx);
    }

    #[test]
    fn max_ejection_percent_is_checked_after_the_ejection_as_envoy_does() {
        // 10% of 3 endpoints: (0 + 1) / 3 = 33% > 10%, so nothing is ever ejected.
        let c = cluster(3, Some(od(1, 10)), None);
        assert_eq!(c.report(0, Outcome::ConnectFailure, 5), None);
        assert!(!c.endpoints[0].is_ejected(5));
        // 50% of 3: one (33%) may go, a second (67%) may not.
        let c = cluster(3, Some(od(1, 50)), None);
        assert!(c.report(0, Outcome::ConnectFailure, 5).is_some());
        assert_eq!(c.report(1, Outcome::ConnectFailure, 5), None);
        // 10% of 10: one.
        let c = cluster(10, Some(od(1, 10)), None);
        assert!(c.report(0, Outcome::ConnectFailure, 5).is_some());
        assert_eq!(c.report(1, Outcome::ConnectFailure, 5), None);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_the_backoff_decays_in_rotation() {
        let c = cluster(2, Some(od(1, 100)), None);
        let first = c.report(0, Outcome::ConnectFailure, 1_000).expect("first");
        assert_eq!((first.until, first.backoff), (31_000, 1));
        // Back at 31 s; failing again at once doubles the time.
        let second = c
            .report(0, Outcome::ConnectFailure, 31_000)
            .expect("second");
        assert_eq!((second.until, second.backoff), (91_000, 2));
        // Back at 91 s, healthy for 100 sweeps: the backoff decays to 0, then 1 again.
        let third = c
            .report(0, Outcome::ConnectFailure, 191_000)
            .expect("third");
        assert_eq!((third.until, third.backoff), (221_000, 1));
        // Capped at max(300 s, base): the backoff stops at 11 (11 × 30 s ≥ 300 s + 30 s).
        let c = cluster(2, Some(od(1, 100)), None);
        let mut t = 0;
        for _ in 0..20 {
            let e = c.report(0, Outcome::ConnectFailure, t).expect("ejected");
            assert!(e.until - t <= 301_000, "{e:?} at {t}");
            assert!(e.backoff <= 11, "{e:?}");
            t = e.until;
        }
        assert_eq!(c.endpoints[0].state(t).ejection_backoff, 11);
    }

    #[test]
    fn below_min_health_percent_every_endpoint_is_used() {
        let mut o = od(1, 100);
        o.min_health_percent = 70;
        let c = cluster(3, Some(o), None);
        assert!(c.report(0, Outcome::ConnectFailure, 5).is_some());
        // 2 of 3 healthy = 66% < 70%: panic, all endpoints.
        let mut r = rnd();
        assert!((0..30).any(|_| c.pick(None, &mut r, 6) == 0));
    }

    #[test]
    fn with_every_endpoint_ejected_all_are_used() {
        let c = cluster(2, Some(od(1, 100)), None);
        assert!(c.report(0, Outcome::ConnectFailure, 5).is_some());
        assert!(c.report(1, Outcome::ConnectFailure, 5).is_some());
        let mut r = rnd();
        let picks: Vec<usize> = (0..4).map(|_| c.pick(None, &mut r, 6)).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn without_outlier_detection_nothing_is_recorded() {
        let c = cluster(2, None, None);
        for _ in 0..10 {
            assert_eq!(c.report(0, Outcome::ConnectFailure, 5), None);
        }
        assert_eq!(c.endpoints[0].state(5).consecutive_5xx, 0);
    }

    fn pool(max_requests: u32, max_connections: u32, pending: u32) -> ConnectionPool {
        ConnectionPool {
            http2_max_requests: Some(max_requests),
            max_connections: Some(max_connections),
            http1_max_pending_requests: Some(pending),
            max_retries: Some(1),
            ..ConnectionPool::default()
        }
    }

    #[test]
    fn max_requests_refuses_at_once() {
        let c = cluster(1, None, Some(pool(2, 0, 0)));
        let a = c.admit(false);
        let b = c.admit(true);
        assert!(matches!(a, Admission::Now(_)) && matches!(b, Admission::Now(_)));
        assert!(matches!(
            c.admit(true),
            Admission::Overflow(Overflow::MaxRequests)
        ));
        drop(a);
        assert!(matches!(c.admit(true), Admission::Now(_)));
        assert_eq!(c.state.stats().overflows, 1);
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(w: &mut Waiter, waker: &Waker) -> Option<Slot> {
        match Pin::new(w).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(s) => Some(s),
            Poll::Pending => None,
        }
    }

    #[test]
    fn http1_requests_beyond_max_connections_queue_in_order_up_to_the_pending_limit() {
        let c = cluster(1, None, Some(pool(0, 1, 2)));
        let Admission::Now(first) = c.admit(true) else {
            panic!("first")
        };
        // HTTP/2 attempts are not bound by connections.
        assert!(matches!(c.admit(false), Admission::Now(_)));
        let Admission::Queued(mut a) = c.admit(true) else {
            panic!("queued a")
        };
        let Admission::Queued(mut b) = c.admit(true) else {
            panic!("queued b")
        };
        assert!(matches!(
            c.admit(true),
            Admission::Overflow(Overflow::MaxPending)
        ));
        let counter = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        assert!(poll(&mut b, &waker).is_none());
        assert!(poll(&mut a, &waker).is_none());
        assert_eq!(c.state.stats().pending, 2);
        drop(first);
        assert!(counter.0.load(Ordering::SeqCst) >= 1, "the front is woken");
        // b is not first in line.
        assert!(poll(&mut b, &waker).is_none());
        let slot_a = poll(&mut a, &waker).expect("a gets the connection");
        assert_eq!(c.state.stats().pending, 1);
        drop(slot_a);
        let slot_b = poll(&mut b, &waker).expect("then b");
        drop(slot_b);
        assert_eq!(
            c.state.stats(),
            PoolStats {
                active: 0,
                pending: 0,
                retries: 0,
                overflows: 1
            }
        );
    }

    #[test]
    fn a_waiter_leaving_the_queue_passes_its_turn_on() {
        let c = cluster(1, None, Some(pool(0, 1, 5)));
        let Admission::Now(first) = c.admit(true) else {
            panic!("first")
        };
        let Admission::Queued(mut a) = c.admit(true) else {
            panic!("a")
        };
        let Admission::Queued(mut b) = c.admit(true) else {
            panic!("b")
        };
        let counter = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        assert!(poll(&mut a, &waker).is_none());
        assert!(poll(&mut b, &waker).is_none());
        drop(first);
        let woken = counter.0.load(Ordering::SeqCst);
        drop(a);
        assert!(counter.0.load(Ordering::SeqCst) > woken, "b is woken");
        assert!(poll(&mut b, &waker).is_some());
    }

    #[test]
    fn retries_are_bounded_across_the_cluster() {
        // `maxRetries: 1` holds whatever the route's default.
        let c = cluster(1, None, Some(pool(0, 0, 0)));
        let token = c.try_retry(u32::MAX).expect("one retry");
        assert!(c.try_retry(u32::MAX).is_none());
        drop(token);
        assert!(c.try_retry(DEFAULT_MAX_RETRIES).is_some());
        // Unset: the route's default, Envoy's 3 or unlimited.
        let unset = cluster(1, None, None);
        let tokens: Vec<_> = (0..100)
            .filter_map(|_| unset.try_retry(DEFAULT_MAX_RETRIES))
            .collect();
        assert_eq!(tokens.len(), 3);
        let tokens: Vec<_> = (0..100).filter_map(|_| unset.try_retry(u32::MAX)).collect();
        assert_eq!(tokens.len(), 100);
    }
}
