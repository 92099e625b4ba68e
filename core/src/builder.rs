//! Building snapshots: interning of attribute names and strings, and compilation of
//! condition trees into the snapshot's node arena. The origin publishes through this, and the
//! conformance generator builds its golden snapshots with it.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::snapshot::{
    Condition, Experiment, Flag, Holdout, Id, Layer, Op, Operand, Segment, Snapshot,
};

/// A condition tree with names instead of indices, as an admin writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    /// Index of a segment already added to the builder.
    Segment(u32),
    Attr {
        attr: String,
        op: Op,
        value: Literal,
    },
}

/// A literal operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    None,
    Str(String),
    Num(f64),
    Bool(bool),
    StrList(Vec<String>),
    NumList(Vec<f64>),
}

impl Expr {
    /// Shorthand for an attribute test.
    pub fn attr(attr: &str, op: Op, value: Literal) -> Expr {
        Expr::Attr {
            attr: attr.into(),
            op,
            value,
        }
    }

    /// Nesting depth, counting this node (a segment reference counts as one level here; the
    /// evaluator adds the segment's own depth when it validates the snapshot).
    pub fn depth(&self) -> u32 {
        match self {
            Expr::All(children) | Expr::Any(children) => {
                1 + children.iter().map(Expr::depth).max().unwrap_or(0)
            }
            Expr::Not(child) => 1 + child.depth(),
            Expr::Segment(_) | Expr::Attr { .. } => 1,
        }
    }
}

/// Turns percentage weights in basis points into cumulative thresholds; `None` unless they
/// sum to exactly 10 000.
pub fn thresholds(weights_bp: &[u16]) -> Option<Vec<u16>> {
    let mut total: u32 = 0;
    let mut out = Vec::with_capacity(weights_bp.len());
    for &w in weights_bp {
        total += u32::from(w);
        out.push(u16::try_from(total).ok()?);
    }
    (total == 10_000).then_some(out)
}

/// Accumulates a snapshot. Indices returned by the `add_*` methods are stable.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
    attributes: BTreeMap<String, u32>,
    strings: BTreeMap<String, u32>,
    /// Postcard bytes of each condition node -> its index, so that identical nodes (and,
    /// bottom-up, identical subtrees) are stored once and evaluated once per pass.
    conditions: BTreeMap<Vec<u8>, u32>,
}

impl SnapshotBuilder {
    pub fn new(snapshot_version: u64, published_at_ms: i64) -> Self {
        SnapshotBuilder {
            snapshot: Snapshot {
                snapshot_version,
                published_at_ms,
                ..Snapshot::default()
            },
            ..SnapshotBuilder::default()
        }
    }

    /// Index of an attribute name, interned on first use.
    pub fn attribute(&mut self, name: &str) -> u32 {
        intern(&mut self.attributes, &mut self.snapshot.attributes, name)
    }

    /// Index of a string, interned on first use.
    pub fn string(&mut self, s: &str) -> u32 {
        intern(&mut self.strings, &mut self.snapshot.strings, s)
    }

    /// Compiles a condition tree; children are pushed before parents, as the format requires,
    /// and a node identical to one already present is shared rather than repeated.
    pub fn condition(&mut self, expr: &Expr) -> u32 {
        let node = match expr {
            Expr::All(children) => {
                Condition::All(children.iter().map(|c| self.condition(c)).collect())
            }
            Expr::Any(children) => {
                Condition::Any(children.iter().map(|c| self.condition(c)).collect())
            }
            Expr::Not(child) => Condition::Not(self.condition(child)),
            Expr::Segment(segment) => Condition::Segment(*segment),
            Expr::Attr { attr, op, value } => {
                let attr = self.attribute(attr);
                let operand = match value {
                    Literal::None => Operand::None,
                    Literal::Str(s) => Operand::Str(self.string(s)),
                    Literal::Num(n) => Operand::Num(*n),
                    Literal::Bool(b) => Operand::Bool(*b),
                    Literal::StrList(list) => {
                        Operand::StrList(list.iter().map(|s| self.string(s)).collect())
                    }
                    Literal::NumList(list) => Operand::NumList(list.clone()),
                };
                Condition::Attr {
                    attr,
                    op: *op,
                    operand,
                }
            }
        };
        // Encoding a plain enum into a Vec cannot fail.
        let key = postcard::to_allocvec(&node).unwrap_or_default();
        if let Some(&existing) = self.conditions.get(&key) {
            return existing;
        }
        let index = push(&mut self.snapshot.conditions, node);
        self.conditions.insert(key, index);
        index
    }

    pub fn layer(&mut self, id: Id, key: &str) -> u32 {
        push(
            &mut self.snapshot.layers,
            Layer {
                id,
                key: key.into(),
            },
        )
    }

    pub fn holdout(&mut self, id: Id, key: &str, bp: u16) -> u32 {
        push(
            &mut self.snapshot.holdouts,
            Holdout {
                id,
                key: key.into(),
                bp,
            },
        )
    }

    pub fn segment(&mut self, id: Id, key: &str, expr: &Expr) -> u32 {
        let condition = self.condition(expr);
        push(
            &mut self.snapshot.segments,
            Segment {
                id,
                key: key.into(),
                condition,
            },
        )
    }

    pub fn experiment(&mut self, experiment: Experiment) -> u32 {
        push(&mut self.snapshot.experiments, experiment)
    }

    pub fn flag(&mut self, flag: Flag) -> u32 {
        push(&mut self.snapshot.flags, flag)
    }

    /// Sets the attributes that experiment `experiment`'s exposures carry (format 2),
    /// interning their names. Experiments left unset carry none.
    pub fn exposure_attributes(&mut self, experiment: u32, names: &[&str]) {
        let attributes: Vec<u32> = names.iter().map(|name| self.attribute(name)).collect();
        let table = &mut self.snapshot.exposure_attributes;
        let at = experiment as usize;
        if table.len() <= at {
            table.resize(at + 1, Vec::new());
        }
        table[at] = attributes;
    }

    /// Sets the unit attribute of holdout `holdout` (format 2). Set it for every holdout or
    /// for none: a snapshot with some holdouts' units unset is invalid.
    pub fn holdout_unit(&mut self, holdout: u32, name: &str) {
        let unit = self.attribute(name);
        let table = &mut self.snapshot.holdout_units;
        let at = holdout as usize;
        if table.len() <= at {
            table.resize(at + 1, u32::MAX);
        }
        table[at] = unit;
    }

    /// The experiments added so far, for callers that patch them after adding.
    pub fn experiments_mut(&mut self) -> &mut [Experiment] {
        &mut self.snapshot.experiments
    }

    pub fn build(mut self) -> Snapshot {
        let s = &mut self.snapshot;
        if s.exposure_attributes.iter().all(Vec::is_empty) {
            s.exposure_attributes.clear();
        } else {
            s.exposure_attributes
                .resize(s.experiments.len(), Vec::new());
        }
        self.snapshot
    }
}

fn intern(index: &mut BTreeMap<String, u32>, table: &mut Vec<String>, s: &str) -> u32 {
    if let Some(&i) = index.get(s) {
        return i;
    }
    let i = push(table, s.into());
    index.insert(s.into(), i);
    i
}

fn push<T>(table: &mut Vec<T>, item: T) -> u32 {
    table.push(item);
    (table.len() - 1) as u32
}
