//! The distributed event log (NATS JetStream), for deployments where one database cannot
//! take the event path. Collectors publish each request's validated events to one of
//! several streams, chosen by unit (and within it to a subject, by unit), and answer the
//! client only once JetStream has stored them. Each stream has its own Raft leader in a
//! cluster, so the log's throughput grows with the number of streams; a unit's events stay
//! in one stream and subject, in order. A loader per stream in the pipeline process
//! consumes it with a durable pull consumer and writes the events into the event log that
//! the metric pipeline reads, or, with a warehouse, into ClickHouse (`crate::clickhouse`) in
//! inserts of up to a few hundred thousand rows, acknowledging each message only after that
//! write committed.
//!
//! Changing the number of streams moves units between streams: collectors publish to the
//! new set at once, and the loaders keep draining every stream of the log that exists
//! (`{stream}` and `{stream}_{k}`, with the log's subjects), so nothing waiting in a stream
//! no longer published to is lost. A unit's events may then sit in two streams for a while; nothing depends on their
//! order across streams, since the pipeline orders a unit's events by their timestamps.
//!
//! Nothing is counted twice: a client's retry of a whole request carries the same message
//! ids (derived from the event ids) and is dropped by the broker within its duplicate
//! window; anything later, and any redelivery after a loader crash, is dropped by the event
//! log's unique `event_id` (in the warehouse: collapsed by `event_id` when read).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Pipeline;
use crate::event::{EventRecord, Kind};
use crate::telemetry::Telemetry;

/// The loader's durable pull consumer of stream `k`.
fn loader_config(config: &JetStreamConfig, k: u32) -> pull::Config {
    pull::Config {
        durable_name: Some(config.consumer_name()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // Redelivered until loaded, however long the destination is down: an acknowledged
        // event is never set aside for a failure that is not its own.
        max_deliver: -1,
        filter_subject: config.events_filter(k),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Where and how the stream lives.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// `nats://host:port`.
    pub url: String,
    /// Name of the first stream; the others are `{stream}_{k}` (k = 1, 2, …), the
    /// dead-letter stream `{stream}_DEAD`.
    pub stream: String,
    /// Subjects are `{prefix}.events.{partition}` in the first stream,
    /// `{prefix}.s{k}.events.{partition}` in the others, and `{prefix}.dead`.
    pub subject_prefix: String,
    /// Streams the events are spread over, by unit: one Raft leader each in a cluster.
    pub streams: u32,
    /// Subjects the log spreads its events over, by unit (rounded up to a multiple of
    /// `streams`; partition `p` is in stream `p % streams`).
    pub partitions: u32,
    /// How long a delivered message may stay unacknowledged before it is delivered again.
    pub ack_wait: Duration,
    /// The longest wait before a message whose load failed is delivered again (the wait
    /// doubles from 2 s up to this).
    pub max_backoff: Duration,
    /// Copies of each message the cluster keeps; 1 on a single server (where more are
    /// refused, and the stream falls back to one with a warning).
    pub replicas: usize,
    /// How long the broker remembers message ids for deduplication.
    pub duplicate_window: Duration,
    /// How long the stream keeps messages (acknowledged or not).
    pub max_age: Duration,
    /// The loader's durable consumer is `{stream}_{consumer}`.
    pub consumer: String,
    /// How often the pipeline lists the broker's streams, to load those that appeared.
    pub discovery_interval: Duration,
}

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        JetStreamConfig {
            url: url.into(),
            stream: "ABX_EVENTS".into(),
            subject_prefix: "abx".into(),
            streams: 1,
            partitions: 4,
            ack_wait: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 86_400),
            consumer: "loader".into(),
            discovery_interval: Duration::from_secs(30),
        }
    }

    /// The name of stream `k`.
    fn stream_name(&self, k: u32) -> String {
        match k {
            0 => self.stream.clone(),
            k => format!("{}_{k}", self.stream),
        }
    }

    /// What stream `k`'s event subjects start with. The first stream keeps the subjects it
    /// had before the log had several, so that a deployment adding streams keeps its stream.
    fn events_root(&self, k: u32) -> String {
        match k {
            0 => format!("{}.events", self.subject_prefix),
            k => format!("{}.s{k}.events", self.subject_prefix),
        }
    }

    /// Stream `k`'s subject of `partition`.
    fn events_subject(&self, k: u32, partition: u32) -> String {
        format!("{}.{partition}", self.events_root(k))
    }

    /// All of stream `k`'s event subjects.
    fn events_filter(&self, k: u32) -> String {
        format!("{}.*", self.events_root(k))
    }

    /// Which stream a name belongs to, if it is one of this log's event streams.
    fn stream_number(&self, name: &str) -> Option<u32> {
        if name == self.stream {
            return Some(0);
        }
        let digits = name.strip_prefix(&self.stream)?.strip_prefix('_')?;
        // `{stream}_DEAD` is not an event stream; neither is `{stream}_01`, which
        // `stream_name` never makes.
        let k: u32 = digits.parse().ok()?;
        (k > 0 && k.to_string() == digits).then_some(k)
    }

    fn dead_subject(&self) -> String {
        format!("{}.dead", self.subject_prefix)
    }

    fn consumer_name(&self) -> String {
        format!("{}_{}", self.stream, self.consumer)
    }
}

/// The wire form of one event in a stream message (JSON, so that other consumers, such as
/// a warehouse loader, can read the stream without this crate).
#[derive(Serialize, Deserialize)]
struct WireEvent {
    event_id: String,
    received_at_ms: i64,
    ts_ms: i64,
    unit_key: String,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    experiment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    /// Properties or exposure attributes (JSON text); absent in messages of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    properties: Option<String>,
}

impl From<&EventRecord> for WireEvent {
    fn from(e: &EventRecord) -> Self {
        let (experiment_id, variant, event_type) = match &e.kind {
            Kind::Exposure {
                experiment_id,
                variant,
            } => (Some(experiment_id.clone()), Some(variant.clone()), None),
            Kind::Metric { event_type } => (None, None, Some(event_type.clone())),
        };
        WireEvent {
            event_id: e.event_id.clone(),
            received_at_ms: e.received_at_ms,
            ts_ms: e.ts_ms,
            unit_key: e.unit_key.clone(),
            value: e.value,
            experiment_id,
            variant,
            event_type,
            properties: e.properties.clone(),
        }
    }
}

impl TryFrom<WireEvent> for EventRecord {
    type Error = String;
    fn try_from(w: WireEvent) -> Result<Self, String> {
        let kind = match (w.experiment_id, w.variant, w.event_type) {
            (Some(experiment_id), Some(variant), None) => Kind::Exposure {
                experiment_id,
                variant,
            },
            (None, None, Some(event_type)) => Kind::Metric { event_type },
            _ => {
                return Err(format!(
                    "event {} is neither exposure nor metric",
                    w.event_id
                ));
            }
        };
        Ok(EventRecord {
            event_id: w.event_id,
            received_at_ms: w.received_at_ms,
            ts_ms: w.ts_ms,
            kind,
            unit_key: w.unit_key,
            value: w.value,
            properties: w.properties,
        })
    }
}

fn decode(payload: &[u8]) -> Result<Vec<EventRecord>, String> {
    let wire: Vec<WireEvent> =
        serde_json::from_slice(payload).map_err(|e| format!("undecodable message: {e}"))?;
    wire.into_iter().map(EventRecord::try_from).collect()
}

/// Counters of the stream side, for `/metrics` and backpressure.
#[derive(Default)]
pub struct StreamTelemetry {
    /// Messages not yet acknowledged by the loader (pending plus in flight), as last polled.
    pub consumer_pending: AtomicI64,
    /// When the oldest of those was stored (Unix ms; 0 when there are none), as last polled.
    pub oldest_pending_ms: AtomicI64,
    pub messages_published: AtomicU64,
    pub messages_duplicate: AtomicU64,
    pub messages_dead_lettered: AtomicU64,
}

/// A connection to the event log's streams.
pub struct EventStream {
    config: JetStreamConfig,
    js: jetstream::Context,
    /// The event streams to load, as last listed (`refresh_streams`).
    streams: Mutex<Vec<u32>>,
    pub telemetry: StreamTelemetry,
}

impl EventStream {
    /// Connects and creates the streams and the loaders' consumers if they do not exist yet.
    pub async fn connect(config: JetStreamConfig) -> anyhow::Result<Arc<EventStream>> {
        let client = async_nats::ConnectOptions::new()
            .name("abx-origin")
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str())
            .await?;
        let js = jetstream::new(client);
        let mut wanted: Vec<stream::Config> = (0..config.streams.max(1))
            .map(|k| stream::Config {
                name: config.stream_name(k),
                subjects: vec![config.events_filter(k)],
                storage: StorageType::File,
                max_age: config.max_age,
                duplicate_window: config.duplicate_window,
                num_replicas: config.replicas.max(1),
                ..Default::default()
            })
            .collect();
        wanted.push(stream::Config {
            name: format!("{}_DEAD", config.stream),
            subjects: vec![config.dead_subject()],
            storage: StorageType::File,
            num_replicas: config.replicas.max(1),
            ..Default::default()
        });
        for wanted in wanted {
            let stream = match js.get_or_create_stream(wanted.clone()).await {
                // A single server (no cluster) refuses replicas: one copy is all it has. Any
                // other failure is an error, so that a cluster never quietly gets a stream
                // of one copy (a Raft group still forming, say).
                Err(error) if refuses_replicas(&error) => {
                    tracing::warn!(
                        %error,
                        stream = wanted.name,
                        replicas = wanted.num_replicas,
                        "the NATS server refused replicas; the stream keeps one copy"
                    );
                    js.get_or_create_stream(stream::Config {
                        num_replicas: 1,
                        ..wanted.clone()
                    })
                    .await?
                }
                created => created?,
            };
            // A stream of this name that takes other subjects belongs to something else (a
            // second deployment on the broker without its own `--nats-stream`): publishing
            // to it would fail, and loading it would load someone else's messages.
            let subjects = &stream.cached_info().config.subjects;
            if *subjects != wanted.subjects {
                anyhow::bail!(
                    "the JetStream stream {} takes the subjects {subjects:?}, not {:?}: it is \
                     not this event log's; give this deployment its own --nats-stream and \
                     --nats-subject-prefix",
                    wanted.name,
                    wanted.subjects
                );
            }
        }
        let event_stream = EventStream {
            config,
            js,
            streams: Mutex::new(Vec::new()),
            telemetry: StreamTelemetry::default(),
        };
        // Creating the loaders' consumers with their whole configuration also updates ones
        // an older version made (whose max_deliver of 50 would now leave failed messages
        // undelivered for ever, since they are no longer dead-lettered).
        for k in event_stream.refresh_streams().await? {
            event_stream.create_consumer(k).await?;
        }
        Ok(Arc::new(event_stream))
    }

    /// The event streams to load, in order: those published to, then those that a larger
    /// `streams` setting left (drained, no longer published to), as last listed.
    pub fn event_streams(&self) -> Vec<u32> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lists the broker's streams for [`EventStream::event_streams`]: a stream counts as
    /// one of the log's only with the name and the subjects this log gives it.
    pub async fn refresh_streams(&self) -> anyhow::Result<Vec<u32>> {
        let published = self.config.streams.max(1);
        let mut streams: Vec<u32> = (0..published).collect();
        let mut listed = self.js.streams();
        while let Some(info) = listed.next().await {
            let config = info?.config;
            match self.config.stream_number(&config.name) {
                Some(k) if k >= published && config.subjects == [self.config.events_filter(k)] => {
                    streams.push(k)
                }
                _ => {}
            }
        }
        streams.sort_unstable();
        *self.streams.lock().unwrap_or_else(|e| e.into_inner()) = streams.clone();
        Ok(streams)
    }

    async fn create_consumer(&self, k: u32) -> anyhow::Result<PullConsumer> {
        Ok(self
            .js
            .get_stream(self.config.stream_name(k))
            .await?
            .create_consumer(loader_config(&self.config, k))
            .await?)
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Publishes validated events, one message per partition (subject) of the log, and
    /// returns once JetStream has stored them all. Returns how many of the events were in messages the
    /// broker already had (a retried request).
    pub async fn publish(&self, events: &[EventRecord]) -> Result<usize, crate::Error> {
        let (streams, partitions) = (self.config.streams.max(1), self.config.partitions);
        let mut groups: Vec<Vec<&EventRecord>> =
            vec![Vec::new(); partitions_of_log(streams, partitions) as usize];
        for e in events {
            groups[place_of(&e.unit_key, streams, partitions).1 as usize].push(e);
        }
        let unavailable = |error: &dyn std::fmt::Display| {
            tracing::warn!(%error, "publishing events to JetStream failed");
            crate::Error::Unavailable {
                message: "the event log is unavailable",
                retry_after_s: 2,
            }
        };
        // Every message is sent before any acknowledgement is awaited, so the streams and
        // partitions are stored in parallel.
        let mut pending = Vec::new();
        for (partition, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (k, partition) = (partition as u32 % streams, partition as u32);
            let wire: Vec<WireEvent> = group.iter().map(|e| WireEvent::from(*e)).collect();
            let payload = serde_json::to_vec(&wire).map_err(|e| unavailable(&e))?;
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(message_id(group));
            let ack = self
                .js
                .send_publish(self.config.events_subject(k, partition), message)
                .await
                .map_err(|e| unavailable(&e))?;
            pending.push((ack, group.len()));
        }
        let mut duplicates = 0;
        for (ack, size) in pending {
            let ack = ack.await.map_err(|e| unavailable(&e))?;
            Telemetry::add(&self.telemetry.messages_published, 1);
            if ack.duplicate {
                Telemetry::add(&self.telemetry.messages_duplicate, 1);
                duplicates += size;
            }
        }
        Ok(duplicates)
    }

    /// The loader's consumer of stream `k`.
    async fn consumer(&self, k: u32) -> anyhow::Result<PullConsumer> {
        let stream = self.js.get_stream(self.config.stream_name(k)).await?;
        Ok(stream
            .get_or_create_consumer(&self.config.consumer_name(), loader_config(&self.config, k))
            .await?)
    }

    /// Sets a message aside with the reason, where an operator can inspect and replay it.
    async fn dead_letter(&self, payload: bytes::Bytes, reason: &str) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Abx-Reason", reason);
        self.js
            .publish_with_headers(self.config.dead_subject(), headers, payload)
            .await?
            .await?;
        Telemetry::add(&self.telemetry.messages_dead_lettered, 1);
        Ok(())
    }

    /// Messages the loaders have not acknowledged, and when the first of them was stored
    /// (Unix ms, 0 when none): the part of the pipeline's lag that is still in the streams.
    pub async fn backlog(&self) -> anyhow::Result<(i64, i64)> {
        let (mut pending, mut oldest_ms) = (0, 0);
        for k in self.event_streams() {
            let (stream_pending, stream_oldest_ms) = match self.stream_backlog(k).await {
                Ok(backlog) => backlog,
                // A stream no longer published to may have been deleted once drained; the
                // next listing drops it.
                Err(error) if k >= self.config.streams.max(1) => {
                    tracing::debug!(%error, stream = k, "a drained stream is gone");
                    continue;
                }
                Err(error) => return Err(error),
            };
            pending += stream_pending;
            if stream_oldest_ms > 0 && (oldest_ms == 0 || stream_oldest_ms < oldest_ms) {
                oldest_ms = stream_oldest_ms;
            }
        }
        Ok((pending, oldest_ms))
    }

    async fn stream_backlog(&self, k: u32) -> anyhow::Result<(i64, i64)> {
        let mut consumer = self.consumer(k).await?;
        let info = consumer.info().await?;
        let pending = info.num_pending as i64 + info.num_ack_pending as i64;
        let first_unacknowledged = info.ack_floor.stream_sequence + 1;
        if pending == 0 {
            return Ok((0, 0));
        }
        let stream = self.js.get_stream(self.config.stream_name(k)).await?;
        let oldest_ms = match stream.get_raw_message(first_unacknowledged).await {
            Ok(message) => (message.time.unix_timestamp_nanos() / 1_000_000) as i64,
            Err(_) => 0,
        };
        Ok((pending, oldest_ms))
    }

    /// Puts every message of the dead-letter stream back into the event stream (once the
    /// cause is fixed: a loader that could not decode a newer client's events, say) and
    /// removes it from the dead-letter stream; returns how many. A message that still cannot
    /// be decoded comes back to the dead-letter stream on its next load.
    pub async fn replay_dead_letters(&self) -> anyhow::Result<u64> {
        let mut dead = self
            .js
            .get_stream(format!("{}_DEAD", self.config.stream))
            .await?;
        let (first, last) = {
            let state = &dead.info().await?.state;
            (state.first_sequence, state.last_sequence)
        };
        let mut replayed = 0;
        for sequence in first..=last {
            // Gaps are messages already replayed (deleted).
            let Ok(message) = dead.get_raw_message(sequence).await else {
                continue;
            };
            // The first stream's first partition: order across a replay does not matter, as
            // the pipeline orders a unit's events by their timestamps.
            self.js
                .publish(self.config.events_subject(0, 0), message.payload.clone())
                .await?
                .await?;
            dead.delete_message(sequence).await?;
            replayed += 1;
        }
        Ok(replayed)
    }

    /// Messages in the dead-letter stream.
    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        let mut dead = self
            .js
            .get_stream(format!("{}_DEAD", self.config.stream))
            .await?;
        Ok(dead.info().await?.state.messages)
    }
}

impl EventStream {
    /// Deletes the log's streams (tests clean up the broker they share with this).
    #[doc(hidden)]
    pub async fn delete_streams(&self) -> anyhow::Result<()> {
        for k in self.refresh_streams().await? {
            self.js.delete_stream(self.config.stream_name(k)).await?;
        }
        self.js
            .delete_stream(format!("{}_DEAD", self.config.stream))
            .await?;
        Ok(())
    }
}

/// Whether a stream was refused for asking for replicas of a server that has no cluster.
fn refuses_replicas(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED
    )
}

/// The partitions (subjects) of a log of `streams` streams: `partitions` rounded up to a
/// multiple of the streams, so that every stream holds as many. A request's events travel
/// as at most one message per partition, and fewer, larger messages cost the broker and the
/// loaders less (docs/benchmarks.md): more streams do not multiply the messages.
fn partitions_of_log(streams: u32, partitions: u32) -> u32 {
    partitions.max(1).div_ceil(streams) * streams
}

/// Which stream and partition a unit's events go to: a unit's events stay in one subject,
/// in order. With one stream, partitions are what they were before there could be several.
fn place_of(unit_key: &str, streams: u32, partitions: u32) -> (u32, u32) {
    let partition =
        abx_core::murmur3_x86_32(unit_key.as_bytes(), 0) % partitions_of_log(streams, partitions);
    (partition % streams, partition)
}

/// The broker's deduplication id of a message: a digest of its event ids, so a retried
/// request yields the same ids for the same events.
fn message_id(group: &[&EventRecord]) -> String {
    let mut digest = Sha256::new();
    for e in group {
        digest.update(e.event_id.as_bytes());
        digest.update([0]);
    }
    let digest = digest.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Messages fetched per loader round into the event log; at up to 1 MiB of events each.
const LOAD_MESSAGES: usize = 256;
/// Into the warehouse, which wants large inserts (10K–100K rows): more messages per round,
/// bounded in bytes.
const WAREHOUSE_MESSAGES: usize = 2_000;
const WAREHOUSE_BYTES: usize = 32 << 20;

/// Runs a loader per event stream in the background, for as long as the process, starting
/// one for every stream that appears later (a collector configured with more streams than
/// this process) and ending those of drained streams that were deleted.
pub fn spawn_loader(state: Arc<Pipeline>, stream: Arc<EventStream>) {
    tokio::spawn(async move {
        let loading = Arc::new(Mutex::new(BTreeSet::new()));
        loop {
            let wait = match stream.refresh_streams().await {
                Ok(streams) => {
                    for k in streams {
                        let new = loading.lock().unwrap_or_else(|e| e.into_inner()).insert(k);
                        if new {
                            spawn_stream_loader(state.clone(), stream.clone(), k, loading.clone());
                        }
                    }
                    stream.config.discovery_interval
                }
                Err(error) => {
                    tracing::warn!(%error, "listing the JetStream event streams failed");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

fn spawn_stream_loader(
    state: Arc<Pipeline>,
    stream: Arc<EventStream>,
    k: u32,
    loading: Arc<Mutex<BTreeSet<u32>>>,
) {
    tokio::spawn(async move {
        loop {
            let Err(error) = load(&state, &stream, k).await;
            // A stream no longer published to that an operator deleted once drained.
            if k >= stream.config.streams.max(1)
                && let Ok(streams) = stream.refresh_streams().await
                && !streams.contains(&k)
            {
                tracing::info!(
                    stream = k,
                    "a drained JetStream stream is gone; its loader ends"
                );
                loading.lock().unwrap_or_else(|e| e.into_inner()).remove(&k);
                return;
            }
            tracing::warn!(%error, stream = k, "a JetStream loader stopped; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Polls the loader's backlog for `/metrics`, once a second.
pub fn spawn_lag_poller(stream: Arc<EventStream>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match stream.backlog().await {
                Ok((pending, oldest_ms)) => {
                    let telemetry = &stream.telemetry;
                    telemetry.consumer_pending.store(pending, Ordering::Relaxed);
                    telemetry
                        .oldest_pending_ms
                        .store(oldest_ms, Ordering::Relaxed);
                    // The stream drops messages older than max_age, loaded or not: an event
                    // still unloaded at half of it is an emergency, said loudly.
                    let age_ms = if oldest_ms > 0 {
                        crate::clock::now_ms() - oldest_ms
                    } else {
                        0
                    };
                    if age_ms as u128 > stream.config.max_age.as_millis() / 2 {
                        tracing::error!(
                            pending,
                            oldest_age_s = age_ms / 1_000,
                            max_age_s = stream.config.max_age.as_secs(),
                            "events waiting in JetStream are past half the stream's max_age: \
                             the stream will drop them unloaded when they reach it; fix the \
                             warehouse or raise max_age now"
                        );
                    }
                }
                Err(error) => tracing::debug!(%error, "polling the JetStream consumer failed"),
            }
        }
    });
}

async fn load(state: &Pipeline, stream: &EventStream, k: u32) -> anyhow::Result<Infallible> {
    let consumer = stream.consumer(k).await?;
    loop {
        // While the pipeline is behind, events wait in the stream rather than in the event
        // log, which the pipeline would have to page through.
        while state.telemetry.lag_events() > state.settings.max_lag {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        load_once(state, stream, &consumer, Settle::Acknowledge).await?;
    }
}

/// What the loader does with messages once their events are written. Tests use `Abandon`
/// to act out a loader that dies between the write and the acknowledgement.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Acknowledge,
    Abandon,
}

/// One loader round: fetches what is waiting (up to one second), writes its events to the
/// event log in one group, then settles each message. Returns the messages handled.
#[doc(hidden)]
pub async fn load_once(
    state: &Pipeline,
    stream: &EventStream,
    consumer: &PullConsumer,
    settle: Settle,
) -> anyhow::Result<usize> {
    let batch = consumer.batch().expires(Duration::from_secs(1));
    let batch = match &state.warehouse {
        Some(_) => batch
            .max_messages(WAREHOUSE_MESSAGES)
            .max_bytes(WAREHOUSE_BYTES),
        None => batch.max_messages(LOAD_MESSAGES),
    };
    let mut fetched = batch.messages().await?;
    let mut messages = Vec::new();
    let mut events = Vec::new();
    while let Some(message) = fetched.next().await {
        let message = match message {
            Ok(message) => message,
            // The broker ends a pull that reached its byte budget with an error status
            // (409, message size exceeds max bytes); what arrived before it is complete.
            Err(error) if !messages.is_empty() => {
                tracing::debug!(%error, "the pull ended early");
                break;
            }
            Err(error) => return Err(anyhow::anyhow!(error)),
        };
        match decode(&message.payload) {
            Ok(decoded) => {
                events.extend(decoded);
                messages.push(message);
            }
            // A message that cannot be read will never be: set aside at once.
            Err(reason) => {
                stream.dead_letter(message.payload.clone(), &reason).await?;
                message
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
        }
    }
    if messages.is_empty() {
        return Ok(0);
    }
    // The number of events the destination already had, or why it could not take them.
    let written: anyhow::Result<usize> = match &state.warehouse {
        _ if events.is_empty() => Ok(0),
        // The warehouse drops copies when it reads; it cannot tell how many it got.
        Some(warehouse) => match warehouse.insert(&events).await {
            Ok(()) => record_properties(state, &events).await.map(|()| 0),
            Err(error) => Err(error.into()),
        },
        None => state
            .writer
            .submit(events)
            .await
            .map(|flags| flags.iter().filter(|new| !**new).count())
            .map_err(Into::into),
    };
    if settle == Settle::Abandon {
        return Ok(messages.len());
    }
    match written {
        Ok(duplicates) => {
            // The collector counted them as accepted; here only the copies the event log
            // already had (retries beyond the broker's window, redeliveries) are counted.
            Telemetry::add(&state.telemetry.events_duplicate, duplicates);
            for message in &messages {
                message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
        }
        Err(error) => {
            // The destination failed, not the events: they stay in the stream and come back
            // after a back-off (2 s doubling to `max_backoff`) for as long as it takes. Only
            // messages that cannot be decoded are dead-lettered (above). The lag gauges and
            // the max_age alarm of `spawn_lag_poller` tell the operator.
            tracing::warn!(%error, messages = messages.len(), "loading events from JetStream failed; they stay in the stream");
            for message in &messages {
                let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                let delay = Duration::from_secs(1u64 << delivered.clamp(1, 6))
                    .min(stream.config.max_backoff);
                message
                    .ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
        }
    }
    Ok(messages.len())
}

/// Records the property names of events the warehouse took (the event log's writer does so
/// for the events it logs), in the event log's database.
async fn record_properties(state: &Pipeline, events: &[EventRecord]) -> anyhow::Result<()> {
    let new = state.properties.unrecorded(events);
    if new.is_empty() {
        return Ok(());
    }
    let mut tx = state.log.begin_write().await?;
    crate::properties::record(&mut tx, &new, crate::clock::now_ms()).await?;
    tx.commit().await?;
    state.properties.remember(new);
    Ok(())
}

/// The loaders' consumers, one per event stream (as last listed), for tests that drive
/// [`load_once`] themselves.
#[doc(hidden)]
pub async fn loader_consumers(stream: &EventStream) -> anyhow::Result<Vec<PullConsumer>> {
    let mut consumers = Vec::new();
    for k in stream.event_streams() {
        consumers.push(stream.consumer(k).await?);
    }
    Ok(consumers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, kind: Kind) -> EventRecord {
        EventRecord {
            event_id: id.into(),
            received_at_ms: 1,
            ts_ms: 2,
            kind,
            unit_key: "user_id:u1".into(),
            value: 1.5,
            properties: None,
        }
    }

    #[test]
    fn wire_form_round_trips_both_kinds() {
        let events = vec![
            record(
                "a",
                Kind::Exposure {
                    experiment_id: "e".into(),
                    variant: "v".into(),
                },
            ),
            EventRecord {
                properties: Some(r#"{"currency":"USD"}"#.into()),
                ..record(
                    "b",
                    Kind::Metric {
                        event_type: "conversion".into(),
                    },
                )
            },
        ];
        let wire: Vec<WireEvent> = events.iter().map(WireEvent::from).collect();
        let payload = serde_json::to_vec(&wire).unwrap();
        assert_eq!(decode(&payload).unwrap(), events);
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(decode(b"not json").is_err());
        let both = br#"[{"event_id":"a","received_at_ms":1,"ts_ms":1,"unit_key":"u","value":1,"experiment_id":"e","variant":"v","event_type":"x"}]"#;
        assert!(decode(both).is_err());
    }

    #[test]
    fn message_ids_follow_the_events() {
        let a = record(
            "a",
            Kind::Metric {
                event_type: "x".into(),
            },
        );
        let b = record(
            "b",
            Kind::Metric {
                event_type: "x".into(),
            },
        );
        assert_eq!(message_id(&[&a, &b]), message_id(&[&a, &b]));
        assert_ne!(message_id(&[&a, &b]), message_id(&[&a]));
        assert_ne!(message_id(&[&a, &b]), message_id(&[&b, &a]));
    }

    #[test]
    fn one_stream_keeps_the_partitions_of_a_log_without_streams() {
        for unit in ["user_id:u1", "user_id:u2", "device:abc", ""] {
            let hash = abx_core::murmur3_x86_32(unit.as_bytes(), 0);
            assert_eq!(place_of(unit, 1, 4), (0, hash % 4));
        }
    }

    #[test]
    fn units_spread_evenly_over_every_stream_and_partition() {
        // (streams, partitions asked for) → partitions of the log, each stream's share.
        for (streams, partitions, expected) in [(4, 8, 8), (4, 3, 4), (3, 4, 6), (2, 3, 4)] {
            assert_eq!(partitions_of_log(streams, partitions), expected);
            let mut seen = std::collections::BTreeMap::new();
            for u in 0..6_000 {
                let (k, partition) = place_of(&format!("user_id:u{u}"), streams, partitions);
                assert_eq!(k, partition % streams);
                *seen.entry(partition).or_insert(0) += 1;
            }
            assert_eq!(seen.len(), expected as usize, "{seen:?}");
            let even = 6_000 / expected;
            assert!(
                seen.values().all(|&n| n * 5 > even * 4 && n * 5 < even * 6),
                "{streams} streams: {seen:?}"
            );
        }
    }

    #[test]
    fn streams_are_named_and_recognised_alike() {
        let config = JetStreamConfig::new("nats://x");
        for k in [0, 1, 2, 17] {
            assert_eq!(config.stream_number(&config.stream_name(k)), Some(k));
        }
        for other in [
            "ABX_EVENTS_DEAD",
            "ABX_EVENTS_01",
            "ABX_EVENTS_",
            "ABX_EVENTSX",
            "ABX",
            "ABX_EVENTS_-1",
        ] {
            assert_eq!(config.stream_number(other), None, "{other}");
        }
        assert_eq!(config.events_subject(0, 3), "abx.events.3");
        assert_eq!(config.events_subject(2, 3), "abx.s2.events.3");
        assert_eq!(config.events_filter(2), "abx.s2.events.*");
    }
}
