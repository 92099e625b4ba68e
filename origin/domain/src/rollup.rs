//! Rollups: per-variant sufficient statistics, the one form in which events reach the
//! statistics, whichever engine (the SQL pipeline or the warehouse) computed them.

use serde::{Deserialize, Serialize};

/// Sufficient statistics of one metric for one variant, summed over units: of x (the value),
/// y (a ratio's denominator), c (x before exposure, the CUPED covariate) and d (y before
/// exposure, a ratio's covariate denominator).
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
    #[serde(default)]
    pub sum_d: f64,
    #[serde(default)]
    pub sum_d2: f64,
    #[serde(default)]
    pub sum_cd: f64,
    #[serde(default)]
    pub sum_xd: f64,
    #[serde(default)]
    pub sum_yc: f64,
    #[serde(default)]
    pub sum_yd: f64,
}

/// One unit's values of one metric, as `MetricKind::unit_values` defines them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UnitPoint {
    pub x: f64,
    pub y: f64,
    pub c: f64,
    pub d: f64,
}

impl Sums {
    /// Every field's column name, in the order of `values`.
    pub const COLUMNS: [&'static str; 14] = [
        "sum_x", "sum_x2", "sum_y", "sum_y2", "sum_xy", "sum_c", "sum_c2", "sum_xc", "sum_d",
        "sum_d2", "sum_cd", "sum_xd", "sum_yc", "sum_yd",
    ];

    pub fn values(&self) -> [f64; 14] {
        [
            self.sum_x,
            self.sum_x2,
            self.sum_y,
            self.sum_y2,
            self.sum_xy,
            self.sum_c,
            self.sum_c2,
            self.sum_xc,
            self.sum_d,
            self.sum_d2,
            self.sum_cd,
            self.sum_xd,
            self.sum_yc,
            self.sum_yd,
        ]
    }

    /// The sums from values in the order of `COLUMNS`.
    pub fn from_values(v: [f64; 14]) -> Sums {
        Sums {
            sum_x: v[0],
            sum_x2: v[1],
            sum_y: v[2],
            sum_y2: v[3],
            sum_xy: v[4],
            sum_c: v[5],
            sum_c2: v[6],
            sum_xc: v[7],
            sum_d: v[8],
            sum_d2: v[9],
            sum_cd: v[10],
            sum_xd: v[11],
            sum_yc: v[12],
            sum_yd: v[13],
        }
    }

    /// What each sum adds up, in the order of `COLUMNS`: the product of these of a unit's
    /// values (the SQL engines build their sums from the same table).
    pub const PRODUCTS: [&'static str; 14] = [
        "x", "xx", "y", "yy", "xy", "c", "cc", "xc", "d", "dd", "cd", "xd", "yc", "yd",
    ];

    fn terms(p: &UnitPoint) -> [f64; 14] {
        let value = |name: char| match name {
            'x' => p.x,
            'y' => p.y,
            'c' => p.c,
            _ => p.d,
        };
        Self::PRODUCTS.map(|product| product.chars().map(value).product())
    }

    /// The change in the sums when one unit's values move from `a` to `b`.
    pub fn change(a: &UnitPoint, b: &UnitPoint) -> Sums {
        let (a, b) = (Self::terms(a), Self::terms(b));
        Sums::from_values(std::array::from_fn(|i| b[i] - a[i]))
    }

    /// One unit's contribution.
    pub fn of(p: &UnitPoint) -> Sums {
        Self::change(&UnitPoint::default(), p)
    }

    pub fn add(&mut self, other: &Sums) {
        let (a, b) = (self.values(), other.values());
        *self = Sums::from_values(std::array::from_fn(|i| a[i] + b[i]));
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
