//! Conversion metrics: the two-proportion z-test.

use crate::distribution::{normal_isf, two_sided_p};
use crate::effect::{Comparison, Effect, relative_lift};
use crate::error::{StatsError, check_alpha, check_sample};
use crate::sufficient::Proportion;

/// Two-proportion z-test of treatment against control.
///
/// The p-value uses the pooled standard error (the null hypothesis says both groups share
/// one rate), p̂ = (x_c + x_t)/(n_c + n_t), se₀ = √(p̂(1 − p̂)(1/n_c + 1/n_t)),
/// z = (p_t − p_c)/se₀ and p = 2·sf(|z|), exactly as `statsmodels` `proportions_ztest`.
/// The confidence interval uses the unpooled standard error
/// √(p_c(1 − p_c)/n_c + p_t(1 − p_t)/n_t), because under the alternative the rates differ;
/// `absolute.std_error` reports that unpooled value and `absolute.statistic` the pooled z.
///
/// Errors: an empty group gives `InsufficientSample`; a pooled rate of exactly 0 or 1 (no
/// unit, or every unit, converted) gives `ZeroVariance`.
pub fn two_proportion_z_test(
    control: &Proportion,
    treatment: &Proportion,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    check_alpha(alpha)?;
    control.validate()?;
    treatment.validate()?;
    check_sample(1, &[control.units, treatment.units])?;
    let (n_c, n_t) = (control.units as f64, treatment.units as f64);
    let p_c = control.conversions as f64 / n_c;
    let p_t = treatment.conversions as f64 / n_t;
    let pooled = (control.conversions + treatment.conversions) as f64 / (n_c + n_t);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)).sqrt();
    if se_pooled <= 0.0 {
        return Err(StatsError::ZeroVariance);
    }
    let var_c = p_c * (1.0 - p_c) / n_c;
    let var_t = p_t * (1.0 - p_t) / n_t;
    let se = (var_c + var_t).sqrt();
    let estimate = p_t - p_c;
    let statistic = estimate / se_pooled;
    let half_width = normal_isf(alpha / 2.0) * se;
    let absolute = Effect {
        estimate,
        std_error: se,
        statistic,
        df: None,
        p_value: two_sided_p(statistic, None),
        ci_lower: estimate - half_width,
        ci_upper: estimate + half_width,
    };
    Ok(Comparison {
        control: p_c,
        treatment: p_t,
        absolute,
        relative: relative_lift(p_c, var_c, p_t, var_t, None, alpha),
    })
}
