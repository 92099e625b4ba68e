//! Degenerate inputs: every function must return its documented result (an error variant,
//! p = 1, an unavailable lift, ...) and never panic or produce NaN.

use abx_stats::bayesian::{self, beta_binomial, prob_greater};
use abx_stats::fixed_horizon::horizon_progress;
use abx_stats::group_sequential::{SpendingFunction, Z_MAX, boundaries};
use abx_stats::guardrail::{
    GuardrailConfig, GuardrailStatus, HarmfulDirection, guardrail_check, guardrail_mean,
    guardrail_proportion,
};
use abx_stats::interaction::{Cells, assignment_independence, interaction_proportions};
use abx_stats::power::{Mde, PowerConfig, conversion_sample_size, mean_sample_size};
use abx_stats::sequential::{SequentialConfig, always_valid, sequential_proportion_test};
use abx_stats::{
    Correction, CovariateMoments, LiftUnavailable, Moments, Proportion, RatioCovariateMoments,
    RatioMoments, RelativeLift, StatsError, adjust_p_values, cuped_test, ratio_cuped_test,
    ratio_test, srm_test, two_proportion_z_test, welch_t_test,
};

fn invalid(result: Result<impl std::fmt::Debug, StatsError>) {
    assert!(
        matches!(result, Err(StatsError::InvalidInput { .. })),
        "{result:?}"
    );
}

#[test]
fn z_test_degenerate_inputs() {
    let ok = Proportion::new(100, 10);
    assert_eq!(
        two_proportion_z_test(&Proportion::new(0, 0), &ok, 0.05),
        Err(StatsError::InsufficientSample {
            required: 1,
            actual: 0
        })
    );
    assert_eq!(
        two_proportion_z_test(&Proportion::new(100, 0), &Proportion::new(50, 0), 0.05),
        Err(StatsError::ZeroVariance)
    );
    assert_eq!(
        two_proportion_z_test(&Proportion::new(100, 100), &Proportion::new(50, 50), 0.05),
        Err(StatsError::ZeroVariance)
    );
    invalid(two_proportion_z_test(&Proportion::new(10, 11), &ok, 0.05));
    for alpha in [0.0, 1.0, f64::NAN, -0.1] {
        invalid(two_proportion_z_test(&ok, &ok, alpha));
    }
    // A zero baseline gives an absolute effect but no relative lift.
    let result = two_proportion_z_test(&Proportion::new(100, 0), &ok, 0.05).unwrap();
    assert_eq!(
        result.relative,
        RelativeLift::Unavailable {
            reason: LiftUnavailable::ZeroBaseline
        }
    );
    assert!(result.absolute.p_value > 0.0 && result.absolute.p_value < 0.01);
    // Identical groups: z = 0 and p exactly 1.
    let same = two_proportion_z_test(&ok, &ok, 0.05).unwrap();
    assert_eq!(same.absolute.statistic, 0.0);
    assert_eq!(same.absolute.p_value, 1.0);
}

#[test]
fn welch_degenerate_inputs() {
    let ok = Moments::from_values(&[1.0, 2.0, 3.0]);
    assert_eq!(
        welch_t_test(&Moments::from_values(&[1.0]), &ok, 0.05),
        Err(StatsError::InsufficientSample {
            required: 2,
            actual: 1
        })
    );
    let constant = Moments::from_values(&[4.0, 4.0, 4.0]);
    assert_eq!(
        welch_t_test(&constant, &constant, 0.05),
        Err(StatsError::ZeroVariance)
    );
    invalid(welch_t_test(&Moments::new(3, f64::NAN, 1.0), &ok, 0.05));
    invalid(welch_t_test(&Moments::new(3, 1.0, -1.0), &ok, 0.05));
    // One constant group: the df collapse to the other group's n − 1.
    let result = welch_t_test(&constant, &ok, 0.05).unwrap();
    assert!((result.absolute.df.unwrap() - 2.0).abs() < 1e-12);
    // A negative baseline has no meaningful relative lift.
    let negative = Moments::from_values(&[-1.0, -2.0, -3.0]);
    assert_eq!(
        welch_t_test(&negative, &ok, 0.05).unwrap().relative,
        RelativeLift::Unavailable {
            reason: LiftUnavailable::NegativeBaseline
        }
    );
}

#[test]
fn ratio_degenerate_inputs() {
    let ok = RatioMoments {
        n: 3,
        sum_num: 6.0,
        sum_num_sq: 14.0,
        sum_den: 3.0,
        sum_den_sq: 3.0,
        sum_num_den: 6.0,
    };
    let empty_den = RatioMoments {
        sum_den: 0.0,
        sum_den_sq: 0.0,
        sum_num_den: 0.0,
        ..ok
    };
    assert_eq!(
        ratio_test(&empty_den, &ok, 0.05),
        Err(StatsError::NonPositiveDenominator)
    );
    assert_eq!(
        ratio_test(&RatioMoments { n: 1, ..ok }, &ok, 0.05),
        Err(StatsError::InsufficientSample {
            required: 2,
            actual: 1
        })
    );
    invalid(ratio_test(
        &RatioMoments {
            sum_num: f64::INFINITY,
            ..ok
        },
        &ok,
        0.05,
    ));
}

#[test]
fn cuped_falls_back_when_the_covariate_is_constant() {
    let y_c = [1.0, 2.0, 4.0, 3.0];
    let y_t = [2.0, 3.0, 5.0, 6.0];
    let with_constant_x = |ys: &[f64]| CovariateMoments {
        n: ys.len() as u64,
        sum_y: ys.iter().sum(),
        sum_y_sq: ys.iter().map(|y| y * y).sum(),
        sum_x: 7.0 * ys.len() as f64,
        sum_x_sq: 49.0 * ys.len() as f64,
        sum_xy: 7.0 * ys.iter().sum::<f64>(),
    };
    let cuped = cuped_test(&with_constant_x(&y_c), &with_constant_x(&y_t), 0.05).unwrap();
    let welch = welch_t_test(
        &Moments::from_values(&y_c),
        &Moments::from_values(&y_t),
        0.05,
    )
    .unwrap();
    assert!(!cuped.adjusted);
    assert_eq!(cuped.theta, 0.0);
    assert_eq!(cuped.variance_reduction, 0.0);
    assert_eq!(cuped.comparison, welch);
}

#[test]
fn rounding_noise_counts_as_zero_variance() {
    // A constant covariate with a large offset leaves Σx² − (Σx)²/n at rounding level; it
    // must select the unadjusted fallback rather than divide by noise.
    let group = |ys: &[f64], x: f64| CovariateMoments {
        n: ys.len() as u64,
        sum_y: ys.iter().sum(),
        sum_y_sq: ys.iter().map(|y| y * y).sum(),
        sum_x: x * ys.len() as f64,
        sum_x_sq: ys.iter().map(|_| x * x).sum(),
        sum_xy: ys.iter().map(|y| x * y).sum(),
    };
    let x = 1_234_567.891;
    let result = cuped_test(
        &group(&[1.0, 2.0, 4.0], x),
        &group(&[2.0, 5.0, 3.0], x),
        0.05,
    );
    assert!(!result.unwrap().adjusted);
    let constant = Moments::from_values(&[0.1 + 1e6; 7]);
    assert_eq!(constant.variance(), Some(0.0));
    assert_eq!(
        welch_t_test(&constant, &constant, 0.05),
        Err(StatsError::ZeroVariance)
    );
}

#[test]
fn corrections_handle_empty_and_nan() {
    assert!(adjust_p_values(&[], Correction::BenjaminiHochberg).is_empty());
    let adjusted = adjust_p_values(&[0.01, f64::NAN, 0.02], Correction::Bonferroni);
    assert_eq!(adjusted, vec![0.03, 1.0, 0.06]);
    assert_eq!(
        adjust_p_values(&[-0.5, 1.5], Correction::None),
        vec![0.0, 1.0]
    );
}

#[test]
fn sequential_degenerate_inputs() {
    let config = SequentialConfig::default();
    assert_eq!(
        always_valid(0.1, 0.0, 100, &config),
        Err(StatsError::ZeroVariance)
    );
    invalid(always_valid(f64::NAN, 0.1, 100, &config));
    invalid(always_valid(0.1, 0.1, 0, &config));
    invalid(always_valid(
        0.1,
        0.1,
        10,
        &SequentialConfig {
            tuning_units: 0.0,
            ..config
        },
    ));
    // z = 0 is no evidence at all.
    assert_eq!(always_valid(0.0, 0.1, 100, &config).unwrap().p_value, 1.0);
    // An extreme effect gives a tiny but positive, finite p-value in log space.
    let extreme = always_valid(1.0, 0.001, 100_000, &config).unwrap();
    assert!(extreme.p_value >= 0.0 && extreme.p_value < 1e-100);
    assert_eq!(
        sequential_proportion_test(&Proportion::new(10, 0), &Proportion::new(10, 0), &config),
        Err(StatsError::ZeroVariance)
    );
}

#[test]
fn group_sequential_degenerate_inputs() {
    let obf = SpendingFunction::OBrienFleming;
    invalid(boundaries(&[], 0.05, obf));
    invalid(boundaries(&[0.5, 0.5], 0.05, obf));
    invalid(boundaries(&[0.5, 0.3], 0.05, obf));
    invalid(boundaries(&[0.5, 1.2], 0.05, obf));
    invalid(boundaries(&[0.0, 1.0], 0.05, obf));
    invalid(boundaries(&[f64::NAN], 0.05, obf));
    invalid(boundaries(&[1.0], 1.5, obf));
    // So early that O'Brien–Fleming spends nothing representable: the boundary is capped.
    let looks = boundaries(&[1e-4, 0.5, 1.0], 0.05, obf).unwrap();
    assert_eq!(looks[0].z_boundary, Z_MAX);
    assert_eq!(looks[0].incremental_alpha, 0.0);
    assert!(looks.iter().all(|l| l.z_boundary.is_finite()));
    // A single look at full information is the fixed-horizon test.
    let single = boundaries(&[1.0], 0.05, SpendingFunction::Pocock).unwrap();
    assert!((single[0].z_boundary - 1.959_963_984_540_054).abs() < 1e-12);
}

#[test]
fn spending_functions_at_their_ends() {
    for spending in [
        SpendingFunction::OBrienFleming,
        SpendingFunction::OBrienFlemingTotal,
        SpendingFunction::Pocock,
    ] {
        assert_eq!(spending.spent(0.05, 0.0), 0.0);
        assert_eq!(spending.spent(0.05, 1.0), 0.05);
        assert_eq!(spending.spent(0.05, 2.0), 0.05);
        assert_eq!(spending.spent(0.05, f64::NAN), 0.0);
        assert!(spending.spent(0.05, 0.5) > 0.0 && spending.spent(0.05, 0.5) < 0.05);
    }
}

#[test]
fn bayesian_degenerate_inputs() {
    let empty = Proportion::new(0, 0);
    let prior_only = beta_binomial(&empty, &empty).unwrap();
    assert!((prior_only.chance_to_beat_control - 0.5).abs() < 1e-15);
    invalid(beta_binomial(&Proportion::new(1, 2), &empty));
    assert_eq!(prob_greater(1.5, 1.0, 1.0, 1.0), 0.5);
    assert_eq!(prob_greater(f64::NAN, 1.0, 1.0, 1.0), 0.5);
    assert_eq!(
        bayesian::gaussian(
            &Moments::from_values(&[1.0]),
            &Moments::from_values(&[1.0, 2.0])
        ),
        Err(StatsError::InsufficientSample {
            required: 2,
            actual: 1
        })
    );
    let constant = Moments::from_values(&[1.0, 1.0]);
    assert_eq!(
        bayesian::gaussian(&constant, &constant),
        Err(StatsError::ZeroVariance)
    );
}

#[test]
fn srm_degenerate_inputs() {
    let none = srm_test(&[0, 0], &[1.0, 1.0]).unwrap();
    assert_eq!(
        (none.statistic, none.p_value, none.mismatch),
        (0.0, 1.0, false)
    );
    invalid(srm_test(&[10, 10], &[1.0, 0.0]));
    invalid(srm_test(&[10, 10], &[1.0]));
    invalid(srm_test(&[10], &[1.0]));
    invalid(srm_test(&[10, 10], &[1.0, f64::NAN]));
    // Counts exactly proportional to the weights fit perfectly.
    let exact = srm_test(&[100, 200, 100], &[0.25, 0.5, 0.25]).unwrap();
    assert_eq!(
        (exact.statistic, exact.p_value, exact.mismatch),
        (0.0, 1.0, false)
    );
    // A glaring mismatch is flagged.
    assert!(srm_test(&[1000, 1300], &[1.0, 1.0]).unwrap().mismatch);
}

#[test]
fn power_degenerate_inputs() {
    let config = PowerConfig::default();
    invalid(conversion_sample_size(0.0, Mde::Relative(0.1), &config));
    invalid(conversion_sample_size(0.95, Mde::Relative(0.1), &config));
    invalid(conversion_sample_size(0.1, Mde::Absolute(0.0), &config));
    invalid(conversion_sample_size(
        0.1,
        Mde::Relative(0.1),
        &PowerConfig {
            variants: 1,
            ..config
        },
    ));
    invalid(conversion_sample_size(
        0.1,
        Mde::Relative(0.1),
        &PowerConfig {
            power: 1.0,
            ..config
        },
    ));
    invalid(conversion_sample_size(
        0.1,
        Mde::Relative(0.1),
        &PowerConfig {
            daily_traffic: Some(0.0),
            ..config
        },
    ));
    invalid(mean_sample_size(10.0, 0.0, Mde::Absolute(1.0), &config));
    invalid(mean_sample_size(-10.0, 1.0, Mde::Relative(0.1), &config));
    // A negative MDE is sized like the positive one (two-sided test).
    let up = mean_sample_size(10.0, 2.0, Mde::Absolute(0.5), &config).unwrap();
    let down = mean_sample_size(10.0, 2.0, Mde::Absolute(-0.5), &config).unwrap();
    assert_eq!(up.units_per_variant, down.units_per_variant);
    assert_eq!(up.expected_days, None);
}

#[test]
fn interaction_and_independence_degenerate_inputs() {
    let ok = Proportion::new(100, 10);
    let cells = Cells {
        a0_b0: ok,
        a1_b0: ok,
        a0_b1: ok,
        a1_b1: Proportion::new(0, 0),
    };
    assert_eq!(
        interaction_proportions(&cells, 0.05),
        Err(StatsError::InsufficientSample {
            required: 1,
            actual: 0
        })
    );
    let zero = Proportion::new(100, 0);
    let flat = Cells {
        a0_b0: zero,
        a1_b0: zero,
        a0_b1: zero,
        a1_b1: zero,
    };
    assert_eq!(
        interaction_proportions(&flat, 0.05),
        Err(StatsError::ZeroVariance)
    );
    // Empty rows and columns are dropped; a single remaining row has nothing to test.
    let one_row = assignment_independence(&[vec![10_u64, 12], vec![0, 0]]).unwrap();
    assert_eq!(
        (one_row.statistic, one_row.df, one_row.p_value),
        (0.0, 0, 1.0)
    );
    let with_empty_col =
        assignment_independence(&[[10_u64, 0, 12], [11, 0, 9], [5, 0, 7]]).unwrap();
    let without = assignment_independence(&[[10_u64, 12], [11, 9], [5, 7]]).unwrap();
    assert_eq!(with_empty_col, without);
    invalid(assignment_independence::<Vec<u64>>(&[]));
    invalid(assignment_independence(&[vec![1_u64, 2], vec![3]]));
}

#[test]
fn guardrail_degenerate_inputs() {
    let config = GuardrailConfig::new(HarmfulDirection::Increase);
    let few = guardrail_proportion(&Proportion::new(0, 0), &Proportion::new(10, 1), &config);
    assert_eq!(few.unwrap().status, GuardrailStatus::InsufficientData);
    let few = guardrail_mean(
        &Moments::from_values(&[1.0]),
        &Moments::from_values(&[1.0]),
        &config,
    );
    assert_eq!(few.unwrap().status, GuardrailStatus::InsufficientData);
    // No errors in either group: healthy, not an error.
    let clean = guardrail_proportion(
        &Proportion::new(5000, 0),
        &Proportion::new(5000, 0),
        &config,
    )
    .unwrap();
    assert_eq!(
        (clean.status, clean.p_value),
        (GuardrailStatus::Healthy, 1.0)
    );
    assert_eq!(
        guardrail_check(0.1, 0.0, 5000, 5000, &config),
        Err(StatsError::ZeroVariance)
    );
    invalid(guardrail_check(f64::NAN, 0.1, 5000, 5000, &config));
    invalid(guardrail_check(
        0.1,
        0.1,
        5000,
        5000,
        &GuardrailConfig {
            alpha: 0.0,
            ..config
        },
    ));
    // A large harmful effect alarms; the same effect in the other direction does not.
    let harm = guardrail_proportion(
        &Proportion::new(5000, 50),
        &Proportion::new(5000, 150),
        &config,
    );
    assert_eq!(harm.unwrap().status, GuardrailStatus::Alarm);
    let good = guardrail_proportion(
        &Proportion::new(5000, 150),
        &Proportion::new(5000, 50),
        &config,
    );
    assert_eq!(good.unwrap().status, GuardrailStatus::Healthy);
    // 0 % against 100 %: the pooled standard error under H0 is 0.5 × √(2 / 5000) = 0.01, so
    // the worst breakage is a test with z = 100, not a zero-variance error.
    let broken = guardrail_proportion(
        &Proportion::new(5000, 0),
        &Proportion::new(5000, 5000),
        &config,
    )
    .unwrap();
    assert_eq!(broken.status, GuardrailStatus::Alarm);
    assert!((broken.std_error - 0.01).abs() < 1e-15, "{broken:?}");
    assert!((broken.z - 100.0).abs() < 1e-9, "{broken:?}");
}

#[test]
fn horizon_progress_counts_the_slowest_variant() {
    let progress = horizon_progress(&[500, 800, 1000], 1000);
    assert_eq!(progress.fraction, 0.5);
    assert!(!progress.reached);
    assert_eq!(progress.remaining_units, 700);
    let done = horizon_progress(&[1200, 1000], 1000);
    assert!(done.reached && done.fraction == 1.0 && done.remaining_units == 0);
    assert!(horizon_progress(&[], 1000).reached);
    assert!(horizon_progress(&[3], 0).reached);
}

#[test]
fn results_serialise_without_nulls() {
    let c = Proportion::new(1000, 100);
    let t = Proportion::new(1000, 130);
    let json = serde_json::to_string(&two_proportion_z_test(&c, &t, 0.05).unwrap()).unwrap();
    // The only optional field of a z-test is the absent df.
    assert_eq!(json.matches("null").count(), 2, "{json}");
    let json = serde_json::to_string(&beta_binomial(&c, &t).unwrap()).unwrap();
    assert!(!json.contains("null"), "{json}");
    let err = serde_json::to_string(&StatsError::ZeroVariance).unwrap();
    assert_eq!(err, r#"{"kind":"zero_variance"}"#);
}

#[test]
fn heterogeneity_degenerate_inputs() {
    use abx_stats::heterogeneity::{SubgroupEffect, cochran_q};
    let e = |estimate, std_error| SubgroupEffect {
        estimate,
        std_error,
    };
    invalid(cochran_q(&[e(f64::NAN, 0.1), e(0.0, 0.1)]));
    invalid(cochran_q(&[e(0.1, -0.1), e(0.0, 0.1)]));
    // Subgroups without variation carry no information and are left out.
    assert_eq!(
        cochran_q(&[e(0.1, 0.0), e(0.2, 0.1)]),
        Err(StatsError::InsufficientSample {
            required: 2,
            actual: 1
        })
    );
    let same = cochran_q(&[e(0.1, 0.05), e(0.1, 0.02), e(0.3, 0.0)]).unwrap();
    assert_eq!(
        (same.q, same.df, same.p_value, same.i_squared),
        (0.0, 1, 1.0, 0.0)
    );
    assert_eq!(same.subgroups, 2);
    // Tiny errors give huge but finite weights; overflowing ones are refused.
    invalid(cochran_q(&[e(1e300, 1e-300), e(-1e300, 1e-300)]));
}

#[test]
fn ratio_cuped_falls_back_without_a_varying_pre_exposure_ratio() {
    let ratio = |num: f64, den: f64, n: u64| RatioMoments {
        n,
        sum_num: num * n as f64 + 3.0,
        sum_num_sq: num * num * n as f64 + 40.0,
        sum_den: den * n as f64,
        sum_den_sq: den * den * n as f64 + 2.0,
        sum_num_den: num * den * n as f64 + 5.0,
    };
    let with_covariate = |metric: RatioMoments, covariate: RatioMoments| RatioCovariateMoments {
        metric,
        covariate,
        sum_num_pre_num: covariate.sum_num * metric.sum_num / metric.n as f64,
        sum_num_pre_den: covariate.sum_den * metric.sum_num / metric.n as f64,
        sum_den_pre_num: covariate.sum_num * metric.sum_den / metric.n as f64,
        sum_den_pre_den: covariate.sum_den * metric.sum_den / metric.n as f64,
    };
    let (c, t) = (ratio(2.0, 3.0, 50), ratio(2.2, 3.0, 60));
    let unadjusted = ratio_test(&c, &t, 0.05).unwrap();
    let none = |n| RatioMoments {
        n,
        sum_num: 0.0,
        sum_num_sq: 0.0,
        sum_den: 0.0,
        sum_den_sq: 0.0,
        sum_num_den: 0.0,
    };
    // No unit has history.
    let result = ratio_cuped_test(
        &with_covariate(c, none(50)),
        &with_covariate(t, none(60)),
        0.05,
    )
    .unwrap();
    assert!(!result.adjusted);
    assert_eq!((result.theta, result.variance_reduction), (0.0, 0.0));
    assert_eq!(result.comparison, unadjusted);
    // Every unit had the same ratio before: numerator 4 over denominator 2.
    let constant = |n: u64| RatioMoments {
        n,
        sum_num: 4.0 * n as f64,
        sum_num_sq: 16.0 * n as f64,
        sum_den: 2.0 * n as f64,
        sum_den_sq: 4.0 * n as f64,
        sum_num_den: 8.0 * n as f64,
    };
    let result = ratio_cuped_test(
        &with_covariate(c, constant(50)),
        &with_covariate(t, constant(60)),
        0.05,
    )
    .unwrap();
    assert!(!result.adjusted);
    assert_eq!(result.comparison, unadjusted);
    // The same ratio before exposure for every unit, 0.1 of a varying denominator: exact in
    // arithmetic, rounding noise in floating point, which must not pass for a covariate.
    let proportional = |n: u64| {
        let d: Vec<f64> = (0..n).map(|i| 1.0 + (i % 3) as f64).collect();
        RatioMoments {
            n,
            sum_num: d.iter().map(|d| 0.1 * d).sum(),
            sum_num_sq: d.iter().map(|d| (0.1 * d) * (0.1 * d)).sum(),
            sum_den: d.iter().sum(),
            sum_den_sq: d.iter().map(|d| d * d).sum(),
            sum_num_den: d.iter().map(|d| 0.1 * d * d).sum(),
        }
    };
    let result = ratio_cuped_test(
        &with_covariate(c, proportional(50)),
        &with_covariate(t, proportional(60)),
        0.05,
    )
    .unwrap();
    assert!(!result.adjusted, "{result:?}");
    assert_eq!(result.comparison, unadjusted);
    // The covariate must be over the same units.
    invalid(ratio_cuped_test(
        &with_covariate(c, constant(49)),
        &with_covariate(t, constant(60)),
        0.05,
    ));
}
