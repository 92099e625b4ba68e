//! The error type shared by every fallible function of the crate.

use core::fmt;

use serde::Serialize;

/// Why a statistic could not be computed.
///
/// Every public function of the crate is total: instead of panicking or returning NaN it
/// returns one of these variants, which serialise to JSON as
/// `{"kind": "...", ...}` so the results endpoint can show the reason next to the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatsError {
    /// An input is outside its domain (NaN, negative, conversions above units, alpha outside
    /// (0, 1), weights that do not sum to a positive number, and so on).
    InvalidInput {
        /// A short description of the offending input.
        reason: &'static str,
    },
    /// A group has fewer units than the method needs (for example a sample variance needs two).
    InsufficientSample {
        /// The minimum number of units per group the method needs.
        required: u64,
        /// The smallest group size that was supplied.
        actual: u64,
    },
    /// The standard error of the comparison is zero, so no test statistic exists.
    ZeroVariance,
    /// The denominator of a ratio metric sums to zero or less in some group.
    NonPositiveDenominator,
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput { reason } => write!(f, "invalid input: {reason}"),
            Self::InsufficientSample { required, actual } => write!(
                f,
                "insufficient sample: {required} units per group required, {actual} supplied"
            ),
            Self::ZeroVariance => f.write_str("the standard error is zero"),
            Self::NonPositiveDenominator => {
                f.write_str("the ratio denominator sums to zero or less in a group")
            }
        }
    }
}

impl std::error::Error for StatsError {}

/// Shorthand used by the validation helpers below.
pub(crate) const fn invalid(reason: &'static str) -> StatsError {
    StatsError::InvalidInput { reason }
}

/// Checks that a significance level lies strictly between 0 and 1.
pub(crate) fn check_alpha(alpha: f64) -> Result<(), StatsError> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(invalid("alpha must lie strictly between 0 and 1"))
    }
}

/// Checks that every group has at least `required` units.
pub(crate) fn check_sample(required: u64, sizes: &[u64]) -> Result<(), StatsError> {
    let actual = sizes.iter().copied().min().unwrap_or(0);
    if actual < required {
        Err(StatsError::InsufficientSample { required, actual })
    } else {
        Ok(())
    }
}
