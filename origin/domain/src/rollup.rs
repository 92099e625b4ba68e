//! Rollups: per-variant sufficient statistics, the one form in which events reach the
//! statistics, whichever engine (the SQL pipeline or the warehouse) computed them.

use serde::{Deserialize, Serialize};

/// Sufficient statistics of one metric for one variant (x: value, y: ratio denominator,
/// c: pre-exposure covariate), summed over units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    pub sum_x: f64,
    pub sum_x2: f64,
    pub sum_y: f64,
    pub sum_y2: f64,
    pub sum_xy: f64,
    pub sum_c: f64,
    pub sum_c2: f64,
    pub sum_xc: f64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.sum_x += other.sum_x;
        self.sum_x2 += other.sum_x2;
        self.sum_y += other.sum_y;
        self.sum_y2 += other.sum_y2;
        self.sum_xy += other.sum_xy;
        self.sum_c += other.sum_c;
        self.sum_c2 += other.sum_c2;
        self.sum_xc += other.sum_xc;
    }
}

/// The units first exposed to one variant on one day: those seen only in that variant, and
/// those also seen in another (excluded from the analysis, and counted).
#[derive(Clone, Debug, PartialEq)]
pub struct ExposureRollup {
    pub variant: String,
    /// Whole days since the epoch (UTC) of the units' first exposure.
    pub day: i64,
    pub units: i64,
    pub multiple: i64,
}

/// One metric's sufficient statistics over a variant's units, for the units' values that
/// changed on one day.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRollup {
    pub variant: String,
    pub metric: String,
    pub day: i64,
    pub sums: Sums,
}

/// One quantile metric's estimate for one variant, with all data so far (a quantile has no
/// per-day sufficient statistics to add up: see `abx_stats::quantile`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantileRollup {
    pub variant: String,
    pub metric: String,
    /// `None` when the variant's events do not allow one (fewer than two units).
    pub estimate: Option<abx_stats::QuantileEstimate>,
}

/// One capped metric's sufficient statistics for one variant over its units' capped
/// values, with all data so far (a percentile cap depends on every unit's value, so capped
/// sums cannot be kept per day).
#[derive(Clone, Debug, PartialEq)]
pub struct CappedRollup {
    pub variant: String,
    pub metric: String,
    pub sums: Sums,
    /// The variant's clean units the sums are over (all so far).
    pub units: u64,
    /// The cap applied: the fixed value, or the percentile's value over all units.
    pub cap: f64,
    /// The variant's units whose value was above the cap.
    pub capped_units: u64,
}

/// The cap of a metric over its units' values: a fixed value, or the percentile's order
/// statistic (rank ⌈p·n⌉) of `values`, the non-zero values of the experiment's clean units
/// (with most units at zero, as for revenue, a percentile over all units would be zero and
/// cap every buyer). `None` when there is nothing to cap.
pub fn cap_of(cap: &crate::model::catalog::Cap, values: &mut [f64]) -> Option<f64> {
    match (cap.value, cap.percentile) {
        (Some(value), _) => Some(value),
        (None, Some(p)) if !values.is_empty() => {
            values.sort_by(f64::total_cmp);
            let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            Some(values[rank - 1])
        }
        _ => None,
    }
}

/// An experiment's rollups, as the SQL pipeline or the warehouse computed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollups {
    pub exposures: Vec<ExposureRollup>,
    pub metrics: Vec<MetricRollup>,
    pub quantiles: Vec<QuantileRollup>,
    pub capped: Vec<CappedRollup>,
}

/// One (A variant, B variant) cell of an interaction: the units exposed to both of two experiments, by their variants (`va` in the first, `vb` in
/// the second), with Σx and Σx² of a metric since their first exposure to the first.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InteractionCell {
    pub va: String,
    pub vb: String,
    pub n: u64,
    pub sx: f64,
    pub sxx: f64,
}

/// The units of one variant whose dimension had one value at their first exposure, with
/// each metric's sufficient statistics over them: one cell of a drill-down.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DimensionCell {
    /// The attribute's value as text (see `event::dimension_value`); `None` for units whose
    /// first exposure did not carry it.
    pub value: Option<String>,
    pub variant: String,
    pub units: u64,
    /// By metric key.
    pub metrics: std::collections::BTreeMap<String, Sums>,
}
