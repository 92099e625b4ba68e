//! Power and sample size for conversion and mean metrics.
//!
//! Sizing assumes equal allocation, a two-sided test at level alpha split by Bonferroni
//! across the comparisons the results correct over ((1 + secondary metrics) × (variants − 1)),
//! and the normal approximation. Bonferroni is used for sizing even though results are
//! corrected with Benjamini–Hochberg by default, because BH-adjusted p-values never exceed
//! Bonferroni-adjusted ones: a plan that is powered under Bonferroni is at least as powered
//! under BH (and Holm). The plan is for the test that will run ([`PlannedTest`]): a
//! group-sequential or always-valid test needs more units than one fixed-horizon look for the
//! same power, because it keeps α for every look.

use serde::{Deserialize, Serialize};

use crate::distribution::{normal_cdf, normal_isf, normal_sf};
use crate::error::{StatsError, check_alpha, invalid};
use crate::group_sequential::{self, SpendingFunction};
use crate::sequential::optimal_mixture_ratio;

/// The test a plan is for, as the results will run it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PlannedTest {
    /// One test at the planned sample.
    #[default]
    FixedHorizon,
    /// `looks` equally spaced looks with Lan–DeMets spending, the last at the plan.
    GroupSequential {
        looks: u32,
        spending: SpendingFunction,
    },
    /// The mSPRT of `sequential`, tuned to the planned sample (its default) and read as
    /// often as anyone likes: its power is computed for continuous monitoring.
    Sequential,
}

/// Looks used to compute the power of continuous monitoring; Siegmund's correction turns
/// the crossing of these discrete looks into that of the continuous boundary.
const MONITORING_LOOKS: u32 = 40;

/// Siegmund's (1985) constant: a boundary checked at spacing Δ (in information) is crossed
/// like the continuous boundary raised by ρ·√Δ.
const SIEGMUND_RHO: f64 = 0.5826;

/// The minimum detectable effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Mde {
    /// A relative change of the baseline, e.g. 0.05 for +5%.
    Relative(f64),
    /// An absolute change on the metric's scale, e.g. 0.005 for +0.5 percentage points.
    Absolute(f64),
}

/// Design parameters shared by the sample-size calculators.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerConfig {
    /// Family-wise two-sided significance level before the Bonferroni split.
    pub alpha: f64,
    /// Target power 1 − β for each comparison.
    pub power: f64,
    /// Number of variants including control (at least 2).
    pub variants: u32,
    /// Units entering the experiment per day over all variants, if known.
    pub daily_traffic: Option<f64>,
    /// Secondary metrics, which join the primary in the corrected family.
    pub secondary_metrics: u32,
    /// The test that will be run.
    pub test: PlannedTest,
}

impl Default for PowerConfig {
    /// alpha 0.05, power 0.8, one treatment, traffic unknown.
    fn default() -> Self {
        Self {
            alpha: 0.05,
            power: 0.8,
            variants: 2,
            daily_traffic: None,
            secondary_metrics: 0,
            test: PlannedTest::FixedHorizon,
        }
    }
}

/// A sample-size plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleSizePlan {
    /// Units needed in every variant (the continuous solution rounded up).
    pub units_per_variant: u64,
    /// The continuous solution before rounding.
    pub exact_units_per_variant: f64,
    /// `units_per_variant` × variants.
    pub total_units: u64,
    /// alpha / ((1 + secondary metrics) × (variants − 1)), the level of each comparison.
    pub alpha_per_comparison: f64,
    /// Units per variant one fixed-horizon test would need for the same power; the plan
    /// divided by it is the price of looking more than once.
    pub fixed_horizon_units_per_variant: u64,
    /// The MDE on the absolute scale.
    pub absolute_effect: f64,
    /// Days to reach `total_units` at `daily_traffic`, rounded up; `None` without traffic.
    pub expected_days: Option<u64>,
}

/// Per-unit standard deviations of the difference under H0 and under H1, and the effect.
struct Design {
    effect: f64,
    sd_null: f64,
    sd_alt: f64,
}

fn comparison_alpha(alpha: f64, variants: u32, secondary_metrics: u32) -> Result<f64, StatsError> {
    check_alpha(alpha)?;
    if variants < 2 {
        return Err(invalid("at least two variants are needed"));
    }
    Ok(alpha / (f64::from(variants - 1) * (1.0 + f64::from(secondary_metrics))))
}

fn absolute_effect(baseline: f64, mde: Mde) -> Result<f64, StatsError> {
    let effect = match mde {
        Mde::Relative(r) => {
            if baseline.is_nan() || baseline <= 0.0 {
                return Err(invalid("a relative MDE needs a positive baseline"));
            }
            r * baseline
        }
        Mde::Absolute(a) => a,
    };
    if !(effect.is_finite() && effect != 0.0) {
        return Err(invalid("the MDE must be non-zero and finite"));
    }
    Ok(effect)
}

/// The conversion design: H0 variance from the pooled rate p̄ = (p₁ + p₂)/2, H1 variance
/// from the two rates, as `statsmodels` `power_proportions_2indep` with ratio 1.
fn conversion_design(baseline_rate: f64, mde: Mde) -> Result<Design, StatsError> {
    if !(baseline_rate > 0.0 && baseline_rate < 1.0) {
        return Err(invalid(
            "the baseline rate must lie strictly between 0 and 1",
        ));
    }
    let effect = absolute_effect(baseline_rate, mde)?;
    let treated = baseline_rate + effect;
    if !(treated > 0.0 && treated < 1.0) {
        return Err(invalid("baseline + MDE must lie strictly between 0 and 1"));
    }
    let pooled = 0.5 * (baseline_rate + treated);
    Ok(Design {
        effect,
        sd_null: (2.0 * pooled * (1.0 - pooled)).sqrt(),
        sd_alt: (baseline_rate * (1.0 - baseline_rate) + treated * (1.0 - treated)).sqrt(),
    })
}

fn mean_design(baseline_mean: f64, std_dev: f64, mde: Mde) -> Result<Design, StatsError> {
    if !(std_dev > 0.0 && std_dev.is_finite()) {
        return Err(invalid(
            "the standard deviation must be positive and finite",
        ));
    }
    let effect = absolute_effect(baseline_mean, mde)?;
    let sd = std_dev * 2.0_f64.sqrt();
    Ok(Design {
        effect,
        sd_null: sd,
        sd_alt: sd,
    })
}

/// Two-sided power with n units per variant, counting both rejection tails:
/// Φ̄(c·σ₀/σ₁ − |δ|√n/σ₁) + Φ(−c·σ₀/σ₁ − |δ|√n/σ₁), c = z_{1−α/2}.
fn power_at(design: &Design, n: f64, alpha: f64) -> f64 {
    let crit = normal_isf(alpha / 2.0) * design.sd_null / design.sd_alt;
    let shift = design.effect.abs() * n.sqrt() / design.sd_alt;
    (normal_sf(crit - shift) + normal_cdf(-crit - shift)).min(1.0)
}

fn plan(design: &Design, config: &PowerConfig) -> Result<SampleSizePlan, StatsError> {
    let alpha = comparison_alpha(config.alpha, config.variants, config.secondary_metrics)?;
    if !(config.power > 0.0 && config.power < 1.0) {
        return Err(invalid("power must lie strictly between 0 and 1"));
    }
    if config
        .daily_traffic
        .is_some_and(|t| !(t > 0.0 && t.is_finite()))
    {
        return Err(invalid("daily traffic must be positive and finite"));
    }
    // The one-tailed closed form is within a factor of two of the answer; bracket around it
    // and bisect on the monotone power curve.
    let z =
        normal_isf(alpha / 2.0) * design.sd_null + normal_isf(1.0 - config.power) * design.sd_alt;
    let guess = (z / design.effect).powi(2).max(1e-9);
    let (mut lo, mut hi) = (guess / 4.0, guess * 4.0);
    while power_at(design, lo, alpha) > config.power {
        lo /= 4.0;
        if lo < 1e-300 {
            break;
        }
    }
    while power_at(design, hi, alpha) < config.power {
        hi *= 4.0;
        if !hi.is_finite() {
            return Err(invalid("the requested power cannot be reached"));
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if power_at(design, mid, alpha) < config.power {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-14 * hi {
            break;
        }
    }
    let fixed = hi;
    let exact = match config.test {
        PlannedTest::FixedHorizon => fixed,
        // A sequential design's power depends on the effect only through the drift
        // D = |δ|·√n/σ₁ at the plan, so it is solved for D and converted to units.
        test => {
            let bounds = planned_bounds(test, alpha, design.sd_null / design.sd_alt)?;
            let drift = required_drift(&bounds, config.power)?;
            (drift * design.sd_alt / design.effect).powi(2)
        }
    };
    if exact > 1e18 {
        return Err(invalid("the required sample size is not representable"));
    }
    let units_per_variant = exact.ceil().max(1.0) as u64;
    let total_units = units_per_variant.saturating_mul(u64::from(config.variants));
    Ok(SampleSizePlan {
        units_per_variant,
        exact_units_per_variant: exact,
        total_units,
        alpha_per_comparison: alpha,
        fixed_horizon_units_per_variant: fixed.ceil().max(1.0) as u64,
        absolute_effect: design.effect,
        expected_days: config
            .daily_traffic
            .map(|t| (total_units as f64 / t).ceil() as u64),
    })
}

/// Units per variant to detect `mde` on a conversion rate `baseline_rate`.
///
/// Errors: rates outside (0, 1), a zero MDE, alpha or power outside (0, 1), fewer than two
/// variants or non-positive traffic give `InvalidInput`.
pub fn conversion_sample_size(
    baseline_rate: f64,
    mde: Mde,
    config: &PowerConfig,
) -> Result<SampleSizePlan, StatsError> {
    plan(&conversion_design(baseline_rate, mde)?, config)
}

/// Units per variant to detect `mde` on a mean metric with per-unit standard deviation
/// `std_dev` (assumed equal in both groups); `baseline_mean` only scales a relative MDE.
///
/// Errors: as `conversion_sample_size`, plus a non-positive `std_dev`.
pub fn mean_sample_size(
    baseline_mean: f64,
    std_dev: f64,
    mde: Mde,
    config: &PowerConfig,
) -> Result<SampleSizePlan, StatsError> {
    plan(&mean_design(baseline_mean, std_dev, mde)?, config)
}

/// Power of a conversion comparison with `units_per_variant` units in each variant, at
/// level alpha / (variants − 1).
pub fn conversion_power(
    baseline_rate: f64,
    mde: Mde,
    units_per_variant: f64,
    alpha: f64,
    variants: u32,
) -> Result<f64, StatsError> {
    let design = conversion_design(baseline_rate, mde)?;
    power_for(&design, units_per_variant, alpha, variants)
}

/// Power of a mean comparison with `units_per_variant` units in each variant, at level
/// alpha / (variants − 1).
pub fn mean_power(
    baseline_mean: f64,
    std_dev: f64,
    mde: Mde,
    units_per_variant: f64,
    alpha: f64,
    variants: u32,
) -> Result<f64, StatsError> {
    let design = mean_design(baseline_mean, std_dev, mde)?;
    power_for(&design, units_per_variant, alpha, variants)
}

fn power_for(design: &Design, n: f64, alpha: f64, variants: u32) -> Result<f64, StatsError> {
    let alpha = comparison_alpha(alpha, variants, 0)?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(invalid("units per variant must be non-negative and finite"));
    }
    Ok(power_at(design, n, alpha))
}

/// A sequential design's looks: information fractions and |z| bounds on the scale of the
/// alternative's standard error (`null_to_alt` = σ₀/σ₁ rescales a test made with the null's).
struct PlannedBounds {
    fractions: Vec<f64>,
    bounds: Vec<f64>,
}

fn planned_bounds(
    test: PlannedTest,
    alpha: f64,
    null_to_alt: f64,
) -> Result<PlannedBounds, StatsError> {
    let (fractions, bounds) = match test {
        PlannedTest::FixedHorizon => (vec![1.0], vec![normal_isf(alpha / 2.0)]),
        PlannedTest::GroupSequential { looks, spending } => {
            if !(1..=50).contains(&looks) {
                return Err(invalid("a group-sequential plan needs 1 to 50 looks"));
            }
            let fractions: Vec<f64> = (1..=looks)
                .map(|k| f64::from(k) / f64::from(looks))
                .collect();
            let bounds = group_sequential::boundaries(&fractions, alpha, spending)?
                .iter()
                .map(|l| l.z_boundary)
                .collect();
            (fractions, bounds)
        }
        PlannedTest::Sequential => {
            // Tuned to the plan, the mixture ratio at fraction t is r = r*·t, and the mSPRT
            // rejects when z² ≥ (1 + r)/r·(ln(1 + r) − 2 ln α).
            let r_star = optimal_mixture_ratio(alpha)?;
            let step = 1.0 / f64::from(MONITORING_LOOKS);
            let fractions: Vec<f64> = (1..=MONITORING_LOOKS)
                .map(|k| f64::from(k) * step)
                .collect();
            let bounds = fractions
                .iter()
                .map(|&t| {
                    let r = r_star * t;
                    let continuous = ((1.0 + r) / r * (r.ln_1p() - 2.0 * alpha.ln())).sqrt();
                    (continuous - SIEGMUND_RHO * (step / t).sqrt()).max(1e-6)
                })
                .collect();
            (fractions, bounds)
        }
    };
    Ok(PlannedBounds {
        fractions,
        bounds: bounds.iter().map(|c| c * null_to_alt).collect(),
    })
}

/// The drift at the plan for which the design rejects with probability `power`: the
/// rejection probability rises smoothly in the drift, so a secant step inside a shrinking
/// bracket (regula falsi with the Illinois rule) converges in about ten evaluations, each a
/// recursive integration over every look.
fn required_drift(bounds: &PlannedBounds, power: f64) -> Result<f64, StatsError> {
    let gap = |drift: f64| {
        group_sequential::crossing_probability(&bounds.fractions, &bounds.bounds, drift)
            .map(|p| p - power)
    };
    let (mut lo, mut hi) = (0.0_f64, 4.0_f64);
    let (mut f_lo, mut f_hi) = (gap(lo)?, gap(hi)?);
    while f_hi < 0.0 {
        (lo, f_lo) = (hi, f_hi);
        hi *= 2.0;
        if hi > 1e6 {
            return Err(invalid("the requested power cannot be reached"));
        }
        f_hi = gap(hi)?;
    }
    let mut kept = 0_i8;
    for _ in 0..100 {
        let x = hi - f_hi * (hi - lo) / (f_hi - f_lo);
        let x = if x > lo && x < hi { x } else { 0.5 * (lo + hi) };
        let f = gap(x)?;
        if f.abs() <= 1e-12 || hi - lo <= 1e-10 * hi {
            return Ok(x);
        }
        if f < 0.0 {
            (lo, f_lo) = (x, f);
            // Illinois: halve the stale end's value when the same end survives twice.
            if kept == -1 {
                f_hi *= 0.5;
            }
            kept = -1;
        } else {
            (hi, f_hi) = (x, f);
            if kept == 1 {
                f_lo *= 0.5;
            }
            kept = 1;
        }
    }
    Ok(0.5 * (lo + hi))
}
