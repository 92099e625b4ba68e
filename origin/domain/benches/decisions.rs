//! Decisions as users meet them: many simulated experiments, each read every simulated hour
//! through `results::compute_with`, the function the API and the guardrail monitor call
//! (recording looks as the service does), for as
//! long as experiments really run (to their plan and beyond). It prints, per analysis mode,
//! how often an A/A experiment was ever declared significant, how often a guardrail would
//! have auto-paused it, how often its split was flagged, and the power achieved against the
//! power planned by `POST /api/v1/analysis/power` (docs/statistics.md §16b).
//!
//! ```text
//! cargo bench -p abx-origin-domain --bench decisions -- [--experiments 1000] [--seed 20261204]
//! ```
//!
//! The two cores each run half the experiments from their own seeded generator, so the
//! same arguments print the same table.

use std::collections::HashMap;
use std::time::Instant;

use abx_origin_domain::model::catalog::{Direction, Metric, MetricKind};
use abx_origin_domain::model::experiment::{Analysis, AnalysisMode, Experiment};
use abx_origin_domain::results;
use abx_origin_domain::rollup::{ExposureRollup, MetricRollup, Rollups, Sums};
use abx_stats::montecarlo::Xoshiro256;

mod simulation;
use abx_stats::power::{Mde, PlannedTest, PowerConfig, conversion_sample_size};
use simulation::{ALPHA, DAY_MS, START_DAY};

const BASELINE: f64 = 0.10;
const LIFT: f64 = 0.10;
const POWER: f64 = 0.80;
/// Guardrail metrics' rate in every variant (A/A for guardrails in every scenario).
const GUARDRAIL_RATE: f64 = 0.05;
/// SRM is judged over the first 30 days of hourly checks.
const SRM_CHECKS: u32 = 720;

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    mode: AnalysisMode,
    plan_days: u32,
    /// Hourly reads, from the first hour on.
    hours: u32,
    /// The treatments' true relative lift on the primary metric (0: A/A).
    lift: f64,
    treatments: usize,
    guardrails: usize,
    /// Units are assigned one by one at random (as a hash would), instead of in equal
    /// numbers, so that the split itself is tested.
    random_split: bool,
}

impl Scenario {
    fn planned_test(&self) -> PlannedTest {
        match self.mode {
            AnalysisMode::FixedHorizon => PlannedTest::FixedHorizon,
            AnalysisMode::Sequential => PlannedTest::Sequential,
            AnalysisMode::GroupSequential => PlannedTest::GroupSequential {
                looks: 5,
                spending: abx_stats::group_sequential::SpendingFunction::OBrienFleming,
            },
        }
    }

    /// Units per variant for 80 % power at +10 % under this scenario's analysis.
    fn planned_units(&self) -> u64 {
        let config = PowerConfig {
            alpha: ALPHA,
            power: POWER,
            variants: 1 + self.treatments as u32,
            daily_traffic: None,
            secondary_metrics: 0,
            test: self.planned_test(),
        };
        conversion_sample_size(BASELINE, Mde::Relative(LIFT), &config)
            .expect("a plan")
            .units_per_variant
    }

    fn experiment(&self, planned: u64) -> Experiment {
        let analysis = Analysis {
            mode: self.mode,
            alpha: ALPHA,
            planned_units_per_variant: Some(planned),
            looks: (self.mode == AnalysisMode::GroupSequential).then_some(5),
            ..Analysis::default()
        };
        let names = variant_names(self.treatments);
        let weight = (10_000 / names.len()) as u16;
        let variants: Vec<(&str, u16)> = names.iter().map(|n| (n.as_str(), weight)).collect();
        let guardrails = guardrail_names(self.guardrails);
        let guardrails: Vec<&str> = guardrails.iter().map(String::as_str).collect();
        Experiment::running(
            "simulated",
            &variants,
            "converted",
            &guardrails,
            analysis,
            START_DAY * DAY_MS,
        )
    }
}

fn variant_names(treatments: usize) -> Vec<String> {
    std::iter::once("control".to_string())
        .chain((1..=treatments).map(|i| format!("treatment{i}")))
        .collect()
}

fn guardrail_names(guardrails: usize) -> Vec<String> {
    (1..=guardrails).map(|i| format!("guardrail{i}")).collect()
}

/// What one simulated experiment showed over its reads.
#[derive(Default, Clone, Copy)]
struct Outcome {
    /// Some read called a treatment significantly different on the primary metric.
    significant: bool,
    /// Some read showed a guardrail alarm (the monitor would have paused it).
    alarm: bool,
    /// Some read among the first `SRM_CHECKS` flagged a sample ratio mismatch.
    srm: bool,
}

/// Daily rollups grown hour by hour, as the pipeline keeps them.
struct Growing {
    rollups: Rollups,
    /// Row of (day, variant) in `rollups.exposures`, and of (day, variant, metric) in
    /// `rollups.metrics`.
    exposure_rows: HashMap<(i64, usize), usize>,
    metric_rows: HashMap<(i64, usize, usize), usize>,
}

impl Growing {
    fn new() -> Self {
        Growing {
            rollups: Rollups::default(),
            exposure_rows: HashMap::new(),
            metric_rows: HashMap::new(),
        }
    }

    fn add_units(&mut self, day: i64, variant: usize, name: &str, units: i64) {
        let rows = &mut self.rollups.exposures;
        let row = *self.exposure_rows.entry((day, variant)).or_insert_with(|| {
            rows.push(ExposureRollup {
                variant: name.into(),
                day,
                units: 0,
                multiple: 0,
            });
            rows.len() - 1
        });
        rows[row].units += units;
    }

    /// `converted` more units of a conversion metric (x = 1 for each, so Σx = Σx²).
    fn add_conversions(&mut self, key: (i64, usize, usize), names: (&str, &str), converted: f64) {
        let rows = &mut self.rollups.metrics;
        let row = *self.metric_rows.entry(key).or_insert_with(|| {
            rows.push(MetricRollup {
                variant: names.0.into(),
                metric: names.1.into(),
                day: key.0,
                sums: Sums::default(),
            });
            rows.len() - 1
        });
        rows[row].sums.sum_x += converted;
        rows[row].sums.sum_x2 += converted;
    }
}

fn simulate(
    scenario: &Scenario,
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    planned: u64,
    rng: &mut Xoshiro256,
) -> Outcome {
    let variants = variant_names(scenario.treatments);
    let guardrails = guardrail_names(scenario.guardrails);
    let per_hour = planned.div_ceil(u64::from(scenario.plan_days) * 24);
    let rate = |v: usize| {
        if v == 0 {
            BASELINE
        } else {
            BASELINE * (1.0 + scenario.lift)
        }
    };
    let mut growing = Growing::new();
    let mut outcome = Outcome::default();
    // The looks the service records on first computation, reused by every later read.
    let mut recorded: Vec<results::DecisionLook> = Vec::new();
    for hour in 0..scenario.hours {
        let day = simulation::day_of(hour);
        let mut arrivals = vec![0_u64; variants.len()];
        if scenario.random_split {
            for _ in 0..per_hour * variants.len() as u64 {
                arrivals[(rng.uniform() * variants.len() as f64) as usize] += 1;
            }
        } else {
            arrivals.fill(per_hour);
        }
        for (v, &units) in arrivals.iter().enumerate() {
            growing.add_units(day, v, &variants[v], units as i64);
            let converted = rng.binomial(units, abx_stats::montecarlo::threshold(rate(v)));
            growing.add_conversions((day, v, 0), (&variants[v], "converted"), converted as f64);
            for (g, name) in guardrails.iter().enumerate() {
                let hit = rng.binomial(units, abx_stats::montecarlo::threshold(GUARDRAIL_RATE));
                growing.add_conversions((day, v, g + 1), (&variants[v], name), hit as f64);
            }
        }
        let r = simulation::read(e, metrics, &growing.rollups, hour, &mut recorded);
        let primary = r.metrics.iter().find(|m| m.metric == "converted");
        outcome.significant |= primary.is_some_and(|m| m.comparisons.iter().any(|c| c.significant));
        outcome.alarm |= r.guardrails.iter().any(|g| g.status == "alarm");
        if hour < SRM_CHECKS {
            outcome.srm |= r.srm.as_ref().is_some_and(|s| s.mismatch);
        }
    }
    outcome
}

struct Tally {
    experiments: u64,
    significant: u64,
    alarm: u64,
    srm: u64,
    srm_experiments: u64,
}

fn run(scenario: &Scenario, experiments: u64, seed: u64) -> (Tally, u64) {
    let planned = scenario.planned_units();
    let e = scenario.experiment(planned);
    let mut metrics: HashMap<String, Metric> = HashMap::from([(
        "converted".to_string(),
        Metric::new("converted", MetricKind::Conversion, Direction::Increase),
    )]);
    for g in guardrail_names(scenario.guardrails) {
        metrics.insert(
            g.clone(),
            Metric::new(&g, MetricKind::Conversion, Direction::Decrease),
        );
    }
    let outcomes: Vec<Outcome> = simulation::on_two_cores(experiments, seed, |rng| {
        simulate(scenario, &e, &metrics, planned, rng)
    });
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let tally = Tally {
        experiments: outcomes.len() as u64,
        significant: count(|o| o.significant),
        alarm: count(|o| o.alarm),
        srm: count(|o| o.srm),
        srm_experiments: if scenario.random_split && scenario.hours >= SRM_CHECKS {
            outcomes.len() as u64
        } else {
            0
        },
    };
    (tally, planned)
}

fn main() {
    let (experiments, seed) = simulation::args(20_261_204);
    let aa = |name, mode, plan_days: u32, run: f64| Scenario {
        name,
        mode,
        plan_days,
        hours: simulation::hours(plan_days, run),
        lift: 0.0,
        treatments: 1,
        guardrails: 0,
        random_split: true,
    };
    let ab = |name, mode, plan_days: u32| Scenario {
        name,
        mode,
        plan_days,
        // Read hourly until the plan is complete and its last day is over.
        hours: simulation::hours(plan_days, 1.0),
        lift: LIFT,
        treatments: 1,
        guardrails: 0,
        random_split: false,
    };
    let scenarios = [
        aa(
            "A/A fixed horizon, 28-day plan, read to day 56",
            AnalysisMode::FixedHorizon,
            28,
            2.0,
        ),
        aa(
            "A/A group sequential (5 looks), 35-day plan, to 1.0x",
            AnalysisMode::GroupSequential,
            35,
            1.0,
        ),
        aa(
            "A/A group sequential (5 looks), 35-day plan, to 1.5x",
            AnalysisMode::GroupSequential,
            35,
            1.5,
        ),
        aa(
            "A/A sequential (mSPRT), 28-day plan, to 1.5x",
            AnalysisMode::Sequential,
            28,
            1.5,
        ),
        Scenario {
            name: "A/A 2 treatments x 5 guardrails (sequential), 30 days",
            mode: AnalysisMode::Sequential,
            plan_days: 30,
            hours: 30 * 24,
            lift: 0.0,
            treatments: 2,
            guardrails: 5,
            random_split: true,
        },
        ab(
            "A/B +10% fixed horizon, 28-day plan",
            AnalysisMode::FixedHorizon,
            28,
        ),
        ab(
            "A/B +10% group sequential (5 looks), 35-day plan",
            AnalysisMode::GroupSequential,
            35,
        ),
        ab(
            "A/B +10% sequential (mSPRT), 28-day plan",
            AnalysisMode::Sequential,
            28,
        ),
    ];
    println!(
        "{experiments} experiments per scenario, read every simulated hour through results::compute_with; \
         baseline {BASELINE}, alpha {ALPHA}, plans for {POWER} power at +{:.0}% (POST /analysis/power), seed {seed}\n",
        LIFT * 100.0
    );
    println!(
        "| scenario | planned units/variant | reads | significant ever (± MC s.e.) | bound | guardrail auto-pause | SRM flagged (first 720 reads) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let started = Instant::now();
    let mut srm_total = (0, 0);
    for (i, scenario) in scenarios.iter().enumerate() {
        let (tally, planned) = run(scenario, experiments, seed.wrapping_add(i as u64));
        let (p, se) = simulation::rate(tally.significant, tally.experiments);
        let bound = if scenario.lift == 0.0 {
            format!("≤ {:.4}", ALPHA + 2.0 * se)
        } else {
            format!("{:.2} ± 0.03", POWER)
        };
        let (alarm, alarm_se) = simulation::rate(tally.alarm, tally.experiments);
        let srm = if tally.srm_experiments > 0 {
            srm_total.0 += tally.srm;
            srm_total.1 += tally.srm_experiments;
            format!("{:.4}", tally.srm as f64 / tally.srm_experiments as f64)
        } else {
            "—".into()
        };
        let alarm = if scenario.guardrails > 0 {
            format!("{alarm:.4} (± {alarm_se:.4})")
        } else {
            "—".into()
        };
        println!(
            "| {} | {planned} | {} | {p:.4} (± {se:.4}) | {bound} | {alarm} | {srm} |",
            scenario.name, scenario.hours
        );
    }
    let (srm, srm_se) = simulation::rate(srm_total.0, srm_total.1);
    println!(
        "\nSRM flagged in {} of {} A/A experiments over their first 720 hourly checks: {srm:.5} (± {srm_se:.5}); bound 0.001\n\
         {:.1} s",
        srm_total.0,
        srm_total.1,
        started.elapsed().as_secs_f64()
    );
}
