//! Issue 26: the server loop (`abx_origin::serve`) against hostile clients over real TCP
//! from several loopback addresses: rate-limited refusals held without a request permit,
//! connections capped per client address, headers and bodies that never finish arriving.
//! Not database behaviour, so SQLite only.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{Backend, TestOrigin};

/// The origin with `adjust`ed settings, served on a loopback port.
async fn served(adjust: impl FnOnce(&mut abx_origin::Settings)) -> (TestOrigin, SocketAddr) {
    let origin = TestOrigin::with(Backend::Sqlite, adjust)
        .await
        .expect("SQLite is always there");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    tokio::spawn(abx_origin::serve::serve(
        listener,
        origin.state.clone(),
        std::future::pending(),
    ));
    (origin, address)
}

fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, last]))
        .build()
        .expect("client")
}

/// A raw connection to `to` from 127.0.0.`last`.
async fn connect_from(last: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, last], 0)))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Reads until the server closes the connection (or resets it), until `since + limit` at
/// most: when that was, counted from `since`, or `None` if it stayed open.
async fn closed_within(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((since + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A client over its rate limit gets its 429 only after the hold, and the held refusals
/// take no request permit: with more of them waiting than the process has permits, a
/// neighbour is still served at once.
#[tokio::test]
async fn rate_limited_clients_wait_for_their_refusals_without_holding_permits() {
    let hold = Duration::from_millis(1_500);
    let (o, address) = served(|s| {
        s.sdk_rate = abx_origin::auth::Limit {
            per_second: 0.01,
            burst: 1.0,
        };
        s.max_concurrent_requests = 4;
        s.rate_limit_hold = hold;
    })
    .await;
    let sdk = o.key("sdk").await;
    let url = format!("http://{address}/api/v1/snapshot");
    let get = |client: reqwest::Client| {
        let (url, sdk) = (url.clone(), sdk.clone());
        async move {
            let started = Instant::now();
            let reply = client
                .get(url)
                .bearer_auth(sdk)
                .send()
                .await
                .expect("reply");
            (reply.status(), reply.headers().clone(), started.elapsed())
        }
    };
    let (first, _, _) = get(client_from(2)).await;
    assert_eq!(first, reqwest::StatusCode::OK, "the burst of one");
    let flood: Vec<_> = (0..12).map(|_| tokio::spawn(get(client_from(2)))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        o.state.requests.available_permits(),
        4,
        "refusals are held with every permit free"
    );
    let (neighbour, _, took) = get(client_from(3)).await;
    assert_eq!(
        neighbour,
        reqwest::StatusCode::OK,
        "12 held refusals must not take the 4 permits"
    );
    assert!(took < hold / 2, "the neighbour waited {took:?}");
    for refusal in flood {
        let (status, headers, took) = refusal.await.expect("flood request");
        assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "100");
        assert!(
            took >= hold,
            "a refusal came after {took:?}, before the hold"
        );
    }
    o.finish().await;
}

/// One address gets `per_client` open connections; another is closed at once while a
/// different address is still served. Connections that send no request, or trickle their
/// headers, are closed after the header timeout.
#[tokio::test]
async fn connections_are_capped_per_client_and_must_send_their_headers_in_time() {
    let (o, address) = served(|s| {
        s.connections.per_client = 3;
        s.connections.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let opened = Instant::now();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(2, address).await);
    }
    let mut fourth = connect_from(2, address).await;
    let closed = closed_within(&mut fourth, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after < Duration::from_millis(500)),
        "the fourth connection from one address was not closed at once: {closed:?}"
    );
    let health = client_from(3)
        .get(format!("http://{address}/health"))
        .send()
        .await
        .expect("another address is served");
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    // One of the three trickles its headers a byte every 200 ms: it is closed at the
    // timeout, as the silent ones are, and never answered.
    let mut trickling = held.pop().expect("a connection");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /health HTTP/1.1\r\nHost: origin\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if trickling.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    });
    for silent in &mut held {
        let closed = closed_within(silent, opened, Duration::from_secs(5)).await;
        assert!(
            closed.is_some_and(|after| after >= Duration::from_millis(900)),
            "a silent connection was closed {closed:?} after it opened"
        );
    }
    let trickled_for = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("the trickling connection was closed")
        .expect("trickle");
    assert!(
        trickled_for < Duration::from_secs(3),
        "headers trickled for {trickled_for:?}"
    );
    // Their slots are free again. A connection idle after an answer is closed after the
    // timeout too (keep-alive does not hold a socket for ever).
    let mut again = connect_from(2, address).await;
    again
        .write_all(b"GET /health HTTP/1.1\r\nHost: origin\r\n\r\n")
        .await
        .expect("request");
    let mut answer = vec![0u8; 4096];
    let read = again.read(&mut answer).await.expect("answer");
    let answered = Instant::now();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let closed = closed_within(&mut again, answered, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(900)),
        "an idle keep-alive connection was closed {closed:?} after its answer"
    );
    // A snapshot stream is an answer in progress, not a wait for headers: it outlives the
    // timeout.
    let server = o.key("server").await;
    let mut stream = connect_from(4, address).await;
    let request = format!(
        "GET /api/v1/snapshot/stream HTTP/1.1\r\nHost: origin\r\nAuthorization: Bearer {server}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let read = stream.read(&mut answer).await.expect("stream head");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let opened = Instant::now();
    assert_eq!(
        closed_within(&mut stream, opened, Duration::from_millis(2_500)).await,
        None,
        "the stream was cut"
    );
    o.finish().await;
}

/// Past the process's total, connections are closed at accept; from three quarters of
/// it, a client holding many gets no more while a client holding none still gets one.
#[tokio::test]
async fn the_total_of_connections_is_capped_and_heavy_clients_are_refused_first() {
    let (o, address) = served(|s| {
        s.connections.per_client = 32;
        s.connections.total = 8;
    })
    .await;
    let at_once = Duration::from_millis(500);
    let mut heavy = Vec::new();
    for _ in 0..6 {
        heavy.push(connect_from(2, address).await);
    }
    // Six of eight open: past three quarters, the heavy client gets no seventh.
    let mut seventh = connect_from(2, address).await;
    let closed = closed_within(&mut seventh, Instant::now(), Duration::from_secs(3)).await;
    assert!(closed.is_some_and(|after| after < at_once), "{closed:?}");
    let mut light = connect_from(3, address).await;
    let other = connect_from(4, address).await;
    // Eight open: nobody gets another.
    let mut ninth = connect_from(5, address).await;
    let closed = closed_within(&mut ninth, Instant::now(), Duration::from_secs(3)).await;
    assert!(closed.is_some_and(|after| after < at_once), "{closed:?}");
    // The admitted ones are served.
    light
        .write_all(b"GET /health HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    light.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop((heavy, other));
    o.finish().await;
}

/// Sends the head of a `POST /api/v1/events` announcing a body of 4 KiB, then trickles the
/// body a byte every 100 ms for up to 10 s: what comes back by then, and when it ended.
async fn trickled_post(from: u8, address: SocketAddr, key: &str) -> (String, Duration) {
    let mut stream = connect_from(from, address).await;
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: origin\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// A request body must arrive within the body deadline in total: trickled steadily, it is
/// refused when the deadline passes, not left holding a request permit.
#[tokio::test]
async fn a_trickled_body_is_refused_at_its_deadline() {
    let (o, address) = served(|s| {
        s.connections.body_deadline = Duration::from_secs(1);
    })
    .await;
    let sdk = o.key("sdk").await;
    let (answer, took) = trickled_post(2, address, &sdk).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"invalid_body\""), "{answer}");
    o.finish().await;
}

/// One client address holds at most its share of the request permits: beyond it, its
/// requests get 429 at once while another address is served.
#[tokio::test]
async fn a_client_holds_at_most_its_share_of_request_permits() {
    let (o, address) = served(|s| {
        s.max_concurrent_requests_per_client = 2;
        s.rate_limit_hold = Duration::from_millis(10);
    })
    .await;
    let sdk = o.key("sdk").await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let sdk = sdk.clone();
            tokio::spawn(async move { trickled_post(2, address, &sdk).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        o.state.requests.available_permits(),
        o.state.settings.max_concurrent_requests - 2,
        "the two trickled bodies hold a permit each"
    );
    let url = format!("http://{address}/api/v1/snapshot");
    let third = client_from(2)
        .get(&url)
        .bearer_auth(&sdk)
        .send()
        .await
        .expect("reply");
    assert_eq!(third.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    let elsewhere = client_from(3)
        .get(&url)
        .bearer_auth(&sdk)
        .send()
        .await
        .expect("reply");
    assert_eq!(elsewhere.status(), reqwest::StatusCode::OK);
    for request in slow {
        request.abort();
    }
    o.finish().await;
}
