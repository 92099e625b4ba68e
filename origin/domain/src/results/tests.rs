//! The analysis over rollup fixtures: what `compute` makes of an experiment's rollups, with
//! reference values computed independently (closed forms, written out below).

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::model::catalog::{Direction, Metric, MetricKind};
use crate::model::experiment::{Analysis, AnalysisMode, Experiment, VariantInput};
use crate::rollup::{CappedRollup, ExposureRollup, InteractionCell, MetricRollup, Rollups, Sums};

const DAY: i64 = 20_000;
const DAY_MS: i64 = 86_400_000;
/// Thirty days after the fixtures' experiments started: their minimum duration is over and
/// every fixture day is complete.
const NOW: i64 = (DAY + 30) * DAY_MS;

fn experiment(key: &str, guardrails: &[&str]) -> Experiment {
    let analysis = Analysis {
        mode: AnalysisMode::FixedHorizon,
        planned_units_per_variant: Some(10_000),
        ..Analysis::default()
    };
    let variants = [("control", 5_000), ("treatment", 5_000)];
    Experiment::running(
        key,
        &variants,
        "converted",
        guardrails,
        analysis,
        DAY * DAY_MS,
    )
}

fn metric(key: &str, kind: MetricKind, direction: Direction) -> (String, Metric) {
    (key.into(), Metric::new(key, kind, direction))
}

fn exposures(variant: &str, units: i64) -> ExposureRollup {
    ExposureRollup {
        variant: variant.into(),
        day: DAY,
        units,
        multiple: 0,
    }
}

/// A conversion metric's rollup: `converted` of the variant's units converted.
fn conversions(variant: &str, metric: &str, converted: f64) -> MetricRollup {
    MetricRollup {
        variant: variant.into(),
        metric: metric.into(),
        day: DAY,
        sums: Sums {
            sum_x: converted,
            sum_x2: converted,
            ..Sums::default()
        },
    }
}

/// 10,000 units in each arm; 1,000 control and 1,100 treatment conversions.
fn ten_percent_lift() -> Rollups {
    Rollups {
        exposures: vec![exposures("control", 10_000), exposures("treatment", 10_000)],
        metrics: vec![
            conversions("control", "converted", 1_000.0),
            conversions("treatment", "converted", 1_100.0),
        ],
        ..Rollups::default()
    }
}

/// Asserts that the results recommend an action starting with `start`.
#[track_caller]
fn recommends(results: &Results, start: &str) {
    assert!(
        results.recommended_action.starts_with(start),
        "expected \"{start}…\", got \"{}\"",
        results.recommended_action
    );
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0)
}

#[test]
fn a_conversion_lift_is_estimated_and_tested_against_control() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )]);
    let results = compute(
        &experiment("checkout", &[]),
        &metrics,
        &ten_percent_lift(),
        NOW,
        false,
    );
    assert_eq!(results.variants["control"].impressions, 10_000);
    assert_eq!(results.variants["treatment"].conversions, Some(1_100));
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.variant, "treatment");
    let absolute = comparison.absolute.expect("absolute effect");
    assert!(close(absolute.estimate, 0.01), "{absolute:?}");
    // Two-proportion z test, pooled rate 2,100 / 20,000 = 0.105 under H0:
    // z = 0.01 / sqrt(0.105 × 0.895 × 2 / 10,000) = 2.3066347738170117,
    // p = erfc(z / √2) = 0.021075189273797767.
    let p = comparison.p_value.expect("p-value");
    assert!(close(p, 0.021_075_189_273_797_767), "p = {p}");
    let relative = comparison.relative.expect("relative lift");
    assert!(close(relative.estimate, 0.1), "{relative:?}");
    assert!(comparison.significant);
    assert_eq!(comparison.improvement, Some(true));
    assert_eq!(results.lift, Some(relative.estimate));
    assert_eq!(results.p_value, Some(p));
    assert!(!results.srm.expect("srm").mismatch);
}

#[test]
fn a_fixed_horizon_test_is_not_read_before_its_planned_sample() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )]);
    let mut e = experiment("checkout", &[]);
    e.analysis.planned_units_per_variant = Some(20_000);
    let results = compute(&e, &metrics, &ten_percent_lift(), NOW, false);
    assert_eq!(results.planned_sample_fraction, Some(0.5));
    assert!(!results.metrics[0].comparisons[0].significant);
    recommends(&results, "Keep running: 50%");
    e.status = Status::Completed;
    let results = compute(&e, &metrics, &ten_percent_lift(), NOW, false);
    recommends(&results, "Ended early: at 50% of its planned sample");
}

#[test]
fn a_rise_in_a_lower_is_better_metric_is_no_improvement() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Decrease,
    )]);
    let results = compute(
        &experiment("checkout", &[]),
        &metrics,
        &ten_percent_lift(),
        NOW,
        false,
    );
    assert_eq!(results.metrics[0].comparisons[0].improvement, Some(false));
}

#[test]
fn a_split_far_from_the_weights_is_a_sample_ratio_mismatch() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )]);
    let mut rollups = ten_percent_lift();
    rollups.exposures[1].units = 11_000;
    let results = compute(&experiment("checkout", &[]), &metrics, &rollups, NOW, false);
    let srm = results.srm.clone().expect("srm");
    // χ² = 2 × 500² / 10,500 against the expected 10,500 per arm.
    assert!(close(srm.chi2, 2.0 * 500.0 * 500.0 / 10_500.0), "{srm:?}");
    assert!(srm.mismatch);
    recommends(&results, "Invalid");
}

#[test]
fn a_guardrail_that_clearly_degrades_raises_its_alarm() {
    let metrics = HashMap::from([
        metric("converted", MetricKind::Conversion, Direction::Increase),
        metric("crashed", MetricKind::Conversion, Direction::Decrease),
    ]);
    let mut rollups = ten_percent_lift();
    rollups
        .metrics
        .push(conversions("control", "crashed", 100.0));
    rollups
        .metrics
        .push(conversions("treatment", "crashed", 400.0));
    let results = compute(
        &experiment("checkout", &["crashed"]),
        &metrics,
        &rollups,
        NOW,
        false,
    );
    let guardrail = &results.guardrails[0];
    assert_eq!(
        (guardrail.metric.as_str(), guardrail.variant.as_str()),
        ("crashed", "treatment")
    );
    assert_eq!(guardrail.status, "alarm");
    recommends(&results, "Stop");
}

#[test]
fn rollups_of_later_days_join_the_daily_series_on_their_day() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )]);
    let mut rollups = ten_percent_lift();
    let mut next_day = ten_percent_lift();
    for r in &mut next_day.exposures {
        r.day += 1;
    }
    for r in &mut next_day.metrics {
        r.day += 1;
    }
    rollups.exposures.extend(next_day.exposures);
    rollups.metrics.extend(next_day.metrics);
    let results = compute(&experiment("checkout", &[]), &metrics, &rollups, NOW, true);
    assert_eq!(results.series.expect("series").len(), 2);
    assert_eq!(results.variants["control"].impressions, 20_000);
}

#[test]
fn interactions_need_units_exposed_to_both_experiments() {
    let (a, b) = (experiment("a", &[]), experiment("b", &[]));
    let (_, converted) = metric("converted", MetricKind::Conversion, Direction::Increase);
    assert!(interactions::analyse(&a, &b, &converted, &[]).is_none());
    let cell = |va: &str, vb: &str, converted: f64| InteractionCell {
        va: va.into(),
        vb: vb.into(),
        n: 5_000,
        sx: converted,
        sxx: converted,
    };
    let cells = [
        cell("control", "control", 500.0),
        cell("treatment", "control", 550.0),
        cell("control", "treatment", 500.0),
        cell("treatment", "treatment", 550.0),
    ];
    let view = interactions::analyse(&a, &b, &converted, &cells).expect("interaction");
    assert_eq!(view.shared_units, 20_000);
    // A's effect is +1 point whatever B's variant: no interaction.
    assert!(close(view.effect_in_b_control, 0.01));
    assert!(close(view.effect_in_b_treatment, 0.01));
    assert!(view.interaction.estimate.abs() < 1e-12);
}

#[test]
fn experiments_in_one_layer_are_no_interaction_candidates() {
    let metrics = HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )]);
    let mut running = vec![experiment("a", &[]), experiment("b", &[])];
    assert_eq!(interactions::candidates(&running, &metrics).len(), 1);
    for e in &mut running {
        e.layer_id = Some("layer".into());
    }
    assert!(interactions::candidates(&running, &metrics).is_empty());
}

/// Issue 25, item 9: a comparison that cannot be computed counts as p = 1 in the family
/// the correction controls, as docs/statistics.md §6 says.
#[test]
fn a_comparison_that_cannot_be_computed_still_counts_in_the_correction() {
    let metrics = HashMap::from([
        metric("converted", MetricKind::Conversion, Direction::Increase),
        metric("revenue", MetricKind::Mean, Direction::Increase),
    ]);
    let mut e = experiment("checkout", &[]);
    e.secondary_metrics = vec!["revenue".into()];
    e.analysis.correction = crate::model::experiment::Correction::Bonferroni;
    // No revenue events at all: every unit's value is 0 in both arms, so the test has no
    // variance to work with and cannot be computed.
    let results = compute(&e, &metrics, &ten_percent_lift(), NOW, false);
    let revenue = &results.metrics[1].comparisons[0];
    assert!(
        revenue.p_value.is_none() && revenue.note.is_some(),
        "{revenue:?}"
    );
    assert!(revenue.adjusted_p_value.is_none());
    let primary = &results.metrics[0].comparisons[0];
    let (raw, adjusted) = (
        primary.p_value.expect("p"),
        primary.adjusted_p_value.expect("adjusted"),
    );
    // Bonferroni over two comparisons, not one.
    assert!(close(adjusted, 2.0 * raw), "raw {raw}, adjusted {adjusted}");
}

fn ratio_metric(key: &str, denominator: &str) -> (String, Metric) {
    let (key, mut metric) = metric(key, MetricKind::Ratio, Direction::Decrease);
    metric.denominator_event_type = Some(denominator.into());
    (key, metric)
}

/// A ratio rollup: Σ numerator and Σ denominator over the variant's units.
fn ratio(variant: &str, metric: &str, numerator: f64, denominator: f64) -> MetricRollup {
    MetricRollup {
        variant: variant.into(),
        metric: metric.into(),
        day: DAY,
        sums: Sums {
            sum_x: numerator,
            sum_x2: numerator,
            sum_y: denominator,
            sum_y2: denominator * 2.0,
            sum_xy: numerator,
            ..Sums::default()
        },
    }
}

/// Issue 25, item 4: a guardrail whose treatment lost what control has (here every session
/// event: a ratio with no denominator) is the worst breakage, and alarms instead of being
/// dropped because its statistics cannot be computed.
#[test]
fn a_guardrail_whose_treatment_lost_its_data_alarms() {
    let metrics = HashMap::from([
        metric("converted", MetricKind::Conversion, Direction::Increase),
        ratio_metric("errors_per_session", "session"),
    ]);
    let mut rollups = ten_percent_lift();
    rollups
        .metrics
        .push(ratio("control", "errors_per_session", 50.0, 20_000.0));
    rollups
        .metrics
        .push(ratio("treatment", "errors_per_session", 0.0, 0.0));
    let e = experiment("checkout", &["errors_per_session"]);
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let guardrail = &results.guardrails[0];
    assert_eq!(guardrail.status, "alarm", "{guardrail:?}");
    assert!(
        guardrail
            .note
            .as_deref()
            .is_some_and(|n| n.contains("cannot be computed"))
    );
    recommends(&results, "Stop");
}

/// Per-unit sums of a ratio: Σx, Σx², Σy, Σy², Σxy.
fn ratio_sums([sum_x, sum_x2, sum_y, sum_y2, sum_xy]: [f64; 5]) -> Sums {
    Sums {
        sum_x,
        sum_x2,
        sum_y,
        sum_y2,
        sum_xy,
        ..Sums::default()
    }
}

/// The guardrail check of an experiment whose `errors_per_session` guardrail has these
/// sums in control and the treatment, over `ten_percent_lift`'s 10,000 units per arm.
fn errors_per_session_guardrail(control: Sums, treatment: Sums) -> Results {
    let metrics = HashMap::from([
        metric("converted", MetricKind::Conversion, Direction::Increase),
        ratio_metric("errors_per_session", "session"),
    ]);
    let e = experiment("checkout", &["errors_per_session"]);
    let mut rollups = ten_percent_lift();
    for (variant, sums) in [("control", control), ("treatment", treatment)] {
        rollups.metrics.push(MetricRollup {
            variant: variant.into(),
            metric: "errors_per_session".into(),
            day: DAY,
            sums,
        });
    }
    compute(&e, &metrics, &rollups, NOW, false)
}

/// Without a test, a guardrail alarms only on as much data as a test would need: a ratio
/// whose denominator one unit per arm carries (by chance none in the treatment, or no
/// variance in either) is `insufficient_data`, never an alarm that pauses a healthy
/// experiment, although 10,000 units per arm are exposed.
#[test]
fn sparse_guardrails_do_not_alarm() {
    // One unit with a session in control (3 errors in 2 sessions), and the same unit's
    // kind in the treatment with more errors, or none with a session at all.
    let one_unit = |errors: f64| ratio_sums([errors, errors * errors, 2.0, 4.0, errors * 2.0]);
    for treatment in [one_unit(6.0), Sums::default()] {
        let results = errors_per_session_guardrail(one_unit(3.0), treatment);
        let guardrail = &results.guardrails[0];
        assert_eq!(guardrail.status, "insufficient_data", "{guardrail:?}");
        assert!(!results.recommended_action.starts_with("Stop"));
    }
}

/// The floor on units carrying the metric stays low: a ratio whose sessions 500 of 10,000
/// units carry per arm (an effective count of 500, under the 1,000 exposed units a check
/// needs) alarms when the treatment's errors per session quadruple.
#[test]
fn a_harm_carried_by_few_units_still_alarms() {
    // 500 units with two sessions each; `errors` of them with one error.
    let sessions = |errors: f64| ratio_sums([errors, errors, 1_000.0, 2_000.0, 2.0 * errors]);
    let results = errors_per_session_guardrail(sessions(100.0), sessions(400.0));
    assert_eq!(
        results.guardrails[0].status, "alarm",
        "{:?}",
        results.guardrails[0]
    );
}

/// A guardrail that cannot be checked although both arms have units is shown as an error,
/// and no "Ship" is recommended over it.
#[test]
fn a_guardrail_that_cannot_be_checked_blocks_shipping() {
    let metrics = HashMap::from([
        metric("converted", MetricKind::Conversion, Direction::Increase),
        ratio_metric("errors_per_session", "session"),
    ]);
    let e = experiment("checkout", &["errors_per_session"]);
    // No session events in either arm: neither ratio exists.
    let results = compute(&e, &metrics, &ten_percent_lift(), NOW, false);
    let guardrail = &results.guardrails[0];
    assert_eq!(guardrail.status, "error", "{guardrail:?}");
    assert!(guardrail.note.is_some());
    recommends(&results, "Investigate");
    // The same experiment without the guardrail would ship.
    let shipped = compute(
        &experiment("checkout", &[]),
        &metrics,
        &ten_percent_lift(),
        NOW,
        false,
    );
    recommends(&shipped, "Ship");
}

/// Rollups for one day of a conversion test: units and conversions per arm.
fn day_of(day: i64, units: i64, control: f64, treatment: f64) -> Rollups {
    let at = |mut r: ExposureRollup| {
        r.day = day;
        r
    };
    let conv = |variant: &str, converted: f64| {
        let mut r = conversions(variant, "converted", converted);
        r.day = day;
        r
    };
    Rollups {
        exposures: vec![
            at(exposures("control", units)),
            at(exposures("treatment", units)),
        ],
        metrics: vec![conv("control", control), conv("treatment", treatment)],
        ..Rollups::default()
    }
}

fn days(list: &[Rollups]) -> Rollups {
    let mut all = Rollups::default();
    for r in list {
        all.exposures.extend(r.exposures.iter().cloned());
        all.metrics.extend(r.metrics.iter().cloned());
    }
    all
}

fn conversion_metrics() -> HashMap<String, Metric> {
    HashMap::from([metric(
        "converted",
        MetricKind::Conversion,
        Direction::Increase,
    )])
}

/// Issue 25, item 3: a fixed-horizon test is read once, with the data of the day its plan
/// was reached; data arriving afterwards is shown as descriptive and never re-tested.
#[test]
fn a_fixed_horizon_test_is_frozen_at_its_planned_sample() {
    let mut e = experiment("checkout", &[]);
    e.analysis.min_duration_days = 0;
    // The plan (10,000 a variant) is reached on the first day with a significant lift; the
    // next days cancel it.
    let rollups = days(&[
        day_of(DAY, 10_000, 1_000.0, 1_100.0),
        day_of(DAY + 1, 10_000, 1_000.0, 900.0),
    ]);
    let results = compute(&e, &conversion_metrics(), &rollups, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(
        results.analysed_through.as_deref(),
        Some(date(DAY).as_str())
    );
    assert!(comparison.significant, "{comparison:?}");
    assert!(close(
        comparison.p_value.expect("p"),
        0.021_075_189_273_797_767
    ));
    let latest = comparison
        .latest
        .as_ref()
        .expect("latest data, descriptive");
    assert_eq!(latest.treatment_units, 20_000);
    assert!(latest.absolute.expect("latest").estimate.abs() < 1e-12);
    // While the plan's day is not over, nothing is tested yet.
    let same_day = compute(
        &e,
        &conversion_metrics(),
        &rollups,
        DAY * DAY_MS + 3_600_000,
        false,
    );
    assert!(!same_day.metrics[0].comparisons[0].significant);
    assert!(same_day.analysed_through.is_none());
}

/// A group-sequential experiment with five looks and no minimum duration.
fn five_looks() -> Experiment {
    let mut e = experiment("checkout", &[]);
    e.analysis.mode = AnalysisMode::GroupSequential;
    e.analysis.looks = Some(5);
    e.analysis.min_duration_days = 0;
    e
}

/// Issue 25, item 1: a group-sequential test is tested at each look with the data of the
/// day its information fraction was reached, against the boundary at that fraction, and
/// its decision does not change afterwards, however often the results are read.
#[test]
fn group_sequential_looks_are_recorded_once_and_decide_once() {
    let e = five_looks();
    // Five days of 2,000 units a variant: looks at fractions 0.2, …, 1.0 (gsDesign's
    // O'Brien–Fleming boundaries 4.877, 3.357, 2.680, 2.290, 2.031). No day on its own
    // crosses; after the final look a flood of converting treatment units would cross the
    // final boundary if the current z were compared with it (the old behaviour).
    let mut list: Vec<Rollups> = (0..5)
        .map(|d| day_of(DAY + d, 2_000, 200.0, 210.0))
        .collect();
    list.push(day_of(DAY + 5, 20_000, 2_000.0, 2_300.0));
    let rollups = days(&list);
    let results = compute(&e, &conversion_metrics(), &rollups, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    let gs = comparison
        .group_sequential
        .as_ref()
        .expect("group sequential");
    assert_eq!(gs.looks.len(), 5, "{gs:?}");
    let boundaries: Vec<f64> = gs.looks.iter().map(|l| l.z_boundary).collect();
    for (got, published) in boundaries.iter().zip([4.877, 3.357, 2.680, 2.290, 2.031]) {
        assert!((got - published).abs() < 1e-3, "{boundaries:?}");
    }
    assert!(gs.decided && !gs.crossed);
    assert!(!comparison.significant);
    // The figures are the final look's (data through day 4), the flood is descriptive.
    assert_eq!(
        comparison.latest.as_ref().expect("latest").treatment_units,
        30_000
    );
    recommends(&results, "No significant difference after the final look");
    // Read hourly on the last look's day, nothing is decided before the day is over.
    let during = compute(
        &e,
        &conversion_metrics(),
        &rollups,
        (DAY + 4) * DAY_MS + 7_200_000,
        false,
    );
    let gs = during.metrics[0].comparisons[0]
        .group_sequential
        .clone()
        .expect("group sequential");
    assert_eq!(gs.looks.len(), 4);
    assert!(!gs.decided);
}

/// A group-sequential test that crosses at an interim look stops there.
#[test]
fn a_group_sequential_crossing_stops_the_test_at_its_look() {
    let e = five_looks();
    let mut list = vec![
        day_of(DAY, 2_000, 200.0, 205.0),
        day_of(DAY + 1, 2_000, 200.0, 205.0),
        // A strong effect on day 3: z ≈ 4 at the third look (boundary 2.680).
        day_of(DAY + 2, 2_000, 200.0, 400.0),
    ];
    // Then the effect reverses, and later looks would no longer cross.
    list.push(day_of(DAY + 3, 2_000, 400.0, 150.0));
    list.push(day_of(DAY + 4, 2_000, 400.0, 150.0));
    let results = compute(&e, &conversion_metrics(), &days(&list), NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    let gs = comparison
        .group_sequential
        .as_ref()
        .expect("group sequential");
    assert_eq!(gs.looks.len(), 3, "{gs:?}");
    assert!(gs.crossed && gs.decided);
    assert!(comparison.significant);
    recommends(&results, "Ship");
}

/// Issue 25, item 7: in sequential mode the headline p-value and interval are the
/// always-valid ones that `significant` uses.
#[test]
fn sequential_headlines_are_always_valid() {
    let mut e = experiment("checkout", &[]);
    e.analysis.mode = AnalysisMode::Sequential;
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    let sequential = comparison.sequential.expect("sequential");
    assert_eq!(results.p_value, Some(sequential.p_value));
    let sequence = sequential
        .relative_ci
        .expect("relative confidence sequence");
    assert_eq!(results.confidence_interval, Some(sequence));
    let fixed = comparison.relative.expect("relative").ci;
    assert!(sequence[0] < fixed[0] && sequence[1] > fixed[1]);
    assert_eq!(results.significant, sequential.p_value <= 0.05);
}

/// Issue 25, item 9: `tuning_units` is per variant, as documented; the mSPRT counts the
/// units of both arms.
#[test]
fn sequential_tuning_is_per_variant() {
    let mut e = experiment("checkout", &[]);
    e.analysis.mode = AnalysisMode::Sequential;
    e.analysis.tuning_units = Some(5_000.0);
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), NOW, false);
    let sequential = results.metrics[0].comparisons[0]
        .sequential
        .expect("sequential");
    assert_eq!(sequential.tuning_units, 5_000.0);
    let expected = abx_stats::sequential::sequential_proportion_test(
        &Proportion::new(10_000, 1_000),
        &Proportion::new(10_000, 1_100),
        &SequentialConfig {
            alpha: 0.05,
            tuning_units: 10_000.0,
        },
    )
    .expect("mSPRT");
    assert!(close(sequential.p_value, expected.p_value));
}

/// Issue 25, item 8: the sample-ratio decision is the always-valid test's. A split with a
/// χ² p of 0.0005 (flagged by the old rule on some refresh of most month-long experiments
/// with such noise) is not enough evidence on its own.
#[test]
fn sample_ratio_mismatch_is_decided_by_the_always_valid_test() {
    let mut rollups = ten_percent_lift();
    rollups.exposures[1].units = 10_500;
    let results = compute(
        &experiment("checkout", &[]),
        &conversion_metrics(),
        &rollups,
        NOW,
        false,
    );
    let srm = results.srm.expect("srm");
    assert!(srm.p_value < 0.001, "{srm:?}");
    assert!(srm.sequential_p_value > 0.001 && !srm.mismatch, "{srm:?}");
}

/// Issue 25, item 5: guardrail checks share alpha over guardrails × treatments, and their
/// threshold is the z that actually raises the alarm.
#[test]
fn guardrails_share_alpha_and_show_the_threshold_that_binds() {
    let mut metrics = conversion_metrics();
    let guardrails = ["g1", "g2", "g3", "g4", "g5"];
    for g in guardrails {
        metrics.extend([metric(g, MetricKind::Conversion, Direction::Decrease)]);
    }
    let mut e = experiment("checkout", &guardrails);
    e.variants.push(VariantInput {
        name: "other".into(),
        weight: 33.0,
        config: serde_json::Value::Null,
    });
    e.weights_bp = vec![3_334, 3_333, 3_333];
    let mut rollups = ten_percent_lift();
    rollups.exposures.push(exposures("other", 10_000));
    for g in guardrails {
        for v in ["control", "treatment", "other"] {
            rollups.metrics.push(conversions(v, g, 500.0));
        }
    }
    let results = compute(&e, &metrics, &rollups, NOW, false);
    assert_eq!(results.guardrails.len(), 10);
    for g in &results.guardrails {
        assert!(close(g.alpha, 0.005), "{g:?}");
        assert!(g.threshold > 3.0, "{g:?}");
        assert_eq!(g.status, "healthy");
    }
}

/// Issue 25, item 5: "Ship" needs every guardrail with a margin shown within it.
#[test]
fn shipping_needs_guardrails_shown_within_their_margins() {
    let mut metrics = conversion_metrics();
    metrics.extend([metric(
        "crashed",
        MetricKind::Conversion,
        Direction::Decrease,
    )]);
    let mut rollups = ten_percent_lift();
    rollups
        .metrics
        .push(conversions("control", "crashed", 100.0));
    rollups
        .metrics
        .push(conversions("treatment", "crashed", 100.0));
    let mut e = experiment("checkout", &["crashed"]);
    // No harm seen, but 10,000 units cannot show that crashes did not rise by 1 %.
    e.analysis.guardrail_margins = BTreeMap::from([("crashed".to_string(), 0.01)]);
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let guardrail = &results.guardrails[0];
    assert_eq!(guardrail.non_inferior, Some(false), "{guardrail:?}");
    assert!(guardrail.harm_upper_bound.expect("bound") > 0.01);
    recommends(&results, "Not yet");
    // Ended there, it cannot keep running to show the margin.
    e.status = Status::Completed;
    let results = compute(&e, &metrics, &rollups, NOW, false);
    recommends(&results, "Ended before a decision: treatment improves");
    e.status = Status::Running;
    // A margin of 100 % is shown at once.
    e.analysis.guardrail_margins = BTreeMap::from([("crashed".to_string(), 1.0)]);
    let results = compute(&e, &metrics, &rollups, NOW, false);
    assert_eq!(results.guardrails[0].non_inferior, Some(true));
    recommends(&results, "Ship");
}

/// Issue 25, item 12: no decision before the minimum duration, however clear the data.
#[test]
fn no_decision_before_the_minimum_duration() {
    let mut e = experiment("checkout", &[]);
    e.analysis.mode = AnalysisMode::Sequential;
    let now = (DAY + 2) * DAY_MS;
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), now, false);
    recommends(&results, "Keep running: 12 more days of the 14-day minimum");
    // Ended there, it cannot keep running: its results are preliminary.
    e.status = Status::Completed;
    e.ended_at_ms = Some(now);
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), now, false);
    recommends(&results, "Ended early: after 2.0 of its 14-day minimum");
}

/// Issue 25, item 12: an effect that fades day after day shows as a significant trend.
#[test]
fn a_fading_effect_shows_a_trend() {
    let mut e = experiment("checkout", &[]);
    e.analysis.mode = AnalysisMode::Sequential;
    // Each day 5,000 new units a variant; the treatment's daily advantage falls from +4 to
    // −2 points.
    let list: Vec<Rollups> = (0..7)
        .map(|d| day_of(DAY + d, 5_000, 500.0, 700.0 - 50.0 * d as f64))
        .collect();
    let results = compute(&e, &conversion_metrics(), &days(&list), NOW, false);
    let trend = results.metrics[0].comparisons[0].trend.expect("trend");
    assert!(trend.significant && trend.slope_per_day < 0.0, "{trend:?}");
    // A steady effect does not.
    let steady: Vec<Rollups> = (0..7)
        .map(|d| day_of(DAY + d, 5_000, 500.0, 550.0))
        .collect();
    let results = compute(&e, &conversion_metrics(), &days(&steady), NOW, false);
    let trend = results.metrics[0].comparisons[0].trend.expect("trend");
    assert!(!trend.significant, "{trend:?}");
}

/// Issue 25, item 1 (review): a look is recorded when first computed, and later reads reuse
/// it: events delivered late that revise the look's day do not move the decision.
#[test]
fn recorded_looks_keep_their_decisions_when_late_events_revise_a_day() {
    let e = five_looks();
    let mut list = vec![
        day_of(DAY, 2_000, 200.0, 205.0),
        day_of(DAY + 1, 2_000, 200.0, 205.0),
        day_of(DAY + 2, 2_000, 200.0, 400.0),
    ];
    let first = compute(&e, &conversion_metrics(), &days(&list), NOW, false);
    assert!(first.metrics[0].comparisons[0].significant);
    let recorded = first.decision_looks.clone();
    assert_eq!(recorded.len(), 3);
    // Late events for day 3 erase the effect on a later read.
    list[2] = day_of(DAY + 2, 2_000, 200.0, 200.0);
    let reading = Reading {
        now_ms: NOW,
        data_until_ms: None,
        recorded: &recorded,
        daily: false,
    };
    let later = compute_with(&e, &conversion_metrics(), &days(&list), &reading);
    assert!(later.metrics[0].comparisons[0].significant);
    assert_eq!(later.decision_looks, recorded);
    // Without the records the same data would decide otherwise.
    let forgetful = compute(&e, &conversion_metrics(), &days(&list), NOW, false);
    assert!(!forgetful.metrics[0].comparisons[0].significant);
}

/// The fixed-horizon test is recorded too, and the p-value it decided on is the one shown.
#[test]
fn a_recorded_fixed_horizon_test_is_reused() {
    let mut e = experiment("checkout", &[]);
    e.analysis.min_duration_days = 0;
    let first = compute(&e, &conversion_metrics(), &ten_percent_lift(), NOW, false);
    let recorded = first.decision_looks.clone();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].look, 0);
    let mut revised = ten_percent_lift();
    revised.metrics[1].sums.sum_x = 1_000.0;
    revised.metrics[1].sums.sum_x2 = 1_000.0;
    let reading = Reading {
        now_ms: NOW,
        data_until_ms: None,
        recorded: &recorded,
        daily: false,
    };
    let later = compute_with(&e, &conversion_metrics(), &revised, &reading);
    let comparison = &later.metrics[0].comparisons[0];
    assert!(comparison.significant);
    assert_eq!(comparison.p_value, first.metrics[0].comparisons[0].p_value);
}

/// A day is complete only once the rollups reach past it (a warehouse computes them on a
/// schedule): no test reads a day whose data the rollups do not hold yet.
#[test]
fn a_day_the_rollups_have_not_reached_is_not_tested() {
    let mut e = experiment("checkout", &[]);
    e.analysis.min_duration_days = 0;
    let reading = |data_until_ms| Reading {
        now_ms: NOW,
        data_until_ms: Some(data_until_ms),
        recorded: &[],
        daily: false,
    };
    // Computed at 22:00 on the plan's day: the day is not complete in the rollups.
    let early = compute_with(
        &e,
        &conversion_metrics(),
        &ten_percent_lift(),
        &reading(DAY * DAY_MS + 22 * 3_600_000),
    );
    assert!(early.analysed_through.is_none() && early.p_value.is_none());
    let after = compute_with(
        &e,
        &conversion_metrics(),
        &ten_percent_lift(),
        &reading((DAY + 1) * DAY_MS + LATE_EVENT_GRACE_MS + 60_000),
    );
    assert!(after.analysed_through.is_some());
}

/// The minimum duration counts from the start time, not the start day: started at 23:00,
/// 14 days end on the 15th day.
#[test]
fn the_minimum_duration_counts_from_the_start_time() {
    let mut e = experiment("checkout", &[]);
    e.started_at_ms = Some(DAY * DAY_MS + 23 * 3_600_000);
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), NOW, false);
    assert_eq!(
        results.analysed_through.as_deref(),
        Some(date(DAY + 14).as_str())
    );
}

/// A variant weighted 0 (kept for its config) never reaches the plan, and must not keep
/// the test from being read.
#[test]
fn a_zero_weight_variant_does_not_hold_the_test_back() {
    let mut e = experiment("checkout", &[]);
    e.variants.push(VariantInput {
        name: "retired".into(),
        weight: 0.0,
        config: serde_json::Value::Null,
    });
    e.weights_bp.push(0);
    let results = compute(&e, &conversion_metrics(), &ten_percent_lift(), NOW, false);
    assert!(
        results.analysed_through.is_some(),
        "{}",
        results.recommended_action
    );
}

/// Issue 27: a capped metric's sums are over all units so far (a percentile cap depends on
/// every unit), so its test divides by the units those sums are over, also when a
/// fixed-horizon test is frozen at an earlier day than the data reach.
#[test]
fn a_capped_metric_is_tested_on_the_units_its_sums_are_over() {
    let mut e = experiment("checkout", &[]);
    e.analysis.min_duration_days = 0;
    e.primary_metric = "revenue".into();
    let (key, mut revenue) = metric("revenue", MetricKind::Mean, Direction::Increase);
    revenue.cap = Some(crate::model::catalog::Cap {
        value: Some(100.0),
        percentile: None,
    });
    let mut rollups = days(&[
        day_of(DAY, 10_000, 0.0, 0.0),
        day_of(DAY + 1, 10_000, 0.0, 0.0),
    ]);
    rollups.metrics.clear();
    // 20,000 units a variant so far; means 2.0 and 2.2 on the capped values.
    let capped = |variant: &str, sum: f64| CappedRollup {
        variant: variant.into(),
        metric: "revenue".into(),
        sums: Sums {
            sum_x: sum,
            sum_x2: sum * 50.0,
            ..Sums::default()
        },
        units: 20_000,
        cap: 100.0,
        capped_units: 3,
    };
    rollups.capped = vec![capped("control", 40_000.0), capped("treatment", 44_000.0)];
    let metrics = HashMap::from([(key, revenue)]);
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    let absolute = comparison.absolute.expect("absolute effect");
    assert!(close(absolute.estimate, 0.2), "{absolute:?}");
    let summary = &results.variants["control"].metrics["revenue"];
    assert_eq!((summary.units, summary.capped_units), (20_000, Some(3)));
    assert_eq!(summary.cap, Some(100.0));
    assert!(close(summary.value.expect("mean"), 2.0));
}

/// A mean metric's rollup over `units` units whose values after exposure have mean `mean`
/// and variance 4, and before exposure mean 2 and variance 4, correlated 0.8.
fn with_covariate(variant: &str, metric: &str, units: f64, mean: f64) -> MetricRollup {
    MetricRollup {
        variant: variant.into(),
        metric: metric.into(),
        day: DAY,
        sums: Sums {
            sum_x: units * mean,
            sum_x2: units * (mean * mean + 4.0),
            sum_c: units * 2.0,
            sum_c2: units * 8.0,
            sum_xc: units * (mean * 2.0 + 3.2),
            ..Sums::default()
        },
    }
}

#[test]
fn pre_exposure_data_makes_cuped_the_estimate_that_decides() {
    let mut e = experiment("checkout", &["revenue"]);
    e.primary_metric = "revenue".into();
    let metrics = HashMap::from([metric("revenue", MetricKind::Mean, Direction::Increase)]);
    // +0.04 on a standard deviation of 2: z = 1.41 unadjusted; the covariate's correlation
    // of 0.8 leaves 36 % of the variance, z = 2.36.
    let rollups = Rollups {
        exposures: vec![exposures("control", 10_000), exposures("treatment", 10_000)],
        metrics: vec![
            with_covariate("control", "revenue", 10_000.0, 2.0),
            with_covariate("treatment", "revenue", 10_000.0, 2.04),
        ],
        ..Rollups::default()
    };
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.estimator, Estimator::Cuped);
    let moments = |r: &MetricRollup| CovariateMoments {
        n: 10_000,
        sum_y: r.sums.sum_x,
        sum_y_sq: r.sums.sum_x2,
        sum_x: r.sums.sum_c,
        sum_x_sq: r.sums.sum_c2,
        sum_xy: r.sums.sum_xc,
    };
    let expected = abx_stats::cuped_test(
        &moments(&rollups.metrics[0]),
        &moments(&rollups.metrics[1]),
        0.05,
    )
    .unwrap();
    assert!(close(expected.variance_reduction, 0.64));
    let p = comparison.p_value.expect("p-value");
    assert!(close(p, expected.comparison.absolute.p_value), "p = {p}");
    assert!(p < 0.05 && comparison.significant);
    let absolute = comparison.absolute.expect("absolute");
    assert!(close(absolute.estimate, 0.04));
    let unadjusted = comparison.unadjusted.expect("the unadjusted difference");
    assert!(close(unadjusted.estimate, 0.04));
    assert!(unadjusted.p_value > 0.15, "{unadjusted:?}");
    assert_eq!(results.p_value, Some(p));
    // The guardrail check tests the adjusted estimate too.
    assert_eq!(results.guardrails[0].estimator, Estimator::Cuped);

    // Without pre-exposure data the standard test decides, and it finds nothing.
    let mut plain = rollups.clone();
    for row in &mut plain.metrics {
        (row.sums.sum_c, row.sums.sum_c2, row.sums.sum_xc) = (0.0, 0.0, 0.0);
    }
    let results = compute(&e, &metrics, &plain, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.estimator, Estimator::Unadjusted);
    assert!(comparison.unadjusted.is_none());
    assert!(close(comparison.p_value.unwrap(), unadjusted.p_value));
    assert!(!comparison.significant);
    assert_eq!(results.guardrails[0].estimator, Estimator::Unadjusted);
}

#[test]
fn sequential_and_group_sequential_tests_read_the_cuped_estimate() {
    let metrics = HashMap::from([metric("revenue", MetricKind::Mean, Direction::Increase)]);
    let rollups = Rollups {
        exposures: vec![exposures("control", 10_000), exposures("treatment", 10_000)],
        metrics: vec![
            with_covariate("control", "revenue", 10_000.0, 2.0),
            with_covariate("treatment", "revenue", 10_000.0, 2.1),
        ],
        ..Rollups::default()
    };
    let mut e = experiment("checkout", &[]);
    e.primary_metric = "revenue".into();
    e.analysis.mode = AnalysisMode::Sequential;
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.estimator, Estimator::Cuped);
    let absolute = comparison.absolute.unwrap();
    let expected = sequential::always_valid(
        absolute.estimate,
        absolute.std_error,
        20_000,
        &sequential_config(&e),
    )
    .unwrap();
    let sequential = comparison.sequential.as_ref().expect("sequential figures");
    assert!(close(sequential.p_value, expected.p_value));

    e.analysis.mode = AnalysisMode::GroupSequential;
    e.analysis.looks = Some(5);
    let results = compute(&e, &metrics, &rollups, NOW, false);
    let statistics = &results.decision_looks[0].statistics[0];
    // Welch's statistic on the adjusted means is the difference over its standard error.
    assert!(close(
        statistics.z.unwrap(),
        absolute.estimate / absolute.std_error
    ));
}

/// The rollups of `with_covariate` for `units` a variant on `day`, with or without their
/// pre-exposure sums.
fn revenue_day(day: i64, units: f64, history: bool) -> Rollups {
    let mut rollups = Rollups {
        exposures: vec![
            exposures("control", units as i64),
            exposures("treatment", units as i64),
        ],
        metrics: vec![
            with_covariate("control", "revenue", units, 2.0),
            with_covariate("treatment", "revenue", units, 2.04),
        ],
        ..Rollups::default()
    };
    for r in &mut rollups.exposures {
        r.day = day;
    }
    for r in &mut rollups.metrics {
        r.day = day;
        if !history {
            (r.sums.sum_c, r.sums.sum_c2, r.sums.sum_xc) = (0.0, 0.0, 0.0);
        }
    }
    rollups
}

#[test]
fn the_estimator_is_chosen_by_the_first_day_and_kept_by_recorded_looks() {
    let mut e = experiment("checkout", &["revenue"]);
    e.primary_metric = "revenue".into();
    let metrics = HashMap::from([metric("revenue", MetricKind::Mean, Direction::Increase)]);
    // No unit of the first day has history; later units have: the standard test decides
    // for the experiment's life (a switch mid-test would join two tests' error rates).
    let late_history = days(&[
        revenue_day(DAY, 5_000.0, false),
        revenue_day(DAY + 1, 5_000.0, true),
    ]);
    let results = compute(&e, &metrics, &late_history, NOW, false);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.estimator, Estimator::Unadjusted);
    assert_eq!(results.guardrails[0].estimator, Estimator::Unadjusted);
    assert!(comparison.unadjusted.is_none());
    assert_eq!(
        results.decision_looks[0].statistics[0].estimator,
        Estimator::Unadjusted
    );

    // With history from the first day, CUPED decides, and the look records it.
    let history = days(&[
        revenue_day(DAY, 5_000.0, true),
        revenue_day(DAY + 1, 5_000.0, true),
    ]);
    let results = compute(&e, &metrics, &history, NOW, false);
    assert_eq!(
        results.metrics[0].comparisons[0].estimator,
        Estimator::Cuped
    );
    let look = &results.decision_looks[0];
    assert_eq!(look.statistics[0].estimator, Estimator::Cuped);

    // A look recorded before CUPED decided has no estimator: it was unadjusted, and the
    // frozen comparison is recomputed as it was, so its p-value and interval agree.
    let mut old = look.clone();
    let mut json = serde_json::to_value(&old).unwrap();
    json["statistics"][0]
        .as_object_mut()
        .unwrap()
        .remove("estimator");
    old = serde_json::from_value(json).unwrap();
    old.statistics[0].p_value = results_without_history_p(&e, &metrics);
    let reading = Reading {
        now_ms: NOW,
        data_until_ms: None,
        recorded: std::slice::from_ref(&old),
        daily: false,
    };
    let results = compute_with(&e, &metrics, &history, &reading);
    let comparison = &results.metrics[0].comparisons[0];
    assert_eq!(comparison.estimator, Estimator::Unadjusted);
    let absolute = comparison.absolute.expect("absolute");
    assert!(close(comparison.p_value.unwrap(), absolute.p_value));
}

/// The unadjusted p-value of `the_estimator_is_chosen_…`'s data at its plan.
fn results_without_history_p(e: &Experiment, metrics: &HashMap<String, Metric>) -> Option<f64> {
    let plain = days(&[
        revenue_day(DAY, 5_000.0, false),
        revenue_day(DAY + 1, 5_000.0, false),
    ]);
    compute(e, metrics, &plain, NOW, false).metrics[0].comparisons[0].p_value
}
