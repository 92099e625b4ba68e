//! Experiments with their variants and slot allocations.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{json_column, opt_json_column, placeholders, to_json_text, typed_json};
use crate::Error;
use crate::clock;
use crate::model::bp_to_percent;
use crate::model::experiment::{Experiment, SlotRange};
use crate::model::experiment::{ExperimentSpec, Status, VariantInput, VariantSpec};
use crate::results::DecisionLook;

const SELECT: &str = "SELECT e.id, e.key, e.name, e.hypothesis, e.description, e.owner, e.status, e.status_reason,
        e.unit, e.layer_id, l.key AS layer_key, e.traffic_bp, e.targeting, e.holdout_id, h.key AS holdout_key,
        e.forced, e.primary_metric, e.secondary_metrics, e.guardrail_metrics, e.switchback_period_s,
        e.analysis, e.dimensions, e.shipped_variant, e.version, e.created_at_ms, e.updated_at_ms, e.started_at_ms,
        e.ended_at_ms
    FROM experiments e LEFT JOIN layers l ON l.id = e.layer_id LEFT JOIN holdouts h ON h.id = e.holdout_id";

fn experiment(row: &AnyRow) -> Result<Experiment, Error> {
    let status: String = row.try_get("status")?;
    let traffic_bp: i64 = row.try_get("traffic_bp")?;
    let switchback: Option<i64> = row.try_get("switchback_period_s")?;
    Ok(Experiment {
        id: row.try_get("id")?,
        key: row.try_get("key")?,
        name: row.try_get("name")?,
        hypothesis: row.try_get("hypothesis")?,
        description: row.try_get("description")?,
        owner: row.try_get("owner")?,
        status: Status::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("status {status}").into()))?,
        status_reason: row.try_get("status_reason")?,
        layer: row.try_get("layer_key")?,
        layer_id: row.try_get("layer_id")?,
        traffic_percent: bp_to_percent(traffic_bp),
        traffic_bp: traffic_bp as u16,
        unit: row.try_get("unit")?,
        targeting: opt_json_column(row, "targeting")?,
        variants: Vec::new(),
        weights_bp: Vec::new(),
        primary_metric: row.try_get("primary_metric")?,
        secondary_metrics: typed_json(row, "secondary_metrics")?,
        guardrail_metrics: typed_json(row, "guardrail_metrics")?,
        holdout: row.try_get("holdout_key")?,
        holdout_id: row.try_get("holdout_id")?,
        forced: typed_json(row, "forced")?,
        switchback_period_s: switchback.map(|s| s as u32),
        analysis: typed_json(row, "analysis")?,
        dimensions: typed_json(row, "dimensions")?,
        shipped_variant: row.try_get("shipped_variant")?,
        slot_ranges: Vec::new(),
        slots: Vec::new(),
        version: row.try_get("version")?,
        created_at: clock::rfc3339(row.try_get("created_at_ms")?),
        updated_at: clock::rfc3339(row.try_get("updated_at_ms")?),
        started_at: clock::rfc3339_opt(row.try_get("started_at_ms")?),
        ended_at: clock::rfc3339_opt(row.try_get("ended_at_ms")?),
        created_at_ms: row.try_get("created_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        ended_at_ms: row.try_get("ended_at_ms")?,
    })
}

/// Fills in variants and slot ranges for a batch of experiments.
async fn attach_children(
    conn: &mut AnyConnection,
    experiments: &mut [Experiment],
) -> Result<(), Error> {
    if experiments.is_empty() {
        return Ok(());
    }
    let index: HashMap<String, usize> = experiments
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.clone(), i))
        .collect();
    // Bound the number of bind parameters per statement (SQLite allows 32766).
    for chunk in experiments
        .iter()
        .map(|e| e.id.clone())
        .collect::<Vec<_>>()
        .chunks(1_000)
    {
        let marks = placeholders(conn, chunk.len(), 0);
        let sql = format!(
            "SELECT experiment_id, name, weight_bp, config FROM experiment_variants
             WHERE experiment_id IN ({marks}) ORDER BY experiment_id, position"
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: String = row.try_get("experiment_id")?;
            let weight_bp: i64 = row.try_get("weight_bp")?;
            let e = &mut experiments[index[&id]];
            e.variants.push(VariantInput {
                name: row.try_get("name")?,
                weight: bp_to_percent(weight_bp),
                config: json_column(&row, "config")?,
            });
            e.weights_bp.push(weight_bp as u16);
        }
        let sql = format!(
            "SELECT experiment_id, start_bp, end_bp FROM layer_allocations WHERE experiment_id IN ({marks}) ORDER BY start_bp"
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: String = row.try_get("experiment_id")?;
            let start: i64 = row.try_get("start_bp")?;
            let end: i64 = row.try_get("end_bp")?;
            let e = &mut experiments[index[&id]];
            e.slots.push((start as u16, end as u16));
            e.slot_ranges.push(SlotRange {
                start_percent: bp_to_percent(start),
                end_percent: bp_to_percent(end),
            });
        }
    }
    Ok(())
}

/// One experiment by id or key.
pub async fn get(conn: &mut AnyConnection, reference: &str) -> Result<Option<Experiment>, Error> {
    let sql = format!("{SELECT} WHERE e.id = $1 OR e.key = $1");
    let Some(row) = sqlx::query(&sql)
        .bind(reference)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let mut found = [experiment(&row)?];
    attach_children(conn, &mut found).await?;
    let [e] = found;
    Ok(Some(e))
}

#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub status: Option<Status>,
    /// Layer key or id.
    pub layer: Option<&'a str>,
    /// Substring of key or name.
    pub search: Option<&'a str>,
    /// Continue after this (created_at_ms, id).
    pub after: Option<(i64, String)>,
    pub limit: i64,
    pub include_archived: bool,
}

pub async fn list(conn: &mut AnyConnection, filter: &Filter<'_>) -> Result<Vec<Experiment>, Error> {
    let sql = format!(
        "{SELECT} WHERE ($1 = '' OR e.status = $1)
           AND ($2 = '' OR e.layer_id = $2 OR l.key = $2)
           AND ($3 = '' OR LOWER(e.key) LIKE $3 ESCAPE '\\' OR LOWER(e.name) LIKE $3 ESCAPE '\\')
           AND ($4 = 1 OR e.status <> 'archived' OR $1 = 'archived')
           AND (e.created_at_ms > $5 OR (e.created_at_ms = $5 AND e.id > $6))
         ORDER BY e.created_at_ms, e.id LIMIT $7"
    );
    let (after_ms, after_id) = filter.after.clone().unwrap_or((i64::MIN, String::new()));
    // A plain, case-insensitive substring: LIKE's wildcards in the text match themselves
    // (keys are full of `_`).
    let search = filter
        .search
        .map(|s| {
            let escaped = s
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
        .unwrap_or_default();
    let rows = sqlx::query(&sql)
        .bind(filter.status.map_or("", |s| s.as_str()))
        .bind(filter.layer.unwrap_or(""))
        .bind(search)
        .bind(i64::from(filter.include_archived))
        .bind(after_ms)
        .bind(after_id)
        .bind(filter.limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut experiments = rows.iter().map(experiment).collect::<Result<Vec<_>, _>>()?;
    attach_children(conn, &mut experiments).await?;
    Ok(experiments)
}

/// Every experiment that is not archived, in creation order: what a snapshot contains.
pub async fn all_published(conn: &mut AnyConnection) -> Result<Vec<Experiment>, Error> {
    let sql = format!("{SELECT} WHERE e.status <> 'archived' ORDER BY e.created_at_ms, e.id");
    let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
    let mut experiments = rows.iter().map(experiment).collect::<Result<Vec<_>, _>>()?;
    attach_children(conn, &mut experiments).await?;
    Ok(experiments)
}

/// The id and version of every experiment `all_published` returns, in the same order: enough
/// to tell which experiments changed since they were last loaded.
pub async fn published_versions(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>, Error> {
    let rows = sqlx::query(
        "SELECT id, version FROM experiments WHERE status <> 'archived' ORDER BY created_at_ms, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("version")?)))
        .collect()
}

/// The experiments with these ids, in no particular order.
pub async fn by_ids(conn: &mut AnyConnection, ids: &[&str]) -> Result<Vec<Experiment>, Error> {
    let mut experiments = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        let marks = placeholders(conn, chunk.len(), 0);
        let sql = format!("{SELECT} WHERE e.id IN ({marks})");
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            experiments.push(experiment(&row)?);
        }
    }
    attach_children(conn, &mut experiments).await?;
    Ok(experiments)
}

/// The keys of the experiments that `references` (ids or keys) name, archived ones excluded,
/// keyed by the reference. Flags name experiments this way; looking up only the named ones
/// keeps a flag change independent of how many experiments exist.
pub async fn keys_of(
    conn: &mut AnyConnection,
    references: &[&str],
) -> Result<HashMap<String, String>, Error> {
    let mut keys = HashMap::new();
    // Each reference is bound twice (as id and as key); SQLite allows 32766 parameters.
    for chunk in references.chunks(1_000) {
        let ids = placeholders(conn, chunk.len(), 0);
        let names = placeholders(conn, chunk.len(), chunk.len());
        let sql = format!(
            "SELECT id, key FROM experiments
             WHERE status <> 'archived' AND (id IN ({ids}) OR key IN ({names}))"
        );
        let mut query = sqlx::query(&sql);
        for reference in chunk.iter().chain(chunk) {
            query = query.bind(*reference);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: String = row.try_get("id")?;
            let key: String = row.try_get("key")?;
            keys.insert(id, key.clone());
            keys.insert(key.clone(), key);
        }
    }
    Ok(keys)
}

/// Experiments in these statuses (for monitors and results).
pub async fn with_status(
    conn: &mut AnyConnection,
    statuses: &[Status],
) -> Result<Vec<Experiment>, Error> {
    let marks = placeholders(conn, statuses.len(), 0);
    let sql = format!("{SELECT} WHERE e.status IN ({marks}) ORDER BY e.created_at_ms, e.id");
    let mut query = sqlx::query(&sql);
    for s in statuses {
        query = query.bind(s.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut experiments = rows.iter().map(experiment).collect::<Result<Vec<_>, _>>()?;
    attach_children(conn, &mut experiments).await?;
    Ok(experiments)
}

/// Archived experiments that ended at `ended_from_ms` or later (for the warehouse's ticks,
/// which let them settle; archived experiments pile up, so the rest are not read).
pub async fn archived_since(
    conn: &mut AnyConnection,
    ended_from_ms: i64,
) -> Result<Vec<Experiment>, Error> {
    let sql = format!(
        "{SELECT} WHERE e.status = $1 AND e.ended_at_ms >= $2 ORDER BY e.created_at_ms, e.id"
    );
    let rows = sqlx::query(&sql)
        .bind(Status::Archived.as_str())
        .bind(ended_from_ms)
        .fetch_all(&mut *conn)
        .await?;
    let mut experiments = rows.iter().map(experiment).collect::<Result<Vec<_>, _>>()?;
    attach_children(conn, &mut experiments).await?;
    Ok(experiments)
}

async fn write_variants(
    conn: &mut AnyConnection,
    id: &str,
    variants: &[VariantSpec],
) -> Result<(), Error> {
    sqlx::query("DELETE FROM experiment_variants WHERE experiment_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for (position, v) in variants.iter().enumerate() {
        sqlx::query("INSERT INTO experiment_variants (experiment_id, position, name, weight_bp, config) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(position as i64)
            .bind(&v.name)
            .bind(i64::from(v.weight_bp))
            .bind(v.config.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn insert(
    conn: &mut AnyConnection,
    id: &str,
    spec: &ExperimentSpec,
) -> Result<(), Error> {
    let now = clock::now_ms();
    sqlx::query(
        "INSERT INTO experiments (id, key, name, hypothesis, description, owner, status, unit, layer_id, traffic_bp,
            targeting, holdout_id, forced, primary_metric, secondary_metrics, guardrail_metrics, switchback_period_s,
            analysis, dimensions, version, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, 'draft', $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 1, $19, $19)",
    )
    .bind(id)
    .bind(&spec.key)
    .bind(&spec.name)
    .bind(&spec.hypothesis)
    .bind(&spec.description)
    .bind(&spec.owner)
    .bind(&spec.unit)
    .bind(spec.layer_id.as_deref())
    .bind(i64::from(spec.traffic_bp))
    .bind(spec.targeting.as_ref().map(|t| t.to_string()))
    .bind(spec.holdout_id.as_deref())
    .bind(to_json_text(&spec.forced))
    .bind(&spec.primary_metric)
    .bind(to_json_text(&spec.secondary_metrics))
    .bind(to_json_text(&spec.guardrail_metrics))
    .bind(spec.switchback_period_s.map(i64::from))
    .bind(to_json_text(&spec.analysis))
    .bind(to_json_text(&spec.dimensions))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    write_variants(conn, id, &spec.variants).await
}

/// Replaces the definition and bumps the version. Returns false when `expected_version`
/// no longer matches (a concurrent change won).
pub async fn update(
    conn: &mut AnyConnection,
    id: &str,
    spec: &ExperimentSpec,
    expected_version: i64,
) -> Result<bool, Error> {
    let result = sqlx::query(
        "UPDATE experiments SET name = $1, hypothesis = $2, description = $3, owner = $4, unit = $5, layer_id = $6,
            traffic_bp = $7, targeting = $8, holdout_id = $9, forced = $10, primary_metric = $11,
            secondary_metrics = $12, guardrail_metrics = $13, switchback_period_s = $14, analysis = $15,
            dimensions = $16, version = version + 1, updated_at_ms = $17
         WHERE id = $18 AND version = $19",
    )
    .bind(&spec.name)
    .bind(&spec.hypothesis)
    .bind(&spec.description)
    .bind(&spec.owner)
    .bind(&spec.unit)
    .bind(spec.layer_id.as_deref())
    .bind(i64::from(spec.traffic_bp))
    .bind(spec.targeting.as_ref().map(|t| t.to_string()))
    .bind(spec.holdout_id.as_deref())
    .bind(to_json_text(&spec.forced))
    .bind(&spec.primary_metric)
    .bind(to_json_text(&spec.secondary_metrics))
    .bind(to_json_text(&spec.guardrail_metrics))
    .bind(spec.switchback_period_s.map(i64::from))
    .bind(to_json_text(&spec.analysis))
    .bind(to_json_text(&spec.dimensions))
    .bind(clock::now_ms())
    .bind(id)
    .bind(expected_version)
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() == 0 {
        return Ok(false);
    }
    write_variants(conn, id, &spec.variants).await?;
    Ok(true)
}

/// A lifecycle change.
pub struct StatusChange<'a> {
    pub status: Status,
    pub reason: Option<&'a str>,
    pub shipped_variant: Option<&'a str>,
    pub started: bool,
    pub ended: bool,
}

pub async fn set_status(
    conn: &mut AnyConnection,
    id: &str,
    change: &StatusChange<'_>,
) -> Result<(), Error> {
    let now = clock::now_ms();
    sqlx::query(
        "UPDATE experiments SET status = $1, status_reason = $2,
            shipped_variant = CASE WHEN $3 = '' THEN shipped_variant ELSE $3 END,
            started_at_ms = CASE WHEN $4 = 1 AND started_at_ms IS NULL THEN $6 ELSE started_at_ms END,
            ended_at_ms = CASE WHEN $5 = 1 THEN $6 ELSE ended_at_ms END,
            version = version + 1, updated_at_ms = $6
         WHERE id = $7",
    )
    .bind(change.status.as_str())
    .bind(change.reason)
    .bind(change.shipped_variant.unwrap_or(""))
    .bind(i64::from(change.started))
    .bind(i64::from(change.ended))
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_draft(conn: &mut AnyConnection, id: &str) -> Result<bool, Error> {
    let result = sqlx::query("DELETE FROM experiments WHERE id = $1 AND status = 'draft'")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// The looks an experiment's decisions rest on, as recorded (`DecisionLook`), by look.
pub async fn decision_looks(
    conn: &mut AnyConnection,
    experiment_id: &str,
) -> Result<Vec<DecisionLook>, Error> {
    let records: Vec<String> = sqlx::query_scalar(
        "SELECT record FROM decision_looks WHERE experiment_id = $1 ORDER BY look",
    )
    .bind(experiment_id)
    .fetch_all(&mut *conn)
    .await?;
    records
        .iter()
        .map(|r| {
            serde_json::from_str(r).map_err(|e| Error::Database(sqlx::Error::Decode(e.into())))
        })
        .collect()
}

/// Counts refused exposures (see the `exposure_mismatches` table): `(experiment id, claimed
/// variant) -> count` for one request.
pub async fn add_exposure_mismatches(
    conn: &mut AnyConnection,
    counts: &std::collections::BTreeMap<(String, String), i64>,
) -> Result<(), Error> {
    let now = clock::now_ms();
    for ((experiment_id, variant), count) in counts {
        sqlx::query(
            "INSERT INTO exposure_mismatches (experiment_id, variant, count, last_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (experiment_id, variant)
             DO UPDATE SET count = exposure_mismatches.count + excluded.count,
                           last_at_ms = excluded.last_at_ms",
        )
        .bind(experiment_id)
        .bind(variant)
        .bind(*count)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The refused exposures of an experiment, by the variant they claimed.
pub async fn exposure_mismatches(
    conn: &mut AnyConnection,
    experiment_id: &str,
) -> Result<std::collections::BTreeMap<String, i64>, Error> {
    let rows =
        sqlx::query("SELECT variant, count FROM exposure_mismatches WHERE experiment_id = $1")
            .bind(experiment_id)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| -> Result<(String, i64), Error> {
            Ok((row.try_get("variant")?, row.try_get("count")?))
        })
        .collect()
}

/// Records looks not recorded yet; a look another process recorded first is kept (the
/// first computation is the one decisions rest on).
pub async fn record_decision_looks(
    conn: &mut AnyConnection,
    experiment_id: &str,
    looks: &[DecisionLook],
) -> Result<(), Error> {
    for look in looks {
        sqlx::query(
            "INSERT INTO decision_looks (experiment_id, look, record, recorded_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (experiment_id, look) DO NOTHING",
        )
        .bind(experiment_id)
        .bind(i64::from(look.look))
        .bind(to_json_text(look))
        .bind(clock::now_ms())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
