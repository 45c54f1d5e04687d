//! The experiment statistics engine: per-arm sufficient statistics in; estimates,
//! intervals, p-values, SRM checks, multiple-testing adjustments and bandit weights out.
//! Pure: no I/O, no clock, randomness only from a generator passed in.
//!
//! Formulas follow GrowthBook's stats engine (`gbstats`) unless a function says
//! otherwise, and reproduce its published test cases (see `tests/growthbook.rs`).
//!
//! A typical guardrail check at one look:
//!
//! ```
//! use abgate_stats::{sequential, Alternative, Difference, Effect, Proportion, SequentialTracker};
//!
//! let baseline = Proportion::new(5000, 50)?; // 1% errors
//! let candidate = Proportion::new(5000, 95)?; // 1.9% errors
//! let effect = Effect::between(&baseline, &candidate, Difference::Absolute)?;
//! // Harm is "greater error rate": a one-sided sequential test, tuned for 10,000 units.
//! let look = sequential(&effect, Alternative::Greater, 0.05, 10_000.0)?;
//! let mut tracker = SequentialTracker::new();
//! tracker.observe(&look);
//! assert!(tracker.rejects(0.05));
//! # Ok::<(), abgate_stats::StatsError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bandit;
mod dist;
mod effect;
mod error;
mod frequentist;
mod inference;
mod multiple;
mod quantile;
mod sequential;
mod srm;
mod summary;

pub use bandit::{thompson_allocation, Allocation, BetaArm, ThompsonConfig};
pub use effect::{require_units, welch_dof, Difference, Effect};
pub use error::StatsError;
pub use frequentist::fixed_horizon;
pub use inference::{Alternative, Inference, Interval};
pub use multiple::{benjamini_hochberg, holm};
pub use quantile::QuantileEstimate;
pub use sequential::{
    mixture_rho, sequential, sequential_halfwidth, SequentialTracker, DEFAULT_TUNING,
};
pub use srm::{srm_chi_squared, ChiSquaredSrm, SequentialSrm, DEFAULT_SRM_ALPHA};
pub use summary::{variance_of_ratio, ArmStatistic, Proportion, Ratio, SampleMean};
