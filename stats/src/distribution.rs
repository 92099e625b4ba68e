//! Total wrappers around the distribution functions the tests need.
//!
//! `statrs` provides the Student-t and chi-squared survival functions, but its quantile
//! functions panic outside [0, 1] and its Student-t quantile is inaccurate for very large
//! degrees of freedom, so the quantiles here are computed by refining a starting guess
//! against the survival functions. The normal tails use `libm`'s `erfc` (already a
//! dependency of `statrs` through `num-traits`), which is accurate to about one ulp, where
//! `statrs`'s own `erfc` is only accurate to about 1e-10 relative.

use core::f64::consts::{PI, SQRT_2};

use statrs::distribution::{ChiSquared, Continuous, ContinuousCDF, StudentsT};
use statrs::function::erf::erfc_inv;

/// Upper tail of the standard normal distribution, P(Z > x).
pub(crate) fn normal_sf(x: f64) -> f64 {
    0.5 * libm::erfc(x / SQRT_2)
}

/// Lower tail of the standard normal distribution, P(Z <= x).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    normal_sf(-x)
}

/// Density of the standard normal distribution.
pub(crate) fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// Lower quantile of the standard normal distribution, the x with P(Z <= x) = p.
///
/// Returns -inf for p <= 0 and +inf for p >= 1 so callers never see a panic; callers only pass
/// probabilities strictly inside (0, 1).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let mut x = -SQRT_2 * erfc_inv(2.0 * p);
    // Two Halley steps against the erfc-based CDF make the quantile accurate to a few ulps
    // whatever the accuracy of the starting inverse; they are skipped where the density
    // underflows, which only happens for p below about 1e-290.
    for _ in 0..2 {
        let density = normal_pdf(x);
        if density < 1e-290 {
            break;
        }
        let u = (normal_cdf(x) - p) / density;
        x -= u / (1.0 + 0.5 * x * u);
    }
    x
}

/// Upper quantile of the standard normal distribution, the x with P(Z > x) = p.
pub(crate) fn normal_isf(p: f64) -> f64 {
    -normal_quantile(p)
}

fn students_t(df: f64) -> Option<StudentsT> {
    StudentsT::new(0.0, 1.0, df).ok()
}

/// Degrees of freedom from which the normal distribution replaces Student's t. The statrs
/// t tail loses about 1e-16·df relative precision (ln Γ cancellation) while the t and normal
/// tails differ by about (1 + x²)/(4 df), so the two errors cross near 1e8 (at least 5e7
/// units per group for Welch's df).
const NORMAL_DF: f64 = 1e8;

/// Upper tail of Student's t distribution with `df` degrees of freedom (fractional allowed).
///
/// Falls back to the normal tail when `df` is not a positive number below `NORMAL_DF`, the
/// limit of the t distribution as df grows.
pub(crate) fn t_sf(x: f64, df: f64) -> f64 {
    match students_t(df) {
        Some(t) if df < NORMAL_DF => t.sf(x),
        _ => normal_sf(x),
    }
}

fn t_pdf(x: f64, df: f64) -> f64 {
    match students_t(df) {
        Some(t) if df < NORMAL_DF => t.pdf(x),
        _ => normal_pdf(x),
    }
}

/// Upper quantile of Student's t distribution: the x with P(T > x) = p.
///
/// Solved by Newton's method on the survival function inside a bisection bracket, which
/// converges in a handful of steps from the Cornish–Fisher starting point.
pub(crate) fn t_isf(p: f64, df: f64) -> f64 {
    if !(df > 0.0 && df < NORMAL_DF) {
        return normal_isf(p);
    }
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::INFINITY;
    }
    if p >= 1.0 {
        return f64::NEG_INFINITY;
    }
    if p > 0.5 {
        return -t_isf(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    // Two terms of the Cornish–Fisher expansion put the start within 1e-4 of the root for
    // df ≥ 10, so Newton usually needs two or three steps.
    let z = normal_isf(p);
    let z2 = z * z;
    let mut x =
        z + z * (z2 + 1.0) / (4.0 * df) + z * ((5.0 * z2 + 16.0) * z2 + 3.0) / (96.0 * df * df);
    let mut lo = 0.0_f64;
    let mut hi = x.max(1.0);
    while t_sf(hi, df) > p {
        lo = hi;
        hi *= 2.0;
        if !hi.is_finite() {
            return f64::INFINITY;
        }
    }
    // The survival function is convex on x > 0, so Newton steps from the left of the root
    // approach it monotonically; a start exactly on the bracket is therefore kept.
    if !(x >= lo && x <= hi) {
        x = 0.5 * (lo + hi);
    }
    for _ in 0..200 {
        let residual = t_sf(x, df) - p;
        if residual > 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let density = t_pdf(x, df);
        let mut next = x + residual / density;
        if !(next > lo && next < hi && next.is_finite()) {
            next = 0.5 * (lo + hi);
        }
        // The t survival function is itself accurate to about 1e-12, so asking for more
        // would only chase rounding noise.
        let converged = (next - x).abs() <= 1e-13 * x.abs().max(1.0);
        x = next;
        if converged || hi - lo <= 1e-14 * hi {
            break;
        }
    }
    x
}

/// Upper tail of the chi-squared distribution with `df` degrees of freedom.
///
/// Returns 1 for a non-positive statistic and for an invalid `df`, so a degenerate table can
/// never produce a spurious rejection.
pub(crate) fn chi2_sf(x: f64, df: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    match ChiSquared::new(df) {
        Ok(chi2) => chi2.sf(x),
        Err(_) => 1.0,
    }
}

/// Two-sided p-value of a statistic under the normal or Student-t reference distribution,
/// clamped to [0, 1] so rounding can never report a p-value above one.
pub(crate) fn two_sided_p(statistic: f64, df: Option<f64>) -> f64 {
    let tail = match df {
        Some(df) => t_sf(statistic.abs(), df),
        None => normal_sf(statistic.abs()),
    };
    (2.0 * tail).clamp(0.0, 1.0)
}

/// Critical value for a two-sided interval of level 1 - alpha.
pub(crate) fn two_sided_critical(alpha: f64, df: Option<f64>) -> f64 {
    match df {
        Some(df) => t_isf(alpha / 2.0, df),
        None => normal_isf(alpha / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_inverts_the_survival_function() {
        for x in [0.0, 0.3, 1.0, 1.959_963_984_540_054, 3.0, 7.0, 20.0, 37.0] {
            let p = normal_sf(x);
            let back = normal_isf(p);
            assert!((back - x).abs() <= 1e-13 * x.max(1.0), "x {x}: got {back}");
        }
        assert_eq!(normal_isf(0.0), f64::INFINITY);
        assert_eq!(normal_isf(1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn t_quantile_inverts_the_survival_function_for_all_df() {
        // The range covers a Cauchy-like tail (df = 1) up to a df where the t and normal
        // tails differ by about 1e-6.
        for df in [1.0, 2.5, 7.0, 30.0, 1e4, 1e6] {
            for p in [0.4, 0.025, 1e-6, 1e-12] {
                let x = t_isf(p, df);
                let back = t_sf(x, df);
                assert!(
                    (back - p).abs() <= 1e-9 * p,
                    "df {df}, p {p}: x {x}, sf {back}"
                );
                // 1 − p is only exact to 1e-16 absolute, so symmetry is checked where that
                // rounding is negligible relative to p.
                if p >= 1e-6 {
                    assert!((t_isf(1.0 - p, df) + x).abs() <= 1e-8 * x.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn t_quantile_terminates_and_tends_to_normal_for_huge_df() {
        // Above df ≈ 1e7 the statrs survival function carries ≈1e-16·df relative noise, so
        // the quantile can only be checked against its normal limit (which takes over at
        // `NORMAL_DF`); the statrs quantile itself is wrong at 1e7 and hangs at 1e9.
        for df in [1e7, 1e8, 1e9, 1e12] {
            for p in [0.4, 0.025, 1e-6] {
                let x = t_isf(p, df);
                let z = normal_isf(p);
                assert!(
                    (x - z).abs() <= 1e-5 * z.abs(),
                    "df {df}, p {p}: {x} vs {z}"
                );
            }
        }
    }

    #[test]
    fn chi2_tail_is_total() {
        assert_eq!(chi2_sf(-1.0, 3.0), 1.0);
        assert_eq!(chi2_sf(f64::NAN, 3.0), 1.0);
        assert_eq!(chi2_sf(2.0, 0.0), 1.0);
        assert!((chi2_sf(3.841_458_820_694_124, 1.0) - 0.05).abs() < 1e-12);
    }
}
