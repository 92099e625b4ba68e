//! Multiple-comparison corrections of p-values.

use serde::{Deserialize, Serialize};

/// A p-value correction method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// No correction: p-values are only sanitised.
    None,
    /// Bonferroni: p·m, controls the family-wise error rate.
    Bonferroni,
    /// Holm's step-down procedure: uniformly more powerful than Bonferroni, same guarantee.
    Holm,
    /// Benjamini–Hochberg step-up: controls the false discovery rate. The platform default,
    /// applied over primary and secondary metrics × treatment variants.
    #[default]
    BenjaminiHochberg,
}

/// Adjusted p-values, in input order, capped at 1.
///
/// The adjusted values match `statsmodels.stats.multitest.multipletests` (`bonferroni`,
/// `holm`, `fdr_bh`): with p₍₁₎ ≤ … ≤ p₍ₘ₎ sorted ascending,
/// Holm gives max_{j≤i} (m − j + 1) p₍ⱼ₎ and BH gives min_{j≥i} m p₍ⱼ₎ / j.
/// A NaN p-value (a metric that could not be tested) is treated as 1 rather than dropped, so
/// m still counts every hypothesis that was planned; other inputs are clamped to [0, 1].
pub fn adjust_p_values(p_values: &[f64], method: Correction) -> Vec<f64> {
    let p: Vec<f64> = p_values
        .iter()
        .map(|&v| if v.is_nan() { 1.0 } else { v.clamp(0.0, 1.0) })
        .collect();
    let m = p.len();
    if m == 0 {
        return p;
    }
    let mf = m as f64;
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    match method {
        Correction::None => return p,
        Correction::Bonferroni => {
            for (a, v) in adjusted.iter_mut().zip(&p) {
                *a = (v * mf).min(1.0);
            }
        }
        Correction::Holm => {
            let mut running = 0.0_f64;
            for (rank, &i) in order.iter().enumerate() {
                running = running.max((mf - rank as f64) * p[i]);
                adjusted[i] = running.min(1.0);
            }
        }
        Correction::BenjaminiHochberg => {
            let mut running = 1.0_f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                running = running.min(mf * p[i] / (rank as f64 + 1.0));
                adjusted[i] = running;
            }
        }
    }
    adjusted
}
