//! A second, deliberately naive implementation of `docs/assignment.md`, written from the
//! spec and not from abx-core's code: it formats the hashed strings with `format!`, hashes
//! them with the `murmur3` crate, reads contexts as raw JSON, re-evaluates every condition
//! from scratch and uses its own semver parser. The expected values in the conformance
//! vectors come from here, so abx-core's optimised evaluator (hash midstates, memos,
//! interned attributes) is checked against an independent reading of the spec.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use abx_core::snapshot::{
    Allocation, Condition, Experiment, FlagValue, Id, Op, Operand, Snapshot, Status,
};
use serde_json::Value as Json;

/// What the reference decides for one experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub variant: Option<String>,
    pub reason: &'static str,
    /// The arm of the holdout the unit reached (`held` or `released`), if it reached one:
    /// what a runtime logs an exposure to the holdout with.
    pub holdout: Option<&'static str>,
}

/// What the reference decides for one flag.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagOutcome {
    pub value: String,
    pub reason: &'static str,
    /// The first experiment a matching rule consulted whose answer reached its holdout,
    /// and that arm: what a runtime logs for the flag.
    pub holdout: Option<(usize, &'static str)>,
}

/// Records which operators were seen true and false, so the generator can prove coverage.
#[derive(Debug, Default)]
pub struct Coverage {
    pub ops: BTreeMap<(&'static str, bool), usize>,
    pub reasons: BTreeMap<&'static str, usize>,
    pub flag_reasons: BTreeMap<&'static str, usize>,
}

pub struct Reference<'s> {
    pub snapshot: &'s Snapshot,
}

fn uuid_text(id: &Id) -> String {
    let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn bucket(s: &str) -> u32 {
    murmur3::murmur3_32(&mut std::io::Cursor::new(s.as_bytes()), 0).expect("in-memory read")
        % 10_000
}

/// Reads an attribute the way the spec defines attribute types: strings, numbers, booleans
/// and lists of strings; anything else counts as absent.
fn attribute<'c>(context: &'c serde_json::Map<String, Json>, name: &str) -> Option<&'c Json> {
    match context.get(name)? {
        Json::Null | Json::Object(_) => None,
        Json::Array(items) if !items.iter().all(Json::is_string) => None,
        value => Some(value),
    }
}

fn unit_string(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        Json::Number(n) => {
            let f = n.as_f64()?;
            let safe = 9_007_199_254_740_991.0;
            (f.fract() == 0.0 && f.abs() <= safe).then(|| format!("{}", f as i64))
        }
        _ => None,
    }
}

/// The unit as the holdout, traffic and variant steps hash it: within its switchback
/// period, if the experiment has one.
fn hashed_unit(e: &Experiment, unit: &str, now_ms: i64) -> String {
    match e.switchback_period_s {
        Some(period) => {
            let now_s = (now_ms as f64 / 1000.0).floor() as i64;
            let index = (now_s as f64 / period as f64).floor() as i64;
            format!("{unit}@{index}")
        }
        None => unit.to_string(),
    }
}

impl<'s> Reference<'s> {
    pub fn experiment(
        &self,
        index: usize,
        context: &serde_json::Map<String, Json>,
        now_ms: i64,
        coverage: &mut Coverage,
    ) -> Outcome {
        let outcome = self.experiment_inner(index, context, now_ms, coverage);
        *coverage.reasons.entry(outcome.reason).or_default() += 1;
        outcome
    }

    /// What an exposure to experiment `index` carries besides its unit (format 2): each
    /// attribute the snapshot lists for it that the context has as a string of at most 256
    /// bytes, a number or a boolean, with that value. `None` when it lists none.
    pub fn exposure_attributes(
        &self,
        index: usize,
        context: &serde_json::Map<String, Json>,
    ) -> Option<Vec<(String, Json)>> {
        let s = self.snapshot;
        let listed = s.exposure_attributes.get(index).filter(|l| !l.is_empty())?;
        let carried = listed
            .iter()
            .filter_map(|&attr| {
                let name = &s.attributes[attr as usize];
                match attribute(context, name)? {
                    // Numbers without a fraction are written as integers, as JavaScript
                    // writes them, so that every runtime writes one value one way.
                    Json::Number(n) => {
                        let f = n.as_f64()?;
                        let exact = f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0;
                        let value = if exact {
                            Json::from(f as i64)
                        } else {
                            Json::from(f)
                        };
                        Some((name.clone(), value))
                    }
                    // The origin refuses string values over 256 bytes.
                    Json::String(s) if s.len() > 256 => None,
                    value @ (Json::String(_) | Json::Bool(_)) => {
                        Some((name.clone(), value.clone()))
                    }
                    _ => None,
                }
            })
            .collect();
        Some(carried)
    }

    /// Whether the holdout experiment `e` respects (if any) holds `unit` out.
    fn held(&self, e: &Experiment, unit: &str, now_ms: i64) -> bool {
        let Some(h) = e.holdout else { return false };
        let holdout = &self.snapshot.holdouts[h as usize];
        let hashed = hashed_unit(e, unit, now_ms);
        bucket(&format!("holdout:{}:{hashed}", uuid_text(&holdout.id))) < u32::from(holdout.bp)
    }

    fn variant_key(&self, index: usize, variant: u32) -> String {
        let e = &self.snapshot.experiments[index];
        self.snapshot.strings[e.variants[variant as usize].key as usize].clone()
    }

    fn experiment_inner(
        &self,
        index: usize,
        context: &serde_json::Map<String, Json>,
        now_ms: i64,
        coverage: &mut Coverage,
    ) -> Outcome {
        let s = self.snapshot;
        let e = &s.experiments[index];
        let done = |variant: Option<String>, reason| Outcome {
            variant,
            reason,
            holdout: None,
        };
        // The holdout's arm, for experiments that are not switchbacks (whose holdouts hold
        // units per period, which no readout compares).
        // Nor for a holdout that (format 2) holds another attribute than the experiment's
        // unit, whose exposures the holdout could not count.
        let same_unit = |h: u32| {
            s.holdout_units
                .get(h as usize)
                .is_none_or(|&unit| unit == e.unit)
        };
        let reached = |outcome: Outcome, held: bool| Outcome {
            holdout: (e.holdout.is_some_and(same_unit) && e.switchback_period_s.is_none())
                .then_some(if held { "held" } else { "released" }),
            ..outcome
        };
        let unit = unit_string(attribute(context, &s.attributes[e.unit as usize]));
        if e.status != Status::Running {
            return match (e.status, e.shipped) {
                (Status::Completed, Some(_))
                    if unit.as_ref().is_some_and(|u| self.held(e, u, now_ms)) =>
                {
                    reached(done(None, "holdout"), true)
                }
                (Status::Completed, Some(v)) => {
                    let shipped = done(Some(self.variant_key(index, v)), "shipped");
                    match unit {
                        Some(_) => reached(shipped, false),
                        None => shipped,
                    }
                }
                _ => done(None, "not_running"),
            };
        }
        if let Some(unit) = &unit {
            for forced in &e.forced {
                if &forced.unit == unit {
                    return done(Some(self.variant_key(index, forced.variant)), "forced");
                }
            }
        }
        let Some(unit) = unit else {
            return done(None, "missing_unit");
        };
        if let Some(root) = e.targeting
            && !self.condition(root, context, coverage)
        {
            return done(None, "not_targeted");
        }
        if self.held(e, &unit, now_ms) {
            return reached(done(None, "holdout"), true);
        }
        let unit = hashed_unit(e, &unit, now_ms);
        let experiment_id = uuid_text(&e.id);
        let in_traffic = match &e.allocation {
            Allocation::Traffic { bp } => {
                bucket(&format!("{experiment_id}:{unit}")) < u32::from(*bp)
            }
            Allocation::Layer { layer, ranges } => {
                let layer_id = uuid_text(&s.layers[*layer as usize].id);
                let slot = bucket(&format!("{layer_id}:{unit}"));
                ranges
                    .iter()
                    .any(|r| u32::from(r.start) <= slot && slot < u32::from(r.end))
            }
        };
        if !in_traffic {
            return reached(done(None, "not_in_traffic"), false);
        }
        let v = bucket(&format!("{experiment_id}:{unit}:variant"));
        let mut cumulative_end = 0;
        for (i, variant) in e.variants.iter().enumerate() {
            cumulative_end = u32::from(variant.threshold);
            if v < cumulative_end {
                return reached(
                    done(Some(self.variant_key(index, i as u32)), "assigned"),
                    false,
                );
            }
        }
        unreachable!("thresholds end at 10000, last was {cumulative_end}")
    }

    pub fn flag(
        &self,
        index: usize,
        context: &serde_json::Map<String, Json>,
        now_ms: i64,
        coverage: &mut Coverage,
    ) -> FlagOutcome {
        let outcome = self.flag_inner(index, context, now_ms, coverage);
        *coverage.flag_reasons.entry(outcome.reason).or_default() += 1;
        outcome
    }

    fn flag_inner(
        &self,
        index: usize,
        context: &serde_json::Map<String, Json>,
        now_ms: i64,
        coverage: &mut Coverage,
    ) -> FlagOutcome {
        let s = self.snapshot;
        let f = &s.flags[index];
        if !f.enabled {
            return FlagOutcome {
                value: f.off_value.clone(),
                reason: "disabled",
                holdout: None,
            };
        }
        // The first consulted experiment whose answer reached its holdout, with the arm.
        let mut holdout: Option<(usize, &'static str)> = None;
        let unit = unit_string(attribute(context, &s.attributes[f.unit as usize]));
        for rule in &f.rules {
            if let Some(c) = rule.condition
                && !self.condition(c, context, coverage)
            {
                continue;
            }
            if rule.rollout_bp < 10_000 {
                let Some(unit) = &unit else { continue };
                if bucket(&format!("{}:{unit}", f.key)) >= u32::from(rule.rollout_bp) {
                    continue;
                }
            }
            match &rule.value {
                FlagValue::Json(value) => {
                    return FlagOutcome {
                        value: value.clone(),
                        reason: "rule",
                        holdout,
                    };
                }
                FlagValue::Experiment { experiment, values } => {
                    let mut scratch = Coverage::default();
                    let outcome =
                        self.experiment_inner(*experiment as usize, context, now_ms, &mut scratch);
                    holdout = holdout.or(outcome.holdout.map(|arm| (*experiment as usize, arm)));
                    if let Some(variant) = outcome.variant {
                        let e = &s.experiments[*experiment as usize];
                        let position = e
                            .variants
                            .iter()
                            .position(|v| s.strings[v.key as usize] == variant)
                            .expect("variant of this experiment");
                        return FlagOutcome {
                            value: values[position].clone(),
                            reason: "experiment",
                            holdout,
                        };
                    }
                }
            }
        }
        FlagOutcome {
            value: f.default_value.clone(),
            reason: "default",
            holdout,
        }
    }

    fn condition(
        &self,
        node: u32,
        context: &serde_json::Map<String, Json>,
        coverage: &mut Coverage,
    ) -> bool {
        let s = self.snapshot;
        match &s.conditions[node as usize] {
            Condition::All(children) => {
                let results: Vec<bool> = children
                    .iter()
                    .map(|&c| self.condition(c, context, coverage))
                    .collect();
                results.into_iter().all(|b| b)
            }
            Condition::Any(children) => {
                let results: Vec<bool> = children
                    .iter()
                    .map(|&c| self.condition(c, context, coverage))
                    .collect();
                results.into_iter().any(|b| b)
            }
            Condition::Not(child) => !self.condition(*child, context, coverage),
            Condition::Segment(seg) => {
                self.condition(s.segments[*seg as usize].condition, context, coverage)
            }
            Condition::Attr { attr, op, operand } => {
                let value = attribute(context, &s.attributes[*attr as usize]);
                let result = self.test(value, *op, operand);
                *coverage.ops.entry((op.as_str(), result)).or_default() += 1;
                result
            }
        }
    }

    fn test(&self, value: Option<&Json>, op: Op, operand: &Operand) -> bool {
        let strings = &self.snapshot.strings;
        let Some(value) = value else { return false };
        if op == Op::Exists {
            return true;
        }
        let text = |i: &u32| strings[*i as usize].as_str();
        let as_list = |v: &Json| -> Option<Vec<String>> {
            v.as_array().map(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().to_string())
                    .collect()
            })
        };
        match op {
            Op::Eq | Op::Ne => {
                let equal = match (value, operand) {
                    (Json::String(a), Operand::Str(b)) => Some(a == text(b)),
                    (Json::Number(a), Operand::Num(b)) => {
                        let a = a.as_f64().unwrap_or(f64::NAN);
                        if a.is_nan() || b.is_nan() {
                            None
                        } else {
                            Some(a == *b)
                        }
                    }
                    (Json::Bool(a), Operand::Bool(b)) => Some(a == b),
                    (Json::String(a), Operand::HashedStr(h)) => {
                        Some(private_hash(a.as_bytes()) == *h)
                    }
                    (Json::Number(a), Operand::HashedNum(h)) => {
                        private_number_hash(a.as_f64().unwrap_or(f64::NAN)).map(|a| a == *h)
                    }
                    _ => None,
                };
                match (op, equal) {
                    (Op::Eq, Some(eq)) => eq,
                    (Op::Ne, Some(eq)) => !eq,
                    _ => false,
                }
            }
            Op::In | Op::NotIn => {
                let member = match (value, operand) {
                    (Json::String(a), Operand::StrList(list)) => {
                        Some(list.iter().any(|i| text(i) == a))
                    }
                    (Json::Array(_), Operand::StrList(list)) => {
                        let items = as_list(value).unwrap_or_default();
                        Some(
                            items
                                .iter()
                                .any(|item| list.iter().any(|i| text(i) == item)),
                        )
                    }
                    (Json::Number(a), Operand::NumList(list)) => {
                        let a = a.as_f64().unwrap_or(f64::NAN);
                        if a.is_nan() {
                            None
                        } else {
                            Some(list.contains(&a))
                        }
                    }
                    (Json::String(a), Operand::HashedStrList(list)) => {
                        Some(list.contains(&private_hash(a.as_bytes())))
                    }
                    (Json::Array(_), Operand::HashedStrList(list)) => {
                        let items = as_list(value).unwrap_or_default();
                        Some(
                            items
                                .iter()
                                .any(|item| list.contains(&private_hash(item.as_bytes()))),
                        )
                    }
                    (Json::Number(a), Operand::HashedNumList(list)) => {
                        private_number_hash(a.as_f64().unwrap_or(f64::NAN))
                            .map(|a| list.contains(&a))
                    }
                    _ => None,
                };
                match (op, member) {
                    (Op::In, Some(m)) => m,
                    (Op::NotIn, Some(m)) => !m,
                    _ => false,
                }
            }
            Op::Contains => match (value, operand) {
                (Json::String(a), Operand::Str(b)) => a.contains(text(b)),
                (Json::Array(_), Operand::Str(b)) => as_list(value)
                    .unwrap_or_default()
                    .iter()
                    .any(|s| s == text(b)),
                _ => false,
            },
            Op::StartsWith => {
                matches!((value, operand), (Json::String(a), Operand::Str(b)) if a.starts_with(text(b)))
            }
            Op::EndsWith => {
                matches!((value, operand), (Json::String(a), Operand::Str(b)) if a.ends_with(text(b)))
            }
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let ordering = match (value, operand) {
                    (Json::Number(a), Operand::Num(b)) => a.as_f64().and_then(|a| a.partial_cmp(b)),
                    (Json::String(a), Operand::Str(b)) => Some(a.as_str().cmp(text(b))),
                    _ => None,
                };
                ordering.is_some_and(|o| compare_op(op, o))
            }
            Op::SemverEq | Op::SemverGt | Op::SemverGte | Op::SemverLt | Op::SemverLte => {
                match (value, operand) {
                    (Json::String(a), Operand::Str(b)) => {
                        match (Version::parse(a), Version::parse(text(b))) {
                            (Some(a), Some(b)) => compare_op(op, a.cmp(&b)),
                            _ => false,
                        }
                    }
                    _ => false,
                }
            }
            Op::Exists => true,
        }
    }
}

fn compare_op(op: Op, ordering: Ordering) -> bool {
    match op {
        Op::Gt | Op::SemverGt => ordering.is_gt(),
        Op::Gte | Op::SemverGte => ordering.is_ge(),
        Op::Lt | Op::SemverLt => ordering.is_lt(),
        Op::Lte | Op::SemverLte => ordering.is_le(),
        Op::SemverEq => ordering.is_eq(),
        _ => false,
    }
}

/// Semver 2.0 with the spec's leniencies: an optional leading `v`, and missing minor or
/// patch parts read as zero. Parts are limited to u64, which the generated inputs respect.
#[derive(Debug, PartialEq, Eq)]
struct Version {
    numbers: [u64; 3],
    pre: Vec<Identifier>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Identifier {
    // Declared first: numeric identifiers rank below alphanumeric ones.
    Numeric(u64),
    Alpha(String),
}

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let text = text
            .strip_prefix('v')
            .or_else(|| text.strip_prefix('V'))
            .unwrap_or(text);
        let text = match text.find('+') {
            Some(at) => &text[..at],
            None => text,
        };
        let (core, pre) = match text.find('-') {
            Some(at) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let mut numbers = [0u64; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if part.is_empty() || !part.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            *slot = part.parse().ok()?;
        }
        let mut identifiers = Vec::new();
        if let Some(pre) = pre {
            for id in pre.split('.') {
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return None;
                }
                identifiers.push(if id.chars().all(|c| c.is_ascii_digit()) {
                    Identifier::Numeric(id.parse().ok()?)
                } else {
                    Identifier::Alpha(id.to_string())
                });
            }
        }
        Some(Version {
            numbers,
            pre: identifiers,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers.cmp(&other.numbers).then_with(|| {
            match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            }
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// docs/assignment.md, "Private attributes": the high half hashes with seed 1, the low half
/// with seed 2.
fn private_hash(bytes: &[u8]) -> u64 {
    let half =
        |seed| murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), seed).expect("in-memory read");
    (u64::from(half(1)) << 32) | u64::from(half(2))
}

/// Numbers hash their IEEE 754 bits, little-endian, with negative zero as zero.
fn private_number_hash(n: f64) -> Option<u64> {
    if n.is_nan() {
        None
    } else if n == 0.0 {
        Some(private_hash(&0f64.to_bits().to_le_bytes()))
    } else {
        Some(private_hash(&n.to_bits().to_le_bytes()))
    }
}
