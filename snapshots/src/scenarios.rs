//! The golden snapshots. Each scenario exercises one area of the spec; together they cover
//! every reason, operator and flag path (the generator's coverage check enforces it).

use abx_core::snapshot::{
    Allocation, Experiment, Flag, FlagRule, FlagValue, Forced, Id, Op, SlotRange, Snapshot, Status,
    Variant,
};
use abx_core::{Expr, Literal, SnapshotBuilder, thresholds};

use crate::contexts::Rng;

/// A named snapshot and how many conformance cases to generate for it.
pub struct Scenario {
    pub name: &'static str,
    pub snapshot: Snapshot,
    pub cases: usize,
    /// Signing seed, for scenarios published signed.
    pub signing_seed: Option<[u8; 32]>,
    /// Spread of `now_ms` around the base time, for switchback scenarios.
    pub time_spread_ms: i64,
}

/// Fixed publication time of every golden snapshot (2025-10-09T09:20:00Z).
pub const BASE_TIME_MS: i64 = 1_760_001_600_000;

/// A deterministic UUIDv4-shaped id derived from a name.
pub fn id(name: &str) -> Id {
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let h = abx_core::murmur3_x86_32(name.as_bytes(), 0x5eed_0000 + i as u32);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Id(bytes)
}

fn pct(percent: f64) -> u16 {
    (percent * 100.0).round() as u16
}

/// A concise experiment description, turned into the snapshot model by [`add`].
struct Spec<'a> {
    key: &'a str,
    unit: &'a str,
    status: Status,
    allocation: Allocation,
    variants: &'a [(&'a str, f64, &'a str)],
    targeting: Option<Expr>,
    holdout: Option<u32>,
    forced: &'a [(&'a str, u32)],
    shipped: Option<u32>,
    switchback_period_s: Option<u32>,
}

impl<'a> Spec<'a> {
    fn new(key: &'a str, allocation: Allocation, variants: &'a [(&'a str, f64, &'a str)]) -> Self {
        Spec {
            key,
            unit: "user_id",
            status: Status::Running,
            allocation,
            variants,
            targeting: None,
            holdout: None,
            forced: &[],
            shipped: None,
            switchback_period_s: None,
        }
    }
}

fn add(b: &mut SnapshotBuilder, spec: Spec<'_>) -> u32 {
    let weights: Vec<u16> = spec.variants.iter().map(|v| pct(v.1)).collect();
    let ends =
        thresholds(&weights).unwrap_or_else(|| panic!("weights of {} must sum to 100", spec.key));
    let variants = spec
        .variants
        .iter()
        .zip(ends)
        .map(|(&(key, _, config), threshold)| Variant {
            key: b.string(key),
            threshold,
            config: config.into(),
        })
        .collect();
    let unit = b.attribute(spec.unit);
    let targeting = spec.targeting.as_ref().map(|t| b.condition(t));
    b.experiment(Experiment {
        id: id(spec.key),
        key: spec.key.into(),
        status: spec.status,
        unit,
        targeting,
        holdout: spec.holdout,
        allocation: spec.allocation,
        variants,
        forced: spec
            .forced
            .iter()
            .map(|&(unit, variant)| Forced {
                unit: unit.into(),
                variant,
            })
            .collect(),
        shipped: spec.shipped,
        switchback_period_s: spec.switchback_period_s,
    })
}

fn traffic(percent: f64) -> Allocation {
    Allocation::Traffic { bp: pct(percent) }
}

fn slots(layer: u32, ranges: &[(f64, f64)]) -> Allocation {
    Allocation::Layer {
        layer,
        ranges: ranges
            .iter()
            .map(|&(start, end)| SlotRange {
                start: pct(start),
                end: pct(end),
            })
            .collect(),
    }
}

const AB: &[(&str, f64, &str)] = &[
    ("control", 50.0, r#"{"button_color":"blue"}"#),
    ("treatment", 50.0, r#"{"button_color":"green"}"#),
];

fn s(v: &str) -> Literal {
    Literal::Str(v.into())
}

fn list(items: &[&str]) -> Literal {
    Literal::StrList(items.iter().map(|s| s.to_string()).collect())
}

fn attr(name: &str, op: Op, value: Literal) -> Expr {
    Expr::attr(name, op, value)
}

pub fn basic() -> Scenario {
    let mut b = SnapshotBuilder::new(1, BASE_TIME_MS);
    add(
        &mut b,
        Spec::new("checkout_button_color", traffic(100.0), AB),
    );
    add(&mut b, Spec::new("pricing_page_copy", traffic(20.0), AB));
    add(
        &mut b,
        Spec::new(
            "onboarding_steps",
            traffic(50.0),
            &[
                ("control", 33.33, "{}"),
                ("three_steps", 33.33, r#"{"steps":3}"#),
                ("five_steps", 33.34, r#"{"steps":5}"#),
            ],
        ),
    );
    add(
        &mut b,
        Spec::new(
            "search_ranking",
            traffic(75.5),
            &[
                ("control", 10.0, r#"{"ranker":"bm25"}"#),
                ("dense", 20.0, r#"{"ranker":"dense"}"#),
                ("hybrid", 30.0, r#"{"ranker":"hybrid"}"#),
                ("learned", 40.0, r#"{"ranker":"ltr","depth":2}"#),
            ],
        ),
    );
    // A zero-weight variant is kept in the snapshot but never assigned.
    add(
        &mut b,
        Spec::new(
            "retired_arm",
            traffic(100.0),
            &[
                ("control", 50.0, "{}"),
                ("retired", 0.0, r#"{"old":true}"#),
                ("treatment", 50.0, r#"{"new":true}"#),
            ],
        ),
    );
    add(&mut b, Spec::new("zero_traffic", traffic(0.0), AB));
    add(
        &mut b,
        Spec {
            status: Status::Draft,
            ..Spec::new("draft_experiment", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            status: Status::Paused,
            ..Spec::new("paused_experiment", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            status: Status::Archived,
            ..Spec::new("archived_experiment", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            status: Status::Completed,
            shipped: Some(1),
            ..Spec::new("shipped_green_button", traffic(30.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            status: Status::Completed,
            ..Spec::new("completed_no_winner", traffic(100.0), AB)
        },
    );
    // Cluster and geo randomization: the unit is a company or a city.
    add(
        &mut b,
        Spec {
            unit: "company_id",
            ..Spec::new("team_dashboard", traffic(60.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            ..Spec::new("city_delivery_fee", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "device_id",
            ..Spec::new("app_icon", traffic(90.0), AB)
        },
    );
    Scenario {
        name: "basic",
        snapshot: b.build(),
        cases: 4_000,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

pub fn layers() -> Scenario {
    let mut b = SnapshotBuilder::new(2, BASE_TIME_MS);
    let checkout = b.layer(id("layer:checkout_ui"), "checkout_ui");
    let search = b.layer(id("layer:search_backend"), "search_backend");
    b.layer(id("layer:empty"), "empty_layer");
    add(
        &mut b,
        Spec::new("checkout_button", slots(checkout, &[(0.0, 20.0)]), AB),
    );
    add(
        &mut b,
        Spec::new(
            "checkout_layout",
            slots(checkout, &[(20.0, 35.0), (60.0, 70.0)]),
            AB,
        ),
    );
    add(
        &mut b,
        Spec::new(
            "checkout_copy",
            slots(checkout, &[(35.0, 40.0), (70.0, 72.5), (99.99, 100.0)]),
            &[
                ("control", 50.0, "{}"),
                ("short", 25.0, r#"{"copy":"short"}"#),
                ("long", 25.0, r#"{"copy":"long"}"#),
            ],
        ),
    );
    // A paused experiment keeps its slots, so nobody else gets its users meanwhile.
    add(
        &mut b,
        Spec {
            status: Status::Paused,
            ..Spec::new("checkout_paused", slots(checkout, &[(40.0, 50.0)]), AB)
        },
    );
    let mut targeted = Spec::new("checkout_targeted", slots(checkout, &[(50.0, 60.0)]), AB);
    targeted.targeting = Some(attr("country", Op::In, list(&["US", "CA"])));
    add(&mut b, targeted);
    add(
        &mut b,
        Spec {
            unit: "device_id",
            ..Spec::new("search_ranker", slots(search, &[(0.0, 50.0)]), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "device_id",
            ..Spec::new(
                "search_cache",
                slots(search, &[(50.0, 100.0)]),
                &[
                    ("control", 90.0, "{}"),
                    ("warm", 10.0, r#"{"cache":"warm"}"#),
                ],
            )
        },
    );
    add(&mut b, Spec::new("unlayered_banner", traffic(40.0), AB));
    add(&mut b, Spec::new("unlayered_full", traffic(100.0), AB));
    Scenario {
        name: "layers",
        snapshot: b.build(),
        cases: 4_000,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

pub fn targeting() -> Scenario {
    let mut b = SnapshotBuilder::new(3, BASE_TIME_MS);
    let north_america = b.segment(
        id("segment:north_america"),
        "north_america",
        &attr("country", Op::In, list(&["US", "CA", "MX"])),
    );
    let paying = b.segment(
        id("segment:paying"),
        "paying",
        &Expr::Any(vec![
            attr("plan", Op::Eq, s("pro")),
            attr("plan", Op::Eq, s("enterprise")),
        ]),
    );
    // A segment built on other segments.
    let paying_north_america = b.segment(
        id("segment:paying_na"),
        "paying_north_america",
        &Expr::All(vec![Expr::Segment(north_america), Expr::Segment(paying)]),
    );

    let tests: Vec<(&str, Expr)> = vec![
        ("t_eq_str", attr("country", Op::Eq, s("US"))),
        ("t_eq_num", attr("age", Op::Eq, Literal::Num(30.0))),
        ("t_eq_bool", attr("beta", Op::Eq, Literal::Bool(true))),
        ("t_ne_str", attr("country", Op::Ne, s("US"))),
        ("t_ne_num", attr("age", Op::Ne, Literal::Num(30.0))),
        ("t_ne_bool", attr("beta", Op::Ne, Literal::Bool(true))),
        (
            "t_in_str",
            attr("country", Op::In, list(&["US", "GB", "DE"])),
        ),
        (
            "t_in_num",
            attr(
                "age",
                Op::In,
                Literal::NumList(vec![18.0, 21.0, 30.0, 65.0]),
            ),
        ),
        ("t_in_list", attr("tags", Op::In, list(&["vip", "staff"]))),
        (
            "t_not_in_str",
            attr("country", Op::NotIn, list(&["US", "GB", "DE"])),
        ),
        (
            "t_not_in_num",
            attr("age", Op::NotIn, Literal::NumList(vec![18.0, 21.0])),
        ),
        (
            "t_not_in_list",
            attr("tags", Op::NotIn, list(&["vip", "staff"])),
        ),
        ("t_contains_str", attr("email", Op::Contains, s("@corp."))),
        (
            "t_contains_list",
            attr("tags", Op::Contains, s("beta_tester")),
        ),
        (
            "t_starts_with",
            attr("user_agent", Op::StartsWith, s("Mozilla/5.0 (iPhone")),
        ),
        ("t_ends_with", attr("email", Op::EndsWith, s(".com"))),
        ("t_gt_num", attr("age", Op::Gt, Literal::Num(30.0))),
        ("t_gte_num", attr("age", Op::Gte, Literal::Num(30.0))),
        ("t_lt_num", attr("score", Op::Lt, Literal::Num(0.5))),
        ("t_lte_num", attr("score", Op::Lte, Literal::Num(0.5))),
        ("t_gt_str", attr("signup_date", Op::Gt, s("2024-06-01"))),
        ("t_lte_str", attr("signup_date", Op::Lte, s("2024-06-01"))),
        ("t_semver_eq", attr("app_version", Op::SemverEq, s("2.3.0"))),
        ("t_semver_gt", attr("app_version", Op::SemverGt, s("2.3.0"))),
        (
            "t_semver_gte",
            attr("app_version", Op::SemverGte, s("2.3.0-beta.2")),
        ),
        (
            "t_semver_lt",
            attr("app_version", Op::SemverLt, s("v2.10.0")),
        ),
        ("t_semver_lte", attr("app_version", Op::SemverLte, s("2.3"))),
        ("t_exists", attr("email", Op::Exists, Literal::None)),
        (
            "t_not_exists",
            Expr::Not(Box::new(attr("email", Op::Exists, Literal::None))),
        ),
        // Operand types that never match the attribute's type: always false.
        (
            "t_mismatch_num_vs_str",
            attr("country", Op::Gt, Literal::Num(3.0)),
        ),
        ("t_mismatch_in_bool", attr("beta", Op::In, list(&["true"]))),
        (
            "t_all",
            Expr::All(vec![
                attr("country", Op::Eq, s("US")),
                attr("beta", Op::Eq, Literal::Bool(true)),
            ]),
        ),
        (
            "t_any",
            Expr::Any(vec![
                attr("plan", Op::Eq, s("pro")),
                attr("age", Op::Lt, Literal::Num(25.0)),
            ]),
        ),
        ("t_all_empty", Expr::All(vec![])),
        ("t_any_empty", Expr::Any(vec![])),
        (
            "t_nested",
            Expr::Any(vec![
                Expr::All(vec![
                    attr("country", Op::In, list(&["DE", "FR"])),
                    Expr::Not(Box::new(attr("plan", Op::Eq, s("free")))),
                ]),
                Expr::All(vec![
                    attr("app_version", Op::SemverGte, s("3.0.0")),
                    attr("beta", Op::Eq, Literal::Bool(true)),
                ]),
            ]),
        ),
        ("t_segment", Expr::Segment(north_america)),
        ("t_segment_of_segments", Expr::Segment(paying_north_america)),
        ("t_not_segment", Expr::Not(Box::new(Expr::Segment(paying)))),
    ];
    for (key, expr) in tests {
        let mut spec = Spec::new(key, traffic(100.0), AB);
        spec.targeting = Some(expr);
        add(&mut b, spec);
    }
    // Targeting combined with partial traffic.
    let mut partial = Spec::new("t_targeted_partial", traffic(35.0), AB);
    partial.targeting = Some(Expr::Segment(paying));
    add(&mut b, partial);
    Scenario {
        name: "targeting",
        snapshot: b.build(),
        cases: 4_000,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

pub fn holdouts_forced() -> Scenario {
    let mut b = SnapshotBuilder::new(4, BASE_TIME_MS);
    let global = b.holdout(id("holdout:global"), "global_holdout", pct(10.0));
    let big = b.holdout(id("holdout:big"), "big_holdout", pct(50.0));
    let layer = b.layer(id("layer:home"), "home");
    let forced: &[(&str, u32)] = &[
        ("qa-alice", 1),
        ("qa-bob", 0),
        ("ユーザー7", 1),
        ("12345", 1),
        ("qa-held", 1),
    ];
    add(
        &mut b,
        Spec {
            holdout: Some(global),
            forced,
            ..Spec::new("respects_global", traffic(100.0), AB)
        },
    );
    let global_partial = add(
        &mut b,
        Spec {
            holdout: Some(global),
            ..Spec::new("respects_global_partial", traffic(40.0), AB)
        },
    );
    let respects_big = add(
        &mut b,
        Spec {
            holdout: Some(big),
            forced,
            ..Spec::new("respects_big", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            holdout: Some(big),
            ..Spec::new("layered_with_holdout", slots(layer, &[(0.0, 70.0)]), AB)
        },
    );
    add(
        &mut b,
        Spec::new("layered_plain", slots(layer, &[(70.0, 100.0)]), AB),
    );
    add(
        &mut b,
        Spec {
            forced,
            ..Spec::new("forced_only", traffic(0.0), AB)
        },
    );
    // Forced overrides do not resurrect an experiment that is not running.
    add(
        &mut b,
        Spec {
            status: Status::Paused,
            forced,
            ..Spec::new("forced_paused", traffic(100.0), AB)
        },
    );
    let device_holdout = add(
        &mut b,
        Spec {
            unit: "device_id",
            holdout: Some(global),
            ..Spec::new("device_holdout", traffic(100.0), AB)
        },
    );
    // A shipped variant reaches everyone but the units of the holdout the experiment
    // respects (forced overrides do not apply once shipped); without a unit, everyone.
    let shipped = add(
        &mut b,
        Spec {
            status: Status::Completed,
            shipped: Some(1),
            holdout: Some(big),
            forced,
            ..Spec::new("shipped_respects_big", traffic(100.0), AB)
        },
    );
    let mut targeted = Spec {
        holdout: Some(global),
        forced,
        ..Spec::new("forced_beats_targeting", traffic(100.0), AB)
    };
    targeted.targeting = Some(attr("country", Op::Eq, s("JP")));
    let targeted = add(&mut b, targeted);
    // Flags that take their values from these experiments: a held unit falls through to
    // later rules, and the flag reports the first consulted experiment whose answer reached
    // its holdout, so that callers log the unit's arm for flags too.
    let user = b.attribute("user_id");
    let from = |experiment: u32, rollout: f64| FlagRule {
        condition: None,
        rollout_bp: pct(rollout),
        value: FlagValue::Experiment {
            experiment,
            values: vec!["\"a\"".into(), "\"b\"".into()],
        },
    };
    b.flag(flag(
        "held_falls_through",
        user,
        true,
        "\"off\"",
        "\"default\"",
        vec![from(respects_big, 100.0), rule(None, 100.0, "\"fallback\"")],
    ));
    b.flag(flag(
        "partial_rollout_then_shipped",
        user,
        true,
        "\"off\"",
        "\"default\"",
        vec![from(global_partial, 50.0), from(shipped, 100.0)],
    ));
    // Only Japanese units reach the first experiment's holdout; the others reach the second's.
    b.flag(flag(
        "targeted_then_big",
        user,
        true,
        "\"off\"",
        "\"default\"",
        vec![from(targeted, 100.0), from(respects_big, 100.0)],
    ));
    // A device-unit experiment first: its fall-through hashes another attribute, and in
    // format 2 (`dimensions`) it reaches no step, so the second experiment's counts.
    b.flag(flag(
        "device_then_user",
        user,
        true,
        "\"off\"",
        "\"default\"",
        vec![from(device_holdout, 100.0), from(global_partial, 100.0)],
    ));
    Scenario {
        name: "holdouts_forced",
        snapshot: b.build(),
        cases: 3_000,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

fn flag(
    key: &str,
    unit: u32,
    enabled: bool,
    off: &str,
    default: &str,
    rules: Vec<FlagRule>,
) -> Flag {
    Flag {
        key: key.into(),
        enabled,
        unit,
        off_value: off.into(),
        default_value: default.into(),
        rules,
    }
}

fn rule(condition: Option<u32>, rollout: f64, value: &str) -> FlagRule {
    FlagRule {
        condition,
        rollout_bp: pct(rollout),
        value: FlagValue::Json(value.into()),
    }
}

pub fn flags() -> Scenario {
    let mut b = SnapshotBuilder::new(5, BASE_TIME_MS);
    let user = b.attribute("user_id");
    let device = b.attribute("device_id");
    let beta = b.condition(&attr("beta", Op::Eq, Literal::Bool(true)));
    let us = b.condition(&attr("country", Op::Eq, s("US")));
    let modern = b.condition(&attr("app_version", Op::SemverGte, s("2.0.0")));
    let theme = add(
        &mut b,
        Spec::new(
            "theme_experiment",
            traffic(80.0),
            &[
                ("control", 50.0, r#"{"theme":"light"}"#),
                ("dark", 50.0, r#"{"theme":"dark"}"#),
            ],
        ),
    );
    let mut targeted = Spec::new("eu_checkout", traffic(100.0), AB);
    targeted.targeting = Some(attr("country", Op::In, list(&["DE", "FR", "IT"])));
    let eu = add(&mut b, targeted);
    let shipped = add(
        &mut b,
        Spec {
            status: Status::Completed,
            shipped: Some(1),
            ..Spec::new("shipped_layout", traffic(100.0), AB)
        },
    );

    b.flag(flag(
        "new_nav",
        user,
        true,
        "false",
        "false",
        vec![rule(None, 10.0, "true")],
    ));
    b.flag(flag(
        "half_rollout",
        user,
        true,
        "false",
        "false",
        vec![rule(None, 50.0, "true")],
    ));
    b.flag(flag(
        "everyone",
        user,
        true,
        "false",
        "false",
        vec![rule(None, 100.0, "true")],
    ));
    b.flag(flag(
        "nobody",
        user,
        true,
        "false",
        "false",
        vec![rule(None, 0.0, "true")],
    ));
    b.flag(flag(
        "killed",
        user,
        false,
        "false",
        "true",
        vec![rule(None, 100.0, "true")],
    ));
    b.flag(flag("no_rules", user, true, "\"off\"", "\"plain\"", vec![]));
    b.flag(flag(
        "tiered_limit",
        user,
        true,
        "0",
        "10",
        vec![
            rule(Some(beta), 100.0, "100"),
            rule(Some(us), 30.0, "50"),
            rule(None, 5.0, "25"),
        ],
    ));
    b.flag(flag(
        "banner_config",
        user,
        true,
        "null",
        r##"{"text":"Welcome","color":"#333"}"##,
        vec![rule(
            Some(modern),
            40.0,
            r##"{"text":"Hello again","color":"#0a0","dismissible":true}"##,
        )],
    ));
    b.flag(flag(
        "device_rollout",
        device,
        true,
        "false",
        "false",
        vec![rule(None, 25.0, "true")],
    ));
    b.flag(flag(
        "theme",
        user,
        true,
        "\"light\"",
        "\"system\"",
        vec![
            FlagRule {
                condition: None,
                rollout_bp: 10_000,
                value: FlagValue::Experiment {
                    experiment: theme,
                    values: vec!["\"light\"".into(), "\"dark\"".into()],
                },
            },
            rule(Some(beta), 100.0, "\"dark\""),
        ],
    ));
    b.flag(flag(
        "eu_checkout_button",
        user,
        true,
        "\"blue\"",
        "\"blue\"",
        vec![FlagRule {
            condition: None,
            rollout_bp: pct(70.0),
            value: FlagValue::Experiment {
                experiment: eu,
                values: vec!["\"blue\"".into(), "\"green\"".into()],
            },
        }],
    ));
    b.flag(flag(
        "layout_from_shipped",
        user,
        true,
        "\"v1\"",
        "\"v1\"",
        vec![FlagRule {
            condition: None,
            rollout_bp: 10_000,
            value: FlagValue::Experiment {
                experiment: shipped,
                values: vec!["\"v1\"".into(), "\"v2\"".into()],
            },
        }],
    ));
    Scenario {
        name: "flags",
        snapshot: b.build(),
        cases: 3_000,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

pub fn switchback() -> Scenario {
    let mut b = SnapshotBuilder::new(6, BASE_TIME_MS);
    let holdout = b.holdout(id("holdout:switchback"), "switchback_holdout", pct(20.0));
    let layer = b.layer(id("layer:dispatch"), "dispatch");
    add(
        &mut b,
        Spec {
            unit: "city",
            switchback_period_s: Some(3_600),
            ..Spec::new("surge_pricing_hourly", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            switchback_period_s: Some(86_400),
            ..Spec::new("daily_dispatch", traffic(60.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            switchback_period_s: Some(900),
            holdout: Some(holdout),
            ..Spec::new("quarter_hour_eta", traffic(100.0), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            switchback_period_s: Some(7_200),
            ..Spec::new("layered_a", slots(layer, &[(0.0, 50.0)]), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            switchback_period_s: Some(7_200),
            ..Spec::new("layered_b", slots(layer, &[(50.0, 100.0)]), AB)
        },
    );
    add(
        &mut b,
        Spec {
            unit: "city",
            ..Spec::new("not_switchback", traffic(100.0), AB)
        },
    );
    // Once shipped, the holdout still holds out its cities period by period.
    add(
        &mut b,
        Spec {
            unit: "city",
            status: Status::Completed,
            shipped: Some(0),
            switchback_period_s: Some(900),
            holdout: Some(holdout),
            ..Spec::new("shipped_quarter_hour", traffic(100.0), AB)
        },
    );
    Scenario {
        name: "switchback",
        snapshot: b.build(),
        cases: 3_000,
        signing_seed: None,
        time_spread_ms: 14 * 24 * 3_600_000,
    }
}

/// The published-signed variant of a small scenario; its seed is a public test key.
pub fn signed() -> Scenario {
    let mut scenario = basic();
    scenario.snapshot.snapshot_version = 7;
    scenario.name = "signed";
    scenario.cases = 500;
    scenario.signing_seed = Some(*b"abx-conformance-test-signing-key");
    scenario
}

/// 1,000 experiments shaped like a large product's: most in layers, 2-3 variants, small
/// JSON configs, one or two targeting conditions each, a global holdout and 200 flags.
pub fn realistic_1000() -> Scenario {
    let mut rng = Rng::new(1_000);
    let mut b = SnapshotBuilder::new(1_000, BASE_TIME_MS);
    let holdout = b.holdout(id("holdout:global-5"), "global_5pct", pct(5.0));
    let layers: Vec<u32> = (0..20)
        .map(|i| b.layer(id(&format!("layer:{i}")), &format!("layer_{i:02}")))
        .collect();
    let segments: Vec<u32> = ["US", "GB", "DE", "JP", "BR"]
        .iter()
        .map(|c| {
            b.segment(
                id(&format!("segment:{c}")),
                &format!("country_{c}"),
                &attr("country", Op::Eq, s(c)),
            )
        })
        .collect();
    let colors = ["blue", "green", "orange", "purple", "red", "teal"];
    let mut next_slot = [0u16; 20];
    let mut layered = 0;
    let mut keys = Vec::new();
    for i in 0..1_000 {
        let key = format!(
            "exp_{i:04}_{}",
            ["checkout", "search", "home", "pricing", "onboarding"][i % 5]
        );
        let three = rng.below(10) < 3;
        let variants: Vec<(&str, f64, String)> = if three {
            vec![
                (
                    "control",
                    33.34,
                    format!(r#"{{"color":"{}"}}"#, colors[i % 6]),
                ),
                (
                    "treatment_a",
                    33.33,
                    format!(
                        r#"{{"color":"{}","size":{}}}"#,
                        colors[(i + 1) % 6],
                        10 + i % 7
                    ),
                ),
                (
                    "treatment_b",
                    33.33,
                    format!(
                        r#"{{"color":"{}","size":{}}}"#,
                        colors[(i + 2) % 6],
                        12 + i % 5
                    ),
                ),
            ]
        } else {
            vec![
                ("control", 50.0, format!(r#"{{"limit":{}}}"#, 10 + i % 20)),
                ("treatment", 50.0, format!(r#"{{"limit":{}}}"#, 20 + i % 30)),
            ]
        };
        // 60% of experiments live in one of 20 layers, each owning a 3% slice.
        let allocation = if i % 5 < 3 {
            let layer = layered % 20;
            layered += 1;
            let start = next_slot[layer];
            next_slot[layer] = start + 300;
            Allocation::Layer {
                layer: layers[layer],
                ranges: vec![SlotRange {
                    start,
                    end: start + 300,
                }],
            }
        } else {
            Allocation::Traffic {
                bp: [500, 1_000, 2_000, 5_000, 10_000][rng.below(5) as usize],
            }
        };
        // Targeting varies the way real experiments do: a handful of shapes with varying
        // operands, so some conditions repeat across experiments and many do not.
        let countries = ["US", "CA", "GB", "DE", "FR", "JP", "BR", "IN", "MX", "AU"];
        let platform = *rng.pick(&["ios", "android", "web"]);
        let targeting = match rng.below(4) {
            0 => {
                let picked: Vec<&str> = (0..1 + rng.below(3))
                    .map(|_| *rng.pick(&countries))
                    .collect();
                attr("country", Op::In, list(&picked))
            }
            1 => Expr::All(vec![
                attr("platform", Op::Eq, s(platform)),
                attr(
                    "app_version",
                    Op::SemverGte,
                    s(&format!("2.{}.{}", rng.below(6), rng.below(3))),
                ),
            ]),
            2 => Expr::Segment(segments[i % segments.len()]),
            _ => Expr::All(vec![
                attr(
                    "plan",
                    Op::In,
                    list(
                        &[
                            ["pro", "enterprise"],
                            ["free", "pro"],
                            ["enterprise", "team"],
                        ][rng.below(3) as usize],
                    ),
                ),
                attr(
                    "age",
                    Op::Gte,
                    Literal::Num([13.0, 16.0, 18.0, 21.0, 25.0][rng.below(5) as usize]),
                ),
            ]),
        };
        let variant_refs: Vec<(&str, f64, &str)> = variants
            .iter()
            .map(|(k, w, c)| (*k, *w, c.as_str()))
            .collect();
        let mut spec = Spec::new(&key, allocation, &variant_refs);
        spec.targeting = Some(targeting);
        spec.holdout = (i % 3 == 0).then_some(holdout);
        keys.push(add(&mut b, spec));
    }
    let user = b.attribute("user_id");
    let ios = b.condition(&attr("platform", Op::Eq, s("ios")));
    for i in 0..200 {
        let rollout = [0.0, 5.0, 25.0, 50.0, 100.0][i % 5];
        let rules = if i % 4 == 0 {
            vec![rule(Some(ios), 100.0, "true"), rule(None, rollout, "true")]
        } else {
            vec![rule(None, rollout, "true")]
        };
        b.flag(flag(
            &format!("flag_{i:03}"),
            user,
            i % 50 != 49,
            "false",
            "false",
            rules,
        ));
    }
    Scenario {
        name: "realistic_1000",
        snapshot: b.build(),
        cases: 20,
        signing_seed: None,
        time_spread_ms: 0,
    }
}

/// What the targeting scenario's attributes look like to a browser when `country`, `age`,
/// `tags` and `email` are private (`abx_core::client_view`): hashed equality and membership
/// tests, and `email`'s substring tests read as if the attribute were absent.
pub const PRIVATE_ATTRIBUTES: [&str; 4] = ["country", "age", "tags", "email"];

pub fn targeting_client() -> Scenario {
    let full = targeting();
    Scenario {
        name: "targeting_client",
        snapshot: abx_core::client_view(&full.snapshot, &PRIVATE_ATTRIBUTES),
        cases: 2_000,
        ..full
    }
}

/// `holdouts_forced` in format 2: exposures carry dimension attributes (strings, numbers,
/// booleans, and lists, nulls and strings over 256 bytes that they leave out), and the
/// holdouts name their unit, so
/// that `device_holdout`, which hashes `device_id` against a `user_id` holdout (a
/// configuration older origins allowed), reaches no holdout step.
pub fn dimensions() -> Scenario {
    let mut scenario = holdouts_forced();
    scenario.name = "dimensions";
    let s = &mut scenario.snapshot;
    s.snapshot_version = 8;
    let mut attribute = |name: &str| match s.attributes.iter().position(|a| a == name) {
        Some(i) => i as u32,
        None => {
            s.attributes.push(name.into());
            (s.attributes.len() - 1) as u32
        }
    };
    let user = attribute("user_id");
    let lists: [Vec<u32>; 4] = [
        vec![
            attribute("country"),
            attribute("platform"),
            attribute("user_agent"),
        ],
        vec![attribute("age"), attribute("beta"), attribute("tags")],
        vec![],
        vec![
            attribute("score"),
            attribute("nested"),
            attribute("country"),
        ],
    ];
    s.exposure_attributes = (0..s.experiments.len())
        .map(|i| lists[i % lists.len()].clone())
        .collect();
    s.holdout_units = vec![user; s.holdouts.len()];
    scenario
}

pub fn all() -> Vec<Scenario> {
    vec![
        basic(),
        layers(),
        targeting(),
        holdouts_forced(),
        flags(),
        switchback(),
        signed(),
        realistic_1000(),
        // Last, so that the scenarios before them keep their seeds and files.
        targeting_client(),
        dimensions(),
    ]
}
