//! Guardrail monitoring: a one-sided always-valid test in the harmful direction.
//!
//! Guardrail metrics (errors, latency, unsubscribes) are checked on every refresh while an
//! experiment runs, so a fixed-horizon test would raise false alarms at a rate that grows
//! with the number of checks. The check here uses a one-sided normal-mixture mSPRT, whose
//! false-alarm probability over *all* checks is at most alpha, and additionally requires the
//! harmful effect to exceed a fixed number of standard errors so that a marginal
//! always-valid rejection on a tiny effect does not page anyone.

use serde::{Deserialize, Serialize};

use crate::distribution::normal_cdf;
use crate::error::{StatsError, check_alpha, invalid};
use crate::sequential::{mean_difference, optimal_mixture_ratio, pooled_proportion_difference};
use crate::sufficient::{Moments, Proportion};

/// Which direction of change is harmful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HarmfulDirection {
    /// Higher is worse (error rate, latency).
    Increase,
    /// Lower is worse (revenue, retention).
    Decrease,
}

/// Configuration of a guardrail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuardrailConfig {
    /// The harmful direction.
    pub harmful_direction: HarmfulDirection,
    /// One-sided level of the always-valid test (default 0.05).
    pub alpha: f64,
    /// Minimum harmful effect in standard errors before alarming (default 2).
    pub min_std_errors: f64,
    /// Units required in each group before the guardrail may alarm (default 1,000).
    pub min_units_per_arm: u64,
    /// Total units at which the mixture is tuned, as in `SequentialConfig` (default 10,000).
    pub tuning_units: f64,
}

impl GuardrailConfig {
    /// The default configuration for a given harmful direction.
    pub const fn new(harmful_direction: HarmfulDirection) -> Self {
        Self {
            harmful_direction,
            alpha: 0.05,
            min_std_errors: 2.0,
            min_units_per_arm: 1_000,
            tuning_units: 10_000.0,
        }
    }
}

/// The outcome of a guardrail check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailStatus {
    /// A group is below `min_units_per_arm`; nothing is concluded yet.
    InsufficientData,
    /// No alarm.
    Healthy,
    /// The treatment is harming the metric.
    Alarm,
}

/// A guardrail check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GuardrailCheck {
    /// The decision.
    pub status: GuardrailStatus,
    /// Treatment − control, signed so that positive means harmful.
    pub harmful_effect: f64,
    /// Standard error of the effect.
    pub std_error: f64,
    /// harmful_effect / std_error.
    pub z: f64,
    /// One-sided always-valid p-value for "the treatment is harmful".
    pub p_value: f64,
    /// The z at which this check alarms at its sample size: the larger of `min_std_errors`
    /// and the z where the always-valid p reaches α (which never falls below about 2.5
    /// at α = 0.05, so a threshold under it does not bind). 0 when no test was made.
    pub z_boundary: f64,
}

impl GuardrailCheck {
    /// The check reported before a group has enough units for a standard error.
    const fn insufficient() -> Self {
        Self {
            status: GuardrailStatus::InsufficientData,
            harmful_effect: 0.0,
            std_error: 0.0,
            z: 0.0,
            p_value: 1.0,
            z_boundary: 0.0,
        }
    }
}

/// Guardrail check from an effect (treatment − control on the metric's own scale) and its
/// standard error.
///
/// With z the harmful-direction z-score and r = r*(α)·N/N* as in `sequential`, the
/// one-sided mixture puts a half-normal N(0, τ²) prior on harmful effects only, giving
/// Λ = 2·(1 + r)^(−1/2)·exp(z² r / (2(1 + r)))·Φ(z·√(r/(1 + r))) and p = min(1, 1/Λ).
/// Alarm ⇔ both groups have at least `min_units_per_arm` units, z ≥ `min_std_errors`, and
/// p ≤ alpha.
///
/// A zero standard error with a zero effect (for example no errors in either group) is
/// healthy with p = 1. Errors: a zero standard error with a non-zero effect gives
/// `ZeroVariance`; invalid configuration gives `InvalidInput`.
pub fn guardrail_check(
    effect: f64,
    std_error: f64,
    control_units: u64,
    treatment_units: u64,
    config: &GuardrailConfig,
) -> Result<GuardrailCheck, StatsError> {
    check_alpha(config.alpha)?;
    if !(config.tuning_units > 0.0 && config.tuning_units.is_finite()) {
        return Err(invalid("tuning_units must be positive and finite"));
    }
    if !(config.min_std_errors.is_finite() && config.min_std_errors >= 0.0) {
        return Err(invalid("min_std_errors must be non-negative and finite"));
    }
    if !effect.is_finite() || std_error.is_nan() {
        return Err(invalid("the effect and its standard error must be finite"));
    }
    let harmful_effect = match config.harmful_direction {
        HarmfulDirection::Increase => effect,
        HarmfulDirection::Decrease => -effect,
    };
    let enough = control_units >= config.min_units_per_arm
        && treatment_units >= config.min_units_per_arm
        && control_units > 0
        && treatment_units > 0;
    let status_if = |alarm: bool| match (enough, alarm) {
        (false, _) => GuardrailStatus::InsufficientData,
        (true, true) => GuardrailStatus::Alarm,
        (true, false) => GuardrailStatus::Healthy,
    };
    if std_error <= 0.0 || !std_error.is_finite() {
        if harmful_effect == 0.0 {
            return Ok(GuardrailCheck {
                status: status_if(false),
                harmful_effect: 0.0,
                std_error: 0.0,
                z: 0.0,
                p_value: 1.0,
                z_boundary: 0.0,
            });
        }
        return Err(StatsError::ZeroVariance);
    }
    let r = optimal_mixture_ratio(config.alpha)? * (control_units + treatment_units) as f64
        / config.tuning_units;
    let z = harmful_effect / std_error;
    let p_value = one_sided_p(z, r);
    let alarm = z >= config.min_std_errors && p_value <= config.alpha;
    Ok(GuardrailCheck {
        status: status_if(alarm),
        harmful_effect,
        std_error,
        z,
        p_value,
        z_boundary: always_valid_boundary(r, config.alpha).max(config.min_std_errors),
    })
}

/// The z where the one-sided always-valid p equals α, by bisection: 1/Λ decreases in z.
fn always_valid_boundary(r: f64, alpha: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 64.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if one_sided_p(mid, r) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 {
            break;
        }
    }
    hi
}

/// 1/Λ for the half-normal mixture, in log space so that neither factor can overflow.
fn one_sided_p(z: f64, r: f64) -> f64 {
    let shrink = (r / (1.0 + r)).sqrt();
    let posterior_arg = z * shrink;
    // ln Φ(x) from the upper tail when x is very negative, where Φ itself would underflow.
    let ln_phi = if posterior_arg > -30.0 {
        normal_cdf(posterior_arg).ln()
    } else {
        let x = -posterior_arg;
        -0.5 * x * x - x.ln() - 0.5 * (2.0 * core::f64::consts::PI).ln()
    };
    let ln_lambda =
        core::f64::consts::LN_2 - 0.5 * r.ln_1p() + z * z * r / (2.0 * (1.0 + r)) + ln_phi;
    (-ln_lambda).min(0.0).exp()
}

/// Guardrail check on a conversion metric, with the standard error under H0 (pooled rate):
/// the unpooled one vanishes at 0 % against 100 %, the worst breakage, where no test could
/// then be made. An empty group gives `InsufficientData` with zero effect and p = 1.
pub fn guardrail_proportion(
    control: &Proportion,
    treatment: &Proportion,
    config: &GuardrailConfig,
) -> Result<GuardrailCheck, StatsError> {
    if control.units == 0 || treatment.units == 0 {
        return Ok(GuardrailCheck::insufficient());
    }
    let (effect, se) = pooled_proportion_difference(control, treatment)?;
    guardrail_check(effect, se, control.units, treatment.units, config)
}

/// Guardrail check on a mean metric (Welch standard error). A group with fewer than two
/// units gives `InsufficientData` with zero effect and p = 1.
pub fn guardrail_mean(
    control: &Moments,
    treatment: &Moments,
    config: &GuardrailConfig,
) -> Result<GuardrailCheck, StatsError> {
    if control.n < 2 || treatment.n < 2 {
        return Ok(GuardrailCheck::insufficient());
    }
    let (effect, se) = mean_difference(control, treatment)?;
    guardrail_check(effect, se, control.n, treatment.n, config)
}
