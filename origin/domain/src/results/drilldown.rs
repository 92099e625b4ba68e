//! Drill-downs: an experiment's results per value of a dimension (the unit's context
//! attribute at its first exposure, such as platform or country), with the statistics of
//! the whole results for each value, a correction across the whole drill-down, and a test
//! of whether the effect differs between the values (docs/statistics.md §14).
//!
//! Drill-downs are exploratory: the values were not chosen before the experiment, and the
//! more values and metrics one reads the likelier a chance difference is. They never feed
//! a decision; the experiment's own results do.

use std::collections::{BTreeMap, HashMap};

use abx_stats::heterogeneity::{self, Heterogeneity, SubgroupEffect};
use serde::Serialize;

use super::{
    Analysed, ComparisonView, Estimator, Group, MetricResult, comparison_view, correction,
    metric_roles, sequential_config,
};
use crate::model::catalog::{Metric, MetricKind};
use crate::model::experiment::{AnalysisMode, Experiment};
use crate::rollup::DimensionCell;

/// At most this many values are shown apart; the rest are merged into one group.
pub const MAX_TOP: usize = 50;
pub const DEFAULT_TOP: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// One value of the dimension.
    Value,
    /// The values beyond the top ones, merged.
    Other,
    /// Units whose first exposure did not carry the attribute.
    Missing,
}

/// The results of the units of one value (or of the merged rest).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DimensionGroup {
    pub kind: GroupKind,
    /// The value (absent for `other` and `missing`).
    pub value: Option<String>,
    /// For `other`: how many values it merges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_merged: Option<usize>,
    /// Units per variant.
    pub units: BTreeMap<String, u64>,
    pub metrics: Vec<MetricResult>,
}

/// Whether one metric's effect of one treatment differs between the groups.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HeterogeneityView {
    pub metric: String,
    pub variant: String,
    /// Cochran's Q over the groups' absolute effects (absent with fewer than two groups
    /// that have an estimate; `note` says why).
    #[schema(value_type = Option<Object>)]
    pub test: Option<Heterogeneity>,
    /// p below the experiment's alpha: "the effect differs by {dimension}".
    pub differs: bool,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DrillDown {
    pub experiment_id: String,
    pub experiment: String,
    pub dimension: String,
    /// Always true: read drill-downs as leads to test, not as decisions.
    pub exploratory: bool,
    pub note: String,
    /// The correction applied across every group × metric × treatment of this drill-down
    /// (the experiment's own correction method).
    pub comparisons_corrected: usize,
    pub groups: Vec<DimensionGroup>,
    pub heterogeneity: Vec<HeterogeneityView>,
}

/// One group's cells merged: units and sums per variant.
#[derive(Default)]
struct Merged {
    units: BTreeMap<String, u64>,
    sums: BTreeMap<(String, String), crate::rollup::Sums>,
}

impl Merged {
    fn add(&mut self, cell: &DimensionCell) {
        *self.units.entry(cell.variant.clone()).or_default() += cell.units;
        for (metric, sums) in &cell.metrics {
            self.sums
                .entry((cell.variant.clone(), metric.clone()))
                .or_default()
                .add(sums);
        }
    }

    fn group(&self, variant: &str, metric: &str) -> Group {
        Group {
            n: self.units.get(variant).copied().unwrap_or(0),
            s: self
                .sums
                .get(&(variant.to_string(), metric.to_string()))
                .copied()
                .unwrap_or_default(),
            q: None,
        }
    }

    fn total_units(&self) -> u64 {
        self.units.values().sum()
    }
}

/// The drill-down of an experiment by `dimension` from its cells: the `top` values with
/// the most units apart, the rest merged into `other`, and units without the attribute in
/// `missing`.
pub fn drill_down(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    dimension: &str,
    cells: &[DimensionCell],
    top: usize,
) -> DrillDown {
    let mut by_value: BTreeMap<Option<&str>, Merged> = BTreeMap::new();
    for cell in cells {
        by_value.entry(cell.value.as_deref()).or_default().add(cell);
    }
    let missing = by_value.remove(&None);
    let mut values: Vec<(&str, Merged)> = by_value
        .into_iter()
        .filter_map(|(value, merged)| Some((value?, merged)))
        .collect();
    // Most units first; ties by value, so the order is stable between reads.
    values.sort_by(|a, b| b.1.total_units().cmp(&a.1.total_units()).then(a.0.cmp(b.0)));
    let rest = values.split_off(values.len().min(top));
    let mut groups: Vec<(GroupKind, Option<String>, Option<usize>, Merged)> = values
        .into_iter()
        .map(|(value, merged)| (GroupKind::Value, Some(value.to_string()), None, merged))
        .collect();
    if !rest.is_empty() {
        let mut other = Merged::default();
        for (_, merged) in &rest {
            for (variant, units) in &merged.units {
                *other.units.entry(variant.clone()).or_default() += units;
            }
            for (key, sums) in &merged.sums {
                other.sums.entry(key.clone()).or_default().add(sums);
            }
        }
        groups.push((GroupKind::Other, None, Some(rest.len()), other));
    }
    if let Some(missing) = missing {
        groups.push((GroupKind::Missing, None, None, missing));
    }

    let analysis = &e.analysis;
    let sequential = sequential_config(e);
    let roles = metric_roles(e);
    let control = e.control();
    let mut out: Vec<DimensionGroup> = groups
        .iter()
        .map(|(kind, value, values_merged, merged)| DimensionGroup {
            kind: *kind,
            value: value.clone(),
            values_merged: *values_merged,
            units: e
                .variants
                .iter()
                .map(|v| {
                    (
                        v.name.clone(),
                        merged.units.get(&v.name).copied().unwrap_or(0),
                    )
                })
                .collect(),
            metrics: roles
                .iter()
                .filter_map(|(key, role)| {
                    // Quantile and capped metrics are not broken down: their figures need
                    // every unit's buckets or value (for the cap), which cells do not carry.
                    let metric = metrics
                        .get(key)
                        .filter(|m| m.kind != MetricKind::Quantile && m.cap.is_none())?;
                    let c = merged.group(control, key);
                    let comparisons = e
                        .variants
                        .iter()
                        .skip(1)
                        .map(|v| {
                            let t = merged.group(&v.name, key);
                            let analysed = Analysed {
                                metric,
                                control: &c,
                                treatment: &t,
                                alpha: analysis.alpha,
                                sequential: &sequential,
                                // Exploratory: CUPED wherever the group's data allow it.
                                estimator: Estimator::Cuped,
                            };
                            comparison_view(&v.name, &analysed)
                        })
                        .collect();
                    Some(MetricResult::of(metric, *role, comparisons))
                })
                .collect(),
        })
        .collect();
    let comparisons_corrected = correct(&mut out, e);
    let heterogeneity = heterogeneity_views(&out, analysis.alpha);
    DrillDown {
        experiment_id: e.id.clone(),
        experiment: e.key.clone(),
        dimension: dimension.to_string(),
        exploratory: true,
        note: format!(
            "Exploratory: results by `{dimension}` at each unit's first exposure. Effects that \
             differ between values are leads for a new experiment, not decisions; p-values are \
             corrected across all {} comparisons shown, and the experiment's own results decide.",
            out.iter()
                .map(|g| g.metrics.iter().map(|m| m.comparisons.len()).sum::<usize>())
                .sum::<usize>()
        ),
        comparisons_corrected,
        groups: out,
        heterogeneity,
    }
}

/// Corrects every comparison of the drill-down as one family, with the experiment's
/// method: the always-valid p-values in sequential mode (a drill-down may be read at any
/// time), the fixed-horizon ones otherwise. A comparison without a p-value counts as p = 1,
/// as in the results (docs/statistics.md §6). Returns the family's size.
fn correct(groups: &mut [DimensionGroup], e: &Experiment) -> usize {
    let sequential = e.analysis.mode == AnalysisMode::Sequential;
    let p_of = |c: &ComparisonView| {
        if sequential {
            c.sequential.map(|s| s.p_value)
        } else {
            c.p_value
        }
    };
    let raw: Vec<f64> = groups
        .iter()
        .flat_map(|g| &g.metrics)
        .flat_map(|m| &m.comparisons)
        .map(|c| p_of(c).unwrap_or(1.0))
        .collect();
    let adjusted = abx_stats::adjust_p_values(&raw, correction(e.analysis.correction));
    let mut adjusted = adjusted.into_iter();
    for c in groups
        .iter_mut()
        .flat_map(|g| &mut g.metrics)
        .flat_map(|m| &mut m.comparisons)
    {
        let Some(a) = adjusted.next() else { break };
        if p_of(c).is_some() {
            c.adjusted_p_value = Some(a);
            c.significant = a <= e.analysis.alpha;
        }
    }
    raw.len()
}

/// Per metric and treatment, Cochran's Q over the groups' absolute effects. The groups
/// hold disjoint units, so their estimates are independent.
fn heterogeneity_views(groups: &[DimensionGroup], alpha: f64) -> Vec<HeterogeneityView> {
    let Some(first) = groups.first() else {
        return Vec::new();
    };
    let mut views = Vec::new();
    for (i, metric) in first.metrics.iter().enumerate() {
        for (j, comparison) in metric.comparisons.iter().enumerate() {
            let effects: Vec<SubgroupEffect> = groups
                .iter()
                .filter_map(|g| g.metrics.get(i)?.comparisons.get(j)?.absolute)
                .map(|a| SubgroupEffect {
                    estimate: a.estimate,
                    std_error: a.std_error,
                })
                .collect();
            let (test, note) = match heterogeneity::cochran_q(&effects) {
                Ok(test) => (Some(test), None),
                Err(abx_stats::StatsError::InsufficientSample { .. }) => (
                    None,
                    Some("fewer than two values have an estimate of this effect yet".into()),
                ),
                Err(error) => (None, Some(super::describe(&error))),
            };
            views.push(HeterogeneityView {
                metric: metric.metric.clone(),
                variant: comparison.variant.clone(),
                differs: test.is_some_and(|t| t.p_value < alpha),
                test,
                note,
            });
        }
    }
    views
}
