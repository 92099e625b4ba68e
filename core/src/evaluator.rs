//! Evaluation of experiments and flags for one context. `docs/assignment.md` is the
//! normative specification of everything in this file.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::condition;
use crate::context::{Attributes, Context, ExposureAttributes, Value, ValueRef};
use crate::envelope;
use crate::error::{Error, Invalid};
use crate::murmur3::{Murmur3, murmur3_x86_32, to_bucket};
use crate::snapshot::{Allocation, Condition, FULL_BP, FlagValue, Id, Operand, Snapshot, Status};

/// Conditions may nest at most this deep, which bounds the evaluator's recursion.
pub const MAX_CONDITION_DEPTH: u32 = 32;

/// Why an experiment did or did not assign a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    NotRunning,
    Shipped,
    Forced,
    MissingUnit,
    NotTargeted,
    Holdout,
    NotInTraffic,
    Assigned,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NotRunning,
        Reason::Shipped,
        Reason::Forced,
        Reason::MissingUnit,
        Reason::NotTargeted,
        Reason::Holdout,
        Reason::NotInTraffic,
        Reason::Assigned,
    ];

    /// The arm of a result with this reason in the holdout of its experiment, when the
    /// experiment respects one, is not a switchback, and the context has its unit: what
    /// [`Evaluator::holdout_step`] says of such results. For bindings that hand results on
    /// as reason codes (docs/wasm-abi.md's packed words), so that they need no other word.
    pub fn holdout_arm(self) -> Option<&'static str> {
        match self {
            Reason::Holdout => Some(HELD_ARM),
            Reason::NotInTraffic | Reason::Assigned | Reason::Shipped => Some(RELEASED_ARM),
            Reason::NotRunning | Reason::Forced | Reason::MissingUnit | Reason::NotTargeted => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotRunning => "not_running",
            Reason::Shipped => "shipped",
            Reason::Forced => "forced",
            Reason::MissingUnit => "missing_unit",
            Reason::NotTargeted => "not_targeted",
            Reason::Holdout => "holdout",
            Reason::NotInTraffic => "not_in_traffic",
            Reason::Assigned => "assigned",
        }
    }
}

/// The outcome of one experiment for one context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assignment<'a> {
    /// Index of the experiment in the snapshot.
    pub index: u32,
    pub experiment_key: &'a str,
    pub experiment_id: &'a str,
    pub variant: Option<&'a str>,
    pub variant_index: Option<u32>,
    /// The variant's configuration, JSON text.
    pub config: Option<&'a str>,
    pub reason: Reason,
    /// Whether the caller should log an exposure event (only for `assigned`).
    pub log_exposure: bool,
}

/// Where a unit stands in the holdout an experiment respects ([`Evaluator::holdout_step`]).
/// A holdout is read out by comparing the units it holds with the units it releases, so
/// both sides must log it: the caller logs one exposure per unit and holdout, to the
/// holdout's id with [`arm`] as the variant, whenever an answer has a step (the origin
/// checks the arm against the holdout's hash, as it checks experiment exposures).
///
/// An answer has one when the unit reached the holdout: a running experiment's unit passed
/// its forced overrides and targeting (reasons `holdout`, `not_in_traffic` and `assigned`),
/// or a shipped experiment's unit is present (reasons `holdout` and `shipped`). Switchback
/// experiments have none: their holdout holds a unit per period, which no per-unit readout
/// can compare. Steps are found on demand rather than carried by every [`Assignment`], so
/// that evaluations whose exposures nobody logs pay nothing for them.
///
/// [`arm`]: HoldoutStep::arm
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldoutStep<'a> {
    /// Index of the holdout in the snapshot.
    pub index: u32,
    pub holdout_id: &'a str,
    pub held: bool,
}

impl HoldoutStep<'_> {
    /// The exposure's variant: `held` or `released`.
    pub fn arm(&self) -> &'static str {
        arm(self.held)
    }
}

fn arm(held: bool) -> &'static str {
    match held {
        true => HELD_ARM,
        false => RELEASED_ARM,
    }
}

/// The variants of a holdout's exposures (see [`HoldoutStep`]).
pub const HELD_ARM: &str = "held";
pub const RELEASED_ARM: &str = "released";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlagReason {
    /// The flag is switched off (its kill switch); the off value is served.
    Disabled,
    /// A rule with a fixed value matched.
    Rule,
    /// A rule that takes its value from an experiment's variant matched.
    Experiment,
    /// No rule matched; the default value is served.
    Default,
}

impl FlagReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagReason::Disabled => "disabled",
            FlagReason::Rule => "rule",
            FlagReason::Experiment => "experiment",
            FlagReason::Default => "default",
        }
    }
}

/// The outcome of one flag for one context.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlagResult<'a> {
    pub index: u32,
    pub flag_key: &'a str,
    /// JSON text.
    pub value: &'a str,
    pub reason: FlagReason,
    /// The matching rule, when `reason` is `Rule` or `Experiment`.
    pub rule: Option<u32>,
    /// For `Experiment`, the index of the experiment that supplied the value.
    pub experiment: Option<u32>,
    /// The first experiment a matching rule consulted whose answer reached its holdout
    /// ([`Evaluator::holdout_step`]), whether or not it supplied the value: the one whose
    /// holdout step a caller logs for the flag. A unit its holdout holds falls through to
    /// later rules, so `experiment` alone cannot tell it from a unit no rule reached. Which
    /// experiment this is never depends on the arm: rules before it either matched neither
    /// arm or gave both the same answer, and both arms reach it.
    pub holdout_experiment: Option<u32>,
}

/// Everything evaluated for one context, in snapshot order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation<'a> {
    pub experiments: Vec<Assignment<'a>>,
    pub flags: Vec<FlagResult<'a>>,
}

/// A validated snapshot, indexed for evaluation. Build it once per snapshot and share it;
/// evaluation only reads it.
#[derive(Debug)]
pub struct Evaluator {
    snapshot: Snapshot,
    /// Attribute indices sorted by name, to resolve a context in one pass.
    attributes_by_name: Vec<u32>,
    experiments: Vec<Prepared>,
    experiments_by_key: KeyIndex,
    experiments_by_id: Vec<u32>,
    layers: Vec<PreparedLayer>,
    /// Hash state after `"holdout:{holdout_id}:"`.
    holdouts: Vec<Murmur3>,
    /// Holdout ids as text.
    holdout_ids: Vec<String>,
    /// Hash state after `"{flag_key}:"`.
    flags: Vec<Murmur3>,
    flags_by_key: KeyIndex,
}

/// Items found by key: the murmur3 hashes of their keys in order, each with its item. A
/// lookup hashes the key once, searches the hashes (4 bytes each, side by side), then
/// compares the one key it lands on (or the few that share its hash). A binary search over
/// the keys themselves compared about ten strings scattered over the snapshot, which cost
/// a Python call a quarter of its time in cache misses (docs/benchmarks.md, abx for Python).
#[derive(Debug)]
struct KeyIndex {
    hashes: Vec<u32>,
    items: Vec<u32>,
}

impl KeyIndex {
    fn new<'k>(keys: impl Iterator<Item = &'k str>) -> Self {
        let hashes: Vec<u32> = keys.map(|k| murmur3_x86_32(k.as_bytes(), 0)).collect();
        let items = sorted_indices(hashes.len(), &|a, b| hashes[a].cmp(&hashes[b]));
        KeyIndex {
            hashes: items.iter().map(|&i| hashes[i as usize]).collect(),
            items,
        }
    }

    /// The item whose key (by `key_of`) is `key`.
    fn find<'s>(&self, key: &str, key_of: impl Fn(u32) -> &'s str) -> Option<u32> {
        let hash = murmur3_x86_32(key.as_bytes(), 0);
        let first = self.hashes.partition_point(|&h| h < hash);
        self.hashes[first..]
            .iter()
            .zip(&self.items[first..])
            .take_while(|&(&h, _)| h == hash)
            .map(|(_, &item)| item)
            .find(|&item| key_of(item) == key)
    }
}

#[derive(Debug)]
struct Prepared {
    id_text: String,
    /// Hash state after `"{experiment_id}:"`.
    prefix: Murmur3,
}

#[derive(Debug)]
struct PreparedLayer {
    /// Hash state after `"{layer_id}:"`.
    prefix: Murmur3,
    /// Shared by all experiments of the layer; `None` for a layer without experiments.
    unit: Option<LayerUnit>,
}

/// The unit attribute and switchback period that all experiments of a layer share.
type LayerUnit = (u32, Option<u32>);

fn prefix_state(parts: &[&[u8]]) -> Murmur3 {
    let mut state = Murmur3::new(0);
    for part in parts {
        state.write(part);
    }
    state
}

impl Evaluator {
    /// Decodes unsigned or signed snapshot bytes without checking a signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Evaluator::new(envelope::decode(bytes)?)
    }

    /// Decodes snapshot bytes that must carry a valid signature by `public_key`.
    pub fn from_verified_bytes(bytes: &[u8], public_key: &[u8]) -> Result<Self, Error> {
        Evaluator::new(envelope::decode_verified(bytes, public_key)?)
    }

    /// Validates a snapshot and indexes it.
    pub fn new(snapshot: Snapshot) -> Result<Self, Error> {
        validate(&snapshot)?;
        let layers_unit = layer_units(&snapshot)?;

        let attributes = &snapshot.attributes;
        let attributes_by_name =
            sorted_indices(attributes.len(), &|a, b| attributes[a].cmp(&attributes[b]));

        let experiments = snapshot
            .experiments
            .iter()
            .map(|e| {
                let id_text = String::from(e.id.to_text().as_str());
                let prefix = prefix_state(&[id_text.as_bytes(), b":"]);
                Prepared { id_text, prefix }
            })
            .collect();
        let layers = snapshot
            .layers
            .iter()
            .zip(layers_unit)
            .map(|(layer, unit)| PreparedLayer {
                prefix: prefix_state(&[layer.id.to_text().as_str().as_bytes(), b":"]),
                unit,
            })
            .collect();
        let holdouts = snapshot
            .holdouts
            .iter()
            .map(|h| prefix_state(&[b"holdout:", h.id.to_text().as_str().as_bytes(), b":"]))
            .collect();
        let holdout_ids = snapshot
            .holdouts
            .iter()
            .map(|h| String::from(h.id.to_text().as_str()))
            .collect();
        let flags = snapshot
            .flags
            .iter()
            .map(|f| prefix_state(&[f.key.as_bytes(), b":"]))
            .collect();

        let e = &snapshot.experiments;
        let experiments_by_key = KeyIndex::new(e.iter().map(|e| e.key.as_str()));
        // Equal ids (which validation allows) stay in key order, then in snapshot order.
        let experiments_by_id = sorted_indices(e.len(), &|a, b| {
            (e[a].id, &e[a].key).cmp(&(e[b].id, &e[b].key))
        });
        let f = &snapshot.flags;
        let flags_by_key = KeyIndex::new(f.iter().map(|f| f.key.as_str()));

        Ok(Evaluator {
            snapshot,
            attributes_by_name,
            experiments,
            experiments_by_key,
            experiments_by_id,
            layers,
            holdouts,
            holdout_ids,
            flags,
            flags_by_key,
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Index of the experiment with this key.
    pub fn experiment_index(&self, key: &str) -> Option<u32> {
        let experiments = &self.snapshot.experiments;
        self.experiments_by_key
            .find(key, |i| experiments[i as usize].key.as_str())
    }

    /// Index of the experiment with this id.
    pub fn experiment_index_by_id(&self, id: &Id) -> Option<u32> {
        let found = self
            .experiments_by_id
            .binary_search_by(|&i| self.snapshot.experiments[i as usize].id.cmp(id));
        found.ok().map(|pos| self.experiments_by_id[pos])
    }

    /// Index of the flag with this key.
    pub fn flag_index(&self, key: &str) -> Option<u32> {
        let flags = &self.snapshot.flags;
        self.flags_by_key
            .find(key, |i| flags[i as usize].key.as_str())
    }

    /// Evaluates every experiment and flag.
    pub fn evaluate(&self, context: &Context, now_ms: i64) -> Evaluation<'_> {
        let mut out = Evaluation::default();
        self.evaluate_into(context, now_ms, &mut out);
        out
    }

    /// Like [`Evaluator::evaluate`], reusing `out`'s allocations.
    pub fn evaluate_into<'a>(&'a self, context: &Context, now_ms: i64, out: &mut Evaluation<'a>) {
        out.experiments.clear();
        out.flags.clear();
        let mut pass = Pass::full(self, context, now_ms);
        out.experiments
            .extend((0..self.experiments.len() as u32).map(|i| pass.assign(i)));
        let assignments = &out.experiments;
        out.flags.extend(
            (0..self.flags.len() as u32).map(|i| pass.flag(i, &mut |e| assignments[e as usize])),
        );
    }

    /// Evaluates one experiment by key; `None` when the snapshot has no such experiment.
    pub fn experiment(
        &self,
        key: &str,
        context: &dyn Attributes,
        now_ms: i64,
    ) -> Option<Assignment<'_>> {
        let index = self.experiment_index(key)?;
        Some(Pass::new(self, context, now_ms).assign(index))
    }

    /// Evaluates one experiment by its index in the snapshot.
    pub fn experiment_at(
        &self,
        index: u32,
        context: &dyn Attributes,
        now_ms: i64,
    ) -> Option<Assignment<'_>> {
        (index < self.experiments.len() as u32)
            .then(|| Pass::new(self, context, now_ms).assign(index))
    }

    /// What a client holding this snapshot can have logged an exposure to: experiment
    /// `index`'s answer for `unit` at `now_ms` as if the experiment were running and the unit
    /// passed its targeting, which an exposure cannot show (it carries no context). QA
    /// overrides, holdouts, traffic, layer slots and switchback periods apply as always, so
    /// an exposure naming another variant, or any variant for a unit that is held out or out
    /// of traffic, comes from a forged or broken client. `None` for an index out of range.
    pub fn exposure_check(&self, index: u32, unit: &str, now_ms: i64) -> Option<Assignment<'_>> {
        let e = self.snapshot.experiments.get(index as usize)?;
        let name = self.snapshot.attributes.get(e.unit as usize)?;
        let context = Context::new().with(name.as_str(), unit);
        let mut pass = Pass::new(self, &context, now_ms);
        pass.hash_only = true;
        Some(pass.assign(index))
    }

    /// Index of the holdout with this id.
    pub fn holdout_index_by_id(&self, id: &Id) -> Option<u32> {
        let position = self.snapshot.holdouts.iter().position(|h| h.id == *id)?;
        Some(position as u32)
    }

    /// The holdout step of `assignment`, an answer this evaluator gave for `context`, if
    /// the unit reached the holdout of the experiment (see [`HoldoutStep`]).
    pub fn holdout_step(
        &self,
        assignment: &Assignment<'_>,
        context: &dyn Attributes,
    ) -> Option<HoldoutStep<'_>> {
        let (h, holdout_id) = self.experiment_holdout(assignment.index)?;
        let e = &self.snapshot.experiments[assignment.index as usize];
        assignment.reason.holdout_arm()?;
        if assignment.reason == Reason::Shipped {
            // Only a present unit reaches a shipped experiment's holdout; every other reason
            // with an arm comes after the unit step.
            let name = self.snapshot.attributes.get(e.unit as usize)?;
            unit_of(context.attribute(e.unit, name))?;
        }
        Some(HoldoutStep {
            index: h,
            holdout_id,
            held: assignment.reason == Reason::Holdout,
        })
    }

    /// The holdout (index and id) whose steps experiment `index`'s results can have: the
    /// one it respects, unless it is a switchback or (format 2) the holdout holds another
    /// attribute than the experiment's unit, whose exposures the holdout could not count
    /// (see [`HoldoutStep`]).
    pub fn experiment_holdout(&self, index: u32) -> Option<(u32, &str)> {
        let e = self.snapshot.experiments.get(index as usize)?;
        let h = e.holdout.filter(|_| e.switchback_period_s.is_none())?;
        if let Some(&unit) = self.snapshot.holdout_units.get(h as usize)
            && unit != e.unit
        {
            return None;
        }
        Some((h, self.holdout_ids.get(h as usize)?.as_str()))
    }

    /// What an exposure to experiment `index` carries besides its unit (format 2): the name
    /// and value of each attribute the snapshot lists for the experiment's exposures that the
    /// context has as a string of at most [`MAX_EXPOSURE_STRING_BYTES`], a finite number or
    /// a boolean, in the snapshot's order. Lists are left out (a drill-down groups units by
    /// one value), and so are longer strings, which the origin would refuse the whole
    /// exposure for. Empty for an index out of range and for snapshots decoded from format 1.
    pub fn exposure_attributes<'s, 'c>(
        &'s self,
        index: u32,
        context: &'c dyn Attributes,
    ) -> ExposureAttributes<'s, 'c> {
        let Some(attributes) = self.snapshot.exposure_attributes.get(index as usize) else {
            return ExposureAttributes::default();
        };
        let carried = attributes
            .iter()
            .filter_map(|&attr| {
                let name = self.snapshot.attributes.get(attr as usize)?.as_str();
                match context.attribute(attr, name)? {
                    ValueRef::List(_) => None,
                    ValueRef::Num(n) if !n.is_finite() => None,
                    ValueRef::Str(s) if s.len() > MAX_EXPOSURE_STRING_BYTES => None,
                    value => Some((name, value)),
                }
            })
            .collect();
        ExposureAttributes(carried)
    }

    /// The arm of holdout `index` that `unit` belongs to, as an exposure to the holdout
    /// should name it ([`HoldoutStep::arm`]): what a client holding this snapshot logs for
    /// the unit from any experiment that is not a switchback. `None` for an index out of
    /// range.
    pub fn holdout_arm(&self, index: u32, unit: &str) -> Option<&'static str> {
        let holdout = self.snapshot.holdouts.get(index as usize)?;
        let mut state = self.holdouts[index as usize];
        state.write(unit.as_bytes());
        let held = to_bucket(state.finish()) < holdout.bp;
        Some(arm(held))
    }

    /// The attributes (indices into [`Snapshot::attributes`]) that evaluating experiment
    /// `index` reads: its unit (which its holdout, layer and overrides hash too) and those its
    /// targeting tests, sorted and without repeats. A context holding only these entries gets
    /// the full context's answer, which lets a binding convert no more of a caller's
    /// attributes than one evaluation needs. Empty for an index out of range.
    pub fn experiment_attributes(&self, index: u32) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(e) = self.snapshot.experiments.get(index as usize) {
            out.push(e.unit);
            self.condition_attributes(e.targeting, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Like [`Evaluator::experiment_attributes`] for flag `index`: its unit, its rules'
    /// conditions, and what the experiments its rules take values from read.
    pub fn flag_attributes(&self, index: u32) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(f) = self.snapshot.flags.get(index as usize) {
            out.push(f.unit);
            for rule in &f.rules {
                self.condition_attributes(rule.condition, &mut out);
                if let FlagValue::Experiment { experiment, .. } = rule.value {
                    out.extend(self.experiment_attributes(experiment));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Adds the attributes condition `root` tests to `out`. Iterative and visiting each node
    /// once, so it ends on any snapshot that passed validation.
    fn condition_attributes(&self, root: Option<u32>, out: &mut Vec<u32>) {
        let conditions = &self.snapshot.conditions;
        let mut seen = vec![false; conditions.len()];
        let mut stack: Vec<u32> = root.into_iter().collect();
        while let Some(node) = stack.pop() {
            let Some(visited) = seen.get_mut(node as usize) else {
                continue;
            };
            if core::mem::replace(visited, true) {
                continue;
            }
            match &conditions[node as usize] {
                Condition::All(children) | Condition::Any(children) => stack.extend(children),
                Condition::Not(child) => stack.push(*child),
                Condition::Segment(segment) => {
                    if let Some(segment) = self.snapshot.segments.get(*segment as usize) {
                        stack.push(segment.condition);
                    }
                }
                Condition::Attr { attr, .. } => out.push(*attr),
            }
        }
    }

    /// Evaluates one flag by key; `None` when the snapshot has no such flag.
    pub fn flag(&self, key: &str, context: &dyn Attributes, now_ms: i64) -> Option<FlagResult<'_>> {
        self.flag_at(self.flag_index(key)?, context, now_ms)
    }

    /// Evaluates one flag by its index in the snapshot.
    pub fn flag_at(
        &self,
        index: u32,
        context: &dyn Attributes,
        now_ms: i64,
    ) -> Option<FlagResult<'_>> {
        if index >= self.flags.len() as u32 {
            return None;
        }
        let mut pass = Pass::new(self, context, now_ms);
        // A flag evaluated alone computes the one experiment it may depend on.
        let mut side = Pass::new(self, context, now_ms);
        Some(pass.flag(index, &mut |e| side.assign(e)))
    }
}

/// The longest string value (in UTF-8 bytes) an exposure carries as an attribute: the
/// origin's limit on an event's property and attribute values.
pub const MAX_EXPOSURE_STRING_BYTES: usize = 256;

/// Checks every index and numeric invariant so that evaluation can never go out of bounds.
fn validate(s: &Snapshot) -> Result<(), Invalid> {
    let n_attrs = s.attributes.len() as u32;
    let n_strings = s.strings.len() as u32;
    let n_conds = s.conditions.len() as u32;
    let check = |what: &'static str, index: u32, len: u32| {
        if index < len {
            Ok(())
        } else {
            Err(Invalid::IndexOutOfRange { what, index })
        }
    };
    let check_bp = |what: &'static str, value: u16| {
        if value <= FULL_BP {
            Ok(())
        } else {
            Err(Invalid::BasisPoints { what, value })
        }
    };

    for h in &s.holdouts {
        check_bp("holdout", h.bp)?;
    }
    for seg in &s.segments {
        check("segment condition", seg.condition, n_conds)?;
    }
    let mut depth = vec![0u32; s.conditions.len()];
    for (i, node) in s.conditions.iter().enumerate() {
        let node_index = i as u32;
        let child = |c: u32| {
            if c < node_index {
                Ok(depth[c as usize])
            } else {
                Err(Invalid::ConditionOrder { node: node_index })
            }
        };
        let deepest_child = match node {
            Condition::All(children) | Condition::Any(children) => {
                let mut deepest = 0;
                for &c in children {
                    deepest = deepest.max(child(c)?);
                }
                deepest
            }
            Condition::Not(c) => child(*c)?,
            Condition::Segment(seg) => {
                check("segment", *seg, s.segments.len() as u32)?;
                child(s.segments[*seg as usize].condition)?
            }
            Condition::Attr { attr, operand, .. } => {
                check("attribute", *attr, n_attrs)?;
                match operand {
                    Operand::Str(i) => check("string", *i, n_strings)?,
                    Operand::StrList(list) => {
                        for &i in list {
                            check("string", i, n_strings)?;
                        }
                    }
                    Operand::None
                    | Operand::Num(_)
                    | Operand::Bool(_)
                    | Operand::NumList(_)
                    | Operand::HashedStr(_)
                    | Operand::HashedStrList(_)
                    | Operand::HashedNum(_)
                    | Operand::HashedNumList(_) => {}
                }
                0
            }
        };
        depth[i] = deepest_child + 1;
        if depth[i] > MAX_CONDITION_DEPTH {
            return Err(Invalid::ConditionTooDeep { node: node_index });
        }
    }

    for (i, e) in s.experiments.iter().enumerate() {
        let experiment = i as u32;
        check("unit attribute", e.unit, n_attrs)?;
        if let Some(t) = e.targeting {
            check("targeting condition", t, n_conds)?;
        }
        if let Some(h) = e.holdout {
            check("holdout", h, s.holdouts.len() as u32)?;
        }
        match &e.allocation {
            Allocation::Traffic { bp } => check_bp("traffic", *bp)?,
            Allocation::Layer { layer, ranges } => {
                check("layer", *layer, s.layers.len() as u32)?;
                if ranges.iter().any(|r| r.start >= r.end || r.end > FULL_BP) {
                    return Err(Invalid::SlotRange { experiment });
                }
            }
        }
        if e.variants.is_empty() {
            return Err(Invalid::NoVariants { experiment });
        }
        let mut previous = 0;
        for v in &e.variants {
            check("variant key", v.key, n_strings)?;
            if v.threshold < previous || v.threshold > FULL_BP {
                return Err(Invalid::Thresholds { experiment });
            }
            previous = v.threshold;
        }
        if previous != FULL_BP {
            return Err(Invalid::Thresholds { experiment });
        }
        let n_variants = e.variants.len() as u32;
        for f in &e.forced {
            check("forced variant", f.variant, n_variants)?;
        }
        if let Some(shipped) = e.shipped {
            check("shipped variant", shipped, n_variants)?;
        }
        if e.switchback_period_s == Some(0) {
            return Err(Invalid::SwitchbackPeriod { experiment });
        }
    }

    for (i, f) in s.flags.iter().enumerate() {
        check("flag unit attribute", f.unit, n_attrs)?;
        for rule in &f.rules {
            if let Some(c) = rule.condition {
                check("flag condition", c, n_conds)?;
            }
            check_bp("rollout", rule.rollout_bp)?;
            if let FlagValue::Experiment { experiment, values } = &rule.value {
                check("flag experiment", *experiment, s.experiments.len() as u32)?;
                if values.len() != s.experiments[*experiment as usize].variants.len() {
                    return Err(Invalid::FlagVariants { flag: i as u32 });
                }
            }
        }
    }

    let side_table = |what: &'static str, len: usize, items: usize| {
        if len == 0 || len == items {
            Ok(())
        } else {
            Err(Invalid::SideTable {
                what,
                len: len as u32,
            })
        }
    };
    side_table(
        "exposure attributes",
        s.exposure_attributes.len(),
        s.experiments.len(),
    )?;
    // Marks of the attributes one experiment's list named so far (cleared after each list),
    // so that the check stays linear in the input however long the lists are.
    let mut listed = vec![false; s.attributes.len()];
    for (experiment, attributes) in s.exposure_attributes.iter().enumerate() {
        for &attr in attributes {
            check("exposure attribute", attr, n_attrs)?;
            // Twice would name one key twice in an exposure's `attributes`.
            if core::mem::replace(&mut listed[attr as usize], true) {
                return Err(Invalid::DuplicateKey {
                    what: "exposure attribute",
                    index: experiment as u32,
                });
            }
        }
        for &attr in attributes {
            listed[attr as usize] = false;
        }
    }
    side_table("holdout units", s.holdout_units.len(), s.holdouts.len())?;
    for &unit in &s.holdout_units {
        check("holdout unit", unit, n_attrs)?;
    }

    check_unique_keys("experiment", s.experiments.iter().map(|e| e.key.as_str()))?;
    check_unique_keys("flag", s.flags.iter().map(|f| f.key.as_str()))?;
    Ok(())
}

fn check_unique_keys<'a>(
    what: &'static str,
    keys: impl Iterator<Item = &'a str>,
) -> Result<(), Invalid> {
    let keys: Vec<&str> = keys.collect();
    let order = sorted_indices(keys.len(), &|a, b| keys[a].cmp(keys[b]));
    match order
        .windows(2)
        .find(|pair| keys[pair[0] as usize] == keys[pair[1] as usize])
    {
        Some(pair) => Err(Invalid::DuplicateKey {
            what,
            index: pair[1],
        }),
        None => Ok(()),
    }
}

/// Indices `0..len` sorted stably by `compare`. Every sort of the crate goes through this one
/// function, a bottom-up merge sort: the standard sort would cost about 4.5 KB of WebAssembly
/// (docs/benchmarks.md, abx-wasm), this one a few hundred bytes. Runs that are already in
/// order cost one comparison per merge, so a snapshot whose keys arrive sorted (the usual
/// case) is indexed in linear time, as the standard sort would.
fn sorted_indices(len: usize, compare: &dyn Fn(usize, usize) -> Ordering) -> Vec<u32> {
    let mut indices: Vec<u32> = (0..len as u32).collect();
    let mut scratch = indices.clone();
    let mut width = 1;
    while width < len {
        let mut start = 0;
        while start < len {
            let middle = len.min(start + width);
            let end = len.min(start + 2 * width);
            merge(
                &indices[start..middle],
                &indices[middle..end],
                &mut scratch[start..end],
                compare,
            );
            start = end;
        }
        core::mem::swap(&mut indices, &mut scratch);
        width *= 2;
    }
    indices
}

/// Merges two sorted runs into `out`, taking from `left` on ties (stability).
fn merge(left: &[u32], right: &[u32], out: &mut [u32], compare: &dyn Fn(usize, usize) -> Ordering) {
    let in_order = match (left.last(), right.first()) {
        (Some(&l), Some(&r)) => compare(r as usize, l as usize).is_ge(),
        _ => true,
    };
    if in_order {
        out[..left.len()].copy_from_slice(left);
        out[left.len()..].copy_from_slice(right);
        return;
    }
    let (mut l, mut r) = (0, 0);
    for slot in out.iter_mut() {
        let take_right = l == left.len()
            || (r < right.len() && compare(right[r] as usize, left[l] as usize).is_lt());
        if take_right {
            *slot = right[r];
            r += 1;
        } else {
            *slot = left[l];
            l += 1;
        }
    }
}

/// For each layer, the unit attribute and switchback period its experiments share, after
/// checking that they do share them and that their slot ranges are disjoint.
fn layer_units(s: &Snapshot) -> Result<Vec<Option<LayerUnit>>, Invalid> {
    let mut units: Vec<Option<LayerUnit>> = vec![None; s.layers.len()];
    let mut ranges: Vec<(u32, u16, u16)> = Vec::new();
    for e in &s.experiments {
        let Allocation::Layer {
            layer,
            ranges: owned,
        } = &e.allocation
        else {
            continue;
        };
        let this = (e.unit, e.switchback_period_s);
        match units[*layer as usize] {
            None => units[*layer as usize] = Some(this),
            Some(existing) if existing != this => return Err(Invalid::LayerUnit { layer: *layer }),
            Some(_) => {}
        }
        ranges.extend(owned.iter().map(|r| (*layer, r.start, r.end)));
    }
    let order = sorted_indices(ranges.len(), &|a, b| ranges[a].cmp(&ranges[b]));
    for pair in order.windows(2) {
        let (layer_a, _, end_a) = ranges[pair[0] as usize];
        let (layer_b, start_b, _) = ranges[pair[1] as usize];
        if layer_a == layer_b && start_b < end_a {
            return Err(Invalid::LayerOverlap { layer: layer_a });
        }
    }
    Ok(units)
}

/// A unit value as the bytes that get hashed: a string, or an integer's decimal digits.
#[derive(Clone, Copy)]
enum Unit<'c> {
    Text(&'c str),
    Integer(Digits),
}

// The small helpers of the per-experiment path are forced inline: the WebAssembly build is
// optimised for size ("s"), where LLVM keeps them out of line, and V8 does not inline calls
// between WebAssembly functions, so each became a real call per experiment. Inlining them
// took the Node evaluation of 1,000 experiments from 63 to 56 µs (docs/benchmarks.md) for
// 0.9 KB of gzipped module.
impl Unit<'_> {
    #[inline(always)]
    fn as_str(&self) -> &str {
        match self {
            Unit::Text(s) => s,
            Unit::Integer(d) => d.as_str(),
        }
    }
}

/// Decimal text of an i64, on the stack.
#[derive(Clone, Copy)]
struct Digits {
    buf: [u8; 20],
    start: u8,
}

impl Digits {
    fn new(n: i64) -> Digits {
        let mut buf = [0u8; 20];
        let mut pos = buf.len();
        let mut rest = n.unsigned_abs();
        loop {
            pos -= 1;
            buf[pos] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            pos -= 1;
            buf[pos] = b'-';
        }
        Digits {
            buf,
            start: pos as u8,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[usize::from(self.start)..]).unwrap_or_default()
    }
}

/// The text a unit attribute's value is hashed as, which is also how exposures name the unit:
/// a non-empty string as it is, or a whole number up to 2^53 in decimal. `None` when the value
/// cannot be a unit (the experiment then answers `missing_unit`). Bindings use it to log
/// exposures without restating the rule.
pub fn unit_text(value: &Value) -> Option<String> {
    unit_of(Some(value.view())).map(|unit| unit.as_str().into())
}

/// [`unit_text`] of a borrowed value, without allocating: for bindings that check an
/// exposure against those already logged before making anything of it.
pub fn with_unit_text<R>(value: ValueRef<'_>, f: impl FnOnce(&str) -> R) -> Option<R> {
    unit_of(Some(value)).map(|unit| f(unit.as_str()))
}

/// Largest integer that every runtime represents exactly (JavaScript's safe integers).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

#[inline(always)]
fn unit_of(value: Option<ValueRef<'_>>) -> Option<Unit<'_>> {
    match value? {
        ValueRef::Str(s) if !s.is_empty() => Some(Unit::Text(s)),
        ValueRef::Num(n) if n.abs() <= MAX_SAFE_INTEGER && (n as i64) as f64 == n => {
            Some(Unit::Integer(Digits::new(n as i64)))
        }
        _ => None,
    }
}

/// The hashed form of a unit: its bytes, plus `@{period}` for switchback experiments.
#[derive(Clone, Copy)]
struct HashedUnit<'c> {
    unit: Unit<'c>,
    period: Option<Digits>,
}

impl HashedUnit<'_> {
    #[inline(always)]
    fn feed(&self, state: &mut Murmur3) {
        state.write(self.unit.as_str().as_bytes());
        if let Some(period) = &self.period {
            state.write(b"@");
            state.write(period.as_str().as_bytes());
        }
    }
}

const UNKNOWN: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NO_SLOT: u16 = u16::MAX;
const SLOT_UNKNOWN: u16 = u16::MAX - 1;

/// State of one evaluation: the resolved context and memos, so that no condition is
/// evaluated and no string hashed twice. Memos are allocated on first use, so evaluating one
/// experiment without targeting or layers allocates nothing.
struct Pass<'e, 'c> {
    eval: &'e Evaluator,
    context: &'c dyn Attributes,
    /// Every snapshot attribute resolved up front (full passes); `None` looks attributes up
    /// in the context on demand (single evaluations, which read one or two).
    attributes: Option<Vec<Option<ValueRef<'c>>>>,
    now_ms: i64,
    conditions: Vec<u8>,
    layer_slots: Vec<u16>,
    /// (holdout, unit attribute, switchback period) -> bucket.
    holdout_buckets: Vec<(u32, u32, Option<u32>, u16)>,
    /// Skip the status and targeting steps (see `Evaluator::exposure_check`).
    hash_only: bool,
}

impl<'e, 'c> Pass<'e, 'c> {
    fn new(eval: &'e Evaluator, context: &'c dyn Attributes, now_ms: i64) -> Self {
        Pass {
            eval,
            context,
            attributes: None,
            now_ms,
            conditions: Vec::new(),
            layer_slots: Vec::new(),
            holdout_buckets: Vec::new(),
            hash_only: false,
        }
    }

    /// A pass that resolves the whole context against the snapshot's attributes once.
    fn full(eval: &'e Evaluator, context: &'c Context, now_ms: i64) -> Self {
        let names = &eval.snapshot.attributes;
        let by_name = &eval.attributes_by_name;
        let mut attributes = vec![None; names.len()];
        for (name, value) in context.iter() {
            let first = by_name.partition_point(|&i| names[i as usize].as_str() < name);
            for &i in by_name[first..]
                .iter()
                .take_while(|&&i| names[i as usize] == name)
            {
                attributes[i as usize] = Some(value.view());
            }
        }
        Pass {
            attributes: Some(attributes),
            ..Pass::new(eval, context, now_ms)
        }
    }

    #[inline(always)]
    fn attribute(&self, attr: u32) -> Option<ValueRef<'c>> {
        match &self.attributes {
            Some(resolved) => resolved[attr as usize],
            None => self
                .context
                .attribute(attr, &self.eval.snapshot.attributes[attr as usize]),
        }
    }

    fn condition(&mut self, node: u32) -> bool {
        if self.conditions.is_empty() {
            self.conditions = vec![UNKNOWN; self.eval.snapshot.conditions.len()];
        }
        let memo = self.conditions[node as usize];
        if memo != UNKNOWN {
            return memo == TRUE;
        }
        let snapshot = &self.eval.snapshot;
        let result = match &snapshot.conditions[node as usize] {
            Condition::All(children) => children.iter().all(|&c| self.condition(c)),
            Condition::Any(children) => children.iter().any(|&c| self.condition(c)),
            Condition::Not(c) => !self.condition(*c),
            Condition::Segment(seg) => self.condition(snapshot.segments[*seg as usize].condition),
            Condition::Attr { attr, op, operand } => {
                condition::test(self.attribute(*attr), *op, operand, &snapshot.strings)
            }
        };
        self.conditions[node as usize] = if result { TRUE } else { FALSE };
        result
    }

    #[inline(always)]
    fn hashed_unit(&self, unit: Unit<'c>, switchback_period_s: Option<u32>) -> HashedUnit<'c> {
        let period = switchback_period_s.map(|p| {
            let now_s = self.now_ms.div_euclid(1000);
            Digits::new(now_s.div_euclid(i64::from(p)))
        });
        HashedUnit { unit, period }
    }

    /// Whether holdout `h` holds out `unit`, the value of attribute `unit_attr` (hashed
    /// per switchback period, if any).
    fn held(&mut self, h: u32, unit_attr: u32, period: Option<u32>, unit: Unit<'c>) -> bool {
        let bp = self.eval.snapshot.holdouts[h as usize].bp;
        let hashed = self.hashed_unit(unit, period);
        self.holdout_bucket(h, unit_attr, period, &hashed) < bp
    }

    fn holdout_bucket(
        &mut self,
        holdout: u32,
        unit_attr: u32,
        period: Option<u32>,
        unit: &HashedUnit<'_>,
    ) -> u16 {
        let key = (holdout, unit_attr, period);
        if let Some(&(.., bucket)) = self
            .holdout_buckets
            .iter()
            .find(|(h, a, p, _)| (*h, *a, *p) == key)
        {
            return bucket;
        }
        let mut state = self.eval.holdouts[holdout as usize];
        unit.feed(&mut state);
        let bucket = to_bucket(state.finish());
        self.holdout_buckets
            .push((holdout, unit_attr, period, bucket));
        bucket
    }

    /// The unit's slot in a layer, or `NO_SLOT` when the unit attribute is missing.
    fn layer_slot(&mut self, layer: u32) -> u16 {
        if self.layer_slots.is_empty() {
            self.layer_slots = vec![SLOT_UNKNOWN; self.eval.layers.len()];
        }
        let memo = self.layer_slots[layer as usize];
        if memo != SLOT_UNKNOWN {
            return memo;
        }
        let prepared = &self.eval.layers[layer as usize];
        let slot = match prepared.unit {
            Some((attr, period)) => match unit_of(self.attribute(attr)) {
                Some(unit) => {
                    let mut state = prepared.prefix;
                    self.hashed_unit(unit, period).feed(&mut state);
                    to_bucket(state.finish())
                }
                None => NO_SLOT,
            },
            None => NO_SLOT,
        };
        self.layer_slots[layer as usize] = slot;
        slot
    }

    fn assign(&mut self, index: u32) -> Assignment<'e> {
        let eval = self.eval;
        let e = &eval.snapshot.experiments[index as usize];
        let prepared = &eval.experiments[index as usize];
        let strings = &eval.snapshot.strings;
        let outcome = |variant: Option<u32>, reason: Reason| {
            let chosen = variant.map(|v| &e.variants[v as usize]);
            Assignment {
                index,
                experiment_key: &e.key,
                experiment_id: prepared.id_text.as_str(),
                variant: chosen.map(|v| strings[v.key as usize].as_str()),
                variant_index: variant,
                config: chosen.map(|v| v.config.as_str()),
                reason,
                log_exposure: reason == Reason::Assigned,
            }
        };

        // 1. Status. A shipped variant reaches everyone but the units of a holdout the
        // experiment respects: a holdout measures everything shipped, so its units keep the
        // experience without the experiment while it runs.
        match (e.status, e.shipped) {
            _ if self.hash_only => {}
            (Status::Running, _) => {}
            (Status::Completed, Some(shipped)) => {
                let held = match (unit_of(self.attribute(e.unit)), e.holdout) {
                    (Some(unit), Some(h)) => self.held(h, e.unit, e.switchback_period_s, unit),
                    _ => false,
                };
                return match held {
                    true => outcome(None, Reason::Holdout),
                    false => outcome(Some(shipped), Reason::Shipped),
                };
            }
            _ => return outcome(None, Reason::NotRunning),
        }
        // 2. Forced overrides, keyed by the raw unit value.
        let unit = unit_of(self.attribute(e.unit));
        if let Some(unit) = &unit
            && let Some(forced) = e.forced.iter().find(|f| f.unit == unit.as_str())
        {
            return outcome(Some(forced.variant), Reason::Forced);
        }
        // 3. Unit.
        let Some(unit) = unit else {
            return outcome(None, Reason::MissingUnit);
        };
        // 4. Targeting.
        if let Some(root) = e.targeting
            && !self.hash_only
            && !self.condition(root)
        {
            return outcome(None, Reason::NotTargeted);
        }
        // 5-6. Switchback (in `held` and below) and holdout, as docs/assignment.md numbers them.
        if let Some(h) = e.holdout
            && self.held(h, e.unit, e.switchback_period_s, unit)
        {
            return outcome(None, Reason::Holdout);
        }
        let hashed = self.hashed_unit(unit, e.switchback_period_s);
        // 7. Traffic. The gate and variant hashes share the "{experiment_id}:{unit}" state.
        let mut state = prepared.prefix;
        hashed.feed(&mut state);
        let in_traffic = match &e.allocation {
            Allocation::Traffic { bp } => to_bucket(state.finish()) < *bp,
            Allocation::Layer { layer, ranges } => {
                let slot = self.layer_slot(*layer);
                ranges.iter().any(|r| r.start <= slot && slot < r.end)
            }
        };
        if !in_traffic {
            return outcome(None, Reason::NotInTraffic);
        }
        // 8. Variant.
        state.write(b":variant");
        let v = to_bucket(state.finish());
        let chosen = e.variants.iter().position(|variant| v < variant.threshold);
        // Validation guarantees the last threshold is 10000, so a variant always matches.
        outcome(Some(chosen.unwrap_or(0) as u32), Reason::Assigned)
    }

    fn flag(
        &mut self,
        index: u32,
        experiment: &mut dyn FnMut(u32) -> Assignment<'e>,
    ) -> FlagResult<'e> {
        let eval = self.eval;
        let f = &eval.snapshot.flags[index as usize];
        let result = |value: &'e String,
                      reason,
                      rule: Option<u32>,
                      experiment: Option<u32>,
                      holdout_experiment: Option<u32>| FlagResult {
            index,
            flag_key: &f.key,
            value,
            reason,
            rule,
            experiment,
            holdout_experiment,
        };
        if !f.enabled {
            return result(&f.off_value, FlagReason::Disabled, None, None, None);
        }
        let mut holdout_experiment = None;
        let mut rollout_bucket: Option<Option<u16>> = None;
        for (rule_index, rule) in f.rules.iter().enumerate() {
            let rule_index = Some(rule_index as u32);
            if let Some(c) = rule.condition
                && !self.condition(c)
            {
                continue;
            }
            if rule.rollout_bp < FULL_BP {
                let bucket = *rollout_bucket.get_or_insert_with(|| {
                    unit_of(self.attribute(f.unit)).map(|unit| {
                        let mut state = eval.flags[index as usize];
                        state.write(unit.as_str().as_bytes());
                        to_bucket(state.finish())
                    })
                });
                // Without a unit there is nothing to bucket, so partial rollouts skip it.
                if bucket.is_none_or(|b| b >= rule.rollout_bp) {
                    continue;
                }
            }
            match &rule.value {
                FlagValue::Json(value) => {
                    let reason = FlagReason::Rule;
                    return result(value, reason, rule_index, None, holdout_experiment);
                }
                FlagValue::Experiment {
                    experiment: e,
                    values,
                } => {
                    let assignment = experiment(*e);
                    if holdout_experiment.is_none()
                        && eval.holdout_step(&assignment, self.context).is_some()
                    {
                        holdout_experiment = Some(*e);
                    }
                    if let Some(v) = assignment.variant_index {
                        let value = &values[v as usize];
                        let reason = FlagReason::Experiment;
                        return result(value, reason, rule_index, Some(*e), holdout_experiment);
                    }
                }
            }
        }
        result(
            &f.default_value,
            FlagReason::Default,
            None,
            None,
            holdout_experiment,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_attribute_listed_twice_for_one_experiments_exposures_is_refused() {
        let mut b = crate::SnapshotBuilder::new(1, 0);
        let unit = b.attribute("user_id");
        let variant = crate::snapshot::Variant {
            key: b.string("a"),
            threshold: FULL_BP,
            config: "{}".into(),
        };
        for key in ["first", "second"] {
            let index = b.experiment(crate::snapshot::Experiment {
                id: Id([key.len() as u8; 16]),
                key: key.into(),
                status: Status::Running,
                unit,
                targeting: None,
                holdout: None,
                allocation: Allocation::Traffic { bp: FULL_BP },
                variants: vec![variant.clone()],
                forced: Vec::new(),
                shipped: None,
                switchback_period_s: None,
            });
            // Each list alone names an attribute once; the marks of one list do not carry
            // over to the next.
            b.exposure_attributes(index, &["country", "platform"]);
        }
        let good = b.build();
        assert!(Evaluator::new(good.clone()).is_ok());
        let mut twice = good;
        let first = twice.exposure_attributes[1][0];
        twice.exposure_attributes[1].push(first);
        assert_eq!(
            Evaluator::new(twice).err(),
            Some(Error::Invalid(Invalid::DuplicateKey {
                what: "exposure attribute",
                index: 1,
            }))
        );
    }

    proptest! {
        /// The hand-written sort must give the standard stable sort's order, duplicates
        /// included (keys drawn from a small range so that ties are common).
        #[test]
        fn sorted_indices_is_a_stable_sort(keys in proptest::collection::vec(0u8..8, 0..200)) {
            let ours = sorted_indices(keys.len(), &|a, b| keys[a].cmp(&keys[b]));
            let mut expected: Vec<u32> = (0..keys.len() as u32).collect();
            expected.sort_by_key(|&i| keys[i as usize]);
            prop_assert_eq!(ours, expected);
        }

        /// Every key is found at its own item, and keys not in the index are not found.
        #[test]
        fn key_index_finds_every_key_and_no_other(
            keys in proptest::collection::btree_set("[a-z0-9_]{0,12}", 0..300),
            others in proptest::collection::vec("[a-z0-9_]{0,12}", 0..50),
        ) {
            let keys: Vec<String> = keys.into_iter().collect();
            let index = KeyIndex::new(keys.iter().map(String::as_str));
            for (i, key) in keys.iter().enumerate() {
                prop_assert_eq!(index.find(key, |k| keys[k as usize].as_str()), Some(i as u32));
            }
            for other in others.iter().filter(|o| !keys.contains(o)) {
                prop_assert_eq!(index.find(other, |k| keys[k as usize].as_str()), None);
            }
        }
    }

    #[test]
    fn key_index_tells_apart_keys_of_one_hash() {
        // Two keys with the same murmur3_x86_32 (found by search), among others.
        let keys = ["exp_1", "exp_100452", "exp_2", "exp_70659", "exp_3"];
        assert_eq!(
            murmur3_x86_32(b"exp_70659", 0),
            murmur3_x86_32(b"exp_100452", 0)
        );
        let index = KeyIndex::new(keys.iter().copied());
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(index.find(key, |k| keys[k as usize]), Some(i as u32));
        }
        assert_eq!(index.find("exp_4", |k| keys[k as usize]), None);
        assert_eq!(KeyIndex::new([].into_iter()).find("", |_| ""), None);
    }
}
