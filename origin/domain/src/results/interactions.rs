//! Interactions between experiments that overlap: among units exposed to both of two
//! running experiments (in different layers, with the same unit), whether A's treatment
//! effect depends on B's variant, for each metric they share; BH-adjusted across pairs.

use std::collections::{BTreeSet, HashMap};

use abx_stats::interaction::{self, Cells};
use abx_stats::{Moments, Proportion};
use serde::Serialize;

use super::Interval;
use crate::model::catalog::{Metric, MetricKind};
use crate::model::experiment::Experiment;
use crate::rollup::InteractionCell;

#[derive(Serialize, utoipa::ToSchema)]
pub struct InteractionView {
    pub experiment_a: String,
    pub experiment_b: String,
    pub metric: String,
    pub shared_units: u64,
    /// A's treatment effect (first treatment vs control) among B's control and treatment.
    pub effect_in_b_control: f64,
    pub effect_in_b_treatment: f64,
    /// Difference of the two effects, with its test.
    pub interaction: Interval,
    pub z: f64,
    pub adjusted_p_value: f64,
    /// Adjusted p below 0.01.
    pub flagged: bool,
    /// Chi-squared test that assignment in A is independent of assignment in B.
    pub independence_chi2: f64,
    pub independence_p_value: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Interactions {
    pub items: Vec<InteractionView>,
}

/// The pairs of running experiments that can interact, with each metric (not a ratio) that
/// both analyse as primary or secondary. Experiments in one layer never overlap.
pub fn candidates<'a>(
    running: &'a [Experiment],
    metrics: &'a HashMap<String, Metric>,
) -> Vec<(&'a Experiment, &'a Experiment, &'a Metric)> {
    let mut out = Vec::new();
    for (i, a) in running.iter().enumerate() {
        for b in &running[i + 1..] {
            if a.layer_id.is_some() && a.layer_id == b.layer_id
                || a.unit != b.unit
                || a.variants.len() < 2
                || b.variants.len() < 2
            {
                continue;
            }
            let analysed = |e: &'a Experiment| -> BTreeSet<&'a String> {
                std::iter::once(&e.primary_metric)
                    .chain(&e.secondary_metrics)
                    .collect()
            };
            for key in analysed(a).intersection(&analysed(b)) {
                if let Some(metric) = metrics.get(*key).filter(|m| m.kind != MetricKind::Ratio) {
                    out.push((a, b, metric));
                }
            }
        }
    }
    out
}

/// The interaction of A's first treatment with B's on one metric, from the units both
/// exposed (per pair of variants); none when they share no unit or the test cannot be
/// computed. Its `adjusted_p_value` is the raw one until `adjust`.
pub fn analyse(
    a: &Experiment,
    b: &Experiment,
    metric: &Metric,
    cells: &[InteractionCell],
) -> Option<InteractionView> {
    let shared: u64 = cells.iter().map(|c| c.n).sum();
    if shared == 0 {
        return None;
    }
    let cell = |va: &str, vb: &str| {
        cells
            .iter()
            .find(|c| c.va == va && c.vb == vb)
            .map_or((0, 0.0, 0.0), |c| (c.n, c.sx, c.sxx))
    };
    let (a0, a1, b0, b1) = (
        &a.variants[0].name,
        &a.variants[1].name,
        &b.variants[0].name,
        &b.variants[1].name,
    );
    let result = match metric.kind {
        MetricKind::Conversion => {
            let p = |(n, s, _): (u64, f64, f64)| Proportion::new(n, s.round() as u64);
            interaction::interaction_proportions(
                &Cells {
                    a0_b0: p(cell(a0, b0)),
                    a1_b0: p(cell(a1, b0)),
                    a0_b1: p(cell(a0, b1)),
                    a1_b1: p(cell(a1, b1)),
                },
                0.05,
            )
        }
        _ => {
            let m = |(n, sum, sum_sq): (u64, f64, f64)| Moments { n, sum, sum_sq };
            interaction::interaction_means(
                &Cells {
                    a0_b0: m(cell(a0, b0)),
                    a1_b0: m(cell(a1, b0)),
                    a0_b1: m(cell(a0, b1)),
                    a1_b1: m(cell(a1, b1)),
                },
                0.05,
            )
        }
    }
    .ok()?;
    let table: Vec<Vec<u64>> = a
        .variants
        .iter()
        .map(|va| {
            b.variants
                .iter()
                .map(|vb| cell(&va.name, &vb.name).0)
                .collect()
        })
        .collect();
    let independence = interaction::assignment_independence(&table).ok();
    Some(InteractionView {
        experiment_a: a.key.clone(),
        experiment_b: b.key.clone(),
        metric: metric.key.clone(),
        shared_units: shared,
        effect_in_b_control: result.effect_in_b0,
        effect_in_b_treatment: result.effect_in_b1,
        interaction: (&result.interaction).into(),
        z: result.interaction.statistic,
        adjusted_p_value: result.interaction.p_value,
        flagged: false,
        independence_chi2: independence.map_or(0.0, |t| t.statistic),
        independence_p_value: independence.map_or(1.0, |t| t.p_value),
    })
}

/// Benjamini–Hochberg across all the pairs' tests; flags adjusted p below 0.01.
pub fn adjust(items: &mut [InteractionView]) {
    let raw: Vec<f64> = items.iter().map(|i| i.interaction.p_value).collect();
    let adjusted = abx_stats::adjust_p_values(&raw, abx_stats::Correction::BenjaminiHochberg);
    for (item, adjusted) in items.iter_mut().zip(adjusted) {
        item.adjusted_p_value = adjusted;
        item.flagged = adjusted < 0.01;
    }
}
