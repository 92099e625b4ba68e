//! The smaller configuration objects: layers, holdouts, segments and metric definitions.

use std::collections::HashSet;

use abx_core::snapshot::FULL_BP;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::experiment::{Analysis, AnalysisMode, Experiment, Status};
use super::{check_key, check_object_key, check_text, percent_to_bp, targeting};
use crate::{Error, FieldError};

fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, Error> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(Error::Invalid(errors))
    }
}

fn texts(
    name: &Option<String>,
    key: &str,
    description: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> (String, String) {
    let name = name.clone().unwrap_or_else(|| key.to_string());
    let description = description.clone().unwrap_or_default();
    check_text(&name, "name", 200, errors);
    check_text(&description, "description", 10_000, errors);
    (name, description)
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerInput {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The unit attribute all of the layer's experiments randomize by. Default `user_id`.
    #[serde(default)]
    pub unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub key: String,
    pub name: String,
    pub description: String,
    pub unit: String,
}

pub fn validate_layer(input: &LayerInput) -> Result<LayerSpec, Error> {
    let mut errors = Vec::new();
    check_object_key(&input.key, "key", &mut errors);
    let (name, description) = texts(&input.name, &input.key, &input.description, &mut errors);
    let unit = input.unit.clone().unwrap_or_else(|| "user_id".into());
    if !targeting::valid_attribute(&unit) {
        errors.push(FieldError::new("unit", "must be an attribute name"));
    }
    finish(
        LayerSpec {
            key: input.key.clone(),
            name,
            description,
            unit,
        },
        errors,
    )
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldoutInput {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Percent of units held out of every experiment that respects this holdout.
    pub percent: f64,
    /// The unit attribute its experiments randomize by, which its readout compares units
    /// of. Default `user_id`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Metric keys its readout compares the held and released units on, the first as the
    /// primary metric.
    #[serde(default)]
    pub metrics: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HoldoutSpec {
    pub key: String,
    pub name: String,
    pub description: String,
    pub percent_bp: u16,
    pub unit: String,
    pub metrics: Vec<String>,
}

/// A readout of more metrics than an experiment may have would only dilute its correction.
const MAX_HOLDOUT_METRICS: usize = 20;

/// Validates a holdout; `metrics` are the catalog's metric keys, which its metrics must be.
pub fn validate_holdout(
    input: &HoldoutInput,
    metrics: &HashSet<String>,
) -> Result<HoldoutSpec, Error> {
    let mut errors = Vec::new();
    check_object_key(&input.key, "key", &mut errors);
    let (name, description) = texts(&input.name, &input.key, &input.description, &mut errors);
    let percent_bp = percent_to_bp(input.percent, "percent", &mut errors);
    let unit = input.unit.clone().unwrap_or_else(|| "user_id".into());
    if !targeting::valid_attribute(&unit) {
        errors.push(FieldError::new("unit", "must be an attribute name"));
    }
    if input.metrics.len() > MAX_HOLDOUT_METRICS {
        errors.push(FieldError::new(
            "metrics",
            format!("at most {MAX_HOLDOUT_METRICS} metrics"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, metric) in input.metrics.iter().enumerate() {
        if !metrics.contains(metric) {
            errors.push(FieldError::new(
                format!("metrics[{i}]"),
                format!("unknown metric `{metric}`"),
            ));
        } else if !seen.insert(metric) {
            errors.push(FieldError::new(
                format!("metrics[{i}]"),
                format!("`{metric}` is listed twice"),
            ));
        }
    }
    finish(
        HoldoutSpec {
            key: input.key.clone(),
            name,
            description,
            percent_bp,
            unit,
            metrics: input.metrics.clone(),
        },
        errors,
    )
}

/// `PUT /dimensions`: the attributes every experiment may be broken down by, besides the
/// `dimensions` it declares itself.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceDimensionsInput {
    pub dimensions: Vec<String>,
}

/// The instance's dimensions (`GET /dimensions`).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceDimensions {
    pub dimensions: Vec<String>,
    /// Increases with every change (0 before the first); send it in `If-Match` to update
    /// safely.
    pub version: i64,
    /// When they last changed; absent before the first change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// The same rules as an experiment's `dimensions`: at most ten attribute names, none twice.
pub fn validate_instance_dimensions(input: &InstanceDimensionsInput) -> Result<Vec<String>, Error> {
    let mut errors = Vec::new();
    super::experiment::validate_dimensions(&input.dimensions, &mut errors);
    finish(input.dimensions.clone(), errors)
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub condition: Json,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSpec {
    pub key: String,
    pub name: String,
    pub description: String,
    pub condition: Json,
}

/// `segments` gives the total depth of every other segment; a reference back to this
/// segment's own key is a cycle.
pub fn validate_segment(
    input: &SegmentInput,
    segments: &std::collections::HashMap<String, u32>,
    reaches: impl Fn(&str, &str) -> bool,
) -> Result<SegmentSpec, Error> {
    let mut errors = Vec::new();
    check_object_key(&input.key, "key", &mut errors);
    let (name, description) = texts(&input.name, &input.key, &input.description, &mut errors);
    let mut others = segments.clone();
    others.remove(&input.key);
    let referenced = targeting::validate(&input.condition, "condition", &others, &mut errors);
    for key in referenced {
        if reaches(&key, &input.key) {
            errors.push(FieldError::new(
                "condition",
                format!("segment `{key}` refers back to `{}`: a cycle", input.key),
            ));
        }
    }
    finish(
        SegmentSpec {
            key: input.key.clone(),
            name,
            description,
            condition: input.condition.clone(),
        },
        errors,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Share of exposed units with at least one event of `event_type`.
    Conversion,
    /// Mean over exposed units of each unit's summed values (units without events count 0).
    Mean,
    /// Like `mean`, reported as totals per unit; analysed as the per-unit mean.
    Sum,
    /// Σ values of `event_type` / Σ values of `denominator_event_type`, per unit, analysed
    /// with the delta method.
    Ratio,
    /// The `quantile` (in (0, 1)) of the values of all events of `event_type` of a
    /// variant's exposed units, analysed with the delta method for clustered quantiles.
    Quantile,
}

/// Which of a unit's events a total counts: those at or after its first exposure (the
/// measurement), or those before it (the CUPED covariate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    AfterExposure,
    BeforeExposure,
}

/// How one of a unit's values for a metric follows from its event totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitValue {
    Zero,
    /// 1 when the unit has an event of the metric's type in the period, else 0.
    Converted(Period),
    /// The sum of the values of the unit's events of the metric's type in the period.
    Sum(Period),
    /// The sum of the values of the unit's events of the denominator's type in the period.
    DenominatorSum(Period),
}

/// A unit's values for a metric: x (the value), y (a ratio's denominator), c (x before
/// exposure, the CUPED covariate) and d (y before exposure), summed into the rollups'
/// sufficient statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitValues {
    pub x: UnitValue,
    pub y: UnitValue,
    pub c: UnitValue,
    pub d: UnitValue,
}

impl MetricKind {
    /// The one definition of what a metric kind measures per unit. Every engine that turns
    /// events into rollups (the SQL pipeline's fold, the ClickHouse warehouse's queries, and
    /// the interaction queries of both) derives a unit's values from this table.
    pub fn unit_values(self) -> UnitValues {
        use {Period::*, UnitValue::*};
        match self {
            MetricKind::Conversion => UnitValues {
                x: Converted(AfterExposure),
                y: Zero,
                c: Converted(BeforeExposure),
                d: Zero,
            },
            MetricKind::Mean | MetricKind::Sum => UnitValues {
                x: Sum(AfterExposure),
                y: Zero,
                c: Sum(BeforeExposure),
                d: Zero,
            },
            MetricKind::Ratio => UnitValues {
                x: Sum(AfterExposure),
                y: DenominatorSum(AfterExposure),
                c: Sum(BeforeExposure),
                d: DenominatorSum(BeforeExposure),
            },
            // A quantile is not a function of per-unit totals: its engines keep each unit's
            // events by bucket instead (`plan::MetricPlan::bucketed`), and its rollups stay
            // empty.
            MetricKind::Quantile => UnitValues {
                x: Zero,
                y: Zero,
                c: Zero,
                d: Zero,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Conversion => "conversion",
            MetricKind::Mean => "mean",
            MetricKind::Sum => "sum",
            MetricKind::Ratio => "ratio",
            MetricKind::Quantile => "quantile",
        }
    }

    pub fn parse(text: &str) -> Option<MetricKind> {
        [
            MetricKind::Conversion,
            MetricKind::Mean,
            MetricKind::Sum,
            MetricKind::Ratio,
            MetricKind::Quantile,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Higher is better (conversion, revenue).
    Increase,
    /// Lower is better (crashes, latency).
    Decrease,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
        }
    }

    pub fn parse(text: &str) -> Option<Direction> {
        [Direction::Increase, Direction::Decrease]
            .into_iter()
            .find(|d| d.as_str() == text)
    }
}

/// Winsorization of a mean, sum or ratio metric: each unit's value (a ratio's numerator)
/// above the cap counts as the cap. Exactly one of the two.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    /// A fixed cap, e.g. 500 (currency units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The cap is this percentile, in (0, 1), of the non-zero per-unit values of the
    /// experiment's exposed units, pooled across variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
}

/// Which of a unit's events a metric counts: those from `delay_s` to `delay_s + length_s`
/// (excluded) after the unit's first exposure ("purchase within 3 days": length 259,200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default)]
    pub delay_s: u32,
    pub length_s: u32,
}

impl Window {
    /// Whether an event `since_exposure_ms` after the unit's first exposure is in it.
    pub fn holds(&self, since_exposure_ms: i64) -> bool {
        let delay = i64::from(self.delay_s) * 1_000;
        since_exposure_ms >= delay && since_exposure_ms < delay + i64::from(self.length_s) * 1_000
    }
}

/// The longest a window may reach after the exposure (delay plus length): a year.
pub const MAX_WINDOW_S: u64 = 366 * 86_400;

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricInput {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub kind: MetricKind,
    /// The event type counted (numerator for ratios), e.g. `conversion`, `revenue`.
    pub event_type: String,
    /// Denominator event type, for ratio metrics only.
    #[serde(default)]
    pub denominator_event_type: Option<String>,
    /// Which quantile of the events' values, in (0, 1), for quantile metrics only (0.95
    /// for a 95th percentile).
    #[serde(default)]
    pub quantile: Option<f64>,
    /// Caps each unit's value before the statistics (mean, sum and ratio metrics).
    #[serde(default)]
    pub cap: Option<Cap>,
    /// Counts only the events in this window after the unit's first exposure (for ratios,
    /// the numerator's and the denominator's).
    #[serde(default)]
    pub window: Option<Window>,
    /// Which direction is good. Default `increase`.
    #[serde(default)]
    pub direction: Option<Direction>,
    /// For guardrails: how many standard errors of harmful movement trigger an alarm
    /// (default 2, as in the seed).
    #[serde(default)]
    pub guardrail_threshold: Option<f64>,
    /// The smallest and largest value an event of this metric may carry; events outside
    /// are refused, each with the reason (every value must also be within ±1e12).
    #[serde(default)]
    pub value_min: Option<f64>,
    #[serde(default)]
    pub value_max: Option<f64>,
    /// Counts only the events whose `properties` match this condition (the targeting
    /// language without segments or semantic versions); for ratios, the numerator's events.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Json>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    pub key: String,
    pub name: String,
    pub description: String,
    pub kind: MetricKind,
    pub event_type: String,
    pub denominator_event_type: Option<String>,
    pub quantile: Option<f64>,
    pub cap: Option<Cap>,
    pub window: Option<Window>,
    pub direction: Direction,
    pub guardrail_threshold: Option<f64>,
    pub value_min: Option<f64>,
    pub value_max: Option<f64>,
    pub filter: Option<Json>,
}

fn validate_cap(kind: MetricKind, cap: &Cap, errors: &mut Vec<FieldError>) {
    if !matches!(kind, MetricKind::Mean | MetricKind::Sum | MetricKind::Ratio) {
        errors.push(FieldError::new(
            "cap",
            "only mean, sum and ratio metrics are capped",
        ));
    }
    match (cap.value, cap.percentile) {
        (Some(value), None) => {
            if !(value.is_finite() && value.abs() <= crate::event::MAX_ABS_VALUE) {
                errors.push(FieldError::new("cap.value", "a number within ±1e12"));
            }
        }
        (None, Some(percentile)) => {
            if !(percentile > 0.0 && percentile < 1.0) {
                errors.push(FieldError::new(
                    "cap.percentile",
                    "strictly between 0 and 1 (0.999 caps the top 0.1 % of units)",
                ));
            }
        }
        _ => errors.push(FieldError::new(
            "cap",
            "exactly one of `value` and `percentile`",
        )),
    }
}

pub fn validate_metric(input: &MetricInput) -> Result<MetricSpec, Error> {
    let mut errors = Vec::new();
    check_object_key(&input.key, "key", &mut errors);
    let (name, description) = texts(&input.name, &input.key, &input.description, &mut errors);
    check_key(&input.event_type, "event_type", &mut errors);
    match (&input.kind, &input.denominator_event_type) {
        (MetricKind::Ratio, None) => errors.push(FieldError::new(
            "denominator_event_type",
            "ratio metrics need a denominator event type",
        )),
        (MetricKind::Ratio, Some(d)) => check_key(d, "denominator_event_type", &mut errors),
        (_, Some(_)) => errors.push(FieldError::new(
            "denominator_event_type",
            "only ratio metrics have a denominator",
        )),
        (_, None) => {}
    }
    match (&input.kind, input.quantile) {
        (MetricKind::Quantile, None) => errors.push(FieldError::new(
            "quantile",
            "quantile metrics need the quantile, e.g. 0.95",
        )),
        (MetricKind::Quantile, Some(q)) if !(q > 0.0 && q < 1.0) => errors.push(FieldError::new(
            "quantile",
            "strictly between 0 and 1 (0.95 for a 95th percentile)",
        )),
        (MetricKind::Quantile, Some(_)) | (_, None) => {}
        (_, Some(_)) => errors.push(FieldError::new(
            "quantile",
            "only quantile metrics have a quantile",
        )),
    }
    if let Some(cap) = &input.cap {
        validate_cap(input.kind, cap, &mut errors);
    }
    if let Some(window) = &input.window {
        if window.length_s == 0 {
            errors.push(FieldError::new("window.length_s", "at least 1 second"));
        }
        if u64::from(window.delay_s) + u64::from(window.length_s) > MAX_WINDOW_S {
            errors.push(FieldError::new(
                "window",
                "delay_s + length_s must be within 366 days of the exposure",
            ));
        }
    }
    if input
        .guardrail_threshold
        .is_some_and(|t| !(t.is_finite() && t > 0.0 && t <= 10.0))
    {
        errors.push(FieldError::new(
            "guardrail_threshold",
            "between 0 and 10 standard errors",
        ));
    }
    for (field, bound) in [
        ("value_min", input.value_min),
        ("value_max", input.value_max),
    ] {
        if bound.is_some_and(|b| !(b.is_finite() && b.abs() <= crate::event::MAX_ABS_VALUE)) {
            errors.push(FieldError::new(field, "a number within ±1e12"));
        }
    }
    if let (Some(min), Some(max)) = (input.value_min, input.value_max)
        && min > max
    {
        errors.push(FieldError::new("value_max", "must not be below value_min"));
    }
    let filter = input.filter.clone().filter(|f| !f.is_null());
    if let Some(filter) = &filter {
        super::filter::validate(filter, "filter", &mut errors);
    }
    finish(
        MetricSpec {
            key: input.key.clone(),
            name,
            description,
            kind: input.kind,
            event_type: input.event_type.clone(),
            denominator_event_type: input.denominator_event_type.clone(),
            quantile: input.quantile,
            cap: input.cap,
            window: input.window,
            direction: input.direction.unwrap_or(Direction::Increase),
            guardrail_threshold: input.guardrail_threshold,
            value_min: input.value_min,
            value_max: input.value_max,
            filter,
        },
        errors,
    )
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SlotOwner {
    pub experiment_id: String,
    pub experiment_key: String,
    pub status: String,
    pub start_percent: f64,
    pub end_percent: f64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Layer {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub unit: String,
    /// Slot ranges owned by running and paused experiments, in order.
    pub allocations: Vec<SlotOwner>,
    pub free_percent: f64,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Layer {
    pub fn spec(&self) -> LayerSpec {
        LayerSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            unit: self.unit.clone(),
        }
    }
}

/// A layer's identity, all a snapshot needs of it.
pub struct LayerName {
    pub id: String,
    pub key: String,
}

/// Where a holdout is in its life. It holds units out from its creation until an admin
/// ends it (`POST /holdouts/{id}/end`); an ended holdout never holds anyone again, since
/// units released into shipped variants and experiments cannot be held out afresh without
/// mixing the two groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldoutStatus {
    Running,
    Ended,
}

impl HoldoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldoutStatus::Running => "running",
            HoldoutStatus::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<HoldoutStatus> {
        [HoldoutStatus::Running, HoldoutStatus::Ended]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Holdout {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub percent: f64,
    pub status: HoldoutStatus,
    /// When it began holding units out.
    pub started_at: String,
    /// When it ended, if it has.
    pub ended_at: Option<String>,
    /// The unit attribute its experiments randomize by.
    pub unit: String,
    /// What its readout (`GET /holdouts/{id}/results`) compares, the first as primary.
    pub metrics: Vec<String>,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub percent_bp: u16,
    #[serde(skip)]
    pub started_at_ms: i64,
    #[serde(skip)]
    pub ended_at_ms: Option<i64>,
}

impl Holdout {
    pub fn spec(&self) -> HoldoutSpec {
        HoldoutSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            percent_bp: self.percent_bp,
            unit: self.unit.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The holdout as the two-arm experiment its readout is: the units it holds (`held`,
    /// the control, which lives without what the experiments respecting it shipped) against
    /// the units it releases (`released`), split as its percent splits them, from its start.
    /// The pipeline rolls up its exposures (which runtimes log to the holdout's id) by this
    /// plan, and the results code reads it out as it reads every experiment, with
    /// always-valid (sequential) statistics, since a holdout is read for months. Without
    /// metrics it still counts its exposures, so the sample-ratio check runs.
    pub fn readout(&self) -> Experiment {
        let (primary, secondary) = self
            .metrics
            .split_first()
            .map_or(("", &[][..]), |(p, s)| (p.as_str(), s));
        let held_bp = self.percent_bp;
        let mut e = Experiment::running(
            &self.key,
            &[(HELD_ARM, held_bp), (RELEASED_ARM, FULL_BP - held_bp)],
            primary,
            &[],
            Analysis {
                mode: AnalysisMode::Sequential,
                min_duration_days: 0,
                ..Analysis::default()
            },
            self.started_at_ms,
        );
        e.id = self.id.clone();
        e.name = self.name.clone();
        e.description = self.description.clone();
        e.unit = self.unit.clone();
        e.secondary_metrics = secondary.to_vec();
        e.started_at = Some(self.started_at.clone());
        e.ended_at = self.ended_at.clone();
        e.ended_at_ms = self.ended_at_ms;
        if self.status == HoldoutStatus::Ended {
            e.status = Status::Completed;
        }
        e
    }
}

/// The arms of a holdout's exposures, as abx-core names them.
pub const HELD_ARM: &str = abx_core::HELD_ARM;
pub const RELEASED_ARM: &str = abx_core::RELEASED_ARM;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Segment {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub condition: Json,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Segment {
    pub fn spec(&self) -> SegmentSpec {
        SegmentSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            condition: self.condition.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Metric {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub kind: MetricKind,
    pub event_type: String,
    pub denominator_event_type: Option<String>,
    /// The quantile of a quantile metric, in (0, 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The cap on each unit's value (see `MetricInput::cap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<Cap>,
    /// The window of events counted after the exposure (see `MetricInput::window`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    pub direction: Direction,
    pub guardrail_threshold: Option<f64>,
    pub value_min: Option<f64>,
    pub value_max: Option<f64>,
    /// Only events whose properties match count (see `MetricInput::filter`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Json>,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Metric {
    /// A metric counted from events of type `key`, as the results see it (no store fields).
    pub fn new(key: &str, kind: MetricKind, direction: Direction) -> Self {
        Metric {
            id: format!("id-{key}"),
            key: key.into(),
            name: key.into(),
            description: String::new(),
            kind,
            event_type: key.into(),
            denominator_event_type: None,
            quantile: (kind == MetricKind::Quantile).then_some(0.95),
            cap: None,
            window: None,
            direction,
            guardrail_threshold: None,
            value_min: None,
            value_max: None,
            filter: None,
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    pub fn spec(&self) -> MetricSpec {
        MetricSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            kind: self.kind,
            event_type: self.event_type.clone(),
            denominator_event_type: self.denominator_event_type.clone(),
            quantile: self.quantile,
            cap: self.cap,
            window: self.window,
            direction: self.direction,
            guardrail_threshold: self.guardrail_threshold,
            value_min: self.value_min,
            value_max: self.value_max,
            filter: self.filter.clone(),
        }
    }
}
