//! `/api/v1/experiments`: definitions and the lifecycle.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sqlx::AnyConnection;

use super::{ApiJson, ApiPath, check_version, if_match, json, merge_patch, with_version};
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::lifecycle::{self, LifecycleBody, layer_full, load};
use crate::model::catalog::HoldoutStatus;
use crate::model::experiment::Experiment;
use crate::model::experiment::{self, Action, ExperimentInput, References, Status};
use crate::model::{Page, new_id, slots, targeting};
use crate::store::experiments::Filter;
use crate::store::{self, Change};

/// Loads what validating an experiment needs to know.
pub(super) async fn references(
    conn: &mut AnyConnection,
) -> Result<References, crate::store::Error> {
    let mut known = References::default();
    for layer in store::catalog::layers(conn, None).await? {
        known
            .layers
            .insert(layer.key.clone(), (layer.id.clone(), layer.unit.clone()));
        known
            .layers
            .insert(layer.id.clone(), (layer.id, layer.unit));
    }
    for holdout in store::catalog::holdouts(conn, None).await? {
        if holdout.status == HoldoutStatus::Ended {
            known.ended_holdouts.insert(holdout.id.clone());
        }
        known
            .holdout_units
            .insert(holdout.id.clone(), holdout.unit.clone());
        known
            .holdouts
            .insert(holdout.key.clone(), holdout.id.clone());
        known.holdouts.insert(holdout.id.clone(), holdout.id);
    }
    known.metrics = store::catalog::metrics(conn, None)
        .await?
        .into_iter()
        .map(|m| m.key)
        .collect();
    known.segments = segment_depths(conn).await?;
    Ok(known)
}

/// Each segment's total condition depth, segments it refers to included.
pub(super) async fn segment_depths(
    conn: &mut AnyConnection,
) -> Result<HashMap<String, u32>, crate::store::Error> {
    let segments = store::catalog::segments(conn, None).await?;
    let mut depths: HashMap<String, u32> = HashMap::new();
    // Segments may refer to segments: settle depths in rounds (acyclic by validation).
    for _ in 0..=segments.len() {
        let mut progressed = false;
        for s in &segments {
            if depths.contains_key(&s.key) {
                continue;
            }
            let mut references = std::collections::BTreeSet::new();
            targeting::references(&s.condition, &mut references);
            if references.iter().all(|r| depths.contains_key(r)) {
                depths.insert(s.key.clone(), targeting::depth(&s.condition, &depths));
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(depths)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only experiments in this status (archived ones are listed only when asked for).
    pub status: Option<Status>,
    /// Layer key or id.
    pub layer: Option<String>,
    /// Substring of the key or name.
    pub q: Option<String>,
    /// 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> ApiResult<(i64, String)> {
    let (ms, id) = cursor
        .split_once('.')
        .ok_or_else(|| ApiError::bad_request("malformed cursor"))?;
    Ok((
        ms.parse()
            .map_err(|_| ApiError::bad_request("malformed cursor"))?,
        id.to_string(),
    ))
}

#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", params(ListQuery),
    responses((status = 200, description = "A page of experiments, oldest first", body = Page<Experiment>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let Query(query) = query?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let limit = crate::model::page_limit(query.limit)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::experiments::list(
        &mut conn,
        &Filter {
            status: query.status,
            layer: query.layer.as_deref(),
            search: query.q.as_deref(),
            after,
            limit: limit + 1,
            include_archived: false,
        },
    )
    .await?;
    Ok(json(StatusCode::OK, &page(items, limit)))
}

fn page(mut items: Vec<Experiment>, limit: i64) -> Page<Experiment> {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            items
                .last()
                .map(|e| format!("{}.{}", e.created_at_ms, e.id))
        })
        .flatten();
    Page { items, next_cursor }
}

#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments", request_body = ExperimentInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = Experiment), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<ExperimentInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let id = new_id();
    let actor = caller.actor();
    let created = state
        .mutate(async |conn| {
            let spec = experiment::validate(&input, &references(conn).await?)?;
            store::experiments::insert(conn, &id, &spec).await?;
            let details = json!({"key": spec.key});
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "experiment.created",
                    entity_type: "experiment",
                    entity_id: &id,
                    details,
                },
            )
            .await?;
            load(conn, &id).await
        })
        .await?;
    let version = created.version;
    Ok(with_version(json(StatusCode::CREATED, &created), version))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}", tag = "experiments", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Experiment), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = load(&mut conn, &id).await?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

#[utoipa::path(patch, path = "/api/v1/experiments/{id}", tag = "experiments", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Experiment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let updated = state
        .mutate(async |conn| {
            let current = load(conn, &id).await?;
            check_version(expected, current.version)?;
            let changed: Vec<String> = body
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let input = merge_patch(&current.input(), body)?;
            let mut known = references(conn).await?;
            // A holdout the experiment respected already may stay when it has ended, or
            // compares another unit (it may predate holdouts' units) while the experiment
            // keeps its own: only a new reference to one, or a new unit, is refused.
            if let Some(holdout) = &current.holdout_id {
                known.ended_holdouts.remove(holdout);
                if input.unit.as_deref() == Some(current.unit.as_str()) {
                    known.holdout_units.remove(holdout);
                }
            }
            let spec = experiment::validate(&input, &known)?;
            experiment::check_edit(current.status, &current.spec(), &spec)?;
            if current.status.holds_slots()
                && spec.traffic_bp > current.traffic_bp
                && let Some(layer_id) = &current.layer_id
            {
                grow_allocation(conn, layer_id, &current, spec.traffic_bp).await?;
            }
            if !store::experiments::update(conn, &current.id, &spec, current.version).await? {
                return Err(ApiError::conflict(
                    "version_conflict",
                    "the experiment changed concurrently; reload and retry",
                ));
            }
            let details = json!({"fields": changed});
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "experiment.updated",
                    entity_type: "experiment",
                    entity_id: &current.id,
                    details,
                },
            )
            .await?;
            load(conn, &current.id).await
        })
        .await?;
    let version = updated.version;
    Ok(with_version(json(StatusCode::OK, &updated), version))
}

/// Adds slots for a traffic increase of a running layered experiment; its existing ranges
/// stay where they are.
async fn grow_allocation(
    conn: &mut AnyConnection,
    layer_id: &str,
    e: &Experiment,
    traffic_bp: u16,
) -> ApiResult<()> {
    let ranges = store::catalog::layer_ranges(conn, layer_id).await?;
    let taken: Vec<slots::Range> = ranges.iter().map(|(_, s, e)| (*s, *e)).collect();
    let owned: u16 = e.slots.iter().map(|(s, e)| e - s).sum();
    let extra = slots::allocate(&taken, traffic_bp.saturating_sub(owned)).map_err(layer_full)?;
    let merged = slots::merge(e.slots.iter().copied().chain(extra).collect());
    store::catalog::set_allocations(conn, layer_id, &e.id, &merged).await?;
    Ok(())
}

#[utoipa::path(delete, path = "/api/v1/experiments/{id}", tag = "experiments", params(("id" = String, Path, description = "Id or key")),
    responses((status = 204, description = "Deleted (drafts only)"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::WriteConfig)?;
    let actor = caller.actor();
    state
        .mutate(async |conn| {
            let current = load(conn, &id).await?;
            if !store::experiments::delete_draft(conn, &current.id).await? {
                return Err(ApiError::conflict(
                    "illegal_transition",
                    format!("only drafts can be deleted; this experiment is {} (complete and archive it instead)", current.status.as_str()),
                ));
            }
            let details = json!({"key": current.key});
            store::record(conn, Change { actor: &actor, action: "experiment.deleted", entity_type: "experiment", entity_id: &current.id, details }).await?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn lifecycle(
    state: AppState,
    caller: Caller,
    id: String,
    action: Action,
    body: Option<LifecycleBody>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let body = body.unwrap_or_default();
    let actor = caller.actor();
    let changed = state
        .mutate(async |conn| lifecycle::apply(conn, &actor, &id, action, &body).await)
        .await?;
    let version = changed.version;
    Ok(with_version(json(StatusCode::OK, &changed), version))
}

macro_rules! lifecycle_route {
    ($name:ident, $action:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "experiments", params(("id" = String, Path, description = "Id or key")),
            request_body(content = Option<LifecycleBody>),
            responses((status = 200, body = Experiment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
                      (status = 422, body = ErrorBody)))]
        pub async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            ApiPath(id): ApiPath<String>,
            body: Option<ApiJson<LifecycleBody>>,
        ) -> ApiResult<Response> {
            lifecycle(state, caller, id, $action, body.map(|b| b.0)).await
        }
    };
}

lifecycle_route!(
    start,
    Action::Start,
    "/api/v1/experiments/{id}/start",
    "Draft → running; allocates layer slots (409 `layer_full` when there is no room)."
);
lifecycle_route!(
    pause,
    Action::Pause,
    "/api/v1/experiments/{id}/pause",
    "Running → paused: nobody is assigned; slots are kept."
);
lifecycle_route!(
    resume,
    Action::Resume,
    "/api/v1/experiments/{id}/resume",
    "Paused → running."
);
lifecycle_route!(
    complete,
    Action::Complete,
    "/api/v1/experiments/{id}/complete",
    "Running or paused → completed, optionally shipping a variant to everyone; frees the slots."
);
lifecycle_route!(
    archive,
    Action::Archive,
    "/api/v1/experiments/{id}/archive",
    "Completed → archived: removed from snapshots."
);
