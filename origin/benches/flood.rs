//! Hostile load against one origin process (issue 26), from several loopback source
//! addresses, printing its figures (recorded in docs/benchmarks.md):
//!
//! 1. neighbours alone: 8 clients (127.0.0.3–10), each asking for an assignment every 20 ms
//!    with the public sdk key: latency percentiles;
//! 2. the same neighbours while one client (127.0.0.2) floods with the same key from 32
//!    connections: how much of the flood is served, and the neighbours' percentiles; (a) with
//!    the flooder in this process, (b) in a process of its own at nice 19, so that its
//!    client's CPU yields to the origin's as an attacker's on another machine would, and
//!    (c) so with 1,000 connections, past the cap of connections per address;
//! 3. a stream flood: one client opening 40 change streams;
//! 4. a gzip flood: small gzip bodies that inflate to 64 MiB, from 32 addresses at once;
//! 5. an idempotency flood: `POST /experiments/{id}/events` with fresh `Idempotency-Key`s,
//!    half unauthenticated and half with a valid key, from 32 addresses;
//!
//! with the process's resident memory sampled every 10 ms during 4 and 5, and the rows the
//! idempotency flood left in the database.
//!
//!     cargo bench -p abx-origin --bench flood [-- --seconds 10]
//!
//! The neighbours run in the origin's process on the same two cores, so their latencies
//! include their own scheduling: an upper bound for what a separate client would see.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value as Json, json};

const ADMIN: &str = "abx_admin_flood_bench_bootstrap_key_0001";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The flooder of phase 2b, run by this same binary in a process of its own.
    if let [_, mode, base, sdk, seconds, connections, ..] = args.as_slice()
        && mode == "--flooder"
    {
        let length = Duration::from_secs(seconds.parse()?);
        let counts = runtime.block_on(assignment_flood(
            base.clone(),
            sdk.clone(),
            length,
            connections.parse()?,
        ));
        println!("{}", serde_json::to_string(&counts)?);
        return Ok(());
    }
    let seconds = args
        .iter()
        .skip_while(|a| *a != "--seconds")
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()
        .context("--seconds takes a number")?
        .unwrap_or(10);
    runtime.block_on(run(Duration::from_secs(seconds)))
}

/// One client (127.0.0.2) asking for assignments with the sdk key as fast as `connections`
/// connections go, for `length`: the answers by status (0: the connection was closed or
/// refused, and the loop reconnects at once).
async fn assignment_flood(
    base: String,
    sdk: String,
    length: Duration,
    connections: u32,
) -> std::collections::BTreeMap<u16, u64> {
    flood(
        connections,
        |_| [127, 0, 0, 2],
        length,
        move |http, n| {
            let url = format!("{base}/experiments/flood/assignment?user_id=f{n}");
            let sdk = sdk.clone();
            async move {
                let r = http.get(url).bearer_auth(sdk).send().await.ok()?;
                let status = r.status().as_u16();
                r.bytes().await.ok()?;
                Some(status)
            }
        },
    )
    .await
}

fn report_flooder(label: &str, counts: &std::collections::BTreeMap<u16, u64>, length: Duration) {
    let total: u64 = counts.values().sum();
    println!(
        "{label}: {total} requests ({:.0}/s), by status {counts:?}",
        total as f64 / length.as_secs_f64()
    );
}

fn client(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(from)))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client")
}

/// The resident set of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Samples the resident set until `done`, returning the peak.
fn sample_rss(done: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak = rss_mib();
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Neighbours {
    latencies_ms: Vec<f64>,
    not_ok: u64,
}

/// Eight well-behaved clients, each asking for one assignment every 20 ms for `length`.
async fn neighbours(base: &str, sdk: &str, length: Duration) -> Neighbours {
    let mut tasks = Vec::new();
    for n in 3..=10u8 {
        let (http, base, sdk) = (client([127, 0, 0, n]), base.to_owned(), sdk.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut not_ok) = (Vec::new(), 0u64);
            let end = Instant::now() + length;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut u = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                u += 1;
                let started = Instant::now();
                let reply = http
                    .get(format!(
                        "{base}/experiments/flood/assignment?user_id=n{n}-{u}"
                    ))
                    .bearer_auth(&sdk)
                    .send()
                    .await;
                let ok = match reply {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                not_ok += u64::from(!ok);
            }
            (latencies, not_ok)
        }));
    }
    let mut all = Neighbours {
        latencies_ms: Vec::new(),
        not_ok: 0,
    };
    for task in tasks {
        let (latencies, not_ok) = task.await.expect("a neighbour");
        all.latencies_ms.extend(latencies);
        all.not_ok += not_ok;
    }
    all.latencies_ms.sort_by(f64::total_cmp);
    all
}

fn report(label: &str, n: &Neighbours) {
    let l = &n.latencies_ms;
    println!(
        "{label}: {} requests, {} not 200; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        n.not_ok,
        percentile(l, 0.5),
        percentile(l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
}

/// Runs `body` from `connections` loops (their source addresses from `address`) for
/// `length`, counting answers by status.
async fn flood<F, Fut>(
    connections: u32,
    address: impl Fn(u32) -> [u8; 4],
    length: Duration,
    body: F,
) -> std::collections::BTreeMap<u16, u64>
where
    F: Fn(reqwest::Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<u16>> + Send,
{
    let counts: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (http, body, counts, sent) = (
            client(address(c)),
            body.clone(),
            counts.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + length;
            while Instant::now() < end {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let status = body(http.clone(), n).await.unwrap_or(0);
                *counts.lock().expect("counts").entry(status).or_default() += 1;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a flooder");
    }
    Arc::try_unwrap(counts)
        .expect("the flooders are done")
        .into_inner()
        .expect("counts")
}

/// [`flood`], with the process's resident memory sampled throughout: the counts, and the
/// memory before and at its peak (MiB).
async fn flood_measuring_memory<F, Fut>(
    connections: u32,
    address: impl Fn(u32) -> [u8; 4],
    length: Duration,
    body: F,
) -> (std::collections::BTreeMap<u16, u64>, f64, f64)
where
    F: Fn(reqwest::Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<u16>> + Send,
{
    let before = rss_mib();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(done.clone());
    let counts = flood(connections, address, length, body).await;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(f64::NAN);
    (counts, before, peak)
}

async fn run(length: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut settings = abx_origin::Settings::new(dir.path());
    settings.bootstrap_admin_key = Some(ADMIN.into());
    // The binary's defaults (`abx-origin serve`), which the library's `Settings::new` does
    // not share.
    settings.sdk_rate = abx_origin::auth::Limit {
        per_second: 200.0,
        burst: 1_000.0,
    };
    let sdk_rate = settings.sdk_rate;
    let started = abx_origin::AppState::start(settings).await?;
    let state = started.state;
    state.spawn_background();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(abx_origin::serve::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    let base = format!("http://{address}/api/v1");
    let admin = client([127, 0, 0, 1]);
    let post = |path: &str, body: Json| {
        admin
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    post(
        "/metrics",
        json!({"key": "purchase", "kind": "conversion", "event_type": "purchase"}),
    )
    .await?
    .error_for_status()?;
    let experiment: Json = post(
        "/experiments",
        json!({"key": "flood", "primary_metric": "purchase",
               "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let id = experiment["id"].as_str().context("an id")?.to_owned();
    post(&format!("/experiments/{id}/start"), json!({}))
        .await?
        .error_for_status()?;
    let key: Json = post("/keys", json!({"name": "browser", "role": "sdk"}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sdk = key["secret"].as_str().context("a secret")?.to_owned();
    println!(
        "one origin process (SQLite), sdk limit per key and address: {} req/s, burst {}; {} s per phase",
        sdk_rate.per_second,
        sdk_rate.burst,
        length.as_secs()
    );

    // 1 and 2: the neighbours alone, then beside the flood.
    report("neighbours alone", &neighbours(&base, &sdk, length).await);
    let flooded = tokio::spawn(assignment_flood(base.clone(), sdk.clone(), length, 32));
    let beside = neighbours(&base, &sdk, length).await;
    let flood_counts = flooded.await?;
    report(
        "neighbours during the flood (flooder in this process)",
        &beside,
    );
    report_flooder(
        "  the flooder (127.0.0.2, 32 connections)",
        &flood_counts,
        length,
    );
    // 2b: the same flood from a process of its own at the lowest priority, so that its
    // client's CPU (which an attacker elsewhere would not take from the origin) yields to
    // the origin and the neighbours; 2c: that process with 1,000 connections, four times
    // what one address may open, reconnecting at once whenever one is closed.
    for connections in [32, 1_000] {
        let flooder = std::process::Command::new("nice")
            .args(["-n", "19"])
            .arg(std::env::current_exe()?)
            .args(["--flooder", &base, &sdk, &length.as_secs().to_string()])
            .arg(connections.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the flooder process (nice)")?;
        let beside = neighbours(&base, &sdk, length).await;
        let output = tokio::task::spawn_blocking(move || flooder.wait_with_output()).await??;
        let flood_counts: std::collections::BTreeMap<u16, u64> =
            serde_json::from_slice(&output.stdout).context("the flooder's counts")?;
        report(
            "neighbours during the flood (flooder in its own process, nice 19)",
            &beside,
        );
        report_flooder(
            &format!("  the flooder (127.0.0.2, {connections} connections)"),
            &flood_counts,
            length,
        );
    }

    // 3: streams from one address.
    let streamer = client([127, 0, 0, 11]);
    let mut open = Vec::new();
    let mut refused = std::collections::BTreeMap::<u16, u64>::new();
    for _ in 0..40 {
        let reply = streamer
            .get(format!("{base}/snapshot/stream"))
            .bearer_auth(&sdk)
            .send()
            .await?;
        if reply.status() == 200 {
            open.push(reply);
        } else {
            *refused.entry(reply.status().as_u16()).or_default() += 1;
        }
    }
    println!(
        "stream flood (127.0.0.11, 40 streams): {} open, refused by status {refused:?}",
        open.len()
    );
    drop(open);

    // 4: gzip bodies that inflate to 64 MiB of whitespace-separated empty objects.
    let bomb: Arc<[u8]> = {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"[")?;
        let chunk = b"{},".repeat(1 << 16);
        for _ in 0..(64 << 20) / chunk.len() {
            gz.write_all(&chunk)?;
        }
        gz.write_all(b"{}]")?;
        gz.finish()?.into()
    };
    let (counts, before, peak) = {
        let (base, sdk, bomb) = (base.clone(), sdk.clone(), bomb.clone());
        flood_measuring_memory(
            32,
            |c| [127, 0, 1, c as u8 + 1],
            length,
            move |http, _| {
                let (url, sdk, bomb) = (format!("{base}/events"), sdk.clone(), bomb.clone());
                async move {
                    let r = http
                        .post(url)
                        .bearer_auth(sdk)
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(bomb.to_vec())
                        .send()
                        .await
                        .ok()?;
                    Some(r.status().as_u16())
                }
            },
        )
        .await
    };
    println!(
        "gzip flood ({} KiB bodies inflating to 64 MiB, 32 addresses): {} requests by status {counts:?}; resident memory {before:.0} MiB before, peak {peak:.0} MiB, {:.0} MiB after",
        bomb.len() / 1024,
        counts.values().sum::<u64>(),
        rss_mib()
    );

    // 5: fresh idempotency keys, without and with a valid key.
    let (counts, before, peak) = {
        let (base, sdk) = (base.clone(), sdk.clone());
        flood_measuring_memory(
            32,
            |c| [127, 0, 2, c as u8 + 1],
            length,
            move |http, n| {
                let (url, sdk) = (format!("{base}/experiments/flood/events"), sdk.clone());
                async move {
                    // Every other request carries a random bearer string instead of the key.
                    let bearer = if n % 2 == 0 {
                        sdk
                    } else {
                        format!("abx_sdk_{n:032x}")
                    };
                    // The seed's per-experiment form, whose answers Idempotency-Key stores.
                    let event = json!({"user_id": format!("i{n}"), "event_type": "purchase"});
                    let r = http
                        .post(url)
                        .bearer_auth(bearer)
                        .header("idempotency-key", format!("flood-{n}"))
                        .json(&event)
                        .send()
                        .await
                        .ok()?;
                    Some(r.status().as_u16())
                }
            },
        )
        .await
    };
    let mut conn = state.db.pool.acquire().await?;
    let rows = abx_origin_store::count_idempotent_responses(&mut conn, None).await?;
    println!(
        "idempotency flood (half unauthenticated, 32 addresses): {} requests by status {counts:?}; {rows} responses stored (at most 10,000 a day per key); resident memory {before:.0} MiB before, peak {peak:.0} MiB, {:.0} MiB after",
        counts.values().sum::<u64>(),
        rss_mib()
    );
    Ok(())
}
