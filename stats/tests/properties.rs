//! Properties that must hold for every input, checked on random inputs with proptest:
//! p-values in [0, 1], intervals that contain their estimate, antisymmetry when the groups
//! are swapped (quantiles included), monotonicity of the multiple-comparison corrections,
//! and identities that tie the Bayesian and sequential quantities together.

use abx_stats::bayesian::{self, beta_binomial, prob_greater};
use abx_stats::group_sequential::{SpendingFunction, boundaries};
use abx_stats::power::{Mde, PowerConfig, conversion_power, conversion_sample_size};
use abx_stats::sequential::{SequentialConfig, accumulate, always_valid};
use abx_stats::{
    Comparison, Correction, CovariateMoments, Effect, Moments, Proportion, RatioCovariateMoments,
    RatioMoments, adjust_p_values, cuped_test, quantile, quantile_test, ratio_cuped_test,
    ratio_test, two_proportion_z_test, welch_t_test,
};
use proptest::prelude::*;

fn assert_effect_sane(effect: &Effect) {
    assert!(
        (0.0..=1.0).contains(&effect.p_value),
        "p = {}",
        effect.p_value
    );
    assert!(effect.std_error > 0.0 && effect.std_error.is_finite());
    assert!(effect.ci_lower <= effect.estimate && effect.estimate <= effect.ci_upper);
    assert!(effect.ci_lower.is_finite() && effect.ci_upper.is_finite());
}

fn assert_comparison_sane(c: &Comparison) {
    assert_effect_sane(&c.absolute);
    if let Some(lift) = c.relative.effect() {
        assert_effect_sane(lift);
    }
}

/// The same comparison with the groups swapped must mirror the original.
fn assert_mirrored(forward: &Comparison, backward: &Comparison) {
    let (f, b) = (&forward.absolute, &backward.absolute);
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()));
    assert!(close(f.estimate, -b.estimate));
    assert!(close(f.statistic, -b.statistic));
    assert!(close(f.p_value, b.p_value));
    assert!(close(f.ci_lower, -b.ci_upper) && close(f.ci_upper, -b.ci_lower));
}

fn proportion() -> impl Strategy<Value = Proportion> {
    (1_u64..50_000)
        .prop_flat_map(|units| (Just(units), 0..=units).prop_map(|(u, c)| Proportion::new(u, c)))
}

fn sample(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-1_000.0_f64..1_000.0, len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn z_test_is_sane_and_antisymmetric(c in proportion(), t in proportion(), alpha in 0.001_f64..0.5) {
        match (two_proportion_z_test(&c, &t, alpha), two_proportion_z_test(&t, &c, alpha)) {
            (Ok(forward), Ok(backward)) => {
                // The unpooled SE can be zero when each group is constant; the interval is
                // then the single point estimate, which the general check would reject.
                if forward.absolute.std_error > 0.0 {
                    assert_comparison_sane(&forward);
                }
                assert_mirrored(&forward, &backward);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "asymmetric outcome {a:?} / {b:?}"),
        }
    }

    #[test]
    fn welch_is_sane_and_antisymmetric(x in sample(2..60), y in sample(2..60), alpha in 0.001_f64..0.5) {
        let (c, t) = (Moments::from_values(&x), Moments::from_values(&y));
        let forward = welch_t_test(&c, &t, alpha).unwrap();
        let backward = welch_t_test(&t, &c, alpha).unwrap();
        assert_comparison_sane(&forward);
        assert_mirrored(&forward, &backward);
        let df = forward.absolute.df.unwrap();
        // Welch's df lies between the smaller group's n − 1 and the pooled n_c + n_t − 2.
        let lower = (x.len().min(y.len()) - 1) as f64;
        prop_assert!(df >= lower * (1.0 - 1e-9) && df <= (x.len() + y.len() - 2) as f64 * (1.0 + 1e-9));
    }

    /// Quantiles of any units' events (values of any sign and size, ties, single events):
    /// an estimate within the bucket accuracy of the events' range, a finite non-negative
    /// variance, and a sane, antisymmetric test whenever one exists; never a panic.
    #[test]
    fn quantiles_are_sane_and_antisymmetric(
        units in prop::collection::vec(prop::collection::vec(-1e6_f64..1e6, 1..12), 2..60),
        split in 1_usize..59,
        p in 0.01_f64..0.99,
    ) {
        let histograms: Vec<Vec<(i32, u64)>> = units
            .iter()
            .map(|u| quantile::histogram(u.iter().map(|&v| (quantile::bucket(v), 1))))
            .collect();
        let split = split.min(histograms.len() - 1);
        let estimate = |hs: &[Vec<(i32, u64)>]| {
            quantile::quantile_of_units(hs.iter().map(Vec::as_slice), p)
        };
        let (c, t) = (estimate(&histograms[..split]), estimate(&histograms[split..]));
        for (q, group) in [(&c, &units[..split]), (&t, &units[split..])] {
            let Ok(q) = q else { continue };
            let values: Vec<f64> = group.iter().flatten().copied().collect();
            let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let slack = 2.0 * quantile::RELATIVE_ACCURACY * lo.abs().max(hi.abs()) + 1e-9;
            assert!(q.estimate >= lo - slack && q.estimate <= hi + slack, "{q:?} outside [{lo}, {hi}]");
            assert!(q.variance.is_finite() && q.variance >= 0.0, "{q:?}");
            assert_eq!(q.events, values.len() as u64);
        }
        if let (Ok(c), Ok(t)) = (c, t)
            && let (Ok(forward), Ok(backward)) = (quantile_test(&c, &t, 0.05), quantile_test(&t, &c, 0.05))
        {
            assert_comparison_sane(&forward);
            assert_mirrored(&forward, &backward);
        }
    }

    #[test]
    fn ratio_is_sane_and_antisymmetric(
        units in prop::collection::vec((0.0_f64..50.0, 1.0_f64..10.0), 4..80),
        split in 2_usize..40,
    ) {
        let split = split.min(units.len() - 2);
        let moments = |rows: &[(f64, f64)]| RatioMoments {
            n: rows.len() as u64,
            sum_num: rows.iter().map(|r| r.0).sum(),
            sum_num_sq: rows.iter().map(|r| r.0 * r.0).sum(),
            sum_den: rows.iter().map(|r| r.1).sum(),
            sum_den_sq: rows.iter().map(|r| r.1 * r.1).sum(),
            sum_num_den: rows.iter().map(|r| r.0 * r.1).sum(),
        };
        let (c, t) = (moments(&units[..split]), moments(&units[split..]));
        if let (Ok(forward), Ok(backward)) = (ratio_test(&c, &t, 0.05), ratio_test(&t, &c, 0.05)) {
            assert_comparison_sane(&forward);
            assert_mirrored(&forward, &backward);
        }
    }

    #[test]
    fn cuped_is_invariant_to_shifting_the_covariate(
        rows in prop::collection::vec((-50.0_f64..50.0, -20.0_f64..20.0), 6..80),
        shift in -100.0_f64..100.0,
    ) {
        let split = rows.len() / 2;
        let moments = |rows: &[(f64, f64)], shift: f64| {
            let mut m = CovariateMoments { n: rows.len() as u64, sum_y: 0.0, sum_y_sq: 0.0, sum_x: 0.0, sum_x_sq: 0.0, sum_xy: 0.0 };
            for &(y, x0) in rows {
                let x = x0 + shift;
                m.sum_y += y; m.sum_y_sq += y * y; m.sum_x += x; m.sum_x_sq += x * x; m.sum_xy += x * y;
            }
            m
        };
        let base = cuped_test(&moments(&rows[..split], 0.0), &moments(&rows[split..], 0.0), 0.05);
        let moved = cuped_test(&moments(&rows[..split], shift), &moments(&rows[split..], shift), 0.05);
        if let (Ok(a), Ok(b)) = (base, moved) {
            assert_comparison_sane(&a.comparison);
            let tol = |x: f64| 1e-6 * (1.0 + x.abs());
            prop_assert!((a.theta - b.theta).abs() <= tol(a.theta));
            prop_assert!((a.comparison.absolute.estimate - b.comparison.absolute.estimate).abs() <= tol(a.comparison.absolute.estimate));
            prop_assert!((a.comparison.absolute.p_value - b.comparison.absolute.p_value).abs() <= 1e-6);
        }
    }

    #[test]
    fn ratio_cuped_is_sane_antisymmetric_and_invariant_to_the_covariates_scale(
        rows in prop::collection::vec((0.0_f64..100.0, 1.0_f64..10.0, 0.0_f64..100.0, 0.0_f64..10.0), 6..80),
        scale in 0.01_f64..100.0,
    ) {
        let split = rows.len() / 2;
        // (a, b, c, d): numerator and denominator after exposure, and before it.
        type Row = (f64, f64, f64, f64);
        let moments = |rows: &[Row], scale: f64| {
            let ratio = |pairs: Vec<(f64, f64)>| RatioMoments {
                n: pairs.len() as u64,
                sum_num: pairs.iter().map(|p| p.0).sum(),
                sum_num_sq: pairs.iter().map(|p| p.0 * p.0).sum(),
                sum_den: pairs.iter().map(|p| p.1).sum(),
                sum_den_sq: pairs.iter().map(|p| p.1 * p.1).sum(),
                sum_num_den: pairs.iter().map(|p| p.0 * p.1).sum(),
            };
            let sum = |f: &dyn Fn(&Row) -> f64| rows.iter().map(f).sum::<f64>();
            RatioCovariateMoments {
                metric: ratio(rows.iter().map(|r| (r.0, r.1)).collect()),
                covariate: ratio(rows.iter().map(|r| (scale * r.2, r.3)).collect()),
                sum_num_pre_num: sum(&|r| r.0 * scale * r.2),
                sum_num_pre_den: sum(&|r| r.0 * r.3),
                sum_den_pre_num: sum(&|r| r.1 * scale * r.2),
                sum_den_pre_den: sum(&|r| r.1 * r.3),
            }
        };
        let (c, t) = (&rows[..split], &rows[split..]);
        let base = ratio_cuped_test(&moments(c, 1.0), &moments(t, 1.0), 0.05);
        let scaled = ratio_cuped_test(&moments(c, scale), &moments(t, scale), 0.05);
        let swapped = ratio_cuped_test(&moments(t, 1.0), &moments(c, 1.0), 0.05);
        if let (Ok(a), Ok(b), Ok(s)) = (base, scaled, swapped) {
            assert_comparison_sane(&a.comparison);
            assert_mirrored(&a.comparison, &s.comparison);
            prop_assert_eq!(a.adjusted, b.adjusted);
            // Measuring the covariate's numerator in other units changes θ, not the result.
            let tol = |x: f64| 1e-6 * (1.0 + x.abs());
            prop_assert!((a.comparison.absolute.estimate - b.comparison.absolute.estimate).abs() <= tol(a.comparison.absolute.estimate));
            prop_assert!((a.comparison.absolute.std_error - b.comparison.absolute.std_error).abs() <= tol(a.comparison.absolute.std_error));
            prop_assert!((a.variance_reduction - b.variance_reduction).abs() <= 1e-6);
        }
    }

    #[test]
    fn corrections_are_monotone_bounded_and_ordered(p in prop::collection::vec(0.0_f64..=1.0, 0..40)) {
        let bh = adjust_p_values(&p, Correction::BenjaminiHochberg);
        let holm = adjust_p_values(&p, Correction::Holm);
        let bonferroni = adjust_p_values(&p, Correction::Bonferroni);
        for i in 0..p.len() {
            prop_assert!(p[i] <= bh[i] + 1e-15 && bh[i] <= 1.0);
            // Holm never rejects less than Bonferroni, BH never less than Holm.
            prop_assert!(bh[i] <= holm[i] + 1e-15 && holm[i] <= bonferroni[i] + 1e-15);
            for j in 0..p.len() {
                if p[i] <= p[j] {
                    prop_assert!(bh[i] <= bh[j] && holm[i] <= holm[j]);
                }
            }
        }
    }

    #[test]
    fn sequential_p_value_and_confidence_sequence_agree(
        estimate in -1.0_f64..1.0, se in 0.001_f64..1.0, units in 1_u64..1_000_000, alpha in 0.001_f64..0.3,
    ) {
        let config = SequentialConfig { alpha, tuning_units: 10_000.0 };
        let r = always_valid(estimate, se, units, &config).unwrap();
        prop_assert!((0.0..=1.0).contains(&r.p_value));
        prop_assert!(r.ci_lower <= estimate && estimate <= r.ci_upper);
        // Rejecting H0: θ = 0 and excluding 0 from the sequence are the same event, up to
        // rounding at the exact boundary.
        let excluded = r.ci_lower > 0.0 || r.ci_upper < 0.0;
        let margin = (r.p_value - alpha).abs() > 1e-9;
        prop_assert!(!margin || r.reject == excluded);
        // The always-valid p-value is never smaller than the fixed-horizon one.
        let fixed = 2.0 * 0.5 * erfc_approx(estimate.abs() / se / std::f64::consts::SQRT_2);
        prop_assert!(r.p_value >= fixed * (1.0 - 1e-6) - 1e-12);
    }

    #[test]
    fn accumulated_sequence_is_monotone(
        looks in prop::collection::vec((-0.05_f64..0.05, 0.001_f64..0.05), 1..20),
    ) {
        let config = SequentialConfig::default();
        let mut running = None;
        for (k, &(estimate, se)) in looks.iter().enumerate() {
            let current = always_valid(estimate, se, (k as u64 + 1) * 1000, &config).unwrap();
            let next = match &running { None => current, Some(prev) => accumulate(prev, &current) };
            if let Some(prev) = &running {
                prop_assert!(next.p_value <= prev.p_value);
                prop_assert!(next.ci_lower <= next.ci_upper);
            }
            running = Some(next);
        }
    }

    #[test]
    fn chance_to_beat_is_complementary_and_losses_differ_by_the_mean_gap(c in proportion(), t in proportion()) {
        let forward = beta_binomial(&c, &t).unwrap();
        let backward = beta_binomial(&t, &c).unwrap();
        prop_assert!((forward.chance_to_beat_control + backward.chance_to_beat_control - 1.0).abs() < 1e-9);
        // E[(c − t)⁺] − E[(t − c)⁺] = E[c − t].
        let gap = forward.control_mean - forward.treatment_mean;
        prop_assert!((forward.expected_loss - forward.expected_loss_control - gap).abs() < 1e-9);
        prop_assert!((forward.expected_loss - backward.expected_loss_control).abs() < 1e-12);
    }

    #[test]
    fn prob_greater_respects_the_reflection_identity(
        a1 in 1_u32..3000, b1 in 1_u32..3000, a2 in 1_u32..3000, b2 in 1_u32..3000,
    ) {
        // X₁ > X₂ ⇔ 1 − X₂ > 1 − X₁, and 1 − X ~ Beta(b, a): the two sums run over
        // different indices, so agreement checks the summation itself.
        let (a1, b1, a2, b2) = (f64::from(a1), f64::from(b1), f64::from(a2), f64::from(b2));
        let direct = prob_greater(a1, b1, a2, b2);
        let reflected = prob_greater(b2, a2, b1, a1);
        prop_assert!((direct - reflected).abs() < 1e-10, "{direct} vs {reflected}");
    }

    #[test]
    fn gaussian_bayes_is_complementary(x in sample(2..50), y in sample(2..50)) {
        let (c, t) = (Moments::from_values(&x), Moments::from_values(&y));
        let forward = bayesian::gaussian(&c, &t).unwrap();
        let backward = bayesian::gaussian(&t, &c).unwrap();
        prop_assert!((forward.chance_to_beat_control + backward.chance_to_beat_control - 1.0).abs() < 1e-12);
        let gap = forward.control_mean - forward.treatment_mean;
        prop_assert!((forward.expected_loss - forward.expected_loss_control - gap).abs() < 1e-9 * (1.0 + gap.abs()));
    }

    #[test]
    fn planned_sample_reaches_the_requested_power(
        baseline in 0.01_f64..0.9, relative in 0.02_f64..0.5, power in 0.5_f64..0.99, variants in 2_u32..6,
    ) {
        prop_assume!(baseline * (1.0 + relative) < 0.99);
        let config = PowerConfig { alpha: 0.05, power, variants, daily_traffic: Some(1000.0), ..PowerConfig::default() };
        let plan = conversion_sample_size(baseline, Mde::Relative(relative), &config).unwrap();
        let at_plan = conversion_power(baseline, Mde::Relative(relative), plan.units_per_variant as f64, 0.05, variants).unwrap();
        prop_assert!(at_plan >= power - 1e-9);
        let below = conversion_power(baseline, Mde::Relative(relative), plan.exact_units_per_variant * 0.99, 0.05, variants).unwrap();
        prop_assert!(below < power);
        prop_assert_eq!(plan.total_units, plan.units_per_variant * u64::from(variants));
        prop_assert_eq!(plan.expected_days, Some((plan.total_units as f64 / 1000.0).ceil() as u64));
    }
}

/// erfc through the normal survival function of the crate's public API would be circular, so
/// the fixed-horizon comparison uses the Abramowitz–Stegun 7.1.26 bound, which is accurate to
/// 1.5e-7 absolute: enough for an inequality with the 1e-6 slack above.
fn erfc_approx(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (poly * (-x * x).exp() - 1.5e-7).max(0.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn group_sequential_spends_exactly_and_monotonically(
        mut fractions in prop::collection::vec(0.05_f64..1.0, 1..6),
        alpha in 0.005_f64..0.2,
        pocock in any::<bool>(),
    ) {
        fractions.sort_by(f64::total_cmp);
        fractions.dedup_by(|a, b| (*a - *b).abs() < 0.02);
        let spending = if pocock { SpendingFunction::Pocock } else { SpendingFunction::OBrienFleming };
        let looks = boundaries(&fractions, alpha, spending).unwrap();
        let mut spent = 0.0;
        for look in &looks {
            prop_assert!(look.cumulative_alpha >= spent && look.cumulative_alpha <= alpha + 1e-15);
            prop_assert!((look.cumulative_alpha - spent - look.incremental_alpha).abs() < 1e-15);
            // A boundary can never be laxer than the unconditional quantile of its increment.
            prop_assert!(look.nominal_p >= look.incremental_alpha * (1.0 - 1e-9));
            prop_assert!(look.z_boundary.is_finite() && look.z_boundary > 0.0);
            spent = look.cumulative_alpha;
        }
    }
}

/// A tiny positive control mean with a large standard error and few degrees of freedom put
/// the log interval's upper end past e^709; the lift is then unavailable, not infinite.
#[test]
fn a_lift_whose_interval_overflows_is_unavailable() {
    use abx_stats::{LiftUnavailable, RelativeLift, relative_lift};
    let lift = relative_lift(1e-6, 400.0, 5.0, 1.0, Some(1.5), 0.05);
    assert_eq!(
        lift,
        RelativeLift::Unavailable {
            reason: LiftUnavailable::ZeroBaseline
        }
    );
    // A merely wide interval is still reported.
    let wide = relative_lift(0.5, 0.04, 0.8, 0.04, Some(3.0), 0.05);
    let effect = wide.effect().expect("estimated");
    assert!(effect.ci_upper.is_finite() && effect.ci_upper > effect.estimate);
}

/// A unit's histogram: up to six buckets among a few dozen, so that units share buckets.
fn unit_histogram() -> impl Strategy<Value = quantile::Histogram> {
    prop::collection::vec((-20_i32..20, 1_u64..40), 1..6).prop_map(quantile::histogram)
}

/// Every unit's bucket sums added per bucket, `sign` times.
fn add_bucket_sums(
    sums: &mut std::collections::BTreeMap<i32, quantile::BucketSums>,
    units: &[quantile::Histogram],
    sign: i64,
) {
    for unit in units {
        for (b, s) in quantile::BucketSums::of_unit(unit) {
            sums.entry(b).or_default().add(&s, sign);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Bucket sums kept per group and moved by differences (units' old histograms taken
    /// away, their new ones added, as a warehouse tick does) give exactly the estimate of a
    /// pass over the units' current histograms.
    #[test]
    fn bucket_sums_moved_by_differences_give_the_pass_over_the_units(
        before in prop::collection::vec(unit_histogram(), 0..30),
        changed in prop::collection::vec(unit_histogram(), 0..10),
        p in 0.01_f64..0.99,
    ) {
        let mut sums = std::collections::BTreeMap::new();
        add_bucket_sums(&mut sums, &before, 1);
        // The first units' histograms change (those beyond `before` are new units).
        let replaced = changed.len().min(before.len());
        add_bucket_sums(&mut sums, &before[..replaced], -1);
        add_bucket_sums(&mut sums, &changed, 1);
        let now: Vec<&[(i32, u64)]> = changed
            .iter()
            .chain(&before[replaced..])
            .map(Vec::as_slice)
            .collect();
        let sums: Vec<(i32, quantile::BucketSums)> = sums
            .into_iter()
            .filter(|(_, s)| *s != quantile::BucketSums::default())
            .collect();
        prop_assert_eq!(
            quantile::quantile_of_bucket_sums(&sums, p),
            quantile::quantile_of_units(now.iter().copied(), p)
        );
    }
}
