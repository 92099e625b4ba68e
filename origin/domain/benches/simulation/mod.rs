//! What the decision simulations share: their command line, the split of the experiments
//! over the machine's two cores (each with its own seeded generator, so that the same
//! arguments print the same table), and Monte Carlo rates.

use abx_stats::montecarlo::Xoshiro256;

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
