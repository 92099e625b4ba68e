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

/// Format 2 snapshots (`?format=2`) tell runtimes which attributes each experiment's
/// exposures carry, its own dimensions then the instance's, and each holdout's unit; the
/// default stays format 1, which deployed runtimes read. Both are signed, for full and
/// browser keys alike, for the latest and for older versions, and the change stream
/// announces the ETag of the format asked for.
async fn format_2_snapshots_carry_what_exposures_carry(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    o.create(
        "/api/v1/holdouts",
        json!({"key": "long_term", "percent": 10}),
    )
    .await;
    let mut body = experiment("checkout", "conversion");
    body["dimensions"] = json!(["platform", "country"]);
    body["holdout"] = json!("long_term");
    o.start_experiment(body).await;
    o.start_experiment(experiment("search", "conversion")).await;
    let put = o
        .send(
            Method::PUT,
            "/api/v1/dimensions",
            Some(&o.admin),
            Some(json!({"dimensions": ["country", "browser"]})),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);

    // The origin's own answers carry the attributes an exposure it asks for would carry.
    let mut carried = 0;
    for u in 0..20 {
        let path = format!(
            "/api/v1/experiments/checkout/assignment?user_id=u{u}&platform=ios&browser=firefox&plan=pro"
        );
        let reply = o.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        if reply.body["log_exposure"] == json!(true) {
            let want = json!({"platform": "ios", "browser": "firefox"});
            assert_eq!(reply.body["attributes"], want, "{}", reply.body);
            carried += 1;
        } else {
            assert!(reply.body.get("attributes").is_none(), "{}", reply.body);
        }
    }
    assert!(carried > 10, "{carried} of 20 assigned");

    let public_key = o.state.public_key;
    for role in ["server", "sdk"] {
        let key = o.key(role).await;
        let read = |path: String| {
            let key = key.clone();
            async move { o.request(Method::GET, &path, Some(&key), None).await }
        };
        let v1 = read("/api/v1/snapshot".into()).await;
        let v2 = read("/api/v1/snapshot?format=2".into()).await;
        assert_eq!(
            read("/api/v1/snapshot?format=1".into()).await.bytes,
            v1.bytes
        );
        assert_eq!(&v1.bytes[4..6], &[1, 0], "{role}: the default is format 1");
        assert_eq!(&v2.bytes[4..6], &[2, 0], "{role}");
        assert_ne!(v1.headers["etag"], v2.headers["etag"]);
        let old = abx_core::Evaluator::from_verified_bytes(&v1.bytes, &public_key).expect("signed");
        let new = abx_core::Evaluator::from_verified_bytes(&v2.bytes, &public_key).expect("signed");
        assert!(old.snapshot().exposure_attributes.is_empty());
        assert!(old.snapshot().holdout_units.is_empty());
        let context = abx_core::Context::new()
            .with("user_id", "u1")
            .with("platform", "ios")
            .with("country", "DE")
            .with("browser", "firefox")
            .with("ignored", "x");
        let carried = |key: &str| -> Vec<(String, String)> {
            new.exposure_attributes(new.experiment_index(key).expect(key), &context)
                .0
                .into_iter()
                .map(|(name, value)| (name.to_owned(), format!("{value:?}")))
                .collect()
        };
        let expected = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        format!("{:?}", context.get(n).unwrap().view()),
                    )
                })
                .collect()
        };
        assert_eq!(
            carried("checkout"),
            expected(&["platform", "country", "browser"])
        );
        assert_eq!(carried("search"), expected(&["country", "browser"]));
        let s = new.snapshot();
        assert_eq!(s.holdout_units.len(), 1);
        assert_eq!(s.attributes[s.holdout_units[0] as usize], "user_id");
        // Apart from the tables, the two formats hold the same snapshot.
        let mut stripped = s.clone();
        stripped.exposure_attributes.clear();
        stripped.holdout_units.clear();
        assert_eq!(&stripped, old.snapshot(), "{role}");

        let not_modified = o
            .send(
                Method::GET,
                "/api/v1/snapshot?format=2",
                Some(&key),
                None,
                &[("if-none-match", v2.headers["etag"].to_str().unwrap())],
            )
            .await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
        let version = o.state.published().version;
        let older = read(format!("/api/v1/snapshots/{version}?format=2")).await;
        assert_eq!(older.bytes, v2.bytes, "{role}");
        assert_eq!(older.headers["etag"], v2.headers["etag"]);
        let older = read(format!("/api/v1/snapshots/{version}")).await;
        assert_eq!(older.bytes, v1.bytes, "{role}");
        // The change stream's first event names the ETag of the format asked for.
        for (format, etag) in [("1", &v1.headers["etag"]), ("2", &v2.headers["etag"])] {
            let request = axum::http::Request::builder()
                .uri(format!("/api/v1/snapshot/stream?format={format}"))
                .header("authorization", format!("Bearer {key}"))
                .body(axum::body::Body::empty())
                .expect("request");
            let response = tower::ServiceExt::oneshot(abx_origin::app(o.state.clone()), request)
                .await
                .expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            let mut frames = response.into_body().into_data_stream();
            let first = futures_util::StreamExt::next(&mut frames)
                .await
                .expect("an event")
                .expect("bytes");
            let text = String::from_utf8_lossy(&first).into_owned();
            let etag = etag.to_str().unwrap().replace('"', "\\\"");
            assert!(
                text.contains(&etag),
                "{role} format {format}: {text} lacks {etag}"
            );
        }
        for path in [
            "/api/v1/snapshot?format=3",
            "/api/v1/snapshot/stream?format=v2",
        ] {
            let refused = read(path.into()).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(refused.body["error"]["message"], "format must be 1 or 2");
        }
    }
}

on_both_backends!(
    format_2_snapshots,
    format_2_snapshots_carry_what_exposures_carry
);

/// An origin upgraded over a database whose newest snapshot an older origin stored in
/// format 1 reads it, serves it as stored by default and re-encoded on `?format=2`, and,
/// since the configuration has dimensions that the stored copy lacks, republishes at start.
async fn an_upgrade_over_a_format_1_snapshot(o: &TestOrigin) {
    o.create("/api/v1/metrics", metric("conversion", "conversion"))
        .await;
    let mut body = experiment("checkout", "conversion");
    body["dimensions"] = json!(["platform"]);
    o.start_experiment(body).await;
    let seed_hex = match &o.settings.signing_key {
        Some(hex) => hex.clone(),
        None => std::fs::read_to_string(o.settings.data_dir.join("signing.key")).expect("seed"),
    };
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&seed_hex.trim()[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let seed: [u8; 32] = seed.try_into().expect("32 bytes");

    // What an older origin stores: the snapshot in format 1, as a newer version.
    let mut older = o.state.published().evaluator.snapshot().clone();
    older.snapshot_version += 1;
    let bytes = abx_core::encode_signed_as(&older, &seed, abx_core::Format::V1);
    let stored = abx_origin_store::StoredSnapshot {
        version: older.snapshot_version as i64,
        published_at_ms: older.published_at_ms,
        etag: abx_origin::publish::etag(older.snapshot_version, &bytes),
        bytes: bytes.clone(),
    };
    {
        let mut conn = o.state.db.pool.acquire().await.expect("connection");
        abx_origin_store::insert_snapshot(&mut conn, &stored)
            .await
            .expect("stored");
    }
    let state = o.restart().await;
    let published = state.published();
    assert_eq!(published.version, older.snapshot_version + 1, "republished");
    let carried = &published.evaluator.snapshot().exposure_attributes;
    assert_eq!(carried.len(), 1, "the republished snapshot has the tables");
    // The stored format 1 version is still served as stored, and in format 2 on request.
    let router = abx_origin::app(state.clone());
    let read = |path: String| {
        let router = router.clone();
        let key = o.admin.clone();
        async move {
            common::call(
                &router,
                Method::GET,
                &path,
                None,
                &[("authorization", &format!("Bearer {key}"))],
            )
            .await
        }
    };
    let version = older.snapshot_version;
    let as_stored = read(format!("/api/v1/snapshots/{version}")).await;
    assert_eq!(as_stored.bytes, bytes);
    let reencoded = read(format!("/api/v1/snapshots/{version}?format=2")).await;
    assert_eq!(&reencoded.bytes[4..6], &[2, 0]);
    let decoded = abx_core::decode_verified(&reencoded.bytes, &state.public_key).expect("signed");
    let held = abx_core::decode(&bytes).expect("decodes");
    assert!(held.exposure_attributes.is_empty() && !older.exposure_attributes.is_empty());
    assert_eq!(
        decoded, held,
        "format 1 held no tables, so format 2's are empty"
    );
    let latest = read("/api/v1/snapshot?format=2".into()).await;
    let latest = abx_core::decode(&latest.bytes).expect("decodes");
    assert_eq!(latest.exposure_attributes.len(), 1);
}

on_both_backends!(format_1_upgrade, an_upgrade_over_a_format_1_snapshot);
