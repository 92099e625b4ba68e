//! The pipeline's rollups in the warehouse. The JetStream loader only inserts raw events;
//! on every analysis tick the pipeline moves forward the rollups of each experiment still
//! collecting events and stores them in the warehouse as one computation. Results and
//! guardrails read the newest stored computation, so a results request costs milliseconds
//! whatever the event count, and lags the events by at most one tick plus the
//! computation's own time.
//!
//! A tick recomputes, from the deduplicated raw events, only the units with events loaded
//! since the previous computation, and adds the difference they make
//! (`ClickHouse::advance`). Its groupings grow with the units that had new events; to find
//! their events and previous rows it still scans the experiment's raw events and unit rows
//! (docs/benchmarks.md, "Where a tick's time goes"), and capped and quantile metrics add a
//! pass over the unit rows. A unit's state is recomputed rather than added to event by
//! event because only the raw tables can collapse the copies of an event (a redelivered
//! message, a client's retry beyond the broker's deduplication window); sums cannot tell a
//! copy from a new event. A full computation from all raw events (`ClickHouse::rebuild`)
//! remains for a new plan, the first tick after an experiment ends, a tick that died after
//! writing its units' rows, and once for a plan with metrics whose rows an earlier version
//! wrote (see [`computed_by`]).
//!
//! One process at a time ticks: ticks and repairs hold a lease in the configuration
//! database (`store::leases`), since two ticks from the same computation would each add
//! the difference their units make, and one's unit rows would be summed by neither.
//!
//! The raw events are kept for `warehouse_retention_days`, as whole monthly partitions:
//! a month goes once it is past retention and no experiment that still collects events
//! started before its end, so no stored rollups are ever recomputed from partial data.
//! Its metric events are first summed per unit into the warehouse's history
//! (`ClickHouse::sum_month`), from which units' pre-exposure covariates keep
//! counting them: dropping a month changes no unit's row, and recomputes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::clickhouse::{ClickHouse, History, StoredRollups, generation_beside_ticks};
use crate::db::Db;
use crate::model::catalog::{Holdout, Metric};
use crate::model::experiment::Experiment;
use crate::model::experiment::Status;
use crate::plan::{ExperimentPlan, plan_of};
use crate::rollup::Rollups;
use crate::{Pipeline, clock, store};

/// A completed experiment's rollups are still recomputed this long after it ends, for the
/// events still on their way (in browsers' queues, the stream, a lagging loader); then they
/// are final.
pub const SETTLE_MS: i64 = 3_600_000;

/// How long after its end an archived experiment is still looked at by the ticks: archiving
/// may come within the settling hour, or before any tick learnt of the end, and its rollups
/// must still settle and leave out what was stamped after the end. Archived experiments
/// pile up, so older ones are not looked at (each one looked at costs a read of its stored
/// rollups per tick); a week covers a pipeline that was down through a completion and an
/// archiving. One whose end no tick learnt within it keeps the computation it has.
const ARCHIVED_SETTLING_WINDOW_MS: i64 = 7 * 86_400_000;

/// Whether an experiment's rollups may still change: while it runs or is paused, and until
/// a computation made after its settling time is stored (archiving does not cut that short).
fn collecting(status: Status, ended_at_ms: Option<i64>, stored_ms: Option<i64>) -> bool {
    match status {
        Status::Running | Status::Paused => true,
        Status::Completed | Status::Archived => match (stored_ms, ended_at_ms) {
            (None, _) => true,
            (Some(stored), Some(ended)) => stored < ended + SETTLE_MS,
            (Some(_), None) => false,
        },
        Status::Draft => false,
    }
}

/// What the warehouse's unit rows and rollups are computed by, stored beside them: the
/// plan's fingerprint; once the experiment has ended, its end; for a plan with quantile
/// or capped metrics, that its units' rows hold their values and events per bucket; for
/// a plan with metrics, that they hold running totals; for a plan with capped metrics,
/// that they hold the values of those only; and that units are keyed by 64 bits. The
/// fingerprint leaves the end out (the SQL pipeline's rollups stay valid: ending adds no
/// event to them), but rows computed before the end may count events stamped after it,
/// which only a computation that knew the end leaves out. Rows written before units kept
/// their values, or their totals, read them as empty, and rows that kept every metric's
/// values hold them in other places, so such a plan's computations from then are made anew;
/// and a plan with quantile metrics names the bucket sums, which computations stored before
/// them lack (they are made anew too). Rows keyed by 128 bits are dropped
/// (`ClickHouse::create_unit_tables`), so computations that summed them are made anew.
fn computed_by(plan: &ExperimentPlan) -> String {
    let mut by = plan.fingerprint();
    if let Some(end) = plan.ends_at_ms {
        by.push_str(&format!("{ENDS_AT}{end}"));
    }
    if plan
        .metrics
        .iter()
        .any(|m| m.quantile.is_some() || m.cap.is_some())
    {
        by.push_str(FROM_UNIT_VALUES);
    }
    if plan.metrics.iter().any(|m| m.quantile.is_some()) {
        by.push_str(WITH_BUCKET_SUMS);
    }
    if !plan.metrics.is_empty() {
        by.push_str(FROM_DAY_TOTALS);
    }
    if plan.metrics.iter().any(|m| m.cap.is_some()) {
        by.push_str(CAPPED_VALUES_ONLY);
    }
    by.push_str(BY_64_BIT_KEYS);
    by
}

const ENDS_AT: &str = " ends at ";
const FROM_UNIT_VALUES: &str = " from unit values";
const WITH_BUCKET_SUMS: &str = " with bucket sums";
const FROM_DAY_TOTALS: &str = " from day totals";
const CAPPED_VALUES_ONLY: &str = " capped values only";
const BY_64_BIT_KEYS: &str = " by 64-bit unit keys";

/// Whether a stored computation followed the plan's metrics, whatever else it knew: results
/// may read it while the first computation after the end, or with units' values or running
/// totals, is under way.
fn follows(stored_by: &str, plan: &ExperimentPlan) -> bool {
    let Some(rest) = stored_by.strip_prefix(plan.fingerprint().as_str()) else {
        return false;
    };
    let rest = rest.strip_suffix(BY_64_BIT_KEYS).unwrap_or(rest);
    let rest = rest.strip_suffix(CAPPED_VALUES_ONLY).unwrap_or(rest);
    let rest = rest.strip_suffix(FROM_DAY_TOTALS).unwrap_or(rest);
    let rest = rest.strip_suffix(WITH_BUCKET_SUMS).unwrap_or(rest);
    let rest = rest.strip_suffix(FROM_UNIT_VALUES).unwrap_or(rest);
    rest.is_empty()
        || rest.strip_prefix(ENDS_AT).is_some_and(|end| {
            !end.is_empty() && end.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        })
}

/// The lease that warehouse ticks and repairs hold.
pub const TICKS_LEASE: &str = "warehouse ticks";
/// How long the ticks' lease lasts unless renewed; the holder renews it every third of
/// this while it works, so a process that dies while ticking holds the ticks up for at
/// most this long.
const LEASE_MS: i64 = 60_000;

/// The ticks' lease, while this process holds it; a task renews it in the background.
struct Lease {
    db: Db,
    /// This take's name as the holder: a lease taken again, by this process or another,
    /// is another holder's.
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease, `None` if another holder has it.
    async fn take(db: &Db) -> Result<Option<Lease>, crate::Error> {
        let holder = crate::model::new_id();
        let taken = {
            let mut conn = db.pool.acquire().await?;
            let now = clock::now_ms();
            store::leases::take(&mut conn, TICKS_LEASE, &holder, now, now + LEASE_MS).await?
        };
        if !taken {
            return Ok(None);
        }
        let renewer = tokio::spawn({
            let (db, holder) = (db.clone(), holder.clone());
            async move {
                let period = Duration::from_millis(LEASE_MS.unsigned_abs() / 3);
                loop {
                    tokio::time::sleep(period).await;
                    match renew(&db, &holder).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("the warehouse's ticks' lease ran out while ticking");
                            return;
                        }
                        // Tried again at the next period; the lease outlasts two failures.
                        Err(error) => tracing::warn!(%error, "renewing the ticks' lease failed"),
                    }
                }
            }
        });
        Ok(Some(Lease {
            db: db.clone(),
            holder,
            renewer,
        }))
    }

    /// Renews the lease, and fails unless this take still holds it. A tick calls it just
    /// before it stores a computation: one that stalled past its lease must not store what
    /// another tick may have moved past already.
    async fn hold(&self) -> Result<(), crate::Error> {
        if renew(&self.db, &self.holder).await? {
            Ok(())
        } else {
            Err(crate::Error::TicksLeaseLost)
        }
    }

    /// Gives the lease up for the next tick, whichever process runs it.
    async fn release(self) {
        self.renewer.abort();
        let released = match self.db.pool.acquire().await {
            Ok(mut conn) => store::leases::release(&mut conn, TICKS_LEASE, &self.holder)
                .await
                .map_err(crate::Error::from),
            Err(error) => Err(error.into()),
        };
        if let Err(error) = released {
            tracing::warn!(%error, "releasing the ticks' lease failed; it runs out by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Extends `holder`'s lease on the ticks; whether it still held it.
async fn renew(db: &Db, holder: &str) -> Result<bool, crate::Error> {
    let mut conn = db.pool.acquire().await?;
    let now = clock::now_ms();
    Ok(store::leases::renew(&mut conn, TICKS_LEASE, holder, now, now + LEASE_MS).await?)
}

/// How far before the previous computation a tick looks for units with newly loaded
/// events: a loader stamps rows when it sends them, and ClickHouse may commit them up to
/// the loader's request timeout (`INSERT_TIMEOUT`, 120 s) later, on a clock that may differ
/// by a few seconds. Units whose rows were loaded in this margin are recomputed again,
/// which changes nothing.
pub const LOAD_MARGIN_MS: i64 = 300_000;

/// Computes an experiment's rollups from all its raw events (a new generation of unit
/// rows) and stores them. The computation is stamped with the time it started, so it holds
/// at least every event loaded by then.
async fn compute(
    warehouse: &ClickHouse,
    (e, plan): (&Experiment, &ExperimentPlan),
    lease: &Lease,
) -> Result<(Rollups, i64), crate::Error> {
    // Later than the stored computation even if the clock stepped back, so that it replaces
    // that computation rather than dropping the rows it summed for nothing.
    let stored_ms = warehouse
        .stored_for_results(&e.id)
        .await?
        .map(|s| s.computed_ms);
    let computed_ms = clock::now_ms().max(stored_ms.map_or(i64::MIN, |ms| ms + 1));
    let history = warehouse.history().await?;
    let computation = warehouse
        .rebuild((&e.id, plan), computed_ms, &history)
        .await?;
    lease.hold().await?;
    warehouse
        .store_rollups(
            &e.id,
            (&computed_by(plan), computed_ms),
            computed_ms,
            &computation,
        )
        .await?;
    warehouse.drop_older_generations(&e.id, computed_ms).await?;
    Ok((computation.rollups, computed_ms))
}

/// Moves an experiment's stored rollups forward by the units with events loaded since
/// (`LOAD_MARGIN_MS` before) they were computed, or computes them in full when they cannot
/// be moved: the experiment has ended since (its end leaves out events that the stored
/// rows may count; once a computation knew the end, later ticks move forward again), its
/// rows lack what its metrics read (running totals, or the values and buckets of capped and
/// quantile metrics; or the stored computation lacks the bucket sums of its quantile
/// metrics), or hold the values of capped metrics in other places (rows that kept every
/// metric's), it is stamped too far ahead of now ([`stamped_ahead`]), or
/// `ClickHouse::advance` says so.
async fn advance(
    warehouse: &ClickHouse,
    (e, plan): (&Experiment, &ExperimentPlan),
    stored: &StoredRollups,
    margin_ms: i64,
    lease: &Lease,
) -> Result<(), crate::Error> {
    let now_ms = clock::now_ms();
    let version = now_ms.max(stored.computed_ms + 1);
    let since = stored.computed_ms - margin_ms;
    let by = computed_by(plan);
    let advanced = if stored.plan == by && !stamped_ahead(stored.computed_ms, now_ms, margin_ms) {
        warehouse
            .advance(&e.id, plan, stored, version, since)
            .await?
    } else {
        None
    };
    match advanced {
        Some(mut computation) => {
            // Once its rows are copied, the stored computation can no longer be moved
            // forward by another tick: both steps only while this one holds the ticks.
            lease.hold().await?;
            warehouse
                .commit_units(
                    (&e.id, plan),
                    (stored.generation, version),
                    &mut computation,
                )
                .await?;
            lease.hold().await?;
            warehouse
                .store_rollups(&e.id, (&by, stored.generation), version, &computation)
                .await?;
        }
        None => {
            compute(warehouse, (e, plan), lease).await?;
        }
    }
    Ok(())
}

/// Whether a stored computation is stamped further ahead of now than the margin a tick
/// looks back by: made on a clock that ran fast (and carried forward since, each
/// computation being stamped after the one before). Loaders stamp their rows by their own
/// clocks, so a tick that looked for rows loaded since that stamp would miss, for good,
/// every row loaded until the real time caught up with it; such a computation is made
/// again in full instead, until it has. Within the margin, a tick looks back far enough.
fn stamped_ahead(stored_ms: i64, now_ms: i64, margin_ms: i64) -> bool {
    stored_ms > now_ms.saturating_add(margin_ms)
}

/// An experiment's rollups and when they were computed: the newest stored computation if it
/// followed the experiment's current plan (or, once the raw events of a settled experiment
/// have gone, whatever plan it followed: [`kept_as_computed`]), else a new one (which is
/// stored for the next reader).
pub async fn rollups(
    db: &Db,
    warehouse: &ClickHouse,
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
) -> Result<(Rollups, i64), crate::Error> {
    let plan = plan_of(e, metrics);
    if let Some(stored) = warehouse.stored_for_results(&e.id).await? {
        let current = follows(&stored.plan, &plan);
        if current || kept_as_computed(warehouse, e, &stored, &mut None).await? {
            return Ok((stored.computation.rollups, stored.computed_ms));
        }
    }
    // Stored only under the ticks' lease: storing drops older generations of unit rows,
    // which a tick may be moving forward. While a tick holds it, the request does not wait:
    // it computes into a generation of its own that nobody else writes (negative, so never
    // taken for a stored one's), answers from it, and drops it; the tick stores its own.
    if let Some(lease) = Lease::take(db).await? {
        let computed = compute(warehouse, (e, &plan), &lease).await;
        lease.release().await;
        return computed;
    }
    let plan = &plan;
    beside_ticks(warehouse, |history| async move {
        let started_ms = clock::now_ms();
        let generation = generation_beside_ticks(started_ms);
        let computed = warehouse.rebuild((&e.id, plan), generation, &history).await;
        warehouse.drop_generation(&e.id, generation).await?;
        Ok((computed?.rollups, started_ms))
    })
    .await
}

/// How many times a computation beside the ticks is made before the request is told to
/// come back: ticks drop months of raw events about once a month, so the second attempt
/// all but always finds none dropped.
const ATTEMPTS_BESIDE_TICKS: usize = 3;

/// Makes `compute`, a computation from the history it is given and the raw events, without
/// the ticks' lease (a request's). A tick may meanwhile sum a month of raw events into the
/// history and drop them: a computation that read the history before the summing and the
/// raw events after the drop would miss that month's events, and one that read a month of
/// exposures in one statement and not in the next would count its units in part. So it is
/// made again when a month was dropped while it ran, and after `ATTEMPTS_BESIDE_TICKS`
/// such attempts the caller is told to try again later. The months are read before the
/// history, or a month dropped in between would go unseen. A batch of history counted
/// meanwhile changes nothing while its month is kept: the computation reads its rows raw.
pub async fn beside_ticks<T, F, Fut>(
    warehouse: &ClickHouse,
    mut compute: F,
) -> Result<T, crate::Error>
where
    F: FnMut(History) -> Fut,
    Fut: Future<Output = Result<T, crate::Error>>,
{
    for _ in 0..ATTEMPTS_BESIDE_TICKS {
        let months = warehouse.raw_months().await?;
        let computed = compute(warehouse.history().await?).await?;
        if !warehouse.raw_months().await?.dropped_since(&months) {
            return Ok(computed);
        }
        tracing::info!("a tick dropped raw events while a request computed from them");
    }
    Err(crate::Error::Unavailable {
        message: "the warehouse is dropping raw events past retention; try again shortly",
        retry_after_s: 30,
    })
}

/// Experiments that may still hold results, with the catalog's metrics.
async fn candidates(db: &Db) -> Result<(Vec<Experiment>, HashMap<String, Metric>), crate::Error> {
    let mut conn = db.pool.acquire().await?;
    let mut experiments = store::experiments::with_status(
        &mut conn,
        &[Status::Running, Status::Paused, Status::Completed],
    )
    .await?;
    let recently = clock::now_ms() - ARCHIVED_SETTLING_WINDOW_MS;
    let archived = store::experiments::archived_since(&mut conn, recently).await?;
    // One archived between the two reads is listed once.
    let listed: HashSet<String> = experiments.iter().map(|e| e.id.clone()).collect();
    experiments.extend(archived.into_iter().filter(|e| !listed.contains(&e.id)));
    // Holdouts are read out as experiments of their own (`Holdout::readout`).
    let holdouts = store::catalog::holdouts(&mut conn, None).await?;
    experiments.extend(holdouts.iter().map(|h| h.readout()));
    let metrics = store::catalog::metrics(&mut conn, None)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    Ok((experiments, metrics))
}

/// One analysis tick's warehouse work: moves forward the rollups of every experiment still
/// collecting events, then drops raw events past retention. Returns the experiments
/// recomputed, `None` if another process holds the ticks.
pub async fn refresh(
    state: &Pipeline,
    warehouse: &ClickHouse,
) -> Result<Option<usize>, crate::Error> {
    // Exposures may be stamped before a start by as much as the collector takes.
    let lead_ms = EXPOSED_BEFORE_START_MS.max(state.settings.event_window.max_age_ms);
    let retention = (state.settings.warehouse_retention_days, lead_ms);
    refresh_with(&state.db, retention, warehouse, LOAD_MARGIN_MS).await
}

/// The repair: computes the rollups of every experiment that may still hold results in
/// full, from all their raw events, whatever is stored (but for settled experiments whose
/// raw events have gone, [`kept_as_computed`]). Returns the experiments computed,
/// `None` if another process holds the ticks. Like a tick, it goes on past an experiment
/// it cannot compute, and then fails naming them.
pub async fn rebuild_all(db: &Db, warehouse: &ClickHouse) -> Result<Option<usize>, crate::Error> {
    let Some(lease) = Lease::take(db).await? else {
        return Ok(None);
    };
    let rebuilt = async {
        let (experiments, metrics) = candidates(db).await?;
        let mut failed = Vec::new();
        // Read once, when a settled experiment asks.
        let mut oldest_raw_month = None;
        for e in &experiments {
            let computed = async {
                let Some(e) = reread(db, e).await? else {
                    return Ok(());
                };
                if let Some(stored) = warehouse.stored_rollups(&e.id).await?
                    && kept_as_computed(warehouse, &e, &stored, &mut oldest_raw_month).await?
                {
                    return Ok(());
                }
                compute(warehouse, (&e, &plan_of(&e, &metrics)), &lease).await?;
                Ok::<_, crate::Error>(())
            };
            if let Err(error) = computed.await {
                failed.push(went_on_past(error, &e.id)?);
            }
        }
        all_or_failed(experiments.len(), failed)
    }
    .await;
    lease.release().await;
    rebuilt.map(Some)
}

/// The experiment (or holdout readout) as it is now, `None` if it has gone. A tick reads
/// its list once, and a long one may reach an experiment after it ended: the end must be
/// known, or a computation made after it would count what was stamped later, and once
/// settled would never be redone.
async fn reread(db: &Db, e: &Experiment) -> Result<Option<Experiment>, crate::Error> {
    let mut conn = db.pool.acquire().await?;
    if let Some(fresh) = store::experiments::get(&mut conn, &e.id).await? {
        return Ok(Some(fresh));
    }
    let holdouts = store::catalog::holdouts(&mut conn, Some(&e.id)).await?;
    Ok(holdouts.first().map(Holdout::readout))
}

/// [`refresh`] with the configuration database, the raw events' retention (`None` keeps
/// them all), and how long before the previous computation to look for newly loaded events
/// (tests, whose loads all commit before a tick, use 0 to recompute only the units with
/// events loaded since).
pub async fn refresh_with_margin(
    db: &Db,
    retention_days: Option<i64>,
    warehouse: &ClickHouse,
    margin_ms: i64,
) -> Result<Option<usize>, crate::Error> {
    let retention = (retention_days, EXPOSED_BEFORE_START_MS);
    refresh_with(db, retention, warehouse, margin_ms).await
}

/// [`refresh_with_margin`], keeping raw events from `lead_ms` before the earliest start of
/// an experiment that still collects (see [`needs_raw_events_from`]).
async fn refresh_with(
    db: &Db,
    (retention_days, lead_ms): (Option<i64>, i64),
    warehouse: &ClickHouse,
    margin_ms: i64,
) -> Result<Option<usize>, crate::Error> {
    let Some(lease) = Lease::take(db).await? else {
        return Ok(None);
    };
    let ticked = tick(db, (retention_days, lead_ms, margin_ms), warehouse, &lease).await;
    lease.release().await;
    ticked.map(Some)
}

/// [`refresh_with_margin`]'s work, under the ticks' lease. An experiment whose computation
/// fails is logged and left for the next tick, and the tick goes on: at a thousand
/// experiments, one that fails every time (an undecodable stored row, a statement over the
/// warehouse's limits) must not hold back the results of every experiment listed after it.
/// Its raw events are kept. The tick then fails with [`crate::Error::ExperimentsFailed`];
/// only a lost lease stops it at once.
async fn tick(
    db: &Db,
    (retention_days, lead_ms, margin_ms): (Option<i64>, i64, i64),
    warehouse: &ClickHouse,
    lease: &Lease,
) -> Result<usize, crate::Error> {
    let (experiments, metrics) = candidates(db).await?;
    let mut refreshed = 0;
    let mut failed = Vec::new();
    // The earliest start among experiments whose rollups may still change, less what their
    // exposures may be stamped before it: raw events from before that can go once past
    // retention.
    let mut needed_from = i64::MAX;
    // Read once, when an archived experiment asks.
    let mut oldest_raw_month = None;
    for e in &experiments {
        let ticked = tick_experiment(
            db,
            (e, &metrics),
            (warehouse, &mut oldest_raw_month),
            margin_ms,
            lease,
        );
        match ticked.await {
            Ok(Ticked::Left) => {}
            Ok(Ticked::Computed { collecting }) => {
                refreshed += 1;
                if collecting {
                    needed_from = needed_from.min(needs_raw_events_from(e, lead_ms));
                }
            }
            Err(error) => {
                failed.push(went_on_past(error, &e.id)?);
                // Whether it still collects is unknown: its raw events stay.
                needed_from = needed_from.min(needs_raw_events_from(e, lead_ms));
            }
        }
    }
    warehouse.drop_old_staging(clock::now_ms()).await?;
    if let Some(days) = retention_days {
        let cutoff = (clock::now_ms() - days * clock::DAY_MS).min(needed_from);
        drop_months_before(
            warehouse,
            month_of(cutoff),
            clock::now_ms() - margin_ms,
            lease,
        )
        .await?;
    }
    all_or_failed(refreshed, failed)
}

/// How long before its start an experiment's exposures may be stamped, at least: a client
/// whose clock lags stamps an exposure from the experiment's first snapshot up to the
/// collector's window before (7 days by default, `--event-retention-days`; a tick takes the
/// longer of the two), and such an exposure counts.
const EXPOSED_BEFORE_START_MS: i64 = 31 * clock::DAY_MS;

/// From when a collecting experiment needs its raw events, given how long before its start
/// its exposures may be stamped (`lead_ms`): their month may be one before its start's,
/// and dropping it would take units out of its results (or move their first day) at their
/// next tick.
fn needs_raw_events_from(e: &Experiment, lead_ms: i64) -> i64 {
    e.started_at_ms
        .map_or(i64::MIN, |started| started.saturating_sub(lead_ms))
}

/// One experiment's failure in a tick or a repair, which go on past it: logged, and its id
/// returned to be named at the end. A lost lease is returned as the error instead, since
/// nothing more may be stored.
fn went_on_past(error: crate::Error, id: &str) -> Result<String, crate::Error> {
    if matches!(error, crate::Error::TicksLeaseLost) {
        return Err(error);
    }
    tracing::warn!(%id, %error, "computing an experiment's rollups failed");
    Ok(id.to_string())
}

/// What a tick or a repair that went through every experiment returns: `done`, or the
/// experiments it failed to compute.
fn all_or_failed(done: usize, failed: Vec<String>) -> Result<usize, crate::Error> {
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(crate::Error::ExperimentsFailed { failed })
    }
}

/// What a tick did with one experiment.
enum Ticked {
    /// Nothing, and its raw events are not needed: it has gone, it has settled, it is a
    /// draft, or it is an archived experiment whose raw events have gone.
    Left,
    /// Its rollups were computed; `collecting` says whether they may still change.
    Computed { collecting: bool },
}

/// One experiment's part of a tick: moves its rollups forward, computes them in full, or
/// leaves them.
async fn tick_experiment(
    db: &Db,
    (e, metrics): (&Experiment, &HashMap<String, Metric>),
    (warehouse, oldest_raw_month): (&ClickHouse, &mut Option<Option<u32>>),
    margin_ms: i64,
    lease: &Lease,
) -> Result<Ticked, crate::Error> {
    let Some(e) = &reread(db, e).await? else {
        return Ok(Ticked::Left);
    };
    let stored = warehouse.stored_rollups(&e.id).await?;
    if let Some(stored) = &stored
        && kept_as_computed(warehouse, e, stored, oldest_raw_month).await?
    {
        return Ok(Ticked::Left);
    }
    let plan = plan_of(e, metrics);
    let current = stored.as_ref().is_some_and(|s| follows(&s.plan, &plan));
    let collecting = collecting(
        e.status,
        e.ended_at_ms,
        stored.as_ref().map(|s| s.computed_ms),
    );
    match &stored {
        Some(stored) if current && collecting => {
            advance(warehouse, (e, &plan), stored, margin_ms, lease).await?;
        }
        _ if collecting || !current => {
            compute(warehouse, (e, &plan), lease).await?;
        }
        _ => return Ok(Ticked::Left),
    }
    Ok(Ticked::Computed { collecting })
}

/// Whether an experiment's `stored` computation stays as it is because the raw events it
/// counted are no longer all kept: retention drops an experiment's months once it has
/// settled (its exposures with them; only metric events are summed into the history), and
/// a computation from what is left would count a fraction of its units and replace its
/// results for good. That holds for a settled experiment whose plan changed since (a
/// metric it reads was edited after it completed), which is computed again only while its
/// events are all there, and for one that versions before 0957952 left unsettled when it
/// was archived (they dropped its months too). `oldest_raw_month` is read once, on first
/// asking.
async fn kept_as_computed(
    warehouse: &ClickHouse,
    e: &Experiment,
    stored: &StoredRollups,
    oldest_raw_month: &mut Option<Option<u32>>,
) -> Result<bool, crate::Error> {
    let settled = !collecting(e.status, e.ended_at_ms, Some(stored.computed_ms));
    if !settled && e.status != Status::Archived {
        return Ok(false);
    }
    let oldest = match oldest_raw_month {
        Some(oldest) => *oldest,
        None => *oldest_raw_month.insert(warehouse.oldest_raw_month().await?),
    };
    let kept = !raw_events_kept_for(&stored.computation.rollups, oldest);
    if kept {
        tracing::debug!(id = %e.id, "left as computed: its raw events have gone");
    }
    Ok(kept)
}

/// Drops the months of raw events before `month`, each month of metric events once it is
/// summed into the warehouse's history (of its rows loaded before `loaded_before_ms`: later
/// ones may be of loads still committing, and keep the month for a later tick). Nothing is
/// recomputed: units' pre-exposure covariates read the history as they read the raw
/// events, and every collecting experiment's exposures and events after them are later
/// than those months. Each step renews the ticks' lease strictly first, so that a tick
/// that stalled past it sums, counts and drops nothing that another tick may be summing.
async fn drop_months_before(
    warehouse: &ClickHouse,
    month: u32,
    loaded_before_ms: i64,
    lease: &Lease,
) -> Result<(), crate::Error> {
    let mut dropped = Vec::new();
    for (table, m) in warehouse.raw_months_before(month).await? {
        if table == "metric_events" {
            lease.hold().await?;
            let sum = warehouse.sum_month(m, loaded_before_ms).await?;
            lease.hold().await?;
            warehouse.count_sum(&sum).await?;
        }
        lease.hold().await?;
        if warehouse.drop_raw_month(&table, m).await? {
            dropped.push((table, m));
        }
    }
    if !dropped.is_empty() {
        tracing::info!(
            ?dropped,
            "dropped monthly partitions of raw events past retention"
        );
    }
    Ok(())
}

/// Whether the raw events that `stored` counted after its units' exposures are all kept,
/// given the oldest month kept (retention drops the oldest months first): those of every
/// month since its earliest exposure. (Events before the exposures outlive retention as
/// the warehouse's history.)
fn raw_events_kept_for(stored: &Rollups, oldest_raw_month: Option<u32>) -> bool {
    let Some(earliest) = stored.exposures.iter().map(|e| e.day).min() else {
        return true;
    };
    oldest_raw_month.is_some_and(|oldest| oldest <= month_of(earliest * clock::DAY_MS))
}

/// The month (`YYYYMM`, UTC) of a time; 0, which drops nothing, for times out of range.
fn month_of(ms: i64) -> u32 {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => u32::try_from(t.year()).unwrap_or(0) * 100 + u32::from(u8::from(t.month())),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::MetricKind;

    /// A computation stamped up to the margin ahead of now (clocks a few seconds apart)
    /// moves forward; one stamped further ahead is made again in full.
    #[test]
    fn computations_stamped_far_ahead_are_made_again() {
        let (now, margin) = (1_800_000_000_000, LOAD_MARGIN_MS);
        assert!(!stamped_ahead(now - 60_000, now, margin));
        assert!(!stamped_ahead(now + margin, now, margin));
        assert!(stamped_ahead(now + margin + 1, now, margin));
        assert!(!stamped_ahead(i64::MAX, i64::MAX, margin), "no overflow");
    }

    /// A tick that stalls past its lease, while another process takes the ticks over, must
    /// not store: every store is preceded by `hold`, which then fails. Its release leaves
    /// the other's lease.
    #[tokio::test]
    async fn a_lease_taken_over_mid_tick_holds_no_more() {
        let path = std::env::temp_dir().join(format!("abx-lease-{}.db", uuid::Uuid::new_v4()));
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", path.display()), 2)
            .await
            .expect("connect");
        db.migrate().await.expect("migrate");
        let tick = Lease::take(&db).await.expect("take").expect("free");
        tick.hold().await.expect("held");
        assert!(
            Lease::take(&db).await.expect("take").is_none(),
            "the tick's"
        );
        sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = $1")
            .bind(TICKS_LEASE)
            .execute(&db.pool)
            .await
            .expect("run out");
        let other = Lease::take(&db).await.expect("take").expect("taken over");
        assert!(matches!(
            tick.hold().await,
            Err(crate::Error::TicksLeaseLost)
        ));
        tick.release().await;
        assert!(
            Lease::take(&db).await.expect("take").is_none(),
            "the other's"
        );
        other.hold().await.expect("the other's");
        other.release().await;
        assert!(Lease::take(&db).await.expect("take").is_some(), "free");
        db.pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn completed_experiments_settle_for_an_hour() {
        let ended = Some(1_000_000);
        assert!(collecting(Status::Running, None, Some(5)));
        assert!(collecting(Status::Paused, None, Some(5)));
        assert!(!collecting(Status::Draft, None, None));
        assert!(collecting(Status::Completed, ended, None));
        assert!(collecting(
            Status::Completed,
            ended,
            Some(1_000_000 + SETTLE_MS - 1)
        ));
        assert!(!collecting(
            Status::Completed,
            ended,
            Some(1_000_000 + SETTLE_MS)
        ));
        // Archived in its settling hour, or before any tick knew its end: it settles too,
        // unless raw events it counted are gone.
        let exposed = |days: &[i64]| Rollups {
            exposures: days
                .iter()
                .map(|&day| crate::rollup::ExposureRollup {
                    variant: "control".into(),
                    day,
                    units: 1,
                    multiple: 0,
                })
                .collect(),
            ..Rollups::default()
        };
        let (march_1, april_1) = (19_783, 19_814); // 2024-03-01, 2024-04-01
        let since_march = exposed(&[april_1, march_1 + 3]);
        assert!(raw_events_kept_for(&since_march, Some(202_403)));
        assert!(raw_events_kept_for(&since_march, Some(202_402)));
        assert!(!raw_events_kept_for(&since_march, Some(202_404)));
        assert!(!raw_events_kept_for(&since_march, None));
        assert!(raw_events_kept_for(&exposed(&[april_1]), Some(202_404)));
        assert!(raw_events_kept_for(&exposed(&[]), None));
        assert!(collecting(Status::Archived, ended, None));
        assert!(collecting(Status::Archived, ended, Some(1_000_000 - 1)));
        assert!(!collecting(
            Status::Archived,
            ended,
            Some(1_000_000 + SETTLE_MS)
        ));
    }

    #[test]
    fn a_computation_that_knew_the_end_is_told_apart() {
        let mut plan = ExperimentPlan {
            variants: vec!["control".into(), "treatment".into()],
            unit_attribute: "user_id".into(),
            switchback_period_s: None,
            metrics: Vec::new(),
            ends_at_ms: None,
        };
        let running = computed_by(&plan);
        assert_eq!(
            running,
            format!("{} by 64-bit unit keys", plan.fingerprint())
        );
        plan.ends_at_ms = Some(1_796_083_200_000);
        let ended = computed_by(&plan);
        assert_ne!(ended, running);
        // Results read either; only the second lets a tick move forward.
        assert!(follows(&running, &plan) && follows(&ended, &plan));
        assert!(!follows(&format!("{running} and more"), &plan));
        plan.unit_attribute = "device_id".into();
        assert!(!follows(&running, &plan) && !follows(&ended, &plan));
    }

    /// A plan of two variants and one metric of `kind`.
    fn plan_of_one_metric(kind: MetricKind, quantile: Option<f64>) -> ExperimentPlan {
        ExperimentPlan {
            variants: vec!["control".into(), "treatment".into()],
            unit_attribute: "user_id".into(),
            switchback_period_s: None,
            metrics: vec![crate::plan::MetricPlan {
                key: "metric".into(),
                kind,
                event_type: "metric_event".into(),
                denominator: None,
                quantile,
                cap: None,
                window: None,
                filter: None,
                measure: "metric_event".into(),
                denominator_measure: None,
                compiled_filter: None,
            }],
            ends_at_ms: None,
        }
    }

    #[test]
    fn a_quantile_plan_moves_forward_only_from_units_with_values() {
        let mut plan = plan_of_one_metric(MetricKind::Quantile, Some(0.95));
        // What earlier versions stored (before units kept their values, then before the
        // bucket sums): results still read it, ticks compute anew.
        let earlier = plan.fingerprint();
        let without_sums = format!("{earlier} from unit values");
        let without_totals = format!("{earlier} from unit values with bucket sums");
        let keyed_by_128_bits = format!("{without_totals} from day totals");
        let by = computed_by(&plan);
        assert_eq!(by, format!("{keyed_by_128_bits} by 64-bit unit keys"));
        assert!(follows(&earlier, &plan) && follows(&without_sums, &plan));
        assert!(follows(&without_totals, &plan) && follows(&keyed_by_128_bits, &plan));
        assert!(follows(&by, &plan));
        plan.ends_at_ms = Some(1_796_083_200_000);
        let ended = computed_by(&plan);
        assert_eq!(
            ended,
            format!(
                "{earlier} ends at 1796083200000 from unit values with bucket sums from day totals \
                 by 64-bit unit keys"
            )
        );
        assert!(follows(&ended, &plan) && follows(&by, &plan));
        // A capped plan without quantiles has no bucket sums to name.
        plan.metrics[0].quantile = None;
        plan.metrics[0].cap = Some(crate::model::catalog::Cap {
            value: Some(100.0),
            percentile: None,
        });
        let capped_by = computed_by(&plan);
        let earlier_capped = format!(
            "{} ends at 1796083200000 from unit values from day totals",
            plan.fingerprint()
        );
        assert_eq!(
            capped_by,
            format!("{earlier_capped} capped values only by 64-bit unit keys")
        );
        // Rows that kept every metric's values: results read them, ticks compute anew.
        assert!(follows(&earlier_capped, &plan) && follows(&capped_by, &plan));
        assert!(follows(
            &format!("{earlier_capped} capped values only"),
            &plan
        ));
        assert_ne!(earlier_capped, capped_by);
        plan.metrics[0].cap = None;
        plan.metrics[0].quantile = Some(0.95);
        assert!(!follows(
            &format!("{earlier} ends at  from unit values"),
            &plan
        ));
        plan.metrics[0].quantile = Some(0.5);
        assert!(!follows(&ended, &plan) && !follows(&by, &plan));
    }

    #[test]
    fn a_plan_with_metrics_moves_forward_only_from_units_with_totals() {
        let mut plan = plan_of_one_metric(MetricKind::Conversion, None);
        // An earlier version's computations, whose unit rows kept no running totals:
        // results read them, ticks compute anew.
        let earlier = plan.fingerprint();
        assert_eq!(
            computed_by(&plan),
            format!("{earlier} from day totals by 64-bit unit keys")
        );
        assert!(follows(&earlier, &plan) && follows(&computed_by(&plan), &plan));
        plan.ends_at_ms = Some(1_796_083_200_000);
        let ended = computed_by(&plan);
        assert_eq!(
            ended,
            format!("{earlier} ends at 1796083200000 from day totals by 64-bit unit keys")
        );
        assert!(follows(&format!("{earlier} ends at 1796083200000"), &plan));
        assert!(follows(&ended, &plan));
        assert!(!follows(
            &format!("{earlier} from day totals and more"),
            &plan
        ));
        // Rows keyed by 128 bits: results read them, ticks compute anew.
        assert!(follows(&format!("{earlier} from day totals"), &plan));
        assert!(!follows(
            &format!("{earlier} by 64-bit unit keys from day totals"),
            &plan
        ));
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_of(0), 197001);
        // 2026-11-30T23:59:59.999Z and the next millisecond.
        assert_eq!(month_of(1_796_083_199_999), 202611);
        assert_eq!(month_of(1_796_083_200_000), 202612);
        assert_eq!(month_of(i64::MIN), 0);
    }
}
