//! The client snapshot: the part of a snapshot that may be handed to every browser.
//!
//! A browser key is public, so whatever the snapshot it reads contains is public too. The
//! full snapshot holds draft experiments (features not yet announced), the unit ids of QA
//! overrides, and targeting values such as e-mail addresses or account ids. The client view
//! leaves out the first two and replaces the values of private attributes by hashes, while
//! every unit outside a QA override gets exactly the answers the full snapshot gives.

use alloc::vec::Vec;

use crate::condition::{private_hash_num, private_hash_str};
use crate::snapshot::{Condition, FlagValue, Op, Operand, Snapshot, Status};

/// The snapshot a browser (client) key may read:
/// - draft experiments are left out, and so are flag rules that take their value from one (a
///   draft assigns nobody, so such a rule never matches);
/// - forced overrides are left out (their units get the variant the hash gives them);
/// - tests of the attributes named in `private_attributes` keep their meaning without their
///   values: `eq`, `ne`, `in` and `not_in` compare hashes ([`private_hash_str`],
///   [`private_hash_num`]); any other operator on a private attribute is tested as if the
///   context lacked the attribute, since an order or a substring cannot be hashed;
/// - strings that only those tests used are dropped from the string table;
/// - exposures carry no private attribute (format 2's per-experiment table leaves them out).
pub fn client_view(snapshot: &Snapshot, private_attributes: &[&str]) -> Snapshot {
    let mut view = snapshot.clone();

    let mut new_index: Vec<Option<u32>> = Vec::with_capacity(view.experiments.len());
    let mut kept = 0u32;
    for e in &view.experiments {
        if e.status == Status::Draft {
            new_index.push(None);
        } else {
            new_index.push(Some(kept));
            kept += 1;
        }
    }
    view.experiments.retain(|e| e.status != Status::Draft);
    if !view.exposure_attributes.is_empty() {
        let mut kept_flags = new_index.iter().map(Option::is_some);
        view.exposure_attributes
            .retain(|_| kept_flags.next().unwrap_or(false));
    }
    for e in &mut view.experiments {
        e.forced.clear();
    }
    for flag in &mut view.flags {
        flag.rules.retain_mut(|rule| match &mut rule.value {
            FlagValue::Json(_) => true,
            FlagValue::Experiment { experiment, .. } => {
                match new_index.get(*experiment as usize).copied().flatten() {
                    Some(index) => {
                        *experiment = index;
                        true
                    }
                    None => false,
                }
            }
        });
    }

    let is_private = |attr: u32| {
        view.attributes
            .get(attr as usize)
            .is_some_and(|name| private_attributes.contains(&name.as_str()))
    };
    let private: Vec<bool> = (0..view.attributes.len() as u32).map(is_private).collect();
    // Browsers do not send private attributes' values in their exposures either: a
    // dimension on one is read out from server runtimes' exposures only.
    for attributes in &mut view.exposure_attributes {
        attributes.retain(|&attr| !private.get(attr as usize).copied().unwrap_or(false));
    }
    for node in &mut view.conditions {
        let Condition::Attr { attr, op, operand } = node else {
            continue;
        };
        if !private.get(*attr as usize).copied().unwrap_or(false) {
            continue;
        }
        let string = |i: &u32| snapshot.strings.get(*i as usize).map_or("", |s| s.as_str());
        let hashable = matches!(op, Op::Eq | Op::Ne | Op::In | Op::NotIn);
        let hashed = match operand {
            Operand::Str(i) if hashable => Some(Operand::HashedStr(private_hash_str(string(i)))),
            Operand::StrList(list) if hashable => Some(Operand::HashedStrList(
                list.iter().map(|i| private_hash_str(string(i))).collect(),
            )),
            // NaN equals nothing, so it can leave a list; a lone NaN operand never matches,
            // which is what a test of an absent attribute gives too.
            Operand::Num(n) if hashable => private_hash_num(*n).map(Operand::HashedNum),
            Operand::NumList(list) if hashable => Some(Operand::HashedNumList(
                list.iter().filter_map(|n| private_hash_num(*n)).collect(),
            )),
            Operand::Str(_) | Operand::StrList(_) | Operand::Num(_) | Operand::NumList(_) => None,
            // No value to hide: `exists`, booleans, and operands that are already hashed.
            _ => continue,
        };
        *node = match hashed {
            Some(operand) => Condition::Attr {
                attr: *attr,
                op: *op,
                operand,
            },
            // A test of a missing attribute is false, and so is an empty `any`.
            None => Condition::Any(Vec::new()),
        };
    }

    compact_strings(&mut view);
    view
}

/// Drops the strings nothing refers to any more, keeping the others in their order.
fn compact_strings(view: &mut Snapshot) {
    let mut used = alloc::vec![false; view.strings.len()];
    let mut mark = |i: u32| {
        if let Some(slot) = used.get_mut(i as usize) {
            *slot = true;
        }
    };
    for e in &view.experiments {
        for v in &e.variants {
            mark(v.key);
        }
    }
    for node in &view.conditions {
        match node {
            Condition::Attr {
                operand: Operand::Str(i),
                ..
            } => mark(*i),
            Condition::Attr {
                operand: Operand::StrList(list),
                ..
            } => list.iter().for_each(|i| mark(*i)),
            _ => {}
        }
    }
    let mut remap = Vec::with_capacity(used.len());
    let mut next = 0u32;
    for &keep in &used {
        remap.push(next);
        next += u32::from(keep);
    }
    let mut index = 0;
    view.strings.retain(|_| {
        index += 1;
        used[index - 1]
    });
    let moved = |i: &mut u32| *i = remap.get(*i as usize).copied().unwrap_or(*i);
    for e in &mut view.experiments {
        for v in &mut e.variants {
            moved(&mut v.key);
        }
    }
    for node in &mut view.conditions {
        match node {
            Condition::Attr {
                operand: Operand::Str(i),
                ..
            } => moved(i),
            Condition::Attr {
                operand: Operand::StrList(list),
                ..
            } => list.iter_mut().for_each(moved),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{Expr, Literal, SnapshotBuilder};
    use crate::snapshot::{Allocation, Experiment, Forced, Id, Variant};
    use crate::{Context, Evaluator};
    use alloc::string::{String, ToString};
    use alloc::vec;

    fn experiment(b: &mut SnapshotBuilder, key: &str, status: Status, targeting: Option<Expr>) {
        let targeting = targeting.map(|t| b.condition(&t));
        let variants = ["control", "treatment"]
            .iter()
            .zip([5_000, 10_000])
            .map(|(name, threshold)| Variant {
                key: b.string(name),
                threshold,
                config: "{}".into(),
            })
            .collect();
        let unit = b.attribute("user_id");
        let mut id = [0u8; 16];
        id[0] = key.len() as u8;
        b.experiment(Experiment {
            id: Id(id),
            key: key.into(),
            status,
            unit,
            targeting,
            holdout: None,
            allocation: Allocation::Traffic { bp: 10_000 },
            variants,
            forced: vec![Forced {
                unit: "qa-alice".into(),
                variant: 1,
            }],
            shipped: None,
            switchback_period_s: None,
        });
    }

    fn sample() -> Snapshot {
        let mut b = SnapshotBuilder::new(7, 0);
        experiment(&mut b, "launch-secret", Status::Draft, None);
        let targeting = Expr::Any(vec![
            Expr::attr(
                "email",
                Op::In,
                Literal::StrList(vec!["ceo@corp.example".into()]),
            ),
            Expr::attr("email", Op::EndsWith, Literal::Str("@corp.example".into())),
            Expr::attr("account", Op::Eq, Literal::Num(4242.0)),
            Expr::attr("country", Op::Eq, Literal::Str("DE".into())),
        ]);
        experiment(&mut b, "checkout", Status::Running, Some(targeting));
        b.build()
    }

    #[test]
    fn drafts_forced_units_and_private_values_are_left_out() {
        let full = sample();
        let view = client_view(&full, &["email", "account"]);
        let keys: Vec<&str> = view.experiments.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["checkout"]);
        assert!(view.experiments.iter().all(|e| e.forced.is_empty()));
        let text = serde_json::to_string(&view).unwrap();
        for secret in [
            "launch-secret",
            "qa-alice",
            "ceo@corp.example",
            "@corp.example",
            "4242",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("DE"), "public values stay");
        Evaluator::new(view).expect("the client view is a valid snapshot");
    }

    #[test]
    fn units_outside_overrides_get_the_same_answers() {
        let full = sample();
        let view = client_view(&full, &["email", "account"]);
        let full = Evaluator::new(full).unwrap();
        let view = Evaluator::new(view).unwrap();
        let contexts = [
            Context::new()
                .with("user_id", "u1")
                .with("email", "ceo@corp.example"),
            Context::new()
                .with("user_id", "u2")
                .with("email", "dev@corp.example"),
            Context::new().with("user_id", "u3").with("account", 4242.0),
            Context::new().with("user_id", "u4").with("account", -0.0),
            Context::new().with("user_id", "u5").with("country", "DE"),
            Context::new()
                .with("user_id", "u6")
                .with("email", "someone@else.example"),
        ];
        let answer = |e: &Evaluator, c: &Context| -> Option<(String, Option<String>)> {
            let evaluation = e.evaluate(c, 0);
            evaluation
                .experiments
                .iter()
                .find(|a| a.experiment_key == "checkout")
                .map(|a| (a.reason.as_str().to_string(), a.variant.map(String::from)))
        };
        let mut assigned = 0;
        for c in &contexts {
            let expected = answer(&full, c);
            // The one deliberate difference: `ends_with` on a private attribute.
            let expected = if c.get("email") == Some(&"dev@corp.example".into()) {
                Some(("not_targeted".to_string(), None))
            } else {
                expected
            };
            assert_eq!(answer(&view, c), expected, "{c:?}");
            assigned += usize::from(expected.is_some_and(|(reason, _)| reason == "assigned"));
        }
        assert_eq!(assigned, 3, "the hashed tests still match");
    }

    #[test]
    fn exposure_attributes_follow_the_experiments_kept() {
        let mut full = sample();
        let country = full.attributes.iter().position(|a| a == "country").unwrap() as u32;
        let email = full.attributes.iter().position(|a| a == "email").unwrap() as u32;
        full.exposure_attributes = vec![vec![email], vec![country, email]];
        let view = client_view(&full, &[]);
        assert_eq!(view.exposure_attributes, [vec![country, email]]);
        let view = client_view(&full, &["email"]);
        assert_eq!(view.exposure_attributes, [vec![country]]);
        let view = Evaluator::new(view).expect("valid");
        let context = Context::new().with("user_id", "u1").with("country", "DE");
        let checkout = view.experiment_index("checkout").unwrap();
        assert_eq!(
            view.exposure_attributes(checkout, &context).0,
            [("country", crate::ValueRef::Str("DE"))]
        );
    }

    #[test]
    fn flag_rules_of_drafts_go_and_the_others_follow_the_new_index() {
        let mut full = sample();
        let values = vec!["1".to_string(), "2".to_string()];
        full.flags.push(crate::snapshot::Flag {
            key: "f".into(),
            enabled: true,
            unit: 0,
            off_value: "0".into(),
            default_value: "0".into(),
            rules: vec![
                crate::snapshot::FlagRule {
                    condition: None,
                    rollout_bp: 10_000,
                    value: FlagValue::Experiment {
                        experiment: 0,
                        values: values.clone(),
                    },
                },
                crate::snapshot::FlagRule {
                    condition: None,
                    rollout_bp: 10_000,
                    value: FlagValue::Experiment {
                        experiment: 1,
                        values,
                    },
                },
            ],
        });
        full.experiments[1].forced = vec![Forced {
            unit: "qa-bob".into(),
            variant: 0,
        }];
        let view = client_view(&full, &[]);
        assert_eq!(view.flags[0].rules.len(), 1);
        assert!(matches!(
            view.flags[0].rules[0].value,
            FlagValue::Experiment { experiment: 0, .. }
        ));
        Evaluator::new(view).expect("valid");
    }
}
