//! Feature flags.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{json_column, to_json_text, typed_json};
use crate::Error;
use crate::clock;
use crate::model::flag::Flag;
use crate::model::flag::FlagSpec;

fn flag(r: &AnyRow) -> Result<Flag, Error> {
    let enabled: i64 = r.try_get("enabled")?;
    Ok(Flag {
        id: r.try_get("id")?,
        key: r.try_get("key")?,
        description: r.try_get("description")?,
        enabled: enabled != 0,
        unit: r.try_get("unit")?,
        off_value: json_column(r, "off_value")?,
        default_value: json_column(r, "default_value")?,
        rules: typed_json(r, "rules")?,
        version: r.try_get("version")?,
        created_at: clock::rfc3339(r.try_get("created_at_ms")?),
        updated_at: clock::rfc3339(r.try_get("updated_at_ms")?),
    })
}

pub async fn flags(conn: &mut AnyConnection, reference: Option<&str>) -> Result<Vec<Flag>, Error> {
    let rows = sqlx::query(
        "SELECT id, key, description, enabled, unit, off_value, default_value, rules, version, created_at_ms, updated_at_ms
         FROM flags WHERE $1 = '' OR id = $1 OR key = $1 ORDER BY key",
    )
    .bind(reference.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(flag).collect()
}

pub async fn insert(conn: &mut AnyConnection, id: &str, spec: &FlagSpec) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO flags (id, key, description, enabled, unit, off_value, default_value, rules, version, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.description)
    .bind(i64::from(spec.enabled))
    .bind(&spec.unit)
    .bind(spec.off_value.to_string())
    .bind(spec.default_value.to_string())
    .bind(to_json_text(&spec.rules))
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Turns a flag on or off, whatever else it holds; false if it is not at
/// `expected_version`.
pub async fn set_enabled(
    conn: &mut AnyConnection,
    id: &str,
    enabled: bool,
    expected_version: i64,
) -> Result<bool, Error> {
    let result = sqlx::query(
        "UPDATE flags SET enabled = $1, version = version + 1, updated_at_ms = $2
         WHERE id = $3 AND version = $4",
    )
    .bind(i64::from(enabled))
    .bind(clock::now_ms())
    .bind(id)
    .bind(expected_version)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn update(
    conn: &mut AnyConnection,
    id: &str,
    spec: &FlagSpec,
    expected_version: i64,
) -> Result<bool, Error> {
    let result = sqlx::query(
        "UPDATE flags SET description = $1, enabled = $2, unit = $3, off_value = $4, default_value = $5, rules = $6,
            version = version + 1, updated_at_ms = $7
         WHERE id = $8 AND version = $9",
    )
    .bind(&spec.description)
    .bind(i64::from(spec.enabled))
    .bind(&spec.unit)
    .bind(spec.off_value.to_string())
    .bind(spec.default_value.to_string())
    .bind(to_json_text(&spec.rules))
    .bind(clock::now_ms())
    .bind(id)
    .bind(expected_version)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
