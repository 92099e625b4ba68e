//! Drill-downs by dimension (issue 28), through the public API on every backend: a
//! treatment that lifts conversion only on mobile shows a significant effect there, none
//! on desktop, and a significant heterogeneity test; each group's units and effect equal the
//! direct computation over the events sent, so all backends agree.

use std::collections::BTreeMap;

use crate::common;
use crate::common::{TestOrigin, experiment, metric};
use axum::http::{Method, StatusCode};
use serde_json::{Value as Json, json};

/// A well-mixed 64-bit hash (SplitMix64's finaliser), for deterministic draws.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The variant the scenario gives unit `u`.
fn variant_of(u: u64) -> &'static str {
    if mix(u).is_multiple_of(2) {
        "control"
    } else {
        "treatment"
    }
}

/// Per (platform or `None`, variant): units and converted units.
type Counts = BTreeMap<(Option<String>, String), (u64, u64)>;

/// 4,000 users: a third on mobile, most of the rest on desktop, some without a platform;
/// twelve countries. Control converts at 10 % everywhere; treatment at 25 % on mobile only.
fn scenario(experiment_id: &str) -> (Vec<Json>, Counts) {
    let t0 = abx_origin_domain::clock::now_ms() - 3_600_000;
    let mut events = Vec::new();
    let mut counts = Counts::new();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    };
    for u in 0..4_000u64 {
        let unit = format!("u{u}");
        let variant = variant_of(u);
        let platform = match u % 12 {
            0..=3 => Some("mobile"),
            11 => None,
            _ => Some("desktop"),
        };
        let mut attributes = json!({"country": format!("c{}", mix(u + 7) % 12)});
        if let Some(platform) = platform {
            attributes["platform"] = json!(platform);
        }
        let at = t0 + u as i64 * 100;
        events.push(
            json!({"event_id": next_id(), "kind": "exposure", "unit": unit,
            "experiment_id": experiment_id, "variant": variant, "timestamp": at,
            "attributes": attributes}),
        );
        let rate = if variant == "treatment" && platform == Some("mobile") {
            250
        } else {
            100
        };
        let converted = mix(u ^ 0x5eed) % 1_000 < rate;
        if converted {
            events.push(
                json!({"event_id": next_id(), "kind": "metric", "unit": unit,
                "event_type": "conversion", "timestamp": at + 5_000}),
            );
        }
        let entry = counts
            .entry((platform.map(str::to_string), variant.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(converted);
    }
    // A second exposure with other attributes does not move the unit: the first counts.
    events.push(
        json!({"event_id": next_id(), "kind": "exposure", "unit": "u0",
        "experiment_id": experiment_id, "variant": variant_of(0),
        "timestamp": t0 + 500_000, "attributes": {"platform": "desktop"}}),
    );
    events.sort_by_key(|e| e["timestamp"].as_i64());
    (events, counts)
}

async fn drill_down(o: &TestOrigin, id: &str, query: &str) -> Json {
    let reply = o
        .get(&format!("/api/v1/experiments/{id}/results?{query}"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

fn group<'a>(body: &'a Json, kind: &str, value: Option<&str>) -> &'a Json {
    body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["kind"] == json!(kind) && g["value"].as_str() == value)
        .unwrap_or_else(|| panic!("no {kind} group {value:?} in {body}"))
}

async fn a_lift_on_mobile_only_shows_in_the_drill_down(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let mut body = experiment("checkout", "conversion");
    // `country` is the instance's dimension (below), not the experiment's.
    body["dimensions"] = json!(["platform"]);
    let id = o.start_experiment(body).await;
    let key = o.key("sdk").await;
    let (events, counts) = scenario(&id);
    for chunk in events.chunks(1_000) {
        let reply = o.send_events(&key, chunk).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    common::drain(&o.state).await;

    let body = drill_down(o, &id, "dimension=platform").await;
    assert_eq!(body["exploratory"], json!(true));
    assert_eq!(body["comparisons_corrected"], json!(3), "{body}");
    for (kind, platform) in [
        ("value", Some("mobile")),
        ("value", Some("desktop")),
        ("missing", None),
    ] {
        let g = group(&body, kind, platform);
        let rate = |variant: &str| {
            let (units, converted) = counts[&(platform.map(str::to_string), variant.to_string())];
            assert_eq!(g["units"][variant], json!(units), "{platform:?} {variant}");
            converted as f64 / units as f64
        };
        let expected = rate("treatment") - rate("control");
        let comparison = &g["metrics"][0]["comparisons"][0];
        let estimate = comparison["absolute"]["estimate"]
            .as_f64()
            .expect("estimate");
        assert!(
            (estimate - expected).abs() < 1e-12,
            "{platform:?}: {estimate} ≠ {expected}"
        );
        let significant = comparison["significant"].as_bool().expect("significant");
        assert_eq!(
            significant,
            platform == Some("mobile"),
            "{platform:?}: {comparison}"
        );
        assert!(comparison["adjusted_p_value"].as_f64() >= comparison["p_value"].as_f64());
    }
    let heterogeneity = &body["heterogeneity"][0];
    assert_eq!(heterogeneity["metric"], json!("conversion"));
    assert_eq!(heterogeneity["differs"], json!(true), "{heterogeneity}");
    assert_eq!(heterogeneity["test"]["df"], json!(2), "{heterogeneity}");
    assert!(heterogeneity["test"]["p_value"].as_f64().expect("p") < 1e-6);

    // Twelve countries, two shown: the other ten merged, with every unit somewhere. The
    // experiment does not declare `country`; once the instance does, it can be drilled into.
    let reply = o
        .get(&format!(
            "/api/v1/experiments/{id}/results?dimension=country"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let reply = o
        .request(
            Method::PUT,
            "/api/v1/dimensions",
            Some(&o.admin),
            Some(json!({"dimensions": ["country", "platform"]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = drill_down(o, &id, "dimension=country&top=2").await;
    let groups = body["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{body}");
    assert_eq!(group(&body, "other", None)["values_merged"], json!(10));
    let total: u64 = groups
        .iter()
        .flat_map(|g| g["units"].as_object().expect("units").values())
        .map(|u| u.as_u64().expect("units"))
        .sum();
    assert_eq!(total, 4_000);
    // No effect differs by country: the lift is on mobile, spread over every country.
    assert!(body["heterogeneity"][0]["test"]["q"].as_f64().is_some());

    for (query, status) in [
        ("dimension=browser", StatusCode::BAD_REQUEST),
        ("dimension=platform&top=0", StatusCode::BAD_REQUEST),
        (
            "dimension=platform&granularity=day",
            StatusCode::BAD_REQUEST,
        ),
        ("top=3", StatusCode::BAD_REQUEST),
    ] {
        let reply = o
            .get(&format!("/api/v1/experiments/{id}/results?{query}"))
            .await;
        assert_eq!(reply.status, status, "{query}: {}", reply.body);
    }
}

on_every_backend!(drill_downs, a_lift_on_mobile_only_shows_in_the_drill_down);

/// `GET`/`PUT /dimensions`: validated as an experiment's `dimensions` are, versioned (412 on a
/// stale `If-Match`), admin only, audited.
async fn instance_dimensions_are_validated_and_versioned(o: &TestOrigin) {
    let empty = o.get("/api/v1/dimensions").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!({"dimensions": [], "version": 0}));
    let put = |body: Json, headers: Vec<(&'static str, String)>, key: String| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        o.send(
            Method::PUT,
            "/api/v1/dimensions",
            Some(&key),
            Some(body),
            &headers,
        )
        .await
    };
    let admin = o.admin.clone();

    let refused = put(
        json!({"dimensions": ["country", "not an attribute", "country"]}),
        vec![],
        admin.clone(),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let fields: Vec<&str> = refused.body["error"]["details"]
        .as_array()
        .expect("field errors")
        .iter()
        .map(|f| f["field"].as_str().expect("field"))
        .collect();
    assert_eq!(
        fields,
        ["dimensions[1]", "dimensions[2]"],
        "{}",
        refused.body
    );
    let too_many: Vec<String> = (0..11).map(|i| format!("d{i}")).collect();
    let refused = put(json!({ "dimensions": too_many }), vec![], admin.clone()).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused = put(
        json!({"dimensions": ["country"], "extra": 1}),
        vec![],
        admin.clone(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);

    let first = put(
        json!({"dimensions": ["country", "platform"]}),
        vec![],
        admin.clone(),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["dimensions"], json!(["country", "platform"]));
    assert_eq!(first.body["version"], json!(1));
    let etag = first.headers.get("etag").and_then(|v| v.to_str().ok());
    assert_eq!(etag, Some("\"1\""));

    let stale = put(
        json!({"dimensions": ["browser"]}),
        vec![("if-match", "\"0\"".to_string())],
        admin.clone(),
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    let second = put(
        json!({"dimensions": ["browser"]}),
        vec![("if-match", "\"1\"".to_string())],
        admin.clone(),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body["version"], json!(2));

    let viewer = o.key("viewer").await;
    let forbidden = put(json!({"dimensions": []}), vec![], viewer.clone()).await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );
    let read = o
        .request(Method::GET, "/api/v1/dimensions", Some(&viewer), None)
        .await;
    assert_eq!(read.body["dimensions"], json!(["browser"]));

    let audit = o.get("/api/v1/audit?entity_type=dimensions").await;
    let actions: Vec<&Json> = audit.body["items"]
        .as_array()
        .expect("audit items")
        .iter()
        .filter(|entry| entry["action"] == json!("dimensions.updated"))
        .collect();
    assert_eq!(actions.len(), 2, "{}", audit.body);
}

on_both_backends!(
    instance_dimensions,
    instance_dimensions_are_validated_and_versioned
);
