//! A/A (and A/B) simulation of daily peeking on a conversion metric.
//!
//! Simulates many experiments with a fixed daily traffic, looks at the results once a day,
//! and counts how often each decision rule declares a winner: under a true null (A/A) that
//! is the false-positive rate, under a true effect (A/B) it is the power. Naive daily
//! peeking at a fixed-horizon p-value inflates the false-positive rate far above alpha; the
//! always-valid mSPRT and the group-sequential boundaries keep it at or below alpha.
//!
//! ```text
//! cargo run --release -p abx-stats --bin aa_simulation -- \
//!     [--experiments 20000] [--days 14] [--daily-units 2000] [--baseline 0.10] \
//!     [--lift 0.10] [--alpha 0.05] [--seed 20240611]
//! ```
//!
//! The only randomness in the crate lives in its simulations, drawn from the seeded
//! xoshiro256** generator of `abx_stats::montecarlo`,
//! so every run with the same arguments prints the same table.

use std::process::ExitCode;
use std::time::Instant;

use abx_stats::group_sequential::{Look, SpendingFunction, boundaries};
use abx_stats::montecarlo::{Xoshiro256, threshold};
use abx_stats::sequential::{SequentialConfig, sequential_proportion_test};
use abx_stats::{Proportion, beta_binomial, two_proportion_z_test};

#[derive(Debug, Clone, Copy)]
struct Settings {
    experiments: u64,
    days: usize,
    daily_units: u64,
    baseline: f64,
    lift: f64,
    alpha: f64,
    seed: u64,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut settings = Self {
            experiments: 20_000,
            days: 14,
            daily_units: 2_000,
            baseline: 0.10,
            lift: 0.10,
            alpha: 0.05,
            seed: 20_240_611,
        };
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--experiments" => settings.experiments = value.parse().map_err(|e| bad(&e))?,
                "--days" => settings.days = value.parse().map_err(|e| bad(&e))?,
                "--daily-units" => settings.daily_units = value.parse().map_err(|e| bad(&e))?,
                "--baseline" => settings.baseline = value.parse().map_err(|e| bad(&e))?,
                "--lift" => settings.lift = value.parse().map_err(|e| bad(&e))?,
                "--alpha" => settings.alpha = value.parse().map_err(|e| bad(&e))?,
                "--seed" => settings.seed = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if settings.days == 0 || settings.daily_units < 2 || settings.experiments == 0 {
            return Err("days, experiments and daily units (≥ 2) must be positive".to_owned());
        }
        Ok(settings)
    }
}

/// The decision rules compared by the simulation.
const RULES: [&str; 6] = [
    "fixed horizon (final day only)",
    "naive daily peeking (z-test)",
    "Bayesian daily peeking (P>97.5% or <2.5%)",
    "sequential mSPRT (daily)",
    "group sequential OBF (daily)",
    "group sequential Pocock (daily)",
];

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    rejections: u64,
    stopping_day_sum: u64,
}

/// Runs one simulated experiment and records, per rule, whether and when it rejected H0.
fn simulate(
    rng: &mut Xoshiro256,
    settings: &Settings,
    treatment_rate: f64,
    obf: &[Look],
    pocock: &[Look],
    tallies: &mut [Tally; RULES.len()],
) {
    let per_arm = settings.daily_units / 2;
    let (t_c, t_t) = (threshold(settings.baseline), threshold(treatment_rate));
    let sequential = SequentialConfig {
        alpha: settings.alpha,
        tuning_units: (settings.daily_units * settings.days as u64) as f64,
    };
    let mut control = Proportion::new(0, 0);
    let mut treatment = Proportion::new(0, 0);
    let mut stopped: [Option<usize>; RULES.len()] = [None; RULES.len()];
    for day in 0..settings.days {
        control.units += per_arm;
        control.conversions += rng.binomial(per_arm, t_c);
        treatment.units += per_arm;
        treatment.conversions += rng.binomial(per_arm, t_t);
        let z_test = two_proportion_z_test(&control, &treatment, settings.alpha).ok();
        let z = z_test.map_or(0.0, |c| c.absolute.statistic);
        let p = z_test.map_or(1.0, |c| c.absolute.p_value);
        let chance = beta_binomial(&control, &treatment).map_or(0.5, |b| b.chance_to_beat_control);
        let always_valid =
            sequential_proportion_test(&control, &treatment, &sequential).is_ok_and(|s| s.reject);
        let last = day + 1 == settings.days;
        let decisions = [
            last && p < settings.alpha,
            p < settings.alpha,
            !(0.025..=0.975).contains(&chance),
            always_valid,
            obf[day].crossed(z),
            pocock[day].crossed(z),
        ];
        for (slot, decided) in stopped.iter_mut().zip(decisions) {
            if slot.is_none() && decided {
                *slot = Some(day + 1);
            }
        }
    }
    for (tally, day) in tallies.iter_mut().zip(stopped) {
        if let Some(day) = day {
            tally.rejections += 1;
            tally.stopping_day_sum += day as u64;
        }
    }
}

fn run(
    settings: &Settings,
    treatment_rate: f64,
    seed: u64,
    obf: &[Look],
    pocock: &[Look],
) -> [Tally; RULES.len()] {
    let mut rng = Xoshiro256::new(seed);
    let mut tallies = [Tally::default(); RULES.len()];
    for _ in 0..settings.experiments {
        simulate(
            &mut rng,
            settings,
            treatment_rate,
            obf,
            pocock,
            &mut tallies,
        );
    }
    tallies
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match Settings::parse(&args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("aa_simulation: {message}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let fractions: Vec<f64> = (1..=settings.days)
        .map(|d| d as f64 / settings.days as f64)
        .collect();
    let design = |spending| boundaries(&fractions, settings.alpha, spending);
    let (obf, pocock) = match (
        design(SpendingFunction::OBrienFleming),
        design(SpendingFunction::Pocock),
    ) {
        (Ok(obf), Ok(pocock)) => (obf, pocock),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("aa_simulation: {e}");
            return ExitCode::FAILURE;
        }
    };
    let treatment_rate = settings.baseline * (1.0 + settings.lift);
    let null = run(&settings, settings.baseline, settings.seed, &obf, &pocock);
    let effect = run(
        &settings,
        treatment_rate,
        settings.seed ^ 0xA5A5_A5A5_A5A5_A5A5,
        &obf,
        &pocock,
    );

    let n = settings.experiments as f64;
    let extra = if args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", args.join(" "))
    };
    println!("$ cargo run --release -p abx-stats --bin aa_simulation{extra}");
    println!(
        "{} experiments per scenario, {} daily looks, {} units/day split 50/50, baseline {:.3}, \
         A/B lift {:+.1}% (rate {:.4}), alpha {}, seed {}",
        settings.experiments,
        settings.days,
        settings.daily_units,
        settings.baseline,
        100.0 * settings.lift,
        treatment_rate,
        settings.alpha,
        settings.seed
    );
    println!(
        "mSPRT tuned at {} total units (the planned sample); group-sequential looks at d/{}.",
        settings.daily_units * settings.days as u64,
        settings.days
    );
    println!();
    println!(
        "| rule | A/A false-positive rate (± MC s.e.) | A/B power | mean stopping day (A/B) |"
    );
    println!("| --- | --- | --- | --- |");
    for (i, rule) in RULES.iter().enumerate() {
        let fpr = null[i].rejections as f64 / n;
        let se = (fpr * (1.0 - fpr) / n).sqrt();
        let power = effect[i].rejections as f64 / n;
        let mean_day = if effect[i].rejections > 0 {
            format!(
                "{:.1}",
                effect[i].stopping_day_sum as f64 / effect[i].rejections as f64
            )
        } else {
            "–".to_owned()
        };
        println!(
            "| {rule} | {:.4} (± {:.4}) | {power:.4} | {mean_day} |",
            fpr, se
        );
    }
    println!();
    println!("elapsed: {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
