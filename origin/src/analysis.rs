//! Reading an experiment's results: its definition and the catalog's metrics from the store,
//! its rollups from the pipeline (SQL or warehouse), and the statistics from the domain.
//! The results handlers and the guardrail monitor read results only through here.

use std::collections::HashMap;

use sqlx::AnyConnection;

use crate::AppState;
use crate::clock;
use crate::error::{ApiError, ApiResult};
use crate::model::catalog::Metric;
use crate::results::{self, Results};
use crate::store;

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
    let metrics: HashMap<String, Metric> = store::catalog::metrics(conn, None)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let (rollups, computed_ms) = state.pipeline.rollups(conn, &e, &metrics).await?;
    let mut results = results::compute(&e, &metrics, &rollups, clock::now_ms(), daily);
    results.rollups_computed_at = clock::rfc3339_opt(computed_ms);
    Ok(results)
}
