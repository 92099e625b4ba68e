//! Events analysed in the ClickHouse warehouse (collector → JetStream → warehouse loader →
//! ClickHouse → results computed with SQL), against the real servers at
//! `ABX_TEST_NATS_URL` and `ABX_TEST_CLICKHOUSE_URL`. Each test uses a stream and a
//! database of its own and deletes them at the end. When a server is unreachable the tests
//! are skipped with a printed reason, unless `ABX_REQUIRE_ALL` is set (as in CI).
//!
//! Every test holds the warehouse to the SQL pipeline: the same events, sent to an origin
//! without stream or warehouse, must give the same results, daily series and interactions
//! included, and the same rollups to the last count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common;
use crate::common::{Backend, TestOrigin, experiment, metric};
use abx_origin::{AppState, Settings};
use abx_origin_domain::rollup::Sums;
use abx_origin_domain::rollup::{CappedRollup, Rollups};
use abx_origin_pipeline::clickhouse::{
    ClickHouse, ClickHouseConfig, Computation, generation_beside_ticks,
};
use abx_origin_pipeline::jetstream::{JetStreamConfig, Settle};
use abx_stats::QuantileEstimate;
use axum::http::StatusCode;
use serde_json::{Value as Json, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const DAY_MS: i64 = abx_origin_domain::clock::DAY_MS;
/// How long the warehouse is unreachable in the outage test (the minute).
const OUTAGE: Duration = Duration::from_secs(61);

/// An origin whose events go through a stream of its own into a warehouse database of its
/// own, at `clickhouse_url`.
async fn warehouse_origin(clickhouse_url: String) -> Option<(TestOrigin, JetStreamConfig)> {
    warehouse_origin_with(clickhouse_url, |_| {}).await
}

/// [`warehouse_origin`] with the rest of its settings adjusted by `adjust`.
async fn warehouse_origin_with(
    clickhouse_url: String,
    adjust: impl FnOnce(&mut Settings),
) -> Option<(TestOrigin, JetStreamConfig)> {
    let stream = common::test_stream(common::nats_or_skip().await?);
    let warehouse = ClickHouseConfig {
        url: clickhouse_url,
        database: format!("abx_t_{}", uuid::Uuid::new_v4().simple()),
    };
    let config = stream.clone();
    let o = TestOrigin::with(Backend::Sqlite, |s| {
        s.jetstream = Some(config);
        s.clickhouse = Some(warehouse);
        adjust(s);
    })
    .await
    .expect("origin with a warehouse");
    Some((o, stream))
}

/// Most tests' set-up: an origin with a stream and a warehouse of its own at
/// `clickhouse_url` ([`warehouse_origin`]), and the ids of the two experiments of
/// [`experiments`] with an sdk key; `None` when a server is unreachable (the test is
/// skipped).
async fn with_experiments(
    clickhouse_url: String,
) -> Option<(TestOrigin, JetStreamConfig, [String; 3])> {
    let (o, stream) = warehouse_origin(clickhouse_url).await?;
    let (checkout, banner, key) = experiments(&o).await;
    Some((o, stream, [checkout, banner, key]))
}

/// [`with_experiments`] with the warehouse at `ABX_TEST_CLICKHOUSE_URL`.
async fn set_up() -> Option<(TestOrigin, JetStreamConfig, [String; 3])> {
    with_experiments(common::clickhouse_or_skip().await?).await
}

async fn clean_up(state: &AppState) {
    let stream = state.event_stream.clone().expect("stream");
    stream.delete_streams().await.expect("delete streams");
    let warehouse = state.pipeline.warehouse.clone().expect("warehouse");
    warehouse.drop_database().await.expect("drop database");
}

/// Two experiments over the same users (for interactions) and six metrics (conversion,
/// mean with a pre-exposure covariate, ratio, capped means, quantile); returns their ids and
/// an sdk key.
async fn experiments(o: &TestOrigin) -> (String, String, String) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    o.create("/api/v1/metrics", metric("revenue", "mean")).await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "rps", "kind": "ratio", "event_type": "revenue", "denominator_event_type": "session"}),
    )
    .await;
    // A percentile cap moves with every unit's value, and a tick computes it from all units;
    // a fixed cap and a quantile's bucket sums add up over units and move by differences.
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue_capped", "kind": "mean", "event_type": "revenue", "cap": {"percentile": 0.8}}),
    )
    .await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue_capped_at_10", "kind": "mean", "event_type": "revenue", "cap": {"value": 10.0}}),
    )
    .await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "revenue_p75", "kind": "quantile", "quantile": 0.75, "event_type": "revenue"}),
    )
    .await;
    let mut ids = Vec::new();
    for key in ["checkout", "banner"] {
        let mut body = experiment(key, "conversion");
        body["secondary_metrics"] = json!([
            "revenue",
            "rps",
            "revenue_capped",
            "revenue_capped_at_10",
            "revenue_p75"
        ]);
        body["dimensions"] = json!(["tier"]);
        ids.push(o.start_experiment(body).await);
    }
    (ids[0].clone(), ids[1].clone(), o.key("sdk").await)
}

/// 240 users exposed over three days, with conversions, revenue (also before the
/// exposure), sessions, later events on the following day, users seen in both variants
/// (one of them with revenue, an hour after its first exposure) and a repeated event; in time order, as the SQL pipeline's daily split assumes.
fn scenario(checkout: &str, banner: &str) -> Vec<Json> {
    // One start for every scenario of the run: a test that computes the SQL pipeline's
    // results before midnight (UTC) and the warehouse's after would otherwise compare
    // scenarios a day apart.
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let t0 = *START.get_or_init(|| {
        let now = abx_origin_domain::clock::now_ms();
        (now - 3 * DAY_MS).div_euclid(DAY_MS) * DAY_MS + 3_600_000
    });
    let mut events = Vec::new();
    let mut n = 0u64;
    let mut push = |events: &mut Vec<Json>, mut event: Json| {
        n += 1;
        event["event_id"] = json!(format!("00000000-0000-4000-8000-{n:012x}"));
        events.push(event);
    };
    for u in 0..240i64 {
        let unit = format!("u{u}");
        let at = t0 + (u % 3) * DAY_MS + u * 1_000;
        let variant = |flip: bool| if flip { "treatment" } else { "control" };
        // Tiers for the drill-down (a number for some, none for others), and another tier
        // on a later exposure, which the drill-down must ignore.
        let tier = match u % 5 {
            0 => json!("gold"),
            1 | 2 => json!("silver"),
            3 => json!(3),
            _ => Json::Null,
        };
        let mut exposure = json!({"kind": "exposure", "unit": unit, "experiment_id": checkout, "variant": variant(u % 2 == 1), "timestamp": at});
        if !tier.is_null() {
            exposure["attributes"] = json!({"tier": tier, "seen": u % 2 == 0});
        }
        push(&mut events, exposure);
        if u % 5 != 0 {
            push(
                &mut events,
                json!({"kind": "exposure", "unit": unit, "experiment_id": banner, "variant": variant((u / 2) % 2 == 1), "timestamp": at + 1}),
            );
        }
        if u % 3 == 0 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "conversion", "value": 1, "timestamp": at + 10_000}),
            );
        }
        if u % 6 == 0 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "conversion", "value": 1, "timestamp": at + DAY_MS}),
            );
        }
        if u % 4 == 1 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "revenue", "value": 4.0, "timestamp": at - 20_000}),
            );
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "revenue", "value": (u % 7) as f64 * 2.5, "timestamp": at + 20_000}),
            );
        }
        if u % 8 == 1 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "revenue", "value": 3.0, "timestamp": at + DAY_MS + 5}),
            );
        }
        // Revenue in the other variant of each experiment too, so that quantiles and caps
        // compare variants.
        if u % 4 == 2 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "revenue", "value": 6.0 + (u % 5) as f64, "timestamp": at + 30_000}),
            );
        }
        if u % 2 == 0 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "session", "value": 1, "timestamp": at + 5_000}),
            );
        }
        if u % 4 == 0 {
            push(
                &mut events,
                json!({"kind": "metric", "unit": unit, "event_type": "session", "value": 1, "timestamp": at + DAY_MS + 7}),
            );
        }
        if u == 7 {
            push(
                &mut events,
                json!({"kind": "exposure", "unit": unit, "experiment_id": checkout, "variant": "control", "timestamp": at + 5}),
            );
        }
        // A unit with revenue seen in the other variant an hour later, the same day (in a
        // later round of the incremental test): it then counts nowhere, capped or quantile
        // alike. (A day later, the SQL pipeline's daily series would keep it on the days
        // before, where the warehouse's leaves it out of every day.)
        if u == 9 {
            push(
                &mut events,
                json!({"kind": "exposure", "unit": unit, "experiment_id": checkout, "variant": "control", "timestamp": at + 3_600_000}),
            );
        }
        if u % 9 == 2 {
            push(
                &mut events,
                json!({"kind": "exposure", "unit": unit, "experiment_id": checkout, "variant": variant(u % 2 == 1),
                       "timestamp": at + 60_000, "attributes": {"tier": "platinum"}}),
            );
        }
    }
    events.sort_by_key(|e| e["timestamp"].as_i64());
    let repeated = events[5].clone();
    events.push(repeated);
    events
}

async fn send_all(o: &TestOrigin, key: &str, events: &[Json], per_request: usize) {
    for chunk in events.chunks(per_request) {
        let reply = o.send_events(key, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
}

/// What a user of the API sees of an experiment: its results by day, without what differs
/// between two origins (the id, the running time).
async fn results(o: &TestOrigin, id: &str) -> Json {
    let reply = o
        .get(&format!("/api/v1/experiments/{id}/results?granularity=day"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let mut body = reply.body;
    let object = body.as_object_mut().expect("object");
    object.remove("experiment_id");
    object.remove("days_running");
    // Only the warehouse's results say when their rollups were computed.
    object.remove("rollups_computed_at");
    body
}

/// The drill-down by tier, the two largest tiers apart.
async fn by_tier(o: &TestOrigin, id: &str) -> Json {
    let reply = o
        .get(&format!(
            "/api/v1/experiments/{id}/results?dimension=tier&top=2"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

async fn interactions(o: &TestOrigin) -> Json {
    let reply = o.get("/api/v1/interactions").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

/// Rollups by (variant, day) and (variant, metric, day), without rows that add nothing.
type Normalised = (
    BTreeMap<(String, i64), (i64, i64)>,
    BTreeMap<(String, String, i64), Sums>,
);

fn normalise(rollups: Rollups) -> Normalised {
    let exposures = rollups
        .exposures
        .into_iter()
        .filter(|r| r.units != 0 || r.multiple != 0)
        .map(|r| ((r.variant, r.day), (r.units, r.multiple)))
        .collect();
    let metrics = rollups
        .metrics
        .into_iter()
        .filter(|r| r.sums != Sums::default())
        .map(|r| ((r.variant, r.metric, r.day), r.sums))
        .collect();
    (exposures, metrics)
}

/// Numbers equal to 1e-9 (relative), everything else exactly: sums of the same values in
/// another order may differ in the last bits.
fn assert_same(actual: &Json, expected: &Json, path: &str) {
    match (actual, expected) {
        (Json::Number(a), Json::Number(b)) => {
            let (a, b) = (a.as_f64().expect("f64"), b.as_f64().expect("f64"));
            assert!(close(a, b), "{path}: {a} ≠ {b}");
        }
        (Json::Object(a), Json::Object(b)) => {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{path}"
            );
            for (key, value) in a {
                assert_same(value, &b[key], &format!("{path}.{key}"));
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn assert_same_rollups(actual: &Normalised, expected: &Normalised) {
    assert_eq!(actual.0, expected.0, "exposure rollups");
    assert_eq!(
        actual.1.keys().collect::<Vec<_>>(),
        expected.1.keys().collect::<Vec<_>>(),
        "metric rollup rows"
    );
    for (key, sums) in &actual.1 {
        let expected = serde_json::to_value(expected.1[key]).expect("json");
        assert_same(
            &serde_json::to_value(sums).expect("json"),
            &expected,
            &format!("{key:?}"),
        );
    }
}

/// The scenario through the SQL pipeline: results of both experiments, interactions, and
/// the first experiment's rollups.
struct Expected {
    checkout: Json,
    /// The first experiment's drill-down by tier, two tiers apart.
    checkout_by_tier: Json,
    banner: Json,
    interactions: Json,
    rollups: Normalised,
    events: i64,
}

async fn through_the_sql_pipeline() -> Expected {
    let direct = TestOrigin::new(Backend::Sqlite).await.expect("origin");
    let (checkout, banner, key) = experiments(&direct).await;
    send_all(&direct, &key, &scenario(&checkout, &banner), 50).await;
    common::drain(&direct.state).await;
    let events = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&direct.state.pipeline.log.pool)
        .await
        .expect("count");
    Expected {
        checkout: results(&direct, &checkout).await,
        checkout_by_tier: by_tier(&direct, &checkout).await,
        banner: results(&direct, &banner).await,
        interactions: interactions(&direct).await,
        rollups: normalise(common::rollups(&direct.state, &checkout).await),
        events,
    }
}

async fn assert_matches_the_sql_pipeline(o: &TestOrigin, checkout: &str, banner: &str) {
    let expected = through_the_sql_pipeline().await;
    assert!(!expected.rollups.0.is_empty() && !expected.rollups.1.is_empty());
    assert!(
        expected.interactions["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty()),
        "{}",
        expected.interactions
    );
    assert_same_rollups(
        &normalise(common::rollups(&o.state, checkout).await),
        &expected.rollups,
    );
    assert_same(&results(o, checkout).await, &expected.checkout, "checkout");
    assert!(
        expected.checkout_by_tier["groups"]
            .as_array()
            .is_some_and(|g| g.len() == 4),
        "{}",
        expected.checkout_by_tier
    );
    let mut by_tier_here = by_tier(o, checkout).await;
    by_tier_here["experiment_id"] = expected.checkout_by_tier["experiment_id"].clone();
    by_tier_here["note"] = expected.checkout_by_tier["note"].clone();
    assert_same(
        &by_tier_here,
        &expected.checkout_by_tier,
        "checkout by tier",
    );
    assert_same(&results(o, banner).await, &expected.banner, "banner");
    assert_same(
        &interactions(o).await,
        &expected.interactions,
        "interactions",
    );
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    assert_eq!(
        warehouse.event_count().await.expect("count"),
        expected.events as u64
    );
}

#[tokio::test]
async fn the_warehouse_gives_the_results_of_the_sql_pipeline() {
    let Some((o, _, [checkout, banner, key])) = set_up().await else {
        return;
    };
    send_all(&o, &key, &scenario(&checkout, &banner), 50).await;
    common::drain(&o.state).await;

    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;
    let status = o.get("/api/v1/pipeline").await;
    assert_eq!(
        status.body["stream_pending_messages"],
        json!(0),
        "{}",
        status.body
    );
    clean_up(&o.state).await;
}

/// The answer of the ClickHouse server at `url` to `statement`, which must succeed.
async fn clickhouse_answer(url: &str, statement: String) -> String {
    reqwest::Client::new()
        .post(url)
        .body(statement)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("ClickHouse: {e}"))
        .text()
        .await
        .expect("ClickHouse's answer")
}

/// A warehouse whose tables are as the first version that made each one left them (raw
/// events without properties or load times, rollups without the ratio covariate's sums,
/// unit rows keyed by 128 bits with their contributions and none of the columns since) is
/// brought up to date when an origin connects: the events and rollups already there read
/// with the new columns empty, the unit rows (derived data) are dropped, and loads, a full
/// computation and a tick that moves it forward give the SQL pipeline's results.
#[tokio::test]
async fn a_warehouse_that_earlier_versions_made_is_brought_up_to_date() {
    // Both servers first, so that a skipped test leaves no database behind.
    let Some(url) = common::clickhouse_or_skip().await else {
        return;
    };
    if common::nats_or_skip().await.is_none() {
        return;
    }
    let database = format!("abx_t_{}", uuid::Uuid::new_v4().simple());
    let unit_columns =
        "experiment_id String, generation Int64, version Int64, ukey FixedString(16),
                        variant String, first_day Int64, multiple UInt8, days Array(Int64),
                        contributions Array(Array(Float64))";
    let partition = "toYYYYMM(toDate(toDateTime(intDiv(ts_ms, 1000))))";
    for statement in [
        format!("CREATE DATABASE {database}"),
        format!(
            "CREATE TABLE {database}.exposures (event_id String, experiment_id String,
               variant String, unit_key String, ts_ms Int64, received_ms Int64)
             ENGINE = ReplacingMergeTree PARTITION BY {partition}
             ORDER BY (experiment_id, variant, ts_ms, event_id)"
        ),
        format!(
            "CREATE TABLE {database}.metric_events (event_id String, event_type String,
               unit_key String, value Float64, ts_ms Int64, received_ms Int64)
             ENGINE = ReplacingMergeTree PARTITION BY {partition}
             ORDER BY (event_type, unit_key, ts_ms, event_id)"
        ),
        format!(
            "CREATE TABLE {database}.experiment_rollups (experiment_id String, computed_ms Int64,
               plan String, kind UInt8, variant String, metric String, day Int64, units Int64,
               multiples Int64, sum_x Float64, sum_x2 Float64, sum_y Float64, sum_y2 Float64,
               sum_xy Float64, sum_c Float64, sum_c2 Float64, sum_xc Float64)
             ENGINE = ReplacingMergeTree(computed_ms)
             ORDER BY (experiment_id, kind, variant, metric, day)"
        ),
        format!(
            "CREATE TABLE {database}.unit_rollups ({unit_columns})
             ENGINE = ReplacingMergeTree(version) PARTITION BY (experiment_id, generation)
             ORDER BY (experiment_id, generation, ukey)"
        ),
        format!(
            "CREATE TABLE {database}.unit_rollups_staging ({unit_columns})
             ENGINE = MergeTree PARTITION BY intDiv(version, 3600000)
             ORDER BY (experiment_id, version, ukey)"
        ),
        // The rows of an experiment that these versions computed, since deleted.
        format!(
            "INSERT INTO {database}.unit_rollups VALUES
               ('gone', 1, 1, '0123456789abcdef', 'control', 20000, 0, [20000], [[1, 1]])"
        ),
        format!(
            "INSERT INTO {database}.experiment_rollups (experiment_id, computed_ms, plan, kind,
               variant, metric, day, units, multiples, sum_x)
             VALUES ('gone', 1, 'earlier', 1, 'control', 'conversion', 20000, 0, 0, 3)"
        ),
    ] {
        clickhouse_answer(&url, statement).await;
    }
    let Some((o, _)) = warehouse_origin_with(url.clone(), |s| {
        s.clickhouse.as_mut().expect("warehouse settings").database = database.clone();
    })
    .await
    else {
        return;
    };
    let (checkout, banner, key) = experiments(&o).await;
    let events = scenario(&checkout, &banner);
    // A full computation of the first half, then a tick that moves it forward.
    let half = events.len() / 2;
    send_all(&o, &key, &events[..half], 50).await;
    common::drain(&o.state).await;
    let ids = [checkout.as_str(), banner.as_str()];
    let first = stored(&o, &ids).await;
    send_all(&o, &key, &events[half..], 50).await;
    common::drain(&o.state).await;
    for ((_, before), (_, after)) in first.iter().zip(stored(&o, &ids).await) {
        assert!(after.computed_ms > before.computed_ms);
        assert_eq!(after.generation, before.generation, "moved forward");
    }
    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;

    let unit_tables = clickhouse_answer(
        &url,
        format!(
            "SELECT table, type FROM system.columns
             WHERE database = '{database}' AND name = 'ukey' ORDER BY table FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(
        unit_tables.trim(),
        "unit_rollups\tUInt64\nunit_rollups_previous\tUInt64\nunit_rollups_staging\tUInt64"
    );
    let gone = clickhouse_answer(
        &url,
        format!("SELECT count() FROM {database}.unit_rollups WHERE experiment_id = 'gone'"),
    )
    .await;
    assert_eq!(gone.trim(), "0");
    let earlier = clickhouse_answer(
        &url,
        format!(
            "SELECT sum_x, sum_d, sum_yd FROM {database}.experiment_rollups
             WHERE experiment_id = 'gone' FORMAT TSV"
        ),
    )
    .await;
    assert_eq!(earlier.trim(), "3\t0\t0");
    clean_up(&o.state).await;
}

#[tokio::test]
async fn retries_and_a_loader_killed_mid_batch_double_nothing() {
    let Some((o, stream, [checkout, banner, key])) = set_up().await else {
        return;
    };
    let events = scenario(&checkout, &banner);

    // A collector that stored a request but whose answer was lost: the client sends it
    // again as it was (the broker drops it), and again in other batches (it gets through).
    send_all(&o, &key, &events[..200], 100).await;
    let again = o.send_events(&key, &events[..100]).await;
    assert_eq!(again.body["duplicates"], json!(100), "{}", again.body);
    send_all(&o, &key, &events[..200], 33).await;
    send_all(&o, &key, &events[200..], 100).await;

    // The loader inserts, then dies before acknowledging: after the deadline the stream
    // delivers the same messages again, and they are inserted a second time.
    let mut abandoned = 0;
    while abandoned < 10 {
        abandoned += common::load_round(&o.state, Settle::Abandon).await;
    }
    tokio::time::sleep(stream.ack_wait + Duration::from_millis(200)).await;
    common::drain(&o.state).await;

    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;
    clean_up(&o.state).await;
}

#[tokio::test]
async fn results_read_the_rollups_the_pipeline_computed_last() {
    let Some((o, _, [checkout, banner, key])) = set_up().await else {
        return;
    };
    let events = scenario(&checkout, &banner);
    let half = events.len() / 2;
    let path = format!("/api/v1/experiments/{checkout}/results");

    // Before any computation, results compute (and store) the rollups themselves.
    send_all(&o, &key, &events[..half], 50).await;
    common::load_stream(&o.state).await;
    let first = o.get(&path).await.body;
    let first_at = common::rollups_computed_ms(&first).expect("computed at");
    assert!(first["variants"]["control"]["impressions"].as_u64() > Some(0));

    // More events are loaded; until the pipeline's next tick, results show the stored
    // computation, and say when it was made.
    send_all(&o, &key, &events[half..], 50).await;
    common::load_stream(&o.state).await;
    let stale = o.get(&path).await.body;
    assert_eq!(common::rollups_computed_ms(&stale), Some(first_at));
    assert_eq!(stale["variants"], first["variants"]);

    // The tick recomputes both experiments: now they are the SQL pipeline's, exactly.
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let recomputed = abx_origin_pipeline::warehouse::refresh(&o.state.pipeline, &warehouse)
        .await
        .expect("refresh");
    assert_eq!(recomputed, Some(2));
    let fresh = o.get(&path).await.body;
    assert!(
        common::rollups_computed_ms(&fresh) > Some(first_at),
        "{fresh}"
    );
    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;

    // A completed experiment is still recomputed while late events may arrive. A metric
    // redefined afterwards makes the stored computation obsolete: results recompute it.
    for id in [&checkout, &banner] {
        let done = o
            .post(&format!("/api/v1/experiments/{id}/complete"), json!({}))
            .await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    }
    assert_eq!(
        abx_origin_pipeline::warehouse::refresh(&o.state.pipeline, &warehouse)
            .await
            .expect("refresh"),
        Some(2)
    );
    let before = o.get(&path).await.body;
    let redefined = o
        .patch(
            "/api/v1/metrics/rps",
            json!({"denominator_event_type": "conversion"}),
        )
        .await;
    assert_eq!(redefined.status, StatusCode::OK, "{}", redefined.body);
    let after = o.get(&path).await.body;
    assert!(
        common::rollups_computed_ms(&after) > common::rollups_computed_ms(&before),
        "{after}"
    );
    let rps = |results: &Json| {
        results["metrics"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["metric"] == "rps").cloned())
            .expect("rps")
    };
    assert_ne!(rps(&after), rps(&before));
    clean_up(&o.state).await;
}

/// A metric event of `unit`, received now, to write straight into the warehouse (the
/// collector refuses the old timestamps and the copies some tests need).
fn metric_event(
    event_id: &str,
    unit: &str,
    (event_type, value): (&str, f64),
    ts_ms: i64,
) -> abx_origin_domain::event::EventRecord {
    abx_origin_domain::event::EventRecord {
        event_id: event_id.into(),
        received_at_ms: abx_origin_domain::clock::now_ms(),
        ts_ms,
        kind: abx_origin_domain::event::Kind::Metric {
            event_type: event_type.into(),
        },
        unit_key: format!("user_id:{unit}"),
        value,
        properties: None,
    }
}

/// `unit`'s exposure to an experiment's variant, likewise.
fn exposure_event(
    event_id: &str,
    unit: &str,
    (experiment_id, variant): (&str, &str),
    ts_ms: i64,
) -> abx_origin_domain::event::EventRecord {
    abx_origin_domain::event::EventRecord {
        kind: abx_origin_domain::event::Kind::Exposure {
            experiment_id: experiment_id.into(),
            variant: variant.into(),
        },
        ..metric_event(event_id, unit, ("", 0.0), ts_ms)
    }
}

#[tokio::test]
async fn raw_events_past_retention_go_by_whole_months_once_no_experiment_needs_them() {
    let Some(url) = common::clickhouse_or_skip().await else {
        return;
    };
    let Some((o, _)) = warehouse_origin_with(url, |s| s.warehouse_retention_days = Some(60)).await
    else {
        return;
    };
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let id = o.start_experiment(experiment("old", "conversion")).await;
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");

    // Events straight into the warehouse (the collector refuses such old timestamps): one
    // in each of this month and the four months before it.
    let now = abx_origin_domain::clock::now_ms();
    let record = |n: i64| {
        let unit = format!("u{n}");
        metric_event(
            &format!("e{n}"),
            &unit,
            ("conversion", 1.0),
            now - n * 31 * DAY_MS,
        )
    };
    // And an exposure three months ago, whose unit's event that month counts.
    let exposure = exposure_event("x3", "u3", (&id, "control"), now - 3 * 31 * DAY_MS);
    // The running experiment started (as far as the warehouse knows) four months ago, an
    // hour into a month: it needs every month since, and the month before, in which a
    // client whose clock lags stamped an exposure.
    let month_start = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("a time");
        let first = t
            .replace_day(1)
            .expect("a first day")
            .replace_time(time::Time::MIDNIGHT);
        first.unix_timestamp() * 1_000
    };
    let started = month_start(now - 4 * 31 * DAY_MS) + 3_600_000;
    let lagging = exposure_event("x5", "u5", (&id, "control"), started - 2 * 3_600_000);
    let records = (0..5).map(record).chain([exposure, lagging]);
    warehouse
        .insert(&records.collect::<Vec<_>>())
        .await
        .expect("insert");
    let refresh = || abx_origin_pipeline::warehouse::refresh(&o.state.pipeline, &warehouse);

    sqlx::query("UPDATE experiments SET started_at_ms = ? WHERE id = ?")
        .bind(started)
        .bind(&id)
        .execute(&o.state.db.pool)
        .await
        .expect("backdate");
    refresh().await.expect("refresh");
    assert_eq!(warehouse.event_count().await.expect("count"), 7);

    // Once it has completed and settled, only the last 60 days (whole months) stay.
    // (Bumping its version, as every write of an experiment does: a metric is edited
    // below, and the snapshot that publishes checks it.)
    sqlx::query(
        "UPDATE experiments SET status = 'completed', ended_at_ms = ?, version = version + 1
         WHERE id = ?",
    )
    .bind(now - 2 * abx_origin_pipeline::warehouse::SETTLE_MS)
    .bind(&id)
    .execute(&o.state.db.pool)
    .await
    .expect("complete");
    // (With no margin for loads still committing: a month with rows loaded in the last
    // minutes waits for them to be summed before it goes.)
    let db = &o.state.pipeline.db;
    abx_origin_pipeline::warehouse::refresh_with_margin(db, Some(60), &warehouse, 0)
        .await
        .expect("refresh");
    let kept = warehouse.event_count().await.expect("count");
    assert!((2..=3).contains(&kept), "{kept} events kept");
    let oldest = warehouse.oldest_raw_month().await.expect("oldest month");
    let month = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("a time");
        u32::try_from(t.year()).expect("a year") * 100 + u32::from(u8::from(t.month()))
    };
    assert!(
        oldest.is_some_and(|m| m > month(started) && m <= month(now)),
        "{oldest:?}"
    );
    let stored = || async {
        warehouse
            .stored_rollups(&id)
            .await
            .expect("read")
            .expect("stored")
    };

    // Completed experiments do not pin their metrics: one edited since changes its plan.
    // With its exposure's month gone, neither a tick, nor the repair, nor a results
    // request computes it again from what is left (its units, exposed three and four
    // months ago, would no longer count): each keeps or reads the computation it settled
    // with.
    let settled = stored().await;
    let exposed = |r: &Rollups| r.exposures.iter().map(|e| e.units).sum::<i64>();
    assert_eq!(exposed(&settled.computation.rollups), 2, "u3 and u5");
    let reply = o
        .patch(
            "/api/v1/metrics/conversion",
            json!({"event_type": "purchase"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    abx_origin_pipeline::warehouse::refresh_with_margin(db, Some(60), &warehouse, 0)
        .await
        .expect("tick");
    abx_origin_pipeline::warehouse::rebuild_all(db, &warehouse)
        .await
        .expect("repair");
    assert_eq!(stored().await.computed_ms, settled.computed_ms);
    let read = results(&o, &id).await;
    assert_eq!(read["variants"]["control"]["impressions"], 2, "{read}");
    assert_eq!(stored().await.computed_ms, settled.computed_ms);

    // Versions before 0957952 let an experiment archived in its settling hour stop there,
    // and its months go: it keeps its computation rather than one from what is left, also
    // through a tick that drops more months (and then recomputes what still settles).
    let before = stored().await;
    sqlx::query("UPDATE experiments SET status = 'archived', ended_at_ms = ? WHERE id = ?")
        .bind(before.computed_ms - 60_000)
        .bind(&id)
        .execute(&o.state.db.pool)
        .await
        .expect("archive");
    abx_origin_pipeline::warehouse::refresh_with_margin(db, Some(0), &warehouse, 0)
        .await
        .expect("refresh");
    assert_eq!(
        warehouse.event_count().await.expect("count"),
        1,
        "this month's"
    );
    let after = stored().await;
    assert_eq!(
        after.computed_ms, before.computed_ms,
        "computed from what is left"
    );
    clean_up(&o.state).await;
}

/// Copies of an event stamped apart (a client's retry of an event without a timestamp,
/// stamped by the collector each time, that gets past the log's deduplication window) are
/// two rows of the raw events to a full computation, which keeps one per sorting key; a
/// tick that moves the rollups forward by such a copy counts it as the full computation
/// does, so that a repair changes nothing.
#[tokio::test]
async fn copies_stamped_apart_count_in_a_tick_as_in_a_full_computation() {
    let Some(url) = common::clickhouse_or_skip().await else {
        return;
    };
    let Some((o, _)) = warehouse_origin_with(url, |_| {}).await else {
        return;
    };
    o.create("/api/v1/metrics", metric("revenue", "mean")).await;
    let id = o.start_experiment(experiment("stamped", "revenue")).await;
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let now = abx_origin_domain::clock::now_ms();
    let purchase = |ts_ms: i64| {
        let id = "00000000-0000-4000-8000-000000000001";
        metric_event(id, "u1", ("revenue", 5.0), ts_ms)
    };
    let exposure_id = "00000000-0000-4000-8000-000000000002";
    let exposure = exposure_event(exposure_id, "u1", (&id, "control"), now - 3_600_000);
    let db = &o.state.pipeline.db;
    let tick = || abx_origin_pipeline::warehouse::refresh_with_margin(db, None, &warehouse, 0);
    warehouse
        .insert(&[exposure, purchase(now - 1_800_000)])
        .await
        .expect("insert");
    tick().await.expect("tick");
    let first = warehouse.stored_rollups(&id).await.expect("read");
    let first = first.expect("stored");
    warehouse
        .insert(&[purchase(now - 600_000)])
        .await
        .expect("insert the copy");
    tick().await.expect("tick");
    let moved = warehouse.stored_rollups(&id).await.expect("read");
    let moved = moved.expect("stored");
    assert_eq!(moved.generation, first.generation, "moved forward");
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let e = abx_origin_store::experiments::get(&mut conn, &id)
        .await
        .expect("read")
        .expect("found");
    let plan = abx_origin_domain::plan::plan_of(&e, &common::catalog_metrics(&mut conn).await);
    let generation = abx_origin_domain::clock::now_ms();
    let full = full_computation(&warehouse, (&id, &plan), generation).await;
    let sum_x = |r: &Rollups| r.metrics.iter().map(|m| m.sums.sum_x).sum::<f64>();
    assert_eq!(
        sum_x(&full.rollups),
        10.0,
        "two rows to the full computation"
    );
    assert_same_rollups(
        &normalise(moved.computation.rollups.clone()),
        &normalise(full.rollups.clone()),
    );
    clean_up(&o.state).await;
}

/// Per variant and metric of stored or computed rollups: Σx and Σc (the pre-exposure
/// covariate) over all days.
fn covariates(rollups: &Rollups) -> BTreeMap<(String, String), (f64, f64)> {
    let mut out = BTreeMap::<_, (f64, f64)>::new();
    for r in &rollups.metrics {
        let entry = out
            .entry((r.variant.clone(), r.metric.clone()))
            .or_default();
        entry.0 += r.sums.sum_x;
        entry.1 += r.sums.sum_c;
    }
    out
}

/// A unit's events before its exposure are its covariate however old they are: before a
/// month of raw events goes past retention its metric events are summed into the
/// warehouse's history, and every computation after (a tick that recomputes the unit, a
/// full one) still counts them, once, also when the summing ran before and the month was
/// not dropped (a tick that died between the two), and when it runs again.
#[tokio::test]
async fn pre_exposure_covariates_outlive_raw_event_retention() {
    let Some(url) = common::clickhouse_or_skip().await else {
        return;
    };
    let Some((o, _)) = warehouse_origin(url).await else {
        return;
    };
    let config = o.settings.clickhouse.clone().expect("warehouse settings");
    let (url, database) = (config.url, config.database);
    let clickhouse = |statement: String| {
        let url = url.clone();
        async move {
            let reply = reqwest::Client::new()
                .post(url)
                .body(statement)
                .send()
                .await
                .expect("ClickHouse");
            assert!(reply.status().is_success(), "{}", reply.status());
            reply.text().await.expect("answer")
        }
    };
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    o.create("/api/v1/metrics", metric("revenue", "sum")).await;
    o.create(
        "/api/v1/metrics",
        json!({"key": "vip_revenue", "kind": "sum", "event_type": "revenue",
               "filter": {"attr": "tier", "op": "eq", "value": "vip"}}),
    )
    .await;
    let mut body = experiment("old_users", "conversion");
    body["secondary_metrics"] = json!(["revenue", "vip_revenue"]);
    let id = o.start_experiment(body).await;
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let db = &o.state.pipeline.db;

    // Straight into the warehouse (the collector refuses such old timestamps): events of
    // u1 and u2 93 days ago (a month that 60 days of retention drop; one of them loaded
    // twice), the three units' exposures ten minutes ago and a conversion of u2's since.
    let now = abx_origin_domain::clock::now_ms();
    let old = now - 93 * DAY_MS;
    let event = metric_event;
    let with_tier = |mut e: abx_origin_domain::event::EventRecord, tier: &str| {
        e.properties = Some(json!({ "tier": tier }).to_string());
        e
    };
    let exposure = |unit: &str, variant: &str| {
        exposure_event(&format!("x-{unit}"), unit, (&id, variant), now - 600_000)
    };
    let old_events = [
        event("o1", "u1", ("conversion", 1.0), old),
        event("o1", "u1", ("conversion", 1.0), old),
        with_tier(event("o2", "u1", ("revenue", 5.0), old + 1), "vip"),
        with_tier(event("o3", "u1", ("revenue", 7.0), old + 2), "basic"),
        event("o4", "u2", ("conversion", 1.0), old + 3),
    ];
    for batch in [
        &old_events[..],
        &[
            exposure("u1", "control"),
            exposure("u2", "treatment"),
            exposure("u3", "treatment"),
            event("n1", "u2", ("conversion", 1.0), now - 300_000),
        ],
    ] {
        warehouse.insert(batch).await.expect("insert");
    }
    let tick = |retention_days| {
        abx_origin_pipeline::warehouse::refresh_with_margin(db, retention_days, &warehouse, 0)
    };
    tick(None).await.expect("first tick");
    let key = |variant: &str, metric: &str| (variant.to_string(), metric.to_string());
    let expected: BTreeMap<_, _> = [
        (key("control", "conversion"), (0.0, 1.0)),
        (key("control", "revenue"), (0.0, 12.0)),
        (key("control", "vip_revenue"), (0.0, 5.0)),
        (key("treatment", "conversion"), (1.0, 1.0)),
    ]
    .into_iter()
    .collect();
    let first = stored(&o, &[&id]).await.remove(0);
    assert_eq!(
        covariates(&first.1.computation.rollups),
        expected,
        "before any month went"
    );

    // A full computation after the old month was summed but not dropped (ticks that died
    // in between) counts each old event once: summed once, again with nothing new, and
    // again after a late event of that month, which a second batch sums.
    let old_month = warehouse
        .oldest_raw_month()
        .await
        .expect("oldest month")
        .expect("a month");
    let full = || async {
        let (plan, _) = stored(&o, &[&id]).await.remove(0);
        let generation = abx_origin_domain::clock::now_ms();
        let computation = full_computation(&warehouse, (&id, &plan), generation).await;
        warehouse
            .drop_generation(&id, generation)
            .await
            .expect("drop");
        covariates(&computation.rollups)
    };
    let sum_old_month = || async {
        let loaded_before = abx_origin_domain::clock::now_ms() + 1;
        let sum = warehouse.sum_month(old_month, loaded_before).await;
        let sum = sum.expect("summed");
        warehouse.count_sum(&sum).await.expect("counted");
    };
    // What an attempt at summing it that failed, or still runs, wrote: rows under an
    // attempt that no batch names, which count for nothing and the next summing drops.
    let orphan = format!(
        "INSERT INTO {database}.metric_events_history
           (month, batch, attempt, event_type, unit_key, value, events, ts_ms)
         VALUES ({old_month}, {now}, 7, 'revenue', 'user_id:u1', 100, 5, {old})"
    );
    clickhouse(orphan).await;
    assert_eq!(full().await, expected, "an attempt that did not end");
    for _ in 0..2 {
        sum_old_month().await;
        assert_eq!(full().await, expected, "summed, not dropped");
    }
    let orphans = format!("SELECT count() FROM {database}.metric_events_history WHERE attempt = 7");
    assert_eq!(clickhouse(orphans).await.trim(), "0", "dropped");
    let late = with_tier(event("o5", "u1", ("revenue", 2.0), old + 4), "basic");
    warehouse.insert(&[late]).await.expect("insert");
    let mut expected = expected;
    expected.insert(key("control", "revenue"), (0.0, 14.0));
    sum_old_month().await;
    assert_eq!(full().await, expected, "summed in two batches");

    // A month with a row loaded within a tick's margin for loads still committing waits
    // (the tick counts that row from the raw events); the next tick drops it, and that
    // changes nothing, nor do ticks that recompute u1 and u2 from what is left, nor a
    // full computation.
    let late = with_tier(event("o6", "u1", ("revenue", 1.0), old + 5), "basic");
    warehouse.insert(&[late]).await.expect("insert");
    expected.insert(key("control", "revenue"), (0.0, 15.0));
    let raw_before = warehouse.event_count().await.expect("count");
    let minutes = 5 * 60_000;
    abx_origin_pipeline::warehouse::refresh_with_margin(db, Some(60), &warehouse, minutes)
        .await
        .expect("tick");
    assert_eq!(warehouse.event_count().await.expect("count"), raw_before);
    let stored_covariates =
        || async { covariates(&stored(&o, &[&id]).await.remove(0).1.computation.rollups) };
    assert_eq!(stored_covariates().await, expected, "a month kept");
    // The next tick drops it. A computation made meanwhile without the ticks' lease (a
    // results request) that read the history before the tick summed the month's last event
    // and the raw events after the tick dropped them would miss that event: it finds the
    // history changed, and is made again.
    let (plan, _) = stored(&o, &[&id]).await.remove(0);
    let attempts = std::sync::Mutex::new(Vec::new());
    let computed = abx_origin_pipeline::warehouse::beside_ticks(&warehouse, |history| {
        let (attempts, plan, tick, id, warehouse) = (&attempts, &plan, &tick, &id, &warehouse);
        async move {
            if attempts.lock().expect("attempts").is_empty() {
                tick(Some(60)).await.expect("dropping tick");
            }
            let generation = abx_origin_domain::clock::now_ms();
            let computation = warehouse.rebuild((id, plan), generation, &history).await?;
            warehouse.drop_generation(id, generation).await?;
            let covariates = covariates(&computation.rollups);
            attempts.lock().expect("attempts").push(covariates.clone());
            Ok(covariates)
        }
    })
    .await
    .expect("computed beside the tick");
    let attempts = attempts.into_inner().expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_ne!(
        attempts[0], expected,
        "the first attempt missed the month's last event"
    );
    assert_eq!(computed, expected, "made again");
    // A full computation stored meanwhile (here a repair's) drops the experiment's older
    // generations of unit rows, but not those of a computation beside the ticks that may
    // still be summing them.
    let generation = generation_beside_ticks(abx_origin_domain::clock::now_ms());
    full_computation(&warehouse, (&id, &plan), generation).await;
    abx_origin_pipeline::warehouse::rebuild_all(db, &warehouse)
        .await
        .expect("repair")
        .expect("lease");
    let rows =
        format!("SELECT count() FROM {database}.unit_rollups WHERE generation = {generation}");
    assert_eq!(
        clickhouse(rows.clone()).await.trim(),
        "3",
        "left to the request"
    );
    warehouse
        .drop_generation(&id, generation)
        .await
        .expect("drop");
    assert_eq!(clickhouse(rows).await.trim(), "0");
    assert_eq!(
        warehouse.event_count().await.expect("count"),
        raw_before - 6,
        "the old month's six events went"
    );
    assert_eq!(stored_covariates().await, expected, "after the drop");
    assert!(
        warehouse.oldest_raw_month().await.expect("oldest") > Some(old_month),
        "dropped"
    );
    warehouse
        .insert(&[
            event("n2", "u1", ("conversion", 1.0), now - 60_000),
            event("n3", "u2", ("revenue", 3.0), now - 60_000),
        ])
        .await
        .expect("insert");
    tick(Some(60)).await.expect("tick");
    expected.insert(key("control", "conversion"), (1.0, 1.0));
    expected.insert(key("treatment", "revenue"), (3.0, 0.0));
    assert_eq!(stored_covariates().await, expected, "units recomputed");
    assert_eq!(full().await, expected, "a full computation");
    clean_up(&o.state).await;
}

/// A TCP proxy in front of ClickHouse that can cut it off: while down it refuses new
/// connections and has closed every open one.
struct Proxy {
    url: String,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(1);
        let (accepting, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let (target, mut cut) = (target.clone(), cuts.subscribe());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target.as_str()).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { url, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            let _ = self.cut.send(());
        }
    }
}

#[tokio::test]
async fn events_wait_in_the_stream_while_the_warehouse_is_down() {
    let Some(url) = common::clickhouse_or_skip().await else {
        return;
    };
    let proxy = Proxy::start(&url).await;
    let Some((o, _, [checkout, banner, key])) = with_experiments(proxy.url.clone()).await else {
        return;
    };

    // ClickHouse goes away for a minute: the collector still accepts (the stream holds the
    // events), the loader's inserts keep failing and it hands the messages back for later,
    // and results answer 503 rather than anything partial.
    proxy.set_up(false);
    let down_since = std::time::Instant::now();
    send_all(&o, &key, &scenario(&checkout, &banner), 500).await;
    let event_stream = o.state.event_stream.clone().expect("stream");
    let (messages, _) = event_stream.backlog().await.expect("backlog");
    assert!(messages > 0);
    // The outage lasts at least OUTAGE, and until every message has been delivered more
    // often than the 50 times after which it used to be dead-lettered (with the shortened
    // back-off that takes seconds, or longer on a loaded machine).
    let give_up = std::time::Instant::now() + Duration::from_secs(300);
    let mut attempts = 0;
    while down_since.elapsed() < OUTAGE || attempts as i64 <= 50 * messages {
        assert!(
            std::time::Instant::now() < give_up,
            "{attempts} deliveries of {messages} messages"
        );
        attempts += common::load_round(&o.state, Settle::Acknowledge).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = o
        .get(&format!("/api/v1/experiments/{checkout}/results"))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], json!("unavailable"));
    assert!(reply.headers.contains_key("retry-after"));
    let status = o.get("/api/v1/pipeline").await;
    assert!(
        status.body["stream_pending_messages"].as_i64() > Some(0),
        "{}",
        status.body
    );
    // Nothing was set aside: failing writes are not the messages' fault, even after more
    // deliveries than the 50 (about 46 minutes of production back-off) after which they
    // used to be dead-lettered.
    assert_eq!(event_stream.dead_letters().await.expect("dead letters"), 0);

    // Back up: after the back-off every event arrives, once.
    proxy.set_up(true);
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let mut waited = Duration::ZERO;
    // The longest back-off between deliveries is a minute.
    while warehouse.event_count().await.expect("count") == 0 {
        assert!(waited < Duration::from_secs(90), "events never arrived");
        common::drain(&o.state).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
    common::drain(&o.state).await;
    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;
    clean_up(&o.state).await;
}

/// A small deterministic generator for the fault schedule (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Numbers equal to 1e-9 (relative): sums of the same values in another order, or a
/// stored figure read back as ClickHouse prints it, may differ in the last bits.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Computations as the statistics read them: the quantile metrics' bucket sums exactly
/// (whole numbers), exposure counts exactly, sums close, and a row missing on one side as
/// zeros (sums moved forward by differences can leave a day a rounding error away from zero
/// where a full computation has no row); quantiles' units and events and capped units
/// exactly, estimates, caps and capped sums close.
fn assert_equivalent(actual: &Computation, expected: &Computation, context: &str) {
    assert!(
        !expected.quantile_sums.is_empty(),
        "{context}: no bucket sums"
    );
    assert_eq!(
        actual.quantile_sums, expected.quantile_sums,
        "{context}: bucket sums"
    );
    let (actual, expected) = (&actual.rollups, &expected.rollups);
    assert!(
        !expected.quantiles.is_empty() && !expected.capped.is_empty(),
        "{context}: no quantiles or capped sums"
    );
    let quantiles = |r: &Rollups| -> BTreeMap<(String, String), Option<QuantileEstimate>> {
        r.quantiles
            .iter()
            .map(|q| ((q.metric.clone(), q.variant.clone()), q.estimate))
            .collect()
    };
    let (a, b) = (quantiles(actual), quantiles(expected));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{context}: quantiles"
    );
    for (key, (a, b)) in a.iter().map(|(key, a)| (key, (a, &b[key]))) {
        let same = match (a, b) {
            (Some(a), Some(b)) => {
                (a.p, a.units, a.events) == (b.p, b.units, b.events)
                    && close(a.estimate, b.estimate)
                    && close(a.variance, b.variance)
            }
            (a, b) => a == b,
        };
        assert!(same, "{context}: quantile {key:?}: {a:?} ≠ {b:?}");
    }
    // By metric and variant: a stored computation reads back in the table's order.
    let capped = |r: &Rollups| -> BTreeMap<(String, String), CappedRollup> {
        r.capped
            .iter()
            .map(|c| ((c.metric.clone(), c.variant.clone()), c.clone()))
            .collect()
    };
    let (a, b) = (capped(actual), capped(expected));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{context}: capped"
    );
    for (a, b) in a.values().zip(b.values()) {
        let what = format!("{context}: capped {} {}", a.metric, a.variant);
        assert_eq!(
            (a.units, a.capped_units),
            (b.units, b.capped_units),
            "{what}"
        );
        assert!(close(a.cap, b.cap), "{what}: cap {} ≠ {}", a.cap, b.cap);
        for (a, b) in a.sums.values().iter().zip(b.sums.values()) {
            assert!(close(*a, b), "{what}: {a} ≠ {b}");
        }
    }
    let exposures = |r: &Rollups| -> BTreeMap<(String, i64), (i64, i64)> {
        r.exposures
            .iter()
            .map(|e| ((e.variant.clone(), e.day), (e.units, e.multiple)))
            .collect()
    };
    assert_eq!(
        exposures(actual),
        exposures(expected),
        "{context}: exposures"
    );
    let metrics = |r: &Rollups| -> BTreeMap<(String, String, i64), Sums> {
        r.metrics
            .iter()
            .map(|m| ((m.variant.clone(), m.metric.clone(), m.day), m.sums))
            .collect()
    };
    let (actual, expected) = (metrics(actual), metrics(expected));
    for key in actual.keys().chain(expected.keys()) {
        let a = actual.get(key).copied().unwrap_or_default().values();
        let b = expected.get(key).copied().unwrap_or_default().values();
        for (column, (a, b)) in Sums::COLUMNS.iter().zip(a.iter().zip(b)) {
            assert!(close(*a, b), "{context}: {key:?} {column}: {a} ≠ {b}");
        }
    }
}

/// The first tick after an experiment completes computes it in full, which leaves out what
/// was stamped after the end but counted before it (a client's clock running ahead); the
/// ticks of the settling hour after that move it forward again, and leave such events out
/// too.
#[tokio::test]
async fn an_ended_experiment_is_computed_in_full_once_then_moves_forward() {
    an_ended_experiment_settles(false).await;
}

/// The same when the experiment is archived right after it completes, before any tick: the
/// ticks still learn its end and let it settle.
#[tokio::test]
async fn an_experiment_archived_in_its_settling_hour_settles_too() {
    an_ended_experiment_settles(true).await;
}

async fn an_ended_experiment_settles(archive: bool) {
    let Some((o, _, [checkout, banner, key])) = set_up().await else {
        return;
    };
    let events = scenario(&checkout, &banner);
    let half = events.len() / 2;
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let db = &o.state.pipeline.db;
    let tick = || abx_origin_pipeline::warehouse::refresh_with_margin(db, None, &warehouse, 0);
    // Revenue of 1,000 from ten units exposed on the first day (in the first half), each
    // to one variant, stamped an hour ahead.
    let ahead = |batch: u64| -> Vec<Json> {
        let at = abx_origin_domain::clock::now_ms() + 3_600_000;
        (0..10u64)
            .map(|k| {
                json!({"event_id": format!("00000000-0000-4000-9000-{batch:04x}{k:08x}"),
                    "kind": "metric", "unit": format!("u{}", 6 * k), "event_type": "revenue",
                    "value": 1000.0, "timestamp": at})
            })
            // And a unit first exposed after the end, which no computation may count.
            .chain([
                json!({"event_id": format!("00000000-0000-4000-9000-{batch:04x}ffffffff"),
                "kind": "exposure", "unit": format!("late{batch}"), "experiment_id": checkout,
                "variant": "control", "timestamp": at}),
            ])
            .collect()
    };
    let revenue = |r: &Rollups| -> f64 {
        r.metrics
            .iter()
            .filter(|m| m.metric == "revenue")
            .map(|m| m.sums.sum_x)
            .sum()
    };

    send_all(&o, &key, &events[..half], 50).await;
    send_all(&o, &key, &ahead(1), 10).await;
    common::load_stream(&o.state).await;
    tick().await.expect("tick while running");
    let running = &stored(&o, &[checkout.as_str()]).await[0].1;

    for action in ["complete"].into_iter().chain(archive.then_some("archive")) {
        let done = o
            .post(
                &format!("/api/v1/experiments/{checkout}/{action}"),
                json!({}),
            )
            .await;
        assert_eq!(done.status, StatusCode::OK, "{action}: {}", done.body);
    }
    // Until the next tick, results read the computation made before the end.
    let reply = o
        .get(&format!("/api/v1/experiments/{checkout}/results"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        common::rollups_computed_ms(&reply.body),
        Some(running.computed_ms)
    );
    tick().await.expect("first tick after the end");
    let (plan, ended) = stored(&o, &[checkout.as_str()]).await.remove(0);
    assert!(plan.ends_at_ms.is_some());
    assert_ne!(ended.generation, running.generation, "computed in full");
    let (running_rollups, ended_rollups) =
        (&running.computation.rollups, &ended.computation.rollups);
    let left_out = revenue(running_rollups) - revenue(ended_rollups);
    assert!((left_out - 10_000.0).abs() < 1e-6, "left out {left_out}");
    let units = |r: &Rollups| r.exposures.iter().map(|e| e.units).sum::<i64>();
    assert_eq!(units(running_rollups) - units(ended_rollups), 1);

    // The rest of the events, and more from a clock ahead: the settling hour's ticks move
    // the computation forward, to what a full computation gives.
    for round in 2..4 {
        let from = half + (round - 2) * (events.len() - half) / 2;
        let to = half + (round - 1) * (events.len() - half) / 2;
        send_all(&o, &key, &events[from..to], 50).await;
        send_all(&o, &key, &ahead(round as u64), 10).await;
        common::load_stream(&o.state).await;
        let before = stored(&o, &[checkout.as_str(), banner.as_str()]).await;
        tick().await.expect("tick in the settling hour");
        for (id, (plan, previous)) in [&checkout, &banner].into_iter().zip(&before) {
            let after = warehouse
                .stored_rollups(id)
                .await
                .expect("read")
                .expect("stored");
            assert!(after.computed_ms > previous.computed_ms);
            assert_eq!(after.generation, previous.generation, "{id} moved forward");
            let full = full_computation(&warehouse, (id, plan), abx_origin_domain::clock::now_ms());
            let full = full.await;
            assert_equivalent(&after.computation, &full, &format!("{id}, round {round}"));
        }
    }
    clean_up(&o.state).await;
}

/// One unit's row of per-unit aggregates: variant, first day, whether it was exposed to
/// several variants, the days it has events on, its running totals at the end of each, its
/// values, and its events per bucket of each metric.
type UnitRow = (
    String,
    i64,
    u8,
    Vec<i64>,
    Vec<Vec<f64>>,
    Vec<f64>,
    Vec<Vec<i32>>,
    Vec<Vec<u64>>,
);

/// Each unit's newest row of the experiment's per-unit aggregates in `generation`, read
/// straight from ClickHouse, by the unit's hashed key.
async fn unit_rows(
    config: &ClickHouseConfig,
    experiment_id: &str,
    generation: i64,
) -> BTreeMap<String, UnitRow> {
    let query = format!(
        "SELECT hex(ukey) AS unit, argMax(variant, version) AS variant,
                argMax(first_day, version) AS first_day, argMax(multiple, version) AS multiple,
                argMax(days, version) AS days, argMax(totals, version) AS totals,
                argMax(unit_values, version) AS unit_values,
                argMax(quantile_buckets, version) AS quantile_buckets,
                argMax(quantile_counts, version) AS quantile_counts
         FROM {}.unit_rollups WHERE experiment_id = '{experiment_id}' AND generation = {generation}
         GROUP BY ukey FORMAT JSONEachRow",
        config.database
    );
    let body = reqwest::Client::new()
        .post(&config.url)
        .query(&[("output_format_json_quote_64bit_integers", "0")])
        .body(query)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("unit rows")
        .text()
        .await
        .expect("unit rows' body");
    body.lines()
        .map(|line| {
            let row: Json = serde_json::from_str(line).expect("a JSON row");
            let unit = row["unit"].as_str().expect("unit").to_string();
            let row: UnitRow = (
                row["variant"].as_str().expect("variant").to_string(),
                row["first_day"].as_i64().expect("first day"),
                serde_json::from_value(row["multiple"].clone()).expect("multiple"),
                serde_json::from_value(row["days"].clone()).expect("days"),
                serde_json::from_value(row["totals"].clone()).expect("totals"),
                serde_json::from_value(row["unit_values"].clone()).expect("values"),
                serde_json::from_value(row["quantile_buckets"].clone()).expect("buckets"),
                serde_json::from_value(row["quantile_counts"].clone()).expect("counts"),
            );
            (unit, row)
        })
        .collect()
}

/// The same units with the same variant, first day, days and events per bucket, and
/// running totals and values equal to 1e-9 (relative: a unit's events may be added in
/// another order).
fn assert_same_units(
    actual: &BTreeMap<String, UnitRow>,
    expected: &BTreeMap<String, UnitRow>,
    context: &str,
) {
    assert!(!expected.is_empty(), "{context}: no units");
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{context}: units"
    );
    for (unit, (a, b)) in actual.iter().map(|(u, a)| (u, (a, &expected[u]))) {
        assert_eq!(
            (&a.0, a.1, a.2, &a.3, &a.6, &a.7),
            (&b.0, b.1, b.2, &b.3, &b.6, &b.7),
            "{context}: unit {unit}"
        );
        let lengths = |row: &UnitRow| (row.4.iter().map(Vec::len).collect::<Vec<_>>(), row.5.len());
        assert_eq!(
            lengths(a),
            lengths(b),
            "{context}: unit {unit}'s totals and values"
        );
        let (a, b) = (
            [a.4.concat(), a.5.clone()].concat(),
            [b.4.concat(), b.5.clone()].concat(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!(close(*a, *b), "{context}: unit {unit}: {a} ≠ {b}");
        }
    }
}

/// A full computation of an experiment's rollups, as generation `generation`, from the
/// warehouse's history as it is now; checked against one in three passes by unit key,
/// made in a generation that an attempt before it filled already (as a retry that draws
/// the same generation finds it).
async fn full_computation(
    warehouse: &ClickHouse,
    experiment: (&str, &abx_origin_domain::plan::ExperimentPlan),
    generation: i64,
) -> Computation {
    let history = warehouse.history().await.expect("history");
    let computation = warehouse.rebuild(experiment, generation, &history);
    let computation = computation.await.expect("full computation");
    let aside = generation_beside_ticks(abx_origin_domain::clock::now_ms());
    let attempt = warehouse.rebuild_in_passes(experiment, aside, &history, 2);
    attempt.await.expect("an earlier attempt");
    let in_passes = warehouse.rebuild_in_passes(experiment, aside, &history, 3);
    let in_passes = in_passes.await.expect("full computation in passes");
    let dropped = warehouse.drop_generation(experiment.0, aside).await;
    dropped.expect("drop");
    // `assert_equivalent` expects quantile metrics; plans without them are compared as
    // the statistics read their exposures and sums.
    if computation.quantile_sums.is_empty() {
        let normalised = |c: &Computation| normalise(c.rollups.clone());
        assert_same_rollups(&normalised(&in_passes), &normalised(&computation));
    } else {
        assert_equivalent(&in_passes, &computation, "three passes against one");
    }
    computation
}

/// Each experiment's plan and stored computation.
async fn stored(
    o: &TestOrigin,
    ids: &[&str],
) -> Vec<(
    abx_origin_domain::plan::ExperimentPlan,
    abx_origin_pipeline::clickhouse::StoredRollups,
)> {
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let metrics = common::catalog_metrics(&mut conn).await;
    let mut out = Vec::new();
    for id in ids {
        let e = abx_origin_store::experiments::get(&mut conn, id)
            .await
            .expect("experiment")
            .expect("exists");
        let plan = abx_origin_domain::plan::plan_of(&e, &metrics);
        let stored = warehouse
            .stored_rollups(id)
            .await
            .expect("read")
            .expect("stored");
        out.push((plan, stored));
    }
    out
}

/// Ticks recompute only the units with events loaded since the previous computation and
/// add the difference they make. Whatever fails on the way (a client's retry that gets
/// past the broker, a loader killed between its insert and its acknowledgement, a tick
/// killed after writing its units' rows but before storing its rollups) and in whatever
/// order events arrive (late events, a unit's earlier exposure after its later one), each
/// tick's rollups equal a full computation from the deduplicated raw events.
#[tokio::test]
async fn incremental_ticks_equal_a_full_computation_whatever_fails() {
    let Some((o, _, [checkout, banner, key])) = set_up().await else {
        return;
    };
    let ids = [checkout.as_str(), banner.as_str()];
    let events = scenario(&checkout, &banner);
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let mut schedule = Schedule(0x9e37_79b9_7f4a_7c15);
    let db = &o.state.pipeline.db;
    let tick = || abx_origin_pipeline::warehouse::refresh_with_margin(db, None, &warehouse, 0);
    send_all(&o, &key, &events[..40], 40).await;
    common::load_stream(&o.state).await;
    tick().await.expect("first tick");
    // Computations stored by earlier versions: one whose unit rows were keyed by 128 bits
    // (named as this version names its own, less that), and one that kept no bucket sums
    // for its quantile metric (nor values, buckets or totals in its rows). Results read
    // them, and the next tick computes in full.
    let first = stored(&o, &ids).await;
    for (i, (id, (plan, s))) in ids.iter().zip(&first).enumerate() {
        let earlier = s.computed_ms + 1;
        let mut computation = s.computation.clone();
        let by = if i == 0 {
            let keyed_by_128_bits = s.plan.strip_suffix(" by 64-bit unit keys");
            keyed_by_128_bits
                .expect("named with its 64-bit keys")
                .to_string()
        } else {
            computation.quantile_sums.clear();
            format!("{} from unit values", plan.fingerprint())
        };
        warehouse
            .store_rollups(id, (&by, s.generation), earlier, &computation)
            .await
            .expect("store");
        let read = o.get(&format!("/api/v1/experiments/{id}/results")).await;
        assert_eq!(common::rollups_computed_ms(&read.body), Some(earlier));
    }
    tick().await.expect("tick");
    for (id, (_, s)) in ids.iter().zip(&first) {
        let after = warehouse.stored_rollups(id).await.expect("read");
        let after = after.expect("stored");
        assert!(
            after.generation > s.generation,
            "moved forward from rows keyed by 128 bits, or without bucket sums"
        );
    }

    let (mut sent, mut late) = (40, Vec::new());
    let (mut advanced, mut killed, mut rounds) = (0, 0, 0);
    while sent < events.len() || !late.is_empty() {
        rounds += 1;
        let size = (40 + schedule.below(100)).min(events.len() - sent);
        let mut batch: Vec<Json> = std::mem::take(&mut late);
        for e in &events[sent..sent + size] {
            // Some events arrive a round late.
            if schedule.below(8) == 0 {
                late.push(e.clone());
            } else {
                batch.push(e.clone());
            }
        }
        sent += size;
        if batch.is_empty() {
            continue;
        }
        send_all(&o, &key, &batch, 1 + schedule.below(batch.len())).await;
        if schedule.below(3) == 0 {
            // A client's retry in other batches: the broker lets it through.
            let from = schedule.below(batch.len());
            send_all(&o, &key, &batch[from..], 7).await;
        }
        if schedule.below(3) == 0 {
            // The loader inserts, then dies before acknowledging: the messages come back.
            common::load_round(&o.state, Settle::Abandon).await;
            tokio::time::sleep(Duration::from_millis(1_200)).await;
        }
        common::load_stream(&o.state).await;
        let before = stored(&o, &ids).await;
        let kill = schedule.below(4) == 0;
        if kill {
            // A tick dies after copying its units' rows, before storing its rollups.
            killed += 1;
            for (id, (plan, stored)) in ids.iter().zip(&before) {
                let version = abx_origin_domain::clock::now_ms();
                let mut computation = warehouse
                    .advance(id, plan, stored, version, stored.computed_ms)
                    .await
                    .expect("advance")
                    .expect("moved forward");
                // A tick retried at the version of one that died before its copy (a clock
                // standing still) would count the staged units twice: it computes in full.
                let retried = warehouse.advance(id, plan, stored, version, stored.computed_ms);
                assert!(retried.await.expect("advance again").is_none());
                warehouse
                    .commit_units((id, plan), (stored.generation, version), &mut computation)
                    .await
                    .expect("copy the units' rows");
            }
        }
        tick().await.expect("tick");
        for (id, (plan, previous)) in ids.iter().zip(&before) {
            let after = warehouse
                .stored_rollups(id)
                .await
                .expect("read")
                .expect("stored");
            assert!(after.computed_ms > previous.computed_ms);
            // Moved forward, unless a killed tick's rows forced a full computation.
            assert_eq!(
                after.generation == previous.generation,
                !kill,
                "round {rounds}"
            );
            advanced += usize::from(!kill);
            let generation = abx_origin_domain::clock::now_ms();
            let full = full_computation(&warehouse, (id, plan), generation).await;
            let context = format!("{id}, round {rounds}");
            assert_equivalent(&after.computation, &full, &context);
            // The per-unit aggregates themselves, not only their sums: each unit's newest
            // row in the generation the ticks moved forward is the row the full
            // computation wrote for it.
            let config = o.settings.clickhouse.as_ref().expect("warehouse settings");
            assert_same_units(
                &unit_rows(config, id, after.generation).await,
                &unit_rows(config, id, generation).await,
                &context,
            );
        }
    }
    eprintln!("{rounds} rounds: {advanced} advanced, {killed} killed");
    assert!(
        advanced >= 8 && killed >= 1,
        "{advanced} advanced, {killed} killed"
    );
    // And at the end, the results of the SQL pipeline given the same events.
    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;
    clean_up(&o.state).await;
}

/// A lease has one holder at a time: renewed by its holder, refused to others until it runs
/// out, then taken over; a release by anyone but its holder leaves it. `renew` extends only
/// a lease still held: not another's, nor one that ran out, taken since or not.
async fn one_lease_holder_at_a_time(o: &TestOrigin) {
    use abx_origin_store::leases::{release, renew, take};
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let (name, now) = ("a role", 1_000_000);
    assert!(
        take(&mut conn, name, "a", now, now + 60_000)
            .await
            .expect("take")
    );
    let refused = take(&mut conn, name, "b", now + 1, now + 60_001).await;
    assert!(!refused.expect("refused"));
    let renewed = take(&mut conn, name, "a", now + 30_000, now + 90_000).await;
    assert!(renewed.expect("renewed"));
    // Renewed, so still a's after its first term.
    let refused = take(&mut conn, name, "b", now + 60_000, now + 120_000).await;
    assert!(!refused.expect("refused"));
    // Run out: b takes it over, and a, late, is refused.
    let taken = take(&mut conn, name, "b", now + 90_000, now + 150_000).await;
    assert!(taken.expect("taken over"));
    let late = take(&mut conn, name, "a", now + 90_001, now + 150_001).await;
    assert!(!late.expect("refused"));
    release(&mut conn, name, "a").await.expect("release");
    let still = take(&mut conn, name, "c", now + 90_002, now + 150_002).await;
    assert!(!still.expect("still b's"));
    release(&mut conn, name, "b").await.expect("release");
    let free = take(&mut conn, name, "c", now + 90_003, now + 150_003).await;
    assert!(free.expect("free"));

    let held = renew(&mut conn, name, "c", now + 100_000, now + 160_000).await;
    assert!(held.expect("renewed"));
    let others = renew(&mut conn, name, "b", now + 100_001, now + 160_001).await;
    assert!(!others.expect("not b's"));
    // c stalls past its lease: nobody took it, yet c cannot extend it.
    let stale = renew(&mut conn, name, "c", now + 160_000, now + 220_000).await;
    assert!(!stale.expect("ran out"));
}

on_both_backends!(leases, one_lease_holder_at_a_time);

/// The ticks read archived experiments by their end: those that ended at or after a time,
/// and nothing else.
async fn archived_experiments_by_their_end(o: &TestOrigin) {
    use abx_origin_store::experiments::{archived_since, get};
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let archived = o
        .start_experiment(experiment("archived", "conversion"))
        .await;
    let completed = o
        .start_experiment(experiment("completed", "conversion"))
        .await;
    for (id, actions) in [
        (&archived, &["complete", "archive"][..]),
        (&completed, &["complete"][..]),
    ] {
        for action in actions {
            let reply = o
                .post(&format!("/api/v1/experiments/{id}/{action}"), json!({}))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    }
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let found = get(&mut conn, &archived)
        .await
        .expect("read")
        .expect("found");
    let ended = found.ended_at_ms.expect("ended");
    let ids = |experiments: Vec<abx_origin_domain::model::experiment::Experiment>| {
        experiments.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    let since = archived_since(&mut conn, ended).await.expect("read");
    assert_eq!(ids(since), std::slice::from_ref(&archived));
    let after = archived_since(&mut conn, ended + 1).await.expect("read");
    assert!(after.is_empty());
}

on_both_backends!(archived, archived_experiments_by_their_end);

/// One process at a time ticks: while another holds the ticks' lease, a tick and a repair
/// compute nothing, and results are computed but not stored; once that lease runs out, a
/// tick takes it over and gives it up when done.
#[tokio::test]
async fn ticks_wait_for_the_process_that_holds_them() {
    use abx_origin_pipeline::warehouse::{TICKS_LEASE, rebuild_all, refresh_with_margin};
    use abx_origin_store::leases::take;
    let Some((o, _, [checkout, banner, _])) = set_up().await else {
        return;
    };
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let db = &o.state.pipeline.db;
    let mut conn = db.pool.acquire().await.expect("connection");
    let now = abx_origin_domain::clock::now_ms();
    let other = "another process";
    assert!(
        take(&mut conn, TICKS_LEASE, other, now, now + 600_000)
            .await
            .expect("take")
    );
    let tick = refresh_with_margin(db, None, &warehouse, 0).await;
    assert_eq!(tick.expect("tick"), None);
    assert_eq!(rebuild_all(db, &warehouse).await.expect("repair"), None);
    for id in [&checkout, &banner] {
        let stored = warehouse.stored_rollups(id).await.expect("read");
        assert!(stored.is_none(), "computed without the lease");
    }
    // A results request does not wait for the ticks: it computes, answers and keeps nothing
    // (storing would drop unit rows that a tick may be moving forward).
    let reply = o
        .get(&format!("/api/v1/experiments/{checkout}/results"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(common::rollups_computed_ms(&reply.body).is_some());
    assert!(
        warehouse
            .stored_rollups(&checkout)
            .await
            .expect("read")
            .is_none()
    );
    let config = o.settings.clickhouse.as_ref().expect("warehouse settings");
    let kept = clickhouse_answer(
        &config.url,
        format!(
            "SELECT count() FROM {}.unit_rollups WHERE experiment_id = '{checkout}'",
            config.database
        ),
    )
    .await;
    assert_eq!(kept.trim(), "0", "unit rows kept");

    // The other process died: its lease runs out.
    sqlx::query("UPDATE leases SET expires_at_ms = ? WHERE name = ?")
        .bind(now)
        .bind(TICKS_LEASE)
        .execute(&mut *conn)
        .await
        .expect("run out");
    let tick = refresh_with_margin(db, None, &warehouse, 0).await;
    assert_eq!(tick.expect("tick"), Some(2));
    for id in [&checkout, &banner] {
        let stored = warehouse.stored_rollups(id).await.expect("read");
        assert!(stored.is_some(), "not computed");
    }
    let later = abx_origin_domain::clock::now_ms();
    let free = take(&mut conn, TICKS_LEASE, other, later, later + 60_000).await;
    assert!(free.expect("take"), "the tick kept the lease");
    drop(conn);
    clean_up(&o.state).await;
}

/// A tick and a repair go on past an experiment they cannot compute (here one whose stored
/// rollups no longer decode; in production as likely a statement over the warehouse's
/// limits): the experiments listed after it are still computed, and the tick fails naming
/// it. Once it reads again, the next tick computes both.
#[tokio::test]
async fn a_failing_experiment_does_not_hold_back_the_others() {
    use abx_origin_pipeline::warehouse::{rebuild_all, refresh_with_margin};
    let Some((o, _, [checkout, banner, key])) = set_up().await else {
        return;
    };
    let warehouse = o.state.pipeline.warehouse.clone().expect("warehouse");
    let db = &o.state.pipeline.db;
    let events = scenario(&checkout, &banner);
    let half = events.len() / 2;
    send_all(&o, &key, &events[..half], 50).await;
    common::load_stream(&o.state).await;
    let tick = refresh_with_margin(db, None, &warehouse, 0).await;
    assert_eq!(tick.expect("tick"), Some(2));
    let computed_ms = |id: String| {
        let warehouse = warehouse.clone();
        async move {
            let stored = warehouse.stored_rollups(&id).await.expect("read");
            stored.expect("stored").computed_ms
        }
    };
    let banner_before = computed_ms(banner.clone()).await;

    // `checkout` is listed first (created first). A stored row whose sum is not a number
    // is written out as `null`, which no computation reads back.
    let config = o.settings.clickhouse.clone().expect("warehouse settings");
    let stored_row = |computed_ms: i64, sum: &str| {
        clickhouse_answer(
            &config.url,
            format!(
                "INSERT INTO {}.experiment_rollups (experiment_id, computed_ms, plan, kind,
                     variant, metric, day, sum_x)
                 VALUES ('{checkout}', {computed_ms}, '', 2, 'control', 'corrupt', 0, {sum})",
                config.database
            ),
        )
    };
    stored_row(1, "nan").await;
    assert!(warehouse.stored_rollups(&checkout).await.is_err());

    send_all(&o, &key, &events[half..], 50).await;
    common::load_stream(&o.state).await;
    for run in ["tick", "repair"] {
        let result = match run {
            "tick" => refresh_with_margin(db, None, &warehouse, 0).await,
            _ => rebuild_all(db, &warehouse).await,
        };
        match result {
            Err(abx_origin_pipeline::Error::ExperimentsFailed { failed }) => {
                assert_eq!(failed, std::slice::from_ref(&checkout), "{run}")
            }
            other => panic!("the {run} should fail naming checkout: {other:?}"),
        }
        let banner_now = computed_ms(banner.clone()).await;
        assert!(banner_now > banner_before, "{run} left banner behind");
    }

    // A newer row of the same key replaces it; being of no stored computation, it is not
    // read as a rollup.
    stored_row(2, "0").await;
    let tick = refresh_with_margin(db, None, &warehouse, 0).await;
    assert_eq!(tick.expect("tick"), Some(2));
    assert_matches_the_sql_pipeline(&o, &checkout, &banner).await;
    clean_up(&o.state).await;
}
