//! The group-commit writer. Requests hand their validated events to one task, which writes
//! everything waiting in a single transaction and answers each request only after the
//! commit: durability at the cost of one fsync per group rather than per request. A
//! committed group then goes to the log's tail in memory, for this process's pipeline.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::event::EventRecord;
use crate::properties::{self, PropertyCatalog};
use crate::tail::LogTail;
use crate::telemetry::Telemetry;

/// Requests waiting for the writer beyond this are refused with 503: memory stays bounded.
const QUEUE: usize = 256;
/// Events written per transaction, at most.
const GROUP: usize = 20_000;

/// For each submitted event, whether it was new (false: a duplicate of a logged event).
pub type Outcome = Result<Vec<bool>, crate::Error>;

struct Job {
    events: Vec<EventRecord>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub fn spawn(
        db: Db,
        telemetry: Arc<Telemetry>,
        tail: Arc<LogTail>,
        properties: Arc<PropertyCatalog>,
    ) -> Writer {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, telemetry, tail, properties, receiver));
        Writer { jobs }
    }

    /// Logs events durably; resolves after the commit.
    pub async fn submit(&self, events: Vec<EventRecord>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { events, reply })
            .map_err(|_| crate::Error::Unavailable {
                message: "event ingestion is saturated; retry shortly",
                retry_after_s: 1,
            })?;
        answer.await.map_err(|_| crate::Error::Unavailable {
            message: "the event writer stopped",
            retry_after_s: 5,
        })?
    }
}

async fn run(
    db: Db,
    telemetry: Arc<Telemetry>,
    tail: Arc<LogTail>,
    properties: Arc<PropertyCatalog>,
    mut receiver: mpsc::Receiver<Job>,
) {
    while let Some(first) = receiver.recv().await {
        let mut size = first.events.len();
        let mut jobs = vec![first];
        while size < GROUP {
            match receiver.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let written = write(&db, &properties, &jobs).await;
        match written {
            Ok(appended) => {
                telemetry
                    .log_head
                    .fetch_max(appended.head, Ordering::Relaxed);
                let mut flags = appended.new.into_iter();
                let mut committed = Vec::new();
                for job in jobs {
                    let new: Vec<bool> = flags.by_ref().take(job.events.len()).collect();
                    let _ = job.reply.send(Ok(new));
                    if appended.first_seq.is_some() && tail.is_enabled() {
                        committed.extend(job.events);
                    }
                }
                if let Some(first_seq) = appended.first_seq {
                    tail.push(first_seq, committed);
                }
            }
            Err(error) => {
                tracing::warn!(%error, events = size, "writing events failed");
                let unavailable = matches!(error, crate::store::Error::Unavailable(_));
                for job in jobs {
                    let reply = if unavailable {
                        crate::Error::Unavailable {
                            message: "the event store is unavailable",
                            retry_after_s: 5,
                        }
                    } else {
                        crate::Error::Write(error.to_string())
                    };
                    let _ = job.reply.send(Err(reply));
                }
            }
        }
    }
}

/// One transaction for the whole group.
async fn write(
    db: &Db,
    catalog: &PropertyCatalog,
    jobs: &[Job],
) -> Result<crate::tables::Appended, crate::store::Error> {
    let events: Vec<&EventRecord> = jobs.iter().flat_map(|j| j.events.iter()).collect();
    let started = std::time::Instant::now();
    let new_properties = catalog.unrecorded(events.iter().copied());
    let mut tx = db.begin_write().await?;
    let appended = crate::tables::insert_events(&mut tx, &events).await?;
    properties::record(&mut tx, &new_properties, crate::clock::now_ms()).await?;
    let written = started.elapsed();
    tx.commit().await?;
    catalog.remember(new_properties);
    tracing::debug!(
        events = events.len(),
        insert_ms = written.as_millis() as u64,
        commit_ms = (started.elapsed() - written).as_millis() as u64,
        "event group logged"
    );
    Ok(appended)
}
