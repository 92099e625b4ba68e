//! One pipeline batch: the state of the units it touches, loaded in bulk, updated in memory
//! in log order, and written back in bulk. Rollups change only by exact deltas: when a
//! unit's metric value moves from (x, y, c) to (x', y', c'), the variant's sums move by
//! x' − x, x'² − x², and so on, so totals stay exact however events interleave.

// Fx hashing: these maps live for one batch and hash millions of short keys; SipHash's
// flooding resistance buys nothing here and costs a measurable share of the batch.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use sqlx::AnyConnection;

use super::cache::UnitCache;
use super::{ExperimentPlan, Plans, day};
use crate::events::Kind;
use crate::model::catalog::MetricKind;
use crate::store::events::{self as event_store, Exposure, Logged, Sums, Totals};

/// A unit's metric values per metric of a plan: (x, y, c).
type Values = Vec<(f64, f64, f64)>;

#[derive(Default)]
pub(super) struct UnitState {
    /// Experiment id → exposure, and whether it changed in this batch.
    pub(super) exposures: HashMap<String, (Exposure, bool)>,
    /// Experiment id → event type → totals, and whether they changed.
    pub(super) totals: HashMap<String, HashMap<String, (Totals, bool)>>,
}

impl UnitState {
    /// The same state with nothing marked changed: what a batch starts from when the unit's
    /// state comes from the batch before it, which writes those changes itself.
    fn unchanged_copy(&self) -> UnitState {
        UnitState {
            exposures: self
                .exposures
                .iter()
                .map(|(experiment, (exposure, _))| (experiment.clone(), (exposure.clone(), false)))
                .collect(),
            totals: self
                .totals
                .iter()
                .map(|(experiment, by_type)| {
                    let by_type = by_type
                        .iter()
                        .map(|(event_type, (t, _))| (event_type.clone(), (*t, false)))
                        .collect();
                    (experiment.clone(), by_type)
                })
                .collect(),
        }
    }
}

pub(super) struct Batch {
    plans: Plans,
    switchback: Vec<(String, u32)>,
    units: HashMap<String, UnitState>,
    /// Base unit key → its logged metric events (for late exposures), in log order.
    history: HashMap<String, Vec<Logged>>,
    exposure_deltas: HashMap<(String, String, i64), (i64, i64)>,
    metric_deltas: HashMap<(String, String, String, i64), Sums>,
}

/// The analysis unit of a switchback experiment: the unit within one period.
fn cell(unit_key: &str, ts_ms: i64, period_s: u32) -> String {
    format!(
        "{unit_key}@{}",
        ts_ms.div_euclid(1_000).div_euclid(i64::from(period_s))
    )
}

/// A unit's metric values from its totals: conversions are 0/1, means and sums the total
/// value, ratios numerator and denominator; c is the pre-exposure covariate.
pub(super) fn metric_values(plan: &ExperimentPlan, totals: impl Fn(&str) -> Totals) -> Values {
    plan.metrics
        .iter()
        .map(|m| {
            let t = totals(&m.event_type);
            match m.kind {
                MetricKind::Conversion => (
                    f64::from(u8::from(t.post_count > 0)),
                    0.0,
                    f64::from(u8::from(t.pre_count > 0)),
                ),
                MetricKind::Mean | MetricKind::Sum => (t.post_sum, 0.0, t.pre_sum),
                MetricKind::Ratio => {
                    let denominator = m.denominator.as_deref().map(&totals).unwrap_or_default();
                    (t.post_sum, denominator.post_sum, 0.0)
                }
            }
        })
        .collect()
}

/// The change in sufficient statistics when one unit's values move from `a` to `b`.
pub(super) fn contribution(a: (f64, f64, f64), b: (f64, f64, f64)) -> Sums {
    let ((x0, y0, c0), (x1, y1, c1)) = (a, b);
    Sums {
        sum_x: x1 - x0,
        sum_x2: x1 * x1 - x0 * x0,
        sum_y: y1 - y0,
        sum_y2: y1 * y1 - y0 * y0,
        sum_xy: x1 * y1 - x0 * y0,
        sum_c: c1 - c0,
        sum_c2: c1 * c1 - c0 * c0,
        sum_xc: x1 * c1 - x0 * c0,
    }
}

impl Batch {
    /// Loads the state of every unit (and switchback cell) the events touch: from `previous`
    /// (the batch before this one, which may still be writing) where it has them, else from
    /// the cache, else from the database (`conn`); and the earlier metric events of newly
    /// exposed units from the event log (`log`). The database is only read for units that
    /// `previous` does not touch, so its write cannot change what this reads.
    pub(super) async fn load(
        conn: &mut AnyConnection,
        log: &mut AnyConnection,
        plans: &Plans,
        cache: &mut UnitCache,
        previous: Option<&Batch>,
        retried: &[Logged],
        fresh: &[Logged],
    ) -> Result<Batch, sqlx::Error> {
        let switchback: Vec<(String, u32)> = plans
            .iter()
            .filter_map(|(id, p)| p.switchback_period_s.map(|s| (id.clone(), s)))
            .collect();
        let mut keys: HashSet<String> = HashSet::default();
        let mut exposed_units: HashSet<String> = HashSet::default();
        let mut max_seq = 0;
        for e in retried.iter().chain(fresh) {
            max_seq = max_seq.max(e.seq);
            keys.insert(e.unit_key.clone());
            for (_, period) in &switchback {
                keys.insert(cell(&e.unit_key, e.ts_ms, *period));
            }
            if matches!(e.kind, Kind::Exposure { .. }) {
                exposed_units.insert(e.unit_key.clone());
            }
        }
        let mut units: HashMap<String, UnitState> = HashMap::default();
        let mut missing = Vec::new();
        for key in keys {
            let known = previous
                .and_then(|batch| batch.units.get(&key))
                .map(UnitState::unchanged_copy)
                .or_else(|| cache.take(&key));
            match known {
                Some(state) => {
                    units.insert(key, state);
                }
                None => missing.push(key),
            }
        }
        let mut loaded: HashMap<String, UnitState> = HashMap::default();
        for (unit, experiment, exposure) in event_store::exposures_of(conn, &missing).await? {
            loaded
                .entry(unit)
                .or_default()
                .exposures
                .insert(experiment, (exposure, false));
        }
        // Totals exist only for exposed units, so only those are looked up.
        let exposed: Vec<String> = loaded.keys().cloned().collect();
        for (unit, experiment, event_type, totals) in
            event_store::unit_totals_of(conn, &exposed).await?
        {
            loaded
                .entry(unit)
                .or_default()
                .totals
                .entry(experiment)
                .or_default()
                .insert(event_type, (totals, false));
        }
        // Units with no stored state are kept as empty entries too, so that the cache
        // remembers them as such.
        for key in missing {
            let state = loaded.remove(&key).unwrap_or_default();
            units.insert(key, state);
        }
        let mut history: HashMap<String, Vec<Logged>> = HashMap::default();
        let exposed_units: Vec<String> = exposed_units.into_iter().collect();
        for e in event_store::metric_events_of(log, &exposed_units, max_seq).await? {
            history.entry(e.unit_key.clone()).or_default().push(e);
        }
        Ok(Batch {
            plans: plans.clone(),
            switchback,
            units,
            history,
            exposure_deltas: HashMap::default(),
            metric_deltas: HashMap::default(),
        })
    }

    /// Applies one event. `horizon`: every metric event of the log up to this sequence has
    /// already been applied (so a new exposure picks up exactly those). An `Err` is a
    /// reason to retry the event later.
    pub(super) fn apply(&mut self, event: &Logged, horizon: i64) -> Result<(), String> {
        match &event.kind {
            Kind::Exposure {
                experiment_id,
                variant,
            } => self.exposure(event, experiment_id.as_str(), variant.as_str(), horizon),
            Kind::Metric { event_type } => {
                self.metric(event, event_type.as_str());
                Ok(())
            }
        }
    }

    fn values(&self, plan: &ExperimentPlan, key: &str, experiment: &str) -> Values {
        let totals = self.units.get(key).and_then(|u| u.totals.get(experiment));
        metric_values(plan, |event_type| {
            totals
                .and_then(|t| t.get(event_type))
                .map(|(t, _)| *t)
                .unwrap_or_default()
        })
    }

    fn contribute(
        &mut self,
        plan: &ExperimentPlan,
        experiment: &str,
        variant: &str,
        day: i64,
        before: &Values,
        after: &Values,
    ) {
        for (metric, (a, b)) in plan.metrics.iter().zip(before.iter().zip(after)) {
            if a == b {
                continue;
            }
            self.metric_deltas
                .entry((
                    experiment.to_string(),
                    variant.to_string(),
                    metric.key.clone(),
                    day,
                ))
                .or_default()
                .add(&contribution(*a, *b));
        }
    }

    fn count_unit(&mut self, experiment: &str, variant: &str, day: i64, units: i64, multiple: i64) {
        let entry = self
            .exposure_deltas
            .entry((experiment.to_string(), variant.to_string(), day))
            .or_default();
        entry.0 += units;
        entry.1 += multiple;
    }

    fn add_totals(
        &mut self,
        key: &str,
        experiment: &str,
        event_type: &str,
        post: bool,
        value: f64,
        count: i64,
    ) {
        let unit = self.units.entry(key.to_string()).or_default();
        let by_type = unit.totals.entry(experiment.to_string()).or_default();
        let (t, dirty) = by_type.entry(event_type.to_string()).or_default();
        if post {
            t.post_sum += value;
            t.post_count += count;
        } else {
            t.pre_sum += value;
            t.pre_count += count;
        }
        *dirty = true;
    }

    /// Metric events of the unit already applied, within the cell for switchback plans.
    fn earlier_events(
        &self,
        base_key: &str,
        key: &str,
        period: Option<u32>,
        horizon: i64,
    ) -> Vec<(i64, String, f64)> {
        self.history
            .get(base_key)
            .into_iter()
            .flatten()
            .filter(|e| e.seq <= horizon)
            .filter(|e| period.is_none_or(|p| cell(&e.unit_key, e.ts_ms, p) == key))
            .filter_map(|e| match &e.kind {
                Kind::Metric { event_type } => Some((e.ts_ms, event_type.clone(), e.value)),
                Kind::Exposure { .. } => None,
            })
            .collect()
    }

    fn exposure(
        &mut self,
        event: &Logged,
        experiment: &str,
        variant: &str,
        horizon: i64,
    ) -> Result<(), String> {
        let plans = self.plans.clone();
        let plan = plans
            .get(experiment)
            .ok_or_else(|| format!("unknown or archived experiment {experiment}"))?;
        if !plan.variants.iter().any(|v| v == variant) {
            return Err(format!(
                "experiment {experiment} has no variant `{variant}`"
            ));
        }
        let attribute = event.unit_key.split_once(':').map_or("", |(a, _)| a);
        if attribute != plan.unit_attribute {
            return Err(format!(
                "the experiment randomizes by `{}`, not `{attribute}`",
                plan.unit_attribute
            ));
        }
        let key = match plan.switchback_period_s {
            Some(period) => cell(&event.unit_key, event.ts_ms, period),
            None => event.unit_key.clone(),
        };
        let current = self
            .units
            .get(&key)
            .and_then(|u| u.exposures.get(experiment))
            .map(|(e, _)| e.clone());
        match current {
            None => {
                self.set_exposure(
                    &key,
                    experiment,
                    Exposure {
                        variant: variant.to_string(),
                        first_exposure_ms: event.ts_ms,
                        multiple: false,
                    },
                );
                self.count_unit(experiment, variant, day(event.ts_ms), 1, 0);
                // Metric events that arrived before this exposure.
                for (ts, event_type, value) in
                    self.earlier_events(&event.unit_key, &key, plan.switchback_period_s, horizon)
                {
                    self.add_totals(&key, experiment, &event_type, ts >= event.ts_ms, value, 1);
                }
                let zero = vec![(0.0, 0.0, 0.0); plan.metrics.len()];
                let after = self.values(plan, &key, experiment);
                self.contribute(plan, experiment, variant, day(event.ts_ms), &zero, &after);
            }
            Some(existing) if existing.multiple => {}
            Some(existing) if existing.variant != variant => {
                // Seen in two variants: out of the analysis from now on.
                let before = self.values(plan, &key, experiment);
                let zero = vec![(0.0, 0.0, 0.0); plan.metrics.len()];
                let first_day = day(existing.first_exposure_ms);
                self.contribute(
                    plan,
                    experiment,
                    &existing.variant,
                    first_day,
                    &before,
                    &zero,
                );
                self.count_unit(experiment, &existing.variant, first_day, -1, 1);
                self.set_exposure(
                    &key,
                    experiment,
                    Exposure {
                        multiple: true,
                        ..existing
                    },
                );
            }
            Some(existing) if event.ts_ms < existing.first_exposure_ms => {
                // An earlier exposure arrived late: events between the two move from the
                // covariate to the metric.
                let before = self.values(plan, &key, experiment);
                for (ts, event_type, value) in
                    self.earlier_events(&event.unit_key, &key, plan.switchback_period_s, horizon)
                {
                    if ts >= event.ts_ms && ts < existing.first_exposure_ms {
                        self.add_totals(&key, experiment, &event_type, false, -value, -1);
                        self.add_totals(&key, experiment, &event_type, true, value, 1);
                    }
                }
                self.count_unit(experiment, variant, day(existing.first_exposure_ms), -1, 0);
                self.count_unit(experiment, variant, day(event.ts_ms), 1, 0);
                self.set_exposure(
                    &key,
                    experiment,
                    Exposure {
                        first_exposure_ms: event.ts_ms,
                        ..existing
                    },
                );
                let after = self.values(plan, &key, experiment);
                self.contribute(plan, experiment, variant, day(event.ts_ms), &before, &after);
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn set_exposure(&mut self, key: &str, experiment: &str, exposure: Exposure) {
        self.units
            .entry(key.to_string())
            .or_default()
            .exposures
            .insert(experiment.to_string(), (exposure, true));
    }

    fn metric(&mut self, event: &Logged, event_type: &str) {
        let plans = self.plans.clone();
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(unit) = self.units.get(&event.unit_key) {
            for experiment in unit.exposures.keys() {
                if plans
                    .get(experiment)
                    .is_some_and(|p| p.switchback_period_s.is_none())
                {
                    targets.push((event.unit_key.clone(), experiment.clone()));
                }
            }
        }
        for (experiment, period) in &self.switchback {
            let key = cell(&event.unit_key, event.ts_ms, *period);
            if self
                .units
                .get(&key)
                .is_some_and(|u| u.exposures.contains_key(experiment))
            {
                targets.push((key, experiment.clone()));
            }
        }
        for (key, experiment) in targets {
            let Some(plan) = plans.get(&experiment) else {
                continue;
            };
            let Some(exposure) = self
                .units
                .get(&key)
                .and_then(|u| u.exposures.get(&experiment))
                .map(|(e, _)| e.clone())
            else {
                continue;
            };
            let before = self.values(plan, &key, &experiment);
            self.add_totals(
                &key,
                &experiment,
                event_type,
                event.ts_ms >= exposure.first_exposure_ms,
                event.value,
                1,
            );
            if !exposure.multiple {
                let after = self.values(plan, &key, &experiment);
                self.contribute(
                    plan,
                    &experiment,
                    &exposure.variant,
                    day(event.ts_ms),
                    &before,
                    &after,
                );
            }
        }
    }

    /// The batch's unit states, for the cache once the batch committed.
    pub(super) fn into_units(self) -> HashMap<String, UnitState> {
        self.units
    }

    /// Writes every change of the batch.
    pub(super) async fn write(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        let mut exposures = Vec::new();
        let mut totals = Vec::new();
        for (key, unit) in &self.units {
            for (experiment, (exposure, dirty)) in &unit.exposures {
                if *dirty {
                    exposures.push((key.as_str(), experiment.as_str(), exposure));
                }
            }
            for (experiment, by_type) in &unit.totals {
                for (event_type, (t, dirty)) in by_type {
                    if *dirty {
                        totals.push((key.as_str(), experiment.as_str(), event_type.as_str(), *t));
                    }
                }
            }
        }
        // In primary-key order (SQLite compares text bytewise, as `str` does): consecutive
        // upserts then land on the same or neighbouring B-tree pages instead of random
        // ones, which made the per-unit writes about a quarter cheaper
        // (docs/benchmarks.md, "Sorted per-unit writes").
        exposures.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        totals.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        event_store::upsert_exposures(conn, &exposures).await?;
        event_store::upsert_unit_totals(conn, &totals).await?;
        let exposure_deltas: Vec<event_store::ExposureDelta<'_>> = self
            .exposure_deltas
            .iter()
            .map(|((e, v, d), delta)| ((e.as_str(), v.as_str(), *d), *delta))
            .collect();
        event_store::add_exposure_rollups(conn, &exposure_deltas).await?;
        let metric_deltas: Vec<event_store::MetricDelta<'_>> = self
            .metric_deltas
            .iter()
            .map(|((e, v, m, d), s)| ((e.as_str(), v.as_str(), m.as_str(), *d), *s))
            .collect();
        event_store::add_metric_rollups(conn, &metric_deltas).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_telescope() {
        // A unit whose value goes 0 → 2 → 5 contributes exactly 5 and 25 in total.
        let mut sums = Sums::default();
        sums.add(&contribution((0.0, 0.0, 0.0), (2.0, 1.0, 3.0)));
        sums.add(&contribution((2.0, 1.0, 3.0), (5.0, 2.0, 3.0)));
        assert_eq!(
            (
                sums.sum_x,
                sums.sum_x2,
                sums.sum_y,
                sums.sum_xy,
                sums.sum_xc
            ),
            (5.0, 25.0, 2.0, 10.0, 15.0)
        );
    }

    #[test]
    fn cells_follow_the_core_period_arithmetic() {
        assert_eq!(
            cell("city:paris", 3_600_000 * 5 + 10, 3_600),
            "city:paris@5"
        );
        assert_eq!(cell("city:paris", -1, 3_600), "city:paris@-1");
    }
}
