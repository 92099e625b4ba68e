//! `/api/v1/layers`, `/holdouts`, `/segments`, `/metrics`, `/dimensions`.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sqlx::AnyConnection;

use super::experiments::segment_depths;
use super::{ApiJson, ApiPath, ApiQuery, check_version, if_match, json, merge_patch, with_version};
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::catalog::{
    self, HoldoutInput, InstanceDimensionsInput, LayerInput, MetricInput, SegmentInput,
};
use crate::model::catalog::{Holdout, HoldoutStatus, InstanceDimensions, Layer, Metric, Segment};
use crate::model::experiment::Status;
use crate::model::{Page, new_id, targeting};
use crate::store::{self, Change};

fn one<T>(mut found: Vec<T>, what: &str, id: &str) -> ApiResult<T> {
    found
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("{what} `{id}`")))
}

fn key_unchanged(current: &str, next: &str) -> ApiResult<()> {
    if current == next {
        Ok(())
    } else {
        Err(ApiError::conflict(
            "not_editable",
            "keys never change; create a new object instead",
        ))
    }
}

/// `?limit=&cursor=` of the lists read whole from the store, ordered by key (catalog
/// objects and flags: hundreds at most).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor` (the last key it listed).
    pub cursor: Option<String>,
}

/// The page of `items` (ordered by key) after the cursor.
pub fn page<T>(items: Vec<T>, query: &PageQuery, key: impl Fn(&T) -> &str) -> ApiResult<Page<T>> {
    let limit = crate::model::page_limit(query.limit)? as usize;
    let mut items: Vec<T> = match &query.cursor {
        Some(cursor) => items
            .into_iter()
            .filter(|i| key(i) > cursor.as_str())
            .collect(),
        None => items,
    };
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = more
        .then(|| items.last().map(|i| key(i).to_string()))
        .flatten();
    Ok(Page { items, next_cursor })
}

/// Experiments that are running or paused, which pin parts of the configuration.
async fn active_experiments(
    conn: &mut AnyConnection,
) -> Result<Vec<crate::model::experiment::Experiment>, crate::store::Error> {
    store::experiments::with_status(conn, &[Status::Running, Status::Paused]).await
}

// ---- layers ----

#[utoipa::path(get, path = "/api/v1/layers", tag = "layers", params(PageQuery), responses((status = 200, body = Page<Layer>)))]
pub async fn list_layers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::catalog::layers(&mut conn, None).await?;
    Ok(json(StatusCode::OK, &page(items, &query, |i| &i.key)?))
}

#[utoipa::path(get, path = "/api/v1/layers/{id}", tag = "layers", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Layer), (status = 404, body = ErrorBody)))]
pub async fn get_layer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = one(
        store::catalog::layers(&mut conn, Some(&id)).await?,
        "layer",
        &id,
    )?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

#[utoipa::path(post, path = "/api/v1/layers", tag = "layers", request_body = LayerInput,
    responses((status = 201, body = Layer), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_layer(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<LayerInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let spec = catalog::validate_layer(&input)?;
    let (id, actor) = (new_id(), caller.actor());
    let layer = state
        .mutate(async |conn| {
            store::catalog::insert_layer(conn, &id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "layer.created",
                    entity_type: "layer",
                    entity_id: &id,
                    details: json!({"key": spec.key}),
                },
            )
            .await?;
            one(store::catalog::layers(conn, Some(&id)).await?, "layer", &id)
        })
        .await?;
    let version = layer.version;
    Ok(with_version(json(StatusCode::CREATED, &layer), version))
}

fn layer_input(layer: &Layer) -> LayerInput {
    LayerInput {
        key: layer.key.clone(),
        name: Some(layer.name.clone()),
        description: Some(layer.description.clone()),
        unit: Some(layer.unit.clone()),
    }
}

#[utoipa::path(patch, path = "/api/v1/layers/{id}", tag = "layers", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Layer), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_layer(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let layer = state
        .mutate(async |conn| {
            let current = one(store::catalog::layers(conn, Some(&id)).await?, "layer", &id)?;
            check_version(expected, current.version)?;
            let spec = catalog::validate_layer(&merge_patch(&layer_input(&current), body)?)?;
            key_unchanged(&current.key, &spec.key)?;
            if spec.unit != current.unit {
                let members = store::experiments::list(
                    conn,
                    &store::experiments::Filter {
                        layer: Some(&current.id),
                        limit: 1,
                        include_archived: false,
                        ..Default::default()
                    },
                )
                .await?;
                if !members.is_empty() {
                    return Err(ApiError::conflict(
                        "not_editable",
                        "a layer's unit cannot change while it has experiments",
                    ));
                }
            }
            store::catalog::update_layer(conn, &current.id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "layer.updated",
                    entity_type: "layer",
                    entity_id: &current.id,
                    details: json!({"key": spec.key}),
                },
            )
            .await?;
            one(
                store::catalog::layers(conn, Some(&current.id)).await?,
                "layer",
                &id,
            )
        })
        .await?;
    let version = layer.version;
    Ok(with_version(json(StatusCode::OK, &layer), version))
}

// ---- holdouts ----

#[utoipa::path(get, path = "/api/v1/holdouts", tag = "holdouts", params(PageQuery), responses((status = 200, body = Page<Holdout>)))]
pub async fn list_holdouts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::catalog::holdouts(&mut conn, None).await?;
    Ok(json(StatusCode::OK, &page(items, &query, |i| &i.key)?))
}

#[utoipa::path(get, path = "/api/v1/holdouts/{id}", tag = "holdouts", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Holdout), (status = 404, body = ErrorBody)))]
pub async fn get_holdout(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = one(
        store::catalog::holdouts(&mut conn, Some(&id)).await?,
        "holdout",
        &id,
    )?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

#[utoipa::path(post, path = "/api/v1/holdouts", tag = "holdouts", request_body = HoldoutInput,
    responses((status = 201, body = Holdout), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_holdout(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<HoldoutInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let (id, actor) = (new_id(), caller.actor());
    let holdout = state
        .mutate(async |conn| {
            let spec = catalog::validate_holdout(&input, &metric_keys(conn).await?)?;
            store::catalog::insert_holdout(conn, &id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "holdout.created",
                    entity_type: "holdout",
                    entity_id: &id,
                    details: json!({"key": spec.key, "percent_bp": spec.percent_bp}),
                },
            )
            .await?;
            one(
                store::catalog::holdouts(conn, Some(&id)).await?,
                "holdout",
                &id,
            )
        })
        .await?;
    let version = holdout.version;
    Ok(with_version(json(StatusCode::CREATED, &holdout), version))
}

fn holdout_input(h: &Holdout) -> HoldoutInput {
    HoldoutInput {
        key: h.key.clone(),
        name: Some(h.name.clone()),
        description: Some(h.description.clone()),
        percent: h.percent,
        unit: Some(h.unit.clone()),
        metrics: h.metrics.clone(),
    }
}

/// The catalog's metric keys, which a holdout's metrics must be.
async fn metric_keys(conn: &mut AnyConnection) -> Result<HashSet<String>, crate::store::Error> {
    let metrics = store::catalog::metrics(conn, None).await?;
    Ok(metrics.into_iter().map(|m| m.key).collect())
}

#[utoipa::path(patch, path = "/api/v1/holdouts/{id}", tag = "holdouts", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Holdout), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_holdout(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let holdout = state
        .mutate(async |conn| {
            let current = one(store::catalog::holdouts(conn, Some(&id)).await?, "holdout", &id)?;
            check_version(expected, current.version)?;
            let input = merge_patch(&holdout_input(&current), body)?;
            let spec = catalog::validate_holdout(&input, &metric_keys(conn).await?)?;
            key_unchanged(&current.key, &spec.key)?;
            // Its units, and the readout that counts them, depend on both: once any
            // experiment has respected a holdout (drafts and archived ones too: its readout
            // may hold their exposures), they are fixed, also after it ends, since its
            // readout stays.
            let moves_units = spec.percent_bp != current.percent_bp || spec.unit != current.unit;
            if moves_units && respecting_experiments(conn, &current.id).await? > 0 {
                return Err(ApiError::conflict("not_editable", "the holdout's size and unit cannot change once experiments respect it: it would move their units between its arms; end it and create another"));
            }
            store::catalog::update_holdout(conn, &current.id, &spec).await?;
            store::record(conn, Change { actor: &actor, action: "holdout.updated", entity_type: "holdout", entity_id: &current.id, details: json!({"key": spec.key, "percent_bp": spec.percent_bp}) }).await?;
            one(store::catalog::holdouts(conn, Some(&current.id)).await?, "holdout", &id)
        })
        .await?;
    let version = holdout.version;
    Ok(with_version(json(StatusCode::OK, &holdout), version))
}

/// How many experiments, in any status, respect holdout `id`.
async fn respecting_experiments(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<usize, crate::store::Error> {
    let all = [
        Status::Draft,
        Status::Running,
        Status::Paused,
        Status::Completed,
        Status::Archived,
    ];
    let experiments = store::experiments::with_status(conn, &all).await?;
    Ok(experiments
        .iter()
        .filter(|e| e.holdout_id.as_deref() == Some(id))
        .count())
}

#[utoipa::path(post, path = "/api/v1/holdouts/{id}/end", tag = "holdouts", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    responses((status = 200, body = Holdout), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn end_holdout(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let holdout = state
        .mutate(async |conn| {
            let current = one(
                store::catalog::holdouts(conn, Some(&id)).await?,
                "holdout",
                &id,
            )?;
            check_version(expected, current.version)?;
            if !store::catalog::end_holdout(conn, &current.id).await? {
                return Err(ApiError::conflict(
                    "illegal_transition",
                    "the holdout has ended already; an ended holdout never holds units again",
                ));
            }
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "holdout.ended",
                    entity_type: "holdout",
                    entity_id: &current.id,
                    details: json!({"key": current.key}),
                },
            )
            .await?;
            one(
                store::catalog::holdouts(conn, Some(&current.id)).await?,
                "holdout",
                &id,
            )
        })
        .await?;
    let version = holdout.version;
    Ok(with_version(json(StatusCode::OK, &holdout), version))
}

// ---- segments ----

#[utoipa::path(get, path = "/api/v1/segments", tag = "segments", params(PageQuery), responses((status = 200, body = Page<Segment>)))]
pub async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::catalog::segments(&mut conn, None).await?;
    Ok(json(StatusCode::OK, &page(items, &query, |i| &i.key)?))
}

#[utoipa::path(get, path = "/api/v1/segments/{id}", tag = "segments", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Segment), (status = 404, body = ErrorBody)))]
pub async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = one(
        store::catalog::segments(&mut conn, Some(&id)).await?,
        "segment",
        &id,
    )?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

/// Validates a segment against the others, refusing reference cycles.
async fn validate_segment(
    conn: &mut AnyConnection,
    input: &SegmentInput,
) -> ApiResult<catalog::SegmentSpec> {
    let depths = segment_depths(conn).await?;
    let conditions: HashMap<String, Json> = store::catalog::segments(conn, None)
        .await?
        .into_iter()
        .map(|s| (s.key, s.condition))
        .collect();
    // Does segment `from` (transitively) refer to `target`?
    let reaches = |from: &str, target: &str| {
        let mut stack = vec![from.to_string()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = stack.pop() {
            if key == target {
                return true;
            }
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Some(condition) = conditions.get(&key) {
                let mut next = std::collections::BTreeSet::new();
                targeting::references(condition, &mut next);
                stack.extend(next);
            }
        }
        false
    };
    Ok(catalog::validate_segment(input, &depths, reaches)?)
}

#[utoipa::path(post, path = "/api/v1/segments", tag = "segments", request_body = SegmentInput,
    responses((status = 201, body = Segment), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<SegmentInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let (id, actor) = (new_id(), caller.actor());
    let segment = state
        .mutate(async |conn| {
            let spec = validate_segment(conn, &input).await?;
            store::catalog::insert_segment(conn, &id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "segment.created",
                    entity_type: "segment",
                    entity_id: &id,
                    details: json!({"key": spec.key}),
                },
            )
            .await?;
            one(
                store::catalog::segments(conn, Some(&id)).await?,
                "segment",
                &id,
            )
        })
        .await?;
    let version = segment.version;
    Ok(with_version(json(StatusCode::CREATED, &segment), version))
}

fn segment_input(s: &Segment) -> SegmentInput {
    SegmentInput {
        key: s.key.clone(),
        name: Some(s.name.clone()),
        description: Some(s.description.clone()),
        condition: s.condition.clone(),
    }
}

/// Refuses a change of a segment's condition while a running or paused experiment's
/// targeting refers to it, directly or through other segments: an experiment's targeting
/// cannot change while it runs (it would move units in and out mid-test), and a segment it
/// refers to is part of its targeting. Flags may refer to segments that change.
async fn refuse_while_targeted_by_active(conn: &mut AnyConnection, key: &str) -> ApiResult<()> {
    let conditions: HashMap<String, Json> = store::catalog::segments(conn, None)
        .await?
        .into_iter()
        .map(|s| (s.key, s.condition))
        .collect();
    for e in active_experiments(conn).await? {
        let Some(targeting) = &e.targeting else {
            continue;
        };
        let mut reached = std::collections::BTreeSet::new();
        let mut next = std::collections::BTreeSet::new();
        targeting::references(targeting, &mut next);
        while let Some(segment) = next.pop_first() {
            if reached.insert(segment.clone())
                && let Some(condition) = conditions.get(&segment)
            {
                targeting::references(condition, &mut next);
            }
        }
        if reached.contains(key) {
            return Err(ApiError::conflict(
                "not_editable",
                format!(
                    "experiment `{}` is {} and targets this segment: its condition cannot change until it is completed",
                    e.key,
                    e.status.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a segment change that makes a condition referring to it nest deeper than a
/// snapshot holds: another segment's, an experiment's targeting or a flag rule's, each
/// checked against the segment as it was. The snapshot would not compile (a 500).
async fn refuse_conditions_too_deep(conn: &mut AnyConnection) -> ApiResult<()> {
    let depths = segment_depths(conn).await?;
    let mut too_deep: Vec<String> = depths
        .iter()
        .filter(|(_, depth)| **depth > targeting::MAX_DEPTH)
        .map(|(key, _)| format!("segment `{key}`"))
        .collect();
    let experiments = store::experiments::with_status(
        conn,
        &[
            Status::Draft,
            Status::Running,
            Status::Paused,
            Status::Completed,
        ],
    )
    .await?;
    for e in experiments {
        if e.targeting
            .as_ref()
            .is_some_and(|t| targeting::depth(t, &depths) > targeting::MAX_DEPTH)
        {
            too_deep.push(format!("experiment `{}`", e.key));
        }
    }
    for flag in store::flags::flags(conn, None).await? {
        let conditions = flag.rules.iter().filter_map(|r| r.condition.as_ref());
        if conditions
            .into_iter()
            .any(|c| targeting::depth(c, &depths) > targeting::MAX_DEPTH)
        {
            too_deep.push(format!("flag `{}`", flag.key));
        }
    }
    if too_deep.is_empty() {
        return Ok(());
    }
    too_deep.sort();
    Err(ApiError::invalid(
        "condition",
        format!(
            "with this condition, conditions that refer to the segment nest deeper than {}: {}",
            targeting::MAX_DEPTH,
            too_deep.join(", ")
        ),
    ))
}

#[utoipa::path(patch, path = "/api/v1/segments/{id}", tag = "segments", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Segment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_segment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let segment = state
        .mutate(async |conn| {
            let current = one(
                store::catalog::segments(conn, Some(&id)).await?,
                "segment",
                &id,
            )?;
            check_version(expected, current.version)?;
            let spec =
                validate_segment(conn, &merge_patch(&segment_input(&current), body)?).await?;
            key_unchanged(&current.key, &spec.key)?;
            if spec.condition != current.condition {
                refuse_while_targeted_by_active(conn, &current.key).await?;
            }
            store::catalog::update_segment(conn, &current.id, &spec).await?;
            refuse_conditions_too_deep(conn).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "segment.updated",
                    entity_type: "segment",
                    entity_id: &current.id,
                    details: json!({"key": spec.key, "condition": spec.condition}),
                },
            )
            .await?;
            one(
                store::catalog::segments(conn, Some(&current.id)).await?,
                "segment",
                &id,
            )
        })
        .await?;
    let version = segment.version;
    Ok(with_version(json(StatusCode::OK, &segment), version))
}

// ---- metrics ----

#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics", params(PageQuery), responses((status = 200, body = Page<Metric>)))]
pub async fn list_metrics(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::catalog::metrics(&mut conn, None).await?;
    Ok(json(StatusCode::OK, &page(items, &query, |i| &i.key)?))
}

#[utoipa::path(get, path = "/api/v1/metrics/{id}", tag = "metrics", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Metric), (status = 404, body = ErrorBody)))]
pub async fn get_metric(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = one(
        store::catalog::metrics(&mut conn, Some(&id)).await?,
        "metric",
        &id,
    )?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

#[utoipa::path(post, path = "/api/v1/metrics", tag = "metrics", request_body = MetricInput,
    responses((status = 201, body = Metric), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_metric(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<MetricInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let spec = catalog::validate_metric(&input)?;
    let (id, actor) = (new_id(), caller.actor());
    let metric = state
        .mutate(async |conn| {
            store::catalog::insert_metric(conn, &id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "metric.created",
                    entity_type: "metric",
                    entity_id: &id,
                    details: json!({"key": spec.key}),
                },
            )
            .await?;
            one(
                store::catalog::metrics(conn, Some(&id)).await?,
                "metric",
                &id,
            )
        })
        .await?;
    // This process's collector refuses out-of-range values at once; the others on their
    // next reload.
    state.reload_keys().await?;
    let version = metric.version;
    Ok(with_version(json(StatusCode::CREATED, &metric), version))
}

fn metric_input(m: &Metric) -> MetricInput {
    MetricInput {
        key: m.key.clone(),
        name: Some(m.name.clone()),
        description: Some(m.description.clone()),
        kind: m.kind,
        event_type: m.event_type.clone(),
        denominator_event_type: m.denominator_event_type.clone(),
        quantile: m.quantile,
        cap: m.cap,
        window: m.window,
        direction: Some(m.direction),
        guardrail_threshold: m.guardrail_threshold,
        value_min: m.value_min,
        value_max: m.value_max,
        filter: m.filter.clone(),
    }
}

#[utoipa::path(patch, path = "/api/v1/metrics/{id}", tag = "metrics", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Metric), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_metric(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let actor = caller.actor();
    let metric = state
        .mutate(async |conn| {
            let current = one(
                store::catalog::metrics(conn, Some(&id)).await?,
                "metric",
                &id,
            )?;
            check_version(expected, current.version)?;
            let spec = catalog::validate_metric(&merge_patch(&metric_input(&current), body)?)?;
            key_unchanged(&current.key, &spec.key)?;
            let redefines = spec.kind != current.kind
                || spec.event_type != current.event_type
                || spec.denominator_event_type != current.denominator_event_type
                || spec.filter != current.filter
                || spec.quantile != current.quantile
                || spec.cap != current.cap
                || spec.window != current.window;
            let in_use = active_experiments(conn).await?.iter().any(|e| {
                e.primary_metric == current.key
                    || e.secondary_metrics.contains(&current.key)
                    || e.guardrail_metrics.contains(&current.key)
            });
            // A running holdout's readout is read for months: redefining its metric would
            // rewrite all of it.
            let read_out = store::catalog::holdouts(conn, None)
                .await?
                .iter()
                .any(|h| h.status == HoldoutStatus::Running && h.metrics.contains(&current.key));
            if redefines && in_use {
                return Err(ApiError::conflict(
                    "not_editable",
                    "what a metric measures cannot change while running experiments use it",
                ));
            }
            if redefines && read_out {
                return Err(ApiError::conflict(
                    "not_editable",
                    "what a metric measures cannot change while running holdouts read it out",
                ));
            }
            store::catalog::update_metric(conn, &current.id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "metric.updated",
                    entity_type: "metric",
                    entity_id: &current.id,
                    details: json!({"key": spec.key}),
                },
            )
            .await?;
            one(
                store::catalog::metrics(conn, Some(&current.id)).await?,
                "metric",
                &id,
            )
        })
        .await?;
    state.reload_keys().await?;
    let version = metric.version;
    Ok(with_version(json(StatusCode::OK, &metric), version))
}

// ---- the instance's dimensions ----

#[utoipa::path(get, path = "/api/v1/dimensions", tag = "dimensions",
    responses((status = 200, body = InstanceDimensions, description = "The attributes every experiment may be broken down by, besides its own `dimensions`")))]
pub async fn get_dimensions(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let found = store::catalog::instance_dimensions(&mut conn).await?;
    let version = found.version;
    Ok(with_version(json(StatusCode::OK, &found), version))
}

#[utoipa::path(put, path = "/api/v1/dimensions", tag = "dimensions", request_body = InstanceDimensionsInput,
    params(("If-Match" = Option<String>, Header, description = "The version last read; 412 when it changed since")),
    responses((status = 200, body = InstanceDimensions), (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_dimensions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(input): ApiJson<InstanceDimensionsInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let expected = if_match(&headers)?;
    let dimensions = catalog::validate_instance_dimensions(&input)?;
    let actor = caller.actor();
    let saved = state
        .mutate(async |conn| {
            let current = store::catalog::instance_dimensions(conn).await?;
            check_version(expected, current.version)?;
            store::catalog::set_instance_dimensions(conn, &dimensions).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "dimensions.updated",
                    entity_type: "dimensions",
                    entity_id: "instance",
                    details: json!({"from": current.dimensions, "to": dimensions}),
                },
            )
            .await?;
            Ok(store::catalog::instance_dimensions(conn).await?)
        })
        .await?;
    let version = saved.version;
    Ok(with_version(json(StatusCode::OK, &saved), version))
}
