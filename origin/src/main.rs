//! `abx-origin serve` runs the origin; `abx-origin keys create` makes API keys;
//! `abx-origin warehouse rebuild|tick` computes the warehouse's rollups on demand.

use std::net::SocketAddr;
use std::path::PathBuf;

use abx_origin::auth::{self, Limit, Role};
use abx_origin::{AppState, Roles, Settings};
use abx_origin_domain::model;
use abx_origin_pipeline::clickhouse::ClickHouseConfig;
use abx_origin_pipeline::jetstream::JetStreamConfig;
use abx_origin_store::{self as store, db};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

mod demo;

// The event path allocates per row and per bound value (sqlx, SQLite, serde); mimalloc's
// thread-local heaps cut that cost substantially compared with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "abx-origin",
    version,
    about = "The abx origin: admin API, snapshots, events and results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the origin (API and console).
    Serve(Box<ServeArgs>),
    /// Manages API keys directly in the database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Starts an origin with demo data and a few days of simulated traffic.
    Demo(demo::Args),
    /// Manages the deployment's snapshot signing key.
    SigningKey {
        #[command(subcommand)]
        command: SigningKeyCommand,
    },
    /// Computes the ClickHouse warehouse's rollups now, outside the pipeline's schedule.
    Warehouse {
        #[command(subcommand)]
        command: WarehouseCommand,
    },
}

#[derive(Subcommand)]
enum WarehouseCommand {
    /// The repair: computes the rollups of every experiment that may still hold results in
    /// full, from all their raw events, whatever was stored.
    Rebuild(WarehouseArgs),
    /// One analysis tick: moves the rollups of every experiment still collecting events
    /// forward by the units with events loaded since they were computed.
    Tick(WarehouseArgs),
}

#[derive(Args)]
struct WarehouseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// ClickHouse HTTP endpoint (`http://host:8123`).
    #[arg(long, env = "ABX_CLICKHOUSE_URL")]
    clickhouse_url: String,
    /// ClickHouse database of the warehouse's tables.
    #[arg(long, env = "ABX_CLICKHOUSE_DATABASE", default_value = "abx")]
    clickhouse_database: String,
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Makes this key (`--signing-key`, else the data directory's `signing.key`) the
    /// deployment's active one. Processes signing with another key then refuse to publish
    /// until restarted with it; an admin restarted with it re-signs the current snapshot.
    Activate {
        #[command(flatten)]
        store: StoreArgs,
        /// Ed25519 seed, 64 hex digits.
        #[arg(long, env = "ABX_SIGNING_KEY")]
        signing_key: Option<String>,
    },
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Where the embedded SQLite database and the signing key live.
    #[arg(long, env = "ABX_DATA_DIR", default_value = "./abx-data")]
    data_dir: PathBuf,
    /// `postgres://user@host/db` for PostgreSQL; default: SQLite in the data directory.
    #[arg(long, env = "ABX_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long, env = "ABX_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Ed25519 signing seed (64 hex digits); default: created in the data directory.
    #[arg(long, env = "ABX_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,
    /// Registered as an admin key at start, for automated deployments.
    #[arg(long, env = "ABX_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    bootstrap_admin_key: Option<String>,
    /// Receives lifecycle and guardrail events as JSON POSTs.
    #[arg(long, env = "ABX_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Requests per second allowed per admin or viewer key.
    #[arg(long, env = "ABX_ADMIN_RATE_LIMIT", default_value_t = 50.0)]
    admin_rate_limit: f64,
    /// Requests per second allowed per sdk key and client address (sdk keys are public).
    #[arg(long, env = "ABX_SDK_RATE_LIMIT", default_value_t = 200.0)]
    sdk_rate_limit: f64,
    /// Requests per second allowed per server key (edges and backends).
    #[arg(long, env = "ABX_SERVER_RATE_LIMIT", default_value_t = 20_000.0)]
    server_rate_limit: f64,
    /// Header whose last address is the client's, set by a trusted proxy in front of the
    /// origin (`x-forwarded-for`, `cf-connecting-ip`); default: the TCP peer. Never set this
    /// without such a proxy: clients could then choose their own address.
    #[arg(long, env = "ABX_TRUSTED_PROXY_HEADER")]
    trusted_proxy_header: Option<String>,
    /// Attributes whose targeting values browser (sdk) keys never see: their snapshot
    /// carries hashes instead (docs/assignment.md, "Private attributes"). Comma-separated;
    /// give every process of a deployment the same list.
    #[arg(long, env = "ABX_PRIVATE_ATTRIBUTES", value_delimiter = ',')]
    private_attributes: Vec<String>,
    /// Refuse exposures whose variant is not the one the snapshot assigns their unit, and
    /// count them apart in the results (`false` only for simulations that plant
    /// assignments by hand).
    #[arg(long, env = "ABX_VERIFY_EXPOSURES", default_value_t = true, action = clap::ArgAction::Set)]
    verify_exposures: bool,
    /// Requests handled at once; more get 503 (`/health` and `/metrics` are exempt).
    #[arg(long, env = "ABX_MAX_CONCURRENT_REQUESTS", default_value_t = 2_048)]
    max_concurrent_requests: usize,
    /// Requests handled at once per client address (as rate limits tell addresses); more
    /// get 429.
    #[arg(
        long,
        env = "ABX_MAX_CONCURRENT_REQUESTS_PER_CLIENT",
        default_value_t = 64
    )]
    max_concurrent_requests_per_client: usize,
    /// Milliseconds a rate-limited request waits for its 429 (at most its `Retry-After`),
    /// holding no request permit: a client flooding over its limit then waits on each of
    /// its connections instead of taking the CPU its neighbours need.
    #[arg(long, env = "ABX_RATE_LIMIT_HOLD_MS", default_value_t = 500)]
    rate_limit_hold_ms: u64,
    /// Open connections per TCP peer address (IPv6: per /64); more are closed at once.
    /// Default: 256, or `--max-connections` with `--trusted-proxy-header` (every peer is
    /// then a proxy).
    #[arg(long, env = "ABX_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<usize>,
    /// Open client connections in this process; more are closed at once.
    #[arg(long, env = "ABX_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Open snapshot streams per client address, and in total.
    #[arg(long, env = "ABX_MAX_STREAMS_PER_CLIENT", default_value_t = 8)]
    max_streams_per_client: usize,
    #[arg(long, env = "ABX_MAX_STREAMS", default_value_t = 10_000)]
    max_streams: usize,
    /// Seconds after which a snapshot stream ends (clients reconnect).
    #[arg(long, env = "ABX_STREAM_LIFETIME", default_value_t = 3_600)]
    stream_lifetime: u64,
    /// `Cache-Control: max-age` of the snapshot, in seconds.
    #[arg(long, env = "ABX_SNAPSHOT_MAX_AGE", default_value_t = 10)]
    snapshot_max_age: u32,
    /// Days raw events are kept and deduplicated; older event timestamps are refused.
    #[arg(long, env = "ABX_EVENT_RETENTION_DAYS", default_value_t = 7)]
    event_retention_days: i64,
    /// What this process does: `all`, or a comma-separated list of `collector` (takes
    /// events), `pipeline` (rolls them up, or loads them into the warehouse, and watches
    /// guardrails) and `admin` (API, snapshots, analysis, console).
    #[arg(long, env = "ABX_ROLE", default_value = "all", value_parser = Roles::parse)]
    role: Roles,
    /// The same as `--role collector,admin`: another process runs the pipeline.
    #[arg(long, env = "ABX_NO_PIPELINE", value_parser = clap::builder::BoolishValueParser::new())]
    no_pipeline: bool,
    /// Events the pipeline consumes per transaction.
    #[arg(long, env = "ABX_PIPELINE_BATCH", default_value_t = 20_000)]
    pipeline_batch: i64,
    /// Units whose state the pipeline keeps in memory between batches, about 250 bytes
    /// each (0 reads every unit back from the database).
    #[arg(long, env = "ABX_PIPELINE_CACHE_UNITS", default_value_t = 1_000_000)]
    pipeline_cache_units: usize,
    /// Newly logged events this process keeps in memory for its own pipeline, about 250
    /// bytes each, so that it need not read them back from the log (0: always read the log).
    #[arg(long, env = "ABX_PIPELINE_TAIL_EVENTS", default_value_t = 200_000)]
    pipeline_tail_events: usize,
    /// Seconds between guardrail checks of running experiments; with a warehouse, also
    /// between recomputations of the rollups that results read.
    #[arg(long, env = "ABX_GUARDRAIL_INTERVAL", default_value_t = 60)]
    guardrail_interval: u64,
    /// NATS server whose JetStream carries events from collectors to the pipeline
    /// (`nats://host:4222`); default: collectors write the event log directly.
    #[arg(long, env = "ABX_NATS_URL")]
    nats_url: Option<String>,
    /// JetStream stream of the events (shared by every process of one deployment).
    #[arg(long, env = "ABX_NATS_STREAM", default_value = "ABX_EVENTS")]
    nats_stream: String,
    /// Subjects are `{prefix}.events.{partition}` (`{prefix}.s{k}.events.{partition}` in the
    /// k-th further stream) and `{prefix}.dead`; each event log of a broker needs its own
    /// prefix.
    #[arg(long, env = "ABX_NATS_SUBJECT_PREFIX", default_value = "abx")]
    nats_subject_prefix: String,
    /// Seconds a loader may hold a message unacknowledged before the broker delivers it
    /// again (to this loader after a restart, or to another).
    #[arg(long, env = "ABX_NATS_ACK_WAIT", default_value_t = 30)]
    nats_ack_wait: u64,
    /// Copies of the event stream a NATS cluster keeps (a single server keeps one).
    #[arg(long, env = "ABX_NATS_REPLICAS", default_value_t = 3)]
    nats_replicas: usize,
    /// Streams the events are spread over, by unit (`{stream}`, `{stream}_1`, …): each has
    /// its own Raft leader in a cluster. Changing it moves units between streams; the
    /// pipeline drains every stream of the log, old ones included (docs/capacity.md).
    #[arg(long, env = "ABX_NATS_STREAMS", default_value_t = 1)]
    nats_streams: u32,
    /// Subjects the log spreads its events over, by unit (rounded up to a multiple of the
    /// streams); a request's events travel as at most one message per subject.
    #[arg(long, env = "ABX_NATS_PARTITIONS", default_value_t = 4)]
    nats_partitions: u32,
    /// ClickHouse HTTP endpoint (`http://host:8123`) that the pipeline loads events into
    /// from the stream, and that results are computed in; needs `--nats-url`. Default: the
    /// SQL event log and rollups.
    #[arg(long, env = "ABX_CLICKHOUSE_URL", requires = "nats_url")]
    clickhouse_url: Option<String>,
    /// ClickHouse database of the warehouse's tables.
    #[arg(long, env = "ABX_CLICKHOUSE_DATABASE", default_value = "abx")]
    clickhouse_database: String,
    /// Days the warehouse keeps raw events (dropped by whole months, never while an
    /// experiment that still collects events needs them); default: for ever.
    #[arg(long, env = "ABX_WAREHOUSE_RETENTION_DAYS")]
    warehouse_retention_days: Option<i64>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a key and prints its secret once.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::SigningKey {
            command:
                SigningKeyCommand::Activate {
                    store: location,
                    signing_key,
                },
        } => activate_signing_key(location, signing_key).await,
        Command::Warehouse { command } => warehouse(command).await,
        Command::Keys {
            command:
                KeysCommand::Create {
                    store: location,
                    role,
                    name,
                },
        } => {
            let Some(role) = Role::parse(&role) else {
                bail!("--role must be admin, viewer, sdk or server")
            };
            let mut settings = Settings::new(&location.data_dir);
            settings.database_url = location.database_url;
            std::fs::create_dir_all(&settings.data_dir)?;
            let database = db::Db::connect(&settings.database_url(), 1)
                .await
                .context("connecting to the database")?;
            database.migrate().await?;
            let key = auth::generate_key(role);
            let mut conn = database.pool.acquire().await?;
            store::insert_key(&mut conn, &model::new_id(), &name, role, &key).await?;
            println!("{}", key.secret);
            Ok(())
        }
    }
}

async fn warehouse(command: WarehouseCommand) -> anyhow::Result<()> {
    let (WarehouseCommand::Rebuild(args) | WarehouseCommand::Tick(args)) = &command;
    let mut settings = Settings::new(&args.store.data_dir);
    settings.database_url = args.store.database_url.clone();
    // Two connections: one for the work, one for renewing the ticks' lease beside it.
    let database = db::Db::connect(&settings.database_url(), 2)
        .await
        .context("connecting to the database")?;
    let warehouse = abx_origin_pipeline::clickhouse::ClickHouse::connect(ClickHouseConfig {
        url: args.clickhouse_url.clone(),
        database: args.clickhouse_database.clone(),
    })
    .await
    .context("connecting to ClickHouse")?;
    let started = std::time::Instant::now();
    let computed = match command {
        WarehouseCommand::Rebuild(_) => {
            abx_origin_pipeline::warehouse::rebuild_all(&database, &warehouse).await?
        }
        // Raw events past retention are the serving pipeline's to drop.
        WarehouseCommand::Tick(_) => {
            let margin = abx_origin_pipeline::warehouse::LOAD_MARGIN_MS;
            abx_origin_pipeline::warehouse::refresh_with_margin(&database, None, &warehouse, margin)
                .await?
        }
    };
    let Some(computed) = computed else {
        anyhow::bail!(
            "another process holds the warehouse's ticks (a running pipeline, or another tick or rebuild); nothing was computed"
        );
    };
    println!(
        "{computed} experiments computed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn activate_signing_key(
    location: StoreArgs,
    signing_key: Option<String>,
) -> anyhow::Result<()> {
    let mut settings = Settings::new(&location.data_dir);
    settings.database_url = location.database_url;
    settings.signing_key = signing_key;
    let key_id = abx_origin::activate_signing_key(&settings).await?;
    println!("{key_id}");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::new(&args.store.data_dir);
    settings.listen = args.listen;
    settings.database_url = args.store.database_url;
    settings.signing_key = args.signing_key;
    settings.bootstrap_admin_key = args.bootstrap_admin_key;
    settings.webhook_url = args.webhook_url;
    settings.admin_rate = Limit {
        per_second: args.admin_rate_limit,
        burst: args.admin_rate_limit * 4.0,
    };
    settings.server_rate = Limit {
        per_second: args.server_rate_limit,
        burst: args.server_rate_limit * 2.0,
    };
    settings.trusted_proxy_header = args.trusted_proxy_header;
    settings.verify_exposures = args.verify_exposures;
    settings.private_attributes = args
        .private_attributes
        .into_iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    settings.max_concurrent_requests = args.max_concurrent_requests;
    settings.max_concurrent_requests_per_client = args.max_concurrent_requests_per_client;
    settings.rate_limit_hold = std::time::Duration::from_millis(args.rate_limit_hold_ms);
    settings.connections.total = args.max_connections;
    settings.connections.per_client = match args.max_connections_per_client {
        Some(cap) => cap,
        None if settings.trusted_proxy_header.is_some() => args.max_connections,
        None => settings.connections.per_client,
    };
    settings.streams = abx_origin::StreamLimits {
        per_client: args.max_streams_per_client,
        total: args.max_streams,
        lifetime: std::time::Duration::from_secs(args.stream_lifetime.max(1)),
    };
    settings.sdk_rate = Limit {
        per_second: args.sdk_rate_limit,
        burst: args.sdk_rate_limit * 5.0,
    };
    settings.snapshot_max_age_s = args.snapshot_max_age;
    settings.event_retention_days = args.event_retention_days;
    settings.roles = args.role;
    if args.no_pipeline {
        settings.roles.pipeline = false;
    }
    settings.pipeline_batch = args.pipeline_batch;
    settings.pipeline_cache_units = args.pipeline_cache_units;
    settings.pipeline_tail_events = args.pipeline_tail_events;
    settings.guardrail_interval_s = args.guardrail_interval;
    settings.jetstream = args.nats_url.map(|url| {
        let mut config = JetStreamConfig::new(url);
        config.stream = args.nats_stream;
        config.subject_prefix = args.nats_subject_prefix;
        // Bounded so that the log's partitions (a multiple of the streams) fit a u32 easily.
        config.streams = args.nats_streams.clamp(1, 1_024);
        config.partitions = args.nats_partitions.clamp(1, 65_536);
        config.ack_wait = std::time::Duration::from_secs(args.nats_ack_wait.max(1));
        config.replicas = args.nats_replicas.max(1);
        config
    });
    settings.clickhouse = args.clickhouse_url.map(|url| ClickHouseConfig {
        url,
        database: args.clickhouse_database,
    });
    settings.warehouse_retention_days = args.warehouse_retention_days.map(|days| days.max(1));

    let started = AppState::start(settings.clone()).await?;
    if let Some(secret) = &started.new_admin_key {
        println!("Created the first admin key. It is shown only this once:\n\n    {secret}\n");
    }
    started.state.spawn_background();
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    println!(
        "abx origin ({}) listening on http://{} (snapshot v{})",
        settings.roles,
        settings.listen,
        started.state.published().version
    );
    abx_origin::serve::serve(listener, started.state, shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
