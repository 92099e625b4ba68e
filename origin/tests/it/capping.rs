//! Capped (winsorized) metrics (issue 27) through the public API on every backend: what a
//! capped metric reports must equal the direct computation over the raw events sent, with
//! a fixed cap and with a percentile cap over the units' non-zero values.

use std::collections::BTreeMap;

use crate::common::{self, TestOrigin};
use axum::http::StatusCode;
use serde_json::{Value as Json, json};

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The capped metrics of these tests: key, kind, cap. (Two percentile caps: the warehouse
/// finds every cap of a plan in one pass over the units.)
fn capped_metrics() -> [(&'static str, &'static str, Json); 4] {
    [
        ("revenue_capped", "mean", json!({"value": 100})),
        ("revenue_p90", "sum", json!({"percentile": 0.9})),
        ("revenue_per_session", "ratio", json!({"value": 150})),
        ("revenue_p50", "mean", json!({"percentile": 0.5})),
    ]
}

/// Per unit after exposure: its variant, order total and sessions.
type Units = BTreeMap<String, (String, f64, f64)>;

/// 200 units: most order little or nothing, every tenth is a whale; each has sessions; some
/// orders come before the exposure (no part of the metrics).
fn scenario(experiment_id: &str) -> (Vec<Json>, Units) {
    let t0 = abx_origin_domain::clock::now_ms() - 3_600_000;
    let mut events = Vec::new();
    let mut units = Units::new();
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        event_id(n)
    };
    for u in 0..200u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let exposed_at = t0 + u as i64 * 1_000;
        events.push(
            json!({"event_id": next_id(), "kind": "exposure", "unit": unit,
            "experiment_id": experiment_id, "variant": variant, "timestamp": exposed_at}),
        );
        let mut revenue = 0.0;
        for k in 0..(u % 4) {
            let value = if u % 10 == 3 {
                2_000.0 + u as f64
            } else {
                5.0 + ((u * 7 + k * 13) % 60) as f64
            };
            let at = if (u + k) % 5 == 0 {
                exposed_at - 500
            } else {
                exposed_at + 1_000 + k as i64
            };
            events.push(
                json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "order", "value": value, "timestamp": at}),
            );
            if at >= exposed_at {
                revenue += value;
            }
        }
        let sessions = 1 + u % 3;
        for k in 0..sessions {
            events.push(
                json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "session", "value": 1, "timestamp": exposed_at + 2_000 + k as i64}),
            );
        }
        units.insert(unit, (variant.to_string(), revenue, sessions as f64));
    }
    events.sort_by_key(|e| e["timestamp"].as_i64());
    (events, units)
}

/// The order statistic at rank ⌈p·n⌉ of the units' non-zero revenue.
fn percentile_cap(units: &Units, p: f64) -> f64 {
    let mut nonzero: Vec<f64> = units
        .values()
        .map(|(_, r, _)| *r)
        .filter(|r| *r != 0.0)
        .collect();
    nonzero.sort_by(f64::total_cmp);
    nonzero[((p * nonzero.len() as f64).ceil() as usize).clamp(1, nonzero.len()) - 1]
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} ≠ {b}"
    );
}

/// Checks each variant's capped figures against the direct computation.
fn assert_capped(results: &Json, units: &Units) {
    for (key, _, cap) in capped_metrics() {
        let cap = cap["value"]
            .as_f64()
            .unwrap_or_else(|| percentile_cap(units, cap["percentile"].as_f64().expect("p")));
        for variant in ["control", "treatment"] {
            let mine: Vec<&(String, f64, f64)> =
                units.values().filter(|(v, _, _)| v == variant).collect();
            let capped_sum: f64 = mine.iter().map(|(_, r, _)| r.min(cap)).sum();
            let sessions: f64 = mine.iter().map(|(_, _, s)| s).sum();
            let capped_units = mine.iter().filter(|(_, r, _)| *r > cap).count();
            let summary = &results["variants"][variant]["metrics"][key];
            close(summary["cap"].as_f64().expect("cap"), cap, key);
            assert_eq!(
                summary["capped_units"],
                json!(capped_units),
                "{key} {variant}"
            );
            close(summary["sum"].as_f64().expect("sum"), capped_sum, key);
            let value = summary["value"].as_f64().expect("value");
            if key == "revenue_per_session" {
                close(value, capped_sum / sessions, key);
            } else {
                close(value, capped_sum / mine.len() as f64, key);
            }
        }
        assert!(cap > 0.0);
    }
    // The uncapped metric is untouched, and the whales were capped.
    let uncapped: f64 = units
        .values()
        .filter(|(v, _, _)| v == "control")
        .map(|(_, r, _)| r)
        .sum();
    close(
        results["variants"]["control"]["metrics"]["revenue"]["sum"]
            .as_f64()
            .expect("sum"),
        uncapped,
        "revenue",
    );
    assert!(
        results["variants"]["control"]["metrics"]["revenue_capped"]["capped_units"]
            .as_u64()
            .expect("capped")
            > 0
    );
}

async fn create_metrics(o: &TestOrigin) {
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue", "kind": "mean", "event_type": "order"}),
    )
    .await;
    for (key, kind, cap) in capped_metrics() {
        let mut body = json!({"key": key, "kind": kind, "event_type": "order", "cap": cap});
        if kind == "ratio" {
            body["denominator_event_type"] = json!("session");
        }
        let created = o.create("/api/v1/metrics", body).await;
        for field in ["value", "percentile"] {
            assert_eq!(created["cap"][field].as_f64(), cap[field].as_f64(), "{key}");
        }
    }
}

async fn capped_metrics_report_the_capped_values(o: &TestOrigin) {
    create_metrics(o).await;
    let mut body = common::experiment("whales", "revenue");
    body["secondary_metrics"] = json!(capped_metrics().map(|(key, _, _)| key));
    let id = o.start_experiment(body).await;
    let sdk = o.key("sdk").await;
    let (events, units) = scenario(&id);
    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    common::drain(&o.state).await;
    let r = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_capped(&r.body, &units);
    // Every capped metric is tested (on its capped values).
    for m in r.body["metrics"].as_array().expect("metrics") {
        assert!(!m["comparisons"][0]["absolute"].is_null(), "{m}");
    }
    // What a capped metric measures cannot change under a running experiment.
    let reply = o
        .patch(
            "/api/v1/metrics/revenue_capped",
            json!({"cap": {"value": 200}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

on_every_backend!(capped_metrics, capped_metrics_report_the_capped_values);

async fn caps_are_checked(o: &TestOrigin) {
    for (body, field) in [
        (
            json!({"key": "c", "kind": "conversion", "event_type": "order", "cap": {"value": 1}}),
            "cap",
        ),
        (
            json!({"key": "c", "kind": "mean", "event_type": "order", "cap": {"value": 1, "percentile": 0.9}}),
            "cap",
        ),
        (
            json!({"key": "c", "kind": "mean", "event_type": "order", "cap": {"percentile": 1.0}}),
            "cap.percentile",
        ),
        (
            json!({"key": "c", "kind": "sum", "event_type": "order", "cap": {}}),
            "cap",
        ),
    ] {
        common::assert_invalid_metric(o, body, field).await;
    }
}

on_both_backends!(cap_validation, caps_are_checked);
