//! `cargo bench -p abx-core --bench assign`
//!
//! Hashing, single assignments, the full 1,000-experiment evaluation and snapshot decoding,
//! plus Unleash's Rust engine (unleash-yggdrasil) evaluating an equivalent set of toggles in
//! the same run. Figures are recorded in docs/benchmarks.md.

use std::collections::HashMap;
use std::hint::black_box;

use abx_core::snapshot::{
    Allocation, Condition, Experiment, FlagValue, Id, Op, Operand, Snapshot, Status, Variant,
};
use abx_core::{Context, Evaluator, Expr, Literal, SnapshotBuilder};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value as Json, json};

const REALISTIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../snapshots/golden/realistic_1000.abxs"
);

fn user() -> Context {
    Context::new()
        .with("user_id", "8f14e45f-ceea-467f-a0e6-0a1b2c3d4e5f")
        .with("country", "US")
        .with("platform", "ios")
        .with("app_version", "2.4.1")
        .with("plan", "pro")
        .with("age", 34i64)
}

fn one_experiment(targeted: bool) -> Evaluator {
    let mut b = SnapshotBuilder::new(1, 0);
    let targeting = targeted.then(|| {
        b.condition(&Expr::All(vec![
            Expr::attr(
                "country",
                Op::In,
                Literal::StrList(vec!["US".into(), "CA".into()]),
            ),
            Expr::attr("app_version", Op::SemverGte, Literal::Str("2.3.0".into())),
        ]))
    });
    let variants = vec![
        Variant {
            key: b.string("control"),
            threshold: 5_000,
            config: r#"{"color":"blue"}"#.into(),
        },
        Variant {
            key: b.string("treatment"),
            threshold: 10_000,
            config: r#"{"color":"green"}"#.into(),
        },
    ];
    let unit = b.attribute("user_id");
    b.experiment(Experiment {
        id: Id([0x5a; 16]),
        key: "checkout_button_color".into(),
        status: Status::Running,
        unit,
        targeting,
        holdout: None,
        allocation: Allocation::Traffic { bp: 10_000 },
        variants,
        forced: vec![],
        shipped: None,
        switchback_period_s: None,
    });
    Evaluator::new(b.build()).expect("valid snapshot")
}

fn bench_abx(c: &mut Criterion) {
    let key = b"experiment-0042:8f14e45f-ceea-467f-a0e6f"; // 40 bytes
    assert_eq!(key.len(), 40);
    c.bench_function("murmur3_x86_32 40-byte key", |b| {
        b.iter(|| abx_core::murmur3_x86_32(black_box(key), 0))
    });

    let context = user();
    for (name, targeted) in [
        ("assign one experiment", false),
        ("assign one experiment with targeting", true),
    ] {
        let evaluator = one_experiment(targeted);
        c.bench_function(name, |b| {
            b.iter(|| {
                evaluator.experiment(black_box("checkout_button_color"), black_box(&context), 0)
            })
        });
    }

    let bytes = std::fs::read(REALISTIC).expect("run `cargo run -p abx-snapshots` first");
    let evaluator = Evaluator::from_bytes(&bytes).expect("golden snapshot");
    c.bench_function("evaluate 1000 experiments + 200 flags", |b| {
        b.iter(|| evaluator.evaluate(black_box(&context), 1_760_000_000_000))
    });
    c.bench_function("decode + index 1000-experiment snapshot", |b| {
        b.iter(|| Evaluator::from_bytes(black_box(&bytes)).expect("decodes"))
    });
}

/// Translates one abx condition into Unleash constraints (which are ANDed in a strategy).
fn constraints(s: &Snapshot, node: u32, out: &mut Vec<Json>) {
    let text = |i: &u32| s.strings[*i as usize].clone();
    match &s.conditions[node as usize] {
        Condition::All(children) => children.iter().for_each(|&c| constraints(s, c, out)),
        Condition::Segment(seg) => constraints(s, s.segments[*seg as usize].condition, out),
        Condition::Attr { attr, op, operand } => {
            let name = &s.attributes[*attr as usize];
            let constraint = match (op, operand) {
                (Op::In, Operand::StrList(list)) => {
                    json!({"contextName": name, "operator": "IN", "values": list.iter().map(text).collect::<Vec<_>>()})
                }
                (Op::Eq, Operand::Str(v)) => {
                    json!({"contextName": name, "operator": "IN", "values": [text(v)]})
                }
                (Op::SemverGte, Operand::Str(v)) => {
                    json!({"contextName": name, "operator": "SEMVER_GT", "value": text(v)})
                }
                (Op::Gte, Operand::Num(v)) => {
                    json!({"contextName": name, "operator": "NUM_GTE", "value": v.to_string()})
                }
                other => panic!("no Unleash equivalent needed for {other:?}"),
            };
            out.push(constraint);
        }
        other => panic!("no Unleash equivalent needed for {other:?}"),
    }
}

/// The realistic snapshot as Unleash toggles: each experiment becomes a flexibleRollout at
/// its traffic share with its targeting as constraints and its variants with JSON payloads;
/// each flag becomes one strategy per rule. Unleash has no layers or holdouts, so a layered
/// experiment's slot share becomes a plain rollout percentage.
fn unleash_features(s: &Snapshot) -> Json {
    let mut features = Vec::new();
    for e in &s.experiments {
        let share_bp: u32 = match &e.allocation {
            Allocation::Traffic { bp } => u32::from(*bp),
            Allocation::Layer { ranges, .. } => {
                ranges.iter().map(|r| u32::from(r.end - r.start)).sum()
            }
        };
        let mut cs = Vec::new();
        if let Some(t) = e.targeting {
            constraints(s, t, &mut cs);
        }
        let mut previous = 0;
        let variants: Vec<Json> = e
            .variants
            .iter()
            .map(|v: &Variant| {
                let weight = (u32::from(v.threshold) - previous) / 10;
                previous = u32::from(v.threshold);
                json!({"name": s.strings[v.key as usize], "weight": weight, "stickiness": "userId",
                       "weightType": "variable", "payload": {"type": "json", "value": v.config}})
            })
            .collect();
        features.push(json!({
            "name": e.key, "enabled": true,
            "strategies": [{"name": "flexibleRollout", "constraints": cs,
                "parameters": {"rollout": format!("{}", share_bp / 100), "stickiness": "userId", "groupId": e.key}}],
            "variants": variants,
        }));
    }
    for f in &s.flags {
        let strategies: Vec<Json> = f
            .rules
            .iter()
            .map(|rule| {
                let mut cs = Vec::new();
                if let Some(c) = rule.condition {
                    constraints(s, c, &mut cs);
                }
                assert!(matches!(rule.value, FlagValue::Json(_)));
                json!({"name": "flexibleRollout", "constraints": cs,
                       "parameters": {"rollout": format!("{}", rule.rollout_bp / 100), "stickiness": "userId", "groupId": f.key}})
            })
            .collect();
        features.push(json!({"name": f.key, "enabled": f.enabled, "strategies": strategies}));
    }
    json!({"version": 2, "features": features})
}

fn bench_unleash(c: &mut Criterion) {
    use unleash_yggdrasil::{ClientFeatures, EngineState};

    let bytes = std::fs::read(REALISTIC).expect("golden snapshot");
    let snapshot = abx_core::decode(&bytes).expect("decodes");
    let features_json = serde_json::to_vec(&unleash_features(&snapshot)).expect("serializes");
    println!(
        "payload sizes: abx snapshot {} bytes, Unleash client features JSON {} bytes",
        bytes.len(),
        features_json.len()
    );
    let features: ClientFeatures =
        serde_json::from_slice(&features_json).expect("valid Unleash features");
    let engine = EngineState::default();
    if let Some(warnings) = engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(
        features.clone(),
    )) {
        assert!(warnings.is_empty(), "{warnings:?}");
    }
    let context = unleash_yggdrasil::Context {
        user_id: Some("8f14e45f-ceea-467f-a0e6-0a1b2c3d4e5f".into()),
        properties: Some(HashMap::from([
            ("country".to_string(), "US".to_string()),
            ("platform".to_string(), "ios".to_string()),
            ("app_version".to_string(), "2.4.1".to_string()),
            ("plan".to_string(), "pro".to_string()),
            ("age".to_string(), "34".to_string()),
        ])),
        ..Default::default()
    };
    c.bench_function("unleash-yggdrasil resolve_all 1200 toggles", |b| {
        b.iter(|| engine.resolve_all(black_box(&context), &None))
    });
    let names: Vec<String> = features.features.iter().map(|f| f.name.clone()).collect();
    c.bench_function("unleash-yggdrasil get_variant x1200", |b| {
        b.iter(|| {
            for name in &names {
                black_box(engine.get_variant(name, black_box(&context), &None));
            }
        })
    });
    c.bench_function("unleash-yggdrasil take_state 1200 toggles", |b| {
        b.iter(|| {
            let engine = EngineState::default();
            engine.take_state(unleash_yggdrasil::UpdateMessage::FullResponse(black_box(
                features.clone(),
            )));
            engine
        })
    });
}

criterion_group!(benches, bench_abx, bench_unleash);
criterion_main!(benches);
