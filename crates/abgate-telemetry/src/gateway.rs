//! Gateway-wide health counters and gauges.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters and gauges about the gateway itself, rendered as `abgate_*`.
#[derive(Debug, Default)]
pub struct GatewayStats {
    config_reloads_applied: AtomicU64,
    config_reloads_refused: AtomicU64,
    endpoint_ejections: AtomicU64,
    pool_overflows: AtomicU64,
    requests_in_flight: AtomicI64,
    connections_open: AtomicI64,
    connections_refused: AtomicU64,
}

impl GatewayStats {
    /// Counts a configuration reload: `applied` when the new configuration took effect,
    /// else refused (unreadable, or adding errors) with the running one kept.
    pub fn record_config_reload(&self, applied: bool) {
        if applied {
            self.config_reloads_applied.fetch_add(1, Relaxed);
        } else {
            self.config_reloads_refused.fetch_add(1, Relaxed);
        }
    }

    /// Counts an endpoint ejected by outlier detection.
    pub fn record_endpoint_ejection(&self) {
        self.endpoint_ejections.fetch_add(1, Relaxed);
    }

    /// Counts a request refused because a connection pool was full (`UO`).
    pub fn record_pool_overflow(&self) {
        self.pool_overflows.fetch_add(1, Relaxed);
    }

    /// A request began: raises `abgate_requests_in_flight`.
    pub fn request_started(&self) {
        self.requests_in_flight.fetch_add(1, Relaxed);
    }

    /// A request ended: lowers `abgate_requests_in_flight`.
    pub fn request_finished(&self) {
        self.requests_in_flight.fetch_sub(1, Relaxed);
    }

    /// A downstream connection opened: raises `abgate_connections_open`.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    /// A downstream connection closed: lowers `abgate_connections_open`.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// Counts a connection refused at accept because `--max-connections` were open.
    pub fn record_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Counts a request in flight until the guard drops (also when the request's future
    /// is dropped unfinished).
    pub fn track_request(&self) -> InFlight<'_> {
        self.request_started();
        InFlight {
            stats: self,
            connection: false,
        }
    }

    /// Counts a connection open until the guard drops.
    pub fn track_connection(&self) -> InFlight<'_> {
        self.connection_opened();
        InFlight {
            stats: self,
            connection: true,
        }
    }

    /// Reloads that took effect.
    pub fn config_reloads_applied(&self) -> u64 {
        self.config_reloads_applied.load(Relaxed)
    }

    /// Reloads refused, the running configuration kept.
    pub fn config_reloads_refused(&self) -> u64 {
        self.config_reloads_refused.load(Relaxed)
    }

    /// Endpoint ejections.
    pub fn endpoint_ejections(&self) -> u64 {
        self.endpoint_ejections.load(Relaxed)
    }

    /// Connection pool overflows.
    pub fn pool_overflows(&self) -> u64 {
        self.pool_overflows.load(Relaxed)
    }

    /// Requests now in flight.
    pub fn requests_in_flight(&self) -> i64 {
        self.requests_in_flight.load(Relaxed)
    }

    /// Downstream connections now open.
    pub fn connections_open(&self) -> i64 {
        self.connections_open.load(Relaxed)
    }

    /// Connections refused at accept.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Relaxed)
    }
}

/// Keeps a request (or connection) counted in its gauge while alive.
#[must_use = "the gauge goes back down when this guard drops"]
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a GatewayStats,
    connection: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.connection {
            self.stats.connection_closed();
        } else {
            self.stats.request_finished();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_lower_gauges_on_drop() {
        let g = GatewayStats::default();
        {
            let _a = g.track_request();
            let _b = g.track_request();
            let _c = g.track_connection();
            assert_eq!(g.requests_in_flight(), 2);
            assert_eq!(g.connections_open(), 1);
        }
        assert_eq!(g.requests_in_flight(), 0);
        assert_eq!(g.connections_open(), 0);
    }
}
