//! The admin API, end to end in-process, on SQLite and on PostgreSQL.

use std::collections::HashMap;

use crate::common;
use crate::common::{TestOrigin, experiment, metric};
use abx_core::{Context, Evaluator};
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};

async fn seed_metrics(o: &TestOrigin) {
    for (key, kind) in [
        ("checkout_conversion_rate", "conversion"),
        ("crash_rate", "conversion"),
        ("revenue", "mean"),
    ] {
        o.create("/api/v1/metrics", metric(key, kind)).await;
    }
}

fn seed_body() -> Json {
    json!({"name": "checkout_button_color", "key": "checkout_button_color",
        "hypothesis": "Green button increases conversion by 5%", "layer": "checkout_ui",
        "traffic_percent": 20, "unit": "user_id", "targeting": {"all": [{"attr": "country", "op": "in", "value": ["US","CA"]}]},
        "variants": [{"name": "control", "weight": 50, "config": {"button_color": "blue"}},
                     {"name": "treatment", "weight": 50, "config": {"button_color": "green"}}],
        "primary_metric": "checkout_conversion_rate", "secondary_metrics": [],
        "guardrail_metrics": ["crash_rate"], "holdout": null, "forced": {}})
}

async fn lifecycle(o: &TestOrigin) {
    seed_metrics(o).await;
    o.create("/api/v1/layers", json!({"key": "checkout_ui"}))
        .await;
    let created = o.create("/api/v1/experiments", seed_body()).await;
    assert_eq!(created["status"], "draft");
    assert_eq!(created["traffic_percent"], 20.0);
    assert_eq!(created["layer"], "checkout_ui");
    let id = created["id"].as_str().expect("id").to_string();
    assert!(
        abx_core::snapshot::Id::parse(&id).is_some(),
        "ids are UUIDs"
    );

    // Get by id and by key; duplicate keys conflict.
    assert_eq!(
        o.get(&format!("/api/v1/experiments/{id}")).await.body["key"],
        "checkout_button_color"
    );
    assert_eq!(
        o.get("/api/v1/experiments/checkout_button_color")
            .await
            .body["id"],
        id
    );
    assert_eq!(
        o.post("/api/v1/experiments", seed_body()).await.status,
        StatusCode::CONFLICT
    );

    // Illegal transitions are 409 with a reason.
    for action in ["pause", "resume", "complete", "archive"] {
        let reply = o
            .post(&format!("/api/v1/experiments/{id}/{action}"), json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{action} from draft");
        assert_eq!(reply.body["error"]["code"], "illegal_transition");
    }
    let started = o
        .post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert_eq!(started.body["status"], "running");
    assert_eq!(
        started.body["slot_ranges"],
        json!([{"start_percent": 0.0, "end_percent": 20.0}])
    );
    assert!(started.body["started_at"].is_string());
    assert_eq!(
        o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        o.post(&format!("/api/v1/experiments/{id}/pause"), json!({}))
            .await
            .body["status"],
        "paused"
    );
    assert_eq!(
        o.post(&format!("/api/v1/experiments/{id}/resume"), json!({}))
            .await
            .body["status"],
        "running"
    );

    // Search is a case-insensitive substring of key or name, where `_` and `%` are literal.
    for (q, found) in [
        ("checkout_button", true),
        ("CHECKOUT", true),
        ("checkout%25button", false),
        ("checkoutXbutton", false),
    ] {
        let items = o.get(&format!("/api/v1/experiments?q={q}")).await.body["items"].clone();
        assert_eq!(
            items.as_array().expect("items").len(),
            usize::from(found),
            "q={q}"
        );
    }

    // Shipping an unknown variant is invalid; shipping a real one completes and frees slots.
    let bad_ship = o
        .post(
            &format!("/api/v1/experiments/{id}/complete"),
            json!({"ship": "purple"}),
        )
        .await;
    assert_eq!(bad_ship.status, StatusCode::UNPROCESSABLE_ENTITY);
    let done = o
        .post(
            &format!("/api/v1/experiments/{id}/complete"),
            json!({"ship": "treatment"}),
        )
        .await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["shipped_variant"], "treatment");
    assert_eq!(done.body["slot_ranges"], json!([]));
    let layer = o.get("/api/v1/layers/checkout_ui").await;
    assert_eq!(layer.body["free_percent"], 100.0);

    // Everyone now gets the shipped config (the experiment respects no holdout), with no
    // exposure.
    let reply = o
        .get("/api/v1/experiments/checkout_button_color/assignment?user_id=anyone&country=FR")
        .await;
    assert_eq!(reply.body["reason"], "shipped");
    assert_eq!(reply.body["config"], json!({"button_color": "green"}));
    assert_eq!(reply.body["log_exposure"], false);

    assert_eq!(
        o.post(&format!("/api/v1/experiments/{id}/archive"), json!({}))
            .await
            .body["status"],
        "archived"
    );
    // Archived experiments leave the snapshot and the default listing.
    let reply = o
        .get("/api/v1/experiments/checkout_button_color/assignment?user_id=u1")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(o.get("/api/v1/experiments").await.body["items"], json!([]));
    assert_eq!(
        o.get("/api/v1/experiments?status=archived").await.body["items"][0]["id"],
        id
    );

    // The audit log tells the story, newest first.
    let audit = o
        .get(&format!(
            "/api/v1/audit?entity_type=experiment&entity_id={id}"
        ))
        .await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "experiment.archived",
            "experiment.completed",
            "experiment.resumed",
            "experiment.paused",
            "experiment.started",
            "experiment.created"
        ]
    );
}
on_both_backends!(experiment_lifecycle, lifecycle);

async fn validation(o: &TestOrigin) {
    seed_metrics(o).await;
    let reply = o
        .post(
            "/api/v1/experiments",
            json!({"key": "bad key!", "traffic_percent": 101, "layer": "missing",
                   "variants": [{"name": "a", "weight": 70}, {"name": "b", "weight": 20.5}],
                   "primary_metric": "nope", "targeting": {"attr": "x", "op": "matches", "value": 1}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["error"]["code"], "validation_failed");
    let fields: Vec<&str> = reply.body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["field"].as_str().expect("field"))
        .collect();
    for field in [
        "key",
        "traffic_percent",
        "layer",
        "variants",
        "primary_metric",
        "targeting",
    ] {
        assert!(fields.contains(&field), "missing {field} in {fields:?}");
    }
    // Malformed JSON and missing fields are 400, in the same error shape.
    let admin = o.admin.clone();
    let reply = o
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(&admin),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["code"], "invalid_json");
    let reply = o
        .post("/api/v1/experiments", json!({"key": "no_variants"}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("variants")
    );
    let reply = o
        .post(
            "/api/v1/experiments",
            json!({"key": "k", "variants": [], "primary_metric": "revenue", "surprise": 1}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    // Wrong content type.
    let reply = o
        .send(
            Method::POST,
            "/api/v1/layers",
            Some(&admin),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // A query or a path segment that does not parse, on any route, is a 400 in the same
    // shape (it was axum's plain text on most routes).
    for (path, code) in [
        ("/api/v1/layers?limit=abc", "invalid_query"),
        ("/api/v1/metrics?limit=-1", "invalid_query"),
        ("/api/v1/flags?limit=x", "invalid_query"),
        ("/api/v1/experiments/%FF", "invalid_path"),
        ("/api/v1/segments/%C3%28", "invalid_path"),
    ] {
        let reply = o.get(path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.body["error"]["code"], code, "{path}: {}", reply.body);
    }
    // Objects are found by id or key: a key that reads as an id is refused.
    let uuid_key = json!({"key": "6f1c2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f", "name": "n",
                          "condition": {"attr": "country", "op": "eq", "value": "US"}});
    let reply = o.post("/api/v1/segments", uuid_key).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["details"][0]["field"], "key");
    // A context whose lists would cost a request seconds to test is refused.
    for (items, status) in [(100, StatusCode::OK), (101, StatusCode::BAD_REQUEST)] {
        let context = json!({"context": {"user_id": "u1", "tags": vec!["a"; items]}});
        let reply = o.post("/api/v1/evaluate", context).await;
        assert_eq!(reply.status, status, "{items} items: {}", reply.body);
    }
    // Unknown routes and methods answer JSON too.
    assert_eq!(
        o.get("/api/v1/nowhere").await.body["error"]["code"],
        "not_found"
    );
    let reply = o
        .request(Method::PUT, "/api/v1/experiments", Some(&admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.body["error"]["code"], "method_not_allowed");
    assert_eq!(
        o.get("/api/v1/experiments/nope").await.status,
        StatusCode::NOT_FOUND
    );
    // Metric, layer, holdout, segment and flag validation.
    assert_eq!(
        o.post(
            "/api/v1/metrics",
            json!({"key": "r", "kind": "ratio", "event_type": "revenue"})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        o.post("/api/v1/holdouts", json!({"key": "h", "percent": 150}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        o.post("/api/v1/layers", json!({"key": "l", "unit": "not valid"}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let reply = o
        .post(
            "/api/v1/flags",
            json!({"key": "f", "rules": [{"rollout_percent": 10}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}
on_both_backends!(validation_errors, validation);

async fn roles(o: &TestOrigin) {
    seed_metrics(o).await;
    let viewer = o.key("viewer").await;
    let sdk = o.key("sdk").await;
    assert_eq!(
        o.request(Method::GET, "/api/v1/experiments", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.request(
            Method::GET,
            "/api/v1/experiments",
            Some("abx_admin_wrong"),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.request(Method::GET, "/api/v1/experiments", Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    let reply = o
        .request(
            Method::POST,
            "/api/v1/experiments",
            Some(&viewer),
            Some(experiment("e", "revenue")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.body["error"]["code"], "forbidden");
    assert_eq!(
        o.request(Method::GET, "/api/v1/experiments", Some(&sdk), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        o.request(Method::GET, "/api/v1/snapshot", Some(&sdk), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        o.request(Method::GET, "/api/v1/keys", Some(&viewer), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Keys are listed without secrets, and revocation takes effect at once.
    let keys = o.get("/api/v1/keys").await;
    assert!(
        !keys
            .bytes
            .windows(viewer.len())
            .any(|w| w == viewer.as_bytes()),
        "secrets never come back"
    );
    let viewer_id = keys.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["role"] == "viewer")
        .expect("viewer")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let admin = o.admin.clone();
    assert_eq!(
        o.request(
            Method::DELETE,
            &format!("/api/v1/keys/{viewer_id}"),
            Some(&admin),
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        o.request(Method::GET, "/api/v1/experiments", Some(&viewer), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // The last admin key cannot be revoked.
    let admin_id = keys.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["role"] == "admin")
        .expect("admin")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        o.request(
            Method::DELETE,
            &format!("/api/v1/keys/{admin_id}"),
            Some(&admin),
            None
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    // Keys also work from the x-abx-key header and the key query parameter.
    assert_eq!(
        o.send(
            Method::GET,
            "/api/v1/snapshot",
            None,
            None,
            &[("x-abx-key", &sdk)]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        o.request(
            Method::GET,
            &format!("/api/v1/snapshot?key={sdk}"),
            None,
            None
        )
        .await
        .status,
        StatusCode::OK
    );
}
on_both_backends!(keys_and_roles, roles);

async fn layers(o: &TestOrigin) {
    seed_metrics(o).await;
    o.create("/api/v1/layers", json!({"key": "ui"})).await;
    let mut ids = Vec::new();
    for (key, traffic) in [("a", 40), ("b", 40), ("c", 30)] {
        let mut body = experiment(key, "revenue");
        body["layer"] = json!("ui");
        body["traffic_percent"] = json!(traffic);
        ids.push(
            o.create("/api/v1/experiments", body).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    assert_eq!(
        o.post(&format!("/api/v1/experiments/{}/start", ids[0]), json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        o.post(&format!("/api/v1/experiments/{}/start", ids[1]), json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let full = o
        .post(&format!("/api/v1/experiments/{}/start", ids[2]), json!({}))
        .await;
    assert_eq!(full.status, StatusCode::CONFLICT);
    assert_eq!(full.body["error"]["code"], "layer_full");
    assert_eq!(full.body["error"]["details"]["free_percent"], 20.0);
    assert!(
        full.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("20% is free")
    );
    // Completing `a` frees its slots; `c` then takes the lowest free ones.
    o.post(
        &format!("/api/v1/experiments/{}/complete", ids[0]),
        json!({}),
    )
    .await;
    let c = o
        .post(&format!("/api/v1/experiments/{}/start", ids[2]), json!({}))
        .await;
    assert_eq!(
        c.body["slot_ranges"],
        json!([{"start_percent": 0.0, "end_percent": 30.0}])
    );
    let map = o.get("/api/v1/layers/ui").await.body;
    assert_eq!(map["free_percent"], 30.0);
    assert_eq!(map["allocations"].as_array().expect("allocations").len(), 2);

    // A unit is in at most one experiment of the layer.
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..2_000 {
        let reply = o
            .post(
                "/api/v1/evaluate",
                json!({"context": {"user_id": format!("user-{i}")}}),
            )
            .await;
        let assigned: Vec<&str> = ["b", "c"]
            .into_iter()
            .filter(|k| reply.body["experiments"][k]["variant"].is_string())
            .collect();
        assert!(assigned.len() <= 1, "user-{i} is in {assigned:?}");
        *counts
            .entry(assigned.first().copied().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    // About 40% in b, 30% in c, 30% in neither.
    for (key, share) in [("b", 0.4), ("c", 0.3), ("none", 0.3)] {
        let observed = f64::from(counts[key]) / 2_000.0;
        assert!((observed - share).abs() < 0.05, "{key}: {observed}");
    }
}
on_both_backends!(layer_slots, layers);

async fn editing(o: &TestOrigin) {
    seed_metrics(o).await;
    o.create("/api/v1/layers", json!({"key": "ui"})).await;
    let mut body = experiment("edit_me", "revenue");
    body["layer"] = json!("ui");
    body["traffic_percent"] = json!(10);
    let created = o.create("/api/v1/experiments", body).await;
    let path = format!(
        "/api/v1/experiments/{}",
        created["id"].as_str().expect("id")
    );
    // Drafts take any edit.
    let reply = o.patch(&path, json!({"variants": [{"name": "control", "weight": 40}, {"name": "treatment", "weight": 60}]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);
    o.post(&format!("{path}/start"), json!({})).await;
    // Running: safe edits pass, unsafe ones are 409 with the reason.
    let reply = o
        .patch(
            &path,
            json!({"description": "now with a description", "guardrail_metrics": ["crash_rate"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = o.patch(&path, json!({"variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]})).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("already assigned")
    );
    assert_eq!(
        o.patch(&path, json!({"traffic_percent": 5})).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        o.patch(
            &path,
            json!({"targeting": {"attr": "country", "op": "eq", "value": "US"}})
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        o.patch(&path, json!({"key": "renamed"})).await.status,
        StatusCode::CONFLICT
    );
    // The test being read is fixed at the start (issue 25, item 11).
    let reanalysed = o
        .patch(
            &path,
            json!({"analysis": {"mode": "sequential", "alpha": 0.1}}),
        )
        .await;
    assert_eq!(
        reanalysed.status,
        StatusCode::CONFLICT,
        "{}",
        reanalysed.body
    );
    assert_eq!(reanalysed.body["error"]["code"], "not_editable");
    assert!(
        reanalysed.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("analysis settings")
    );
    // So is the family its decisions are corrected over; guardrails can only be added.
    for (change, what) in [
        (
            json!({"secondary_metrics": ["crash_rate"]}),
            "secondary metrics",
        ),
        (json!({"guardrail_metrics": []}), "removing the guardrail"),
    ] {
        let reply = o.patch(&path, change).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
        let message = reply.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(what), "{message}");
    }
    // A traffic increase keeps the old slots and adds new ones.
    let grown = o.patch(&path, json!({"traffic_percent": 25})).await;
    assert_eq!(grown.status, StatusCode::OK, "{}", grown.body);
    assert_eq!(
        grown.body["slot_ranges"],
        json!([{"start_percent": 0.0, "end_percent": 25.0}])
    );
    // Beyond the layer's room it is a conflict.
    let mut other = experiment("other", "revenue");
    other["layer"] = json!("ui");
    other["traffic_percent"] = json!(70);
    let other_id = o.create("/api/v1/experiments", other).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{other_id}/start"), json!({}))
        .await;
    assert_eq!(
        o.patch(&path, json!({"traffic_percent": 40})).await.body["error"]["code"],
        "layer_full"
    );
    // If-Match: the current version passes, a stale one is 412.
    let version = o.get(&path).await.body["version"]
        .as_i64()
        .expect("version");
    let admin = o.admin.clone();
    let stale = o
        .send(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"owner": "a"})),
            &[("if-match", &format!("\"{}\"", version - 1))],
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let fresh = o
        .send(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({"owner": "a"})),
            &[("if-match", &format!("\"{version}\""))],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.headers["etag"], format!("\"{}\"", version + 1));
}
on_both_backends!(editing_rules, editing);

async fn snapshots(o: &TestOrigin) {
    seed_metrics(o).await;
    // A server key reads the full snapshot, QA overrides included (browser keys: below).
    let sdk = o.key("server").await;
    let first = o
        .request(Method::GET, "/api/v1/snapshot", Some(&sdk), None)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers["content-type"],
        "application/vnd.abx.snapshot"
    );
    let cache = first.headers["cache-control"].to_str().expect("text");
    assert!(
        cache.contains("max-age=")
            && cache.contains("stale-while-revalidate")
            && cache.contains("stale-if-error")
    );
    let etag = first.headers["etag"].to_str().expect("etag").to_string();
    let v1 = first.headers["x-abx-snapshot-version"]
        .to_str()
        .expect("v")
        .parse::<u64>()
        .expect("number");

    let not_modified = o
        .send(
            Method::GET,
            "/api/v1/snapshot",
            Some(&sdk),
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.bytes.is_empty());

    // Every change that alters the snapshot raises the version; the new bytes verify with
    // the published public key and evaluate like the origin does.
    let mut body = experiment("snap", "revenue");
    body["forced"] = json!({"qa-user": "treatment"});
    let id = o.create("/api/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    let second = o
        .send(
            Method::GET,
            "/api/v1/snapshot",
            Some(&sdk),
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(second.status, StatusCode::OK);
    let v2: u64 = second.headers["x-abx-snapshot-version"]
        .to_str()
        .expect("v")
        .parse()
        .expect("number");
    assert!(v2 > v1);
    let key = o
        .request(Method::GET, "/api/v1/snapshot/key", None, None)
        .await;
    assert_eq!(key.body["algorithm"], "ed25519");
    let public_key: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &key.body["public_key"].as_str().expect("hex")[2 * i..2 * i + 2],
                16,
            )
            .expect("hex")
        })
        .collect();
    let evaluator =
        Evaluator::from_verified_bytes(&second.bytes, &public_key).expect("signed by the origin");
    let mut tampered = second.bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    assert!(Evaluator::from_verified_bytes(&tampered, &public_key).is_err());
    for user in ["qa-user", "u-1", "u-2", "ユーザー", "42"] {
        let local = evaluator
            .experiment("snap", &Context::new().with("user_id", user), 0)
            .expect("experiment");
        let remote = o
            .get(&format!(
                "/api/v1/experiments/snap/assignment?user_id={}",
                urlencode(user)
            ))
            .await
            .body;
        assert_eq!(remote["variant"].as_str(), local.variant, "{user}");
        assert_eq!(remote["reason"], local.reason.as_str(), "{user}");
    }
    assert_eq!(
        o.get("/api/v1/experiments/snap/assignment?user_id=qa-user")
            .await
            .body["reason"],
        "forced"
    );

    // Metric definitions are not in snapshots: no new version for them.
    o.create("/api/v1/metrics", metric("sessions", "mean"))
        .await;
    let after_metric = o
        .request(Method::GET, "/api/v1/snapshot", Some(&sdk), None)
        .await;
    assert_eq!(
        after_metric.headers["x-abx-snapshot-version"]
            .to_str()
            .expect("v")
            .parse::<u64>()
            .expect("n"),
        v2
    );

    // Older versions stay addressable; the JSON twin describes the same snapshot.
    let old = o
        .request(
            Method::GET,
            &format!("/api/v1/snapshots/{v1}"),
            Some(&sdk),
            None,
        )
        .await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.bytes, first.bytes);
    assert_eq!(
        o.request(Method::GET, "/api/v1/snapshots/999999", Some(&sdk), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let twin = o
        .request(Method::GET, "/api/v1/snapshot.json", Some(&sdk), None)
        .await;
    assert_eq!(twin.body["snapshot_version"], v2);
    assert_eq!(twin.body["experiments"][0]["key"], "snap");
}
on_both_backends!(snapshot_publishing, snapshots);

/// Browser (sdk) keys are public: their snapshot has no drafts, no QA overrides and no values
/// of private attributes, yet gives every other unit the answers the full one gives.
async fn client_snapshots(o: &TestOrigin) {
    seed_metrics(o).await;
    let (sdk, server) = (o.key("sdk").await, o.key("server").await);
    let mut body = experiment("visible", "revenue");
    body["forced"] = json!({"qa-alice": "treatment"});
    body["targeting"] = json!({"any": [
        {"attr": "email", "op": "in", "value": ["ceo@corp.example", "cfo@corp.example"]},
        {"attr": "email", "op": "ends_with", "value": "@staff.example"},
        {"attr": "country", "op": "eq", "value": "DE"}]});
    o.start_experiment(body).await;
    o.create(
        "/api/v1/experiments",
        experiment("secret-launch", "revenue"),
    )
    .await;

    let read = |key: String, path: &'static str| async move {
        o.request(Method::GET, path, Some(&key), None).await
    };
    let client_json = read(sdk.clone(), "/api/v1/snapshot.json").await;
    let full_json = read(server.clone(), "/api/v1/snapshot.json").await;
    let (client_text, full_text) = (client_json.body.to_string(), full_json.body.to_string());
    for secret in [
        "secret-launch",
        "qa-alice",
        "ceo@corp.example",
        "@staff.example",
    ] {
        assert!(full_text.contains(secret), "the full snapshot has {secret}");
        assert!(!client_text.contains(secret), "{secret} reached browsers");
    }
    assert!(client_text.contains("\"DE\""), "public values stay");

    let client = read(sdk.clone(), "/api/v1/snapshot").await;
    let full = read(server.clone(), "/api/v1/snapshot").await;
    assert_ne!(client.headers["etag"], full.headers["etag"]);
    assert_eq!(client.headers["vary"], "authorization");
    let key = o
        .request(Method::GET, "/api/v1/snapshot/key", None, None)
        .await;
    for reply in [&client, &full] {
        assert_eq!(
            reply.headers["x-abx-key-id"],
            key.body["key_id"].as_str().expect("id")
        );
    }
    let public_key = o.state.public_key;
    let client = Evaluator::from_verified_bytes(&client.bytes, &public_key).expect("signed");
    let full = Evaluator::from_verified_bytes(&full.bytes, &public_key).expect("signed");
    let answer = |e: &Evaluator, c: &Context| {
        e.experiment("visible", c, 0)
            .map(|a| (a.variant.map(str::to_owned), a.reason.as_str()))
    };
    let mut targeted = 0;
    for (i, email) in [
        "ceo@corp.example",
        "cfo@corp.example",
        "x@corp.example",
        "y@else.example",
    ]
    .iter()
    .cycle()
    .take(400)
    .enumerate()
    {
        let c = Context::new()
            .with("user_id", format!("u-{i}"))
            .with("email", *email);
        assert_eq!(answer(&client, &c), answer(&full, &c), "{email}");
        targeted += usize::from(answer(&client, &c).is_some_and(|(_, r)| r != "not_targeted"));
    }
    assert_eq!(targeted, 200, "the hashed list still targets");
    // The two deliberate differences: the QA override, and `ends_with` on a private attribute.
    let alice = Context::new()
        .with("user_id", "qa-alice")
        .with("country", "DE");
    assert_eq!(answer(&full, &alice).expect("known").1, "forced");
    assert_eq!(answer(&client, &alice).expect("known").1, "assigned");
    let staff = Context::new()
        .with("user_id", "s")
        .with("email", "a@staff.example");
    assert_eq!(answer(&full, &staff).expect("known").1, "assigned");
    assert_eq!(answer(&client, &staff).expect("known").1, "not_targeted");
    assert!(client.experiment("secret-launch", &alice, 0).is_none());

    // Evaluations on the origin tell a browser key what its snapshot tells it, no more;
    // a server key's tell what the full snapshot does.
    let evaluate = |key: String| async move {
        let context = json!({"context": {"user_id": "qa-alice", "country": "DE"}});
        let reply = o
            .request(Method::POST, "/api/v1/evaluate", Some(&key), Some(context))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["experiments"].clone()
    };
    let (by_browser, by_server) = (evaluate(sdk.clone()).await, evaluate(server.clone()).await);
    assert_eq!(by_server["visible"]["reason"], "forced");
    assert_eq!(by_server["secret-launch"]["reason"], "not_running");
    assert_eq!(by_browser["visible"]["reason"], "assigned", "{by_browser}");
    assert!(by_browser.get("secret-launch").is_none(), "{by_browser}");
    let assignment = |key: String, experiment: &'static str| async move {
        let path =
            format!("/api/v1/experiments/{experiment}/assignment?user_id=qa-alice&country=DE");
        o.request(Method::GET, &path, Some(&key), None).await
    };
    let visible = assignment(sdk.clone(), "visible").await;
    assert_eq!(visible.body["reason"], "assigned", "{}", visible.body);
    assert_eq!(
        assignment(server.clone(), "visible").await.body["reason"],
        "forced"
    );
    let secret = assignment(sdk.clone(), "secret-launch").await;
    assert_eq!(secret.status, StatusCode::NOT_FOUND, "{}", secret.body);
    let secret = assignment(server.clone(), "secret-launch").await;
    assert_eq!(secret.status, StatusCode::OK, "{}", secret.body);

    // An older version reads the same way.
    let version = o.state.published().version;
    let path = format!("/api/v1/snapshots/{version}");
    let old = o.request(Method::GET, &path, Some(&sdk), None).await;
    let latest = read(sdk.clone(), "/api/v1/snapshot").await;
    assert_eq!(old.bytes, latest.bytes);
    assert_eq!(old.headers["etag"], latest.headers["etag"]);
}
on_both_backends!(
    browser_keys_read_a_client_snapshot,
    client_snapshots,
    |s: &mut abx_origin::Settings| s.private_attributes = vec!["email".into()]
);

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn idempotency(o: &TestOrigin) {
    seed_metrics(o).await;
    let admin = o.admin.clone();
    let body = experiment("once", "revenue");
    let first = o
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(&admin),
            Some(body.clone()),
            &[("idempotency-key", "create-once-1")],
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = o
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(&admin),
            Some(body.clone()),
            &[("idempotency-key", "create-once-1")],
        )
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let mut other = body.clone();
    other["key"] = json!("twice");
    let reused = o
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(&admin),
            Some(other),
            &[("idempotency-key", "create-once-1")],
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(reused.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(
        o.get("/api/v1/experiments").await.body["items"]
            .as_array()
            .expect("items")
            .len(),
        1
    );
    // Issue 26: requests without a valid key leave nothing behind, whatever they send.
    let stored = || async {
        let mut conn = o.state.db.pool.acquire().await.expect("connection");
        abx_origin_store::count_idempotent_responses(&mut conn, None)
            .await
            .expect("count")
    };
    let before = stored().await;
    for n in 0..20 {
        let forged = o
            .send(
                Method::POST,
                "/api/v1/experiments",
                Some(format!("abx_admin_forged_{n}").as_str()),
                Some(body.clone()),
                &[("idempotency-key", format!("forged-{n}").as_str())],
            )
            .await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    }
    let viewer = o.key("viewer").await;
    let forbidden = o
        .send(
            Method::POST,
            "/api/v1/experiments",
            Some(&viewer),
            Some(body.clone()),
            &[("idempotency-key", "viewer-1")],
        )
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(stored().await, before);
    // The cap of stored responses per API key is checked in the statement that inserts.
    {
        let mut conn = o.state.db.pool.acquire().await.expect("connection");
        let response = abx_origin_store::StoredResponse {
            request_hash: "h".into(),
            status: 202,
            body: "{}".into(),
        };
        let mut outcomes = Vec::new();
        // A key stored already is not stored again (under the cap), nor one past the cap.
        for key in ["k1", "k1", "k2", "k3"] {
            outcomes.push(
                abx_origin_store::store_idempotent_response(&mut conn, "capped", key, &response, 2)
                    .await
                    .expect("store"),
            );
        }
        assert_eq!(outcomes, [true, false, true, false]);
        let capped = abx_origin_store::count_idempotent_responses(&mut conn, Some("capped"))
            .await
            .expect("count");
        assert_eq!(capped, 2);
    }
    // A new key's secret is shown once and never stored: a replay has no secret.
    let create_key = || {
        o.send(
            Method::POST,
            "/api/v1/keys",
            Some(&admin),
            Some(json!({"name": "ci", "role": "sdk"})),
            &[("idempotency-key", "new-key-1")],
        )
    };
    let created = create_key().await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().expect("secret").to_string();
    let replayed = create_key().await;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.body["id"], created.body["id"]);
    assert!(replayed.body["secret"].is_null(), "{}", replayed.body);
    let mut conn = o.state.db.pool.acquire().await.expect("connection");
    let key_id = o.state.keys.lookup(&admin).expect("admin key").id;
    let row = abx_origin_store::idempotent_response(&mut conn, &key_id, "new-key-1")
        .await
        .expect("read")
        .expect("stored");
    assert!(
        !row.body.contains(&secret),
        "the stored answer holds the secret"
    );
}
on_both_backends!(idempotency_keys, idempotency);

async fn flags_and_segments(o: &TestOrigin) {
    seed_metrics(o).await;
    o.create("/api/v1/segments", json!({"key": "staff", "condition": {"attr": "email", "op": "ends_with", "value": "@corp.com"}})).await;
    o.create("/api/v1/segments", json!({"key": "staff_us", "condition": {"all": [{"segment": "staff"}, {"attr": "country", "op": "eq", "value": "US"}]}})).await;
    // A reference cycle is refused.
    let cycle = o
        .patch(
            "/api/v1/segments/staff",
            json!({"condition": {"segment": "staff_us"}}),
        )
        .await;
    assert_eq!(
        cycle.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        cycle.body
    );
    let mut body = experiment("theme_test", "revenue");
    body["variants"] = json!([{"name": "control", "weight": 50, "config": {"theme": "light"}}, {"name": "dark", "weight": 50, "config": {"theme": "dark"}}]);
    let id = o.create("/api/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    o.create(
        "/api/v1/flags",
        json!({"key": "new_checkout", "off_value": false, "default_value": false,
               "rules": [{"condition": {"segment": "staff_us"}, "value": true},
                         {"rollout_percent": 50, "value": true}]}),
    )
    .await;
    o.create("/api/v1/flags", json!({"key": "theme", "off_value": "light", "rules": [{"from_experiment": {"experiment": "theme_test", "config_key": "theme"}}]})).await;
    let eval = |ctx: Json| async move {
        o.post("/api/v1/evaluate", json!({"context": ctx}))
            .await
            .body
    };
    let staff = eval(json!({"user_id": "s1", "email": "a@corp.com", "country": "US"})).await;
    assert_eq!(
        staff["flags"]["new_checkout"],
        json!({"value": true, "reason": "rule"})
    );
    // The 50% rollout: roughly half of other users.
    let mut on = 0;
    for i in 0..1_000 {
        let result = eval(json!({"user_id": format!("u{i}")})).await;
        if result["flags"]["new_checkout"]["value"] == json!(true) {
            on += 1;
        }
        // The theme flag follows the experiment's variant.
        let variant = result["experiments"]["theme_test"]["variant"]
            .as_str()
            .expect("assigned");
        let expected = if variant == "dark" { "dark" } else { "light" };
        assert_eq!(result["flags"]["theme"]["value"], expected);
        assert_eq!(result["flags"]["theme"]["reason"], "experiment");
    }
    assert!((400..600).contains(&on), "{on} of 1000");
    // The kill switch turns it off for everyone, staff included.
    let killed = o
        .post("/api/v1/flags/new_checkout/disable", json!({}))
        .await;
    assert_eq!(killed.body["enabled"], false);
    let staff = eval(json!({"user_id": "s1", "email": "a@corp.com", "country": "US"})).await;
    assert_eq!(
        staff["flags"]["new_checkout"],
        json!({"value": false, "reason": "disabled"})
    );
    // The theme flag's experiment is completed and archived: its rule no longer holds
    // (an edit of the rules is refused until it is fixed), but the kill switch still
    // works, and turning the flag back on too.
    for action in ["complete", "archive"] {
        let reply = o
            .post(&format!("/api/v1/experiments/{id}/{action}"), json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let edited = o
        .patch("/api/v1/flags/theme", json!({"description": "dark mode"}))
        .await;
    assert_eq!(
        edited.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        edited.body
    );
    for (action, enabled) in [("disable", false), ("enable", true)] {
        let reply = o
            .post(&format!("/api/v1/flags/theme/{action}"), json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["enabled"], enabled);
        assert_eq!(reply.body["rules"].as_array().map(Vec::len), Some(1));
    }
    let theme = eval(json!({"user_id": "u1"})).await;
    assert_eq!(theme["flags"]["theme"]["value"], "light", "{theme}");
}
on_both_backends!(flags_segments, flags_and_segments);

/// A segment is part of the targeting of the experiments that refer to it: its condition
/// cannot change while one of them runs, also through another segment. And a change that
/// would make a condition referring to it nest deeper than a snapshot holds is refused
/// with the conditions it would break (the snapshot failed to compile: a 500).
async fn segment_edits(o: &TestOrigin) {
    seed_metrics(o).await;
    let us = json!({"attr": "country", "op": "eq", "value": "US"});
    o.create(
        "/api/v1/segments",
        json!({"key": "inner", "name": "US", "condition": us}),
    )
    .await;
    let outer = json!({"all": [{"segment": "inner"}]});
    o.create(
        "/api/v1/segments",
        json!({"key": "outer", "name": "outer", "condition": outer}),
    )
    .await;
    let mut body = experiment("targeted", "revenue");
    body["targeting"] = json!({"segment": "outer"});
    let id = o.start_experiment(body).await;
    let germany = json!({"condition": {"attr": "country", "op": "eq", "value": "DE"}});
    let refused = o.patch("/api/v1/segments/inner", germany.clone()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "not_editable");
    let renamed = o
        .patch("/api/v1/segments/inner", json!({"name": "USA"}))
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    let completed = o
        .post(&format!("/api/v1/experiments/{id}/complete"), json!({}))
        .await;
    assert_eq!(completed.status, StatusCode::OK, "{}", completed.body);
    let changed = o.patch("/api/v1/segments/inner", germany).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);

    // As deep as a condition may nest on its own, which `outer` and the experiment's
    // targeting, one and two levels above it, would exceed.
    let mut deep = json!({"attr": "country", "op": "exists"});
    for _ in 1..abx_core::MAX_CONDITION_DEPTH {
        deep = json!({"not": deep});
    }
    let version = o.state.published().version;
    let too_deep = o
        .patch("/api/v1/segments/inner", json!({"condition": deep}))
        .await;
    assert_eq!(
        too_deep.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        too_deep.body
    );
    let message = too_deep.body["error"]["details"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        message.contains("experiment `targeted`") && message.contains("segment `outer`"),
        "{message}"
    );
    assert_eq!(o.state.published().version, version, "nothing published");
}
on_both_backends!(segments_in_use_keep_their_meaning, segment_edits);

async fn restart(o: &TestOrigin) {
    seed_metrics(o).await;
    let id = o
        .create("/api/v1/experiments", experiment("survives", "revenue"))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    o.post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    let before = o.state.published();
    let restarted = o.restart().await;
    let after = restarted.published();
    assert_eq!(
        after.version, before.version,
        "a restart serves the stored snapshot"
    );
    assert_eq!(after.bytes, before.bytes);
    assert_eq!(
        restarted.public_key, o.state.public_key,
        "the signing key persists"
    );
    restarted.close_databases().await;
}
on_both_backends!(restart_keeps_state, restart);

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let Some(o) = TestOrigin::with(common::Backend::Sqlite, |s| {
        s.admin_rate = abx_origin::auth::Limit {
            per_second: 1.0,
            burst: 3.0,
        };
        // Refusals held for the default 500 ms would let the bucket refill meanwhile.
        s.rate_limit_hold = std::time::Duration::from_millis(10);
    })
    .await
    else {
        return;
    };
    let statuses: Vec<StatusCode> = futures_statuses(&o, 5).await;
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3]);
    let limited = o.get("/api/v1/experiments").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    assert!(
        limited.headers["retry-after"]
            .to_str()
            .expect("text")
            .parse::<u64>()
            .expect("seconds")
            >= 1
    );
    o.finish().await;
}

async fn futures_statuses(o: &TestOrigin, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(o.get("/api/v1/experiments").await.status);
    }
    out
}

#[tokio::test]
async fn an_unreachable_database_is_503() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    o.state.close_databases().await;
    let reply = o.get("/api/v1/experiments").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["error"]["code"], "unavailable");
    assert!(reply.headers.contains_key("retry-after"));
    // Assignment keeps working from memory.
    let sdk_snapshot = o.get("/api/v1/snapshot").await;
    assert_eq!(sdk_snapshot.status, StatusCode::OK);
    assert_eq!(
        o.get("/api/v1/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Issue 26: `/metrics` is public, so a scrape must cost no database work. It serves the
/// pipeline's gauges as last computed in the background, with their age: with the databases
/// gone it still answers them (a scrape that queried would have nothing but NaN).
#[tokio::test]
async fn metrics_scrapes_read_memory_only() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let scrape = || async {
        let reply = o.request(Method::GET, "/metrics", None, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        String::from_utf8(reply.bytes).expect("text")
    };
    // The start computes them once, so that results know the pipeline's lag at once.
    assert!(
        scrape().await.contains("abx_dead_letters 0"),
        "gauges computed at start"
    );
    o.state.refresh_gauges().await.expect("gauges");
    o.state.close_databases().await;
    let text = scrape().await;
    assert!(text.contains("abx_dead_letters 0"), "{text}");
    assert!(text.contains("abx_pipeline_lag_events 0"), "{text}");
    assert!(
        text.contains("abx_pipeline_gauges_age_seconds 0."),
        "{text}"
    );
}

/// Many HTTP clients send `Content-Type: application/json` with an empty body on a bodiless
/// POST: for the lifecycle actions that means `{}`, not invalid JSON.
#[tokio::test]
async fn an_empty_json_body_is_an_empty_lifecycle_request() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let id = o
        .create(
            "/api/v1/experiments",
            experiment("empty_body", "conversion"),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let auth = format!("Bearer {}", o.admin);
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let path = format!("/api/v1/experiments/{id}/start");
    let started = o.send_raw(Method::POST, &path, Vec::new(), &headers).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    assert_eq!(started.body["status"], "running");
    let path = format!("/api/v1/experiments/{id}/pause");
    let paused = o
        .send_raw(Method::POST, &path, b" \n".to_vec(), &headers)
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.body);
    // A body that is there must still be JSON.
    let path = format!("/api/v1/experiments/{id}/resume");
    let broken = o
        .send_raw(Method::POST, &path, b"{".to_vec(), &headers)
        .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert_eq!(broken.body["error"]["code"], "invalid_json");
    o.finish().await;
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let doc = o
        .request(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .body;
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/experiments",
        "/api/v1/experiments/{id}",
        "/api/v1/experiments/{id}/start",
        "/api/v1/experiments/{id}/assignment",
        "/api/v1/layers/{id}",
        "/api/v1/holdouts",
        "/api/v1/holdouts/{id}/end",
        "/api/v1/segments/{id}",
        "/api/v1/metrics",
        "/api/v1/flags/{id}/disable",
        "/api/v1/keys",
        "/api/v1/snapshot",
        "/api/v1/snapshot/stream",
        "/api/v1/snapshots/{version}",
        "/api/v1/evaluate",
        "/api/v1/audit",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(doc["components"]["schemas"]["ExperimentInput"].is_object());
    o.finish().await;
}

/// A process started with `--role` serves only its role's routes (and health and metrics);
/// a collector follows the snapshots that an admin process publishes.
#[tokio::test]
async fn each_process_role_serves_its_own_routes() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    let sdk = o.key("sdk").await;
    let admin = o.admin.clone();
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let first = o.start_experiment(experiment("first", "conversion")).await;
    let process = |roles: &'static str| {
        let o = &o;
        async move {
            let state = o.another_process(roles).await;
            (abx_origin::app(state.clone()), state)
        }
    };
    let call =
        |router: &axum::Router, method: Method, path: &str, key: &str, body: Option<Json>| {
            let router = router.clone();
            let (path, key) = (path.to_string(), format!("Bearer {key}"));
            async move {
                let body = body.map(|b| b.to_string().into_bytes());
                common::call(
                    &router,
                    method,
                    &path,
                    body,
                    &[
                        ("authorization", &key),
                        ("content-type", "application/json"),
                    ],
                )
                .await
            }
        };
    let exposure = |n: u64, experiment: &str| {
        json!({"events": [{"event_id": format!("00000000-0000-4000-8000-{n:012x}"), "kind": "exposure",
            "unit": "u1", "experiment_id": experiment, "variant": "control",
            "timestamp": abx_origin_domain::clock::now_ms()}]})
    };

    let (collector, collector_state) = process("collector").await;
    collector_state.spawn_background();
    let sent = call(
        &collector,
        Method::POST,
        "/api/v1/events",
        &sdk,
        Some(exposure(1, &first)),
    )
    .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.body);
    let refused = call(&collector, Method::GET, "/api/v1/experiments", &admin, None).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("collector role only")),
        "{}",
        refused.body
    );
    let health = call(&collector, Method::GET, "/api/v1/health", &admin, None).await;
    assert_eq!(health.body["roles"], json!(["collector"]));
    assert_eq!(
        call(&collector, Method::GET, "/", &admin, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // An experiment started after the collector came up reaches it within seconds: the
    // seed's event form, which names the experiment, is then accepted.
    let second = o.start_experiment(experiment("second", "conversion")).await;
    let path = format!("/api/v1/experiments/{second}/events");
    let seed_event = json!({"user_id": "u2", "event_type": "conversion"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = call(
            &collector,
            Method::POST,
            &path,
            &sdk,
            Some(seed_event.clone()),
        )
        .await;
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert!(
            std::time::Instant::now() < deadline,
            "the collector did not follow the snapshot"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (pipeline, _) = process("pipeline").await;
    let refused = call(
        &pipeline,
        Method::POST,
        "/api/v1/events",
        &sdk,
        Some(exposure(2, &first)),
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&pipeline, Method::GET, "/metrics", &admin, None)
            .await
            .status,
        StatusCode::OK
    );

    let (admin_only, _) = process("admin").await;
    let refused = call(
        &admin_only,
        Method::POST,
        "/api/v1/events",
        &sdk,
        Some(exposure(3, &first)),
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let listed = call(
        &admin_only,
        Method::GET,
        "/api/v1/experiments",
        &admin,
        None,
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(abx_origin::Roles::parse("collector,web").is_err());
    assert_eq!(
        abx_origin::Roles::parse(" admin , collector").map(|r| r.to_string()),
        Ok("collector,admin".to_string())
    );
}

/// Two admin processes over one database, each unaware of the other's last change: every
/// change still gets a version above every stored one, so none is refused and clients see
/// versions only grow.
async fn two_admin_processes(o: &TestOrigin) {
    let other = abx_origin::AppState::start(o.settings.clone())
        .await
        .expect("a second admin process")
        .state;
    let other_router = abx_origin::app(other.clone());
    let flag = |key: &str| json!({"key": key, "off_value": false, "default_value": true});
    o.create("/api/v1/flags", flag("from_first")).await;
    let first = o.state.published().version;
    let auth = format!("Bearer {}", o.admin);
    let created = common::call(
        &other_router,
        Method::POST,
        "/api/v1/flags",
        Some(flag("from_second").to_string().into_bytes()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let second = other.published().version;
    assert!(second > first, "{second} after {first}");
    o.create("/api/v1/flags", flag("from_first_again")).await;
    assert!(o.state.published().version > second);
    // The newest snapshot holds all three flags.
    let snapshot = o.get("/api/v1/snapshot.json").await.body;
    let keys: Vec<&str> = snapshot["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 3, "{snapshot}");
    other.close_databases().await;
}
on_both_backends!(
    two_admin_processes_publish_growing_versions,
    two_admin_processes
);

/// An operator's bootstrap key is refused unless it is at least 32 characters of printable
/// ASCII (a short one used to be stored whole as its prefix, a non-ASCII one panicked);
/// nothing is created then. The data directory is created readable by its owner only.
#[tokio::test]
async fn start_refuses_weak_bootstrap_keys_and_keeps_its_data_directory_private() {
    let parent = tempfile::tempdir().expect("temp dir");
    let data_dir = parent.path().join("data");
    for weak in [
        "abx_admin_sixteen",
        "abx_admin_é_clé_de_démarrage_trop_courte",
    ] {
        let mut settings = abx_origin::Settings::new(&data_dir);
        settings.bootstrap_admin_key = Some(weak.into());
        let refused = abx_origin::AppState::start(settings).await;
        let error = refused.err().expect("a weak key is refused").to_string();
        assert!(error.contains("at least 32 characters"), "{error}");
        assert!(
            !data_dir.exists(),
            "a refused start created {}",
            data_dir.display()
        );
    }
    let mut settings = abx_origin::Settings::new(&data_dir);
    settings.bootstrap_admin_key = Some("abx_admin_bootstrap_key_0123456789".into());
    let started = abx_origin::AppState::start(settings).await.expect("starts");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&data_dir)
            .expect("data dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "data directory mode {mode:o}");
    }
    let router = abx_origin::app(started.state.clone());
    let auth = "Bearer abx_admin_bootstrap_key_0123456789";
    let keys = common::call(
        &router,
        Method::GET,
        "/api/v1/keys",
        None,
        &[("authorization", auth)],
    )
    .await;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.body);
    assert_eq!(keys.body["items"][0]["prefix"], "abx_admi");
    started.state.close_databases().await;
}

/// Issue 26: every process of a deployment signs with its active key. A process started
/// with another key refuses to start, saying so; after `signing-key activate` the old key's
/// process can no longer publish, and a process with the new key re-signs the snapshot.
async fn signing_keys(o: &TestOrigin) {
    let key = o.get("/api/v1/snapshot/key").await.body;
    let old_id = key["key_id"].as_str().expect("key id").to_string();
    let mut other = o.settings.clone();
    other.signing_key = Some("11".repeat(32));
    let refused = match abx_origin::AppState::start(other.clone()).await {
        Ok(_) => panic!("a process with another signing key started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        refused.contains(&old_id) && refused.contains("signing-key activate"),
        "{refused}"
    );
    let new_id = abx_origin::activate_signing_key(&other)
        .await
        .expect("rotation");
    assert_ne!(new_id, old_id);
    // The process with the old key may no longer publish: nothing it would sign is stored.
    let before = o.state.published().version;
    let reply = o
        .post(
            "/api/v1/metrics",
            common::metric("after_rotation", "conversion"),
        )
        .await;
    assert!(
        reply.status.is_server_error(),
        "{} {}",
        reply.status,
        reply.body
    );
    assert_eq!(o.state.published().version, before);
    // A process with the new key starts and serves a snapshot that its key verifies.
    let rotated = abx_origin::AppState::start(other)
        .await
        .expect("new key")
        .state;
    let router = abx_origin::app(rotated.clone());
    let key = common::call(&router, Method::GET, "/api/v1/snapshot/key", None, &[]).await;
    assert_eq!(key.body["key_id"], new_id.as_str());
    let published = rotated.published();
    assert!(published.version > before);
    assert!(abx_core::decode_verified(&published.bytes, &rotated.public_key).is_ok());
    rotated.close_databases().await;
}
on_both_backends!(signing_keys_are_one_per_deployment, signing_keys);

/// Issue 26: the sdk key is public, so its rate limit applies per client address: one
/// client flooding with it is limited while others keep being served. Server keys (edges,
/// backends) are limited per key. Snapshot streams are capped per client, and past the
/// process's concurrency limit requests get 503 at once while `/health` still answers.
async fn public_keys_are_limited_per_client(o: &TestOrigin) {
    let sdk = o.key("sdk").await;
    let server = o.key("server").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    let served = tokio::spawn(abx_origin::serve::serve(
        listener,
        o.state.clone(),
        std::future::pending(),
    ));
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .expect("client")
    };
    let (flooder, neighbour) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    let url = |path: &str| format!("http://{address}/api/v1{path}");
    let get = |client: &reqwest::Client, key: &str, path: &str| {
        client
            .get(url(path))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    let mut limited = 0;
    for _ in 0..60 {
        let status = get(&flooder, &sdk, "/snapshot")
            .await
            .expect("reply")
            .status();
        limited += usize::from(status == reqwest::StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        limited >= 30,
        "only {limited} of 60 flood requests were limited"
    );
    for _ in 0..10 {
        let reply = get(&neighbour, &sdk, "/snapshot").await.expect("reply");
        assert_eq!(
            reply.status(),
            reqwest::StatusCode::OK,
            "the neighbour was limited"
        );
    }
    // The same address with a server key is not held to the sdk key's per-address limit.
    for _ in 0..30 {
        let reply = get(&flooder, &server, "/snapshot").await.expect("reply");
        assert_eq!(reply.status(), reqwest::StatusCode::OK);
    }
    // Two streams per client: the third from the same address is refused, another's is not.
    let mut open = Vec::new();
    for _ in 0..2 {
        let reply = get(&flooder, &server, "/snapshot/stream")
            .await
            .expect("stream");
        assert_eq!(reply.status(), reqwest::StatusCode::OK);
        open.push(reply);
    }
    let third = get(&flooder, &server, "/snapshot/stream")
        .await
        .expect("reply");
    assert_eq!(third.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    let elsewhere = get(&neighbour, &server, "/snapshot/stream")
        .await
        .expect("stream");
    assert_eq!(elsewhere.status(), reqwest::StatusCode::OK);
    // With every request permit taken, requests are refused at once; health still answers.
    let permits = o
        .state
        .requests
        .clone()
        .try_acquire_many_owned(o.state.settings.max_concurrent_requests as u32)
        .expect("every permit");
    let refused = get(&neighbour, &server, "/snapshot").await.expect("reply");
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let health = neighbour
        .get(format!("http://{address}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    drop(permits);
    drop(open);
    served.abort();
}
on_both_backends!(
    public_keys_are_limited_per_client_address,
    public_keys_are_limited_per_client,
    |s: &mut abx_origin::Settings| {
        s.sdk_rate = abx_origin::auth::Limit {
            per_second: 1.0,
            burst: 20.0,
        };
        s.streams.per_client = 2;
        // Held refusals are tested in `connections`; this test sends them one at a time.
        s.rate_limit_hold = std::time::Duration::from_millis(10);
    }
);

/// Behind a proxy the operator trusts, its header names the client: each address it
/// names has its own bucket; without the setting the header is ignored.
async fn a_trusted_proxy_header_names_the_client(o: &TestOrigin) {
    let sdk = o.key("sdk").await;
    let call = |forwarded: &'static str| {
        let sdk = sdk.clone();
        async move {
            let auth = format!("Bearer {sdk}");
            common::call(
                &o.router,
                Method::GET,
                "/api/v1/snapshot",
                None,
                &[
                    ("authorization", auth.as_str()),
                    ("x-forwarded-for", forwarded),
                ],
            )
            .await
            .status
        }
    };
    let mut limited = 0;
    for _ in 0..30 {
        limited += usize::from(call("10.0.0.1, 192.0.2.7").await == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(limited >= 10, "{limited}");
    // The last address is the one the proxy saw: a client cannot pick its bucket by
    // prepending addresses.
    assert_eq!(
        call("10.9.9.9, 192.0.2.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(call("192.0.2.8").await, StatusCode::OK);
}
on_both_backends!(
    a_trusted_proxy_header_names_the_client_address,
    a_trusted_proxy_header_names_the_client,
    |s: &mut abx_origin::Settings| {
        s.sdk_rate = abx_origin::auth::Limit {
            per_second: 1.0,
            burst: 10.0,
        };
        s.trusted_proxy_header = Some("x-forwarded-for".into());
        s.rate_limit_hold = std::time::Duration::from_millis(10);
    }
);

/// Issue 26: the seed's browser-facing routes answer cross-origin requests, as docs/api.md
/// promises: the assignment and the per-experiment event, preflight included.
#[tokio::test]
async fn the_seed_routes_allow_cross_origin_requests() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    o.create("/api/v1/metrics", metric("purchase", "conversion"))
        .await;
    o.start_experiment(experiment("cors", "purchase")).await;
    let sdk = o.key("sdk").await;
    let auth = format!("Bearer {sdk}");
    for (method, path) in [
        ("GET", "/api/v1/experiments/cors/assignment?user_id=u1"),
        ("POST", "/api/v1/experiments/cors/events"),
    ] {
        let preflight = common::call(
            &o.router,
            Method::OPTIONS,
            path,
            None,
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", method),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
        )
        .await;
        assert!(
            preflight.status.is_success(),
            "{path}: {}",
            preflight.status
        );
        assert_eq!(
            preflight.headers["access-control-allow-origin"], "*",
            "{path}"
        );
    }
    let reply = common::call(
        &o.router,
        Method::GET,
        "/api/v1/experiments/cors/assignment?user_id=u1",
        None,
        &[("origin", "https://shop.example"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    let body = json!({"user_id": "u1", "event_type": "purchase"})
        .to_string()
        .into_bytes();
    let reply = common::call(
        &o.router,
        Method::POST,
        "/api/v1/experiments/cors/events",
        Some(body),
        &[
            ("origin", "https://shop.example"),
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    o.finish().await;
}

/// Issue 26: layers, holdouts, segments and metrics carry a version like experiments and
/// flags: `ETag` on every answer, and a change sent with a stale `If-Match` is refused
/// instead of overwriting another's.
#[tokio::test]
async fn catalog_objects_refuse_changes_based_on_a_stale_version() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    for (path, body, change) in [
        (
            "/api/v1/layers",
            json!({"key": "ui"}),
            json!({"description": "the page"}),
        ),
        (
            "/api/v1/holdouts",
            json!({"key": "global", "percent": 5}),
            json!({"description": "all"}),
        ),
        (
            "/api/v1/segments",
            json!({"key": "us", "condition": {"attr": "country", "op": "eq", "value": "US"}}),
            json!({"description": "Americans"}),
        ),
        (
            "/api/v1/metrics",
            metric("clicks", "conversion"),
            json!({"description": "any click"}),
        ),
    ] {
        let created = o.post(path, body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["version"], 1);
        assert_eq!(created.headers["etag"], "\"1\"");
        let object = format!("{path}/{}", created.body["key"].as_str().expect("key"));
        let fresh = o
            .send(
                Method::PATCH,
                &object,
                Some(&o.admin),
                Some(change.clone()),
                &[("if-match", "\"1\"")],
            )
            .await;
        assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
        assert_eq!(fresh.body["version"], 2);
        assert_eq!(fresh.headers["etag"], "\"2\"");
        let stale = o
            .send(
                Method::PATCH,
                &object,
                Some(&o.admin),
                Some(change),
                &[("if-match", "\"1\"")],
            )
            .await;
        assert_eq!(
            stale.status,
            StatusCode::PRECONDITION_FAILED,
            "{object}: {}",
            stale.body
        );
        assert_eq!(o.get(&object).await.headers["etag"], "\"2\"");
    }
    o.finish().await;
}

/// Issue 26: every list pages as docs/api.md says (`limit`, `cursor`, `next_cursor`),
/// catalog objects and flags included.
#[tokio::test]
async fn catalog_lists_page_by_key() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    for key in ["a_metric", "b_metric", "c_metric"] {
        o.create("/api/v1/metrics", metric(key, "conversion")).await;
    }
    let first = o.get("/api/v1/metrics?limit=2").await.body;
    let keys = |page: &Json| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["key"].as_str().expect("key").to_string())
            .collect()
    };
    assert_eq!(keys(&first), ["a_metric", "b_metric"]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = o
        .get(&format!("/api/v1/metrics?limit=2&cursor={cursor}"))
        .await
        .body;
    assert_eq!(keys(&second), ["c_metric"]);
    assert!(second["next_cursor"].is_null());
    assert_eq!(
        o.get("/api/v1/flags?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    o.finish().await;
}

/// Issue 26: `null` in a PATCH resets any field to its default, lists and settings included
/// (it used to be refused as invalid JSON for fields that are not optional).
#[tokio::test]
async fn null_in_a_patch_resets_any_field() {
    let Some(o) = TestOrigin::new(common::Backend::Sqlite).await else {
        return;
    };
    o.create("/api/v1/metrics", metric("purchase", "conversion"))
        .await;
    o.create("/api/v1/metrics", metric("revenue", "mean")).await;
    let mut body = experiment("resettable", "purchase");
    body["secondary_metrics"] = json!(["revenue"]);
    body["analysis"] = json!({"mode": "sequential", "alpha": 0.01});
    body["description"] = json!("a description");
    let created = o.create("/api/v1/experiments", body).await;
    let path = format!(
        "/api/v1/experiments/{}",
        created["id"].as_str().expect("id")
    );
    let reset = o
        .patch(
            &path,
            json!({"secondary_metrics": null, "analysis": null, "description": null}),
        )
        .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert_eq!(reset.body["secondary_metrics"], json!([]));
    assert_eq!(reset.body["analysis"]["alpha"], 0.05);
    assert_eq!(reset.body["description"], "");
    // A required field has no default to reset to.
    let refused = o.patch(&path, json!({"primary_metric": null})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    o.finish().await;
}

/// Found by schemathesis: a NUL character in a name reached PostgreSQL, whose text cannot
/// hold it, and came back as a 500. Names and descriptions refuse it with a 422.
async fn nul_characters_in_text(o: &TestOrigin) {
    let reply = o
        .post(
            "/api/v1/keys",
            json!({"role": "server", "name": "edge\u{0}1"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    let mut body = metric("nul", "conversion");
    body["description"] = json!("a\u{0}b");
    let reply = o.post("/api/v1/metrics", body).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
}
on_both_backends!(nul_characters_in_text_are_refused, nul_characters_in_text);
