//! `/api/v1/keys`: API keys. A key's secret is shown once, at creation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiJson, ApiPath, json};
use crate::AppState;
use crate::auth::{self, Caller, Permission, Role};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{Page, check_text, new_id};
use crate::store::{self, Change};
use abx_origin_domain::keys::ApiKeyView;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    pub name: String,
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The secret. It is not stored and cannot be shown again.
    pub secret: String,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", responses((status = 200, body = Page<ApiKeyView>), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    Ok(json(
        StatusCode::OK,
        &Page {
            items: store::list_keys(&mut conn).await?,
            next_cursor: None,
        },
    ))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = KeyInput,
    responses((status = 201, body = CreatedKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(input): ApiJson<KeyInput>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    let mut errors = Vec::new();
    check_text(&input.name, "name", 200, &mut errors);
    if input.name.trim().is_empty() {
        errors.push(crate::error::FieldError::new("name", "required"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Unprocessable(errors));
    }
    let (id, actor) = (new_id(), caller.actor());
    let secret = auth::generate_key(input.role);
    let view = state
        .mutate(async |conn| {
            store::insert_key(conn, &id, &input.name, input.role, &secret).await?;
            let details = json!({"name": input.name, "role": input.role, "prefix": secret.prefix});
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "key.created",
                    entity_type: "api_key",
                    entity_id: &id,
                    details,
                },
            )
            .await?;
            store::list_keys(conn)
                .await?
                .into_iter()
                .find(|k| k.id == id)
                .ok_or_else(|| ApiError::not_found("key"))
        })
        .await?;
    state.reload_keys().await?;
    Ok(json(
        StatusCode::CREATED,
        &CreatedKey {
            key: view,
            secret: secret.secret,
        },
    ))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require(Permission::WriteConfig)?;
    let actor = caller.actor();
    state
        .mutate(async |conn| {
            let keys = store::list_keys(conn).await?;
            let key = keys
                .iter()
                .find(|k| k.id == id && k.revoked_at.is_none())
                .ok_or_else(|| ApiError::not_found(format!("active key `{id}`")))?;
            let admins = keys
                .iter()
                .filter(|k| k.role == Role::Admin && k.revoked_at.is_none())
                .count();
            if key.role == Role::Admin && admins == 1 {
                return Err(ApiError::conflict(
                    "last_admin_key",
                    "the last admin key cannot be revoked",
                ));
            }
            store::revoke_key(conn, &id).await?;
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "key.revoked",
                    entity_type: "api_key",
                    entity_id: &id,
                    details: json!({"name": key.name}),
                },
            )
            .await?;
            Ok(())
        })
        .await?;
    state.reload_keys().await?;
    Ok(StatusCode::NO_CONTENT)
}
