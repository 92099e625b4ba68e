//! The pipeline's memory of per-unit state (exposures and totals) it has written, so that a
//! unit seen again in a later batch is not read back from the database.
//!
//! The cache is write-through and only ever holds committed state: a batch takes its units
//! out, and puts them back only after its transaction committed. A failed batch therefore
//! simply loses those entries and the next batch reads them from the database again. The
//! pipeline is the only writer of the per-unit tables, and every batch that consumes new
//! events moves the cursor in the same transaction, so `validate` clears the cache when the
//! cursor is not where this pipeline left it. That catches a second pipeline sharing the
//! database (which the cursor's compare-and-set already keeps from double counting), except
//! for its batches that only retry failed events and leave the cursor in place: the cache
//! assumes the supported deployment of one pipeline per database (`--no-pipeline` on the
//! other processes).
//!
//! Memory is bounded by two generations: entries go into the young map; when it holds half
//! the capacity it becomes the old map and the previous old map is dropped. Units used in
//! the last half-capacity of insertions survive, which approximates least-recently-used at
//! the cost of one map swap. Entries store interned names and boxed slices (about 250 bytes
//! per unit) rather than the batch's hash maps (about 1 KB).

use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::batch::UnitState;
use crate::store::events::{Exposure, Totals};

/// A unit's totals for one experiment (first) and event type (second).
type CachedTotals = (Arc<str>, Arc<str>, Totals);

struct CachedUnit {
    exposures: Box<[(Arc<str>, Exposure)]>,
    totals: Box<[CachedTotals]>,
}

pub struct UnitCache {
    capacity: usize,
    young: HashMap<Box<str>, CachedUnit>,
    old: HashMap<Box<str>, CachedUnit>,
    /// Experiment ids and event types, shared by every entry.
    names: HashSet<Arc<str>>,
    /// The cursor position after the last batch this cache saw committed.
    position: Option<i64>,
}

impl UnitCache {
    /// A cache of at most `capacity` units; 0 disables it.
    pub fn new(capacity: usize) -> UnitCache {
        UnitCache {
            capacity,
            young: HashMap::default(),
            old: HashMap::default(),
            names: HashSet::default(),
            position: None,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Clears the cache unless the cursor is where the last committed batch left it.
    pub fn validate(&mut self, cursor: i64) {
        if self.position != Some(cursor) {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.young = HashMap::default();
        self.old = HashMap::default();
        self.names.clear();
        self.position = None;
    }

    /// Removes and returns a unit's state, if cached.
    pub(super) fn take(&mut self, key: &str) -> Option<UnitState> {
        let (young, old) = (self.young.remove(key), self.old.remove(key));
        let cached = young.or(old)?;
        let mut state = UnitState::default();
        for (experiment, exposure) in cached.exposures.into_vec() {
            state
                .exposures
                .insert(experiment.to_string(), (exposure, false));
        }
        for (experiment, event_type, totals) in cached.totals.into_vec() {
            state
                .totals
                .entry(experiment.to_string())
                .or_default()
                .insert(event_type.to_string(), (totals, false));
        }
        Some(state)
    }

    /// Stores the units of a batch that committed with the cursor at `position`.
    pub(super) fn put_committed(&mut self, units: HashMap<String, UnitState>, position: i64) {
        if self.capacity == 0 {
            return;
        }
        for (key, state) in units {
            let exposures = state
                .exposures
                .into_iter()
                .map(|(experiment, (exposure, _))| (self.intern(&experiment), exposure))
                .collect();
            let mut totals = Vec::new();
            for (experiment, by_type) in state.totals {
                let experiment = self.intern(&experiment);
                for (event_type, (t, _)) in by_type {
                    totals.push((experiment.clone(), self.intern(&event_type), t));
                }
            }
            if self.young.len() >= self.capacity.div_ceil(2) {
                self.old = std::mem::take(&mut self.young);
                // Event types are client-chosen strings: forget names with the generation
                // that used them, so the table stays bounded too.
                self.names.clear();
            }
            self.young.insert(
                key.into_boxed_str(),
                CachedUnit {
                    exposures,
                    totals: totals.into_boxed_slice(),
                },
            );
        }
        self.position = Some(position);
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(variant: &str, post_count: i64) -> UnitState {
        let mut state = UnitState::default();
        state.exposures.insert(
            "exp".into(),
            (
                Exposure {
                    variant: variant.into(),
                    first_exposure_ms: 5,
                    multiple: false,
                },
                true,
            ),
        );
        state.totals.entry("exp".into()).or_default().insert(
            "conversion".into(),
            (
                Totals {
                    post_count,
                    ..Totals::default()
                },
                true,
            ),
        );
        state
    }

    #[test]
    fn round_trips_committed_state_as_clean() {
        let mut cache = UnitCache::new(10);
        let units = HashMap::from_iter([("u1".to_string(), unit("treatment", 3))]);
        cache.put_committed(units, 7);
        let state = cache.take("u1").expect("cached");
        assert_eq!(
            state.exposures["exp"],
            (
                Exposure {
                    variant: "treatment".into(),
                    first_exposure_ms: 5,
                    multiple: false
                },
                false
            )
        );
        assert_eq!(state.totals["exp"]["conversion"].0.post_count, 3);
        assert!(!state.totals["exp"]["conversion"].1);
        // Taking removes: a batch that fails never leaves its units behind.
        assert!(cache.take("u1").is_none());
    }

    #[test]
    fn stays_within_capacity_and_keeps_recent_units() {
        let mut cache = UnitCache::new(100);
        for i in 0..1_000 {
            let units = HashMap::from_iter([(format!("u{i}"), unit("control", i))]);
            cache.put_committed(units, i);
            assert!(cache.len() <= 100);
        }
        assert!(cache.take("u999").is_some());
        assert!(cache.take("u950").is_some());
        assert!(cache.take("u0").is_none());
    }

    #[test]
    fn a_moved_cursor_or_zero_capacity_leaves_it_empty() {
        let mut cache = UnitCache::new(10);
        cache.put_committed(HashMap::from_iter([("u".to_string(), unit("a", 1))]), 7);
        cache.validate(7);
        assert_eq!(cache.len(), 1);
        cache.validate(8);
        assert_eq!(cache.len(), 0);

        let mut disabled = UnitCache::new(0);
        disabled.put_committed(HashMap::from_iter([("u".to_string(), unit("a", 1))]), 7);
        assert!(disabled.take("u").is_none());
    }
}
