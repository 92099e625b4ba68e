//! The snapshot data model: everything an evaluator needs, already compiled by the origin
//! (percentages turned into basis points, variant weights into cumulative thresholds, layer
//! membership into slot ranges). `docs/snapshot-format.md` is the normative description.
//!
//! Strings that repeat across a snapshot (attribute names, variant keys, condition operands)
//! live once in [`Snapshot::attributes`] or [`Snapshot::strings`] and are referenced by index,
//! which keeps a 1,000-experiment snapshot well under 150 KB.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

/// Basis points: 1 bp = 0.01 %, so 10 000 bp is the whole population.
pub const FULL_BP: u16 = 10_000;

/// A decoded snapshot. Field order is the wire order; never reorder, only append in a new
/// format version. Format 1 ends after `flags`; format 2 appends `exposure_attributes` and
/// `holdout_units`, which a snapshot decoded from format 1 has empty (see
/// [`crate::Format`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Strictly increasing with every publication.
    pub snapshot_version: u64,
    /// Publication time, milliseconds since the Unix epoch.
    pub published_at_ms: i64,
    /// Attribute names used as units or in conditions.
    pub attributes: Vec<String>,
    /// Interned strings: variant keys and string operands of conditions.
    pub strings: Vec<String>,
    pub layers: Vec<Layer>,
    pub holdouts: Vec<Holdout>,
    /// Arena of condition nodes; a node's children always have smaller indices.
    pub conditions: Vec<Condition>,
    pub segments: Vec<Segment>,
    pub experiments: Vec<Experiment>,
    pub flags: Vec<Flag>,
    /// Format 2. Per experiment, in the order of `experiments`: the attributes (indices into
    /// `attributes`) that its exposures carry, so that its results can be broken down by
    /// them (its dimensions and the instance's). Empty, or one entry per experiment.
    pub exposure_attributes: Vec<Vec<u32>>,
    /// Format 2. Per holdout, in the order of `holdouts`: the attribute (index into
    /// `attributes`) whose values it holds. Empty, or one entry per holdout.
    pub holdout_units: Vec<u32>,
}

/// A 128-bit id, rendered in hashes as lowercase hyphenated UUID text. Postcard stores the
/// 16 raw bytes; JSON shows the text form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 16]);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(self.to_text().as_str())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <&str>::deserialize(deserializer)?;
            Id::parse(text).ok_or_else(|| serde::de::Error::custom("expected a UUID"))
        } else {
            <[u8; 16]>::deserialize(deserializer).map(Id)
        }
    }
}

impl Id {
    /// The canonical text form, e.g. `67e55044-10b1-426f-9247-bb680e5fe0c8`.
    pub fn to_text(&self) -> IdText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 36];
        let mut pos = 0;
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[pos] = b'-';
                pos += 1;
            }
            out[pos] = HEX[usize::from(byte >> 4)];
            out[pos + 1] = HEX[usize::from(byte & 0x0f)];
            pos += 2;
        }
        IdText(out)
    }

    /// Parses canonical hyphenated UUID text (either case).
    pub fn parse(text: &str) -> Option<Id> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Some(Id(out))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_text().as_str())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_text().as_str())
    }
}

/// The 36 ASCII bytes of an [`Id`]'s text form, without allocating.
#[derive(Clone, Copy, Debug)]
pub struct IdText([u8; 36]);

impl IdText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever written.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub id: Id,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    pub id: Id,
    pub key: String,
    /// Units with `bucket("holdout:{id}:{unit}") < bp` are held out.
    pub bp: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: Id,
    pub key: String,
    /// Root node in [`Snapshot::conditions`].
    pub condition: u32,
}

/// One node of a targeting condition tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// True when every child is true (an empty list is true).
    All(Vec<u32>),
    /// True when any child is true (an empty list is false).
    Any(Vec<u32>),
    Not(u32),
    /// The condition of [`Snapshot::segments`]`[i]`.
    Segment(u32),
    /// A test of one context attribute (index into [`Snapshot::attributes`]).
    Attr {
        attr: u32,
        op: Op,
        operand: Operand,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Gt,
    Gte,
    Lt,
    Lte,
    SemverEq,
    SemverGt,
    SemverGte,
    SemverLt,
    SemverLte,
    Exists,
}

impl Op {
    pub const ALL: [Op; 17] = [
        Op::Eq,
        Op::Ne,
        Op::In,
        Op::NotIn,
        Op::Contains,
        Op::StartsWith,
        Op::EndsWith,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::SemverEq,
        Op::SemverGt,
        Op::SemverGte,
        Op::SemverLt,
        Op::SemverLte,
        Op::Exists,
    ];

    /// The name used in the admin API and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::SemverEq => "semver_eq",
            Op::SemverGt => "semver_gt",
            Op::SemverGte => "semver_gte",
            Op::SemverLt => "semver_lt",
            Op::SemverLte => "semver_lte",
            Op::Exists => "exists",
        }
    }

    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// The right-hand side of an attribute test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operand {
    None,
    /// Index into [`Snapshot::strings`].
    Str(u32),
    Num(f64),
    Bool(bool),
    /// Indices into [`Snapshot::strings`].
    StrList(Vec<u32>),
    NumList(Vec<f64>),
    /// The operands below replace `Str`, `StrList`, `Num` and `NumList` for attributes marked
    /// private, in the client snapshot served to browsers (see [`crate::client_view`]): the
    /// values are [`crate::private_hash_str`] / [`crate::private_hash_num`] hashes, so the
    /// snapshot no longer shows them, and equality tests still give the same answers.
    HashedStr(u64),
    HashedStrList(Vec<u64>),
    HashedNum(u64),
    HashedNumList(Vec<u64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Running,
    Paused,
    Completed,
    Archived,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Archived => "archived",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: Id,
    pub key: String,
    pub status: Status,
    /// Randomization unit: index into [`Snapshot::attributes`] (usually `user_id`).
    pub unit: u32,
    /// Root node in [`Snapshot::conditions`].
    pub targeting: Option<u32>,
    /// Index into [`Snapshot::holdouts`] of a holdout this experiment respects.
    pub holdout: Option<u32>,
    pub allocation: Allocation,
    pub variants: Vec<Variant>,
    pub forced: Vec<Forced>,
    /// Index of the variant shipped when the experiment completed.
    pub shipped: Option<u32>,
    /// When set, the unit flips arm every period (switchback designs).
    pub switchback_period_s: Option<u32>,
}

/// How an experiment selects its traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// No layer: in iff `bucket("{experiment_id}:{unit}") < bp`.
    Traffic { bp: u16 },
    /// In a layer: in iff `bucket("{layer_id}:{unit}")` falls in one of `ranges`.
    Layer { layer: u32, ranges: Vec<SlotRange> },
}

/// Half-open slot range `[start, end)` within `0..10000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Index into [`Snapshot::strings`].
    pub key: u32,
    /// Cumulative weight in basis points: the variant takes `v` with
    /// `previous.threshold <= v < threshold`. The last threshold is 10 000.
    pub threshold: u16,
    /// The variant's configuration as JSON text; the core never parses it.
    pub config: String,
}

/// A QA override: this unit value always gets this variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forced {
    pub unit: String,
    pub variant: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub key: String,
    pub enabled: bool,
    /// Rollout unit: index into [`Snapshot::attributes`].
    pub unit: u32,
    /// JSON value served while the flag is disabled (its kill switch).
    pub off_value: String,
    /// JSON value served when no rule matches.
    pub default_value: String,
    pub rules: Vec<FlagRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagRule {
    /// Root node in [`Snapshot::conditions`]; `None` matches everyone.
    pub condition: Option<u32>,
    /// Units with `bucket("{flag_key}:{unit}") < rollout_bp` are in the rollout.
    pub rollout_bp: u16,
    pub value: FlagValue,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagValue {
    /// A fixed JSON value.
    Json(String),
    /// The value depends on the unit's variant in an experiment: `values[i]` (JSON) for
    /// variant `i`. The rule only matches units that the experiment assigns.
    Experiment {
        experiment: u32,
        values: Vec<String>,
    },
}
