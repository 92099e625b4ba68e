//! `POST /abx/events`: beacons are checked for size and shape at the edge, completed (unit from
//! the cookie, event id, timestamp) and forwarded to the origin's `POST /api/v1/events` in
//! the background. The limits are the origin's (docs/api.md), so the edge never queues what
//! the origin would refuse for size.

use serde_json::{Map, Value, json};

/// Largest `application/json` body.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Largest `text/plain` body (what `navigator.sendBeacon` sends with a string).
pub const MAX_BEACON_BYTES: usize = 64 * 1024;
/// An oversized upload up to this size is read to its end (and dropped) before the 413 goes
/// out. A server that answers mid-upload and closes leaves unread bytes behind, the kernel
/// then resets the connection, and the client may lose the answer with it.
pub const MAX_DRAINED_BYTES: usize = 2 * MAX_JSON_BYTES;
/// Largest single event, serialized.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Most events in one request.
pub const MAX_EVENTS: usize = 10_000;
/// The origin's limits on a unit and on variant and event-type names.
const MAX_UNIT_BYTES: usize = 512;
const MAX_NAME_BYTES: usize = 200;

/// Why a request was refused as a whole.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EventsError {
    #[error("the body is over the {0}-byte limit")]
    TooLarge(usize),
    #[error("more than {MAX_EVENTS} events in one request")]
    TooManyEvents,
    #[error("unsupported content type `{0}`; send application/json or text/plain")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding `{0}`; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("the body is not JSON: {0}")]
    InvalidJson(String),
    #[error("the body must be {{\"events\": [...]}} or an array of events")]
    BadShape,
    #[error("the request has no events")]
    Empty,
    #[error("no event is valid")]
    NoneValid(Vec<Rejected>),
}

impl EventsError {
    pub fn status(&self) -> u16 {
        match self {
            EventsError::TooLarge(_) | EventsError::TooManyEvents => 413,
            EventsError::UnsupportedMediaType(_) | EventsError::UnsupportedEncoding(_) => 415,
            _ => 400,
        }
    }

    /// The origin's error codes (docs/api.md), so clients handle both the same way.
    pub fn code(&self) -> &'static str {
        match self {
            EventsError::TooLarge(_) | EventsError::TooManyEvents => "payload_too_large",
            EventsError::UnsupportedMediaType(_) | EventsError::UnsupportedEncoding(_) => {
                "unsupported_media_type"
            }
            EventsError::InvalidJson(_) => "invalid_json",
            _ => "bad_request",
        }
    }
}

/// An event left out of the batch, by its index in the request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// The body limit for a request, from its `Content-Type` and `Content-Encoding`.
pub fn body_limit(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<usize, EventsError> {
    if let Some(encoding) = content_encoding.map(str::trim).filter(|e| !e.is_empty())
        && !encoding.eq_ignore_ascii_case("identity")
    {
        return Err(EventsError::UnsupportedEncoding(encoding.to_string()));
    }
    let media = content_type
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media.as_str() {
        "application/json" => Ok(MAX_JSON_BYTES),
        // A beacon sent as a Blob may have no type at all.
        "text/plain" | "" => Ok(MAX_BEACON_BYTES),
        other => Err(EventsError::UnsupportedMediaType(other.to_string())),
    }
}

/// What the edge adds to events that lack it.
pub struct Fill<'a> {
    /// The visitor's `abx_uid`, for events without a `unit`.
    pub uid: Option<&'a str>,
    pub unit_attribute: &'a str,
    pub now_ms: i64,
    /// A fresh event id (a UUID).
    pub new_id: &'a mut dyn FnMut() -> String,
}

/// The events to forward, and those left out.
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub events: Vec<Value>,
    pub rejected: Vec<Rejected>,
}

/// Checks and completes a request body.
pub fn parse(body: &[u8], fill: &mut Fill<'_>) -> Result<Batch, EventsError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EventsError::InvalidJson(e.to_string()))?;
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut wrapper) => match wrapper.remove("events") {
            Some(Value::Array(list)) => list,
            _ => return Err(EventsError::BadShape),
        },
        _ => return Err(EventsError::BadShape),
    };
    if list.is_empty() {
        return Err(EventsError::Empty);
    }
    if list.len() > MAX_EVENTS {
        return Err(EventsError::TooManyEvents);
    }
    let mut batch = Batch {
        events: Vec::with_capacity(list.len()),
        rejected: Vec::new(),
    };
    for (index, event) in list.into_iter().enumerate() {
        match complete(event, fill) {
            Ok(event) => batch.events.push(event),
            Err(reason) => batch.rejected.push(Rejected { index, reason }),
        }
    }
    if batch.events.is_empty() {
        return Err(EventsError::NoneValid(batch.rejected));
    }
    Ok(batch)
}

fn non_empty_str<'v>(
    event: &'v Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<&'v str, String> {
    match event.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s),
        Some(Value::String(_)) => Err(format!("`{field}` must be 1 to {max} bytes")),
        Some(_) => Err(format!("`{field}` must be a string")),
        None => Err(format!("`{field}` is required")),
    }
}

fn uuid(event: &Map<String, Value>, field: &str) -> Result<(), String> {
    let text = non_empty_str(event, field, 36)?;
    abx_core::snapshot::Id::parse(text)
        .map(|_| ())
        .ok_or_else(|| format!("`{field}` must be a UUID"))
}

/// The origin's key syntax (metric event types) and attribute-name syntax.
fn is_name(text: &str, max: usize, first_alphanumeric: bool) -> bool {
    !text.is_empty()
        && text.len() <= max
        && (!first_alphanumeric || text.as_bytes()[0].is_ascii_alphanumeric())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks an event the way the origin will (docs/api.md, "Events"), so the edge's 202/207
/// answers what the origin will store, and fills in what the edge knows.
fn complete(event: Value, fill: &mut Fill<'_>) -> Result<Value, String> {
    let Value::Object(mut event) = event else {
        return Err("an event must be an object".into());
    };
    match event.get("kind").and_then(Value::as_str) {
        Some("exposure") => {
            uuid(&event, "experiment_id")?;
            non_empty_str(&event, "variant", MAX_NAME_BYTES)?;
        }
        Some("metric") => {
            let event_type = non_empty_str(&event, "event_type", MAX_NAME_BYTES)?;
            if !is_name(event_type, 100, true) {
                return Err("`event_type` must be 1-100 letters, digits, `_`, `-` or `.`".into());
            }
            match event.get("value") {
                None => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
                Some(_) => return Err("`value` must be a finite number".into()),
            }
        }
        _ => return Err("`kind` must be `exposure` or `metric`".into()),
    }

    if event.contains_key("event_id") {
        uuid(&event, "event_id")?;
    } else {
        event.insert("event_id".into(), Value::String((fill.new_id)()));
    }

    match event.get("unit") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_UNIT_BYTES => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(_) => return Err("`unit` must be a non-empty string or an integer".into()),
        None => {
            let uid = fill
                .uid
                .ok_or("`unit` is required when the visitor has no abx_uid cookie")?;
            event.insert("unit".into(), Value::String(uid.to_string()));
            if !event.contains_key("unit_attribute") {
                event.insert(
                    "unit_attribute".into(),
                    Value::String(fill.unit_attribute.to_string()),
                );
            }
        }
    }
    match event.get("unit_attribute") {
        None => {}
        Some(Value::String(name)) if is_name(name, 64, false) => {}
        Some(_) => return Err("`unit_attribute` must be an attribute name".into()),
    }

    match event.get("timestamp") {
        None => {
            event.insert("timestamp".into(), Value::from(fill.now_ms));
        }
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {}
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => {}
        Some(_) => {
            return Err("`timestamp` must be milliseconds since the epoch or RFC 3339 text".into());
        }
    }

    let event = Value::Object(event);
    let size = serde_json::to_string(&event).map_or(usize::MAX, |s| s.len());
    if size > MAX_EVENT_BYTES {
        return Err(format!(
            "the event is over the {MAX_EVENT_BYTES}-byte limit"
        ));
    }
    Ok(event)
}

/// An exposure the edge logged itself (a request it routed for a split-URL test), with the
/// context `attributes` the experiment's results are broken down by, if any.
pub fn exposure(
    event_id: String,
    unit: &str,
    unit_attribute: &str,
    (experiment_id, variant): (&str, &str),
    attributes: &abx_core::ExposureAttributes<'_, '_>,
    timestamp_ms: i64,
) -> Value {
    let mut event = json!({
        "event_id": event_id, "kind": "exposure", "unit": unit, "unit_attribute": unit_attribute,
        "experiment_id": experiment_id, "variant": variant, "timestamp": timestamp_ms,
    });
    if !attributes.is_empty() {
        // Serializing names and plain values cannot fail.
        event["attributes"] = serde_json::to_value(attributes).unwrap_or_default();
    }
    event
}

/// The most bytes of one body sent to the origin: half the origin's limit (1 MiB). The
/// edge adds an id, a time, a unit and its attribute to each event it takes, and its own
/// exposures to the batch, so a client's body of up to 1 MiB can grow past the origin's
/// limit; the origin refused such a batch whole (413), after the client had been told 202.
pub const MAX_FORWARD_BYTES: usize = MAX_JSON_BYTES / 2;

/// The bodies sent to the origin for `events`, in order, each `{"events": […]}` of at most
/// `max_bytes` (or of one event, should one alone be larger), with how many events each
/// holds.
pub fn origin_bodies(events: &[Value], max_bytes: usize) -> Vec<(usize, String)> {
    const OPEN: &str = "{\"events\":[";
    const CLOSE: &str = "]}";
    let mut bodies = Vec::new();
    let (mut body, mut count) = (String::from(OPEN), 0);
    for event in events {
        // Serializing a `json!` tree of strings and numbers cannot fail.
        let text = serde_json::to_string(event).unwrap_or_default();
        if count > 0 && body.len() + 1 + text.len() + CLOSE.len() > max_bytes {
            body.push_str(CLOSE);
            bodies.push((count, std::mem::replace(&mut body, String::from(OPEN))));
            count = 0;
        }
        if count > 0 {
            body.push(',');
        }
        body.push_str(&text);
        count += 1;
    }
    if count > 0 {
        body.push_str(CLOSE);
        bodies.push((count, body));
    }
    bodies
}

/// Exposures the edge logged itself, waiting to ride along with the next beacon or to be
/// flushed on their own. Bounded: past `MAX_PENDING` new exposures are dropped (and counted)
/// rather than letting an unreachable origin grow the isolate's memory.
#[derive(Debug, Default)]
pub struct Pending {
    events: Vec<Value>,
    oldest_ms: Option<f64>,
    pub dropped: u64,
}

/// Most exposures held in memory.
pub const MAX_PENDING: usize = 10_000;
/// A queue this long is flushed whatever its age.
pub const FLUSH_COUNT: usize = 100;

impl Pending {
    pub fn push(&mut self, event: Value, now_ms: f64) {
        if self.events.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.oldest_ms.get_or_insert(now_ms);
        self.events.push(event);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether the queue should be sent now rather than wait for a beacon.
    pub fn due(&self, now_ms: f64, flush_ms: u64) -> bool {
        self.events.len() >= FLUSH_COUNT
            || self
                .oldest_ms
                .is_some_and(|oldest| now_ms - oldest >= flush_ms as f64)
    }

    /// Takes up to `max` events, oldest first.
    pub fn take(&mut self, max: usize, now_ms: f64) -> Vec<Value> {
        let n = max.min(self.events.len());
        let taken: Vec<Value> = self.events.drain(..n).collect();
        self.oldest_ms = (!self.events.is_empty()).then_some(now_ms);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str, uid: Option<&str>) -> Result<Batch, EventsError> {
        let mut counter = 0;
        let mut new_id = || {
            counter += 1;
            format!("generated-{counter}")
        };
        let mut fill = Fill {
            uid,
            unit_attribute: "user_id",
            now_ms: 1_760_000_000_000,
            new_id: &mut new_id,
        };
        parse(body.as_bytes(), &mut fill)
    }

    #[test]
    fn limits_by_media_type() {
        // (content type, content encoding) → body limit or error status
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Result<usize, u16>);
        let cases: &[Case<'_>] = &[
            (Some("application/json"), None, Ok(MAX_JSON_BYTES)),
            (
                Some("Application/JSON; charset=utf-8"),
                None,
                Ok(MAX_JSON_BYTES),
            ),
            (Some("text/plain;charset=UTF-8"), None, Ok(MAX_BEACON_BYTES)),
            (None, None, Ok(MAX_BEACON_BYTES)),
            (
                Some("application/json"),
                Some("identity"),
                Ok(MAX_JSON_BYTES),
            ),
            (Some("application/json"), Some("gzip"), Err(415)),
            (Some("multipart/form-data"), None, Err(415)),
            (Some("application/x-www-form-urlencoded"), None, Err(415)),
        ];
        for (content_type, encoding, expected) in cases {
            let got = body_limit(*content_type, *encoding).map_err(|e| e.status());
            assert_eq!(got, *expected, "{content_type:?} {encoding:?}");
        }
    }

    #[test]
    fn completes_events_from_the_cookie() {
        let batch = run(
            r#"{"events": [{"kind": "metric", "event_type": "purchase", "value": 25.5},
                           {"kind": "exposure", "event_id": "6f1c5a3e-0000-4000-8000-000000000001", "unit": "u-9",
                            "unit_attribute": "device_id", "experiment_id": "af3e2a13-0000-4000-8000-00000000000a",
                            "variant": "control", "timestamp": "2025-10-09T10:00:00Z"}]}"#,
            Some("cookie-uid"),
        )
        .expect("valid");
        assert!(batch.rejected.is_empty());
        assert_eq!(
            batch.events[0],
            json!({"kind": "metric", "event_type": "purchase", "value": 25.5,
                   "event_id": "generated-1", "unit": "cookie-uid", "unit_attribute": "user_id",
                   "timestamp": 1_760_000_000_000_i64})
        );
        assert_eq!(batch.events[1]["unit"], "u-9", "a given unit is kept");
        assert_eq!(batch.events[1]["unit_attribute"], "device_id");
        assert_eq!(
            batch.events[1]["event_id"],
            "6f1c5a3e-0000-4000-8000-000000000001"
        );
        // A bare array is accepted too.
        let bare = run(r#"[{"kind": "metric", "event_type": "click"}]"#, Some("u")).unwrap();
        assert_eq!(bare.events.len(), 1);
    }

    #[test]
    fn rejects_bad_events_by_index() {
        let batch = run(
            r#"[{"kind": "metric", "event_type": "ok"},
                {"kind": "click"},
                {"kind": "exposure", "experiment_id": "af3e2a13-0000-4000-8000-00000000000a"},
                {"kind": "metric", "event_type": "a", "value": "12"},
                {"kind": "metric", "event_type": "a", "unit": ""},
                {"kind": "metric", "event_type": "a", "unit": 1.5},
                {"kind": "metric", "event_type": "a", "timestamp": true},
                {"kind": "metric", "event_type": "a", "event_id": 7},
                "not an object",
                {"kind": "metric", "event_type": "a", "unit": 42},
                {"kind": "metric", "event_type": "a", "event_id": "not-a-uuid"},
                {"kind": "exposure", "experiment_id": "checkout", "variant": "a"},
                {"kind": "metric", "event_type": "has space"},
                {"kind": "metric", "event_type": "a", "unit_attribute": "a:b"}]"#,
            Some("u"),
        )
        .expect("some are valid");
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[1]["unit"], 42);
        let indices: Vec<usize> = batch.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indices, [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]);
    }

    #[test]
    fn whole_request_errors() {
        let big_event = format!(
            r#"[{{"kind": "metric", "event_type": "a", "blob": "{}"}}]"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        let many = format!(
            "[{}]",
            vec![r#"{"kind":"metric","event_type":"a"}"#; MAX_EVENTS + 1].join(",")
        );
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("not json", Some("u"), "invalid_json"),
            ("", Some("u"), "invalid_json"),
            ("{\"events\": 3}", Some("u"), "bad_request"),
            ("{\"other\": []}", Some("u"), "bad_request"),
            ("\"text\"", Some("u"), "bad_request"),
            ("[]", Some("u"), "bad_request"),
            ("{\"events\": []}", Some("u"), "bad_request"),
            (&big_event, Some("u"), "bad_request"),
            (&many, Some("u"), "payload_too_large"),
            // No unit and no cookie: nothing is attributable.
            (
                r#"[{"kind": "metric", "event_type": "a"}]"#,
                None,
                "bad_request",
            ),
        ];
        for (body, uid, code) in cases {
            let error = run(body, uid).expect_err(&body[..body.len().min(60)]);
            assert_eq!(error.code(), code, "{}", &body[..body.len().min(60)]);
        }
    }

    #[test]
    fn pending_exposures_flush_by_age_or_count() {
        let mut pending = Pending::default();
        assert!(!pending.due(0.0, 0), "an empty queue is never due");
        pending.push(json!({"n": 0}), 100.0);
        assert!(!pending.due(150.0, 1000));
        assert!(pending.due(1100.0, 1000));
        assert!(pending.due(100.0, 0), "a zero flush interval sends at once");
        for n in 1..FLUSH_COUNT {
            pending.push(json!({ "n": n }), 101.0);
        }
        assert!(
            pending.due(101.0, 1000),
            "a full batch is sent whatever its age"
        );
        let first = pending.take(10, 200.0);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0]["n"], 0, "oldest first");
        assert_eq!(pending.len(), FLUSH_COUNT - 10);
        assert_eq!(pending.take(MAX_EVENTS, 300.0).len(), FLUSH_COUNT - 10);
        assert!(pending.is_empty());
        for n in 0..MAX_PENDING + 5 {
            pending.push(json!({ "n": n }), 400.0);
        }
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(pending.dropped, 5);
    }

    /// A client's body of up to 1 MiB grows as the edge fills its events in: it goes to
    /// the origin in bodies within half its limit, every event once and in order.
    #[test]
    fn large_batches_go_to_the_origin_in_bodies_it_takes() {
        let events: Vec<Value> = (0..2_000)
            .map(|n| json!({"event_id": format!("e{n}"), "properties": {"note": "x".repeat(600)}}))
            .collect();
        let bodies = origin_bodies(&events, MAX_FORWARD_BYTES);
        assert!(bodies.len() >= 3, "{} bodies", bodies.len());
        let mut ids = Vec::new();
        for (count, body) in &bodies {
            assert!(body.len() <= MAX_FORWARD_BYTES, "{} bytes", body.len());
            let parsed: Value = serde_json::from_str(body).unwrap();
            let list = parsed["events"].as_array().unwrap();
            assert_eq!(list.len(), *count);
            ids.extend(
                list.iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_string()),
            );
        }
        let expected: Vec<String> = (0..2_000).map(|n| format!("e{n}")).collect();
        assert_eq!(ids, expected);
        // One event larger than the limit still goes, alone; nothing goes for nothing.
        let big = [
            json!({"n": 1}),
            json!({"pad": "y".repeat(100)}),
            json!({"n": 3}),
        ];
        let counts: Vec<usize> = origin_bodies(&big, 60).iter().map(|b| b.0).collect();
        assert_eq!(counts, [1, 1, 1]);
        assert!(origin_bodies(&[], MAX_FORWARD_BYTES).is_empty());
    }

    #[test]
    fn origin_body_wraps_events() {
        let none = abx_core::ExposureAttributes::default();
        let event = exposure("id".into(), "u", "user_id", ("x", "treatment"), &none, 5);
        let carried = abx_core::ExposureAttributes(vec![
            ("country", abx_core::ValueRef::Str("DE")),
            ("age", abx_core::ValueRef::Num(31.0)),
        ]);
        let with = exposure("id".into(), "u", "user_id", ("x", "a"), &carried, 5);
        // The edge's own exposures are built from the snapshot, so they are valid by
        // construction; this checks only the wrapping.
        let bodies = origin_bodies(&[event, with], MAX_FORWARD_BYTES);
        assert_eq!(bodies.len(), 1);
        let body: Value = serde_json::from_str(&bodies[0].1).unwrap();
        assert_eq!(body["events"][0]["kind"], "exposure");
        assert_eq!(body["events"][0]["variant"], "treatment");
        assert_eq!(body["events"][0]["timestamp"], 5);
        assert!(body["events"][0].get("attributes").is_none());
        assert_eq!(
            body["events"][1]["attributes"],
            json!({"country": "DE", "age": 31})
        );
    }
}
