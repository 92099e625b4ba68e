//! abx-origin-store: the configuration database and all its SQL, for SQLite and PostgreSQL
//! alike, one module per table group. Every function takes a connection (a pooled one or an
//! open transaction), so callers decide the transaction boundaries. Errors are this crate's
//! [`Error`], which says whether the database is unavailable or a key is taken.

pub mod catalog;
pub mod db;
mod error;
pub mod experiments;
pub mod flags;
pub mod leases;

pub use error::Error;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value as Json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use abx_origin_domain::keys::{ApiKeyView, KeyInfo, NewKey, Role};
use abx_origin_domain::model::AuditEntry;
// The submodules name these through the crate root, as the domain's own modules do.
use abx_origin_domain::{clock, model, results};

/// Reads a JSON document stored as TEXT.
pub(crate) fn json_column(row: &AnyRow, column: &str) -> Result<Json, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(crate) fn opt_json_column(row: &AnyRow, column: &str) -> Result<Option<Json>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Decodes a nullable typed JSON column.
pub(crate) fn opt_typed_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Decodes a typed JSON column.
pub(crate) fn typed_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &str,
) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(crate) fn to_json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Placeholders for `count` parameters that follow `offset` earlier ones: `$n` for
/// PostgreSQL, anonymous `?` for SQLite. (sqlx resolves SQLite's numbered parameters by
/// name, and SQLite's name lookup is linear, so a multi-row statement with thousands of
/// `$n` would spend quadratic time binding.) A statement uses one style throughout.
pub fn placeholders(conn: &AnyConnection, count: usize, offset: usize) -> String {
    let sqlite = conn.backend_name() == "SQLite";
    (1..=count)
        .map(|i| {
            if sqlite {
                "?".to_string()
            } else {
                format!("${}", i + offset)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A multi-row statement, `{head}(…), (…), …{tail}`, whose text depends only on the
/// backend and the number of rows. Callers send rows in chunks of `rows`; the text of a
/// full chunk is built once per backend and kept, since formatting thousands of
/// placeholders for every statement was a measurable share of the event path.
pub struct MultiRow {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    /// Rows per statement (at most 32,766 parameters on SQLite).
    pub rows: usize,
    sqlite: std::sync::OnceLock<String>,
    postgres: std::sync::OnceLock<String>,
}

impl MultiRow {
    pub const fn new(head: &'static str, columns: usize, rows: usize, tail: &'static str) -> Self {
        MultiRow {
            head,
            columns,
            tail,
            rows,
            sqlite: std::sync::OnceLock::new(),
            postgres: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `rows` rows (at most `self.rows`).
    pub fn sql(&self, conn: &AnyConnection, rows: usize) -> std::borrow::Cow<'_, str> {
        if rows != self.rows {
            return self.build(conn, rows).into();
        }
        let kept = if conn.backend_name() == "SQLite" {
            &self.sqlite
        } else {
            &self.postgres
        };
        kept.get_or_init(|| self.build(conn, rows)).as_str().into()
    }

    fn build(&self, conn: &AnyConnection, rows: usize) -> String {
        let values: Vec<String> = (0..rows)
            .map(|i| format!("({})", placeholders(conn, self.columns, i * self.columns)))
            .collect();
        format!("{}{}{}", self.head, values.join(", "), self.tail)
    }
}

/// Inside a configuration change's transaction: waits until no other origin process sharing
/// the PostgreSQL database is in one, so snapshot versions follow commit order across
/// processes. (On SQLite the write transaction already excludes every other writer.)
pub async fn serialise_config_changes(
    conn: &mut AnyConnection,
    backend: db::Backend,
) -> Result<(), Error> {
    if backend == db::Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(727411)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// One audited change: written to the audit log and, for asynchronous side effects such as
/// webhooks, to the outbox, in the same transaction as the change itself.
pub struct Change<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub details: Json,
}

pub async fn record(conn: &mut AnyConnection, change: Change<'_>) -> Result<(), Error> {
    let now = clock::now_ms();
    let details = change.details.to_string();
    sqlx::query(
        "INSERT INTO audit_log (at_ms, actor, action, entity_type, entity_id, details) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now)
    .bind(change.actor)
    .bind(change.action)
    .bind(change.entity_type)
    .bind(change.entity_id)
    .bind(&details)
    .execute(&mut *conn)
    .await?;
    let payload = serde_json::json!({
        "action": change.action, "entity_type": change.entity_type, "entity_id": change.entity_id,
        "actor": change.actor, "at": clock::rfc3339(now), "details": change.details,
    });
    sqlx::query(
        "INSERT INTO outbox (created_at_ms, topic, payload, attempts, next_attempt_at_ms) VALUES ($1, $2, $3, 0, $1)",
    )
    .bind(now)
    .bind(change.action)
    .bind(payload.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn audit_log(
    conn: &mut AnyConnection,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, Error> {
    let rows = sqlx::query(
        "SELECT id, at_ms, actor, action, entity_type, entity_id, details FROM audit_log
         WHERE ($1 = '' OR entity_type = $1) AND ($2 = '' OR entity_id = $2) AND id < $3
         ORDER BY id DESC LIMIT $4",
    )
    .bind(entity_type.unwrap_or(""))
    .bind(entity_id.unwrap_or(""))
    .bind(before_id.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                id: row.try_get("id")?,
                at: clock::rfc3339(row.try_get("at_ms")?),
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                entity_type: row.try_get("entity_type")?,
                entity_id: row.try_get("entity_id")?,
                details: json_column(row, "details")?,
            })
        })
        .collect()
}

/// A pending outbox row.
pub struct OutboxItem {
    pub id: i64,
    pub topic: String,
    pub payload: String,
    pub attempts: i64,
}

pub async fn due_outbox(
    conn: &mut AnyConnection,
    now: i64,
    limit: i64,
) -> Result<Vec<OutboxItem>, Error> {
    let rows = sqlx::query(
        "SELECT id, topic, payload, attempts FROM outbox
         WHERE delivered_at_ms IS NULL AND next_attempt_at_ms <= $1 ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OutboxItem {
                id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

pub async fn outbox_delivered(conn: &mut AnyConnection, id: i64, now: i64) -> Result<(), Error> {
    sqlx::query("UPDATE outbox SET delivered_at_ms = $1, attempts = attempts + 1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn outbox_failed(
    conn: &mut AnyConnection,
    id: i64,
    next_at: i64,
    error: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = $1, last_error = $2 WHERE id = $3")
        .bind(next_at)
        .bind(error)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---- snapshots ----

pub struct StoredSnapshot {
    pub version: i64,
    pub published_at_ms: i64,
    pub etag: String,
    pub bytes: Vec<u8>,
}

fn stored_snapshot(row: &AnyRow) -> Result<StoredSnapshot, Error> {
    Ok(StoredSnapshot {
        version: row.try_get("version")?,
        published_at_ms: row.try_get("published_at_ms")?,
        etag: row.try_get("etag")?,
        bytes: row.try_get("bytes")?,
    })
}

pub async fn latest_snapshot(conn: &mut AnyConnection) -> Result<Option<StoredSnapshot>, Error> {
    let row = sqlx::query(
        "SELECT version, published_at_ms, etag, bytes FROM snapshots ORDER BY version DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(stored_snapshot).transpose()
}

/// The newest stored snapshot's version (0 when none is stored).
pub async fn latest_snapshot_version(conn: &mut AnyConnection) -> Result<i64, Error> {
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM snapshots")
        .fetch_one(&mut *conn)
        .await?;
    Ok(version.unwrap_or(0))
}

pub async fn snapshot_at(
    conn: &mut AnyConnection,
    version: i64,
) -> Result<Option<StoredSnapshot>, Error> {
    let row = sqlx::query(
        "SELECT version, published_at_ms, etag, bytes FROM snapshots WHERE version = $1",
    )
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(stored_snapshot).transpose()
}

pub async fn insert_snapshot(
    conn: &mut AnyConnection,
    snapshot: &StoredSnapshot,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO snapshots (version, published_at_ms, etag, bytes) VALUES ($1, $2, $3, $4)",
    )
    .bind(snapshot.version)
    .bind(snapshot.published_at_ms)
    .bind(&snapshot.etag)
    .bind(&snapshot.bytes)
    .execute(&mut *conn)
    .await?;
    // PostgreSQL delivers the notification when the transaction commits, so listeners (the
    // other processes, `SnapshotListener`) never look for a snapshot that is not there yet.
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SNAPSHOT_CHANNEL)
            .bind(snapshot.version.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The deployment's active signing key id, registering `key_id` as active when there is
/// none yet (the first process of a deployment). A process whose key is not the active one
/// must not publish: edges pinned to the active public key would refuse its snapshots.
/// `None` only while an activation is switching keys.
pub async fn active_signing_key(
    conn: &mut AnyConnection,
    key_id: &str,
    public_key_hex: &str,
) -> Result<Option<String>, Error> {
    // Two first processes may race: the unique index on the active row lets one insert win
    // (the other's does nothing), and both then read the same active row.
    sqlx::query(
        "INSERT INTO signing_keys (key_id, public_key, active, created_at_ms)
         SELECT $1, $2, 1, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE active = 1)
         ON CONFLICT DO NOTHING",
    )
    .bind(key_id)
    .bind(public_key_hex)
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    let active: Option<String> = sqlx::query_scalar(
        "SELECT key_id FROM signing_keys WHERE active = 1 ORDER BY created_at_ms DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(active)
}

/// Makes `key_id` the deployment's active signing key (the rotation's switch); the keys it
/// replaces stay listed, inactive, so that the history of who signed what is kept.
pub async fn activate_signing_key(
    conn: &mut AnyConnection,
    key_id: &str,
    public_key_hex: &str,
) -> Result<(), Error> {
    sqlx::query("UPDATE signing_keys SET active = 0 WHERE key_id <> $1")
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO signing_keys (key_id, public_key, active, created_at_ms) VALUES ($1, $2, 1, $3)
         ON CONFLICT (key_id) DO UPDATE SET active = 1",
    )
    .bind(key_id)
    .bind(public_key_hex)
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The PostgreSQL notification channel on which new snapshots are announced.
const SNAPSHOT_CHANNEL: &str = "abx_snapshots";

/// Wakes a process when another one stores a snapshot (PostgreSQL's LISTEN), so that every
/// process serves a pause within milliseconds instead of at its next poll.
pub struct SnapshotListener(sqlx::postgres::PgListener);

impl SnapshotListener {
    /// Listens on the database at `url`; `None` for SQLite, which has no notifications (its
    /// processes share one machine and poll).
    pub async fn connect(url: &str) -> Result<Option<Self>, Error> {
        if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(SNAPSHOT_CHANNEL).await?;
        Ok(Some(SnapshotListener(listener)))
    }

    /// Waits for the next announcement (the version is read from the table, not trusted
    /// from the payload).
    pub async fn next(&mut self) -> Result<(), Error> {
        self.0.recv().await?;
        Ok(())
    }
}

/// Keeps the newest `keep` snapshot versions (older ones are only of historical interest).
pub async fn prune_snapshots(conn: &mut AnyConnection, keep: i64) -> Result<u64, Error> {
    let result = sqlx::query(
        "DELETE FROM snapshots WHERE version <= (SELECT MAX(version) FROM snapshots) - $1",
    )
    .bind(keep)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected())
}

// ---- API keys ----

pub async fn insert_key(
    conn: &mut AnyConnection,
    id: &str,
    name: &str,
    role: Role,
    key: &NewKey,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO api_keys (id, name, role, key_hash, prefix, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(name)
        .bind(role.as_str())
        .bind(&key.hash)
        .bind(&key.prefix)
        .bind(clock::now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn list_keys(conn: &mut AnyConnection) -> Result<Vec<ApiKeyView>, Error> {
    let rows = sqlx::query("SELECT id, name, role, prefix, created_at_ms, revoked_at_ms FROM api_keys ORDER BY created_at_ms, id")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            let role: String = r.try_get("role")?;
            Ok(ApiKeyView {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: Role::parse(&role)
                    .ok_or_else(|| sqlx::Error::Decode(format!("bad role {role}").into()))?,
                prefix: r.try_get("prefix")?,
                created_at: clock::rfc3339(r.try_get("created_at_ms")?),
                revoked_at: clock::rfc3339_opt(r.try_get("revoked_at_ms")?),
            })
        })
        .collect()
}

/// Active keys by hash, for the in-memory key cache.
pub async fn active_keys(conn: &mut AnyConnection) -> Result<HashMap<String, KeyInfo>, Error> {
    let rows = sqlx::query("SELECT id, role, key_hash FROM api_keys WHERE revoked_at_ms IS NULL")
        .fetch_all(&mut *conn)
        .await?;
    let mut keys = HashMap::with_capacity(rows.len());
    for r in &rows {
        let role: String = r.try_get("role")?;
        if let Some(role) = Role::parse(&role) {
            keys.insert(
                r.try_get("key_hash")?,
                KeyInfo {
                    id: r.try_get("id")?,
                    role,
                },
            );
        }
    }
    Ok(keys)
}

pub async fn revoke_key(conn: &mut AnyConnection, id: &str) -> Result<bool, Error> {
    let result = sqlx::query(
        "UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
    )
    .bind(clock::now_ms())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn count_admin_keys(conn: &mut AnyConnection) -> Result<i64, Error> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM api_keys WHERE role = 'admin' AND revoked_at_ms IS NULL",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?)
}

// ---- idempotency ----

pub struct StoredResponse {
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

pub async fn idempotent_response(
    conn: &mut AnyConnection,
    scope: &str,
    key: &str,
) -> Result<Option<StoredResponse>, Error> {
    let row = sqlx::query("SELECT request_hash, status, response FROM idempotency_keys WHERE api_key_id = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        let status: i64 = r.try_get("status")?;
        Ok(StoredResponse {
            request_hash: r.try_get("request_hash")?,
            status: status as u16,
            body: r.try_get("response")?,
        })
    })
    .transpose()
}

/// Stores the response unless the API key (`scope`) already has `max_per_key` stored, or
/// this key is stored already; says whether it stored it. Counted and inserted in one
/// statement, so on SQLite (one writer) the cap is exact; on PostgreSQL concurrent requests
/// of one API key can each pass it, so it is exceeded by at most their number.
pub async fn store_idempotent_response(
    conn: &mut AnyConnection,
    scope: &str,
    key: &str,
    response: &StoredResponse,
    max_per_key: i64,
) -> Result<bool, Error> {
    let stored = sqlx::query(
        "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status, response, created_at_ms)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE (SELECT COUNT(*) FROM idempotency_keys WHERE api_key_id = $1) < $7
         ON CONFLICT (api_key_id, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(&response.request_hash)
    .bind(i64::from(response.status))
    .bind(&response.body)
    .bind(clock::now_ms())
    .bind(max_per_key)
    .execute(&mut *conn)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Stored idempotent responses of one API key (by id), or of all keys.
pub async fn count_idempotent_responses(
    conn: &mut AnyConnection,
    api_key_id: Option<&str>,
) -> Result<i64, Error> {
    let row = match api_key_id {
        Some(id) => {
            sqlx::query("SELECT COUNT(*) AS n FROM idempotency_keys WHERE api_key_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("SELECT COUNT(*) AS n FROM idempotency_keys")
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok(row.try_get("n")?)
}

pub async fn prune_idempotency_keys(
    conn: &mut AnyConnection,
    older_than_ms: i64,
) -> Result<u64, Error> {
    let result = sqlx::query("DELETE FROM idempotency_keys WHERE created_at_ms < $1")
        .bind(older_than_ms)
        .execute(&mut *conn)
        .await?;
    Ok(result.rows_affected())
}
