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

/// An experiment's rollup rows, as loaded: `(variant, day, units, multiple)` and
/// `(variant, metric, day, sums)`.
pub struct Rollups {
    pub exposures: Vec<(String, i64, i64, i64)>,
    pub metrics: Vec<(String, String, i64, Sums)>,
}
