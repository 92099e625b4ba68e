//! `abx-load assign`: an open-loop load on the assignment endpoint. Requests are sent
//! on a fixed schedule (`--rate` per second) whatever the answers' latency, so the latency
//! percentiles describe the origin at that load rather than the load generator's patience.
//!
//! The generator shares the origin's two cores, so it speaks minimal HTTP/1.1 over
//! keep-alive connections itself: a general client (reqwest) spent about as much CPU per
//! request as the origin did, and the queueing that caused showed up in the origin's tail.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::ingest::{Target, percentile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Requests per second, sent on schedule.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// How long to send for.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Connections, hence requests in flight at most.
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Requests cycle through the experiments `exp_0` … `exp_{N-1}`.
    #[arg(long, default_value_t = 1_000)]
    experiments: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rate == 0 || args.connections == 0 || args.experiments == 0 {
        bail!("--rate, --connections and --experiments must be positive");
    }
    let Some(address) = args.target.url.strip_prefix("http://") else {
        bail!("--url must be http://host:port");
    };
    let address = address.trim_end_matches('/').to_string();
    let total = args.rate * args.seconds;
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        let stream = TcpStream::connect(&address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        connections.push(stream);
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for mut stream in connections {
        let (args, next, address) = (args.clone(), next.clone(), address.clone());
        workers.push(tokio::spawn(async move {
            let mut buffer = Vec::with_capacity(4096);
            let mut request = Vec::with_capacity(512);
            let mut latencies = Vec::new();
            let mut behind = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>((latencies, behind));
                }
                let taken = Instant::now();
                let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                // A request is taken by the first free connection. If it was due before any
                // connection was free, the origin's slowness delayed it, and its latency counts
                // from when it was due (no coordinated omission); otherwise from when it was
                // sent, leaving out the timer's millisecond granularity.
                let counted_from = if due < taken {
                    behind += 1;
                    due
                } else {
                    sent
                };
                request.clear();
                write!(
                    request,
                    "GET /api/v1/experiments/exp_{}/assignment?user_id=user-{i}&country=US HTTP/1.1\r\n\
                     Host: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
                    i % args.experiments,
                    args.target.key
                )?;
                stream.write_all(&request).await.context("sending a request")?;
                let (status, body) = read_response(&mut stream, &mut buffer)
                    .await
                    .context("reading an answer")?;
                if status != 200 {
                    bail!("unexpected {status}: {}", String::from_utf8_lossy(body));
                }
                latencies.push(counted_from.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut behind = 0;
    for worker in workers {
        let (mine, late) = worker.await??;
        latencies.extend(mine);
        behind += late;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "offered {} requests/s for {} s over {} connections: {} answered 200 in {:.2} s ({:.0} requests/s)",
        args.rate,
        args.seconds,
        args.connections,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {behind} requests started behind schedule",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 0.999)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body (all the origin sends on this
/// route); returns its status and body.
async fn read_response<'b>(
    stream: &mut TcpStream,
    buffer: &'b mut Vec<u8>,
) -> anyhow::Result<(u16, &'b [u8])> {
    buffer.clear();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if stream.read_buf(buffer).await? == 0 {
            bail!("the origin closed the connection");
        }
    };
    let head = std::str::from_utf8(&buffer[..head_end]).context("a non-UTF-8 header")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("a malformed status line: {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("an answer without Content-Length")?;
    while buffer.len() < head_end + length {
        if stream.read_buf(buffer).await? == 0 {
            bail!("the origin closed the connection mid-body");
        }
    }
    Ok((status, &buffer[head_end..head_end + length]))
}
