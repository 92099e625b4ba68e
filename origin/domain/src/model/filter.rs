//! Metric filters: a targeting condition over a metric event's `properties`, so that a
//! metric counts only the events that match (`{"all": [{"attr": "currency", "op": "eq",
//! "value": "USD"}]}`).
//!
//! The language is the targeting language users already write, less what has no meaning on
//! an event or no equivalent in every engine that counts events: segments (they describe
//! users, not events) and the semantic-version operators (the warehouse's SQL could not
//! compare versions exactly as abx-core does). An attribute test means what it means in
//! targeting: false when the property is missing or of another type.
//!
//! Two engines evaluate filters and must agree event for event: [`Filter::matches`] in the
//! SQL pipeline, and the SQL that `abx_origin_pipeline::clickhouse` generates from
//! [`Filter::expr`] in the warehouse.

use std::collections::{BTreeSet, HashMap};

use abx_core::snapshot::Op;
use abx_core::{Expr, Literal};
use serde_json::{Map, Value as Json};

use super::targeting;
use crate::FieldError;

/// A validated, compiled metric filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    expr: Expr,
    /// The filter's compact JSON text, which identifies it (see [`Filter::id`]).
    text: String,
}

/// Validates a metric's filter, reporting problems under `field`.
pub fn validate(condition: &Json, field: &str, errors: &mut Vec<FieldError>) {
    let before = errors.len();
    check_supported(condition, field, errors);
    if errors.len() == before {
        targeting::validate(condition, field, &HashMap::new(), errors);
    }
}

/// Refuses what filters do not support, with the path of each occurrence.
fn check_supported(condition: &Json, path: &str, errors: &mut Vec<FieldError>) {
    let Some(object) = condition.as_object() else {
        return;
    };
    if object.contains_key("segment") {
        errors.push(FieldError::new(
            path,
            "metric filters test event properties; they cannot refer to segments",
        ));
    }
    if let Some(op) = object.get("op").and_then(Json::as_str)
        && op.starts_with("semver_")
    {
        errors.push(FieldError::new(
            path,
            format!("metric filters do not support `{op}`"),
        ));
    }
    for which in ["all", "any"] {
        if let Some(children) = object.get(which).and_then(Json::as_array) {
            for (i, child) in children.iter().enumerate() {
                check_supported(child, &format!("{path}.{which}[{i}]"), errors);
            }
        }
    }
    if let Some(child) = object.get("not") {
        check_supported(child, &format!("{path}.not"), errors);
    }
}

impl Filter {
    /// Compiles a filter that [`validate`] accepted.
    pub fn compile(condition: &Json) -> Result<Filter, String> {
        Ok(Filter {
            expr: targeting::compile(condition, &HashMap::new())?,
            text: condition.to_string(),
        })
    }

    /// The compiled condition, for engines that translate it.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The filter's JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A short stable identifier of the filter's text (16 hex digits), which tells apart the
    /// per-unit totals of two filters on one event type.
    pub fn id(&self) -> String {
        format!("{:016x}", abx_core::private_hash_str(&self.text))
    }

    /// The property names the filter tests.
    pub fn properties(&self) -> BTreeSet<&str> {
        fn walk<'a>(expr: &'a Expr, out: &mut BTreeSet<&'a str>) {
            match expr {
                Expr::All(children) | Expr::Any(children) => {
                    children.iter().for_each(|c| walk(c, out))
                }
                Expr::Not(child) => walk(child, out),
                Expr::Attr { attr, .. } => {
                    out.insert(attr);
                }
                Expr::Segment(_) => {}
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.expr, &mut out);
        out
    }

    /// Whether an event with these properties matches.
    pub fn matches(&self, properties: &Map<String, Json>) -> bool {
        eval(&self.expr, properties)
    }
}

fn eval(expr: &Expr, properties: &Map<String, Json>) -> bool {
    match expr {
        Expr::All(children) => children.iter().all(|c| eval(c, properties)),
        Expr::Any(children) => children.iter().any(|c| eval(c, properties)),
        Expr::Not(child) => !eval(child, properties),
        // Filters have no segments (validation refuses them).
        Expr::Segment(_) => false,
        Expr::Attr { attr, op, value } => properties
            .get(attr)
            .is_some_and(|property| test(property, *op, value)),
    }
}

/// One attribute test, as abx-core's targeting defines it for scalar values: a type
/// mismatch is false.
fn test(property: &Json, op: Op, literal: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordered = |ord: Option<Ordering>| {
        ord.is_some_and(|ord| match op {
            Op::Gt => ord == Ordering::Greater,
            Op::Gte => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Lte => ord != Ordering::Greater,
            _ => false,
        })
    };
    match (op, property, literal) {
        (Op::Exists, _, _) => true,
        (Op::Eq, Json::String(a), Literal::Str(b)) => a == b,
        (Op::Eq, Json::Number(a), Literal::Num(b)) => a.as_f64() == Some(*b),
        (Op::Eq, Json::Bool(a), Literal::Bool(b)) => a == b,
        (Op::Ne, Json::String(a), Literal::Str(b)) => a != b,
        (Op::Ne, Json::Number(a), Literal::Num(b)) => a.as_f64().is_some_and(|a| a != *b),
        (Op::Ne, Json::Bool(a), Literal::Bool(b)) => a != b,
        (Op::In, Json::String(a), Literal::StrList(list)) => list.contains(a),
        (Op::In, Json::Number(a), Literal::NumList(list)) => {
            a.as_f64().is_some_and(|a| list.contains(&a))
        }
        (Op::NotIn, Json::String(a), Literal::StrList(list)) => !list.contains(a),
        (Op::NotIn, Json::Number(a), Literal::NumList(list)) => {
            a.as_f64().is_some_and(|a| !list.contains(&a))
        }
        (Op::Contains, Json::String(a), Literal::Str(b)) => a.contains(b.as_str()),
        (Op::StartsWith, Json::String(a), Literal::Str(b)) => a.starts_with(b.as_str()),
        (Op::EndsWith, Json::String(a), Literal::Str(b)) => a.ends_with(b.as_str()),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Json::Number(a), Literal::Num(b)) => {
            ordered(a.as_f64().and_then(|a| a.partial_cmp(b)))
        }
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Json::String(a), Literal::Str(b)) => {
            ordered(Some(a.as_bytes().cmp(b.as_bytes())))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(condition: Json) -> Vec<String> {
        let mut errors = Vec::new();
        validate(&condition, "filter", &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    fn props(value: Json) -> Map<String, Json> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn refuses_segments_and_semantic_versions_with_their_paths() {
        let errors = errors_of(json!({"all": [
            {"segment": "staff"},
            {"any": [{"attr": "app", "op": "semver_gt", "value": "1.2.0"}]},
            {"attr": "currency", "op": "eq", "value": "USD"}
        ]}));
        assert_eq!(
            errors,
            [
                "filter.all[0]: metric filters test event properties; they cannot refer to segments",
                "filter.all[1].any[0]: metric filters do not support `semver_gt`"
            ]
        );
        assert!(
            errors_of(json!({"attr": "x", "op": "like", "value": 1}))[0]
                .contains("unknown operator")
        );
        assert!(
            errors_of(json!({"attr": "currency", "op": "in", "value": ["USD", "EUR"]})).is_empty()
        );
    }

    /// Each operator on each property type, including the mismatches that are false.
    #[test]
    fn tests_mean_what_they_mean_in_targeting() {
        let event =
            props(json!({"currency": "USD", "amount": 12.5, "first": true, "page": "/shop/cart"}));
        let cases = [
            (
                json!({"attr": "currency", "op": "eq", "value": "USD"}),
                true,
            ),
            (
                json!({"attr": "currency", "op": "eq", "value": "usd"}),
                false,
            ),
            (json!({"attr": "amount", "op": "eq", "value": 12.5}), true),
            (
                json!({"attr": "amount", "op": "eq", "value": "12.5"}),
                false,
            ),
            (json!({"attr": "first", "op": "eq", "value": true}), true),
            (json!({"attr": "first", "op": "ne", "value": true}), false),
            (
                json!({"attr": "currency", "op": "ne", "value": "EUR"}),
                true,
            ),
            (
                json!({"attr": "missing", "op": "ne", "value": "EUR"}),
                false,
            ),
            (
                json!({"attr": "currency", "op": "in", "value": ["EUR", "USD"]}),
                true,
            ),
            (
                json!({"attr": "currency", "op": "not_in", "value": ["EUR", "USD"]}),
                false,
            ),
            (
                json!({"attr": "amount", "op": "in", "value": [1, 12.5]}),
                true,
            ),
            (
                json!({"attr": "amount", "op": "not_in", "value": ["12.5"]}),
                false,
            ),
            (
                json!({"attr": "page", "op": "starts_with", "value": "/shop"}),
                true,
            ),
            (
                json!({"attr": "page", "op": "ends_with", "value": "cart"}),
                true,
            ),
            (
                json!({"attr": "page", "op": "contains", "value": "/cart/"}),
                false,
            ),
            (json!({"attr": "amount", "op": "gt", "value": 12}), true),
            (json!({"attr": "amount", "op": "lte", "value": 12}), false),
            (json!({"attr": "currency", "op": "lt", "value": "V"}), true),
            (json!({"attr": "amount", "op": "gt", "value": "1"}), false),
            (json!({"attr": "first", "op": "exists"}), true),
            (json!({"attr": "missing", "op": "exists"}), false),
            (json!({"not": {"attr": "missing", "op": "exists"}}), true),
            (json!({"any": []}), false),
            (json!({"all": []}), true),
        ];
        for (condition, expected) in cases {
            assert!(errors_of(condition.clone()).is_empty(), "{condition}");
            let filter = Filter::compile(&condition).expect("compiles");
            assert_eq!(filter.matches(&event), expected, "{condition}");
        }
    }

    #[test]
    fn ids_follow_the_text_and_properties_are_listed() {
        let a = Filter::compile(
            &json!({"all": [{"attr": "b", "op": "exists"}, {"attr": "a", "op": "eq", "value": 1}]}),
        )
        .expect("compiles");
        let b = Filter::compile(&json!({"attr": "a", "op": "eq", "value": 1})).expect("compiles");
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert_eq!(a.properties().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }
}
