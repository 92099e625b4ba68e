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

/// How long a health check's finding stands for the checks after it.
const HEALTH_CHECKED_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a health check waits for each database.
const HEALTH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Public. 503 when the database cannot be reached (assignment still works from memory).
#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> ApiResult<Response> {
    // Health is public and outside the concurrency limits: one check at a time pings the
    // databases, at most once a second, and the others answer as it found them, so that a
    // flood of checks cannot take every connection of the pools from real requests. A ping
    // that hangs (a half-open connection) gives up after `HEALTH_PING_TIMEOUT`, so that the
    // checks queued behind it answer soon, unhealthy.
    let mut checked = state.health_checked.lock().await;
    let healthy = match *checked {
        Some((at, healthy)) if at.elapsed() < HEALTH_CHECKED_FOR => healthy,
        _ => {
            let mut healthy = true;
            // The event log is checked too: on SQLite it is a file of its own.
            for db in [&state.db, &state.pipeline.log] {
                let error = match tokio::time::timeout(HEALTH_PING_TIMEOUT, db.ping()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "no answer in time".into(),
                };
                tracing::warn!(%error, "health check: database unreachable");
                healthy = false;
                break;
            }
            *checked = Some((std::time::Instant::now(), healthy));
            healthy
        }
    };
    drop(checked);
    if !healthy {
        return Err(ApiError::Unavailable {
            message: "the database is unreachable".into(),
            retry_after_s: 5,
        });
    }
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
