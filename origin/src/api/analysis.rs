//! Results, the analysts' calculators, interactions between experiments, and the kill switch.

use std::collections::HashMap;

use abx_stats::group_sequential;
use abx_stats::power::{self, Mde, PlannedTest, PowerConfig};
use abx_stats::sequential::{self, SequentialConfig};
use abx_stats::{Moments, Proportion, StatsError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiJson, ApiPath, json, with_version};
use crate::AppState;
use crate::analysis::results_of;
use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::lifecycle::{self, LifecycleBody};
use crate::model::catalog::Metric;
use crate::model::experiment::{Action, AnalysisMode, Spending, Status};
use crate::results::interactions::{self, Interactions};
use crate::results::{self, Interval, Results};
use crate::store::{self, Change};

fn stats_error(error: StatsError) -> ApiError {
    ApiError::invalid("input", results::describe(&error))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ResultsQuery {
    /// `day` adds the cumulative daily series of every estimate.
    pub granularity: Option<String>,
    /// One of the experiment's `dimensions` or the instance's: the results per value of that attribute at
    /// each unit's first exposure instead (a `DrillDown`, exploratory).
    pub dimension: Option<String>,
    /// With `dimension`: how many values to show apart (1–50, default 10); the rest are
    /// merged into `other`.
    pub top: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}/results", tag = "analysis",
    params(("id" = String, Path, description = "Id or key"), ResultsQuery),
    responses((status = 200, body = Results, description = "The results; a `DrillDown` with `dimension`"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn experiment_results(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let Query(query) = query?;
    if let Some(dimension) = &query.dimension {
        let top = query.top.unwrap_or(results::drilldown::DEFAULT_TOP);
        if !(1..=results::drilldown::MAX_TOP).contains(&top) {
            return Err(ApiError::bad_request(format!(
                "top must be between 1 and {}",
                results::drilldown::MAX_TOP
            )));
        }
        if query.granularity.is_some() {
            return Err(ApiError::bad_request(
                "a drill-down has no daily series; leave out `granularity`",
            ));
        }
        let mut conn = state.db.pool.acquire().await?;
        let drill_down =
            crate::analysis::drill_down_of(&state, &mut conn, &id, dimension, top).await?;
        return Ok(json(StatusCode::OK, &drill_down));
    } else if query.top.is_some() {
        return Err(ApiError::bad_request("`top` needs a `dimension`"));
    }
    let daily = daily_series(query.granularity.as_deref())?;
    let mut conn = state.db.pool.acquire().await?;
    Ok(json(
        StatusCode::OK,
        &results_of(&state, &mut conn, &id, daily).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HoldoutResultsQuery {
    /// `day` adds the cumulative daily series of every estimate.
    pub granularity: Option<String>,
}

/// Whether `granularity` asks for the daily series.
fn daily_series(granularity: Option<&str>) -> ApiResult<bool> {
    match granularity {
        None => Ok(false),
        Some("day") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "granularity must be `day`, not `{other}`"
        ))),
    }
}

#[utoipa::path(get, path = "/api/v1/holdouts/{id}/results", tag = "holdouts",
    params(("id" = String, Path, description = "Id or key"), HoldoutResultsQuery),
    responses((status = 200, body = Results, description = "The holdout read out as a two-arm experiment: `held` (control) against `released`"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn holdout_results(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    query: Result<Query<HoldoutResultsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let Query(query) = query?;
    let daily = daily_series(query.granularity.as_deref())?;
    let mut conn = state.db.pool.acquire().await?;
    Ok(json(
        StatusCode::OK,
        &crate::analysis::holdout_results_of(&state, &mut conn, &id, daily).await?,
    ))
}

/// One group of a two-group comparison.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub units: u64,
    /// Converted units (proportions).
    #[serde(default)]
    pub successes: Option<u64>,
    /// Σ of the per-unit values (means).
    #[serde(default)]
    pub sum: Option<f64>,
    /// Σ of their squares (means).
    #[serde(default)]
    pub sum_squares: Option<f64>,
    /// Ratio denominators: Σ y, Σ y² and Σ x·y per unit (`sum` is Σ x, the numerator).
    #[serde(default)]
    pub sum_den: Option<f64>,
    #[serde(default)]
    pub sum_den_squares: Option<f64>,
    #[serde(default)]
    pub sum_num_den: Option<f64>,
    /// CUPED (means): Σ c, Σ c² and Σ x·c of each unit's pre-exposure covariate c.
    #[serde(default)]
    pub covariate_sum: Option<f64>,
    #[serde(default)]
    pub covariate_sum_squares: Option<f64>,
    #[serde(default)]
    pub covariate_cross_sum: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareKind {
    Proportion,
    Mean,
    Ratio,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareMode {
    #[default]
    FixedHorizon,
    Sequential,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    pub kind: CompareKind,
    pub control: GroupInput,
    pub treatment: GroupInput,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub mode: CompareMode,
    /// Sequential tuning: the per-experiment sample size where the confidence sequence is
    /// tightest (default 10,000).
    #[serde(default)]
    pub tuning_units: Option<f64>,
}

fn default_alpha() -> f64 {
    0.05
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BayesianFigures {
    pub chance_to_win: f64,
    pub expected_loss: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SequentialFigures {
    pub p_value: f64,
    pub ci: [f64; 2],
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CompareResult {
    pub control: Option<f64>,
    pub treatment: Option<f64>,
    /// Absent (with `note`) when the test is undefined, e.g. no variation in either group.
    pub absolute: Option<Interval>,
    /// Relative lift by the delta method, with the same degrees of freedom as the test.
    pub relative: Option<Interval>,
    pub relative_unavailable: Option<String>,
    /// Degrees of freedom (Welch); absent for the z-test.
    pub df: Option<f64>,
    pub bayesian: Option<BayesianFigures>,
    pub sequential: Option<SequentialFigures>,
    /// CUPED-adjusted comparison, when covariate sums were given (means).
    pub cuped: Option<results::CupedView>,
    /// Under the chosen mode: p < alpha (fixed horizon) or the always-valid p < alpha.
    pub significant: bool,
    /// Why a figure is missing.
    pub note: Option<String>,
}

fn proportion(group: &GroupInput, side: &str) -> ApiResult<Proportion> {
    let successes = group.successes.ok_or_else(|| {
        ApiError::invalid(format!("{side}.successes"), "required for proportions")
    })?;
    Ok(Proportion::new(group.units, successes))
}

fn ratio(group: &GroupInput, side: &str) -> ApiResult<abx_stats::RatioMoments> {
    match (
        group.sum,
        group.sum_squares,
        group.sum_den,
        group.sum_den_squares,
        group.sum_num_den,
    ) {
        (Some(sum_num), Some(sum_num_sq), Some(sum_den), Some(sum_den_sq), Some(sum_num_den)) => {
            Ok(abx_stats::RatioMoments {
                n: group.units,
                sum_num,
                sum_num_sq,
                sum_den,
                sum_den_sq,
                sum_num_den,
            })
        }
        _ => Err(ApiError::invalid(
            side,
            "ratios need `sum`, `sum_squares`, `sum_den`, `sum_den_squares` and `sum_num_den`",
        )),
    }
}

fn covariate(group: &GroupInput) -> Option<abx_stats::CovariateMoments> {
    Some(abx_stats::CovariateMoments {
        n: group.units,
        sum_y: group.sum?,
        sum_y_sq: group.sum_squares?,
        sum_x: group.covariate_sum?,
        sum_x_sq: group.covariate_sum_squares?,
        sum_xy: group.covariate_cross_sum?,
    })
}

fn moments(group: &GroupInput, side: &str) -> ApiResult<Moments> {
    match (group.sum, group.sum_squares) {
        (Some(sum), Some(sum_sq)) => Ok(Moments {
            n: group.units,
            sum,
            sum_sq,
        }),
        _ => Err(ApiError::invalid(
            side,
            "means need `sum` and `sum_squares`",
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/analysis/compare", tag = "analysis", request_body = CompareRequest,
    responses((status = 200, body = CompareResult), (status = 422, body = ErrorBody)))]
pub async fn compare(
    caller: Caller,
    ApiJson(request): ApiJson<CompareRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let config = SequentialConfig {
        alpha: request.alpha,
        tuning_units: request.tuning_units.unwrap_or(10_000.0),
    };
    let mut cuped = None;
    let (comparison, bayesian, sequential) = match request.kind {
        CompareKind::Proportion => {
            let (c, t) = (
                proportion(&request.control, "control")?,
                proportion(&request.treatment, "treatment")?,
            );
            let comparison = abx_stats::two_proportion_z_test(&c, &t, request.alpha);
            let bayesian = abx_stats::beta_binomial(&c, &t).map_err(stats_error)?;
            (
                comparison,
                Some(bayesian),
                sequential::sequential_proportion_test(&c, &t, &config).ok(),
            )
        }
        CompareKind::Mean => {
            let (c, t) = (
                moments(&request.control, "control")?,
                moments(&request.treatment, "treatment")?,
            );
            let comparison = abx_stats::welch_t_test(&c, &t, request.alpha);
            if let (Some(cc), Some(tc)) =
                (covariate(&request.control), covariate(&request.treatment))
            {
                let k = abx_stats::cuped_test(&cc, &tc, request.alpha).map_err(stats_error)?;
                cuped = Some(results::CupedView {
                    adjusted: k.adjusted,
                    theta: k.theta,
                    variance_reduction: k.variance_reduction,
                    absolute: (&k.comparison.absolute).into(),
                });
            }
            (
                comparison,
                abx_stats::bayesian::gaussian(&c, &t).ok(),
                sequential::sequential_mean_test(&c, &t, &config).ok(),
            )
        }
        CompareKind::Ratio => {
            let (c, t) = (
                ratio(&request.control, "control")?,
                ratio(&request.treatment, "treatment")?,
            );
            let comparison = abx_stats::ratio_test(&c, &t, request.alpha).map_err(stats_error)?;
            let sequential = sequential::always_valid(
                comparison.absolute.estimate,
                comparison.absolute.std_error,
                c.n + t.n,
                &config,
            )
            .ok();
            (Ok(comparison), None, sequential)
        }
    };
    // The test can be undefined (no variation at all) while the Bayesian figures are not;
    // answer what can be answered, and 422 only when nothing can.
    let (comparison, note) = match comparison {
        Ok(c) => (Some(c), None),
        Err(error) if bayesian.is_some() => (None, Some(results::describe(&error))),
        Err(error) => return Err(stats_error(error)),
    };
    let sequential = matches!(request.mode, CompareMode::Sequential)
        .then_some(sequential)
        .flatten();
    let significant = match (request.mode, &comparison) {
        (CompareMode::FixedHorizon, Some(c)) => c.absolute.p_value <= request.alpha,
        (CompareMode::Sequential, _) => sequential.is_some_and(|s| s.p_value <= request.alpha),
        (_, None) => false,
    };
    let (relative, relative_unavailable) = match comparison.map(|c| c.relative) {
        Some(abx_stats::RelativeLift::Estimated(e)) => (Some((&e).into()), None),
        Some(abx_stats::RelativeLift::Unavailable { reason }) => {
            (None, Some(format!("{reason:?}").to_lowercase()))
        }
        None => (None, None),
    };
    let result = CompareResult {
        control: comparison.map(|c| c.control),
        treatment: comparison.map(|c| c.treatment),
        absolute: comparison.map(|c| (&c.absolute).into()),
        relative,
        relative_unavailable,
        df: comparison.and_then(|c| c.absolute.df),
        bayesian: bayesian.map(|b| BayesianFigures {
            chance_to_win: b.chance_to_beat_control,
            expected_loss: b.expected_loss,
        }),
        sequential: sequential.map(|s| SequentialFigures {
            p_value: s.p_value,
            ci: [s.ci_lower, s.ci_upper],
        }),
        cuped,
        significant,
        note,
    };
    Ok(json(StatusCode::OK, &result))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SrmRequest {
    pub counts: Vec<u64>,
    pub weights: Vec<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SrmResponse {
    pub chi2: f64,
    pub df: u64,
    pub p_value: f64,
    pub mismatch: bool,
    pub expected: Vec<f64>,
}

#[utoipa::path(post, path = "/api/v1/analysis/srm", tag = "analysis", request_body = SrmRequest,
    responses((status = 200, body = SrmResponse), (status = 422, body = ErrorBody)))]
pub async fn srm(caller: Caller, ApiJson(request): ApiJson<SrmRequest>) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let r = abx_stats::srm_test(&request.counts, &request.weights).map_err(stats_error)?;
    Ok(json(
        StatusCode::OK,
        &SrmResponse {
            chi2: r.statistic,
            df: r.df,
            p_value: r.p_value,
            mismatch: r.mismatch,
            expected: r.expected,
        },
    ))
}

#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustMethod {
    Bonferroni,
    Holm,
    Bh,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustRequest {
    pub p_values: Vec<f64>,
    pub method: AdjustMethod,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdjustResponse {
    /// In input order.
    pub adjusted: Vec<f64>,
}

#[utoipa::path(post, path = "/api/v1/analysis/adjust", tag = "analysis", request_body = AdjustRequest,
    responses((status = 200, body = AdjustResponse), (status = 422, body = ErrorBody)))]
pub async fn adjust(
    caller: Caller,
    ApiJson(request): ApiJson<AdjustRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    if request.p_values.iter().any(|p| !(0.0..=1.0).contains(p)) {
        return Err(ApiError::invalid(
            "p_values",
            "every p-value must be within [0, 1]",
        ));
    }
    let method = match request.method {
        AdjustMethod::Bonferroni => abx_stats::Correction::Bonferroni,
        AdjustMethod::Holm => abx_stats::Correction::Holm,
        AdjustMethod::Bh => abx_stats::Correction::BenjaminiHochberg,
    };
    Ok(json(
        StatusCode::OK,
        &AdjustResponse {
            adjusted: abx_stats::adjust_p_values(&request.p_values, method),
        },
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoundariesRequest {
    pub information_fractions: Vec<f64>,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    pub spending: Spending,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LookView {
    pub information_fraction: f64,
    pub cumulative_alpha: f64,
    /// Two-sided |z| boundary at this look.
    pub z_boundary: f64,
    pub nominal_p: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BoundariesResponse {
    pub looks: Vec<LookView>,
}

#[utoipa::path(post, path = "/api/v1/analysis/boundaries", tag = "analysis", request_body = BoundariesRequest,
    responses((status = 200, body = BoundariesResponse), (status = 422, body = ErrorBody)))]
pub async fn boundaries(
    caller: Caller,
    ApiJson(request): ApiJson<BoundariesRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    if request.information_fractions.len() > 50 {
        return Err(ApiError::invalid(
            "information_fractions",
            "at most 50 looks",
        ));
    }
    let looks = group_sequential::boundaries(
        &request.information_fractions,
        request.alpha,
        request.spending.function(),
    )
    .map_err(stats_error)?;
    let looks = looks
        .iter()
        .map(|l| LookView {
            information_fraction: l.information_fraction,
            cumulative_alpha: l.cumulative_alpha,
            z_boundary: l.z_boundary,
            nominal_p: l.nominal_p,
        })
        .collect();
    Ok(json(StatusCode::OK, &BoundariesResponse { looks }))
}

#[derive(Clone, Copy, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerMetric {
    Conversion,
    Mean,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MdeType {
    #[default]
    Relative,
    Absolute,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub metric: PowerMetric,
    /// Baseline conversion rate, or baseline mean.
    pub baseline: f64,
    /// Standard deviation per unit (means).
    #[serde(default)]
    pub std_dev: Option<f64>,
    /// Minimum detectable effect.
    pub mde: f64,
    #[serde(default)]
    pub mde_type: MdeType,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_power")]
    pub power: f64,
    #[serde(default = "default_variants")]
    pub variants: u32,
    /// Units entering the experiment per day, for the expected duration.
    #[serde(default)]
    pub daily_traffic: Option<f64>,
    /// The analysis the experiment will run (its `analysis.mode`; default sequential, as
    /// for experiments): always-valid and group-sequential tests need more units than one
    /// fixed-horizon look for the same power.
    #[serde(default)]
    pub mode: AnalysisMode,
    /// Planned looks (group_sequential).
    #[serde(default)]
    pub looks: Option<u32>,
    #[serde(default)]
    pub spending: Spending,
    /// Secondary metrics, corrected together with the primary.
    #[serde(default)]
    pub secondary_metrics: u32,
}

fn default_power() -> f64 {
    0.8
}

fn default_variants() -> u32 {
    2
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PowerResponse {
    pub mode: AnalysisMode,
    pub units_per_variant: u64,
    pub total_units: u64,
    /// Alpha per comparison: Bonferroni over (1 + secondary metrics) × treatments, the family
    /// the results correct over (a plan powered so is powered under Holm and BH too).
    pub alpha_per_comparison: f64,
    /// What a single fixed-horizon test would need for the same power.
    pub fixed_horizon_units_per_variant: u64,
    pub absolute_effect: f64,
    pub expected_days: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/analysis/power", tag = "analysis", request_body = PowerRequest,
    responses((status = 200, body = PowerResponse), (status = 422, body = ErrorBody)))]
pub async fn power_calculator(
    caller: Caller,
    ApiJson(request): ApiJson<PowerRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mde = match request.mde_type {
        MdeType::Relative => Mde::Relative(request.mde),
        MdeType::Absolute => Mde::Absolute(request.mde),
    };
    let test = match request.mode {
        AnalysisMode::FixedHorizon => PlannedTest::FixedHorizon,
        AnalysisMode::Sequential => PlannedTest::Sequential,
        AnalysisMode::GroupSequential => PlannedTest::GroupSequential {
            looks: request
                .looks
                .filter(|k| (2..=20).contains(k))
                .ok_or_else(|| {
                    ApiError::invalid("looks", "group_sequential needs 2 to 20 planned looks")
                })?,
            spending: request.spending.function(),
        },
    };
    if request.secondary_metrics > 100 {
        return Err(ApiError::invalid("secondary_metrics", "at most 100"));
    }
    let config = PowerConfig {
        alpha: request.alpha,
        power: request.power,
        variants: request.variants,
        daily_traffic: request.daily_traffic,
        secondary_metrics: request.secondary_metrics,
        test,
    };
    let plan = match request.metric {
        PowerMetric::Conversion => power::conversion_sample_size(request.baseline, mde, &config),
        PowerMetric::Mean => {
            let sd = request
                .std_dev
                .ok_or_else(|| ApiError::invalid("std_dev", "required for means"))?;
            power::mean_sample_size(request.baseline, sd, mde, &config)
        }
    }
    .map_err(stats_error)?;
    Ok(json(
        StatusCode::OK,
        &PowerResponse {
            mode: request.mode,
            units_per_variant: plan.units_per_variant,
            total_units: plan.total_units,
            alpha_per_comparison: plan.alpha_per_comparison,
            fixed_horizon_units_per_variant: plan.fixed_horizon_units_per_variant,
            absolute_effect: plan.absolute_effect,
            expected_days: plan.expected_days,
        },
    ))
}

/// For every pair of running experiments in different layers that share exposed units and a
/// metric: the interaction of their treatment effects, BH-adjusted across all pairs.
#[utoipa::path(get, path = "/api/v1/interactions", tag = "analysis", responses((status = 200, body = Interactions)))]
pub async fn interactions(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Permission::ReadConfig)?;
    let mut conn = state.db.pool.acquire().await?;
    let running = store::experiments::with_status(&mut conn, &[Status::Running]).await?;
    let metrics: HashMap<String, Metric> = store::catalog::metrics(&mut conn, None)
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let mut items = Vec::new();
    for (a, b, metric) in interactions::candidates(&running, &metrics) {
        let cells = state
            .pipeline
            .interaction_cells(&mut conn, (a, b), metric, &metrics)
            .await?;
        items.extend(interactions::analyse(a, b, metric, &cells));
    }
    interactions::adjust(&mut items);
    Ok(json(StatusCode::OK, &Interactions { items }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The manual kill switch: pauses a running experiment at once (publishing a snapshot so
/// edges stop assigning it), with an audit entry and a webhook.
#[utoipa::path(post, path = "/api/v1/experiments/{id}/kill", tag = "experiments", params(("id" = String, Path, description = "Id or key")),
    request_body(content = Option<KillRequest>),
    responses((status = 200, body = crate::model::experiment::Experiment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn kill(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<KillRequest>>,
) -> ApiResult<Response> {
    caller.require(Permission::WriteConfig)?;
    // The kill switch must work whatever reason comes with it: one lifecycle reasons refuse
    // (NUL characters, more than their 1,000 characters) is cleaned and cut instead.
    let reason: String = body
        .and_then(|b| b.0.reason)
        .unwrap_or_else(|| "manual kill switch".into())
        .chars()
        .filter(|c| *c != '\0')
        .take(900)
        .collect();
    let actor = caller.actor();
    let paused = state
        .mutate(async |conn| {
            let paused = lifecycle::apply(
                conn,
                &actor,
                &id,
                Action::Pause,
                &LifecycleBody {
                    ship: None,
                    reason: Some(format!("killed: {reason}")),
                },
            )
            .await?;
            let details = json!({"key": paused.key, "reason": reason});
            store::record(
                conn,
                Change {
                    actor: &actor,
                    action: "experiment.killed",
                    entity_type: "experiment",
                    entity_id: &paused.id,
                    details,
                },
            )
            .await?;
            Ok(paused)
        })
        .await?;
    let version = paused.version;
    Ok(with_version(json(StatusCode::OK, &paused), version))
}
