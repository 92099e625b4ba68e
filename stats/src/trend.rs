//! Does the effect drift over the experiment's days (novelty fading, primacy growing)?

use serde::Serialize;

use crate::distribution::two_sided_p;
use crate::error::{StatsError, invalid};

/// One day's cumulative estimate of an effect: everything observed up to the end of `day`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CumulativeEstimate {
    /// Days since the experiment's first exposure.
    pub day: f64,
    pub estimate: f64,
    pub std_error: f64,
}

/// A linear trend of the effect over days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trend {
    /// Change of the effect per day.
    pub slope: f64,
    pub std_error: f64,
    pub z: f64,
    pub p_value: f64,
    /// Days that added information (the regression's points).
    pub periods: usize,
}

/// Tests for a linear trend in an effect from its cumulative estimates by day.
///
/// Cumulative estimates are strongly correlated, so they are not regressed directly. With
/// information I = 1/se² and score S = θ̂·I, the increments of (S, I) between days are
/// independent under the usual large-sample theory (Jennison & Turnbull 2000, §3.1), and
/// ΔS/ΔI estimates the effect among the data a day added, with variance 1/ΔI. The slope is
/// the weighted least-squares fit of those per-day effects on the day (weights ΔI), tested
/// with its exact WLS standard error 1/√(Σ ΔI·(d − d̄)²). A day whose information did not
/// grow (a variance estimate that moved down) is merged into the next.
///
/// Errors: a non-finite input gives `InvalidInput`; fewer than three days that added
/// information give `InsufficientSample`.
pub fn effect_trend(points: &[CumulativeEstimate]) -> Result<Trend, StatsError> {
    if points
        .iter()
        .any(|p| !(p.day.is_finite() && p.estimate.is_finite() && p.std_error.is_finite()))
    {
        return Err(invalid(
            "days, estimates and standard errors must be finite",
        ));
    }
    let mut periods: Vec<(f64, f64, f64)> = Vec::new(); // (day, effect, weight)
    let (mut info_prev, mut score_prev) = (0.0, 0.0);
    for p in points.iter().filter(|p| p.std_error > 0.0) {
        let info = 1.0 / (p.std_error * p.std_error);
        let score = p.estimate * info;
        let added = info - info_prev;
        if added <= 0.0 {
            continue;
        }
        periods.push((p.day, (score - score_prev) / added, added));
        info_prev = info;
        score_prev = score;
    }
    if periods.len() < 3 {
        return Err(StatsError::InsufficientSample {
            required: 3,
            actual: periods.len() as u64,
        });
    }
    let weight: f64 = periods.iter().map(|p| p.2).sum();
    let day_mean = periods.iter().map(|p| p.2 * p.0).sum::<f64>() / weight;
    let effect_mean = periods.iter().map(|p| p.2 * p.1).sum::<f64>() / weight;
    let sxx: f64 = periods.iter().map(|p| p.2 * (p.0 - day_mean).powi(2)).sum();
    if sxx <= 0.0 || sxx.is_nan() {
        return Err(StatsError::ZeroVariance);
    }
    let sxy: f64 = periods
        .iter()
        .map(|p| p.2 * (p.0 - day_mean) * (p.1 - effect_mean))
        .sum();
    let slope = sxy / sxx;
    let std_error = 1.0 / sxx.sqrt();
    let z = slope / std_error;
    Ok(Trend {
        slope,
        std_error,
        z,
        p_value: two_sided_p(z, None),
        periods: periods.len(),
    })
}
