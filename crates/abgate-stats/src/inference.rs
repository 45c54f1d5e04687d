//! What a test says about an [`Effect`](crate::Effect): the interval, the p-value and
//! the hypothesis they answer.

/// The alternative hypothesis about the effect δ = candidate − baseline.
///
/// The names follow GrowthBook's `OneSidedTreatmentGreaterTTest` and
/// `OneSidedTreatmentLesserTTest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alternative {
    /// δ ≠ 0: a two-sided interval.
    TwoSided,
    /// δ > 0: the interval is `[lower, +∞)`; the p-value is small when the candidate is
    /// clearly greater.
    Greater,
    /// δ < 0: the interval is `(−∞, upper]`; the p-value is small when the candidate is
    /// clearly lesser.
    Lesser,
}

/// A confidence interval (or one time-uniform slice of a confidence sequence); a
/// one-sided interval has an infinite end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Lower end, `−∞` when unbounded.
    pub lower: f64,
    /// Upper end, `+∞` when unbounded.
    pub upper: f64,
}

impl Interval {
    /// The whole line.
    pub const UNBOUNDED: Interval = Interval {
        lower: f64::NEG_INFINITY,
        upper: f64::INFINITY,
    };

    /// `estimate ± halfwidth`, or the one side that `alternative` asks for.
    pub(crate) fn around(estimate: f64, halfwidth: f64, alternative: Alternative) -> Self {
        match alternative {
            Alternative::TwoSided => Self {
                lower: estimate - halfwidth,
                upper: estimate + halfwidth,
            },
            Alternative::Greater => Self {
                lower: estimate - halfwidth,
                upper: f64::INFINITY,
            },
            Alternative::Lesser => Self {
                lower: f64::NEG_INFINITY,
                upper: estimate + halfwidth,
            },
        }
    }

    /// Whether `x` is inside (ends included).
    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }

    /// Whether the interval lies strictly on one side of zero: the data shows an effect.
    pub fn excludes_zero(&self) -> bool {
        !self.contains(0.0)
    }

    /// The part common to both; `lower > upper` when they do not meet.
    pub fn intersect(&self, other: &Interval) -> Interval {
        Interval {
            lower: self.lower.max(other.lower),
            upper: self.upper.min(other.upper),
        }
    }
}

/// The outcome of one test at one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inference {
    /// The effect's point estimate.
    pub estimate: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// The `1 − alpha` interval (fixed-horizon) or confidence-sequence slice (sequential).
    pub interval: Interval,
    /// The p-value against δ = 0 for this look alone (keep the running minimum of
    /// sequential p-values with a [`SequentialTracker`](crate::SequentialTracker)).
    pub p_value: f64,
    /// The alpha the interval was built for.
    pub alpha: f64,
    /// The alternative tested.
    pub alternative: Alternative,
}

impl Inference {
    /// Whether the effect is significant at this look's alpha: the interval excludes 0.
    pub fn significant(&self) -> bool {
        self.interval.excludes_zero()
    }
}
