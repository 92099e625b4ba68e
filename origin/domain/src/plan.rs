//! Plans: what the pipeline needs of an experiment to attribute and roll up its events.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::clock;
use crate::model::catalog::{Metric, MetricKind};
use crate::model::experiment::Experiment;
use crate::model::filter::Filter;

/// How one experiment's events are attributed and rolled up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentPlan {
    pub variants: Vec<String>,
    pub unit_attribute: String,
    pub switchback_period_s: Option<u32>,
    pub metrics: Vec<MetricPlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricPlan {
    pub key: String,
    pub kind: MetricKind,
    pub event_type: String,
    pub denominator: Option<String>,
    /// The filter's JSON text; in the fingerprint, so that a changed filter rebuilds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// What the unit's per-metric totals are kept under: the event type, or for a filtered
    /// metric the event type and the filter's id (`purchase?1f0c…`; event types cannot
    /// contain `?`), so that the totals of the matching events are apart from the others.
    #[serde(skip)]
    pub measure: String,
    #[serde(skip)]
    pub compiled_filter: Option<Filter>,
}

/// A filter that matches no event: what a stored filter that no longer compiles counts
/// (validation keeps such filters out, so only a damaged row could produce one).
fn match_nothing() -> Filter {
    Filter::compile(&serde_json::json!({"any": []})).expect("an empty `any` compiles")
}

impl ExperimentPlan {
    /// The plan as text, stored beside rollups computed by it: rollups serve only the plan
    /// that made them (a metric added since, say, would be missing from them), so a reader
    /// compares this with its own plan's, and the pipelines rebuild when they differ.
    pub fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<&Metric> for MetricPlan {
    fn from(m: &Metric) -> Self {
        let compiled_filter = m
            .filter
            .as_ref()
            .map(|f| Filter::compile(f).unwrap_or_else(|_| match_nothing()));
        let measure = match &compiled_filter {
            Some(filter) => format!("{}?{}", m.event_type, filter.id()),
            None => m.event_type.clone(),
        };
        MetricPlan {
            key: m.key.clone(),
            kind: m.kind,
            event_type: m.event_type.clone(),
            denominator: m.denominator_event_type.clone(),
            filter: compiled_filter.as_ref().map(|f| f.text().to_string()),
            measure,
            compiled_filter,
        }
    }
}

impl ExperimentPlan {
    /// The plan's filtered measures (each once): event type, measure key and filter.
    pub fn filtered_measures(&self) -> Vec<(&str, &str, &Filter)> {
        let mut out: Vec<(&str, &str, &Filter)> = Vec::new();
        for m in &self.metrics {
            if let Some(filter) = &m.compiled_filter
                && !out.iter().any(|(_, measure, _)| *measure == m.measure)
            {
                out.push((&m.event_type, &m.measure, filter));
            }
        }
        out
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

/// The analysis unit of a switchback experiment: the unit within one period, numbered as
/// abx-core numbers periods. The warehouse's SQL (`ClickHouse::unit_expression` in
/// abx-origin-pipeline) writes the same key.
pub fn switchback_cell(unit_key: &str, ts_ms: i64, period_s: u32) -> String {
    format!(
        "{unit_key}@{}",
        ts_ms.div_euclid(1_000).div_euclid(i64::from(period_s))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_follow_the_core_period_arithmetic() {
        assert_eq!(
            switchback_cell("city:paris", 3_600_000 * 5 + 10, 3_600),
            "city:paris@5"
        );
        assert_eq!(switchback_cell("city:paris", -1, 3_600), "city:paris@-1");
    }
}
