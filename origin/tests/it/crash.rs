//! Crash safety with the real binary: events acknowledged before a `kill -9` are never lost,
//! and killing the pipeline mid-batch, again and again, never double counts. Also with the
//! roles in separate processes (collector, pipeline, admin) over JetStream and ClickHouse.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use abx_origin_pipeline::tables;
use abx_origin_store::db::Db;
use serde_json::{Value as Json, json};

const ADMIN: &str = "abx_admin_crash_test_key_00000001";

struct Server {
    child: Child,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start(dir: &std::path::Path, pipeline: bool) -> Server {
    start_with(dir, &[], |command| {
        if !pipeline {
            command.env("ABX_NO_PIPELINE", "1");
        }
    })
}

/// `abx-origin serve` over `dir` with extra arguments and environment.
fn start_with(dir: &std::path::Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_abx-origin"));
    command
        .args([
            "serve",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("ABX_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("ABX_ADMIN_RATE_LIMIT", "100000")
        // Small batches, so that kills can land between batches as well as inside them.
        .env("ABX_PIPELINE_BATCH", "2000")
        // The units' variants are planted by hand (`twelve_thousand_units`).
        .env("ABX_VERIFY_EXPOSURES", "false")
        .env("RUST_LOG", "warn")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    adjust(&mut command);
    Server {
        child: command.spawn().expect("spawn abx-origin"),
        url: format!("http://127.0.0.1:{port}"),
    }
}

impl Server {
    async fn ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if client
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("abx-origin did not become ready");
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: Json) -> Json {
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body: Json = response.json().await.expect("json");
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

/// A running experiment with a conversion metric, set up through `server`; returns
/// (experiment id, sdk key).
async fn running_experiment(client: &reqwest::Client, server: &Server) -> (String, String) {
    let api = format!("{}/api/v1", server.url);
    post(
        client,
        &format!("{api}/metrics"),
        ADMIN,
        json!({"key": "conversion", "kind": "conversion", "event_type": "conversion"}),
    )
    .await;
    let experiment = post(
        client,
        &format!("{api}/experiments"),
        ADMIN,
        json!({"key": "crash", "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}], "primary_metric": "conversion"}),
    )
    .await;
    let id = experiment["id"].as_str().expect("id").to_string();
    post(
        client,
        &format!("{api}/experiments/{id}/start"),
        ADMIN,
        json!({}),
    )
    .await;
    let sdk = post(
        client,
        &format!("{api}/keys"),
        ADMIN,
        json!({"name": "sdk", "role": "sdk"}),
    )
    .await["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    (id, sdk)
}

/// 12,000 units: an exposure each, and a conversion for every third unit.
fn twelve_thousand_units(id: &str) -> Vec<Json> {
    let now = abx_origin_domain::clock::now_ms();
    let mut events = Vec::new();
    for u in 0..12_000u64 {
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        events.push(json!({"event_id": format!("00000000-0000-4000-8000-{u:012x}"), "kind": "exposure", "unit": format!("u{u}"),
            "experiment_id": id, "variant": variant, "timestamp": now}));
        if u % 3 == 0 {
            events.push(json!({"event_id": format!("00000000-0000-4000-9000-{u:012x}"), "kind": "metric", "unit": format!("u{u}"),
                "event_type": "conversion", "timestamp": now + 1}));
        }
    }
    events
}

async fn send_acknowledged(client: &reqwest::Client, server: &Server, sdk: &str, events: &[Json]) {
    for chunk in events.chunks(500) {
        let reply = post(
            client,
            &format!("{}/api/v1/events", server.url),
            sdk,
            json!({"events": chunk}),
        )
        .await;
        assert_eq!(reply["accepted"].as_u64(), Some(chunk.len() as u64));
    }
}

/// Waits until the pipeline (and, with JetStream, the loader) has consumed everything.
async fn wait_drained(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Json = client
            .get(format!("{}/api/v1/pipeline", server.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        let in_stream = status["stream_pending_messages"].as_i64().unwrap_or(0);
        if status["lag_events"] == 0 && in_stream == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline did not drain: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rollups hold exactly the 12,000 units and 4,000 conversions, once each.
async fn assert_counted_once(db_url: &str, id: &str) {
    let db = Db::connect(db_url, 1).await.expect("open");
    let mut conn = db.pool.acquire().await.expect("connection");
    let mut units_by_variant = std::collections::BTreeMap::new();
    for r in tables::exposure_rollups(&mut conn, id)
        .await
        .expect("rollups")
    {
        assert_eq!(r.multiple, 0);
        *units_by_variant.entry(r.variant).or_insert(0) += r.units;
    }
    assert_eq!(units_by_variant["control"], 6_000);
    assert_eq!(units_by_variant["treatment"], 6_000);
    let mut conversions = std::collections::BTreeMap::new();
    for r in tables::metric_rollups(&mut conn, id)
        .await
        .expect("rollups")
    {
        assert_eq!(r.metric, "conversion");
        *conversions.entry(r.variant).or_insert(0.0) += r.sums.sum_x;
    }
    // Units 0, 3, 6, …: 4,000 converters, 2,000 in each arm.
    assert_eq!(conversions["control"], 2_000.0);
    assert_eq!(conversions["treatment"], 2_000.0);
}

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rw", dir.join("abx.db").display())
}

async fn cursor(db_url: &str) -> i64 {
    let db = Db::connect(db_url, 1).await.expect("open");
    let mut conn = db.pool.acquire().await.expect("connection");
    let position = tables::cursor(&mut conn, abx_origin_pipeline::attribution::CURSOR)
        .await
        .expect("cursor");
    drop(conn);
    db.pool.close().await;
    position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_and_are_counted_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let server = start(dir.path(), false);
    server.ready(&client).await;
    let (id, sdk) = running_experiment(&client, &server).await;
    // Sent in batches of 500, each acknowledged (202) before the server is killed.
    let events = twelve_thousand_units(&id);
    send_acknowledged(&client, &server, &sdk, &events).await;
    server.kill();

    // Start with the pipeline on and kill it at growing delays until the log is consumed,
    // recording where the cursor stood after each kill.
    let db_url = sqlite_url(dir.path());
    let head = events.len() as i64;
    let mut positions = Vec::new();
    for attempt in 0..12u64 {
        let server = start(dir.path(), true);
        server.ready(&client).await;
        // Resend a few already-acknowledged events, as a retrying client would.
        let reply = post(
            &client,
            &format!("{}/api/v1/events", server.url),
            &sdk,
            json!({"events": &events[..50]}),
        )
        .await;
        assert_eq!(reply["duplicates"].as_u64(), Some(50));
        tokio::time::sleep(Duration::from_millis(10 + 30 * attempt)).await;
        server.kill();
        positions.push(cursor(&db_url).await);
        if positions.last() == Some(&head) {
            break;
        }
    }
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    assert!(
        positions.iter().any(|p| *p > 0 && *p < head),
        "no kill landed mid-stream: {positions:?}"
    );

    let server = start(dir.path(), true);
    server.ready(&client).await;
    wait_drained(&client, &server).await;
    server.kill();
    println!("cursor after each kill: {positions:?} of {head}");
    assert_counted_once(&db_url, &id).await;
}

/// A client that retries a request until it is acknowledged, as the SDKs do: a request cut
/// off by a dying collector is sent again, to whichever collector answers.
async fn send_until_acknowledged(client: &reqwest::Client, url: &str, sdk: &str, events: &[Json]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = client
            .post(format!("{url}/api/v1/events"))
            .bearer_auth(sdk)
            .json(&json!({"events": events}))
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
            return;
        }
        assert!(Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topology as separate processes over one SQLite database: an admin, a
/// collector publishing to JetStream and a pipeline loading ClickHouse. The collector is
/// killed with requests in flight (the client retries them), and the pipeline is killed
/// again and again while it loads; the admin's results still count every unit and every
/// conversion exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_role_processes_over_the_warehouse_survive_kill_9() {
    let Some(nats) = common::nats_or_skip().await else {
        return;
    };
    let Some(clickhouse) = common::clickhouse_or_skip().await else {
        return;
    };
    let stream = common::test_stream(nats);
    let warehouse = abx_origin_pipeline::clickhouse::ClickHouseConfig {
        url: clickhouse,
        database: format!("abx_t_{}", uuid::Uuid::new_v4().simple()),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    // The pipeline runs a loader per stream (two, as `test_stream` makes).
    let streams = stream.streams.to_string();
    let start_role = |role: &str| {
        let args = [
            "--role",
            role,
            "--nats-url",
            &stream.url,
            "--nats-stream",
            &stream.stream,
            "--nats-streams",
            &streams,
            "--nats-subject-prefix",
            &stream.subject_prefix,
            "--nats-ack-wait",
            "1",
            "--clickhouse-url",
            &warehouse.url,
            "--clickhouse-database",
            &warehouse.database,
            // The pipeline recomputes the rollups that the admin's results read every second.
            "--guardrail-interval",
            "1",
        ];
        start_with(dir.path(), &args, |_| {})
    };
    let admin = start_role("admin");
    admin.ready(&client).await;
    let (id, sdk) = running_experiment(&client, &admin).await;
    let events = twelve_thousand_units(&id);
    let requests: Vec<Vec<Json>> = events.chunks(200).map(<[Json]>::to_vec).collect();

    // The collector dies twice with requests in flight; each request is retried until a
    // collector acknowledges it. No pipeline runs yet: events wait in the stream.
    let mut collector = start_role("collector");
    collector.ready(&client).await;
    let mut retried = 0;
    for part in requests.chunks(requests.len() / 3 + 1) {
        let url = collector.url.clone();
        let in_flight: Vec<_> = part
            .iter()
            .cloned()
            .map(|events| {
                let (client, url, sdk) = (client.clone(), url.clone(), sdk.clone());
                tokio::spawn(async move {
                    client
                        .post(format!("{url}/api/v1/events"))
                        .bearer_auth(&sdk)
                        .json(&json!({"events": events}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(40)).await;
        collector.kill();
        collector = start_role("collector");
        collector.ready(&client).await;
        for (events, sent) in part.iter().zip(in_flight) {
            if !sent.await.expect("request task") {
                retried += 1;
                send_until_acknowledged(&client, &collector.url, &sdk, events).await;
            }
        }
    }
    // One more copy of everything, as clients whose acknowledgements were lost would send.
    for events in &requests[..5] {
        send_until_acknowledged(&client, &collector.url, &sdk, events).await;
    }

    // The pipeline is killed at growing delays while it loads, then left to finish.
    for attempt in 0..6u64 {
        let pipeline = start_role("pipeline");
        pipeline.ready(&client).await;
        tokio::time::sleep(Duration::from_millis(20 + 60 * attempt)).await;
        pipeline.kill();
    }
    let pipeline = start_role("pipeline");
    pipeline.ready(&client).await;

    // The admin's results count every unit and conversion once.
    let results = || async {
        client
            .get(format!("{}/api/v1/experiments/{id}/results", admin.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("results")
            .json::<Json>()
            .await
            .expect("json")
    };
    // The stream's backlog reads zero until the first loader has made its consumer, so
    // wait for the exposures to arrive before waiting for the backlog to drain.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let shown = results().await;
        let units: u64 = ["control", "treatment"]
            .iter()
            .map(|v| shown["variants"][v]["impressions"].as_u64().unwrap_or(0))
            .sum();
        if units >= 12_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_drained(&client, &admin).await;
    // Results from a computation made after the last event was loaded.
    let drained_ms = abx_origin_domain::clock::now_ms();
    let deadline = Instant::now() + Duration::from_secs(30);
    let results = loop {
        let shown = results().await;
        if common::rollups_computed_ms(&shown) > Some(drained_ms) {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "no computation since the load: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "{retried} of {} requests were cut off by a collector's kill and retried",
        requests.len()
    );
    for variant in ["control", "treatment"] {
        let counts = &results["variants"][variant];
        assert_eq!(
            counts["impressions"].as_u64(),
            Some(6_000),
            "{variant}: {results}"
        );
        assert_eq!(
            counts["conversions"].as_f64(),
            Some(2_000.0),
            "{variant}: {results}"
        );
    }
    // The admin serves no events and the collector no admin API.
    let wrong_tier = client
        .get(format!("{}/api/v1/experiments", collector.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_tier.status(), reqwest::StatusCode::NOT_FOUND);

    for server in [admin, collector, pipeline] {
        server.kill();
    }
    let events = abx_origin_pipeline::jetstream::EventStream::connect(stream)
        .await
        .expect("stream");
    events.delete_streams().await.expect("delete streams");
    abx_origin_pipeline::clickhouse::ClickHouse::connect(warehouse)
        .await
        .expect("warehouse")
        .drop_database()
        .await
        .expect("drop database");
}
