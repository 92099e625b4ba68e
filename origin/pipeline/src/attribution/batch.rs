//! One pipeline batch: the state of the units it touches, loaded in bulk, updated in memory
//! in log order, and written back in bulk. Rollups change only by exact deltas: when a
//! unit's metric value moves from (x, y, c) to (x', y', c'), the variant's sums move by
//! x' − x, x'² − x², and so on, so totals stay exact however events interleave.

use std::borrow::Cow;
use std::sync::Arc;

// Fx hashing: these maps live for one batch and hash millions of short keys; SipHash's
// flooding resistance buys nothing here and costs a measurable share of the batch.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use sqlx::AnyConnection;

use super::Plans;
use super::cache::UnitCache;
use crate::event::Kind;
use crate::event::parse_properties;
use crate::model::catalog::Window;
use crate::model::catalog::{Period, UnitValue};
use crate::model::filter::Filter;
use crate::plan::{ExperimentPlan, bucket_measure, day, switchback_cell as cell};
use crate::rollup::{Sums, UnitPoint};
use crate::tables::{self, Exposure, Logged, Totals};

/// A unit's metric values per metric of a plan: (x, y, c).
pub(super) type Values = Vec<UnitPoint>;

/// A unit's attribution state: per experiment it was exposed in, its exposure and its
/// totals per event type, each with whether it changed in this batch.
///
/// Small vectors rather than maps: a unit is in a handful of experiments and sends a
/// handful of event types, and the same state moves between batches and the cache as is,
/// so the names are shared (`Arc<str>`) instead of copied for every unit and batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct UnitState {
    experiments: Vec<ExperimentState>,
}

#[derive(Clone, Debug, PartialEq)]
struct ExperimentState {
    experiment: Arc<str>,
    /// The exposure and whether it changed. None only for totals stored without their
    /// exposure, which no event counts toward.
    exposure: Option<(Exposure, bool)>,
    totals: Vec<(Arc<str>, Totals, bool)>,
}

/// Pushes without the spare capacity of amortised growth: these vectors are tiny and a
/// million of them live in the cache.
fn push_exact<T>(items: &mut Vec<T>, item: T) {
    items.reserve_exact(1);
    items.push(item);
}

impl UnitState {
    fn experiment(&self, experiment: &str) -> Option<&ExperimentState> {
        self.experiments
            .iter()
            .find(|e| &*e.experiment == experiment)
    }

    fn experiment_mut(&mut self, experiment: &Arc<str>) -> &mut ExperimentState {
        let index = match self
            .experiments
            .iter()
            .position(|e| e.experiment == *experiment)
        {
            Some(index) => index,
            None => {
                push_exact(
                    &mut self.experiments,
                    ExperimentState {
                        experiment: experiment.clone(),
                        exposure: None,
                        totals: Vec::new(),
                    },
                );
                self.experiments.len() - 1
            }
        };
        &mut self.experiments[index]
    }

    pub(super) fn exposure(&self, experiment: &str) -> Option<&Exposure> {
        self.experiment(experiment)?
            .exposure
            .as_ref()
            .map(|(e, _)| e)
    }

    pub(super) fn set_exposure(&mut self, experiment: &Arc<str>, exposure: Exposure) {
        self.experiment_mut(experiment).exposure = Some((exposure, true));
    }

    pub(super) fn totals(&self, experiment: &str, event_type: &str) -> Totals {
        self.experiment(experiment)
            .and_then(|e| e.totals.iter().find(|(t, _, _)| &**t == event_type))
            .map(|(_, totals, _)| *totals)
            .unwrap_or_default()
    }

    /// The totals of an event type, created empty if missing, marked changed.
    pub(super) fn totals_mut(
        &mut self,
        experiment: &Arc<str>,
        event_type: &Arc<str>,
    ) -> &mut Totals {
        let state = self.experiment_mut(experiment);
        let index = match state.totals.iter().position(|(t, _, _)| t == event_type) {
            Some(index) => index,
            None => {
                push_exact(
                    &mut state.totals,
                    (event_type.clone(), Totals::default(), false),
                );
                state.totals.len() - 1
            }
        };
        let (_, totals, changed) = &mut state.totals[index];
        *changed = true;
        totals
    }

    /// Marks nothing changed: the state as committed.
    pub(super) fn settle(&mut self) {
        for e in &mut self.experiments {
            if let Some((_, changed)) = &mut e.exposure {
                *changed = false;
            }
            for (_, _, changed) in &mut e.totals {
                *changed = false;
            }
        }
    }

    /// The same state with nothing marked changed: what a batch starts from when the unit's
    /// state comes from the batch before it, which writes those changes itself.
    fn unchanged_copy(&self) -> UnitState {
        let mut copy = self.clone();
        copy.settle();
        copy
    }
}

/// Experiment ids, variants and event types: one allocation per distinct name, shared by
/// every unit state that uses it.
#[derive(Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    /// Seeded with the experiments and variants of the plans, so exposures share the plans'.
    fn of(plans: &Plans) -> Names {
        let mut names = Names::default();
        for (id, plan) in plans.iter() {
            names.0.insert(id.clone());
            for variant in &plan.variants {
                names.get(variant);
            }
        }
        names
    }

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(shared.clone());
        shared
    }
}

/// A change to the exposure rollup, by experiment, variant and day.
type ExposureKey = (Arc<str>, Arc<str>, i64);
/// A change to the metric rollup, by experiment, variant, metric (its index in the plan)
/// and day.
type MetricKey = (Arc<str>, Arc<str>, usize, i64);

/// A metric event as attribution reads it: borrowed from the event being applied, owned
/// when it comes from the unit's history.
struct MetricEvent<'a> {
    ts_ms: i64,
    event_type: Cow<'a, str>,
    value: f64,
    properties: Option<Cow<'a, str>>,
}

/// One derived measure of an experiment (see `plan::DerivedMeasure`), owned by the batch.
struct Derived {
    event_type: String,
    measure: Arc<str>,
    filter: Option<Filter>,
    window: Option<Window>,
    bucketed: bool,
}

impl Derived {
    /// Whether the measure's own totals are kept (as `DerivedMeasure::own_totals`).
    fn own_totals(&self) -> bool {
        self.filter.is_some() || self.window.is_some()
    }
}

/// Per experiment with filtered, windowed or quantile metrics: its derived measures.
type Filters = HashMap<Arc<str>, Vec<Derived>>;

pub(super) struct Batch {
    plans: Plans,
    filters: Filters,
    switchback: Vec<(Arc<str>, u32)>,
    names: Names,
    units: HashMap<String, UnitState>,
    /// Base unit key → its logged metric events (for late exposures), in log order.
    history: HashMap<String, Vec<Logged>>,
    exposure_deltas: HashMap<ExposureKey, (i64, i64)>,
    metric_deltas: HashMap<MetricKey, Sums>,
}

/// A unit's metric values from its totals, as `MetricKind::unit_values` defines them.
pub(super) fn metric_values(plan: &ExperimentPlan, totals: impl Fn(&str) -> Totals) -> Values {
    plan.metrics
        .iter()
        .map(|m| {
            let t = totals(&m.measure);
            let value = |v: UnitValue| match v {
                UnitValue::Zero => 0.0,
                UnitValue::Converted(Period::AfterExposure) => {
                    f64::from(u8::from(t.post_count > 0))
                }
                UnitValue::Converted(Period::BeforeExposure) => {
                    f64::from(u8::from(t.pre_count > 0))
                }
                UnitValue::Sum(Period::AfterExposure) => t.post_sum,
                UnitValue::Sum(Period::BeforeExposure) => t.pre_sum,
                UnitValue::DenominatorSum(period) => {
                    let denominator = m
                        .denominator_measure
                        .as_deref()
                        .map(&totals)
                        .unwrap_or_default();
                    match period {
                        Period::AfterExposure => denominator.post_sum,
                        Period::BeforeExposure => denominator.pre_sum,
                    }
                }
            };
            let values = m.kind.unit_values();
            UnitPoint {
                x: value(values.x),
                y: value(values.y),
                c: value(values.c),
                d: value(values.d),
            }
        })
        .collect()
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
        let switchback: Vec<(Arc<str>, u32)> = plans
            .iter()
            .filter_map(|(id, p)| p.switchback_period_s.map(|s| (id.clone(), s)))
            .collect();
        let mut names = Names::of(plans);
        let mut unit_keys: HashSet<&str> = HashSet::default();
        let mut cells: HashSet<String> = HashSet::default();
        let mut exposed_units: HashSet<&str> = HashSet::default();
        let mut max_seq = 0;
        for e in retried.iter().chain(fresh) {
            max_seq = max_seq.max(e.seq);
            unit_keys.insert(&e.unit_key);
            for (_, period) in &switchback {
                cells.insert(cell(&e.unit_key, e.ts_ms, *period));
            }
            if matches!(e.kind, Kind::Exposure { .. }) {
                exposed_units.insert(&e.unit_key);
            }
        }
        let keys = unit_keys.into_iter().map(str::to_string).chain(cells);
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
        for (unit, experiment, exposure) in tables::exposures_of(conn, &missing).await? {
            let exposure = Exposure {
                variant: names.get(&exposure.variant),
                ..exposure
            };
            loaded
                .entry(unit)
                .or_default()
                .experiment_mut(&names.get(&experiment))
                .exposure = Some((exposure, false));
        }
        // Totals exist only for exposed units, so only those are looked up.
        let exposed: Vec<String> = loaded.keys().cloned().collect();
        for (unit, experiment, event_type, totals) in tables::unit_totals_of(conn, &exposed).await?
        {
            push_exact(
                &mut loaded
                    .entry(unit)
                    .or_default()
                    .experiment_mut(&names.get(&experiment))
                    .totals,
                (names.get(&event_type), totals, false),
            );
        }
        // Units with no stored state are kept as empty entries too, so that the cache
        // remembers them as such.
        for key in missing {
            let state = loaded.remove(&key).unwrap_or_default();
            units.insert(key, state);
        }
        let mut history: HashMap<String, Vec<Logged>> = HashMap::default();
        let exposed_units: Vec<String> = exposed_units.into_iter().map(str::to_string).collect();
        for e in tables::metric_events_of(log, &exposed_units, max_seq).await? {
            history.entry(e.unit_key.clone()).or_default().push(e);
        }
        let mut filters = Filters::default();
        for (id, plan) in plans.iter() {
            let measures = plan.derived_measures();
            if !measures.is_empty() {
                filters.insert(
                    id.clone(),
                    measures
                        .into_iter()
                        .map(|d| Derived {
                            event_type: d.event_type.to_string(),
                            measure: names.get(d.measure),
                            filter: d.filter.cloned(),
                            window: d.window,
                            bucketed: d.bucketed,
                        })
                        .collect(),
                );
            }
        }
        Ok(Batch {
            plans: plans.clone(),
            filters,
            switchback,
            names,
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
        let unit = self.units.get(key);
        metric_values(plan, |event_type| {
            unit.map(|u| u.totals(experiment, event_type))
                .unwrap_or_default()
        })
    }

    /// Adds the change of a unit's values, per metric of the plan, to the variant's sums.
    fn contribute(
        &mut self,
        (experiment, variant, day): (&Arc<str>, &Arc<str>, i64),
        before: &Values,
        after: &Values,
    ) {
        for (metric, (a, b)) in before.iter().zip(after).enumerate() {
            if a == b {
                continue;
            }
            self.metric_deltas
                .entry((experiment.clone(), variant.clone(), metric, day))
                .or_default()
                .add(&Sums::change(a, b));
        }
    }

    fn count_unit(
        &mut self,
        (experiment, variant, day): (&Arc<str>, &Arc<str>, i64),
        units: i64,
        multiple: i64,
    ) {
        let entry = self
            .exposure_deltas
            .entry((experiment.clone(), variant.clone(), day))
            .or_default();
        entry.0 += units;
        entry.1 += multiple;
    }

    fn add_totals(
        &mut self,
        key: &str,
        experiment: &Arc<str>,
        event_type: &str,
        post: bool,
        value: f64,
        count: i64,
    ) {
        let event_type = self.names.get(event_type);
        let unit = match self.units.get_mut(key) {
            Some(unit) => unit,
            None => self.units.entry(key.to_string()).or_default(),
        };
        let t = unit.totals_mut(experiment, &event_type);
        if post {
            t.post_sum += value;
            t.post_count += count;
        } else {
            t.pre_sum += value;
            t.pre_count += count;
        }
    }

    /// Adds a metric event to the unit's totals of its event type (before or after the
    /// unit's first exposure at `first_exposure_ms`), of each filtered or windowed measure of
    /// the experiment whose filter its properties match and whose window holds it, and
    /// (after exposure) to the value bucket of each bucketed measure it counts toward;
    /// `sign` -1 takes it away.
    fn add_event_totals(
        &mut self,
        (key, experiment): (&str, &Arc<str>),
        event: &MetricEvent<'_>,
        first_exposure_ms: i64,
        sign: i64,
    ) {
        let post = event.ts_ms >= first_exposure_ms;
        let (value, count) = (event.value * sign as f64, sign);
        self.add_totals(key, experiment, &event.event_type, post, value, count);
        let Some(derived) = self.filters.get(experiment) else {
            return;
        };
        let mut parsed = None;
        let mut matched: Vec<Arc<str>> = Vec::new();
        let mut buckets: Vec<String> = Vec::new();
        for d in derived.iter().filter(|d| d.event_type == event.event_type) {
            if let Some(window) = d.window
                && !(post && window.holds(event.ts_ms - first_exposure_ms))
            {
                continue;
            }
            if let Some(filter) = &d.filter
                && !filter.matches(
                    parsed.get_or_insert_with(|| parse_properties(event.properties.as_deref())),
                )
            {
                continue;
            }
            if d.own_totals() {
                matched.push(d.measure.clone());
            }
            if d.bucketed && post {
                let bucket = abx_stats::quantile::bucket(event.value);
                buckets.push(bucket_measure(&d.measure, bucket));
            }
        }
        for measure in matched
            .iter()
            .map(|m| &**m)
            .chain(buckets.iter().map(String::as_str))
        {
            self.add_totals(key, experiment, measure, post, value, count);
        }
    }

    /// Metric events of the unit already applied that the plan counts: within the cell for
    /// switchback plans, and before the analysis's end.
    fn earlier_events(
        &self,
        base_key: &str,
        key: &str,
        plan: &ExperimentPlan,
        horizon: i64,
    ) -> Vec<MetricEvent<'static>> {
        let period = plan.switchback_period_s;
        self.history
            .get(base_key)
            .into_iter()
            .flatten()
            .filter(|e| e.seq <= horizon && plan.counts_at(e.ts_ms))
            .filter(|e| period.is_none_or(|p| cell(&e.unit_key, e.ts_ms, p) == key))
            .filter_map(|e| match &e.kind {
                Kind::Metric { event_type } => Some(MetricEvent {
                    ts_ms: e.ts_ms,
                    event_type: Cow::Owned(event_type.clone()),
                    value: e.value,
                    properties: e.properties.clone().map(Cow::Owned),
                }),
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
        let (experiment, plan) = plans
            .get_key_value(experiment)
            .ok_or_else(|| format!("unknown or archived experiment {experiment}"))?;
        if !plan.variants.iter().any(|v| v == variant) {
            return Err(format!(
                "experiment {experiment} has no variant `{variant}`"
            ));
        }
        let variant = self.names.get(variant);
        let attribute = event.unit_key.split_once(':').map_or("", |(a, _)| a);
        if attribute != plan.unit_attribute {
            return Err(format!(
                "the experiment randomizes by `{}`, not `{attribute}`",
                plan.unit_attribute
            ));
        }
        if !plan.counts_at(event.ts_ms) {
            // Valid, but after the analysis closed (a runtime still on an older snapshot).
            return Ok(());
        }
        let key = match plan.switchback_period_s {
            Some(period) => cell(&event.unit_key, event.ts_ms, period),
            None => event.unit_key.clone(),
        };
        let current = self
            .units
            .get(&key)
            .and_then(|u| u.exposure(experiment))
            .cloned();
        let day_of = day(event.ts_ms);
        match current {
            None => {
                self.set_exposure(
                    &key,
                    experiment,
                    Exposure {
                        variant: variant.clone(),
                        first_exposure_ms: event.ts_ms,
                        multiple: false,
                        attributes: event.properties.as_deref().map(Box::from),
                    },
                );
                self.count_unit((experiment, &variant, day_of), 1, 0);
                // Metric events that arrived before this exposure.
                for earlier in self.earlier_events(&event.unit_key, &key, plan, horizon) {
                    self.add_event_totals((&key, experiment), &earlier, event.ts_ms, 1);
                }
                let zero = vec![UnitPoint::default(); plan.metrics.len()];
                let after = self.values(plan, &key, experiment);
                self.contribute((experiment, &variant, day_of), &zero, &after);
            }
            Some(existing) if existing.multiple => {}
            Some(existing) if existing.variant != variant => {
                // Seen in two variants: out of the analysis from now on.
                let before = self.values(plan, &key, experiment);
                let zero = vec![UnitPoint::default(); plan.metrics.len()];
                let first = (
                    experiment,
                    &existing.variant,
                    day(existing.first_exposure_ms),
                );
                self.contribute(first, &before, &zero);
                self.count_unit(first, -1, 1);
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
                // covariate to the metric, and windows start earlier, so every event at or
                // after the new exposure is counted again from it.
                let before = self.values(plan, &key, experiment);
                for earlier in self.earlier_events(&event.unit_key, &key, plan, horizon) {
                    if earlier.ts_ms >= event.ts_ms {
                        let (old, new) = (existing.first_exposure_ms, event.ts_ms);
                        self.add_event_totals((&key, experiment), &earlier, old, -1);
                        self.add_event_totals((&key, experiment), &earlier, new, 1);
                    }
                }
                let first_day = day(existing.first_exposure_ms);
                self.count_unit((experiment, &variant, first_day), -1, 0);
                self.count_unit((experiment, &variant, day_of), 1, 0);
                self.set_exposure(
                    &key,
                    experiment,
                    Exposure {
                        first_exposure_ms: event.ts_ms,
                        // Drill-downs count the unit under its first exposure's context.
                        attributes: event.properties.as_deref().map(Box::from),
                        ..existing
                    },
                );
                let after = self.values(plan, &key, experiment);
                self.contribute((experiment, &variant, day_of), &before, &after);
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn set_exposure(&mut self, key: &str, experiment: &Arc<str>, exposure: Exposure) {
        let unit = match self.units.get_mut(key) {
            Some(unit) => unit,
            None => self.units.entry(key.to_string()).or_default(),
        };
        unit.set_exposure(experiment, exposure);
    }

    fn metric(&mut self, event: &Logged, event_type: &str) {
        let plans = self.plans.clone();
        // The experiments the event counts in: those the unit was exposed in, or its cell
        // (the key, when not the unit's) for switchback experiments.
        let mut targets: Vec<(Option<String>, Arc<str>)> = Vec::new();
        if let Some(unit) = self.units.get(&event.unit_key) {
            for e in &unit.experiments {
                if e.exposure.is_some()
                    && plans
                        .get(&*e.experiment)
                        .is_some_and(|p| p.switchback_period_s.is_none())
                {
                    targets.push((None, e.experiment.clone()));
                }
            }
        }
        for (experiment, period) in &self.switchback {
            let key = cell(&event.unit_key, event.ts_ms, *period);
            if self
                .units
                .get(&key)
                .is_some_and(|u| u.exposure(experiment).is_some())
            {
                targets.push((Some(key), experiment.clone()));
            }
        }
        for (cell_key, experiment) in targets {
            let key = cell_key.as_deref().unwrap_or(&event.unit_key);
            let Some(plan) = plans.get(&experiment).filter(|p| p.counts_at(event.ts_ms)) else {
                continue;
            };
            let Some(exposure) = self
                .units
                .get(key)
                .and_then(|u| u.exposure(&experiment))
                .cloned()
            else {
                continue;
            };
            let before = self.values(plan, key, &experiment);
            let metric_event = MetricEvent {
                ts_ms: event.ts_ms,
                event_type: Cow::Borrowed(event_type),
                value: event.value,
                properties: event.properties.as_deref().map(Cow::Borrowed),
            };
            let first = exposure.first_exposure_ms;
            self.add_event_totals((key, &experiment), &metric_event, first, 1);
            if !exposure.multiple {
                let after = self.values(plan, key, &experiment);
                let at = (&experiment, &exposure.variant, day(event.ts_ms));
                self.contribute(at, &before, &after);
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
            for e in &unit.experiments {
                if let Some((exposure, true)) = &e.exposure {
                    exposures.push((key.as_str(), &*e.experiment, exposure));
                }
                for (event_type, t, changed) in &e.totals {
                    if *changed {
                        totals.push((key.as_str(), &*e.experiment, &**event_type, *t));
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
        tables::upsert_exposures(conn, &exposures).await?;
        tables::upsert_unit_totals(conn, &totals).await?;
        let exposure_deltas: Vec<tables::ExposureDelta<'_>> = self
            .exposure_deltas
            .iter()
            .map(|((e, v, d), delta)| ((&**e, &**v, *d), *delta))
            .collect();
        tables::add_exposure_rollups(conn, &exposure_deltas).await?;
        // Every key was made with a metric of its experiment's plan, so the lookups hold.
        let metric_deltas: Vec<tables::MetricDelta<'_>> = self
            .metric_deltas
            .iter()
            .filter_map(|((e, v, m, d), s)| {
                let metric = &self.plans.get(e)?.metrics.get(*m)?.key;
                Some(((&**e, &**v, metric.as_str(), *d), *s))
            })
            .collect();
        tables::add_metric_rollups(conn, &metric_deltas).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_telescope() {
        // A unit whose value goes 0 → 2 → 5 contributes exactly 5 and 25 in total.
        let mut sums = Sums::default();
        let point = |x, y, c| UnitPoint { x, y, c, d: 0.0 };
        sums.add(&Sums::change(&UnitPoint::default(), &point(2.0, 1.0, 3.0)));
        sums.add(&Sums::change(&point(2.0, 1.0, 3.0), &point(5.0, 2.0, 3.0)));
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
}
