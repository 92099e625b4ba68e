//! Targeting conditions in the admin API's JSON form:
//!
//! ```json
//! {"all": [{"attr": "country", "op": "in", "value": ["US", "CA"]},
//!          {"not": {"segment": "internal_staff"}}]}
//! ```
//!
//! A condition is `{"all": [...]}`, `{"any": [...]}`, `{"not": {...}}`, `{"segment": key}` or
//! `{"attr": name, "op": op, "value": v}`. Validation happens when a condition is written
//! (so a stored condition always compiles); compilation turns it into abx-core's `Expr`.

use std::collections::{BTreeSet, HashMap};

use abx_core::snapshot::Op;
use abx_core::{Expr, Literal};
use serde_json::Value as Json;

use crate::FieldError;

/// Conditions, including expanded segments, may nest this deep (abx-core's limit).
pub const MAX_DEPTH: u32 = abx_core::MAX_CONDITION_DEPTH;
const MAX_LIST: usize = 10_000;

/// Validates a condition. `segments` gives each known segment key's own total depth.
/// Returns the segment keys the condition refers to.
pub fn validate(
    condition: &Json,
    field: &str,
    segments: &HashMap<String, u32>,
    errors: &mut Vec<FieldError>,
) -> BTreeSet<String> {
    let mut referenced = BTreeSet::new();
    let depth = check(condition, field, segments, errors, &mut referenced);
    if depth > MAX_DEPTH {
        errors.push(FieldError::new(
            field,
            format!("conditions nest {depth} deep, more than {MAX_DEPTH}"),
        ));
    }
    referenced
}

/// The total depth of a stored (already validated) condition, segments expanded.
pub fn depth(condition: &Json, segments: &HashMap<String, u32>) -> u32 {
    check(
        condition,
        "",
        segments,
        &mut Vec::new(),
        &mut BTreeSet::new(),
    )
}

/// Total depth of a condition (with segments expanded), or 0 if it is malformed.
fn check(
    condition: &Json,
    path: &str,
    segments: &HashMap<String, u32>,
    errors: &mut Vec<FieldError>,
    referenced: &mut BTreeSet<String>,
) -> u32 {
    let Some(object) = condition.as_object() else {
        errors.push(FieldError::new(path, "a condition must be an object"));
        return 0;
    };
    let mut fail = |message: String| {
        errors.push(FieldError::new(path, message));
        0
    };
    if let Some(children) = object.get("all").or_else(|| object.get("any")) {
        let which = if object.contains_key("all") {
            "all"
        } else {
            "any"
        };
        if object.len() != 1 {
            return fail(format!("`{which}` must be the only key of its object"));
        }
        let Some(children) = children.as_array() else {
            return fail(format!("`{which}` takes a list of conditions"));
        };
        let mut deepest = 0;
        for (i, child) in children.iter().enumerate() {
            deepest = deepest.max(check(
                child,
                &format!("{path}.{which}[{i}]"),
                segments,
                errors,
                referenced,
            ));
        }
        return deepest + 1;
    }
    if let Some(child) = object.get("not") {
        if object.len() != 1 {
            return fail("`not` must be the only key of its object".into());
        }
        return check(child, &format!("{path}.not"), segments, errors, referenced) + 1;
    }
    if let Some(segment) = object.get("segment") {
        if object.len() != 1 {
            return fail("`segment` must be the only key of its object".into());
        }
        let Some(key) = segment.as_str() else {
            return fail("`segment` takes a segment key".into());
        };
        let Some(depth) = segments.get(key) else {
            return fail(format!("unknown segment `{key}`"));
        };
        referenced.insert(key.to_string());
        return depth + 1;
    }
    let Some(attr) = object.get("attr") else {
        return fail("expected one of `all`, `any`, `not`, `segment` or `attr`".into());
    };
    if let Some(extra) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "attr" | "op" | "value"))
    {
        return fail(format!("unexpected key `{extra}` in an attribute test"));
    }
    if !attr.as_str().is_some_and(valid_attribute) {
        return fail(
            "`attr` must be an attribute name (letters, digits, `_`, `-`, `.`; 1-64 characters)"
                .into(),
        );
    }
    let Some(op_name) = object.get("op").and_then(Json::as_str) else {
        return fail("`op` is required".into());
    };
    let Some(op) = Op::parse(op_name) else {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
        return fail(format!(
            "unknown operator `{op_name}`; expected one of {}",
            names.join(", ")
        ));
    };
    match operand(op, object.get("value")) {
        Ok(_) => 1,
        Err(message) => fail(message),
    }
}

pub fn valid_attribute(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The operand of an attribute test, checked against what its operator accepts.
fn operand(op: Op, value: Option<&Json>) -> Result<Literal, String> {
    let name = op.as_str();
    let strings = |items: &[Json]| -> Option<Vec<String>> {
        items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect()
    };
    let numbers = |items: &[Json]| -> Option<Vec<f64>> { items.iter().map(Json::as_f64).collect() };
    match (op, value) {
        (Op::Exists, None | Some(Json::Null)) => Ok(Literal::None),
        (Op::Exists, Some(_)) => Err("`exists` takes no value".into()),
        (_, None | Some(Json::Null)) => Err(format!("`{name}` needs a `value`")),
        (Op::Eq | Op::Ne, Some(Json::String(s))) => Ok(Literal::Str(s.clone())),
        (Op::Eq | Op::Ne, Some(Json::Bool(b))) => Ok(Literal::Bool(*b)),
        (Op::Eq | Op::Ne | Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(Json::Number(n))) => n
            .as_f64()
            .map(Literal::Num)
            .ok_or_else(|| "number out of range".into()),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(Json::String(s))) => Ok(Literal::Str(s.clone())),
        (Op::In | Op::NotIn, Some(Json::Array(items))) if items.len() > MAX_LIST => {
            Err(format!("`{name}` lists hold at most {MAX_LIST} values"))
        }
        (Op::In | Op::NotIn, Some(Json::Array(items))) => {
            if let Some(list) = strings(items) {
                Ok(Literal::StrList(list))
            } else if let Some(list) = numbers(items) {
                Ok(Literal::NumList(list))
            } else {
                Err(format!(
                    "`{name}` takes a list of strings or a list of numbers"
                ))
            }
        }
        (Op::Contains | Op::StartsWith | Op::EndsWith, Some(Json::String(s))) => {
            Ok(Literal::Str(s.clone()))
        }
        (
            Op::SemverEq | Op::SemverGt | Op::SemverGte | Op::SemverLt | Op::SemverLte,
            Some(Json::String(s)),
        ) => {
            // Checked with the core's own parser, so the API accepts exactly what runtimes
            // can compare.
            if abx_core::is_semver(s) {
                Ok(Literal::Str(s.clone()))
            } else {
                Err(format!("`{s}` is not a semantic version"))
            }
        }
        _ => Err(format!("`{name}` does not take a value of this type")),
    }
}

/// Compiles a validated condition. Segment references become the builder's segment indices.
pub fn compile(condition: &Json, segments: &HashMap<String, u32>) -> Result<Expr, String> {
    let object = condition.as_object().ok_or("condition is not an object")?;
    let children = |list: &Json| -> Result<Vec<Expr>, String> {
        list.as_array()
            .ok_or("expected a list")?
            .iter()
            .map(|c| compile(c, segments))
            .collect()
    };
    if let Some(list) = object.get("all") {
        return Ok(Expr::All(children(list)?));
    }
    if let Some(list) = object.get("any") {
        return Ok(Expr::Any(children(list)?));
    }
    if let Some(child) = object.get("not") {
        return Ok(Expr::Not(Box::new(compile(child, segments)?)));
    }
    if let Some(key) = object.get("segment").and_then(Json::as_str) {
        return segments
            .get(key)
            .map(|&i| Expr::Segment(i))
            .ok_or_else(|| format!("unknown segment {key}"));
    }
    let attr = object
        .get("attr")
        .and_then(Json::as_str)
        .ok_or("missing attr")?;
    let op = object
        .get("op")
        .and_then(Json::as_str)
        .and_then(Op::parse)
        .ok_or("bad op")?;
    let value = operand(op, object.get("value"))?;
    Ok(Expr::attr(attr, op, value))
}

/// Segment keys a stored condition refers to (no validation).
pub fn references(condition: &Json, out: &mut BTreeSet<String>) {
    match condition {
        Json::Object(object) => {
            if let Some(key) = object.get("segment").and_then(Json::as_str) {
                out.insert(key.to_string());
            }
            for value in object.values() {
                references(value, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|i| references(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(condition: Json) -> Vec<String> {
        let segments = HashMap::from([("staff".to_string(), 1)]);
        let mut errors = Vec::new();
        validate(&condition, "targeting", &segments, &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn accepts_every_operator_with_its_operand() {
        let ok = json!({"all": [
            {"attr": "country", "op": "in", "value": ["US", "CA"]},
            {"attr": "age", "op": "not_in", "value": [1, 2.5]},
            {"attr": "plan", "op": "eq", "value": "pro"},
            {"attr": "beta", "op": "ne", "value": true},
            {"attr": "age", "op": "gte", "value": 18},
            {"attr": "signup", "op": "lt", "value": "2024-01-01"},
            {"attr": "email", "op": "ends_with", "value": "@corp.com"},
            {"attr": "app_version", "op": "semver_gte", "value": "v2.3"},
            {"any": [{"attr": "email", "op": "exists"}, {"not": {"segment": "staff"}}]}
        ]});
        assert_eq!(errors_of(ok), Vec::<String>::new());
    }

    #[test]
    fn reports_each_problem_with_its_path() {
        let bad = json!({"all": [
            {"attr": "country", "op": "in", "value": "US"},
            {"attr": "v", "op": "semver_gt", "value": "two"},
            {"attr": "x", "op": "like", "value": "a"},
            {"segment": "nobody"},
            {"attr": "bad name!", "op": "eq", "value": "a"},
            {"attr": "e", "op": "exists", "value": 3},
            {"all": [], "any": []},
            7
        ]});
        let errors = errors_of(bad);
        assert_eq!(errors.len(), 8, "{errors:#?}");
        assert!(errors[0].starts_with("targeting.all[0]: `in` does not take"));
        assert!(errors[1].contains("not a semantic version"));
        assert!(errors[2].contains("unknown operator `like`"));
        assert!(errors[3].contains("unknown segment `nobody`"));
        assert!(errors[7].starts_with("targeting.all[7]: a condition must be an object"));
    }

    #[test]
    fn limits_depth_including_segments() {
        let mut deep = json!({"attr": "a", "op": "exists"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert!(errors_of(deep).iter().any(|e| e.contains("nest")));
    }
}
