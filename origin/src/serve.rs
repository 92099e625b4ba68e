//! The HTTP server: accepts connections and serves [`crate::app`] on each, with the limits
//! a process open to the internet needs and `axum::serve` does not set (it starts no timer,
//! so hyper's header timeout never runs, and it takes every connection offered):
//!
//! - connections per client address and in total are capped ([`ConnectionLimits`]; the total
//!   also by the open-files limit): a connection past a cap is closed at once, so one client
//!   cannot hold every socket, and once three quarters of them are open, clients already
//!   holding many are refused first (`per_client::Caps`);
//! - a client must send a request's headers within `header_read_timeout` of the
//!   connection's opening or of its previous response, so connections trickling headers
//!   (slowloris) or idling for ever are closed;
//! - a request's body must arrive within `body_deadline` in total (not between bytes), so a
//!   trickled body cannot hold a request permit for long (and one client holds at most
//!   `Settings::max_concurrent_requests_per_client` of them);
//! - a connection buffers at most [`READ_BUFFER`] while reading, so trickled headers cost
//!   little memory.
//!
//! A client's address reaches handlers as `ConnectInfo<SocketAddr>`, as with axum's server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

use crate::AppState;
use crate::per_client::{Caps, OpenCounts};

/// The limits on client connections (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections per client address (IPv6: per /64). Behind a proxy, every
    /// connection comes from the proxy: raise it to what the proxy opens.
    pub per_client: usize,
    /// Open connections in this process.
    pub total: usize,
    pub header_read_timeout: Duration,
    pub body_deadline: Duration,
}

/// The most a connection buffers while reading (hyper's default is ~400 KiB): a request's
/// headers must fit, and a client trickling them cannot make each of its connections hold
/// more.
const READ_BUFFER: usize = 32 * 1024;

/// How long open connections get to finish their requests once shutdown is asked for;
/// snapshot streams would otherwise keep the process alive until their lifetime ends.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `state`'s routes on `listener` until `shutdown` completes, then lets open
/// connections finish (for at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = state.settings.connections;
    let caps = Caps {
        per_client: limits.per_client,
        total: limits.total.min(connections_the_process_can_open()),
    };
    if caps.total < limits.total {
        tracing::warn!(
            configured = limits.total,
            effective = caps.total,
            "the open-files limit allows fewer client connections than configured"
        );
    }
    let router = crate::app(state);
    let open = Arc::new(OpenCounts::default());
    // Every connection holds a receiver: the sender tells them to finish, and its `closed`
    // says when the last has.
    let (finish, finishing) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up between its SYN and our accept: nothing to do.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            // Out of file descriptors, most likely: open connections must close first.
            Err(error) => {
                tracing::error!(%error, "accepting a connection failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Closed at once: answering would cost what the cap is there to save.
        let Ok(slot) = open.admit(Some(peer.ip()), caps) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |request: Request<Incoming>| {
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(ConnectInfo(peer));
                Request::from_parts(
                    parts,
                    Body::new(BodyDeadline::new(body, limits.body_deadline)),
                )
            });
        let mut finishing = finishing.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(READ_BUFFER)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = finishing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    drop(finishing);
    let _ = finish.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, finish.closed()).await;
    Ok(())
}

/// File descriptors kept for everything but client connections: database connections,
/// the event log's files, the broker and warehouse clients, logs.
const RESERVED_FILES: u64 = 512;

/// How many client connections the open-files limit leaves room for, after raising the
/// soft limit to the hard one (as servers commonly do): past it, `accept` would fail for
/// everyone instead of the connection caps refusing the clients that hold the most.
fn connections_the_process_can_open() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    limit.current.map_or(usize::MAX, |files| {
        usize::try_from(files.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX)
    })
}

/// A request body that fails once its deadline passes, however steadily bytes arrive. The
/// deadline counts from the request's arrival and is only looked at while the body keeps
/// the reader waiting, so a body that has arrived is never refused for a slow reader.
struct BodyDeadline {
    body: Incoming,
    deadline: tokio::time::Instant,
    /// Made on the first wait, so that bodiless requests cost no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body ended (or failed): nothing more is read.
    done: bool,
}

impl BodyDeadline {
    fn new(body: Incoming, within: Duration) -> Self {
        BodyDeadline {
            body,
            deadline: tokio::time::Instant::now() + within,
            timer: None,
            done: false,
        }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                Poll::Ready(Some(Err(axum::Error::new(error))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.done = true;
                Poll::Ready(Some(Err(axum::Error::new(
                    "the request body did not arrive in time",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
