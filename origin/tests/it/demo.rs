//! `abx-origin demo`, as a newcomer runs it: the real binary builds its data, simulates
//! traffic, prints where to look, and then serves an origin whose experiments have results.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value as Json;

const ADMIN: &str = "abx_admin_demo_key_not_for_production";

#[tokio::test]
async fn the_demo_builds_data_and_serves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_abx-origin"))
        .args([
            "demo",
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--days",
            "2",
            "--users-per-day",
            "1500",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn abx-origin demo");

    // The printed guide arrives on stdout once everything is in place.
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut guide = String::new();
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(240))
            .unwrap_or_else(|_| panic!("the demo did not finish; it printed:\n{guide}"));
        guide.push_str(&line);
        guide.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        guide.contains(&format!("console            {base}/")),
        "{guide}"
    );
    assert!(guide.contains(ADMIN), "{guide}");

    let client = reqwest::Client::new();
    let get = |path: String| {
        let request = client.get(format!("{base}{path}")).bearer_auth(ADMIN);
        async move {
            let reply = request.send().await.expect("request");
            assert!(reply.status().is_success(), "{path}: {}", reply.status());
            reply.json::<Json>().await.expect("json")
        }
    };
    let experiments = get("/api/v1/experiments".into()).await;
    let items = experiments["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{experiments}");
    for experiment in items {
        let key = experiment["key"].as_str().expect("key");
        let results = get(format!("/api/v1/experiments/{key}/results")).await;
        let exposed: u64 = results["variants"]
            .as_object()
            .expect("variants")
            .values()
            .map(|v| v["impressions"].as_u64().expect("impressions"))
            .sum();
        assert!(exposed > 100, "{key} has {exposed} exposed units");
    }
    // The demo's users log their arm in its holdout, so the holdout reads out too.
    let readout = get("/api/v1/holdouts/global_holdout/results".into()).await;
    let arm = |name: &str| readout["variants"][name]["impressions"].as_u64();
    let (held, released) = (arm("held").unwrap_or(0), arm("released").unwrap_or(0));
    assert!(held > 10 && released > 10 * held, "{readout}");
    assert_eq!(
        get("/api/v1/flags".into()).await["items"]
            .as_array()
            .expect("flags")
            .len(),
        2
    );
    let page = client
        .get(format!("{base}/"))
        .send()
        .await
        .expect("console");
    assert!(page.status().is_success());

    child.kill().expect("kill");
    child.wait().expect("wait");
}
