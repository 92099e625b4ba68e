//! `/api/v1/audit`: who changed what, newest first.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::json;
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::AuditEntry;
use crate::model::Page;
use crate::store;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// `experiment`, `layer`, `flag`, `segment`, `holdout`, `metric`, `dimensions`, `api_key`.
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let Query(query) = query?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("malformed cursor"))
        })
        .transpose()?;
    let limit = crate::model::page_limit(query.limit)?;
    let mut conn = state.db.pool.acquire().await?;
    let mut items = store::audit_log(
        &mut conn,
        query.entity_type.as_deref(),
        query.entity_id.as_deref(),
        before,
        limit + 1,
    )
    .await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(json(StatusCode::OK, &Page { items, next_cursor }))
}
