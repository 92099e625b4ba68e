//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::json;
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub snapshot_version: u64,
    pub database: &'static str,
    /// This process's roles (`collector`, `pipeline`, `admin`).
    pub roles: Vec<&'static str>,
}

/// How long databases that answered a health check are taken to be reachable.
const HEALTH_CHECKED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Public. 503 when the database cannot be reached (assignment still works from memory).
#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Response> {
    // Health is public and outside the concurrency limits: one check at a time pings the
    // databases, at most once a second while they answer, and the others wait for it, so
    // that a flood of checks cannot take every connection of the pools from real requests.
    let mut healthy_at = state.healthy_at.lock().await;
    if !healthy_at.is_some_and(|at| at.elapsed() < HEALTH_CHECKED_FOR) {
        // The event log is checked too: on SQLite it is a file of its own.
        for db in [&state.db, &state.pipeline.log] {
            db.ping().await.map_err(|error| {
                tracing::warn!(%error, "health check: database unreachable");
                ApiError::Unavailable {
                    message: "the database is unreachable".into(),
                    retry_after_s: 5,
                }
            })?;
        }
        *healthy_at = Some(std::time::Instant::now());
    }
    drop(healthy_at);
    let backend = match state.db.backend {
        crate::store::db::Backend::Sqlite => "sqlite",
        crate::store::db::Backend::Postgres => "postgres",
    };
    Ok(json(
        StatusCode::OK,
        &Health {
            status: "ok",
            snapshot_version: state.published().version,
            database: backend,
            roles: state.settings.roles.names(),
        },
    ))
}
