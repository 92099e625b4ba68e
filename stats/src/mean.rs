//! Mean and sum metrics: Welch's t-test from sufficient statistics.

use crate::distribution::two_sided_critical;
use crate::effect::{Comparison, Effect, lift_with_critical};
use crate::error::{StatsError, check_alpha, check_sample};
use crate::sufficient::Moments;

/// Welch–Satterthwaite degrees of freedom for two independent means with squared standard
/// errors `v_c` and `v_t` and group sizes `n_c`, `n_t`.
pub(crate) fn welch_df(v_c: f64, n_c: f64, v_t: f64, n_t: f64) -> f64 {
    let numerator = (v_c + v_t) * (v_c + v_t);
    let denominator = v_c * v_c / (n_c - 1.0) + v_t * v_t / (n_t - 1.0);
    numerator / denominator
}

/// Welch's unequal-variance t-test of treatment against control, from (n, Σx, Σx²).
///
/// A *sum* metric (for example revenue per user over the experiment) is analysed with this
/// same test on the per-unit totals, so the estimate is the difference in mean total per
/// unit; scaling to a population total is a presentation concern of the caller.
///
/// The statistic is t = (x̄_t − x̄_c)/√(s_c²/n_c + s_t²/n_t) with unbiased variances and
/// Welch–Satterthwaite fractional df; the interval is estimate ± t_{df, 1−α/2}·se.
///
/// Errors: fewer than two units in a group gives `InsufficientSample`; both groups constant
/// gives `ZeroVariance`.
pub fn welch_t_test(
    control: &Moments,
    treatment: &Moments,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    control.validate()?;
    treatment.validate()?;
    check_sample(2, &[control.n, treatment.n])?;
    let (n_c, n_t) = (control.n as f64, treatment.n as f64);
    let (m_c, m_t) = (control.sum / n_c, treatment.sum / n_t);
    let v_c = control.variance().unwrap_or(0.0) / n_c;
    let v_t = treatment.variance().unwrap_or(0.0) / n_t;
    compare_means(m_c, v_c, n_c, m_t, v_t, n_t, alpha)
}

/// Shared tail of the Welch test, also used by CUPED on adjusted means and variances.
pub(crate) fn compare_means(
    m_c: f64,
    v_c: f64,
    n_c: f64,
    m_t: f64,
    v_t: f64,
    n_t: f64,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    let se = (v_c + v_t).sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroVariance);
    }
    let df = Some(welch_df(v_c, n_c, v_t, n_t));
    let critical = two_sided_critical(alpha, df);
    Ok(Comparison {
        control: m_c,
        treatment: m_t,
        absolute: Effect::with_critical(m_t - m_c, se, df, critical),
        relative: lift_with_critical(m_c, v_c, m_t, v_t, df, critical),
    })
}
