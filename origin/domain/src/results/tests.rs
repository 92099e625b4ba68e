//! The analysis over rollup fixtures: what `compute` makes of an experiment's rollups, with
//! reference values computed independently (closed forms, written out below).

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::model::catalog::{Direction, Metric, MetricKind};
use crate::model::experiment::{Analysis, AnalysisMode, Experiment, Status, VariantInput};
use crate::rollup::{ExposureRollup, InteractionCell, MetricRollup, Rollups, Sums};

const DAY: i64 = 20_000;

fn experiment(key: &str, guardrails: &[&str]) -> Experiment {
    let variant = |name: &str| VariantInput {
        name: name.into(),
        weight: 50.0,
        config: serde_json::Value::Null,
    };
    Experiment {
        id: format!("id-{key}"),
        key: key.into(),
        name: key.into(),
        hypothesis: String::new(),
        description: String::new(),
        owner: String::new(),
        status: Status::Running,
        status_reason: None,
        layer: None,
        layer_id: None,
        traffic_percent: 100.0,
        unit: "user_id".into(),
        targeting: None,
        variants: vec![variant("control"), variant("treatment")],
        primary_metric: "converted".into(),
        secondary_metrics: Vec::new(),
        guardrail_metrics: guardrails.iter().map(|g| g.to_string()).collect(),
        holdout: None,
        holdout_id: None,
        forced: BTreeMap::new(),
        switchback_period_s: None,
        analysis: Analysis {
            mode: AnalysisMode::FixedHorizon,
            planned_units_per_variant: Some(10_000),
            ..Analysis::default()
        },
        shipped_variant: None,
        slot_ranges: Vec::new(),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        started_at: None,
        ended_at: None,
        traffic_bp: 10_000,
        weights_bp: vec![5_000, 5_000],
        slots: Vec::new(),
        created_at_ms: 0,
        started_at_ms: Some(DAY * 86_400_000),
        ended_at_ms: None,
    }
}

fn metric(key: &str, kind: MetricKind, direction: Direction) -> (String, Metric) {
    let metric = Metric {
        id: format!("id-{key}"),
        key: key.into(),
        name: key.into(),
        description: String::new(),
        kind,
        event_type: key.into(),
        denominator_event_type: None,
        direction,
        guardrail_threshold: None,
        created_at: String::new(),
        updated_at: String::new(),
    };
    (key.into(), metric)
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
    }
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
        0,
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
    let results = compute(&e, &metrics, &ten_percent_lift(), 0, false);
    assert_eq!(results.planned_sample_fraction, Some(0.5));
    assert!(!results.metrics[0].comparisons[0].significant);
    assert!(
        results.recommended_action.starts_with("Keep running: 50%"),
        "{}",
        results.recommended_action
    );
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
        0,
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
    let results = compute(&experiment("checkout", &[]), &metrics, &rollups, 0, false);
    let srm = results.srm.expect("srm");
    // χ² = 2 × 500² / 10,500 against the expected 10,500 per arm.
    assert!(close(srm.chi2, 2.0 * 500.0 * 500.0 / 10_500.0), "{srm:?}");
    assert!(srm.mismatch);
    assert!(results.recommended_action.starts_with("Invalid"));
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
        0,
        false,
    );
    let guardrail = &results.guardrails[0];
    assert_eq!(
        (guardrail.metric.as_str(), guardrail.variant.as_str()),
        ("crashed", "treatment")
    );
    assert_eq!(guardrail.status, "alarm");
    assert!(results.recommended_action.starts_with("Stop"));
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
    let results = compute(&experiment("checkout", &[]), &metrics, &rollups, 0, true);
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
    let results = compute(&e, &metrics, &ten_percent_lift(), 0, false);
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
    let results = compute(&e, &metrics, &rollups, 0, false);
    let guardrail = &results.guardrails[0];
    assert_eq!(guardrail.status, "alarm", "{guardrail:?}");
    assert!(
        guardrail
            .note
            .as_deref()
            .is_some_and(|n| n.contains("cannot be computed"))
    );
    assert!(
        results.recommended_action.starts_with("Stop"),
        "{}",
        results.recommended_action
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
    let results = compute(&e, &metrics, &ten_percent_lift(), 0, false);
    let guardrail = &results.guardrails[0];
    assert_eq!(guardrail.status, "error", "{guardrail:?}");
    assert!(guardrail.note.is_some());
    assert!(
        results.recommended_action.starts_with("Investigate"),
        "{}",
        results.recommended_action
    );
    // The same experiment without the guardrail would ship.
    let shipped = compute(
        &experiment("checkout", &[]),
        &metrics,
        &ten_percent_lift(),
        0,
        false,
    );
    assert!(
        shipped.recommended_action.starts_with("Ship"),
        "{}",
        shipped.recommended_action
    );
}
