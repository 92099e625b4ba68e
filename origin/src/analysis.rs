//! Reading an experiment's results: its definition and the catalog's metrics from the store,
//! its rollups from the pipeline (SQL or warehouse), and the statistics from the domain.
//! The results handlers and the guardrail monitor read results only through here.

use std::collections::HashMap;

use sqlx::AnyConnection;

use crate::AppState;
use crate::clock;
use crate::error::{ApiError, ApiResult};
use crate::model::catalog::Metric;
use crate::model::filter::Filter;
use crate::pipeline;
use crate::results::{self, Results};
use crate::store;

/// Names, on each filtered metric, the properties its filter tests that no event of its
/// type has carried, so that a filter that matches nothing because of a typo says so.
async fn note_unknown_filter_properties(
    state: &AppState,
    metrics: &HashMap<String, Metric>,
    results: &mut [results::MetricResult],
) -> ApiResult<()> {
    let mut log = None;
    for result in results {
        let Some(metric) = metrics.get(&result.metric) else {
            continue;
        };
        let Some(Ok(filter)) = metric.filter.as_ref().map(Filter::compile) else {
            continue;
        };
        let conn = match &mut log {
            Some(conn) => conn,
            None => log.insert(state.pipeline.log.pool.acquire().await?),
        };
        let seen = pipeline::properties::names(conn, &metric.event_type).await?;
        result.unknown_filter_properties = filter
            .properties()
            .into_iter()
            .filter(|name| !seen.contains(*name))
            .map(str::to_string)
            .collect();
    }
    Ok(())
}

/// Loads an experiment (by id or key) and computes its results by one of its dimensions
/// (its own or the instance's), with the `top` values apart.
pub async fn drill_down_of(
    state: &AppState,
    conn: &mut AnyConnection,
    reference: &str,
    dimension: &str,
    top: usize,
) -> ApiResult<results::drilldown::DrillDown> {
    let e = store::experiments::get(conn, reference)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("experiment `{reference}`")))?;
    let instance = store::catalog::instance_dimensions(conn).await?.dimensions;
    let mut declared = e.dimensions.clone();
    declared.extend(instance.into_iter().filter(|d| !e.dimensions.contains(d)));
    if !declared.iter().any(|d| d == dimension) {
        return Err(ApiError::bad_request(if declared.is_empty() {
            format!(
                "neither the experiment nor the instance declares dimensions; add `{dimension}` to the experiment's `dimensions` (or the instance's, PUT /dimensions) first"
            )
        } else {
            format!(
                "`{dimension}` is not one of the experiment's or the instance's dimensions ({})",
                declared.join(", ")
            )
        }));
    }
    let metrics: HashMap<String, Metric> = store::catalog::metrics(conn, None)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let cells = state
        .pipeline
        .dimension_cells(conn, &e, &metrics, dimension)
        .await?;
    Ok(results::drilldown::drill_down(
        &e, &metrics, dimension, &cells, top,
    ))
}

/// Loads an experiment (by id or key) and computes its results; `daily` adds the series.
pub async fn results_of(
    state: &AppState,
    conn: &mut AnyConnection,
    reference: &str,
    daily: bool,
) -> ApiResult<Results> {
    let e = store::experiments::get(conn, reference)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("experiment `{reference}`")))?;
    results_for(state, conn, &e, daily).await
}

/// Loads a holdout (by id or key) and reads it out: the experiment `Holdout::readout`
/// makes of it, through the same results code, with a verdict in a holdout's terms.
pub async fn holdout_results_of(
    state: &AppState,
    conn: &mut AnyConnection,
    reference: &str,
    daily: bool,
) -> ApiResult<Results> {
    let holdout = store::catalog::holdouts(conn, Some(reference))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("holdout `{reference}`")))?;
    let running = holdout.status == crate::model::catalog::HoldoutStatus::Running;
    let mut results = results_for(state, conn, &holdout.readout(), daily).await?;
    if let Some(verdict) = holdout_verdict(&results, running) {
        results.recommended_action = verdict;
    }
    Ok(results)
}

/// What a holdout's primary comparison says, once the results code would recommend
/// anything at all: an experiment's "ship" or "keep running" means nothing for a holdout,
/// which measures what has shipped and keeps measuring until it is ended. `None` leaves
/// the results code's words (no data yet, a sample ratio mismatch, no primary metric).
fn holdout_verdict(results: &Results, running: bool) -> Option<String> {
    let exposed = results.variants.values().any(|v| v.impressions > 0);
    if !exposed || results.srm.as_ref().is_some_and(|s| s.mismatch) {
        return None;
    }
    let primary = results
        .metrics
        .iter()
        .find(|m| m.role == results::MetricRole::Primary)?;
    let released = primary.comparisons.first()?;
    let relative = released
        .relative
        .as_ref()
        .map(|r| format!(" by {:+.2}% (released against held)", r.estimate * 100.0))
        .unwrap_or_default();
    Some(match (released.significant, released.improvement) {
        (true, Some(true)) => format!(
            "What shipped improves {}{relative}: significant, and always valid however often it is read",
            primary.metric
        ),
        (true, _) => format!(
            "What shipped harms {}{relative}: significant; find which shipped change did it",
            primary.metric
        ),
        (false, _) if running => format!(
            "No significant long-term effect on {} yet{relative}; the holdout keeps measuring until it is ended",
            primary.metric
        ),
        (false, _) => format!(
            "No significant long-term effect on {}{relative}: the holdout has ended",
            primary.metric
        ),
    })
}

/// Computes the results of an experiment (or a holdout's readout), recording the decision
/// looks it takes first.
async fn results_for(
    state: &AppState,
    conn: &mut AnyConnection,
    e: &crate::model::experiment::Experiment,
    daily: bool,
) -> ApiResult<Results> {
    let metrics: HashMap<String, Metric> = store::catalog::metrics(conn, None)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let (rollups, computed_ms) = state.pipeline.rollups(conn, e, &metrics).await?;
    let now_ms = clock::now_ms();
    // How far the rollups reach: a warehouse's last computation, or now less the pipeline's
    // lag (as the background gauges last measured it, and older the longer ago that was).
    // While the lag is unknown no day counts as complete, so no new look is taken on days
    // whose events may still be on their way; recorded looks keep deciding.
    let data_until_ms = computed_ms.or_else(|| {
        Some(state.gauges().map_or(0, |(at, status)| {
            let behind_s = status.lag_seconds + at.elapsed().as_secs_f64();
            now_ms - (behind_s * 1_000.0) as i64
        }))
    });
    let recorded = store::experiments::decision_looks(conn, &e.id).await?;
    let compute = |recorded: &[results::DecisionLook]| {
        let reading = results::Reading {
            now_ms,
            data_until_ms,
            recorded,
            daily,
        };
        results::compute_with(e, &metrics, &rollups, &reading)
    };
    let mut results = compute(&recorded);
    if results.decision_looks != recorded {
        // This read computed a look first: record it, so that every later read (in any
        // process) decides on the same numbers. Another process may have recorded it in
        // the meantime; then its record stands, and the results are recomputed on it.
        // On the connection this read holds: taking a second one for a transaction could
        // exhaust the pool when many reads record at once. Each look is one insert that
        // keeps the first record.
        store::experiments::record_decision_looks(conn, &e.id, &results.decision_looks).await?;
        let stored = store::experiments::decision_looks(conn, &e.id).await?;
        if stored != results.decision_looks {
            results = compute(&stored);
        }
    }
    results.rollups_computed_at = clock::rfc3339_opt(computed_ms);
    note_unknown_filter_properties(state, &metrics, &mut results.metrics).await?;
    results.mismatched_exposures = store::experiments::exposure_mismatches(conn, &e.id).await?;
    Ok(results)
}
