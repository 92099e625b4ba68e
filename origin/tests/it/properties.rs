//! Event properties and metric filters (issue 28), through the public API on every backend:
//! what a filtered metric reports must equal the direct computation over the raw events
//! sent, and properties over the limits are refused event by event.

use std::collections::BTreeMap;

use crate::common;
use crate::common::{TestOrigin, experiment};
use abx_origin_domain::model::filter::Filter;
use axum::http::StatusCode;
use serde_json::{Value as Json, json};

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Only US-dollar orders that are not test orders.
fn usd_filter() -> Json {
    json!({"all": [{"attr": "currency", "op": "eq", "value": "USD"},
                   {"not": {"attr": "test_order", "op": "eq", "value": true}}]})
}

/// The same test as `usd_filter`, written out for the raw events of this file.
fn is_usd(properties: &Json) -> bool {
    properties["currency"] == json!("USD") && properties["test_order"] != json!(true)
}

/// A filter with every operator filters support, on strings, numbers and booleans.
fn mixed_filter() -> Json {
    json!({"any": [
        {"all": [{"attr": "coupon", "op": "starts_with", "value": "SPR"},
                 {"attr": "coupon", "op": "ends_with", "value": "ING"},
                 {"attr": "coupon", "op": "contains", "value": "RIN"}]},
        {"all": [{"attr": "items", "op": "gte", "value": 2}, {"attr": "items", "op": "lt", "value": 3.5},
                 {"attr": "items", "op": "ne", "value": 3}]},
        {"attr": "currency", "op": "in", "value": ["EUR", "GBP"]},
        {"all": [{"attr": "items", "op": "not_in", "value": [1, 2, 3]}, {"attr": "items", "op": "exists"}]},
        {"all": [{"attr": "currency", "op": "gt", "value": "U"}, {"attr": "test_order", "op": "ne", "value": false},
                 {"attr": "currency", "op": "not_in", "value": []}]}
    ]})
}

/// The filtered metrics of these tests: key, kind and filter.
fn filtered_metrics() -> [(&'static str, &'static str, Json); 4] {
    [
        ("usd_revenue", "sum", usd_filter()),
        ("usd_buyers", "conversion", usd_filter()),
        (
            "vip_revenue",
            "sum",
            json!({"attr": "tier", "op": "eq", "value": "vip"}),
        ),
        ("mixed_revenue", "sum", mixed_filter()),
    ]
}

/// Per variant and filtered metric: Σ of matching order values after exposure, and units
/// with at least one such order.
type Expected = BTreeMap<(String, String), (f64, u64)>;

/// Exposures of 80 users and their orders (some before exposure), with properties that the
/// filters match, do not match, or lack; returns the events and the direct computation
/// over them, with the domain's filter as the oracle (which `is_usd` checks in turn).
fn scenario(experiment_id: &str) -> (Vec<Json>, Expected) {
    let t0 = abx_origin_domain::clock::now_ms() - 3_600_000;
    let filters: Vec<(&str, Filter)> = filtered_metrics()
        .iter()
        .map(|(key, _, filter)| (*key, Filter::compile(filter).expect("compiles")))
        .collect();
    let mut events = Vec::new();
    let mut expected = Expected::new();
    let mut by_hand: BTreeMap<String, f64> = BTreeMap::new();
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        event_id(n)
    };
    for u in 0..80u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let exposed_at = t0 + u as i64 * 1_000;
        events.push(
            json!({"event_id": next_id(), "kind": "exposure", "unit": unit,
            "experiment_id": experiment_id, "variant": variant, "timestamp": exposed_at,
            "attributes": {"platform": if u % 3 == 0 { "mobile" } else { "desktop" }}}),
        );
        let mut converted: BTreeMap<&str, bool> = BTreeMap::new();
        for k in 0..(u % 5) {
            let properties = match (u + k) % 7 {
                0 => json!({"currency": "USD", "items": k + 1}),
                1 => json!({"currency": "EUR", "items": 2.5}),
                2 => json!({"currency": "USD", "test_order": true}),
                3 => json!({"currency": "USD", "test_order": false, "coupon": "SPRING"}),
                4 => json!({"currency": "GBP", "coupon": "SPRINGTIME", "items": "2"}),
                5 => json!({"currency": "usd", "items": 7}),
                _ => Json::Null,
            };
            let value = 5.0 + (u % 7) as f64 + k as f64 * 2.5;
            // One order in four comes before the exposure: it is no part of the metrics.
            let at = if (u + k) % 4 == 0 {
                exposed_at - 500
            } else {
                exposed_at + 10_000 + k as i64
            };
            let mut order = json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "order", "value": value, "timestamp": at});
            if !properties.is_null() {
                order["properties"] = properties.clone();
            }
            events.push(order);
            if at < exposed_at {
                continue;
            }
            let map = properties.as_object().cloned().unwrap_or_default();
            for (key, filter) in &filters {
                let matched = filter.matches(&map);
                let entry = expected
                    .entry((variant.to_string(), key.to_string()))
                    .or_default();
                if matched {
                    entry.0 += value;
                }
                *converted.entry(key).or_default() |= matched;
            }
            if is_usd(&properties) {
                *by_hand.entry(variant.to_string()).or_default() += value;
            }
        }
        for (key, converted) in converted {
            expected
                .entry((variant.to_string(), key.to_string()))
                .or_default()
                .1 += u64::from(converted);
        }
    }
    for (variant, sum) in by_hand {
        let oracle = expected[&(variant.clone(), "usd_revenue".to_string())].0;
        assert!((oracle - sum).abs() < 1e-9, "{variant}: {oracle} ≠ {sum}");
    }
    events.sort_by_key(|e| e["timestamp"].as_i64());
    (events, expected)
}

async fn results(o: &TestOrigin, id: &str) -> Json {
    let reply = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// Checks each variant's filtered metrics against the direct computation.
fn assert_filtered(results: &Json, expected: &Expected) {
    let kinds: BTreeMap<&str, &str> = filtered_metrics()
        .iter()
        .map(|(key, kind, _)| (*key, *kind))
        .collect();
    for ((variant, metric), (sum, converted)) in expected {
        let summary = &results["variants"][variant]["metrics"][metric];
        if kinds[metric.as_str()] == "conversion" {
            assert_eq!(summary["count"], json!(converted), "{variant} {metric}");
        } else {
            let got = summary["sum"].as_f64().expect("sum");
            assert!(
                (got - sum).abs() < 1e-9,
                "{variant} {metric}: {got} ≠ {sum}"
            );
        }
        let unfiltered = results["variants"][variant]["metrics"]["revenue"]["sum"]
            .as_f64()
            .expect("sum");
        // The scenario makes each filter match some orders and not others, except the
        // filter on a property no event has, which matches nothing.
        if metric == "vip_revenue" {
            assert_eq!(*sum, 0.0);
        } else if kinds[metric.as_str()] == "sum" {
            assert!(
                *sum > 0.0 && *sum < unfiltered,
                "{variant} {metric}: {sum} of {unfiltered}"
            );
        }
    }
}

/// Creates the unfiltered `revenue` metric and the filtered ones.
async fn create_metrics(o: &TestOrigin) {
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue", "kind": "sum", "event_type": "order"}),
    )
    .await;
    for (key, kind, filter) in filtered_metrics() {
        let created = o
            .create(
                "/api/v1/metrics",
                json!({"key": key, "kind": kind, "event_type": "order", "filter": filter}),
            )
            .await;
        assert_eq!(created["filter"], filter);
    }
}

fn filtered_keys() -> Json {
    json!(filtered_metrics().map(|(key, _, _)| key))
}

async fn a_filtered_metric_counts_only_matching_events(o: &TestOrigin) {
    create_metrics(o).await;
    let mut body = experiment("checkout", "revenue");
    body["secondary_metrics"] = filtered_keys();
    let id = o.start_experiment(body).await;
    let key = o.key("sdk").await;
    let (events, expected) = scenario(&id);
    for chunk in events.chunks(40) {
        let reply = o.send_events(&key, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    common::drain(&o.state).await;
    let results = results(o, &id).await;
    assert_filtered(&results, &expected);
    // The filter on a property no order carried says so; the others do not.
    for m in results["metrics"].as_array().expect("metrics") {
        let unknown = if m["metric"] == json!("vip_revenue") {
            json!(["tier"])
        } else {
            Json::Null
        };
        assert_eq!(m["unknown_filter_properties"], unknown, "{m}");
    }
}

on_every_backend!(
    filtered_metrics,
    a_filtered_metric_counts_only_matching_events
);

/// Filtered metrics added to a running experiment (as guardrails, which may be added while
/// it runs) count the events the log still holds, as if they had been there from the start;
/// a filter cannot change under a running experiment.
async fn filtered_metrics_added_later_count_the_logged_events(o: &TestOrigin) {
    create_metrics(o).await;
    let id = o.start_experiment(experiment("checkout", "revenue")).await;
    let key = o.key("sdk").await;
    let (events, expected) = scenario(&id);
    let reply = o.send_events(&key, &events).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    common::drain(&o.state).await;

    let reply = o
        .patch(
            &format!("/api/v1/experiments/{id}"),
            json!({"guardrail_metrics": filtered_keys()}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    common::drain(&o.state).await;
    assert_filtered(&results(o, &id).await, &expected);

    let reply = o
        .patch("/api/v1/metrics/usd_revenue", json!({"filter": null}))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

on_both_backends!(
    filters_added_later,
    filtered_metrics_added_later_count_the_logged_events
);

async fn properties_over_the_limits_are_refused_one_by_one(o: &TestOrigin) {
    let key = o.key("sdk").await;
    let now = abx_origin_domain::clock::now_ms();
    let order = |n: u64, properties: Json| {
        json!({"event_id": event_id(n), "kind": "metric", "unit": "u1", "event_type": "order",
               "value": 3, "timestamp": now, "properties": properties})
    };
    let many: serde_json::Map<String, Json> =
        (0..33).map(|i| (format!("p{i}"), json!(i))).collect();
    let events = [
        order(1, json!({"currency": "USD", "first": true, "items": 2})),
        order(2, Json::Object(many)),
        order(3, json!({"note": "x".repeat(257)})),
        order(4, json!({"nested": {"a": 1}})),
        order(5, json!({"bad name": 1})),
        order(6, json!(["currency"])),
        json!({"event_id": event_id(7), "kind": "exposure", "unit": "u1",
               "experiment_id": "6f1c2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f", "variant": "control",
               "timestamp": now, "properties": {"a": 1}}),
        order(8, json!({})),
    ];
    let reply = o.send_events(&key, &events).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["accepted"], json!(2), "{}", reply.body);
    let reasons: Vec<(u64, String)> = reply.body["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().expect("index"),
                r["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect();
    let indices: Vec<u64> = reasons.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4, 5, 6], "{reasons:?}");
    assert!(reasons[0].1.contains("more than 32"), "{reasons:?}");
    assert!(
        reasons[1].1.contains("longer than 256 bytes"),
        "{reasons:?}"
    );
    assert!(
        reasons[2]
            .1
            .contains("`properties.nested` must be a string"),
        "{reasons:?}"
    );
    assert!(reasons[3].1.contains("attribute names"), "{reasons:?}");
    assert!(reasons[4].1.contains("must be an object"), "{reasons:?}");
    assert!(
        reasons[5].1.contains("`attributes`, not `properties`"),
        "{reasons:?}"
    );

    // A filter that uses what filters cannot (a segment, a semantic version) is refused.
    let reply = o
        .post(
            "/api/v1/metrics",
            json!({"key": "m", "kind": "sum", "event_type": "order",
                   "filter": {"any": [{"segment": "staff"}, {"attr": "app", "op": "semver_gt", "value": "1.0.0"}]}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let text = reply.body.to_string();
    assert!(
        text.contains("filter.any[0]") && text.contains("filter.any[1]"),
        "{text}"
    );
}

on_both_backends!(
    property_limits,
    properties_over_the_limits_are_refused_one_by_one
);
