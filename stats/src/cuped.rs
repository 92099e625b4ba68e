//! CUPED: variance reduction with a pre-exposure covariate.

use serde::Serialize;

use crate::effect::Comparison;
use crate::error::{StatsError, check_alpha, check_sample};
use crate::mean::compare_means;
use crate::sufficient::{CovariateMoments, centred_square};

/// A CUPED-adjusted comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CupedComparison {
    /// Welch's test on the adjusted means and variances (or on the raw ones when
    /// `adjusted` is false).
    pub comparison: Comparison,
    /// The regression coefficient θ of the metric on the covariate.
    pub theta: f64,
    /// 1 − Var(adjusted difference)/Var(unadjusted difference); 0 when not adjusted.
    pub variance_reduction: f64,
    /// False when the covariate has zero variance and the test fell back to the raw metric.
    pub adjusted: bool,
}

/// Centred cross-products of one group: (S_yy, S_xx, S_xy), each Σ(u − ū)(v − v̄).
///
/// A covariate that is constant up to rounding gets S_xx = 0 (see `centred_square`), which
/// selects the unadjusted fallback instead of dividing by noise.
fn centred(g: &CovariateMoments) -> (f64, f64, f64) {
    let s_yy = centred_square(g.n, g.sum_y, g.sum_y_sq);
    let s_xx = centred_square(g.n, g.sum_x, g.sum_x_sq);
    let s_xy = if s_xx == 0.0 {
        0.0
    } else {
        g.sum_xy - g.sum_x * g.sum_y / g.n as f64
    };
    (s_yy, s_xx, s_xy)
}

/// CUPED-adjusted Welch test.
///
/// θ is the pooled within-group regression slope θ = Σ_g S_xy,g / Σ_g S_xx,g, so the
/// treatment effect on y (a between-group shift) cannot leak into θ. Each unit's metric is
/// replaced by y − θ(x − x̄), where x̄ is the covariate mean over both groups; because x is
/// measured before exposure, the adjustment changes the variance but not the expected
/// difference. Group g then has adjusted mean ȳ_g − θ(x̄_g − x̄) and adjusted unbiased
/// variance s_yy,g − 2θ s_xy,g + θ² s_xx,g, and the comparison is Welch's test on those.
///
/// When Σ S_xx = 0 (a constant covariate) θ is reported as 0 and the unadjusted test is
/// returned with `adjusted = false`. Other degenerate inputs behave as in `welch_t_test`.
pub fn cuped_test(
    control: &CovariateMoments,
    treatment: &CovariateMoments,
    alpha: f64,
) -> Result<CupedComparison, StatsError> {
    check_alpha(alpha)?;
    control.validate()?;
    treatment.validate()?;
    check_sample(2, &[control.n, treatment.n])?;
    let (n_c, n_t) = (control.n as f64, treatment.n as f64);
    let (yy_c, xx_c, xy_c) = centred(control);
    let (yy_t, xx_t, xy_t) = centred(treatment);
    let raw_v_c = yy_c / (n_c - 1.0) / n_c;
    let raw_v_t = yy_t / (n_t - 1.0) / n_t;
    let (m_c, m_t) = (control.sum_y / n_c, treatment.sum_y / n_t);
    let s_xx = xx_c + xx_t;
    if s_xx <= 0.0 {
        let comparison = compare_means(m_c, raw_v_c, n_c, m_t, raw_v_t, n_t, alpha)?;
        return Ok(CupedComparison {
            comparison,
            theta: 0.0,
            variance_reduction: 0.0,
            adjusted: false,
        });
    }
    let theta = (xy_c + xy_t) / s_xx;
    let x_bar = (control.sum_x + treatment.sum_x) / (n_c + n_t);
    let adjusted_mean = |g: &CovariateMoments, n: f64| g.sum_y / n - theta * (g.sum_x / n - x_bar);
    let adjusted_var = |yy: f64, xx: f64, xy: f64, n: f64| {
        ((yy - 2.0 * theta * xy + theta * theta * xx) / (n - 1.0)).max(0.0) / n
    };
    let v_c = adjusted_var(yy_c, xx_c, xy_c, n_c);
    let v_t = adjusted_var(yy_t, xx_t, xy_t, n_t);
    let comparison = compare_means(
        adjusted_mean(control, n_c),
        v_c,
        n_c,
        adjusted_mean(treatment, n_t),
        v_t,
        n_t,
        alpha,
    )?;
    let raw = raw_v_c + raw_v_t;
    let variance_reduction = if raw > 0.0 {
        1.0 - (v_c + v_t) / raw
    } else {
        0.0
    };
    Ok(CupedComparison {
        comparison,
        theta,
        variance_reduction,
        adjusted: true,
    })
}
