//! CUPED: variance reduction with a pre-exposure covariate.

use serde::Serialize;

use crate::effect::{Comparison, Effect, relative_lift};
use crate::error::{StatsError, check_alpha, check_sample};
use crate::mean::compare_means;
use crate::ratio::ratio_test;
use crate::sufficient::{CANCELLATION, CovariateMoments, RatioCovariateMoments, centred_square};

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

/// One group's ratio after exposure R = ā/b̄ and before it Q = c̄/d̄, with the unbiased
/// (co)variances of their linearisations l = (a − R·b)/b̄ and k = (c − Q·d)/d̄ per unit:
/// Var(R̂) ≈ s_ll/n, Var(Q̂) ≈ s_kk/n and Cov(R̂, Q̂) ≈ s_lk/n by the delta method.
struct Linearised {
    n: f64,
    ratio: f64,
    pre_ratio: f64,
    s_ll: f64,
    s_kk: f64,
    s_lk: f64,
    /// The scale of s_kk's terms before centring, to tell a constant covariate from
    /// rounding noise (as `centred_square` does).
    kk_scale: f64,
}

fn linearise(g: &RatioCovariateMoments) -> Option<Linearised> {
    let (m, p) = (&g.metric, &g.covariate);
    let n = m.n as f64;
    if m.sum_den <= 0.0 || p.sum_den <= 0.0 {
        return None;
    }
    // Unbiased covariance of two per-unit quantities from Σu, Σv and Σuv.
    let cov = |sum_uv: f64, sum_u: f64, sum_v: f64| (sum_uv - sum_u * sum_v / n) / (n - 1.0);
    let (mu_b, mu_d) = (m.sum_den / n, p.sum_den / n);
    let (ratio, pre_ratio) = (m.sum_num / m.sum_den, p.sum_num / p.sum_den);
    let s_aa = cov(m.sum_num_sq, m.sum_num, m.sum_num);
    let s_bb = cov(m.sum_den_sq, m.sum_den, m.sum_den);
    let s_ab = cov(m.sum_num_den, m.sum_num, m.sum_den);
    let s_cc = cov(p.sum_num_sq, p.sum_num, p.sum_num);
    let s_dd = cov(p.sum_den_sq, p.sum_den, p.sum_den);
    let s_cd = cov(p.sum_num_den, p.sum_num, p.sum_den);
    let s_ac = cov(g.sum_num_pre_num, m.sum_num, p.sum_num);
    let s_ad = cov(g.sum_num_pre_den, m.sum_num, p.sum_den);
    let s_bc = cov(g.sum_den_pre_num, m.sum_den, p.sum_num);
    let s_bd = cov(g.sum_den_pre_den, m.sum_den, p.sum_den);
    let q = pre_ratio;
    // The scale of s_kk from uncentred moments: a covariate whose linearisation is constant
    // leaves s_kk at rounding noise of these, whereas its centred terms are noise too.
    let uncentred = (p.sum_num_sq + 2.0 * (q * p.sum_num_den).abs() + q * q * p.sum_den_sq)
        / ((n - 1.0) * mu_d * mu_d);
    Some(Linearised {
        n,
        ratio,
        pre_ratio,
        s_ll: ((s_aa - 2.0 * ratio * s_ab + ratio * ratio * s_bb) / (mu_b * mu_b)).max(0.0),
        s_kk: ((s_cc - 2.0 * q * s_cd + q * q * s_dd) / (mu_d * mu_d)).max(0.0),
        s_lk: (s_ac - ratio * s_bc - q * s_ad + ratio * q * s_bd) / (mu_b * mu_d),
        kk_scale: uncentred,
    })
}

/// CUPED for a ratio metric through the delta method, with the same ratio before exposure
/// as the covariate (CUPED: Deng, Xu, Kohavi & Walker 2013; the delta method for it: Deng,
/// Knoblich & Lu 2018).
///
/// Each group's ratios are linearised (`Linearised`), which turns the problem into §5's on
/// the per-unit values l and k: θ = Σ_g (n_g − 1)·s_lk,g / Σ_g (n_g − 1)·s_kk,g is the
/// pooled within-group slope, the adjusted ratio is R̂_g − θ(Q̂_g − Q̄) with Q̄ the pre-exposure
/// ratio of both groups together, and its variance (s_ll − 2θ s_lk + θ² s_kk)/n_g. The
/// comparison is the z-test of `ratio_test` on those, its lift against the adjusted control.
///
/// Units with no data before exposure add zeros to c and d, as they do to every sum. When
/// either group has no pre-exposure denominator, or the linearised covariate does not vary,
/// the result is `ratio_test`'s with `adjusted = false`.
pub fn ratio_cuped_test(
    control: &RatioCovariateMoments,
    treatment: &RatioCovariateMoments,
    alpha: f64,
) -> Result<CupedComparison, StatsError> {
    check_alpha(alpha)?;
    control.validate()?;
    treatment.validate()?;
    let unadjusted = || -> Result<CupedComparison, StatsError> {
        Ok(CupedComparison {
            comparison: ratio_test(&control.metric, &treatment.metric, alpha)?,
            theta: 0.0,
            variance_reduction: 0.0,
            adjusted: false,
        })
    };
    check_sample(2, &[control.metric.n, treatment.metric.n])?;
    if control.metric.sum_den <= 0.0 || treatment.metric.sum_den <= 0.0 {
        return Err(StatsError::NonPositiveDenominator);
    }
    let (Some(c), Some(t)) = (linearise(control), linearise(treatment)) else {
        return unadjusted();
    };
    let s_kk = (c.n - 1.0) * c.s_kk + (t.n - 1.0) * t.s_kk;
    let kk_scale = (c.n - 1.0) * c.kk_scale + (t.n - 1.0) * t.kk_scale;
    // NaN sums fail this comparison too, and fall back.
    if s_kk.partial_cmp(&(CANCELLATION * kk_scale)) != Some(std::cmp::Ordering::Greater) {
        return unadjusted();
    }
    let theta = ((c.n - 1.0) * c.s_lk + (t.n - 1.0) * t.s_lk) / s_kk;
    let pooled_pre = (control.covariate.sum_num + treatment.covariate.sum_num)
        / (control.covariate.sum_den + treatment.covariate.sum_den);
    let adjusted = |g: &Linearised| g.ratio - theta * (g.pre_ratio - pooled_pre);
    let variance =
        |g: &Linearised| (g.s_ll - 2.0 * theta * g.s_lk + theta * theta * g.s_kk).max(0.0) / g.n;
    let (r_c, r_t) = (adjusted(&c), adjusted(&t));
    let (v_c, v_t) = (variance(&c), variance(&t));
    // Sums at the edge of floating point can overflow the products above.
    if ![theta, r_c, r_t, v_c, v_t].iter().all(|x| x.is_finite()) {
        return unadjusted();
    }
    let se = (v_c + v_t).sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return Err(StatsError::ZeroVariance);
    }
    let raw = c.s_ll / c.n + t.s_ll / t.n;
    Ok(CupedComparison {
        comparison: Comparison {
            control: r_c,
            treatment: r_t,
            absolute: Effect::wald(r_t - r_c, se, None, alpha),
            relative: relative_lift(r_c, v_c, r_t, v_t, None, alpha),
        },
        theta,
        variance_reduction: if raw > 0.0 {
            1.0 - (v_c + v_t) / raw
        } else {
            0.0
        },
        adjusted: true,
    })
}
