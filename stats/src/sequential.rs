//! Always-valid inference: the normal-mixture mSPRT and its confidence sequence.
//!
//! A fixed-horizon p-value is only valid at one pre-planned look. The mixture sequential
//! probability ratio test (Johari et al., "Always valid inference") instead bounds the
//! probability that the p-value *ever* drops below alpha, so the results page may be
//! refreshed every day without inflating false positives.

use serde::Serialize;

use crate::error::{StatsError, check_alpha, check_sample, invalid};
use crate::sufficient::{Moments, Proportion};

/// Configuration of the mixture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SequentialConfig {
    /// Significance level: P(ever reject | H0) ≤ alpha.
    pub alpha: f64,
    /// Total units (both groups) at which the confidence sequence is tightest relative to a
    /// fixed-horizon interval. Set it to the planned sample size when one exists.
    pub tuning_units: f64,
}

impl Default for SequentialConfig {
    /// alpha = 0.05 and tuning at 10,000 total units, a typical planned size for the
    /// platform's smaller experiments; the width penalty is mild on either side of it.
    fn default() -> Self {
        Self {
            alpha: 0.05,
            tuning_units: 10_000.0,
        }
    }
}

/// The always-valid result at one look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SequentialResult {
    /// Estimated effect (treatment − control).
    pub estimate: f64,
    /// Standard error of the estimate at this look.
    pub std_error: f64,
    /// The mixture variance τ² used at this look (effect units squared).
    pub mixture_variance: f64,
    /// Always-valid p-value min(1, 1/Λ), Λ the mixture likelihood ratio.
    pub p_value: f64,
    /// Lower end of the 1 − alpha confidence sequence.
    pub ci_lower: f64,
    /// Upper end of the 1 − alpha confidence sequence.
    pub ci_upper: f64,
    /// True when `p_value` ≤ alpha (equivalently, 0 lies outside the confidence sequence).
    pub reject: bool,
}

/// The ratio r* = τ²/V at which the mixture boundary is narrowest relative to the
/// fixed-horizon standard error.
///
/// The confidence-sequence half-width is √V·g(r) with
/// g(r)² = (1 + r)/r · (ln(1 + r) + 2 ln(1/α)); setting the derivative to zero gives
/// r = ln(1 + r) + 2 ln(1/α), solved here by fixed-point iteration (a contraction, since
/// the slope 1/(1 + r) is below one). For alpha = 0.05, r* ≈ 8.22.
pub fn optimal_mixture_ratio(alpha: f64) -> Result<f64, StatsError> {
    check_alpha(alpha)?;
    let c = -2.0 * alpha.ln();
    let mut r = c;
    for _ in 0..200 {
        let next = (1.0 + r).ln() + c;
        if (next - r).abs() <= 1e-15 * next {
            return Ok(next);
        }
        r = next;
    }
    Ok(r)
}

/// Always-valid p-value and confidence sequence for an asymptotically normal estimate.
///
/// With V = se² and r = r*·N/N* (N = `units`, N* = `tuning_units`), the mixture variance is
/// τ² = r·V, which stays constant while V shrinks like 1/N. The mixture likelihood ratio of
/// H0: θ = 0 against θ ~ N(0, τ²) is Λ = (1 + r)^(−1/2)·exp(z² r / (2(1 + r))), z = θ̂/se,
/// the p-value is min(1, 1/Λ) (computed in log space so it cannot overflow), and the
/// confidence sequence is θ̂ ± se·√((1 + r)/r·(ln(1 + r) + 2 ln(1/α))).
///
/// Errors: a non-positive or non-finite standard error gives `ZeroVariance`; a NaN
/// estimate, zero units or a non-positive `tuning_units` gives `InvalidInput`.
pub fn always_valid(
    estimate: f64,
    std_error: f64,
    units: u64,
    config: &SequentialConfig,
) -> Result<SequentialResult, StatsError> {
    let r_star = optimal_mixture_ratio(config.alpha)?;
    if !(config.tuning_units > 0.0 && config.tuning_units.is_finite()) {
        return Err(invalid("tuning_units must be positive and finite"));
    }
    if !estimate.is_finite() {
        return Err(invalid("the estimate must be finite"));
    }
    if units == 0 {
        return Err(invalid("units must be positive"));
    }
    if !(std_error > 0.0 && std_error.is_finite()) {
        return Err(StatsError::ZeroVariance);
    }
    let r = r_star * units as f64 / config.tuning_units;
    let z = estimate / std_error;
    let log_p = 0.5 * r.ln_1p() - z * z * r / (2.0 * (1.0 + r));
    let p_value = log_p.min(0.0).exp();
    let half_width = std_error * ((1.0 + r) / r * (r.ln_1p() - 2.0 * config.alpha.ln())).sqrt();
    Ok(SequentialResult {
        estimate,
        std_error,
        mixture_variance: r * std_error * std_error,
        p_value,
        ci_lower: estimate - half_width,
        ci_upper: estimate + half_width,
        reject: p_value <= config.alpha,
    })
}

/// Combines the running result with a new look: the running minimum of the p-values and the
/// running intersection of the confidence sequence.
///
/// Both operations keep the guarantees (the p-value sequence becomes monotone, the interval
/// nested). If the intersection would be empty, which has probability at most alpha under a
/// correct model, the current interval is kept so the output is always a proper interval.
pub fn accumulate(previous: &SequentialResult, current: &SequentialResult) -> SequentialResult {
    let lower = previous.ci_lower.max(current.ci_lower);
    let upper = previous.ci_upper.min(current.ci_upper);
    let (ci_lower, ci_upper) = if lower <= upper {
        (lower, upper)
    } else {
        (current.ci_lower, current.ci_upper)
    };
    SequentialResult {
        p_value: previous.p_value.min(current.p_value),
        ci_lower,
        ci_upper,
        reject: previous.reject || current.reject,
        ..*current
    }
}

/// Always-valid test of two conversion rates, using the unpooled standard error.
///
/// Errors: an empty group gives `InsufficientSample`; both rates exactly 0 or 1 gives
/// `ZeroVariance`.
pub fn sequential_proportion_test(
    control: &Proportion,
    treatment: &Proportion,
    config: &SequentialConfig,
) -> Result<SequentialResult, StatsError> {
    let (estimate, std_error) = proportion_difference(control, treatment)?;
    always_valid(estimate, std_error, control.units + treatment.units, config)
}

/// Always-valid test of two means (Welch's standard error, normal reference).
///
/// Errors: fewer than two units in a group gives `InsufficientSample`; both groups constant
/// gives `ZeroVariance`.
pub fn sequential_mean_test(
    control: &Moments,
    treatment: &Moments,
    config: &SequentialConfig,
) -> Result<SequentialResult, StatsError> {
    let (estimate, std_error) = mean_difference(control, treatment)?;
    always_valid(estimate, std_error, control.n + treatment.n, config)
}

/// Difference of two rates and its unpooled standard error.
pub(crate) fn proportion_difference(
    control: &Proportion,
    treatment: &Proportion,
) -> Result<(f64, f64), StatsError> {
    control.validate()?;
    treatment.validate()?;
    check_sample(1, &[control.units, treatment.units])?;
    let (n_c, n_t) = (control.units as f64, treatment.units as f64);
    let p_c = control.conversions as f64 / n_c;
    let p_t = treatment.conversions as f64 / n_t;
    let se = (p_c * (1.0 - p_c) / n_c + p_t * (1.0 - p_t) / n_t).sqrt();
    Ok((p_t - p_c, se))
}

/// Difference of two proportions and its standard error under H0 (equal rates), from the
/// pooled rate: the se of the test. Unlike the unpooled se it is zero only when neither or
/// every unit converted in both groups, where the difference is zero too.
pub(crate) fn pooled_proportion_difference(
    control: &Proportion,
    treatment: &Proportion,
) -> Result<(f64, f64), StatsError> {
    control.validate()?;
    treatment.validate()?;
    check_sample(1, &[control.units, treatment.units])?;
    let (n_c, n_t) = (control.units as f64, treatment.units as f64);
    let pooled = (control.conversions + treatment.conversions) as f64 / (n_c + n_t);
    let se = (pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)).sqrt();
    let (p_c, p_t) = (
        control.conversions as f64 / n_c,
        treatment.conversions as f64 / n_t,
    );
    Ok((p_t - p_c, se))
}

/// Difference of two means and its Welch standard error.
pub(crate) fn mean_difference(
    control: &Moments,
    treatment: &Moments,
) -> Result<(f64, f64), StatsError> {
    control.validate()?;
    treatment.validate()?;
    check_sample(2, &[control.n, treatment.n])?;
    let (n_c, n_t) = (control.n as f64, treatment.n as f64);
    let v = control.variance().unwrap_or(0.0) / n_c + treatment.variance().unwrap_or(0.0) / n_t;
    Ok((treatment.sum / n_t - control.sum / n_c, v.sqrt()))
}
