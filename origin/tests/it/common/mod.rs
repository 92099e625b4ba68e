//! A fresh origin per test, on SQLite, PostgreSQL or the warehouse (JetStream and
//! ClickHouse), driven in-process through `app(state)`.
//!
//! PostgreSQL tests use `ABX_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! to create a throwaway database per test; warehouse tests use a stream and a ClickHouse
//! database of their own (`ABX_TEST_NATS_URL`, `ABX_TEST_CLICKHOUSE_URL`). When a server is
//! unreachable they are skipped with a printed reason, unless `ABX_REQUIRE_ALL` is set (as
//! in CI), where they fail.

use std::time::Duration;

use abx_origin::auth::Limit;
use abx_origin::{AppState, Settings, app};
use abx_origin_domain::rollup::Rollups;
use abx_origin_pipeline::clickhouse::ClickHouseConfig;
use abx_origin_pipeline::jetstream::{self, JetStreamConfig, Settle};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value as Json;
use sqlx::Connection;
use tower::ServiceExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// SQLite for the configuration; events through a JetStream stream into ClickHouse.
    Warehouse,
}

pub struct TestOrigin {
    pub state: AppState,
    pub router: Router,
    pub admin: String,
    pub settings: Settings,
    /// The data directory, deleted when the origin is dropped.
    _data_dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Json,
    pub bytes: Vec<u8>,
}

fn postgres_admin_url() -> String {
    std::env::var("ABX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a throwaway PostgreSQL database and returns its URL, or `None` (skip) locally.
async fn fresh_postgres() -> Option<(String, String)> {
    let admin = postgres_admin_url();
    let connected =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin)).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            if std::env::var_os("ABX_REQUIRE_ALL").is_some() {
                panic!(
                    "PostgreSQL at {admin} is required (ABX_REQUIRE_ALL is set) but unreachable: {reason}"
                );
            }
            eprintln!(
                "skipping the PostgreSQL variant: {admin} unreachable ({reason}); set ABX_TEST_POSTGRES_URL"
            );
            return None;
        }
    };
    let name = format!("abx_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Some((format!("{base}/{name}"), name))
}

/// The NATS server for JetStream tests (`ABX_TEST_NATS_URL`, default
/// `nats://127.0.0.1:4222`), or `None` (skip, with the reason printed) when it is
/// unreachable outside CI.
pub async fn nats_or_skip() -> Option<String> {
    let url = std::env::var("ABX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let address = url.trim_start_matches("nats://").to_string();
    reachable_or_skip("NATS", "ABX_TEST_NATS_URL", url, &address).await
}

/// The ClickHouse server for warehouse tests (`ABX_TEST_CLICKHOUSE_URL`, default
/// `http://127.0.0.1:8123`), or `None` as for NATS.
pub async fn clickhouse_or_skip() -> Option<String> {
    let url =
        std::env::var("ABX_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    reachable_or_skip("ClickHouse", "ABX_TEST_CLICKHOUSE_URL", url, &address).await
}

async fn reachable_or_skip(
    service: &str,
    variable: &str,
    url: String,
    address: &str,
) -> Option<String> {
    let reached = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    match reached {
        Ok(Ok(_)) => Some(url),
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            assert!(
                std::env::var_os("ABX_REQUIRE_ALL").is_none(),
                "{service} at {url} is required (ABX_REQUIRE_ALL is set) but unreachable: {reason}"
            );
            eprintln!("skipping: {service} at {url} unreachable ({reason}); set {variable}");
            None
        }
    }
}

/// A JetStream stream of the test's own, with a short acknowledgement deadline so that
/// redelivery happens within the test.
pub fn test_stream(url: String) -> JetStreamConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut config = JetStreamConfig::new(url);
    config.stream = format!("ABX_T_{}", tag.to_uppercase());
    config.subject_prefix = format!("abx_t_{tag}");
    // Two streams, so that every test through JetStream goes through a partitioned log.
    config.streams = 2;
    config.partitions = 3;
    config.ack_wait = Duration::from_secs(1);
    // Should a failing test leave its stream behind, its messages expire soon.
    config.max_age = Duration::from_secs(600);
    // Shortened timers: a failed load is retried after 20 ms, so a minute's outage is
    // hundreds of deliveries (the production back-off reaches a minute).
    config.max_backoff = Duration::from_millis(20);
    config.discovery_interval = Duration::from_millis(200);
    config
}

impl TestOrigin {
    pub async fn new(backend: Backend) -> Option<TestOrigin> {
        Self::with(backend, |_| {}).await
    }

    /// A test origin with adjusted settings.
    pub async fn with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Option<TestOrigin> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::new(dir.path());
        settings.bootstrap_admin_key = Some("abx_admin_test_bootstrap_key_0001".into());
        settings.admin_rate = Limit {
            per_second: 100_000.0,
            burst: 100_000.0,
        };
        // Every test request comes from one address; the tests of the limits set their own.
        settings.sdk_rate = settings.admin_rate;
        // The statistics and pipeline tests plant each unit's variant by hand; the test of
        // the check turns it on.
        settings.verify_exposures = false;
        let postgres = match backend {
            Backend::Sqlite | Backend::Warehouse => None,
            Backend::Postgres => Some(fresh_postgres().await?),
        };
        settings.database_url = postgres.as_ref().map(|(url, _)| url.clone());
        if backend == Backend::Warehouse {
            settings.jetstream = Some(test_stream(nats_or_skip().await?));
            settings.clickhouse = Some(ClickHouseConfig {
                url: clickhouse_or_skip().await?,
                database: format!("abx_t_{}", uuid::Uuid::new_v4().simple()),
            });
        }
        adjust(&mut settings);
        let started = AppState::start(settings.clone())
            .await
            .expect("origin starts");
        Some(TestOrigin {
            router: app(started.state.clone()),
            state: started.state,
            admin: settings.bootstrap_admin_key.clone().expect("admin key"),
            settings,
            _data_dir: dir,
            postgres,
        })
    }

    /// Starts a second origin over the same database and data directory (a restart).
    pub async fn restart(&self) -> AppState {
        self.state.close_databases().await;
        AppState::start(self.settings.clone())
            .await
            .expect("origin restarts")
            .state
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Json>,
    ) -> Reply {
        self.send(method, path, key, body, &[]).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Json>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if body.is_some() {
            all.push(("content-type", "application/json"));
        }
        let auth = key.map(|k| format!("Bearer {k}"));
        if let Some(auth) = &auth {
            all.push(("authorization", auth));
        }
        call(
            &self.router,
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            &all,
        )
        .await
    }

    /// Sends raw bytes with exactly the given headers.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        call(&self.router, method, path, Some(body), headers).await
    }

    /// `POST /api/v1/events` with these events and key.
    pub async fn send_events(&self, key: &str, events: &[Json]) -> Reply {
        self.request(
            Method::POST,
            "/api/v1/events",
            Some(key),
            Some(serde_json::json!({ "events": events })),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, Some(&self.admin.clone()), None)
            .await
    }

    pub async fn post(&self, path: &str, body: Json) -> Reply {
        self.request(Method::POST, path, Some(&self.admin.clone()), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Json) -> Reply {
        self.request(Method::PATCH, path, Some(&self.admin.clone()), Some(body))
            .await
    }

    /// Creates an object and returns its JSON, failing the test on anything but 201.
    pub async fn create(&self, path: &str, body: Json) -> Json {
        let reply = self.post(path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "POST {path}: {}",
            reply.body
        );
        reply.body
    }

    /// Creates an experiment from `body`, starts it, and returns its id.
    pub async fn start_experiment(&self, body: Json) -> String {
        let id = self.create("/api/v1/experiments", body).await["id"]
            .as_str()
            .expect("id")
            .to_string();
        let started = self
            .post(
                &format!("/api/v1/experiments/{id}/start"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(started.status, StatusCode::OK, "{}", started.body);
        id
    }

    /// Another process of this deployment (same database, signing key and data directory)
    /// taking only `roles` (as `--role` takes them), as a split deployment runs them.
    pub async fn another_process(&self, roles: &str) -> AppState {
        self.another_process_with(roles, |_| {}).await
    }

    /// Another process of this deployment with adjusted settings (one configured
    /// differently during a rolling change, say).
    pub async fn another_process_with(
        &self,
        roles: &str,
        adjust: impl FnOnce(&mut Settings),
    ) -> AppState {
        let mut settings = self.settings.clone();
        settings.roles = abx_origin::Roles::parse(roles).expect("roles");
        adjust(&mut settings);
        AppState::start(settings)
            .await
            .expect("another process starts")
            .state
    }

    /// Creates a key with a role and returns its secret.
    pub async fn key(&self, role: &str) -> String {
        let created = self
            .create(
                "/api/v1/keys",
                serde_json::json!({"name": format!("{role} key"), "role": role}),
            )
            .await;
        created["secret"].as_str().expect("secret").to_string()
    }

    /// Drops the PostgreSQL database, or the stream and warehouse database (call at the
    /// end of a test).
    pub async fn finish(self) {
        if let Some(stream) = &self.state.event_stream {
            stream.delete_streams().await.expect("delete streams");
        }
        if let Some(warehouse) = &self.state.pipeline.warehouse {
            warehouse.drop_database().await.expect("drop database");
        }
        self.state.close_databases().await;
        if let Some((_, name)) = &self.postgres {
            let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .expect("connect to drop");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("DROP DATABASE");
        }
    }
}

/// One loader round over every stream of the event log (with the loaders' consumers, as
/// the process's loaders would): returns the messages handled.
pub async fn load_round(state: &AppState, settle: Settle) -> usize {
    let stream = state.event_stream.clone().expect("origin has a stream");
    stream.refresh_streams().await.expect("list streams");
    let mut handled = 0;
    for consumer in jetstream::loader_consumers(&stream)
        .await
        .expect("consumers")
    {
        handled += jetstream::load_once(&state.pipeline, &stream, &consumer, settle)
            .await
            .expect("load");
    }
    handled
}

/// Loads whatever the event stream holds, if there is one, into the event log or the
/// warehouse.
pub async fn load_stream(state: &AppState) {
    if state.event_stream.is_some() {
        while load_round(state, Settle::Acknowledge).await > 0 {}
    }
}

/// Runs the event path dry: the stream's loader (with JetStream, into the event log or the
/// warehouse), then the SQL pipeline, or the recomputation of the warehouse's rollups.
pub async fn drain(state: &AppState) {
    load_stream(state).await;
    match &state.pipeline.warehouse {
        // As the pipeline's next analysis tick would.
        Some(warehouse) => {
            let ticked = abx_origin_pipeline::warehouse::refresh(&state.pipeline, warehouse)
                .await
                .expect("recompute the warehouse's rollups");
            assert!(ticked.is_some(), "another process holds the ticks");
        }
        None => {
            while abx_origin_pipeline::attribution::run_once(&state.pipeline)
                .await
                .expect("pipeline batch")
                > 0
            {}
        }
    }
}

/// An experiment's rollups as results read them: the SQL rollup tables, or the newest
/// computation stored in the warehouse.
pub async fn rollups(state: &AppState, experiment_id: &str) -> Rollups {
    let mut conn = state.db.pool.acquire().await.expect("connection");
    let e = abx_origin_store::experiments::get(&mut conn, experiment_id)
        .await
        .expect("experiment")
        .expect("exists");
    let metrics = catalog_metrics(&mut conn).await;
    state
        .pipeline
        .rollups(&mut conn, &e, &metrics)
        .await
        .expect("rollups")
        .0
}

/// The catalog's metrics by key, as the pipeline plans with them.
pub async fn catalog_metrics(
    conn: &mut sqlx::AnyConnection,
) -> std::collections::HashMap<String, abx_origin_domain::model::catalog::Metric> {
    abx_origin_store::catalog::metrics(conn, None)
        .await
        .expect("metrics")
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect()
}

/// When the rollups behind a results body were computed (warehouse only), in ms.
pub fn rollups_computed_ms(results: &Json) -> Option<i64> {
    results["rollups_computed_at"]
        .as_str()
        .and_then(abx_origin_domain::clock::parse_rfc3339)
}

/// One in-process request.
pub async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("body")
        .to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    Reply {
        status,
        headers,
        body,
        bytes,
    }
}

/// Defines `mod $name` with one test per listed backend, each running the same async test
/// body on a fresh origin (settings adjusted by `$adjust` before it starts).
#[macro_export]
macro_rules! backend_tests {
    ($name:ident, $test:path, $adjust:expr, $($function:ident => $backend:ident),+) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test]
                async fn $function() {
                    if let Some(origin) =
                        common::TestOrigin::with(common::Backend::$backend, $adjust).await
                    {
                        $test(&origin).await;
                        origin.finish().await;
                    }
                }
            )+
        }
    };
}

/// The test on SQLite and PostgreSQL (the SQL event log and pipeline).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $test:path) => {
        on_both_backends!($name, $test, |_| {});
    };
    ($name:ident, $test:path, $adjust:expr) => {
        backend_tests!($name, $test, $adjust, sqlite => Sqlite, postgres => Postgres);
    };
}

/// The test on SQLite, PostgreSQL and the warehouse: the same inputs must give the same
/// counts and results whichever path the events take.
#[macro_export]
macro_rules! on_every_backend {
    ($name:ident, $test:path) => {
        backend_tests!($name, $test, |_| {}, sqlite => Sqlite, postgres => Postgres, warehouse => Warehouse);
    };
}

/// The variant the experiment `key` assigns user `{key}-user-{u}`, as the origin's
/// assignment endpoint answers (`None` when the user is not in the experiment).
pub async fn assigned_variant(o: &TestOrigin, key: &str, u: u64) -> Option<String> {
    let assignment = o
        .get(&format!(
            "/api/v1/experiments/{key}/assignment?user_id={key}-user-{u}"
        ))
        .await
        .body;
    assignment["variant"].as_str().map(str::to_string)
}

/// Posts a metric definition that must be refused as invalid (422), naming `field`.
pub async fn assert_invalid_metric(o: &TestOrigin, body: Json, field: &str) {
    let reply = o.post("/api/v1/metrics", body.clone()).await;
    assert_eq!(
        reply.status,
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "{body}: {}",
        reply.body
    );
    assert!(reply.body.to_string().contains(field), "{}", reply.body);
}

/// A metric definition body.
pub fn metric(key: &str, kind: &str) -> Json {
    serde_json::json!({"key": key, "kind": kind, "event_type": key})
}

/// A minimal two-arm experiment body.
pub fn experiment(key: &str, metric: &str) -> Json {
    serde_json::json!({
        "key": key,
        "variants": [{"name": "control", "weight": 50, "config": {"color": "blue"}},
                     {"name": "treatment", "weight": 50, "config": {"color": "green"}}],
        "primary_metric": metric
    })
}
