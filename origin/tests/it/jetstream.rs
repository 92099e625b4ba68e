//! Events through NATS JetStream (collector → stream → loader → event log → pipeline),
//! against the real broker at `ABX_TEST_NATS_URL` (default `nats://127.0.0.1:4222`). Each
//! test uses a stream and subjects of its own and deletes them at the end. When the broker
//! is unreachable the tests are skipped with a printed reason, unless `ABX_REQUIRE_ALL` is
//! set (as in CI), where they fail.
//!
//! The loader is driven step by step (`load_once`) so that the faults happen exactly where
//! a test puts them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common;
use crate::common::{Backend, TestOrigin, experiment, metric};
use abx_origin::AppState;
use abx_origin_domain::rollup::Rollups;
use abx_origin_pipeline::jetstream::{self, EventStream, JetStreamConfig, Settle};
use abx_origin_pipeline::tables;
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};

/// A collector on a stream of its own with the experiment running: (stream config, origin,
/// experiment id, sdk key, the scenario's events). `None` when the test is skipped.
async fn collector_with_experiment()
-> Option<(JetStreamConfig, TestOrigin, String, String, Vec<Json>)> {
    let config = common::test_stream(common::nats_or_skip().await?);
    let o = collector(&config).await;
    let (id, key) = running_experiment(&o).await;
    let events = scenario(&id);
    Some((config, o, id, key, events))
}

/// An origin whose events go through the given stream.
async fn collector(config: &JetStreamConfig) -> TestOrigin {
    let config = config.clone();
    TestOrigin::with(Backend::Sqlite, |s| s.jetstream = Some(config))
        .await
        .expect("SQLite origin")
}

fn stream_of(state: &AppState) -> Arc<EventStream> {
    state.event_stream.clone().expect("origin has a stream")
}

const T0_OFFSET_MS: i64 = 3_600_000;

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// 120 units over two variants; conversions and revenue, some before the exposure (not
/// attributed, or the covariate), one unit seen in both variants, and a repeated event.
fn scenario(experiment_id: &str) -> Vec<Json> {
    let t0 = abx_origin_domain::clock::now_ms() - T0_OFFSET_MS;
    let mut events = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        event_id(n)
    };
    for u in 0..120u64 {
        let unit = format!("u{u}");
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        let exposed_at = t0 + u as i64 * 1_000;
        events.push(json!({"event_id": next(), "kind": "exposure", "unit": unit, "experiment_id": experiment_id, "variant": variant, "timestamp": exposed_at}));
        if u % 3 == 0 {
            events.push(json!({"event_id": next(), "kind": "metric", "unit": unit, "event_type": "conversion", "value": 1, "timestamp": exposed_at + 10}));
        }
        if u % 4 == 1 {
            events.push(json!({"event_id": next(), "kind": "metric", "unit": unit, "event_type": "revenue", "value": (u % 7) as f64 * 2.5, "timestamp": exposed_at + 20}));
            events.push(json!({"event_id": next(), "kind": "metric", "unit": unit, "event_type": "revenue", "value": 4.0, "timestamp": exposed_at - 20}));
        }
        if u == 7 {
            events.push(json!({"event_id": next(), "kind": "exposure", "unit": unit, "experiment_id": experiment_id, "variant": "control", "timestamp": exposed_at + 5}));
        }
    }
    let repeated = events[5].clone();
    events.push(repeated);
    events
}

/// Sets up the metrics and a running experiment; returns (experiment id, sdk key).
async fn running_experiment(o: &TestOrigin) -> (String, String) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    o.create("/api/v1/metrics", metric("revenue", "mean")).await;
    let mut body = experiment("checkout", "conversion");
    body["secondary_metrics"] = json!(["revenue"]);
    let id = o.start_experiment(body).await;
    (id, o.key("sdk").await)
}

/// Sends the events in requests of `per_request`; every request must be accepted.
async fn send_all(o: &TestOrigin, key: &str, events: &[Json], per_request: usize) {
    for chunk in events.chunks(per_request) {
        let reply = o.send_events(key, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
}

/// An experiment's rollups in the SQL pipeline's tables.
async fn rollups(state: &AppState, experiment_id: &str) -> Rollups {
    let mut conn = state.db.pool.acquire().await.expect("connection");
    Rollups {
        exposures: tables::exposure_rollups(&mut conn, experiment_id)
            .await
            .expect("exposure rollups"),
        metrics: tables::metric_rollups(&mut conn, experiment_id)
            .await
            .expect("metric rollups"),
        quantiles: Vec::new(),
        capped: Vec::new(),
    }
}

async fn logged_events(state: &AppState) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&state.pipeline.log.pool)
        .await
        .expect("count")
}

/// Messages the loaders have not acknowledged, over every stream of the log.
async fn consumer_backlog(stream: &EventStream) -> i64 {
    stream.backlog().await.expect("backlog").0
}

/// Messages stored in each of the log's streams, by number (the first stream is 0).
async fn messages_per_stream(config: &JetStreamConfig) -> Vec<u64> {
    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut counts = Vec::new();
    for k in 0.. {
        let name = match k {
            0 => config.stream.clone(),
            k => format!("{}_{k}", config.stream),
        };
        let Ok(mut stream) = js.get_stream(&name).await else {
            break;
        };
        counts.push(stream.info().await.expect("stream info").state.messages);
    }
    counts
}

/// The scenario's rollups and number of logged events when it goes straight into the event
/// log, without a stream: what every path through the stream must reproduce.
async fn direct_path() -> (Rollups, i64) {
    let direct = TestOrigin::new(Backend::Sqlite).await.expect("origin");
    let (id, key) = running_experiment(&direct).await;
    send_all(&direct, &key, &scenario(&id), 50).await;
    common::drain(&direct.state).await;
    (
        rollups(&direct.state, &id).await,
        logged_events(&direct.state).await,
    )
}

#[tokio::test]
async fn events_through_the_stream_give_the_rollups_of_the_direct_path() {
    let Some((config, via_stream, id, key, events)) = collector_with_experiment().await else {
        return;
    };
    send_all(&via_stream, &key, &events, 50).await;
    // The units are spread over both streams.
    let stored = messages_per_stream(&config).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|&m| m > 0), "{stored:?}");
    common::drain(&via_stream.state).await;

    let (expected, logged) = direct_path().await;
    assert!(!expected.exposures.is_empty() && !expected.metrics.is_empty());
    assert_eq!(rollups(&via_stream.state, &id).await, expected);
    assert_eq!(logged_events(&via_stream.state).await, logged);
    assert_eq!(consumer_backlog(&stream_of(&via_stream.state)).await, 0);
    stream_of(&via_stream.state)
        .delete_streams()
        .await
        .expect("delete");
}

#[tokio::test]
async fn a_request_retried_after_a_lost_acknowledgement_is_counted_once() {
    let Some((_, o, id, key, events)) = collector_with_experiment().await else {
        return;
    };

    // The collector stored the request but its answer was lost: the client sends it again
    // as it was. The broker recognises the messages.
    let first = o.send_events(&key, &events[..60]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = o.send_events(&key, &events[..60]).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["duplicates"], json!(60), "{}", again.body);
    let messages = stream_of(&o.state)
        .telemetry
        .messages_duplicate
        .load(Ordering::Relaxed);
    assert!(messages > 0);
    let metrics = o.request(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8(metrics.bytes).expect("text");
    assert!(
        text.contains(&format!("abx_jetstream_duplicate_messages {messages}")),
        "{text}"
    );
    // A client that rebatches its retry gets past the broker; the event log drops the copies.
    send_all(&o, &key, &events[..60], 7).await;
    send_all(&o, &key, &events[60..], 60).await;
    common::drain(&o.state).await;

    let (expected, logged) = direct_path().await;
    assert_eq!(rollups(&o.state, &id).await, expected);
    assert_eq!(logged_events(&o.state).await, logged);
    // 60 dropped by the broker, 60 rebatched copies and the scenario's repeat by the log.
    assert_eq!(
        o.state
            .pipeline
            .telemetry
            .events_duplicate
            .load(Ordering::Relaxed),
        121
    );
    stream_of(&o.state).delete_streams().await.expect("delete");
}

#[tokio::test]
async fn a_loader_killed_between_write_and_acknowledgement_doubles_nothing() {
    let Some((config, o, id, key, events)) = collector_with_experiment().await else {
        return;
    };
    send_all(&o, &key, &events, 40).await;

    // The loaders write the events, then die before acknowledging them.
    let stream = stream_of(&o.state);
    let mut abandoned = 0;
    while abandoned < 9 {
        abandoned += common::load_round(&o.state, Settle::Abandon).await;
    }
    let logged = logged_events(&o.state).await;
    assert!(logged > 0);
    assert!(consumer_backlog(&stream).await > 0);

    // After the acknowledgement deadline the stream delivers them again.
    tokio::time::sleep(config.ack_wait + Duration::from_millis(200)).await;
    common::drain(&o.state).await;
    assert_eq!(logged_events(&o.state).await, logged);
    assert_eq!(consumer_backlog(&stream).await, 0);

    assert_eq!(rollups(&o.state, &id).await, direct_path().await.0);
    stream.delete_streams().await.expect("delete");
}

#[tokio::test]
async fn events_wait_in_the_stream_while_the_event_log_is_unavailable() {
    let Some((_, o, id, key, events)) = collector_with_experiment().await else {
        return;
    };
    send_all(&o, &key, &events, 500).await;

    // The database goes away: the collector still accepts (the stream holds the events),
    // and the loader's writes fail, so it hands the messages back for later.
    o.state.close_databases().await;
    let stream = stream_of(&o.state);
    assert!(common::load_round(&o.state, Settle::Acknowledge).await > 0);
    assert!(consumer_backlog(&stream).await > 0);

    // A restarted origin gets them once the back-off has passed.
    let restarted = o.restart().await;
    let mut waited = Duration::ZERO;
    while logged_events(&restarted).await == 0 {
        assert!(waited < Duration::from_secs(20), "events never arrived");
        common::drain(&restarted).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
    }
    common::drain(&restarted).await;
    assert_eq!(rollups(&restarted, &id).await, direct_path().await.0);
    assert_eq!(consumer_backlog(&stream).await, 0);
    stream.delete_streams().await.expect("delete");
}

#[tokio::test]
async fn an_unreadable_message_goes_to_the_dead_letter_stream() {
    let Some(url) = common::nats_or_skip().await else {
        return;
    };
    let config = common::test_stream(url.clone());
    let o = collector(&config).await;
    let client = async_nats::connect(url.as_str()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.publish(
        format!("{}.events.0", config.subject_prefix),
        "not events".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let stream = stream_of(&o.state);
    common::drain(&o.state).await;
    assert_eq!(stream.dead_letters().await.expect("dead letters"), 1);
    assert_eq!(consumer_backlog(&stream).await, 0);
    let metrics = o.request(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8(metrics.bytes).expect("text");
    assert!(
        text.contains("abx_jetstream_dead_lettered_messages 1"),
        "{text}"
    );
    // A replay puts it back into the stream; still unreadable, it is set aside again.
    let replay = o.post("/api/v1/dead-letters/replay", json!({})).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["replayed"], 1);
    assert_eq!(stream.dead_letters().await.expect("dead letters"), 0);
    common::drain(&o.state).await;
    assert_eq!(stream.dead_letters().await.expect("dead letters"), 1);
    stream.delete_streams().await.expect("delete");
}

#[tokio::test]
async fn the_wire_form_keeps_every_field() {
    // What a warehouse loader would read: one JSON array per message.
    let Some((config, o, id, key, events)) = collector_with_experiment().await else {
        return;
    };
    send_all(&o, &key, &events[..3], 3).await;

    let client = async_nats::connect(config.url.as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut seen: BTreeMap<String, Json> = BTreeMap::new();
    for name in [config.stream.clone(), format!("{}_1", config.stream)] {
        let stored = js.get_stream(&name).await.expect("stream");
        for seq in 1..=3 {
            let Ok(message) = stored.get_raw_message(seq).await else {
                break;
            };
            let batch: Vec<Json> = serde_json::from_slice(&message.payload).expect("JSON array");
            for event in batch {
                seen.insert(event["event_id"].as_str().expect("id").into(), event);
            }
        }
    }
    assert_eq!(seen.len(), 3);
    let exposure = &seen[events[0]["event_id"].as_str().expect("id")];
    assert_eq!(exposure["experiment_id"], json!(id));
    assert_eq!(exposure["variant"], json!("control"));
    assert_eq!(exposure["unit_key"], json!("user_id:u0"));
    assert_eq!(exposure["ts_ms"], events[0]["timestamp"]);
    stream_of(&o.state).delete_streams().await.expect("delete");
}

#[tokio::test]
async fn changing_the_number_of_streams_loses_nothing() {
    let Some((config, o, id, key, events)) = collector_with_experiment().await else {
        return;
    };
    let stream = stream_of(&o.state);
    // This process (two streams) runs its loaders in the background, as `serve` does,
    // listing the broker's streams every 200 ms (`test_stream`).
    jetstream::spawn_loader(o.state.pipeline.clone(), stream.clone());
    // Then, during a rolling change, collectors configured for three streams and for one
    // start beside it; the third stream appears after the loaders started.
    let collector_with = |streams: u32| {
        o.another_process_with("collector", move |settings| {
            settings.jetstream.as_mut().expect("stream").streams = streams;
        })
    };
    let wider = abx_origin::app(collector_with(3).await);
    let narrower = abx_origin::app(collector_with(1).await);
    let send_through = |router: &axum::Router, part: &[Json]| {
        let (router, part, key) = (router.clone(), part.to_vec(), key.clone());
        async move {
            for chunk in part.chunks(40) {
                let reply = common::call(
                    &router,
                    Method::POST,
                    "/api/v1/events",
                    Some(json!({ "events": chunk }).to_string().into_bytes()),
                    &[
                        ("authorization", &format!("Bearer {key}")),
                        ("content-type", "application/json"),
                    ],
                )
                .await;
                assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
            }
        }
    };
    let third = events.len() / 3;
    send_all(&o, &key, &events[..third], 40).await;
    send_through(&wider, &events[third..2 * third]).await;
    send_through(&narrower, &events[2 * third..]).await;
    // A client retrying its first requests through the wider collector: their units now go
    // to other streams than the first time, past the broker's deduplication.
    send_through(&wider, &events[..third]).await;
    let stored = messages_per_stream(&config).await;
    assert!(stored.len() == 3 && stored[2] > 0, "{stored:?}");

    // The background loaders find the third stream and drain all three.
    let (expected, logged) = direct_path().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while consumer_backlog(&stream).await > 0 || logged_events(&o.state).await < logged {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stream.event_streams(), [0, 1, 2]);
    common::drain(&o.state).await;
    assert_eq!(rollups(&o.state, &id).await, expected);
    assert_eq!(logged_events(&o.state).await, logged);

    // Drained, the third stream may be deleted; the listing lets it go.
    let js = async_nats::jetstream::new(
        async_nats::connect(config.url.as_str())
            .await
            .expect("connect"),
    );
    js.delete_stream(format!("{}_2", config.stream))
        .await
        .expect("delete the third stream");
    assert_eq!(stream.refresh_streams().await.expect("list"), [0, 1]);
    stream.delete_streams().await.expect("delete");
    assert!(messages_per_stream(&config).await.is_empty());
}

#[tokio::test]
async fn streams_of_another_log_are_left_alone() {
    let Some(url) = common::nats_or_skip().await else {
        return;
    };
    let config = common::test_stream(url.clone());
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.expect("connect"));
    let foreign = |k: u32| async_nats::jetstream::stream::Config {
        name: format!("{}_{k}", config.stream),
        subjects: vec![format!("{}_other.{k}", config.subject_prefix)],
        max_age: Duration::from_secs(600),
        ..Default::default()
    };
    // Another deployment's stream whose name happens to follow this log's pattern is
    // neither loaded nor counted.
    js.create_stream(foreign(5)).await.expect("create");
    let stream = EventStream::connect(config.clone()).await.expect("connect");
    assert_eq!(stream.event_streams(), [0, 1]);
    stream.delete_streams().await.expect("delete");
    // One with the name of a stream this log publishes to stops the start.
    js.create_stream(foreign(1)).await.expect("create");
    let refused = EventStream::connect(config.clone()).await;
    let error = refused.err().expect("a foreign stream refused").to_string();
    assert!(error.contains("not this event log's"), "{error}");
    for name in [
        config.stream.clone(),
        format!("{}_DEAD", config.stream),
        format!("{}_1", config.stream),
        format!("{}_5", config.stream),
    ] {
        // The first two may not exist (the refused start stopped before creating them all).
        let _ = js.delete_stream(name).await;
    }
}
