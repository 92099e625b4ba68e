//! Generates the conformance suite under `snapshots/`: golden snapshot files (binary, with a
//! JSON twin), vector files whose expected values come from an independent reference model
//! of the spec, and deliberately broken snapshots that every runtime must refuse.
//!
//! `cargo run -p abx-snapshots` rewrites the files; `cargo run -p abx-snapshots -- --check`
//! (and this crate's tests) fail when the committed files differ from what it produces.

pub mod contexts;
pub mod reference;
pub mod scenarios;

use std::fmt::Write as _;

use abx_core::snapshot::Snapshot;
use serde_json::Value as Json;

use contexts::Rng;
use reference::{Coverage, Reference};
use scenarios::{BASE_TIME_MS, Scenario};

/// A generated file, with its path relative to the `snapshots/` directory.
pub struct Artifact {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Everything the generator produces, plus what the cases covered.
pub struct Suite {
    pub artifacts: Vec<Artifact>,
    pub coverage: Coverage,
    pub cases: usize,
}

pub fn generate() -> Suite {
    let mut artifacts = Vec::new();
    let mut coverage = Coverage::default();
    let mut cases = 0;
    let scenarios = scenarios::all();
    for (seed, scenario) in scenarios.iter().enumerate() {
        if let Err(error) = abx_core::Evaluator::new(scenario.snapshot.clone()) {
            panic!(
                "scenario {} is not a valid snapshot: {error}",
                scenario.name
            );
        }
        let bytes = encode(scenario);
        let twin =
            serde_json::to_string_pretty(&scenario.snapshot).expect("snapshot serializes") + "\n";
        let vectors = vectors(scenario, seed as u64, &mut coverage);
        cases += scenario.cases;
        artifacts.push(Artifact {
            path: format!("golden/{}.abxs", scenario.name),
            bytes,
        });
        artifacts.push(Artifact {
            path: format!("golden/{}.json", scenario.name),
            bytes: twin.into_bytes(),
        });
        artifacts.push(Artifact {
            path: format!("vectors/{}.json", scenario.name),
            bytes: vectors.into_bytes(),
        });
    }
    artifacts.extend(invalid(&scenarios));
    Suite {
        artifacts,
        coverage,
        cases,
    }
}

/// Each golden file is written in the oldest format that holds its snapshot, so that the
/// suite keeps both formats that runtimes must read: format 1, which deployed origins still
/// serve, and format 2 where a scenario uses what it added.
fn encode(scenario: &Scenario) -> Vec<u8> {
    let s = &scenario.snapshot;
    let format = if s.exposure_attributes.is_empty() && s.holdout_units.is_empty() {
        abx_core::Format::V1
    } else {
        abx_core::Format::V2
    };
    match &scenario.signing_seed {
        Some(seed) => abx_core::encode_signed_as(s, seed, format),
        None => abx_core::encode_as(s, format),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn public_key_json(scenario: &Scenario) -> String {
    match &scenario.signing_seed {
        Some(seed) => format!("\"{}\"", hex(&abx_core::public_key(seed))),
        None => "null".into(),
    }
}

/// One vector file: a header line, then one case per line so that diffs stay readable.
fn vectors(scenario: &Scenario, seed: u64, coverage: &mut Coverage) -> String {
    let reference = Reference {
        snapshot: &scenario.snapshot,
    };
    let mut rng = Rng::new(0xabc0_0000 + seed);
    let mut out = format!(
        "{{\"snapshot\":\"{}.abxs\",\"public_key\":{},\"cases\":[\n",
        scenario.name,
        public_key_json(scenario)
    );
    for case in 0..scenario.cases {
        let attrs = contexts::context(&mut rng);
        let context_text = contexts::to_json_text(&attrs);
        // The reference reads exactly the text that every runtime will read.
        let context: serde_json::Map<String, Json> =
            serde_json::from_str(&context_text).expect("generated context is JSON");
        let now_ms = if scenario.time_spread_ms > 0 {
            BASE_TIME_MS + (rng.below(scenario.time_spread_ms as u64) as i64)
        } else {
            BASE_TIME_MS + rng.below(1_000) as i64
        };
        let mut expected = String::new();
        for (i, e) in scenario.snapshot.experiments.iter().enumerate() {
            let outcome = reference.experiment(i, &context, now_ms, coverage);
            let variant = outcome
                .variant
                .map_or("null".into(), |v| Json::from(v).to_string());
            let separator = if i == 0 { "" } else { "," };
            let key = Json::from(e.key.as_str());
            // The holdout's arm only where the unit reached one, so that runtimes that do not
            // log holdout exposures read the vectors as before.
            let holdout = outcome
                .holdout
                .map_or(String::new(), |arm| format!(",\"holdout\":\"{arm}\""));
            // Likewise the attributes its exposures carry, only where the snapshot lists some.
            let attributes =
                reference
                    .exposure_attributes(i, &context)
                    .map_or(String::new(), |carried| {
                        let object: serde_json::Map<String, Json> = carried.into_iter().collect();
                        format!(",\"attributes\":{}", Json::Object(object))
                    });
            write!(
                expected,
                "{separator}{key}:{{\"variant\":{variant},\"reason\":\"{}\"{holdout}{attributes}}}",
                outcome.reason
            )
            .expect("writing to a String");
        }
        let mut flags = String::new();
        for (i, f) in scenario.snapshot.flags.iter().enumerate() {
            let outcome = reference.flag(i, &context, now_ms, coverage);
            let separator = if i == 0 { "" } else { "," };
            let key = Json::from(f.key.as_str());
            let value = Json::from(outcome.value);
            // As for experiments, the arm only where the flag's unit reached a holdout, with
            // the experiment it reached it through (whose unit the exposure names).
            let holdout = outcome.holdout.map_or(String::new(), |(e, arm)| {
                let through = Json::from(scenario.snapshot.experiments[e].key.as_str());
                format!(",\"holdout\":\"{arm}\",\"holdout_experiment\":{through}")
            });
            write!(
                flags,
                "{separator}{key}:{{\"value\":{value},\"reason\":\"{}\"{holdout}}}",
                outcome.reason
            )
            .expect("writing to a String");
        }
        let separator = if case + 1 == scenario.cases { "" } else { "," };
        writeln!(
            out,
            "{{\"context\":{context_text},\"now_ms\":{now_ms},\"expected\":{{{expected}}},\"flags\":{{{flags}}}}}{separator}"
        )
        .expect("writing to a String");
    }
    out.push_str("]}\n");
    out
}

/// Broken snapshots and the error code every runtime must report for them.
fn invalid(scenarios: &[Scenario]) -> Vec<Artifact> {
    let basic = scenarios
        .iter()
        .find(|s| s.name == "basic")
        .expect("basic scenario");
    let signed = scenarios
        .iter()
        .find(|s| s.name == "signed")
        .expect("signed scenario");
    let good = encode(basic);
    let good_signed = encode(signed);
    let key = public_key_json(signed);
    let other_key = format!("\"{}\"", hex(&abx_core::public_key(&[7; 32])));
    let payload_len = good.len() - 16;

    let with_payload = |payload: &[u8]| {
        let mut bytes = good[..8].to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&abx_core::crc32(payload).to_le_bytes());
        bytes
    };
    let dimensions = scenarios
        .iter()
        .find(|s| s.name == "dimensions")
        .expect("dimensions scenario");
    let mut stray_attribute = dimensions.snapshot.clone();
    stray_attribute.exposure_attributes[0].push(999);
    let mut short_table = dimensions.snapshot.clone();
    short_table.holdout_units.pop();
    let mut broken_model = basic.snapshot.clone();
    broken_model.experiments[0].unit = 999;
    let broken_model_payload = postcard_payload(&broken_model);
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let mut cases: Vec<(&str, Vec<u8>, String, &str)> = Vec::new();
    let mut case =
        |name, bytes, key: &str, error| cases.push((name, bytes, key.to_string(), error));
    case("empty", Vec::new(), "null", "truncated");
    case("header_only", good[..11].to_vec(), "null", "truncated");
    case("bad_magic", patched(&good, 3, b'T'), "null", "bad_magic");
    case(
        "future_version",
        patched(&good, 4, 3),
        "null",
        "unsupported_version",
    );
    // Format 2 appends tables to format 1's payload: a format 1 payload labelled 2 lacks them.
    case(
        "format_1_labelled_2",
        patched(&good, 4, 2),
        "null",
        "malformed_payload",
    );
    case(
        "unknown_flags",
        patched(&good, 6, 0x04),
        "null",
        "unknown_flags",
    );
    let mut huge = good.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    case("absurd_length", huge, "null", "too_large");
    case(
        "truncated_payload",
        good[..good.len() - 10].to_vec(),
        "null",
        "truncated",
    );
    let mut trailing = good.clone();
    trailing.push(0);
    case("trailing_byte", trailing, "null", "trailing_bytes");
    // A byte after a format 1 payload, inside the checksum: it would read as the start of
    // format 2's tables, which format 1 does not have.
    let mut payload_and_byte = good[12..good.len() - 4].to_vec();
    payload_and_byte.push(1);
    case(
        "format_1_payload_and_a_byte",
        with_payload(&payload_and_byte),
        "null",
        "trailing_bytes",
    );
    case(
        "flipped_payload_bit",
        patched(
            &good,
            12 + payload_len / 2,
            good[12 + payload_len / 2] ^ 0x01,
        ),
        "null",
        "bad_checksum",
    );
    case(
        "garbage_payload",
        with_payload(&garbage),
        "null",
        "malformed_payload",
    );
    case(
        "broken_model",
        with_payload(&broken_model_payload),
        "null",
        "invalid_snapshot",
    );
    case(
        "stray_exposure_attribute",
        abx_core::encode(&stray_attribute),
        "null",
        "invalid_snapshot",
    );
    case(
        "short_holdout_units",
        abx_core::encode(&short_table),
        "null",
        "invalid_snapshot",
    );
    // Tampering with a signed snapshot and fixing up its checksum must still be caught.
    let mut tampered = good_signed.clone();
    let at = 12 + (good_signed.len() - 16 - 64) / 2;
    tampered[at] ^= 0x20;
    let tampered_payload_end = good_signed.len() - 64 - 4;
    let crc = abx_core::crc32(&tampered[12..tampered_payload_end]);
    tampered[tampered_payload_end..tampered_payload_end + 4].copy_from_slice(&crc.to_le_bytes());
    case("tampered_signed", tampered, &key, "bad_signature");
    case(
        "wrong_key",
        good_signed.clone(),
        &other_key,
        "bad_signature",
    );
    case("unsigned_but_key_required", good.clone(), &key, "unsigned");

    let mut manifest = String::from("{\"cases\":[\n");
    let mut artifacts = Vec::new();
    for (i, (name, bytes, key, error)) in cases.iter().enumerate() {
        let separator = if i + 1 == cases.len() { "" } else { "," };
        writeln!(manifest, "{{\"file\":\"invalid/{name}.abxs\",\"public_key\":{key},\"error\":\"{error}\"}}{separator}")
            .expect("writing to a String");
        artifacts.push(Artifact {
            path: format!("golden/invalid/{name}.abxs"),
            bytes: bytes.clone(),
        });
    }
    manifest.push_str("]}\n");
    artifacts.push(Artifact {
        path: "vectors/invalid.json".into(),
        bytes: manifest.into_bytes(),
    });
    artifacts
}

fn patched(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] = value;
    out
}

/// The payload of `snapshot` in format 1, the format of the `basic` golden file whose
/// header the invalid cases reuse.
fn postcard_payload(snapshot: &Snapshot) -> Vec<u8> {
    let bytes = abx_core::encode_as(snapshot, abx_core::Format::V1);
    bytes[12..bytes.len() - 4].to_vec()
}
