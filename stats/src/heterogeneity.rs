//! Does an effect differ between subgroups (the values of a dimension such as platform or
//! country)? Cochran's Q over the subgroups' independent estimates.

use serde::Serialize;

use crate::distribution::chi2_sf;
use crate::error::{StatsError, invalid};

/// One subgroup's estimate of the effect and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubgroupEffect {
    pub estimate: f64,
    pub std_error: f64,
}

/// Cochran's Q test of homogeneity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Heterogeneity {
    /// Q = Σ wᵢ (θ̂ᵢ − θ̄)² with wᵢ = 1/seᵢ² and θ̄ the inverse-variance weighted mean.
    pub q: f64,
    /// Subgroups in the test − 1.
    pub df: u32,
    /// P(χ²(df) ≥ Q): small when the effect differs between subgroups.
    pub p_value: f64,
    /// Higgins' I² = max(0, (Q − df)/Q): the share of the estimates' spread beyond chance.
    pub i_squared: f64,
    /// The fixed-effect pooled estimate θ̄ and its standard error 1/√Σw.
    pub pooled: f64,
    pub pooled_std_error: f64,
    /// Subgroups that took part (those with a positive standard error).
    pub subgroups: usize,
}

/// Tests whether independent subgroup estimates of one effect are compatible with a
/// common value (Cochran 1954). Subgroups are disjoint sets of units, so their estimates are
/// independent; under homogeneity Q is asymptotically χ² with k − 1 degrees of freedom.
/// The test has little power with few or small subgroups: a large p-value is no evidence
/// that the effect is the same everywhere.
///
/// Subgroups whose standard error is zero (no variation yet) carry no information and are
/// left out. Errors: non-finite input gives `InvalidInput`; fewer than two informative
/// subgroups give `InsufficientSample`.
pub fn cochran_q(effects: &[SubgroupEffect]) -> Result<Heterogeneity, StatsError> {
    if effects
        .iter()
        .any(|e| !(e.estimate.is_finite() && e.std_error.is_finite() && e.std_error >= 0.0))
    {
        return Err(invalid(
            "estimates and standard errors must be finite, errors non-negative",
        ));
    }
    let used: Vec<(f64, f64)> = effects
        .iter()
        .filter(|e| e.std_error > 0.0)
        .map(|e| (e.estimate, 1.0 / (e.std_error * e.std_error)))
        .collect();
    if used.len() < 2 {
        return Err(StatsError::InsufficientSample {
            required: 2,
            actual: used.len() as u64,
        });
    }
    let weight: f64 = used.iter().map(|(_, w)| w).sum();
    let pooled = used.iter().map(|(e, w)| w * e).sum::<f64>() / weight;
    let q: f64 = used.iter().map(|(e, w)| w * (e - pooled).powi(2)).sum();
    if !q.is_finite() {
        return Err(invalid("the subgroups' weights overflow"));
    }
    let df = (used.len() - 1) as u32;
    let i_squared = if q > 0.0 {
        ((q - f64::from(df)) / q).max(0.0)
    } else {
        0.0
    };
    Ok(Heterogeneity {
        q,
        df,
        p_value: chi2_sf(q, f64::from(df)).clamp(0.0, 1.0),
        i_squared,
        pooled,
        pooled_std_error: weight.sqrt().recip(),
        subgroups: used.len(),
    })
}
