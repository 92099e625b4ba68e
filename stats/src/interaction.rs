//! Interaction between two concurrent experiments, and independence of their assignments.

use serde::{Deserialize, Serialize};

use crate::distribution::chi2_sf;
use crate::effect::Effect;
use crate::error::{StatsError, check_alpha, check_sample, invalid};
use crate::sufficient::{Moments, Proportion};

/// Per-cell statistics for experiment A (arms a0, a1) crossed with experiment B (b0, b1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cells<T> {
    /// Units in a0 and b0.
    pub a0_b0: T,
    /// Units in a1 and b0.
    pub a1_b0: T,
    /// Units in a0 and b1.
    pub a0_b1: T,
    /// Units in a1 and b1.
    pub a1_b1: T,
}

/// The interaction estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InteractionResult {
    /// Effect of A (a1 − a0) among units in b0.
    pub effect_in_b0: f64,
    /// Effect of A (a1 − a0) among units in b1.
    pub effect_in_b1: f64,
    /// effect_in_b1 − effect_in_b0 with its z-test and interval.
    pub interaction: Effect,
}

/// Combines per-cell means and squared standard errors into the difference in differences.
fn interaction(cells: &Cells<(f64, f64)>, alpha: f64) -> Result<InteractionResult, StatsError> {
    let effect_in_b0 = cells.a1_b0.0 - cells.a0_b0.0;
    let effect_in_b1 = cells.a1_b1.0 - cells.a0_b1.0;
    let variance = cells.a0_b0.1 + cells.a1_b0.1 + cells.a0_b1.1 + cells.a1_b1.1;
    let se = variance.sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroVariance);
    }
    Ok(InteractionResult {
        effect_in_b0,
        effect_in_b1,
        interaction: Effect::wald(effect_in_b1 - effect_in_b0, se, None, alpha),
    })
}

/// Interaction on a conversion metric: the four cells are independent, so the difference in
/// differences has variance Σ p(1 − p)/n over cells; the test is a normal z-test.
///
/// Errors: an empty cell gives `InsufficientSample`; every cell at rate 0 or 1 gives
/// `ZeroVariance`.
pub fn interaction_proportions(
    cells: &Cells<Proportion>,
    alpha: f64,
) -> Result<InteractionResult, StatsError> {
    check_alpha(alpha)?;
    let all = [&cells.a0_b0, &cells.a1_b0, &cells.a0_b1, &cells.a1_b1];
    for cell in all {
        cell.validate()?;
    }
    check_sample(1, &all.map(|c| c.units))?;
    let summary = |c: &Proportion| {
        let n = c.units as f64;
        let p = c.conversions as f64 / n;
        (p, p * (1.0 - p) / n)
    };
    interaction(
        &Cells {
            a0_b0: summary(&cells.a0_b0),
            a1_b0: summary(&cells.a1_b0),
            a0_b1: summary(&cells.a0_b1),
            a1_b1: summary(&cells.a1_b1),
        },
        alpha,
    )
}

/// Interaction on a mean metric: variance Σ s²/n over cells with unbiased cell variances
/// (the HC2 sandwich variance of the saturated regression); normal z-test.
///
/// Errors: a cell with fewer than two units gives `InsufficientSample`; every cell constant
/// gives `ZeroVariance`.
pub fn interaction_means(
    cells: &Cells<Moments>,
    alpha: f64,
) -> Result<InteractionResult, StatsError> {
    check_alpha(alpha)?;
    let all = [&cells.a0_b0, &cells.a1_b0, &cells.a0_b1, &cells.a1_b1];
    for cell in all {
        cell.validate()?;
    }
    check_sample(2, &all.map(|c| c.n))?;
    let summary = |c: &Moments| {
        let n = c.n as f64;
        (c.sum / n, c.variance().unwrap_or(0.0) / n)
    };
    interaction(
        &Cells {
            a0_b0: summary(&cells.a0_b0),
            a1_b0: summary(&cells.a1_b0),
            a0_b1: summary(&cells.a0_b1),
            a1_b1: summary(&cells.a1_b1),
        },
        alpha,
    )
}

/// Pearson's chi-squared test of independence for a contingency table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IndependenceTest {
    /// Σ (observed − expected)² / expected, without continuity correction.
    pub statistic: f64,
    /// (rows − 1)(columns − 1) after dropping empty rows and columns.
    pub df: u64,
    /// P(χ²_df ≥ statistic).
    pub p_value: f64,
}

/// Tests whether the assignment to one experiment is independent of the assignment to
/// another, from the table of unit counts (rows: arms of A, columns: arms of B).
///
/// Rows and columns with zero total carry no information and are dropped; if fewer than two
/// rows or columns remain the result is statistic 0, df 0, p = 1.
///
/// Errors: an empty table or rows of different lengths give `InvalidInput`.
pub fn assignment_independence<R: AsRef<[u64]>>(
    table: &[R],
) -> Result<IndependenceTest, StatsError> {
    let width = table.first().map_or(0, |r| r.as_ref().len());
    if width == 0 || table.iter().any(|r| r.as_ref().len() != width) {
        return Err(invalid("the table must be non-empty and rectangular"));
    }
    let row_totals: Vec<f64> = table
        .iter()
        .map(|r| r.as_ref().iter().map(|&v| v as f64).sum())
        .collect();
    let col_totals: Vec<f64> = (0..width)
        .map(|j| table.iter().map(|r| r.as_ref()[j] as f64).sum())
        .collect();
    let total: f64 = row_totals.iter().sum();
    let rows = row_totals.iter().filter(|&&t| t > 0.0).count();
    let cols = col_totals.iter().filter(|&&t| t > 0.0).count();
    if rows < 2 || cols < 2 {
        return Ok(IndependenceTest {
            statistic: 0.0,
            df: 0,
            p_value: 1.0,
        });
    }
    let mut statistic = 0.0;
    for (row, row_total) in table.iter().zip(&row_totals) {
        for (&observed, col_total) in row.as_ref().iter().zip(&col_totals) {
            let expected = row_total * col_total / total;
            if expected > 0.0 {
                let d = observed as f64 - expected;
                statistic += d * d / expected;
            }
        }
    }
    let df = ((rows - 1) * (cols - 1)) as u64;
    Ok(IndependenceTest {
        statistic,
        df,
        p_value: chi2_sf(statistic, df as f64),
    })
}
