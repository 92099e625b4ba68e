//! Sufficient statistics: the only inputs the engine accepts.
//!
//! The origin service aggregates raw events into these per-group sums (one row per variant,
//! or per cell for interaction analysis); the statistics never see individual events.
//! Means are per randomization unit, so units with no events must be counted with zeros.

use serde::{Deserialize, Serialize};

use crate::error::{StatsError, invalid};

/// Counts for a conversion metric: how many units were exposed and how many converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proportion {
    /// Randomization units exposed to the variant.
    pub units: u64,
    /// Units that converted at least once (each unit counts at most once).
    pub conversions: u64,
}

impl Proportion {
    /// Builds the counts of one group.
    pub const fn new(units: u64, conversions: u64) -> Self {
        Self { units, conversions }
    }

    /// The conversion rate, or `None` when no unit was exposed.
    pub fn rate(&self) -> Option<f64> {
        (self.units > 0).then(|| self.conversions as f64 / self.units as f64)
    }

    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        if self.conversions > self.units {
            Err(invalid("conversions exceed units"))
        } else {
            Ok(())
        }
    }
}

/// Relative size below which a centred sum of squares is indistinguishable from rounding
/// noise: summing n values in double precision leaves errors of order √n·1e-16·Σx², so
/// anything below 1e-12·Σx² is treated as zero variance.
pub const CANCELLATION: f64 = 1e-12;

/// Σ(x − x̄)² from n, Σx and Σx², with rounding noise mapped to exactly zero.
pub(crate) fn centred_square(n: u64, sum: f64, sum_sq: f64) -> f64 {
    let centred = sum_sq - sum * sum / n as f64;
    if centred <= CANCELLATION * sum_sq {
        0.0
    } else {
        centred
    }
}

/// First and second moments of a per-unit value x: n, Σx and Σx².
///
/// Used for mean metrics and for sum metrics (the per-unit total, analysed as a mean).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Number of randomization units.
    pub n: u64,
    /// Σx over units.
    pub sum: f64,
    /// Σx² over units.
    pub sum_sq: f64,
}

impl Moments {
    /// Builds the moments of one group from its sums.
    pub const fn new(n: u64, sum: f64, sum_sq: f64) -> Self {
        Self { n, sum, sum_sq }
    }

    /// Accumulates the moments of raw per-unit values (handy for callers and tests).
    pub fn from_values(values: &[f64]) -> Self {
        let (sum, sum_sq) = values
            .iter()
            .fold((0.0, 0.0), |(s, q), x| (s + x, q + x * x));
        Self {
            n: values.len() as u64,
            sum,
            sum_sq,
        }
    }

    /// The sample mean, or `None` when the group is empty.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The unbiased sample variance (divisor n − 1), or `None` below two units.
    ///
    /// Σx² − (Σx)²/n cancels for a constant metric and leaves rounding noise of either sign,
    /// so a centred sum of squares within `CANCELLATION` of Σx² counts as exactly zero.
    pub fn variance(&self) -> Option<f64> {
        (self.n > 1).then(|| centred_square(self.n, self.sum, self.sum_sq) / (self.n as f64 - 1.0))
    }

    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        if !(self.sum.is_finite() && self.sum_sq.is_finite()) {
            Err(invalid("moments must be finite"))
        } else if self.sum_sq < 0.0 {
            Err(invalid("a sum of squares cannot be negative"))
        } else {
            Ok(())
        }
    }
}

/// Per-unit moments of a ratio metric Σ numerator / Σ denominator (for example revenue per
/// session with the user as randomization unit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioMoments {
    /// Number of randomization units.
    pub n: u64,
    /// Σ numerator over units.
    pub sum_num: f64,
    /// Σ numerator² over units.
    pub sum_num_sq: f64,
    /// Σ denominator over units.
    pub sum_den: f64,
    /// Σ denominator² over units.
    pub sum_den_sq: f64,
    /// Σ numerator × denominator over units.
    pub sum_num_den: f64,
}

impl RatioMoments {
    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        let all = [
            self.sum_num,
            self.sum_num_sq,
            self.sum_den,
            self.sum_den_sq,
            self.sum_num_den,
        ];
        if all.iter().any(|v| !v.is_finite()) {
            Err(invalid("moments must be finite"))
        } else if self.sum_num_sq < 0.0 || self.sum_den_sq < 0.0 {
            Err(invalid("a sum of squares cannot be negative"))
        } else {
            Ok(())
        }
    }
}

/// Moments of a ratio metric after exposure (numerator a, denominator b) and of the same
/// ratio before exposure (numerator c, denominator d) over the same units, for CUPED on a
/// ratio: the two ratios' moments and the four cross-products between them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioCovariateMoments {
    /// The ratio after exposure: a over b.
    pub metric: RatioMoments,
    /// The ratio before exposure: c over d (units without pre-exposure data add zeros).
    pub covariate: RatioMoments,
    /// Σ a·c.
    pub sum_num_pre_num: f64,
    /// Σ a·d.
    pub sum_num_pre_den: f64,
    /// Σ b·c.
    pub sum_den_pre_num: f64,
    /// Σ b·d.
    pub sum_den_pre_den: f64,
}

impl RatioCovariateMoments {
    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        self.metric.validate()?;
        self.covariate.validate()?;
        let cross = [
            self.sum_num_pre_num,
            self.sum_num_pre_den,
            self.sum_den_pre_num,
            self.sum_den_pre_den,
        ];
        if self.metric.n != self.covariate.n {
            Err(invalid(
                "the ratio and its covariate must be over the same units",
            ))
        } else if cross.iter().any(|v| !v.is_finite()) {
            Err(invalid("moments must be finite"))
        } else {
            Ok(())
        }
    }
}

/// Moments of a metric y together with a pre-exposure covariate x of the same unit, for
/// CUPED: n, Σy, Σy², Σx, Σx², Σxy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CovariateMoments {
    /// Number of randomization units.
    pub n: u64,
    /// Σy (the in-experiment metric).
    pub sum_y: f64,
    /// Σy².
    pub sum_y_sq: f64,
    /// Σx (the same metric, or a correlated one, measured before exposure).
    pub sum_x: f64,
    /// Σx².
    pub sum_x_sq: f64,
    /// Σxy.
    pub sum_xy: f64,
}

impl CovariateMoments {
    /// The moments of y alone.
    pub const fn metric(&self) -> Moments {
        Moments {
            n: self.n,
            sum: self.sum_y,
            sum_sq: self.sum_y_sq,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        let all = [
            self.sum_y,
            self.sum_y_sq,
            self.sum_x,
            self.sum_x_sq,
            self.sum_xy,
        ];
        if all.iter().any(|v| !v.is_finite()) {
            Err(invalid("moments must be finite"))
        } else if self.sum_y_sq < 0.0 || self.sum_x_sq < 0.0 {
            Err(invalid("a sum of squares cannot be negative"))
        } else {
            Ok(())
        }
    }
}
