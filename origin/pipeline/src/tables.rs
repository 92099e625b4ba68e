//! The event log, per-unit attribution state, rollups, retries and dead letters. Statements
//! are batched (multi-row VALUES lists) because the pipeline handles thousands of events
//! per transaction.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::clock;
use crate::event::DeadLetter;
use crate::event::{EventRecord, Kind};
use crate::model::catalog::{Metric, Period, UnitValue};
use crate::rollup::{ExposureRollup, InteractionCell, MetricRollup, Sums};
use abx_origin_store::{MultiRow, placeholders};

/// Rows per multi-row statement: keeps every statement under SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 500;
/// Keys per lookup (`IN` list): one parameter each.
const KEYS_PER_QUERY: usize = 5_000;

/// What appending a group of events did.
pub struct Appended {
    /// For each event, whether it was new: false for an id logged before, and for the later
    /// copies of an id repeated within the group.
    pub new: Vec<bool>,
    /// The highest sequence number in the log afterwards.
    pub head: i64,
    /// When every event was new and they got consecutive sequence numbers in order, the
    /// first of them (see `crate::tail`).
    pub first_seq: Option<i64>,
}

/// Appends events, skipping ids already logged.
///
/// Duplicates are rare (client retries), so rather than streaming every inserted id back
/// with `RETURNING`, each statement's affected-row count is checked and only a chunk that
/// had duplicates is looked up again.
pub async fn insert_events(
    conn: &mut AnyConnection,
    events: &[&EventRecord],
) -> Result<Appended, sqlx::Error> {
    // On PostgreSQL `seq` numbers are handed out at insert and seen at commit: two writers'
    // transactions (the collectors of several processes) could commit out of order, and the
    // pipeline, which reads past the highest `seq` it has seen, would skip for good the rows
    // of the one that commits later. So event writes take turns: each transaction holds
    // this lock from its first insert to its commit (SQLite's write lock does the same).
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_advisory_xact_lock(727412)")
            .execute(&mut *conn)
            .await?;
    }
    let head_before = max_seq(conn).await?;
    let mut new = Vec::with_capacity(events.len());
    for chunk in events.chunks(INSERT_EVENTS.rows) {
        let sql = INSERT_EVENTS.sql(conn, chunk.len());
        let mut query = sqlx::query(&sql);
        for e in chunk {
            let (kind, experiment_id, variant, event_type) = match &e.kind {
                Kind::Exposure {
                    experiment_id,
                    variant,
                } => (
                    "exposure",
                    Some(experiment_id.as_str()),
                    Some(variant.as_str()),
                    None,
                ),
                Kind::Metric { event_type } => ("metric", None, None, Some(event_type.as_str())),
            };
            query = query
                .bind(e.event_id.as_str())
                .bind(e.received_at_ms)
                .bind(e.ts_ms)
                .bind(kind)
                .bind(e.unit_key.as_str())
                .bind(experiment_id)
                .bind(variant)
                .bind(event_type)
                .bind(e.value)
                .bind(e.properties.as_deref());
        }
        let affected = query.execute(&mut *conn).await?.rows_affected() as usize;
        if affected == chunk.len() {
            new.resize(new.len() + chunk.len(), true);
            continue;
        }
        // Some were duplicates: the new ones are those logged by this transaction, each
        // claimed by its first copy.
        let sql = format!(
            "SELECT event_id FROM events WHERE event_id IN ({}) AND seq > {}",
            placeholders(conn, chunk.len(), 0),
            placeholders(conn, 1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for e in chunk {
            query = query.bind(e.event_id.as_str());
        }
        let mut unclaimed = HashSet::new();
        for row in query.bind(head_before).fetch_all(&mut *conn).await? {
            unclaimed.insert(row.try_get::<String, _>("event_id")?);
        }
        // An id that an earlier chunk of this group logged was claimed there.
        for (earlier, was_new) in events.iter().zip(&new) {
            if *was_new {
                unclaimed.remove(&earlier.event_id);
            }
        }
        new.extend(chunk.iter().map(|e| unclaimed.remove(&e.event_id)));
    }
    let inserted = new.iter().filter(|n| **n).count() as i64;
    let head = if inserted == 0 {
        head_before
    } else {
        max_seq(conn).await?
    };
    // One writer holds the log while this runs, so the new rows took the numbers after
    // `head_before` in order, unless the sequence had moved past the highest row (events
    // pruned at the end of the log), which the difference shows.
    let contiguous = inserted == events.len() as i64 && head - head_before == inserted;
    Ok(Appended {
        new,
        head,
        first_seq: (contiguous && inserted > 0).then_some(head_before + 1),
    })
}

static INSERT_EVENTS: MultiRow = MultiRow::new(
    "INSERT INTO events (event_id, received_at_ms, ts_ms, kind, unit_key, experiment_id, variant, event_type, value, properties) VALUES ",
    10,
    ROWS_PER_STATEMENT,
    " ON CONFLICT (event_id) DO NOTHING",
);

/// An event read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    pub seq: i64,
    pub event_id: String,
    pub received_at_ms: i64,
    pub ts_ms: i64,
    pub kind: Kind,
    pub unit_key: String,
    pub value: f64,
    /// As in `EventRecord::properties`.
    pub properties: Option<String>,
}

const LOGGED: &str = "seq, event_id, received_at_ms, ts_ms, kind, unit_key, experiment_id, variant, event_type, value, properties";

fn logged(row: &AnyRow) -> Result<Logged, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "exposure" => Kind::Exposure {
            experiment_id: row.try_get("experiment_id")?,
            variant: row.try_get("variant")?,
        },
        _ => Kind::Metric {
            event_type: row.try_get("event_type")?,
        },
    };
    Ok(Logged {
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
        received_at_ms: row.try_get("received_at_ms")?,
        ts_ms: row.try_get("ts_ms")?,
        kind,
        unit_key: row.try_get("unit_key")?,
        value: row.try_get("value")?,
        properties: row.try_get("properties")?,
    })
}

/// A bind parameter of a packed query.
enum Param<'a> {
    Int(i64),
    Text(&'a str),
}

/// Runs `SELECT {columns} {rest}` and receives every row in one JSON array of arrays built
/// by the database. sqlx's SQLite driver hands each result row from its worker thread to the
/// async runtime separately, which dominated the pipeline's time on reads of thousands of
/// rows; one packed row costs a single hand-off and a fast parse.
async fn fetch_packed<T: serde::de::DeserializeOwned>(
    conn: &mut AnyConnection,
    columns: &str,
    rest: &str,
    params: &[Param<'_>],
) -> Result<Vec<T>, sqlx::Error> {
    let sql = if conn.backend_name() == "SQLite" {
        format!(
            "SELECT COALESCE(json_group_array(json_array({columns})), '[]') AS packed FROM (SELECT {columns} {rest}) AS t"
        )
    } else {
        format!(
            "SELECT COALESCE(json_agg(json_build_array({columns})), '[]'::json)::text AS packed FROM (SELECT {columns} {rest}) AS t"
        )
    };
    let mut query = sqlx::query(&sql);
    for param in params {
        query = match param {
            Param::Int(i) => query.bind(*i),
            Param::Text(t) => query.bind(*t),
        };
    }
    let packed: String = query.fetch_one(&mut *conn).await?.try_get("packed")?;
    serde_json::from_str(&packed).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

type LoggedTuple = (
    i64,
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    f64,
    Option<String>,
);

fn from_tuple(t: LoggedTuple) -> Logged {
    let (
        seq,
        event_id,
        received_at_ms,
        ts_ms,
        kind,
        unit_key,
        experiment_id,
        variant,
        event_type,
        value,
        properties,
    ) = t;
    let kind = match kind.as_str() {
        "exposure" => Kind::Exposure {
            experiment_id: experiment_id.unwrap_or_default(),
            variant: variant.unwrap_or_default(),
        },
        _ => Kind::Metric {
            event_type: event_type.unwrap_or_default(),
        },
    };
    Logged {
        seq,
        event_id,
        received_at_ms,
        ts_ms,
        kind,
        unit_key,
        value,
        properties,
    }
}

/// Reads logged events by packed query, in log order.
async fn read_packed(
    conn: &mut AnyConnection,
    rest: &str,
    params: &[Param<'_>],
) -> Result<Vec<Logged>, sqlx::Error> {
    let rows: Vec<LoggedTuple> = fetch_packed(conn, LOGGED, rest, params).await?;
    let mut events: Vec<Logged> = rows.into_iter().map(from_tuple).collect();
    // Aggregates do not promise to keep the subquery's order.
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

pub async fn read_after(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Logged>, sqlx::Error> {
    let rest = format!(
        "FROM events WHERE seq > {} ORDER BY seq LIMIT {}",
        placeholders(conn, 1, 0),
        placeholders(conn, 1, 1)
    );
    read_packed(conn, &rest, &[Param::Int(after), Param::Int(limit)]).await
}

pub async fn read_seqs(conn: &mut AnyConnection, seqs: &[i64]) -> Result<Vec<Logged>, sqlx::Error> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(KEYS_PER_QUERY) {
        let rest = format!(
            "FROM events WHERE seq IN ({})",
            placeholders(conn, chunk.len(), 0)
        );
        let params: Vec<Param<'_>> = chunk.iter().map(|s| Param::Int(*s)).collect();
        out.extend(read_packed(conn, &rest, &params).await?);
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

pub async fn find_event(
    conn: &mut AnyConnection,
    event_id: &str,
) -> Result<Option<Logged>, sqlx::Error> {
    let sql = format!("SELECT {LOGGED} FROM events WHERE event_id = $1");
    sqlx::query(&sql)
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(logged)
        .transpose()
}

/// Metric events of these units logged up to `max_seq`, for late attribution.
pub async fn metric_events_of(
    conn: &mut AnyConnection,
    unit_keys: &[String],
    max_seq: i64,
) -> Result<Vec<Logged>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in unit_keys.chunks(KEYS_PER_QUERY) {
        let rest = format!(
            "FROM events WHERE unit_key IN ({}) AND kind = 'metric' AND seq <= {}",
            placeholders(conn, chunk.len(), 0),
            placeholders(conn, 1, chunk.len())
        );
        let mut params: Vec<Param<'_>> = chunk.iter().map(|k| Param::Text(k)).collect();
        params.push(Param::Int(max_seq));
        out.extend(read_packed(conn, &rest, &params).await?);
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// Metric events of one type after `after` and up to `up_to`, at most `limit`, in log order.
pub async fn metric_events_of_type(
    conn: &mut AnyConnection,
    event_type: &str,
    (after, up_to): (i64, i64),
    limit: i64,
) -> Result<Vec<Logged>, sqlx::Error> {
    let rest = format!(
        "FROM events WHERE kind = 'metric' AND event_type = {} AND seq > {} AND seq <= {} ORDER BY seq LIMIT {}",
        placeholders(conn, 1, 0),
        placeholders(conn, 1, 1),
        placeholders(conn, 1, 2),
        placeholders(conn, 1, 3),
    );
    let params = [
        Param::Text(event_type),
        Param::Int(after),
        Param::Int(up_to),
        Param::Int(limit),
    ];
    read_packed(conn, &rest, &params).await
}

/// Forgets every unit's totals of one measure in an experiment (before they are refilled).
pub async fn delete_unit_totals(
    conn: &mut AnyConnection,
    experiment_id: &str,
    measure: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM unit_metrics WHERE experiment_id = $1 AND event_type = $2")
        .bind(experiment_id)
        .bind(measure)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes an experiment's per-unit totals of every measure that starts with `prefix`
/// (the value buckets of a measure).
pub async fn delete_unit_totals_under(
    conn: &mut AnyConnection,
    experiment_id: &str,
    prefix: &str,
) -> Result<(), sqlx::Error> {
    // substr, not LIKE: `_` in event types is a LIKE wildcard, and a range comparison would
    // follow PostgreSQL's collation rather than the bytes.
    sqlx::query(
        "DELETE FROM unit_metrics WHERE experiment_id = $1 AND substr(event_type, 1, $2) = $3",
    )
    .bind(experiment_id)
    .bind(prefix.len() as i32)
    .bind(prefix)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The events per value bucket of an experiment's clean units (exposed to one variant)
/// under the measures that start with `prefix`: (variant, unit, measure, events).
pub async fn unit_buckets(
    conn: &mut AnyConnection,
    experiment_id: &str,
    prefix: &str,
) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT x.variant, m.unit_key, m.event_type, m.post_count FROM unit_metrics m
         JOIN exposures x ON x.unit_key = m.unit_key AND x.experiment_id = m.experiment_id
         WHERE m.experiment_id = $1 AND x.multiple = 0 AND m.post_count > 0
           AND substr(m.event_type, 1, $2) = $3",
    )
    .bind(experiment_id)
    .bind(prefix.len() as i32)
    .bind(prefix)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("variant")?,
                r.try_get("unit_key")?,
                r.try_get("event_type")?,
                r.try_get("post_count")?,
            ))
        })
        .collect()
}

pub async fn max_seq(conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS m FROM events")
        .fetch_one(&mut *conn)
        .await?;
    row.try_get("m")
}

/// Receipt time of the oldest event after `position` (for the lag in seconds).
pub async fn oldest_after(
    conn: &mut AnyConnection,
    position: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT received_at_ms FROM events WHERE seq > $1 ORDER BY seq LIMIT 1")
        .bind(position)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| r.try_get("received_at_ms")).transpose()
}

pub async fn cursor(conn: &mut AnyConnection, name: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT position FROM pipeline_cursors WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("position")).transpose()?.unwrap_or(0))
}

/// Moves a cursor from `from` to `to`; false if it was not at `from`.
pub async fn advance_cursor(
    conn: &mut AnyConnection,
    name: &str,
    from: i64,
    to: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("INSERT INTO pipeline_cursors (name, position, updated_at_ms) VALUES ($1, 0, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(clock::now_ms())
        .execute(&mut *conn)
        .await?;
    let moved = sqlx::query("UPDATE pipeline_cursors SET position = $1, updated_at_ms = $2 WHERE name = $3 AND position = $4")
        .bind(to)
        .bind(clock::now_ms())
        .bind(name)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(moved.rows_affected() == 1)
}

pub async fn set_cursor(
    conn: &mut AnyConnection,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pipeline_cursors (name, position, updated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(name)
    .bind(position)
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Exposure {
    /// Shared: the pipeline keeps a million of these, mostly of two or three variants.
    pub variant: std::sync::Arc<str>,
    pub first_exposure_ms: i64,
    pub multiple: bool,
    /// The context attributes the first exposure carried (JSON text), for drill-downs.
    pub attributes: Option<Box<str>>,
}

pub async fn exposures_of(
    conn: &mut AnyConnection,
    unit_keys: &[String],
) -> Result<Vec<(String, String, Exposure)>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in unit_keys.chunks(KEYS_PER_QUERY) {
        let rest = format!(
            "FROM exposures WHERE unit_key IN ({})",
            placeholders(conn, chunk.len(), 0)
        );
        let params: Vec<Param<'_>> = chunk.iter().map(|k| Param::Text(k)).collect();
        let rows: Vec<(String, String, String, i64, i64, Option<String>)> = fetch_packed(
            conn,
            "unit_key, experiment_id, variant, first_exposure_ms, multiple, attributes",
            &rest,
            &params,
        )
        .await?;
        out.extend(rows.into_iter().map(
            |(unit, experiment, variant, first_exposure_ms, multiple, attributes)| {
                (
                    unit,
                    experiment,
                    Exposure {
                        variant: variant.into(),
                        first_exposure_ms,
                        multiple: multiple != 0,
                        attributes: attributes.map(String::into_boxed_str),
                    },
                )
            },
        ));
    }
    Ok(out)
}

static UPSERT_EXPOSURES: MultiRow = MultiRow::new(
    "INSERT INTO exposures (unit_key, experiment_id, variant, first_exposure_ms, multiple, attributes) VALUES ",
    6,
    ROWS_PER_STATEMENT,
    " ON CONFLICT (unit_key, experiment_id) DO UPDATE SET variant = excluded.variant, first_exposure_ms = excluded.first_exposure_ms, multiple = excluded.multiple, attributes = excluded.attributes",
);

pub async fn upsert_exposures(
    conn: &mut AnyConnection,
    rows: &[(&str, &str, &Exposure)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(UPSERT_EXPOSURES.rows) {
        let sql = UPSERT_EXPOSURES.sql(conn, chunk.len());
        let mut query = sqlx::query(&sql);
        for (unit, experiment, e) in chunk {
            query = query
                .bind(*unit)
                .bind(*experiment)
                .bind(&*e.variant)
                .bind(e.first_exposure_ms)
                .bind(i64::from(e.multiple))
                .bind(e.attributes.as_deref());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A unit's totals for one experiment and event type.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub post_sum: f64,
    pub post_count: i64,
    pub pre_sum: f64,
    pub pre_count: i64,
}

pub async fn unit_totals_of(
    conn: &mut AnyConnection,
    unit_keys: &[String],
) -> Result<Vec<(String, String, String, Totals)>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in unit_keys.chunks(KEYS_PER_QUERY) {
        let rest = format!(
            "FROM unit_metrics WHERE unit_key IN ({})",
            placeholders(conn, chunk.len(), 0)
        );
        let params: Vec<Param<'_>> = chunk.iter().map(|k| Param::Text(k)).collect();
        let rows: Vec<(String, String, String, f64, i64, f64, i64)> = fetch_packed(
            conn,
            "unit_key, experiment_id, event_type, post_sum, post_count, pre_sum, pre_count",
            &rest,
            &params,
        )
        .await?;
        out.extend(rows.into_iter().map(
            |(unit, experiment, event_type, post_sum, post_count, pre_sum, pre_count)| {
                (
                    unit,
                    experiment,
                    event_type,
                    Totals {
                        post_sum,
                        post_count,
                        pre_sum,
                        pre_count,
                    },
                )
            },
        ));
    }
    Ok(out)
}

fn totals(row: &AnyRow) -> Result<Totals, sqlx::Error> {
    Ok(Totals {
        post_sum: row.try_get("post_sum")?,
        post_count: row.try_get("post_count")?,
        pre_sum: row.try_get("pre_sum")?,
        pre_count: row.try_get("pre_count")?,
    })
}

static UPSERT_UNIT_TOTALS: MultiRow = MultiRow::new(
    "INSERT INTO unit_metrics (unit_key, experiment_id, event_type, post_sum, post_count, pre_sum, pre_count) VALUES ",
    7,
    ROWS_PER_STATEMENT,
    " ON CONFLICT (unit_key, experiment_id, event_type) DO UPDATE SET post_sum = excluded.post_sum, post_count = excluded.post_count, pre_sum = excluded.pre_sum, pre_count = excluded.pre_count",
);

pub async fn upsert_unit_totals(
    conn: &mut AnyConnection,
    rows: &[(&str, &str, &str, Totals)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(UPSERT_UNIT_TOTALS.rows) {
        let sql = UPSERT_UNIT_TOTALS.sql(conn, chunk.len());
        let mut query = sqlx::query(&sql);
        for (unit, experiment, event_type, t) in chunk {
            query = query
                .bind(*unit)
                .bind(*experiment)
                .bind(*event_type)
                .bind(t.post_sum)
                .bind(t.post_count)
                .bind(t.pre_sum)
                .bind(t.pre_count);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A change to the exposure rollup: (experiment id, variant, day) → (units, multiple).
pub type ExposureDelta<'a> = ((&'a str, &'a str, i64), (i64, i64));
/// A change to the metric rollup: (experiment id, variant, metric, day) → sums.
pub type MetricDelta<'a> = ((&'a str, &'a str, &'a str, i64), Sums);

static ADD_EXPOSURE_ROLLUPS: MultiRow = MultiRow::new(
    "INSERT INTO exposure_rollups (experiment_id, variant, day, units, multiple) VALUES ",
    5,
    ROWS_PER_STATEMENT,
    " ON CONFLICT (experiment_id, variant, day) DO UPDATE SET units = exposure_rollups.units + excluded.units, multiple = exposure_rollups.multiple + excluded.multiple",
);

/// Additive changes to the exposure rollup.
pub async fn add_exposure_rollups(
    conn: &mut AnyConnection,
    deltas: &[ExposureDelta<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in deltas.chunks(ADD_EXPOSURE_ROLLUPS.rows) {
        let sql = ADD_EXPOSURE_ROLLUPS.sql(conn, chunk.len());
        let mut query = sqlx::query(&sql);
        for ((experiment, variant, day), (units, multiple)) in chunk {
            query = query
                .bind(*experiment)
                .bind(*variant)
                .bind(*day)
                .bind(*units)
                .bind(*multiple);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

// The columns are `Sums::COLUMNS`, in order.
static ADD_METRIC_ROLLUPS: MultiRow = MultiRow::new(
    "INSERT INTO metric_rollups (experiment_id, variant, metric, day, sum_x, sum_x2, sum_y, sum_y2, sum_xy, sum_c, sum_c2, sum_xc, sum_d, sum_d2, sum_cd, sum_xd, sum_yc, sum_yd) VALUES ",
    18,
    ROWS_PER_STATEMENT / 2,
    " ON CONFLICT (experiment_id, variant, metric, day) DO UPDATE SET sum_x = metric_rollups.sum_x + excluded.sum_x, sum_x2 = metric_rollups.sum_x2 + excluded.sum_x2, sum_y = metric_rollups.sum_y + excluded.sum_y, sum_y2 = metric_rollups.sum_y2 + excluded.sum_y2, sum_xy = metric_rollups.sum_xy + excluded.sum_xy, sum_c = metric_rollups.sum_c + excluded.sum_c, sum_c2 = metric_rollups.sum_c2 + excluded.sum_c2, sum_xc = metric_rollups.sum_xc + excluded.sum_xc, sum_d = metric_rollups.sum_d + excluded.sum_d, sum_d2 = metric_rollups.sum_d2 + excluded.sum_d2, sum_cd = metric_rollups.sum_cd + excluded.sum_cd, sum_xd = metric_rollups.sum_xd + excluded.sum_xd, sum_yc = metric_rollups.sum_yc + excluded.sum_yc, sum_yd = metric_rollups.sum_yd + excluded.sum_yd",
);

pub async fn add_metric_rollups(
    conn: &mut AnyConnection,
    deltas: &[MetricDelta<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in deltas.chunks(ADD_METRIC_ROLLUPS.rows) {
        let sql = ADD_METRIC_ROLLUPS.sql(conn, chunk.len());
        let mut query = sqlx::query(&sql);
        for ((experiment, variant, metric, day), s) in chunk {
            query = query
                .bind(*experiment)
                .bind(*variant)
                .bind(*metric)
                .bind(*day);
            for value in s.values() {
                query = query.bind(value);
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// An experiment's exposure rollups, by day and variant.
pub async fn exposure_rollups(
    conn: &mut AnyConnection,
    experiment_id: &str,
) -> Result<Vec<ExposureRollup>, sqlx::Error> {
    let rows = sqlx::query("SELECT variant, day, units, multiple FROM exposure_rollups WHERE experiment_id = $1 ORDER BY day, variant")
        .bind(experiment_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ExposureRollup {
                variant: r.try_get("variant")?,
                day: r.try_get("day")?,
                units: r.try_get("units")?,
                multiple: r.try_get("multiple")?,
            })
        })
        .collect()
}

/// An experiment's metric rollups, by day, variant and metric.
pub async fn metric_rollups(
    conn: &mut AnyConnection,
    experiment_id: &str,
) -> Result<Vec<MetricRollup>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT variant, metric, day, sum_x, sum_x2, sum_y, sum_y2, sum_xy, sum_c, sum_c2, sum_xc, sum_d, sum_d2, sum_cd, sum_xd, sum_yc, sum_yd
         FROM metric_rollups WHERE experiment_id = $1 ORDER BY day, variant, metric",
    )
    .bind(experiment_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(MetricRollup {
                variant: r.try_get("variant")?,
                metric: r.try_get("metric")?,
                day: r.try_get("day")?,
                sums: {
                    let mut values = [0.0; 14];
                    for (value, column) in values.iter_mut().zip(Sums::COLUMNS) {
                        *value = r.try_get(column)?;
                    }
                    Sums::from_values(values)
                },
            })
        })
        .collect()
}

/// Replaces an experiment's metric rollups (after its metric list changed).
pub async fn replace_metric_rollups(
    conn: &mut AnyConnection,
    experiment_id: &str,
    rows: &[MetricDelta<'_>],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM metric_rollups WHERE experiment_id = $1")
        .bind(experiment_id)
        .execute(&mut *conn)
        .await?;
    add_metric_rollups(conn, rows).await
}

/// Every clean exposed unit of an experiment with its totals per event type.
pub async fn experiment_units(
    conn: &mut AnyConnection,
    experiment_id: &str,
) -> Result<HashMap<String, (Exposure, HashMap<String, Totals>)>, sqlx::Error> {
    let mut units: HashMap<String, (Exposure, HashMap<String, Totals>)> = HashMap::new();
    let rows = sqlx::query("SELECT unit_key, variant, first_exposure_ms, multiple, attributes FROM exposures WHERE experiment_id = $1 AND multiple = 0")
        .bind(experiment_id)
        .fetch_all(&mut *conn)
        .await?;
    for r in &rows {
        let exposure = Exposure {
            variant: r.try_get::<String, _>("variant")?.into(),
            first_exposure_ms: r.try_get("first_exposure_ms")?,
            multiple: false,
            attributes: r
                .try_get::<Option<String>, _>("attributes")?
                .map(String::into_boxed_str),
        };
        units.insert(r.try_get("unit_key")?, (exposure, HashMap::new()));
    }
    let rows = sqlx::query("SELECT unit_key, event_type, post_sum, post_count, pre_sum, pre_count FROM unit_metrics WHERE experiment_id = $1")
        .bind(experiment_id)
        .fetch_all(&mut *conn)
        .await?;
    for r in &rows {
        let key: String = r.try_get("unit_key")?;
        if let Some((_, totals_by_type)) = units.get_mut(&key) {
            totals_by_type.insert(r.try_get("event_type")?, totals(r)?);
        }
    }
    Ok(units)
}

// ---- retries and dead letters ----

pub async fn due_retries(
    conn: &mut AnyConnection,
    now: i64,
    limit: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT seq, attempts FROM pipeline_retries WHERE next_attempt_ms <= $1 ORDER BY seq LIMIT $2")
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("seq")?, r.try_get("attempts")?)))
        .collect()
}

pub async fn set_retry(
    conn: &mut AnyConnection,
    seq: i64,
    attempts: i64,
    error: &str,
    next_attempt_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pipeline_retries (seq, attempts, last_error, next_attempt_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (seq) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error,
             next_attempt_ms = excluded.next_attempt_ms",
    )
    .bind(seq)
    .bind(attempts)
    .bind(error)
    .bind(next_attempt_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn clear_retry(conn: &mut AnyConnection, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM pipeline_retries WHERE seq = $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn add_dead_letter(
    conn: &mut AnyConnection,
    seq: i64,
    event_id: &str,
    error: &str,
    attempts: i64,
) -> Result<(), sqlx::Error> {
    clear_retry(conn, seq).await?;
    sqlx::query(
        "INSERT INTO dead_letters (seq, event_id, error, attempts, failed_at_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (seq) DO UPDATE SET error = excluded.error, attempts = excluded.attempts, failed_at_ms = excluded.failed_at_ms",
    )
    .bind(seq)
    .bind(event_id)
    .bind(error)
    .bind(attempts)
    .bind(clock::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn dead_letters(
    conn: &mut AnyConnection,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = sqlx::query("SELECT seq, event_id, error, attempts, failed_at_ms FROM dead_letters ORDER BY seq LIMIT $1")
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                error: r.try_get("error")?,
                attempts: r.try_get("attempts")?,
                failed_at: clock::rfc3339(r.try_get("failed_at_ms")?),
            })
        })
        .collect()
}

pub async fn count_dead_letters(conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM dead_letters")
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")
}

/// Moves dead letters (all, or the given ones) back to the retry queue, due now.
pub async fn replay_dead_letters(
    conn: &mut AnyConnection,
    seqs: Option<&[i64]>,
) -> Result<u64, sqlx::Error> {
    let chosen: Vec<i64> = match seqs {
        Some(seqs) => seqs.to_vec(),
        None => sqlx::query("SELECT seq FROM dead_letters")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get("seq"))
            .collect::<Result<_, _>>()?,
    };
    let mut moved = 0;
    for seq in chosen {
        let deleted = sqlx::query("DELETE FROM dead_letters WHERE seq = $1")
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        if deleted.rows_affected() == 1 {
            set_retry(conn, seq, 0, "replayed", clock::now_ms()).await?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Sequence numbers up to `position` that the pipeline still holds (waiting for a retry or
/// dead letters), whose raw events pruning must keep.
pub async fn held_seqs(
    conn: &mut AnyConnection,
    position: i64,
) -> Result<HashSet<i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq FROM pipeline_retries WHERE seq <= $1 UNION SELECT seq FROM dead_letters WHERE seq <= $1",
    )
    .bind(position)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| r.try_get("seq")).collect()
}

/// Deletes raw events that the pipeline has consumed (up to `consumed_up_to`, except the
/// `held` ones) and that are older than `cutoff_ms` by both receipt and timestamp, so that
/// a retried copy can never outlive its deduplication.
pub async fn prune_events(
    conn: &mut AnyConnection,
    consumed_up_to: i64,
    cutoff_ms: i64,
    held: &HashSet<i64>,
) -> Result<u64, sqlx::Error> {
    // Only the oldest 50,000 consumed events are examined per call: the log is in receipt
    // order, so this bounds the work without an index on time.
    let rows = sqlx::query(
        "SELECT seq FROM (SELECT seq, received_at_ms, ts_ms FROM events WHERE seq <= $1 ORDER BY seq LIMIT 50000) oldest
         WHERE received_at_ms < $2 AND ts_ms < $2",
    )
    .bind(consumed_up_to)
    .bind(cutoff_ms)
    .fetch_all(&mut *conn)
    .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        if !held.contains(&seq) {
            expired.push(seq);
        }
    }
    let mut removed = 0;
    for chunk in expired.chunks(KEYS_PER_QUERY) {
        let sql = format!(
            "DELETE FROM events WHERE seq IN ({})",
            placeholders(conn, chunk.len(), 0)
        );
        let mut query = sqlx::query(&sql);
        for seq in chunk {
            query = query.bind(*seq);
        }
        removed += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(removed)
}

pub async fn rollup_plans(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows = sqlx::query("SELECT experiment_id, metrics FROM rollup_plans")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("experiment_id")?, r.try_get("metrics")?)))
        .collect()
}

pub async fn set_rollup_plan(
    conn: &mut AnyConnection,
    experiment_id: &str,
    metrics: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO rollup_plans (experiment_id, metrics) VALUES ($1, $2) ON CONFLICT (experiment_id) DO UPDATE SET metrics = excluded.metrics")
        .bind(experiment_id)
        .bind(metrics)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Per (A variant, B variant): units, Σx, Σx² of a metric among units exposed to both.
pub async fn interaction_cells(
    conn: &mut AnyConnection,
    a: &str,
    b: &str,
    metric: &Metric,
) -> Result<Vec<InteractionCell>, sqlx::Error> {
    let x = match metric.kind.unit_values().x {
        UnitValue::Converted(Period::AfterExposure) => {
            "CASE WHEN um.post_count > 0 THEN 1.0 ELSE 0.0 END"
        }
        UnitValue::Sum(Period::AfterExposure) => "COALESCE(um.post_sum, 0.0)",
        // No kind measures anything else as x; ratios have no interaction analysis.
        _ => "0.0",
    };
    let sql = format!(
        // The casts keep PostgreSQL from summing into NUMERIC, which the Any driver cannot read.
        "SELECT ea.variant AS va, eb.variant AS vb, COUNT(*) AS n,
                CAST(SUM({x}) AS DOUBLE PRECISION) AS sx, CAST(SUM(({x}) * ({x})) AS DOUBLE PRECISION) AS sxx
         FROM exposures ea
         JOIN exposures eb ON eb.unit_key = ea.unit_key AND eb.experiment_id = $2 AND eb.multiple = 0
         LEFT JOIN unit_metrics um ON um.unit_key = ea.unit_key AND um.experiment_id = ea.experiment_id AND um.event_type = $3
         WHERE ea.experiment_id = $1 AND ea.multiple = 0
         GROUP BY ea.variant, eb.variant"
    );
    let rows = sqlx::query(&sql)
        .bind(a)
        .bind(b)
        // The unit totals of what the metric counts (see `MetricPlan::measure`).
        .bind(crate::plan::MetricPlan::from(metric).measure)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            Ok(InteractionCell {
                va: r.try_get("va")?,
                vb: r.try_get("vb")?,
                n: n as u64,
                sx: r.try_get("sx")?,
                sxx: r.try_get("sxx")?,
            })
        })
        .collect()
}
