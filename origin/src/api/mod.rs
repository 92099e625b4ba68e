//! The HTTP surface: `app(state)` builds every route. docs/api.md describes the conventions;
//! `/api/v1/openapi.json` is generated from the handlers' annotations.

mod analysis;
mod audit;
mod catalog;
mod console;
mod evaluate;
mod events;
mod experiments;
mod flags;
mod idempotency;
mod keys;
mod snapshot;
mod system;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, OptionalFromRequest, Path, Query, Request,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;

pub(crate) use events::{PipelineStatus, status as pipeline_status_now};

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// Largest accepted request body on the admin API.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// `Json<T>` whose rejections are this API's 400 errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match <Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// `Path<T>` whose rejections (a segment that is not UTF-8 once percent-decoded) are this
/// API's 400 errors, not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// `Query<T>` whose rejections (`?limit=abc`) are this API's 400 errors, not axum's plain
/// text.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// An optional JSON body: absent when the request has no `Content-Type`, or an empty (or
/// blank) body whatever its `Content-Type`, as many HTTP clients send on a bodiless POST.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match <Json<T> as OptionalFromRequest<S>>::from_request(req, state).await {
            Ok(value) => Ok(value.map(|Json(v)| ApiJson(v))),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A body that does not have the expected shape (a missing field, a wrong type) is a 400
/// with serde's message, which names the field and position.
fn json_rejection(rejection: JsonRejection) -> ApiError {
    ApiError::from(rejection)
}

/// Applies a PATCH body to the create body an object was made from: top-level fields
/// replace the stored ones (nested objects whole: a targeting condition merged key by key
/// would be a different condition) and `null` resets a field to its default, whatever its
/// type. The result then goes through the same validation as a create.
pub fn merge_patch<T: Serialize + DeserializeOwned>(
    current: &T,
    patch: serde_json::Value,
) -> ApiResult<T> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(ApiError::bad_request(
            "a PATCH body is a JSON object of the fields to change",
        ));
    };
    let serde_json::Value::Object(mut merged) =
        serde_json::to_value(current).map_err(anyhow::Error::from)?
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "stored object did not serialize to a JSON object"
        )));
    };
    for (field, value) in patch {
        // Absent, the field takes its default on deserialisation (`None`, an empty list,
        // the documented default); a required field is then reported missing.
        if value.is_null() {
            merged.remove(&field);
        } else {
            merged.insert(field, value);
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("invalid field in PATCH body: {e}"),
    })
}

/// Responds with JSON and a status.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, Json(value)).into_response()
}

/// `If-Match` as a version number (accepts `3`, `"3"` and `W/"3"`).
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not text"))?;
    let digits = text.trim().trim_start_matches("W/").trim_matches('"');
    digits
        .parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request("If-Match must be the object's version number"))
}

pub fn check_version(expected: Option<i64>, current: i64) -> ApiResult<()> {
    match expected {
        Some(v) if v != current => Err(ApiError::PreconditionFailed(format!(
            "If-Match version {v} does not match the current version {current}; reload and retry"
        ))),
        _ => Ok(()),
    }
}

/// Adds `ETag: "<version>"` so clients can send it back in `If-Match`.
pub fn with_version(mut response: Response, version: i64) -> Response {
    if let Ok(value) = format!("\"{version}\"").parse() {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[derive(OpenApi)]
#[openapi(
    info(title = "abx origin API", version = "1", description = "Experiments, flags and snapshots. See docs/api.md."),
    paths(
        experiments::list, experiments::create, experiments::get_one, experiments::patch, experiments::delete,
        experiments::start, experiments::pause, experiments::resume, experiments::complete, experiments::archive,
        catalog::list_layers, catalog::create_layer, catalog::get_layer, catalog::patch_layer,
        catalog::list_holdouts, catalog::create_holdout, catalog::get_holdout, catalog::patch_holdout,
        catalog::end_holdout,
        catalog::list_segments, catalog::create_segment, catalog::get_segment, catalog::patch_segment,
        catalog::list_metrics, catalog::create_metric, catalog::get_metric, catalog::patch_metric,
        catalog::get_dimensions, catalog::put_dimensions,
        flags::list, flags::create, flags::get_one, flags::patch, flags::enable, flags::disable,
        keys::list, keys::create, keys::revoke,
        snapshot::latest, snapshot::latest_json, snapshot::by_version, snapshot::public_key, snapshot::stream,
        evaluate::assignment, evaluate::evaluate,
        audit::list,
        events::post_events, events::post_experiment_event, events::get_event, events::pipeline_status,
        events::dead_letters, events::replay,
        analysis::experiment_results, analysis::holdout_results, analysis::kill, analysis::compare, analysis::srm, analysis::adjust,
        analysis::boundaries, analysis::power_calculator, analysis::interactions,
        system::health, console::whoami,
    ),
    modifiers(&Security, &CommonResponses),
    security(("api_key" = [])),
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An abx API key"))
                    .build(),
            ),
        );
    }
}

/// Every operation can answer with the API's common errors; listing them once here keeps
/// the document complete without repeating them on each handler.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let common = [
            ("400", "Malformed request"),
            ("401", "Missing or invalid API key"),
            ("403", "The key's role may not do this"),
            ("404", "Not found"),
            ("405", "Method not allowed"),
            ("413", "Body too large"),
            ("422", "Well-formed but invalid"),
            ("429", "Rate limited (see Retry-After)"),
            ("500", "Internal error"),
            ("503", "Unavailable (see Retry-After)"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            let content = ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build();
                            ResponseBuilder::new()
                                .description(description)
                                .content("application/json", content)
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// Records each request's latency under its route pattern (not the raw path, which would
/// make one series per experiment id).
async fn observe(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.pipeline.telemetry.observe_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A path no route of this process matches. A process that runs only some roles says
/// which, so that a request sent to the wrong tier is easy to recognise.
async fn not_found(axum::extract::State(state): axum::extract::State<AppState>) -> ApiError {
    let roles = state.settings.roles;
    if roles == crate::Roles::ALL {
        ApiError::not_found("route")
    } else {
        ApiError::not_found(format!("route (this process runs the {roles} role only)"))
    }
}

/// Turns axum's plain-text 405 into this API's JSON error.
async fn json_method_not_allowed(request: Request, next: middleware::Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this route does not accept that method", "details": null}});
        return (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
    }
    response
}

/// The CORS policy of the routes that web pages on any origin call with an sdk key.
fn sdk_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            "x-abx-key".parse().expect("header name"),
        ])
        .expose_headers([
            header::ETAG,
            "x-abx-snapshot-version".parse().expect("header name"),
        ])
        // Every origin gets the same `*` answer, so caches need not split by Origin.
        .vary([])
}

/// The routes of this process's roles (see `Roles`); health, `/metrics` and the API
/// description are served by every process.
pub fn app(state: AppState) -> Router {
    let roles = state.settings.roles;
    let mut api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/health", get(system::health));
    if roles.collector {
        api = api
            .route("/events", post(events::post_events).layer(sdk_cors()))
            .merge(
                Router::new()
                    .route(
                        "/experiments/{id}/events",
                        post(events::post_experiment_event),
                    )
                    .layer(middleware::from_fn_with_state(
                        state.clone(),
                        idempotency::layer,
                    ))
                    .layer(sdk_cors()),
            );
    }
    if roles.admin {
        api = api.merge(admin_routes(&state));
    }
    let mut router = Router::new()
        .nest("/api/v1", api.layer(DefaultBodyLimit::max(BODY_LIMIT)))
        .route("/health", get(system::health))
        .route("/metrics", get(events::metrics));
    if roles.admin {
        router = router
            .route("/", get(console::index))
            .route("/console/{version}/{*path}", get(console::asset));
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn(json_method_not_allowed))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_concurrency,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), hold_refusals))
        .with_state(state)
}

/// Answers a rate-limited request's 429 only after `Settings::rate_limit_hold` (at most its
/// `Retry-After`). Answered at once, a client sending as fast as it gets answers makes the
/// process spend a core on refusals while its neighbours queue behind them; held, each of
/// its connections waits. The outermost layer: the request's permits are given back and
/// its latency recorded before the hold, so a held refusal costs a timer and nothing else.
async fn hold_refusals(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(limited) = response.extensions().get::<crate::error::RateLimited>() {
        tokio::time::sleep(state.settings.rate_limit_hold.min(limited.retry_after)).await;
    }
    response
}

/// Refuses requests beyond `Settings::max_concurrent_requests` at once with 503, instead of
/// queueing them until every request is slow: a flood then costs its senders, not everyone;
/// and a client's requests beyond `Settings::max_concurrent_requests_per_client` with 429,
/// so that a few clients (sending bodies slowly, say) cannot hold every permit. Health and
/// metrics stay answerable, so an overloaded process is not also declared dead.
async fn limit_concurrency(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: middleware::Next,
) -> Response {
    if matches!(
        request.uri().path(),
        "/health" | "/metrics" | "/api/v1/health"
    ) {
        return next.run(request).await;
    }
    let client = crate::auth::client_address(
        request.headers(),
        request.extensions(),
        state.settings.trusted_proxy_header.as_deref(),
    );
    // The process-wide cap is the semaphore's, which tests and `/metrics` read.
    let share = crate::per_client::Caps {
        per_client: state.settings.max_concurrent_requests_per_client,
        total: usize::MAX,
    };
    let Ok(_mine) = state.requests_by_client.admit(client, share) else {
        return ApiError::RateLimited { retry_after_s: 1 }.into_response();
    };
    match state.requests.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::Unavailable {
            message: "the origin is at its limit of concurrent requests; retry shortly".into(),
            retry_after_s: 1,
        }
        .into_response(),
    }
}

/// A slot for a new snapshot stream from `client`, or the error to answer: 429 when this
/// client has its share, 503 when the process has all it takes.
fn open_stream(state: &AppState, client: Option<IpAddr>) -> ApiResult<crate::per_client::Slot> {
    let limits = state.settings.streams;
    let caps = crate::per_client::Caps {
        per_client: limits.per_client,
        total: limits.total,
    };
    state
        .streams
        .admit(client, caps)
        .map_err(|refused| match refused {
            crate::per_client::Refused::Client => ApiError::RateLimited { retry_after_s: 5 },
            crate::per_client::Refused::Total => ApiError::Unavailable {
                message: "this process has as many snapshot streams open as it takes".into(),
                retry_after_s: 30,
            },
        })
}

/// The admin API, with the snapshot and assignment routes that sdks call.
fn admin_routes(state: &AppState) -> Router<AppState> {
    let sdk = Router::new()
        .route("/snapshot", get(snapshot::latest))
        .route("/snapshot.json", get(snapshot::latest_json))
        .route("/snapshot/key", get(snapshot::public_key))
        .route("/snapshot/stream", get(snapshot::stream))
        .route("/snapshots/{version}", get(snapshot::by_version))
        .route("/evaluate", post(evaluate::evaluate))
        .layer(sdk_cors());
    let admin = Router::new()
        .route(
            "/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route(
            "/experiments/{id}",
            get(experiments::get_one)
                .patch(experiments::patch)
                .delete(experiments::delete),
        )
        .route("/experiments/{id}/start", post(experiments::start))
        .route("/experiments/{id}/pause", post(experiments::pause))
        .route("/experiments/{id}/resume", post(experiments::resume))
        .route("/experiments/{id}/complete", post(experiments::complete))
        .route("/experiments/{id}/archive", post(experiments::archive))
        .route(
            "/experiments/{id}/assignment",
            get(evaluate::assignment).layer(sdk_cors()),
        )
        .route(
            "/experiments/{id}/results",
            get(analysis::experiment_results),
        )
        .route("/experiments/{id}/kill", post(analysis::kill))
        .route("/analysis/compare", post(analysis::compare))
        .route("/analysis/srm", post(analysis::srm))
        .route("/analysis/adjust", post(analysis::adjust))
        .route("/analysis/boundaries", post(analysis::boundaries))
        .route("/analysis/power", post(analysis::power_calculator))
        .route("/interactions", get(analysis::interactions))
        .route(
            "/layers",
            get(catalog::list_layers).post(catalog::create_layer),
        )
        .route(
            "/layers/{id}",
            get(catalog::get_layer).patch(catalog::patch_layer),
        )
        .route(
            "/holdouts",
            get(catalog::list_holdouts).post(catalog::create_holdout),
        )
        .route(
            "/holdouts/{id}",
            get(catalog::get_holdout).patch(catalog::patch_holdout),
        )
        .route("/holdouts/{id}/end", post(catalog::end_holdout))
        .route("/holdouts/{id}/results", get(analysis::holdout_results))
        .route(
            "/segments",
            get(catalog::list_segments).post(catalog::create_segment),
        )
        .route(
            "/segments/{id}",
            get(catalog::get_segment).patch(catalog::patch_segment),
        )
        .route(
            "/metrics",
            get(catalog::list_metrics).post(catalog::create_metric),
        )
        .route(
            "/metrics/{id}",
            get(catalog::get_metric).patch(catalog::patch_metric),
        )
        .route(
            "/dimensions",
            get(catalog::get_dimensions).put(catalog::put_dimensions),
        )
        .route("/flags", get(flags::list).post(flags::create))
        .route("/flags/{id}", get(flags::get_one).patch(flags::patch))
        .route("/flags/{id}/enable", post(flags::enable))
        .route("/flags/{id}/disable", post(flags::disable))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/audit", get(audit::list))
        .route("/events/{event_id}", get(events::get_event))
        .route("/pipeline", get(events::pipeline_status))
        .route("/dead-letters", get(events::dead_letters))
        .route("/dead-letters/replay", post(events::replay))
        .route("/whoami", get(console::whoami))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ));
    admin.merge(sdk)
}
