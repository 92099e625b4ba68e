//! What the edge writes: the `/abx/assignments` JSON (the same shape as the origin's
//! `POST /api/v1/evaluate`) and the compact `x-abx-assignments` header.

use std::fmt::Write;

use abx_core::{Assignment, Evaluation, HoldoutStep};

/// Writes `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether `text` is one JSON value (configs and flag values are JSON text in a snapshot).
pub fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

/// Writes a JSON text from the snapshot as a value: verbatim when valid (checked once per
/// snapshot when `all_json_valid`), `null` otherwise, as the origin renders it.
fn push_raw(out: &mut String, text: Option<&str>, all_json_valid: bool) {
    match text {
        Some(text) if all_json_valid || is_json(text) => out.push_str(text.trim()),
        _ => out.push_str("null"),
    }
}

/// What the evaluator adds to an answer for the evaluated context.
pub struct Steps<'a, 'e> {
    /// The evaluator's `holdout_step`.
    pub holdout_step: &'a dyn Fn(&Assignment<'e>) -> Option<HoldoutStep<'e>>,
    /// The answer's exposure attributes as a JSON object, `None` when there are none.
    pub exposure_attributes: &'a dyn Fn(&Assignment<'e>) -> Option<String>,
}

/// `{"snapshot_version", "experiments": {key: {...}}, "flags": {key: {"value", "reason"}}}`,
/// keys in snapshot order; an answer that logs an exposure carries its `attributes`.
/// `steps` gives each answer's holdout step and exposure attributes for the evaluated
/// context.
pub fn assignments_json<'e>(
    evaluation: &Evaluation<'e>,
    steps: &Steps<'_, 'e>,
    snapshot_version: u64,
    all_json_valid: bool,
) -> String {
    let mut out = String::with_capacity(64 + evaluation.experiments.len() * 220);
    let _ = write!(
        out,
        "{{\"snapshot_version\":{snapshot_version},\"experiments\":{{"
    );
    for (i, a) in evaluation.experiments.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, a.experiment_key);
        out.push_str(":{\"experiment\":");
        push_json_str(&mut out, a.experiment_key);
        out.push_str(",\"experiment_id\":");
        push_json_str(&mut out, a.experiment_id);
        out.push_str(",\"variant\":");
        match a.variant {
            Some(variant) => push_json_str(&mut out, variant),
            None => out.push_str("null"),
        }
        out.push_str(",\"config\":");
        push_raw(&mut out, a.config, all_json_valid);
        out.push_str(",\"reason\":\"");
        out.push_str(a.reason.as_str());
        let _ = write!(out, "\",\"log_exposure\":{},\"holdout\":", a.log_exposure);
        match (steps.holdout_step)(a) {
            Some(step) => {
                out.push_str("{\"holdout_id\":");
                push_json_str(&mut out, step.holdout_id);
                let _ = write!(out, ",\"arm\":\"{}\"}}", step.arm());
            }
            None => out.push_str("null"),
        }
        if a.log_exposure
            && let Some(attributes) = (steps.exposure_attributes)(a)
        {
            out.push_str(",\"attributes\":");
            out.push_str(&attributes);
        }
        let _ = write!(out, ",\"snapshot_version\":{snapshot_version}}}");
    }
    out.push_str("},\"flags\":{");
    for (i, f) in evaluation.flags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, f.flag_key);
        out.push_str(":{\"value\":");
        push_raw(&mut out, Some(f.value), all_json_valid);
        out.push_str(",\"reason\":\"");
        out.push_str(f.reason.as_str());
        out.push_str("\"}");
    }
    out.push_str("}}");
    out
}

/// Percent-encodes everything outside the characters origin keys and variant names use, so
/// the header stays one unambiguous token list whatever a snapshot contains.
fn push_token(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `key=variant,key=variant` for every experiment that gives this visitor a variant
/// (assigned, forced or shipped), in snapshot order; empty when none does.
pub fn assignments_header(evaluation: &Evaluation<'_>) -> String {
    let mut out = String::new();
    for a in &evaluation.experiments {
        if let Some(variant) = a.variant {
            if !out.is_empty() {
                out.push(',');
            }
            push_token(&mut out, a.experiment_key);
            out.push('=');
            push_token(&mut out, variant);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use abx_core::{Assignment, FlagReason, FlagResult, Reason};

    fn assignment<'a>(
        key: &'a str,
        variant: Option<&'a str>,
        config: Option<&'a str>,
    ) -> Assignment<'a> {
        Assignment {
            index: 0,
            experiment_key: key,
            experiment_id: "67e55044-10b1-426f-9247-bb680e5fe0c8",
            variant,
            variant_index: variant.map(|_| 0),
            config,
            reason: if variant.is_some() {
                Reason::Assigned
            } else {
                Reason::NotInTraffic
            },
            log_exposure: variant.is_some(),
        }
    }

    #[test]
    fn json_strings_escape_like_json() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "\u{1}ctl",
            "ünï €",
            "",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            let back: String = serde_json::from_str(&out).expect(&out);
            assert_eq!(back, s);
        }
    }

    #[test]
    fn assignments_json_matches_the_origin_shape() {
        let evaluation = Evaluation {
            experiments: vec![
                assignment("a", Some("treatment"), Some(" {\"color\": \"green\"} ")),
                assignment("b", None, None),
                assignment("c", Some("x"), Some("not json")),
            ],
            flags: vec![FlagResult {
                index: 0,
                flag_key: "f",
                value: "[1,2]",
                reason: FlagReason::Rule,
                rule: Some(0),
                experiment: None,
                holdout_experiment: None,
            }],
        };
        let step = |a: &Assignment<'_>| {
            (a.experiment_key == "b").then_some(HoldoutStep {
                index: 0,
                holdout_id: "0b7e5c2a-9d41-4f3e-8a6b-2c1d0e9f8a7b",
                held: false,
            })
        };
        // Every answer has attributes to carry; only those that log an exposure show them.
        let carried = |_: &Assignment<'_>| Some(r#"{"country":"NZ"}"#.to_string());
        let steps = Steps {
            holdout_step: &step,
            exposure_attributes: &carried,
        };
        let text = assignments_json(&evaluation, &steps, 7, false);
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let expected = serde_json::json!({
            "snapshot_version": 7,
            "experiments": {
                "a": {"experiment": "a", "experiment_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                      "variant": "treatment", "config": {"color": "green"}, "reason": "assigned",
                      "log_exposure": true, "holdout": null, "attributes": {"country": "NZ"},
                      "snapshot_version": 7},
                "b": {"experiment": "b", "experiment_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                      "variant": null, "config": null, "reason": "not_in_traffic",
                      "log_exposure": false,
                      "holdout": {"holdout_id": "0b7e5c2a-9d41-4f3e-8a6b-2c1d0e9f8a7b", "arm": "released"},
                      "snapshot_version": 7},
                "c": {"experiment": "c", "experiment_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                      "variant": "x", "config": null, "reason": "assigned",
                      "log_exposure": true, "holdout": null, "attributes": {"country": "NZ"},
                      "snapshot_version": 7}
            },
            "flags": {"f": {"value": [1, 2], "reason": "rule"}}
        });
        assert_eq!(parsed, expected);
    }

    #[test]
    fn header_lists_variants_only() {
        let evaluation = Evaluation {
            experiments: vec![
                assignment("checkout", Some("treatment"), None),
                assignment("none", None, None),
                assignment("odd key", Some("a,b=c"), None),
            ],
            flags: vec![],
        };
        assert_eq!(
            assignments_header(&evaluation),
            "checkout=treatment,odd%20key=a%2Cb%3Dc"
        );
        assert_eq!(assignments_header(&Evaluation::default()), "");
    }
}
