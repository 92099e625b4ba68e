//! `abx-load ingest`: bounded, batched event load from this machine against a running
//! origin. Prints events/s, acknowledgement latency percentiles and the pipeline lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::Mutex;

/// Tells the lag sampler that the load has finished.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Which origin a load generator drives, and with which key.
#[derive(clap::Args)]
pub struct Target {
    /// The origin, as `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An sdk (or admin) key.
    #[arg(long, env = "ABX_KEY")]
    pub key: String,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// An experiment id to send exposures for (its first two variants must be
    /// `control` and `treatment`).
    #[arg(long)]
    experiment_id: String,
    /// Total events to send.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Distinct units (each gets one exposure, then conversions).
    #[arg(long, default_value_t = 200_000)]
    units: u64,
    /// Send random UUIDv4 event ids instead of time-ordered UUIDv7 ones.
    #[arg(long)]
    random_ids: bool,
    /// Target events per second (0: as fast as the origin acknowledges).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to wait for the pipeline to consume everything (0: do not wait).
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Metric events cycle through this many event types: `conversion` alone when 1, else
    /// `conversion_0` … `conversion_{N-1}` (one metric definition each, for results benches).
    #[arg(long, default_value_t = 1)]
    event_types: u64,
    /// Give every exposure context `attributes` (platform, country) and every metric event
    /// `properties` (currency, items, first_order), as SDKs that send them do.
    #[arg(long)]
    properties: bool,
    /// Metric event values spread like request latencies (20–420 ms, about 4,000 distinct
    /// values) instead of 1: what a quantile metric buckets.
    #[arg(long)]
    latency_values: bool,
}

fn batch_body(start: u64, count: u64, args: &Args, now_ms: i64) -> String {
    let mut events = Vec::with_capacity(count as usize);
    for i in start..start + count {
        let unit = i % args.units;
        // abx's SDKs send time-ordered UUIDv7 ids, whose inserts into the deduplication index
        // stay local; `--random-ids` measures clients that send random v4 ids instead.
        let id = if args.random_ids {
            uuid::Uuid::new_v4()
        } else {
            uuid::Uuid::now_v7()
        };
        let event = if i < args.units {
            let variant = if unit.is_multiple_of(2) {
                "control"
            } else {
                "treatment"
            };
            let attributes = if args.properties {
                let platform = ["mobile", "desktop", "tablet"][(unit % 3) as usize];
                format!(
                    r#","attributes":{{"platform":"{platform}","country":"c{}"}}"#,
                    unit % 40
                )
            } else {
                String::new()
            };
            format!(
                r#"{{"event_id":"{id}","kind":"exposure","unit":"u{unit}","experiment_id":"{}","variant":"{variant}","timestamp":{now_ms}{attributes}}}"#,
                args.experiment_id
            )
        } else {
            let event_type = if args.event_types <= 1 {
                "conversion".to_string()
            } else {
                format!("conversion_{}", (i / args.units) % args.event_types)
            };
            let properties = if args.properties {
                let currency = ["USD", "EUR", "GBP"][(i % 3) as usize];
                format!(
                    r#","properties":{{"currency":"{currency}","items":{},"first_order":{}}}"#,
                    i % 5 + 1,
                    i % 7 == 0
                )
            } else {
                String::new()
            };
            let value = if args.latency_values {
                // A multiplicative hash of the index: spread, and the same in every run.
                let spread = i.wrapping_mul(2_654_435_761) % 4_000;
                format!("{}", 20.0 + spread as f64 / 10.0)
            } else {
                "1".to_string()
            };
            format!(
                r#"{{"event_id":"{id}","kind":"metric","unit":"u{unit}","event_type":"{event_type}","value":{value},"timestamp":{}{properties}}}"#,
                now_ms + 1
            )
        };
        events.push(event);
    }
    format!("{{\"events\":[{}]}}", events.join(","))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be positive");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let retries = Arc::new(AtomicU64::new(0));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let started = Instant::now();
    // Samples the pipeline's lag while the load runs.
    let sampler = {
        let (client, url, key) = (
            client.clone(),
            args.target.url.clone(),
            args.target.key.clone(),
        );
        tokio::spawn(async move {
            let mut worst = (0i64, 0f64);
            loop {
                let status = client
                    .get(format!("{url}/api/v1/pipeline"))
                    .bearer_auth(&key)
                    .send()
                    .await;
                if let Ok(response) = status
                    && let Ok(value) = response.json_or_text().await
                {
                    worst.0 = worst.0.max(value["lag_events"].as_i64().unwrap_or(0));
                    worst.1 = worst.1.max(value["lag_seconds"].as_f64().unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if STOP.load(Ordering::Relaxed) {
                    return worst;
                }
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, next, latencies, retries) = (
            client.clone(),
            args.clone(),
            next.clone(),
            latencies.clone(),
            retries.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(args.batch, Ordering::Relaxed);
                if start >= args.events {
                    return Ok::<(), anyhow::Error>(());
                }
                let count = args.batch.min(args.events - start);
                if args.rate > 0 {
                    // Batch `start` is due at start / rate seconds: a bounded, steady load.
                    let due = started + Duration::from_secs_f64(start as f64 / args.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = batch_body(start, count, &args, now_ms);
                loop {
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{}/api/v1/events", args.target.url))
                        .bearer_auth(&args.target.key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .context("sending events")?;
                    let status = response.status();
                    if status.as_u16() == 202 {
                        latencies.lock().await.push(sent.elapsed());
                        break;
                    }
                    if status.as_u16() == 429 || status.as_u16() == 503 {
                        // Backpressure: the origin asked us to wait.
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    bail!(
                        "unexpected {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    STOP.store(true, Ordering::Relaxed);
    let (worst_lag_events, worst_lag_seconds) = sampler.await?;
    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let pct = |p: f64| percentile(&latencies, p);
    println!(
        "sent {} events in {} requests of {} over {:.2} s: {:.0} events/s acknowledged durable",
        args.events,
        latencies.len(),
        args.batch,
        elapsed.as_secs_f64(),
        args.events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "ack latency per request: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; backpressure retries: {}",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        retries.load(Ordering::Relaxed)
    );
    println!(
        "pipeline lag during the load, sampled every 250 ms: at most {worst_lag_events} events, {worst_lag_seconds:.1} s"
    );
    // How long until the pipeline has consumed everything.
    if args.drain_timeout == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    let mut max_lag_seconds: f64 = 0.0;
    loop {
        let status: serde_json::Value = client
            .get(format!("{}/api/v1/pipeline", args.target.url))
            .bearer_auth(&args.target.key)
            .send()
            .await?
            .json_or_text()
            .await?;
        let lag = status["lag_events"].as_i64().unwrap_or(-1);
        // With JetStream, messages still in the stream are part of the lag too.
        let in_stream = status["stream_pending_messages"].as_i64().unwrap_or(0);
        max_lag_seconds = max_lag_seconds.max(status["lag_seconds"].as_f64().unwrap_or(0.0));
        if lag == 0 && in_stream == 0 {
            break;
        }
        if lag < 0 {
            println!("pipeline status unavailable with this key (needs viewer or admin): {status}");
            return Ok(());
        }
        if Instant::now() > deadline {
            println!(
                "the pipeline still had {lag} events and {in_stream} stream messages to consume after {} s",
                args.drain_timeout
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "pipeline drained {:.2} s after the start; oldest unconsumed event was at most {:.1} s old when sampled",
        started.elapsed().as_secs_f64(),
        max_lag_seconds
    );
    Ok(())
}

/// The `p` quantile (0 to 1) of sorted durations; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

trait JsonOrText {
    async fn json_or_text(self) -> anyhow::Result<serde_json::Value>;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> anyhow::Result<serde_json::Value> {
        let text = self.text().await?;
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}
