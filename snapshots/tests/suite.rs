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
