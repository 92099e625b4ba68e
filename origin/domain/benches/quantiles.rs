//! Quantile metrics as users meet them (docs/statistics.md §12d): simulated A/A experiments
//! whose primary metric is the 95th percentile of request latency, with units of 1–50
//! requests each (a lognormal level per unit and lognormal noise per request, so a unit's
//! requests are correlated), read every simulated hour through `results::compute_with`
//! (the function the API and the guardrail monitor call, recording looks as the service
//! does) until half again past the plan. Each read's quantile estimates come from the
//! units' value buckets as the SQL pipeline computes them (`quantile_of_units`).
//!
//! It prints, per analysis mode, how often an A/A experiment was ever declared significant,
//! and how often each variant's 95 % interval (estimate ± 1.96 standard errors) covered the
//! true 95th percentile of the design at the last read.
//!
//! ```text
//! cargo bench -p abx-origin-domain --bench quantiles -- [--experiments 1000] [--seed 20261205]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use abx_origin_domain::model::catalog::{Direction, Metric, MetricKind};
use abx_origin_domain::model::experiment::{AnalysisMode, Experiment};
use abx_origin_domain::results;
use abx_origin_domain::rollup::{ExposureRollup, QuantileRollup, Rollups};
use abx_stats::montecarlo::Xoshiro256;
use abx_stats::quantile;

mod simulation;
use simulation::{ALPHA, normal};

const P: f64 = 0.95;
const PLANNED_UNITS: u64 = 1_500;
const PLAN_DAYS: u32 = 10;
/// Reads go on to this multiple of the plan (experiments overrun).
const RUN: f64 = 1.5;
const MEDIAN_MS: f64 = 100.0;
const SIGMA_UNIT: f64 = 0.5;
const SIGMA_REQUEST: f64 = 0.4;
const VARIANTS: [&str; 2] = ["control", "treatment"];

/// One unit's requests.
fn unit_latencies(rng: &mut Xoshiro256) -> Vec<f64> {
    let requests = 1 + (rng.uniform() * 50.0) as usize;
    let level = MEDIAN_MS * (SIGMA_UNIT * normal(rng)).exp();
    (0..requests.min(50))
        .map(|_| level * (SIGMA_REQUEST * normal(rng)).exp())
        .collect()
}

/// The design's true 95th percentile of all requests: the quantile of 200,000 units'
/// requests (about 5 million), whose own sampling error is far below the experiments'.
fn true_quantile(seed: u64) -> f64 {
    let mut rng = Xoshiro256::new(seed ^ 0x5151);
    let mut all: Vec<f64> = (0..200_000)
        .flat_map(|_| unit_latencies(&mut rng))
        .collect();
    all.sort_by(f64::total_cmp);
    let rank = (P * all.len() as f64).ceil() as usize;
    all[rank - 1]
}

/// One variant's units as the pipeline keeps them: each unit's (bucket, requests).
#[derive(Default)]
struct Arm {
    units: Vec<Vec<(i32, u64)>>,
}

impl Arm {
    fn add(&mut self, requests: &[f64]) {
        self.units.push(quantile::histogram(
            requests.iter().map(|&ms| (quantile::bucket(ms), 1)),
        ));
    }

    fn estimate(&self) -> Option<abx_stats::QuantileEstimate> {
        quantile::quantile_of_units(self.units.iter().map(Vec::as_slice), P).ok()
    }
}

fn experiment(mode: AnalysisMode) -> Experiment {
    simulation::two_arm_experiment("latency", "p95_latency", mode, PLANNED_UNITS)
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    significant: bool,
    /// Variants whose last interval covered the true quantile (of 2).
    covered: u64,
}

fn simulate(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    truth: f64,
    rng: &mut Xoshiro256,
) -> Outcome {
    let per_hour = PLANNED_UNITS.div_ceil(u64::from(PLAN_DAYS) * 24);
    let hours = simulation::hours(PLAN_DAYS, RUN);
    let mut arms: [Arm; 2] = Default::default();
    let mut units_by_day: BTreeMap<(i64, usize), i64> = BTreeMap::new();
    let mut recorded: Vec<results::DecisionLook> = Vec::new();
    let mut outcome = Outcome::default();
    let mut last = [None, None];
    for hour in 0..hours {
        let day = simulation::day_of(hour);
        for (v, arm) in arms.iter_mut().enumerate() {
            for _ in 0..per_hour {
                arm.add(&unit_latencies(rng));
            }
            *units_by_day.entry((day, v)).or_default() += per_hour as i64;
        }
        last = [arms[0].estimate(), arms[1].estimate()];
        let rollups = Rollups {
            exposures: units_by_day
                .iter()
                .map(|(&(day, v), &units)| ExposureRollup {
                    variant: VARIANTS[v].into(),
                    day,
                    units,
                    multiple: 0,
                })
                .collect(),
            metrics: Vec::new(),
            quantiles: (0..2)
                .map(|v| QuantileRollup {
                    variant: VARIANTS[v].into(),
                    metric: "p95_latency".into(),
                    estimate: last[v],
                })
                .collect(),
            capped: Vec::new(),
        };
        let r = simulation::read(e, metrics, &rollups, hour, &mut recorded);
        outcome.significant |= r
            .metrics
            .iter()
            .any(|m| m.comparisons.iter().any(|c| c.significant));
    }
    for q in last.into_iter().flatten() {
        let half_width = 1.959_963_984_540_054 * q.variance.sqrt();
        outcome.covered += u64::from((q.estimate - truth).abs() <= half_width);
    }
    outcome
}

fn run(mode: AnalysisMode, experiments: u64, seed: u64, truth: f64) -> Vec<Outcome> {
    let e = experiment(mode);
    let metrics = HashMap::from([(
        "p95_latency".to_string(),
        Metric::new("p95_latency", MetricKind::Quantile, Direction::Decrease),
    )]);
    simulation::on_two_cores(experiments, seed, |rng| simulate(&e, &metrics, truth, rng))
}

fn main() {
    let (experiments, seed) = simulation::args(20_261_205);
    let started = Instant::now();
    let truth = true_quantile(seed);
    println!(
        "A/A, p95 of latency, {PLANNED_UNITS} units per variant planned over {PLAN_DAYS} days, \
         read hourly to {RUN}× the plan; {experiments} experiments per mode; true p95 {truth:.2} ms"
    );
    println!(
        "| mode | ever significant (A/A) | α + 2 MC s.e. | 95 % interval covers the true p95 |"
    );
    println!("|---|---|---|---|");
    for (name, mode) in [
        ("fixed horizon", AnalysisMode::FixedHorizon),
        ("sequential (mSPRT)", AnalysisMode::Sequential),
        (
            "group sequential (5 looks, OBF)",
            AnalysisMode::GroupSequential,
        ),
    ] {
        let outcomes = run(mode, experiments, seed, truth);
        let n = outcomes.len() as u64;
        let significant = outcomes.iter().filter(|o| o.significant).count() as u64;
        let covered: u64 = outcomes.iter().map(|o| o.covered).sum();
        let (fpr, fpr_se) = simulation::rate(significant, n);
        let (coverage, coverage_se) = simulation::rate(covered, 2 * n);
        println!(
            "| {name} | {fpr:.3} ± {fpr_se:.3} | {:.3} | {coverage:.3} ± {coverage_se:.3} |",
            ALPHA + 2.0 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt()
        );
    }
    println!("{:.0} s", started.elapsed().as_secs_f64());
}
