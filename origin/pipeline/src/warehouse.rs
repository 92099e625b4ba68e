//! The pipeline's rollups in the warehouse. The JetStream loader only inserts raw events;
//! on every analysis tick the pipeline recomputes, from the deduplicated raw events (per
//! unit, then per variant), the rollups of each experiment still collecting events, and
//! stores them in the warehouse as one computation. Results and guardrails read the newest
//! stored computation, so a results request costs milliseconds whatever the event count,
//! and lags the events by at most one tick plus the computation's own time.
//!
//! The rollups are recomputed rather than added to batch by batch because only the raw
//! tables can collapse the copies of an event (a redelivered message, a client's retry
//! beyond the broker's deduplication window); sums cannot tell a copy from a new event.
//!
//! The raw events are kept for `warehouse_retention_days`, as whole monthly partitions:
//! a month goes once it is past retention and no experiment that still collects events
//! started before its end, so no stored rollups are ever recomputed from partial data.

use std::collections::HashMap;

use crate::clickhouse::ClickHouse;
use crate::model::catalog::Metric;
use crate::model::experiment::Experiment;
use crate::model::experiment::Status;
use crate::plan::{ExperimentPlan, plan_of};
use crate::rollup::Rollups;
use crate::{Pipeline, clock, store};

/// A completed experiment's rollups are still recomputed this long after it ends, for the
/// events still on their way (in browsers' queues, the stream, a lagging loader); then they
/// are final.
pub const SETTLE_MS: i64 = 3_600_000;

/// Whether an experiment's rollups may still change: while it runs or is paused, and until
/// a computation made after its settling time is stored.
fn collecting(status: Status, ended_at_ms: Option<i64>, stored_ms: Option<i64>) -> bool {
    match status {
        Status::Running | Status::Paused => true,
        Status::Completed => match (stored_ms, ended_at_ms) {
            (None, _) => true,
            (Some(stored), Some(ended)) => stored < ended + SETTLE_MS,
            (Some(_), None) => false,
        },
        Status::Draft | Status::Archived => false,
    }
}

/// Computes an experiment's rollups from the raw events and stores them. The computation is
/// stamped with the time it started, so it holds at least every event loaded by then.
async fn compute(
    warehouse: &ClickHouse,
    e: &Experiment,
    plan: &ExperimentPlan,
) -> Result<(Rollups, i64), crate::Error> {
    let computed_ms = clock::now_ms();
    let rollups = warehouse.rollups(&e.id, plan).await?;
    warehouse
        .store_rollups(&e.id, &plan.fingerprint(), computed_ms, &rollups)
        .await?;
    Ok((rollups, computed_ms))
}

/// An experiment's rollups and when they were computed: the newest stored computation if it
/// followed the experiment's current plan, else a new one (which is stored for the next
/// reader).
pub async fn rollups(
    warehouse: &ClickHouse,
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
) -> Result<(Rollups, i64), crate::Error> {
    let plan = plan_of(e, metrics);
    match warehouse.stored_rollups(&e.id).await? {
        Some(stored) if stored.plan == plan.fingerprint() => {
            Ok((stored.rollups, stored.computed_ms))
        }
        _ => compute(warehouse, e, &plan).await,
    }
}

/// Experiments that may still hold results, with the catalog's metrics.
async fn candidates(
    state: &Pipeline,
) -> Result<(Vec<Experiment>, HashMap<String, Metric>), crate::Error> {
    let mut conn = state.db.pool.acquire().await?;
    let mut experiments = store::experiments::with_status(
        &mut conn,
        &[Status::Running, Status::Paused, Status::Completed],
    )
    .await?;
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

/// One analysis tick's warehouse work: recomputes the rollups of every experiment still
/// collecting events, then drops raw events past retention. Returns the experiments
/// recomputed.
pub async fn refresh(state: &Pipeline, warehouse: &ClickHouse) -> Result<usize, crate::Error> {
    let (experiments, metrics) = candidates(state).await?;
    let mut refreshed = 0;
    // The earliest start among experiments whose rollups may still change: raw events from
    // before it can go once past retention.
    let mut needed_from = i64::MAX;
    for e in &experiments {
        let stored = warehouse.stored_rollups(&e.id).await?;
        let plan = plan_of(e, &metrics);
        let current = stored
            .as_ref()
            .is_some_and(|s| s.plan == plan.fingerprint());
        let collecting = collecting(e.status, e.ended_at_ms, stored.map(|s| s.computed_ms));
        if collecting || !current {
            compute(warehouse, e, &plan).await?;
            refreshed += 1;
        }
        if collecting {
            needed_from = needed_from.min(e.started_at_ms.unwrap_or(i64::MIN));
        }
    }
    if let Some(days) = state.settings.warehouse_retention_days {
        let cutoff = (clock::now_ms() - days * clock::DAY_MS).min(needed_from);
        let dropped = warehouse.drop_months_before(month_of(cutoff)).await?;
        if !dropped.is_empty() {
            tracing::info!(
                ?dropped,
                "dropped monthly partitions of raw events past retention"
            );
        }
    }
    Ok(refreshed)
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

    #[test]
    fn completed_experiments_settle_for_an_hour() {
        let ended = Some(1_000_000);
        assert!(collecting(Status::Running, None, Some(5)));
        assert!(collecting(Status::Paused, None, Some(5)));
        assert!(!collecting(Status::Draft, None, None));
        assert!(!collecting(Status::Archived, ended, None));
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
