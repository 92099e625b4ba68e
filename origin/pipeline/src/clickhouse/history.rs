//! Raw metric events past retention, kept as history. Before a month of raw metric events
//! is dropped, its events are summed per unit, event type and properties into
//! `metric_events_history`, so that units' pre-exposure covariates (every event of a unit
//! before its first exposure) keep counting them after the raw events are gone.
//!
//! Retention drops a month only once no experiment still collecting events started before
//! the month's end (`warehouse::tick`), so each of its events precedes every exposure of
//! every experiment whose rollups may still change: only pre-exposure totals read them,
//! and for those a sum of values and a count of events stand for the events themselves
//! (conversions count events, sums, means and ratios add values). A history row keeps its
//! events' latest time, so that it counts as before an exposure only if all of them were.
//! An experiment recomputed after months since its own exposures were summed (its plan
//! changed after it ended, or a repair) reads their rows as events at that time: its sums
//! and conversions keep those events, but a day's share moves to the row's time, and a
//! unit whose month's events straddle its exposure counts them all as after it; quantiles
//! leave out rows that stand for more than one event.
//!
//! Exactly once: a month's events are summed in batches, each covering the month's raw
//! rows loaded after the previous batch (`loaded_ms` above its `batch`) and up to its own
//! `batch`, their greatest `loaded_ms` before a cutoff that leaves loads still committing
//! to a later batch. Each attempt at a batch writes under an id of its own (`attempt`),
//! and counts only once its row is written in `metric_events_history_batches`, a one-row
//! insert and so atomic; from then on readers leave out the raw rows it covers. An attempt
//! that failed or was cut off from its client (the server stops it within
//! `max_execution_time`) writes rows that count for nothing, which the next summing drops.
//! One that failed after writing its batch leaves raw rows that readers take from the
//! history only, until the month is dropped, which happens only once a count finds none
//! of its raw rows uncovered, just before the drop. The ticks' lease is renewed strictly
//! before each step (`warehouse::drop_months_before`), so a stalled tick never counts a
//! batch that another tick may be summing too. Copies of an event are counted once within
//! a batch (`FINAL` keeps one before the load times are compared); a copy loaded after its
//! month was summed counts again.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{ClickHouse, PARTITION, PROPERTY_COLUMNS, WarehouseError, literal, literal_list};
use crate::plan::ExperimentPlan;

/// A batch of history written and not yet counted: (month, batch, attempt), or nothing to
/// count.
#[derive(Debug)]
pub struct MonthSum(Option<(u32, i64, i64)>);

/// The batches of history that count, as (month `YYYYMM`, batch, attempt): which rows of
/// the history a computation reads, and so which raw events it leaves out. A computation
/// made without the ticks' lease reads by the batches that counted when it started
/// (`warehouse::beside_ticks` says why that is enough).
#[derive(Debug, Default)]
pub struct History {
    batches: Vec<(u32, i64, i64)>,
}

impl History {
    /// The greatest load time a month's history covers, if any of it does.
    fn covered(&self, month: u32) -> Option<i64> {
        self.batches
            .iter()
            .filter(|(m, ..)| *m == month)
            .map(|(_, batch, _)| *batch)
            .max()
    }

    /// The condition (to append to a `WHERE` on raw metric events) that an event is not
    /// yet counted by the history.
    fn raw_not_covered(&self) -> String {
        let mut months: Vec<u32> = self.batches.iter().map(|(m, ..)| *m).collect();
        months.sort_unstable();
        months.dedup();
        let covered: Vec<String> = months
            .into_iter()
            .filter_map(|m| {
                let batch = self.covered(m)?;
                Some(format!("({PARTITION} = {m} AND loaded_ms <= {batch})"))
            })
            .collect();
        if covered.is_empty() {
            String::new()
        } else {
            format!(" AND NOT ({})", covered.join(" OR "))
        }
    }
}

impl ClickHouse {
    pub(super) async fn create_history_tables(&self) -> Result<(), WarehouseError> {
        let db = &self.database;
        let properties: Vec<String> = PROPERTY_COLUMNS
            .iter()
            .map(|(name, kind)| format!("{name} {kind}"))
            .collect();
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.metric_events_history (
                month UInt32, batch Int64, attempt Int64, event_type String, unit_key String,
                value Float64, events UInt64, ts_ms Int64, {}
            ) ENGINE = MergeTree PARTITION BY (month, batch, attempt) ORDER BY (event_type, unit_key)",
            properties.join(", ")
        ))
        .await?;
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.metric_events_history_batches
               (month UInt32, batch Int64, attempt Int64)
             ENGINE = MergeTree ORDER BY (month, batch)"
        ))
        .await
    }

    /// The batches of history that count.
    pub async fn history(&self) -> Result<History, WarehouseError> {
        #[derive(Deserialize)]
        struct Batch {
            month: u32,
            batch: i64,
            attempt: i64,
        }
        let batches: Vec<Batch> = self
            .rows(&format!(
                "SELECT month, batch, attempt FROM {}.metric_events_history_batches ORDER BY month, batch",
                self.database
            ))
            .await?;
        Ok(History {
            batches: batches
                .into_iter()
                .map(|b| (b.month, b.batch, b.attempt))
                .collect(),
        })
    }

    /// Sums the raw metric events of `month` loaded before `loaded_before_ms` that the
    /// history does not count yet into a batch of it (see the module's documentation), as
    /// a new attempt that counts once [`Self::count_sum`] is given it; first drops the
    /// rows of every attempt that never counted (it failed, or still runs cut off from
    /// its client). The caller holds the ticks throughout.
    pub async fn sum_month(
        &self,
        month: u32,
        loaded_before_ms: i64,
    ) -> Result<MonthSum, WarehouseError> {
        let db = &self.database;
        let history = self.history().await?;
        for (m, batch, attempt) in self.history_partitions().await? {
            if !history.batches.contains(&(m, batch, attempt)) {
                self.execute(&format!(
                    "ALTER TABLE {db}.metric_events_history DROP PARTITION ({m}, {batch}, {attempt})"
                ))
                .await?;
            }
        }
        let after = history
            .covered(month)
            .map_or_else(String::new, |batch| format!(" AND loaded_ms > {batch}"));
        #[derive(Deserialize)]
        struct Uncovered {
            before: u64,
            latest: i64,
        }
        let uncovered: Vec<Uncovered> = self
            .rows(&format!(
                "SELECT toUInt64(countIf(loaded_ms < {loaded_before_ms})) AS before,
                        maxIf(loaded_ms, loaded_ms < {loaded_before_ms}) AS latest
                 FROM {db}.metric_events WHERE {PARTITION} = {month}{after}"
            ))
            .await?;
        let Some(batch) = uncovered.first().filter(|u| u.before > 0).map(|u| u.latest) else {
            return Ok(MonthSum(None));
        };
        let attempt = i64::try_from(uuid::Uuid::new_v4().as_u64_pair().0 >> 1).unwrap_or_default();
        // Copies of an event are merged by `FINAL`, which streams through the partition's
        // sorted parts, where `LIMIT 1 BY` would hold every event id of the month in memory.
        // A row keeps its events' latest time: before every exposure of an experiment still
        // collecting, and, for one recomputed after its own months were summed, after its
        // exposure only if some of them were.
        let properties = PROPERTY_COLUMNS.map(|(name, _)| name).join(", ");
        self.execute(&format!(
            "INSERT INTO {db}.metric_events_history
               (month, batch, attempt, event_type, unit_key, value, events, ts_ms, {properties})
             SELECT {month}, {batch}, {attempt}, event_type, unit_key, sum(value), toUInt64(count()), max(ts_ms), {properties}
             FROM (SELECT event_type, unit_key, value, ts_ms, {properties} FROM {db}.metric_events FINAL
                   WHERE {PARTITION} = {month}{after} AND loaded_ms <= {batch}) AS month_events
             GROUP BY event_type, unit_key, {properties}"
        ))
        .await?;
        Ok(MonthSum(Some((month, batch, attempt))))
    }

    /// Makes the batch [`Self::sum_month`] wrote count: from now on readers take its events
    /// from the history and leave out the raw rows it covers.
    pub async fn count_sum(&self, sum: &MonthSum) -> Result<(), WarehouseError> {
        let Some((month, batch, attempt)) = sum.0 else {
            return Ok(());
        };
        self.execute(&format!(
            "INSERT INTO {}.metric_events_history_batches (month, batch, attempt) VALUES ({month}, {batch}, {attempt})",
            self.database
        ))
        .await
    }

    /// Drops the month's raw metric events if the history counts every one of them;
    /// whether it did.
    pub(super) async fn drop_summed_month(&self, month: u32) -> Result<bool, WarehouseError> {
        let history = self.history().await?;
        let after = history
            .covered(month)
            .map_or_else(String::new, |batch| format!(" AND loaded_ms > {batch}"));
        let uncovered: Vec<super::Count> = self
            .rows(&format!(
                "SELECT toUInt64(count()) AS n FROM {}.metric_events WHERE {PARTITION} = {month}{after}",
                self.database
            ))
            .await?;
        if uncovered.first().is_none_or(|c| c.n > 0) {
            return Ok(false);
        }
        self.drop_partition("metric_events", i64::from(month))
            .await?;
        Ok(true)
    }

    /// The partitions of `metric_events_history`, as (month, batch, attempt).
    async fn history_partitions(&self) -> Result<Vec<(u32, i64, i64)>, WarehouseError> {
        #[derive(Deserialize)]
        struct Partition {
            partition: String,
        }
        let partitions: Vec<Partition> = self
            .rows(&format!(
                "SELECT DISTINCT partition FROM system.parts
                 WHERE database = {} AND table = 'metric_events_history' AND active",
                super::literal(&self.database),
            ))
            .await?;
        partitions
            .iter()
            .map(|p| {
                parse_partition(&p.partition).ok_or_else(|| {
                    WarehouseError::Decode(format!("history partition {}", p.partition))
                })
            })
            .collect()
    }

    /// The deduplicated metric events of the plan's metric event types, with their analysis
    /// unit as `ukey`, the number of events each row stands for as `events`, and the
    /// property columns a filter reads: the raw events not yet in the history (all of
    /// them `FINAL`, or a few units' kept once per sorting key, which reads only those
    /// units' rows where `FINAL` would merge the whole table), then the history's rows.
    /// Both keep one row per sorting key, the event's type, unit, time and id: copies of
    /// an event stamped apart (a client's retry of an event without a timestamp, which the
    /// collector stamps each time, past the log's deduplication window) are two rows to
    /// `FINAL`, so a tick counts them twice too, as the full computation it must equal.
    /// `units` is a condition on `unit_key` selecting the units to read, or nothing for all,
    /// and `share` one on the unit that every read adds (a pass's share of the units).
    ///
    /// 18.16 merges a `FINAL` read in one stream, which leaves what follows it on one
    /// core, so all of them are read as one `FINAL` per event type, in parallel: copies of
    /// an event share its event type (it leads the sorting key), so each read keeps one of
    /// its own events' copies, and the table's index gives each read its own rows.
    pub(super) fn metric_events_with_history(
        &self,
        plan: &ExperimentPlan,
        (units, share): (&str, &str),
        history: &History,
    ) -> String {
        let event_types: BTreeSet<&str> = plan
            .metrics
            .iter()
            .flat_map(|m| std::iter::once(m.event_type.as_str()).chain(m.denominator.as_deref()))
            .collect();
        let (db, unit) = (&self.database, Self::unit_expression(plan));
        let (properties, before_end) = (Self::property_columns(plan), Self::before_end(plan));
        let read = |types: &str, deduplicated: &str, once: &str| {
            format!(
                "SELECT {unit} AS ukey, event_type, value, ts_ms, toUInt64(1) AS events{properties}
                 FROM {db}.metric_events{deduplicated}
                 WHERE event_type IN ({types}){before_end}{units}{share}{not_covered}{once}",
                not_covered = history.raw_not_covered(),
            )
        };
        let raw = if units.is_empty() {
            let reads: Vec<String> = event_types
                .iter()
                .map(|t| read(&literal(t), " FINAL", ""))
                .collect();
            reads.join(" UNION ALL ")
        } else {
            read(
                &literal_list(event_types.iter().copied()),
                "",
                " LIMIT 1 BY event_type, unit_key, ts_ms, event_id",
            )
        };
        let event_types = literal_list(event_types);
        if history.batches.is_empty() {
            return raw;
        }
        let batches: Vec<String> = history
            .batches
            .iter()
            .map(|(month, batch, attempt)| format!("({month}, {batch}, {attempt})"))
            .collect();
        format!(
            "SELECT * FROM ({raw}) AS raw UNION ALL
             SELECT * FROM (
               SELECT {unit} AS ukey, event_type, value, ts_ms, events{properties}
               FROM {db}.metric_events_history
               WHERE (month, batch, attempt) IN ({batches}) AND event_type IN ({event_types}){before_end}{units}{share}
             ) AS history",
            batches = batches.join(", "),
        )
    }
}

/// A history partition's (month, batch, attempt) from `system.parts`: 18.16 writes
/// `(202401, 1700000000000, 5)`, current versions leave out the spaces.
fn parse_partition(partition: &str) -> Option<(u32, i64, i64)> {
    let fields: Vec<&str> = partition
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .collect();
    match fields[..] {
        [month, batch, attempt] => Some((
            month.parse().ok()?,
            batch.parse().ok()?,
            attempt.parse().ok()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_read_as_either_version_writes_them() {
        let expected = Some((202_401, 1_700_000_000_000, -5));
        assert_eq!(parse_partition("(202401, 1700000000000, -5)"), expected);
        assert_eq!(parse_partition("(202401,1700000000000,-5)"), expected);
        assert_eq!(parse_partition("(202401,1700000000000)"), None);
        assert_eq!(parse_partition("202401"), None);
    }

    #[test]
    fn raw_rows_a_batch_covers_are_left_out() {
        assert_eq!(History::default().raw_not_covered(), "");
        let history = History {
            batches: vec![(202_401, 10, 1), (202_401, 20, 2), (202_402, 5, 3)],
        };
        assert_eq!(history.covered(202_401), Some(20));
        assert_eq!(history.covered(202_403), None);
        let condition = history.raw_not_covered();
        assert!(
            condition.contains("= 202401 AND loaded_ms <= 20)"),
            "{condition}"
        );
        assert!(
            condition.contains("= 202402 AND loaded_ms <= 5)"),
            "{condition}"
        );
        assert!(!condition.contains("<= 10)"), "{condition}");
    }
}
