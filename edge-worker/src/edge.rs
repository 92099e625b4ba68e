//! The glue to the Workers runtime: request routing, the origin and Cache API I/O behind the
//! snapshot policy of `snapshot.rs`, the proxy, and event forwarding with `waitUntil`.
//!
//! Principle: the experimentation layer never blocks or breaks the page. Every failure here
//! (no snapshot, origin down, a JavaScript exception while building the forwarded request)
//! degrades to forwarding the request without assignments; only the upstream itself failing
//! produces an error page (502), as it would without the worker.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use abx_core::{Context as AbxContext, Value as AbxValue};
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use js_sys::{Date, Reflect, Uint8Array};
use serde_json::json;
use url::Url;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    Headers, ReadableStream, ReadableStreamDefaultReader, Request, RequestInit, RequestRedirect,
    Response, ResponseInit, WorkerGlobalScope,
};
use worker::{Context, Delay, Env, event};

use crate::caching;
use crate::config::{self, Config, ConfigError, Verification};
use crate::context::{self, EdgeData};
use crate::cookie;
use crate::events::{self, EventsError, Fill, Pending};
use crate::render;
use crate::route;
use crate::snapshot::{self, Cell, Loaded, Plan, SnapshotError, Source};

type JsResult<T> = Result<T, JsValue>;

/// How long a background request to the origin may take before it counts as failed.
const BACKGROUND_TIMEOUT_MS: u64 = 10_000;
/// Attempts to deliver one batch of events (retries are safe: the origin deduplicates by
/// `event_id`, and ids are fixed before the first attempt).
const FORWARD_ATTEMPTS: u32 = 3;
/// The Cache API copy outlives any TTL: it only serves cold isolates while the origin is
/// unreachable, and is revalidated with the origin at once.
const CACHE_COPY_MAX_AGE_S: u32 = 30 * 24 * 60 * 60;
/// Headers only the edge may set on forwarded requests.
const INTERNAL_HEADERS: [&str; 2] = ["x-abx-assignments", "x-abx-uid"];

/// Per-isolate state. An isolate runs all its requests on one thread, interleaved at
/// `.await`s, so a thread-local is the isolate's memory; borrows never span an `.await`.
#[derive(Default)]
struct Global {
    config: Option<Result<Rc<Config>, ConfigError>>,
    cell: Cell,
    pending: Pending,
    /// `"{holdout id}:{unit}"` of the holdout exposures this isolate has logged, so that a
    /// visitor's every routed request does not log its arm again (bounded: cleared when
    /// full, after which an arm may be logged twice, which the pipeline counts once).
    holdout_exposures: std::collections::HashSet<String>,
    forwarded_batches: u64,
    failed_batches: u64,
}

thread_local! {
    static GLOBAL: RefCell<Global> = RefCell::new(Global::default());
}

fn with<R>(f: impl FnOnce(&mut Global) -> R) -> R {
    GLOBAL.with(|g| f(&mut g.borrow_mut()))
}

fn now_ms() -> f64 {
    Date::now()
}

fn global_scope() -> WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn random_uuid() -> String {
    match global_scope().crypto() {
        Ok(crypto) => crypto.random_uuid(),
        // Every Workers runtime has Web Crypto; this only guards against a broken global.
        Err(_) => format!(
            "{:x}-{:x}",
            Date::now() as u64,
            (js_sys::Math::random() * 1e15) as u64
        ),
    }
}

fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
    if let Some(config) = with(|g| g.config.clone()) {
        return config;
    }
    let parsed = config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string())).map(Rc::new);
    if let Err(error) = &parsed {
        worker::console_error!("abx edge worker misconfigured: {error}");
    }
    with(|g| g.config = Some(parsed.clone()));
    parsed
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let Ok(url) = Url::parse(&req.url()) else {
        return Ok(error_response(
            400,
            "bad_request",
            "unparseable request URL",
            None,
        )?);
    };
    let method = req.method();
    let response = match url.path() {
        "/abx/assignments" if method == "GET" => assignments(&req, &url, &env, &ctx).await,
        "/abx/events" if method == "POST" => beacon(req, &env, &ctx).await,
        "/abx/status" if method == "GET" => status(&env, &ctx).await,
        "/abx/assignments" | "/abx/status" => method_not_allowed("GET"),
        "/abx/events" => method_not_allowed("POST"),
        _ => {
            // If the module itself fails (a trap), Cloudflare sends the request on to the
            // origin server as though the worker were not there.
            ctx.pass_through_on_exception();
            proxy(req, &url, &env, &ctx).await
        }
    };
    match response {
        Ok(response) => Ok(response),
        Err(error) => {
            worker::console_error!("abx edge worker: {}", js_message(&error));
            Ok(error_response(
                500,
                "internal",
                "the edge worker failed",
                None,
            )?)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Responses

fn response(status: u16, body: Option<&str>, headers: &Headers) -> JsResult<Response> {
    let init = ResponseInit::new();
    init.set_status(status);
    init.set_headers(headers);
    Response::new_with_opt_str_and_init(body, &init)
}

/// Edge answers are per visitor and must never be stored by a shared cache.
fn json_headers() -> JsResult<Headers> {
    let headers = Headers::new()?;
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "private, no-store")?;
    headers.set("vary", "Cookie")?;
    Ok(headers)
}

fn json_response(status: u16, body: &str, set_cookie: Option<&str>) -> JsResult<Response> {
    let headers = json_headers()?;
    if let Some(cookie) = set_cookie {
        headers.append("set-cookie", cookie)?;
    }
    response(status, Some(body), &headers)
}

/// The origin's error shape (docs/api.md).
fn error_response(
    status: u16,
    code: &str,
    message: &str,
    details: Option<serde_json::Value>,
) -> JsResult<Response> {
    let body = json!({"error": {"code": code, "message": message, "details": details}});
    response(status, Some(&body.to_string()), &json_headers()?)
}

fn method_not_allowed(allow: &str) -> JsResult<Response> {
    let response = error_response(
        405,
        "method_not_allowed",
        "this route does not accept that method",
        None,
    )?;
    response.headers().set("allow", allow)?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Visitor and request data

struct Visitor {
    uid: String,
    /// `Set-Cookie` value when the id was created by this request.
    set_cookie: Option<String>,
}

fn visitor(req: &Request, config: &Config) -> Visitor {
    let header = req.headers().get("cookie").ok().flatten();
    let (uid, created) = cookie::resolve(header.as_deref(), random_uuid);
    let set_cookie = created.then(|| cookie::set_cookie(&uid, &config.cookie));
    Visitor { uid, set_cookie }
}

/// Request data the edge knows: `request.cf` on Cloudflare (locally, workerd fills it from a
/// configured header), and the user agent.
struct Edge {
    country: Option<String>,
    city: Option<String>,
    colo: Option<String>,
    user_agent: Option<String>,
}

impl Edge {
    fn of(req: &Request) -> Edge {
        let cf = Reflect::get(req, &JsValue::from_str("cf"))
            .ok()
            .filter(JsValue::is_object);
        let field = |name: &str| {
            cf.as_ref()
                .and_then(|cf| Reflect::get(cf, &JsValue::from_str(name)).ok())
                .and_then(|v| v.as_string())
        };
        Edge {
            country: field("country"),
            city: field("city"),
            colo: field("colo"),
            user_agent: req.headers().get("user-agent").ok().flatten(),
        }
    }

    fn data(&self) -> EdgeData<'_> {
        EdgeData {
            country: self.country.as_deref(),
            city: self.city.as_deref(),
            colo: self.colo.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// GET /abx/assignments

async fn assignments(req: &Request, url: &Url, env: &Env, ctx: &Context) -> JsResult<Response> {
    let config = match config(env) {
        Ok(config) => config,
        Err(error) => return unavailable(&format!("the edge worker is misconfigured: {error}")),
    };
    let visitor = visitor(req, &config);
    let edge = Edge::of(req);
    let query = match context::assignments_query(
        url.query(),
        &edge.data(),
        &config.unit_attribute,
        &visitor.uid,
        now_ms() as i64,
    ) {
        Ok(query) => query,
        Err(error) => return error_response(400, "invalid_query", &error.to_string(), None),
    };
    let Some(loaded) = current_snapshot(&config, ctx).await else {
        return unavailable("no snapshot is available yet");
    };
    let evaluation = loaded.evaluator.evaluate(&query.context, query.now_ms);
    let holdout_step =
        |a: &abx_core::Assignment<'_>| loaded.evaluator.holdout_step(a, &query.context);
    let exposure_attributes = |a: &abx_core::Assignment<'_>| {
        let carried = loaded
            .evaluator
            .exposure_attributes(a.index, &query.context);
        (!carried.is_empty()).then(|| serde_json::to_string(&carried).unwrap_or_default())
    };
    let steps = render::Steps {
        holdout_step: &holdout_step,
        exposure_attributes: &exposure_attributes,
    };
    let body = render::assignments_json(&evaluation, &steps, loaded.version, loaded.all_json_valid);
    json_response(200, &body, visitor.set_cookie.as_deref())
}

fn unavailable(message: &str) -> JsResult<Response> {
    let response = error_response(503, "unavailable", message, None)?;
    response.headers().set("retry-after", "5")?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Snapshot: the policy is `snapshot::Cell`; this is its I/O.

/// The snapshot for this request, following the cell's plan. Only the first request of a
/// cold isolate (and requests arriving while it loads) wait, for at most the configured
/// timeout; everything else is answered from memory at once.
async fn current_snapshot(config: &Rc<Config>, ctx: &Context) -> Option<Rc<Loaded>> {
    let wait_ms = config.snapshot_timeout_ms;
    let plan = with(|g| g.cell.plan(now_ms(), wait_ms));
    match plan {
        Plan::Serve(loaded) => Some(loaded),
        Plan::ServeAndRefresh(loaded) => {
            ctx.wait_until(revalidate(config.clone()));
            Some(loaded)
        }
        Plan::PassThrough => None,
        Plan::PassThroughAndLoad => {
            ctx.wait_until(load(config.clone()));
            None
        }
        Plan::LoadAndWait | Plan::Wait => {
            let deadline = with(|g| g.cell.wait_deadline_ms()).unwrap_or_else(now_ms);
            if matches!(plan, Plan::LoadAndWait) {
                // The load runs as a promise of this request: awaited here until the
                // deadline, and kept alive by `waitUntil` when it takes longer.
                let promise = wasm_bindgen_futures::future_to_promise({
                    let config = config.clone();
                    async move {
                        load(config).await;
                        Ok(JsValue::UNDEFINED)
                    }
                });
                ctx.wait_until(JsFuture::from(promise.clone()).map(|_| ()));
                let remaining = (deadline - now_ms()).max(0.0) as u64;
                let _ = within(promise, remaining).await;
            } else {
                // Requests that arrive during the first load poll for its result.
                loop {
                    let (current, busy) = with(|g| (g.cell.current(), g.cell.busy(now_ms())));
                    if current.is_some() || !busy || now_ms() >= deadline {
                        break;
                    }
                    Delay::from(Duration::from_millis(2)).await;
                }
            }
            // Plan again with the outcome: a copy from the Cache API is due for revalidation
            // at once, and a failed load may already be due for a retry (tiny TTLs).
            match with(|g| g.cell.plan(now_ms(), wait_ms)) {
                Plan::ServeAndRefresh(loaded) => {
                    ctx.wait_until(revalidate(config.clone()));
                    Some(loaded)
                }
                Plan::Serve(loaded) => Some(loaded),
                Plan::PassThroughAndLoad => {
                    ctx.wait_until(load(config.clone()));
                    None
                }
                Plan::LoadAndWait | Plan::Wait | Plan::PassThrough => None,
            }
        }
    }
}

/// Loads a snapshot into an empty cell: the Cache API copy when there is one, else the
/// origin.
async fn load(config: Rc<Config>) {
    if let Some(loaded) = cached_copy(&config).await {
        let version = loaded.version;
        let installed = with(|g| g.cell.install(loaded, now_ms(), config.ttl_ms));
        if installed.is_ok() {
            worker::console_log!("abx: serving snapshot version {version} from the Cache API copy");
            return;
        }
    }
    revalidate(config).await;
}

/// Asks the origin for a newer snapshot than the one in memory (`If-None-Match`).
async fn revalidate(config: Rc<Config>) {
    let etag = with(|g| g.cell.current().and_then(|l| l.etag.clone()));
    let fetched = fetch_snapshot(&config, etag.as_deref(), BACKGROUND_TIMEOUT_MS).await;
    let now = now_ms();
    let outcome = match fetched {
        Ok(Fetched::NotModified) => {
            with(|g| g.cell.confirm(now, config.ttl_ms));
            return;
        }
        Ok(Fetched::Snapshot { bytes, etag }) => {
            snapshot::accept(bytes, &config.verification, etag, Source::Origin)
        }
        Err(error) => Err(error),
    };
    match outcome {
        Ok(loaded) => {
            let bytes = loaded.bytes.clone();
            let etag = loaded.etag.clone();
            let version = loaded.version;
            if with(|g| g.cell.install(loaded, now, config.ttl_ms)).is_ok() {
                store_copy(&config, &bytes, etag.as_deref(), version).await;
            } else {
                worker::console_error!(
                    "abx: refused snapshot version {version}: older than the one in use"
                );
            }
        }
        Err(error) => {
            worker::console_error!("abx: snapshot refresh failed ({}): {error}", error.code());
            with(|g| g.cell.fail(error, now, config.ttl_ms));
        }
    }
}

enum Fetched {
    NotModified,
    Snapshot {
        bytes: Rc<[u8]>,
        etag: Option<String>,
    },
}

/// Awaits a promise for at most `timeout_ms`.
async fn within(promise: js_sys::Promise, timeout_ms: u64) -> Result<JsResult<JsValue>, ()> {
    let delay = Delay::from(Duration::from_millis(timeout_ms));
    match select(JsFuture::from(promise), delay).await {
        Either::Left((result, _)) => Ok(result),
        Either::Right(_) => Err(()),
    }
}

fn js_message(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| "unknown error".into())
}

async fn fetch_snapshot(
    config: &Config,
    etag: Option<&str>,
    timeout_ms: u64,
) -> Result<Fetched, SnapshotError> {
    let network = |e: JsValue| SnapshotError::Network(js_message(&e));
    // Format 2 names the attributes each experiment's exposures carry.
    let url = route::forward_url(&config.origin, "/api/v1/snapshot", Some("format=2"));
    let headers = Headers::new().map_err(network)?;
    headers
        .set("authorization", &format!("Bearer {}", config.sdk_key))
        .map_err(network)?;
    headers
        .set("accept", "application/vnd.abx.snapshot")
        .map_err(network)?;
    if let Some(etag) = etag {
        headers.set("if-none-match", etag).map_err(network)?;
    }
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_headers(&headers);
    let request = Request::new_with_str_and_init(url.as_str(), &init).map_err(network)?;
    let started = now_ms();
    let response: Response = within(global_scope().fetch_with_request(&request), timeout_ms)
        .await
        .map_err(|()| SnapshotError::Timeout(timeout_ms))?
        .map_err(network)?
        .unchecked_into();
    match response.status() {
        304 => Ok(Fetched::NotModified),
        200 => {
            let etag = response.headers().get("etag").ok().flatten();
            let remaining = timeout_ms
                .saturating_sub((now_ms() - started) as u64)
                .max(1);
            let buffer = within(response.array_buffer().map_err(network)?, remaining)
                .await
                .map_err(|()| SnapshotError::Timeout(timeout_ms))?
                .map_err(network)?;
            let bytes: Rc<[u8]> = Uint8Array::new(&buffer).to_vec().into();
            Ok(Fetched::Snapshot { bytes, etag })
        }
        status => Err(SnapshotError::Status(status)),
    }
}

/// The Cache API key of the copy: per origin and verification key, so a deployment that
/// changes either never loads the other's copy.
fn copy_key(config: &Config) -> String {
    let key = match &config.verification {
        Verification::PublicKeys(keys) => keys
            .iter()
            .map(|key| {
                key.iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("-"),
        Verification::ChecksumOnly => String::from("unsigned"),
    };
    let origin: String =
        url::form_urlencoded::byte_serialize(config.origin.as_str().as_bytes()).collect();
    format!("https://abx-edge.internal/snapshot/v1?origin={origin}&key={key}")
}

fn default_cache() -> Option<web_sys::Cache> {
    let caches = Reflect::get(&js_sys::global(), &JsValue::from_str("caches")).ok()?;
    let default = Reflect::get(&caches, &JsValue::from_str("default")).ok()?;
    (!default.is_undefined()).then(|| default.unchecked_into())
}

async fn cached_copy(config: &Config) -> Option<Loaded> {
    let cache = default_cache()?;
    let found = within(cache.match_with_str(&copy_key(config)), 1_000)
        .await
        .ok()?
        .ok()?;
    if found.is_undefined() {
        return None;
    }
    let response: Response = found.unchecked_into();
    let etag = response.headers().get("etag").ok().flatten();
    let buffer = within(response.array_buffer().ok()?, 1_000)
        .await
        .ok()?
        .ok()?;
    let bytes: Rc<[u8]> = Uint8Array::new(&buffer).to_vec().into();
    match snapshot::accept(bytes, &config.verification, etag, Source::Cache) {
        Ok(loaded) => Some(loaded),
        Err(error) => {
            worker::console_error!(
                "abx: ignoring the Cache API copy ({}): {error}",
                error.code()
            );
            None
        }
    }
}

async fn store_copy(config: &Config, bytes: &[u8], etag: Option<&str>, version: u64) {
    let Some(cache) = default_cache() else {
        return;
    };
    let stored = (|| -> JsResult<js_sys::Promise> {
        let headers = Headers::new()?;
        headers.set("content-type", "application/vnd.abx.snapshot")?;
        headers.set(
            "cache-control",
            &format!("public, max-age={CACHE_COPY_MAX_AGE_S}"),
        )?;
        headers.set("x-abx-snapshot-version", &version.to_string())?;
        if let Some(etag) = etag {
            headers.set("etag", etag)?;
        }
        let init = ResponseInit::new();
        init.set_status(200);
        init.set_headers(&headers);
        let body = Uint8Array::from(bytes);
        let response = Response::new_with_opt_buffer_source_and_init(Some(&body), &init)?;
        Ok(cache.put_with_str(&copy_key(config), &response))
    })();
    let result = match stored {
        Ok(promise) => within(promise, BACKGROUND_TIMEOUT_MS)
            .await
            .map(|r| r.map(|_| ())),
        Err(error) => Ok(Err(error)),
    };
    if !matches!(result, Ok(Ok(()))) {
        worker::console_error!("abx: could not store the snapshot copy in the Cache API");
    }
}

// ---------------------------------------------------------------------------------------
// Proxy

fn configured_upstream(env: &Env) -> Option<Url> {
    config::upstream_only(|name| env.var(name).ok().map(|v| v.to_string()))
}

async fn proxy(req: Request, url: &Url, env: &Env, ctx: &Context) -> JsResult<Response> {
    // With no upstream, a worker on a zone route forwards to the zone's origin server, but
    // on `*.workers.dev` there is none: forwarding would only call this worker again.
    let on_workers_dev = url
        .host_str()
        .is_some_and(|host| host.ends_with(".workers.dev"));
    if on_workers_dev && configured_upstream(env).is_none() {
        return error_response(
            503,
            "unavailable",
            "ABX_UPSTREAM_URL is not set, and a workers.dev worker has no origin server behind it",
            None,
        );
    }
    let config = match config(env) {
        Ok(config) => config,
        // Without a usable configuration the worker steps aside: the request goes where it
        // would go without the experimentation layer.
        Err(_) => return forward_untouched(&req, url, configured_upstream(env).as_ref()).await,
    };
    match proxy_assigned(&req, url, &config, ctx).await {
        Ok(response) => Ok(response),
        Err(Unsent(error)) => {
            worker::console_error!(
                "abx: forwarding without assignments: {}",
                js_message(&error)
            );
            forward_untouched(&req, url, config.upstream.as_ref()).await
        }
    }
}

/// A failure before the request was sent upstream (its body is still unread).
struct Unsent(JsValue);

impl From<JsValue> for Unsent {
    fn from(error: JsValue) -> Self {
        Unsent(error)
    }
}

async fn proxy_assigned(
    req: &Request,
    url: &Url,
    config: &Rc<Config>,
    ctx: &Context,
) -> Result<Response, Unsent> {
    let visitor = visitor(req, config);
    let loaded = current_snapshot(config, ctx).await;
    let headers = Headers::new_with_headers(&req.headers())?;
    for name in INTERNAL_HEADERS {
        headers.delete(name)?;
    }
    headers.set("x-abx-uid", &visitor.uid)?;

    let upstream = match &config.upstream {
        Some(upstream) => upstream.clone(),
        None => {
            let mut own = url.clone();
            own.set_path("/");
            own
        }
    };
    let mut target = route::forward_url(&upstream, url.path(), url.query());
    let mut routed = false;
    if let Some(loaded) = &loaded {
        let edge = Edge::of(req);
        let context = context::visitor_context(&edge.data(), &config.unit_attribute, &visitor.uid);
        let now = now_ms();
        let evaluation = loaded.evaluator.evaluate(&context, now as i64);
        headers.set(
            "x-abx-assignments",
            &render::assignments_header(&evaluation),
        )?;
        if let Some(decision) = loaded.routes.decide(url.path(), &evaluation.experiments) {
            routed = true;
            if let Some((rule, rest)) = &decision.rule {
                target = route::routed_url(rule, rest, &upstream, url.path(), url.query());
            }
            if decision.log_exposure
                && let Some(assignment) = evaluation.experiments.get(decision.experiment as usize)
                && let Some(variant) = assignment.variant
            {
                let exposure = (assignment.experiment_id, variant);
                let attributes = loaded
                    .evaluator
                    .exposure_attributes(decision.experiment, &context);
                let exposed = Exposed {
                    experiment: decision.experiment,
                    exposure,
                    attributes: &attributes,
                };
                log_exposure(loaded, exposed, &context, now, config, ctx);
            }
        }
        // The edge decides these requests itself, held units included, so it logs each unit's
        // arm in the holdouts of the experiments that route the path (docs/assignment.md,
        // "Holdout exposures"); the pipeline counts a unit from its first.
        for experiment in loaded.routes.routing(url.path()) {
            if let Some(step) = evaluation
                .experiments
                .get(experiment as usize)
                .and_then(|a| loaded.evaluator.holdout_step(a, &context))
                && first_holdout_exposure(step.holdout_id, &visitor.uid)
            {
                // A holdout has no dimensions: its exposures carry the unit alone.
                let exposed = Exposed {
                    experiment,
                    exposure: (step.holdout_id, step.arm()),
                    attributes: &abx_core::ExposureAttributes::default(),
                };
                log_exposure(loaded, exposed, &context, now, config, ctx);
            }
        }
    }

    let init = RequestInit::new();
    init.set_method(&req.method());
    init.set_headers(&headers);
    init.set_redirect(RequestRedirect::Manual);
    if let Some(body) = req.body() {
        init.set_body(&body);
    }
    let forward = Request::new_with_str_and_init(target.as_str(), &init)?;
    let upstream_response = match JsFuture::from(global_scope().fetch_with_request(&forward)).await
    {
        Ok(response) => response.unchecked_into::<Response>(),
        Err(error) => {
            worker::console_error!("abx: upstream {target} failed: {}", js_message(&error));
            return Ok(error_response(
                502,
                "bad_gateway",
                "the upstream did not answer",
                None,
            )?);
        }
    };
    Ok(finish(
        upstream_response,
        loaded.is_some(),
        routed,
        visitor.set_cookie.as_deref(),
    ))
}

/// The upstream's response with the cookie and the cache headers the assignment requires.
/// Once the request was sent its body is gone, so a failure here returns the upstream's
/// response as it came.
fn finish(upstream: Response, assigned: bool, routed: bool, set_cookie: Option<&str>) -> Response {
    let rebuilt = (|| -> JsResult<Response> {
        let headers = Headers::new_with_headers(&upstream.headers())?;
        if let Some(cookie) = set_cookie {
            headers.append("set-cookie", cookie)?;
        }
        let policy = caching::downstream(
            headers.get("cache-control")?.as_deref(),
            headers.get("vary")?.as_deref(),
            assigned,
            routed,
            set_cookie.is_some(),
        );
        if let Some(value) = policy.cache_control {
            headers.set("cache-control", &value)?;
        }
        if let Some(value) = policy.vary {
            headers.set("vary", &value)?;
        }
        let init = ResponseInit::new();
        init.set_status(upstream.status());
        init.set_status_text(&upstream.status_text());
        init.set_headers(&headers);
        let body: Option<ReadableStream> = upstream.body();
        Response::new_with_opt_readable_stream_and_init(body.as_ref(), &init)
    })();
    match rebuilt {
        Ok(response) => response,
        Err(error) => {
            worker::console_error!(
                "abx: could not add headers to the response: {}",
                js_message(&error)
            );
            upstream
        }
    }
}

/// Forwards the request as it came (to the upstream when one is configured), only without
/// the headers a client must not be able to set.
async fn forward_untouched(req: &Request, url: &Url, upstream: Option<&Url>) -> JsResult<Response> {
    let forwarded = match upstream {
        Some(upstream) => {
            let target = route::forward_url(upstream, url.path(), url.query());
            Request::new_with_str_and_init(target.as_str(), req.unchecked_ref::<RequestInit>())
        }
        None => Request::new_with_request(req),
    }
    .and_then(|copy| {
        for name in INTERNAL_HEADERS {
            copy.headers().delete(name)?;
        }
        Ok(copy)
    });
    let result = match forwarded {
        Ok(copy) => JsFuture::from(global_scope().fetch_with_request(&copy)).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(response) => Ok(response.unchecked_into()),
        Err(error) => {
            worker::console_error!("abx: upstream failed: {}", js_message(&error));
            error_response(502, "bad_gateway", "the upstream did not answer", None)
        }
    }
}

/// The unit string of an attribute value (docs/assignment.md: non-empty strings, integers).
fn unit_string(value: &AbxValue) -> Option<String> {
    match value {
        AbxValue::Str(s) if !s.is_empty() => Some(s.clone()),
        AbxValue::Num(n) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0 => {
            Some(format!("{}", *n as i64))
        }
        _ => None,
    }
}

/// Most holdout exposures one isolate remembers (see `Global::holdout_exposures`).
const MAX_REMEMBERED_HOLDOUT_EXPOSURES: usize = 10_000;

/// Whether this isolate has not logged visitor `uid`'s arm in holdout `holdout_id` yet;
/// remembers it.
fn first_holdout_exposure(holdout_id: &str, uid: &str) -> bool {
    with(|g| {
        if g.holdout_exposures.len() >= MAX_REMEMBERED_HOLDOUT_EXPOSURES {
            g.holdout_exposures.clear();
        }
        g.holdout_exposures.insert(format!("{holdout_id}:{uid}"))
    })
}

/// One exposure the edge logs: `exposure` is `(experiment or holdout id, variant or arm)`,
/// of experiment `experiment`'s unit, carrying `attributes`.
struct Exposed<'a> {
    experiment: u32,
    exposure: (&'a str, &'a str),
    attributes: &'a abx_core::ExposureAttributes<'a, 'a>,
}

/// Queues an exposure for a request the edge routed itself, and sends the queue when it is
/// due (by age or size) rather than waiting for a beacon.
fn log_exposure(
    loaded: &Loaded,
    exposed: Exposed<'_>,
    context: &AbxContext,
    now: f64,
    config: &Rc<Config>,
    ctx: &Context,
) {
    let snapshot = loaded.evaluator.snapshot();
    let Some(unit_attribute) = snapshot
        .experiments
        .get(exposed.experiment as usize)
        .and_then(|e| snapshot.attributes.get(e.unit as usize))
    else {
        return;
    };
    let Some(unit) = context.get(unit_attribute).and_then(unit_string) else {
        return;
    };
    let event = events::exposure(
        random_uuid(),
        &unit,
        unit_attribute,
        exposed.exposure,
        exposed.attributes,
        now as i64,
    );
    let due = with(|g| {
        g.pending.push(event, now);
        g.pending
            .due(now, config.exposure_flush_ms)
            .then(|| g.pending.take(events::MAX_EVENTS, now))
    });
    if let Some(batch) = due {
        ctx.wait_until(forward_events(config.clone(), batch));
    }
}

// ---------------------------------------------------------------------------------------
// POST /abx/events

fn events_error(error: &EventsError) -> JsResult<Response> {
    let details = match error {
        EventsError::NoneValid(rejected) => serde_json::to_value(rejected).ok(),
        _ => None,
    };
    error_response(error.status(), error.code(), &error.to_string(), details)
}

async fn beacon(req: Request, env: &Env, ctx: &Context) -> JsResult<Response> {
    let config = match config(env) {
        Ok(config) => config,
        Err(error) => return unavailable(&format!("the edge worker is misconfigured: {error}")),
    };
    let headers = req.headers();
    let limit = match events::body_limit(
        headers.get("content-type")?.as_deref(),
        headers.get("content-encoding")?.as_deref(),
    ) {
        Ok(limit) => limit,
        Err(error) => return events_error(&error),
    };
    let declared = headers
        .get("content-length")?
        .and_then(|len| len.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > events::MAX_DRAINED_BYTES) {
        return events_error(&EventsError::TooLarge(limit));
    }
    let body = match read_capped(req.body(), limit).await? {
        Some(body) => body,
        None => return events_error(&EventsError::TooLarge(limit)),
    };
    let uid = headers
        .get("cookie")?
        .as_deref()
        .and_then(cookie::find_uid)
        .map(str::to_string);
    let now = now_ms();
    let mut new_id = random_uuid;
    let mut fill = Fill {
        uid: uid.as_deref(),
        unit_attribute: &config.unit_attribute,
        now_ms: now as i64,
        new_id: &mut new_id,
    };
    let batch = match events::parse(&body, &mut fill) {
        Ok(batch) => batch,
        Err(error) => return events_error(&error),
    };
    let queued = batch.events.len();
    let mut outgoing = batch.events;
    // The edge's own exposures ride along, within the origin's per-request limit.
    with(|g| {
        let room = events::MAX_EVENTS.saturating_sub(outgoing.len());
        if room > 0 && !g.pending.is_empty() {
            outgoing.extend(g.pending.take(room, now));
        }
    });
    ctx.wait_until(forward_events(config, outgoing));
    let (status, body) = if batch.rejected.is_empty() {
        (202, json!({ "queued": queued }))
    } else {
        (207, json!({ "queued": queued, "rejected": batch.rejected }))
    };
    json_response(status, &body.to_string(), None)
}

/// Reads a request body, or `None` when it exceeds `limit` bytes. The rest of an oversized
/// body is read and dropped up to `events::MAX_DRAINED_BYTES`, so that the client gets to
/// read the refusal.
async fn read_capped(body: Option<ReadableStream>, limit: usize) -> JsResult<Option<Vec<u8>>> {
    let Some(stream) = body else {
        return Ok(Some(Vec::new()));
    };
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut out = Vec::new();
    let mut read = 0;
    while let Some(chunk) = next_chunk(&reader).await? {
        read += chunk.length() as usize;
        if read > events::MAX_DRAINED_BYTES {
            let _ = reader.cancel();
            return Ok(None);
        }
        if read <= limit {
            let start = out.len();
            out.resize(read, 0);
            chunk.copy_to(&mut out[start..]);
        }
    }
    Ok((read <= limit).then_some(out))
}

/// The next chunk of a body stream, `None` at its end.
async fn next_chunk(reader: &ReadableStreamDefaultReader) -> JsResult<Option<Uint8Array>> {
    let chunk = JsFuture::from(reader.read()).await?;
    if Reflect::get(&chunk, &JsValue::from_str("done"))?.is_truthy() {
        return Ok(None);
    }
    Ok(Some(
        Reflect::get(&chunk, &JsValue::from_str("value"))?.unchecked_into(),
    ))
}

/// Sends events to the origin in bodies it takes (`events::MAX_FORWARD_BYTES` each).
async fn forward_events(config: Rc<Config>, batch: Vec<serde_json::Value>) {
    for (count, body) in events::origin_bodies(&batch, events::MAX_FORWARD_BYTES) {
        forward_body(&config, count, &body).await;
    }
}

/// Sends one body of `count` events to the origin, retrying network errors, 429 and 5xx.
async fn forward_body(config: &Config, count: usize, body: &str) {
    let url = route::forward_url(&config.origin, "/api/v1/events", None);
    for attempt in 0..FORWARD_ATTEMPTS {
        let outcome = post_events(config, url.as_str(), body).await;
        let retry_after_ms = match outcome {
            Ok((status, _)) if (200..300).contains(&status) => {
                with(|g| g.forwarded_batches += 1);
                if status == 207 {
                    worker::console_error!("abx: the origin rejected some forwarded events (207)");
                }
                return;
            }
            Ok((status, retry_after)) if status == 429 || status >= 500 => {
                worker::console_error!(
                    "abx: event forwarding got HTTP {status} (attempt {})",
                    attempt + 1
                );
                retry_after.map_or(250 * 4u64.pow(attempt), |s| (s * 1000).min(2_000))
            }
            Ok((status, _)) => {
                worker::console_error!(
                    "abx: the origin refused a batch of {count} events: HTTP {status}"
                );
                break;
            }
            Err(error) => {
                worker::console_error!(
                    "abx: event forwarding failed (attempt {}): {error}",
                    attempt + 1
                );
                250 * 4u64.pow(attempt)
            }
        };
        if attempt + 1 < FORWARD_ATTEMPTS {
            Delay::from(Duration::from_millis(retry_after_ms)).await;
        }
    }
    with(|g| g.failed_batches += 1);
}

async fn post_events(config: &Config, url: &str, body: &str) -> Result<(u16, Option<u64>), String> {
    let headers = Headers::new().map_err(|e| js_message(&e))?;
    let setup = headers
        .set("authorization", &format!("Bearer {}", config.sdk_key))
        .and_then(|()| headers.set("content-type", "application/json"));
    setup.map_err(|e| js_message(&e))?;
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(body));
    let request = Request::new_with_str_and_init(url, &init).map_err(|e| js_message(&e))?;
    let response: Response = within(
        global_scope().fetch_with_request(&request),
        BACKGROUND_TIMEOUT_MS,
    )
    .await
    .map_err(|()| format!("no answer within {BACKGROUND_TIMEOUT_MS} ms"))?
    .map_err(|e| js_message(&e))?
    .unchecked_into();
    let retry_after = response
        .headers()
        .get("retry-after")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse().ok());
    // Drain the body so the connection can be reused.
    if let Ok(text) = response.text() {
        let _ = JsFuture::from(text).await;
    }
    Ok((response.status(), retry_after))
}

// ---------------------------------------------------------------------------------------
// GET /abx/status

async fn status(env: &Env, ctx: &Context) -> JsResult<Response> {
    let config = match config(env) {
        Ok(config) => config,
        Err(error) => {
            let body = json!({"snapshot": null, "config_error": error.to_string()});
            return json_response(503, &body.to_string(), None);
        }
    };
    let loaded = current_snapshot(&config, ctx).await;
    let body = with(|g| {
        let snapshot = loaded.as_ref().map(|l| {
            let s = l.evaluator.snapshot();
            json!({
                "version": l.version, "etag": l.etag, "source": l.source.as_str(),
                "experiments": s.experiments.len(), "flags": s.flags.len(),
                "route_problems": l.route_problems.iter().map(|p| json!({
                    "experiment": p.experiment, "variant": p.variant, "message": p.message,
                })).collect::<Vec<_>>(),
            })
        });
        let last_error = g.cell.last_failure().map(|f| {
            json!({"code": f.error.code(), "message": f.error.to_string(), "at_ms": f.at_ms as i64})
        });
        json!({
            "snapshot": snapshot,
            "checked_at_ms": g.cell.checked_at_ms().map(|t| t as i64),
            "last_error": last_error,
            "ttl_ms": config.ttl_ms,
            "pending_exposures": g.pending.len(),
            "dropped_exposures": g.pending.dropped,
            "forwarded_batches": g.forwarded_batches,
            "failed_batches": g.failed_batches,
        })
    });
    json_response(200, &body.to_string(), None)
}
