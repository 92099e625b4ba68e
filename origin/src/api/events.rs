//! Event ingestion (`POST /events` and the seed's per-experiment form), event lookup,
//! pipeline status, dead letters and `/metrics`.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::atomic::Ordering;

use super::{ApiJson, ApiPath, json};
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::clock;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::event::{self, DeadLetter, EventRecord, Kind, LIMITS};
use crate::pipeline::attribution::CURSOR;
use crate::pipeline::jetstream::StreamTelemetry;
use crate::pipeline::tables;
use crate::pipeline::telemetry::Telemetry;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IngestResult {
    /// Events newly logged.
    pub accepted: usize,
    /// Events already logged earlier (same `event_id`); they are counted once.
    pub duplicates: usize,
    /// Invalid events, by position in the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejected>,
}

/// Refuses new events while the pipeline is too far behind, so memory and the log stay
/// bounded; clients retry after the delay.
fn check_backpressure(state: &AppState) -> ApiResult<()> {
    if lag_events(state) > state.settings.max_pipeline_lag {
        Telemetry::add(&state.pipeline.telemetry.ingest_overloaded, 1);
        return Err(ApiError::Unavailable {
            message: "the metric pipeline is behind; retry shortly".into(),
            retry_after_s: 5,
        });
    }
    Ok(())
}

/// How far the pipeline is behind the event log, in events. The database's figures, as the
/// background gauges last measured them, hold every process's writes and the pipeline's
/// position wherever it runs; this process's own figures are fresher but know only its own
/// writes, and its pipeline's position only if it runs one. A collector that ran no
/// pipeline took its position for 0 and refused every event once the log held more than
/// the limit; one that does takes the larger of the two.
fn lag_events(state: &AppState) -> i64 {
    // A measure older than a few refreshes (the databases unreachable since) is no measure:
    // it would hold a high lag, and refuse every event, for as long as they stay so.
    let measured = state
        .gauges()
        .filter(|(at, _)| at.elapsed() < crate::GAUGE_INTERVAL * 3)
        .map(|(_, status)| status.lag_events);
    let own = state
        .settings
        .roles
        .pipeline
        .then(|| state.pipeline.telemetry.lag_events());
    measured.max(own).unwrap_or(0)
}

/// Logs validated events; answers with what was new.
async fn ingest(
    state: &AppState,
    records: Vec<EventRecord>,
    rejected: Vec<Rejected>,
) -> ApiResult<Response> {
    Telemetry::add(&state.pipeline.telemetry.events_rejected, rejected.len());
    if records.is_empty() {
        return Err(ApiError::BadRequest {
            code: "no_valid_events",
            message: first_reasons(&rejected),
        });
    }
    let (accepted, duplicates) = match &state.event_stream {
        // The stream absorbs a backlog durably (the loader holds back while the pipeline
        // is behind), so the collector needs no backpressure of its own. It only sees
        // duplicates that the broker drops: a retried request within its window.
        Some(stream) => {
            let received = records.len();
            let records = first_copies(records);
            let dropped = stream.publish(&records).await?;
            (records.len() - dropped, received - records.len() + dropped)
        }
        None => {
            check_backpressure(state)?;
            let flags = state.pipeline.writer.submit(records).await?;
            let accepted = flags.iter().filter(|new| **new).count();
            (accepted, flags.len() - accepted)
        }
    };
    Telemetry::add(&state.pipeline.telemetry.events_accepted, accepted);
    Telemetry::add(&state.pipeline.telemetry.events_duplicate, duplicates);
    let status = if rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok(json(
        status,
        &IngestResult {
            accepted,
            duplicates,
            rejected,
        },
    ))
}

/// The request's events without repeats of an `event_id`, so that a request answers with
/// the same counts whether its events go to the event log (which keeps the first copy) or to
/// the stream (where the warehouse collapses copies later).
fn first_copies(records: Vec<EventRecord>) -> Vec<EventRecord> {
    let first: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        records
            .iter()
            .map(|record| seen.insert(record.event_id.as_str()))
            .collect()
    };
    if first.iter().all(|&f| f) {
        return records;
    }
    records
        .into_iter()
        .zip(first)
        .filter_map(|(record, first)| first.then_some(record))
        .collect()
}

fn first_reasons(rejected: &[Rejected]) -> String {
    let shown: Vec<String> = rejected
        .iter()
        .take(5)
        .map(|r| format!("event {}: {}", r.index, r.reason))
        .collect();
    format!("no valid events ({})", shown.join("; "))
}

/// A batch of exposure and metric events (docs/api.md, "Events"). 202 once durable; 207
/// when some events were invalid (the valid ones are stored).
#[utoipa::path(post, path = "/api/v1/events", tag = "events",
    request_body(content = Object, description = "{\"events\": [...]} or a JSON array; application/json or text/plain; optionally gzip"),
    responses((status = 202, body = IngestResult), (status = 207, body = IngestResult), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn post_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::SendEvents)?;
    let body = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let beacon = content_type.starts_with("text/plain");
    if !beacon && !content_type.starts_with("application/json") {
        return Err(ApiError::BadRequest {
            code: "unsupported_media_type",
            message: "send application/json or text/plain".into(),
        });
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    // Decompressing and parsing up to 10,000 events is CPU work of milliseconds: it runs on
    // the blocking pool, so that a burst of large batches cannot stall the runtime's
    // threads, which also serve assignments.
    let window = state.settings.event_window();
    let failed = |error: &dyn std::fmt::Display| {
        ApiError::Internal(anyhow::anyhow!("parsing events: {error}"))
    };
    let permit = state.parsing.acquire().await.map_err(|e| failed(&e))?;
    let parsed = tokio::task::spawn_blocking(move || {
        event::parse_body(&body, gzip, beacon, clock::now_ms(), window, LIMITS)
    })
    .await
    .map_err(|e| failed(&e))??
    .screen(&state.value_bounds());
    drop(permit);
    let (parsed, mismatches) = refuse_mismatched_exposures(&state, parsed).await?;
    let rejected = parsed
        .rejected
        .into_iter()
        .map(|(index, reason)| Rejected { index, reason })
        .collect();
    let answer = ingest(
        &state,
        parsed.events.into_iter().map(|(_, e)| e).collect(),
        rejected,
    )
    .await;
    // Counted once the request has its final answer: one refused for backpressure, or
    // whose events could not be logged, is sent again, and its exposures were counted
    // again each time. A request with no valid event (400) is not sent again, and its
    // refused exposures count too.
    let settled = match &answer {
        Ok(_) => true,
        Err(ApiError::BadRequest { code, .. }) => *code == "no_valid_events",
        Err(_) => false,
    };
    if settled && !mismatches.is_empty() {
        let mut conn = state.db.pool.acquire().await?;
        crate::store::experiments::add_exposure_mismatches(&mut conn, &mismatches).await?;
    }
    answer
}

/// Refused exposures, per experiment and the variant they claimed.
type Mismatches = std::collections::BTreeMap<(String, String), i64>;

/// Moves exposures whose variant is not the one the served snapshot gives their unit to the
/// rejected events, and counts them per experiment and claimed variant for the results
/// (returned, to be recorded once the request's events are logged). The
/// origin recomputes the assignment with abx-core (`Evaluator::exposure_check`): status and
/// targeting cannot be checked (an exposure carries no context), everything hashed can. An
/// exposure of an experiment the snapshot does not hold is left to the pipeline, as before.
async fn refuse_mismatched_exposures(
    state: &AppState,
    mut parsed: event::Parsed,
) -> ApiResult<(event::Parsed, Mismatches)> {
    if !state.settings.verify_exposures {
        return Ok((parsed, Mismatches::new()));
    }
    let published = state.published();
    let evaluator = &published.evaluator;
    let mut counts = Mismatches::new();
    let mut kept = Vec::with_capacity(parsed.events.len());
    let mut holdout_units = state.holdout_units();
    let mut reloaded = false;
    for (index, record) in parsed.events {
        let Kind::Exposure {
            experiment_id,
            variant,
        } = &record.kind
        else {
            kept.push((index, record));
            continue;
        };
        let id = abx_core::snapshot::Id::parse(experiment_id);
        if let Some((id, holdout)) =
            id.and_then(|id| Some((id, evaluator.holdout_index_by_id(&id)?)))
        {
            let id = id.to_text();
            let mut unit_attribute = holdout_units.get(id.as_str()).cloned();
            if unit_attribute.is_none() && !reloaded {
                // A holdout made since the units were loaded (by another process, say).
                reloaded = true;
                state.reload_holdout_units().await?;
                holdout_units = state.holdout_units();
                unit_attribute = holdout_units.get(id.as_str()).cloned();
            }
            let unit_attribute = unit_attribute.as_deref();
            match holdout_mismatch(
                evaluator,
                holdout,
                unit_attribute,
                &record.unit_key,
                variant,
            ) {
                HoldoutCheck::Valid if has_qa_override(evaluator, holdout, &record.unit_key) => {
                    parsed.rejected.push((index, FORCED_UNIT.into()));
                }
                HoldoutCheck::Valid => kept.push((index, record)),
                HoldoutCheck::OtherUnit(reason) => parsed.rejected.push((index, reason)),
                HoldoutCheck::Forged(reason) => {
                    let arms = [abx_core::HELD_ARM, abx_core::RELEASED_ARM];
                    let claimed = counted_as(variant, arms.into_iter());
                    *counts.entry((experiment_id.clone(), claimed)).or_default() += 1;
                    parsed.rejected.push((index, reason));
                }
            }
            continue;
        }
        let Some(experiment) = id.and_then(|id| evaluator.experiment_index_by_id(&id)) else {
            kept.push((index, record));
            continue;
        };
        let snapshot = evaluator.snapshot();
        let unit_attribute =
            &snapshot.attributes[snapshot.experiments[experiment as usize].unit as usize];
        let (attribute, unit) = record.unit_key.split_once(':').unwrap_or(("", ""));
        let expected = evaluator.exposure_check(experiment, unit, record.ts_ms);
        if expected
            .as_ref()
            .is_some_and(|a| a.reason == abx_core::Reason::Forced)
        {
            // A QA override: runtimes with the full snapshot log no exposure for it, and
            // browsers, whose client snapshot has no overrides, log the hashed variant. Either
            // way its traffic is testing, not users: kept out, and not counted as forged.
            parsed.rejected.push((index, FORCED_UNIT.into()));
            continue;
        }
        let reason = match expected.as_ref().and_then(|a| a.variant) {
            _ if attribute != unit_attribute.as_str() => format!(
                "variant_mismatch: the experiment's unit is `{unit_attribute}`, not `{attribute}`"
            ),
            Some(expected) if expected == variant.as_str() => {
                kept.push((index, record));
                continue;
            }
            Some(expected) => format!(
                "variant_mismatch: the snapshot assigns this unit `{expected}`, not `{variant}`"
            ),
            None => format!(
                "variant_mismatch: the snapshot assigns this unit no variant ({})",
                expected.map_or("unknown", |a| a.reason.as_str())
            ),
        };
        let names = snapshot.experiments[experiment as usize]
            .variants
            .iter()
            .filter_map(|v| snapshot.strings.get(v.key as usize).map(String::as_str));
        let claimed = counted_as(variant, names);
        *counts.entry((experiment_id.clone(), claimed)).or_default() += 1;
        parsed.rejected.push((index, reason));
    }
    parsed.rejected.sort_by_key(|(index, _)| *index);
    parsed.events = kept;
    Ok((parsed, counts))
}

/// What a refused exposure is counted under: the variant it claimed, if the experiment (or
/// holdout) has one of that name, else one row for all others. The claims come from
/// public (sdk) keys, and each new name was a row of its own, and a line of every results
/// response, for as long as the experiment lives.
fn counted_as<'a>(claimed: &str, mut names: impl Iterator<Item = &'a str>) -> String {
    if names.any(|name| name == claimed) {
        claimed.to_string()
    } else {
        NOT_A_VARIANT.to_string()
    }
}

/// The name refused exposures that claim no variant of their experiment are counted under:
/// not a possible variant name (those are keys, without spaces or parentheses).
const NOT_A_VARIANT: &str = "(not a variant)";

const FORCED_UNIT: &str = "forced_unit: the unit has a QA override; its exposures are not analysed";

/// Whether the unit of `unit_key` (`attribute:unit`) has a QA override in a running
/// experiment that respects holdout `holdout` and randomizes by that attribute. Runtimes
/// with the full snapshot log no holdout step for a forced answer, but browsers, whose
/// client snapshot has no overrides, log the unit's arm: QA traffic is testing, so the
/// holdout's readout leaves such units out, as experiments' readouts do.
fn has_qa_override(evaluator: &abx_core::Evaluator, holdout: u32, unit_key: &str) -> bool {
    let (attribute, unit) = unit_key.split_once(':').unwrap_or(("", ""));
    let snapshot = evaluator.snapshot();
    let unit_attribute = |e: &abx_core::snapshot::Experiment| {
        snapshot.attributes.get(e.unit as usize).map(String::as_str)
    };
    snapshot.experiments.iter().any(|e| {
        e.holdout == Some(holdout)
            && e.status == abx_core::snapshot::Status::Running
            && unit_attribute(e) == Some(attribute)
            && e.forced.iter().any(|f| f.unit == unit)
    })
}

/// What ingest makes of an exposure to a holdout.
enum HoldoutCheck {
    Valid,
    /// Another unit attribute than the holdout's, which its readout cannot count. Legitimate
    /// clients send these for experiments that kept a holdout of another unit (holdouts
    /// made before they had units): refused, but not counted as forged.
    OtherUnit(String),
    /// Not the arm the holdout's hash gives the unit: from a forged or broken client.
    Forged(String),
}

/// Checks an exposure to holdout `holdout` (`abx_core::HoldoutStep`) against the served
/// snapshot: its unit attribute must be the holdout's (`unit_attribute`), which its readout
/// counts, and its arm the one the holdout's hash gives the unit.
fn holdout_mismatch(
    evaluator: &abx_core::Evaluator,
    holdout: u32,
    unit_attribute: Option<&str>,
    unit_key: &str,
    arm: &str,
) -> HoldoutCheck {
    let (attribute, unit) = unit_key.split_once(':').unwrap_or(("", ""));
    if unit_attribute != Some(attribute) {
        return HoldoutCheck::OtherUnit(format!(
            "holdout_unit: the holdout compares `{}` units, not `{attribute}`; its readout cannot count this exposure",
            unit_attribute.unwrap_or("unknown")
        ));
    }
    match evaluator.holdout_arm(holdout, unit) {
        Some(expected) if expected == arm => HoldoutCheck::Valid,
        expected => HoldoutCheck::Forged(format!(
            "variant_mismatch: the holdout's arm for this unit is `{}`, not `{arm}`",
            expected.unwrap_or("unknown")
        )),
    }
}

/// The seed's form: one metric event for an experiment's unit.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedEvent {
    pub user_id: Json,
    pub event_type: String,
    #[serde(default)]
    pub value: Option<f64>,
    /// Optional client id for deduplication; generated when absent.
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<Json>,
}

#[utoipa::path(post, path = "/api/v1/experiments/{id}/events", tag = "events", request_body = SeedEvent,
    params(("id" = String, Path, description = "Experiment id or key")),
    responses((status = 202, body = IngestResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn post_experiment_event(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SeedEvent>,
) -> ApiResult<Response> {
    caller.require(Permission::SendEvents)?;
    let published = state.published();
    let evaluator = &published.evaluator;
    let index = abx_core::snapshot::Id::parse(&id)
        .and_then(|i| evaluator.experiment_index_by_id(&i))
        .or_else(|| evaluator.experiment_index(&id))
        .ok_or_else(|| ApiError::not_found(format!("experiment `{id}`")))?;
    let snapshot = evaluator.snapshot();
    let experiment = &snapshot.experiments[index as usize];
    let attribute = &snapshot.attributes[experiment.unit as usize];
    let event = serde_json::json!({
        "event_id": body.event_id.unwrap_or_else(crate::model::new_id),
        "kind": "metric", "unit": body.user_id, "unit_attribute": attribute,
        "event_type": body.event_type, "value": body.value.unwrap_or(1.0), "timestamp": body.timestamp,
    });
    let bytes = serde_json::to_vec(&[event]).map_err(anyhow::Error::from)?;
    let parsed = event::parse_body(
        &bytes,
        false,
        false,
        clock::now_ms(),
        state.settings.event_window(),
        LIMITS,
    )?
    .screen(&state.value_bounds());
    if let Some((_, reason)) = parsed.rejected.first() {
        return Err(ApiError::invalid("event", reason.clone()));
    }
    ingest(
        &state,
        parsed.events.into_iter().map(|(_, e)| e).collect(),
        Vec::new(),
    )
    .await
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_id: String,
    pub kind: &'static str,
    pub unit_key: String,
    pub experiment_id: Option<String>,
    pub variant: Option<String>,
    pub event_type: Option<String>,
    pub value: f64,
    pub timestamp: String,
    pub received_at: String,
    /// Whether the pipeline has consumed it.
    pub processed: bool,
}

/// Looks up a logged event (while raw events are retained): did my event arrive?
#[utoipa::path(get, path = "/api/v1/events/{event_id}", tag = "events", params(("event_id" = String, Path, description = "The client's event id")),
    responses((status = 200, body = StoredEvent), (status = 404, body = ErrorBody)))]
pub async fn get_event(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(event_id): ApiPath<String>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut log = state.pipeline.log.pool.acquire().await?;
    let e = tables::find_event(&mut log, &event_id.to_ascii_lowercase())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("event `{event_id}`")))?;
    drop(log);
    let mut conn = state.db.pool.acquire().await?;
    let position = tables::cursor(&mut conn, CURSOR).await?;
    let (kind, experiment_id, variant, event_type) = match e.kind {
        Kind::Exposure {
            experiment_id,
            variant,
        } => ("exposure", Some(experiment_id), Some(variant), None),
        Kind::Metric { event_type } => ("metric", None, None, Some(event_type)),
    };
    Ok(json(
        StatusCode::OK,
        &StoredEvent {
            seq: e.seq,
            event_id: e.event_id,
            kind,
            unit_key: e.unit_key,
            experiment_id,
            variant,
            event_type,
            value: e.value,
            timestamp: clock::rfc3339(e.ts_ms),
            received_at: clock::rfc3339(e.received_at_ms),
            processed: e.seq <= position,
        },
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PipelineStatus {
    /// Last event sequence number consumed.
    pub position: i64,
    /// Last event sequence number logged.
    pub head: i64,
    pub lag_events: i64,
    /// Age of the oldest unconsumed event (in the event log or, with JetStream, still in
    /// the stream).
    pub lag_seconds: f64,
    /// With JetStream: stream messages the loader has not yet acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_pending_messages: Option<i64>,
    pub dead_letters: i64,
}

/// The pipeline's figures, asked of the databases (and the broker) now.
pub(crate) async fn status(state: &AppState) -> Result<PipelineStatus, sqlx::Error> {
    let mut conn = state.db.pool.acquire().await?;
    let position = tables::cursor(&mut conn, CURSOR).await?;
    let dead_letters = tables::count_dead_letters(&mut conn).await?;
    drop(conn);
    let mut log = state.pipeline.log.pool.acquire().await?;
    let head = tables::max_seq(&mut log).await?.max(position);
    let oldest = tables::oldest_after(&mut log, position).await?;
    let mut oldest_ms = oldest;
    let stream_pending_messages = match &state.event_stream {
        Some(stream) => {
            // Asked afresh (one round trip to the broker); the figures the poller keeps
            // for `/metrics` are up to a second old.
            let telemetry = &stream.telemetry;
            let (pending, stream_oldest) = stream.backlog().await.unwrap_or_else(|_| {
                (
                    telemetry.consumer_pending.load(Ordering::Relaxed),
                    telemetry.oldest_pending_ms.load(Ordering::Relaxed),
                )
            });
            if stream_oldest > 0 {
                oldest_ms = Some(oldest_ms.map_or(stream_oldest, |ms| ms.min(stream_oldest)));
            }
            Some(pending)
        }
        None => None,
    };
    let lag_seconds = oldest_ms.map_or(0.0, |ms| (clock::now_ms() - ms).max(0) as f64 / 1_000.0);
    Ok(PipelineStatus {
        position,
        head,
        lag_events: head - position,
        lag_seconds,
        stream_pending_messages,
        dead_letters,
    })
}

#[utoipa::path(get, path = "/api/v1/pipeline", tag = "events", responses((status = 200, body = PipelineStatus)))]
pub async fn pipeline_status(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    Ok(json(StatusCode::OK, &status(&state).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
}

#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "events", responses((status = 200, body = DeadLetters)))]
pub async fn dead_letters(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    Ok(json(
        StatusCode::OK,
        &DeadLetters {
            items: tables::dead_letters(&mut conn, 1_000).await?,
        },
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Which dead letters to replay; all when absent.
    #[serde(default)]
    pub seqs: Option<Vec<i64>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// Sends dead letters back through the pipeline (e.g. after fixing the configuration).
#[utoipa::path(post, path = "/api/v1/dead-letters/replay", tag = "events", request_body = ReplayRequest,
    responses((status = 200, body = Replayed), (status = 403, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    // With JetStream, the stream's dead letters go back into the stream too (all of them:
    // they have no event-log sequence to choose by). That is broker work, done before the
    // database's write transaction so as not to hold it.
    let mut from_stream = 0;
    if let Some(stream) = &state.event_stream
        && request.seqs.is_none()
    {
        from_stream = stream.replay_dead_letters().await.map_err(|error| {
            tracing::warn!(%error, "replaying the stream's dead letters failed");
            ApiError::Unavailable {
                message: "the event stream is unavailable; retry the replay".into(),
                retry_after_s: 5,
            }
        })?;
    }
    let mut tx = state.db.begin_write().await?;
    let replayed =
        tables::replay_dead_letters(&mut tx, request.seqs.as_deref()).await? + from_stream;
    let details = serde_json::json!({"replayed": replayed, "seqs": request.seqs});
    crate::store::record(
        &mut tx,
        crate::store::Change {
            actor: &caller.actor(),
            action: "dead_letters.replayed",
            entity_type: "pipeline",
            entity_id: CURSOR,
            details,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(json(StatusCode::OK, &Replayed { replayed }))
}

/// Prometheus metrics. Public, like `/health`: counts only, nothing sensitive. A scrape
/// reads memory only: the pipeline's figures are the ones the background task computed last
/// (`AppState::refresh_gauges`), with their age, so scrapes cannot load the databases.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = state.gauges();
    let (lag_events, lag_seconds, dead, age) = match &gauges {
        Some((at, s)) => (
            s.lag_events as f64,
            s.lag_seconds,
            s.dead_letters as f64,
            at.elapsed().as_secs_f64(),
        ),
        None => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    // Counters of the JetStream event log; not a number without one.
    let stream_gauge = |read: fn(&StreamTelemetry) -> f64| {
        state
            .event_stream
            .as_ref()
            .map_or(f64::NAN, |s| read(&s.telemetry))
    };
    let gauges = [
        (
            "abx_pipeline_lag_events",
            "Logged events not yet consumed by the pipeline.",
            lag_events,
        ),
        (
            "abx_pipeline_lag_seconds",
            "Age of the oldest unconsumed event.",
            lag_seconds,
        ),
        ("abx_dead_letters", "Events in the dead-letter table.", dead),
        (
            "abx_pipeline_gauges_age_seconds",
            "Age of the three gauges above, computed in the background.",
            age,
        ),
        (
            "abx_jetstream_consumer_pending",
            "Messages of the JetStream event stream not yet acknowledged by the loader.",
            stream_gauge(|t| t.consumer_pending.load(Ordering::Relaxed) as f64),
        ),
        (
            "abx_jetstream_published_messages",
            "Messages this process published to the JetStream event stream.",
            stream_gauge(|t| t.messages_published.load(Ordering::Relaxed) as f64),
        ),
        (
            "abx_jetstream_duplicate_messages",
            "Published messages the broker already had (retried requests).",
            stream_gauge(|t| t.messages_duplicate.load(Ordering::Relaxed) as f64),
        ),
        (
            "abx_jetstream_dead_lettered_messages",
            "Stream messages this process moved to the dead-letter stream.",
            stream_gauge(|t| t.messages_dead_lettered.load(Ordering::Relaxed) as f64),
        ),
        (
            "abx_snapshot_version",
            "Version of the snapshot being served.",
            state.published().version as f64,
        ),
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.pipeline.telemetry.render(&gauges),
    )
        .into_response()
}
