//! `/api/v1/flags`: feature flags, their rollouts and kill switches.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value as Json, json};
use sqlx::AnyConnection;

use super::catalog::{PageQuery, page};
use super::experiments::segment_depths;
use super::{ApiJson, ApiPath, ApiQuery, check_version, if_match, json, merge_patch, with_version};
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::flag::Flag;
use crate::model::flag::{self, FlagInput, FlagSpec};
use crate::model::{Page, new_id};
use crate::store::{self, Change};

async fn load(conn: &mut AnyConnection, id: &str) -> ApiResult<Flag> {
    store::flags::flags(conn, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("flag `{id}`")))
}

async fn validate(conn: &mut AnyConnection, input: &FlagInput) -> ApiResult<FlagSpec> {
    let segments = segment_depths(conn).await?;
    let references: Vec<&str> = input
        .rules
        .iter()
        .filter_map(|rule| rule.from_experiment.as_ref())
        .map(|from| from.experiment.as_str())
        .collect();
    let experiments = store::experiments::keys_of(conn, &references).await?;
    Ok(flag::validate(input, &segments, &experiments)?)
}

#[utoipa::path(get, path = "/api/v1/flags", tag = "flags", params(PageQuery), responses((status = 200, body = Page<Flag>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let items = store::flags::flags(&mut conn, None).await?;
    Ok(json(StatusCode::OK, &page(items, &query, |f| &f.key)?))
}

#[utoipa::path(get, path = "/api/v1/flags/{id}", tag = "flags", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Flag), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/flags", tag = "flags", request_body = FlagInput,
    responses((status = 201, body = Flag), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<FlagInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let (id, actor) = (new_id(), caller.actor());
    let created = state
        .mutate(async |conn| {
            let spec = validate(conn, &input).await?;
            store::flags::insert(conn, &id, &spec).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "flag.created",
                    entity_type: "flag",
                    entity_id: &id,
                    details: json!({"key": spec.key, "enabled": spec.enabled}),
                },
            )
            .await?;
            load(conn, &id).await
        })
        .await?;
    let version = created.version;
    Ok(with_version(json(StatusCode::CREATED, &created), version))
}

/// A change of a flag.
enum Edit {
    /// A new definition, checked before it is written.
    Definition(FlagInput),
    /// Turning it on or off, which writes nothing else and checks nothing again: the kill
    /// switch must work exactly when something went wrong, also when a rule no longer holds
    /// (an experiment it took its value from was archived since; the snapshot leaves such a
    /// rule out), which an edit of the rules must fix but turning the flag off must not
    /// wait for.
    Enabled(bool),
}

/// Applies a change to a flag.
async fn change(
    state: &AppState,
    caller: &Caller,
    id: &str,
    expected: Option<i64>,
    edit: impl FnOnce(&Flag) -> ApiResult<Edit>,
    action: &str,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let actor = caller.actor();
    let updated = state
        .mutate(async |conn| {
            let current = load(conn, id).await?;
            check_version(expected, current.version)?;
            let (written, details) = match edit(&current)? {
                Edit::Definition(input) => {
                    let spec = validate(conn, &input).await?;
                    if spec.key != current.key {
                        return Err(ApiError::conflict(
                            "not_editable",
                            "a flag's key never changes",
                        ));
                    }
                    let written =
                        store::flags::update(conn, &current.id, &spec, current.version).await?;
                    let details =
                        json!({"key": spec.key, "enabled": spec.enabled, "rules": spec.rules});
                    (written, details)
                }
                Edit::Enabled(enabled) => {
                    let written =
                        store::flags::set_enabled(conn, &current.id, enabled, current.version);
                    let details =
                        json!({"key": current.key, "enabled": enabled, "rules": current.rules});
                    (written.await?, details)
                }
            };
            if !written {
                return Err(ApiError::conflict(
                    "version_conflict",
                    "the flag changed concurrently; reload and retry",
                ));
            }
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action,
                    entity_type: "flag",
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

#[utoipa::path(patch, path = "/api/v1/flags/{id}", tag = "flags", params(("id" = String, Path, description = "Id or key"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on")),
    request_body(content = Object, description = "Fields of the create body to change"),
    responses((status = 200, body = Flag), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Json>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    change(
        &state,
        &caller,
        &id,
        expected,
        |current| merge_patch(&current.input(), body).map(Edit::Definition),
        "flag.updated",
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/flags/{id}/enable", tag = "flags", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Flag), (status = 404, body = ErrorBody)))]
pub async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    change(
        &state,
        &caller,
        &id,
        None,
        |_| Ok(Edit::Enabled(true)),
        "flag.enabled",
    )
    .await
}

/// The kill switch: everyone gets the off value from the next snapshot on.
#[utoipa::path(post, path = "/api/v1/flags/{id}/disable", tag = "flags", params(("id" = String, Path, description = "Id or key")),
    responses((status = 200, body = Flag), (status = 404, body = ErrorBody)))]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    change(
        &state,
        &caller,
        &id,
        None,
        |_| Ok(Edit::Enabled(false)),
        "flag.disabled",
    )
    .await
}
