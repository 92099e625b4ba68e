//! Which properties the events of each type have carried: a small table, kept by whichever
//! sink stores events (the event log's writer, or the warehouse loader), that lets the
//! results say when a metric's filter tests a property no event has (it then matches
//! nothing), and lets the console offer the names that exist.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use sqlx::{AnyConnection, Row};

use crate::event::{EventRecord, Kind};

/// The (event type, property name) pairs this process has recorded, so that each is
/// written once per process rather than with every event.
#[derive(Default)]
pub struct PropertyCatalog {
    recorded: Mutex<HashSet<(String, String)>>,
}

impl PropertyCatalog {
    /// The pairs of these metric events that this process has not recorded yet.
    pub fn unrecorded<'e>(
        &self,
        events: impl IntoIterator<Item = &'e EventRecord>,
    ) -> Vec<(String, String)> {
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let mut new: BTreeSet<(String, String)> = BTreeSet::new();
        for event in events {
            let (Kind::Metric { event_type }, Some(properties)) = (&event.kind, &event.properties)
            else {
                continue;
            };
            // Only the names are needed: the values are skipped unparsed.
            let Ok(names) = serde_json::from_str::<
                std::collections::BTreeMap<&str, serde::de::IgnoredAny>,
            >(properties) else {
                continue;
            };
            for name in names.keys() {
                let pair = (event_type.clone(), (*name).to_string());
                if !recorded.contains(&pair) {
                    new.insert(pair);
                }
            }
        }
        new.into_iter().collect()
    }

    /// Notes pairs as recorded, once their insert committed.
    pub fn remember(&self, pairs: Vec<(String, String)>) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        recorded.extend(pairs);
    }
}

/// Records pairs (existing ones are kept as they are).
pub async fn record(
    conn: &mut AnyConnection,
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    for (event_type, name) in pairs {
        sqlx::query(
            "INSERT INTO event_properties (event_type, name, first_seen_ms) VALUES ($1, $2, $3)
             ON CONFLICT (event_type, name) DO NOTHING",
        )
        .bind(event_type)
        .bind(name)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The property names events of `event_type` have carried.
pub async fn names(
    conn: &mut AnyConnection,
    event_type: &str,
) -> Result<BTreeSet<String>, sqlx::Error> {
    let rows = sqlx::query("SELECT name FROM event_properties WHERE event_type = $1")
        .bind(event_type)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| r.try_get("name")).collect()
}
