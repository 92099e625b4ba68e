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

/// An experiment's rollups, as the SQL pipeline or the warehouse computed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollups {
    pub exposures: Vec<ExposureRollup>,
    pub metrics: Vec<MetricRollup>,
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
