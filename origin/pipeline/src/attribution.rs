//! The metric pipeline: consumes the event log in order and maintains the per-unit state
//! and the rollups that results are computed from.
//!
//! Each batch is one transaction that also advances the stored cursor, so a crash at any
//! point leaves either the whole batch applied or none of it: restarting resumes from the
//! cursor without loss or double counting. Attribution rules (docs/statistics.md):
//! a unit's metric events count toward the variant of its first exposure in an experiment,
//! and only events at or after that exposure (earlier ones form the CUPED covariate); units
//! exposed to two variants are excluded from the analysis and counted.

mod batch;
mod cache;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::AnyConnection;

use crate::model::experiment::Status;
use crate::plan::{ExperimentPlan, bucket_measure, bucket_prefix, day, plan_of};
use crate::rollup::{CappedRollup, DimensionCell, QuantileRollup, Sums, UnitPoint};
use crate::tables::{self, Logged};
use crate::{Pipeline, clock, store};
use batch::Batch;
pub use cache::UnitCache;

pub const CURSOR: &str = "rollups";
const RETRY_BATCH: i64 = 500;
/// An event that fails this many times becomes a dead letter.
pub const MAX_ATTEMPTS: i64 = 3;

/// Plans of every experiment that may still receive events (archived ones do not).
pub async fn load_plans(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, ExperimentPlan>, crate::store::Error> {
    let metrics: HashMap<String, crate::model::catalog::Metric> =
        store::catalog::metrics(conn, None)
            .await?
            .into_iter()
            .map(|m| (m.key.clone(), m))
            .collect();
    let experiments = store::experiments::all_published(conn).await?;
    // Holdouts are read out as experiments of their own (`Holdout::readout`), from the
    // exposures runtimes log to them.
    let holdouts = store::catalog::holdouts(conn, None).await?;
    Ok(experiments
        .into_iter()
        .filter(|e| e.status != Status::Archived)
        .chain(holdouts.iter().map(|h| h.readout()))
        .map(|e| {
            let plan = plan_of(&e, &metrics);
            (e.id, plan)
        })
        .collect())
}

/// The pipeline task: processes batches until the log is drained, then waits briefly.
pub fn spawn(state: Arc<Pipeline>) {
    tokio::spawn(async move {
        let mut last_prune = std::time::Instant::now();
        loop {
            match run_once(&state).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "pipeline batch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = std::time::Instant::now();
                if let Err(error) = prune(&state).await {
                    tracing::warn!(%error, "pruning raw events failed");
                }
            }
        }
    });
}

async fn prune(state: &Arc<Pipeline>) -> Result<(), crate::store::Error> {
    let mut conn = state.db.pool.acquire().await?;
    // The cursor first: events that the pipeline set aside by that position are in the
    // retry and dead-letter tables when they are read next.
    let position = tables::cursor(&mut conn, CURSOR).await?;
    let held = tables::held_seqs(&mut conn, position).await?;
    drop(conn);
    // One day beyond the accepted age, so that no retried copy can outlive its original.
    let cutoff = clock::now_ms() - state.settings.event_window.max_age_ms - clock::DAY_MS;
    let mut tx = state.log.begin_write().await?;
    let removed = tables::prune_events(&mut tx, position, cutoff, &held).await?;
    tx.commit().await?;
    if removed > 0 {
        tracing::info!(removed, "pruned raw events past retention");
    }
    Ok(())
}

/// How long one `run_once` keeps starting batches back to back. Between runs the pipeline
/// reloads the experiment plans, takes due retries and prunes the log, so this bounds how
/// stale those can get under sustained load.
const CHAIN_LIMIT: Duration = Duration::from_secs(5);

/// The plans of every experiment, by id, as one run of the pipeline loaded them. The ids
/// are shared with the unit states that batches build from them.
type Plans = std::sync::Arc<rustc_hash::FxHashMap<std::sync::Arc<str>, ExperimentPlan>>;

/// One batch, read and applied in memory, waiting to be written.
struct AppliedBatch {
    /// The cursor before and after the batch.
    position: i64,
    new_position: i64,
    batch: Batch,
    handled: usize,
    /// Whether the log had a full batch of new events, so likely more.
    full: bool,
    /// Retried events that now succeeded, and events that failed, with the reason.
    succeeded: Vec<i64>,
    failures: Vec<(Logged, String)>,
    read: Duration,
    load: Duration,
    apply: Duration,
}

/// The events of one batch, as read from the log.
struct ReadBatch {
    /// The cursor the events follow.
    position: i64,
    retried: Vec<Logged>,
    fresh: Vec<Logged>,
    /// Whether the log had a full batch of new events, so likely more.
    full: bool,
    took: Duration,
}

impl ReadBatch {
    /// Reads up to a batch of new events after `position`: from the log's tail in memory
    /// when it holds them, else from the log.
    async fn fresh(
        state: &Arc<Pipeline>,
        log: &mut AnyConnection,
        position: i64,
        retried: Vec<Logged>,
    ) -> Result<ReadBatch, crate::store::Error> {
        let started = std::time::Instant::now();
        let limit = state.settings.batch.max(1);
        let fresh = match state.log_tail.take_after(position, limit as usize) {
            Some(events) => events,
            None => tables::read_after(log, position, limit).await?,
        };
        Ok(ReadBatch {
            position,
            retried,
            full: fresh.len() as i64 >= limit,
            fresh,
            took: started.elapsed(),
        })
    }

    fn is_empty(&self) -> bool {
        self.retried.is_empty() && self.fresh.is_empty()
    }
}

impl AppliedBatch {
    /// Loads the batch's unit state (see `Batch::load`) and applies its events in log order.
    async fn prepare(
        (conn, log): (&mut AnyConnection, &mut AnyConnection),
        plans: &Plans,
        cache: &mut UnitCache,
        previous: Option<&Batch>,
        read: ReadBatch,
    ) -> Result<AppliedBatch, crate::store::Error> {
        let started = std::time::Instant::now();
        let ReadBatch {
            position,
            retried,
            fresh,
            full,
            took,
        } = read;
        let mut batch = Batch::load(conn, log, plans, cache, previous, &retried, &fresh).await?;
        let load = started.elapsed();
        let mut succeeded = Vec::new();
        let mut failures = Vec::new();
        for event in &retried {
            match batch.apply(event, position) {
                Ok(()) => succeeded.push(event.seq),
                Err(reason) => failures.push((event.clone(), reason)),
            }
        }
        for event in &fresh {
            if let Err(reason) = batch.apply(event, event.seq - 1) {
                failures.push((event.clone(), reason));
            }
        }
        Ok(AppliedBatch {
            position,
            new_position: fresh.last().map_or(position, |e| e.seq),
            batch,
            handled: retried.len() + fresh.len(),
            full,
            succeeded,
            failures,
            read: took,
            load,
            apply: started.elapsed() - load,
        })
    }

    /// Writes the batch with its cursor move in one transaction; `None` when another
    /// pipeline moved the cursor first. Returns how many events became dead letters.
    async fn commit(
        &self,
        state: &Arc<Pipeline>,
        attempts: &HashMap<i64, i64>,
    ) -> Result<Option<usize>, crate::store::Error> {
        let mut tx = state.db.begin_write().await?;
        if !tables::advance_cursor(&mut tx, CURSOR, self.position, self.new_position).await? {
            return Ok(None);
        }
        self.batch.write(&mut tx).await?;
        for &seq in &self.succeeded {
            tables::clear_retry(&mut tx, seq).await?;
        }
        let now = clock::now_ms();
        let mut dead = 0;
        for (event, reason) in &self.failures {
            let tries = attempts.get(&event.seq).copied().unwrap_or(0) + 1;
            if tries >= MAX_ATTEMPTS {
                tables::add_dead_letter(&mut tx, event.seq, &event.event_id, reason, tries).await?;
                dead += 1;
            } else {
                // 1 s, then 4 s: enough for configuration that lags the events to arrive.
                let backoff = 1_000 * 4i64.pow(tries as u32 - 1);
                tables::set_retry(&mut tx, event.seq, tries, reason, now + backoff).await?;
            }
        }
        tx.commit().await?;
        Ok(Some(dead))
    }
}

/// Processes batches (due retries first, then new events) for as long as they come full,
/// up to `CHAIN_LIMIT`; returns how many events it handled.
///
/// The pipeline is the only writer of its tables, so it reads and computes outside any
/// transaction and then writes everything, with the cursor, in one short transaction. The
/// cursor moves by compare-and-set: should a second pipeline share the database, one of
/// them rolls back instead of double counting. While a batch is being written, the next one
/// is read, loaded and applied, so that the database's write time, the largest part of a
/// batch, overlaps the rest.
pub async fn run_once(state: &Arc<Pipeline>) -> anyhow::Result<usize> {
    let started = std::time::Instant::now();
    // Held throughout: runs of one process never overlap.
    let mut cache = state.unit_cache.lock().await;
    let mut conn = state.db.pool.acquire().await?;
    let plans = load_plans(&mut conn).await?;
    if rebuild_changed(state, &mut conn, &plans).await? {
        // Rebuilt experiments may have refilled per-unit totals that cached states hold.
        cache.clear();
    }
    let plans: Plans = std::sync::Arc::new(
        plans
            .into_iter()
            .map(|(id, plan)| (id.into(), plan))
            .collect(),
    );
    let position = tables::cursor(&mut conn, CURSOR).await?;
    cache.validate(position);
    let retries = tables::due_retries(&mut conn, clock::now_ms(), RETRY_BATCH).await?;
    let attempts: std::sync::Arc<HashMap<i64, i64>> =
        std::sync::Arc::new(retries.iter().copied().collect());
    let mut log = state.log.pool.acquire().await?;
    let retried = tables::read_seqs(
        &mut log,
        &retries.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
    )
    .await?;
    let read = ReadBatch::fresh(state, &mut log, position, retried).await?;
    if read.is_empty() {
        state
            .telemetry
            .pipeline_position
            .store(position, Ordering::Relaxed);
        return Ok(0);
    }
    let mut current =
        AppliedBatch::prepare((&mut conn, &mut log), &plans, &mut cache, None, read).await?;
    let mut handled = 0;
    loop {
        let write_started = std::time::Instant::now();
        let chain = current.full && started.elapsed() < CHAIN_LIMIT;
        // The write runs on a task of its own, so that it goes on while this task reads,
        // loads and applies the next batch (CPU work with few await points that would
        // otherwise hold the write's next statement back).
        let writing = std::sync::Arc::new(current);
        let write = tokio::spawn({
            let (state, attempts, writing) = (state.clone(), attempts.clone(), writing.clone());
            async move { writing.commit(&state, &attempts).await }
        });
        let next = async {
            if !chain {
                return Ok(None);
            }
            let read = ReadBatch::fresh(state, &mut log, writing.new_position, Vec::new()).await?;
            if read.is_empty() {
                return Ok(None);
            }
            let previous = Some(&writing.batch);
            AppliedBatch::prepare((&mut conn, &mut log), &plans, &mut cache, previous, read)
                .await
                .map(Some)
        };
        let (written, next) = tokio::join!(write, next);
        let written =
            written.map_err(|e| anyhow::anyhow!("the pipeline's write task failed: {e}"))?;
        // The write task has ended, so this is the only reference left.
        let Ok(done) = std::sync::Arc::try_unwrap(writing) else {
            anyhow::bail!("the pipeline's written batch is still shared");
        };
        let Some(dead) = written? else {
            tracing::warn!(
                position = done.position,
                "the pipeline cursor moved underneath this batch; another pipeline is running"
            );
            cache.clear();
            return Ok(handled);
        };
        tracing::debug!(
            events = done.handled,
            read_ms = done.read.as_millis() as u64,
            load_ms = done.load.as_millis() as u64,
            apply_ms = done.apply.as_millis() as u64,
            write_ms = write_started.elapsed().as_millis() as u64,
            "pipeline batch"
        );
        handled += done.handled;
        crate::telemetry::Telemetry::add(&state.telemetry.events_processed, done.handled);
        crate::telemetry::Telemetry::add(&state.telemetry.events_dead_lettered, dead);
        state
            .telemetry
            .pipeline_position
            .store(done.new_position, Ordering::Relaxed);
        state
            .telemetry
            .log_head
            .fetch_max(done.new_position, Ordering::Relaxed);
        let new_position = done.new_position;
        cache.put_committed(done.batch.into_units(), new_position);
        match next? {
            Some(applied) => current = applied,
            None => return Ok(handled),
        }
    }
}

/// Rebuilds the metric rollups of experiments whose metric list changed since they were
/// built, from the per-unit totals. Rebuilt history is attributed to exposure days.
/// Returns whether any experiment was rebuilt.
async fn rebuild_changed(
    state: &Arc<Pipeline>,
    conn: &mut AnyConnection,
    plans: &HashMap<String, ExperimentPlan>,
) -> Result<bool, crate::store::Error> {
    let built = tables::rollup_plans(conn).await?;
    let mut rebuilt = false;
    for (experiment_id, plan) in plans {
        let fingerprint = plan.fingerprint();
        if built.get(experiment_id) == Some(&fingerprint) {
            continue;
        }
        if built.contains_key(experiment_id) {
            tracing::info!(experiment_id, "metrics changed; rebuilding rollups");
        }
        let mut tx = state.db.begin_write().await?;
        refill_derived_measures(state, &mut tx, experiment_id, plan).await?;
        rebuild(&mut tx, experiment_id, plan).await?;
        tables::set_rollup_plan(&mut tx, experiment_id, &fingerprint).await?;
        tx.commit().await?;
        rebuilt = true;
    }
    Ok(rebuilt)
}

/// The drill-down cells of an experiment by one dimension, from the per-unit state: each
/// clean unit counted under its first exposure's value of the dimension.
pub async fn dimension_cells(
    conn: &mut AnyConnection,
    experiment_id: &str,
    plan: &ExperimentPlan,
    dimension: &str,
) -> Result<Vec<DimensionCell>, crate::store::Error> {
    let units = tables::experiment_units(conn, experiment_id).await?;
    let mut cells: BTreeMap<(Option<String>, String), DimensionCell> = BTreeMap::new();
    for (exposure, totals) in units.values() {
        let value = crate::event::dimension_value(exposure.attributes.as_deref(), dimension);
        let cell = cells
            .entry((value.clone(), exposure.variant.to_string()))
            .or_insert_with(|| DimensionCell {
                value,
                variant: exposure.variant.to_string(),
                ..DimensionCell::default()
            });
        cell.units += 1;
        let values = batch::metric_values(plan, |measure| {
            totals.get(measure).copied().unwrap_or_default()
        });
        for (metric, point) in plan.metrics.iter().zip(values) {
            cell.metrics
                .entry(metric.key.clone())
                .or_default()
                .add(&Sums::of(&point));
        }
    }
    Ok(cells.into_values().collect())
}

/// Events read per query while refilling.
const REFILL_PAGE: i64 = 20_000;

/// Recomputes the per-unit totals of an experiment's derived measures (filtered and
/// windowed totals, value buckets) from the event log. Unfiltered totals are kept for every event type a
/// unit sends, so a new metric finds its history there; a derived measure counts only what
/// its plan asks for, so a new or changed filter or quantile metric starts from the raw
/// events, as far back as the log keeps them (the event window). Only events the pipeline
/// has applied count (up to its cursor, less those waiting for a retry or dead-lettered):
/// the others add themselves when they are applied.
async fn refill_derived_measures(
    state: &Arc<Pipeline>,
    conn: &mut AnyConnection,
    experiment_id: &str,
    plan: &ExperimentPlan,
) -> Result<(), crate::store::Error> {
    let measures = plan.derived_measures();
    if measures.is_empty() {
        return Ok(());
    }
    let position = tables::cursor(conn, CURSOR).await?;
    let held = tables::held_seqs(conn, position).await?;
    let units = tables::experiment_units(conn, experiment_id).await?;
    for d in &measures {
        if d.own_totals() {
            tables::delete_unit_totals(conn, experiment_id, d.measure).await?;
        }
        if d.bucketed {
            tables::delete_unit_totals_under(conn, experiment_id, &bucket_prefix(d.measure))
                .await?;
        }
    }
    if units.is_empty() {
        // A new experiment: nothing to scan the log for.
        return Ok(());
    }
    let mut log = state.log.pool.acquire().await?;
    let mut totals: BTreeMap<(String, String), tables::Totals> = BTreeMap::new();
    let event_types: BTreeSet<&str> = measures.iter().map(|d| d.event_type).collect();
    for event_type in event_types {
        let mut after = 0;
        loop {
            let page =
                tables::metric_events_of_type(&mut log, event_type, (after, position), REFILL_PAGE)
                    .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in page
                .iter()
                .filter(|e| !held.contains(&e.seq) && plan.counts_at(e.ts_ms))
            {
                let key = match plan.switchback_period_s {
                    Some(period) => {
                        crate::plan::switchback_cell(&event.unit_key, event.ts_ms, period)
                    }
                    None => event.unit_key.clone(),
                };
                let Some((exposure, _)) = units.get(&key) else {
                    continue;
                };
                let post = event.ts_ms >= exposure.first_exposure_ms;
                let properties = crate::event::parse_properties(event.properties.as_deref());
                for d in measures.iter().filter(|d| d.event_type == event_type) {
                    if d.filter.is_some_and(|filter| !filter.matches(&properties))
                        || (d.window.is_some()
                            && !(post && d.in_window(event.ts_ms, exposure.first_exposure_ms)))
                    {
                        continue;
                    }
                    let mut counted = Vec::with_capacity(2);
                    if d.own_totals() {
                        counted.push(d.measure.to_string());
                    }
                    if d.bucketed && post {
                        let bucket = abx_stats::quantile::bucket(event.value);
                        counted.push(bucket_measure(d.measure, bucket));
                    }
                    for measure in counted {
                        let t = totals.entry((key.clone(), measure)).or_default();
                        if post {
                            t.post_sum += event.value;
                            t.post_count += 1;
                        } else {
                            t.pre_sum += event.value;
                            t.pre_count += 1;
                        }
                    }
                }
            }
        }
    }
    let rows: Vec<(&str, &str, &str, tables::Totals)> = totals
        .iter()
        .map(|((unit, measure), t)| (unit.as_str(), experiment_id, measure.as_str(), *t))
        .collect();
    tables::upsert_unit_totals(conn, &rows).await?;
    Ok(())
}

/// Per variant, each capped metric's sums over its clean units' capped values: the cap
/// (fixed, or the percentile of the units' non-zero values) applies to each unit's value
/// and pre-exposure covariate (a ratio's numerator), never to a denominator.
pub async fn capped_rollups(
    conn: &mut AnyConnection,
    experiment_id: &str,
    plan: &ExperimentPlan,
) -> Result<Vec<CappedRollup>, crate::store::Error> {
    if plan.metrics.iter().all(|m| m.cap.is_none()) {
        return Ok(Vec::new());
    }
    let units = tables::experiment_units(conn, experiment_id).await?;
    let values: Vec<(&str, batch::Values)> = units
        .values()
        .map(|(exposure, totals)| {
            let values = batch::metric_values(plan, |measure| {
                totals.get(measure).copied().unwrap_or_default()
            });
            (&*exposure.variant, values)
        })
        .collect();
    let mut out = Vec::new();
    for (i, metric) in plan.metrics.iter().enumerate() {
        let Some(cap) = &metric.cap else { continue };
        let mut nonzero: Vec<f64> = values
            .iter()
            .map(|(_, v)| v[i].x)
            .filter(|x| *x != 0.0)
            .collect();
        let Some(cap) = crate::rollup::cap_of(cap, &mut nonzero) else {
            continue;
        };
        let mut by_variant: BTreeMap<&str, CappedRollup> = plan
            .variants
            .iter()
            .map(|v| {
                let empty = CappedRollup {
                    variant: v.clone(),
                    metric: metric.key.clone(),
                    sums: Sums::default(),
                    units: 0,
                    cap,
                    capped_units: 0,
                };
                (v.as_str(), empty)
            })
            .collect();
        for (variant, v) in &values {
            let Some(rollup) = by_variant.get_mut(variant) else {
                continue;
            };
            let point = v[i];
            rollup.units += 1;
            rollup.capped_units += u64::from(point.x > cap);
            let capped = UnitPoint {
                x: point.x.min(cap),
                c: point.c.min(cap),
                ..point
            };
            rollup.sums.add(&Sums::of(&capped));
        }
        out.extend(by_variant.into_values());
    }
    Ok(out)
}

/// Per variant, each quantile metric's estimate from the units' value buckets: what the
/// SQL pipeline's rollups cannot hold, since a quantile's variance needs every unit's
/// events on either side of a threshold known only once all units are in.
pub async fn quantile_rollups(
    conn: &mut AnyConnection,
    experiment_id: &str,
    plan: &ExperimentPlan,
) -> Result<Vec<QuantileRollup>, crate::store::Error> {
    let mut out = Vec::new();
    for metric in &plan.metrics {
        let Some(p) = metric.quantile else { continue };
        let prefix = bucket_prefix(&metric.measure);
        // Per variant, per unit: the unit's (bucket, events).
        let mut variants: BTreeMap<String, HashMap<String, Vec<(i32, u64)>>> = BTreeMap::new();
        for (variant, unit, measure, events) in
            tables::unit_buckets(conn, experiment_id, &prefix).await?
        {
            let Some(bucket) = measure[prefix.len()..].parse::<i32>().ok() else {
                continue;
            };
            variants
                .entry(variant)
                .or_default()
                .entry(unit)
                .or_default()
                .push((bucket, events.max(0) as u64));
        }
        for (variant, units) in variants {
            let estimate =
                abx_stats::quantile::quantile_of_units(units.values().map(Vec::as_slice), p);
            out.push(QuantileRollup {
                variant,
                metric: metric.key.clone(),
                estimate: estimate.ok(),
            });
        }
    }
    Ok(out)
}

/// Recomputes an experiment's metric rollups from scratch.
pub async fn rebuild(
    conn: &mut AnyConnection,
    experiment_id: &str,
    plan: &ExperimentPlan,
) -> Result<(), crate::store::Error> {
    let units = tables::experiment_units(conn, experiment_id).await?;
    let mut sums: BTreeMap<(String, String, i64), Sums> = BTreeMap::new();
    for (exposure, totals) in units.values() {
        let values = batch::metric_values(plan, |event_type| {
            totals.get(event_type).copied().unwrap_or_default()
        });
        for (metric, point) in plan.metrics.iter().zip(values) {
            let entry = sums
                .entry((
                    exposure.variant.to_string(),
                    metric.key.clone(),
                    day(exposure.first_exposure_ms),
                ))
                .or_default();
            entry.add(&Sums::of(&point));
        }
    }
    let rows: Vec<tables::MetricDelta<'_>> = sums
        .iter()
        .map(|((variant, metric, d), s)| {
            ((experiment_id, variant.as_str(), metric.as_str(), *d), *s)
        })
        .collect();
    Ok(tables::replace_metric_rollups(conn, experiment_id, &rows).await?)
}
