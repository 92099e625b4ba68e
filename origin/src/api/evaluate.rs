//! Assignment from the snapshot in memory. These endpoints never query the database: the
//! answer is abx-core evaluating the currently published snapshot.

use std::collections::HashMap;

use abx_core::{Assignment, Context, Evaluator, FlagResult, Value};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiJson, ApiPath, ApiQuery, json};
use crate::AppState;
use crate::auth::{Caller, Permission};
use crate::clock;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::publish::Published;

/// One experiment's outcome for a context.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AssignmentView {
    pub experiment: String,
    pub experiment_id: String,
    pub variant: Option<String>,
    /// The variant's configuration.
    #[schema(value_type = Object, nullable = true)]
    pub config: Option<Box<RawValue>>,
    /// One of `not_running`, `shipped`, `forced`, `missing_unit`, `not_targeted`, `holdout`,
    /// `not_in_traffic`, `assigned` (docs/assignment.md).
    pub reason: &'static str,
    /// Whether the caller should log an exposure.
    pub log_exposure: bool,
    /// The holdout the unit reached, if any: the caller logs one exposure to it per unit,
    /// with `experiment_id` the holdout's id and `variant` its `arm` (docs/assignment.md).
    pub holdout: Option<HoldoutView>,
    /// With `log_exposure`: the `attributes` the exposure carries, the context's values of
    /// what the experiment's results are broken down by; absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = true)]
    pub attributes: Option<serde_json::Value>,
    pub snapshot_version: u64,
}

/// Where the unit stands in a holdout (`abx_core::HoldoutStep`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct HoldoutView {
    pub holdout_id: String,
    /// `held` or `released`.
    pub arm: &'static str,
}

fn raw(json: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(json.to_string()).ok()
}

/// The most attributes a context may carry, and items a list attribute may hold: a test
/// of a list attribute against an `in` list compares every pair, so a 1 MiB body of a
/// quarter of a million items against a targeting list of thousands would hold a core for
/// seconds.
const MAX_CONTEXT_ATTRIBUTES: usize = 200;
const MAX_CONTEXT_LIST: usize = 100;

/// Refuses a context too large to evaluate at a request's cost.
fn check_context(context: &Context) -> ApiResult<()> {
    let attributes = context.len();
    if attributes > MAX_CONTEXT_ATTRIBUTES {
        return Err(ApiError::bad_request(format!(
            "the context has {attributes} attributes; at most {MAX_CONTEXT_ATTRIBUTES}"
        )));
    }
    for (name, value) in context.iter() {
        if let Value::List(items) = value
            && items.len() > MAX_CONTEXT_LIST
        {
            return Err(ApiError::bad_request(format!(
                "context attribute `{name}` lists {} items; at most {MAX_CONTEXT_LIST}",
                items.len()
            )));
        }
    }
    Ok(())
}

/// The evaluator `caller`'s evaluations answer from ([`AppState::evaluator_for`]).
fn evaluator<'a>(
    state: &AppState,
    caller: &Caller,
    published: &'a Published,
) -> ApiResult<&'a Evaluator> {
    state.evaluator_for(caller, published).ok_or_else(|| {
        let version = published.version;
        ApiError::Internal(anyhow::anyhow!(
            "the client copy of snapshot {version} is invalid"
        ))
    })
}

/// `a`, an answer `evaluator` gave for `context` from snapshot `snapshot_version`, as the
/// API shows it.
fn view(
    (evaluator, snapshot_version): (&Evaluator, u64),
    a: &Assignment<'_>,
    context: &Context,
) -> AssignmentView {
    AssignmentView {
        experiment: a.experiment_key.to_string(),
        experiment_id: a.experiment_id.to_string(),
        variant: a.variant.map(str::to_string),
        config: a.config.and_then(raw),
        reason: a.reason.as_str(),
        log_exposure: a.log_exposure,
        holdout: evaluator.holdout_step(a, context).map(|step| HoldoutView {
            holdout_id: step.holdout_id.to_string(),
            arm: step.arm(),
        }),
        attributes: Some(evaluator.exposure_attributes(a.index, context))
            .filter(|carried| a.log_exposure && !carried.is_empty())
            .and_then(|carried| serde_json::to_value(carried).ok()),
        snapshot_version,
    }
}

fn find(evaluator: &Evaluator, reference: &str) -> Option<u32> {
    abx_core::snapshot::Id::parse(reference)
        .and_then(|id| evaluator.experiment_index_by_id(&id))
        .or_else(|| evaluator.experiment_index(reference))
}

/// `GET /experiments/{id}/assignment?user_id=…&country=…`: every query parameter is a
/// string attribute, except `context` (a JSON object of typed attributes, merged in),
/// `now_ms` (evaluation time, for switchback tests) and `key` (the API key).
#[utoipa::path(get, path = "/api/v1/experiments/{id}/assignment", tag = "evaluation",
    params(("id" = String, Path, description = "Experiment id or key"),
           ("user_id" = Option<String>, Query, description = "Any attribute may be given as a query parameter"),
           ("context" = Option<String>, Query, description = "A JSON object of typed attributes"),
           ("now_ms" = Option<i64>, Query, description = "Evaluation time; default now")),
    responses((status = 200, body = AssignmentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn assignment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadSnapshot)?;
    let mut context = Context::new();
    let mut now_ms = clock::now_ms();
    for (name, value) in params {
        match name.as_str() {
            "key" => {}
            "now_ms" => {
                now_ms = value
                    .parse()
                    .map_err(|_| ApiError::bad_request("now_ms must be an integer"))?
            }
            "context" => {
                let typed: Context = serde_json::from_str(&value).map_err(|e| {
                    ApiError::bad_request(format!(
                        "context must be a JSON object of attributes: {e}"
                    ))
                })?;
                for (name, value) in typed.iter() {
                    context.insert(name, value.clone());
                }
            }
            _ => context.insert(name, Value::Str(value)),
        }
    }
    check_context(&context)?;
    let published = state.published();
    let evaluator = evaluator(&state, &caller, &published)?;
    let index = find(evaluator, &id).ok_or_else(|| {
        ApiError::not_found(format!("experiment `{id}` in the published snapshot"))
    })?;
    let assignment = evaluator
        .experiment_at(index, &context, now_ms)
        .ok_or_else(|| ApiError::not_found("experiment"))?;
    let view = view((evaluator, published.version), &assignment, &context);
    Ok(json(StatusCode::OK, &view))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// Attributes: strings, numbers, booleans, lists of strings.
    #[schema(value_type = Object)]
    pub context: Context,
    /// Evaluation time in ms since the epoch; default now.
    #[serde(default)]
    pub now_ms: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FlagView {
    /// Any JSON.
    #[schema(value_type = serde_json::Value)]
    pub value: Option<Box<RawValue>>,
    /// `disabled`, `rule`, `experiment` or `default`.
    pub reason: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluationView {
    pub snapshot_version: u64,
    pub experiments: HashMap<String, AssignmentView>,
    pub flags: HashMap<String, FlagView>,
}

fn flag_view(f: &FlagResult<'_>) -> FlagView {
    FlagView {
        value: raw(f.value),
        reason: f.reason.as_str(),
    }
}

/// Every experiment and flag for one context (what the edge's `/abx/assignments` returns).
#[utoipa::path(post, path = "/api/v1/evaluate", tag = "evaluation", request_body = EvaluateRequest,
    responses((status = 200, body = EvaluationView), (status = 400, body = ErrorBody)))]
pub async fn evaluate(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<EvaluateRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadSnapshot)?;
    check_context(&request.context)?;
    let published = state.published();
    let evaluator = evaluator(&state, &caller, &published)?;
    let evaluation = evaluator.evaluate(
        &request.context,
        request.now_ms.unwrap_or_else(clock::now_ms),
    );
    let view = EvaluationView {
        snapshot_version: published.version,
        experiments: evaluation
            .experiments
            .iter()
            .map(|a| {
                let view = view((evaluator, published.version), a, &request.context);
                (a.experiment_key.to_string(), view)
            })
            .collect(),
        flags: evaluation
            .flags
            .iter()
            .map(|f| (f.flag_key.to_string(), flag_view(f)))
            .collect(),
    };
    Ok(json(StatusCode::OK, &view))
}
