//! The columnar warehouse (ClickHouse, over its HTTP interface), for deployments whose event
//! volume no SQL database can take. The JetStream loader inserts events here in large
//! batches, stamped with the time it loaded them; the pipeline computes the rollups with
//! SQL, per unit (kept in `unit_rollups`, recomputed for the units with newly loaded events:
//! `units`), then per variant, and stores each computation in `experiment_rollups` for
//! results to read (`crate::warehouse`).
//!
//! Events are kept in two `ReplacingMergeTree` tables: exposures ordered by (experiment,
//! variant, time) as in the seed, and metric events ordered by (event type, unit, time).
//! Both sorting keys end with `event_id`, so copies of an event (a redelivered stream
//! message, a client retry beyond the broker's window) collapse into one row; queries that
//! add events up read with `FINAL` (or keep one row per event id), so they never count a copy
//! that background merges have not removed yet.
//! Copies always land in the same monthly partition because the partition comes from the
//! event's own timestamp. Metric events of months past retention are kept summed per unit
//! (`history`), which the same queries read beside the raw ones; a copy loaded after its
//! month was summed is the one copy they would count twice.
//!
//! The SQL stays within what ClickHouse 18.16 (Debian's package) supports: one JOIN per
//! SELECT with `USING`, no window functions, no CTEs, no `LowCardinality`, no TTL. It must
//! also run on today's ClickHouse (scripts/test-warehouse-current.sh runs the warehouse tests
//! on chdb 26.9), whose analyzer refuses a joined subquery without an alias: every subquery on
//! either side of a JOIN is named.

mod history;
mod units;

pub use history::{History, MonthSum};
pub use units::generation_beside_ticks;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use abx_stats::quantile::BucketSums;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use abx_core::snapshot::Op;
use abx_core::{Expr, Literal};

use crate::event::{EventRecord, Kind};
use crate::model::catalog::{Period, UnitValue};
use crate::plan::{ExperimentPlan, MetricPlan};
use crate::rollup::{
    CappedRollup, DimensionCell, ExposureRollup, InteractionCell, MetricRollup, QuantileRollup,
    Rollups, Sums,
};

/// Where the warehouse lives.
#[derive(Clone, Debug)]
pub struct ClickHouseConfig {
    /// `http://host:8123`.
    pub url: String,
    /// The database holding abx's tables (letters, digits and `_`).
    pub database: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("ClickHouse is unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("ClickHouse refused the statement ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from ClickHouse: {0}")]
    Decode(String),
    #[error("invalid warehouse configuration: {0}")]
    Config(String),
}

/// A client of the warehouse. Cheap to share; requests are independent.
pub struct ClickHouse {
    http: reqwest::Client,
    url: String,
    database: String,
}

/// A quoted ClickHouse string literal.
fn literal(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("\\'"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

fn literal_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    values
        .into_iter()
        .map(literal)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize)]
struct ExposureRow<'a> {
    event_id: &'a str,
    experiment_id: &'a str,
    variant: &'a str,
    unit_key: &'a str,
    ts_ms: i64,
    received_ms: i64,
    /// When the loader inserted the row: a tick recomputes the units with rows loaded since
    /// the previous one (`units`).
    loaded_ms: i64,
    #[serde(flatten)]
    properties: PropertyColumns,
}

#[derive(Serialize)]
struct MetricRow<'a> {
    event_id: &'a str,
    event_type: &'a str,
    unit_key: &'a str,
    value: f64,
    ts_ms: i64,
    received_ms: i64,
    /// When the loader inserted the row: a tick recomputes the units with rows loaded since
    /// the previous one (`units`).
    loaded_ms: i64,
    #[serde(flatten)]
    properties: PropertyColumns,
}

/// An event's properties (or exposure attributes) as four parallel arrays: the name, the
/// type (see `PROPERTY_*`), the text (a string, `true`/`false`, a number's JSON text) and
/// the number. Arrays
/// rather than JSON text because ClickHouse 18.16 has no JSON functions that could tell a
/// property's type, and filters test types as targeting does.
#[derive(Default, Serialize)]
struct PropertyColumns {
    prop_names: Vec<String>,
    prop_kinds: Vec<u8>,
    prop_texts: Vec<String>,
    prop_numbers: Vec<f64>,
}

const PROPERTY_STRING: u8 = 1;
const PROPERTY_NUMBER: u8 = 2;
const PROPERTY_BOOL: u8 = 3;

/// The columns of [`PropertyColumns`], as declared in both event tables.
const PROPERTY_COLUMNS: [(&str, &str); 4] = [
    ("prop_names", "Array(String)"),
    ("prop_kinds", "Array(UInt8)"),
    ("prop_texts", "Array(String)"),
    ("prop_numbers", "Array(Float64)"),
];

impl PropertyColumns {
    fn of(properties: Option<&str>) -> PropertyColumns {
        let mut columns = PropertyColumns::default();
        for (name, value) in crate::event::parse_properties(properties) {
            let (kind, text, number) = match value {
                serde_json::Value::String(s) => (PROPERTY_STRING, s, 0.0),
                // The text of a number is its JSON text, which drill-downs group by (as
                // `event::dimension_value` does); filters compare the number.
                serde_json::Value::Number(n) => {
                    (PROPERTY_NUMBER, n.to_string(), n.as_f64().unwrap_or(0.0))
                }
                serde_json::Value::Bool(b) => (PROPERTY_BOOL, b.to_string(), 0.0),
                // Validation admits scalars only.
                _ => continue,
            };
            columns.prop_names.push(name);
            columns.prop_kinds.push(kind);
            columns.prop_texts.push(text);
            columns.prop_numbers.push(number);
        }
        columns
    }
}

/// A ClickHouse number literal (the `Debug` form of an `f64` is exact and never `inf` or
/// `NaN` here: filter operands come from JSON).
fn number(value: f64) -> String {
    format!("{value:?}")
}

/// The SQL condition on an event's property arrays that a metric filter means: the same
/// truth table as `Filter::matches` in abx-origin-domain (a missing property or a type
/// mismatch is false), which the warehouse tests check event by event. The lambdas capture
/// nothing but their parameters (see `units::changed_units`).
pub(crate) fn filter_sql(expr: &Expr) -> String {
    let join = |children: &[Expr], operator: &str, empty: &str| {
        if children.is_empty() {
            return empty.to_string();
        }
        let parts: Vec<String> = children
            .iter()
            .map(|c| format!("({})", filter_sql(c)))
            .collect();
        parts.join(operator)
    };
    match expr {
        Expr::All(children) => join(children, " AND ", "1"),
        Expr::Any(children) => join(children, " OR ", "0"),
        Expr::Not(child) => format!("NOT ({})", filter_sql(child)),
        Expr::Segment(_) => "0".into(),
        Expr::Attr { attr, op, value } => {
            let Some(test) = property_test(*op, value) else {
                return "0".into();
            };
            format!(
                "arrayExists((n, k, s, x) -> n = {} AND {test}, prop_names, prop_kinds, prop_texts, prop_numbers)",
                literal(attr)
            )
        }
    }
}

/// The test of one property's kind `k`, text `s` and number `x`; `None` for a combination
/// that is always false.
fn property_test(op: Op, value: &Literal) -> Option<String> {
    let string = |test: String| format!("k = {PROPERTY_STRING} AND {test}");
    let num = |test: String| format!("k = {PROPERTY_NUMBER} AND {test}");
    let comparison = match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Lt => "<",
        Op::Lte => "<=",
        _ => "",
    };
    Some(match (op, value) {
        (Op::Exists, _) => "1".into(),
        (Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte, Literal::Str(v)) => {
            string(format!("s {comparison} {}", literal(v)))
        }
        (Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte, Literal::Num(v)) => {
            num(format!("x {comparison} {}", number(*v)))
        }
        (Op::Eq | Op::Ne, Literal::Bool(v)) => format!(
            "k = {PROPERTY_BOOL} AND s {comparison} {}",
            literal(if *v { "true" } else { "false" })
        ),
        (Op::In, Literal::StrList(list)) if list.is_empty() => return None,
        (Op::In, Literal::NumList(list)) if list.is_empty() => return None,
        (Op::NotIn, Literal::StrList(list)) if list.is_empty() => format!("k = {PROPERTY_STRING}"),
        (Op::NotIn, Literal::NumList(list)) if list.is_empty() => format!("k = {PROPERTY_NUMBER}"),
        (Op::In | Op::NotIn, Literal::StrList(list)) => {
            let not = if op == Op::NotIn { "NOT " } else { "" };
            string(format!(
                "s {not}IN ({})",
                literal_list(list.iter().map(String::as_str))
            ))
        }
        (Op::In | Op::NotIn, Literal::NumList(list)) => {
            let not = if op == Op::NotIn { "NOT " } else { "" };
            let numbers: Vec<String> = list.iter().map(|v| number(*v)).collect();
            num(format!("x {not}IN ({})", numbers.join(", ")))
        }
        // Lengths and substrings count bytes in ClickHouse, as `str` does.
        (Op::Contains, Literal::Str(v)) => string(format!("position(s, {}) > 0", literal(v))),
        (Op::StartsWith, Literal::Str(v)) => {
            string(format!("substring(s, 1, {}) = {}", v.len(), literal(v)))
        }
        (Op::EndsWith, Literal::Str(v)) if v.is_empty() => format!("k = {PROPERTY_STRING}"),
        (Op::EndsWith, Literal::Str(v)) => string(format!(
            "length(s) >= {len} AND substring(s, length(s) - {len} + 1) = {}",
            literal(v),
            len = v.len(),
        )),
        _ => return None,
    })
}

#[derive(Deserialize)]
struct ExposureRollupRow {
    variant: String,
    day: i64,
    units: i64,
    multiples: i64,
}

/// One drill-down cell, with every metric's sums named `sum_x_0`, `sum_x2_0`, …, `sum_xc_{n-1}`.
#[derive(Deserialize)]
struct DimensionRow {
    present: u8,
    value: String,
    variant: String,
    units: u64,
    #[serde(flatten)]
    sums: HashMap<String, f64>,
}

/// The SQL of one row holding, per metric i of `percentiles` (its place in the plan and its
/// percentile p), `nonzero_{i}`, the count of `per_unit`'s units whose value `x{i}` is not
/// zero, and `cap_{i}`, the order statistic at rank ⌈p·n⌉ of those values (clamped to
/// 1..=n), as `rollup::cap_of` takes it, where `exact_{i}` is 1.
///
/// `quantileExact` finds an order statistic by selection rather than by sorting every value
/// (1.8 s against 3.1 s over 10 M synthetic units, docs/benchmarks.md), but at the 0-based
/// index ⌊level·n⌋ (n − 1 for a level of 1 or more), which is the one wanted, ⌈p·n⌉ − 1,
/// unless p·n is a whole number. Then a level a hair lower, p − δ with δ about 10⁻¹² (p's
/// rounding moves it by up to 10⁻⁴ of itself), gives it: ⌊(p − δ)·n⌋ = p·n − 1 while δ·n is
/// below 1, yet above the rounding error of the products, which holds with a margin of
/// ten either way for n up to 10¹¹ units. Both indexes are computed here as ClickHouse
/// computes them, and a cap neither gives is not exact (an error, not a wrong cap).
fn percentile_caps_sql(percentiles: &[(usize, f64)], per_unit: &str) -> String {
    let mut inner = Vec::new();
    let mut outer = Vec::new();
    for (i, p) in percentiles {
        let lower = (p - 1e-12).max(0.0);
        let index = |level: f64| {
            format!("if({level:?} < 1, toInt64({level:?} * nonzero_{i}), nonzero_{i} - 1)")
        };
        inner.push(format!(
            "toInt64(countIf(x{i} != 0)) AS nonzero_{i},
             quantilesExactIf({p:?}, {lower:?})(x{i}, x{i} != 0) AS candidates_{i},
             least(nonzero_{i}, greatest(1, toInt64(ceil({p:?} * nonzero_{i})))) - 1 AS wanted_{i},
             multiIf(nonzero_{i} = 0, 0, wanted_{i} = {at_p}, 1,
                     wanted_{i} = {at_lower}, 2, 0) AS candidate_{i}",
            at_p = index(*p),
            at_lower = index(lower),
        ));
        outer.push(format!(
            "nonzero_{i}, toUInt8(candidate_{i} != 0) AS exact_{i},
             toFloat64(if(candidate_{i} = 0, 0, candidates_{i}[candidate_{i}])) AS cap_{i}"
        ));
    }
    format!(
        "SELECT {} FROM (SELECT {} FROM ({per_unit}))",
        outer.join(",\n"),
        inner.join(",\n")
    )
}

/// The sums of metric `i` among columns suffixed with the metric's index.
fn indexed_sums(sums: &HashMap<String, f64>, i: usize) -> Sums {
    let sum = |name: &str| sums.get(&format!("{name}_{i}")).copied().unwrap_or(0.0);
    Sums::from_values(Sums::COLUMNS.map(sum))
}

impl DimensionRow {
    fn sums_of(&self, i: usize) -> Sums {
        indexed_sums(&self.sums, i)
    }
}

/// The SQL of a unit's value from the SQL of the total it follows from.
type ValueSql = fn(&str) -> String;

/// What a row of `experiment_rollups` holds: the marker of a computation (with the plan it
/// followed in `plan`, and in `units` the generation of the unit rows it summed), one
/// exposure rollup, or one metric rollup.
const MARKER: u8 = 0;
const EXPOSURE: u8 = 1;
const METRIC: u8 = 2;
/// A quantile rollup: `sum_x` the estimate, `sum_x2` its variance, `sum_y` the quantile,
/// `units` the units with events and `multiples` the events.
const QUANTILE: u8 = 3;
/// A capped metric's sums over capped values: `units` the capped units, `multiples` the
/// units, `plan` the cap.
const CAPPED: u8 = 4;
/// A quantile metric's bucket sums for one variant and bucket (`day`): `units` the events,
/// `multiples` the units, the squares and the cross products in `sum_x` + `sum_x2` and
/// `sum_y` + `sum_y2` (see `abx_stats::quantile::BucketSums` and [`split_exactly`]).
const QUANTILE_BUCKET: u8 = 5;

/// A whole number as two `Float64`s that add up to it exactly: the number rounded, and what
/// the rounding left out (small). The rows of `experiment_rollups` have two whole-number
/// columns; bucket sums need four, and a square of a unit's events may pass 2⁵³, beyond
/// which one `Float64` would round it, and ticks that move it by differences would drift.
fn split_exactly(n: i64) -> (f64, f64) {
    let rounded = n as f64;
    (rounded, n.wrapping_sub(rounded as i64) as f64)
}

/// The whole number [`split_exactly`] split.
fn join_exactly(rounded: f64, rest: f64) -> i64 {
    (rounded as i64).wrapping_add(rest as i64)
}

#[derive(Serialize, Deserialize)]
struct StoredRollupRow {
    experiment_id: String,
    computed_ms: i64,
    plan: String,
    kind: u8,
    variant: String,
    metric: String,
    day: i64,
    units: i64,
    multiples: i64,
    #[serde(flatten)]
    sums: Sums,
}

/// The capped metrics that a computation of capped sums covers (see
/// [`ClickHouse::capped_sums`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caps {
    /// Fixed caps alone: sums that add up over units, given as a change.
    Fixed,
    /// Percentile caps alone, from every unit.
    Percentile,
    /// Both, from every unit.
    All,
}

/// A capped metric's sums over one variant's clean units, or the change that a tick's units
/// make to them.
#[derive(Clone, Debug)]
struct CappedSums {
    metric: String,
    variant: String,
    cap: f64,
    units: i64,
    capped_units: i64,
    sums: Sums,
}

impl CappedSums {
    /// The sums of a stored rollup, to move by differences.
    fn of(rollup: &CappedRollup) -> Self {
        CappedSums {
            metric: rollup.metric.clone(),
            variant: rollup.variant.clone(),
            cap: rollup.cap,
            units: i64::try_from(rollup.units).unwrap_or(i64::MAX),
            capped_units: i64::try_from(rollup.capped_units).unwrap_or(i64::MAX),
            sums: rollup.sums,
        }
    }

    /// Adds a change of the same metric and variant.
    fn add(&mut self, change: &CappedSums) {
        self.units += change.units;
        self.capped_units += change.capped_units;
        self.sums.add(&change.sums);
    }

    /// The rollup of a variant with units (none when moving sums by differences has left
    /// the variant without any).
    fn rollup(self) -> Option<CappedRollup> {
        Some(CappedRollup {
            units: u64::try_from(self.units).ok().filter(|units| *units > 0)?,
            capped_units: u64::try_from(self.capped_units).unwrap_or(0),
            variant: self.variant,
            metric: self.metric,
            sums: self.sums,
            cap: self.cap,
        })
    }
}

/// Per quantile metric, variant and value bucket (`(metric, variant, bucket)`), the sums
/// over the variant's clean units from which its quantile follows at any threshold. They add
/// up over units, so a tick moves them by the difference its units make, as it does the
/// metrics' sums, instead of going over every unit again.
pub type QuantileSums = BTreeMap<(String, String, i32), BucketSums>;

/// One computation of an experiment: its rollups, and the quantile metrics' bucket sums
/// that the next tick moves forward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Computation {
    pub rollups: Rollups,
    pub quantile_sums: QuantileSums,
}

/// A computation stored at `computed_ms` by a given plan (see [`ClickHouse::store_rollups`]).
pub struct StoredRollups {
    pub computed_ms: i64,
    pub plan: String,
    /// The generation of the unit rows the computation summed (`units`); 0 for one stored
    /// before units were kept.
    pub generation: i64,
    pub computation: Computation,
}

/// The raw events' monthly partitions at one time, from [`ClickHouse::raw_months`].
#[derive(Debug)]
pub struct RawMonths(BTreeMap<(String, String), i64>);

impl RawMonths {
    /// Whether a month that `earlier` held was dropped by now (months loaded into since do
    /// not count).
    pub fn dropped_since(&self, earlier: &RawMonths) -> bool {
        earlier
            .0
            .iter()
            .any(|(month, first_block)| self.0.get(month) != Some(first_block))
    }
}

#[derive(Deserialize)]
struct Count {
    n: u64,
}

const DAY_MS: i64 = crate::clock::DAY_MS;

/// How long an insert of rows (the loader's, a computation's stored rollups) may take.
const INSERT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long any other statement may take: a computation over all of a large experiment's
/// events takes minutes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The server's limit on a statement's time, in seconds, just under [`QUERY_TIMEOUT`].
const MAX_EXECUTION_S: &str = "3590";

/// The monthly partition of an event, from its own timestamp.
const PARTITION: &str = "toYYYYMM(toDate(toDateTime(intDiv(ts_ms, 1000))))";

impl ClickHouse {
    /// Connects and creates the database and tables if they do not exist yet.
    pub async fn connect(config: ClickHouseConfig) -> Result<ClickHouse, WarehouseError> {
        if config.database.is_empty()
            || !config
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(WarehouseError::Config(format!(
                "database name `{}` (letters, digits and _ only)",
                config.database
            )));
        }
        let http = reqwest::Client::builder()
            // ClickHouse closes idle keep-alive connections after 3 s; reusing one it is
            // closing would fail a request for nothing.
            .pool_idle_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let warehouse = ClickHouse {
            http,
            url: config.url.trim_end_matches('/').to_string(),
            database: config.database,
        };
        warehouse.create_tables().await?;
        Ok(warehouse)
    }

    async fn create_tables(&self) -> Result<(), WarehouseError> {
        let db = &self.database;
        self.execute(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .await?;
        let properties: Vec<String> = PROPERTY_COLUMNS
            .iter()
            .map(|(name, kind)| format!("{name} {kind}"))
            .collect();
        let properties = properties.join(", ");
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.exposures (
                event_id String, experiment_id String, variant String, unit_key String,
                ts_ms Int64, received_ms Int64, loaded_ms Int64, {properties}
            ) ENGINE = ReplacingMergeTree PARTITION BY {PARTITION}
            ORDER BY (experiment_id, variant, ts_ms, event_id)"
        ))
        .await?;
        // One computation's rows go in one insert, which is atomic because the table has
        // no partitions (one part per insert). A computation replaces its predecessor's rows
        // key by key; readers keep only the newest computation's (see `stored_rollups`).
        let sums = Sums::COLUMNS.map(|c| format!("{c} Float64")).join(", ");
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.experiment_rollups (
                experiment_id String, computed_ms Int64, plan String, kind UInt8,
                variant String, metric String, day Int64, units Int64, multiples Int64,
                {sums}
            ) ENGINE = ReplacingMergeTree(computed_ms)
            ORDER BY (experiment_id, kind, variant, metric, day)"
        ))
        .await?;
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.metric_events (
                event_id String, event_type String, unit_key String, value Float64,
                ts_ms Int64, received_ms Int64, loaded_ms Int64, {properties}
            ) ENGINE = ReplacingMergeTree PARTITION BY {PARTITION}
            ORDER BY (event_type, unit_key, ts_ms, event_id)"
        ))
        .await?;
        // Tables that an earlier version created lack the property columns, the load time
        // (rows without one read as loaded at 0, before any tick) and the ratio covariate's
        // sums. Stored rollups without the new sums read them as 0 until recomputed.
        let added = ["exposures", "metric_events"]
            .into_iter()
            .flat_map(|table| {
                PROPERTY_COLUMNS
                    .into_iter()
                    .chain([("loaded_ms", "Int64")])
                    .map(move |(name, kind)| (table, name, kind))
            })
            // The sums of d, added for the ratio covariate, follow the first eight.
            .chain(
                Sums::COLUMNS[8..]
                    .iter()
                    .map(|name| ("experiment_rollups", *name, "Float64")),
            );
        self.add_missing_columns(added).await?;
        self.create_unit_tables().await?;
        self.create_history_tables().await
    }

    /// Adds each `(table, name, type)` column that its table lacks: tables that an earlier
    /// version created. 18.16 has no `ADD COLUMN IF NOT EXISTS`, so the catalog says which.
    async fn add_missing_columns(
        &self,
        columns: impl IntoIterator<Item = (&str, &str, &str)>,
    ) -> Result<(), WarehouseError> {
        let db = &self.database;
        for (table, name, kind) in columns {
            let present: Vec<Count> = self
                .rows(&format!(
                    "SELECT count() AS n FROM system.columns WHERE database = {} AND table = {} AND name = {}",
                    literal(db),
                    literal(table),
                    literal(name)
                ))
                .await?;
            if present.first().is_none_or(|c| c.n == 0) {
                self.execute(&format!(
                    "ALTER TABLE {db}.{table} ADD COLUMN {name} {kind}"
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// Sends one statement; `data` follows it for inserts (the statement then goes in the
    /// URL, else in the body, which has no length limit).
    async fn post(&self, statement: &str, data: Vec<u8>) -> Result<String, WarehouseError> {
        // A request that hangs (a stalled server, a half-open connection) would stall the
        // loader with it; an insert of rows fails instead, and the events are redelivered.
        // A computation over a large experiment's events may take minutes.
        let timeout = if data.is_empty() {
            QUERY_TIMEOUT
        } else {
            INSERT_TIMEOUT
        };
        let mut parameters = vec![
            // The answer's status then reflects the whole statement, not just its start.
            ("wait_end_of_query", "1"),
            ("output_format_json_quote_64bit_integers", "0"),
            // Per-unit groupings of a large experiment spill to disk rather than fail at the
            // per-query memory limit (10 GB by default).
            ("max_bytes_before_external_group_by", "4000000000"),
            // A statement outlives a client that timed out unless the server stops it.
            ("max_execution_time", MAX_EXECUTION_S),
        ];
        let body = if data.is_empty() {
            statement.as_bytes().to_vec()
        } else {
            parameters.push(("query", statement));
            data
        };
        let response = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .query(&parameters)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(WarehouseError::Refused {
                status: status.as_u16(),
                message: text.trim().chars().take(500).collect(),
            });
        }
        Ok(text)
    }

    async fn execute(&self, statement: &str) -> Result<(), WarehouseError> {
        self.post(statement, Vec::new()).await.map(drop)
    }

    async fn rows<T: DeserializeOwned>(&self, query: &str) -> Result<Vec<T>, WarehouseError> {
        let text = self
            .post(&format!("{query} FORMAT JSONEachRow"), Vec::new())
            .await?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| WarehouseError::Decode(format!("{e}")))
            })
            .collect()
    }

    async fn insert_rows<T: Serialize>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), WarehouseError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(rows.len() * 160);
        for row in rows {
            serde_json::to_writer(&mut body, row)
                .map_err(|e| WarehouseError::Decode(format!("{e}")))?;
            body.push(b'\n');
        }
        self.post(
            &format!("INSERT INTO {}.{table} FORMAT JSONEachRow", self.database),
            body,
        )
        .await
        .map(drop)
    }

    /// Inserts events, one statement per table. Inserting the same events again (a
    /// redelivery after a failure between the two statements or before the stream heard
    /// back) adds copies that reads never see.
    pub async fn insert(&self, events: &[EventRecord]) -> Result<(), WarehouseError> {
        let mut exposures = Vec::new();
        let mut metrics = Vec::new();
        // Each table's rows are stamped just before their insert (see `units`).
        let loaded_ms = crate::clock::now_ms();
        for e in events {
            match &e.kind {
                Kind::Exposure {
                    experiment_id,
                    variant,
                } => exposures.push(ExposureRow {
                    event_id: &e.event_id,
                    experiment_id,
                    variant,
                    unit_key: &e.unit_key,
                    ts_ms: e.ts_ms,
                    received_ms: e.received_at_ms,
                    loaded_ms,
                    properties: PropertyColumns::of(e.properties.as_deref()),
                }),
                Kind::Metric { event_type } => metrics.push(MetricRow {
                    event_id: &e.event_id,
                    event_type,
                    unit_key: &e.unit_key,
                    value: e.value,
                    ts_ms: e.ts_ms,
                    received_ms: e.received_at_ms,
                    loaded_ms,
                    properties: PropertyColumns::of(e.properties.as_deref()),
                }),
            }
        }
        self.insert_rows("exposures", &exposures).await?;
        let loaded_ms = crate::clock::now_ms();
        for row in &mut metrics {
            row.loaded_ms = loaded_ms;
        }
        self.insert_rows("metric_events", &metrics).await
    }

    /// Distinct events stored (exposures and metric events).
    pub async fn event_count(&self) -> Result<u64, WarehouseError> {
        let db = &self.database;
        let rows: Vec<Count> = self
            .rows(&format!(
                "SELECT toUInt64((SELECT count() FROM {db}.exposures FINAL) + (SELECT count() FROM {db}.metric_events FINAL)) AS n"
            ))
            .await?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Drops the database (tests clean up the server they share).
    #[doc(hidden)]
    pub async fn drop_database(&self) -> Result<(), WarehouseError> {
        self.execute(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .await
    }

    /// The analysis unit of an event: the unit, or for switchback experiments the unit
    /// within one period, the key that `abx_origin_domain::plan::switchback_cell` writes.
    /// It is hashed to 64 bits (CityHash64, which ClickHouse keeps as it was), because a
    /// grouping of millions of units runs about three times as fast on a 64-bit key as on
    /// a 128-bit one, and the units' rows of a full computation took 104 s instead of 169 s
    /// (docs/benchmarks.md, "Units keyed by 64 bits"). Two units of an experiment share a
    /// key with a chance of about n²/2⁶⁵ for n units: 3·10⁻⁶ for 10 M, 0.7 % for 500 M.
    /// Such a pair counts as one unit, and as one seen in both variants (left out) if their
    /// variants differ: two of hundreds of millions, which moves no estimate measurably.
    fn unit_expression(plan: &ExperimentPlan) -> String {
        match plan.switchback_period_s {
            Some(period) => format!(
                "cityHash64(concat(unit_key, '@', toString(intDiv(intDiv(ts_ms, 1000), {period}))))"
            ),
            None => "cityHash64(unit_key)".into(),
        }
    }

    /// Per analysis unit of an experiment: the variant and time of its first exposure, and
    /// whether it was seen in more than one variant. Exposures that the SQL pipeline would
    /// refuse (unknown variant, another unit attribute) are left out here. Copies of an
    /// exposure change none of these (minima and the first's attributes), so they are read
    /// without `FINAL`'s merge.
    fn exposed_units(&self, experiment_id: &str, plan: &ExperimentPlan) -> String {
        self.exposed(experiment_id, plan, None, "")
    }

    /// [`Self::exposed_units`], with `dimension`: the tuple (present, text) of that
    /// attribute on the unit's first exposure, chosen with the variant; `units` a condition
    /// on the raw exposures' `unit_key` (`units::touch_since`), or nothing for every unit.
    fn exposed(
        &self,
        experiment_id: &str,
        plan: &ExperimentPlan,
        dimension: Option<&str>,
        units: &str,
    ) -> String {
        let prefix = format!("{}:", plan.unit_attribute);
        let (read, chosen) = match dimension {
            Some(name) => (
                format!(
                    ", indexOf(prop_names, {}) AS i, prop_texts AS texts",
                    literal(name)
                ),
                ", argMin((i > 0, if(i > 0, texts[i], '')), t) AS dimension",
            ),
            None => (String::new(), ""),
        };
        format!(
            "SELECT ukey, argMin(arm, t) AS variant, min(t) AS first_ms, min(arm) != max(arm) AS multiple{chosen}
             FROM (SELECT {unit} AS ukey, variant AS arm, ts_ms AS t{read} FROM {db}.exposures
                   WHERE experiment_id = {id} AND variant IN ({variants})
                     AND substring(unit_key, 1, {len}) = {prefix}{before_end}{units})
             GROUP BY ukey",
            unit = Self::unit_expression(plan),
            before_end = Self::before_end(plan),
            db = self.database,
            id = literal(experiment_id),
            variants = literal_list(plan.variants.iter().map(String::as_str)),
            len = prefix.len(),
            prefix = literal(&prefix),
        )
    }

    /// The capped metrics' sums per variant over the clean units of `per_unit` (the SQL of
    /// units' `variant`, `direction` and values `x{i}`, `y{i}`, `c{i}`, `d{i}` of the plan's
    /// i-th metric if it is capped), each unit counted `direction` times, as the SQL pipeline's
    /// `attribution::capped_rollups` computes them: the sums of `least(value, cap)`. A fixed
    /// cap is known in advance, so these sums add up over units, and a tick moves them by
    /// the difference its units make (their new rows with 1, the rows the previous
    /// computation summed with −1). A percentile cap, the order statistic at rank ⌈p·n⌉ of
    /// the units' non-zero values, depends on every unit: it needs them all (with direction
    /// 1). Every selected metric is computed together: one pass over `per_unit` finds the
    /// percentile caps, and one more sums, however many metrics are capped (for a percentile
    /// cap each pass reads every unit's newest row, docs/benchmarks.md).
    async fn capped_sums(
        &self,
        plan: &ExperimentPlan,
        per_unit: &str,
        caps: Caps,
    ) -> Result<Vec<CappedSums>, WarehouseError> {
        #[derive(Deserialize)]
        struct CappedRow {
            variant: String,
            units: i64,
            /// `capped_units_{i}` and the sums of the i-th metric (`sum_x_{i}`, …).
            #[serde(flatten)]
            columns: HashMap<String, f64>,
        }
        // The selected metrics by their place in the plan, with their caps: a fixed one as
        // given, a percentile one found from the units (left out if no unit has a value).
        let mut capped: Vec<(usize, f64)> = Vec::new();
        let mut percentiles: Vec<(usize, f64)> = Vec::new();
        for (i, metric) in plan.metrics.iter().enumerate() {
            match metric.cap.as_ref().map(|cap| (cap.value, cap.percentile)) {
                Some((Some(value), _)) if caps != Caps::Percentile => capped.push((i, value)),
                Some((None, Some(p))) if caps != Caps::Fixed => percentiles.push((i, p)),
                _ => {}
            }
        }
        if !percentiles.is_empty() {
            let rows: Vec<HashMap<String, f64>> = self
                .rows(&percentile_caps_sql(&percentiles, per_unit))
                .await?;
            let found = |name: String| rows.first().and_then(|row| row.get(&name)).copied();
            for (i, _) in percentiles {
                let nonzero = found(format!("nonzero_{i}")).unwrap_or(0.0);
                if nonzero > 0.0 {
                    let cap = found(format!("cap_{i}"))
                        .filter(|_| found(format!("exact_{i}")) == Some(1.0))
                        .ok_or_else(|| {
                            WarehouseError::Decode(format!(
                                "no exact percentile cap for metric {i} over {nonzero} units"
                            ))
                        })?;
                    capped.push((i, cap));
                }
            }
            capped.sort_by_key(|(i, _)| *i);
        }
        if capped.is_empty() {
            return Ok(Vec::new());
        }
        let mut values = Vec::new();
        let mut sums = Vec::new();
        for (i, cap) in &capped {
            // The numerator and its covariate capped; a denominator never is.
            values.push(format!(
                "x{i}, least(x{i}, {cap:?}) AS xc{i}, y{i}, least(c{i}, {cap:?}) AS cc{i}, d{i}"
            ));
            let term = |factors: &str| {
                let product = Self::product(factors, |v| match v {
                    'x' => format!("xc{i}"),
                    'c' => format!("cc{i}"),
                    'y' => format!("y{i}"),
                    _ => format!("d{i}"),
                });
                format!("direction * {product}")
            };
            sums.push(format!(
                "sum(direction * toInt64(x{i} > {cap:?})) AS capped_units_{i}, {}",
                Self::sums_sql(&format!("_{i}"), term)
            ));
        }
        let rows: Vec<CappedRow> = self
            .rows(&format!(
                "SELECT variant, sum(direction) AS units, {sums}
                 FROM (SELECT variant, direction, {values} FROM ({per_unit}))
                 GROUP BY variant ORDER BY variant",
                sums = sums.join(",\n"),
                values = values.join(", "),
            ))
            .await?;
        let mut out = Vec::new();
        for (i, cap) in capped {
            for r in &rows {
                let capped_units =
                    r.columns.get(&format!("capped_units_{i}")).ok_or_else(|| {
                        WarehouseError::Decode(format!("no capped units for metric {i}"))
                    })?;
                out.push(CappedSums {
                    metric: plan.metrics[i].key.clone(),
                    variant: r.variant.clone(),
                    cap,
                    units: r.units,
                    // A count, exact in a double below 2^53.
                    capped_units: *capped_units as i64,
                    sums: indexed_sums(&r.columns, i),
                });
            }
        }
        Ok(out)
    }

    /// Each quantile metric's estimate per variant from its bucket sums, as
    /// `abx_stats::quantile` computes it for the SQL pipeline from the units' events.
    fn quantile_rollups(plan: &ExperimentPlan, sums: &QuantileSums) -> Vec<QuantileRollup> {
        let mut groups: BTreeMap<(&str, &str), Vec<(i32, BucketSums)>> = BTreeMap::new();
        for ((metric, variant, bucket), s) in sums {
            groups
                .entry((metric.as_str(), variant.as_str()))
                .or_default()
                .push((*bucket, *s));
        }
        plan.metrics
            .iter()
            .filter_map(|m| Some((m, m.quantile?)))
            .flat_map(|(metric, p)| {
                groups
                    .iter()
                    .filter(move |((key, _), _)| *key == metric.key)
                    .map(move |((_, variant), buckets)| QuantileRollup {
                        variant: (*variant).to_string(),
                        metric: metric.key.clone(),
                        estimate: abx_stats::quantile::quantile_of_bucket_sums(buckets, p).ok(),
                    })
            })
            .collect()
    }

    /// The SQL of the bucket of a quantile metric's `value`, with `abx_stats::quantile`'s
    /// formula and constants.
    fn value_bucket(value: &str) -> String {
        use abx_stats::quantile::{LN_GAMMA, MIN_MAGNITUDE, OFFSET};
        format!(
            "toInt32(if(abs({value}) < {MIN_MAGNITUDE:?}, 0,
                if({value} > 0, 1, -1) * ({OFFSET} + toInt32(ceil(log(abs({value})) / {LN_GAMMA:?})))))"
        )
    }

    /// A metric's values x, y, c and d (as `MetricKind::unit_values` defines them), each as
    /// the SQL of the total over a unit's events that it follows from and how it follows from
    /// that total; `None` for a value that is always zero. x is always given, so that every
    /// metric has one total.
    fn quantities(metric: &MetricPlan) -> [(&'static str, Option<(String, ValueSql)>); 4] {
        let t = Self::counted(metric);
        let window = Self::in_window(metric);
        let values = metric.kind.unit_values();
        let total = |value: UnitValue| -> Option<(String, ValueSql)> {
            let of_total: ValueSql = |total| total.to_string();
            match value {
                UnitValue::Zero => None,
                UnitValue::Converted(period) => Some((
                    format!(
                        "sumIf(events, event_type = {t} AND {}{window})",
                        Self::period(period)
                    ),
                    |total| format!("if({total} > 0, 1.0, 0.0)"),
                )),
                UnitValue::Sum(period) => Some((
                    format!(
                        "sumIf(value, event_type = {t} AND {}{window})",
                        Self::period(period)
                    ),
                    of_total,
                )),
                UnitValue::DenominatorSum(period) => {
                    let d = literal(metric.denominator.as_deref()?);
                    Some((
                        format!(
                            "sumIf(value, event_type = {d} AND {}{window})",
                            Self::period(period)
                        ),
                        of_total,
                    ))
                }
            }
        };
        let zero: ValueSql = |_| "0.0".to_string();
        [
            (
                "x",
                Some(total(values.x).unwrap_or(("0".to_string(), zero))),
            ),
            ("y", total(values.y)),
            ("c", total(values.c)),
            ("d", total(values.d)),
        ]
    }

    /// The SQL of every `Sums` column (`sum_x{suffix}`, …): the sum of `term` of the factors
    /// `Sums::PRODUCTS` names for it.
    fn sums_sql(suffix: &str, term: impl Fn(&str) -> String) -> String {
        Sums::COLUMNS
            .iter()
            .zip(Sums::PRODUCTS)
            .map(|(column, factors)| format!("sum({}) AS {column}{suffix}", term(factors)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The SQL product of a unit's values named by `factors` ("xc": x times c), each value's
    /// column given by `column`.
    fn product(factors: &str, column: impl Fn(char) -> String) -> String {
        factors.chars().map(column).collect::<Vec<_>>().join(" * ")
    }

    /// What follows `event_type = ` to select the events a metric counts: its event type,
    /// and its filter if it has one.
    fn counted(metric: &MetricPlan) -> String {
        let t = literal(&metric.event_type);
        match &metric.compiled_filter {
            Some(filter) => format!("{t} AND ({})", filter_sql(filter.expr())),
            None => t,
        }
    }

    /// The condition (to append after a join that gives `first_ms`) that an event is in
    /// the metric's window after the exposure: nothing without a window.
    fn in_window(metric: &MetricPlan) -> String {
        match &metric.window {
            Some(w) => {
                let delay = i64::from(w.delay_s) * 1_000;
                let end = delay + i64::from(w.length_s) * 1_000;
                format!(" AND ts_ms - first_ms >= {delay} AND ts_ms - first_ms < {end}")
            }
            None => String::new(),
        }
    }

    /// The condition (to append to a `WHERE` on the raw events) that an event is stamped
    /// before the analysis's end, as `ExperimentPlan::counts_at`: nothing while it is open.
    fn before_end(plan: &ExperimentPlan) -> String {
        plan.ends_at_ms
            .map_or_else(String::new, |end| format!(" AND ts_ms <= {end}"))
    }

    /// The condition on an event's time (`ts_ms`, against the unit's `first_ms`) of a period.
    fn period(period: Period) -> &'static str {
        match period {
            Period::AfterExposure => "ts_ms >= first_ms",
            Period::BeforeExposure => "ts_ms < first_ms",
        }
    }

    /// Stores one computation of an experiment's rollups, made by `plan` (a description of
    /// the plan that readers compare with theirs) from the unit rows of `generation`, in one
    /// insert.
    pub async fn store_rollups(
        &self,
        experiment_id: &str,
        (plan, generation): (&str, i64),
        computed_ms: i64,
        computation: &Computation,
    ) -> Result<(), WarehouseError> {
        let rollups = &computation.rollups;
        let row =
            |kind, variant: &str, metric: &str, day, units, multiples, sums| StoredRollupRow {
                experiment_id: experiment_id.to_string(),
                computed_ms,
                plan: if kind == MARKER {
                    plan.to_string()
                } else {
                    String::new()
                },
                kind,
                variant: variant.to_string(),
                metric: metric.to_string(),
                day,
                units,
                multiples,
                sums,
            };
        let mut rows = vec![row(MARKER, "", "", 0, generation, 0, Sums::default())];
        for r in &rollups.exposures {
            rows.push(row(
                EXPOSURE,
                &r.variant,
                "",
                r.day,
                r.units,
                r.multiple,
                Sums::default(),
            ));
        }
        for r in &rollups.metrics {
            rows.push(row(METRIC, &r.variant, &r.metric, r.day, 0, 0, r.sums));
        }
        for r in &rollups.quantiles {
            let Some(q) = &r.estimate else { continue };
            let sums = Sums {
                sum_x: q.estimate,
                sum_x2: q.variance,
                sum_y: q.p,
                ..Sums::default()
            };
            let (units, events) = (q.units as i64, q.events as i64);
            rows.push(row(QUANTILE, &r.variant, &r.metric, 0, units, events, sums));
        }
        for r in &rollups.capped {
            let (capped, units) = (r.capped_units as i64, r.units as i64);
            let mut stored = row(CAPPED, &r.variant, &r.metric, 0, capped, units, r.sums);
            stored.plan = format!("{:?}", r.cap);
            rows.push(stored);
        }
        for ((metric, variant, bucket), b) in &computation.quantile_sums {
            let ((sum_x, sum_x2), (sum_y, sum_y2)) =
                (split_exactly(b.squares), split_exactly(b.cross));
            let sums = Sums {
                sum_x,
                sum_x2,
                sum_y,
                sum_y2,
                ..Sums::default()
            };
            let day = i64::from(*bucket);
            rows.push(row(
                QUANTILE_BUCKET,
                variant,
                metric,
                day,
                b.events,
                b.units,
                sums,
            ));
        }
        self.insert_rows("experiment_rollups", &rows).await
    }

    /// The newest stored computation of an experiment's rollups, if any, as a tick moves it
    /// forward: with its bucket sums.
    pub async fn stored_rollups(
        &self,
        experiment_id: &str,
    ) -> Result<Option<StoredRollups>, WarehouseError> {
        self.stored(experiment_id, "").await
    }

    /// The same without the bucket sums (thousands of rows per quantile metric), for
    /// readers of the rollups alone, such as results.
    pub async fn stored_for_results(
        &self,
        experiment_id: &str,
    ) -> Result<Option<StoredRollups>, WarehouseError> {
        self.stored(experiment_id, &format!(" AND kind != {QUANTILE_BUCKET}"))
            .await
    }

    /// The newest stored computation, of the rows that `condition` (appended to a `WHERE`)
    /// selects. Reading with `FINAL` gives, per row key, the newest computation that has
    /// it; the rows of the newest computation overall are then exactly those with its time
    /// (a key that an older computation had and the newest lacks is left out, and rows of
    /// two computations stored in the same millisecond collapse into one). Each computation
    /// is stored in one insert, far below a block (about a million rows), which ClickHouse
    /// writes whole or not at all.
    async fn stored(
        &self,
        experiment_id: &str,
        condition: &str,
    ) -> Result<Option<StoredRollups>, WarehouseError> {
        let rows: Vec<StoredRollupRow> = self
            .rows(&format!(
                "SELECT * FROM {}.experiment_rollups FINAL WHERE experiment_id = {}{condition}",
                self.database,
                literal(experiment_id)
            ))
            .await?;
        let Some(marker) = rows.iter().find(|r| r.kind == MARKER) else {
            return Ok(None);
        };
        let (computed_ms, plan, generation) =
            (marker.computed_ms, marker.plan.clone(), marker.units);
        let mut computation = Computation::default();
        let rollups = &mut computation.rollups;
        for r in rows.into_iter().filter(|r| r.computed_ms == computed_ms) {
            match r.kind {
                EXPOSURE => rollups.exposures.push(ExposureRollup {
                    variant: r.variant,
                    day: r.day,
                    units: r.units,
                    multiple: r.multiples,
                }),
                METRIC => rollups.metrics.push(MetricRollup {
                    variant: r.variant,
                    metric: r.metric,
                    day: r.day,
                    sums: r.sums,
                }),
                // A cap that does not read back (never written so) leaves the metric out.
                CAPPED => {
                    if let Ok(cap) = r.plan.parse() {
                        rollups.capped.push(CappedRollup {
                            variant: r.variant,
                            metric: r.metric,
                            sums: r.sums,
                            units: r.multiples.max(0) as u64,
                            cap,
                            capped_units: r.units.max(0) as u64,
                        });
                    }
                }
                QUANTILE => rollups.quantiles.push(QuantileRollup {
                    variant: r.variant,
                    metric: r.metric,
                    estimate: Some(abx_stats::QuantileEstimate {
                        p: r.sums.sum_y,
                        estimate: r.sums.sum_x,
                        variance: r.sums.sum_x2,
                        units: r.units.max(0) as u64,
                        events: r.multiples.max(0) as u64,
                    }),
                }),
                QUANTILE_BUCKET => {
                    let Ok(bucket) = i32::try_from(r.day) else {
                        continue;
                    };
                    let sums = BucketSums {
                        events: r.units,
                        units: r.multiples,
                        squares: join_exactly(r.sums.sum_x, r.sums.sum_x2),
                        cross: join_exactly(r.sums.sum_y, r.sums.sum_y2),
                    };
                    let key = (r.metric, r.variant, bucket);
                    computation.quantile_sums.insert(key, sums);
                }
                _ => {}
            }
        }
        Ok(Some(StoredRollups {
            computed_ms,
            plan,
            generation,
            computation,
        }))
    }

    /// The active partitions of `tables` whose partition key is a number: (table, number).
    async fn numbered_partitions(
        &self,
        tables: &[&str],
    ) -> Result<Vec<(String, i64)>, WarehouseError> {
        #[derive(Deserialize)]
        struct Partition {
            table: String,
            partition: String,
        }
        let partitions: Vec<Partition> = self
            .rows(&format!(
                "SELECT DISTINCT table, partition FROM system.parts
                 WHERE database = {} AND table IN ({}) AND active",
                literal(&self.database),
                literal_list(tables.iter().copied())
            ))
            .await?;
        Ok(partitions
            .into_iter()
            .filter_map(|p| {
                let number = p.partition.trim_matches('\'').parse().ok()?;
                Some((p.table, number))
            })
            .collect())
    }

    async fn drop_partition(&self, table: &str, partition: i64) -> Result<(), WarehouseError> {
        self.execute(&format!(
            "ALTER TABLE {}.{table} DROP PARTITION {partition}",
            self.database
        ))
        .await
    }

    /// The oldest month (`YYYYMM`) of raw events kept, `None` without any. Retention drops
    /// the oldest months first, so every month from this one on is kept.
    pub async fn oldest_raw_month(&self) -> Result<Option<u32>, WarehouseError> {
        let partitions = self
            .numbered_partitions(&["exposures", "metric_events"])
            .await?;
        let oldest = partitions.into_iter().map(|(_, month)| month).min();
        Ok(oldest.and_then(|month| u32::try_from(month).ok()))
    }

    /// The raw events' monthly partitions as they stand, each with the first block of its
    /// oldest part: to tell whether a month was dropped meanwhile ([`RawMonths::dropped_since`]).
    /// Rows leave a month only when it is dropped whole, merges keep a partition's first
    /// block, and a month dropped and then loaded into again starts at a later block (each
    /// table numbers its blocks in one sequence).
    pub async fn raw_months(&self) -> Result<RawMonths, WarehouseError> {
        #[derive(Deserialize)]
        struct Partition {
            table: String,
            partition: String,
            first_block: i64,
        }
        let partitions: Vec<Partition> = self
            .rows(&format!(
                "SELECT table, partition, min(min_block_number) AS first_block FROM system.parts
                 WHERE database = {} AND table IN ('exposures', 'metric_events') AND active
                 GROUP BY table, partition",
                literal(&self.database),
            ))
            .await?;
        Ok(RawMonths(
            partitions
                .into_iter()
                .map(|p| ((p.table, p.partition), p.first_block))
                .collect(),
        ))
    }

    /// The monthly partitions of raw events before `month` (`YYYYMM`), as (table, month),
    /// metric events first: retention drops them with [`Self::drop_raw_month`], each month
    /// of metric events once [`Self::sum_month`] has summed it into the history.
    pub async fn raw_months_before(
        &self,
        month: u32,
    ) -> Result<Vec<(String, u32)>, WarehouseError> {
        let mut months: Vec<(String, u32)> = self
            .numbered_partitions(&["exposures", "metric_events"])
            .await?
            .into_iter()
            .filter_map(|(table, m)| Some((table, u32::try_from(m).ok()?)))
            .filter(|(_, m)| *m < month)
            .collect();
        months.sort_by_key(|(table, m)| (table != "metric_events", *m));
        Ok(months)
    }

    /// Drops a month of raw events of `table`: exposures at once, metric events only if
    /// the history counts every one of them (rows loaded since its last batch keep the
    /// month for a later tick); whether it dropped the month.
    pub async fn drop_raw_month(&self, table: &str, month: u32) -> Result<bool, WarehouseError> {
        if table == "metric_events" {
            return self.drop_summed_month(month).await;
        }
        self.drop_partition(table, i64::from(month)).await?;
        Ok(true)
    }

    /// Per clean unit of `exposed` (whose extra `columns` it keeps), every metric's values
    /// over all the unit's events as the SQL pipeline's per-unit totals give them: `x{i}`,
    /// `y{i}`, `c{i}`, `d{i}` for the plan's i-th metric. Units without events get zeros from the
    /// LEFT JOIN's defaults.
    fn unit_values(
        &self,
        plan: &ExperimentPlan,
        (exposed, columns): (&str, &str),
        history: &History,
    ) -> String {
        let units = format!("SELECT ukey, variant{columns} FROM ({exposed}) WHERE multiple = 0");
        if plan.metrics.is_empty() {
            return units;
        }
        let mut totals = Vec::new();
        let mut values = Vec::new();
        for (i, metric) in plan.metrics.iter().enumerate() {
            for (name, quantity) in Self::quantities(metric) {
                match quantity {
                    Some((total, value)) => {
                        let q = format!("{name}{i}t");
                        totals.push(format!("toFloat64({total}) AS {q}"));
                        values.push(format!("{} AS {name}{i}", value(&q)));
                    }
                    None => values.push(format!("0.0 AS {name}{i}")),
                }
            }
        }
        format!(
            "SELECT ukey, variant{columns}, {values} FROM ({units}) AS units
             ALL LEFT JOIN (
               SELECT ukey, {totals}
               FROM ({events}) AS events
               ALL INNER JOIN (SELECT ukey, first_ms FROM ({exposed}) WHERE multiple = 0) AS exposed USING ukey
               GROUP BY ukey
             ) AS totals USING ukey",
            values = values.join(", "),
            totals = totals.join(", "),
            events = self.metric_events_with_history(plan, ("", ""), history),
        )
    }

    /// The drill-down cells of an experiment by a dimension: per value of the attribute at
    /// each clean unit's first exposure and variant, the units and every metric's sums of
    /// the units' values over all their events (the SQL pipeline's per-unit totals), with
    /// the events that `history` counts.
    pub async fn dimension_cells(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        dimension: &str,
        history: &History,
    ) -> Result<Vec<DimensionCell>, WarehouseError> {
        let exposed = self.exposed(experiment_id, plan, Some(dimension), "");
        let per_unit = self.unit_values(plan, (&exposed, ", dimension"), history);
        let sums: String = (0..plan.metrics.len())
            .map(|i| {
                let term = |factors: &str| Self::product(factors, |v| format!("{v}{i}"));
                format!(", {}", Self::sums_sql(&format!("_{i}"), term))
            })
            .collect();
        let rows: Vec<DimensionRow> = self
            .rows(&format!(
                "SELECT dimension.1 AS present, dimension.2 AS value, variant, toUInt64(count()) AS units{sums}
                 FROM ({per_unit})
                 GROUP BY dimension, variant ORDER BY value, variant"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| DimensionCell {
                metrics: plan
                    .metrics
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.key.clone(), r.sums_of(i)))
                    .collect(),
                value: (r.present != 0).then_some(r.value),
                variant: r.variant,
                units: r.units,
            })
            .collect())
    }

    /// The property columns a query over metric events selects: none unless a filter reads
    /// them.
    fn property_columns(plan: &ExperimentPlan) -> &'static str {
        if plan.metrics.iter().any(|m| m.compiled_filter.is_some()) {
            ", prop_names, prop_kinds, prop_texts, prop_numbers"
        } else {
            ""
        }
    }

    /// Units exposed (cleanly) to both experiments, by their two variants, with Σx and Σx²
    /// of a metric measured since each unit's first exposure to the first experiment.
    pub async fn interaction_cells(
        &self,
        a: (&str, &ExperimentPlan),
        b: (&str, &ExperimentPlan),
        metric: &MetricPlan,
    ) -> Result<Vec<InteractionCell>, WarehouseError> {
        let exposed_a = self.exposed_units(a.0, a.1);
        let exposed_b = self.exposed_units(b.0, b.1);
        let x = match metric.kind.unit_values().x {
            UnitValue::Converted(Period::AfterExposure) => "if(post_count > 0, 1.0, 0.0)",
            UnitValue::Sum(Period::AfterExposure) => "post_sum",
            // No kind measures anything else as x; ratios have no interaction analysis.
            _ => "0.0",
        };
        let query = format!(
            "SELECT va, vb, toUInt64(count()) AS n, sum(x) AS sx, sum(x * x) AS sxx
             FROM (
               SELECT va, vb, {x} AS x
               FROM (
                 SELECT ukey, va, vb
                 FROM (SELECT ukey, variant AS va FROM ({exposed_a}) WHERE multiple = 0) AS a
                 ALL INNER JOIN (SELECT ukey, variant AS vb FROM ({exposed_b}) WHERE multiple = 0) AS b USING ukey
               ) AS pairs ALL LEFT JOIN (
               SELECT ukey, toFloat64(countIf(ts_ms >= first_ms{window})) AS post_count,
                      sumIf(value, ts_ms >= first_ms{window}) AS post_sum
               FROM (SELECT {unit} AS ukey, value, ts_ms FROM {db}.metric_events FINAL
                     WHERE event_type = {t}{before_end}) AS events
               ALL INNER JOIN (SELECT ukey, first_ms FROM ({exposed_a}) WHERE multiple = 0) AS exposed USING ukey
                 GROUP BY ukey
               ) AS totals USING ukey
             ) GROUP BY va, vb ORDER BY va, vb",
            unit = Self::unit_expression(a.1),
            before_end = Self::before_end(a.1),
            db = self.database,
            t = Self::counted(metric),
            window = Self::in_window(metric),
        );
        self.rows(&query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::MetricKind;

    /// `percentile_caps_sql`'s claim, in the same double arithmetic as ClickHouse: the rank
    /// `rollup::cap_of` takes, ⌈p·n⌉ clamped to 1..=n, is at the index `quantileExact` gives
    /// at level p or at level p − 10⁻¹², for the percentiles users set and counts up to 10¹¹.
    #[test]
    fn a_percentile_cap_is_at_one_of_the_two_selected_indexes() {
        // `quantileExact`'s 0-based index: ⌊level·n⌋, or the last for a level of 1 or more.
        let selected = |level: f64, n: i64| {
            if level < 1.0 {
                (level * n as f64) as i64
            } else {
                n - 1
            }
        };
        let mut percentiles: Vec<f64> = (1..1000).map(|k| f64::from(k) / 1000.0).collect();
        percentiles.extend([1.0 / 3.0, 2.0 / 3.0, 0.9999, 0.99999, 1e-6, 1.0]);
        let mut counts: Vec<i64> = (1..=5_000).collect();
        for scale in [1_000_000_i64, 1_000_000_000, 100_000_000_000] {
            counts.extend((1..=2_000).map(|k| scale - k));
        }
        for p in percentiles {
            let lower = (p - 1e-12).max(0.0);
            for &n in &counts {
                let wanted = ((p * n as f64).ceil() as i64).clamp(1, n) - 1;
                assert!(
                    wanted == selected(p, n) || wanted == selected(lower, n),
                    "p {p}, n {n}: wanted index {wanted}, selected {} and {}",
                    selected(p, n),
                    selected(lower, n)
                );
            }
        }
    }

    #[test]
    fn whole_numbers_split_into_two_floats_come_back_exactly() {
        let beyond = (1_i64 << 53) + 1;
        for n in [
            0,
            1,
            -1,
            beyond,
            -beyond,
            123_456_789_012_345_678,
            i64::MAX,
            i64::MIN,
        ] {
            let (rounded, rest) = split_exactly(n);
            assert_eq!(join_exactly(rounded, rest), n, "{n}");
            assert!(rest.abs() <= 1024.0, "{n}: {rest}");
        }
        assert_eq!(split_exactly(beyond).1, 1.0);
    }

    #[test]
    fn each_metric_kind_reads_the_totals_its_unit_values_name() {
        let plan = |kind, denominator: Option<&str>| MetricPlan {
            key: "m".into(),
            kind,
            event_type: "e".into(),
            denominator: denominator.map(Into::into),
            quantile: None,
            cap: None,
            window: None,
            filter: None,
            measure: "e".into(),
            denominator_measure: denominator.map(Into::into),
            compiled_filter: None,
        };
        // Per value x, y, c, d: the total it follows from and its SQL from a total `T`.
        let rendered = |kind, denominator| {
            ClickHouse::quantities(&plan(kind, denominator))
                .map(|(name, q)| (name, q.map(|(total, value)| (total, value("T")))))
        };
        let some = |total: &str, value: &str| Some((total.to_string(), value.to_string()));
        let post = |t: &str| format!("sumIf(value, event_type = '{t}' AND ts_ms >= first_ms)");
        let pre = |t: &str| format!("sumIf(value, event_type = '{t}' AND ts_ms < first_ms)");
        assert_eq!(
            rendered(MetricKind::Conversion, None),
            [
                (
                    "x",
                    some(
                        "sumIf(events, event_type = 'e' AND ts_ms >= first_ms)",
                        "if(T > 0, 1.0, 0.0)"
                    )
                ),
                ("y", None),
                (
                    "c",
                    some(
                        "sumIf(events, event_type = 'e' AND ts_ms < first_ms)",
                        "if(T > 0, 1.0, 0.0)"
                    )
                ),
                ("d", None),
            ]
        );
        let summed = [
            ("x", some(&post("e"), "T")),
            ("y", None),
            ("c", some(&pre("e"), "T")),
            ("d", None),
        ];
        assert_eq!(rendered(MetricKind::Mean, None), summed);
        assert_eq!(rendered(MetricKind::Sum, None), summed);
        assert_eq!(
            rendered(MetricKind::Ratio, Some("d")),
            [
                ("x", some(&post("e"), "T")),
                ("y", some(&post("d"), "T")),
                ("c", some(&pre("e"), "T")),
                ("d", some(&pre("d"), "T")),
            ]
        );
        // A quantile's rollups stay empty, but every metric has its x total.
        assert_eq!(
            rendered(MetricKind::Quantile, None),
            [
                ("x", some("0", "0.0")),
                ("y", None),
                ("c", None),
                ("d", None)
            ]
        );
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("it's"), r"'it\'s'");
        assert_eq!(literal(r"a\'b"), r"'a\\\'b'");
        assert_eq!(literal_list(["a", "b"]), "'a', 'b'");
    }
}
