//! What the decision simulations share: their command line, the split of the experiments
//! over the machine's two cores (each with its own seeded generator, so that the same
//! arguments print the same table), Monte Carlo rates, and the simulated clock of hourly
//! reads through `results::compute_with`.

// Each bench compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;

use abx_origin_domain::model::catalog::Metric;
use abx_origin_domain::model::experiment::{Analysis, AnalysisMode, Experiment};
use abx_origin_domain::results::{self, DecisionLook, Results};
use abx_origin_domain::rollup::Rollups;
use abx_stats::montecarlo::Xoshiro256;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The simulated experiments start at midnight UTC of this day (2024-10-04).
pub const START_DAY: i64 = 20_000;
pub const ALPHA: f64 = 0.05;

/// Hourly reads of a plan of `plan_days` days read to `run` times it, and on until its last
/// day counts as complete (its grace included), so that a test due on that day is read.
pub fn hours(plan_days: u32, run: f64) -> u32 {
    let after_last_day = (results::LATE_EVENT_GRACE_MS / HOUR_MS) as u32 + 1;
    (f64::from(plan_days) * 24.0 * run).round() as u32 + after_last_day
}

/// The day of the simulated hour `hour` (from the start).
pub fn day_of(hour: u32) -> i64 {
    START_DAY + i64::from(hour / 24)
}

/// Reads the results at the end of simulated hour `hour`, as the API and the guardrail
/// monitor do: with the looks earlier reads recorded, which it updates.
pub fn read(
    e: &Experiment,
    metrics: &HashMap<String, Metric>,
    rollups: &Rollups,
    hour: u32,
    recorded: &mut Vec<DecisionLook>,
) -> Results {
    let reading = results::Reading {
        now_ms: (START_DAY * 24 + i64::from(hour) + 1) * HOUR_MS,
        data_until_ms: None,
        recorded,
        daily: false,
    };
    let r = results::compute_with(e, metrics, rollups, &reading);
    recorded.clone_from(&r.decision_looks);
    r
}

/// A running A/B experiment (control and treatment, 50/50) on `primary`, with `planned`
/// units per variant and five looks in group-sequential mode.
pub fn two_arm_experiment(
    key: &str,
    primary: &str,
    mode: AnalysisMode,
    planned: u64,
) -> Experiment {
    let analysis = Analysis {
        mode,
        alpha: ALPHA,
        planned_units_per_variant: Some(planned),
        looks: (mode == AnalysisMode::GroupSequential).then_some(5),
        ..Analysis::default()
    };
    Experiment::running(
        key,
        &[("control", 5_000), ("treatment", 5_000)],
        primary,
        &[],
        analysis,
        START_DAY * DAY_MS,
    )
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut Xoshiro256) -> f64 {
    let (u, v) = (rng.uniform().max(f64::MIN_POSITIVE), rng.uniform());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `--experiments N` (default 1,000) and `--seed S`; exits with a message on anything else.
pub fn args(default_seed: u64) -> (u64, u64) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut experiments, mut seed) = (1_000_u64, default_seed);
    let mut iter = args.iter().filter(|a| *a != "--bench");
    while let Some(flag) = iter.next() {
        let parsed = iter
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
            .and_then(|value| {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            });
        match (flag.as_str(), parsed) {
            ("--experiments", Ok(n)) => experiments = n.max(2),
            ("--seed", Ok(s)) => seed = s,
            (_, Err(message)) => exit(&message),
            (other, Ok(_)) => exit(&format!("unknown flag {other}")),
        }
    }
    (experiments, seed)
}

fn exit(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}

/// Runs `simulate` for `experiments` experiments, half on each core.
pub fn on_two_cores<T: Send>(
    experiments: u64,
    seed: u64,
    simulate: impl Fn(&mut Xoshiro256) -> T + Sync,
) -> Vec<T> {
    let threads = 2_u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let simulate = &simulate;
                scope.spawn(move || {
                    let mut rng = Xoshiro256::new(seed ^ (t + 1).wrapping_mul(0x9E37_79B9));
                    (0..experiments / threads + u64::from(t < experiments % threads))
                        .map(|_| simulate(&mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    })
}

/// A rate and its Monte Carlo standard error.
pub fn rate(hits: u64, n: u64) -> (f64, f64) {
    let p = hits as f64 / n.max(1) as f64;
    (p, (p * (1.0 - p) / n.max(1) as f64).sqrt())
}
