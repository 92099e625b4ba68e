//! Snapshot distribution: the latest bytes (CDN-cacheable, with a strong ETag), the
//! readable twin, older versions, the signing key, and a server-sent change stream.

use std::convert::Infallible;
use std::time::Duration;

use abx_core::Format;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiPath, json, open_stream};
use crate::AppState;
use crate::auth::{Caller, Permission, Role};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::publish::Published;
use crate::store;

pub const SNAPSHOT_MEDIA_TYPE: &str = "application/vnd.abx.snapshot";

/// Which snapshot format a client reads (docs/snapshot-format.md, "Versions").
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FormatQuery {
    /// `1` (the default, which every runtime reads) or `2`, which adds the attributes
    /// exposures carry and the holdouts' units; runtimes built since format 2 ask for it.
    pub format: Option<String>,
}

impl FormatQuery {
    fn format(query: Result<Query<FormatQuery>, QueryRejection>) -> ApiResult<Format> {
        let Query(query) = query?;
        match query.format.as_deref() {
            None | Some("1") => Ok(Format::V1),
            Some("2") => Ok(Format::V2),
            Some(_) => Err(ApiError::bad_request("format must be 1 or 2")),
        }
    }
}

/// Whether `If-None-Match` already names this ETag.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == etag
        })
}

/// CDN-friendly: brief freshness, then served stale while revalidating, and for a day
/// if the origin fails, so edges keep working through an origin outage.
fn cache_control(state: &AppState) -> HeaderValue {
    let max_age = state.settings.snapshot_max_age_s;
    HeaderValue::from_str(&format!(
        "public, max-age={max_age}, stale-while-revalidate=60, stale-if-error=86400"
    ))
    .unwrap_or(HeaderValue::from_static("public, max-age=10"))
}

fn respond(
    state: &AppState,
    headers: &HeaderMap,
    etag: &str,
    version: u64,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut response = if not_modified(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(header::CACHE_CONTROL, cache_control(state));
    // Browser keys read the client copy: a shared cache must not hand one key's copy to
    // another kind of key. The format is in the query, which caches key on already.
    h.insert(header::VARY, HeaderValue::from_static("authorization"));
    h.insert("x-abx-snapshot-version", HeaderValue::from(version));
    // Which key signed it, so that a client holding several keys during a rotation, or an
    // operator, can tell which one verifies it without trying.
    if let Ok(value) = HeaderValue::from_str(&crate::publish::signing_key_id(&state.public_key)) {
        h.insert("x-abx-key-id", value);
    }
    response
}

#[utoipa::path(get, path = "/api/v1/snapshot", tag = "snapshots",
    params(("If-None-Match" = Option<String>, Header, description = "ETag of the copy the client holds"), FormatQuery),
    responses((status = 200, description = "The latest signed snapshot (docs/snapshot-format.md)", content_type = "application/vnd.abx.snapshot", body = Vec<u8>),
              (status = 304, description = "The client's copy is current"), (status = 400, body = ErrorBody, description = "A `format` other than 1 or 2"),
              (status = 401, body = ErrorBody)))]
pub async fn latest(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<FormatQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadSnapshot)?;
    let format = FormatQuery::format(query)?;
    let published = state.published();
    let copy = state.snapshot_copy(&caller, &published, format);
    Ok(respond(
        &state,
        &headers,
        copy.etag,
        published.version,
        SNAPSHOT_MEDIA_TYPE,
        copy.bytes.to_vec(),
    ))
}

#[utoipa::path(get, path = "/api/v1/snapshot.json", tag = "snapshots",
    responses((status = 200, description = "The latest snapshot as readable JSON", content_type = "application/json", body = Object),
              (status = 304, description = "The client's copy is current")))]
pub async fn latest_json(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::ReadSnapshot)?;
    let published = state.published();
    // The twin shows everything, whatever the format; its ETag follows the newest format's.
    let copy = state.snapshot_copy(&caller, &published, Format::LATEST);
    // The twin has its own ETag so a cache never confuses it with the binary.
    let etag = format!("{}-json\"", copy.etag.trim_end_matches('"'));
    Ok(respond(
        &state,
        &headers,
        &etag,
        published.version,
        "application/json",
        copy.json().as_bytes().to_vec(),
    ))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{version}", tag = "snapshots", params(("version" = u64, Path, description = "Snapshot version"), FormatQuery),
    responses((status = 200, description = "An older snapshot (immutable)", content_type = "application/vnd.abx.snapshot", body = Vec<u8>),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn by_version(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(version): ApiPath<String>,
    query: Result<Query<FormatQuery>, QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadSnapshot)?;
    let format = FormatQuery::format(query)?;
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::bad_request("the version is a number"))?;
    let mut conn = state.db.pool.acquire().await?;
    let stored = store::snapshot_at(&mut conn, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("snapshot version {version}")))?;
    let (etag, bytes) =
        if caller.role != Role::Sdk && abx_core::format_of(&stored.bytes) == Ok(format) {
            (stored.etag, stored.bytes)
        } else {
            let published = Published::from_bytes(&stored)
                .map_err(|e| ApiError::Internal(e.context(format!("stored snapshot {version}"))))?;
            let client;
            let copy = if caller.role == Role::Sdk {
                client = state.client_copy_of(published.evaluator.snapshot(), &stored.bytes);
                client.copy(format, &state.signing_seed)
            } else {
                published.copy(format, &state.signing_seed)
            };
            (copy.etag.to_owned(), copy.bytes.to_vec())
        };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, SNAPSHOT_MEDIA_TYPE)],
        bytes,
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // Browser keys read the client copy: a shared cache must not hand one key's copy to
    // another kind of key.
    h.insert(header::VARY, HeaderValue::from_static("authorization"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    Ok(response)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// The 32-byte public key, hex.
    pub public_key: String,
    /// The key's id (the first 8 bytes of its SHA-256, hex): the deployment's active key.
    pub key_id: String,
}

/// Public: anyone may verify snapshots.
#[utoipa::path(get, path = "/api/v1/snapshot/key", tag = "snapshots", security(()), responses((status = 200, body = PublicKey)))]
pub async fn public_key(State(state): State<AppState>) -> Response {
    json(
        StatusCode::OK,
        &PublicKey {
            algorithm: "ed25519",
            public_key: crate::auth::hex(&state.public_key),
            key_id: crate::publish::signing_key_id(&state.public_key),
        },
    )
}

/// One server-sent event of the change stream, as an SSE parser sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SnapshotEvent {
    /// Always `snapshot`.
    pub event: String,
    /// JSON text: `{"version": N, "etag": "…"}`.
    pub data: String,
}

#[derive(Serialize)]
struct Announcement {
    version: u64,
    etag: String,
}

fn announcement(state: &AppState, caller: &Caller, format: Format) -> Event {
    let published = state.published();
    let data = serde_json::to_string(&Announcement {
        version: published.version,
        etag: state
            .snapshot_copy(caller, &published, format)
            .etag
            .to_owned(),
    })
    .unwrap_or_default();
    Event::default().event("snapshot").data(data)
}

/// Server-sent events: a `snapshot` event with `{version, etag}` on connect and after every
/// publication, so edges and browsers refresh at once instead of polling. The ETag is that
/// of the format asked for, as `GET /snapshot` with the same `format` answers.
#[utoipa::path(get, path = "/api/v1/snapshot/stream", tag = "snapshots", params(FormatQuery),
    responses((status = 200, description = "text/event-stream of `snapshot` events", content_type = "text/event-stream", body = SnapshotEvent),
              (status = 400, body = ErrorBody, description = "A `format` other than 1 or 2")))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<FormatQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Permission::ReadSnapshot)?;
    let format = FormatQuery::format(query)?;
    // Each stream holds a connection while it lives: capped per client and in total, and
    // ended after its lifetime (EventSource reconnects, and is counted again).
    let slot = open_stream(&state, caller.client)?;
    let ends = tokio::time::Instant::now() + state.settings.streams.lifetime;
    let receiver = state.subscribe();
    let first = announcement(&state, &caller, format);
    let events = stream::unfold(
        (state, receiver, Some(first), slot),
        move |(state, mut receiver, first, slot)| {
            let caller = caller.clone();
            async move {
                if let Some(first) = first {
                    return Some((Ok(first), (state, receiver, None, slot)));
                }
                let next = tokio::time::timeout_at(ends, receiver.recv()).await.ok()?;
                match next {
                    // A lagging listener only needs the newest version.
                    Ok(_) | Err(RecvError::Lagged(_)) => Some((
                        Ok(announcement(&state, &caller, format)),
                        (state, receiver, None, slot),
                    )),
                    Err(RecvError::Closed) => None,
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
