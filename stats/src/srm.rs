//! Sample-ratio mismatch: are exposures split the way the configuration says?

use serde::Serialize;

use crate::distribution::chi2_sf;
use crate::error::{StatsError, invalid};

/// p-values below this flag a sample-ratio mismatch. The threshold is strict because the
/// check runs on every experiment on every refresh, and a real mismatch is usually extreme.
pub const SRM_THRESHOLD: f64 = 0.001;

/// Result of the chi-squared goodness-of-fit test of exposure counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmResult {
    /// Pearson's statistic Σ (observed − expected)² / expected.
    pub statistic: f64,
    /// Degrees of freedom, k − 1.
    pub df: u64,
    /// P(χ²_{k−1} ≥ statistic).
    pub p_value: f64,
    /// True when `p_value` < `SRM_THRESHOLD`.
    pub mismatch: bool,
    /// Expected count of each variant: total × weight / Σ weights.
    pub expected: Vec<f64>,
}

/// Chi-squared goodness-of-fit of `observed` exposure counts against configured `weights`
/// (any positive scale; they are normalised).
///
/// With no exposures at all there is nothing to test: statistic 0, p = 1, no mismatch.
///
/// Errors: fewer than two variants, a length mismatch, or a weight that is not positive and
/// finite gives `InvalidInput` (a variant with zero weight should not be in the test).
pub fn srm_test(observed: &[u64], weights: &[f64]) -> Result<SrmResult, StatsError> {
    if observed.len() != weights.len() {
        return Err(invalid("observed counts and weights differ in length"));
    }
    if observed.len() < 2 {
        return Err(invalid("at least two variants are needed"));
    }
    if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
        return Err(invalid("weights must be positive and finite"));
    }
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    let weight_sum: f64 = weights.iter().sum();
    let expected: Vec<f64> = weights.iter().map(|w| total * w / weight_sum).collect();
    let df = observed.len() as u64 - 1;
    if total == 0.0 {
        return Ok(SrmResult {
            statistic: 0.0,
            df,
            p_value: 1.0,
            mismatch: false,
            expected,
        });
    }
    let statistic: f64 = observed
        .iter()
        .zip(&expected)
        .map(|(&o, e)| {
            let d = o as f64 - e;
            d * d / e
        })
        .sum();
    let p_value = chi2_sf(statistic, df as f64);
    Ok(SrmResult {
        statistic,
        df,
        p_value,
        mismatch: p_value < SRM_THRESHOLD,
        expected,
    })
}
