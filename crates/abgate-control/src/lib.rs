//! abgate's control plane: the experiment controller and what it talks to.
//!
//! The controller gathers inputs and applies outputs; every decision is the pure
//! [`abgate_experiment::step`]'s. Around it, two narrow traits keep it independent of
//! where figures come from and where splits go:
//!
//! - [`MetricSource`]: the observations of one experiment's variants over its current
//!   period. [`source::Builtin`] reads the gateway's own per-variant store,
//!   [`source::Prometheus`] runs PromQL; [`source::BySpec`] picks one per experiment as
//!   its `metrics.source` says.
//! - [`Actuator`]: puts a split in force (a step, a promotion, a rollback), adds and
//!   removes an experiment's routing, and says whether a split is routable
//!   ([`routable`] is the check against a configuration). The gateway's in-process route
//!   table is one implementation (in the binary, which sees both crates); a cluster's
//!   would be another, without touching the controller.
//!
//! One [`Clock`] gives the whole crate its time: unix milliseconds read through tokio's
//! clock, so tests run the controller on tokio's paused clock.
//!
//! Modules:
//! - [`controller`]: the loop ([`Controller::run`]), operator actions, summaries, reports;
//!   each decision is recorded in the state store before it is applied.
//! - [`gates`]: asks an experiment's webhook gates and tells its event hooks, through
//!   the one outbound client ([`abgate_outbound::Client`]).
//! - [`source`]: the [`MetricSource`] trait and its implementations.
//! - [`actuator`]: the [`Actuator`] trait and the routable check.
//! - [`clock`]: the [`Clock`].
//! - [`error`]: [`ControlError`], what an operator's request can fail with, typed so
//!   that an API maps it to a status in one place.
#![forbid(unsafe_code)]

pub mod actuator;
pub mod clock;
pub mod controller;
pub mod error;
pub mod gates;
pub mod source;

pub use actuator::{routable, Actuator, Unroutable};
pub use clock::Clock;
pub use controller::{Controller, Summary};
pub use error::ControlError;
pub use source::MetricSource;
