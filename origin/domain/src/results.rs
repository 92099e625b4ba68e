//! Experiment results: from an experiment's rollups to estimates, tests, corrections,
//! sequential and Bayesian figures, SRM, guardrails and a recommendation. Pure: the caller
//! loads the rollups (O(days × variants × metrics) rows) and abx-stats does the statistics.
//! docs/statistics.md describes every method; this module decides which applies where.

pub mod interactions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use abx_stats::group_sequential::{self, Look, SpendingFunction};
use abx_stats::guardrail::{
    self, GuardrailCheck, GuardrailConfig, GuardrailStatus, HarmfulDirection,
};
use abx_stats::sequential::{self, SequentialConfig, SequentialResult};
use abx_stats::{
    BayesianResult, Comparison, CovariateMoments, CupedComparison, Effect, Moments, Proportion,
    RatioMoments, RelativeLift, SrmResult, StatsError,
};
use serde::Serialize;

use crate::model::catalog::{Direction, Metric, MetricKind};
use crate::model::experiment::{AnalysisMode, Correction, Experiment, Status};
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
    /// Converted units (conversion metrics).
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
    pub tuning_units: f64,
}

#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct GroupSequentialView {
    /// Planned looks passed so far (by information fraction).
    pub looks_passed: u32,
    pub looks_planned: u32,
    pub information_fraction: f64,
    /// |z| boundary at the latest look passed (O'Brien-Fleming spending).
    pub z_boundary: Option<f64>,
    pub z: f64,
    pub crossed: bool,
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
    pub adjusted: bool,
    pub theta: f64,
    /// 1 − var(adjusted) / var(unadjusted).
    pub variance_reduction: f64,
    pub absolute: Interval,
}

/// One treatment against the control on one metric.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ComparisonView {
    pub variant: String,
    pub absolute: Option<Interval>,
    /// Relative lift (treatment − control) / control by the delta method; absent when the
    /// baseline is zero or negative (`relative_unavailable` says why).
    pub relative: Option<Interval>,
    pub relative_unavailable: Option<String>,
    /// The fixed-horizon p-value, and after the experiment's multiple-comparison correction
    /// (guardrails are not part of the family).
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
    /// Why a figure could not be computed (too little data, zero variance, ...).
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MetricResult {
    pub metric: String,
    pub kind: MetricKind,
    pub role: MetricRole,
    pub direction: Direction,
    pub comparisons: Vec<ComparisonView>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SrmView {
    pub counts: BTreeMap<String, u64>,
    pub expected: BTreeMap<String, f64>,
    pub chi2: f64,
    pub p_value: f64,
    /// Flagged at p < 0.001: the split is broken and the results cannot be trusted.
    pub mismatch: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GuardrailView {
    pub metric: String,
    pub variant: String,
    /// `insufficient_data`, `healthy`, `alarm`, or `error` when the check could not be
    /// computed (`note` says why; it blocks a "Ship" recommendation).
    pub status: String,
    pub harmful_effect: f64,
    pub z: f64,
    /// Always-valid one-sided p-value in the harmful direction.
    pub p_value: f64,
    /// Standard errors of harmful movement that raise the alarm.
    pub threshold: f64,
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
    /// The seed's headline figures: the primary metric, the first treatment against control.
    pub lift: Option<f64>,
    pub p_value: Option<f64>,
    pub significant: bool,
    /// Interval of the relative lift.
    pub confidence_interval: Option<[f64; 2]>,
    pub metrics: Vec<MetricResult>,
    pub srm: Option<SrmView>,
    pub guardrails: Vec<GuardrailView>,
    pub multiple_exposures: u64,
    /// Fixed horizon: share of the planned sample reached by the slowest variant.
    pub planned_sample_fraction: Option<f64>,
    pub recommended_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<DailyPoint>>,
    /// With a warehouse, results come from rollups that the pipeline recomputes on a
    /// schedule: when the ones shown were computed (they hold every event loaded by then).
    /// Absent when the rollups are maintained event by event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollups_computed_at: Option<String>,
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

/// A guardrail metric's check of one treatment against control. A check whose statistics
/// cannot be computed is never dropped: with enough units it alarms when the treatment is
/// certainly worse (every unit moved the harmful way, so there is no variance to test) or
/// lost what control has (a ratio whose treatment denominator vanished), and otherwise
/// reports `error`, which the recommendation shows.
fn guardrail_view(metric: &Metric, variant: &str, c: &Group, t: &Group) -> GuardrailView {
    let config = guardrail_config(metric);
    let view = |status: &str, check: Option<&GuardrailCheck>, note: Option<String>| GuardrailView {
        metric: metric.key.clone(),
        variant: variant.to_string(),
        status: status.into(),
        harmful_effect: check.map_or(0.0, |k| k.harmful_effect),
        z: check.map_or(0.0, |k| k.z),
        p_value: check.map_or(1.0, |k| k.p_value),
        threshold: config.min_std_errors,
        note,
    };
    let error = match guardrail_check(metric.kind, c, t, &config) {
        Ok(check) => {
            let status = match check.status {
                GuardrailStatus::InsufficientData => "insufficient_data",
                GuardrailStatus::Healthy => "healthy",
                GuardrailStatus::Alarm => "alarm",
            };
            return view(status, Some(&check), None);
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
        (Some(_), None) => view(
            "alarm",
            None,
            Some(format!(
                "the treatment's {} cannot be computed while control's can: {}",
                metric.key,
                describe(&error)
            )),
        ),
        (Some(control), Some(treatment)) if harm * (treatment - control) > 0.0 => {
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
        _ => view("error", None, Some(describe(&error))),
    }
}

/// One metric's data for one treatment and control, with the settings its tests use.
struct Analysed<'a> {
    metric: &'a Metric,
    control: &'a Group,
    treatment: &'a Group,
    alpha: f64,
    sequential: &'a SequentialConfig,
}

/// One treatment against control on one metric: the estimates and every test the
/// experiment's analysis settings call for (before the decisions across comparisons).
fn comparison_view(
    e: &Experiment,
    variant: &str,
    analysed: &Analysed<'_>,
    min_units: u64,
) -> ComparisonView {
    let Analysed {
        metric,
        control: c,
        treatment: t,
        alpha,
        sequential: sequential_config,
    } = *analysed;
    let analysis = &e.analysis;
    let mut view = ComparisonView {
        variant: variant.to_string(),
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
        note: None,
    };
    match compare(metric.kind, c, t, alpha) {
        Ok(comparison) => {
            view.absolute = Some((&comparison.absolute).into());
            match comparison.relative {
                RelativeLift::Estimated(effect) => view.relative = Some((&effect).into()),
                RelativeLift::Unavailable { reason } => {
                    view.relative_unavailable = Some(format!("{reason:?}").to_lowercase())
                }
            }
            view.p_value = Some(comparison.absolute.p_value);
            view.improvement = Some(improvement(metric.direction, comparison.absolute.estimate));
            if let Ok(s) = sequential_view(metric.kind, c, t, &comparison, sequential_config) {
                view.sequential = Some(SequentialView {
                    p_value: s.p_value,
                    ci: [s.ci_lower, s.ci_upper],
                    tuning_units: sequential_config.tuning_units,
                });
            }
            view.bayesian =
                bayesian(metric.kind, c, t).map(|b| bayesian_view(&b, metric.direction));
            view.cuped = cuped(metric.kind, c, t, alpha).map(|k| CupedView {
                adjusted: k.adjusted,
                theta: k.theta,
                variance_reduction: k.variance_reduction,
                absolute: (&k.comparison.absolute).into(),
            });
            if analysis.mode == AnalysisMode::GroupSequential {
                view.group_sequential =
                    group_sequential_view(e, min_units, comparison.absolute.statistic, alpha);
            }
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
    fn value(&self, kind: MetricKind) -> Option<f64> {
        match kind {
            MetricKind::Ratio => (self.s.sum_y != 0.0).then(|| self.s.sum_x / self.s.sum_y),
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

/// The standard test of a metric: z-test for conversions, Welch for means and sums, the
/// delta method for ratios.
fn compare(kind: MetricKind, c: &Group, t: &Group, alpha: f64) -> Result<Comparison, StatsError> {
    match kind {
        MetricKind::Conversion => {
            abx_stats::two_proportion_z_test(&c.proportion(), &t.proportion(), alpha)
        }
        MetricKind::Mean | MetricKind::Sum => {
            abx_stats::welch_t_test(&c.moments(), &t.moments(), alpha)
        }
        MetricKind::Ratio => abx_stats::ratio_test(&c.ratio(), &t.ratio(), alpha),
    }
}

fn sequential_view(
    kind: MetricKind,
    c: &Group,
    t: &Group,
    comparison: &Comparison,
    config: &SequentialConfig,
) -> Result<SequentialResult, StatsError> {
    match kind {
        MetricKind::Conversion => {
            sequential::sequential_proportion_test(&c.proportion(), &t.proportion(), config)
        }
        MetricKind::Mean | MetricKind::Sum => {
            sequential::sequential_mean_test(&c.moments(), &t.moments(), config)
        }
        MetricKind::Ratio => sequential::always_valid(
            comparison.absolute.estimate,
            comparison.absolute.std_error,
            c.n + t.n,
            config,
        ),
    }
}

fn bayesian(kind: MetricKind, c: &Group, t: &Group) -> Option<BayesianResult> {
    match kind {
        MetricKind::Conversion => abx_stats::beta_binomial(&c.proportion(), &t.proportion()).ok(),
        MetricKind::Mean | MetricKind::Sum => {
            abx_stats::bayesian::gaussian(&c.moments(), &t.moments()).ok()
        }
        MetricKind::Ratio => None,
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
        MetricKind::Ratio => None,
        _ => abx_stats::cuped_test(&c.covariate(), &t.covariate(), alpha).ok(),
    }
}

/// Computed boundaries by (number of looks, alpha's bits).
type BoundaryCache = Mutex<HashMap<(u32, u64), Vec<Look>>>;

/// O'Brien-Fleming boundaries for K equally spaced looks, computed once per (K, alpha):
/// the recursive integration takes milliseconds.
fn obf_boundaries(looks: u32, alpha: f64) -> Option<Vec<Look>> {
    static CACHE: OnceLock<BoundaryCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (looks, alpha.to_bits());
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Some(found.clone());
    }
    let fractions: Vec<f64> = (1..=looks)
        .map(|k| f64::from(k) / f64::from(looks))
        .collect();
    let computed =
        group_sequential::boundaries(&fractions, alpha, SpendingFunction::OBrienFleming).ok()?;
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, computed.clone());
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

/// Guardrail config for a metric: harmful is the opposite of the good direction.
pub fn guardrail_config(metric: &Metric) -> GuardrailConfig {
    let harmful = match metric.direction {
        Direction::Increase => HarmfulDirection::Decrease,
        Direction::Decrease => HarmfulDirection::Increase,
    };
    let mut config = GuardrailConfig::new(harmful);
    if let Some(threshold) = metric.guardrail_threshold {
        config.min_std_errors = threshold;
    }
    config
}

fn guardrail_check(
    kind: MetricKind,
    c: &Group,
    t: &Group,
    config: &GuardrailConfig,
) -> Result<GuardrailCheck, StatsError> {
    match kind {
        MetricKind::Conversion => {
            guardrail::guardrail_proportion(&c.proportion(), &t.proportion(), config)
        }
        MetricKind::Mean | MetricKind::Sum => {
            guardrail::guardrail_mean(&c.moments(), &t.moments(), config)
        }
        MetricKind::Ratio => {
            let comparison = abx_stats::ratio_test(&c.ratio(), &t.ratio(), config.alpha)?;
            guardrail::guardrail_check(
                comparison.absolute.estimate,
                comparison.absolute.std_error,
                c.n,
                t.n,
                config,
            )
        }
    }
}

/// Computes the results of an experiment.
pub fn compute(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    rollups: &Rollups,
    now_ms: i64,
    daily: bool,
) -> Results {
    let analysis = &e.analysis;
    let alpha = analysis.alpha;
    let control = e.control().to_string();
    let treatments: Vec<String> = e.variants.iter().skip(1).map(|v| v.name.clone()).collect();
    let (units, multiple) = units_by_variant(rollups, i64::MAX);
    let n = |v: &str| units.get(v).copied().unwrap_or(0);

    let roles = metric_roles(e);

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

    let sequential_config = SequentialConfig {
        alpha,
        tuning_units: analysis
            .tuning_units
            .or(analysis.planned_units_per_variant.map(|p| 2.0 * p as f64))
            .unwrap_or(10_000.0),
    };
    let min_units = e.variants.iter().map(|v| n(&v.name)).min().unwrap_or(0);
    let planned_fraction = analysis
        .planned_units_per_variant
        .map(|p| min_units as f64 / p as f64);

    let mut results: Vec<MetricResult> = Vec::new();
    let mut guardrails: Vec<GuardrailView> = Vec::new();
    for (key, role) in &roles {
        let Some(metric) = metrics.get(key) else {
            continue;
        };
        let sums = sums_by(rollups, key, i64::MAX);
        let group = |v: &str| Group {
            n: n(v),
            s: sums.get(v).copied().unwrap_or_default(),
        };
        for v in &e.variants {
            let g = group(&v.name);
            let summary = MetricSummary {
                units: g.n,
                count: (metric.kind == MetricKind::Conversion).then(|| g.proportion().conversions),
                sum: g.s.sum_x,
                value: g.value(metric.kind),
            };
            if *role == MetricRole::Primary {
                let entry = variants.get_mut(&v.name).expect("variant summary exists");
                entry.conversions = summary.count;
                entry.rate = summary.value;
            }
            variants
                .get_mut(&v.name)
                .expect("variant summary exists")
                .metrics
                .insert(key.clone(), summary);
        }
        let c = group(&control);
        let mut comparisons = Vec::new();
        for variant in &treatments {
            let t = group(variant);
            if e.guardrail_metrics.contains(key) {
                guardrails.push(guardrail_view(metric, variant, &c, &t));
            }
            let analysed = Analysed {
                metric,
                control: &c,
                treatment: &t,
                alpha,
                sequential: &sequential_config,
            };
            comparisons.push(comparison_view(e, variant, &analysed, min_units));
        }
        results.push(MetricResult {
            metric: key.clone(),
            kind: metric.kind,
            role: *role,
            direction: metric.direction,
            comparisons,
        });
    }

    apply_decisions(&mut results, e, planned_fraction);

    let srm = srm_view(e, &units, &multiple);
    let primary = results
        .iter()
        .find(|m| m.role == MetricRole::Primary)
        .and_then(|m| m.comparisons.first());
    let recommended_action = recommend(
        e,
        &results,
        srm.as_ref(),
        &guardrails,
        planned_fraction,
        min_units,
    );
    let series = daily.then(|| daily_series(e, metrics, rollups, &roles, alpha));
    Results {
        experiment_id: e.id.clone(),
        experiment: e.key.clone(),
        status: e.status,
        days_running: e.days_running(now_ms),
        analysis_mode: analysis.mode,
        alpha,
        correction: analysis.correction,
        control,
        variants,
        lift: primary.and_then(|p| p.relative.map(|r| r.estimate)),
        p_value: primary.and_then(|p| p.p_value),
        significant: primary.is_some_and(|p| p.significant),
        confidence_interval: primary.and_then(|p| p.relative.map(|r| r.ci)),
        metrics: results,
        srm,
        guardrails,
        multiple_exposures: multiple.values().sum(),
        planned_sample_fraction: planned_fraction,
        recommended_action,
        series,
        rollups_computed_at: None,
    }
}

fn group_sequential_view(
    e: &Experiment,
    min_units: u64,
    z: f64,
    alpha: f64,
) -> Option<GroupSequentialView> {
    let looks = e.analysis.looks?;
    let planned = e.analysis.planned_units_per_variant?;
    let fraction = (min_units as f64 / planned as f64).min(1.0);
    let passed = ((fraction * f64::from(looks)) + 1e-9).floor() as u32;
    // The family's alpha is split Bonferroni-style across comparisons for the boundaries.
    let family = (1 + e.secondary_metrics.len()) * e.variants.len().saturating_sub(1);
    let boundaries = obf_boundaries(looks, alpha / family.max(1) as f64)?;
    let boundary = passed
        .checked_sub(1)
        .and_then(|i| boundaries.get(i as usize))
        .map(|l| l.z_boundary);
    Some(GroupSequentialView {
        looks_passed: passed,
        looks_planned: looks,
        information_fraction: fraction,
        z_boundary: boundary,
        z,
        crossed: boundary.is_some_and(|b| z.abs() >= b),
    })
}

/// Adjusts p-values across the family (primary and secondary metrics × treatments) and
/// decides significance under the experiment's mode.
fn apply_decisions(results: &mut [MetricResult], e: &Experiment, planned_fraction: Option<f64>) {
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
        view.adjusted_p_value = Some(adjusted);
        view.significant = match mode {
            AnalysisMode::Sequential => adjusted <= alpha,
            AnalysisMode::FixedHorizon => {
                planned_fraction.is_some_and(|f| f >= 1.0) && adjusted <= alpha
            }
            AnalysisMode::GroupSequential => view.group_sequential.is_some_and(|g| g.crossed),
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
    let result: SrmResult = abx_stats::srm_test(
        &kept.iter().map(|&i| counts[i]).collect::<Vec<_>>(),
        &kept.iter().map(|&i| weights[i]).collect::<Vec<_>>(),
    )
    .ok()?;
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
        mismatch: result.mismatch,
    })
}

fn recommend(
    e: &Experiment,
    results: &[MetricResult],
    srm: Option<&SrmView>,
    guardrails: &[GuardrailView],
    planned_fraction: Option<f64>,
    min_units: u64,
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
    if min_units == 0 {
        return "Waiting for data: no exposures yet".into();
    }
    if e.analysis.mode == AnalysisMode::FixedHorizon && planned_fraction.is_some_and(|f| f < 1.0) {
        let pct = (planned_fraction.unwrap_or(0.0) * 100.0).floor();
        return format!(
            "Keep running: {pct}% of planned sample; a fixed-horizon test is read only at its planned size"
        );
    }
    let Some(primary) = results.iter().find(|m| m.role == MetricRole::Primary) else {
        return "No primary metric results".into();
    };
    let winners: Vec<&ComparisonView> = primary
        .comparisons
        .iter()
        .filter(|c| c.significant && c.improvement == Some(true))
        .collect();
    if let Some(best) = winners.iter().max_by(|a, b| {
        let lift = |c: &&&ComparisonView| c.absolute.map_or(0.0, |x| x.estimate.abs());
        lift(a).total_cmp(&lift(b))
    }) {
        return format!(
            "Ship {} (statistically significant improvement)",
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
                .filter_map(|c| c.group_sequential)
                .any(|g| g.looks_passed >= g.looks_planned);
            if done {
                format!(
                    "No significant difference after the final look: keep {}",
                    e.control()
                )
            } else {
                "Keep running: no boundary crossed yet".into()
            }
        }
        AnalysisMode::Sequential => "Keep running: no significant difference yet".into(),
    }
}

/// Cumulative estimates by day, from the first exposure day to the last rollup day.
fn daily_series(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    rollups: &Rollups,
    roles: &[(String, MetricRole)],
    alpha: f64,
) -> Vec<DailyPoint> {
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
            let Some(metric) = metrics.get(key) else {
                continue;
            };
            let sums = sums_by(rollups, key, day);
            let group = |v: &str| Group {
                n: n(v),
                s: sums.get(v).copied().unwrap_or_default(),
            };
            for variant in e.variants.iter().skip(1) {
                let comparison =
                    compare(metric.kind, &group(control), &group(&variant.name), alpha).ok();
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
