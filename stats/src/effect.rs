//! The shape of a two-group comparison: the absolute effect, the relative lift, and the
//! delta-method machinery for the lift.

use serde::Serialize;

use crate::distribution::{two_sided_critical, two_sided_p};

/// One estimated effect with its standard error, test and confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Effect {
    /// Point estimate (treatment − control for absolute effects, treatment/control − 1 for
    /// relative lifts, the difference in differences for interactions).
    pub estimate: f64,
    /// Standard error used for the confidence interval.
    pub std_error: f64,
    /// Test statistic (z, or Welch's t when `df` is present).
    pub statistic: f64,
    /// Degrees of freedom of the Student-t reference distribution; `None` means normal.
    pub df: Option<f64>,
    /// Two-sided p-value, in [0, 1].
    pub p_value: f64,
    /// Lower end of the two-sided 1 − alpha confidence interval.
    pub ci_lower: f64,
    /// Upper end of the two-sided 1 − alpha confidence interval.
    pub ci_upper: f64,
}

impl Effect {
    /// Builds a Wald-type effect: statistic = estimate / se, two-sided p-value and
    /// estimate ± critical × se, under a normal (`df = None`) or Student-t reference.
    ///
    /// The caller guarantees a positive finite standard error and a valid alpha.
    pub(crate) fn wald(estimate: f64, std_error: f64, df: Option<f64>, alpha: f64) -> Self {
        Self::with_critical(estimate, std_error, df, two_sided_critical(alpha, df))
    }

    /// As `wald`, with the critical value already computed. The Student-t quantile is the
    /// most expensive step of a comparison, so callers that need it twice (absolute effect
    /// and relative lift) compute it once.
    pub(crate) fn with_critical(
        estimate: f64,
        std_error: f64,
        df: Option<f64>,
        critical: f64,
    ) -> Self {
        let statistic = estimate / std_error;
        let half_width = critical * std_error;
        Self {
            estimate,
            std_error,
            statistic,
            df,
            p_value: two_sided_p(statistic, df),
            ci_lower: estimate - half_width,
            ci_upper: estimate + half_width,
        }
    }
}

/// Why no relative lift is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiftUnavailable {
    /// The control mean is zero, or so close to zero for its standard error that the
    /// lift's interval is unbounded, so the ratio is undefined.
    ZeroBaseline,
    /// The control mean is negative, so "relative" has no meaningful direction.
    NegativeBaseline,
    /// Both group means are known exactly (zero variance), so the lift has no standard error.
    ZeroVariance,
}

/// The relative lift (treatment − control) / control, when it is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RelativeLift {
    /// The lift with its delta-method standard error, test and interval.
    Estimated(Effect),
    /// The lift is undefined for the stated reason.
    Unavailable {
        /// Why the lift is undefined.
        reason: LiftUnavailable,
    },
}

impl RelativeLift {
    /// The estimated lift, if any.
    pub fn effect(&self) -> Option<&Effect> {
        match self {
            Self::Estimated(effect) => Some(effect),
            Self::Unavailable { .. } => None,
        }
    }
}

/// A complete two-group comparison, as returned by every frequentist test of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Control group mean (conversion rate, mean, ratio, or CUPED-adjusted mean).
    pub control: f64,
    /// Treatment group mean on the same scale.
    pub treatment: f64,
    /// Absolute effect treatment − control.
    pub absolute: Effect,
    /// Relative lift treatment / control − 1.
    pub relative: RelativeLift,
}

/// Relative lift of two independent group means, L = m_t / m_c − 1.
///
/// With the variances of the two means v_t and v_c (the squared standard errors), and both
/// means positive, the test and the interval are those of the log ratio:
/// se(ln m_t/m_c)² ≈ v_t/m_t² + v_c/m_c², interval exp(ln(m_t/m_c) ± c·se) − 1, reported
/// `std_error` (m_t/m_c)·se (the delta method's). With a treatment mean at or below zero the
/// delta-method Wald interval, Var(L) ≈ v_t / m_c² + m_t² v_c / m_c⁴, is used. The critical
/// value c comes from the same reference distribution as the absolute effect (`df = None`
/// for normal, Welch's df for means), so the two agree on which theory they rely on.
pub fn relative_lift(
    control_mean: f64,
    control_var_of_mean: f64,
    treatment_mean: f64,
    treatment_var_of_mean: f64,
    df: Option<f64>,
    alpha: f64,
) -> RelativeLift {
    let critical = two_sided_critical(alpha, df);
    lift_with_critical(
        control_mean,
        control_var_of_mean,
        treatment_mean,
        treatment_var_of_mean,
        df,
        critical,
    )
}

/// `relative_lift` with the critical value already computed.
pub(crate) fn lift_with_critical(
    control_mean: f64,
    control_var_of_mean: f64,
    treatment_mean: f64,
    treatment_var_of_mean: f64,
    df: Option<f64>,
    critical: f64,
) -> RelativeLift {
    if control_mean == 0.0 || control_mean.is_nan() {
        return RelativeLift::Unavailable {
            reason: LiftUnavailable::ZeroBaseline,
        };
    }
    if control_mean < 0.0 {
        return RelativeLift::Unavailable {
            reason: LiftUnavailable::NegativeBaseline,
        };
    }
    let lift = treatment_mean / control_mean - 1.0;
    if treatment_mean > 0.0 {
        // Both means positive: the interval is built for ln(t/c), whose sampling distribution
        // is far closer to normal than the ratio's, and mapped back. It never reaches below
        // −100 %, and at small counts it is the Katz log interval of the risk ratio.
        let log_variance = treatment_var_of_mean / (treatment_mean * treatment_mean)
            + control_var_of_mean / (control_mean * control_mean);
        let log_se = log_variance.sqrt();
        if !(log_se > 0.0 && log_se.is_finite()) {
            return RelativeLift::Unavailable {
                reason: LiftUnavailable::ZeroVariance,
            };
        }
        let log_ratio = (treatment_mean / control_mean).ln();
        let ci_upper = (log_ratio + critical * log_se).exp() - 1.0;
        if !ci_upper.is_finite() {
            // The upper end is beyond floating point (e^709): the control mean is
            // indistinguishable from zero at this sample size, so the ratio is as undefined
            // as for a zero baseline (found by proptest on a tiny positive control mean with
            // few degrees of freedom).
            return RelativeLift::Unavailable {
                reason: LiftUnavailable::ZeroBaseline,
            };
        }
        let statistic = log_ratio / log_se;
        return RelativeLift::Estimated(Effect {
            estimate: lift,
            // The delta-method standard error of the lift, (t/c)·se(ln t/c).
            std_error: (lift + 1.0) * log_se,
            statistic,
            df,
            p_value: two_sided_p(statistic, df),
            ci_lower: (log_ratio - critical * log_se).exp() - 1.0,
            ci_upper,
        });
    }
    // A treatment mean at or below zero (signed metrics) has no logarithm: the delta method.
    let c2 = control_mean * control_mean;
    let variance = treatment_var_of_mean / c2
        + treatment_mean * treatment_mean * control_var_of_mean / (c2 * c2);
    let std_error = variance.sqrt();
    if !(std_error > 0.0 && std_error.is_finite()) {
        return RelativeLift::Unavailable {
            reason: LiftUnavailable::ZeroVariance,
        };
    }
    RelativeLift::Estimated(Effect::with_critical(lift, std_error, df, critical))
}
