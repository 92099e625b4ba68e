//! Plans: what the pipeline needs of an experiment to attribute and roll up its events.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::clock;
use crate::model::catalog::{Cap, Metric, MetricKind, Window};
use crate::model::experiment::{Experiment, Status};
use crate::model::filter::Filter;

/// How one experiment's events are attributed and rolled up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentPlan {
    pub variants: Vec<String>,
    pub unit_attribute: String,
    pub switchback_period_s: Option<u32>,
    pub metrics: Vec<MetricPlan>,
    /// When the analysis closes: the end of a completed experiment or an ended holdout.
    /// Events stamped later count nowhere, exposures or metric events, however late they
    /// arrive: from its end every unit gets what shipped (or, a holdout's held units,
    /// everything), so they would measure that rather than the arm the unit had. Not in
    /// the fingerprint: ending adds no event to rollups already made, it only stops adding.
    #[serde(skip)]
    pub ends_at_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricPlan {
    pub key: String,
    pub kind: MetricKind,
    pub event_type: String,
    pub denominator: Option<String>,
    /// The quantile of a quantile metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The cap on each unit's value, applied when rollups are read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<Cap>,
    /// The window of events counted after the exposure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The filter's JSON text; in the fingerprint, so that a changed filter rebuilds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// What the unit's per-metric totals are kept under: the event type, or for a filtered
    /// metric the event type and the filter's id (`purchase?1f0c…`; event types cannot
    /// contain `?`), so that the totals of the matching events are apart from the others;
    /// a window adds `@delay-length` in seconds (`purchase@0-259200`).
    #[serde(skip)]
    pub measure: String,
    /// The same for a ratio's denominator (windowed like the numerator, never filtered).
    #[serde(skip)]
    pub denominator_measure: Option<String>,
    #[serde(skip)]
    pub compiled_filter: Option<Filter>,
}

/// A filter that matches no event: what a stored filter that no longer compiles counts
/// (validation keeps such filters out, so only a damaged row could produce one).
fn match_nothing() -> Filter {
    Filter::compile(&serde_json::json!({"any": []})).expect("an empty `any` compiles")
}

impl ExperimentPlan {
    /// Whether an event stamped `ts_ms` is within the analysis (before its end, if any).
    pub fn counts_at(&self, ts_ms: i64) -> bool {
        self.ends_at_ms.is_none_or(|end| ts_ms <= end)
    }

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
        let windowed = |measure: String| match &m.window {
            Some(w) => format!("{measure}@{}-{}", w.delay_s, w.length_s),
            None => measure,
        };
        let measure = windowed(match &compiled_filter {
            Some(filter) => format!("{}?{}", m.event_type, filter.id()),
            None => m.event_type.clone(),
        });
        MetricPlan {
            key: m.key.clone(),
            kind: m.kind,
            event_type: m.event_type.clone(),
            denominator: m.denominator_event_type.clone(),
            quantile: (m.kind == MetricKind::Quantile).then(|| m.quantile.unwrap_or(0.5)),
            cap: m.cap,
            window: m.window,
            filter: compiled_filter.as_ref().map(|f| f.text().to_string()),
            measure,
            denominator_measure: m.denominator_event_type.clone().map(windowed),
            compiled_filter,
        }
    }
}

/// A measure the pipeline keeps per unit beyond the totals of each event type: the totals
/// of the events a filter matches or a window after the exposure holds, and (`bucketed`) the
/// unit's events of the measure counted per value bucket (`bucket_measure`), which quantile
/// metrics are computed from.
#[derive(Clone, Copy, Debug)]
pub struct DerivedMeasure<'p> {
    pub event_type: &'p str,
    pub measure: &'p str,
    pub filter: Option<&'p Filter>,
    pub window: Option<Window>,
    pub bucketed: bool,
}

impl DerivedMeasure<'_> {
    /// Whether the measure's own totals are kept (not those of its event type).
    pub fn own_totals(&self) -> bool {
        self.filter.is_some() || self.window.is_some()
    }

    /// Whether an event at `ts_ms`, for a unit first exposed at `first_exposure_ms`, falls
    /// in the measure's window (every event does without one).
    pub fn in_window(&self, ts_ms: i64, first_exposure_ms: i64) -> bool {
        self.window
            .is_none_or(|w| w.holds(ts_ms - first_exposure_ms))
    }
}

/// The key under which a unit's events of a measure in one value bucket are counted
/// (`latency_ms#65600`; event types and filter ids cannot contain `#`).
pub fn bucket_measure(measure: &str, bucket: i32) -> String {
    format!("{measure}#{bucket}")
}

/// The prefix of every bucket key of a measure.
pub fn bucket_prefix(measure: &str) -> String {
    format!("{measure}#")
}

impl ExperimentPlan {
    /// The plan's derived measures, each once.
    pub fn derived_measures<'a>(&'a self) -> Vec<DerivedMeasure<'a>> {
        let mut out: Vec<DerivedMeasure<'a>> = Vec::new();
        let mut add = |d: DerivedMeasure<'a>| match out.iter_mut().find(|k| k.measure == d.measure)
        {
            Some(known) => known.bucketed |= d.bucketed,
            None => out.push(d),
        };
        for m in &self.metrics {
            let bucketed = m.kind == MetricKind::Quantile;
            if m.compiled_filter.is_some() || m.window.is_some() || bucketed {
                add(DerivedMeasure {
                    event_type: &m.event_type,
                    measure: &m.measure,
                    filter: m.compiled_filter.as_ref(),
                    window: m.window,
                    bucketed,
                });
            }
            if let (Some(event_type), Some(measure), Some(_)) =
                (&m.denominator, &m.denominator_measure, m.window)
            {
                add(DerivedMeasure {
                    event_type,
                    measure,
                    filter: None,
                    window: m.window,
                    bucketed: false,
                });
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
        ends_at_ms: match e.status {
            Status::Completed | Status::Archived => e.ended_at_ms,
            Status::Draft | Status::Running | Status::Paused => None,
        },
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
