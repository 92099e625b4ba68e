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
//! the cost of one map swap. Entries are the batch's own unit states, moved in and out as
//! they are (exact-size vectors and shared names, 200–250 bytes per unit).

use rustc_hash::FxHashMap as HashMap;

use super::batch::UnitState;

pub struct UnitCache {
    capacity: usize,
    young: HashMap<Box<str>, UnitState>,
    old: HashMap<Box<str>, UnitState>,
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
        self.position = None;
    }

    /// Removes and returns a unit's state, if cached.
    pub(super) fn take(&mut self, key: &str) -> Option<UnitState> {
        // Both generations: a unit put back after the swap may still have a stale copy in
        // the old one, which must not outlive it.
        let young = self.young.remove(key);
        let old = self.old.remove(key);
        young.or(old)
    }

    /// Stores the units of a batch that committed with the cursor at `position`.
    pub(super) fn put_committed(&mut self, units: HashMap<String, UnitState>, position: i64) {
        if self.capacity == 0 {
            return;
        }
        for (key, mut state) in units {
            state.settle();
            if self.young.len() >= self.capacity.div_ceil(2) {
                self.old = std::mem::take(&mut self.young);
            }
            self.young.insert(key.into_boxed_str(), state);
        }
        self.position = Some(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::tables::Exposure;

    fn unit(variant: &str, post_count: i64) -> UnitState {
        let mut state = UnitState::default();
        let experiment: Arc<str> = "exp".into();
        state.set_exposure(
            &experiment,
            Exposure {
                variant: variant.into(),
                first_exposure_ms: 5,
                multiple: false,
                attributes: None,
            },
        );
        state
            .totals_mut(&experiment, &"conversion".into())
            .post_count = post_count;
        state
    }

    #[test]
    fn round_trips_committed_state_as_clean() {
        let mut cache = UnitCache::new(10);
        let units = HashMap::from_iter([("u1".to_string(), unit("treatment", 3))]);
        cache.put_committed(units, 7);
        let state = cache.take("u1").expect("cached");
        let mut committed = unit("treatment", 3);
        assert_ne!(state, committed, "the batch's copy is marked changed");
        committed.settle();
        assert_eq!(state, committed);
        assert_eq!(
            state.exposure("exp").map(|e| &*e.variant),
            Some("treatment")
        );
        assert_eq!(state.totals("exp", "conversion").post_count, 3);
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
