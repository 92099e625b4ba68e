//! Compares the crate with the reference values of `stats/reference/values.json`, written by
//! `stats/reference/generate.py` from scipy, statsmodels and independent numerical
//! integration. Every comparison goes through [`check`], which walks the expected JSON and
//! compares it with the serialised Rust result, so a NaN leaking into a result (serialised
//! as `null`) fails as surely as a wrong number. Tolerances are documented in
//! `docs/statistics.md` ("Tolerances used in tests").

use abx_stats::bayesian::{self, beta_binomial};
use abx_stats::group_sequential::{SpendingFunction, boundaries};
use abx_stats::guardrail::{GuardrailConfig, HarmfulDirection, guardrail_check};
use abx_stats::interaction::{
    Cells, assignment_independence, interaction_means, interaction_proportions,
};
use abx_stats::power::{
    Mde, PlannedTest, PowerConfig, conversion_power, conversion_sample_size, mean_power,
    mean_sample_size,
};
use abx_stats::ratio::ratio_estimate;
use abx_stats::sequential::{SequentialConfig, always_valid, optimal_mixture_ratio};
use abx_stats::trend::{CumulativeEstimate, effect_trend};
use abx_stats::{
    Correction, CovariateMoments, Moments, Proportion, RatioCovariateMoments, RatioMoments,
    adjust_p_values, cuped_test, ratio_cuped_test, ratio_test, sequential_srm_test, srm_test,
    two_proportion_z_test, welch_t_test,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Relative and absolute tolerance: |actual − expected| ≤ rel·|expected| + abs.
#[derive(Clone, Copy)]
struct Tolerance {
    rel: f64,
    abs: f64,
}

/// The default: 1e-6 relative. The absolute floor only matters for expected values at or
/// near zero (an estimate of exactly 0, a loss of 1e-25), where relative error is undefined.
const TIGHT: Tolerance = Tolerance {
    rel: 1e-6,
    abs: 1e-15,
};

/// Beta–binomial expected losses: the reference integrates products of incomplete beta
/// functions with quad at epsabs = 1e-16, so values far below 1e-12 carry absolute noise.
const BETA_LOSS: Tolerance = Tolerance {
    rel: 1e-6,
    abs: 1e-13,
};

/// Plans for sequential designs: the crate integrates 40 looks on a Simpson grid, the
/// reference on 240 Gauss–Legendre nodes; their drifts agree to a few parts in 10⁶, far below
/// a unit of sample size.
const PLAN: Tolerance = Tolerance {
    rel: 1e-5,
    abs: 0.0,
};

fn values() -> Value {
    serde_json::from_str(include_str!("../reference/values.json")).expect("values.json parses")
}

fn cases(section: &str) -> Vec<Value> {
    let all = values();
    let list = all[section]
        .as_array()
        .unwrap_or_else(|| panic!("section {section} missing"));
    assert!(!list.is_empty(), "section {section} has no cases");
    list.clone()
}

fn input<T: DeserializeOwned>(case: &Value, key: &str) -> T {
    serde_json::from_value(case[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn f(case: &Value, key: &str) -> f64 {
    case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number"))
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("results serialise")
}

/// Compares every field present in `expected` with the same field of `actual`, recursively:
/// numbers within `tol`, arrays element by element, strings and booleans exactly. Fields that
/// only the Rust result has are not compared.
fn check(path: &str, expected: &Value, actual: &Value, tol: Tolerance) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, e_value) in e {
                let a_value = a.get(key).unwrap_or_else(|| panic!("{path}.{key} missing"));
                check(&format!("{path}.{key}"), e_value, a_value, tol);
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: length");
            for (i, (e_value, a_value)) in e.iter().zip(a).enumerate() {
                check(&format!("{path}[{i}]"), e_value, a_value, tol);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (
                e.as_f64().unwrap_or(f64::NAN),
                a.as_f64().unwrap_or(f64::NAN),
            );
            let allowed = tol.rel * e.abs() + tol.abs;
            assert!(
                (a - e).abs() <= allowed,
                "{path}: expected {e:e}, got {a:e} (error {:e}, allowed {allowed:e})",
                (a - e).abs()
            );
        }
        _ => assert_eq!(expected, actual, "{path}"),
    }
}

fn name(case: &Value) -> String {
    case["name"].as_str().unwrap_or("?").to_owned()
}

#[test]
fn two_proportion_z_test_matches_statsmodels() {
    for case in cases("proportion") {
        let control: Proportion = input(&case, "control");
        let treatment: Proportion = input(&case, "treatment");
        let result = two_proportion_z_test(&control, &treatment, f(&case, "alpha")).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn welch_t_test_matches_scipy_and_statsmodels() {
    for case in cases("welch") {
        let control: Moments = input(&case, "control");
        let treatment: Moments = input(&case, "treatment");
        let result = welch_t_test(&control, &treatment, f(&case, "alpha")).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn ratio_test_matches_matrix_delta_method() {
    for case in cases("ratio") {
        let control: RatioMoments = input(&case, "control");
        let treatment: RatioMoments = input(&case, "treatment");
        let result = ratio_test(&control, &treatment, f(&case, "alpha")).unwrap();
        let mut actual = to_json(&result);
        actual["control_variance"] = json!(ratio_estimate(&control).unwrap().variance);
        actual["treatment_variance"] = json!(ratio_estimate(&treatment).unwrap().variance);
        check(&name(&case), &case["expected"], &actual, TIGHT);
    }
}

#[test]
fn cuped_matches_regression_on_raw_data() {
    for case in cases("cuped") {
        let control: CovariateMoments = input(&case, "control");
        let treatment: CovariateMoments = input(&case, "treatment");
        let result = cuped_test(&control, &treatment, f(&case, "alpha")).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn ratio_cuped_matches_regression_on_linearised_raw_data() {
    for case in cases("ratio_cuped") {
        let control: RatioCovariateMoments = input(&case, "control");
        let treatment: RatioCovariateMoments = input(&case, "treatment");
        let result = ratio_cuped_test(&control, &treatment, f(&case, "alpha")).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn p_value_corrections_match_multipletests() {
    for case in cases("multiple") {
        let p: Vec<f64> = input(&case, "p_values");
        let actual = json!({
            "bonferroni": adjust_p_values(&p, Correction::Bonferroni),
            "holm": adjust_p_values(&p, Correction::Holm),
            "benjamini_hochberg": adjust_p_values(&p, Correction::BenjaminiHochberg),
        });
        check(&name(&case), &case["expected"], &actual, TIGHT);
    }
}

#[test]
fn msprt_matches_numerical_mixture_integral() {
    for case in cases("sequential") {
        let config = SequentialConfig {
            alpha: f(&case, "alpha"),
            tuning_units: f(&case, "tuning_units"),
        };
        let units = case["units"].as_u64().unwrap();
        let result =
            always_valid(f(&case, "estimate"), f(&case, "std_error"), units, &config).unwrap();
        let mut actual = to_json(&result);
        actual["optimal_ratio"] = json!(optimal_mixture_ratio(config.alpha).unwrap());
        check(&name(&case), &case["expected"], &actual, TIGHT);
    }
}

#[test]
fn group_sequential_boundaries_match_gauss_legendre_recursion() {
    for case in cases("group_sequential") {
        let spending: SpendingFunction = input(&case, "spending");
        let fractions: Vec<f64> = input(&case, "information_fractions");
        let looks = boundaries(&fractions, f(&case, "alpha"), spending).unwrap();
        check(&name(&case), &case["expected"], &to_json(&looks), TIGHT);
    }
}

#[test]
fn beta_binomial_matches_quadrature() {
    for case in cases("beta_binomial") {
        let control: Proportion = input(&case, "control");
        let treatment: Proportion = input(&case, "treatment");
        let result = beta_binomial(&control, &treatment).unwrap();
        check(
            &name(&case),
            &case["expected"],
            &to_json(&result),
            BETA_LOSS,
        );
    }
}

#[test]
fn gaussian_bayes_matches_quadrature() {
    for case in cases("gaussian_bayes") {
        let control: Moments = input(&case, "control");
        let treatment: Moments = input(&case, "treatment");
        let result = bayesian::gaussian(&control, &treatment).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn srm_matches_scipy_chisquare() {
    for case in cases("srm") {
        let observed: Vec<u64> = input(&case, "observed");
        let weights: Vec<f64> = input(&case, "weights");
        let result = srm_test(&observed, &weights).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn sequential_srm_matches_dirichlet_multinomial() {
    for case in cases("sequential_srm") {
        let observed: Vec<u64> = input(&case, "observed");
        let weights: Vec<f64> = input(&case, "weights");
        let result = sequential_srm_test(&observed, &weights).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

fn mde(case: &Value) -> Mde {
    let value = f(&case["mde"], "value");
    match case["mde"]["kind"].as_str() {
        Some("relative") => Mde::Relative(value),
        _ => Mde::Absolute(value),
    }
}

fn power_config(case: &Value) -> PowerConfig {
    PowerConfig {
        alpha: f(case, "alpha"),
        power: f(case, "power"),
        variants: case["variants"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap(),
        daily_traffic: case["daily_traffic"].as_f64(),
        secondary_metrics: case["secondary_metrics"]
            .as_u64()
            .map_or(0, |v| u32::try_from(v).unwrap()),
        test: if case["test"].is_null() {
            PlannedTest::FixedHorizon
        } else {
            input(case, "test")
        },
    }
}

#[test]
fn plans_for_sequential_designs_match_the_drifted_recursion() {
    for case in cases("design_power") {
        let config = power_config(&case);
        let plan = match case["metric"].as_str() {
            Some("mean") => mean_sample_size(
                f(&case, "baseline"),
                f(&case, "std_dev"),
                mde(&case),
                &config,
            ),
            _ => conversion_sample_size(f(&case, "baseline"), mde(&case), &config),
        }
        .unwrap();
        check(&name(&case), &case["expected"], &to_json(&plan), PLAN);
    }
}

#[test]
fn conversion_sample_size_matches_power_proportions_2indep() {
    for case in cases("conversion_power") {
        let config = power_config(&case);
        let plan = conversion_sample_size(f(&case, "baseline"), mde(&case), &config).unwrap();
        let mut actual = to_json(&plan);
        actual["power_at_units"] = json!(
            conversion_power(
                f(&case, "baseline"),
                mde(&case),
                f(&case, "power_at_units"),
                config.alpha,
                config.variants
            )
            .unwrap()
        );
        check(&name(&case), &case["expected"], &actual, TIGHT);
    }
}

#[test]
fn mean_sample_size_matches_normal_ind_power() {
    for case in cases("mean_power") {
        let config = power_config(&case);
        let (baseline, sd) = (f(&case, "baseline"), f(&case, "std_dev"));
        let plan = mean_sample_size(baseline, sd, mde(&case), &config).unwrap();
        let mut actual = to_json(&plan);
        actual["power_at_units"] = json!(
            mean_power(
                baseline,
                sd,
                mde(&case),
                f(&case, "power_at_units"),
                config.alpha,
                config.variants
            )
            .unwrap()
        );
        check(&name(&case), &case["expected"], &actual, TIGHT);
    }
}

#[test]
fn interaction_matches_saturated_ols_with_sandwich_errors() {
    for case in cases("interaction") {
        let alpha = f(&case, "alpha");
        let result = match case["kind"].as_str() {
            Some("proportion") => {
                interaction_proportions(&input::<Cells<Proportion>>(&case, "cells"), alpha)
            }
            _ => interaction_means(&input::<Cells<Moments>>(&case, "cells"), alpha),
        }
        .unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn assignment_independence_matches_chi2_contingency() {
    for case in cases("independence") {
        let table: Vec<Vec<u64>> = input(&case, "table");
        let result = assignment_independence(&table).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn guardrail_matches_half_normal_mixture_integral() {
    for case in cases("guardrail") {
        let direction = match case["harmful_direction"].as_str() {
            Some("decrease") => HarmfulDirection::Decrease,
            _ => HarmfulDirection::Increase,
        };
        let config = GuardrailConfig {
            harmful_direction: direction,
            alpha: f(&case, "alpha"),
            min_std_errors: f(&case, "min_std_errors"),
            min_units_per_arm: case["min_units_per_arm"].as_u64().unwrap(),
            tuning_units: f(&case, "tuning_units"),
        };
        let result = guardrail_check(
            f(&case, "effect"),
            f(&case, "std_error"),
            case["control_units"].as_u64().unwrap(),
            case["treatment_units"].as_u64().unwrap(),
            &config,
        )
        .unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}

#[test]
fn effect_trend_matches_weighted_least_squares() {
    for case in cases("trend") {
        let points: Vec<CumulativeEstimate> = case["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| CumulativeEstimate {
                day: f(p, "day"),
                estimate: f(p, "estimate"),
                std_error: f(p, "std_error"),
            })
            .collect();
        let trend = effect_trend(&points).unwrap();
        check(&name(&case), &case["expected"], &to_json(&trend), TIGHT);
    }
}

#[test]
fn cochran_q_matches_statsmodels_meta_analysis() {
    use abx_stats::heterogeneity::{SubgroupEffect, cochran_q};
    for case in cases("heterogeneity") {
        let effects: Vec<SubgroupEffect> = case["effects"]
            .as_array()
            .expect("effects")
            .iter()
            .map(|e| SubgroupEffect {
                estimate: f(e, "estimate"),
                std_error: f(e, "std_error"),
            })
            .collect();
        let result = cochran_q(&effects).unwrap();
        check(&name(&case), &case["expected"], &to_json(&result), TIGHT);
    }
}
