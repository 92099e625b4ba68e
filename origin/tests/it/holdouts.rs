//! A holdout's lifecycle (issue 28), through the public API on both stores: it holds units
//! out of experiments and of their shipped variants from its creation until an admin ends
//! it, ending is explicit, audited and final, and its size is fixed while anything it holds
//! units out of is live.

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
    let completed = o
        .post(
            &format!("/api/v1/experiments/{id}/complete"),
            json!({"ship": "treatment"}),
        )
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
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
    // An ended holdout's size no longer matters to anyone.
    let resized = resize(o).await;
    assert_eq!(resized.status, StatusCode::OK, "{}", resized.body);
}

on_both_backends!(
    holdout_lifecycle,
    holdouts_keep_units_out_of_shipped_variants_until_they_end
);
