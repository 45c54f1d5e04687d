//! Pure routing decisions for abgate: no I/O, every rule a plain unit test.
//!
//! A [`RouteTable`] is compiled from a validated [`abgate_config::Config`]: listeners by
//! port, virtual hosts by name, and each host's rules in order. A request takes the first
//! rule whose matches accept it ([`request`]), a target of the rule's [`Split`] (random by
//! weight, or sticky by key), and an endpoint of that target's [`Cluster`] by its
//! DestinationRule's [`Balancer`].
#![forbid(unsafe_code)]

pub mod balancer;
pub mod cluster;
pub mod load;
pub mod openai;
pub mod request;
pub mod split;
pub mod sticky;
pub mod table;

pub use balancer::{hash64, Balancer};
pub use cluster::{
    instant_of, now_ms, Admission, Cluster, ClusterState, Ejection, EjectionCause, Endpoint,
    EndpointState, InFlight, Outcome, Overflow, PoolLimits, PoolStats, RetryToken, Slot,
    Unavailable, Waiter,
};
pub use request::RequestView;
pub use split::{Split, Target};
pub use table::{
    host_of, Action, BuildOptions, Listener, NoRoute, Route, RouteTable, Routed, Server,
    VirtualHost, MODEL_HEADER, STICKINESS_ANNOTATION,
};
