//! The smaller configuration objects: layers, holdouts, segments and metric definitions.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{check_key, check_text, percent_to_bp, targeting};
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
    check_key(&input.key, "key", &mut errors);
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
}

#[derive(Clone, Debug, PartialEq)]
pub struct HoldoutSpec {
    pub key: String,
    pub name: String,
    pub description: String,
    pub percent_bp: u16,
}

pub fn validate_holdout(input: &HoldoutInput) -> Result<HoldoutSpec, Error> {
    let mut errors = Vec::new();
    check_key(&input.key, "key", &mut errors);
    let (name, description) = texts(&input.name, &input.key, &input.description, &mut errors);
    let percent_bp = percent_to_bp(input.percent, "percent", &mut errors);
    finish(
        HoldoutSpec {
            key: input.key.clone(),
            name,
            description,
            percent_bp,
        },
        errors,
    )
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
    check_key(&input.key, "key", &mut errors);
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
}

/// Which of a unit's events a total counts: those at or after its first exposure (the
/// measurement), or those before it (the CUPED covariate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    AfterExposure,
    BeforeExposure,
}

/// How one of a unit's three values for a metric follows from its event totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitValue {
    Zero,
    /// 1 when the unit has an event of the metric's type in the period, else 0.
    Converted(Period),
    /// The sum of the values of the unit's events of the metric's type in the period.
    Sum(Period),
    /// The sum of the values of the unit's events of the denominator's type after exposure.
    DenominatorSum,
}

/// A unit's values for a metric: x (the value), y (a ratio's denominator) and c (the
/// pre-exposure covariate), summed into the rollups' sufficient statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitValues {
    pub x: UnitValue,
    pub y: UnitValue,
    pub c: UnitValue,
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
            },
            MetricKind::Mean | MetricKind::Sum => UnitValues {
                x: Sum(AfterExposure),
                y: Zero,
                c: Sum(BeforeExposure),
            },
            MetricKind::Ratio => UnitValues {
                x: Sum(AfterExposure),
                y: DenominatorSum,
                c: Zero,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Conversion => "conversion",
            MetricKind::Mean => "mean",
            MetricKind::Sum => "sum",
            MetricKind::Ratio => "ratio",
        }
    }

    pub fn parse(text: &str) -> Option<MetricKind> {
        [
            MetricKind::Conversion,
            MetricKind::Mean,
            MetricKind::Sum,
            MetricKind::Ratio,
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
    pub direction: Direction,
    pub guardrail_threshold: Option<f64>,
    pub value_min: Option<f64>,
    pub value_max: Option<f64>,
    pub filter: Option<Json>,
}

pub fn validate_metric(input: &MetricInput) -> Result<MetricSpec, Error> {
    let mut errors = Vec::new();
    check_key(&input.key, "key", &mut errors);
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

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Holdout {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub percent: f64,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub percent_bp: u16,
}

impl Holdout {
    pub fn spec(&self) -> HoldoutSpec {
        HoldoutSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            percent_bp: self.percent_bp,
        }
    }
}

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
            direction: self.direction,
            guardrail_threshold: self.guardrail_threshold,
            value_min: self.value_min,
            value_max: self.value_max,
            filter: self.filter.clone(),
        }
    }
}
