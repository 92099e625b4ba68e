//! abx-origin: the admin API, configuration store and snapshot publisher.
//!
//! `app(state)` builds the whole HTTP surface, so tests drive it in-process;
//! `AppState::start` connects the database, applies migrations, loads or creates the signing
//! key and the first admin key, and publishes the current configuration.

pub mod analysis;
pub mod api;
pub mod auth;
pub mod error;
pub mod guardrails;
pub mod lifecycle;
pub mod outbox;
pub mod per_client;
pub mod publish;
pub mod serve;

// The crates below, by the names the server's modules use for them (ARCHITECTURE.md).
use abx_origin_domain::{clock, event, model, results};
use abx_origin_pipeline as pipeline;
use abx_origin_store as store;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use sqlx::AnyConnection;
use tokio::sync::broadcast;

pub use api::app;
use auth::{Caller, KeyCache, Limit, Limits, RateLimiter, Role};
use error::{ApiError, ApiResult};
use pipeline::Pipeline;
use publish::Published;
use store::db::{Backend, Db};

/// Everything the origin is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; default: SQLite at `{data_dir}/abx.db`.
    pub database_url: Option<String>,
    /// Ed25519 seed, 64 hex digits; default: created in `{data_dir}/signing.key`.
    pub signing_key: Option<String>,
    /// Registered as an admin key at start (for automated deployments).
    pub bootstrap_admin_key: Option<String>,
    /// Per admin or viewer key.
    pub admin_rate: Limit,
    /// Per sdk key and client address (sdk keys are public).
    pub sdk_rate: Limit,
    /// Per server key (edges and backends).
    pub server_rate: Limit,
    /// A header set by a trusted proxy in front of the origin (`x-forwarded-for`,
    /// `cf-connecting-ip`) whose last address is the client's; default: the TCP peer.
    pub trusted_proxy_header: Option<String>,
    /// Requests handled at once; more get 503 at once (`/health` and `/metrics` are exempt).
    pub max_concurrent_requests: usize,
    /// Requests handled at once for one client address (as the rate limiter tells
    /// addresses); more get 429, so that a few clients cannot take every permit.
    pub max_concurrent_requests_per_client: usize,
    /// A rate-limited request gets its 429 after this long (at most its `Retry-After`),
    /// without holding a request permit meanwhile: a client flooding over its limit then
    /// waits on each of its connections instead of costing the process a refusal per
    /// round trip, and its neighbours keep the CPU.
    pub rate_limit_hold: Duration,
    /// Caps and timeouts on client connections (see `serve`).
    pub connections: serve::ConnectionLimits,
    /// Refuse (and count apart) exposures whose variant is not the one the snapshot assigns
    /// their unit (see `api::events`). Off only for simulations that plant assignments.
    pub verify_exposures: bool,
    /// Attributes whose targeting values browser keys never see (docs/assignment.md, "Private
    /// attributes"). Give every process of a deployment the same list.
    pub private_attributes: Vec<String>,
    /// Caps on the snapshot change streams (`GET /snapshot/stream`).
    pub streams: StreamLimits,
    /// Receives outbox events (experiment lifecycle, guardrail alarms) as JSON POSTs.
    pub webhook_url: Option<String>,
    /// `Cache-Control: max-age` of the snapshot.
    pub snapshot_max_age_s: u32,
    /// Connections each database pool opens.
    pub database_connections: u32,
    /// Raw events are kept (and deduplicated) this long; older timestamps are refused.
    pub event_retention_days: i64,
    /// Event requests get 503 while more events than this wait for the pipeline.
    pub max_pipeline_lag: i64,
    /// What this process does (`--role`); default: everything.
    pub roles: Roles,
    /// Events the pipeline consumes per transaction.
    pub pipeline_batch: i64,
    /// Units whose state the pipeline keeps in memory between batches (0: none).
    pub pipeline_cache_units: usize,
    /// Newly logged events kept in memory for the pipeline of the same process (0: none;
    /// see `abx_origin_pipeline::tail`).
    pub pipeline_tail_events: usize,
    /// Seconds between guardrail checks.
    pub guardrail_interval_s: u64,
    /// Publish events to this JetStream stream instead of writing the event log directly
    /// (see `abx_origin_pipeline::jetstream`).
    pub jetstream: Option<pipeline::jetstream::JetStreamConfig>,
    /// Load events from the stream into this ClickHouse warehouse, and compute results
    /// there, instead of the SQL event log and pipeline (see `abx_origin_pipeline::clickhouse`).
    pub clickhouse: Option<pipeline::clickhouse::ClickHouseConfig>,
    /// Raw events in the warehouse are kept this long (in whole months, and for as long as
    /// an experiment still collecting events needs them); `None` keeps them for ever.
    pub warehouse_retention_days: Option<i64>,
}

impl Settings {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: data_dir.into(),
            database_url: None,
            signing_key: None,
            bootstrap_admin_key: None,
            admin_rate: Limit {
                per_second: 50.0,
                burst: 200.0,
            },
            sdk_rate: Limit {
                per_second: 100.0,
                burst: 400.0,
            },
            server_rate: Limit {
                per_second: 20_000.0,
                burst: 40_000.0,
            },
            trusted_proxy_header: None,
            private_attributes: Vec::new(),
            verify_exposures: true,
            max_concurrent_requests: 2_048,
            max_concurrent_requests_per_client: 64,
            rate_limit_hold: Duration::from_millis(500),
            connections: serve::ConnectionLimits {
                per_client: 256,
                total: 20_000,
                header_read_timeout: Duration::from_secs(30),
                body_deadline: Duration::from_secs(30),
            },
            streams: StreamLimits {
                per_client: 8,
                total: 10_000,
                lifetime: Duration::from_secs(3_600),
            },
            webhook_url: None,
            snapshot_max_age_s: 10,
            database_connections: 8,
            event_retention_days: 7,
            max_pipeline_lag: 2_000_000,
            roles: Roles::ALL,
            pipeline_batch: 20_000,
            pipeline_cache_units: 1_000_000,
            pipeline_tail_events: 200_000,
            guardrail_interval_s: 60,
            jetstream: None,
            clickhouse: None,
            warehouse_retention_days: None,
        }
    }

    pub fn event_window(&self) -> event::Window {
        event::Window {
            max_age_ms: self.event_retention_days * clock::DAY_MS,
            max_future_ms: clock::DAY_MS,
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("abx.db").display()
            )
        })
    }
}

/// Caps on server-sent event streams: each holds a connection for as long as it lives, so
/// without caps one client could hold them all.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Open streams per client address.
    pub per_client: usize,
    /// Open streams in this process.
    pub total: usize,
    /// A stream ends after this long; `EventSource` reconnects on its own.
    pub lifetime: Duration,
}

/// The roles one origin process can take (`--role`). A small deployment runs all three in
/// one process; a large one runs many stateless collectors, a pipeline (or several JetStream
/// loaders sharing one consumer), and a few admin processes, all over one database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// Takes events (`POST /api/v1/events`) and makes them durable: in the event log, or
    /// in the JetStream stream.
    pub collector: bool,
    /// Turns the events into rollups (the SQL pipeline, or the JetStream loader into the
    /// warehouse) and runs the guardrail monitor, which must run once per deployment.
    pub pipeline: bool,
    /// The admin API, snapshots, assignment, analysis and the console; publishes
    /// configuration changes and delivers webhooks.
    pub admin: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        collector: true,
        pipeline: true,
        admin: true,
    };

    /// `all`, or a comma-separated list of `collector`, `pipeline` and `admin`.
    pub fn parse(text: &str) -> Result<Roles, String> {
        if text.trim() == "all" {
            return Ok(Roles::ALL);
        }
        let mut roles = Roles {
            collector: false,
            pipeline: false,
            admin: false,
        };
        for name in text.split(',').map(str::trim) {
            match name {
                "collector" => roles.collector = true,
                "pipeline" => roles.pipeline = true,
                "admin" => roles.admin = true,
                other => {
                    return Err(format!(
                        "unknown role `{other}`: expected all, or a list of collector, pipeline and admin"
                    ));
                }
            }
        }
        Ok(roles)
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (self.collector, "collector"),
            (self.pipeline, "pipeline"),
            (self.admin, "admin"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// A running origin: its parts, shared by the handlers and background tasks. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Origin>);

pub struct Origin {
    /// The configuration database.
    pub db: Db,
    /// The event log, its writer, the pipeline's state and the warehouse.
    pub pipeline: Arc<Pipeline>,
    pub settings: Settings,
    pub keys: KeyCache,
    pub limiter: RateLimiter,
    /// Permits for requests in progress (`Settings::max_concurrent_requests`).
    pub requests: Arc<tokio::sync::Semaphore>,
    /// Requests in progress by client address
    /// (`Settings::max_concurrent_requests_per_client`).
    pub requests_by_client: Arc<per_client::OpenCounts>,
    /// Open snapshot streams, in total and by client address.
    pub streams: Arc<per_client::OpenCounts>,
    /// The range of values each event type's metrics accept (see `reload_keys`).
    value_bounds: RwLock<Arc<event::ValueBounds>>,
    /// Each holdout's unit attribute by id, which ingest checks holdout exposures against
    /// (see `reload_keys`).
    holdout_units: RwLock<Arc<std::collections::HashMap<String, String>>>,
    published: RwLock<Arc<Published>>,
    /// Serialises configuration changes so snapshot versions follow commit order, and keeps
    /// the experiments the last change loaded (see `publish`).
    write_lock: tokio::sync::Mutex<publish::LoadedExperiments>,
    changes: broadcast::Sender<u64>,
    signing_seed: [u8; 32],
    pub public_key: [u8; 32],
    /// The JetStream event log, when events go through one.
    pub event_stream: Option<Arc<pipeline::jetstream::EventStream>>,
    /// Idempotency keys whose first request is still running.
    pub(crate) in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Event bodies decompressed and parsed at once. The work is CPU-bound, so more than
    /// two per core gains nothing, and each may hold up to twice the decompressed limit
    /// (8 MiB): the permits bound that memory whatever the number of requests in flight.
    pub(crate) parsing: tokio::sync::Semaphore,
    /// The pipeline's figures for `/metrics` and when they were computed (see
    /// `refresh_gauges`).
    gauges: RwLock<Option<(std::time::Instant, Arc<api::PipelineStatus>)>>,
    /// When the databases were last checked for health, and whether they answered (see
    /// `api::system::health`).
    pub(crate) health_checked: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl Deref for AppState {
    type Target = Origin;
    fn deref(&self) -> &Origin {
        &self.0
    }
}

/// How often the pipeline's gauges for `/metrics` are computed.
pub(crate) const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// How often every process looks for a newer stored snapshot: another admin process, or the
/// pipeline's guardrail monitor pausing an experiment, may have published one. This bounds
/// how long a pause takes to reach every process's `/snapshot` (on PostgreSQL, LISTEN wakes
/// them at once and this is the fallback).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// What `start` reports back to the binary.
pub struct Started {
    pub state: AppState,
    /// A newly created admin key, to print once.
    pub new_admin_key: Option<String>,
}

impl AppState {
    pub async fn start(settings: Settings) -> anyhow::Result<Started> {
        // Refused before anything is created, so a weak key leaves no trace.
        if let Some(secret) = &settings.bootstrap_admin_key {
            auth::key_from_secret(secret)
                .map_err(|error| anyhow!("ABX_BOOTSTRAP_ADMIN_KEY: {error}"))?;
        }
        create_private_dir(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let url = settings.database_url();
        let db = Db::connect(&url, settings.database_connections)
            .await
            .context("connecting to the database")?;
        db.migrate().await?;
        let log = match store::db::event_log_file(&url) {
            Some(file) => {
                let log = Db::connect(&file.url, settings.database_connections)
                    .await
                    .with_context(|| format!("opening the event log {}", file.path.display()))?;
                log.migrate_event_log().await?;
                db.move_events_to_log(&file.path)
                    .await
                    .context("moving logged events to the event log file")?;
                log
            }
            None => db.clone(),
        };
        let signing_seed = signing_seed(&settings)?;
        {
            // Every process of a deployment must sign with its active key; the first process
            // registers its own.
            let mut conn = db.pool.acquire().await?;
            publish::check_signing_key(&mut conn, &abx_core::public_key(&signing_seed)).await?;
        }
        let (changes, _) = broadcast::channel(64);
        let telemetry = Arc::new(pipeline::telemetry::Telemetry::default());
        let roles = settings.roles;
        // Only a process that both writes the SQLite log and rolls it up has a tail to keep.
        let tail_events = if roles.collector
            && roles.pipeline
            && settings.jetstream.is_none()
            && log.backend == Backend::Sqlite
        {
            settings.pipeline_tail_events
        } else {
            0
        };
        let log_tail = Arc::new(pipeline::tail::LogTail::new(tail_events));
        let properties = Arc::new(pipeline::properties::PropertyCatalog::default());
        let writer = pipeline::writer::Writer::spawn(
            log.clone(),
            telemetry.clone(),
            log_tail.clone(),
            properties.clone(),
        );
        // Collectors only publish to the stream: they never talk to the warehouse.
        let warehouse = match &settings.clickhouse {
            Some(config) if roles.pipeline || roles.admin => Some(Arc::new(
                pipeline::clickhouse::ClickHouse::connect(config.clone())
                    .await
                    .with_context(|| format!("connecting to ClickHouse at {}", config.url))?,
            )),
            _ => None,
        };
        let event_stream = match &settings.jetstream {
            Some(config) => {
                let mut config = config.clone();
                // The warehouse loader is a consumer of its own: switching a deployment to
                // the warehouse loads it with everything the stream still holds.
                if settings.clickhouse.is_some() {
                    config.consumer = "warehouse".into();
                }
                Some(
                    pipeline::jetstream::EventStream::connect(config.clone())
                        .await
                        .with_context(|| format!("connecting to JetStream at {}", config.url))?,
                )
            }
            None if settings.clickhouse.is_some() => {
                bail!(
                    "the ClickHouse warehouse is loaded from a JetStream stream: set a NATS URL too"
                )
            }
            None => None,
        };
        let pipeline = Arc::new(Pipeline {
            db: db.clone(),
            log,
            settings: abx_origin_pipeline::Settings {
                batch: settings.pipeline_batch,
                event_window: settings.event_window(),
                max_lag: settings.max_pipeline_lag,
                warehouse_retention_days: settings.warehouse_retention_days,
            },
            telemetry,
            writer,
            log_tail,
            warehouse,
            unit_cache: tokio::sync::Mutex::new(pipeline::attribution::UnitCache::new(
                settings.pipeline_cache_units,
            )),
            properties,
        });
        let state = AppState(Arc::new(Origin {
            pipeline,
            event_stream,
            limiter: RateLimiter::new(Limits {
                admin: settings.admin_rate,
                sdk: settings.sdk_rate,
                server: settings.server_rate,
            }),
            requests: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_requests,
            )),
            requests_by_client: Arc::default(),
            streams: Arc::default(),
            value_bounds: RwLock::default(),
            holdout_units: RwLock::default(),
            keys: KeyCache::default(),
            published: RwLock::new(Arc::new(publish::genesis())),
            write_lock: tokio::sync::Mutex::new(publish::LoadedExperiments::default()),
            changes,
            public_key: abx_core::public_key(&signing_seed),
            in_flight: Default::default(),
            parsing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            ),
            gauges: RwLock::new(None),
            health_checked: tokio::sync::Mutex::new(None),
            signing_seed,
            settings,
            db,
        }));
        // Only admin processes create keys and publish; the others serve what was published.
        let new_admin_key = if roles.admin {
            let created = state.bootstrap_admin().await?;
            state.load_or_publish().await?;
            created
        } else {
            state.follow_published().await?;
            None
        };
        state.reload_keys().await?;
        // Results record a decision look only once they know how far the pipeline has got,
        // so the first reads after a start should not have to wait for the background tick.
        if let Err(error) = state.refresh_gauges().await {
            tracing::warn!(%error, "computing the pipeline's gauges failed");
        }
        Ok(Started {
            state,
            new_admin_key,
        })
    }

    /// Closes the database pools (both, where the event log has its own): whatever still
    /// uses them gets `PoolClosed`, as when the database is gone.
    pub async fn close_databases(&self) {
        self.db.pool.close().await;
        self.pipeline.log.pool.close().await;
    }

    /// Runs the background work of this process's roles: key refresh, snapshot following,
    /// outbox delivery and housekeeping, the pipeline and the guardrail monitor.
    pub fn spawn_background(&self) {
        let roles = self.settings.roles;
        self.db.spawn_checkpointer();
        if !self.pipeline.log.is_same(&self.db) {
            self.pipeline.log.spawn_checkpointer();
        }
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(GAUGE_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(error) = state.refresh_gauges().await {
                    tracing::debug!(%error, "computing the pipeline's gauges failed");
                }
            }
        });
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                if let Err(error) = state.reload_keys().await {
                    tracing::warn!(%error, "refreshing API keys failed");
                }
                if roles.admin
                    && let Err(error) = state.housekeeping().await
                {
                    tracing::warn!(%error, "housekeeping failed");
                }
            }
        });
        if roles.admin {
            outbox::spawn(self.db.clone(), self.settings.webhook_url.clone());
        }
        self.spawn_follower();
        if let Some(stream) = &self.event_stream {
            pipeline::jetstream::spawn_lag_poller(stream.clone());
            if roles.pipeline {
                pipeline::jetstream::spawn_loader(self.pipeline.clone(), stream.clone());
            }
        }
        if roles.pipeline {
            // With a warehouse the SQL event log stays empty: results are computed there.
            if self.pipeline.warehouse.is_none() {
                pipeline::attribution::spawn(self.pipeline.clone());
            }
            guardrails::spawn(self.clone());
        }
    }

    async fn housekeeping(&self) -> Result<(), crate::store::Error> {
        let mut tx = self.db.begin_write().await?;
        store::prune_snapshots(&mut tx, 1_000).await?;
        store::prune_idempotency_keys(&mut tx, clock::now_ms() - clock::DAY_MS).await?;
        tx.commit().await
    }

    /// Computes the pipeline's figures (SQL and, with JetStream, a broker round trip) for
    /// `/metrics`, which serves the last ones computed.
    pub async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let status = api::pipeline_status_now(self).await?;
        *self.gauges.write().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), Arc::new(status)));
        Ok(())
    }

    pub(crate) fn gauges(&self) -> Option<(std::time::Instant, Arc<api::PipelineStatus>)> {
        self.gauges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn published(&self) -> Arc<Published> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The copy of a snapshot this caller may read, in `format`: the client copy for browser
    /// (sdk) keys, the full snapshot for everyone else.
    pub fn snapshot_copy<'a>(
        &self,
        caller: &Caller,
        published: &'a Published,
        format: abx_core::Format,
    ) -> publish::SnapshotCopy<'a> {
        if caller.role == Role::Sdk {
            published
                .client(&self.signing_seed, &self.settings.private_attributes)
                .copy(format, &self.signing_seed)
        } else {
            published.copy(format, &self.signing_seed)
        }
    }

    /// What this caller's evaluations answer from: the client copy's evaluator for browser
    /// (sdk) keys, which may learn no more from an evaluation than from the snapshot they
    /// read (no drafts, no QA overrides), the full snapshot's for everyone else. `None` only
    /// if the client copy were invalid.
    pub fn evaluator_for<'a>(
        &self,
        caller: &Caller,
        published: &'a Published,
    ) -> Option<&'a abx_core::Evaluator> {
        if caller.role == Role::Sdk {
            published
                .client(&self.signing_seed, &self.settings.private_attributes)
                .evaluator()
        } else {
            Some(&published.evaluator)
        }
    }

    /// The client copy of a stored (older) snapshot, for browser keys.
    pub fn client_copy_of(
        &self,
        snapshot: &abx_core::Snapshot,
        bytes: &[u8],
    ) -> publish::ClientCopy {
        publish::client_copy(
            snapshot,
            bytes,
            &self.signing_seed,
            &self.settings.private_attributes,
        )
    }

    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Installs what a committed change prepared.
    fn install(&self, loaded: &mut publish::LoadedExperiments, prepared: publish::Prepared) {
        *loaded = prepared.loaded;
        let Some(published) = prepared.published else {
            return;
        };
        let version = published.version;
        if self.serve(published) {
            tracing::info!(version, "published snapshot");
        }
    }

    /// Reloads what requests are checked against from the database: the API keys and the
    /// metrics' value bounds (so collectors refuse out-of-range events within seconds of a
    /// metric change made by any process).
    pub async fn reload_keys(&self) -> Result<(), crate::store::Error> {
        let mut conn = self.db.pool.acquire().await?;
        self.keys.replace(store::active_keys(&mut conn).await?);
        let metrics = store::catalog::metrics(&mut conn, None).await?;
        *self.value_bounds.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(event::ValueBounds::from_metrics(&metrics));
        drop(conn);
        self.reload_holdout_units().await
    }

    /// Reloads the holdouts' units: with the keys, and when an exposure names a holdout
    /// made since (by another process, say).
    pub async fn reload_holdout_units(&self) -> Result<(), crate::store::Error> {
        let mut conn = self.db.pool.acquire().await?;
        let holdouts = store::catalog::holdouts(&mut conn, None).await?;
        let units = holdouts.into_iter().map(|h| (h.id, h.unit)).collect();
        *self
            .holdout_units
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(units);
        Ok(())
    }

    /// Each holdout's unit attribute by id, as last loaded.
    pub fn holdout_units(&self) -> Arc<std::collections::HashMap<String, String>> {
        self.holdout_units
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics' value bounds, as last loaded.
    pub fn value_bounds(&self) -> Arc<event::ValueBounds> {
        self.value_bounds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs a configuration change: in one transaction it applies `change` (which records
    /// its audit and outbox rows), compiles and stores the resulting snapshot, and commits;
    /// then the new snapshot goes live. Changes are serialised.
    pub async fn mutate<T>(
        &self,
        change: impl AsyncFnOnce(&mut AnyConnection) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let mut loaded = self.write_lock.lock().await;
        let mut tx = self.db.begin_write().await?;
        store::serialise_config_changes(&mut tx, self.db.backend).await?;
        let value = change(&mut tx).await?;
        let current = self.published();
        let prepared = publish::prepare(&mut tx, &current, &loaded, &self.signing_seed, false)
            .await
            .map_err(ApiError::Internal)?;
        tx.commit().await?;
        self.install(&mut loaded, prepared);
        Ok(value)
    }

    /// At start: serve the newest stored snapshot if it still matches the configuration
    /// and is signed by the current key; otherwise publish afresh.
    async fn load_or_publish(&self) -> anyhow::Result<()> {
        let mut conn = self.db.pool.acquire().await?;
        if let Some(stored) = store::latest_snapshot(&mut conn).await? {
            match Published::from_bytes(&stored) {
                Ok(published) => {
                    let signed_by_us =
                        abx_core::decode_verified(&stored.bytes, &self.public_key).is_ok();
                    *self.published.write().unwrap_or_else(|e| e.into_inner()) =
                        Arc::new(published);
                    if !signed_by_us {
                        tracing::warn!(
                            "the stored snapshot is not signed by the current key; republishing"
                        );
                    }
                    drop(conn);
                    return self.republish(!signed_by_us).await;
                }
                Err(error) => tracing::warn!(%error, "ignoring the stored snapshot"),
            }
        }
        drop(conn);
        self.republish(true).await
    }

    /// Every process, whatever its roles, serves the newest stored snapshot: it polls every
    /// `FOLLOW_INTERVAL` and, on PostgreSQL, wakes on the notification a commit sends.
    pub fn spawn_follower(&self) {
        let state = self.clone();
        tokio::spawn(async move {
            let url = state.settings.database_url();
            let mut listener = match store::SnapshotListener::connect(&url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "listening for snapshots failed; polling only");
                    None
                }
            };
            let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    notified = async {
                        match listener.as_mut() {
                            Some(l) => l.next().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Err(error) = notified {
                            tracing::warn!(%error, "the snapshot listener failed; polling only");
                            listener = None;
                        }
                    }
                }
                if let Err(error) = state.follow_published().await {
                    tracing::warn!(%error, "reading the published snapshot failed");
                }
            }
        });
    }

    /// Serves the newest stored snapshot if it is newer than the one served.
    pub async fn follow_published(&self) -> anyhow::Result<()> {
        let mut conn = self.db.pool.acquire().await?;
        let served = self.published().version;
        if store::latest_snapshot_version(&mut conn).await? <= served as i64 {
            return Ok(());
        }
        let Some(stored) = store::latest_snapshot(&mut conn).await? else {
            return Ok(());
        };
        if self.serve(Published::from_bytes(&stored)?) {
            tracing::info!(version = stored.version, "following the published snapshot");
        }
        Ok(())
    }

    /// Serves `published` unless a newer snapshot is already served (the follower and a
    /// change of this process's own may race), and announces it to SSE subscribers.
    fn serve(&self, published: Published) -> bool {
        let version = published.version;
        {
            let mut served = self.published.write().unwrap_or_else(|e| e.into_inner());
            if served.version >= version {
                return false;
            }
            *served = Arc::new(published);
        }
        // Nobody listening is fine.
        let _ = self.changes.send(version);
        true
    }

    /// Publishes the current configuration (only if it changed, unless `force`).
    pub async fn republish(&self, force: bool) -> anyhow::Result<()> {
        let mut loaded = self.write_lock.lock().await;
        let mut tx = self.db.begin_write().await?;
        let current = self.published();
        let prepared =
            publish::prepare(&mut tx, &current, &loaded, &self.signing_seed, force).await?;
        tx.commit().await?;
        self.install(&mut loaded, prepared);
        Ok(())
    }

    /// Makes sure an admin key exists: registers `bootstrap_admin_key` if given, and creates
    /// one if no admin key exists at all (returned so the binary can print it once).
    async fn bootstrap_admin(&self) -> anyhow::Result<Option<String>> {
        let mut conn = self.db.pool.acquire().await?;
        if let Some(secret) = &self.settings.bootstrap_admin_key {
            let key = auth::key_from_secret(secret)
                .map_err(|error| anyhow!("ABX_BOOTSTRAP_ADMIN_KEY: {error}"))?;
            if !store::active_keys(&mut conn).await?.contains_key(&key.hash) {
                store::insert_key(
                    &mut conn,
                    &model::new_id(),
                    "bootstrap admin",
                    Role::Admin,
                    &key,
                )
                .await?;
            }
            return Ok(None);
        }
        if store::count_admin_keys(&mut conn).await? > 0 {
            return Ok(None);
        }
        let key = auth::generate_key(Role::Admin);
        store::insert_key(
            &mut conn,
            &model::new_id(),
            "first admin",
            Role::Admin,
            &key,
        )
        .await?;
        Ok(Some(key.secret))
    }
}

/// Makes the key of `settings` (given, or the data directory's) the deployment's active
/// signing key, and returns its id: the switch of a key rotation (docs/api.md, "Signing
/// keys").
pub async fn activate_signing_key(settings: &Settings) -> anyhow::Result<String> {
    let public_key = abx_core::public_key(&signing_seed(settings)?);
    let db = Db::connect(&settings.database_url(), 1)
        .await
        .context("connecting to the database")?;
    db.migrate().await?;
    let key_id = publish::signing_key_id(&public_key);
    // One transaction: no process ever sees no active key, or two.
    let mut tx = db.begin_write().await?;
    store::activate_signing_key(&mut tx, &key_id, &auth::hex(&public_key)).await?;
    tx.commit().await?;
    Ok(key_id)
}

/// The snapshot signing seed: given, or read from (and on first start written to) the data
/// directory with owner-only permissions.
fn signing_seed(settings: &Settings) -> anyhow::Result<[u8; 32]> {
    if let Some(hex) = &settings.signing_key {
        return parse_seed(hex).context("ABX_SIGNING_KEY must be 64 hex digits");
    }
    let path = settings.data_dir.join("signing.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return parse_seed(text.trim())
            .with_context(|| format!("{} is not 64 hex digits", path.display()));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("random seed: {e}"))?;
    write_private(&path, &auth::hex(&seed))?;
    Ok(seed)
}

fn parse_seed(hex: &str) -> anyhow::Result<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected 64 hex digits");
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(seed)
}

/// Creates a directory and its missing parents readable by the owner only: it holds the
/// signing key and, on SQLite, the databases. A directory that exists is left as it is.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
