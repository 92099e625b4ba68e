//! Plans: what the pipeline needs of an experiment to attribute and roll up its events.

use std::collections::{HashMap, HashSet};

use crate::clock;
use crate::model::catalog::{Metric, MetricKind};
use crate::model::experiment::Experiment;

/// How one experiment's events are attributed and rolled up.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentPlan {
    pub variants: Vec<String>,
    pub unit_attribute: String,
    pub switchback_period_s: Option<u32>,
    pub metrics: Vec<MetricPlan>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricPlan {
    pub key: String,
    pub kind: MetricKind,
    pub event_type: String,
    pub denominator: Option<String>,
}

impl ExperimentPlan {
    pub fn signature(&self) -> String {
        let keys: Vec<String> = self
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{}:{}:{}:{}",
                    m.key,
                    m.kind.as_str(),
                    m.event_type,
                    m.denominator.as_deref().unwrap_or("")
                )
            })
            .collect();
        keys.join(",")
    }
}

impl From<&Metric> for MetricPlan {
    fn from(m: &Metric) -> Self {
        MetricPlan {
            key: m.key.clone(),
            kind: m.kind,
            event_type: m.event_type.clone(),
            denominator: m.denominator_event_type.clone(),
        }
    }
}

/// How an experiment's events are attributed: its variants, unit and metrics (primary,
/// secondary, guardrails; each once), given the catalog's metrics by key.
pub fn plan_of(e: &Experiment, metrics: &HashMap<String, Metric>) -> ExperimentPlan {
    let mut keys: Vec<&String> = std::iter::once(&e.primary_metric)
        .chain(&e.secondary_metrics)
        .chain(&e.guardrail_metrics)
        .collect();
    let mut seen = HashSet::new();
    keys.retain(|k| seen.insert(*k));
    ExperimentPlan {
        variants: e.variants.iter().map(|v| v.name.clone()).collect(),
        unit_attribute: e.unit.clone(),
        switchback_period_s: e.switchback_period_s,
        metrics: keys
            .into_iter()
            .filter_map(|k| metrics.get(k).map(MetricPlan::from))
            .collect(),
    }
}

/// Whole days since the epoch (UTC).
pub fn day(ms: i64) -> i64 {
    ms.div_euclid(clock::DAY_MS)
}
