//! Load balancing inside one cluster (a host's subset): which endpoint gets a request.
//!
//! The policy comes from the DestinationRule (subset sections override the host's). The
//! random draw is the caller's, so tests can seed it; the only shared state is atomics.

use std::sync::atomic::{AtomicUsize, Ordering};

use abgate_config::model::{HashAlgorithm, HashKey, LoadBalancer};

use crate::cluster::Endpoint;
use crate::load::Reading;

/// A cluster's load balancer, ready to pick.
#[derive(Debug)]
pub enum Balancer {
    /// Each endpoint in turn.
    RoundRobin(AtomicUsize),
    /// The less busy of two random endpoints (Istio's default).
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// The endpoint with the least load, counting the gateway's requests in flight to it
    /// and the queue and KV-cache use the server itself reports; least request while
    /// any candidate's report is missing or older than `max_age_ms`.
    LlmAware {
        /// The oldest report still trusted, in ms.
        max_age_ms: u64,
    },
    /// A hash of the request key placed on a ring or a maglev table.
    ConsistentHash {
        /// What to hash.
        key: HashKey,
        /// Endpoint index per slot, looked up by hash.
        table: HashTable,
    },
}

/// A consistent-hash lookup structure.
#[derive(Debug)]
pub enum HashTable {
    /// Sorted `(point, endpoint)` pairs; a key goes to the first point at or after its hash.
    Ring(Vec<(u64, usize)>),
    /// Maglev's permutation-filled table; a key goes to `table[hash % len]`.
    Maglev(Vec<usize>),
}

impl Balancer {
    /// Builds the balancer for `endpoints` under a DestinationRule policy (least request
    /// when none is set, as in Istio).
    pub fn new(policy: Option<&LoadBalancer>, endpoints: &[std::sync::Arc<Endpoint>]) -> Self {
        match policy {
            None | Some(LoadBalancer::LeastRequest) | Some(LoadBalancer::Passthrough) => {
                Balancer::LeastRequest
            }
            Some(LoadBalancer::RoundRobin) => Balancer::RoundRobin(AtomicUsize::new(0)),
            Some(LoadBalancer::Random) => Balancer::Random,
            Some(LoadBalancer::LlmAware(llm)) => Balancer::LlmAware {
                max_age_ms: llm_max_age(llm.interval),
            },
            Some(LoadBalancer::ConsistentHash(ch)) => {
                let names: Vec<&str> = endpoints.iter().map(|e| e.authority.as_str()).collect();
                let table = match ch.algorithm {
                    HashAlgorithm::RingHash { minimum_ring_size } => {
                        HashTable::Ring(ring(&names, minimum_ring_size))
                    }
                    HashAlgorithm::Maglev { table_size } => {
                        HashTable::Maglev(maglev(&names, table_size))
                    }
                };
                Balancer::ConsistentHash {
                    key: ch.key.clone(),
                    table,
                }
            }
        }
    }

    /// The hash key this balancer needs from the request, if any.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Balancer::ConsistentHash { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Picks an endpoint index among `endpoints` (never empty). `hash` is the request
    /// key's hash for consistent hashing (a random pick when the key is absent);
    /// `random` supplies uniform draws; `now` is [`now_ms`](crate::cluster::now_ms).
    pub fn pick(
        &self,
        endpoints: &[std::sync::Arc<Endpoint>],
        hash: Option<u64>,
        random: &mut dyn FnMut() -> u64,
        now: u64,
    ) -> usize {
        self.pick_among(endpoints, None, hash, random, now)
    }

    /// Like [`Balancer::pick`], restricted to the indexes in `among` (ascending, not
    /// empty) when given: the healthy endpoints. Consistent hashing walks on from the
    /// key's place to the next allowed endpoint, which for a ring is exactly the ring
    /// built from the allowed endpoints alone (as Envoy rebuilds it from healthy hosts).
    pub fn pick_among(
        &self,
        endpoints: &[std::sync::Arc<Endpoint>],
        among: Option<&[usize]>,
        hash: Option<u64>,
        random: &mut dyn FnMut() -> u64,
        now: u64,
    ) -> usize {
        let among = among.filter(|a| !a.is_empty());
        let n = among.map_or(endpoints.len(), <[usize]>::len);
        let at = |i: usize| among.map_or(i, |a| a[i]);
        if n <= 1 {
            return at(0);
        }
        match self {
            Balancer::RoundRobin(next) => at(next.fetch_add(1, Ordering::Relaxed) % n),
            Balancer::Random => at((random() % n as u64) as usize),
            Balancer::LeastRequest => least_request(endpoints, n, at, random),
            Balancer::LlmAware { max_age_ms } => {
                // Scanned from a random place so that equal costs share the traffic.
                let start = (random() % n as u64) as usize;
                let mut best: Option<(u64, usize)> = None;
                for k in 0..n {
                    let i = at((start + k) % n);
                    let endpoint = &endpoints[i];
                    let Some(reading) = endpoint.load.fresh(now, *max_age_ms) else {
                        return least_request(endpoints, n, at, random);
                    };
                    let cost = llm_cost(endpoint.active(), &reading);
                    if best.is_none_or(|(lowest, _)| cost < lowest) {
                        best = Some((cost, i));
                    }
                }
                best.map_or_else(|| at(0), |(_, i)| i)
            }
            Balancer::ConsistentHash { table, .. } => {
                let h = hash.unwrap_or_else(&mut *random);
                let last = endpoints.len().saturating_sub(1);
                let allowed =
                    |e: usize| e <= last && among.is_none_or(|a| a.binary_search(&e).is_ok());
                let found = match table {
                    HashTable::Ring(points) => {
                        let i = points.partition_point(|(p, _)| *p < h);
                        points[i..]
                            .iter()
                            .chain(&points[..i])
                            .map(|(_, e)| *e)
                            .find(|e| allowed(*e))
                    }
                    HashTable::Maglev(slots) => {
                        let len = slots.len() as u64;
                        (0..len)
                            .map(|k| slots[(h.wrapping_add(k) % len) as usize])
                            .find(|e| allowed(*e))
                    }
                };
                found.unwrap_or_else(|| at((h % n as u64) as usize))
            }
        }
    }
}

/// The less busy of two distinct random candidates (Envoy's least request with its
/// default choice count); `at` maps a candidate number to an endpoint index.
fn least_request(
    endpoints: &[std::sync::Arc<Endpoint>],
    n: usize,
    at: impl Fn(usize) -> usize,
    random: &mut dyn FnMut() -> u64,
) -> usize {
    let a = (random() % n as u64) as usize;
    let mut b = (random() % (n as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let (a, b) = (at(a), at(b));
    if endpoints[b].active() < endpoints[a].active() {
        b
    } else {
        a
    }
}

/// The LLM-aware cost of sending one more request to an endpoint, in thousandths of a
/// queued request. A model server batches what it runs, so a request it can start at
/// once costs little whatever else runs; what makes it wait is the queue. So: each
/// request in its queue counts one (other clients' too); each request the gateway sent
/// it since the reading counts one as well (the reading cannot show them yet, and
/// counting them keeps every pick between two readings from going to the same place);
/// and KV-cache use counts up to [`KV_CACHE_WEIGHT`] (a full cache means the next
/// request queues), which also orders servers that have no queue by how full they are.
pub fn llm_cost(in_flight: u32, reading: &Reading) -> u64 {
    let since_reading = in_flight.saturating_sub(reading.in_flight);
    (u64::from(reading.waiting) + u64::from(since_reading)) * 1000
        + u64::from(reading.kv_milli.min(1000)) * KV_CACHE_WEIGHT / 1000
}

/// What a full KV cache costs, in thousandths of a queued request.
pub const KV_CACHE_WEIGHT: u64 = 2000;

/// How long a load report stays trusted: four reading intervals, and at least a second,
/// so one slow or lost reading does not switch the balancer to its fallback.
pub fn llm_max_age(interval: std::time::Duration) -> u64 {
    u64::try_from(interval.as_millis().saturating_mul(4))
        .unwrap_or(u64::MAX)
        .max(1000)
}

/// 64-bit FNV-1a with a final avalanche, stable across processes and versions so that
/// replicas hash a key the same way.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn ring(names: &[&str], minimum_size: u64) -> Vec<(u64, usize)> {
    let per_endpoint = (minimum_size.max(1) as usize).div_ceil(names.len().max(1));
    let mut points: Vec<(u64, usize)> = names
        .iter()
        .enumerate()
        .flat_map(|(i, name)| {
            (0..per_endpoint).map(move |r| (hash64(format!("{name}_{r}").as_bytes()), i))
        })
        .collect();
    points.sort_unstable();
    points
}

/// Maglev's table population (Eisenbud et al., NSDI 2016): each endpoint walks its own
/// permutation of the slots and takes the next free one in turn.
fn maglev(names: &[&str], table_size: u64) -> Vec<usize> {
    let m = table_size.max(1) as usize;
    let n = names.len();
    if n == 0 {
        return vec![0; m];
    }
    let params: Vec<(usize, usize)> = names
        .iter()
        .map(|name| {
            let offset = (hash64(name.as_bytes()) % m as u64) as usize;
            let skip =
                (hash64(format!("{name}#skip").as_bytes()) % (m as u64 - 1).max(1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in params.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot] != usize::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use abgate_config::model::ConsistentHash;
    use std::sync::Arc;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(format!("10.0.0.{i}:80"), Default::default())))
            .collect()
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut state = 0x1234_5678_u64;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 11
        }
    }

    #[test]
    fn round_robin_visits_each_endpoint_in_turn() {
        let eps = endpoints(3);
        let lb = Balancer::new(Some(&LoadBalancer::RoundRobin), &eps);
        let mut rnd = counter();
        let picks: Vec<_> = (0..6).map(|_| lb.pick(&eps, None, &mut rnd, 1)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busier_of_two() {
        let eps = endpoints(2);
        let _busy = eps[0].start();
        let lb = Balancer::new(None, &eps);
        let mut rnd = counter();
        assert!((0..50).all(|_| lb.pick(&eps, None, &mut rnd, 1) == 1));
    }

    /// Stores a reading taken at `now`, with the gateway's requests in flight as they are.
    fn report(endpoint: &Endpoint, waiting: u32, kv_cache: f64, now: u64) {
        endpoint.load.set(
            crate::load::ServerLoad { waiting, kv_cache },
            now,
            endpoint.active(),
        );
    }

    #[test]
    fn llm_aware_sends_to_the_shortest_queue_then_the_emptiest_cache() {
        let eps = endpoints(3);
        let lb = Balancer::new(Some(&LoadBalancer::LlmAware(Default::default())), &eps);
        let now = 5_000;
        report(&eps[0], 4, 0.9, now);
        report(&eps[1], 1, 1.0, now);
        report(&eps[2], 2, 0.2, now);
        let mut rnd = counter();
        // Costs 5.8, 3.0 and 2.4 queued requests.
        assert!((0..20).all(|_| lb.pick(&eps, None, &mut rnd, now) == 2));
        // No queue anywhere: the emptiest cache, however many requests the gateway has
        // there (a batching server starts them all at once).
        let _running = [eps[1].start(), eps[1].start(), eps[1].start()];
        report(&eps[0], 0, 0.9, now);
        report(&eps[1], 0, 0.3, now);
        report(&eps[2], 0, 0.5, now);
        assert!((0..20).all(|_| lb.pick(&eps, None, &mut rnd, now) == 1));
    }

    #[test]
    fn llm_aware_counts_what_it_sent_since_the_last_reading() {
        let eps = endpoints(2);
        let lb = Balancer::new(Some(&LoadBalancer::LlmAware(Default::default())), &eps);
        report(&eps[0], 0, 0.0, 10);
        report(&eps[1], 0, 0.4, 10);
        let mut rnd = counter();
        // Between two readings the picks alternate instead of all going to the emptier
        // server: each request sent there counts as queued until the next reading shows it.
        let mut sent = Vec::new();
        let mut picks = Vec::new();
        for _ in 0..6 {
            let i = lb.pick(&eps, None, &mut rnd, 10);
            picks.push(i);
            sent.push(eps[i].start());
        }
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
        // The next reading takes them in: 3 running on each, the costs start again from it.
        report(&eps[0], 0, 0.75, 20);
        report(&eps[1], 0, 0.25, 20);
        assert_eq!(lb.pick(&eps, None, &mut rnd, 20), 1);
        drop(sent);
    }

    #[test]
    fn llm_aware_shares_ties_evenly() {
        let eps = endpoints(4);
        let lb = Balancer::new(Some(&LoadBalancer::LlmAware(Default::default())), &eps);
        for e in &eps {
            report(e, 0, 0.0, 10);
        }
        let mut rnd = counter();
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[lb.pick(&eps, None, &mut rnd, 10)] += 1;
        }
        // Uniform over 4: sd of a count is sqrt(4000 * 1/4 * 3/4) ~ 27; 5 sd is 137.
        assert!(counts.iter().all(|&c| c.abs_diff(1000) < 137), "{counts:?}");
    }

    #[test]
    fn llm_aware_falls_back_to_least_request_without_fresh_reports() {
        let eps = endpoints(2);
        let llm = crate::balancer::LoadBalancer::LlmAware(Default::default());
        let lb = Balancer::new(Some(&llm), &eps);
        let max_age = llm_max_age(std::time::Duration::from_millis(250));
        assert_eq!(max_age, 1000);
        // Endpoint 1 reports an empty queue but has the gateway's requests; endpoint 0
        // reports a long queue. Fresh, the queue decides; one report stale or missing,
        // only the gateway's own counts do.
        report(&eps[0], 10, 0.0, 1);
        report(&eps[1], 0, 0.0, 1);
        let _busy = [eps[1].start(), eps[1].start()];
        report(&eps[1], 0, 0.0, 1);
        let mut rnd = counter();
        assert!((0..20).all(|_| lb.pick(&eps, None, &mut rnd, 1 + max_age) == 1));
        assert!((0..20).all(|_| lb.pick(&eps, None, &mut rnd, 2 + max_age) == 0));
        // An endpoint never read: the same.
        let unread = vec![Arc::clone(&eps[0]), endpoints(2).remove(1)];
        report(&eps[0], 10, 0.0, 5_000);
        let _busy_unread = [unread[1].start(), unread[1].start()];
        assert!((0..20).all(|_| lb.pick(&unread, None, &mut rnd, 5_000) == 0));
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
        for algorithm in [
            HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            HashAlgorithm::Maglev { table_size: 65537 },
        ] {
            let eps = endpoints(4);
            let policy = LoadBalancer::ConsistentHash(ConsistentHash {
                key: HashKey::Header("x-user-id".into()),
                algorithm,
            });
            let lb = Balancer::new(Some(&policy), &eps);
            let mut rnd = counter();
            let mut counts = [0usize; 4];
            for user in 0..4000 {
                let h = hash64(format!("user-{user}").as_bytes());
                let first = lb.pick(&eps, Some(h), &mut rnd, 1);
                assert_eq!(first, lb.pick(&eps, Some(h), &mut rnd, 1));
                counts[first] += 1;
            }
            // Each endpoint's share is near 1/4: a ring of 1024 points or a maglev table
            // spreads within a few percent; 15%..35% leaves room only for a broken table.
            assert!(
                counts.iter().all(|&c| (600..=1400).contains(&c)),
                "{algorithm:?} {counts:?}"
            );
        }
    }

    #[test]
    fn picks_stay_among_the_allowed_endpoints() {
        let eps = endpoints(4);
        let among = [1usize, 3];
        for policy in [
            None,
            Some(LoadBalancer::RoundRobin),
            Some(LoadBalancer::Random),
            Some(LoadBalancer::LlmAware(Default::default())),
            Some(LoadBalancer::ConsistentHash(ConsistentHash {
                key: HashKey::Header("u".into()),
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: 1024,
                },
            })),
            Some(LoadBalancer::ConsistentHash(ConsistentHash {
                key: HashKey::Header("u".into()),
                algorithm: HashAlgorithm::Maglev { table_size: 65537 },
            })),
        ] {
            let lb = Balancer::new(policy.as_ref(), &eps);
            let mut rnd = counter();
            let mut seen = [0usize; 4];
            for user in 0..400 {
                let h = hash64(format!("user-{user}").as_bytes());
                seen[lb.pick_among(&eps, Some(&among), Some(h), &mut rnd, 1)] += 1;
            }
            assert_eq!((seen[0], seen[2]), (0, 0), "{policy:?} {seen:?}");
            assert!(seen[1] > 0 && seen[3] > 0, "{policy:?} {seen:?}");
        }
    }

    #[test]
    fn ring_hash_keeps_keys_of_healthy_endpoints_in_place() {
        let eps = endpoints(3);
        let policy = LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Header("u".into()),
            algorithm: HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
        });
        let lb = Balancer::new(Some(&policy), &eps);
        let mut rnd = counter();
        for user in 0..500 {
            let h = hash64(format!("user-{user}").as_bytes());
            let all = lb.pick(&eps, Some(h), &mut rnd, 1);
            let without_2 = lb.pick_among(&eps, Some(&[0, 1]), Some(h), &mut rnd, 1);
            if all != 2 {
                assert_eq!(all, without_2, "a key off the ejected endpoint stays put");
            }
        }
    }

    #[test]
    fn maglev_table_is_full_and_balanced() {
        let table = maglev(&["a", "b", "c"], 65537);
        assert!(table.iter().all(|&e| e < 3));
        let mut counts = [0usize; 3];
        for e in table {
            counts[e] += 1;
        }
        // Maglev guarantees each endpoint within one slot-round of M/N.
        assert!(
            counts.iter().all(|&c| c.abs_diff(65537 / 3) <= 3),
            "{counts:?}"
        );
    }
}
