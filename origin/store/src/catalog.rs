//! Layers (with their slot map), holdouts, segments and metric definitions.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{json_column, to_json_text, typed_json};
use crate::Error;
use crate::clock;
use crate::model::bp_to_percent;
use crate::model::catalog::{
    Direction, HoldoutSpec, HoldoutStatus, LayerSpec, MetricKind, MetricSpec, SegmentSpec,
};
use crate::model::catalog::{
    Holdout, InstanceDimensions, Layer, LayerName, Metric, Segment, SlotOwner,
};

pub async fn insert_layer(
    conn: &mut AnyConnection,
    id: &str,
    spec: &LayerSpec,
) -> Result<(), Error> {
    let now = clock::now_ms();
    sqlx::query(
        "INSERT INTO layers (id, key, name, description, unit, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(&spec.unit)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn update_layer(
    conn: &mut AnyConnection,
    id: &str,
    spec: &LayerSpec,
) -> Result<(), Error> {
    sqlx::query("UPDATE layers SET name = $1, description = $2, unit = $3, updated_at_ms = $4, version = version + 1 WHERE id = $5")
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(&spec.unit)
        .bind(clock::now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every layer's id and key, without the allocations `layers` gathers.
pub async fn layer_names(conn: &mut AnyConnection) -> Result<Vec<LayerName>, Error> {
    let rows = sqlx::query("SELECT id, key FROM layers ORDER BY key")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(LayerName {
                id: row.try_get("id")?,
                key: row.try_get("key")?,
            })
        })
        .collect()
}

/// All layers with their allocations; `reference` limits to one layer by id or key.
pub async fn layers(
    conn: &mut AnyConnection,
    reference: Option<&str>,
) -> Result<Vec<Layer>, Error> {
    let rows = sqlx::query(
        "SELECT id, key, name, description, unit, version, created_at_ms, updated_at_ms FROM layers
         WHERE $1 = '' OR id = $1 OR key = $1 ORDER BY key",
    )
    .bind(reference.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?;
    let allocations = sqlx::query(
        "SELECT a.layer_id, a.experiment_id, e.key, e.status, a.start_bp, a.end_bp
         FROM layer_allocations a JOIN experiments e ON e.id = a.experiment_id ORDER BY a.layer_id, a.start_bp",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let mut owners = Vec::new();
        let mut used: i64 = 0;
        for a in &allocations {
            let layer_id: String = a.try_get("layer_id")?;
            if layer_id != id {
                continue;
            }
            let start: i64 = a.try_get("start_bp")?;
            let end: i64 = a.try_get("end_bp")?;
            used += end - start;
            owners.push(SlotOwner {
                experiment_id: a.try_get("experiment_id")?,
                experiment_key: a.try_get("key")?,
                status: a.try_get("status")?,
                start_percent: bp_to_percent(start),
                end_percent: bp_to_percent(end),
            });
        }
        out.push(Layer {
            id,
            key: row.try_get("key")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            unit: row.try_get("unit")?,
            allocations: owners,
            free_percent: bp_to_percent(10_000 - used),
            version: row.try_get("version")?,
            created_at: clock::rfc3339(row.try_get("created_at_ms")?),
            updated_at: clock::rfc3339(row.try_get("updated_at_ms")?),
        });
    }
    Ok(out)
}

/// Allocated ranges of a layer with the experiment owning each.
pub async fn layer_ranges(
    conn: &mut AnyConnection,
    layer_id: &str,
) -> Result<Vec<(String, u16, u16)>, Error> {
    let rows = sqlx::query("SELECT experiment_id, start_bp, end_bp FROM layer_allocations WHERE layer_id = $1 ORDER BY start_bp")
        .bind(layer_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            let start: i64 = r.try_get("start_bp")?;
            let end: i64 = r.try_get("end_bp")?;
            Ok((r.try_get("experiment_id")?, start as u16, end as u16))
        })
        .collect()
}

pub async fn set_allocations(
    conn: &mut AnyConnection,
    layer_id: &str,
    experiment_id: &str,
    ranges: &[(u16, u16)],
) -> Result<(), Error> {
    sqlx::query("DELETE FROM layer_allocations WHERE experiment_id = $1")
        .bind(experiment_id)
        .execute(&mut *conn)
        .await?;
    for (start, end) in ranges {
        sqlx::query("INSERT INTO layer_allocations (layer_id, experiment_id, start_bp, end_bp) VALUES ($1, $2, $3, $4)")
            .bind(layer_id)
            .bind(experiment_id)
            .bind(i64::from(*start))
            .bind(i64::from(*end))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A holdout's metric keys as stored: a JSON array.
fn metrics_text(metrics: &[String]) -> String {
    serde_json::Value::from(metrics).to_string()
}

pub async fn insert_holdout(
    conn: &mut AnyConnection,
    id: &str,
    spec: &HoldoutSpec,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO holdouts (id, key, name, description, percent_bp, unit, metrics, status, started_at_ms, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $8, $8)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(i64::from(spec.percent_bp))
    .bind(&spec.unit)
    .bind(metrics_text(&spec.metrics))
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn update_holdout(
    conn: &mut AnyConnection,
    id: &str,
    spec: &HoldoutSpec,
) -> Result<(), Error> {
    sqlx::query("UPDATE holdouts SET name = $1, description = $2, percent_bp = $3, unit = $4, metrics = $5, updated_at_ms = $6, version = version + 1 WHERE id = $7")
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(i64::from(spec.percent_bp))
        .bind(&spec.unit)
        .bind(metrics_text(&spec.metrics))
        .bind(clock::now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Ends a running holdout; `false` if it was not running.
pub async fn end_holdout(conn: &mut AnyConnection, id: &str) -> Result<bool, Error> {
    let now = clock::now_ms();
    let ended = sqlx::query(
        "UPDATE holdouts SET status = 'ended', ended_at_ms = $1, updated_at_ms = $1, version = version + 1
         WHERE id = $2 AND status = 'running'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(ended.rows_affected() == 1)
}

pub async fn holdouts(
    conn: &mut AnyConnection,
    reference: Option<&str>,
) -> Result<Vec<Holdout>, Error> {
    let rows = sqlx::query(
        "SELECT id, key, name, description, percent_bp, unit, metrics, status, started_at_ms,
                ended_at_ms, version, created_at_ms, updated_at_ms
         FROM holdouts WHERE $1 = '' OR id = $1 OR key = $1 ORDER BY key",
    )
    .bind(reference.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let bp: i64 = r.try_get("percent_bp")?;
            let status: String = r.try_get("status")?;
            let ended_at: Option<i64> = r.try_get("ended_at_ms")?;
            let started_at: i64 = r.try_get("started_at_ms")?;
            let metrics: String = r.try_get("metrics")?;
            Ok(Holdout {
                id: r.try_get("id")?,
                key: r.try_get("key")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                percent: bp_to_percent(bp),
                status: HoldoutStatus::parse(&status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("holdout status {status}").into())
                })?,
                started_at: clock::rfc3339(started_at),
                ended_at: ended_at.map(clock::rfc3339),
                unit: r.try_get("unit")?,
                metrics: serde_json::from_str(&metrics).map_err(|e| {
                    sqlx::Error::Decode(format!("holdout metrics {metrics}: {e}").into())
                })?,
                percent_bp: bp as u16,
                started_at_ms: started_at,
                ended_at_ms: ended_at,
                version: r.try_get("version")?,
                created_at: clock::rfc3339(r.try_get("created_at_ms")?),
                updated_at: clock::rfc3339(r.try_get("updated_at_ms")?),
            })
        })
        .collect()
}

pub async fn insert_segment(
    conn: &mut AnyConnection,
    id: &str,
    spec: &SegmentSpec,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO segments (id, key, name, description, condition, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(spec.condition.to_string())
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn update_segment(
    conn: &mut AnyConnection,
    id: &str,
    spec: &SegmentSpec,
) -> Result<(), Error> {
    sqlx::query("UPDATE segments SET name = $1, description = $2, condition = $3, updated_at_ms = $4, version = version + 1 WHERE id = $5")
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(spec.condition.to_string())
        .bind(clock::now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn segments(
    conn: &mut AnyConnection,
    reference: Option<&str>,
) -> Result<Vec<Segment>, Error> {
    let rows = sqlx::query(
        "SELECT id, key, name, description, condition, version, created_at_ms, updated_at_ms FROM segments
         WHERE $1 = '' OR id = $1 OR key = $1 ORDER BY key",
    )
    .bind(reference.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Segment {
                id: r.try_get("id")?,
                key: r.try_get("key")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                condition: json_column(r, "condition")?,
                version: r.try_get("version")?,
                created_at: clock::rfc3339(r.try_get("created_at_ms")?),
                updated_at: clock::rfc3339(r.try_get("updated_at_ms")?),
            })
        })
        .collect()
}

pub async fn insert_metric(
    conn: &mut AnyConnection,
    id: &str,
    spec: &MetricSpec,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO metrics (id, key, name, description, kind, event_type, denominator_event_type, direction,
                              guardrail_threshold, value_min, value_max, filter, quantile, cap, event_window,
                              created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(spec.kind.as_str())
    .bind(&spec.event_type)
    .bind(spec.denominator_event_type.as_deref())
    .bind(spec.direction.as_str())
    .bind(spec.guardrail_threshold)
    .bind(spec.value_min)
    .bind(spec.value_max)
    .bind(spec.filter.as_ref().map(|f| f.to_string()))
    .bind(spec.quantile)
    .bind(spec.cap.as_ref().map(crate::to_json_text))
    .bind(spec.window.as_ref().map(crate::to_json_text))
    .bind(clock::now_ms())
    // Not kept prepared: sqlx's Any driver declares a NULL double as PostgreSQL `real`,
    // and a statement prepared with a NULL there would then refuse the next call's number.
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn update_metric(
    conn: &mut AnyConnection,
    id: &str,
    spec: &MetricSpec,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE metrics SET name = $1, description = $2, kind = $3, event_type = $4, denominator_event_type = $5,
                direction = $6, guardrail_threshold = $7, value_min = $8, value_max = $9, filter = $10,
                quantile = $11, cap = $12, event_window = $13, updated_at_ms = $14, version = version + 1
         WHERE id = $15",
    )
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(spec.kind.as_str())
    .bind(&spec.event_type)
    .bind(spec.denominator_event_type.as_deref())
    .bind(spec.direction.as_str())
    .bind(spec.guardrail_threshold)
    .bind(spec.value_min)
    .bind(spec.value_max)
    .bind(spec.filter.as_ref().map(|f| f.to_string()))
    .bind(spec.quantile)
    .bind(spec.cap.as_ref().map(crate::to_json_text))
    .bind(spec.window.as_ref().map(crate::to_json_text))
    .bind(clock::now_ms())
    .bind(id)
    // Not kept prepared: see `insert_metric`.
    .persistent(false)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn metric(r: &AnyRow) -> Result<Metric, Error> {
    let kind: String = r.try_get("kind")?;
    let direction: String = r.try_get("direction")?;
    Ok(Metric {
        id: r.try_get("id")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        kind: MetricKind::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("metric kind {kind}").into()))?,
        event_type: r.try_get("event_type")?,
        denominator_event_type: r.try_get("denominator_event_type")?,
        quantile: r.try_get("quantile")?,
        cap: crate::opt_typed_json(r, "cap")?,
        window: crate::opt_typed_json(r, "event_window")?,
        direction: Direction::parse(&direction)
            .ok_or_else(|| sqlx::Error::Decode(format!("direction {direction}").into()))?,
        guardrail_threshold: r.try_get("guardrail_threshold")?,
        value_min: r.try_get("value_min")?,
        value_max: r.try_get("value_max")?,
        filter: crate::opt_json_column(r, "filter")?,
        version: r.try_get("version")?,
        created_at: clock::rfc3339(r.try_get("created_at_ms")?),
        updated_at: clock::rfc3339(r.try_get("updated_at_ms")?),
    })
}

pub async fn metrics(
    conn: &mut AnyConnection,
    reference: Option<&str>,
) -> Result<Vec<Metric>, Error> {
    let rows = sqlx::query(
        "SELECT id, key, name, description, kind, event_type, denominator_event_type, direction, guardrail_threshold,
                value_min, value_max, filter, quantile, cap, event_window, version, created_at_ms, updated_at_ms
         FROM metrics WHERE $1 = '' OR id = $1 OR key = $1 ORDER BY key",
    )
    .bind(reference.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(metric).collect()
}

const DIMENSIONS: &str = "dimensions";

/// The instance's dimensions; none, at version 0, before they are first set.
pub async fn instance_dimensions(conn: &mut AnyConnection) -> Result<InstanceDimensions, Error> {
    let row =
        sqlx::query("SELECT value, version, updated_at_ms FROM instance_settings WHERE name = $1")
            .bind(DIMENSIONS)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else {
        return Ok(InstanceDimensions {
            dimensions: Vec::new(),
            version: 0,
            updated_at: None,
        });
    };
    Ok(InstanceDimensions {
        dimensions: typed_json(&row, "value")?,
        version: row.try_get("version")?,
        updated_at: Some(clock::rfc3339(row.try_get("updated_at_ms")?)),
    })
}

/// Replaces the instance's dimensions (validated) and bumps their version.
pub async fn set_instance_dimensions(
    conn: &mut AnyConnection,
    dimensions: &[String],
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO instance_settings (name, value, version, updated_at_ms) VALUES ($1, $2, 1, $3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value,
             version = instance_settings.version + 1, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(DIMENSIONS)
    .bind(to_json_text(&dimensions))
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
