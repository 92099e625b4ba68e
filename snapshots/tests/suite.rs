//! The committed conformance suite is exactly what the generator produces, and it covers
//! every branch of the spec.

use std::path::Path;

use abx_core::snapshot::Op;

#[test]
fn committed_files_match_the_generator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = abx_snapshots::generate();
    let stale: Vec<&str> = suite
        .artifacts
        .iter()
        .filter(|a| std::fs::read(root.join(&a.path)).ok().as_deref() != Some(a.bytes.as_slice()))
        .map(|a| a.path.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "regenerate with `cargo run -p abx-snapshots` and review: {stale:?}"
    );
}

#[test]
fn suite_covers_the_spec() {
    let suite = abx_snapshots::generate();
    assert!(suite.cases >= 20_000, "only {} cases", suite.cases);
    for reason in abx_core::Reason::ALL {
        let seen = suite
            .coverage
            .reasons
            .get(reason.as_str())
            .copied()
            .unwrap_or(0);
        assert!(seen >= 20, "reason {} seen {seen} times", reason.as_str());
    }
    for reason in ["disabled", "rule", "experiment", "default"] {
        let seen = suite
            .coverage
            .flag_reasons
            .get(reason)
            .copied()
            .unwrap_or(0);
        assert!(seen >= 20, "flag reason {reason} seen {seen} times");
    }
    for op in Op::ALL {
        for outcome in [true, false] {
            let seen = suite
                .coverage
                .ops
                .get(&(op.as_str(), outcome))
                .copied()
                .unwrap_or(0);
            assert!(
                seen >= 5,
                "operator {} was {outcome} {seen} times",
                op.as_str()
            );
        }
    }
    // The spec asks for at least six scenarios besides the broken ones.
    let scenarios = suite
        .artifacts
        .iter()
        .filter(|a| a.path.starts_with("vectors/") && !a.path.contains("invalid"))
        .count();
    assert!(scenarios >= 6);
}

#[test]
fn realistic_snapshot_fits_the_size_budget() {
    let scenario = abx_snapshots::scenarios::realistic_1000();
    let binary = abx_core::encode(&scenario.snapshot).len();
    let json = serde_json::to_vec(&scenario.snapshot)
        .expect("serializes")
        .len();
    println!("realistic_1000: {binary} bytes binary, {json} bytes compact JSON");
    assert!(binary <= 150_000, "{binary} bytes");
    assert_eq!(scenario.snapshot.experiments.len(), 1_000);
}

/// The client view answers like the full snapshot for every experiment whose targeting has
/// no test that cannot be hashed (a substring or order test of a private attribute), and the
/// hashed tests decide: some of those experiments assign and some do not target.
#[test]
fn client_view_keeps_every_hashable_answer() {
    use abx_core::snapshot::{Condition, Snapshot};
    use abx_snapshots::reference::{Coverage, Reference};

    let full = abx_snapshots::scenarios::targeting().snapshot;
    let client = abx_snapshots::scenarios::targeting_client().snapshot;
    let unhashable: Vec<bool> = full
        .conditions
        .iter()
        .zip(&client.conditions)
        .map(|(f, c)| {
            matches!(f, Condition::Attr { .. }) && matches!(c, Condition::Any(l) if l.is_empty())
        })
        .collect();
    fn reaches(s: &Snapshot, node: u32, marked: &[bool]) -> bool {
        marked[node as usize]
            || match &s.conditions[node as usize] {
                Condition::All(c) | Condition::Any(c) => c.iter().any(|&c| reaches(s, c, marked)),
                Condition::Not(c) => reaches(s, *c, marked),
                Condition::Segment(seg) => reaches(s, s.segments[*seg as usize].condition, marked),
                Condition::Attr { .. } => false,
            }
    }
    let comparable: Vec<usize> = (0..full.experiments.len())
        .filter(|&i| {
            full.experiments[i]
                .targeting
                .is_none_or(|t| !reaches(&full, t, &unhashable))
        })
        .collect();
    assert!(comparable.len() >= 20, "{comparable:?}");

    let (full_ref, client_ref) = (
        Reference { snapshot: &full },
        Reference { snapshot: &client },
    );
    let mut coverage = Coverage::default();
    let mut rng = abx_snapshots::contexts::Rng::new(99);
    let (mut assigned, mut not_targeted) = (0, 0);
    for _ in 0..3_000 {
        let text =
            abx_snapshots::contexts::to_json_text(&abx_snapshots::contexts::context(&mut rng));
        let context = serde_json::from_str(&text).expect("JSON");
        for &i in &comparable {
            let a = full_ref.experiment(i, &context, 0, &mut coverage);
            let b = client_ref.experiment(i, &context, 0, &mut coverage);
            assert_eq!(
                (a.variant, a.reason),
                (b.variant, b.reason),
                "{} for {text}",
                full.experiments[i].key
            );
            assigned += usize::from(b.reason == "assigned");
            not_targeted += usize::from(b.reason == "not_targeted");
        }
    }
    assert!(
        assigned > 1_000 && not_targeted > 1_000,
        "{assigned} {not_targeted}"
    );
}

/// `Evaluator::experiment_attributes` and `flag_attributes` name every attribute an
/// evaluation reads: a context cut down to them gets the full context's answer, for every
/// experiment and flag of every scenario.
#[test]
fn an_evaluation_reads_only_the_attributes_it_names() {
    use abx_core::{Context, Evaluator};

    let mut rng = abx_snapshots::contexts::Rng::new(7);
    let now_ms = 1_760_001_600_000;
    let mut compared = 0;
    for scenario in abx_snapshots::scenarios::all() {
        let names = scenario.snapshot.attributes.clone();
        let evaluator = Evaluator::new(scenario.snapshot).expect("valid scenario");
        let only = |context: &Context, attributes: Vec<u32>| {
            let mut cut = Context::new();
            for a in attributes {
                let name = names[a as usize].as_str();
                if let Some(value) = context.get(name) {
                    cut.insert(name, value.clone());
                }
            }
            cut
        };
        let experiments = evaluator.snapshot().experiments.len() as u32;
        let flags: Vec<String> = evaluator
            .snapshot()
            .flags
            .iter()
            .map(|f| f.key.clone())
            .collect();
        for _ in 0..200 {
            let text =
                abx_snapshots::contexts::to_json_text(&abx_snapshots::contexts::context(&mut rng));
            let context: Context = serde_json::from_str(&text).expect("JSON");
            for i in 0..experiments.min(100) {
                let full = evaluator.experiment_at(i, &context, now_ms);
                let cut = only(&context, evaluator.experiment_attributes(i));
                let part = evaluator.experiment_at(i, &cut, now_ms);
                assert_eq!(
                    full.map(|a| (a.variant, a.reason)),
                    part.map(|a| (a.variant, a.reason)),
                    "{} experiment {i}: {text}",
                    scenario.name
                );
                compared += 1;
            }
            for (i, key) in flags.iter().enumerate().take(50) {
                let full = evaluator.flag(key, &context, now_ms);
                let cut = only(&context, evaluator.flag_attributes(i as u32));
                let part = evaluator.flag(key, &cut, now_ms);
                assert_eq!(
                    full.map(|f| (f.value, f.reason)),
                    part.map(|f| (f.value, f.reason)),
                    "{} flag {key}: {text}",
                    scenario.name
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 50_000, "{compared}");
}
