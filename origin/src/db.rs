//! The database: one pool over SQLite (embedded default) or PostgreSQL, chosen by URL at run
//! time through sqlx's `Any` driver. Only this module and `store/` know SQL. Queries use
//! `$n` placeholders and portable types (BIGINT, DOUBLE, TEXT, BLOB/BYTEA), which both
//! engines accept, so every query is written once.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

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
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
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
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "migration {version} ({name}) was changed after it was applied; add a new migration instead"
    )]
    Edited { version: i64, name: &'static str },
    #[error("the database has migration {0}, which this build does not know; upgrade abx-origin")]
    Unknown(i64),
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
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
                        // Checkpoint the WAL every ~64 MiB rather than every 4 MiB: pages the
                        // pipeline rewrites often are copied back to the database once.
                        conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
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

    /// Begins a transaction that will write.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
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
            let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
                return Err(MigrateError::Unknown(version));
            };
            if checksum != self.checksum(known) {
                return Err(MigrateError::Edited {
                    version,
                    name: known.name,
                });
            }
        }
        for migration in MIGRATIONS.iter().skip(applied.len()) {
            let mut tx = self.begin_write().await?;
            (&mut *tx)
                .execute(sqlx::raw_sql(self.sql(migration)))
                .await?;
            sqlx::query("INSERT INTO abx_migrations (version, name, checksum, applied_at_ms) VALUES ($1, $2, $3, $4)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(self.checksum(migration))
                .bind(crate::clock::now_ms())
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
        crate::auth::hex(&Sha256::digest(self.sql(migration).as_bytes()))
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
