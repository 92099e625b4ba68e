//! CUPED in decisions (issue 27) through the public API on every backend: where units have
//! events before their exposure, each comparison of a conversion, mean and ratio metric is
//! the CUPED-adjusted one, equal to abx-stats' CUPED on the per-unit values computed directly
//! from the raw events sent, and says so.

use std::collections::BTreeMap;

use crate::common::{self, TestOrigin};
use abx_stats::{CovariateMoments, RatioCovariateMoments, RatioMoments};
use axum::http::StatusCode;
use serde_json::{Value as Json, json};

/// One unit's values: after exposure its order total and sessions, before it the same.
#[derive(Default)]
struct Unit {
    variant: &'static str,
    orders: f64,
    sessions: f64,
    orders_before: f64,
    sessions_before: f64,
    purchased: bool,
    purchased_before: bool,
}

/// 300 units; seven in ten have a history (orders and sessions in the hour before their
/// exposure) that predicts what they do after it; the treatment's orders are 10 % larger.
fn scenario(experiment_id: &str) -> (Vec<Json>, BTreeMap<String, Unit>) {
    let t0 = abx_origin_domain::clock::now_ms() - 3_600_000;
    let mut events = Vec::new();
    let mut units = BTreeMap::new();
    let mut n = 0_u64;
    // A small deterministic generator, so that the values vary without a pattern.
    let mut state = 0x2545_f491_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((state >> 33) as f64) / f64::from(1_u32 << 31)
    };
    let mut event = |body: Json| {
        n += 1;
        let mut body = body;
        body["event_id"] = json!(format!("00000000-0000-4000-8000-{n:012x}"));
        events.push(body);
    };
    for u in 0..300_u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let exposed_at = t0 + u as i64 * 1_000;
        let level = 5.0 + 40.0 * next();
        let activity = 1 + (next() * 4.0) as i64;
        let propensity = next();
        let mut me = Unit {
            variant,
            ..Unit::default()
        };
        event(
            json!({"kind": "exposure", "unit": unit, "experiment_id": experiment_id,
            "variant": variant, "timestamp": exposed_at}),
        );
        let history = u % 10 < 7;
        let lift = if variant == "treatment" { 1.1 } else { 1.0 };
        for (before, scale) in [(true, 1.0), (false, lift)] {
            if before && !history {
                continue;
            }
            let sessions = activity + i64::from(next() < 0.5);
            for k in 0..sessions {
                let at = if before {
                    exposed_at - 600_000 + k * 10
                } else {
                    exposed_at + 1_000 + k * 10
                };
                event(
                    json!({"kind": "metric", "unit": unit, "event_type": "session",
                    "value": 1, "timestamp": at}),
                );
                // Not every session orders; some units hardly ever do.
                if next() < propensity {
                    let value = (scale * level * (0.5 + next())).round();
                    event(
                        json!({"kind": "metric", "unit": unit, "event_type": "order",
                        "value": value, "timestamp": at + 1}),
                    );
                    if before {
                        me.orders_before += value;
                        me.purchased_before = true;
                    } else {
                        me.orders += value;
                        me.purchased = true;
                    }
                }
            }
            if before {
                me.sessions_before = sessions as f64;
            } else {
                me.sessions = sessions as f64;
            }
        }
        units.insert(unit, me);
    }
    events.sort_by_key(|e| e["timestamp"].as_i64());
    (events, units)
}

/// Σ over a variant's units of the products of two of their values.
fn sum_of(units: &[&Unit], f: impl Fn(&Unit) -> (f64, f64)) -> f64 {
    units.iter().map(|u| f(u).0 * f(u).1).sum()
}

fn covariate_moments(units: &[&Unit], value: impl Fn(&Unit) -> (f64, f64)) -> CovariateMoments {
    CovariateMoments {
        n: units.len() as u64,
        sum_y: sum_of(units, |u| (value(u).0, 1.0)),
        sum_y_sq: sum_of(units, |u| (value(u).0, value(u).0)),
        sum_x: sum_of(units, |u| (value(u).1, 1.0)),
        sum_x_sq: sum_of(units, |u| (value(u).1, value(u).1)),
        sum_xy: sum_of(units, |u| (value(u).0, value(u).1)),
    }
}

fn ratio_moments(units: &[&Unit]) -> RatioCovariateMoments {
    let ratio = |num: fn(&Unit) -> f64, den: fn(&Unit) -> f64| RatioMoments {
        n: units.len() as u64,
        sum_num: sum_of(units, |u| (num(u), 1.0)),
        sum_num_sq: sum_of(units, |u| (num(u), num(u))),
        sum_den: sum_of(units, |u| (den(u), 1.0)),
        sum_den_sq: sum_of(units, |u| (den(u), den(u))),
        sum_num_den: sum_of(units, |u| (num(u), den(u))),
    };
    RatioCovariateMoments {
        metric: ratio(|u| u.orders, |u| u.sessions),
        covariate: ratio(|u| u.orders_before, |u| u.sessions_before),
        sum_num_pre_num: sum_of(units, |u| (u.orders, u.orders_before)),
        sum_num_pre_den: sum_of(units, |u| (u.orders, u.sessions_before)),
        sum_den_pre_num: sum_of(units, |u| (u.sessions, u.orders_before)),
        sum_den_pre_den: sum_of(units, |u| (u.sessions, u.sessions_before)),
    }
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-7 * b.abs().max(1e-3),
        "{what}: {a} ≠ {b}"
    );
}

async fn cuped_decides_where_units_have_history(o: &TestOrigin) {
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue", "kind": "mean", "event_type": "order"}),
    )
    .await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "purchased", "kind": "conversion", "event_type": "order"}),
    )
    .await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue_per_session", "kind": "ratio", "event_type": "order",
            "denominator_event_type": "session"}),
    )
    .await;
    let mut body = common::experiment("cuped", "revenue");
    body["secondary_metrics"] = json!(["purchased", "revenue_per_session"]);
    let id = o.start_experiment(body).await;
    let sdk = o.key("sdk").await;
    let (events, units) = scenario(&id);
    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    common::drain(&o.state).await;
    let r = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let arm =
        |variant: &str| -> Vec<&Unit> { units.values().filter(|u| u.variant == variant).collect() };
    let (control, treatment) = (arm("control"), arm("treatment"));
    let indicator = |b: bool| f64::from(u8::from(b));
    let expected = [
        (
            "revenue",
            abx_stats::cuped_test(
                &covariate_moments(&control, |u| (u.orders, u.orders_before)),
                &covariate_moments(&treatment, |u| (u.orders, u.orders_before)),
                0.05,
            ),
        ),
        (
            "purchased",
            abx_stats::cuped_test(
                &covariate_moments(&control, |u| {
                    (indicator(u.purchased), indicator(u.purchased_before))
                }),
                &covariate_moments(&treatment, |u| {
                    (indicator(u.purchased), indicator(u.purchased_before))
                }),
                0.05,
            ),
        ),
        (
            "revenue_per_session",
            abx_stats::ratio_cuped_test(&ratio_moments(&control), &ratio_moments(&treatment), 0.05),
        ),
    ];
    for (key, expected) in expected {
        let expected = expected.expect("CUPED on the raw values");
        assert!(
            expected.adjusted && expected.variance_reduction > 0.05,
            "{key}: {expected:?}"
        );
        let metric = r.body["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .find(|m| m["metric"] == key)
            .unwrap_or_else(|| panic!("{key} in {}", r.body));
        let c = &metric["comparisons"][0];
        assert_eq!(c["estimator"], "cuped", "{key}: {c}");
        let figure = |path: &str| {
            c.pointer(path)
                .and_then(Json::as_f64)
                .unwrap_or_else(|| panic!("{key} {path} in {c}"))
        };
        let absolute = &expected.comparison.absolute;
        close(figure("/absolute/estimate"), absolute.estimate, key);
        close(figure("/absolute/std_error"), absolute.std_error, key);
        close(figure("/p_value"), absolute.p_value, key);
        close(figure("/cuped/theta"), expected.theta, key);
        close(
            figure("/cuped/variance_reduction"),
            expected.variance_reduction,
            key,
        );
        assert!(c["unadjusted"]["estimate"].is_f64(), "{key}: {c}");
    }
}

on_every_backend!(cuped_in_decisions, cuped_decides_where_units_have_history);
