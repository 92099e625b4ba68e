//! The packed result format shared by the JavaScript binding (`abx-wasm`) and the C ABI.
//!
//! An evaluation of the realistic snapshot has 1,200 results. Turning them into JSON text or
//! into JavaScript objects costs more than computing them, so both modules can hand a host
//! the results as a flat list of `u32` words instead, plus name tables the host reads once
//! per snapshot. The layout (normative in `docs/wasm-abi.md`):
//!
//! - per experiment, in snapshot order: `[reason, variant + 1]` (`0` = no variant);
//! - then per flag, in snapshot order: `[reason, value]`, where `value` indexes the flag's
//!   value table ([`flag_values`]): `0` the off value, `1` the default value, then every
//!   rule's values in rule order (one for a fixed value, one per variant for a value taken
//!   from an experiment).
//!
//! Reason codes are positions in [`REASONS`] and [`FLAG_REASONS`].

use alloc::string::String;
use alloc::vec::Vec;

use abx_core::snapshot::{Flag, FlagValue, Snapshot};
use abx_core::{Assignment, Evaluation, Evaluator, FlagReason, FlagResult, Reason};

/// Experiment reasons in code order.
pub const REASONS: [Reason; 8] = Reason::ALL;

/// Flag reasons in code order.
pub const FLAG_REASONS: [FlagReason; 4] = [
    FlagReason::Disabled,
    FlagReason::Rule,
    FlagReason::Experiment,
    FlagReason::Default,
];

/// Words per experiment and per flag.
pub const WORDS_PER_RESULT: usize = 2;

pub fn reason_code(reason: Reason) -> u32 {
    match reason {
        Reason::NotRunning => 0,
        Reason::Shipped => 1,
        Reason::Forced => 2,
        Reason::MissingUnit => 3,
        Reason::NotTargeted => 4,
        Reason::Holdout => 5,
        Reason::NotInTraffic => 6,
        Reason::Assigned => 7,
    }
}

pub fn flag_reason_code(reason: FlagReason) -> u32 {
    match reason {
        FlagReason::Disabled => 0,
        FlagReason::Rule => 1,
        FlagReason::Experiment => 2,
        FlagReason::Default => 3,
    }
}

/// The two words of one experiment's result.
pub fn experiment_words(assignment: &Assignment<'_>) -> [u32; 2] {
    // A snapshot is at most 64 MiB and every variant takes bytes, so an index never comes
    // near `u32::MAX`; saturating keeps the arithmetic panic-free regardless.
    let variant = assignment.variant_index.map_or(0, |v| v.saturating_add(1));
    [reason_code(assignment.reason), variant]
}

/// A flag's value table: the off value, the default value, then each rule's values.
pub fn flag_values(flag: &Flag) -> impl Iterator<Item = &str> {
    let rules = flag.rules.iter().flat_map(|rule| match &rule.value {
        FlagValue::Json(value) => core::slice::from_ref(value).iter(),
        FlagValue::Experiment { values, .. } => values.iter(),
    });
    [flag.off_value.as_str(), flag.default_value.as_str()]
        .into_iter()
        .chain(rules.map(String::as_str))
}

/// A flag result that does not point into its flag's value table. abx-core always returns a
/// value of the snapshot, so this means the two crates disagree about the snapshot model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpackable {
    pub flag: u32,
}

/// Precomputed positions of each flag rule's values in the flag's value table.
#[derive(Debug, Default)]
pub struct Packer {
    /// Per flag, per rule: the table index of the rule's first value.
    rule_offsets: Vec<Vec<u32>>,
}

impl Packer {
    pub fn new(snapshot: &Snapshot) -> Packer {
        let rule_offsets = snapshot
            .flags
            .iter()
            .map(|flag| {
                let mut next = 2u32;
                flag.rules
                    .iter()
                    .map(|rule| {
                        let offset = next;
                        let count = match &rule.value {
                            FlagValue::Json(_) => 1,
                            FlagValue::Experiment { values, .. } => values.len(),
                        };
                        next = next.saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
                        offset
                    })
                    .collect()
            })
            .collect();
        Packer { rule_offsets }
    }

    /// Index of a flag result's value in its flag's value table.
    pub fn value_index(&self, snapshot: &Snapshot, result: &FlagResult<'_>) -> Option<u32> {
        match result.reason {
            FlagReason::Disabled => Some(0),
            FlagReason::Default => Some(1),
            FlagReason::Rule | FlagReason::Experiment => {
                let flag = result.index as usize;
                let rule = result.rule? as usize;
                let offset = *self.rule_offsets.get(flag)?.get(rule)?;
                match &snapshot.flags.get(flag)?.rules.get(rule)?.value {
                    FlagValue::Json(_) => Some(offset),
                    FlagValue::Experiment { values, .. } => {
                        // The value is a reference into `values`; comparing addresses finds it
                        // without comparing text (two variants may carry equal values).
                        let position = values
                            .iter()
                            .position(|v| core::ptr::eq(v.as_str(), result.value))
                            .or_else(|| values.iter().position(|v| v == result.value))?;
                        offset.checked_add(u32::try_from(position).ok()?)
                    }
                }
            }
        }
    }

    /// The two words of one flag's result.
    pub fn flag_words(
        &self,
        snapshot: &Snapshot,
        result: &FlagResult<'_>,
    ) -> Result<[u32; 2], Unpackable> {
        let value = self
            .value_index(snapshot, result)
            .ok_or(Unpackable { flag: result.index })?;
        Ok([flag_reason_code(result.reason), value])
    }

    /// Appends a whole evaluation to `out`: experiments, then flags.
    pub fn pack(
        &self,
        evaluator: &Evaluator,
        evaluation: &Evaluation<'_>,
        out: &mut Vec<u32>,
    ) -> Result<(), Unpackable> {
        out.reserve((evaluation.experiments.len() + evaluation.flags.len()) * WORDS_PER_RESULT);
        for assignment in &evaluation.experiments {
            out.extend_from_slice(&experiment_words(assignment));
        }
        for result in &evaluation.flags {
            out.extend_from_slice(&self.flag_words(evaluator.snapshot(), result)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abx_core::Context;
    use serde_json::Value as Json;
    use std::path::{Path, PathBuf};

    fn suite() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../snapshots")
    }

    /// Every case of the flag and realistic vectors, packed and unpacked again through the
    /// name tables, gives back what abx-core returned.
    #[test]
    fn packing_round_trips_every_result_of_three_vector_files() {
        for name in ["flags", "realistic_1000", "basic"] {
            let vectors: Json = serde_json::from_slice(
                &std::fs::read(suite().join(format!("vectors/{name}.json"))).expect("vectors"),
            )
            .expect("JSON");
            let bytes =
                std::fs::read(suite().join(format!("golden/{name}.abxs"))).expect("snapshot");
            let evaluator = Evaluator::from_bytes(&bytes).expect("golden snapshot");
            let snapshot = evaluator.snapshot();
            let packer = Packer::new(snapshot);
            let tables: Vec<Vec<&str>> = snapshot
                .flags
                .iter()
                .map(|f| flag_values(f).collect())
                .collect();
            let cases = vectors["cases"].as_array().expect("cases");
            assert!(!cases.is_empty());
            for case in cases {
                let context: Context =
                    serde_json::from_value(case["context"].clone()).expect("context");
                let evaluation =
                    evaluator.evaluate(&context, case["now_ms"].as_i64().expect("now"));
                let mut words = Vec::new();
                packer
                    .pack(&evaluator, &evaluation, &mut words)
                    .expect("packs");
                let (experiments, flags) = words.split_at(evaluation.experiments.len() * 2);
                assert_eq!(flags.len(), evaluation.flags.len() * 2);
                for (pair, want) in experiments.chunks(2).zip(&evaluation.experiments) {
                    assert_eq!(REASONS[pair[0] as usize], want.reason);
                    assert_eq!(pair[1].checked_sub(1), want.variant_index);
                }
                for (pair, want) in flags.chunks(2).zip(&evaluation.flags) {
                    assert_eq!(FLAG_REASONS[pair[0] as usize], want.reason);
                    assert_eq!(tables[want.index as usize][pair[1] as usize], want.value);
                }
            }
        }
    }

    #[test]
    fn reason_codes_are_positions_in_the_tables() {
        for (code, reason) in REASONS.iter().enumerate() {
            assert_eq!(reason_code(*reason) as usize, code);
        }
        for (code, reason) in FLAG_REASONS.iter().enumerate() {
            assert_eq!(flag_reason_code(*reason) as usize, code);
        }
    }
}
