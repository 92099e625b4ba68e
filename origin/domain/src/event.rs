//! The event record: parsing and validating beacon batches into the records that the
//! event log stores.

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Read as _;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::Error;
use crate::clock;
use crate::model::targeting::valid_attribute;

/// Request-size limits of `POST /events`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request body (compressed size, if gzip).
    pub request: usize,
    /// A `text/plain` body, as `navigator.sendBeacon` sends it.
    pub beacon: usize,
    /// One event's JSON.
    pub event: usize,
    pub events_per_request: usize,
    /// A gzip body once decompressed (guards against decompression bombs).
    pub decompressed: usize,
}

pub const LIMITS: Limits = Limits {
    request: 1024 * 1024,
    beacon: 64 * 1024,
    event: 32 * 1024,
    events_per_request: 10_000,
    // 10,000 events of about 400 bytes, more than the SDKs' events take (about 250).
    decompressed: 4 * 1024 * 1024,
};

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Exposure {
        experiment_id: String,
        variant: String,
    },
    Metric {
        event_type: String,
    },
}

/// A validated event, as logged.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub event_id: String,
    pub received_at_ms: i64,
    pub ts_ms: i64,
    pub kind: Kind,
    /// `"{unit_attribute}:{unit}"`; attribute names cannot contain `:`.
    pub unit_key: String,
    pub value: f64,
    /// A metric event's `properties`, or the context `attributes` an exposure was evaluated
    /// with: a compact JSON object of scalars (see [`properties`]), `None` when there are
    /// none. Kept as text because most readers only store and forward it; the pipeline
    /// parses it only for the metrics whose filters need it.
    pub properties: Option<String>,
}

/// At most this many properties (or exposure attributes) per event.
pub const MAX_PROPERTIES: usize = 32;
/// A string property's value, at most (in UTF-8 bytes).
pub const MAX_PROPERTY_BYTES: usize = abx_core::MAX_EXPOSURE_STRING_BYTES;

/// Checks an event's `properties` (or `attributes`, named by `field`): an object of at most
/// [`MAX_PROPERTIES`] entries, named like attributes, whose values are strings of at most
/// [`MAX_PROPERTY_BYTES`], finite numbers or booleans. Returns the object's compact JSON
/// text (keys sorted), `None` for an absent, null or empty object. Floats without a fraction
/// are stored as integers ([`canonical_number`]), so that a drill-down groups a value alike
/// whichever runtime wrote it: JavaScript writes `21`, Python `21.0`.
pub fn properties(value: Option<Json>, field: &str) -> Result<Option<String>, String> {
    let mut map = match value {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::Object(map)) => map,
        Some(_) => return Err(format!("`{field}` must be an object")),
    };
    if map.len() > MAX_PROPERTIES {
        return Err(format!(
            "`{field}` has {} entries, more than {MAX_PROPERTIES}",
            map.len()
        ));
    }
    for (name, value) in &map {
        if !valid_attribute(name) {
            return Err(format!(
                "`{field}` names must be attribute names (letters, digits, `_`, `-`, `.`; 1-64 characters)"
            ));
        }
        match value {
            Json::String(s) if s.len() > MAX_PROPERTY_BYTES => {
                return Err(format!(
                    "`{field}.{name}` is longer than {MAX_PROPERTY_BYTES} bytes"
                ));
            }
            Json::String(_) | Json::Bool(_) => {}
            Json::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {}
            _ => {
                return Err(format!(
                    "`{field}.{name}` must be a string, a finite number or a boolean"
                ));
            }
        }
    }
    if map.is_empty() {
        return Ok(None);
    }
    for value in map.values_mut() {
        // Integers are kept exactly; floats without a fraction become integers.
        if let Some(f) = value.as_f64().filter(|_| value.is_f64()) {
            *value = canonical_number(f);
        }
    }
    Ok(Some(Json::Object(map).to_string()))
}

/// A number that arrived as a float, as events store it: as an integer when it has no
/// fraction and fits one. One value is then one text however a runtime wrote it: `21` and
/// `21.0`, or `10000000000000000` and `1e16`. (Integers stay as sent.)
fn canonical_number(f: f64) -> Json {
    /// 2^63: every integral f64 below it in magnitude is an exact i64.
    const I64_RANGE: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() == 0.0 && f.abs() < I64_RANGE {
        Json::from(f as i64)
    } else {
        Json::from(f)
    }
}

/// The properties of a stored event (text that [`properties`] produced); empty if `None`.
pub fn parse_properties(text: Option<&str>) -> serde_json::Map<String, Json> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// A dimension's value in stored attributes, as text: a string as it is, a number as JSON
/// writes it, a boolean as `true` or `false`; `None` when the attribute is missing. The
/// warehouse stores the same text (`clickhouse::PropertyColumns`), so both group alike.
pub fn dimension_value(attributes: Option<&str>, dimension: &str) -> Option<String> {
    match parse_properties(attributes).remove(dimension)? {
        Json::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// The accepted range of event timestamps relative to receipt.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub max_age_ms: i64,
    pub max_future_ms: i64,
}

#[derive(Deserialize)]
struct EventInput {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    unit: Option<Json>,
    #[serde(default)]
    unit_attribute: Option<String>,
    #[serde(default)]
    experiment_id: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    value: Option<Json>,
    #[serde(default)]
    timestamp: Option<Json>,
    #[serde(default)]
    properties: Option<Json>,
    #[serde(default)]
    attributes: Option<Json>,
}

const MAX_UNIT_BYTES: usize = 512;
const MAX_NAME_BYTES: usize = 200;

pub fn unit_key(attribute: &str, unit: &str) -> String {
    format!("{attribute}:{unit}")
}

fn is_uuid(text: &str) -> bool {
    abx_core::snapshot::Id::parse(text).is_some()
}

/// Units are strings or integers; integers become their decimal text, as in assignment.
fn unit_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        Json::Number(n) => n
            .as_i64()
            .map(|i| i.to_string())
            .or_else(|| n.as_u64().map(|u| u.to_string())),
        _ => None,
    }
}

fn timestamp_ms(value: &Json) -> Option<i64> {
    match value {
        Json::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Json::String(s) => clock::parse_rfc3339(s),
        _ => None,
    }
}

/// Validates one event; the error is the reason reported back for it.
fn validate(input: EventInput, now_ms: i64, window: Window) -> Result<EventRecord, String> {
    let event_id = input.event_id.ok_or("`event_id` is required")?;
    if !is_uuid(&event_id) {
        return Err("`event_id` must be a UUID".into());
    }
    let unit = input
        .unit
        .as_ref()
        .and_then(unit_text)
        .ok_or("`unit` must be a non-empty string or an integer")?;
    if unit.len() > MAX_UNIT_BYTES {
        return Err(format!("`unit` is longer than {MAX_UNIT_BYTES} bytes"));
    }
    // PostgreSQL's text cannot hold NUL: one such event would fail the write of every
    // request batched with it, and a log's load over and over.
    if unit.contains('\0') {
        return Err("`unit` must not contain NUL characters".into());
    }
    let attribute = input.unit_attribute.unwrap_or_else(|| "user_id".into());
    if !valid_attribute(&attribute) {
        return Err("`unit_attribute` must be an attribute name".into());
    }
    let ts_ms = match &input.timestamp {
        None => now_ms,
        Some(value) => timestamp_ms(value)
            .ok_or("`timestamp` must be milliseconds since the epoch or RFC 3339 text")?,
    };
    if ts_ms > now_ms + window.max_future_ms {
        return Err("`timestamp` is too far in the future".into());
    }
    if ts_ms < now_ms - window.max_age_ms {
        return Err("`timestamp` is older than the retention period".into());
    }
    let value = match &input.value {
        None => 1.0,
        Some(Json::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or("`value` must be a finite number")?,
        Some(_) => return Err("`value` must be a number".into()),
    };
    if value.abs() > MAX_ABS_VALUE {
        return Err("`value` must be within ±1e12".into());
    }
    let (kind, properties) = match input.kind.as_deref() {
        Some("exposure") => {
            if input.properties.is_some() {
                return Err("exposures carry the context's `attributes`, not `properties`".into());
            }
            let experiment_id = input
                .experiment_id
                .ok_or("exposures need `experiment_id`")?;
            if !is_uuid(&experiment_id) {
                return Err("`experiment_id` must be the experiment's UUID".into());
            }
            let variant = input
                .variant
                .filter(|v| !v.is_empty())
                .ok_or("exposures need `variant`")?;
            if variant.len() > MAX_NAME_BYTES {
                return Err("`variant` is too long".into());
            }
            if variant.contains('\0') {
                return Err("`variant` must not contain NUL characters".into());
            }
            (
                Kind::Exposure {
                    experiment_id: experiment_id.to_ascii_lowercase(),
                    variant,
                },
                properties(input.attributes, "attributes")?,
            )
        }
        Some("metric") => {
            if input.attributes.is_some() {
                return Err("metric events carry `properties`, not `attributes`".into());
            }
            let event_type = input.event_type.ok_or("metric events need `event_type`")?;
            let mut errors = Vec::new();
            crate::model::check_key(&event_type, "event_type", &mut errors);
            if !errors.is_empty() {
                return Err("`event_type` must be 1-100 letters, digits, `_`, `-` or `.`".into());
            }
            (
                Kind::Metric { event_type },
                properties(input.properties, "properties")?,
            )
        }
        Some(other) => {
            return Err(format!(
                "unknown `kind` `{other}`; expected `exposure` or `metric`"
            ));
        }
        None => return Err("`kind` is required".into()),
    };
    Ok(EventRecord {
        event_id: event_id.to_ascii_lowercase(),
        received_at_ms: now_ms,
        ts_ms,
        kind,
        unit_key: unit_key(&attribute, &unit),
        value,
        properties,
    })
}

/// The largest magnitude an event's value may have, whatever its metric: squares and sums of
/// squares of values this size stay far from overflow over billions of events, where a
/// single 1e200 would make a metric's variance infinite and its statistics (a guardrail's
/// among them) impossible.
pub const MAX_ABS_VALUE: f64 = 1e12;

/// Per event type, the range of values its metrics accept (the tightest, when several
/// metrics count one event type).
#[derive(Clone, Debug, Default)]
pub struct ValueBounds(std::collections::HashMap<String, (f64, f64, String)>);

impl ValueBounds {
    pub fn from_metrics(metrics: &[crate::model::catalog::Metric]) -> Self {
        let mut bounds: std::collections::HashMap<String, (f64, f64, String)> = Default::default();
        for m in metrics
            .iter()
            .filter(|m| m.value_min.is_some() || m.value_max.is_some())
        {
            let (min, max) = (
                m.value_min.unwrap_or(f64::NEG_INFINITY),
                m.value_max.unwrap_or(f64::INFINITY),
            );
            let entry = bounds.entry(m.event_type.clone()).or_insert((
                f64::NEG_INFINITY,
                f64::INFINITY,
                m.key.clone(),
            ));
            if min > entry.0 || max < entry.1 {
                entry.2 = m.key.clone();
            }
            entry.0 = entry.0.max(min);
            entry.1 = entry.1.min(max);
        }
        ValueBounds(bounds)
    }

    /// Why a metric event's value is refused, if it is.
    pub fn check(&self, event: &EventRecord) -> Result<(), String> {
        let Kind::Metric { event_type } = &event.kind else {
            return Ok(());
        };
        match self.0.get(event_type) {
            Some((min, max, metric)) if !(event.value >= *min && event.value <= *max) => {
                Err(format!(
                    "`value` {} is outside [{min}, {max}], the range metric `{metric}` accepts for `{event_type}`",
                    event.value
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Parsed {
    /// Moves the events whose values their metrics refuse to `rejected`.
    pub fn screen(mut self, bounds: &ValueBounds) -> Self {
        let mut kept = Vec::with_capacity(self.events.len());
        for (index, event) in self.events {
            match bounds.check(&event) {
                Ok(()) => kept.push((index, event)),
                Err(reason) => self.rejected.push((index, reason)),
            }
        }
        self.rejected.sort_by_key(|(index, _)| *index);
        self.events = kept;
        self
    }
}

/// What the body of `POST /events` looked like.
#[derive(Debug)]
pub struct Parsed {
    /// Valid events with their index in the request.
    pub events: Vec<(usize, EventRecord)>,
    /// Invalid events: index and reason.
    pub rejected: Vec<(usize, String)>,
}

/// The events of a body, raw, counted as they are read: more than `limit` stops the parse
/// (setting `exceeded`) before the rest is read, so that a small compressed body of millions
/// of tiny entries costs no more than `limit` of them.
struct BoundedEvents<'c> {
    limit: usize,
    exceeded: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedEvents<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedEvents<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(event) = seq.next_element::<&'de RawValue>()? {
            if events.len() == self.limit {
                self.exceeded.set(true);
                return Err(de::Error::custom("too many events"));
            }
            events.push(event);
        }
        Ok(events)
    }
}

/// `{"events": [...]}`: the events, bounded as above; other fields are ignored.
struct WrappedEvents<'c>(BoundedEvents<'c>);

impl<'de> DeserializeSeed<'de> for WrappedEvents<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WrappedEvents<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"{"events": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seed = Some(self.0);
        let mut events = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match (key.as_ref(), seed.take()) {
                ("events", Some(seed)) => events = Some(map.next_value_seed(seed)?),
                ("events", None) => return Err(de::Error::duplicate_field("events")),
                (_, unused) => {
                    seed = unused;
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        events.ok_or_else(|| de::Error::missing_field("events"))
    }
}

/// Decompresses (if needed) and parses a request body. Body-level problems are errors
/// (400, 413); per-event problems are listed in `rejected`.
pub fn parse_body(
    body: &[u8],
    gzip: bool,
    beacon: bool,
    now_ms: i64,
    window: Window,
    limits: Limits,
) -> Result<Parsed, Error> {
    let limit = if beacon {
        limits.beacon
    } else {
        limits.request
    };
    if body.len() > limit {
        return Err(Error::TooLarge { limit });
    }
    let inflated;
    let body = if gzip {
        // A beacon is held to its limit once decompressed too.
        let cap = if beacon {
            limits.beacon
        } else {
            limits.decompressed
        };
        let mut out = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(body).take(cap as u64 + 1);
        decoder
            .read_to_end(&mut out)
            .map_err(|_| Error::bad_request("the body is not valid gzip"))?;
        if out.len() > cap {
            return Err(Error::TooLarge { limit: cap });
        }
        inflated = out;
        &inflated[..]
    } else {
        body
    };
    // Each event stays raw until its own size is checked. Serde's untagged enums cannot
    // carry borrowed raw values, so the shape is chosen by the first byte.
    let invalid = |e: serde_json::Error| Error::BadRequest {
        code: "invalid_json",
        message: format!("expected {{\"events\": [...]}} or a JSON array of events: {e}"),
    };
    let exceeded = Cell::new(false);
    let bounded = BoundedEvents {
        limit: limits.events_per_request,
        exceeded: &exceeded,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let raw = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => bounded.deserialize(&mut deserializer),
        _ => WrappedEvents(bounded).deserialize(&mut deserializer),
    }
    .and_then(|raw| deserializer.end().map(|()| raw));
    let raw: Vec<&RawValue> = match raw {
        Ok(raw) => raw,
        Err(_) if exceeded.get() => {
            return Err(Error::TooLarge {
                limit: limits.events_per_request,
            });
        }
        Err(error) => return Err(invalid(error)),
    };
    if raw.is_empty() {
        return Err(Error::bad_request("the batch holds no events"));
    }
    if raw.iter().any(|r| r.get().len() > limits.event) {
        return Err(Error::TooLarge {
            limit: limits.event,
        });
    }
    let mut parsed = Parsed {
        events: Vec::with_capacity(raw.len()),
        rejected: Vec::new(),
    };
    for (index, event) in raw.into_iter().enumerate() {
        let checked = serde_json::from_str::<EventInput>(event.get())
            .map_err(|e| format!("not an event object: {e}"))
            .and_then(|input| validate(input, now_ms, window));
        match checked {
            Ok(record) => parsed.events.push((index, record)),
            Err(reason) => parsed.rejected.push((index, reason)),
        }
    }
    Ok(parsed)
}

/// An event the pipeline gave up on, with why, for an operator to inspect and replay.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub seq: i64,
    pub event_id: String,
    pub error: String,
    pub attempts: i64,
    pub failed_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_760_000_000_000;
    const WINDOW: Window = Window {
        max_age_ms: 7 * clock::DAY_MS,
        max_future_ms: clock::DAY_MS,
    };

    fn parse(body: Json) -> Result<Parsed, Error> {
        parse_body(
            body.to_string().as_bytes(),
            false,
            false,
            NOW,
            WINDOW,
            LIMITS,
        )
    }

    fn exposure() -> Json {
        json!({"event_id": "6f1c2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f", "kind": "exposure", "unit": "u1",
               "experiment_id": "AF3E2A13-FD67-430D-87BF-0F8874B280D8", "variant": "treatment", "timestamp": NOW})
    }

    #[test]
    fn accepts_both_shapes_and_normalises() {
        let wrapped = parse(json!({"events": [exposure()]})).expect("valid");
        let bare = parse(json!([exposure()])).expect("valid");
        assert_eq!(wrapped.events, bare.events);
        let (_, e) = &wrapped.events[0];
        assert_eq!(e.unit_key, "user_id:u1");
        assert_eq!(
            e.kind,
            Kind::Exposure {
                experiment_id: "af3e2a13-fd67-430d-87bf-0f8874b280d8".into(),
                variant: "treatment".into()
            }
        );
        let metric = parse(json!([{"event_id": "7a2d2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f", "kind": "metric", "unit": 42,
            "unit_attribute": "device_id", "event_type": "revenue", "value": 9.5, "timestamp": "2025-10-09T08:53:20Z"}]))
        .expect("valid");
        let (_, m) = &metric.events[0];
        assert_eq!(
            (m.unit_key.as_str(), m.value, m.ts_ms),
            ("device_id:42", 9.5, NOW)
        );
    }

    /// Properties are stored as compact JSON with sorted keys, numbers without a fraction as
    /// integers, and absent when empty; the exposure's `attributes` go to the same place.
    #[test]
    fn properties_are_kept_compact_and_sorted() {
        let mut metric = exposure();
        metric["kind"] = json!("metric");
        metric["event_type"] = json!("purchase");
        metric["properties"] = json!({"items": 2.0, "currency": "USD", "first": true,
            "share": 0.5, "big": 1e300, "js": 10_000_000_000_000_000u64, "py": 1e16,
            "exact": 9_007_199_254_740_993u64});
        let mut exposed = exposure();
        exposed["event_id"] = json!("7a2d2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f");
        exposed["attributes"] = json!({});
        let parsed = parse(json!([metric, exposed])).expect("valid");
        assert_eq!(parsed.rejected, []);
        assert_eq!(
            parsed.events[0].1.properties.as_deref(),
            Some(
                r#"{"big":1e+300,"currency":"USD","exact":9007199254740993,"first":true,"items":2,"js":10000000000000000,"py":10000000000000000,"share":0.5}"#
            )
        );
        assert_eq!(parsed.events[1].1.properties, None);
        let back = parse_properties(parsed.events[0].1.properties.as_deref());
        assert_eq!(back["items"], json!(2));
        assert!(parse_properties(None).is_empty());
    }

    #[test]
    fn rejects_bad_events_with_reasons_and_keeps_the_rest() {
        let mut future = exposure();
        future["timestamp"] = json!(NOW + 2 * clock::DAY_MS);
        let mut old = exposure();
        old["timestamp"] = json!(NOW - 8 * clock::DAY_MS);
        let parsed = parse(
            json!([exposure(), {"kind": "metric"}, future, old, {"event_id": "x"}, 5,
            {"event_id": "7a2d2c1e-8b1a-4c1e-9a7e-0a1b2c3d4e5f", "kind": "click", "unit": "u"}]),
        )
        .expect("body is fine");
        assert_eq!(parsed.events.len(), 1);
        let reasons: Vec<(usize, &str)> = parsed
            .rejected
            .iter()
            .map(|(i, r)| (*i, r.as_str()))
            .collect();
        assert_eq!(reasons[0], (1, "`event_id` is required"));
        assert!(reasons[1].1.contains("future"));
        assert!(reasons[2].1.contains("older"));
        assert!(reasons[3].1.contains("UUID"));
        assert!(reasons[4].1.contains("not an event object"));
        assert!(reasons[5].1.contains("unknown `kind`"));
    }

    /// PostgreSQL's text cannot hold NUL: such an event is refused on its own, with its
    /// reason, rather than failing the write of every request batched with it.
    #[test]
    fn units_and_variants_with_nul_are_refused() {
        let mut unit = exposure();
        unit["unit"] = json!("u\u{0}1");
        let mut variant = exposure();
        variant["variant"] = json!("control\u{0}");
        let parsed = parse(json!([unit, variant, exposure()])).expect("body is fine");
        assert_eq!(parsed.events.len(), 1);
        let reasons: Vec<&str> = parsed.rejected.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "`unit` must not contain NUL characters",
                "`variant` must not contain NUL characters"
            ]
        );
    }

    #[test]
    fn body_level_problems() {
        assert!(matches!(parse(json!([])), Err(Error::BadRequest { .. })));
        assert!(matches!(
            parse_body(b"{", false, false, NOW, WINDOW, LIMITS),
            Err(Error::BadRequest { .. })
        ));
        let big = json!([{"event_id": "x", "pad": "a".repeat(40_000)}]);
        assert!(matches!(parse(big), Err(Error::TooLarge { .. })));
        let beacon = vec![b' '; 70_000];
        assert!(matches!(
            parse_body(&beacon, false, true, NOW, WINDOW, LIMITS),
            Err(Error::TooLarge { .. })
        ));
        // A small gzip body that inflates past the limit is refused.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, &vec![b' '; 9 * 1024 * 1024]).expect("compress");
        let bomb = encoder.finish().expect("compress");
        assert!(matches!(
            parse_body(&bomb, true, false, NOW, WINDOW, LIMITS),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            parse_body(b"not gzip", true, false, NOW, WINDOW, LIMITS),
            Err(Error::BadRequest { .. })
        ));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, bytes).expect("compress");
        encoder.finish().expect("compress")
    }

    /// Issue 26: a few KiB of gzip that inflate to millions of tiny entries are refused at
    /// the event limit, counted while parsing, in either body shape.
    #[test]
    fn a_compressed_flood_of_tiny_entries_stops_at_the_event_limit() {
        let entries = vec!["{}"; 2_000_000].join(",");
        for body in [
            format!("[{entries}]"),
            format!(r#"{{"events": [{entries}]}}"#),
        ] {
            let bomb = gzip(body.as_bytes());
            assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
            let limits = Limits {
                decompressed: 8 * 1024 * 1024,
                ..LIMITS
            };
            assert!(matches!(
                parse_body(&bomb, true, false, NOW, WINDOW, limits),
                Err(Error::TooLarge { limit: 10_000 })
            ));
        }
        // With the default cap the same body is refused before it is even parsed.
        let bomb = gzip(format!("[{entries}]").as_bytes());
        assert!(matches!(
            parse_body(&bomb, true, false, NOW, WINDOW, LIMITS),
            Err(Error::TooLarge { limit }) if limit == LIMITS.decompressed
        ));
        // The parse stops at the limit: what follows is never read.
        let cut = format!("[{},!!! not JSON", vec!["{}"; 10_001].join(","));
        assert!(matches!(
            parse_body(cut.as_bytes(), false, false, NOW, WINDOW, LIMITS),
            Err(Error::TooLarge { limit: 10_000 })
        ));
        // The wrapper's other fields are ignored; a repeated `events` is not.
        let wrapped = br#"{"sdk": "js", "events": [{"event_id": 1}]}"#;
        assert!(parse_body(wrapped, false, false, NOW, WINDOW, LIMITS).is_ok());
        let twice = br#"{"events": [], "events": []}"#;
        assert!(matches!(
            parse_body(twice, false, false, NOW, WINDOW, LIMITS),
            Err(Error::BadRequest { .. })
        ));
    }

    /// A beacon is held to its size limit after decompression too.
    #[test]
    fn a_compressed_beacon_is_held_to_the_beacon_limit() {
        let padded = format!(r#"[{{"event_id": "x", "pad": "{}"}}]"#, " ".repeat(100_000));
        let body = gzip(padded.as_bytes());
        assert!(body.len() < LIMITS.beacon);
        assert!(matches!(
            parse_body(&body, true, true, NOW, WINDOW, LIMITS),
            Err(Error::TooLarge { limit }) if limit == LIMITS.beacon
        ));
    }
}
