//! Event ingestion and the metric pipeline, on SQLite, PostgreSQL and (where the test is
//! about counts, not the SQL pipeline's own machinery) the JetStream + ClickHouse warehouse.
//! Rollups are compared with a naive model of the attribution rules computed from the
//! events sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;

use crate::common;
use crate::common::{TestOrigin, experiment, metric};
use abx_origin_domain::rollup::Sums;
use abx_origin_pipeline::tables;
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};

/// Rollup totals over days: variant → (units, multiple), and (variant, metric) → sums.
type Totals = (
    BTreeMap<String, (i64, i64)>,
    BTreeMap<(String, String), Sums>,
);

const T0: i64 = 1_700_000_000_000;

fn now() -> i64 {
    abx_origin_domain::clock::now_ms()
}

/// A deterministic UUID from a number, so tests can resend the same event.
fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn exposure(n: u64, unit: &str, experiment_id: &str, variant: &str, ts: i64) -> Json {
    json!({"event_id": event_id(n), "kind": "exposure", "unit": unit, "experiment_id": experiment_id, "variant": variant, "timestamp": ts})
}

fn conversion(n: u64, unit: &str, event_type: &str, value: f64, ts: i64) -> Json {
    json!({"event_id": event_id(n), "kind": "metric", "unit": unit, "event_type": event_type, "value": value, "timestamp": ts})
}

async fn drain(o: &TestOrigin) {
    common::drain(&o.state).await;
}

/// Sets up metrics (`conversion` conversion, `revenue` mean, `rps` ratio revenue/sessions)
/// and a running A/B experiment using all three; returns (experiment id, sdk key).
async fn running_experiment(o: &TestOrigin) -> (String, String) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    o.create("/api/v1/metrics", metric("revenue", "mean")).await;
    o.create("/api/v1/metrics", json!({"key": "rps", "kind": "ratio", "event_type": "revenue", "denominator_event_type": "session"})).await;
    let mut body = experiment("checkout", "conversion");
    body["secondary_metrics"] = json!(["revenue", "rps"]);
    let id = o.create("/api/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    (id, o.key("sdk").await)
}

/// Totals over days: variant → (units, multiple) and (variant, metric) → sums.
async fn rollups(o: &TestOrigin, experiment_id: &str) -> Totals {
    rollups_of(&o.state, experiment_id).await
}

async fn rollups_of(state: &abx_origin::AppState, experiment_id: &str) -> Totals {
    let rollups = common::rollups(state, experiment_id).await;
    let mut units = BTreeMap::new();
    for r in rollups.exposures {
        let entry = units.entry(r.variant).or_insert((0, 0));
        entry.0 += r.units;
        entry.1 += r.multiple;
    }
    let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
    for r in rollups.metrics {
        sums.entry((r.variant, r.metric)).or_default().add(&r.sums);
    }
    (units, sums)
}

/// The attribution rules, written plainly: per unit, the first exposure by timestamp; a
/// unit seen in two variants is excluded; metric events at or after the first exposure
/// count, earlier ones form the covariate.
#[derive(Default)]
struct Model {
    exposures: HashMap<String, Vec<(i64, String)>>,
    metrics: HashMap<String, Vec<(i64, String, f64)>>,
}

impl Model {
    fn expected(&self) -> Totals {
        let mut units = BTreeMap::new();
        let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
        for (unit, seen) in &self.exposures {
            let first = seen.iter().min_by_key(|(ts, _)| *ts).expect("exposed");
            let multiple = seen.iter().any(|(_, v)| *v != first.1);
            let entry = units.entry(first.1.clone()).or_insert((0, 0));
            if multiple {
                entry.1 += 1;
                continue;
            }
            entry.0 += 1;
            let events = self.metrics.get(unit).cloned().unwrap_or_default();
            let total = |post: bool, event_type: &str| -> (f64, usize) {
                let chosen: Vec<f64> = events
                    .iter()
                    .filter(|(ts, t, _)| t == event_type && (*ts >= first.0) == post)
                    .map(|(_, _, v)| *v)
                    .collect();
                (chosen.iter().sum(), chosen.len())
            };
            let (revenue, _) = total(true, "revenue");
            let (pre_revenue, _) = total(false, "revenue");
            let (_, conversions) = total(true, "conversion");
            let (_, pre_conversions) = total(false, "conversion");
            let (sessions, _) = total(true, "session");
            let (pre_sessions, _) = total(false, "session");
            // Per metric: x, the ratio's denominator y, and both before the exposure (c, d).
            let values = [
                (
                    "conversion",
                    f64::from(u8::from(conversions > 0)),
                    0.0,
                    f64::from(u8::from(pre_conversions > 0)),
                    0.0,
                ),
                ("revenue", revenue, 0.0, pre_revenue, 0.0),
                ("rps", revenue, sessions, pre_revenue, pre_sessions),
            ];
            for (metric, x, y, c, d) in values {
                let s = sums
                    .entry((first.1.clone(), metric.to_string()))
                    .or_default();
                s.add(&Sums {
                    sum_x: x,
                    sum_x2: x * x,
                    sum_y: y,
                    sum_y2: y * y,
                    sum_xy: x * y,
                    sum_c: c,
                    sum_c2: c * c,
                    sum_xc: x * c,
                    sum_d: d,
                    sum_d2: d * d,
                    sum_cd: c * d,
                    sum_xd: x * d,
                    sum_yc: y * c,
                    sum_yd: y * d,
                });
            }
        }
        (units, sums)
    }
}

fn assert_same(got: &BTreeMap<(String, String), Sums>, want: &BTreeMap<(String, String), Sums>) {
    for (key, w) in want {
        let g = got.get(key).copied().unwrap_or_default();
        for (name, (a, b)) in Sums::COLUMNS
            .into_iter()
            .zip(g.values().into_iter().zip(w.values()))
        {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{key:?} {name}: pipeline {a}, model {b}"
            );
        }
    }
}

async fn attribution(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let now = now();
    let mut model = Model::default();
    let mut events = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    // 300 units; deterministic pseudo-random mix of orders, values and a few units that
    // see both variants.
    for u in 0..300u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let t = now - 3_600_000 + (u as i64) * 1_000;
        let mut unit_events = vec![(t, exposure(next(), &unit, &id, variant, t))];
        model
            .exposures
            .entry(format!("user_id:{unit}"))
            .or_default()
            .push((t, variant.to_string()));
        if u % 37 == 0 {
            let other = if variant == "control" {
                "treatment"
            } else {
                "control"
            };
            unit_events.push((t + 5, exposure(next(), &unit, &id, other, t + 5)));
            model
                .exposures
                .entry(format!("user_id:{unit}"))
                .or_default()
                .push((t + 5, other.to_string()));
        }
        for k in 0..(u % 4) {
            // Some before the exposure (covariate), most after.
            let ts = if k == 0 && u % 3 == 0 {
                t - 60_000
            } else {
                t + 10 + k as i64
            };
            let (event_type, value) = match k % 3 {
                0 => ("revenue", 1.5 + (u % 7) as f64),
                1 => ("conversion", 1.0),
                _ => ("session", 1.0),
            };
            unit_events.push((ts, conversion(next(), &unit, event_type, value, ts)));
            model
                .metrics
                .entry(format!("user_id:{unit}"))
                .or_default()
                .push((ts, event_type.to_string(), value));
        }
        // Every fifth unit's events arrive in reverse: metrics logged before the exposure.
        if u % 5 == 0 {
            unit_events.reverse();
        }
        events.extend(unit_events.into_iter().map(|(_, e)| e));
    }
    for chunk in events.chunks(97) {
        assert_eq!(
            o.send_events(&sdk, chunk).await.status,
            StatusCode::ACCEPTED
        );
    }
    drain(o).await;
    let (units, sums) = rollups(o, &id).await;
    let (want_units, want_sums) = model.expected();
    assert_eq!(units, want_units);
    assert_same(&sums, &want_sums);

    // A full rebuild from the SQL pipeline's per-unit totals gives the same totals (the
    // warehouse computes from raw events every time: it has nothing to rebuild).
    if o.state.pipeline.warehouse.is_some() {
        return;
    }
    let plans = {
        let mut conn = o.state.db.pool.acquire().await.expect("connection");
        abx_origin_pipeline::attribution::load_plans(&mut conn)
            .await
            .expect("plans")
    };
    let mut tx = o.state.db.pool.begin().await.expect("tx");
    abx_origin_pipeline::attribution::rebuild(&mut tx, &id, &plans[&id])
        .await
        .expect("rebuild");
    tx.commit().await.expect("commit");
    let (_, rebuilt) = rollups(o, &id).await;
    assert_same(&rebuilt, &want_sums);
}
on_every_backend!(attribution_matches_the_model, attribution);

// The attribution checks again with batches of 50 events and room for 40 units in the
// pipeline's cache, so that units move between the cache and the database from batch to
// batch (and metric events logged before an exposure meet a cached unit).
on_both_backends!(
    attribution_across_small_batches_and_a_small_cache,
    attribution,
    |s: &mut abx_origin::Settings| {
        s.pipeline_batch = 50;
        s.pipeline_cache_units = 40;
    }
);

// Without a cache, a unit that the batch being written also touches can only come from
// that batch: the database does not have its new state yet.
on_both_backends!(
    attribution_across_overlapping_batches_without_a_cache,
    attribution,
    |s: &mut abx_origin::Settings| {
        s.pipeline_batch = 30;
        s.pipeline_cache_units = 0;
    }
);

// The pipeline takes new events from the log's tail in memory when it holds them. With a
// tail smaller than the backlog it reads the log first and then hands over to the tail
// mid-stream; with none it reads every batch from the log (as PostgreSQL always does).
backend_tests!(
    attribution_handing_over_from_the_log_to_a_small_tail,
    attribution,
    |s: &mut abx_origin::Settings| {
        s.pipeline_batch = 50;
        s.pipeline_tail_events = 70;
    },
    sqlite => Sqlite
);
backend_tests!(
    attribution_reading_every_batch_from_the_log,
    attribution,
    |s: &mut abx_origin::Settings| s.pipeline_tail_events = 0,
    sqlite => Sqlite
);

/// Two pipelines over one database take turns, one batch of 10 events each (each round is
/// logged just before its turn): each must notice that the other moved the cursor and not
/// trust the unit state it remembers from its own last batch.
async fn two_pipelines(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let other = abx_origin::AppState::start(o.settings.clone())
        .await
        .expect("a second origin")
        .state;
    let t = now() - 60_000;
    let mut model = Model::default();
    let mut n = 0;
    let units: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    let mut round = |kind: u8| {
        let mut events = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            n += 1;
            let key = format!("user_id:{unit}");
            let ts = t + i64::from(kind) * 1_000 + u as i64;
            if kind == 0 {
                let variant = if u % 2 == 0 { "control" } else { "treatment" };
                events.push(exposure(n, unit, &id, variant, ts));
                model
                    .exposures
                    .entry(key)
                    .or_default()
                    .push((ts, variant.into()));
            } else {
                let value = f64::from(kind) + u as f64;
                events.push(conversion(n, unit, "revenue", value, ts));
                model
                    .metrics
                    .entry(key)
                    .or_default()
                    .push((ts, "revenue".into(), value));
            }
        }
        events
    };
    for turn in 0..4 {
        let events = round(turn);
        assert_eq!(
            o.send_events(&sdk, &events).await.status,
            StatusCode::ACCEPTED
        );
        let pipeline = if turn % 2 == 0 { &o.state } else { &other };
        assert!(
            abx_origin_pipeline::attribution::run_once(&pipeline.pipeline)
                .await
                .expect("batch")
                > 0
        );
    }
    let (units, sums) = rollups(o, &id).await;
    let (want_units, want_sums) = model.expected();
    assert_eq!(units, want_units);
    assert_same(&sums, &want_sums);
    other.close_databases().await;
}

on_both_backends!(
    two_pipelines_sharing_a_database,
    two_pipelines,
    |s: &mut abx_origin::Settings| {
        s.roles.pipeline = false;
        s.pipeline_batch = 10;
    }
);

async fn duplicates(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now();
    let batch = vec![
        exposure(1, "a", &id, "control", t),
        conversion(2, "a", "conversion", 1.0, t + 1),
        conversion(2, "a", "conversion", 1.0, t + 1),
    ];
    let first = o.send_events(&sdk, &batch).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.body, json!({"accepted": 2, "duplicates": 1}));
    drain(o).await;
    // The same events again, after processing and after a restart: counted once.
    assert_eq!(
        o.send_events(&sdk, &batch).await.body,
        json!({"accepted": 0, "duplicates": 3})
    );
    drain(o).await;
    let restarted = o.restart().await;
    let router = abx_origin::app(restarted.clone());
    let body = json!({"events": batch}).to_string().into_bytes();
    let auth = format!("Bearer {sdk}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let reply = common::call(
        &router,
        Method::POST,
        "/api/v1/events",
        Some(body),
        &headers,
    )
    .await;
    assert_eq!(reply.body, json!({"accepted": 0, "duplicates": 3}));
    common::drain(&restarted).await;
    let (units, sums) = rollups_of(&restarted, &id).await;
    assert_eq!(units["control"], (1, 0));
    assert_eq!(
        sums[&("control".to_string(), "conversion".to_string())].sum_x,
        1.0
    );
    // Event lookup shows it logged and processed (in the SQL event log; the warehouse
    // keeps no per-event lookup).
    if o.state.pipeline.warehouse.is_some() {
        restarted.close_databases().await;
        return;
    }
    let auth = format!("Bearer {}", o.admin);
    let stored = common::call(
        &router,
        Method::GET,
        &format!("/api/v1/events/{}", event_id(2)),
        None,
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(stored.body["processed"], true);
    assert_eq!(stored.body["kind"], "metric");
    restarted.close_databases().await;
}
on_every_backend!(duplicates_count_once, duplicates);

async fn partial_batches(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now();
    let reply = o
        .send_events(
            &sdk,
            &[
                exposure(1, "a", &id, "control", t),
                json!({"kind": "metric"}),
                conversion(3, "a", "conversion", 1.0, t + 2 * 86_400_000),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS);
    assert_eq!(reply.body["accepted"], 1);
    let rejected = reply.body["rejected"].as_array().expect("rejected");
    assert_eq!(
        rejected
            .iter()
            .map(|r| r["index"].as_u64().expect("index"))
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(
        rejected[1]["reason"]
            .as_str()
            .expect("reason")
            .contains("future")
    );
    // Nothing valid: 400 with the reasons; not JSON: 400.
    let reply = o.send_events(&sdk, &[json!({"kind": "metric"})]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["code"], "no_valid_events");
    let reply = o
        .send(
            Method::POST,
            "/api/v1/events",
            Some(&sdk),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Too large: one event over 32 KiB, or a beacon body over 64 KiB.
    let mut big = conversion(9, "a", "conversion", 1.0, t);
    big["pad"] = json!("x".repeat(33_000));
    assert_eq!(
        o.send_events(&sdk, &[big]).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // A viewer key may not send events.
    let viewer = o.key("viewer").await;
    assert_eq!(
        o.send_events(&viewer, &[exposure(10, "b", &id, "control", t)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}
on_every_backend!(partial_and_invalid_batches, partial_batches);

async fn beacon_and_gzip(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now();
    // What navigator.sendBeacon sends: text/plain, key in the query string.
    let body = json!({"events": [exposure(1, "b1", &id, "treatment", t)]}).to_string();
    let reply = o
        .send_raw(
            Method::POST,
            &format!("/api/v1/events?key={sdk}"),
            body.into_bytes(),
            &[("content-type", "text/plain;charset=UTF-8")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        json!([exposure(2, "b2", &id, "control", t)])
            .to_string()
            .as_bytes(),
    )
    .expect("gzip");
    let reply = o
        .send_raw(
            Method::POST,
            "/api/v1/events",
            gz.finish().expect("gzip"),
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("authorization", &format!("Bearer {sdk}")),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    // The seed's per-experiment form.
    let reply = o
        .request(
            Method::POST,
            &format!("/api/v1/experiments/{id}/events"),
            Some(&sdk),
            Some(json!({"user_id": "b1", "event_type": "conversion", "value": 1})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    drain(o).await;
    let (units, sums) = rollups(o, &id).await;
    assert_eq!(units["treatment"], (1, 0));
    assert_eq!(units["control"], (1, 0));
    assert_eq!(
        sums[&("treatment".to_string(), "conversion".to_string())].sum_x,
        1.0
    );
}
on_every_backend!(beacon_and_gzip_bodies, beacon_and_gzip);

async fn ordering(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now() - 60_000;
    // A metric whose timestamp precedes the exposure is not attributed (it is covariate),
    // whatever order the events arrive in; one after it is, even if it arrived first.
    o.send_events(
        &sdk,
        &[
            conversion(1, "early", "conversion", 1.0, t - 1),
            conversion(2, "late", "conversion", 1.0, t + 1),
        ],
    )
    .await;
    drain(o).await;
    o.send_events(
        &sdk,
        &[
            exposure(3, "early", &id, "control", t),
            exposure(4, "late", &id, "treatment", t),
        ],
    )
    .await;
    drain(o).await;
    let (_, sums) = rollups(o, &id).await;
    let control = sums[&("control".to_string(), "conversion".to_string())];
    let treatment = sums[&("treatment".to_string(), "conversion".to_string())];
    assert_eq!(
        (control.sum_x, control.sum_c),
        (0.0, 1.0),
        "pre-exposure conversion is covariate only"
    );
    assert_eq!((treatment.sum_x, treatment.sum_c), (1.0, 0.0));
    // An exposure that arrives late but happened earlier moves the first exposure back.
    o.send_events(&sdk, &[exposure(5, "early", &id, "control", t - 10)])
        .await;
    drain(o).await;
    let (units, sums) = rollups(o, &id).await;
    assert_eq!(units["control"], (1, 0));
    let control = sums[&("control".to_string(), "conversion".to_string())];
    assert_eq!((control.sum_x, control.sum_c), (1.0, 0.0));
}
on_every_backend!(ordering_by_timestamp, ordering);

async fn dead_letters(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now();
    let unknown = "11111111-2222-4333-8444-555555555555";
    o.send_events(
        &sdk,
        &[
            exposure(1, "a", unknown, "control", t),
            exposure(2, "b", &id, "purple", t),
            exposure(3, "c", &id, "control", t),
        ],
    )
    .await;
    // Three failed attempts (the retry backoff is waited out by moving the clock of the
    // retry rows).
    for _ in 0..3 {
        drain(o).await;
        sqlx::query("UPDATE pipeline_retries SET next_attempt_ms = 0")
            .execute(&o.state.db.pool)
            .await
            .expect("due now");
    }
    drain(o).await;
    let admin = o.admin.clone();
    let letters = o
        .request(Method::GET, "/api/v1/dead-letters", Some(&admin), None)
        .await
        .body;
    let items = letters["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["error"]
            .as_str()
            .expect("error")
            .contains("unknown or archived experiment")
    );
    assert!(
        items[1]["error"]
            .as_str()
            .expect("error")
            .contains("no variant `purple`")
    );
    assert_eq!(items[0]["attempts"], 3);
    // The valid event went through; the metrics endpoint counts the dead letters.
    assert_eq!(rollups(o, &id).await.0["control"], (1, 0));
    // As the background task does every few seconds.
    o.state.refresh_gauges().await.expect("gauges");
    let metrics = String::from_utf8(o.request(Method::GET, "/metrics", None, None).await.bytes)
        .expect("text");
    assert!(metrics.contains("abx_dead_letters 2"), "{metrics}");
    assert!(metrics.contains("abx_events_accepted_total 3"));
    assert!(metrics.contains("abx_pipeline_lag_events 0"));
    // Replaying sends them through again (still failing here, so they return).
    let replayed = o
        .request(
            Method::POST,
            "/api/v1/dead-letters/replay",
            Some(&admin),
            Some(json!({})),
        )
        .await
        .body;
    assert_eq!(replayed["replayed"], 2);
    assert_eq!(
        o.request(Method::GET, "/api/v1/dead-letters", Some(&admin), None)
            .await
            .body["items"],
        json!([])
    );
}
on_both_backends!(dead_letter_queue, dead_letters);

async fn multiple_exposures_and_switchback(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("orders", "mean")).await;
    let mut body = experiment("surge", "orders");
    body["unit"] = json!("city");
    body["switchback_period_s"] = json!(3600);
    let id = o.create("/api/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    let sdk = o.key("sdk").await;
    let hour = 3_600_000;
    let base = (now() / hour - 3) * hour;
    // Paris flips arm each hour: two cells, no "multiple exposure".
    let events = vec![
        json!({"event_id": event_id(1), "kind": "exposure", "unit": "paris", "unit_attribute": "city", "experiment_id": id, "variant": "control", "timestamp": base + 10}),
        json!({"event_id": event_id(2), "kind": "metric", "unit": "paris", "unit_attribute": "city", "event_type": "orders", "value": 3, "timestamp": base + 20}),
        json!({"event_id": event_id(3), "kind": "exposure", "unit": "paris", "unit_attribute": "city", "experiment_id": id, "variant": "treatment", "timestamp": base + hour + 10}),
        json!({"event_id": event_id(4), "kind": "metric", "unit": "paris", "unit_attribute": "city", "event_type": "orders", "value": 5, "timestamp": base + hour + 20}),
    ];
    assert_eq!(
        o.send_events(&sdk, &events).await.status,
        StatusCode::ACCEPTED
    );
    drain(o).await;
    let (units, sums) = rollups(o, &id).await;
    assert_eq!(units["control"], (1, 0));
    assert_eq!(units["treatment"], (1, 0));
    assert_eq!(
        sums[&("control".to_string(), "orders".to_string())].sum_x,
        3.0
    );
    assert_eq!(
        sums[&("treatment".to_string(), "orders".to_string())].sum_x,
        5.0
    );
}
on_every_backend!(switchback_cells, multiple_exposures_and_switchback);

#[tokio::test]
async fn backpressure_answers_503_with_retry_after() {
    let settings = |s: &mut abx_origin::Settings| {
        s.max_pipeline_lag = 0;
        s.verify_exposures = true;
    };
    let Some(o) = TestOrigin::with(common::Backend::Sqlite, settings).await else {
        return;
    };
    let (id, sdk) = running_experiment(&o).await;
    let published = o.state.published();
    let context = abx_core::Context::new().with("user_id", "a");
    let assigned = published.evaluator.experiment("checkout", &context, now());
    let mine = assigned.and_then(|a| a.variant).expect("in traffic");
    let other = if mine == "control" {
        "treatment"
    } else {
        "control"
    };
    assert_eq!(
        o.send_events(&sdk, &[exposure(1, "a", &id, mine, now())])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // The pipeline has not run: one event of lag is now over the limit. A forged exposure
    // in the refused request is counted once, when the request is sent again and taken.
    let (t, forged) = (now(), exposure(3, "a", &id, other, now()));
    let events = [conversion(2, "a", "conversion", 1.0, t), forged];
    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key("retry-after"));
    drain(&o).await;
    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1);
    drain(&o).await;
    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.body["mismatched_exposures"], json!({ other: 1 }));
    // A request whose every event is refused (400, not sent again) counts its exposures.
    let alone = [exposure(4, "a", &id, other, now())];
    let reply = o.send_events(&sdk, &alone).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.body["mismatched_exposures"], json!({ other: 2 }));
    o.finish().await;
}

/// A process that only collects runs no pipeline: it measures the lag from the database
/// (every process's writes, the pipeline's position), as its background gauges last did.
/// It took its own pipeline position for 0, and once the log held more events than the
/// limit refused every event, whatever the real lag.
#[tokio::test]
async fn a_collector_without_a_pipeline_measures_the_lag_from_the_database() {
    let Some(o) = TestOrigin::with(common::Backend::Sqlite, |s| s.max_pipeline_lag = 1).await
    else {
        return;
    };
    let (_, sdk) = running_experiment(&o).await;
    let collector = o.another_process("collector").await;
    let router = abx_origin::app(collector.clone());
    let send = |n: u64| {
        let event = conversion(n, &format!("u{n}"), "conversion", 1.0, now());
        let body = json!({ "events": [event] });
        let authorization = format!("Bearer {sdk}");
        let router = router.clone();
        async move {
            let headers = [
                ("authorization", authorization.as_str()),
                ("content-type", "application/json"),
            ];
            let body = Some(body.to_string().into_bytes());
            common::call(&router, Method::POST, "/api/v1/events", body, &headers)
                .await
                .status
        }
    };
    // Two events in the log, none consumed: within the limit as last measured (nothing),
    // where the collector's own figures said two behind.
    assert_eq!(send(1).await, StatusCode::ACCEPTED);
    assert_eq!(send(2).await, StatusCode::ACCEPTED);
    // Measured again: two behind, over the limit.
    collector.refresh_gauges().await.expect("gauges");
    assert_eq!(send(3).await, StatusCode::SERVICE_UNAVAILABLE);
    // Once the pipeline (in the other process) has caught up, the next measure lets the
    // events in again.
    drain(&o).await;
    collector.refresh_gauges().await.expect("gauges");
    assert_eq!(send(3).await, StatusCode::ACCEPTED);
    o.finish().await;
}

#[tokio::test]
async fn retention_prunes_consumed_events_only() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let (id, sdk) = running_experiment(&o).await;
    o.send_events(&sdk, &[exposure(1, "a", &id, "control", now())])
        .await;
    let held = HashSet::new();
    let mut log = o
        .state
        .pipeline
        .log
        .pool
        .acquire()
        .await
        .expect("connection");
    // Not yet consumed: kept even past the cutoff.
    assert_eq!(
        tables::prune_events(&mut log, 0, now() + 10 * T0, &held)
            .await
            .expect("prune"),
        0
    );
    drop(log);
    drain(&o).await;
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let position = tables::cursor(&mut conn, abx_origin_pipeline::attribution::CURSOR)
        .await
        .expect("cursor");
    let mut log = o
        .state
        .pipeline
        .log
        .pool
        .acquire()
        .await
        .expect("connection");
    assert_eq!(
        tables::prune_events(&mut log, position, now() - 60_000, &held)
            .await
            .expect("prune"),
        0,
        "too recent"
    );
    // Held for a retry: kept.
    assert_eq!(
        tables::prune_events(&mut log, position, now() + 60_000, &HashSet::from([1]))
            .await
            .expect("prune"),
        0,
        "held"
    );
    assert_eq!(
        tables::prune_events(&mut log, position, now() + 60_000, &held)
            .await
            .expect("prune"),
        1
    );
    drop((conn, log));
    // The rollups survive pruning.
    assert_eq!(rollups(&o, &id).await.0["control"], (1, 0));
    o.finish().await;
}

/// On PostgreSQL an event's `seq` is handed out at insert and seen at commit. Two
/// collectors (of two processes) whose transactions commit out of order let the pipeline
/// read past the first one's rows before they committed, and skip them for good, though
/// both were acknowledged: event writes take turns.
#[tokio::test]
async fn event_writes_of_two_collectors_are_all_counted() {
    let Some(o) = TestOrigin::new(common::Backend::Postgres).await else {
        return;
    };
    let (id, _) = running_experiment(&o).await;
    let exposure = |n: u64| abx_origin_domain::event::EventRecord {
        event_id: event_id(n),
        received_at_ms: now(),
        ts_ms: now() - 60_000,
        kind: abx_origin_domain::event::Kind::Exposure {
            experiment_id: id.clone(),
            variant: "control".into(),
        },
        unit_key: format!("user_id:u{n}"),
        value: 1.0,
        properties: None,
    };
    let log = o.state.pipeline.log.clone();
    let mut first = log.begin_write().await.expect("begin");
    tables::insert_events(&mut first, &[&exposure(1)])
        .await
        .expect("insert");
    let second = tokio::spawn({
        let (log, event) = (log.clone(), exposure(2));
        async move {
            let mut tx = log.begin_write().await.map_err(|e| e.to_string())?;
            let inserted = tables::insert_events(&mut tx, &[&event]).await;
            inserted.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        }
    });
    // The second would commit first, and the pipeline run meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drain(&o).await;
    first.commit().await.expect("commit");
    second.await.expect("join").expect("the second write");
    drain(&o).await;
    assert_eq!(rollups(&o, &id).await.0["control"], (2, 0));
    o.finish().await;
}

// Versions before the event log had its own file logged events in `abx.db`. Those not yet
// consumed (and those kept for deduplication) must move over at the next start, once.
#[tokio::test]
async fn events_logged_in_the_main_file_move_to_the_event_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("abx.db").display());
    let old = abx_origin_store::db::Db::connect(&url, 1)
        .await
        .expect("open");
    old.migrate().await.expect("migrate");
    let records: Vec<abx_origin_domain::event::EventRecord> = (1..=3)
        .map(|n| abx_origin_domain::event::EventRecord {
            event_id: event_id(n),
            received_at_ms: now(),
            ts_ms: now(),
            kind: abx_origin_domain::event::Kind::Metric {
                event_type: "purchase".into(),
            },
            unit_key: format!("user_id:u{n}"),
            value: 1.0,
            properties: None,
        })
        .collect();
    let mut conn = old.pool.acquire().await.expect("connection");
    tables::insert_events(&mut conn, &records.iter().collect::<Vec<_>>())
        .await
        .expect("insert");
    drop(conn);
    old.pool.close().await;

    for start in 0..2 {
        let state = abx_origin::AppState::start(abx_origin::Settings::new(dir.path()))
            .await
            .expect("start")
            .state;
        let mut log = state.pipeline.log.pool.acquire().await.expect("connection");
        for record in &records {
            let logged = tables::find_event(&mut log, &record.event_id)
                .await
                .expect("find")
                .expect("moved to the event log");
            assert_eq!(logged.unit_key, record.unit_key);
        }
        assert_eq!(
            tables::max_seq(&mut log).await.expect("head"),
            3,
            "start {start}"
        );
        drop(log);
        let mut conn = state.db.pool.acquire().await.expect("connection");
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut *conn)
            .await
            .expect("count");
        assert_eq!(left, 0, "nothing stays behind in the main file");
        drop(conn);
        state.close_databases().await;
    }
    assert!(dir.path().join("abx-events.db").exists());
}

/// Issue 26: a value of 1e200 would make a metric's sum of squares infinite and its
/// statistics (a guardrail's among them) void. Every value must be within ±1e12, and a
/// metric's own range refuses the rest, each event with its reason; the results stay finite.
async fn values_out_of_range(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let bounded = o
        .patch(
            "/api/v1/metrics/revenue",
            json!({"value_min": 0, "value_max": 10000}),
        )
        .await;
    assert_eq!(bounded.status, StatusCode::OK, "{}", bounded.body);
    assert_eq!(bounded.body["value_max"], 10000.0);
    let bad = o
        .patch(
            "/api/v1/metrics/revenue",
            json!({"value_min": 5, "value_max": 1}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let t = now() - 60_000;
    let reply = o
        .send_events(
            &sdk,
            &[
                exposure(1, "a", &id, "control", t),
                conversion(2, "a", "revenue", 25.0, t + 1),
                conversion(3, "a", "revenue", 1e200, t + 2),
                conversion(4, "a", "revenue", 250_000.0, t + 3),
                conversion(5, "a", "revenue", -1.0, t + 4),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 2);
    let rejected = reply.body["rejected"].as_array().expect("rejected");
    let reasons: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().expect("index"),
                r["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(reasons.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(reasons[0].1.contains("1e12"), "{reasons:?}");
    assert!(reasons[1].1.contains("revenue"), "{reasons:?}");
    drain(o).await;
    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.status, StatusCode::OK);
    assert_eq!(
        results.body["variants"]["control"]["metrics"]["revenue"]["sum"],
        25.0
    );
}
on_both_backends!(out_of_range_values_are_refused, values_out_of_range);

/// PostgreSQL's text cannot hold NUL. An event whose unit has one is refused on its own
/// (it failed the write of every request batched with it, 500s to other clients), and so is
/// a lifecycle reason with one (a 500).
async fn nul_characters(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let t = now() - 60_000;
    let reply = o
        .send_events(
            &sdk,
            &[
                exposure(1, "a\u{0}", &id, "control", t),
                exposure(2, "a", &id, "control", t),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1);
    assert_eq!(
        reply.body["rejected"][0]["reason"],
        "`unit` must not contain NUL characters"
    );
    let paused = o
        .post(
            &format!("/api/v1/experiments/{id}/pause"),
            json!({"reason": "a\u{0}"}),
        )
        .await;
    assert_eq!(
        paused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        paused.body
    );
    assert_eq!(paused.body["error"]["details"][0]["field"], "reason");
    // The kill switch works whatever reason comes with it.
    let reason = format!("a\u{0}{}", "b".repeat(2_000));
    let killed = o
        .post(
            &format!("/api/v1/experiments/{id}/kill"),
            json!({ "reason": reason }),
        )
        .await;
    assert_eq!(killed.status, StatusCode::OK, "{}", killed.body);
    assert_eq!(killed.body["status"], "paused");
    drain(o).await;
    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.body["variants"]["control"]["impressions"], 1);
}
on_both_backends!(nul_characters_are_refused, nul_characters);

/// Exposures are checked against the assignment the snapshot gives their unit: a forged
/// variant, or a unit attribute that is not the experiment's, is refused per event with a
/// reason, counted apart in the results, and never reaches the figures.
async fn forged_exposures(o: &TestOrigin) {
    let (id, sdk) = running_experiment(o).await;
    let published = o.state.published();
    let assigned = |unit: &str| -> String {
        let context = abx_core::Context::new().with("user_id", unit);
        let a = published
            .evaluator
            .experiment("checkout", &context, now())
            .expect("the experiment");
        a.variant.expect("everyone is in traffic").to_owned()
    };
    let other = |variant: &str| {
        if variant == "control" {
            "treatment"
        } else {
            "control"
        }
    };
    let t = now() - 60_000;
    let mut events = Vec::new();
    let mut honest: BTreeMap<String, i64> = BTreeMap::new();
    let mut forged: BTreeMap<String, i64> = BTreeMap::new();
    for u in 0..300u64 {
        let unit = format!("u{u}");
        let variant = assigned(&unit);
        *honest.entry(variant.clone()).or_default() += 1;
        events.push(exposure(2 * u, &unit, &id, &variant, t));
        if u % 5 == 0 {
            // The same unit claiming the other arm: a forged or broken client.
            *forged.entry(other(&variant).to_owned()).or_default() += 1;
            events.push(exposure(2 * u + 1, &unit, &id, other(&variant), t + 1));
        }
    }
    // A QA override's exposure (a browser's client snapshot has no overrides, so it names
    // the hashed variant): refused, and not counted as forged.
    let patched = o
        .patch(
            &format!("/api/v1/experiments/{id}"),
            json!({"forced": {"qa-alice": "treatment"}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let overridden = o.state.published();
    let index = overridden
        .evaluator
        .experiment_index("checkout")
        .expect("known");
    let check = overridden
        .evaluator
        .exposure_check(index, "qa-alice", now())
        .expect("known");
    assert_eq!(check.reason, abx_core::Reason::Forced);
    events.push(exposure(20_000, "qa-alice", &id, "control", t));
    let mut wrong_unit = exposure(10_000, "u1", &id, &assigned("u1"), t);
    wrong_unit["unit_attribute"] = json!("device_id");
    *forged.entry(assigned("u1")).or_default() += 1;
    events.push(wrong_unit);
    // Made-up names are counted together, however many there are: a public key's claims
    // could otherwise add a row to every results response per name.
    for n in 0..3 {
        events.push(exposure(30_000 + n, "u2", &id, &format!("made_up_{n}"), t));
    }
    forged.insert("(not a variant)".into(), 3);

    let reply = o.send_events(&sdk, &events).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 300);
    let rejected = reply.body["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 65);
    let reasons = |prefix: &str| {
        rejected
            .iter()
            .filter(|r| r["reason"].as_str().is_some_and(|r| r.starts_with(prefix)))
            .count()
    };
    assert_eq!(
        (reasons("variant_mismatch"), reasons("forced_unit")),
        (64, 1)
    );

    drain(o).await;
    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.status, StatusCode::OK);
    for (variant, units) in &honest {
        assert_eq!(
            results.body["variants"][variant]["impressions"], *units,
            "{variant}"
        );
    }
    assert_eq!(results.body["multiple_exposures"], 0);
    assert_eq!(results.body["mismatched_exposures"], json!(forged));
}
on_both_backends!(
    forged_exposures_are_counted_apart,
    forged_exposures,
    |s: &mut abx_origin::Settings| s.verify_exposures = true
);
