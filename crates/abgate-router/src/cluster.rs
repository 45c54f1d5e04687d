//! Clusters: a host's subset (or the whole host), its endpoints and how traffic is spread
//! over them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use abgate_config::model::TrafficPolicy;

use crate::balancer::Balancer;

/// One upstream address and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub authority: String,
    /// The endpoint's labels (`version` names it in metrics).
    pub labels: BTreeMap<String, String>,
    active: AtomicU32,
}

impl Endpoint {
    /// A new endpoint with no request in flight.
    pub fn new(authority: String, labels: BTreeMap<String, String>) -> Self {
        Self {
            authority,
            labels,
            active: AtomicU32::new(0),
        }
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
}

impl Cluster {
    /// `host` or `host/subset`, as in logs and error bodies.
    pub fn name(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}/{s}", self.host),
            None => self.host.clone(),
        }
    }
}
