//! Metric windows (issue 27) through the public API on every backend: a windowed metric
//! counts only the unit's events from `delay_s` to `delay_s + length_s` after its first
//! exposure, equal to the direct computation over the raw events sent, also when an earlier
//! exposure of a unit arrives late and moves its window.

use std::collections::BTreeMap;

use crate::common::{self, TestOrigin};
use axum::http::StatusCode;
use serde_json::{Value as Json, json};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The windowed metrics of these tests: key, kind, window (delay, length) in seconds.
fn windowed_metrics() -> [(&'static str, &'static str, (i64, i64)); 5] {
    [
        ("purchase_within_1h", "conversion", (0, 3_600)),
        // Retention: the share of units that order on their second day after exposure.
        ("retained_on_day_2", "conversion", (86_400, 86_400)),
        ("revenue_on_day_2", "sum", (86_400, 86_400)),
        ("revenue_per_session_1h", "ratio", (0, 3_600)),
        ("median_order_1h", "quantile", (0, 3_600)),
    ]
}

/// A unit's first exposure and its events after it: (ms since the first exposure, type,
/// value).
struct Unit {
    variant: &'static str,
    events: Vec<(i64, &'static str, f64)>,
}

/// What the windowed metrics should report per variant: the sum (or converted units) and,
/// for the ratio, the denominator; for the quantile, the window's order values.
#[derive(Default)]
struct Expected {
    sum: f64,
    converted: u64,
    sessions: f64,
    values: Vec<f64>,
}

fn expected(units: &BTreeMap<String, Unit>) -> BTreeMap<(String, String), Expected> {
    let mut out: BTreeMap<(String, String), Expected> = BTreeMap::new();
    for unit in units.values() {
        for (key, _, (delay_s, length_s)) in windowed_metrics() {
            let within =
                |since: i64| since >= delay_s * 1_000 && since < (delay_s + length_s) * 1_000;
            let e = out
                .entry((unit.variant.to_string(), key.to_string()))
                .or_default();
            let orders: Vec<f64> = unit
                .events
                .iter()
                .filter(|(since, kind, _)| *kind == "order" && within(*since))
                .map(|(_, _, v)| *v)
                .collect();
            e.sum += orders.iter().sum::<f64>();
            e.converted += u64::from(!orders.is_empty());
            e.values.extend(&orders);
            e.sessions += unit
                .events
                .iter()
                .filter(|(since, kind, _)| *kind == "session" && within(*since))
                .count() as f64;
        }
    }
    out
}

/// 120 units exposed three days ago, with orders and sessions spread over minutes, hours
/// and days after the exposure (and some before it). Every fifth unit also has an earlier
/// exposure, sent apart afterwards: the second return value.
fn scenario(experiment_id: &str) -> (Vec<Json>, Vec<Json>, BTreeMap<String, Unit>) {
    let t0 = abx_origin_domain::clock::now_ms() - 3 * DAY_MS;
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        event_id(n)
    };
    let (mut events, mut late) = (Vec::new(), Vec::new());
    let mut units = BTreeMap::new();
    // Some offsets cross a window's edge when a late exposure moves the start 40 minutes
    // earlier: -30 minutes enters the first hour, 23.5 hours enters day 2.
    let offsets = [
        -HOUR_MS,
        -30 * 60_000,
        10 * 60_000,
        23 * HOUR_MS + 30 * 60_000,
        2 * HOUR_MS,
        30 * HOUR_MS,
        47 * HOUR_MS,
        50 * HOUR_MS,
    ];
    for u in 0..120u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let exposed_at = t0 + u as i64 * 1_000;
        events.push(
            json!({"event_id": next_id(), "kind": "exposure", "unit": unit,
            "experiment_id": experiment_id, "variant": variant, "timestamp": exposed_at}),
        );
        // The late exposure 40 minutes earlier: windows start there.
        let first = if u % 5 == 0 {
            let earlier = exposed_at - 40 * 60_000;
            late.push(
                json!({"event_id": next_id(), "kind": "exposure", "unit": unit,
                "experiment_id": experiment_id, "variant": variant, "timestamp": earlier}),
            );
            earlier
        } else {
            exposed_at
        };
        let mut mine = Vec::new();
        for (k, offset) in offsets.iter().enumerate() {
            if (u + k as u64).is_multiple_of(3) {
                continue;
            }
            let at = exposed_at + offset;
            let value = 10.0 + ((u * 7 + k as u64 * 5) % 40) as f64;
            events.push(
                json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "order", "value": value, "timestamp": at}),
            );
            mine.push((at - first, "order", value));
            let session_at = at - 5 * 60_000;
            events.push(
                json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "session", "value": 1, "timestamp": session_at}),
            );
            mine.push((session_at - first, "session", 1.0));
        }
        units.insert(
            unit,
            Unit {
                variant,
                events: mine,
            },
        );
    }
    events.sort_by_key(|e| e["timestamp"].as_i64());
    (events, late, units)
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} ≠ {b}"
    );
}

fn assert_windowed(results: &Json, units: &BTreeMap<String, Unit>) {
    for ((variant, key), e) in expected(units) {
        let summary = &results["variants"][&variant]["metrics"][&key];
        let what = format!("{variant} {key}");
        match key.as_str() {
            "purchase_within_1h" | "retained_on_day_2" => {
                assert_eq!(summary["count"], json!(e.converted), "{what}");
                assert!(e.converted > 0, "{what}: the scenario has conversions");
            }
            "revenue_on_day_2" => close(summary["sum"].as_f64().expect("sum"), e.sum, &what),
            "revenue_per_session_1h" => close(
                summary["value"].as_f64().expect("ratio"),
                e.sum / e.sessions,
                &what,
            ),
            _ => {
                let mut values = e.values;
                values.sort_by(f64::total_cmp);
                let exact = values[(values.len().div_ceil(2)).max(1) - 1];
                let reported = summary["value"].as_f64().expect("quantile");
                assert!(
                    (reported - exact).abs() <= 1e-3 * exact,
                    "{what}: {reported} vs {exact}"
                );
                assert_eq!(summary["count"], json!(values.len()), "{what}");
            }
        }
    }
}

async fn create_metrics(o: &TestOrigin) {
    for (key, kind, (delay_s, length_s)) in windowed_metrics() {
        let mut body = json!({"key": key, "kind": kind, "event_type": "order",
            "window": {"delay_s": delay_s, "length_s": length_s}});
        if kind == "ratio" {
            body["denominator_event_type"] = json!("session");
        }
        if kind == "quantile" {
            body["quantile"] = json!(0.5);
        }
        let created = o.create("/api/v1/metrics", body).await;
        assert_eq!(created["window"]["length_s"], json!(length_s), "{created}");
    }
}

async fn windowed_metrics_count_the_events_in_their_window(o: &TestOrigin) {
    create_metrics(o).await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue", "kind": "sum", "event_type": "order"}),
    )
    .await;
    let mut body = common::experiment("windows", "revenue");
    body["secondary_metrics"] = json!(windowed_metrics().map(|(key, _, _)| key));
    let id = o.start_experiment(body).await;
    let sdk = o.key("sdk").await;
    let (events, late, units) = scenario(&id);
    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    common::drain(&o.state).await;
    let reply = o.send_events(&sdk, &late).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    common::drain(&o.state).await;
    let r = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_windowed(&r.body, &units);
    let reply = o
        .patch(
            "/api/v1/metrics/purchase_within_1h",
            json!({"window": {"length_s": 7_200}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

on_every_backend!(
    windowed_metrics,
    windowed_metrics_count_the_events_in_their_window
);

/// Windowed metrics added to a running experiment count the events the log still holds.
async fn windowed_metrics_added_later_count_the_logged_events(o: &TestOrigin) {
    create_metrics(o).await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue", "kind": "sum", "event_type": "order"}),
    )
    .await;
    let id = o
        .start_experiment(common::experiment("windows", "revenue"))
        .await;
    let sdk = o.key("sdk").await;
    let (events, late, units) = scenario(&id);
    for batch in [&events, &late] {
        let reply = o.send_events(&sdk, batch).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        common::drain(&o.state).await;
    }
    let reply = o
        .patch(
            &format!("/api/v1/experiments/{id}"),
            json!({"guardrail_metrics": windowed_metrics().map(|(key, _, _)| key)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    common::drain(&o.state).await;
    let r = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_windowed(&r.body, &units);
}

on_both_backends!(
    windows_added_later,
    windowed_metrics_added_later_count_the_logged_events
);

async fn windows_are_checked(o: &TestOrigin) {
    let body = |window: Json| json!({"key": "w", "kind": "conversion", "event_type": "order", "window": window});
    common::assert_invalid_metric(o, body(json!({"length_s": 0})), "window.length_s").await;
    common::assert_invalid_metric(
        o,
        body(json!({"delay_s": 31_622_400, "length_s": 1})),
        "window",
    )
    .await;
    // A window without its length cannot be read at all.
    let reply = o
        .post("/api/v1/metrics", body(json!({"delay_s": 10})))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(
        reply.body.to_string().contains("length_s"),
        "{}",
        reply.body
    );
}

on_both_backends!(window_validation, windows_are_checked);
