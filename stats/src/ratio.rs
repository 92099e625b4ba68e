//! Ratio metrics (Σ numerator / Σ denominator per group) with delta-method variances.

use serde::Serialize;

use crate::effect::{Comparison, Effect, relative_lift};
use crate::error::{StatsError, check_alpha, check_sample};
use crate::sufficient::{RatioMoments, centred_square};

/// The ratio of one group and the delta-method variance of that ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RatioEstimate {
    /// Σ numerator / Σ denominator.
    pub ratio: f64,
    /// Delta-method variance of the ratio (the squared standard error).
    pub variance: f64,
}

/// Ratio and delta-method variance of one group.
///
/// With per-unit numerator a and denominator b, means μ_a, μ_b, unbiased variances s_aa,
/// s_bb and covariance s_ab (divisor n − 1), R = μ_a/μ_b and
/// Var(R) ≈ (s_aa/μ_b² − 2 μ_a s_ab/μ_b³ + μ_a² s_bb/μ_b⁴) / n.
/// The units, not the sessions, are independent, which is why the variance is built from
/// per-unit moments rather than from the session count.
///
/// Errors: fewer than two units gives `InsufficientSample`; Σ denominator ≤ 0 gives
/// `NonPositiveDenominator`.
pub fn ratio_estimate(group: &RatioMoments) -> Result<RatioEstimate, StatsError> {
    group.validate()?;
    check_sample(2, &[group.n])?;
    if group.sum_den <= 0.0 {
        return Err(StatsError::NonPositiveDenominator);
    }
    let n = group.n as f64;
    let mu_a = group.sum_num / n;
    let mu_b = group.sum_den / n;
    let s_aa = centred_square(group.n, group.sum_num, group.sum_num_sq) / (n - 1.0);
    let s_bb = centred_square(group.n, group.sum_den, group.sum_den_sq) / (n - 1.0);
    let s_ab = (group.sum_num_den - group.sum_num * mu_b) / (n - 1.0);
    let ratio = mu_a / mu_b;
    // The quadratic form is non-negative in exact arithmetic; clamping only absorbs rounding.
    let variance =
        ((s_aa - 2.0 * ratio * s_ab + ratio * ratio * s_bb) / (mu_b * mu_b * n)).max(0.0);
    Ok(RatioEstimate { ratio, variance })
}

/// Compares the ratio metric of treatment against control with a z-test.
///
/// The difference R_t − R_c has variance Var(R_t) + Var(R_c); the reference distribution is
/// normal because the delta method is itself a large-sample approximation. The relative lift
/// uses the same delta-method variances and the normal reference.
pub fn ratio_test(
    control: &RatioMoments,
    treatment: &RatioMoments,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    let c = ratio_estimate(control)?;
    let t = ratio_estimate(treatment)?;
    let se = (c.variance + t.variance).sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroVariance);
    }
    Ok(Comparison {
        control: c.ratio,
        treatment: t.ratio,
        absolute: Effect::wald(t.ratio - c.ratio, se, None, alpha),
        relative: relative_lift(c.ratio, c.variance, t.ratio, t.variance, None, alpha),
    })
}
