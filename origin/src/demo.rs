//! `abx-origin demo`: starts an origin on a fresh embedded database, creates a realistic set
//! of experiments and flags, simulates a few days of traffic, and prints where to look.
//!
//! The simulated clients behave like a server-side SDK: they fetch the signed snapshot,
//! verify it, assign users locally with abx-core, and send exposures and metric events to
//! `POST /api/v1/events` in batches.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use abx_core::{Context, Evaluator};
use anyhow::{Context as _, bail};
use serde_json::{Value as Json, json};

#[derive(clap::Args)]
pub struct Args {
    /// Where the demo's database lives; replaced if it holds an earlier demo.
    #[arg(long, default_value = "./abx-demo")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Days of traffic to simulate (at most 6: older events are past retention).
    #[arg(long, default_value_t = 3)]
    days: u32,
    /// New users per day.
    #[arg(long, default_value_t = 20_000)]
    users_per_day: u64,
}

const ADMIN_KEY: &str = "abx_admin_demo_key_not_for_production";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<Json> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Json::Null))
    }

    async fn post(&self, path: &str, body: Json) -> anyhow::Result<Json> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// SplitMix64: a seeded generator for reproducible traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

fn variants(a: &str, b: &str, config_key: &str, va: Json, vb: Json) -> Json {
    json!([{"name": a, "weight": 50, "config": {config_key: va}}, {"name": b, "weight": 50, "config": {config_key: vb}}])
}

/// The demo's configuration: metrics, layers, a segment, a holdout, experiments and flags.
async fn configure(api: &Api) -> anyhow::Result<()> {
    for (key, kind, event_type, direction) in [
        ("checkout_conversion", "conversion", "purchase", "increase"),
        ("revenue_per_user", "mean", "revenue", "increase"),
        ("search_clicks", "conversion", "search_click", "increase"),
        ("crash_rate", "conversion", "crash", "decrease"),
    ] {
        api.post(
            "/metrics",
            json!({"key": key, "kind": kind, "event_type": event_type, "direction": direction}),
        )
        .await?;
    }
    api.post("/metrics", json!({"key": "revenue_per_session", "kind": "ratio", "event_type": "revenue", "denominator_event_type": "session"})).await?;
    api.post(
        "/layers",
        json!({"key": "checkout_ui", "name": "Checkout UI"}),
    )
    .await?;
    api.post(
        "/layers",
        json!({"key": "search", "name": "Search backend"}),
    )
    .await?;
    api.post("/segments", json!({"key": "north_america", "condition": {"attr": "country", "op": "in", "value": ["US", "CA", "MX"]}})).await?;
    api.post(
        "/holdouts",
        json!({"key": "global_holdout", "percent": 5, "metrics": ["checkout_conversion", "revenue_per_user"]}),
    )
    .await?;
    let experiments = [
        json!({"key": "checkout_button_color", "name": "Green checkout button", "hypothesis": "Green button increases conversion by 5%",
               "layer": "checkout_ui", "traffic_percent": 60, "variants": variants("control", "treatment", "button_color", json!("blue"), json!("green")),
               "primary_metric": "checkout_conversion", "secondary_metrics": ["revenue_per_user", "revenue_per_session"], "guardrail_metrics": ["crash_rate"],
               "holdout": "global_holdout"}),
        json!({"key": "checkout_copy", "name": "Shorter checkout copy", "hypothesis": "Shorter copy does not hurt conversion",
               "layer": "checkout_ui", "traffic_percent": 40, "variants": variants("control", "short", "copy", json!("long"), json!("short")),
               "primary_metric": "checkout_conversion", "guardrail_metrics": ["crash_rate"]}),
        json!({"key": "search_ranker_v2", "name": "New search ranker", "hypothesis": "The learned ranker raises search clicks",
               "layer": "search", "traffic_percent": 100, "variants": variants("control", "learned", "ranker", json!("bm25"), json!("learned")),
               "primary_metric": "search_clicks", "guardrail_metrics": ["crash_rate"], "targeting": {"segment": "north_america"}}),
        json!({"key": "recommendations_widget", "name": "Recommendations widget", "hypothesis": "A widget on the home page raises revenue",
               "traffic_percent": 50, "variants": variants("control", "widget", "widget", json!(false), json!(true)),
               "primary_metric": "revenue_per_user", "guardrail_metrics": ["crash_rate"]}),
    ];
    for body in experiments {
        let created = api.post("/experiments", body).await?;
        let id = created["id"].as_str().context("experiment id")?.to_string();
        api.post(&format!("/experiments/{id}/start"), json!({}))
            .await?;
    }
    api.post("/flags", json!({"key": "new_navigation", "description": "Gradual rollout of the new navigation",
        "rules": [{"condition": {"attr": "plan", "op": "eq", "value": "enterprise"}, "value": true}, {"rollout_percent": 20, "value": true}]})).await?;
    api.post("/flags", json!({"key": "checkout_button_color", "off_value": "blue",
        "rules": [{"from_experiment": {"experiment": "checkout_button_color", "config_key": "button_color"}}]})).await?;
    Ok(())
}

/// True effects of the simulation, per experiment and variant.
fn probabilities(assignments: &abx_core::Evaluation<'_>) -> (f64, f64, f64, f64) {
    let variant = |key: &str| {
        assignments
            .experiments
            .iter()
            .find(|a| a.experiment_key == key)
            .and_then(|a| a.variant)
    };
    // Baselines: 8% purchase, 30% search click, 0.5% crash, $12 mean order.
    let mut purchase = 0.08;
    let mut click = 0.30;
    let mut crash = 0.005;
    let order = 12.0;
    if variant("checkout_button_color") == Some("treatment") {
        purchase *= 1.15;
    }
    if variant("search_ranker_v2") == Some("learned") {
        click *= 1.10;
    }
    // The widget has no effect on revenue but crashes the app: the guardrail catches it.
    if variant("recommendations_widget") == Some("widget") {
        crash = 0.03;
    }
    (purchase, click, crash, order)
}

fn progress(done: u64, total: u64) {
    let width = 40;
    let filled = (done * width / total.max(1)) as usize;
    eprint!(
        "\r  simulating traffic [{}{}] {:>3}%",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        done * 100 / total.max(1)
    );
    let _ = std::io::stderr().flush();
}

async fn simulate(api: &Api, sdk: &str, days: u32, users_per_day: u64) -> anyhow::Result<u64> {
    let bytes = api
        .client
        .get(format!("{}/snapshot", api.base))
        .bearer_auth(sdk)
        .send()
        .await?
        .bytes()
        .await?;
    let key: Json = api
        .client
        .get(format!("{}/snapshot/key", api.base))
        .send()
        .await?
        .json()
        .await?;
    let public_key: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &key["public_key"].as_str().unwrap_or_default()[2 * i..2 * i + 2],
                16,
            )
        })
        .collect::<Result<_, _>>()
        .context("public key")?;
    let evaluator = Evaluator::from_verified_bytes(&bytes, &public_key)
        .map_err(|e| anyhow::anyhow!("snapshot: {e}"))?;
    let now = abx_origin_domain::clock::now_ms();
    let start = now - i64::from(days) * abx_origin_domain::clock::DAY_MS;
    let total = u64::from(days) * users_per_day;
    let mut rng = Rng(0xdeed);
    let mut events: Vec<Json> = Vec::new();
    let mut sent = 0;
    let countries = ["US", "CA", "GB", "DE", "FR", "MX", "BR", "JP"];
    let plans = ["free", "pro", "enterprise"];
    for u in 0..total {
        let ts = start + (u as f64 / total as f64 * (now - start - 3_600_000) as f64) as i64;
        let user = format!("user-{u:07}");
        let context = Context::new()
            .with("user_id", user.as_str())
            .with(
                "country",
                countries[(rng.next() * countries.len() as f64) as usize % countries.len()],
            )
            .with(
                "plan",
                plans[(rng.next() * plans.len() as f64) as usize % plans.len()],
            );
        let evaluation = evaluator.evaluate(&context, ts);
        for a in evaluation.experiments.iter().filter(|a| a.log_exposure) {
            events.push(json!({"event_id": uuid::Uuid::now_v7().to_string(), "kind": "exposure", "unit": user, "experiment_id": a.experiment_id,
                               "variant": a.variant, "timestamp": ts}));
        }
        // Each user's arm in each holdout it reached, once, as the SDKs log it.
        let mut holdouts: Vec<abx_core::HoldoutStep<'_>> = evaluation
            .experiments
            .iter()
            .filter_map(|a| evaluator.holdout_step(a, &context))
            .collect();
        holdouts.sort_by_key(|step| step.index);
        holdouts.dedup_by_key(|step| step.index);
        for step in holdouts {
            events.push(json!({"event_id": uuid::Uuid::now_v7().to_string(), "kind": "exposure", "unit": user, "experiment_id": step.holdout_id,
                               "variant": step.arm(), "timestamp": ts}));
        }
        let (purchase, click, crash, order) = probabilities(&evaluation);
        let mut metric = |event_type: &str, value: f64, offset: i64| {
            events.push(json!({"event_id": uuid::Uuid::now_v7().to_string(), "kind": "metric", "unit": user, "event_type": event_type,
                               "value": value, "timestamp": ts + offset}));
        };
        metric("session", 1.0, 1_000);
        if rng.next() < click {
            metric("search_click", 1.0, 20_000);
        }
        if rng.next() < purchase {
            metric("purchase", 1.0, 60_000);
            metric("revenue", (order * (0.5 + rng.next())).round(), 60_000);
        }
        if rng.next() < crash {
            metric("crash", 1.0, 30_000);
        }
        if events.len() >= 2_000 || u + 1 == total {
            loop {
                let response = api
                    .client
                    .post(format!("{}/events", api.base))
                    .bearer_auth(sdk)
                    .json(&json!({"events": events}))
                    .send()
                    .await?;
                match response.status().as_u16() {
                    202 | 207 => break,
                    429 | 503 => tokio::time::sleep(Duration::from_millis(200)).await,
                    status => bail!(
                        "sending events: {status} {}",
                        response.text().await.unwrap_or_default()
                    ),
                }
            }
            sent += events.len() as u64;
            events.clear();
            progress(u + 1, total);
        }
    }
    eprintln!();
    Ok(sent)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.days == 0 || args.days > 6 {
        bail!("--days must be between 1 and 6");
    }
    if args.data_dir.join("abx.db").exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("removing the earlier demo in {}", args.data_dir.display()))?;
    }
    let mut settings = abx_origin::Settings::new(&args.data_dir);
    settings.listen = args.listen;
    settings.bootstrap_admin_key = Some(ADMIN_KEY.into());
    settings.admin_rate.per_second = 10_000.0;
    settings.admin_rate.burst = 10_000.0;
    // The simulated traffic comes from this machine: one address for every simulated user.
    settings.sdk_rate.per_second = 1_000_000.0;
    settings.sdk_rate.burst = 1_000_000.0;
    settings.max_concurrent_requests_per_client = settings.max_concurrent_requests;
    settings.guardrail_interval_s = 10;
    let started = abx_origin::AppState::start(settings.clone()).await?;
    started.state.spawn_background();
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let server = tokio::spawn(abx_origin::serve::serve(
        listener,
        started.state.clone(),
        std::future::pending(),
    ));

    let base = format!("http://{}", settings.listen);
    let api = Api {
        client: reqwest::Client::new(),
        base: format!("{base}/api/v1"),
    };
    eprintln!(
        "abx demo: origin on {base}, database in {}",
        args.data_dir.display()
    );
    eprintln!("  creating metrics, layers, a segment, a holdout, 4 experiments and 2 flags");
    configure(&api).await?;
    let sdk = api
        .post("/keys", json!({"name": "demo sdk", "role": "sdk"}))
        .await?["secret"]
        .as_str()
        .context("sdk key")?
        .to_string();
    let sent = simulate(&api, &sdk, args.days, args.users_per_day).await?;
    eprintln!("  sent {sent} events; waiting for the pipeline");
    loop {
        let status = api.call(reqwest::Method::GET, "/pipeline", None).await?;
        if status["lag_events"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let round = abx_origin::guardrails::check_all(&started.state)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some((key, error)) = round.failed.first() {
        anyhow::bail!("checking the guardrails of {key} failed: {error}");
    }
    let paused = round.paused;
    println!("\nThe demo is running. Admin key: {ADMIN_KEY}\n");
    println!("  console            {base}/");
    println!(
        "  experiments        curl -H 'Authorization: Bearer {ADMIN_KEY}' {base}/api/v1/experiments"
    );
    for key in [
        "checkout_button_color",
        "search_ranker_v2",
        "recommendations_widget",
    ] {
        println!(
            "  results            curl -H 'Authorization: Bearer {ADMIN_KEY}' {base}/api/v1/experiments/{key}/results"
        );
    }
    println!(
        "  interactions       curl -H 'Authorization: Bearer {ADMIN_KEY}' {base}/api/v1/interactions"
    );
    println!(
        "  snapshot (JSON)    curl -H 'Authorization: Bearer {sdk}' {base}/api/v1/snapshot.json"
    );
    println!("  metrics            {base}/metrics");
    if !paused.is_empty() {
        println!(
            "\n  The guardrail monitor paused {} (crash_rate degraded): see its results and audit log.",
            paused.join(", ")
        );
    }
    println!("\nPress Ctrl-C to stop.");
    server.await??;
    Ok(())
}
