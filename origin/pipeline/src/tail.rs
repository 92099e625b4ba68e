//! The newest part of the event log, kept in memory for the pipeline of the same process.
//!
//! The group-commit writer hands each group it has committed here, with the sequence
//! numbers the log gave it; the pipeline then takes the events that follow its cursor from
//! memory instead of reading them back from the log. Reading a batch back and decoding it
//! was about a fifth of the pipeline's time (docs/benchmarks.md, "The log's tail in
//! memory"), and those events were in this process a moment before.
//!
//! The tail is only an accelerator: the log stays the record. Whenever the tail does not
//! hold the event right after the cursor (after a restart, while the pipeline is further
//! behind than the tail's capacity, or when another process wrote to the log too) the
//! pipeline reads the log as before. It is used on SQLite only, where the log's single write
//! lock makes a group's sequence numbers contiguous and commit order equal to sequence
//! order; on PostgreSQL concurrent writers can commit sequence numbers out of order.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::event::EventRecord;
use crate::tables::Logged;

/// Committed groups, oldest first, with at most `capacity` events in all.
pub struct LogTail {
    capacity: usize,
    groups: Mutex<VecDeque<Group>>,
}

/// Events with consecutive sequence numbers, the first one `first_seq`.
struct Group {
    first_seq: i64,
    events: VecDeque<EventRecord>,
}

impl Group {
    fn end(&self) -> i64 {
        self.first_seq + self.events.len() as i64
    }
}

impl LogTail {
    /// A tail of at most `capacity` events; 0 keeps none (every batch reads the log).
    pub fn new(capacity: usize) -> LogTail {
        LogTail {
            capacity,
            groups: Mutex::new(VecDeque::new()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Keeps a committed group whose events got the sequence numbers `first_seq`,
    /// `first_seq + 1`, … in order. When the tail is full the oldest events go: the
    /// pipeline is then behind by more than the tail holds and reads the log anyway.
    pub fn push(&self, first_seq: i64, events: Vec<EventRecord>) {
        if self.capacity == 0 || events.is_empty() {
            return;
        }
        let mut groups = self.lock();
        groups.push_back(Group {
            first_seq,
            events: events.into(),
        });
        let mut held: usize = groups.iter().map(|g| g.events.len()).sum();
        while held > self.capacity {
            let Some(oldest) = groups.front_mut() else {
                break;
            };
            let excess = (held - self.capacity).min(oldest.events.len());
            oldest.events.drain(..excess);
            oldest.first_seq += excess as i64;
            held -= excess;
            if oldest.events.is_empty() {
                groups.pop_front();
            }
        }
    }

    /// Removes and returns up to `limit` events that directly follow `position`, in log
    /// order; `None` when the tail does not hold the event after `position`, so the caller
    /// reads the log. Events at or before `position` are dropped: they are consumed.
    pub fn take_after(&self, position: i64, limit: usize) -> Option<Vec<Logged>> {
        let mut groups = self.lock();
        while groups.front().is_some_and(|g| g.end() <= position + 1) {
            groups.pop_front();
        }
        let front = groups.front_mut()?;
        if front.first_seq > position + 1 {
            return None;
        }
        let consumed = (position + 1 - front.first_seq) as usize;
        front.events.drain(..consumed);
        front.first_seq = position + 1;
        let mut taken = Vec::new();
        let mut next = position + 1;
        // Later groups continue the batch only where they follow without a gap; a gap holds
        // events of another writer, which only the log has.
        while taken.len() < limit {
            let Some(group) = groups.front_mut() else {
                break;
            };
            if group.first_seq != next {
                break;
            }
            let n = (limit - taken.len()).min(group.events.len());
            taken.extend(group.events.drain(..n).enumerate().map(|(i, record)| {
                let seq = next + i as i64;
                logged(seq, record)
            }));
            next += n as i64;
            group.first_seq = next;
            if group.events.is_empty() {
                groups.pop_front();
            }
        }
        Some(taken)
    }

    /// Forgets everything, e.g. when the pipeline may have lost track of the log.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn logged(seq: i64, record: EventRecord) -> Logged {
    let EventRecord {
        event_id,
        received_at_ms,
        ts_ms,
        kind,
        unit_key,
        value,
        properties,
    } = record;
    Logged {
        seq,
        event_id,
        received_at_ms,
        ts_ms,
        kind,
        unit_key,
        value,
        properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    fn records(ids: std::ops::Range<i64>) -> Vec<EventRecord> {
        ids.map(|i| EventRecord {
            event_id: format!("e{i}"),
            received_at_ms: i,
            ts_ms: i,
            kind: Kind::Metric {
                event_type: "conversion".into(),
            },
            unit_key: format!("user_id:u{i}"),
            value: 1.0,
            properties: None,
        })
        .collect()
    }

    fn seqs(events: &[Logged]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn takes_contiguous_groups_from_the_cursor_up_to_the_limit() {
        let tail = LogTail::new(100);
        tail.push(1, records(1..4));
        tail.push(4, records(4..6));
        let taken = tail.take_after(0, 4).unwrap();
        assert_eq!(seqs(&taken), [1, 2, 3, 4]);
        // Each event keeps its own fields with the sequence number the log gave it.
        assert_eq!(taken[3].event_id, "e4");
        assert_eq!(taken[3].unit_key, "user_id:u4");
        assert_eq!(seqs(&tail.take_after(4, 10).unwrap()), [5]);
        assert!(
            tail.take_after(5, 10).is_none(),
            "nothing after the last event"
        );
    }

    #[test]
    fn skips_what_the_cursor_passed_and_starts_mid_group() {
        let tail = LogTail::new(100);
        tail.push(10, records(10..20));
        // The pipeline read up to 13 from the log meanwhile.
        assert_eq!(seqs(&tail.take_after(13, 3).unwrap()), [14, 15, 16]);
        assert_eq!(seqs(&tail.take_after(16, 100).unwrap()), [17, 18, 19]);
    }

    #[test]
    fn a_gap_or_a_missing_start_sends_the_pipeline_to_the_log() {
        let tail = LogTail::new(100);
        tail.push(5, records(5..8));
        // Events 1..=4 are only in the log (written before this process started).
        assert!(tail.take_after(0, 10).is_none());
        // Another writer's events 8..=9 sit between this writer's groups.
        tail.push(10, records(10..12));
        assert_eq!(seqs(&tail.take_after(4, 10).unwrap()), [5, 6, 7]);
        assert!(tail.take_after(7, 10).is_none());
        assert_eq!(seqs(&tail.take_after(9, 10).unwrap()), [10, 11]);
    }

    #[test]
    fn holds_at_most_its_capacity_dropping_the_oldest() {
        let tail = LogTail::new(5);
        tail.push(1, records(1..4));
        tail.push(4, records(4..8));
        // 1 and 2 were dropped: a pipeline at 0 reads the log, one at 2 continues here.
        assert!(tail.take_after(0, 10).is_none());
        assert_eq!(seqs(&tail.take_after(2, 10).unwrap()), [3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_disabled_tail_holds_nothing() {
        let tail = LogTail::new(0);
        tail.push(1, records(1..3));
        assert!(!tail.is_enabled());
        assert!(tail.take_after(0, 10).is_none());
    }
}
