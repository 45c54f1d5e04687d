//! What can stop an analysis: inputs that are not statistics, and data that cannot
//! support an inference yet.

/// Why a statistic could not be built or a comparison could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// An input is not a valid statistic: negative counts, NaN sums, mismatched lengths.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `alpha` is outside the range the method accepts.
    #[error("alpha must be in {range}, got {alpha}")]
    InvalidAlpha {
        /// The value given.
        alpha: f64,
        /// The accepted range, as text (`(0, 1)` or `(0, 0.5)`).
        range: &'static str,
    },
    /// Too few units (or events) for the method: the answer is "not enough data".
    #[error("not enough data: {have} units where {need} are needed")]
    NotEnoughData {
        /// What there is (the smaller arm).
        have: u64,
        /// What the method needs per arm.
        need: u64,
    },
    /// The comparison's variance is zero or negative (a constant metric, or quantile
    /// bounds that collapsed onto one value): nothing can be inferred.
    #[error("the variance is zero or negative, so no interval can be computed")]
    ZeroVariance,
    /// The baseline mean is zero, so a relative difference is undefined.
    #[error("the baseline mean is zero, so a relative difference is undefined")]
    BaselineZero,
}

/// Checks `0 < alpha < 1`.
pub(crate) fn check_alpha(alpha: f64) -> Result<(), StatsError> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidAlpha {
            alpha,
            range: "(0, 1)",
        })
    }
}
