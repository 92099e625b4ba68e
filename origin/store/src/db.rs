//! The database: a pool over SQLite (embedded default) or PostgreSQL, chosen by URL at run
//! time through sqlx's `Any` driver. This crate and abx-origin-pipeline are the only ones
//! that know SQL. Queries use `$n` placeholders and portable types (BIGINT, DOUBLE, TEXT,
//! BLOB/BYTEA), which both engines accept, so every query is written once.
//!
//! On SQLite the event log lives in a second file with its own pool (see
//! [`event_log_file`]); on PostgreSQL it is the same database.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite has one writer at a time. Writers in this process queue here, in order,
    /// instead of polling SQLite's lock; each then takes the lock with `BEGIN IMMEDIATE`, so a
    /// transaction never fails halfway when upgrading from reader to writer.
    write_gate: Arc<Mutex<()>>,
}

/// A write transaction (holding the SQLite write gate while it lives).
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _gate: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), Error> {
        Ok(self.tx.commit().await?)
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// How often `spawn_checkpointer` checkpoints.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Applied in order at start. A migration is never edited once it has landed: the runner
/// stores each one's checksum and refuses to start if an applied one has changed.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "config",
        sqlite: include_str!("../migrations/sqlite/0001_config.sql"),
        postgres: include_str!("../migrations/postgres/0001_config.sql"),
    },
    Migration {
        version: 2,
        name: "events",
        sqlite: include_str!("../migrations/sqlite/0002_events.sql"),
        postgres: include_str!("../migrations/postgres/0002_events.sql"),
    },
    Migration {
        version: 3,
        name: "signing_keys",
        sqlite: include_str!("../migrations/sqlite/0003_signing_keys.sql"),
        postgres: include_str!("../migrations/postgres/0003_signing_keys.sql"),
    },
    Migration {
        version: 4,
        name: "decision_looks",
        sqlite: include_str!("../migrations/sqlite/0004_decision_looks.sql"),
        postgres: include_str!("../migrations/postgres/0004_decision_looks.sql"),
    },
    Migration {
        version: 5,
        name: "metric_value_bounds",
        sqlite: include_str!("../migrations/sqlite/0005_metric_value_bounds.sql"),
        postgres: include_str!("../migrations/postgres/0005_metric_value_bounds.sql"),
    },
    Migration {
        version: 6,
        name: "catalog_versions",
        sqlite: include_str!("../migrations/sqlite/0006_catalog_versions.sql"),
        postgres: include_str!("../migrations/postgres/0006_catalog_versions.sql"),
    },
    Migration {
        version: 7,
        name: "exposure_mismatches",
        sqlite: include_str!("../migrations/sqlite/0007_exposure_mismatches.sql"),
        postgres: include_str!("../migrations/postgres/0007_exposure_mismatches.sql"),
    },
    Migration {
        version: 8,
        name: "event_properties",
        sqlite: include_str!("../migrations/sqlite/0008_event_properties.sql"),
        postgres: include_str!("../migrations/postgres/0008_event_properties.sql"),
    },
    Migration {
        version: 9,
        name: "metric_definitions",
        sqlite: include_str!("../migrations/sqlite/0009_metric_definitions.sql"),
        postgres: include_str!("../migrations/postgres/0009_metric_definitions.sql"),
    },
    Migration {
        version: 10,
        name: "ratio_covariate",
        sqlite: include_str!("../migrations/sqlite/0010_ratio_covariate.sql"),
        postgres: include_str!("../migrations/postgres/0010_ratio_covariate.sql"),
    },
    Migration {
        version: 11,
        name: "instance_settings",
        sqlite: include_str!("../migrations/sqlite/0011_instance_settings.sql"),
        postgres: include_str!("../migrations/postgres/0011_instance_settings.sql"),
    },
    Migration {
        version: 12,
        name: "holdout_lifecycle",
        sqlite: include_str!("../migrations/sqlite/0012_holdout_lifecycle.sql"),
        postgres: include_str!("../migrations/postgres/0012_holdout_lifecycle.sql"),
    },
    Migration {
        version: 13,
        name: "holdout_readout",
        sqlite: include_str!("../migrations/sqlite/0013_holdout_readout.sql"),
        postgres: include_str!("../migrations/postgres/0013_holdout_readout.sql"),
    },
    Migration {
        version: 14,
        name: "leases",
        sqlite: include_str!("../migrations/sqlite/0014_leases.sql"),
        postgres: include_str!("../migrations/postgres/0014_leases.sql"),
    },
];

/// Migrations of the SQLite event log file, numbered on their own.
const EVENT_LOG_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sqlite: include_str!("../migrations/sqlite/event_log/0001_events.sql"),
        postgres: "",
    },
    Migration {
        version: 2,
        name: "event_properties",
        sqlite: include_str!("../migrations/sqlite/event_log/0002_event_properties.sql"),
        postgres: "",
    },
];

/// Where the event log of a SQLite database lives: the URL to open and the file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLogFile {
    pub url: String,
    pub path: PathBuf,
}

/// The event log's own file for the database at `url`: `abx.db` → `abx-events.db`, with the
/// same URL options. Ingestion and the pipeline both write all the time, and SQLite allows
/// one writer per file; with the log apart they stop queueing behind each other. `None`
/// means the log shares the database: PostgreSQL, whose writers do not exclude each other,
/// and in-memory SQLite, which has no file to put beside.
pub fn event_log_file(url: &str) -> Option<EventLogFile> {
    let (scheme, rest) = ["sqlite://", "sqlite:"]
        .iter()
        .find_map(|scheme| Some((*scheme, url.strip_prefix(scheme)?)))?;
    let (path, options) = match rest.split_once('?') {
        Some((path, options)) => (path, Some(options)),
        None => (rest, None),
    };
    let in_memory = path.is_empty()
        || path == ":memory:"
        || options.is_some_and(|o| o.split('&').any(|pair| pair == "mode=memory"));
    if in_memory {
        return None;
    }
    let file = Path::new(path);
    let stem = file.file_stem()?.to_str()?;
    let name = match file.extension().and_then(|e| e.to_str()) {
        Some(extension) => format!("{stem}-events.{extension}"),
        None => format!("{stem}-events"),
    };
    let log = file.with_file_name(name);
    let mut log_url = format!("{scheme}{}", log.display());
    if let Some(options) = options {
        log_url = format!("{log_url}?{options}");
    }
    Some(EventLogFile {
        url: log_url,
        path: log,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Database(#[from] Error),
    #[error(
        "migration {version} ({name}) was changed after it was applied; add a new migration instead"
    )]
    Edited { version: i64, name: &'static str },
    #[error("the database has migration {0}, which this build does not know; upgrade abx-origin")]
    Unknown(i64),
}

impl From<sqlx::Error> for MigrateError {
    fn from(error: sqlx::Error) -> Self {
        MigrateError::Database(error.into())
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let options = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed during writes; FULL makes every commit
                        // durable before we acknowledge it; the busy timeout turns writer
                        // contention into waiting rather than errors.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // 64 MiB of page cache: the event log's random-key index (event_id)
                        // otherwise rereads pages on most inserts.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        // The WAL is checkpointed in the background (`spawn_checkpointer`);
                        // a commit checkpoints it itself only past ~256 MiB, should that
                        // fall behind.
                        conn.execute("PRAGMA wal_autocheckpoint = 65536").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db {
            pool,
            backend,
            write_gate: Arc::new(Mutex::new(())),
        })
    }

    /// Copies the WAL back into the database file twice a second from a connection of its
    /// own (SQLite only). Otherwise the commit that crosses `wal_autocheckpoint` does it
    /// itself, and the event log's writer held every waiting acknowledgement for up to
    /// 300 ms while it did (docs/benchmarks.md, "Unit state without copies, checkpoints off
    /// the writer"). PASSIVE: it never waits for readers or writers, and copies what they
    /// allow. Ends with the pool.
    pub fn spawn_checkpointer(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !pool.is_closed() {
                tick.tick().await;
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(%error, "checkpointing the WAL failed; retrying");
                }
            }
        });
    }

    /// Whether both handles use the same database (the event log in the main file).
    /// Answers once the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn is_same(&self, other: &Db) -> bool {
        Arc::ptr_eq(&self.write_gate, &other.write_gate)
    }

    /// Begins a transaction that will write.
    pub async fn begin_write(&self) -> Result<WriteTx, Error> {
        match self.backend {
            Backend::Sqlite => {
                let gate = self.write_gate.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _gate: Some(gate),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _gate: None,
            }),
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        self.apply(MIGRATIONS).await
    }

    /// Applies pending migrations of a SQLite event log file (see [`event_log_file`]).
    pub async fn migrate_event_log(&self) -> Result<(), MigrateError> {
        self.apply(EVENT_LOG_MIGRATIONS).await
    }

    /// Moves events that an earlier version logged in the main file to the event log file,
    /// in one transaction. A no-op once done, so it runs at every start. Should a crash
    /// separate the two files' commits (SQLite in WAL mode commits attached files one by
    /// one), the next start finds the copied rows already there and skips them.
    pub async fn move_events_to_log(&self, log: &Path) -> Result<u64, Error> {
        let mut conn = self.pool.acquire().await?;
        let waiting: Option<i64> = sqlx::query_scalar("SELECT seq FROM events LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
        if waiting.is_none() {
            return Ok(0);
        }
        let _gate = self.write_gate.clone().lock_owned().await;
        sqlx::query("ATTACH DATABASE $1 AS event_log")
            .bind(log.display().to_string())
            .execute(&mut *conn)
            .await?;
        let moved = async {
            let mut tx = conn.begin().await?;
            let columns = "seq, event_id, received_at_ms, ts_ms, kind, unit_key, experiment_id, variant, event_type, value, properties";
            let moved = sqlx::query(&format!(
                "INSERT OR IGNORE INTO event_log.events ({columns}) SELECT {columns} FROM main.events"
            ))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM main.events")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(moved)
        }
        .await;
        // Detached whatever happened: the connection goes back to the pool.
        let detached = sqlx::query("DETACH DATABASE event_log")
            .execute(&mut *conn)
            .await;
        let moved = moved?;
        detached?;
        tracing::info!(moved, log = %log.display(), "moved logged events to the event log file");
        Ok(moved)
    }

    async fn apply(&self, migrations: &[Migration]) -> Result<(), MigrateError> {
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS abx_migrations (
                    version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                    checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
            )
            .await?;
        let applied = sqlx::query("SELECT version, checksum FROM abx_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?;
        for row in &applied {
            let version: i64 = row.try_get("version")?;
            let checksum: String = row.try_get("checksum")?;
            let Some(known) = migrations.iter().find(|m| m.version == version) else {
                return Err(MigrateError::Unknown(version));
            };
            if checksum != self.checksum(known) {
                return Err(MigrateError::Edited {
                    version,
                    name: known.name,
                });
            }
        }
        for migration in migrations.iter().skip(applied.len()) {
            let mut tx = self.begin_write().await?;
            (&mut *tx)
                .execute(sqlx::raw_sql(self.sql(migration)))
                .await?;
            sqlx::query("INSERT INTO abx_migrations (version, name, checksum, applied_at_ms) VALUES ($1, $2, $3, $4)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(self.checksum(migration))
                .bind(abx_origin_domain::clock::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applied migration"
            );
        }
        Ok(())
    }

    fn sql(&self, migration: &Migration) -> &'static str {
        match self.backend {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        }
    }

    fn checksum(&self, migration: &Migration) -> String {
        abx_origin_domain::keys::hex(&Sha256::digest(self.sql(migration).as_bytes()))
    }
}

/// Whether an error means the database cannot be reached (503) rather than a bug (500).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    )
}

/// Whether an error is a unique-constraint violation (a duplicate key: 409).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                // The Any driver does not always carry the kind through; fall back to the
                // engines' own codes (SQLite 2067/1555, PostgreSQL 23505).
                || matches!(db.code().as_deref(), Some("2067" | "1555" | "23505"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_log_file_sits_beside_the_database() {
        let cases = [
            (
                "sqlite://data/abx.db?mode=rwc",
                Some(("sqlite://data/abx-events.db?mode=rwc", "data/abx-events.db")),
            ),
            (
                "sqlite:///var/lib/abx/main.sqlite3",
                Some((
                    "sqlite:///var/lib/abx/main-events.sqlite3",
                    "/var/lib/abx/main-events.sqlite3",
                )),
            ),
            ("sqlite:abx", Some(("sqlite:abx-events", "abx-events"))),
            ("sqlite::memory:", None),
            ("sqlite://shared?mode=memory&cache=shared", None),
            ("postgres://postgres@127.0.0.1/abx", None),
        ];
        for (url, want) in cases {
            let got = event_log_file(url);
            let want = want.map(|(url, path)| EventLogFile {
                url: url.into(),
                path: path.into(),
            });
            assert_eq!(got, want, "{url}");
        }
    }

    /// Holdouts made before migration 12 have held units out since their creation: they
    /// come out of it running, started when they were created. Migration 13 gives them the
    /// unit of the first experiment that respects them (`user_id` when none does) and no
    /// metrics.
    #[tokio::test]
    async fn holdouts_made_before_their_lifecycle_run_from_their_creation() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("abx.db");
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", path.display()), 2)
            .await
            .expect("connect");
        let before = MIGRATIONS
            .iter()
            .position(|m| m.name == "holdout_lifecycle");
        let before = before.expect("the lifecycle migration");
        db.apply(&MIGRATIONS[..before])
            .await
            .expect("earlier migrations");
        sqlx::query(
            "INSERT INTO holdouts (id, key, name, description, percent_bp, created_at_ms, updated_at_ms)
             VALUES ('h-1', 'old', 'old', '', 500, 1700000000000, 1700000000000)",
        )
        .execute(&db.pool)
        .await
        .expect("an old holdout");
        sqlx::query(
            "INSERT INTO holdouts (id, key, name, description, percent_bp, created_at_ms, updated_at_ms)
             VALUES ('h-2', 'devices', 'devices', '', 500, 1700000000000, 1700000000000)",
        )
        .execute(&db.pool)
        .await
        .expect("an old holdout of devices");
        sqlx::query(
            "INSERT INTO experiments (id, key, name, hypothesis, description, owner, status, unit,
                traffic_bp, holdout_id, forced, primary_metric, secondary_metrics,
                guardrail_metrics, analysis, version, created_at_ms, updated_at_ms)
             VALUES ('e-1', 'e', 'e', '', '', '', 'running', 'device_id', 10000, 'h-2', '{}',
                'conversion', '[]', '[]', '{}', 1, 1700000000000, 1700000000000)",
        )
        .execute(&db.pool)
        .await
        .expect("an experiment of devices");
        db.migrate().await.expect("the rest");
        let mut conn = db.pool.acquire().await.expect("connection");
        let holdouts = crate::catalog::holdouts(&mut conn, None)
            .await
            .expect("read");
        assert_eq!(holdouts.len(), 2);
        // In key order: `devices`, then `old`.
        assert_eq!(
            (holdouts[0].unit.as_str(), holdouts[1].unit.as_str()),
            ("device_id", "user_id")
        );
        assert!(holdouts.iter().all(|h| h.metrics.is_empty()));
        let old = &holdouts[1];
        assert_eq!(
            old.status,
            abx_origin_domain::model::catalog::HoldoutStatus::Running
        );
        assert_eq!(old.started_at, old.created_at);
        assert_eq!(old.ended_at, None);
        let refused = sqlx::query("UPDATE holdouts SET status = 'paused'")
            .execute(&mut *conn)
            .await;
        assert!(refused.is_err(), "only running and ended are statuses");
        drop(conn);
        db.pool.close().await;
    }

    /// Without the background checkpointer, pages stay in the WAL until a commit crosses
    /// `wal_autocheckpoint` (256 MiB), so the database file would not grow here.
    #[tokio::test]
    async fn the_checkpointer_copies_committed_pages_into_the_database_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("abx.db");
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", path.display()), 2)
            .await
            .expect("connect");
        let mut tx = db.begin_write().await.expect("begin");
        sqlx::query("CREATE TABLE filler (text TEXT)")
            .execute(&mut *tx)
            .await
            .expect("create");
        for _ in 0..64 {
            sqlx::query("INSERT INTO filler VALUES ($1)")
                .bind("x".repeat(16 * 1024))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
        tx.commit().await.expect("commit");
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(size() < 64 * 16 * 1024, "not yet checkpointed");
        db.spawn_checkpointer();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() < 64 * 16 * 1024 {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db.pool.close().await;
    }
}
