//! Experiments: the create/patch body, its validation, the lifecycle and what may change
//! while an experiment runs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{check_key, check_object_key, check_text, percent_to_bp, targeting};
use crate::clock;
use crate::{Error, FieldError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Running,
    Paused,
    Completed,
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Draft,
            Status::Running,
            Status::Paused,
            Status::Completed,
            Status::Archived,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the experiment holds slots in its layer.
    pub fn holds_slots(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Complete,
    Archive,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Complete => "complete",
            Action::Archive => "archive",
        }
    }
}

/// Draft → Running ⇄ Paused → Completed → Archived. Anything else is a 409.
pub fn transition(from: Status, action: Action) -> Result<Status, Error> {
    let to = match (from, action) {
        (Status::Draft, Action::Start) => Status::Running,
        (Status::Running, Action::Pause) => Status::Paused,
        (Status::Paused, Action::Resume) => Status::Running,
        (Status::Running | Status::Paused, Action::Complete) => Status::Completed,
        (Status::Completed, Action::Archive) => Status::Archived,
        _ => {
            return Err(Error::conflict(
                "illegal_transition",
                format!(
                    "cannot {} an experiment that is {}",
                    action.as_str(),
                    from.as_str()
                ),
            ));
        }
    };
    Ok(to)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisMode {
    /// One look at a planned sample size; results before it say the decision must wait.
    FixedHorizon,
    /// Always-valid p-values and confidence sequences: safe to look at any time.
    #[default]
    Sequential,
    /// A planned number of looks with Lan–DeMets alpha spending (`spending`).
    GroupSequential,
}

/// The alpha-spending function of a group-sequential test.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Spending {
    /// O'Brien–Fleming type as gsDesign, rpact and ldbounds define it (α/2 per side).
    #[default]
    #[serde(alias = "obf")]
    OBrienFleming,
    /// O'Brien–Fleming type applied to the two-sided α (abx's earlier convention).
    #[serde(alias = "obf_total")]
    OBrienFlemingTotal,
    /// Pocock type.
    Pocock,
}

impl Spending {
    pub fn function(self) -> abx_stats::group_sequential::SpendingFunction {
        use abx_stats::group_sequential::SpendingFunction as F;
        match self {
            Spending::OBrienFleming => F::OBrienFleming,
            Spending::OBrienFlemingTotal => F::OBrienFlemingTotal,
            Spending::Pocock => F::Pocock,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Benjamini-Hochberg (false discovery rate).
    #[default]
    Bh,
    Holm,
    Bonferroni,
}

/// How results are analysed. Defaults: sequential, alpha 0.05, Benjamini-Hochberg.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    #[serde(default)]
    pub mode: AnalysisMode,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Planned exposed units per variant (required for fixed_horizon and group_sequential).
    #[serde(default)]
    pub planned_units_per_variant: Option<u64>,
    /// Number of planned looks, equally spaced in information (group_sequential).
    #[serde(default)]
    pub looks: Option<u32>,
    /// Multiple-comparison correction across metrics and treatment variants.
    #[serde(default)]
    pub correction: Correction,
    /// Sequential tuning: the sample size per variant at which the confidence sequence is
    /// tightest (defaults to the planned sample, or 10,000).
    #[serde(default)]
    pub tuning_units: Option<f64>,
    /// Alpha spending of a group-sequential test.
    #[serde(default)]
    pub spending: Spending,
    /// Days the experiment runs before its results recommend a decision, in whole weeks (0
    /// for none): early effects fade (novelty) or grow (primacy), and weekdays differ.
    #[serde(default = "default_min_duration_days")]
    pub min_duration_days: u32,
    /// Non-inferiority margins per guardrail metric, relative to control (0.02: at most 2 %
    /// worse). "Ship" then needs evidence that the guardrail is not worse by the margin.
    #[serde(default)]
    pub guardrail_margins: BTreeMap<String, f64>,
}

fn default_min_duration_days() -> u32 {
    14
}

fn default_alpha() -> f64 {
    0.05
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            mode: AnalysisMode::default(),
            alpha: default_alpha(),
            planned_units_per_variant: None,
            looks: None,
            correction: Correction::default(),
            tuning_units: None,
            spending: Spending::default(),
            min_duration_days: default_min_duration_days(),
            guardrail_margins: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantInput {
    pub name: String,
    /// Percent of the experiment's traffic, up to two decimals; all weights sum to 100.
    pub weight: f64,
    /// Any JSON; delivered to SDKs as the variant's configuration.
    #[serde(default = "empty_object")]
    #[schema(value_type = serde_json::Value)]
    pub config: Json,
}

fn empty_object() -> Json {
    Json::Object(Default::default())
}

/// The body of `POST /experiments`, and the full state a `PATCH` is merged into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentInput {
    /// The experiment's key, used in URLs and by SDKs. Default: the `name` (the seed's body
    /// has only a name), which must then be a valid key.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub hypothesis: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Layer key or id; experiments in one layer never share a unit.
    #[serde(default)]
    pub layer: Option<String>,
    /// Percent of units (or of the layer) admitted, up to two decimals. Default 100.
    #[serde(default)]
    pub traffic_percent: Option<f64>,
    /// Randomization unit attribute. Default: the layer's unit, else `user_id`.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object, nullable = true)]
    pub targeting: Option<Json>,
    pub variants: Vec<VariantInput>,
    pub primary_metric: String,
    #[serde(default)]
    pub secondary_metrics: Vec<String>,
    #[serde(default)]
    pub guardrail_metrics: Vec<String>,
    /// Holdout key or id.
    #[serde(default)]
    pub holdout: Option<String>,
    /// Unit value → variant name (QA overrides).
    #[serde(default)]
    pub forced: BTreeMap<String, String>,
    #[serde(default)]
    pub switchback_period_s: Option<u32>,
    #[serde(default)]
    pub analysis: Option<Analysis>,
    /// Context attributes the results can be broken down by (`?dimension=`): SDKs attach
    /// them to exposures, and each unit is counted under its value at first exposure. At
    /// most 10; exploratory, so they may change at any time.
    #[serde(default)]
    pub dimensions: Vec<String>,
}

/// A validated experiment definition, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentSpec {
    pub key: String,
    pub name: String,
    pub hypothesis: String,
    pub description: String,
    pub owner: String,
    pub layer_id: Option<String>,
    pub traffic_bp: u16,
    pub unit: String,
    pub targeting: Option<Json>,
    pub variants: Vec<VariantSpec>,
    pub primary_metric: String,
    pub secondary_metrics: Vec<String>,
    pub guardrail_metrics: Vec<String>,
    pub holdout_id: Option<String>,
    pub forced: BTreeMap<String, String>,
    pub switchback_period_s: Option<u32>,
    pub analysis: Analysis,
    pub dimensions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VariantSpec {
    pub name: String,
    pub weight_bp: u16,
    pub config: Json,
}

/// At most this many dimensions per experiment.
pub const MAX_DIMENSIONS: usize = 10;

pub(crate) fn validate_dimensions(dimensions: &[String], errors: &mut Vec<FieldError>) {
    if dimensions.len() > MAX_DIMENSIONS {
        errors.push(FieldError::new(
            "dimensions",
            format!("at most {MAX_DIMENSIONS} dimensions"),
        ));
    }
    for (i, d) in dimensions.iter().enumerate() {
        if !super::targeting::valid_attribute(d) {
            errors.push(FieldError::new(
                format!("dimensions[{i}]"),
                "must be an attribute name",
            ));
        } else if dimensions[..i].contains(d) {
            errors.push(FieldError::new(
                format!("dimensions[{i}]"),
                format!("`{d}` is listed twice"),
            ));
        }
    }
}

/// What validation needs to know about the rest of the configuration.
#[derive(Debug, Default)]
pub struct References {
    /// Layer key and id → (id, unit).
    pub layers: HashMap<String, (String, String)>,
    /// Holdout key and id → id.
    pub holdouts: HashMap<String, String>,
    /// Ids of the holdouts that have ended, which no experiment may newly respect (they
    /// hold nobody).
    pub ended_holdouts: HashSet<String>,
    /// Holdout id → the unit its experiments must randomize by, which an experiment that
    /// respected it before holdouts had units may keep (see `ended_holdouts`).
    pub holdout_units: HashMap<String, String>,
    pub metrics: HashSet<String>,
    /// Segment key → its condition's total depth.
    pub segments: HashMap<String, u32>,
}

const MAX_VARIANTS: usize = 20;
const MAX_CONFIG_BYTES: usize = 16 * 1024;

pub fn validate(input: &ExperimentInput, known: &References) -> Result<ExperimentSpec, Error> {
    let mut errors = Vec::new();
    let key = match (&input.key, &input.name) {
        (Some(key), _) => {
            check_object_key(key, "key", &mut errors);
            key.clone()
        }
        (None, Some(name)) => {
            let mut invalid = Vec::new();
            check_object_key(name, "key", &mut invalid);
            if !invalid.is_empty() {
                errors.push(FieldError::new(
                    "key",
                    "required when the name is not itself a valid key (1-100 letters, digits, `_`, `-`, `.`)",
                ));
            }
            name.clone()
        }
        (None, None) => {
            errors.push(FieldError::new(
                "key",
                "required (or a `name`, which it defaults to)",
            ));
            String::new()
        }
    };
    let name = input.name.clone().unwrap_or_else(|| key.clone());
    check_text(&name, "name", 200, &mut errors);
    let text = |value: &Option<String>, field: &str, max: usize, errors: &mut Vec<FieldError>| {
        let value = value.clone().unwrap_or_default();
        check_text(&value, field, max, errors);
        value
    };
    let hypothesis = text(&input.hypothesis, "hypothesis", 2_000, &mut errors);
    let description = text(&input.description, "description", 10_000, &mut errors);
    let owner = text(&input.owner, "owner", 200, &mut errors);

    let (layer, unit) = layer_and_unit(input, known, &mut errors);
    let traffic_bp = percent_to_bp(
        input.traffic_percent.unwrap_or(100.0),
        "traffic_percent",
        &mut errors,
    );
    if let Some(condition) = &input.targeting
        && !condition.is_null()
    {
        targeting::validate(condition, "targeting", &known.segments, &mut errors);
    }

    let (variants, names) = validate_variants(&input.variants, &mut errors);

    validate_metrics(input, known, &mut errors);

    let holdout_id = match &input.holdout {
        None => None,
        Some(reference) => {
            let found = known.holdouts.get(reference).cloned();
            match &found {
                None => errors.push(FieldError::new(
                    "holdout",
                    format!("unknown holdout `{reference}`"),
                )),
                Some(id) if known.ended_holdouts.contains(id) => errors.push(FieldError::new(
                    "holdout",
                    format!("holdout `{reference}` has ended: it holds nobody"),
                )),
                Some(id) if known.holdout_units.get(id).is_some_and(|u| *u != unit) => {
                    errors.push(FieldError::new(
                        "holdout",
                        format!(
                            "holdout `{reference}` compares `{}` units; the experiments that respect it must randomize by the same unit",
                            known.holdout_units[id]
                        ),
                    ))
                }
                Some(_) => {}
            }
            found
        }
    };
    validate_forced(&input.forced, &names, &mut errors);
    if input.switchback_period_s == Some(0) {
        errors.push(FieldError::new(
            "switchback_period_s",
            "must be at least 1 second",
        ));
    }
    let analysis = input.analysis.clone().unwrap_or_default();
    validate_analysis(&analysis, &input.guardrail_metrics, &mut errors);
    validate_dimensions(&input.dimensions, &mut errors);

    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    Ok(ExperimentSpec {
        key,
        name,
        hypothesis,
        description,
        owner,
        layer_id: layer.map(|(id, _)| id),
        traffic_bp,
        unit,
        targeting: input.targeting.clone().filter(|t| !t.is_null()),
        variants,
        primary_metric: input.primary_metric.clone(),
        secondary_metrics: input.secondary_metrics.clone(),
        guardrail_metrics: input.guardrail_metrics.clone(),
        holdout_id,
        forced: input.forced.clone(),
        switchback_period_s: input.switchback_period_s,
        analysis,
        dimensions: input.dimensions.clone(),
    })
}

/// The experiment's layer (id, unit) and unit: the unit defaults to the layer's, and must
/// equal it.
fn layer_and_unit(
    input: &ExperimentInput,
    known: &References,
    errors: &mut Vec<FieldError>,
) -> (Option<(String, String)>, String) {
    let layer = match &input.layer {
        None => None,
        Some(reference) => match known.layers.get(reference) {
            Some(layer) => Some(layer.clone()),
            None => {
                errors.push(FieldError::new(
                    "layer",
                    format!("unknown layer `{reference}`"),
                ));
                None
            }
        },
    };
    let unit = input
        .unit
        .clone()
        .or_else(|| layer.as_ref().map(|(_, unit)| unit.clone()))
        .unwrap_or_else(|| "user_id".to_string());
    if !targeting::valid_attribute(&unit) {
        errors.push(FieldError::new("unit", "must be an attribute name"));
    }
    if let Some((_, layer_unit)) = &layer
        && *layer_unit != unit
    {
        errors.push(FieldError::new(
            "unit",
            format!(
                "the layer randomizes by `{layer_unit}`; its experiments must use the same unit"
            ),
        ));
    }
    (layer, unit)
}

/// Variants: 2 to `MAX_VARIANTS`, unique names, weights summing to 100 %, small configs.
/// Returns them with their names.
fn validate_variants<'a>(
    inputs: &'a [VariantInput],
    errors: &mut Vec<FieldError>,
) -> (Vec<VariantSpec>, HashSet<&'a str>) {
    if inputs.len() < 2 || inputs.len() > MAX_VARIANTS {
        errors.push(FieldError::new(
            "variants",
            format!("2 to {MAX_VARIANTS} variants (the first is the control)"),
        ));
    }
    let mut names = HashSet::new();
    let mut total_bp: u32 = 0;
    let variants: Vec<VariantSpec> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("variants[{i}]");
            check_key(&v.name, &format!("{field}.name"), errors);
            if !names.insert(v.name.as_str()) {
                errors.push(FieldError::new(
                    format!("{field}.name"),
                    "variant names must be unique",
                ));
            }
            let weight_bp = percent_to_bp(v.weight, &format!("{field}.weight"), errors);
            total_bp += u32::from(weight_bp);
            if v.config.to_string().len() > MAX_CONFIG_BYTES {
                errors.push(FieldError::new(
                    format!("{field}.config"),
                    "at most 16 KiB of JSON",
                ));
            }
            VariantSpec {
                name: v.name.clone(),
                weight_bp,
                config: v.config.clone(),
            }
        })
        .collect();
    if !inputs.is_empty() && total_bp != 10_000 {
        errors.push(FieldError::new(
            "variants",
            format!(
                "weights must sum to 100, not {}",
                f64::from(total_bp) / 100.0
            ),
        ));
    }

    (variants, names)
}

/// Primary, secondary and guardrail metrics: defined in the catalog, each listed once.
fn validate_metrics(input: &ExperimentInput, known: &References, errors: &mut Vec<FieldError>) {
    let mut metric_names = HashSet::new();
    let mut check_metric = |metric: &str, field: String, errors: &mut Vec<FieldError>| {
        if !known.metrics.contains(metric) {
            errors.push(FieldError::new(
                field,
                format!("unknown metric `{metric}`; define it under /api/v1/metrics"),
            ));
        }
        if !metric_names.insert(metric.to_string()) {
            errors.push(FieldError::new(
                "metrics",
                format!("metric `{metric}` is listed twice"),
            ));
        }
    };
    check_metric(&input.primary_metric, "primary_metric".into(), errors);
    for (i, m) in input.secondary_metrics.iter().enumerate() {
        check_metric(m, format!("secondary_metrics[{i}]"), errors);
    }
    let mut guardrails = HashSet::new();
    for (i, m) in input.guardrail_metrics.iter().enumerate() {
        if !known.metrics.contains(m) {
            errors.push(FieldError::new(
                format!("guardrail_metrics[{i}]"),
                format!("unknown metric `{m}`"),
            ));
        }
        if !guardrails.insert(m) {
            errors.push(FieldError::new(
                format!("guardrail_metrics[{i}]"),
                "listed twice",
            ));
        }
    }
}

/// Forced assignments name existing variants, for non-empty unit values.
fn validate_forced(
    forced: &BTreeMap<String, String>,
    names: &HashSet<&str>,
    errors: &mut Vec<FieldError>,
) {
    for (unit_value, variant) in forced {
        if !names.contains(variant.as_str()) {
            errors.push(FieldError::new(
                format!("forced.{unit_value}"),
                format!("unknown variant `{variant}`"),
            ));
        }
        if unit_value.is_empty() {
            errors.push(FieldError::new("forced", "unit values must not be empty"));
        }
    }
}

fn validate_analysis(analysis: &Analysis, guardrails: &[String], errors: &mut Vec<FieldError>) {
    if !(analysis.alpha > 0.0 && analysis.alpha <= 0.5) {
        errors.push(FieldError::new("analysis.alpha", "must be in (0, 0.5]"));
    }
    let planned = analysis.planned_units_per_variant;
    match analysis.mode {
        AnalysisMode::FixedHorizon if planned.is_none() => errors.push(FieldError::new(
            "analysis.planned_units_per_variant",
            "fixed_horizon needs a planned sample size (see POST /api/v1/analysis/power)",
        )),
        AnalysisMode::GroupSequential => {
            if planned.is_none() {
                errors.push(FieldError::new(
                    "analysis.planned_units_per_variant",
                    "group_sequential needs a planned sample size",
                ));
            }
            if !analysis.looks.is_some_and(|k| (2..=20).contains(&k)) {
                errors.push(FieldError::new(
                    "analysis.looks",
                    "group_sequential needs 2 to 20 planned looks",
                ));
            }
        }
        _ => {}
    }
    if planned == Some(0) {
        errors.push(FieldError::new(
            "analysis.planned_units_per_variant",
            "must be positive",
        ));
    }
    if analysis
        .tuning_units
        .is_some_and(|t| !(t.is_finite() && t > 0.0))
    {
        errors.push(FieldError::new("analysis.tuning_units", "must be positive"));
    }
    if !analysis.min_duration_days.is_multiple_of(7) || analysis.min_duration_days > 364 {
        errors.push(FieldError::new(
            "analysis.min_duration_days",
            "must be whole weeks (0, 7, 14, …) up to 364",
        ));
    }
    for (metric, margin) in &analysis.guardrail_margins {
        if !guardrails.contains(metric) {
            errors.push(FieldError::new(
                format!("analysis.guardrail_margins.{metric}"),
                "is not one of the experiment's guardrail metrics",
            ));
        } else if !(margin.is_finite() && *margin > 0.0 && *margin <= 1.0) {
            errors.push(FieldError::new(
                format!("analysis.guardrail_margins.{metric}"),
                "must be a relative margin in (0, 1]",
            ));
        }
    }
}

/// Checks that `next` only changes what may change in `status`. Running and paused
/// experiments accept changes that cannot move an already-assigned unit or change the test
/// being read: texts, secondary and guardrail metrics, QA overrides and a traffic increase.
/// Completed and archived ones only accept texts.
pub fn check_edit(
    status: Status,
    current: &ExperimentSpec,
    next: &ExperimentSpec,
) -> Result<(), Error> {
    if next.key != current.key {
        return Err(Error::conflict(
            "not_editable",
            "an experiment's key never changes",
        ));
    }
    if status == Status::Draft {
        return Ok(());
    }
    let refuse = |what: &str, why: &str| {
        Err(Error::conflict(
            "not_editable",
            format!(
                "{what} cannot change while the experiment is {}: {why}",
                status.as_str()
            ),
        ))
    };
    let reassigns = "it would move units that were already assigned";
    if matches!(status, Status::Completed | Status::Archived) {
        let texts_only = ExperimentSpec {
            name: next.name.clone(),
            hypothesis: next.hypothesis.clone(),
            description: next.description.clone(),
            owner: next.owner.clone(),
            ..current.clone()
        };
        if texts_only != *next {
            return refuse(
                "only the name, hypothesis, description and owner",
                "the experiment has ended",
            );
        }
        return Ok(());
    }
    if next.variants != current.variants {
        return refuse("variants and weights", reassigns);
    }
    if next.unit != current.unit {
        return refuse("the unit", reassigns);
    }
    if next.layer_id != current.layer_id {
        return refuse("the layer", reassigns);
    }
    if next.targeting != current.targeting {
        return refuse(
            "targeting",
            "it would change who is in the experiment mid-test; start a new experiment",
        );
    }
    if next.holdout_id != current.holdout_id {
        return refuse("the holdout", reassigns);
    }
    if next.switchback_period_s != current.switchback_period_s {
        return refuse("the switchback period", reassigns);
    }
    if next.primary_metric != current.primary_metric {
        return refuse(
            "the primary metric",
            "changing the decision metric mid-test invalidates the analysis",
        );
    }
    if next.secondary_metrics != current.secondary_metrics {
        return refuse(
            "the secondary metrics",
            "with the primary they form the family every decision is corrected over, and \
             changing it after results were seen changes those decisions",
        );
    }
    if let Some(removed) = current
        .guardrail_metrics
        .iter()
        .find(|g| !next.guardrail_metrics.contains(g))
    {
        return refuse(
            &format!("removing the guardrail `{removed}`"),
            "the guardrails share alpha, so removing one after seeing results would loosen \
             the others' checks (adding guardrails is allowed)",
        );
    }
    if next.analysis != current.analysis {
        return refuse(
            "the analysis settings",
            "choosing the test (mode, alpha, correction, plan) after results were seen \
             inflates its false positives; start a new experiment to analyse differently",
        );
    }
    if next.traffic_bp < current.traffic_bp {
        return refuse(
            "traffic",
            "decreasing it would drop units already in the experiment (increasing is allowed)",
        );
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SlotRange {
    pub start_percent: f64,
    pub end_percent: f64,
}

/// An experiment as the API returns it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Experiment {
    pub id: String,
    pub key: String,
    pub name: String,
    pub hypothesis: String,
    pub description: String,
    pub owner: String,
    pub status: Status,
    /// Why the status last changed when it was not a plain request (e.g. a guardrail).
    pub status_reason: Option<String>,
    /// Layer key.
    pub layer: Option<String>,
    pub layer_id: Option<String>,
    pub traffic_percent: f64,
    pub unit: String,
    #[schema(value_type = Object, nullable = true)]
    pub targeting: Option<Json>,
    pub variants: Vec<VariantInput>,
    pub primary_metric: String,
    pub secondary_metrics: Vec<String>,
    pub guardrail_metrics: Vec<String>,
    /// Holdout key.
    pub holdout: Option<String>,
    pub holdout_id: Option<String>,
    pub forced: BTreeMap<String, String>,
    pub switchback_period_s: Option<u32>,
    pub analysis: Analysis,
    pub dimensions: Vec<String>,
    pub shipped_variant: Option<String>,
    /// Slots owned in the layer while running or paused.
    pub slot_ranges: Vec<SlotRange>,
    /// Increases with every change; send it in `If-Match` to update safely.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    #[serde(skip)]
    pub traffic_bp: u16,
    #[serde(skip)]
    pub weights_bp: Vec<u16>,
    #[serde(skip)]
    pub slots: Vec<(u16, u16)>,
    #[serde(skip)]
    pub created_at_ms: i64,
    #[serde(skip)]
    pub started_at_ms: Option<i64>,
    #[serde(skip)]
    pub ended_at_ms: Option<i64>,
}

impl Experiment {
    /// A running experiment as the results see it, with nothing a store would add: for
    /// analysing rollups outside the service (the decision simulation, tests).
    /// `variants` are (name, weight in basis points), control first.
    pub fn running(
        key: &str,
        variants: &[(&str, u16)],
        primary_metric: &str,
        guardrail_metrics: &[&str],
        analysis: Analysis,
        started_at_ms: i64,
    ) -> Self {
        Experiment {
            id: format!("id-{key}"),
            key: key.into(),
            name: key.into(),
            hypothesis: String::new(),
            description: String::new(),
            owner: String::new(),
            status: Status::Running,
            status_reason: None,
            layer: None,
            layer_id: None,
            traffic_percent: 100.0,
            unit: "user_id".into(),
            targeting: None,
            variants: variants
                .iter()
                .map(|(name, weight_bp)| VariantInput {
                    name: (*name).into(),
                    weight: f64::from(*weight_bp) / 100.0,
                    config: Json::Null,
                })
                .collect(),
            primary_metric: primary_metric.into(),
            secondary_metrics: Vec::new(),
            guardrail_metrics: guardrail_metrics.iter().map(|g| g.to_string()).collect(),
            holdout: None,
            holdout_id: None,
            forced: BTreeMap::new(),
            switchback_period_s: None,
            analysis,
            dimensions: Vec::new(),
            shipped_variant: None,
            slot_ranges: Vec::new(),
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            started_at: None,
            ended_at: None,
            traffic_bp: 10_000,
            weights_bp: variants.iter().map(|(_, w)| *w).collect(),
            slots: Vec::new(),
            created_at_ms: started_at_ms,
            started_at_ms: Some(started_at_ms),
            ended_at_ms: None,
        }
    }

    pub fn spec(&self) -> ExperimentSpec {
        ExperimentSpec {
            key: self.key.clone(),
            name: self.name.clone(),
            hypothesis: self.hypothesis.clone(),
            description: self.description.clone(),
            owner: self.owner.clone(),
            layer_id: self.layer_id.clone(),
            traffic_bp: self.traffic_bp,
            unit: self.unit.clone(),
            targeting: self.targeting.clone(),
            variants: self
                .variants
                .iter()
                .zip(&self.weights_bp)
                .map(|(v, &weight_bp)| VariantSpec {
                    name: v.name.clone(),
                    weight_bp,
                    config: v.config.clone(),
                })
                .collect(),
            primary_metric: self.primary_metric.clone(),
            secondary_metrics: self.secondary_metrics.clone(),
            guardrail_metrics: self.guardrail_metrics.clone(),
            holdout_id: self.holdout_id.clone(),
            forced: self.forced.clone(),
            switchback_period_s: self.switchback_period_s,
            analysis: self.analysis.clone(),
            dimensions: self.dimensions.clone(),
        }
    }

    /// The experiment as a create body, into which a PATCH is merged.
    pub fn input(&self) -> ExperimentInput {
        ExperimentInput {
            key: Some(self.key.clone()),
            name: Some(self.name.clone()),
            hypothesis: Some(self.hypothesis.clone()),
            description: Some(self.description.clone()),
            owner: Some(self.owner.clone()),
            layer: self.layer_id.clone(),
            traffic_percent: Some(self.traffic_percent),
            unit: Some(self.unit.clone()),
            targeting: self.targeting.clone(),
            variants: self.variants.clone(),
            primary_metric: self.primary_metric.clone(),
            secondary_metrics: self.secondary_metrics.clone(),
            guardrail_metrics: self.guardrail_metrics.clone(),
            holdout: self.holdout_id.clone(),
            forced: self.forced.clone(),
            switchback_period_s: self.switchback_period_s,
            analysis: Some(self.analysis.clone()),
            dimensions: self.dimensions.clone(),
        }
    }

    pub fn control(&self) -> &str {
        self.variants.first().map_or("", |v| v.name.as_str())
    }

    /// Days since start, up to the end for finished experiments.
    pub fn days_running(&self, now_ms: i64) -> f64 {
        match self.started_at_ms {
            Some(start) => {
                (self.ended_at_ms.unwrap_or(now_ms) - start).max(0) as f64 / clock::DAY_MS as f64
            }
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> References {
        References {
            layers: HashMap::from([("checkout_ui".into(), ("layer-1".into(), "user_id".into()))]),
            holdouts: HashMap::new(),
            ended_holdouts: HashSet::new(),
            holdout_units: HashMap::new(),
            metrics: ["conversion", "crash_rate"]
                .into_iter()
                .map(String::from)
                .collect(),
            segments: HashMap::new(),
        }
    }

    fn input(body: Json) -> ExperimentInput {
        serde_json::from_value(body).expect("input shape")
    }

    #[test]
    fn the_seed_body_validates() {
        let spec = validate(
            &input(json!({
                "key": "checkout_button_color", "name": "checkout_button_color",
                "hypothesis": "Green button increases conversion by 5%", "layer": "checkout_ui",
                "traffic_percent": 20, "targeting": {"all": [{"attr": "country", "op": "in", "value": ["US", "CA"]}]},
                "variants": [{"name": "control", "weight": 50, "config": {"button_color": "blue"}},
                             {"name": "treatment", "weight": 50, "config": {"button_color": "green"}}],
                "primary_metric": "conversion", "guardrail_metrics": ["crash_rate"], "holdout": null, "forced": {}
            })),
            &known(),
        )
        .expect("valid");
        assert_eq!(spec.traffic_bp, 2_000);
        assert_eq!(spec.layer_id.as_deref(), Some("layer-1"));
        assert_eq!(spec.analysis.mode, AnalysisMode::Sequential);
    }

    #[test]
    fn collects_every_problem() {
        let Err(Error::Invalid(errors)) = validate(
            &input(json!({
                "key": "bad key", "traffic_percent": 120.5, "layer": "nope",
                "variants": [{"name": "a", "weight": 33.333}, {"name": "a", "weight": 50}],
                "primary_metric": "revenue", "forced": {"u1": "zzz"},
                "analysis": {"mode": "fixed_horizon", "alpha": 0.9}
            })),
            &known(),
        ) else {
            panic!("expected 422")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "key",
            "layer",
            "traffic_percent",
            "variants[0].weight",
            "variants[1].name",
            "variants",
            "primary_metric",
            "forced.u1",
            "analysis.alpha",
            "analysis.planned_units_per_variant",
        ] {
            assert!(fields.contains(&field), "no error for {field}: {errors:#?}");
        }
    }

    #[test]
    fn lifecycle() {
        use Action::*;
        assert_eq!(transition(Status::Draft, Start).ok(), Some(Status::Running));
        assert_eq!(
            transition(Status::Running, Pause).ok(),
            Some(Status::Paused)
        );
        assert_eq!(
            transition(Status::Paused, Resume).ok(),
            Some(Status::Running)
        );
        assert_eq!(
            transition(Status::Paused, Complete).ok(),
            Some(Status::Completed)
        );
        assert_eq!(
            transition(Status::Completed, Archive).ok(),
            Some(Status::Archived)
        );
        for (from, action) in [
            (Status::Draft, Pause),
            (Status::Running, Start),
            (Status::Completed, Resume),
            (Status::Archived, Start),
            (Status::Draft, Archive),
        ] {
            assert!(transition(from, action).is_err(), "{from:?} {action:?}");
        }
    }
}
