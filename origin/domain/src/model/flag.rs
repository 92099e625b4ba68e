//! Feature flags: a kill switch, ordered rules with conditions and gradual rollouts, and
//! values that may come from an experiment's variants.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{check_object_key, check_text, percent_to_bp, targeting};
use crate::{Error, FieldError};

/// Takes the flag's value from the unit's variant in an experiment: the whole variant
/// config, or one key of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromExperiment {
    /// Experiment key or id.
    pub experiment: String,
    /// A top-level key of the variant configs; absent means the whole config.
    #[serde(default)]
    pub config_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRule {
    #[serde(default)]
    #[schema(value_type = Object, nullable = true)]
    pub condition: Option<Json>,
    /// Percent of matching units that get the value (a gradual rollout). Default 100.
    #[serde(default = "hundred")]
    pub rollout_percent: f64,
    /// The value served (any JSON); exactly one of `value` and `from_experiment`.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub value: Option<Json>,
    #[serde(default)]
    pub from_experiment: Option<FromExperiment>,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagInput {
    pub key: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `false` is the kill switch: everyone gets `off_value`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Rollout unit attribute. Default `user_id`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Served while disabled. Default `false`.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub off_value: Option<Json>,
    /// Served when no rule matches. Default: the off value.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub default_value: Option<Json>,
    #[serde(default)]
    pub rules: Vec<FlagRule>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlagSpec {
    pub key: String,
    pub description: String,
    pub enabled: bool,
    pub unit: String,
    pub off_value: Json,
    pub default_value: Json,
    pub rules: Vec<FlagRule>,
}

const MAX_RULES: usize = 100;
const MAX_VALUE_BYTES: usize = 16 * 1024;

/// `experiments` maps experiment keys and ids to the experiment's key.
pub fn validate(
    input: &FlagInput,
    segments: &HashMap<String, u32>,
    experiments: &HashMap<String, String>,
) -> Result<FlagSpec, Error> {
    let mut errors = Vec::new();
    check_object_key(&input.key, "key", &mut errors);
    let description = input.description.clone().unwrap_or_default();
    check_text(&description, "description", 10_000, &mut errors);
    let unit = input.unit.clone().unwrap_or_else(|| "user_id".into());
    if !targeting::valid_attribute(&unit) {
        errors.push(FieldError::new("unit", "must be an attribute name"));
    }
    let off_value = input.off_value.clone().unwrap_or(Json::Bool(false));
    let default_value = input
        .default_value
        .clone()
        .unwrap_or_else(|| off_value.clone());
    for (field, value) in [("off_value", &off_value), ("default_value", &default_value)] {
        if value.to_string().len() > MAX_VALUE_BYTES {
            errors.push(FieldError::new(field, "at most 16 KiB of JSON"));
        }
    }
    if input.rules.len() > MAX_RULES {
        errors.push(FieldError::new(
            "rules",
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let mut rules = Vec::with_capacity(input.rules.len());
    for (i, rule) in input.rules.iter().enumerate() {
        let field = format!("rules[{i}]");
        if let Some(condition) = rule.condition.as_ref().filter(|c| !c.is_null()) {
            targeting::validate(
                condition,
                &format!("{field}.condition"),
                segments,
                &mut errors,
            );
        }
        percent_to_bp(
            rule.rollout_percent,
            &format!("{field}.rollout_percent"),
            &mut errors,
        );
        let mut rule = rule.clone();
        match (&rule.value, &mut rule.from_experiment) {
            (Some(value), None) => {
                if value.to_string().len() > MAX_VALUE_BYTES {
                    errors.push(FieldError::new(
                        format!("{field}.value"),
                        "at most 16 KiB of JSON",
                    ));
                }
            }
            (None, Some(from)) => match experiments.get(&from.experiment) {
                // Stored by key, which never changes.
                Some(key) => from.experiment = key.clone(),
                None => errors.push(FieldError::new(
                    format!("{field}.from_experiment.experiment"),
                    format!("unknown experiment `{}`", from.experiment),
                )),
            },
            _ => errors.push(FieldError::new(
                field.clone(),
                "give exactly one of `value` and `from_experiment`",
            )),
        }
        rules.push(rule);
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    Ok(FlagSpec {
        key: input.key.clone(),
        description,
        enabled: input.enabled,
        unit,
        off_value,
        default_value,
        rules,
    })
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Flag {
    pub id: String,
    pub key: String,
    pub description: String,
    pub enabled: bool,
    pub unit: String,
    /// Any JSON.
    #[schema(value_type = serde_json::Value)]
    pub off_value: Json,
    /// Any JSON.
    #[schema(value_type = serde_json::Value)]
    pub default_value: Json,
    pub rules: Vec<FlagRule>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Flag {
    pub fn input(&self) -> FlagInput {
        FlagInput {
            key: self.key.clone(),
            description: Some(self.description.clone()),
            enabled: self.enabled,
            unit: Some(self.unit.clone()),
            off_value: Some(self.off_value.clone()),
            default_value: Some(self.default_value.clone()),
            rules: self.rules.clone(),
        }
    }
}
