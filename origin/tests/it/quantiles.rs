//! Quantile metrics (issue 27) through the public API: the seed's experiment created from
//! its own body, a latency regression that the p95 guardrail catches and pauses, and the
//! quantiles every backend reports against the direct computation over the raw events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::{self, TestOrigin};
use axum::http::StatusCode;
use serde_json::{Value as Json, json};

/// The seed's `POST /api/v1/experiments` body, verbatim (the e2e journey sends it too).
const SEED_BODY: &str = include_str!("../seed_experiment.json");

/// A uniform draw in (0, 1) from a seed (splitmix64).
fn uniform(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + 0.5 / (1u64 << 53) as f64
}

/// A standard normal draw (Box–Muller).
fn normal(seed: u64) -> f64 {
    let (u, v) = (uniform(seed * 2), uniform(seed * 2 + 1));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The order statistic at rank ⌈p·n⌉: the quantile the metric estimates.
fn sample_quantile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Latency events of the units the experiment assigns among `users`: each exposed unit has
/// its own level (lognormal) and 1–20 requests around it, and the treatment adds
/// `treatment_adds_ms` to every request. Returns the events and, per variant, the values
/// sent after exposure.
async fn latency_traffic(
    o: &TestOrigin,
    key: &str,
    experiment_id: &str,
    users: u64,
    treatment_adds_ms: f64,
) -> (Vec<Json>, BTreeMap<String, Vec<f64>>) {
    static NEXT_ID_BLOCK: AtomicU64 = AtomicU64::new(1);
    let mut n = NEXT_ID_BLOCK.fetch_add(1, Ordering::Relaxed) << 32;
    let now = abx_origin_domain::clock::now_ms() - 3_600_000;
    let mut events = Vec::new();
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for u in 0..users {
        let unit = format!("{key}-user-{u}");
        let Some(variant) = common::assigned_variant(o, key, u).await else {
            continue;
        };
        let variant = variant.as_str();
        n += 1;
        events.push(
            json!({"event_id": event_id(n), "kind": "exposure", "unit": unit,
            "experiment_id": experiment_id, "variant": variant, "timestamp": now}),
        );
        let level = 60.0 * (0.3 * normal(u * 1_000)).exp();
        let requests = 1 + (uniform(u * 1_000 + 1) * 20.0) as u64;
        for r in 0..requests {
            let mut ms = level * (0.3 * normal(u * 1_000 + 2 + r)).exp();
            if variant == "treatment" {
                ms += treatment_adds_ms;
            }
            // As a client would report it: to the microsecond.
            let ms = (ms * 1_000.0).round() / 1_000.0;
            n += 1;
            events.push(
                json!({"event_id": event_id(n), "kind": "metric", "unit": unit,
                "event_type": "latency_ms", "value": ms, "timestamp": now + 1_000 + r as i64}),
            );
            values.entry(variant.to_string()).or_default().push(ms);
        }
        // A request before the exposure is no part of the metric.
        n += 1;
        events.push(
            json!({"event_id": event_id(n), "kind": "metric", "unit": unit,
            "event_type": "latency_ms", "value": 5_000.0, "timestamp": now - 1_000}),
        );
    }
    (events, values)
}

async fn send(o: &TestOrigin, events: &[Json]) {
    let sdk = o.key("sdk").await;
    for chunk in events.chunks(2_000) {
        let reply = o.send_events(&sdk, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    common::drain(&o.state).await;
}

async fn create_seed_metrics(o: &TestOrigin) {
    o.create(
        "/api/v1/metrics",
        json!({"key": "checkout_conversion_rate", "kind": "conversion", "event_type": "conversion"}),
    )
    .await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "crash_rate", "kind": "conversion", "event_type": "crash", "direction": "decrease"}),
    )
    .await;
    let created = o
        .create(
            "/api/v1/metrics",
            json!({"key": "p95_latency", "kind": "quantile", "quantile": 0.95,
                   "event_type": "latency_ms", "direction": "decrease"}),
        )
        .await;
    assert_eq!(created["quantile"], json!(0.95));
}

/// Each variant's reported quantile is the sample quantile of the events sent, within the
/// buckets' accuracy (0.5 %).
fn assert_quantiles(results: &Json, metric: &str, p: f64, sent: &mut BTreeMap<String, Vec<f64>>) {
    for (variant, values) in sent.iter_mut() {
        let exact = sample_quantile(values, p);
        let summary = &results["variants"][variant]["metrics"][metric];
        let reported = summary["value"].as_f64().expect("quantile value");
        assert!(
            ((reported - exact) / exact).abs() <= abx_stats::quantile::RELATIVE_ACCURACY + 1e-9,
            "{variant}: reported {reported}, exact {exact}"
        );
        assert_eq!(summary["count"], json!(values.len()), "events of {variant}");
    }
}

/// Issue 27: the seed's experiment, created from its own body once its three metrics exist;
/// a treatment that adds 30 ms to every request; the p95 guardrail alarms, the monitor
/// pauses the experiment and assignment stops.
async fn the_seeds_experiment_pauses_on_a_latency_regression(o: &TestOrigin) {
    create_seed_metrics(o).await;
    o.create("/api/v1/layers", json!({"key": "checkout_ui"}))
        .await;
    let body: Json = serde_json::from_str(SEED_BODY).expect("the seed's body is JSON");
    let created = o.post("/api/v1/experiments", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["key"], "checkout_button_color");
    let id = created.body["id"].as_str().expect("id").to_string();
    let started = o
        .post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);

    let (events, mut sent) = latency_traffic(o, "checkout_button_color", &id, 12_000, 30.0).await;
    send(o, &events).await;
    let r = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = r.body;
    assert_quantiles(&r, "p95_latency", 0.95, &mut sent);
    let latency = r["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["metric"] == "p95_latency")
        .expect("p95_latency result");
    assert_eq!(latency["kind"], "quantile");
    let comparison = &latency["comparisons"][0];
    let absolute = &comparison["absolute"];
    let ci = absolute["ci"].as_array().expect("interval");
    // The true shift of every request is 30 ms, so of the 95th percentile too. Each run
    // assigns other users (the experiment's id is random), so the 95 % interval misses it
    // in one run in twenty; four standard errors, once in 16,000.
    let estimate = absolute["estimate"].as_f64().expect("estimate");
    let std_error = absolute["std_error"].as_f64().expect("se");
    assert!((estimate - 30.0).abs() < 4.0 * std_error, "{comparison}");
    assert!(ci[0].as_f64().expect("lo") > 0.0, "{comparison}");
    assert_eq!(comparison["improvement"], false);
    assert!(!comparison["sequential"].is_null(), "{comparison}");
    let guardrail = r["guardrails"]
        .as_array()
        .expect("guardrails")
        .iter()
        .find(|g| g["metric"] == "p95_latency")
        .expect("p95 guardrail");
    assert_eq!(guardrail["status"], "alarm", "{guardrail}");

    let paused = abx_origin::guardrails::check_all(&o.state)
        .await
        .expect("monitor")
        .paused;
    assert_eq!(paused, vec!["checkout_button_color".to_string()]);
    let e = o.get(&format!("/api/v1/experiments/{id}")).await.body;
    assert_eq!(e["status"], "paused");
    assert!(
        e["status_reason"]
            .as_str()
            .expect("reason")
            .contains("p95_latency"),
        "{e}"
    );
    for u in 0..50 {
        let reply = o
            .get(&format!(
                "/api/v1/experiments/checkout_button_color/assignment?user_id=checkout_button_color-user-{u}"
            ))
            .await;
        assert_eq!(reply.body["reason"], "not_running", "{}", reply.body);
    }
}

on_every_backend!(
    seed_experiment_latency_guardrail,
    the_seeds_experiment_pauses_on_a_latency_regression
);

/// A quantile metric added to a running experiment counts the requests the log still
/// holds; with no true difference its interval covers zero. What it measures cannot change
/// while the experiment runs.
async fn a_quantile_added_later_counts_the_logged_events(o: &TestOrigin) {
    create_seed_metrics(o).await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "median_latency", "kind": "quantile", "quantile": 0.5,
               "event_type": "latency_ms", "direction": "decrease"}),
    )
    .await;
    let id = o
        .start_experiment(common::experiment("speed", "checkout_conversion_rate"))
        .await;
    let (events, mut sent) = latency_traffic(o, "speed", &id, 800, 0.0).await;
    send(o, &events).await;
    let reply = o
        .patch(
            &format!("/api/v1/experiments/{id}"),
            json!({"guardrail_metrics": ["median_latency", "p95_latency"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    common::drain(&o.state).await;
    let r = o
        .get(&format!("/api/v1/experiments/{id}/results"))
        .await
        .body;
    assert_quantiles(&r, "median_latency", 0.5, &mut sent);
    assert_quantiles(&r, "p95_latency", 0.95, &mut sent);
    let reply = o
        .patch("/api/v1/metrics/median_latency", json!({"quantile": 0.9}))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

on_both_backends!(
    quantile_added_later,
    a_quantile_added_later_counts_the_logged_events
);

/// An experiment whose metrics are all quantiles: its units' rows keep buckets and no sum
/// at all (a quantile's running total is a constant zero), and its quantiles are the
/// events' sample quantiles.
async fn quantile_metrics_alone(o: &TestOrigin) {
    create_seed_metrics(o).await;
    let id = o
        .start_experiment(common::experiment("latency_only", "p95_latency"))
        .await;
    let (events, mut sent) = latency_traffic(o, "latency_only", &id, 400, 10.0).await;
    send(o, &events).await;
    let r = o
        .get(&format!("/api/v1/experiments/{id}/results"))
        .await
        .body;
    assert_quantiles(&r, "p95_latency", 0.95, &mut sent);
}

on_every_backend!(
    an_experiment_of_quantile_metrics_alone,
    quantile_metrics_alone
);

/// A quantile metric needs its quantile, strictly inside (0, 1), and only quantile metrics
/// take one; an experiment without a key takes its name, which must then be a valid key.
async fn quantile_definitions_and_keys_are_checked(o: &TestOrigin) {
    for (body, field) in [
        (
            json!({"key": "q", "kind": "quantile", "event_type": "latency_ms"}),
            "quantile",
        ),
        (
            json!({"key": "q", "kind": "quantile", "quantile": 1.0, "event_type": "latency_ms"}),
            "quantile",
        ),
        (
            json!({"key": "q", "kind": "mean", "quantile": 0.5, "event_type": "latency_ms"}),
            "quantile",
        ),
    ] {
        common::assert_invalid_metric(o, body, field).await;
    }
    o.create("/api/v1/metrics", common::metric("converted", "conversion"))
        .await;
    let variants = json!([{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]);
    let reply = o
        .post(
            "/api/v1/experiments",
            json!({"name": "Green checkout button", "variants": variants, "primary_metric": "converted"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(reply.body.to_string().contains("key"), "{}", reply.body);
    let reply = o
        .post(
            "/api/v1/experiments",
            json!({"variants": variants, "primary_metric": "converted"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
}

on_both_backends!(
    quantile_validation,
    quantile_definitions_and_keys_are_checked
);
