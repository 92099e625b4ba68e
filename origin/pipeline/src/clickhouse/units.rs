//! Incremental rollups: the per-unit state of each experiment, kept in `unit_rollups`, from
//! which the per-variant sums follow.
//!
//! A unit's row holds what the unit adds to its experiment's rollups: its variant, the day
//! of its first exposure, whether it was seen in more than one variant, and per day on which
//! its values changed, the running totals of its events that its metrics' values follow
//! from; its change of every metric's products on each day (x, x², xy, …: the terms of
//! [`Sums`]) follows from those. It also keeps its events per value bucket for quantile
//! metrics, whose per-variant bucket sums (`abx_stats::quantile::BucketSums`) add up over
//! units and move by differences like the other sums, and its values for capped metrics,
//! whose rollups do not add up (a percentile cap depends on every unit), so that a pass
//! over the units rather than over their raw events computes them. A row is a function of
//! the unit's deduplicated events alone (raw, and those of months past retention as the
//! history's sums), so computing it again from the same events gives the same row, however
//! many copies of them were loaded. That is what makes ticks exactly once: a tick
//! recomputes only the units with events loaded since the previous tick (`loaded_ms`), and
//! moves the rollups by the difference between their new rows and the rows the previous
//! computation summed.
//!
//! Rows carry a `generation` (the time of the full computation they descend from; each
//! experiment's generation is a partition, dropped whole once another is stored) and a
//! `version` (the time of the computation that wrote them). A tick writes its rows in a
//! staging table first, and the rows they replace in another, takes the difference there,
//! and only then copies them into `unit_rollups`, which keeps one row per unit (a
//! `ReplacingMergeTree` by version): its rows are therefore all of committed computations,
//! except after a tick killed between the copy and storing its rollups. Such rows are newer
//! than the stored computation, and the next tick, finding them, recomputes the experiment
//! in full instead (a new generation), as it does after a plan change, at the first tick
//! after an experiment ends, and for rollups stored before units were kept or kept their
//! running totals (or, for quantile metrics, before units kept their buckets and their
//! bucket sums were stored; for capped metrics, while units kept every metric's values).

use std::collections::BTreeMap;

use abx_stats::quantile::BucketSums;
use serde::Deserialize;

use super::History;
use super::{
    CappedSums, Caps, ClickHouse, Computation, Count, DAY_MS, ExposureRollupRow, QuantileSums,
    StoredRollups, ValueSql, WarehouseError,
};
use super::{literal, literal_list};
use crate::plan::ExperimentPlan;
use crate::rollup::{CappedRollup, ExposureRollup, MetricRollup, Rollups, Sums};

/// The units a full computation's pass computes, at most: the statement that writes the
/// units' rows holds about 2 KB per unit, so more would spill past the origin's 4 GB for a
/// grouping (`max_bytes_before_external_group_by`). Over 10 M units of three metrics, two
/// passes took 116 s where one took 155 s and four 124 s: each pass reads every event.
const UNITS_PER_PASS: u64 = 5_000_000;
/// At most this many passes: each reads every event again, so beyond a few the reads cost
/// more than the spilled groupings they spare (four passes took 124 s against two's 116 s).
const MAX_PASSES: u64 = 4;

/// Staged rows are dropped by the hour once this old (a tick takes seconds).
const STAGING_KEPT_MS: i64 = 2 * 3_600_000;
const STAGING_PARTITION_MS: i64 = 3_600_000;

/// The columns of both unit tables, in order: those every unit's row fills, then the arrays
/// of units with metric events (see [`ClickHouse::changed_units`]), which other units leave
/// empty.
const COLUMNS: &str = "experiment_id, generation, version, ukey, variant, first_day, multiple, \
                       days, totals, unit_values, quantile_buckets, quantile_counts";
const ARRAY_COLUMNS: &str = ", days, totals, unit_values, quantile_buckets, quantile_counts";
/// The tables of units' rows, which earlier versions keyed by a 128-bit hash of the unit.
const UNIT_TABLES: [&str; 3] = [
    "unit_rollups",
    "unit_rollups_staging",
    "unit_rollups_previous",
];

/// Of `columns` (a list of the unit tables' columns that starts as [`COLUMNS`] does), those
/// a unit's row holds: the list after the experiment, generation and version.
fn unit_columns(columns: &str) -> &str {
    columns.splitn(4, ", ").nth(3).unwrap_or_default()
}

/// One running total that a unit's row keeps: of the plan's `metric`-th metric's value
/// `name` (x, y, c or d).
struct UnitTotal {
    metric: usize,
    name: &'static str,
    /// The SQL of the total over a unit's events of one day (an aggregate, or a constant).
    sql: String,
    /// How the value follows from the total.
    value: ValueSql,
}

#[derive(Deserialize)]
struct DayRow {
    variant: String,
    day: i64,
    sums: Vec<f64>,
}

impl ClickHouse {
    pub(super) async fn create_unit_tables(&self) -> Result<(), WarehouseError> {
        let db = &self.database;
        // Tables that earlier versions made key units by 128 bits (and may lack columns
        // added since). Their rows are derived data that no tick moves forward from any
        // more (`warehouse::computed_by` names the 64-bit keys): every experiment still
        // brought up to date is computed anew at its next tick, so they are dropped and made
        // again.
        let keyed_before: Vec<Count> = self
            .rows(&format!(
                "SELECT count() AS n FROM system.columns
                 WHERE database = {} AND table IN ({}) AND name = 'ukey' AND type != 'UInt64'",
                literal(db),
                literal_list(UNIT_TABLES),
            ))
            .await?;
        if keyed_before.first().is_some_and(|c| c.n > 0) {
            for table in UNIT_TABLES {
                self.execute(&format!("DROP TABLE IF EXISTS {db}.{table}"))
                    .await?;
            }
        }
        let columns = "experiment_id String, generation Int64, version Int64, ukey UInt64,
                       variant String, first_day Int64, multiple UInt8, days Array(Int64),
                       totals Array(Array(Float64)), unit_values Array(Float64),
                       quantile_buckets Array(Array(Int32)), quantile_counts Array(Array(UInt64))";
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.unit_rollups ({columns})
             ENGINE = ReplacingMergeTree(version) PARTITION BY (experiment_id, generation)
             ORDER BY (experiment_id, generation, ukey)"
        ))
        .await?;
        // A tick's new rows, and the rows the stored computation summed for the same units
        // (read once from `unit_rollups`, then by each sum from this small table), by the
        // tick's version.
        for staging in &UNIT_TABLES[1..] {
            self.execute(&format!(
                "CREATE TABLE IF NOT EXISTS {db}.{staging} ({columns})
                 ENGINE = MergeTree PARTITION BY intDiv(version, {STAGING_PARTITION_MS})
                 ORDER BY (experiment_id, version, ukey)"
            ))
            .await?;
        }
        // The units a tick recomputes, found once (a scan of the load times) and read as a
        // small set by each of its statements.
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.unit_rollups_touched
               (experiment_id String, version Int64, unit_key String)
             ENGINE = MergeTree PARTITION BY intDiv(version, {STAGING_PARTITION_MS})
             ORDER BY (experiment_id, version, unit_key)"
        ))
        .await
    }

    /// The rows of the experiment's clean units that have events of the plan's metrics (all
    /// of them, or those `touched` selects): `ukey, variant, first_day, multiple`, then
    /// - `days` and `totals`, which hold, per total of [`Self::unit_totals`], the unit's
    ///   running total at the end of each day of `days`, from which its values as of each
    ///   day's end, and so its changes of the metrics' sums on that day, follow
    ///   ([`Self::contributions`]);
    /// - `unit_values`, the unit's values over all its events of the plan's capped metrics:
    ///   the k-th capped metric's x, y, c and d at 4·k.. ([`capped_metrics`]), from which
    ///   their sums follow once their cap is known (empty if the plan has none; they follow
    ///   from the totals too, but a percentile cap's passes over every unit read these
    ///   faster: 7–9 s against 10–12 s over 10 M synthetic units, docs/benchmarks.md);
    /// - `quantile_buckets` and `quantile_counts`, the i-th metric's events after the
    ///   exposure per value bucket, sorted by bucket, if it is a quantile metric (else
    ///   empty), from which the variants' histograms and quantiles follow.
    ///
    /// Per unit and day it adds up the day's events of each metric (events before the
    /// exposure day count on the exposure day), sorted by day into running totals. The
    /// rows keep the totals, not the changes of the sums that follow from them: a unit's
    /// day holds one number per total instead of 14 per metric, so a tick reads a third of
    /// the bytes for the previous rows, and a full computation writes far fewer
    /// (docs/benchmarks.md, "Unit rows keep running totals"). The
    /// units' arrays are built by a grouping, which spills to disk, never on the right of a
    /// join, which must fit in memory. Each total's days are gathered as an array of its own
    /// and sorted by the days' array (a unit has one row per day, so the order is
    /// unambiguous): arrays of numbers, where `groupArray` of a tuple per day keeps each in
    /// a generic, slower state (docs/benchmarks.md, "Units keyed by 64 bits"). (The lambdas
    /// capture nothing but their parameters: 18.16 loses captured columns of a subquery.)
    ///
    /// Of those units, it computes the `pass`-th share of `passes` by unit key (all for one
    /// pass): the statement holds about 2 KB per unit, so a full computation of many units
    /// runs in several passes, each reading every event again (docs/benchmarks.md, "in
    /// passes by unit hash").
    fn changed_units(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        (touched, (pass, passes)): (&str, (u64, u64)),
        history: &History,
    ) -> String {
        let share = if passes > 1 {
            format!(" AND {} % {passes} = {pass}", Self::unit_expression(plan))
        } else {
            String::new()
        };
        let exposed = self.exposed(experiment_id, plan, None, &format!("{touched}{share}"));
        let mut per_day = Vec::new();
        let mut gathered = Vec::new();
        let mut running = Vec::new();
        let mut histograms = Vec::new();
        let (mut buckets, mut counts) = (Vec::new(), Vec::new());
        for (i, metric) in plan.metrics.iter().enumerate() {
            if metric.quantile.is_some() {
                // Per unit and day, the events' buckets gathered as a plain array and counted
                // once (`arrayReduce` of `sumMap`), then the days' counts added up per unit:
                // a `sumMapIf` per unit and day and a `sumMap` per unit kept a map in each of
                // tens of millions of groups (the units' rows took 6–10 % longer over 100 M
                // events, docs/benchmarks.md). Counting per day keeps a unit's arrays to its
                // buckets; only a day's array grows with its events, within `groupArray`'s
                // 16.7 M elements unless one unit sends more events of a metric in a day
                // (about 200 a second all day long).
                per_day.push(format!(
                    "groupArrayIf({bucket}, event_type = {counted} AND events = 1 AND ts_ms >= first_ms{window}) AS hb{i},
                     arrayReduce('sumMap', [hb{i}], [arrayMap(b -> toUInt64(1), hb{i})]) AS h{i}",
                    bucket = Self::value_bucket("value"),
                    counted = Self::counted(metric),
                    window = Self::in_window(metric),
                ));
                histograms.push(format!(
                    "arrayReduce('sumMap', [groupArrayArray(h{i}.1)], [groupArrayArray(h{i}.2)]) AS hs{i}"
                ));
                buckets.push(format!("hs{i}.1"));
                counts.push(format!("hs{i}.2"));
            } else {
                buckets.push("emptyArrayInt32()".into());
                counts.push("emptyArrayUInt64()".into());
            }
        }
        let totals = Self::unit_totals(plan);
        // Per total, the name of the array of its running totals. Totals of the same SQL
        // (a mean's, a ratio's and a capped mean's sum of one event type's values) are summed,
        // gathered and sorted once, and a constant zero (a quantile metric's x) is not
        // gathered at all: over 10 M units of five metrics, a pass took 36 s instead of 52 s
        // with its eleven totals gathered one by one (docs/benchmarks.md).
        let mut running_of: Vec<String> = Vec::new();
        let mut first_of_sql: BTreeMap<&str, String> = BTreeMap::new();
        for total in &totals {
            if let Some(first) = first_of_sql.get(total.sql.as_str()) {
                running.push(first.clone());
                running_of.push(first.clone());
                continue;
            }
            let q = format!("{}{}t", total.name, total.metric);
            if total.sql == "0" {
                running.push(format!("arrayMap(d -> 0., unsorted_days) AS {q}s"));
            } else {
                per_day.push(format!("toFloat64({}) AS {q}", total.sql));
                gathered.push(format!("groupArray({q}) AS {q}a"));
                running.push(format!(
                    "arrayCumSum(arraySort((v, d) -> d, {q}a, unsorted_days)) AS {q}s"
                ));
            }
            first_of_sql.insert(&total.sql, format!("{q}s"));
            running_of.push(format!("{q}s"));
        }
        // Only capped metrics read the values, so only theirs are kept (none for a plan
        // without one): a percentile cap's passes merge every unit's newest row, and they
        // took about half the time over 10 M synthetic units with one capped metric's 4
        // values as with all five metrics' 20 (docs/benchmarks.md).
        let values: Vec<String> = capped_metrics(plan)
            .flat_map(|i| ["x", "y", "c", "d"].map(|name| (i, name)))
            .map(|(i, name)| {
                totals
                    .iter()
                    .zip(&running_of)
                    .find(|(t, _)| t.metric == i && t.name == name)
                    .map_or_else(|| "0.".into(), |(t, ts)| (t.value)(&format!("{ts}[-1]")))
            })
            .collect();
        let unit_values = if values.is_empty() {
            "emptyArrayFloat64()".into()
        } else {
            format!("[{}]", values.join(", "))
        };
        let histograms: String = histograms.iter().map(|h| format!(", {h}")).collect();
        format!(
            "SELECT ukey, any(unit_arm) AS variant, intDiv(any(first), {DAY_MS}) AS first_day, toUInt8(0) AS multiple,
                    groupArray(day) AS unsorted_days{gathered},
                    arraySort(unsorted_days) AS days, [{running}] AS totals,
                    {unit_values} AS unit_values{histograms},
                    [{buckets}] AS quantile_buckets, [{counts}] AS quantile_counts
             FROM (
               SELECT ukey, any(arm) AS unit_arm, any(first_ms) AS first,
                      greatest(intDiv(ts_ms, {DAY_MS}), intDiv(first_ms, {DAY_MS})) AS day,
                      {per_day}
               FROM ({events}) AS events
               ALL INNER JOIN (SELECT ukey, variant AS arm, first_ms FROM ({exposed}) AS all_exposed WHERE multiple = 0) AS exposed USING ukey
               GROUP BY ukey, day
             ) AS unit_days GROUP BY ukey",
            gathered = gathered.iter().map(|g| format!(", {g}")).collect::<String>(),
            running = running.join(",\n"),
            buckets = buckets.join(", "),
            counts = counts.join(", "),
            per_day = per_day.join(",\n"),
            events = self.metric_events_with_history(plan, (touched, &share), history),
        )
    }

    /// The totals a unit's row keeps (`totals`, in this order): per metric of the plan, in
    /// order, those of its values x, y, c and d that follow from a total: x always (a
    /// constant zero for a quantile metric, so that every metric has a total), y, c and d
    /// as its kind defines them.
    fn unit_totals(plan: &ExperimentPlan) -> Vec<UnitTotal> {
        plan.metrics
            .iter()
            .enumerate()
            .flat_map(|(i, metric)| {
                Self::quantities(metric)
                    .into_iter()
                    .filter_map(move |(name, quantity)| {
                        let (sql, value) = quantity?;
                        Some(UnitTotal {
                            metric: i,
                            name,
                            sql,
                            value,
                        })
                    })
            })
            .collect()
    }

    /// The SQL of a unit row's changes of the metrics' sums per day of its `days`, from its
    /// `totals`: per day, the plan's i-th metric's `Sums::COLUMNS` at 14·i.., each the
    /// product of the unit's values as of the day's end less that as of the day before.
    /// (The lambda captures nothing but its parameters, as in [`Self::changed_units`].)
    fn contributions(plan: &ExperimentPlan) -> String {
        let totals = Self::unit_totals(plan);
        let (mut parameters, mut arrays, mut body) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..plan.metrics.len() {
            let mut value_at = BTreeMap::new();
            for (k, total) in totals.iter().enumerate().filter(|(_, t)| t.metric == i) {
                let k = k + 1;
                for (end, array) in [
                    ('1', format!("totals[{k}]")),
                    (
                        '0',
                        format!("arrayPopBack(arrayPushFront(totals[{k}], 0.))"),
                    ),
                ] {
                    let parameter = format!("p{}{i}{end}", total.name);
                    value_at.insert((total.name, end), (total.value)(&parameter));
                    parameters.push(parameter);
                    arrays.push(array);
                }
            }
            // A unit's change in each product from before the day to its end.
            let at = |factors: &str, end: char| {
                Self::product(factors, |v| {
                    let name = match v {
                        'x' => "x",
                        'y' => "y",
                        'c' => "c",
                        _ => "d",
                    };
                    value_at
                        .get(&(name, end))
                        .cloned()
                        .unwrap_or_else(|| "0.0".into())
                })
            };
            body.extend(
                Sums::PRODUCTS
                    .iter()
                    .map(|factors| format!("({}) - ({})", at(factors, '1'), at(factors, '0'))),
            );
        }
        format!(
            "arrayMap(({}) -> [{}], {})",
            parameters.join(", "),
            body.join(",\n"),
            arrays.join(", ")
        )
    }

    /// The rows of the experiment's other units (all, or those `touched` selects), whose
    /// arrays stay empty: every unit but those `written` (the SQL of a set of units) holds.
    fn unchanged_units(
        &self,
        experiment_id: &str,
        plan: &ExperimentPlan,
        touched: &str,
        written: Option<&str>,
    ) -> String {
        let exposed = self.exposed(experiment_id, plan, None, touched);
        let not_written = written.map_or_else(String::new, |written| {
            format!(" WHERE ukey NOT IN ({written})")
        });
        format!(
            "SELECT ukey, variant, intDiv(first_ms, {DAY_MS}) AS first_day, multiple
             FROM ({exposed}) AS exposed{not_written}"
        )
    }

    /// Records, as those of the tick at `version`, the units with exposures to the
    /// experiment or events of the plan's metrics loaded at or after `since_ms`; returns the
    /// condition (to append to a `WHERE` on raw events) that an event is of one of them.
    async fn touch_since(
        &self,
        experiment_id: &str,
        plan: &ExperimentPlan,
        version: i64,
        since_ms: i64,
    ) -> Result<String, WarehouseError> {
        let (db, id) = (&self.database, literal(experiment_id));
        let mut loaded = format!(
            "SELECT unit_key FROM {db}.exposures WHERE experiment_id = {id} AND loaded_ms >= {since_ms}"
        );
        if !plan.metrics.is_empty() {
            let event_types = literal_list(plan.metrics.iter().flat_map(|m| {
                std::iter::once(m.event_type.as_str()).chain(m.denominator.as_deref())
            }));
            loaded.push_str(&format!(
                " UNION ALL SELECT unit_key FROM {db}.metric_events WHERE event_type IN ({event_types}) AND loaded_ms >= {since_ms}"
            ));
        }
        self.execute(&format!(
            "INSERT INTO {db}.unit_rollups_touched (experiment_id, version, unit_key)
             SELECT {id}, {version}, unit_key FROM ({loaded}) AS loaded GROUP BY unit_key"
        ))
        .await?;
        Ok(format!(
            " AND unit_key IN (SELECT unit_key FROM {db}.unit_rollups_touched WHERE experiment_id = {id} AND version = {version})"
        ))
    }

    /// Writes the rows of the units `touched` selects (all, if empty) into `table`, in two
    /// inserts: units with changes, then the others, which the first did not write, so that
    /// no unit has two rows. A unit whose events or exposures are loaded while this runs
    /// may be written as it was before them (or not at all, when they are its first); being
    /// loaded after the computation started, it is recomputed by the next tick. Metric
    /// events are read as `history` says: those it counts from it, the others raw. Units
    /// with changes are written in `passes` shares by unit key ([`Self::changed_units`]).
    async fn write_units(
        &self,
        table: &str,
        (experiment_id, plan): (&str, &ExperimentPlan),
        (generation, version): (i64, i64),
        (touched, passes): (&str, u64),
        history: &History,
    ) -> Result<(), WarehouseError> {
        let insert = |columns: &str, rows: String| {
            format!(
                "INSERT INTO {db}.{table} ({columns})
                 SELECT {id}, {generation}, {version}, {columns_selected} FROM ({rows}) AS rows",
                db = self.database,
                id = literal(experiment_id),
                columns_selected = unit_columns(columns),
            )
        };
        let written = format!(
            "SELECT ukey FROM {db}.{table} WHERE experiment_id = {id} AND generation = {generation} AND version = {version}",
            db = self.database,
            id = literal(experiment_id),
        );
        let written = if plan.metrics.is_empty() {
            None
        } else {
            for pass in 0..passes {
                let units = (touched, (pass, passes));
                let changed = self.changed_units((experiment_id, plan), units, history);
                self.execute(&insert(COLUMNS, changed)).await?;
            }
            Some(written.as_str())
        };
        // Units without changes: the arrays keep their defaults.
        let columns = COLUMNS.trim_end_matches(ARRAY_COLUMNS);
        let unchanged = self.unchanged_units(experiment_id, plan, touched, written);
        self.execute(&insert(columns, unchanged)).await
    }

    /// Computes every unit's row anew from the raw events and the events `history` counts,
    /// as generation `generation`, and the experiment's rollups from them: the full
    /// computation, which also repairs anything the incremental ones could have missed. It
    /// takes a pass per `UNITS_PER_PASS` units of the experiment, up to `MAX_PASSES`.
    pub async fn rebuild(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        generation: i64,
        history: &History,
    ) -> Result<Computation, WarehouseError> {
        #[derive(Deserialize)]
        struct Units {
            n: u64,
        }
        let units: Vec<Units> = self
            .rows(&format!(
                "SELECT toUInt64(uniq({})) AS n FROM {}.exposures WHERE experiment_id = {}",
                Self::unit_expression(plan),
                self.database,
                literal(experiment_id)
            ))
            .await?;
        let passes = units.first().map_or(0, |u| u.n).div_ceil(UNITS_PER_PASS);
        let passes = passes.clamp(1, MAX_PASSES);
        self.rebuild_in_passes((experiment_id, plan), generation, history, passes)
            .await
    }

    /// [`Self::rebuild`] in `passes` passes, whatever the experiment's size (the results
    /// are the same for any number).
    pub async fn rebuild_in_passes(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        generation: i64,
        history: &History,
        passes: u64,
    ) -> Result<Computation, WarehouseError> {
        // An earlier attempt at this generation that failed after writing rows (a retry
        // while the clock stands behind the stored computation draws the same one) would
        // otherwise have its units summed twice: only the units without events are
        // written once per unit, checked against those already written.
        self.drop_generation(experiment_id, generation).await?;
        self.write_units(
            "unit_rollups",
            (experiment_id, plan),
            (generation, generation),
            ("", passes),
            history,
        )
        .await?;
        let rows = format!(
            "SELECT variant, first_day, multiple, days, totals, quantile_buckets, quantile_counts
             FROM {}.unit_rollups WHERE experiment_id = {} AND generation = {generation}",
            self.database,
            literal(experiment_id)
        );
        let (exposures, metrics) = self.sum_units(plan, &rows, None).await?;
        let quantile_sums = self
            .sum_quantile_buckets(plan, &rows, None, QuantileSums::new())
            .await?;
        let mut computation = Computation {
            rollups: Rollups {
                exposures: exposures.into_iter().map(exposure_rollup).collect(),
                metrics: metric_rollups(plan, metrics, &BTreeMap::new()),
                quantiles: Self::quantile_rollups(plan, &quantile_sums),
                ..Rollups::default()
            },
            quantile_sums,
        };
        computation.rollups.capped = self
            .capped_of_units((experiment_id, plan), generation, Caps::All)
            .await?;
        Ok(computation)
    }

    /// Moves `stored` forward to `version`: recomputes the rows of the units with events
    /// loaded at or after `touched_since_ms` (into the staging table), and adds the
    /// difference they make; [`Self::commit_units`] completes it. `None` when
    /// the stored computation cannot be moved forward (it predates unit rows, or a tick
    /// died after writing rows it did not store, or staged rows at `version`): the
    /// experiment needs [`Self::rebuild`].
    pub async fn advance(
        &self,
        experiment_id: &str,
        plan: &ExperimentPlan,
        stored: &StoredRollups,
        version: i64,
        touched_since_ms: i64,
    ) -> Result<Option<Computation>, WarehouseError> {
        let (db, id) = (&self.database, literal(experiment_id));
        let (generation, base) = (stored.generation, stored.computed_ms);
        if generation == 0 || version <= base {
            return Ok(None);
        }
        // Rows newer than the stored computation, or a tick's staged rows already at this
        // version (one that died before its copy, retried while the clock stood behind the
        // stored computation's time): the sums would count them too.
        let newer: Vec<Count> = self
            .rows(&format!(
                "SELECT toUInt64(count()) AS n FROM (
                   SELECT ukey FROM {db}.unit_rollups
                   WHERE experiment_id = {id} AND generation = {generation} AND version > {base}
                   UNION ALL SELECT ukey FROM {db}.unit_rollups_staging
                   WHERE experiment_id = {id} AND version = {version}
                   UNION ALL SELECT ukey FROM {db}.unit_rollups_previous
                   WHERE experiment_id = {id} AND version = {version})"
            ))
            .await?;
        if newer.first().is_some_and(|c| c.n > 0) {
            return Ok(None);
        }
        let touched = self
            .touch_since(experiment_id, plan, version, touched_since_ms)
            .await?;
        let history = self.history().await?;
        self.write_units(
            "unit_rollups_staging",
            (experiment_id, plan),
            (generation, version),
            (&touched, 1),
            &history,
        )
        .await?;
        let staged = format!(
            "SELECT ukey, variant, first_day, multiple, days, totals, unit_values, quantile_buckets,
                    quantile_counts
             FROM {db}.unit_rollups_staging WHERE experiment_id = {id} AND version = {version}"
        );
        // The rows the stored computation summed for the same units. `unit_rollups` holds
        // no row newer than it (checked above), so each unit's newest row is that one.
        // Finding them scans every unit's key, so they are found once and kept for the
        // sums that follow: the exposures', the metrics', each quantile metric's and the
        // fixed caps'. They are picked by their unit and version, found from the keys and
        // versions alone, rather than by an `argMax` of each column over the units' rows,
        // which copies every row's arrays: 0.8 s against 3.8 s for 333 K of 10 M units
        // (docs/benchmarks.md, "Previous rows read once"). One row per unit is kept
        // should a version hold two.
        self.execute(&format!(
            "INSERT INTO {db}.unit_rollups_previous ({COLUMNS})
             SELECT {id}, {generation}, {version}, {kept}
             FROM {db}.unit_rollups
             WHERE experiment_id = {id} AND generation = {generation}
               AND (ukey, version) IN (
                 SELECT ukey, max(version) FROM {db}.unit_rollups
                 WHERE experiment_id = {id} AND generation = {generation}
                   AND ukey IN (SELECT ukey FROM ({staged}) AS staged)
                 GROUP BY ukey)
             LIMIT 1 BY ukey",
            kept = unit_columns(COLUMNS),
        ))
        .await?;
        let previous = format!(
            "SELECT variant, first_day, multiple, days, totals, unit_values, quantile_buckets,
                    quantile_counts
             FROM {db}.unit_rollups_previous WHERE experiment_id = {id} AND version = {version}"
        );
        let (exposures, metrics) = self.sum_units(plan, &staged, Some(&previous)).await?;
        let quantile_sums = self
            .sum_quantile_buckets(
                plan,
                &staged,
                Some(&previous),
                stored.computation.quantile_sums.clone(),
            )
            .await?;
        let capped = self
            .fixed_caps_moved(plan, (&staged, &previous), &stored.computation.rollups)
            .await?;
        let stored = &stored.computation.rollups;
        let mut units: BTreeMap<(i64, String), (i64, i64)> = stored
            .exposures
            .iter()
            .map(|r| ((r.day, r.variant.clone()), (r.units, r.multiple)))
            .collect();
        for r in exposures {
            let entry = units.entry((r.day, r.variant)).or_default();
            entry.0 += r.units;
            entry.1 += r.multiples;
        }
        let previous_metrics = stored
            .metrics
            .iter()
            .map(|r| ((r.day, r.variant.clone(), r.metric.clone()), r.sums))
            .collect();
        Ok(Some(Computation {
            rollups: Rollups {
                exposures: units
                    .into_iter()
                    .filter(|(_, (units, multiple))| *units != 0 || *multiple != 0)
                    .map(|((day, variant), (units, multiple))| ExposureRollup {
                        variant,
                        day,
                        units,
                        multiple,
                    })
                    .collect(),
                metrics: metric_rollups(plan, metrics, &previous_metrics),
                quantiles: Self::quantile_rollups(plan, &quantile_sums),
                capped,
            },
            quantile_sums,
        }))
    }

    /// The rollups of the metrics with a fixed cap in `stored`, moved by the difference
    /// between the `staged` rows of a tick's units and their `previous` ones.
    async fn fixed_caps_moved(
        &self,
        plan: &ExperimentPlan,
        (staged, previous): (&str, &str),
        stored: &Rollups,
    ) -> Result<Vec<CappedRollup>, WarehouseError> {
        let fixed = |key: &str| {
            plan.metrics
                .iter()
                .any(|m| m.key == key && m.cap.as_ref().is_some_and(|c| c.value.is_some()))
        };
        if !plan.metrics.iter().any(|m| fixed(&m.key)) {
            return Ok(Vec::new());
        }
        let mut moved: BTreeMap<(String, String), CappedSums> = stored
            .capped
            .iter()
            .filter(|r| fixed(&r.metric))
            .map(|r| ((r.metric.clone(), r.variant.clone()), CappedSums::of(r)))
            .collect();
        let clean = |rows: &str| {
            format!("SELECT variant, unit_values FROM ({rows}) AS unit_rows WHERE multiple = 0")
        };
        let changes = format!(
            "{} UNION ALL {}",
            capped_values(plan, &clean(staged), 1),
            capped_values(plan, &clean(previous), -1)
        );
        for change in self.capped_sums(plan, &changes, Caps::Fixed).await? {
            let key = (change.metric.clone(), change.variant.clone());
            match moved.get_mut(&key) {
                Some(sums) => sums.add(&change),
                None => {
                    moved.insert(key, change);
                }
            }
        }
        let mut capped: Vec<CappedRollup> =
            moved.into_values().filter_map(CappedSums::rollup).collect();
        sort_capped(plan, &mut capped);
        Ok(capped)
    }

    /// Completes what [`Self::advance`] staged at `version` in `generation`: copies the
    /// staged rows into `unit_rollups`, where they become the units' current rows (the
    /// step after which another tick from the same stored computation would go wrong, so
    /// the caller takes it only while it holds the ticks), then adds to `computation` the
    /// rollups that follow from every unit's row (metrics capped at a percentile).
    pub async fn commit_units(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        (generation, version): (i64, i64),
        computation: &mut Computation,
    ) -> Result<(), WarehouseError> {
        let (db, id) = (&self.database, literal(experiment_id));
        self.execute(&format!(
            "INSERT INTO {db}.unit_rollups ({COLUMNS}) SELECT {COLUMNS} FROM {db}.unit_rollups_staging
             WHERE experiment_id = {id} AND version = {version}"
        ))
        .await?;
        let percentile = self.capped_of_units((experiment_id, plan), generation, Caps::Percentile);
        let percentile = percentile.await?;
        let capped = &mut computation.rollups.capped;
        capped.extend(percentile);
        sort_capped(plan, capped);
        Ok(())
    }

    /// Per variant and day, the units of `rows` by the day of their first exposure, and
    /// their metrics' changes; less those of `minus` (both the SQL of unit rows with
    /// `variant`, `first_day`, `multiple`, `days` and `totals`, from which the changes are
    /// computed here).
    async fn sum_units(
        &self,
        plan: &ExperimentPlan,
        rows: &str,
        minus: Option<&str>,
    ) -> Result<(Vec<ExposureRollupRow>, Vec<DayRow>), WarehouseError> {
        let units = |rows: &str, sign: &str| {
            format!(
                "SELECT variant, first_day AS day, {sign}toInt64(multiple = 0) AS clean,
                        {sign}toInt64(multiple != 0) AS seen_twice FROM ({rows}) AS unit_rows"
            )
        };
        let mut counted = units(rows, "");
        if let Some(minus) = minus {
            counted.push_str(&format!(" UNION ALL {}", units(minus, "-")));
        }
        let exposures: Vec<ExposureRollupRow> = self
            .rows(&format!(
                "SELECT variant, day, toInt64(sum(clean)) AS units, toInt64(sum(seen_twice)) AS multiples
                 FROM ({counted}) AS counted GROUP BY variant, day ORDER BY day, variant"
            ))
            .await?;
        if plan.metrics.is_empty() {
            return Ok((exposures, Vec::new()));
        }
        let contributions = Self::contributions(plan);
        let mut changes =
            format!("SELECT variant, days, {contributions} AS c FROM ({rows}) AS added");
        if let Some(minus) = minus {
            changes.push_str(&format!(
                " UNION ALL SELECT variant, days, arrayMap(v -> arrayMap(x -> -x, v), {contributions}) AS negated
                  FROM ({minus}) AS removed"
            ));
        }
        let metrics: Vec<DayRow> = self
            .rows(&format!(
                "SELECT variant, day, sumForEach(contribution) AS sums
                 FROM ({changes}) AS changes ARRAY JOIN days AS day, c AS contribution
                 GROUP BY variant, day ORDER BY day, variant"
            ))
            .await?;
        Ok((exposures, metrics))
    }

    /// Per quantile metric, variant and value bucket, `start` plus the bucket sums
    /// (`abx_stats::quantile::BucketSums`) of the units of `rows`, less those of `minus`
    /// (both the SQL of unit rows with `variant`, `quantile_buckets` and `quantile_counts`).
    /// Only clean units have buckets. A unit's sums follow from its buckets alone, with the
    /// same arithmetic as `BucketSums::of_unit` (the lambda captures nothing, see
    /// [`Self::changed_units`]); buckets whose sums come to nothing are left out.
    async fn sum_quantile_buckets(
        &self,
        plan: &ExperimentPlan,
        rows: &str,
        minus: Option<&str>,
        mut start: QuantileSums,
    ) -> Result<QuantileSums, WarehouseError> {
        #[derive(Deserialize)]
        struct BucketRow {
            variant: String,
            bucket: i32,
            events: i64,
            units: i64,
            squares: i64,
            crossed: i64,
        }
        for (i, metric) in plan.metrics.iter().enumerate() {
            if metric.quantile.is_none() {
                continue;
            }
            let k = i + 1;
            let side = |rows: &str, direction: i64| {
                format!(
                    "SELECT variant, toInt64({direction}) AS direction, quantile_buckets[{k}] AS buckets,
                            quantile_counts[{k}] AS counts
                     FROM ({rows}) AS unit_rows"
                )
            };
            let mut sides = side(rows, 1);
            if let Some(minus) = minus {
                sides.push_str(&format!(" UNION ALL {}", side(minus, -1)));
            }
            let changes: Vec<BucketRow> = self
                .rows(&format!(
                    "SELECT variant, bucket, sum(direction * toInt64(w)) AS events,
                            sum(direction * toInt64(j = 1)) AS units, sum(direction * s2) AS squares,
                            sum(direction * toInt64(w) * n) AS crossed
                     FROM (SELECT variant, direction, buckets, counts, toInt64(arraySum(counts)) AS n,
                                  arrayMap((below, here) -> toInt64(below * below) - toInt64((below - here) * (below - here)),
                                           arrayCumSum(counts), counts) AS s2s
                           FROM ({sides}) AS sides)
                     ARRAY JOIN buckets AS bucket, counts AS w, s2s AS s2, arrayEnumerate(buckets) AS j
                     GROUP BY variant, bucket"
                ))
                .await?;
            for r in changes {
                let change = BucketSums {
                    events: r.events,
                    units: r.units,
                    squares: r.squares,
                    cross: r.crossed,
                };
                start
                    .entry((metric.key.clone(), r.variant, r.bucket))
                    .or_default()
                    .add(&change, 1);
            }
        }
        start.retain(|_, sums| *sums != BucketSums::default());
        Ok(start)
    }

    /// The rollups of the capped metrics that `caps` selects, from every clean unit's newest
    /// row in `generation` (its values), not from the raw events: a pass over the
    /// experiment's units, not over its events. A percentile cap depends on every unit, so a
    /// tick makes this pass for those; fixed caps add up over units and move by differences
    /// instead ([`Self::fixed_caps_moved`]). The caller holds the generation's newest rows
    /// still: a full computation's own, or a tick's just committed (ticks of an experiment
    /// take turns).
    async fn capped_of_units(
        &self,
        (experiment_id, plan): (&str, &ExperimentPlan),
        generation: i64,
        caps: Caps,
    ) -> Result<Vec<CappedRollup>, WarehouseError> {
        let wanted = |cap: &crate::model::catalog::Cap| match caps {
            Caps::Fixed => cap.value.is_some(),
            Caps::Percentile => cap.value.is_none() && cap.percentile.is_some(),
            Caps::All => true,
        };
        if !plan
            .metrics
            .iter()
            .any(|m| m.cap.as_ref().is_some_and(wanted))
        {
            return Ok(Vec::new());
        }
        // Each clean unit's newest row. `FINAL` keeps it by merging the sorted parts as it
        // reads them, where grouping by unit with `argMax` of the values (an array, which
        // 18.16 compares and copies as a generic value) took 27–35 s over 10 M units
        // against 5–9 s on the same machine. Clean units are chosen outside the subquery,
        // after the merge, so a unit whose newest row is not clean is left out, not read as
        // an older clean one.
        let units = format!(
            "SELECT variant, unit_values FROM (
               SELECT variant, multiple, unit_values FROM {db}.unit_rollups FINAL
               WHERE experiment_id = {id} AND generation = {generation}) AS newest
             WHERE multiple = 0",
            db = self.database,
            id = literal(experiment_id),
        );
        let per_unit = capped_values(plan, &units, 1);
        let sums = self.capped_sums(plan, &per_unit, caps).await?;
        Ok(sums.into_iter().filter_map(CappedSums::rollup).collect())
    }

    /// Drops staged rows, previous rows and touched units older than [`STAGING_KEPT_MS`]
    /// before `now_ms`, by whole partitions.
    pub async fn drop_old_staging(&self, now_ms: i64) -> Result<(), WarehouseError> {
        let oldest_kept = (now_ms - STAGING_KEPT_MS) / STAGING_PARTITION_MS;
        let tables = [
            "unit_rollups_staging",
            "unit_rollups_previous",
            "unit_rollups_touched",
        ];
        for (table, hour) in self.numbered_partitions(&tables).await? {
            if hour < oldest_kept {
                self.drop_partition(&table, hour).await?;
            }
        }
        Ok(())
    }

    /// Drops the unit rows of one generation of an experiment: those of a computation that
    /// was not stored.
    pub async fn drop_generation(
        &self,
        experiment_id: &str,
        generation: i64,
    ) -> Result<(), WarehouseError> {
        self.execute(&format!(
            "ALTER TABLE {}.unit_rollups DROP PARTITION ({}, {generation})",
            self.database,
            literal(experiment_id)
        ))
        .await
    }

    /// Drops an experiment's unit rows of generations older than `generation`, the time of
    /// the full computation being stored (those of earlier full computations, or of one that
    /// died before it was stored, or of a computation beside the ticks that started more
    /// than `BESIDE_TICKS_KEPT_MS` before or after it): each experiment's generation is a
    /// partition of its own, dropped whole. Newer ones may be a computation still under way,
    /// and so may one beside the ticks that started less long before.
    pub async fn drop_older_generations(
        &self,
        experiment_id: &str,
        generation: i64,
    ) -> Result<(), WarehouseError> {
        #[derive(Deserialize)]
        struct Generation {
            generation: i64,
        }
        let (db, id) = (&self.database, literal(experiment_id));
        let generations: Vec<Generation> = self
            .rows(&format!(
                "SELECT DISTINCT generation FROM {db}.unit_rollups WHERE experiment_id = {id}"
            ))
            .await?;
        // Earlier versions drew these generations at random: such a start is almost surely
        // far from now, and the generation goes.
        let kept_beside_ticks = |g: i64| {
            started_beside_ticks(g).is_some_and(|ms| {
                ms > generation - BESIDE_TICKS_KEPT_MS && ms <= generation + BESIDE_TICKS_KEPT_MS
            })
        };
        let older = generations
            .iter()
            .filter(|g| g.generation < generation && !kept_beside_ticks(g.generation));
        for g in older {
            self.execute(&format!(
                "ALTER TABLE {db}.unit_rollups DROP PARTITION ({id}, {})",
                g.generation
            ))
            .await?;
        }
        Ok(())
    }
}

/// How long the unit rows of a computation beside the ticks are left to it: one whose
/// request died before dropping them is dropped by a full computation of its experiment
/// this long after it started.
const BESIDE_TICKS_KEPT_MS: i64 = 86_400_000;
/// Generations beside the ticks hold their start times to the millisecond times this, plus
/// a random number below it, so that two requests that start together write apart: two in
/// one millisecond share a generation once in a million, where 1,024 salts made it once in
/// a thousand (each then summed the other's rows too). Starts stay representable until 2248.
const BESIDE_TICKS_SALTS: i64 = 1 << 20;

/// The generation of the unit rows of a computation made beside the ticks (a request's)
/// that starts at `started_ms`: negative, so that no tick takes it for a stored
/// computation's, and naming its start, so that a full computation stored meanwhile
/// ([`ClickHouse::drop_older_generations`]) leaves it to its request.
pub fn generation_beside_ticks(started_ms: i64) -> i64 {
    let salt = i64::from(uuid::Uuid::new_v4().as_u64_pair().0 as u32) % BESIDE_TICKS_SALTS;
    let started = started_ms.clamp(0, i64::MAX / BESIDE_TICKS_SALTS - 1);
    -(started * BESIDE_TICKS_SALTS + salt) - 1
}

/// When the computation beside the ticks of `generation` started, if it is one.
fn started_beside_ticks(generation: i64) -> Option<i64> {
    (generation < 0).then(|| (-(generation + 1)) / BESIDE_TICKS_SALTS)
}

fn exposure_rollup(r: ExposureRollupRow) -> ExposureRollup {
    ExposureRollup {
        variant: r.variant,
        day: r.day,
        units: r.units,
        multiple: r.multiples,
    }
}

/// The metric rollups of `previous` plus the per-day changes `rows` (each holding every
/// metric's sums, 14 per metric in plan order), ordered by day, variant and metric; a day on
/// which a metric's sums add up to nothing is left out.
fn metric_rollups(
    plan: &ExperimentPlan,
    rows: Vec<DayRow>,
    previous: &BTreeMap<(i64, String, String), Sums>,
) -> Vec<MetricRollup> {
    let mut sums = previous.clone();
    let width = Sums::COLUMNS.len();
    for r in rows {
        for (i, metric) in plan.metrics.iter().enumerate() {
            let Some(values) = r.sums.get(i * width..(i + 1) * width) else {
                continue;
            };
            let change = Sums::from_values(std::array::from_fn(|k| values[k]));
            sums.entry((r.day, r.variant.clone(), metric.key.clone()))
                .or_default()
                .add(&change);
        }
    }
    sums.into_iter()
        .filter(|(_, sums)| *sums != Sums::default())
        .map(|((day, variant, metric), sums)| MetricRollup {
            variant,
            metric,
            day,
            sums,
        })
        .collect()
}

/// The places in the plan of its capped metrics, in order: a unit's `unit_values` hold the
/// x, y, c and d of the k-th of them at 4·k.. ([`ClickHouse::changed_units`]).
fn capped_metrics(plan: &ExperimentPlan) -> impl Iterator<Item = usize> + '_ {
    plan.metrics
        .iter()
        .enumerate()
        .filter(|(_, metric)| metric.cap.is_some())
        .map(|(i, _)| i)
}

/// The SQL of the units of `clean` (clean units' `variant` and `unit_values`) as
/// [`ClickHouse::capped_sums`] reads them: each counted `direction` times, with the x, y, c
/// and d of the plan's i-th metric, if it is capped, as `x{i}`, `y{i}`, `c{i}` and `d{i}`.
fn capped_values(plan: &ExperimentPlan, clean: &str, direction: i64) -> String {
    let values: Vec<String> = capped_metrics(plan)
        .enumerate()
        .flat_map(|(k, i)| {
            ["x", "y", "c", "d"]
                .into_iter()
                .enumerate()
                .map(move |(j, name)| format!("unit_values[{}] AS {name}{i}", 4 * k + j + 1))
        })
        .collect();
    format!(
        "SELECT variant, toInt64({direction}) AS direction, {} FROM ({clean}) AS clean_units",
        values.join(", ")
    )
}

/// Capped rollups in the order a full computation gives them: by the metric's place in the
/// plan, then by variant.
fn sort_capped(plan: &ExperimentPlan, capped: &mut [CappedRollup]) {
    let place = |key: &str| plan.metrics.iter().position(|m| m.key == key);
    capped.sort_by(|a, b| (place(&a.metric), &a.variant).cmp(&(place(&b.metric), &b.variant)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_beside_the_ticks_name_their_start() {
        for started in [0, 1, 1_800_000_000_000, i64::MAX / BESIDE_TICKS_SALTS - 1] {
            let generation = generation_beside_ticks(started);
            assert!(generation < 0, "{generation}");
            assert_eq!(started_beside_ticks(generation), Some(started));
        }
        // A stored computation's generation is its time, and a generation of 0 predates
        // unit rows: neither is beside the ticks.
        assert_eq!(started_beside_ticks(0), None);
        assert_eq!(started_beside_ticks(1_800_000_000_000), None);
        assert_eq!(started_beside_ticks(-1), Some(0));
        assert_eq!(
            started_beside_ticks(i64::MIN),
            Some(i64::MAX / BESIDE_TICKS_SALTS)
        );
    }
}
