//! Experiment results: from an experiment's rollups to estimates, tests, corrections,
//! sequential and Bayesian figures, SRM, guardrails and a recommendation. Pure: the caller
//! loads the rollups (O(days × variants × metrics) rows) and abx-stats does the statistics.
//! docs/statistics.md describes every method; this module decides which applies where.

pub mod drilldown;
pub mod interactions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use abx_stats::group_sequential::{self, Look};
use abx_stats::guardrail::{
    self, GuardrailCheck, GuardrailConfig, GuardrailStatus, HarmfulDirection,
};
use abx_stats::sequential::{self, SequentialConfig, SequentialResult};
use abx_stats::trend::CumulativeEstimate;
use abx_stats::{
    BayesianResult, Comparison, CovariateMoments, CupedComparison, Effect, Moments, Proportion,
    QuantileEstimate, RatioCovariateMoments, RatioMoments, RelativeLift, SrmResult, StatsError,
};
use serde::{Deserialize, Serialize};

use crate::model::catalog::{Direction, Metric, MetricKind};
use crate::model::experiment::{AnalysisMode, Correction, Experiment, Spending, Status};
use crate::rollup::{Rollups, Sums};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricRole {
    Primary,
    Secondary,
    Guardrail,
}

/// One metric's aggregate for one variant.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MetricSummary {
    pub units: u64,
    /// The cap each unit's value was held to (capped metrics): `sum` and `value` are over
    /// the capped values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<f64>,
    /// Units whose value was above the cap (capped metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped_units: Option<u64>,
    /// Converted units (conversion metrics), or events (quantile metrics).
    pub count: Option<u64>,
    /// Σ of the metric over units (the total, for sum metrics).
    pub sum: f64,
    /// Conversion rate, mean per unit, or ratio of sums.
    pub value: Option<f64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VariantSummary {
    /// Exposed units counted in the analysis (the seed's `impressions`).
    pub impressions: u64,
    /// Conversions of the primary metric, when it is a conversion metric.
    pub conversions: Option<u64>,
    /// The primary metric's rate or mean.
    pub rate: Option<f64>,
    /// Units exposed to more than one variant, excluded from the analysis.
    pub multiple_exposures: u64,
    pub metrics: BTreeMap<String, MetricSummary>,
}

#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct Interval {
    pub estimate: f64,
    pub std_error: f64,
    pub ci: [f64; 2],
    pub p_value: f64,
}

impl From<&Effect> for Interval {
    fn from(e: &Effect) -> Self {
        Interval {
            estimate: e.estimate,
            std_error: e.std_error,
            ci: [e.ci_lower, e.ci_upper],
            p_value: e.p_value,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct SequentialView {
    /// Always-valid p-value (mSPRT): valid however often it is looked at.
    pub p_value: f64,
    /// Confidence sequence for the absolute effect.
    pub ci: [f64; 2],
    /// Confidence sequence for the relative lift (on the log ratio, mapped back), when the
    /// lift can be estimated.
    pub relative_ci: Option<[f64; 2]>,
    /// Units per variant at which the confidence sequence is tightest.
    pub tuning_units: f64,
}

/// One look of a group-sequential test, recorded at the end of the first day on which its
/// information fraction was reached, with the data up to that day.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GroupSequentialLook {
    /// Day (UTC) whose data the look read.
    pub date: String,
    /// The fraction of the planned sample actually reached (1 at the final look).
    pub information_fraction: f64,
    pub z: f64,
    /// |z| boundary at this fraction (Lan–DeMets spending at the fractions observed).
    pub z_boundary: f64,
    pub crossed: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GroupSequentialView {
    /// Planned looks whose information fraction has been reached on a completed day.
    pub looks_passed: u32,
    pub looks_planned: u32,
    /// Share of the planned sample reached now by the slowest variant.
    pub information_fraction: f64,
    /// |z| boundary of the latest recorded look.
    pub z_boundary: Option<f64>,
    /// z at the latest recorded look (0 before the first).
    pub z: f64,
    /// A boundary was crossed: the test stopped there and its figures are that look's.
    pub crossed: bool,
    /// The test is over (a boundary crossed, or the final look read): later data no longer
    /// changes its decision.
    pub decided: bool,
    pub looks: Vec<GroupSequentialLook>,
}

/// A test statistic a decision rests on, as first computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionStatistic {
    pub metric: String,
    pub variant: String,
    /// The test statistic (group sequential) and the unadjusted p-value (fixed horizon).
    pub z: Option<f64>,
    pub p_value: Option<f64>,
    /// The estimate they are of (looks recorded before CUPED decided have none: unadjusted).
    #[serde(default)]
    pub estimator: Estimator,
}

/// A look of a test, recorded the first time it is computed and reused by every later read:
/// events delivered late, or a warehouse recomputation, may still revise the rollups of the
/// look's day, and a decision must not move with them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionLook {
    /// 0 for the fixed-horizon test; k ≥ 1 for the group-sequential look k.
    pub look: u32,
    /// The last day (UTC, days since the epoch) of the data the look read.
    pub day: i64,
    pub information_fraction: f64,
    /// Planned looks reached by this one (group sequential; 1 for fixed horizon).
    pub reached: u32,
    pub statistics: Vec<DecisionStatistic>,
}

/// A day counts as complete this long after it ends: events sent at its end by beacons,
/// retries and clients that were offline for a while are then in (the rest, which can come
/// later, no longer moves a recorded look).
pub const LATE_EVENT_GRACE_MS: i64 = 2 * 3_600_000;

/// What a read of the results knows besides the experiment and its rollups.
pub struct Reading<'a> {
    pub now_ms: i64,
    /// The rollups hold every event up to here (a warehouse's last computation); days after
    /// it are not complete, whatever the clock says. `None`: maintained event by event.
    pub data_until_ms: Option<i64>,
    /// Looks recorded by earlier reads.
    pub recorded: &'a [DecisionLook],
    /// Add the daily series.
    pub daily: bool,
}

/// Estimates with all the data so far, shown once the test has been frozen at an earlier
/// day: descriptive only, not a test.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LatestView {
    pub control_units: u64,
    pub treatment_units: u64,
    pub absolute: Option<Interval>,
    pub relative: Option<Interval>,
}

/// A linear trend of the relative effect over the experiment's completed days (novelty or
/// primacy). Descriptive: a drift worth a look, not a test to decide on.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct TrendView {
    /// Change per day of the relative effect, as a log ratio (≈ the change of the lift).
    pub slope_per_day: f64,
    pub std_error: f64,
    pub p_value: f64,
    /// p < alpha: the effect is changing; what is measured now may not last.
    pub significant: bool,
}

#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct BayesianView {
    /// The posterior probability that the treatment is better than control in the metric's
    /// direction (higher, or lower for lower-is-better metrics).
    pub chance_to_win: f64,
    /// Expected loss of shipping the treatment, in the metric's units: how much worse than
    /// control it is expected to be, in the metric's direction.
    pub expected_loss: f64,
}

#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct CupedView {
    /// False when the covariate did not vary (no unit had pre-exposure data, or all had
    /// the same): the figures are then the unadjusted test's.
    pub adjusted: bool,
    pub theta: f64,
    /// 1 − var(adjusted) / var(unadjusted).
    pub variance_reduction: f64,
    /// The CUPED-adjusted difference.
    pub absolute: Interval,
}

/// Which estimate a comparison's figures and decision are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// The metric kind's standard test on the units' values after exposure.
    #[default]
    Unadjusted,
    /// CUPED: adjusted by the units' values before exposure (docs/statistics.md §5).
    Cuped,
}

/// One treatment against the control on one metric.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ComparisonView {
    pub variant: String,
    /// The estimate `absolute`, `relative`, the p-values and `significant` are, and every
    /// decision uses: CUPED wherever the metric has pre-exposure data that varies.
    pub estimator: Estimator,
    pub absolute: Option<Interval>,
    /// Relative lift (treatment − control) / control, its interval on the log ratio (the
    /// delta method when the treatment's mean is not positive); absent when the baseline is
    /// zero or negative (`relative_unavailable` says why).
    pub relative: Option<Interval>,
    pub relative_unavailable: Option<String>,
    /// The fixed-horizon p-value at the data the test reads, and after the experiment's
    /// multiple-comparison correction (guardrails are not part of the family). In
    /// sequential mode the correction is of the always-valid p-values.
    pub p_value: Option<f64>,
    pub adjusted_p_value: Option<f64>,
    /// Significant under the experiment's analysis mode.
    pub significant: bool,
    /// The effect is in the metric's good direction.
    pub improvement: Option<bool>,
    pub sequential: Option<SequentialView>,
    pub group_sequential: Option<GroupSequentialView>,
    pub bayesian: Option<BayesianView>,
    pub cuped: Option<CupedView>,
    /// With the CUPED estimator: the unadjusted difference, for reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unadjusted: Option<Interval>,
    /// Once the test is frozen (fixed horizon at its plan, group sequential at its deciding
    /// look), the estimates with all data since: descriptive only.
    pub latest: Option<LatestView>,
    /// The primary metric's trend over days.
    pub trend: Option<TrendView>,
    /// Why a figure could not be computed (too little data, zero variance, ...).
    pub note: Option<String>,
    /// The test statistic, for the group-sequential looks.
    #[serde(skip)]
    statistic: Option<f64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MetricResult {
    pub metric: String,
    pub kind: MetricKind,
    /// The quantile of a quantile metric (0.95 for a 95th percentile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The window after the exposure the metric counts events in, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::model::catalog::Window>,
    pub role: MetricRole,
    pub direction: Direction,
    pub comparisons: Vec<ComparisonView>,
    /// Properties the metric's filter tests that no event of its type has carried: the
    /// filter's tests of them are false for every event (set by the caller, which knows
    /// the events).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_filter_properties: Vec<String>,
}

impl MetricResult {
    fn of(metric: &Metric, role: MetricRole, comparisons: Vec<ComparisonView>) -> MetricResult {
        MetricResult {
            metric: metric.key.clone(),
            kind: metric.kind,
            quantile: metric.quantile,
            window: metric.window,
            role,
            direction: metric.direction,
            comparisons,
            unknown_filter_properties: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SrmView {
    pub counts: BTreeMap<String, u64>,
    pub expected: BTreeMap<String, f64>,
    /// Pearson's χ² and its p-value (descriptive: valid for one look only).
    pub chi2: f64,
    pub p_value: f64,
    /// Always-valid p-value (Dirichlet–multinomial test), valid on every refresh.
    pub sequential_p_value: f64,
    /// Flagged when the always-valid p < 0.001: the split is broken and the results cannot
    /// be trusted. Checked hourly for the life of an experiment, a healthy split is flagged
    /// with probability below 0.1 %.
    pub mismatch: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GuardrailView {
    pub metric: String,
    pub variant: String,
    /// The estimate the check tests (CUPED wherever the metric has pre-exposure data).
    pub estimator: Estimator,
    /// `insufficient_data`, `healthy`, `alarm`, or `error` when the check could not be
    /// computed (`note` says why; it blocks a "Ship" recommendation).
    pub status: String,
    pub harmful_effect: f64,
    pub z: f64,
    /// Always-valid one-sided p-value in the harmful direction.
    pub p_value: f64,
    /// The level each check uses: alpha split over guardrails × treatments, so that the
    /// chance of any false alarm over the experiment's life stays below alpha.
    pub alpha: f64,
    /// Standard errors of harmful movement that raise the alarm now: the larger of the
    /// metric's `guardrail_threshold` and the always-valid test's boundary at this sample.
    pub threshold: f64,
    /// The non-inferiority margin (relative to control) from the experiment's analysis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Always-valid upper bound of the harm, relative to control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harm_upper_bound: Option<f64>,
    /// With a margin: the upper bound is below it (the treatment is shown not to be worse by
    /// the margin). "Ship" needs this for every guardrail that has a margin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_inferior: Option<bool>,
    /// Why the check alarmed or failed without a test: the treatment lost what control has,
    /// or the statistics could not be computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DailyPoint {
    /// Day (UTC), and the cumulative estimate using data up to its end.
    pub date: String,
    pub metric: String,
    pub variant: String,
    pub control_units: u64,
    pub treatment_units: u64,
    pub absolute: Option<Interval>,
    pub relative: Option<Interval>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Results {
    pub experiment_id: String,
    pub experiment: String,
    pub status: Status,
    pub days_running: f64,
    pub analysis_mode: AnalysisMode,
    pub alpha: f64,
    pub correction: Correction,
    pub control: String,
    pub variants: BTreeMap<String, VariantSummary>,
    /// The seed's headline figures: the primary metric, the first treatment against control,
    /// as the analysis mode reads them (sequential: the always-valid p and the confidence
    /// sequence; fixed horizon and group sequential: the test at the data it reads).
    pub lift: Option<f64>,
    pub p_value: Option<f64>,
    pub significant: bool,
    /// Interval of the relative lift.
    pub confidence_interval: Option<[f64; 2]>,
    /// The last day (UTC) of the data the test reads, once it is frozen (fixed horizon at
    /// its plan); absent while the test reads all data so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysed_through: Option<String>,
    /// Days the experiment must run before a decision is recommended.
    pub min_duration_days: u32,
    pub metrics: Vec<MetricResult>,
    pub srm: Option<SrmView>,
    pub guardrails: Vec<GuardrailView>,
    pub multiple_exposures: u64,
    /// Fixed horizon: share of the planned sample reached by the slowest variant.
    pub planned_sample_fraction: Option<f64>,
    pub recommended_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<DailyPoint>>,
    /// Every look the decisions rest on, recorded ones and those this read computed first;
    /// the caller stores the new ones (`DecisionLook`).
    #[serde(skip)]
    pub decision_looks: Vec<DecisionLook>,
    /// With a warehouse, results come from rollups that the pipeline recomputes on a
    /// schedule: when the ones shown were computed (they hold every event loaded by then).
    /// Absent when the rollups are maintained event by event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollups_computed_at: Option<String>,
    /// Exposures refused because their variant is not the one the snapshot assigns their
    /// unit (forged or broken clients), by the variant they claimed (`(not a variant)` for
    /// names the experiment has no variant of). They are not in any figure above.
    pub mismatched_exposures: BTreeMap<String, i64>,
}

/// Per variant: clean exposed units and multiple exposures, up to a day (inclusive).
fn units_by_variant(rollups: &Rollups, until_day: i64) -> (HashMap<&str, u64>, HashMap<&str, u64>) {
    let mut units: HashMap<&str, u64> = HashMap::new();
    let mut multiple: HashMap<&str, u64> = HashMap::new();
    for r in rollups.exposures.iter().filter(|r| r.day <= until_day) {
        *units.entry(&r.variant).or_default() += r.units.max(0) as u64;
        *multiple.entry(&r.variant).or_default() += r.multiple.max(0) as u64;
    }
    (units, multiple)
}

fn sums_by<'r>(rollups: &'r Rollups, metric: &str, until_day: i64) -> HashMap<&'r str, Sums> {
    let mut out: HashMap<&str, Sums> = HashMap::new();
    for r in &rollups.metrics {
        if r.metric == metric && r.day <= until_day {
            out.entry(&r.variant).or_default().add(&r.sums);
        }
    }
    out
}

/// A metric's per-variant data as its tests take it: the sums of the units' values up to a
/// day, or (with all data so far) a capped metric's sums over its capped values and a
/// quantile metric's estimate, neither of which has per-day sums to add up.
struct VariantData<'r> {
    sums: HashMap<&'r str, Sums>,
    /// The units a capped metric's sums are over, which replace those up to the day.
    units: HashMap<&'r str, u64>,
    quantiles: HashMap<&'r str, QuantileEstimate>,
}

impl<'r> VariantData<'r> {
    fn of(rollups: &'r Rollups, metric: &Metric, until_day: i64) -> Self {
        let capped = || rollups.capped.iter().filter(|r| r.metric == metric.key);
        let (sums, units) = if metric.cap.is_some() {
            (
                capped().map(|r| (r.variant.as_str(), r.sums)).collect(),
                capped().map(|r| (r.variant.as_str(), r.units)).collect(),
            )
        } else {
            (sums_by(rollups, &metric.key, until_day), HashMap::new())
        };
        let quantiles = rollups
            .quantiles
            .iter()
            .filter(|r| r.metric == metric.key)
            .filter_map(|r| Some((r.variant.as_str(), r.estimate?)))
            .collect();
        VariantData {
            sums,
            units,
            quantiles,
        }
    }

    /// The group of a variant with `n` units up to the day.
    fn group(&self, variant: &str, n: u64) -> Group {
        Group {
            n: self.units.get(variant).copied().unwrap_or(n),
            s: self.sums.get(variant).copied().unwrap_or_default(),
            q: self.quantiles.get(variant).copied(),
        }
    }
}

/// Whether a metric's figures exist per day (for the daily series and the trend).
fn has_daily_figures(metric: &Metric) -> bool {
    metric.cap.is_none() && metric.kind != MetricKind::Quantile
}

/// The metrics of an experiment in analysis order (primary, secondary, guardrails), each
/// once, with its role.
fn metric_roles(e: &Experiment) -> Vec<(String, MetricRole)> {
    let mut roles: Vec<(String, MetricRole)> =
        vec![(e.primary_metric.clone(), MetricRole::Primary)];
    roles.extend(
        e.secondary_metrics
            .iter()
            .map(|m| (m.clone(), MetricRole::Secondary)),
    );
    for m in &e.guardrail_metrics {
        if !roles.iter().any(|(k, _)| k == m) {
            roles.push((m.clone(), MetricRole::Guardrail));
        }
    }
    roles
}

/// The fewest units that must carry a guardrail's metric in an arm a verdict rests on
/// (see [`guardrail_view`]): with 30, a treatment with none of what control's 30 have is a
/// chance of e⁻³⁰ when nothing changed, and a quantile's rank is below its top event.
const MIN_UNITS_CARRYING: f64 = 30.0;

/// A guardrail metric's check of one treatment against control. A check whose statistics
/// cannot be computed is never dropped: with enough units carrying the metric in the arms
/// the verdict rests on, it alarms when the treatment is certainly worse (every unit moved
/// the harmful way, so there is no variance to test) or lost what control has (a ratio
/// whose treatment denominator vanished); with fewer it reports `insufficient_data`, and
/// otherwise `error`, which the recommendation shows.
fn guardrail_view(
    metric: &Metric,
    (variant, chosen): (&str, Estimator),
    c: &Group,
    t: &Group,
    config: &GuardrailConfig,
    margin: Option<f64>,
) -> GuardrailView {
    let estimator = used(chosen, metric.kind, c, t, config.alpha).0;
    let view = |status: &str, check: Option<&GuardrailCheck>, note: Option<String>| GuardrailView {
        metric: metric.key.clone(),
        variant: variant.to_string(),
        estimator,
        status: status.into(),
        harmful_effect: check.map_or(0.0, |k| k.harmful_effect),
        z: check.map_or(0.0, |k| k.z),
        p_value: check.map_or(1.0, |k| k.p_value),
        alpha: config.alpha,
        threshold: check.map_or(config.min_std_errors, |k| {
            k.z_boundary.max(config.min_std_errors)
        }),
        margin,
        harm_upper_bound: None,
        non_inferior: margin.map(|_| false),
        note,
    };
    // Besides `min_units_per_arm` exposed units, a verdict needs the arms it rests on to
    // carry the metric in at least `MIN_UNITS_CARRYING` units. A sparse ratio or quantile
    // (one unit with a session per arm, a p95 of fifteen events) has no variance, or only
    // rounding's, or no value in an arm by chance, and alarmed on healthy experiments,
    // pausing them (a quarter of A/A reads of a ratio whose denominator one unit in a
    // thousand has). The floor is low, so that a real harm carried by few units (sessions
    // spread unevenly over units, a ratio's effective count far below its units) alarms.
    let carried = |g: &Group| g.units_carrying(metric.kind) >= MIN_UNITS_CARRYING;
    let error = match guardrail_check(chosen, metric.kind, c, t, config) {
        Ok(check) => {
            let status = match check.status {
                GuardrailStatus::InsufficientData => "insufficient_data",
                GuardrailStatus::Alarm if !(carried(c) && carried(t)) => "insufficient_data",
                GuardrailStatus::Healthy => "healthy",
                GuardrailStatus::Alarm => "alarm",
            };
            let mut healthy = view(status, Some(&check), None);
            if check.status != GuardrailStatus::InsufficientData {
                healthy.harm_upper_bound =
                    harm_upper_bound(chosen, metric.kind, (c, t), &check, config);
                healthy.non_inferior =
                    margin.map(|m| healthy.harm_upper_bound.is_some_and(|bound| bound < m));
            }
            return healthy;
        }
        Err(error) => error,
    };
    let enough = c.n >= config.min_units_per_arm && t.n >= config.min_units_per_arm;
    let harm = match config.harmful_direction {
        HarmfulDirection::Increase => 1.0,
        HarmfulDirection::Decrease => -1.0,
    };
    if !enough {
        return view("insufficient_data", None, Some(describe(&error)));
    }
    match (c.value(metric.kind), t.value(metric.kind)) {
        (Some(_), None) if carried(c) => view(
            "alarm",
            None,
            Some(format!(
                "the treatment's {} cannot be computed while control's can: {}",
                metric.key,
                describe(&error)
            )),
        ),
        (Some(control), Some(treatment))
            if harm * (treatment - control) > 0.0 && carried(c) && carried(t) =>
        {
            let mut alarmed = view(
                "alarm",
                None,
                Some(format!(
                    "every unit moved the harmful way ({}): no variance left to test",
                    describe(&error)
                )),
            );
            alarmed.harmful_effect = harm * (treatment - control);
            alarmed.p_value = 0.0;
            alarmed
        }
        (Some(_), _) if !(carried(c) && carried(t)) => {
            view("insufficient_data", None, Some(describe(&error)))
        }
        _ => view("error", None, Some(describe(&error))),
    }
}

/// The always-valid upper confidence bound of a guardrail's harm, relative to control's
/// value, at the guardrail's level: the non-inferiority evidence "Ship" asks for.
fn harm_upper_bound(
    chosen: Estimator,
    kind: MetricKind,
    (c, t): (&Group, &Group),
    check: &GuardrailCheck,
    config: &GuardrailConfig,
) -> Option<f64> {
    let baseline = c.value(kind)?.abs();
    // The bound is on the effect as it is, so it takes the unpooled standard error (the
    // pooled one, right for the test under H0, can be the smaller one under harm).
    let effect = compare(chosen, kind, c, t, config.alpha).ok()?.absolute;
    if baseline == 0.0 || effect.std_error <= 0.0 {
        return None;
    }
    let sequence = sequential::always_valid(
        check.harmful_effect,
        effect.std_error,
        c.n + t.n,
        &SequentialConfig {
            alpha: config.alpha,
            tuning_units: config.tuning_units,
        },
    )
    .ok()?;
    Some(sequence.ci_upper / baseline)
}

/// One metric's data for one treatment and control, with the settings its tests use.
struct Analysed<'a> {
    metric: &'a Metric,
    control: &'a Group,
    treatment: &'a Group,
    alpha: f64,
    sequential: &'a SequentialConfig,
    /// The estimate chosen for this metric and treatment (`Estimators`).
    estimator: Estimator,
}

/// One treatment against control on one metric: the estimates and every test the
/// experiment's analysis settings call for (before the decisions across comparisons).
fn comparison_view(variant: &str, analysed: &Analysed<'_>) -> ComparisonView {
    let Analysed {
        metric,
        control: c,
        treatment: t,
        alpha,
        sequential: sequential_config,
        estimator,
    } = *analysed;
    let mut view = ComparisonView {
        variant: variant.to_string(),
        estimator: Estimator::Unadjusted,
        absolute: None,
        relative: None,
        relative_unavailable: None,
        p_value: None,
        adjusted_p_value: None,
        significant: false,
        improvement: None,
        sequential: None,
        group_sequential: None,
        bayesian: None,
        cuped: None,
        unadjusted: None,
        latest: None,
        trend: None,
        note: None,
        statistic: None,
    };
    let cuped = cuped(metric.kind, c, t, alpha);
    let adjusted = cuped.filter(|k| estimator == Estimator::Cuped && k.adjusted);
    let deciding = match adjusted {
        Some(k) => Ok(k.comparison),
        None => standard_test(metric.kind, c, t, alpha),
    };
    match deciding {
        Ok(comparison) => {
            if adjusted.is_some() {
                view.estimator = Estimator::Cuped;
                view.unadjusted = standard_test(metric.kind, c, t, alpha)
                    .ok()
                    .map(|u| (&u.absolute).into());
            }
            view.absolute = Some((&comparison.absolute).into());
            match comparison.relative {
                RelativeLift::Estimated(effect) => view.relative = Some((&effect).into()),
                RelativeLift::Unavailable { reason } => {
                    view.relative_unavailable = Some(format!("{reason:?}").to_lowercase())
                }
            }
            view.p_value = Some(comparison.absolute.p_value);
            view.statistic = Some(comparison.absolute.statistic);
            view.improvement = Some(improvement(metric.direction, comparison.absolute.estimate));
            if let Ok(s) = sequential_view(
                metric.kind,
                view.estimator,
                (c, t),
                &comparison,
                sequential_config,
            ) {
                view.sequential = Some(SequentialView {
                    p_value: s.p_value,
                    ci: [s.ci_lower, s.ci_upper],
                    relative_ci: relative_sequence(&comparison, c.n + t.n, sequential_config),
                    tuning_units: sequential_config.tuning_units / 2.0,
                });
            }
            view.bayesian =
                bayesian(metric.kind, c, t).map(|b| bayesian_view(&b, metric.direction));
            view.cuped = cuped.map(|k| CupedView {
                adjusted: k.adjusted,
                theta: k.theta,
                variance_reduction: k.variance_reduction,
                absolute: (&k.comparison.absolute).into(),
            });
        }
        Err(error) => view.note = Some(describe(&error)),
    }
    view
}

/// A metric's per-variant data in the forms abx-stats takes.
#[derive(Clone, Copy)]
struct Group {
    n: u64,
    s: Sums,
    /// A quantile metric's estimate (its sums are empty).
    q: Option<QuantileEstimate>,
}

impl Group {
    fn proportion(&self) -> Proportion {
        // Conversions are 0/1 per unit, so Σx counts converted units.
        Proportion::new(self.n, (self.s.sum_x.round().max(0.0) as u64).min(self.n))
    }
    fn moments(&self) -> Moments {
        Moments {
            n: self.n,
            sum: self.s.sum_x,
            sum_sq: self.s.sum_x2.max(0.0),
        }
    }
    fn covariate(&self) -> CovariateMoments {
        CovariateMoments {
            n: self.n,
            sum_y: self.s.sum_x,
            sum_y_sq: self.s.sum_x2.max(0.0),
            sum_x: self.s.sum_c,
            sum_x_sq: self.s.sum_c2.max(0.0),
            sum_xy: self.s.sum_xc,
        }
    }
    fn ratio(&self) -> RatioMoments {
        RatioMoments {
            n: self.n,
            sum_num: self.s.sum_x,
            sum_num_sq: self.s.sum_x2.max(0.0),
            sum_den: self.s.sum_y,
            sum_den_sq: self.s.sum_y2.max(0.0),
            sum_num_den: self.s.sum_xy,
        }
    }
    fn ratio_covariate(&self) -> RatioCovariateMoments {
        RatioCovariateMoments {
            metric: self.ratio(),
            covariate: RatioMoments {
                n: self.n,
                sum_num: self.s.sum_c,
                sum_num_sq: self.s.sum_c2.max(0.0),
                sum_den: self.s.sum_d,
                sum_den_sq: self.s.sum_d2.max(0.0),
                sum_num_den: self.s.sum_cd,
            },
            sum_num_pre_num: self.s.sum_xc,
            sum_num_pre_den: self.s.sum_xd,
            sum_den_pre_num: self.s.sum_yc,
            sum_den_pre_den: self.s.sum_yd,
        }
    }
    fn quantile(&self) -> Result<&QuantileEstimate, StatsError> {
        self.q.as_ref().ok_or(StatsError::InsufficientSample {
            required: 2,
            actual: 0,
        })
    }
    /// How many units the metric's value rests on: every exposed unit for a conversion or
    /// a mean (a unit without events counts as 0), the units with events for a quantile,
    /// and for a ratio the effective number of units carrying its denominator,
    /// (Σy)² / Σy² (the count of such units when each carries about as much).
    fn units_carrying(&self, kind: MetricKind) -> f64 {
        match kind {
            MetricKind::Ratio if self.s.sum_y2 > 0.0 => self.s.sum_y * self.s.sum_y / self.s.sum_y2,
            MetricKind::Ratio => 0.0,
            MetricKind::Quantile => self.q.map_or(0.0, |q| q.units as f64),
            _ => self.n as f64,
        }
    }

    fn value(&self, kind: MetricKind) -> Option<f64> {
        match kind {
            MetricKind::Ratio => (self.s.sum_y != 0.0).then(|| self.s.sum_x / self.s.sum_y),
            MetricKind::Quantile => self.q.map(|q| q.estimate),
            _ => (self.n > 0).then(|| self.s.sum_x / self.n as f64),
        }
    }
}

/// A reason a figure could not be computed, in words.
pub fn describe(error: &StatsError) -> String {
    match error {
        StatsError::InsufficientSample { required, actual } => {
            format!("not enough data yet ({actual} of at least {required} units per group)")
        }
        StatsError::ZeroVariance => "no variation in the data yet".into(),
        other => other.to_string(),
    }
}

/// The comparison every decision uses: CUPED where it was chosen for the metric and the
/// data allow it (§5, §12g), else the metric kind's standard test.
fn compare(
    chosen: Estimator,
    kind: MetricKind,
    c: &Group,
    t: &Group,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    match used(chosen, kind, c, t, alpha) {
        (Estimator::Cuped, Some(adjusted)) => Ok(adjusted.comparison),
        _ => standard_test(kind, c, t, alpha),
    }
}

/// The estimate a comparison is of: CUPED only where it was chosen and it adjusts (the
/// covariate varies in these data), with its comparison.
fn used(
    chosen: Estimator,
    kind: MetricKind,
    c: &Group,
    t: &Group,
    alpha: f64,
) -> (Estimator, Option<CupedComparison>) {
    match chosen {
        Estimator::Cuped => match adjusted(kind, c, t, alpha) {
            Some(k) => (Estimator::Cuped, Some(k)),
            None => (Estimator::Unadjusted, None),
        },
        Estimator::Unadjusted => (Estimator::Unadjusted, None),
    }
}

/// The standard test of a metric: z-test for conversions, Welch for means and sums, the
/// delta method for ratios and (for clustered events) quantiles.
fn standard_test(
    kind: MetricKind,
    c: &Group,
    t: &Group,
    alpha: f64,
) -> Result<Comparison, StatsError> {
    match kind {
        MetricKind::Conversion => {
            abx_stats::two_proportion_z_test(&c.proportion(), &t.proportion(), alpha)
        }
        MetricKind::Mean | MetricKind::Sum => {
            abx_stats::welch_t_test(&c.moments(), &t.moments(), alpha)
        }
        MetricKind::Ratio => abx_stats::ratio_test(&c.ratio(), &t.ratio(), alpha),
        MetricKind::Quantile => abx_stats::quantile_test(c.quantile()?, t.quantile()?, alpha),
    }
}

fn sequential_view(
    kind: MetricKind,
    estimator: Estimator,
    (c, t): (&Group, &Group),
    comparison: &Comparison,
    config: &SequentialConfig,
) -> Result<SequentialResult, StatsError> {
    if estimator == Estimator::Cuped {
        // The mixture SPRT on the adjusted difference and its standard error.
        return sequential::always_valid(
            comparison.absolute.estimate,
            comparison.absolute.std_error,
            c.n + t.n,
            config,
        );
    }
    match kind {
        MetricKind::Conversion => {
            sequential::sequential_proportion_test(&c.proportion(), &t.proportion(), config)
        }
        MetricKind::Mean | MetricKind::Sum => {
            sequential::sequential_mean_test(&c.moments(), &t.moments(), config)
        }
        // Delta-method estimates: the mixture SPRT on the difference and its standard error.
        MetricKind::Ratio | MetricKind::Quantile => sequential::always_valid(
            comparison.absolute.estimate,
            comparison.absolute.std_error,
            c.n + t.n,
            config,
        ),
    }
}

/// The confidence sequence of the relative lift: the mSPRT's on ln(t/c), whose standard
/// error is the lift's divided by t/c, mapped back; on the lift itself when the treatment's
/// mean is not positive.
fn relative_sequence(
    comparison: &Comparison,
    units: u64,
    config: &SequentialConfig,
) -> Option<[f64; 2]> {
    let lift = comparison.relative.effect()?;
    let ratio = 1.0 + lift.estimate;
    if ratio > 0.0 {
        let s = sequential::always_valid(ratio.ln(), lift.std_error / ratio, units, config).ok()?;
        Some([s.ci_lower.exp() - 1.0, s.ci_upper.exp() - 1.0])
    } else {
        let s = sequential::always_valid(lift.estimate, lift.std_error, units, config).ok()?;
        Some([s.ci_lower, s.ci_upper])
    }
}

fn bayesian(kind: MetricKind, c: &Group, t: &Group) -> Option<BayesianResult> {
    match kind {
        MetricKind::Conversion => abx_stats::beta_binomial(&c.proportion(), &t.proportion()).ok(),
        MetricKind::Mean | MetricKind::Sum => {
            abx_stats::bayesian::gaussian(&c.moments(), &t.moments()).ok()
        }
        MetricKind::Ratio | MetricKind::Quantile => None,
    }
}

/// The Bayesian figures in the metric's direction: for a lower-is-better metric, winning is
/// being lower (the posteriors are continuous, so P(t < c) = 1 − P(t > c)), and shipping the
/// treatment risks its excess over control.
fn bayesian_view(b: &BayesianResult, direction: Direction) -> BayesianView {
    match direction {
        Direction::Increase => BayesianView {
            chance_to_win: b.chance_to_beat_control,
            expected_loss: b.expected_loss,
        },
        Direction::Decrease => BayesianView {
            chance_to_win: 1.0 - b.chance_to_beat_control,
            expected_loss: b.expected_loss_control,
        },
    }
}

fn cuped(kind: MetricKind, c: &Group, t: &Group, alpha: f64) -> Option<CupedComparison> {
    match kind {
        MetricKind::Conversion | MetricKind::Mean | MetricKind::Sum => {
            abx_stats::cuped_test(&c.covariate(), &t.covariate(), alpha).ok()
        }
        MetricKind::Ratio => {
            abx_stats::ratio_cuped_test(&c.ratio_covariate(), &t.ratio_covariate(), alpha).ok()
        }
        MetricKind::Quantile => None,
    }
}

/// The CUPED comparison when it adjusts (the covariate varies): the one decisions use.
fn adjusted(kind: MetricKind, c: &Group, t: &Group, alpha: f64) -> Option<CupedComparison> {
    cuped(kind, c, t, alpha).filter(|k| k.adjusted)
}

/// Boundaries by (information fractions, alpha, spending), as bits.
type BoundaryCache = Mutex<HashMap<(Vec<u64>, u64, Spending), Vec<Look>>>;

/// Lan–DeMets boundaries at the information fractions actually observed, computed once per
/// (fractions, alpha, spending): the recursive integration takes milliseconds, and the looks
/// of a running experiment only ever grow by one.
fn spending_boundaries(fractions: &[f64], alpha: f64, spending: Spending) -> Option<Vec<Look>> {
    static CACHE: OnceLock<BoundaryCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (
        fractions.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
        alpha.to_bits(),
        spending,
    );
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Some(found.clone());
    }
    let computed = group_sequential::boundaries(fractions, alpha, spending.function()).ok()?;
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    // Every experiment adds a few entries a month; the bound only guards a long-lived process.
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(key, computed.clone());
    Some(computed)
}

fn improvement(direction: Direction, estimate: f64) -> bool {
    match direction {
        Direction::Increase => estimate > 0.0,
        Direction::Decrease => estimate < 0.0,
    }
}

fn correction(c: Correction) -> abx_stats::Correction {
    match c {
        Correction::Bh => abx_stats::Correction::BenjaminiHochberg,
        Correction::Holm => abx_stats::Correction::Holm,
        Correction::Bonferroni => abx_stats::Correction::Bonferroni,
    }
}

fn date(day: i64) -> String {
    crate::clock::rfc3339(day * crate::clock::DAY_MS)[..10].to_string()
}

/// Guardrail config for a metric: harmful is the opposite of the good direction; `alpha`
/// is the family's share, and the mixture is tuned like the experiment's own tests.
fn guardrail_config(metric: &Metric, alpha: f64, tuning_units: f64) -> GuardrailConfig {
    let harmful = match metric.direction {
        Direction::Increase => HarmfulDirection::Decrease,
        Direction::Decrease => HarmfulDirection::Increase,
    };
    let mut config = GuardrailConfig::new(harmful);
    config.alpha = alpha;
    config.tuning_units = tuning_units;
    if let Some(threshold) = metric.guardrail_threshold {
        config.min_std_errors = threshold;
    }
    config
}

fn guardrail_check(
    chosen: Estimator,
    kind: MetricKind,
    c: &Group,
    t: &Group,
    config: &GuardrailConfig,
) -> Result<GuardrailCheck, StatsError> {
    let delta_method = |comparison: Comparison| {
        guardrail::guardrail_check(
            comparison.absolute.estimate,
            comparison.absolute.std_error,
            c.n,
            t.n,
            config,
        )
    };
    if let (Estimator::Cuped, Some(adjusted)) = used(chosen, kind, c, t, config.alpha) {
        return delta_method(adjusted.comparison);
    }
    match kind {
        MetricKind::Conversion => {
            guardrail::guardrail_proportion(&c.proportion(), &t.proportion(), config)
        }
        MetricKind::Mean | MetricKind::Sum => {
            guardrail::guardrail_mean(&c.moments(), &t.moments(), config)
        }
        MetricKind::Ratio | MetricKind::Quantile => {
            delta_method(standard_test(kind, c, t, config.alpha)?)
        }
    }
}

/// The mSPRT's settings of an experiment. Its tuning counts the units of both arms
/// compared; the settings give it per variant (default: the planned sample, else 10,000).
fn sequential_config(e: &Experiment) -> SequentialConfig {
    let analysis = &e.analysis;
    let per_variant = analysis
        .tuning_units
        .or(analysis.planned_units_per_variant.map(|p| p as f64))
        .unwrap_or(10_000.0);
    SequentialConfig {
        alpha: analysis.alpha,
        tuning_units: 2.0 * per_variant,
    }
}

/// What every analysis of an experiment shares, whatever day its data ends on.
struct Inputs<'a> {
    e: &'a Experiment,
    metrics: &'a HashMap<String, Metric>,
    rollups: &'a Rollups,
    roles: &'a [(String, MetricRole)],
    sequential: SequentialConfig,
    estimators: Estimators,
}

/// The estimate each metric and treatment is compared with, for the experiment's life
/// (docs/statistics.md §12g): the one its first recorded look used; before any look, CUPED
/// when the pre-exposure covariate already varies among the units exposed on the
/// experiment's first day, else the standard test. Fixing it early keeps every look of a
/// test (and every read of an mSPRT) on one estimate, and the choice rests on pre-exposure
/// data only, so it adds no multiplicity.
#[derive(Default)]
struct Estimators(HashMap<(String, String), Estimator>);

impl Estimators {
    fn choose(
        e: &Experiment,
        metrics: &HashMap<String, Metric>,
        rollups: &Rollups,
        recorded: &[DecisionLook],
    ) -> Estimators {
        let mut chosen = HashMap::new();
        let first_recorded = recorded.iter().min_by_key(|l| l.look);
        let first_day = rollups.exposures.iter().map(|r| r.day).min();
        let (units, _) = units_by_variant(rollups, first_day.unwrap_or(i64::MIN));
        let n = |v: &str| units.get(v).copied().unwrap_or(0);
        for (key, _) in metric_roles(e) {
            let Some(metric) = metrics.get(&key) else {
                continue;
            };
            let data = VariantData::of(rollups, metric, first_day.unwrap_or(i64::MIN));
            let c = data.group(e.control(), n(e.control()));
            for t in e.variants.iter().skip(1) {
                let estimator = match first_recorded.and_then(|l| statistic(l, &key, &t.name)) {
                    Some(recorded) => recorded.estimator,
                    None => {
                        let t = data.group(&t.name, n(&t.name));
                        used(Estimator::Cuped, metric.kind, &c, &t, e.analysis.alpha).0
                    }
                };
                chosen.insert((key.clone(), t.name.clone()), estimator);
            }
        }
        Estimators(chosen)
    }

    fn of(&self, metric: &str, variant: &str) -> Estimator {
        self.0
            .get(&(metric.to_string(), variant.to_string()))
            .copied()
            .unwrap_or_default()
    }
}

/// The comparisons of every metric with the data up to `until_day` (inclusive), and the
/// guardrail checks on the same data.
fn analyse(inputs: &Inputs<'_>, until_day: i64) -> (Vec<MetricResult>, Vec<GuardrailView>) {
    let e = inputs.e;
    let (units, _) = units_by_variant(inputs.rollups, until_day);
    let n = |v: &str| units.get(v).copied().unwrap_or(0);
    let control = e.control();
    let treatments = e.variants.iter().skip(1).map(|v| v.name.as_str());
    // Guardrails × treatments form one family: each check gets alpha / family, so the chance
    // that any of them ever alarms falsely stays below alpha (the checks are always valid).
    let guardrail_family = e
        .guardrail_metrics
        .iter()
        .filter(|m| inputs.metrics.contains_key(*m))
        .count()
        * e.variants.len().saturating_sub(1);
    let guardrail_alpha = e.analysis.alpha / guardrail_family.max(1) as f64;
    let mut results = Vec::new();
    let mut guardrails = Vec::new();
    for (key, role) in inputs.roles {
        let Some(metric) = inputs.metrics.get(key) else {
            continue;
        };
        let data = VariantData::of(inputs.rollups, metric, until_day);
        let group = |v: &str| data.group(v, n(v));
        let c = group(control);
        let mut comparisons = Vec::new();
        for variant in treatments.clone() {
            let t = group(variant);
            if e.guardrail_metrics.contains(key) {
                let config =
                    guardrail_config(metric, guardrail_alpha, inputs.sequential.tuning_units);
                let margin = e.analysis.guardrail_margins.get(key).copied();
                let chosen = (variant, inputs.estimators.of(key, variant));
                guardrails.push(guardrail_view(metric, chosen, &c, &t, &config, margin));
            }
            let analysed = Analysed {
                metric,
                control: &c,
                treatment: &t,
                alpha: e.analysis.alpha,
                sequential: &inputs.sequential,
                estimator: inputs.estimators.of(key, variant),
            };
            comparisons.push(comparison_view(variant, &analysed));
        }
        results.push(MetricResult::of(metric, *role, comparisons));
    }
    (results, guardrails)
}

/// Per variant and metric, the aggregates with all data so far.
fn variant_summaries(inputs: &Inputs<'_>) -> BTreeMap<String, VariantSummary> {
    let e = inputs.e;
    let (units, multiple) = units_by_variant(inputs.rollups, i64::MAX);
    let n = |v: &str| units.get(v).copied().unwrap_or(0);
    let mut variants: BTreeMap<String, VariantSummary> = e
        .variants
        .iter()
        .map(|v| {
            let summary = VariantSummary {
                impressions: n(&v.name),
                conversions: None,
                rate: None,
                multiple_exposures: multiple.get(v.name.as_str()).copied().unwrap_or(0),
                metrics: BTreeMap::new(),
            };
            (v.name.clone(), summary)
        })
        .collect();
    for (key, role) in inputs.roles {
        let Some(metric) = inputs.metrics.get(key) else {
            continue;
        };
        let data = VariantData::of(inputs.rollups, metric, i64::MAX);
        for v in &e.variants {
            let g = data.group(&v.name, n(&v.name));
            let capped = inputs
                .rollups
                .capped
                .iter()
                .find(|r| r.metric == *key && r.variant == v.name);
            let summary = MetricSummary {
                cap: capped.map(|r| r.cap),
                capped_units: capped.map(|r| r.capped_units),
                units: g.n,
                count: match metric.kind {
                    MetricKind::Conversion => Some(g.proportion().conversions),
                    MetricKind::Quantile => Some(g.q.map_or(0, |q| q.events)),
                    _ => None,
                },
                sum: g.s.sum_x,
                value: g.value(metric.kind),
            };
            let entry = variants.get_mut(&v.name).expect("variant summary exists");
            if *role == MetricRole::Primary {
                entry.conversions = summary.count;
                entry.rate = summary.value;
            }
            entry.metrics.insert(key.clone(), summary);
        }
    }
    variants
}

/// The smallest variant's clean units up to a day.
fn min_units(e: &Experiment, rollups: &Rollups, until_day: i64) -> u64 {
    let (units, _) = units_by_variant(rollups, until_day);
    assigned_variants(e)
        .map(|v| units.get(v).copied().unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// The variants that receive units: a variant weighted 0 (kept for its config) never
/// reaches a plan, and must not hold the tests back.
fn assigned_variants(e: &Experiment) -> impl Iterator<Item = &str> {
    e.variants
        .iter()
        .zip(&e.weights_bp)
        .filter(|(_, w)| **w > 0)
        .map(|(v, _)| v.name.as_str())
}

/// The days on which the smallest variant's units changed, in order, with those units.
fn min_units_by_day(e: &Experiment, rollups: &Rollups, through_day: i64) -> Vec<(i64, u64)> {
    let days: std::collections::BTreeSet<i64> = rollups
        .exposures
        .iter()
        .map(|r| r.day)
        .filter(|d| *d <= through_day)
        .collect();
    let mut cumulative: HashMap<&str, u64> = HashMap::new();
    let mut out = Vec::with_capacity(days.len());
    for day in days {
        for r in rollups.exposures.iter().filter(|r| r.day == day) {
            *cumulative.entry(&r.variant).or_default() += r.units.max(0) as u64;
        }
        let smallest = assigned_variants(e)
            .map(|v| cumulative.get(v).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        out.push((day, smallest));
    }
    out
}

/// The day a fixed-horizon test reads: the first completed day by which every variant has
/// its planned units and the minimum duration has passed. Both depend on time and sample
/// size only, never on the data's effect, so reading the test there is one look.
fn fixed_horizon_day(e: &Experiment, rollups: &Rollups, completed_day: i64) -> Option<i64> {
    let planned = e.analysis.planned_units_per_variant?;
    let plan_day = min_units_by_day(e, rollups, completed_day)
        .into_iter()
        .find(|(_, units)| *units >= planned)?
        .0;
    let day = plan_day.max(minimum_duration_day(e)?);
    (day <= completed_day).then_some(day)
}

/// The first day whose end is at least the minimum duration after the start.
fn minimum_duration_day(e: &Experiment) -> Option<i64> {
    let end = e.started_at_ms? + i64::from(e.analysis.min_duration_days) * crate::clock::DAY_MS;
    Some((end - 1).div_euclid(crate::clock::DAY_MS))
}

/// The looks of a group-sequential test: those recorded by earlier reads, then new ones. At
/// the end of the first completed day on which the information fraction (the slowest
/// variant's share of its planned units) reaches k/K, look k reads the data up to that day.
/// Planned looks reached on the same day are one look; the final look is at fraction 1
/// whatever was reached, so it spends all of alpha.
fn group_sequential_looks(
    inputs: &Inputs<'_>,
    recorded: &[DecisionLook],
    completed_day: i64,
) -> Vec<DecisionLook> {
    let e = inputs.e;
    let mut out: Vec<DecisionLook> = recorded.iter().filter(|l| l.look >= 1).cloned().collect();
    out.sort_by_key(|l| l.look);
    let (Some(planned), Some(looks)) = (e.analysis.planned_units_per_variant, e.analysis.looks)
    else {
        return out;
    };
    let after = out.last().map_or(i64::MIN, |l| l.day);
    for (day, units) in min_units_by_day(e, inputs.rollups, completed_day) {
        let last = out.last().map_or(0, |l| l.reached);
        if last == looks {
            break;
        }
        if day <= after {
            continue;
        }
        let fraction = units as f64 / planned as f64;
        let reached = ((fraction * f64::from(looks) + 1e-9).floor() as u32).min(looks);
        if reached > last {
            out.push(DecisionLook {
                look: out.last().map_or(1, |l| l.look + 1),
                day,
                information_fraction: if reached == looks { 1.0 } else { fraction },
                reached,
                statistics: statistics_at(inputs, day),
            });
        }
    }
    out
}

/// Group-sequential decisions: each comparison is tested at each recorded look against the
/// boundary at the fraction observed (alpha split Bonferroni-style over the family), stops
/// at the first crossing, and is over after the final look. A decided comparison shows the
/// figures of its deciding look, with all data since as `latest`.
fn group_sequential(
    inputs: &Inputs<'_>,
    latest: Vec<MetricResult>,
    looks: &[DecisionLook],
) -> Vec<MetricResult> {
    let e = inputs.e;
    let planned_looks = e.analysis.looks.unwrap_or(0);
    let fraction_now = e.analysis.planned_units_per_variant.map_or(0.0, |p| {
        (min_units(e, inputs.rollups, i64::MAX) as f64 / p as f64).min(1.0)
    });
    let family = (1 + e.secondary_metrics.len()) * e.variants.len().saturating_sub(1);
    let fractions: Vec<f64> = looks.iter().map(|l| l.information_fraction).collect();
    let boundaries = if looks.is_empty() {
        Vec::new()
    } else {
        spending_boundaries(
            &fractions,
            e.analysis.alpha / family.max(1) as f64,
            e.analysis.spending,
        )
        .unwrap_or_default()
    };
    // Only a deciding look needs every figure; the others need their z alone.
    let mut analysed: HashMap<usize, Vec<MetricResult>> = HashMap::new();
    let final_look = looks.last().is_some_and(|l| l.reached == planned_looks);
    let mut out = latest.clone();
    for (i, metric) in latest.iter().enumerate() {
        if metric.role == MetricRole::Guardrail {
            continue;
        }
        for (j, current) in metric.comparisons.iter().enumerate() {
            let mut recorded = Vec::new();
            let mut decided_at = None;
            for (k, (look, boundary)) in looks.iter().zip(&boundaries).enumerate() {
                let z = statistic(look, &metric.metric, &current.variant)
                    .and_then(|s| s.z)
                    .unwrap_or(0.0);
                let crossed = z.abs() >= boundary.z_boundary;
                recorded.push(GroupSequentialLook {
                    date: date(look.day),
                    information_fraction: look.information_fraction,
                    z,
                    z_boundary: boundary.z_boundary,
                    crossed,
                });
                if crossed || (final_look && k + 1 == looks.len()) {
                    decided_at = Some(k);
                    break;
                }
            }
            let crossed = recorded.last().is_some_and(|l| l.crossed);
            let mut view = match decided_at {
                Some(k) => {
                    let at_look = analysed
                        .entry(k)
                        .or_insert_with(|| analyse(inputs, looks[k].day).0);
                    let mut frozen = at_look[i].comparisons[j].clone();
                    frozen.latest = Some(latest_view(current, e, inputs.rollups));
                    frozen
                }
                None => current.clone(),
            };
            view.group_sequential = Some(GroupSequentialView {
                looks_passed: looks.last().map_or(0, |l| l.reached),
                looks_planned: planned_looks,
                information_fraction: fraction_now,
                z_boundary: recorded.last().map(|l| l.z_boundary),
                z: recorded.last().map_or(0.0, |l| l.z),
                crossed,
                decided: decided_at.is_some(),
                looks: recorded,
            });
            out[i].comparisons[j] = view;
        }
    }
    out
}

/// The test statistic and p-value of every comparison with the data up to a day.
fn statistics_at(inputs: &Inputs<'_>, until_day: i64) -> Vec<DecisionStatistic> {
    let e = inputs.e;
    let (units, _) = units_by_variant(inputs.rollups, until_day);
    let n = |v: &str| units.get(v).copied().unwrap_or(0);
    let mut out = Vec::new();
    for metric in inputs
        .roles
        .iter()
        .filter_map(|(key, _)| inputs.metrics.get(key))
    {
        let data = VariantData::of(inputs.rollups, metric, until_day);
        let group = |v: &str| data.group(v, n(v));
        for t in e.variants.iter().skip(1) {
            let (c, t_group) = (group(e.control()), group(&t.name));
            let chosen = inputs.estimators.of(&metric.key, &t.name);
            let alpha = e.analysis.alpha;
            let comparison = compare(chosen, metric.kind, &c, &t_group, alpha).ok();
            out.push(DecisionStatistic {
                metric: metric.key.clone(),
                variant: t.name.clone(),
                z: comparison.as_ref().map(|c| c.absolute.statistic),
                p_value: comparison.as_ref().map(|c| c.absolute.p_value),
                estimator: used(chosen, metric.kind, &c, &t_group, alpha).0,
            });
        }
    }
    out
}

/// A recorded statistic of one comparison.
fn statistic<'l>(
    look: &'l DecisionLook,
    metric: &str,
    variant: &str,
) -> Option<&'l DecisionStatistic> {
    look.statistics
        .iter()
        .find(|s| s.metric == metric && s.variant == variant)
}

/// A comparison with all data so far, as descriptive figures beside a frozen test.
fn latest_view(current: &ComparisonView, e: &Experiment, rollups: &Rollups) -> LatestView {
    let (units, _) = units_by_variant(rollups, i64::MAX);
    let n = |v: &str| units.get(v).copied().unwrap_or(0);
    LatestView {
        control_units: n(e.control()),
        treatment_units: n(&current.variant),
        absolute: current.absolute,
        relative: current.relative,
    }
}

/// Computes the results of an experiment as of `now_ms`.
///
/// What is tested when (docs/statistics.md §15): sequential mode tests all data on every
/// call (always-valid); fixed horizon tests once, with the data up to the first completed
/// day by which the plan and the minimum duration are reached, and shows later data as
/// descriptive; group sequential tests at each look, recorded on the completed day its
/// information fraction is reached, and stops at the first crossing or the final look.
pub fn compute(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    rollups: &Rollups,
    now_ms: i64,
    daily: bool,
) -> Results {
    let reading = Reading {
        now_ms,
        data_until_ms: None,
        recorded: &[],
        daily,
    };
    compute_with(e, metrics, rollups, &reading)
}

/// `compute`, reusing the looks recorded by earlier reads (`Reading::recorded`) and knowing
/// how far the rollups reach: what `GET /results` and the guardrail monitor call.
pub fn compute_with(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    rollups: &Rollups,
    reading: &Reading<'_>,
) -> Results {
    let (now_ms, daily) = (reading.now_ms, reading.daily);
    let analysis = &e.analysis;
    let alpha = analysis.alpha;
    let roles = metric_roles(e);
    let inputs = Inputs {
        e,
        metrics,
        rollups,
        roles: &roles,
        sequential: sequential_config(e),
        estimators: Estimators::choose(e, metrics, rollups, reading.recorded),
    };
    let variants = variant_summaries(&inputs);
    let (units, multiple) = units_by_variant(rollups, i64::MAX);
    let min_units_now = min_units(e, rollups, i64::MAX);
    let planned_fraction = analysis
        .planned_units_per_variant
        .map(|p| min_units_now as f64 / p as f64);
    // Tests read whole days only: a day's data is complete once it is over and the rollups
    // reach past it, and each look is recorded when first computed (`DecisionLook`), so
    // every later refresh makes the same decision.
    let data_until_ms = reading.data_until_ms.map_or(now_ms, |d| d.min(now_ms));
    let completed_day = (data_until_ms - LATE_EVENT_GRACE_MS).div_euclid(crate::clock::DAY_MS) - 1;

    let (latest, guardrails) = analyse(&inputs, i64::MAX);
    let mut analysed_through = None;
    let mut decision_looks = Vec::new();
    let mut results = match analysis.mode {
        AnalysisMode::Sequential => latest,
        AnalysisMode::FixedHorizon => {
            let look = reading
                .recorded
                .iter()
                .find(|l| l.look == 0)
                .cloned()
                .or_else(|| {
                    fixed_horizon_day(e, rollups, completed_day).map(|day| DecisionLook {
                        look: 0,
                        day,
                        information_fraction: planned_fraction.unwrap_or(1.0).min(1.0),
                        reached: 1,
                        statistics: statistics_at(&inputs, day),
                    })
                });
            match look {
                Some(look) => {
                    analysed_through = Some(look.day);
                    let (mut frozen, _) = analyse(&inputs, look.day);
                    for (f, l) in frozen.iter_mut().zip(&latest) {
                        for (fc, lc) in f.comparisons.iter_mut().zip(&l.comparisons) {
                            fc.latest = Some(latest_view(lc, e, rollups));
                            // The decision is the recorded test's.
                            if let Some(recorded) = statistic(&look, &f.metric, &fc.variant) {
                                fc.p_value = recorded.p_value;
                            }
                        }
                    }
                    decision_looks.push(look);
                    frozen
                }
                None => latest,
            }
        }
        AnalysisMode::GroupSequential => {
            decision_looks = group_sequential_looks(&inputs, reading.recorded, completed_day);
            group_sequential(&inputs, latest, &decision_looks)
        }
    };

    apply_decisions(&mut results, e, analysed_through.is_some());
    if let Some(primary) = results.iter_mut().find(|m| m.role == MetricRole::Primary)
        && let Some(metric) = metrics
            .get(&primary.metric)
            .filter(|m| has_daily_figures(m))
    {
        for comparison in &mut primary.comparisons {
            comparison.trend = trend(&inputs, metric, &comparison.variant, completed_day);
        }
    }

    let srm = srm_view(e, &units, &multiple);
    let primary = results
        .iter()
        .find(|m| m.role == MetricRole::Primary)
        .and_then(|m| m.comparisons.first());
    // The headline is the test as the mode reads it: nothing before a fixed-horizon test is
    // frozen or a group-sequential test has decided (the figures below are descriptive).
    let (p_value, confidence_interval) = match (analysis.mode, primary) {
        (AnalysisMode::Sequential, Some(p)) => (
            p.sequential.map(|s| s.p_value),
            p.sequential.and_then(|s| s.relative_ci),
        ),
        (AnalysisMode::FixedHorizon, Some(p)) if analysed_through.is_some() => {
            (p.p_value, p.relative.map(|r| r.ci))
        }
        (AnalysisMode::GroupSequential, Some(p))
            if p.group_sequential.as_ref().is_some_and(|g| g.decided) =>
        {
            (p.p_value, p.relative.map(|r| r.ci))
        }
        _ => (None, None),
    };
    let recommended_action = recommend(
        e,
        &results,
        srm.as_ref(),
        &guardrails,
        planned_fraction,
        min_units_now,
        now_ms,
    );
    let series = daily.then(|| daily_series(&inputs, alpha));
    Results {
        experiment_id: e.id.clone(),
        experiment: e.key.clone(),
        status: e.status,
        days_running: e.days_running(now_ms),
        analysis_mode: analysis.mode,
        alpha,
        correction: analysis.correction,
        control: e.control().to_string(),
        variants,
        lift: primary.and_then(|p| p.relative.map(|r| r.estimate)),
        p_value,
        significant: primary.is_some_and(|p| p.significant),
        confidence_interval,
        analysed_through: analysed_through.map(date),
        min_duration_days: analysis.min_duration_days,
        metrics: results,
        srm,
        guardrails,
        multiple_exposures: multiple.values().sum(),
        planned_sample_fraction: planned_fraction,
        recommended_action,
        series,
        decision_looks,
        rollups_computed_at: None,
        mismatched_exposures: BTreeMap::new(),
    }
}

/// The trend of a treatment's relative effect over the experiment's completed days, from
/// its cumulative estimates (abx-stats' `trend`), accumulated in one pass over the rollups in
/// day order. The relative scale (the log ratio) matters: on a converted-by-now or per-unit
/// total metric the absolute effect grows with exposure time even when the treatment's
/// relative effect is constant. Descriptive: units' values accrue over days, so the daily
/// increments are not the independent samples the test assumes, and it is read on every
/// refresh; it flags a drift worth a look, not a decision.
fn trend(
    inputs: &Inputs<'_>,
    metric: &Metric,
    variant: &str,
    completed_day: i64,
) -> Option<TrendView> {
    let (e, rollups) = (inputs.e, inputs.rollups);
    let chosen = inputs.estimators.of(&metric.key, variant);
    let control = e.control();
    let mut units: BTreeMap<i64, [u64; 2]> = BTreeMap::new();
    for r in &rollups.exposures {
        let arm = if r.variant == control {
            0
        } else if r.variant == variant {
            1
        } else {
            continue;
        };
        units.entry(r.day).or_default()[arm] += r.units.max(0) as u64;
    }
    let mut sums: BTreeMap<i64, [Sums; 2]> = BTreeMap::new();
    for r in rollups.metrics.iter().filter(|r| r.metric == metric.key) {
        let arm = if r.variant == control {
            0
        } else if r.variant == variant {
            1
        } else {
            continue;
        };
        units.entry(r.day).or_default();
        sums.entry(r.day).or_default()[arm].add(&r.sums);
    }
    let first = *units.keys().next()?;
    let mut groups = [Group {
        n: 0,
        s: Sums::default(),
        q: None,
    }; 2];
    let mut points = Vec::with_capacity(units.len());
    for (day, added) in units.range(..=completed_day) {
        for arm in 0..2 {
            groups[arm].n += added[arm];
            if let Some(s) = sums.get(day) {
                groups[arm].s.add(&s[arm]);
            }
        }
        let lift = compare(
            chosen,
            metric.kind,
            &groups[0],
            &groups[1],
            e.analysis.alpha,
        )
        .ok()
        .and_then(|c| c.relative.effect().copied());
        if let Some(lift) = lift.filter(|l| l.estimate > -1.0) {
            let ratio = 1.0 + lift.estimate;
            points.push(CumulativeEstimate {
                day: (day - first) as f64,
                estimate: ratio.ln(),
                std_error: lift.std_error / ratio,
            });
        }
    }
    let t = abx_stats::trend::effect_trend(&points).ok()?;
    Some(TrendView {
        slope_per_day: t.slope,
        std_error: t.std_error,
        p_value: t.p_value,
        significant: t.p_value < e.analysis.alpha,
    })
}

/// Adjusts p-values across the family (primary and secondary metrics × treatments) and
/// decides significance under the experiment's mode: sequential on the adjusted
/// always-valid p, fixed horizon on the adjusted p once the test is frozen at its plan,
/// group sequential on a boundary crossed at a recorded look.
fn apply_decisions(results: &mut [MetricResult], e: &Experiment, frozen: bool) {
    let alpha = e.analysis.alpha;
    let mode = e.analysis.mode;
    let mut family: Vec<(usize, usize, Option<f64>)> = Vec::new();
    for (i, m) in results.iter().enumerate() {
        if m.role == MetricRole::Guardrail {
            continue;
        }
        for (j, c) in m.comparisons.iter().enumerate() {
            let p = match mode {
                AnalysisMode::Sequential => c.sequential.map(|s| s.p_value),
                _ => c.p_value,
            };
            // A comparison that could not be computed still belongs to the family the
            // correction controls, as p = 1 (docs/statistics.md §6): leaving it out would
            // make the others' correction milder the more comparisons fail.
            family.push((i, j, p));
        }
    }
    let raw: Vec<f64> = family.iter().map(|(_, _, p)| p.unwrap_or(1.0)).collect();
    let adjusted = abx_stats::adjust_p_values(&raw, correction(e.analysis.correction));
    for ((i, j, p), adjusted) in family.iter().zip(adjusted) {
        if p.is_none() {
            continue;
        }
        let view = &mut results[*i].comparisons[*j];
        // Group-sequential decisions rest on the boundaries, whose alpha is split over the
        // family; an adjusted fixed p-value beside them would mix looks and mean nothing.
        if mode != AnalysisMode::GroupSequential {
            view.adjusted_p_value = Some(adjusted);
        }
        view.significant = match mode {
            AnalysisMode::Sequential => adjusted <= alpha,
            AnalysisMode::FixedHorizon => frozen && adjusted <= alpha,
            AnalysisMode::GroupSequential => {
                view.group_sequential.as_ref().is_some_and(|g| g.crossed)
            }
        };
    }
}

fn srm_view(
    e: &Experiment,
    units: &HashMap<&str, u64>,
    multiple: &HashMap<&str, u64>,
) -> Option<SrmView> {
    // Every first exposure counts: a unit later seen in a second variant was still assigned
    // to its first, and dropping it could itself skew the split.
    let counts: Vec<u64> = e
        .variants
        .iter()
        .map(|v| {
            units.get(v.name.as_str()).copied().unwrap_or(0)
                + multiple.get(v.name.as_str()).copied().unwrap_or(0)
        })
        .collect();
    let weights: Vec<f64> = e.weights_bp.iter().map(|&w| f64::from(w)).collect();
    // A zero-weight variant cannot take part in a goodness-of-fit test.
    let kept: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    let kept_counts: Vec<u64> = kept.iter().map(|&i| counts[i]).collect();
    let kept_weights: Vec<f64> = kept.iter().map(|&i| weights[i]).collect();
    let result: SrmResult = abx_stats::srm_test(&kept_counts, &kept_weights).ok()?;
    // The decision is the always-valid test's: it is read on every refresh.
    let sequential = abx_stats::sequential_srm_test(&kept_counts, &kept_weights).ok()?;
    Some(SrmView {
        counts: kept
            .iter()
            .map(|&i| (e.variants[i].name.clone(), counts[i]))
            .collect(),
        expected: kept
            .iter()
            .zip(&result.expected)
            .map(|(&i, x)| (e.variants[i].name.clone(), *x))
            .collect(),
        chi2: result.statistic,
        p_value: result.p_value,
        sequential_p_value: sequential.p_value,
        mismatch: sequential.mismatch,
    })
}

fn recommend(
    e: &Experiment,
    results: &[MetricResult],
    srm: Option<&SrmView>,
    guardrails: &[GuardrailView],
    planned_fraction: Option<f64>,
    min_units: u64,
    now_ms: i64,
) -> String {
    if srm.is_some_and(|s| s.mismatch) {
        return "Invalid: sample ratio mismatch, investigate (bot filtering, redirects, crashes, assignment bugs) before trusting any result".into();
    }
    if let Some(g) = guardrails.iter().find(|g| g.status == "alarm") {
        let evidence = g.note.clone().unwrap_or_else(|| format!("z = {:.2}", g.z));
        return format!(
            "Stop: guardrail {} degraded in {} ({evidence}); roll back",
            g.metric, g.variant
        );
    }
    if let Some(g) = guardrails.iter().find(|g| g.status == "error") {
        return format!(
            "Investigate: guardrail {} could not be checked in {} ({}); fix its data before deciding",
            g.metric,
            g.variant,
            g.note.as_deref().unwrap_or("unknown reason")
        );
    }
    // An experiment that has ended cannot keep running: where a running one would be told
    // to, an ended one is told what that leaves its results.
    let ended = matches!(e.status, Status::Completed | Status::Archived);
    if min_units == 0 {
        return if ended {
            "Ended without data: no exposures were counted".into()
        } else {
            "Waiting for data: no exposures yet".into()
        };
    }
    let minimum = f64::from(e.analysis.min_duration_days);
    let ran = e.days_running(now_ms);
    if ran < minimum {
        if ended {
            return format!(
                "Ended early: after {ran:.1} of its {minimum}-day minimum, so these results are preliminary (early effects fade or grow, and weekdays differ)"
            );
        }
        let left = (minimum - ran).ceil();
        return format!(
            "Keep running: {left} more day{} of the {minimum}-day minimum (early effects fade or grow, and weekdays differ)",
            if left == 1.0 { "" } else { "s" }
        );
    }
    let Some(primary) = results.iter().find(|m| m.role == MetricRole::Primary) else {
        return "No primary metric results".into();
    };
    let frozen = primary.comparisons.iter().any(|c| c.latest.is_some());
    if e.analysis.mode == AnalysisMode::FixedHorizon && !frozen {
        let pct = (planned_fraction.unwrap_or(0.0) * 100.0).min(100.0).floor();
        if ended {
            return format!(
                "Ended early: at {pct}% of its planned sample, before its fixed-horizon test, so these results are descriptive only"
            );
        }
        return format!(
            "Keep running: {pct}% of planned sample; a fixed-horizon test is read once, at the end of the first full day with its planned size"
        );
    }
    let winners: Vec<&ComparisonView> = primary
        .comparisons
        .iter()
        .filter(|c| c.significant && c.improvement == Some(true))
        .collect();
    if let Some(best) = winners.iter().max_by(|a, b| {
        let lift = |c: &&&ComparisonView| c.absolute.map_or(0.0, |x| x.estimate.abs());
        lift(a).total_cmp(&lift(b))
    }) {
        // Schultzberg, Kjellin & Rydberg (2024): shipping needs evidence that no guardrail
        // got worse by more than its margin, not merely the absence of an alarm.
        if let Some(g) = guardrails
            .iter()
            .find(|g| g.variant == best.variant && g.non_inferior == Some(false))
        {
            if ended {
                return format!(
                    "Ended before a decision: {} improves {}, but guardrail {} was not shown to be within its {:.1}% margin",
                    best.variant,
                    primary.metric,
                    g.metric,
                    g.margin.unwrap_or(0.0) * 100.0
                );
            }
            return format!(
                "Not yet: {} improves {}, but guardrail {} is not shown to be within its {:.1}% margin (it may be up to {}% worse); keep running or reconsider the margin",
                best.variant,
                primary.metric,
                g.metric,
                g.margin.unwrap_or(0.0) * 100.0,
                g.harm_upper_bound
                    .map_or_else(|| "an unknown".to_string(), |b| format!("{:.1}", b * 100.0))
            );
        }
        let trend = best
            .trend
            .filter(|t| t.significant)
            .map(|t| {
                format!(
                    "; note that the relative effect drifts by about {:+.2}% a day (descriptive, p = {:.3}): check for novelty before relying on its size",
                    t.slope_per_day * 100.0, t.p_value
                )
            })
            .unwrap_or_default();
        return format!(
            "Ship {} (statistically significant improvement){trend}",
            best.variant
        );
    }
    if let Some(loser) = primary
        .comparisons
        .iter()
        .find(|c| c.significant && c.improvement == Some(false))
    {
        return format!(
            "Don't ship {}: it is significantly worse than {}",
            loser.variant,
            e.control()
        );
    }
    match e.analysis.mode {
        AnalysisMode::FixedHorizon => format!(
            "No significant difference at the planned sample: keep {} or plan a larger test",
            e.control()
        ),
        AnalysisMode::GroupSequential => {
            let done = primary
                .comparisons
                .iter()
                .filter_map(|c| c.group_sequential.as_ref())
                .any(|g| g.decided);
            if done {
                format!(
                    "No significant difference after the final look: keep {}",
                    e.control()
                )
            } else if ended {
                "Ended before any boundary was crossed: no significant difference".into()
            } else {
                "Keep running: no boundary crossed yet".into()
            }
        }
        AnalysisMode::Sequential if ended => "Ended with no significant difference".into(),
        AnalysisMode::Sequential => "Keep running: no significant difference yet".into(),
    }
}

/// Cumulative estimates by day, from the first exposure day to the last rollup day.
fn daily_series(inputs: &Inputs<'_>, alpha: f64) -> Vec<DailyPoint> {
    let Inputs {
        e,
        metrics,
        rollups,
        roles,
        ..
    } = *inputs;
    let days: std::collections::BTreeSet<i64> = rollups
        .exposures
        .iter()
        .map(|r| r.day)
        .chain(rollups.metrics.iter().map(|r| r.day))
        .collect();
    let control = e.control();
    let mut points = Vec::new();
    for &day in &days {
        let (units, _) = units_by_variant(rollups, day);
        let n = |v: &str| units.get(v).copied().unwrap_or(0);
        for (key, _) in roles {
            let Some(metric) = metrics.get(key).filter(|m| has_daily_figures(m)) else {
                continue;
            };
            let sums = sums_by(rollups, key, day);
            let group = |v: &str| Group {
                n: n(v),
                s: sums.get(v).copied().unwrap_or_default(),
                q: None,
            };
            for variant in e.variants.iter().skip(1) {
                let chosen = inputs.estimators.of(key, &variant.name);
                let (c, t) = (group(control), group(&variant.name));
                let comparison = compare(chosen, metric.kind, &c, &t, alpha).ok();
                points.push(DailyPoint {
                    date: date(day),
                    metric: key.clone(),
                    variant: variant.name.clone(),
                    control_units: n(control),
                    treatment_units: n(&variant.name),
                    absolute: comparison.as_ref().map(|c| (&c.absolute).into()),
                    relative: comparison
                        .as_ref()
                        .and_then(|c| c.relative.effect().map(Interval::from)),
                });
            }
        }
    }
    points
}

#[cfg(test)]
mod tests;
