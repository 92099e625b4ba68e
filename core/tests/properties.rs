//! Statistical and robustness properties of assignment. Randomness comes from proptest with
//! a fixed seed, so the statistical checks (p > 0.001) are deterministic rather than flaky:
//! a failure means the hash or the bucketing changed, not bad luck.

use abx_core::snapshot::{Allocation, Experiment, Id, SlotRange, Status, Variant};
use abx_core::{Context, Evaluator, Reason, SnapshotBuilder, thresholds};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Upper 0.1% points of the chi-squared distribution, by degrees of freedom (scipy.stats.chi2.isf(0.001, df)).
const CHI2_CRITICAL_0_001: [f64; 6] = [0.0, 10.828, 13.816, 16.266, 18.467, 20.515];

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0xabc),
        failure_persistence: None,
        ..Config::default()
    }
}

fn experiment(
    builder: &mut SnapshotBuilder,
    key: &str,
    id: Id,
    allocation: Allocation,
    weights: &[u16],
) -> u32 {
    let ends = thresholds(weights).expect("weights sum to 10000");
    let variants = ends
        .iter()
        .enumerate()
        .map(|(i, &threshold)| Variant {
            key: builder.string(&format!("v{i}")),
            threshold,
            config: "{}".into(),
        })
        .collect();
    let unit = builder.attribute("user_id");
    builder.experiment(Experiment {
        id,
        key: key.into(),
        status: Status::Running,
        unit,
        targeting: None,
        holdout: None,
        allocation,
        variants,
        forced: vec![],
        shipped: None,
        switchback_period_s: None,
    })
}

fn user(prefix: &str, i: u32) -> Context {
    Context::new().with("user_id", format!("{prefix}{i}"))
}

fn chi_squared(observed: &[u64], expected: &[f64]) -> f64 {
    observed
        .iter()
        .zip(expected)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum()
}

/// Weights in basis points that sum to 10 000, each at least 5%.
fn weights() -> impl Strategy<Value = Vec<u16>> {
    (2usize..=5)
        .prop_flat_map(|k| proptest::collection::vec(500u16..4_000, k))
        .prop_map(|raw| {
            let total: u32 = raw.iter().map(|&w| u32::from(w)).sum();
            let mut scaled: Vec<u16> = raw
                .iter()
                .map(|&w| (u32::from(w) * 10_000 / total) as u16)
                .collect();
            let short = 10_000 - scaled.iter().map(|&w| u32::from(w)).sum::<u32>();
            scaled[0] += short as u16;
            scaled
        })
}

proptest! {
    #![proptest_config(config(6))]

    /// Over 100k units the variant split matches the weights (chi-squared, k-1 df, p > 0.001),
    /// and the traffic gate admits the configured share (|z| < 3.29, two-sided p > 0.001).
    #[test]
    fn split_is_even(id: [u8; 16], weights in weights(), traffic_bp in 1_000u16..=10_000, prefix in "[a-z]{1,8}-") {
        let mut b = SnapshotBuilder::new(1, 0);
        experiment(&mut b, "e", Id(id), Allocation::Traffic { bp: traffic_bp }, &weights);
        let evaluator = Evaluator::new(b.build()).expect("valid");
        let n = 100_000u32;
        let mut counts = vec![0u64; weights.len()];
        let mut admitted = 0u64;
        for i in 0..n {
            let a = evaluator.experiment("e", &user(&prefix, i), 0).expect("exists");
            if let Some(v) = a.variant_index {
                counts[v as usize] += 1;
                admitted += 1;
            }
        }
        let p = f64::from(traffic_bp) / 10_000.0;
        let z = (admitted as f64 - f64::from(n) * p) / (f64::from(n) * p * (1.0 - p)).sqrt().max(1e-9);
        prop_assert!(traffic_bp == 10_000 || z.abs() < 3.29, "traffic z = {z}");
        let expected: Vec<f64> = weights.iter().map(|&w| admitted as f64 * f64::from(w) / 10_000.0).collect();
        let chi2 = chi_squared(&counts, &expected);
        prop_assert!(chi2 < CHI2_CRITICAL_0_001[weights.len() - 1], "chi2 = {chi2} for {counts:?} vs {expected:?}");
    }

    /// Membership in an experiment of one layer says nothing about membership in another
    /// layer's experiment (2x2 chi-squared test of independence, p > 0.001).
    #[test]
    fn layers_are_independent(a: [u8; 16], b_id: [u8; 16], share_a in 2_000u16..8_000, share_b in 2_000u16..8_000) {
        let mut b = SnapshotBuilder::new(1, 0);
        let layer_a = b.layer(Id(a), "a");
        let layer_b = b.layer(Id(b_id), "b");
        let alloc = |layer, end| Allocation::Layer { layer, ranges: vec![SlotRange { start: 0, end }] };
        experiment(&mut b, "in_a", Id([1; 16]), alloc(layer_a, share_a), &[5_000, 5_000]);
        experiment(&mut b, "in_b", Id([2; 16]), alloc(layer_b, share_b), &[5_000, 5_000]);
        let evaluator = Evaluator::new(b.build()).expect("valid");
        let mut table = [[0u64; 2]; 2];
        for i in 0..100_000 {
            let evaluation = evaluator.evaluate(&user("u", i), 0);
            let in_a = evaluation.experiments[0].variant.is_some();
            let in_b = evaluation.experiments[1].variant.is_some();
            table[usize::from(in_a)][usize::from(in_b)] += 1;
        }
        let n: u64 = table.iter().flatten().sum();
        let rows = [table[0][0] + table[0][1], table[1][0] + table[1][1]];
        let cols = [table[0][0] + table[1][0], table[0][1] + table[1][1]];
        let mut chi2 = 0.0;
        for r in 0..2 {
            for c in 0..2 {
                let e = rows[r] as f64 * cols[c] as f64 / n as f64;
                chi2 += (table[r][c] as f64 - e).powi(2) / e;
            }
        }
        prop_assert!(chi2 < CHI2_CRITICAL_0_001[1], "chi2 = {chi2}, table {table:?}");
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// However a layer's slots are carved up, a unit is in at most one of its experiments,
    /// and exactly one when the ranges cover the whole layer.
    #[test]
    fn layer_exclusivity(layer_id: [u8; 16], mut cuts in proptest::collection::btree_set(1u16..10_000, 1..12), units in proptest::collection::vec(".{0,12}", 50)) {
        let mut b = SnapshotBuilder::new(1, 0);
        let layer = b.layer(Id(layer_id), "l");
        cuts.insert(10_000);
        let mut start = 0;
        for (i, end) in cuts.iter().enumerate() {
            let ranges = vec![SlotRange { start, end: *end }];
            experiment(&mut b, &format!("e{i}"), Id([i as u8; 16]), Allocation::Layer { layer, ranges }, &[10_000]);
            start = *end;
        }
        let evaluator = Evaluator::new(b.build()).expect("valid");
        for unit in units {
            let context = Context::new().with("user_id", unit.as_str());
            let assigned = evaluator.evaluate(&context, 0).experiments.iter().filter(|a| a.variant.is_some()).count();
            prop_assert_eq!(assigned, usize::from(!unit.is_empty()));
        }
    }

    /// The same inputs always give the same outputs, also after an encode/decode round trip.
    #[test]
    fn determinism(unit in ".{1,40}", now_ms: i64) {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/golden/switchback.abxs")).expect("golden");
        let first = Evaluator::from_bytes(&bytes).expect("loads");
        let second = Evaluator::from_bytes(&abx_core::encode(first.snapshot())).expect("round trip");
        let context = Context::new().with("user_id", unit.as_str()).with("city", unit.as_str());
        let a = first.evaluate(&context, now_ms);
        prop_assert_eq!(&a, &first.evaluate(&context, now_ms));
        prop_assert_eq!(&a, &second.evaluate(&context, now_ms));
    }
}

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../snapshots/golden/{name}.abxs",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("golden file")
}

/// Replaces the payload with `payload` and fixes the length and checksum, so that mutations
/// reach the postcard decoder and the validator rather than stopping at the checksum.
fn reframe(payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"ABXS\x01\x00\x00\x00".to_vec();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&abx_core::crc32(payload).to_le_bytes());
    bytes
}

fn exercise(bytes: &[u8]) {
    if let Ok(evaluator) = Evaluator::from_bytes(bytes) {
        let contexts = [
            Context::new(),
            Context::new()
                .with("user_id", "u1")
                .with("country", "US")
                .with("age", 30i64),
            Context::new()
                .with("user_id", 7i64)
                .with("tags", vec!["vip".to_string()])
                .with("beta", true),
        ];
        for context in &contexts {
            let evaluation = evaluator.evaluate(context, 1_760_000_000_000);
            for a in &evaluation.experiments {
                assert_eq!(a.variant.is_some(), a.variant_index.is_some());
                if a.reason == Reason::Assigned {
                    assert!(a.log_exposure);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    /// Arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
        exercise(&reframe(&bytes));
    }

    /// Valid payloads with a few bytes changed get past the checksum and must still either
    /// be refused with an error or evaluate without panicking.
    #[test]
    fn mutated_snapshots_never_panic(
        scenario in prop::sample::select(vec!["basic", "layers", "targeting", "holdouts_forced", "flags", "switchback"]),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let bytes = golden(scenario);
        let mut payload = bytes[12..bytes.len() - 4].to_vec();
        for (index, value) in edits {
            let at = index.index(payload.len());
            payload[at] = value;
        }
        exercise(&reframe(&payload));
    }
}

#[test]
fn unit_values_are_normalised() {
    let mut b = SnapshotBuilder::new(1, 0);
    experiment(
        &mut b,
        "e",
        Id([9; 16]),
        Allocation::Traffic { bp: 10_000 },
        &[5_000, 5_000],
    );
    let evaluator = Evaluator::new(b.build()).expect("valid");
    let reason = |context: Context| {
        evaluator
            .experiment("e", &context, 0)
            .expect("exists")
            .reason
    };
    // Integers hash as their decimal text, so 42 and "42" are the same unit.
    let as_number = evaluator
        .experiment("e", &Context::new().with("user_id", 42i64), 0)
        .expect("exists");
    let as_text = evaluator
        .experiment("e", &Context::new().with("user_id", "42"), 0)
        .expect("exists");
    assert_eq!(as_number.variant, as_text.variant);
    assert_eq!(
        reason(Context::new().with("user_id", -7i64)),
        Reason::Assigned
    );
    for missing in [
        Context::new(),
        Context::new().with("user_id", ""),
        Context::new().with("user_id", 1.5),
        Context::new().with("user_id", f64::NAN),
        Context::new().with("user_id", 1e300),
        Context::new().with("user_id", true),
        Context::new().with("user_id", vec!["a".to_string()]),
    ] {
        assert_eq!(reason(missing), Reason::MissingUnit);
    }
}
