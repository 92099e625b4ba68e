//! CUPED in decisions as users meet it (docs/statistics.md §5, §12g): simulated experiments
//! whose primary metric has pre-exposure data for most units, read every simulated hour
//! through `results::compute_with` (the function the API and the guardrail monitor call,
//! recording looks as the service does) until half again past the plan. A conversion
//! metric (bought), a mean metric (revenue per user) and a ratio metric (revenue per
//! session) are each simulated; 30 % of the units are new and have no history (their
//! covariates are 0).
//!
//! A last scenario gives history only to units exposed after the first day (an event type
//! that is new with the experiment): the estimate chosen on the first day (the standard
//! test) must decide for the experiment's life.
//!
//! It prints, per metric and analysis mode, how often an A/A experiment was ever declared
//! significant with the CUPED estimate deciding, and for a treatment that adds 5 % how often
//! the test found it at the planned sample with CUPED and, on the same units with their
//! history withheld, with the unadjusted test.
//!
//! ```text
//! cargo bench -p abx-origin-domain --bench cuped -- [--experiments 1000] [--seed 20261206]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use abx_origin_domain::model::catalog::{Direction, Metric, MetricKind};
use abx_origin_domain::model::experiment::{AnalysisMode, Experiment};
use abx_origin_domain::results::{self, Estimator};
use abx_origin_domain::rollup::{ExposureRollup, MetricRollup, Rollups, Sums, UnitPoint};
use abx_stats::montecarlo::Xoshiro256;

mod simulation;
use simulation::{ALPHA, normal};

const PLANNED_UNITS: u64 = 6_000;
/// At least the default minimum duration, so that a fixed-horizon test reads at its plan.
const PLAN_DAYS: u32 = 14;
/// Reads go on to this multiple of the plan (experiments overrun).
const RUN: f64 = 1.5;
/// The share of units with a history before exposure.
const RETURNING: f64 = 0.7;
const LIFT: f64 = 0.05;
const VARIANTS: [&str; 2] = ["control", "treatment"];
const METRIC: &str = "revenue";

/// A Poisson draw by inversion (small means only).
fn poisson(rng: &mut Xoshiro256, mean: f64) -> f64 {
    let (mut k, mut p, u) = (0.0, (-mean).exp(), rng.uniform());
    let mut cumulative = p;
    while u > cumulative && k < 1_000.0 {
        k += 1.0;
        p *= mean / k;
        cumulative += p;
    }
    k
}

/// One unit's values: a spending level and an activity level that persist from before the
/// exposure to after it, with noise in each period; `scale` multiplies what it spends after.
fn unit(kind: MetricKind, scale: f64, may_have_history: bool, rng: &mut Xoshiro256) -> UnitPoint {
    let spend = normal(rng).exp();
    let activity = 2.0 * (0.5 * normal(rng)).exp();
    let returning = rng.uniform() < RETURNING && may_have_history;
    let mut period = |scale: f64| {
        let sessions = 1.0 + poisson(rng, activity);
        let revenue = scale * spend * sessions * (0.3 * normal(rng)).exp();
        (revenue, sessions)
    };
    let (x, y) = period(scale);
    let (c, d) = if returning { period(1.0) } else { (0.0, 0.0) };
    match kind {
        MetricKind::Ratio => UnitPoint { x, y, c, d },
        // Whether the unit bought: more likely the more it spends, in each period.
        MetricKind::Conversion => {
            let propensity = (0.15 * spend).min(0.9);
            let bought = |scale: f64, rng: &mut Xoshiro256| {
                f64::from(u8::from(rng.uniform() < scale * propensity))
            };
            UnitPoint {
                x: bought(scale, rng),
                y: 0.0,
                c: if returning { bought(1.0, rng) } else { 0.0 },
                d: 0.0,
            }
        }
        _ => UnitPoint {
            x,
            y: 0.0,
            c,
            d: 0.0,
        },
    }
}

/// Daily rollups as the pipeline keeps them, with and without the units' history.
#[derive(Default)]
struct Arms {
    units: BTreeMap<(i64, usize), i64>,
    with_history: BTreeMap<(i64, usize), Sums>,
    without_history: BTreeMap<(i64, usize), Sums>,
}

impl Arms {
    fn add(&mut self, day: i64, variant: usize, point: &UnitPoint) {
        *self.units.entry((day, variant)).or_default() += 1;
        self.with_history
            .entry((day, variant))
            .or_default()
            .add(&Sums::of(point));
        let withheld = UnitPoint {
            c: 0.0,
            d: 0.0,
            ..*point
        };
        self.without_history
            .entry((day, variant))
            .or_default()
            .add(&Sums::of(&withheld));
    }

    fn rollups(&self, history: bool) -> Rollups {
        let sums = if history {
            &self.with_history
        } else {
            &self.without_history
        };
        Rollups {
            exposures: self
                .units
                .iter()
                .map(|(&(day, v), &units)| ExposureRollup {
                    variant: VARIANTS[v].into(),
                    day,
                    units,
                    multiple: 0,
                })
                .collect(),
            metrics: sums
                .iter()
                .map(|(&(day, v), &sums)| MetricRollup {
                    variant: VARIANTS[v].into(),
                    metric: METRIC.into(),
                    day,
                    sums,
                })
                .collect(),
            ..Rollups::default()
        }
    }
}

/// One way of reading an experiment over its life: its looks and what it decided.
struct Reader<'a> {
    e: &'a Experiment,
    metrics: &'a HashMap<String, Metric>,
    history: bool,
    recorded: Vec<results::DecisionLook>,
    significant: bool,
    /// Reads whose comparison the CUPED estimate decided, and its variance reduction at the
    /// last such read.
    cuped_reads: u64,
    reduction: Option<f64>,
}

impl Reader<'_> {
    fn read(&mut self, arms: &Arms, hour: u32) {
        let rollups = arms.rollups(self.history);
        let r = simulation::read(self.e, self.metrics, &rollups, hour, &mut self.recorded);
        for c in r.metrics.iter().flat_map(|m| &m.comparisons) {
            self.significant |= c.significant;
            if c.estimator == Estimator::Cuped {
                self.cuped_reads += 1;
                self.reduction = c.cuped.map(|k| k.variance_reduction);
            }
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    cuped: bool,
    unadjusted: bool,
    cuped_reads: u64,
    reduction: Option<f64>,
}

/// Which units have a history before their exposure.
#[derive(Clone, Copy, PartialEq)]
enum History {
    /// 70 % of the units, from the first hour on.
    FromTheStart,
    /// Only units exposed after the first day (a metric event type new with the
    /// experiment): CUPED must not take over part-way.
    AfterTheFirstDay,
}

fn simulate(
    (kind, history): (MetricKind, History),
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    lift: f64,
    rng: &mut Xoshiro256,
) -> Outcome {
    let per_hour = PLANNED_UNITS.div_ceil(u64::from(PLAN_DAYS) * 24);
    // A/B experiments are read to their plan, A/A ones past it.
    let hours = simulation::hours(PLAN_DAYS, if lift == 0.0 { RUN } else { 1.0 });
    let mut arms = Arms::default();
    let reader = |history| Reader {
        e,
        metrics,
        history,
        recorded: Vec::new(),
        significant: false,
        cuped_reads: 0,
        reduction: None,
    };
    let (mut cuped, mut unadjusted) = (reader(true), reader(false));
    for hour in 0..hours {
        let day = simulation::day_of(hour);
        if hour < PLAN_DAYS * 24 || lift == 0.0 {
            for (v, scale) in [(0, 1.0), (1, 1.0 + lift)] {
                let may_have_history = history == History::FromTheStart || hour >= 24;
                for _ in 0..per_hour {
                    arms.add(day, v, &unit(kind, scale, may_have_history, rng));
                }
            }
        }
        cuped.read(&arms, hour);
        // The unadjusted reading is the comparison for power only.
        if lift != 0.0 {
            unadjusted.read(&arms, hour);
        }
    }
    Outcome {
        cuped: cuped.significant,
        unadjusted: unadjusted.significant,
        cuped_reads: cuped.cuped_reads,
        reduction: cuped.reduction,
    }
}

fn main() {
    let (experiments, seed) = simulation::args(20_261_206);
    let started = Instant::now();
    println!(
        "{PLANNED_UNITS} units per variant planned over {PLAN_DAYS} days, {:.0} % with history; \
         A/A read hourly to {RUN}× the plan, A/B (+{:.0} %) to the plan; {experiments} experiments per row",
        RETURNING * 100.0,
        LIFT * 100.0
    );
    println!(
        "| metric | mode | A/A ever significant (CUPED deciding) | α + 2 MC s.e. | reads CUPED decided | variance reduction at the last read | A/B power, CUPED | A/B power, unadjusted |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut row = 0;
    for (label, kind, history) in [
        (
            "conversion (bought)",
            MetricKind::Conversion,
            History::FromTheStart,
        ),
        (
            "mean (revenue per user)",
            MetricKind::Mean,
            History::FromTheStart,
        ),
        (
            "ratio (revenue per session)",
            MetricKind::Ratio,
            History::FromTheStart,
        ),
        (
            "mean, history only after day 1",
            MetricKind::Mean,
            History::AfterTheFirstDay,
        ),
    ] {
        let metrics = HashMap::from([(
            METRIC.to_string(),
            Metric::new(METRIC, kind, Direction::Increase),
        )]);
        for (name, mode) in [
            ("fixed horizon", AnalysisMode::FixedHorizon),
            ("sequential (mSPRT)", AnalysisMode::Sequential),
            (
                "group sequential (5 looks, OBF)",
                AnalysisMode::GroupSequential,
            ),
        ] {
            let e = simulation::two_arm_experiment("cuped", METRIC, mode, PLANNED_UNITS);
            row += 1;
            let run = |lift: f64, seed: u64| {
                simulation::on_two_cores(experiments, seed, |rng| {
                    simulate((kind, history), &e, &metrics, lift, rng)
                })
            };
            let aa = run(0.0, seed.wrapping_add(row));
            let ab = run(LIFT, seed.wrapping_add(100 + row));
            let n = aa.len() as u64;
            let count = |o: &[Outcome], f: fn(&Outcome) -> bool| {
                simulation::rate(o.iter().filter(|x| f(x)).count() as u64, o.len() as u64)
            };
            let (fpr, fpr_se) = count(&aa, |o| o.cuped);
            let (power, power_se) = count(&ab, |o| o.cuped);
            let (plain, plain_se) = count(&ab, |o| o.unadjusted);
            let reads: u64 = aa.iter().map(|o| o.cuped_reads).sum();
            let reductions: Vec<f64> = aa.iter().filter_map(|o| o.reduction).collect();
            let reduction = if reductions.is_empty() {
                "—".to_string()
            } else {
                format!(
                    "{:.2}",
                    reductions.iter().sum::<f64>() / reductions.len() as f64
                )
            };
            let total_reads = n * u64::from(simulation::hours(PLAN_DAYS, RUN));
            println!(
                "| {label} | {name} | {fpr:.3} ± {fpr_se:.3} | {:.3} | {:.3} | {reduction} | {power:.3} ± {power_se:.3} | {plain:.3} ± {plain_se:.3} |",
                ALPHA + 2.0 * (ALPHA * (1.0 - ALPHA) / n as f64).sqrt(),
                reads as f64 / total_reads as f64,
            );
        }
    }
    println!("{:.0} s", started.elapsed().as_secs_f64());
}
