//! Holdouts (issue 28), through the public API. Their lifecycle, on both stores: a holdout
//! holds units out of experiments and of their shipped variants from its creation until an
//! admin ends it, ending is explicit, audited and final, and its size is fixed while
//! anything it holds units out of is live. Their readout, on every backend: the arms units
//! log find the planted effect of what shipped, forged arms are refused, and nothing the
//! readout counts can move under it.

use crate::common;
use crate::common::{TestOrigin, experiment, metric};
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};

const USERS: usize = 400;

/// Each user's `(variant, reason)` for experiment `key`, asked of the origin.
async fn answers(o: &TestOrigin, key: &str) -> Vec<(Json, String)> {
    let mut out = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let reply = o
            .get(&format!(
                "/api/v1/experiments/{key}/assignment?user_id=user-{i}"
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let reason = reply.body["reason"].as_str().expect("reason").to_string();
        out.push((reply.body["variant"].clone(), reason));
    }
    out
}

/// The version of the snapshot the origin evaluates with.
async fn snapshot_version(o: &TestOrigin) -> u64 {
    let reply = o
        .get("/api/v1/experiments/checkout/assignment?user_id=anyone")
        .await;
    reply.body["snapshot_version"]
        .as_u64()
        .expect("snapshot_version")
}

/// Completes experiment `id`, shipping its `treatment`.
async fn ship(o: &TestOrigin, id: &str) {
    let completed = o
        .post(
            &format!("/api/v1/experiments/{id}/complete"),
            json!({"ship": "treatment"}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
}

/// Asks to change the holdout's size to 10 %.
async fn resize(o: &TestOrigin) -> common::Reply {
    o.send(
        Method::PATCH,
        "/api/v1/holdouts/long_term",
        Some(&o.admin),
        Some(json!({"percent": 10})),
        &[],
    )
    .await
}

async fn holdouts_keep_units_out_of_shipped_variants_until_they_end(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let created = o
        .create(
            "/api/v1/holdouts",
            json!({"key": "long_term", "percent": 50}),
        )
        .await;
    assert_eq!(created["status"], "running");
    assert!(created["started_at"].is_string() && created["ended_at"].is_null());

    let mut body = experiment("checkout", "conversion");
    body["holdout"] = json!("long_term");
    let id = o.start_experiment(body).await;
    // A second experiment keeps running through the holdout's end.
    let mut body = experiment("search", "conversion");
    body["holdout"] = json!("long_term");
    o.start_experiment(body).await;
    let searching = answers(o, "search").await;
    assert!(searching.iter().any(|(_, r)| r == "holdout"));
    // While it runs, the holdout's units get no variant.
    let running = answers(o, "checkout").await;
    let held = running.iter().filter(|(_, r)| r == "holdout").count();
    assert!((150..=250).contains(&held), "{held} of {USERS} held");
    assert!(running.iter().all(|(v, r)| v.is_null() == (r == "holdout")));

    // Shipped, the variant reaches everyone but the same held units.
    ship(o, &id).await;
    let shipped = answers(o, "checkout").await;
    for ((_, before), (variant, after)) in running.iter().zip(&shipped) {
        match before.as_str() {
            "holdout" => assert!(after == "holdout" && variant.is_null()),
            _ => assert!(after == "shipped" && variant == "treatment"),
        }
    }

    // Its size cannot change while a shipped variant respects it.
    let resized = resize(o).await;
    assert_eq!(resized.status, StatusCode::CONFLICT, "{}", resized.body);
    assert_eq!(resized.body["error"]["code"], "not_editable");

    // Ending it: admins only, with the current version, once.
    let viewer = o.key("viewer").await;
    let end = |key: String, headers: Vec<(&'static str, &'static str)>, holdout: &'static str| async move {
        let path = format!("/api/v1/holdouts/{holdout}/end");
        o.send(Method::POST, &path, Some(&key), None, &headers)
            .await
    };
    let refused = end(viewer, vec![], "long_term").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let stale = end(o.admin.clone(), vec![("if-match", "\"7\"")], "long_term").await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let missing = end(o.admin.clone(), vec![], "no_such_holdout").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    let before = snapshot_version(o).await;
    let ended = end(o.admin.clone(), vec![("if-match", "\"1\"")], "long_term").await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    assert_eq!(ended.body["status"], "ended");
    assert!(ended.body["ended_at"].is_string());
    assert_eq!(ended.body["version"], 2);
    assert!(snapshot_version(o).await > before, "ending republishes");
    let again = end(o.admin.clone(), vec![], "long_term").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["error"]["code"], "illegal_transition");

    // Ended, it holds nobody: the shipped variant reaches every unit, and the running
    // experiment assigns the units it held as any others.
    let released = answers(o, "checkout").await;
    assert!(
        released
            .iter()
            .all(|(v, r)| r == "shipped" && v == "treatment")
    );
    let searching = answers(o, "search").await;
    assert!(
        searching
            .iter()
            .all(|(v, r)| r == "assigned" && !v.is_null())
    );

    // No experiment may newly respect it; one that did keeps it through its edits.
    let mut body = experiment("pricing", "conversion");
    body["holdout"] = json!("long_term");
    let refused = o.post("/api/v1/experiments", body).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["details"][0]["field"], "holdout");
    let edited = o
        .send(
            Method::PATCH,
            "/api/v1/experiments/search",
            Some(&o.admin),
            Some(json!({"description": "still respects the ended holdout"})),
            &[],
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.body);
    let listed = o.get("/api/v1/holdouts/long_term").await.body;
    assert_eq!(listed["status"], "ended");
    let audit = o.get("/api/v1/audit?entity_type=holdout").await.body;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .collect();
    assert!(actions.contains(&"holdout.ended"), "{actions:?}");
    // Its readout stays, so its size stays too.
    let resized = resize(o).await;
    assert_eq!(resized.status, StatusCode::CONFLICT, "{}", resized.body);
}

on_both_backends!(
    holdout_lifecycle,
    holdouts_keep_units_out_of_shipped_variants_until_they_end
);

/// A stable pseudo-random number per unit, for planted outcomes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const READOUT_USERS: u64 = 2_000;

/// The holdout readout (issue 28): two shipped experiments respect a 20 % holdout; every
/// unit's answers name its arm, which the unit logs as an exposure to the holdout, as the
/// runtimes do; released units, who get both shipped changes, convert at 20 %, held units
/// at 5 %. `GET /holdouts/{id}/results` must find the planted effect of what shipped, and
/// the origin must refuse exposures that name the wrong arm or unit.
async fn holdout_readout(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let refused = o
        .post(
            "/api/v1/holdouts",
            json!({"key": "bad", "percent": 20, "metrics": ["no_such_metric"]}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["error"]["details"][0]["field"], "metrics[0]");
    let holdout = o
        .create(
            "/api/v1/holdouts",
            json!({"key": "everything_shipped", "percent": 20, "metrics": ["conversion"]}),
        )
        .await;
    assert_eq!(holdout["unit"], "user_id");
    let holdout_id = holdout["id"].as_str().expect("id").to_string();
    // Its experiments randomize by its unit.
    let mut body = experiment("by_device", "conversion");
    body["holdout"] = json!("everything_shipped");
    body["unit"] = json!("device_id");
    let refused = o.post("/api/v1/experiments", body).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["error"]["details"][0]["field"], "holdout");

    for key in ["checkout", "search"] {
        let mut body = experiment(key, "conversion");
        body["holdout"] = json!("everything_shipped");
        let id = o.start_experiment(body).await;
        ship(o, &id).await;
    }
    // A running experiment under the holdout with a QA override: browsers, which do not see
    // overrides, log the QA unit's arm, and ingest sets it apart.
    let mut body = experiment("qa_checked", "conversion");
    body["holdout"] = json!("everything_shipped");
    body["forced"] = json!({"qa-tester": "treatment"});
    o.start_experiment(body).await;

    let sdk = o.key("sdk").await;
    let now = abx_origin_domain::clock::now_ms() - 60_000;
    let mut events = Vec::new();
    let mut held = 0;
    let mut conversions = std::collections::HashMap::<String, f64>::new();
    let event_id = |n: usize| format!("00000000-0000-4000-8000-{n:012x}");
    for u in 0..READOUT_USERS {
        let mut arms = Vec::new();
        for key in ["checkout", "search"] {
            let reply = o
                .get(&format!(
                    "/api/v1/experiments/{key}/assignment?user_id=r{u}"
                ))
                .await;
            let step = &reply.body["holdout"];
            assert_eq!(step["holdout_id"], holdout_id.as_str(), "{}", reply.body);
            let arm = step["arm"].as_str().expect("arm").to_string();
            assert_eq!(reply.body["reason"] == "holdout", arm == "held");
            arms.push(arm);
        }
        assert_eq!(arms[0], arms[1], "one arm per unit and holdout");
        let arm = &arms[0];
        held += usize::from(arm == "held");
        // One exposure per unit and holdout, as the runtimes log it.
        events.push(
            json!({"event_id": event_id(events.len()), "kind": "exposure",
            "unit": format!("r{u}"), "experiment_id": holdout_id, "variant": arm,
            "timestamp": now}),
        );
        let rate = if arm == "held" { 50 } else { 200 };
        let converted = mix(u) % 1_000 < rate;
        *conversions.entry(arm.clone()).or_insert(0.0) += f64::from(u8::from(converted));
        if converted {
            events.push(json!({"event_id": event_id(events.len()), "kind": "metric",
                "unit": format!("r{u}"), "event_type": "conversion", "timestamp": now + 1_000}));
        }
    }
    assert!(
        (300..=500).contains(&held),
        "{held} of {READOUT_USERS} held"
    );
    // Forged: the other arm, and a unit attribute no respecting experiment uses.
    let other = |arm: &str| if arm == "held" { "released" } else { "held" };
    let first_arm = events[0]["variant"].as_str().expect("arm").to_string();
    // With one valid event beside them: a batch with none is refused whole (400).
    let forged = [
        json!({"event_id": event_id(events.len() + 2), "kind": "metric", "unit": "nobody",
            "event_type": "conversion", "timestamp": now}),
        json!({"event_id": event_id(events.len()), "kind": "exposure", "unit": "r0",
            "experiment_id": holdout_id, "variant": other(&first_arm), "timestamp": now}),
        json!({"event_id": event_id(events.len() + 1), "kind": "exposure", "unit": "r0",
            "unit_attribute": "device_id",
            "experiment_id": holdout_id, "variant": first_arm, "timestamp": now}),
        json!({"event_id": event_id(events.len() + 3), "kind": "exposure", "unit": "qa-tester",
            "experiment_id": holdout_id, "variant": "released", "timestamp": now}),
        json!({"event_id": event_id(events.len() + 4), "kind": "exposure", "unit": "qa-tester",
            "experiment_id": holdout_id, "variant": "held", "timestamp": now}),
    ];
    for chunk in events.chunks(1_000) {
        let reply = o.send_events(&sdk, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let reply = o.send_events(&sdk, &forged).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let rejected = reply.body["rejected"].as_array().expect("rejected");
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|r| r["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(reasons.len(), 4, "{}", reply.body);
    // The other arm is forged; another unit may come from an experiment that kept an older
    // holdout of another unit, so it is refused without counting as forged; a QA unit's true
    // arm is set apart, and its other arm is forged like anyone's.
    assert!(reasons[0].starts_with("variant_mismatch"), "{reasons:?}");
    assert!(reasons[1].starts_with("holdout_unit"), "{reasons:?}");
    let mut qa: Vec<&str> = reasons[2..]
        .iter()
        .map(|r| r.split(':').next().unwrap())
        .collect();
    qa.sort_unstable();
    assert_eq!(qa, ["forced_unit", "variant_mismatch"], "{reasons:?}");

    common::drain(&o.state).await;

    let results = o.get("/api/v1/holdouts/everything_shipped/results").await;
    assert_eq!(results.status, StatusCode::OK, "{}", results.body);
    let body = &results.body;
    assert_eq!(body["experiment_id"], holdout_id.as_str());
    assert_eq!(body["control"], "held");
    assert_eq!(body["variants"]["held"]["impressions"], held);
    assert_eq!(
        body["variants"]["released"]["impressions"],
        READOUT_USERS as usize - held
    );
    assert_eq!(body["srm"]["mismatch"], false, "{body}");
    let comparison = &body["metrics"][0]["comparisons"][0];
    assert_eq!(comparison["variant"], "released");
    assert_eq!(comparison["significant"], true, "{body}");
    assert_eq!(comparison["improvement"], true, "{body}");
    // The lift of what shipped, exactly as the planted events give it.
    let rate = |arm: &str, units: usize| conversions[arm] / units as f64;
    let planted = rate("released", READOUT_USERS as usize - held) / rate("held", held) - 1.0;
    let lift = comparison["relative"]["estimate"].as_f64().expect("lift");
    assert!(
        (lift - planted).abs() < 1e-9,
        "lift {lift}, planted {planted}"
    );
    let verdict = body["recommended_action"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("What shipped improves conversion"),
        "{verdict}"
    );
    let forged = &body["mismatched_exposures"];
    let forged = forged["released"].as_i64().unwrap_or(0) + forged["held"].as_i64().unwrap_or(0);
    // r0's other arm and the QA unit's; the QA unit's true arm is not forged.
    assert_eq!(forged, 2, "{body}");
    let missing = o.get("/api/v1/holdouts/no_such_holdout/results").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // What the readout counts cannot move under it: the holdout's unit, an experiment's
    // unit away from it, and the definition of a metric it reads.
    let patch = |path: &'static str, body: Json| async move {
        o.send(Method::PATCH, path, Some(&o.admin), Some(body), &[])
            .await
    };
    let moved = patch(
        "/api/v1/holdouts/everything_shipped",
        json!({"unit": "device_id"}),
    )
    .await;
    assert_eq!(moved.status, StatusCode::CONFLICT, "{}", moved.body);
    let mut body = experiment("draft_nav", "conversion");
    body["holdout"] = json!("everything_shipped");
    assert_eq!(
        o.post("/api/v1/experiments", body).await.status,
        StatusCode::CREATED
    );
    let moved = patch(
        "/api/v1/experiments/draft_nav",
        json!({"unit": "device_id"}),
    )
    .await;
    assert_eq!(
        moved.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        moved.body
    );
    // Drafts count too: a holdout that only a draft respects keeps its size.
    o.create(
        "/api/v1/holdouts",
        json!({"key": "next_quarter", "percent": 10}),
    )
    .await;
    let mut body = experiment("draft_only", "conversion");
    body["holdout"] = json!("next_quarter");
    assert_eq!(
        o.post("/api/v1/experiments", body).await.status,
        StatusCode::CREATED
    );
    let resized = patch("/api/v1/holdouts/next_quarter", json!({"percent": 20})).await;
    assert_eq!(resized.status, StatusCode::CONFLICT, "{}", resized.body);
    let redefined = patch(
        "/api/v1/metrics/conversion",
        json!({"event_type": "signup"}),
    )
    .await;
    assert_eq!(redefined.status, StatusCode::CONFLICT, "{}", redefined.body);
}

backend_tests!(
    holdout_readouts,
    holdout_readout,
    |s: &mut abx_origin::Settings| s.verify_exposures = true,
    sqlite => Sqlite,
    postgres => Postgres,
    warehouse => Warehouse
);

/// Readouts close at the end (issue 28): once an experiment completes or a holdout ends,
/// every unit gets what shipped, so events stamped later must count nowhere, however late
/// they arrive, while events stamped before the end still count when they arrive after it.
/// Twenty units log an exposure to an experiment and to a holdout, eight convert; after
/// both end, every unit converts again, a new unit is exposed, one unit's late conversion
/// from before the end arrives, and a unit whose exposure from before the end arrives after
/// its conversion from after it (so that the pipeline finds the conversion among the
/// unit's earlier events) adds an impression without a conversion.
async fn readouts_stop_at_the_end(o: &TestOrigin) {
    use abx_origin_domain::clock::now_ms;
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let holdout = o
        .create(
            "/api/v1/holdouts",
            json!({"key": "long_term", "percent": 25, "metrics": ["conversion"]}),
        )
        .await;
    let holdout_id = holdout["id"].as_str().expect("id").to_string();
    let experiment_id = o
        .start_experiment(experiment("checkout", "conversion"))
        .await;
    let sdk = o.key("sdk").await;
    let mut sequence = 0;
    let mut event = |unit: &str, fields: Json, ts: i64| {
        sequence += 1;
        let mut e = json!({"event_id": format!("00000000-0000-4000-8000-{sequence:012x}"),
            "unit": unit, "timestamp": ts});
        e.as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        e
    };
    let exposures = |unit: &str, i: usize| {
        let variant = if i.is_multiple_of(2) {
            "control"
        } else {
            "treatment"
        };
        let arm = if i < 5 { "held" } else { "released" };
        [
            json!({"kind": "exposure", "experiment_id": experiment_id, "variant": variant}),
            json!({"kind": "exposure", "experiment_id": holdout_id, "variant": arm}),
        ]
        .map(|fields| (unit.to_string(), fields))
    };
    let conversion = json!({"kind": "metric", "event_type": "conversion"});
    let sdk = &sdk;
    let send = |events: Vec<Json>| async move {
        let reply = o.send_events(sdk, &events).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    };

    let start = now_ms() - 60_000;
    let mut before = Vec::new();
    for i in 0..20 {
        let unit = format!("u{i}");
        for (unit, fields) in exposures(&unit, i) {
            before.push(event(&unit, fields, start));
        }
        if matches!(i, 0..=3 | 10..=13) {
            before.push(event(&unit, conversion.clone(), start + 1_000));
        }
    }
    send(before).await;
    common::drain(&o.state).await;

    let last_moment_before = now_ms() - 1_000;
    ship(o, &experiment_id).await;
    let ended = o
        .send(
            Method::POST,
            "/api/v1/holdouts/long_term/end",
            Some(&o.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    let later = now_ms() + 1_000;

    // The straggler's conversion from after the end is applied before its exposure.
    send(vec![event("straggler", conversion.clone(), later)]).await;
    common::drain(&o.state).await;
    let mut after = Vec::new();
    for (unit, fields) in exposures("straggler", 0) {
        after.push(event(&unit, fields, last_moment_before - 1_000));
    }
    for i in 0..20 {
        after.push(event(&format!("u{i}"), conversion.clone(), later));
    }
    for (unit, fields) in exposures("newcomer", 1) {
        after.push(event(&unit, fields, later));
    }
    after.push(event("newcomer", conversion.clone(), later));
    after.push(event("u4", conversion.clone(), last_moment_before));
    send(after).await;
    common::drain(&o.state).await;

    // (impressions, conversions) of each variant, as the planted events give them.
    let expected = [
        ("/api/v1/experiments/checkout/results", "control", (11, 5)),
        ("/api/v1/experiments/checkout/results", "treatment", (10, 4)),
        ("/api/v1/holdouts/long_term/results", "held", (6, 5)),
        ("/api/v1/holdouts/long_term/results", "released", (15, 4)),
    ];
    for (path, variant, (impressions, conversions)) in expected {
        let results = o.get(path).await;
        assert_eq!(results.status, StatusCode::OK, "{}", results.body);
        assert_eq!(results.body["status"], "completed", "{}", results.body);
        let counted = &results.body["variants"][variant];
        assert_eq!(
            (
                counted["impressions"].as_u64(),
                counted["conversions"].as_f64()
            ),
            (Some(impressions), Some(conversions as f64)),
            "{path} {variant}: {}",
            results.body
        );
    }
}

on_every_backend!(readouts_close_at_the_end, readouts_stop_at_the_end);
