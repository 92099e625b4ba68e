//! Assignment from the snapshot in memory. These endpoints never query the database: the
//! answer is abx-core evaluating the currently published snapshot.

use std::collections::HashMap;

use abx_core::{Assignment, Context, Evaluator, FlagResult, Value};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiJson, json};
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

/// `a`, an answer `published` gave for `context`, as the API shows it.
fn view(published: &Published, a: &Assignment<'_>, context: &Context) -> AssignmentView {
    let snapshot_version = published.version;
    AssignmentView {
        experiment: a.experiment_key.to_string(),
        experiment_id: a.experiment_id.to_string(),
        variant: a.variant.map(str::to_string),
        config: a.config.and_then(raw),
        reason: a.reason.as_str(),
        log_exposure: a.log_exposure,
        holdout: published
            .evaluator
            .holdout_step(a, context)
            .map(|step| HoldoutView {
                holdout_id: step.holdout_id.to_string(),
                arm: step.arm(),
            }),
        attributes: Some(published.evaluator.exposure_attributes(a.index, context))
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
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
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
    let published = state.published();
    let index = find(&published.evaluator, &id).ok_or_else(|| {
        ApiError::not_found(format!("experiment `{id}` in the published snapshot"))
    })?;
    let assignment = published
        .evaluator
        .experiment_at(index, &context, now_ms)
        .ok_or_else(|| ApiError::not_found("experiment"))?;
    Ok(json(
        StatusCode::OK,
        &view(&published, &assignment, &context),
    ))
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
    let published = state.published();
    let evaluation = published.evaluator.evaluate(
        &request.context,
        request.now_ms.unwrap_or_else(clock::now_ms),
    );
    let view = EvaluationView {
        snapshot_version: published.version,
        experiments: evaluation
            .experiments
            .iter()
            .map(|a| {
                let view = view(&published, a, &request.context);
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
