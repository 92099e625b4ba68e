//! Leases: roles that one process at a time holds, for a while, renewing them as it works.
//! A holder that dies loses its lease when it expires, and another process takes it over.

use sqlx::AnyConnection;

use crate::Error;

/// Takes the lease `name` for `holder` until `until_ms`, or renews it: when nobody holds
/// it, when its holder's time ran out by `now_ms`, or when `holder` holds it already.
/// Returns whether `holder` holds it now.
pub async fn take(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool, Error> {
    // One statement, so that two processes racing for a free or expired lease cannot both
    // win: the row's lock (PostgreSQL) or the database's (SQLite) orders them, and the
    // second finds the first's unexpired lease.
    let done = sqlx::query(
        "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
         WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= $4",
    )
    .bind(name)
    .bind(holder)
    .bind(until_ms)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends `holder`'s lease to `until_ms` if it still holds it at `now_ms`: not if it ran
/// out, even if nobody took it since (a holder that stalled that long cannot know what
/// another did meanwhile). Returns whether it did.
pub async fn renew(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE leases SET expires_at_ms = $1 WHERE name = $2 AND holder = $3 AND expires_at_ms > $4",
    )
    .bind(until_ms)
    .bind(name)
    .bind(holder)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up, if `holder` still holds it.
pub async fn release(conn: &mut AnyConnection, name: &str, holder: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
