//! The statistics through the origin: scipy/statsmodels reference values replayed through the
//! analyst calculators (the HTTP seam), and results, guardrails, the kill switch and
//! interactions computed from real events on SQLite, PostgreSQL and the warehouse.

use crate::common;
use crate::common::{TestOrigin, metric};
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

fn reference() -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../stats/reference/values.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("reference values")).expect("JSON")
}

/// Compares a number with a reference value to 1e-6 relative (1e-12 absolute near zero).
fn close(got: &Json, want: &Json, what: &str) {
    let (g, w) = (
        got.as_f64().unwrap_or_else(|| panic!("{what}: got {got}")),
        want.as_f64()
            .unwrap_or_else(|| panic!("{what}: want {want}")),
    );
    assert!(
        (g - w).abs() <= 1e-6 * w.abs().max(1e-6),
        "{what}: got {g}, reference {w}"
    );
}

/// Posts `body` to a calculator and checks `fields` (response pointer, reference pointer).
async fn check(
    o: &TestOrigin,
    key: &str,
    path: &str,
    body: Json,
    expected: &Json,
    fields: &[(&str, &str)],
    case: &str,
) {
    let reply = o.request(Method::POST, path, Some(key), Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{case}: {}", reply.body);
    for (got, want) in fields {
        let got_value = reply
            .body
            .pointer(got)
            .unwrap_or_else(|| panic!("{case}: no {got} in {}", reply.body));
        let want_value = expected
            .pointer(want)
            .unwrap_or_else(|| panic!("{case}: no {want} in reference"));
        close(got_value, want_value, &format!("{case} {got}"));
    }
}

const EFFECT: [(&str, &str); 8] = [
    ("/absolute/estimate", "/absolute/estimate"),
    ("/absolute/std_error", "/absolute/std_error"),
    ("/absolute/p_value", "/absolute/p_value"),
    ("/absolute/ci/0", "/absolute/ci_lower"),
    ("/absolute/ci/1", "/absolute/ci_upper"),
    ("/relative/estimate", "/relative/estimate"),
    ("/relative/ci/0", "/relative/ci_lower"),
    ("/relative/ci/1", "/relative/ci_upper"),
];

#[tokio::test]
async fn reference_values_through_the_calculators() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let viewer = o.key("viewer").await;
    let r = reference();
    let mut checked = 0;
    for case in r["proportion"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let group = |g: &Json| json!({"units": g["units"], "successes": g["conversions"]});
        let body = json!({"kind": "proportion", "control": group(&case["control"]), "treatment": group(&case["treatment"]), "alpha": case["alpha"]});
        let fields: &[(&str, &str)] = if case["expected"]["relative"]["status"] == "estimated" {
            &EFFECT
        } else {
            &EFFECT[..5]
        };
        check(
            &o,
            &viewer,
            "/api/v1/analysis/compare",
            body,
            &case["expected"],
            fields,
            name,
        )
        .await;
        checked += 1;
    }
    for case in r["welch"].as_array().expect("cases") {
        let group =
            |g: &Json| json!({"units": g["n"], "sum": g["sum"], "sum_squares": g["sum_sq"]});
        let body = json!({"kind": "mean", "control": group(&case["control"]), "treatment": group(&case["treatment"]), "alpha": case["alpha"]});
        let mut fields = if case["expected"]["relative"]["status"] == "estimated" {
            EFFECT.to_vec()
        } else {
            EFFECT[..5].to_vec()
        };
        fields.push(("/df", "/absolute/df"));
        check(
            &o,
            &viewer,
            "/api/v1/analysis/compare",
            body,
            &case["expected"],
            &fields,
            case["name"].as_str().expect("name"),
        )
        .await;
        checked += 1;
    }
    for case in r["ratio"].as_array().expect("cases") {
        let group = |g: &Json| {
            json!({"units": g["n"], "sum": g["sum_num"], "sum_squares": g["sum_num_sq"], "sum_den": g["sum_den"],
                   "sum_den_squares": g["sum_den_sq"], "sum_num_den": g["sum_num_den"]})
        };
        let body = json!({"kind": "ratio", "control": group(&case["control"]), "treatment": group(&case["treatment"]), "alpha": case["alpha"]});
        let fields: &[(&str, &str)] = if case["expected"]["relative"]["status"] == "estimated" {
            &EFFECT
        } else {
            &EFFECT[..5]
        };
        check(
            &o,
            &viewer,
            "/api/v1/analysis/compare",
            body,
            &case["expected"],
            fields,
            case["name"].as_str().expect("name"),
        )
        .await;
        checked += 1;
    }
    for case in r["cuped"].as_array().expect("cases") {
        let group = |g: &Json| {
            json!({"units": g["n"], "sum": g["sum_y"], "sum_squares": g["sum_y_sq"], "covariate_sum": g["sum_x"],
                   "covariate_sum_squares": g["sum_x_sq"], "covariate_cross_sum": g["sum_xy"]})
        };
        let body = json!({"kind": "mean", "control": group(&case["control"]), "treatment": group(&case["treatment"]), "alpha": case["alpha"]});
        let fields = [
            ("/cuped/theta", "/theta"),
            ("/cuped/variance_reduction", "/variance_reduction"),
            ("/cuped/absolute/estimate", "/comparison/absolute/estimate"),
            (
                "/cuped/absolute/std_error",
                "/comparison/absolute/std_error",
            ),
            ("/cuped/absolute/p_value", "/comparison/absolute/p_value"),
        ];
        check(
            &o,
            &viewer,
            "/api/v1/analysis/compare",
            body,
            &case["expected"],
            &fields,
            case["name"].as_str().expect("name"),
        )
        .await;
        checked += 1;
    }
    for (family, kind) in [("beta_binomial", "proportion"), ("gaussian_bayes", "mean")] {
        for case in r[family].as_array().expect("cases") {
            let group = |g: &Json| match kind {
                "proportion" => json!({"units": g["units"], "successes": g["conversions"]}),
                _ => json!({"units": g["n"], "sum": g["sum"], "sum_squares": g["sum_sq"]}),
            };
            let body = json!({"kind": kind, "control": group(&case["control"]), "treatment": group(&case["treatment"])});
            let fields = [
                ("/bayesian/chance_to_win", "/chance_to_beat_control"),
                ("/bayesian/expected_loss", "/expected_loss"),
            ];
            check(
                &o,
                &viewer,
                "/api/v1/analysis/compare",
                body,
                &case["expected"],
                &fields,
                case["name"].as_str().expect("name"),
            )
            .await;
            checked += 1;
        }
    }
    for case in r["multiple"].as_array().expect("cases") {
        for (method, key) in [
            ("bonferroni", "bonferroni"),
            ("holm", "holm"),
            ("bh", "benjamini_hochberg"),
        ] {
            let body = json!({"p_values": case["p_values"], "method": method});
            let n = case["p_values"].as_array().expect("list").len();
            let fields: Vec<(String, String)> = (0..n)
                .map(|i| (format!("/adjusted/{i}"), format!("/{key}/{i}")))
                .collect();
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            check(
                &o,
                &viewer,
                "/api/v1/analysis/adjust",
                body,
                &case["expected"],
                &fields,
                case["name"].as_str().expect("name"),
            )
            .await;
            checked += 1;
        }
    }
    for case in r["group_sequential"].as_array().expect("cases") {
        let body = json!({"information_fractions": case["information_fractions"], "alpha": case["alpha"], "spending": case["spending"]});
        let n = case["expected"].as_array().expect("looks").len();
        let fields: Vec<(String, String)> = (0..n)
            .flat_map(|i| {
                [
                    (format!("/looks/{i}/z_boundary"), format!("/{i}/z_boundary")),
                    (
                        format!("/looks/{i}/cumulative_alpha"),
                        format!("/{i}/cumulative_alpha"),
                    ),
                ]
            })
            .collect();
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        check(
            &o,
            &viewer,
            "/api/v1/analysis/boundaries",
            body,
            &case["expected"],
            &fields,
            case["name"].as_str().expect("name"),
        )
        .await;
        checked += 1;
    }
    for case in r["srm"].as_array().expect("cases") {
        let body = json!({"counts": case["observed"], "weights": case["weights"]});
        let fields = [("/chi2", "/statistic"), ("/p_value", "/p_value")];
        check(
            &o,
            &viewer,
            "/api/v1/analysis/srm",
            body.clone(),
            &case["expected"],
            &fields,
            case["name"].as_str().expect("name"),
        )
        .await;
        let reply = o
            .request(
                Method::POST,
                "/api/v1/analysis/srm",
                Some(&viewer),
                Some(body),
            )
            .await;
        assert_eq!(reply.body["mismatch"], case["expected"]["mismatch"]);
        checked += 1;
    }
    for family in ["conversion_power", "mean_power", "design_power"] {
        for case in r[family].as_array().expect("cases") {
            let metric_kind = match family {
                "conversion_power" => "conversion",
                "mean_power" => "mean",
                _ => case["metric"].as_str().expect("metric"),
            };
            let mut body = json!({"metric": metric_kind, "baseline": case["baseline"], "mde": case["mde"]["value"], "mde_type": case["mde"]["kind"],
                                  "alpha": case["alpha"], "power": case["power"], "variants": case["variants"],
                                  "mode": "fixed_horizon"});
            if metric_kind == "mean" {
                body["std_dev"] = case["std_dev"].clone();
            }
            // The plans for the analysis that will run: its mode, looks and family.
            if let Some(test) = case["test"].as_object() {
                body["mode"] = test["mode"].clone();
                if let Some(looks) = test.get("looks") {
                    body["looks"] = looks.clone();
                    body["spending"] = test["spending"].clone();
                }
                body["secondary_metrics"] = case["secondary_metrics"].clone();
            }
            let reply = o
                .request(
                    Method::POST,
                    "/api/v1/analysis/power",
                    Some(&viewer),
                    Some(body),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(
                reply.body["units_per_variant"], case["expected"]["units_per_variant"],
                "{}",
                case["name"]
            );
            close(
                &reply.body["alpha_per_comparison"],
                &case["expected"]["alpha_per_comparison"],
                "alpha per comparison",
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 60,
        "only {checked} reference cases went through the calculators"
    );
    // Bad input is a 422 with the reason, never a 500.
    let reply = o
        .request(
            Method::POST,
            "/api/v1/analysis/adjust",
            Some(&viewer),
            Some(json!({"p_values": [1.5], "method": "bh"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reply = o.request(Method::POST, "/api/v1/analysis/compare", Some(&viewer), Some(json!({"kind": "proportion", "control": {"units": 10, "successes": 20}, "treatment": {"units": 10, "successes": 1}}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reply = o
        .request(
            Method::POST,
            "/api/v1/analysis/srm",
            Some(&viewer),
            Some(json!({"counts": [1], "weights": [1, 2]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    o.finish().await;
}

fn event_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Deterministic pseudo-random numbers in [0, 1).
fn uniform(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

/// Whether the unit at `index` of its variant is one of the ⌊n·rate⌋ that an exact rate over
/// the variant's first n units picks.
fn meets_rate(index: u64, rate: f64) -> bool {
    ((index + 1) as f64 * rate).floor() > (index as f64 * rate).floor()
}

/// Sends exposures for `units` users split by assignment through the origin's own evaluator,
/// and conversions / crashes at the given rates per variant.
///
/// The rates are met exactly, not drawn: the k-th unit of a variant converts when ⌊(k+1)·p⌋
/// passes ⌊k·p⌋. Which units a variant gets follows the experiment's random id, so drawn
/// outcomes made the assertions below fail now and then (a 60 % lift once measured 27 %, each
/// arm 2.4 standard errors off). These tests check the API's results and decisions on known
/// data; the statistics' error rates are checked by simulation in the statistics crate.
async fn simulate(
    o: &TestOrigin,
    sdk: &str,
    key: &str,
    experiment_id: &str,
    units: u64,
    conversion: &[(&str, f64)],
    crash: &[(&str, f64)],
) {
    let now = abx_origin_domain::clock::now_ms() - 3_600_000;
    let mut events = Vec::new();
    // Every call takes a block of event ids of its own. Ids derived from the experiment's
    // random id once collided between two experiments of one test (one run in sixteen), and
    // the origin rightly dropped the second experiment's events as repeated deliveries.
    static NEXT_ID_BLOCK: AtomicU64 = AtomicU64::new(1);
    let mut n = NEXT_ID_BLOCK.fetch_add(1, Ordering::Relaxed) << 32;
    let mut units_so_far: HashMap<String, u64> = HashMap::new();
    for u in 0..units {
        let unit = format!("{key}-user-{u}");
        let Some(variant) = common::assigned_variant(o, key, u).await else {
            continue;
        };
        let k = units_so_far.entry(variant.clone()).or_default();
        let index = *k;
        *k += 1;
        let variant = variant.as_str();
        n += 1;
        events.push(json!({"event_id": event_id(n), "kind": "exposure", "unit": unit, "experiment_id": experiment_id, "variant": variant, "timestamp": now}));
        let p = conversion
            .iter()
            .find(|(v, _)| *v == variant)
            .map_or(0.0, |(_, p)| *p);
        if meets_rate(index, p) {
            n += 1;
            events.push(json!({"event_id": event_id(n), "kind": "metric", "unit": unit, "event_type": "purchase", "timestamp": now + 1_000}));
        }
        let q = crash
            .iter()
            .find(|(v, _)| *v == variant)
            .map_or(0.0, |(_, p)| *p);
        if meets_rate(index, q) {
            n += 1;
            events.push(json!({"event_id": event_id(n), "kind": "metric", "unit": unit, "event_type": "crash", "timestamp": now + 2_000}));
        }
    }
    for chunk in events.chunks(2_000) {
        let reply = o
            .request(
                Method::POST,
                "/api/v1/events",
                Some(sdk),
                Some(json!({"events": chunk})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    common::drain(&o.state).await;
}

/// Issue 25, item 6: the calculator plans for the analysis that will run. Its default is the
/// experiments' default (sequential), which needs more units than one fixed-horizon look.
#[tokio::test]
async fn plans_follow_the_analysis_mode_and_family() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let viewer = o.key("viewer").await;
    let plan = |extra: Json| {
        let mut body = json!({"metric": "conversion", "baseline": 0.1, "mde": 0.1});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (o, viewer) = (&o, &viewer);
        async move {
            let reply = o
                .request(
                    Method::POST,
                    "/api/v1/analysis/power",
                    Some(viewer),
                    Some(body),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            reply.body
        }
    };
    let fixed = plan(json!({"mode": "fixed_horizon"})).await;
    let sequential = plan(json!({})).await;
    assert_eq!(sequential["mode"], "sequential");
    let units = |r: &Json| r["units_per_variant"].as_u64().expect("units");
    assert!(
        units(&sequential) > units(&fixed) * 3 / 2,
        "{sequential} vs {fixed}"
    );
    assert_eq!(
        sequential["fixed_horizon_units_per_variant"],
        fixed["units_per_variant"]
    );
    let gs = plan(json!({"mode": "group_sequential", "looks": 5})).await;
    assert!(
        units(&gs) > units(&fixed) && units(&gs) < units(&sequential),
        "{gs}"
    );
    // Two secondary metrics join the family: alpha per comparison 0.05 / 3.
    let family = plan(json!({"mode": "fixed_horizon", "secondary_metrics": 2})).await;
    close(
        &family["alpha_per_comparison"],
        &json!(0.05 / 3.0),
        "alpha per comparison",
    );
    let reply = o
        .request(
            Method::POST,
            "/api/v1/analysis/power",
            Some(&viewer),
            Some(json!({"metric": "conversion", "baseline": 0.1, "mde": 0.1, "mode": "group_sequential"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The analysis settings that decide: minimum duration in whole weeks, margins only on
    // the experiment's guardrails.
    o.create(
        "/api/v1/metrics",
        json!({"key": "purchase", "kind": "conversion", "event_type": "purchase"}),
    )
    .await;
    for (analysis, field) in [
        (
            json!({"min_duration_days": 10}),
            "analysis.min_duration_days",
        ),
        (
            json!({"guardrail_margins": {"purchase": 0.02}}),
            "analysis.guardrail_margins.purchase",
        ),
    ] {
        let reply = o
            .post(
                "/api/v1/experiments",
                json!({"key": "bad", "primary_metric": "purchase", "analysis": analysis,
                    "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert!(reply.body.to_string().contains(field), "{}", reply.body);
    }
    o.finish().await;
}

/// The metrics of the guardrail tests: a purchase conversion, and a crash rate to keep down.
async fn purchase_and_crash_rate(o: &TestOrigin) {
    o.create(
        "/api/v1/metrics",
        json!({"key": "purchase", "kind": "conversion", "event_type": "purchase"}),
    )
    .await;
    o.create("/api/v1/metrics", json!({"key": "crash_rate", "kind": "conversion", "event_type": "crash", "direction": "decrease"})).await;
}

async fn results_and_guardrails(o: &TestOrigin) {
    purchase_and_crash_rate(o).await;
    let sdk = o.key("sdk").await;
    let mut body = json!({"key": "checkout", "primary_metric": "purchase", "guardrail_metrics": ["crash_rate"],
        "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]});
    let id = o.create("/api/v1/experiments", body.clone()).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    // A strong true effect on conversion and a crash regression in the treatment.
    simulate(
        o,
        &sdk,
        "checkout",
        &id,
        6_000,
        &[("control", 0.10), ("treatment", 0.16)],
        &[("control", 0.01), ("treatment", 0.06)],
    )
    .await;

    let results = o.get(&format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results.status, StatusCode::OK, "{}", results.body);
    let r = &results.body;
    let control = &r["variants"]["control"];
    let treatment = &r["variants"]["treatment"];
    let total =
        control["impressions"].as_u64().expect("n") + treatment["impressions"].as_u64().expect("n");
    assert_eq!(total, 6_000);
    close(
        &control["rate"],
        &json!(
            control["conversions"].as_f64().expect("c")
                / control["impressions"].as_f64().expect("n")
        ),
        "seed rate",
    );
    assert_eq!(r["status"], "running");
    assert_eq!(r["srm"]["mismatch"], false, "{}", r["srm"]);
    assert_eq!(
        r["significant"], true,
        "a 60% lift on 6,000 units is significant: {r}"
    );
    assert!(r["lift"].as_f64().expect("lift") > 0.3, "{r}");
    let ci = r["confidence_interval"].as_array().expect("interval");
    assert!(ci[0].as_f64().expect("lo") > 0.0);
    let primary = r["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["role"] == "primary")
        .expect("primary");
    let comparison = &primary["comparisons"][0];
    for field in ["adjusted_p_value", "sequential", "bayesian", "cuped"] {
        assert!(
            !comparison[field].is_null(),
            "{field} missing: {comparison}"
        );
    }
    assert!(comparison["bayesian"]["chance_to_win"].as_f64().expect("p") > 0.99);
    // The guardrail is in alarm, and the recommendation says so rather than "ship".
    let guardrail = r["guardrails"]
        .as_array()
        .expect("guardrails")
        .iter()
        .find(|g| g["metric"] == "crash_rate")
        .expect("guardrail");
    assert_eq!(guardrail["status"], "alarm", "{guardrail}");
    assert!(
        r["recommended_action"]
            .as_str()
            .expect("action")
            .starts_with("Stop: guardrail crash_rate"),
        "{}",
        r["recommended_action"]
    );

    // The monitor pauses it, publishes a snapshot without it, and records the evidence.
    let before = o.state.published().version;
    let paused = abx_origin::guardrails::check_all(&o.state)
        .await
        .expect("monitor")
        .paused;
    assert_eq!(paused, vec!["checkout".to_string()]);
    assert!(o.state.published().version > before);
    let e = o.get(&format!("/api/v1/experiments/{id}")).await.body;
    assert_eq!(e["status"], "paused");
    assert!(
        e["status_reason"]
            .as_str()
            .expect("reason")
            .contains("crash_rate")
    );
    let reply = o
        .get("/api/v1/experiments/checkout/assignment?user_id=checkout-user-1")
        .await;
    assert_eq!(reply.body["reason"], "not_running");
    let audit = o.get(&format!("/api/v1/audit?entity_id={id}")).await.body;
    let alarm = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|a| a["action"] == "experiment.guardrail_alarm")
        .expect("alarm entry");
    assert_eq!(alarm["details"]["alarm"]["metric"], "crash_rate");
    assert_eq!(alarm["actor"], "guardrail-monitor");
    let outbox: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE topic = 'experiment.guardrail_alarm'",
    )
    .fetch_one(&o.state.db.pool)
    .await
    .expect("outbox");
    assert_eq!(outbox, 1);
    // Running the monitor again changes nothing.
    assert!(
        abx_origin::guardrails::check_all(&o.state)
            .await
            .expect("monitor")
            .paused
            .is_empty()
    );

    // Fixed horizon before the planned sample: the decision must wait.
    body["key"] = json!("planned");
    body["guardrail_metrics"] = json!([]);
    body["analysis"] = json!({"mode": "fixed_horizon", "planned_units_per_variant": 5_000, "min_duration_days": 0});
    let planned = o.create("/api/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{planned}/start"), json!({}))
        .await;
    simulate(
        o,
        &sdk,
        "planned",
        &planned,
        4_000,
        &[("control", 0.10), ("treatment", 0.20)],
        &[],
    )
    .await;
    let r = o
        .get(&format!(
            "/api/v1/experiments/{planned}/results?granularity=day"
        ))
        .await
        .body;
    let action = r["recommended_action"].as_str().expect("action");
    assert!(
        action.starts_with("Keep running: ") && action.contains("% of planned sample"),
        "{action}"
    );
    assert_eq!(
        r["significant"], false,
        "fixed horizon is not read before its planned size"
    );
    let series = r["series"].as_array().expect("daily series");
    assert!(!series.is_empty());
    assert_eq!(series.last().expect("point")["metric"], "purchase");

    // The kill switch pauses at once, with its own audit entry.
    let killed = o
        .post(
            &format!("/api/v1/experiments/{planned}/kill"),
            json!({"reason": "pager went off"}),
        )
        .await;
    assert_eq!(killed.status, StatusCode::OK);
    assert_eq!(killed.body["status"], "paused");
    let audit = o
        .get(&format!("/api/v1/audit?entity_id={planned}"))
        .await
        .body;
    assert_eq!(audit["items"][0]["action"], "experiment.killed");
    assert_eq!(audit["items"][0]["details"]["reason"], "pager went off");
}
on_every_backend!(results_guardrails_and_kill_switch, results_and_guardrails);

async fn sample_ratio_mismatch(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("purchase", "conversion"))
        .await;
    let sdk = o.key("sdk").await;
    let id = o
        .create("/api/v1/experiments", json!({"key": "srm", "primary_metric": "purchase", "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    // A broken client that reports treatment exposures only half the time.
    let now = abx_origin_domain::clock::now_ms() - 60_000;
    let mut events = Vec::new();
    for u in 0..4_000u64 {
        let variant = if u % 2 == 0 { "control" } else { "treatment" };
        if variant == "treatment" && u % 4 == 1 {
            continue;
        }
        events.push(json!({"event_id": event_id(u + 1), "kind": "exposure", "unit": format!("u{u}"), "experiment_id": id, "variant": variant, "timestamp": now}));
    }
    for chunk in events.chunks(1_000) {
        o.request(
            Method::POST,
            "/api/v1/events",
            Some(&sdk),
            Some(json!({"events": chunk})),
        )
        .await;
    }
    common::drain(&o.state).await;
    let r = o
        .get(&format!("/api/v1/experiments/{id}/results"))
        .await
        .body;
    assert_eq!(r["srm"]["mismatch"], true, "{}", r["srm"]);
    assert!(
        r["recommended_action"]
            .as_str()
            .expect("action")
            .starts_with("Invalid: sample ratio mismatch")
    );
}
on_every_backend!(srm_invalidates_results, sample_ratio_mismatch);

async fn interactions(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("purchase", "conversion"))
        .await;
    let sdk = o.key("sdk").await;
    let mut ids = Vec::new();
    for key in ["alpha", "beta"] {
        let id = o
            .create("/api/v1/experiments", json!({"key": key, "primary_metric": "purchase", "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}))
            .await["id"]
            .as_str()
            .expect("id")
            .to_string();
        o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
            .await;
        ids.push(id);
    }
    // Both treatments help alone, but together they cancel out: a strong interaction.
    let now = abx_origin_domain::clock::now_ms() - 60_000;
    let mut events = Vec::new();
    let mut n = 0;
    for u in 0..8_000u64 {
        let unit = format!("u{u}");
        let mut arms = Vec::new();
        for (key, id) in ["alpha", "beta"].iter().zip(&ids) {
            let variant = o
                .get(&format!(
                    "/api/v1/experiments/{key}/assignment?user_id={unit}"
                ))
                .await
                .body["variant"]
                .as_str()
                .expect("assigned")
                .to_string();
            n += 1;
            events.push(json!({"event_id": event_id(n), "kind": "exposure", "unit": unit, "experiment_id": id, "variant": variant, "timestamp": now}));
            arms.push(variant == "treatment");
        }
        let p = match (arms[0], arms[1]) {
            (false, false) => 0.10,
            (true, false) | (false, true) => 0.20,
            (true, true) => 0.10,
        };
        if uniform(u) < p {
            n += 1;
            events.push(json!({"event_id": event_id(n), "kind": "metric", "unit": unit, "event_type": "purchase", "timestamp": now + 1}));
        }
    }
    for chunk in events.chunks(2_000) {
        o.request(
            Method::POST,
            "/api/v1/events",
            Some(&sdk),
            Some(json!({"events": chunk})),
        )
        .await;
    }
    common::drain(&o.state).await;
    let reply = o.get("/api/v1/interactions").await.body;
    let items = reply["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{reply}");
    let pair = &items[0];
    assert_eq!(pair["shared_units"], 8_000);
    assert_eq!(pair["flagged"], true, "{pair}");
    assert!(pair["interaction"]["estimate"].as_f64().expect("estimate") < -0.1);
    // Assignment in one is independent of the other (different hash inputs). The p-value is
    // uniform under independence, so this fails a correct build once in a million runs.
    assert!(
        pair["independence_p_value"].as_f64().expect("p") > 1e-6,
        "{pair}"
    );
}
on_every_backend!(interaction_effects, interactions);

/// Issue 26: a split deployment. The pipeline process pauses an experiment on a guardrail
/// alarm and stores the snapshot; both admin processes serve it within `FOLLOW_INTERVAL`
/// (LISTEN wakes them at once on PostgreSQL), and their assignment endpoints stop assigning.
async fn split_deployment_follows_a_pause(o: &TestOrigin) {
    purchase_and_crash_rate(o).await;
    let sdk = o.key("sdk").await;
    let id = o
        .start_experiment(json!({"key": "split", "primary_metric": "purchase", "guardrail_metrics": ["crash_rate"],
            "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}))
        .await;
    // `o` is the first admin (and collector); a second admin and the pipeline run beside it.
    let admin = o.another_process("admin").await;
    let pipeline = o.another_process("pipeline").await;
    for state in [&o.state, &admin, &pipeline] {
        state.spawn_follower();
    }
    assert_eq!(admin.published().version, o.state.published().version);
    simulate(
        o,
        &sdk,
        "split",
        &id,
        3_000,
        &[("control", 0.10), ("treatment", 0.10)],
        &[("control", 0.01), ("treatment", 0.10)],
    )
    .await;
    let before = admin.published().version;
    let paused = abx_origin::guardrails::check_all(&pipeline)
        .await
        .expect("monitor")
        .paused;
    assert_eq!(paused, vec!["split".to_string()]);
    // On PostgreSQL the admins may already serve it by the time this line runs.
    let version = pipeline.published().version;
    assert!(version > before);
    let started = std::time::Instant::now();
    let bound = abx_origin::FOLLOW_INTERVAL + std::time::Duration::from_secs(1);
    for state in [&o.state, &admin] {
        while state.published().version < version {
            assert!(
                started.elapsed() < bound,
                "a process still serves {} after {:?}, not {version}",
                state.published().version,
                started.elapsed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let router = abx_origin::app(state.clone());
        let reply = common::call(
            &router,
            Method::GET,
            "/api/v1/experiments/split/assignment?user_id=anyone",
            None,
            &[("authorization", &format!("Bearer {sdk}"))],
        )
        .await;
        assert_eq!(reply.body["reason"], "not_running", "{}", reply.body);
    }
    println!(
        "every admin served the pause (version {version}) after {:?}",
        started.elapsed()
    );
    admin.close_databases().await;
    pipeline.close_databases().await;
}
on_both_backends!(
    split_deployment_follows_guardrail_pauses,
    split_deployment_follows_a_pause
);

/// One experiment the monitor cannot check (here a corrupt decision look, in production as
/// likely a warehouse answering `unavailable`) must not shield the experiments listed after
/// it: the harmful one is still paused, and the failure is reported with its key.
async fn a_failed_check_does_not_stop_the_round(o: &TestOrigin) {
    purchase_and_crash_rate(o).await;
    let sdk = o.key("sdk").await;
    let mut ids = Vec::new();
    // Created first, so listed (and checked) first.
    for key in ["unreadable", "harmful"] {
        ids.push(
            o.start_experiment(json!({"key": key, "primary_metric": "purchase", "guardrail_metrics": ["crash_rate"],
                "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]}))
                .await,
        );
    }
    simulate(
        o,
        &sdk,
        "harmful",
        &ids[1],
        3_000,
        &[("control", 0.10), ("treatment", 0.10)],
        &[("control", 0.01), ("treatment", 0.10)],
    )
    .await;
    sqlx::query(
        "INSERT INTO decision_looks (experiment_id, look, record, recorded_at_ms)
         VALUES ($1, 1, 'not a look', 0)",
    )
    .bind(&ids[0])
    .execute(&o.state.db.pool)
    .await
    .expect("corrupt look");

    let round = abx_origin::guardrails::check_all(&o.state)
        .await
        .expect("the round itself succeeds");
    assert_eq!(round.paused, vec!["harmful".to_string()]);
    let failed: Vec<&str> = round.failed.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(failed, ["unreadable"], "{:?}", round.failed);
    let unreadable = o.get(&format!("/api/v1/experiments/{}", ids[0])).await.body;
    assert_eq!(unreadable["status"], "running");
    let harmful = o.get(&format!("/api/v1/experiments/{}", ids[1])).await.body;
    assert_eq!(harmful["status"], "paused");
}
on_both_backends!(
    a_failed_guardrail_check_does_not_stop_the_round,
    a_failed_check_does_not_stop_the_round
);
