//! `Idempotency-Key` on POST: the first response to a key is stored (per API key, by its id)
//! and replayed for retries; the same key with a different request is a 409. Only requests
//! with a valid API key are remembered, at most `MAX_STORED_PER_KEY` a day per key; server
//! errors, rate limits, 401 and 403 are not stored, so a retry after them really retries.
//! Secrets are never stored: a replayed `POST /keys` answer has `"secret": null`.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{FromRequest as _, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::BODY_LIMIT;
use crate::AppState;
use crate::auth::{hex, secret_from};
use crate::error::ApiError;
use crate::store::{self, StoredResponse};

const HEADER: &str = "idempotency-key";

/// Stored responses per API key (they are pruned after a day): beyond it, requests still
/// run but are not remembered, so a caller cannot fill the database with keys.
const MAX_STORED_PER_KEY: i64 = 10_000;

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST || !request.headers().contains_key(HEADER) {
        return next.run(request).await;
    }
    match idempotent(state, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

/// Releases an in-flight key when the request finishes, however it finishes.
struct InFlight<'a> {
    state: &'a AppState,
    slot: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.slot);
    }
}

async fn idempotent(state: AppState, request: Request, next: Next) -> Result<Response, Response> {
    let (parts, body) = request.into_parts();
    let key = parts
        .headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if key.is_empty() || key.len() > 255 {
        return Err(
            ApiError::bad_request("Idempotency-Key must be 1-255 visible characters")
                .into_response(),
        );
    }
    // Requests without a valid key go through untouched and leave nothing behind: the
    // handler answers 401.
    let Some(caller) = secret_from(&parts).and_then(|secret| state.keys.lookup(&secret)) else {
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let scope = caller.id;
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(|rejection| ApiError::from(rejection).into_response())?;
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b" ");
    hasher.update(parts.uri.path());
    hasher.update(b"\n");
    hasher.update(&bytes);
    let request_hash = hex(&hasher.finalize());

    let slot = format!("{scope}/{key}");
    if !state
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot.clone())
    {
        return Err(ApiError::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still in progress",
        )
        .into_response());
    }
    let _release = InFlight {
        state: &state,
        slot,
    };

    let stored = async {
        let mut conn = state.db.pool.acquire().await?;
        store::idempotent_response(&mut conn, &scope, &key).await
    }
    .await
    .map_err(|e| ApiError::from(e).into_response())?;
    if let Some(stored) = stored {
        if stored.request_hash != request_hash {
            return Err(ApiError::conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            )
            .into_response());
        }
        let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            stored.body,
        )
            .into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    let keep = status.is_success()
        || (status.is_client_error()
            && !matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ));
    if !keep {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 16 * BODY_LIMIT).await.map_err(|_| {
        ApiError::Internal(anyhow::anyhow!("response too large to store")).into_response()
    })?;
    let record = StoredResponse {
        request_hash,
        status: status.as_u16(),
        body: without_secret(&body),
    };
    let saved = async {
        let mut conn = state.db.pool.acquire().await?;
        let stored =
            store::store_idempotent_response(&mut conn, &scope, &key, &record, MAX_STORED_PER_KEY)
                .await?;
        if !stored {
            tracing::warn!(api_key_id = %scope, "response not stored: this API key has its {MAX_STORED_PER_KEY} idempotency keys, or a concurrent request with the same key stored first");
        }
        Ok::<(), store::Error>(())
    }
    .await;
    if let Err(error) = saved {
        tracing::warn!(%error, "could not store an idempotent response");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// The response body as stored: a top-level `secret` (the one-time secret of a new API key)
/// becomes `null`, so that no secret is ever written to the database.
fn without_secret(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut object)) if object.contains_key("secret") => {
            object.insert("secret".into(), serde_json::Value::Null);
            serde_json::Value::Object(object).to_string()
        }
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}
