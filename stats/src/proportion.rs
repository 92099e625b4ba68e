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
/// The confidence interval is Newcombe's hybrid score interval (method 10), which keeps its
/// coverage at small counts where the Wald interval does not; `absolute.std_error` reports
/// the unpooled √(p_c(1 − p_c)/n_c + p_t(1 − p_t)/n_t) (under the alternative the rates
/// differ) and `absolute.statistic` the pooled z. The relative lift's interval is the log
/// interval of the rate ratio (Katz), see [`crate::effect::relative_lift`].
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
    let critical = normal_isf(alpha / 2.0);
    let (ci_lower, ci_upper) = newcombe_interval(control, treatment, critical);
    let absolute = Effect {
        estimate,
        std_error: se,
        statistic,
        df: None,
        p_value: two_sided_p(statistic, None),
        ci_lower,
        ci_upper,
    };
    Ok(Comparison {
        control: p_c,
        treatment: p_t,
        absolute,
        relative: relative_lift(p_c, var_c, p_t, var_t, None, alpha),
    })
}

/// Wilson's score interval for one proportion at critical value z.
fn wilson_interval(p: &Proportion, z: f64) -> (f64, f64) {
    let n = p.units as f64;
    let rate = p.conversions as f64 / n;
    let z2 = z * z;
    let centre = (rate + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (rate * (1.0 - rate) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval for p_t − p_c (Newcombe 1998, method 10): each rate's
/// Wilson interval, combined by the square root of the summed squared distances. Unlike the
/// Wald interval it keeps its coverage at small counts and near 0 or 1, where the Wald
/// interval collapses to a point (0/1 against 1/1 gives [1, 1]).
/// Both groups must have units.
fn newcombe_interval(control: &Proportion, treatment: &Proportion, z: f64) -> (f64, f64) {
    let p_c = control.conversions as f64 / control.units as f64;
    let p_t = treatment.conversions as f64 / treatment.units as f64;
    let (l_c, u_c) = wilson_interval(control, z);
    let (l_t, u_t) = wilson_interval(treatment, z);
    let d = p_t - p_c;
    let below = ((p_t - l_t).powi(2) + (u_c - p_c).powi(2)).sqrt();
    let above = ((u_t - p_t).powi(2) + (p_c - l_c).powi(2)).sqrt();
    (d - below, d + above)
}
