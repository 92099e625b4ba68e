//! Replays every conformance vector in `snapshots/vectors/` through the core. The expected
//! values come from the generator's independent reference model of the spec.

use std::path::{Path, PathBuf};

use abx_core::{Context, Error, Evaluator};
use serde_json::{Value as Json, json};

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../snapshots")
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn load(bytes: &[u8], public_key: &Json) -> Result<Evaluator, Error> {
    match public_key.as_str() {
        Some(key) => Evaluator::from_verified_bytes(bytes, &hex_decode(key)),
        None => Evaluator::from_bytes(bytes),
    }
}

/// Checks one vector file, returning the number of cases and a description of each mismatch.
fn check(vector_file: &Path) -> (usize, Vec<String>) {
    let vectors: Json =
        serde_json::from_slice(&std::fs::read(vector_file).expect("vector file")).expect("JSON");
    let snapshot_name = vectors["snapshot"].as_str().expect("snapshot name");
    let bytes =
        std::fs::read(suite_dir().join("golden").join(snapshot_name)).expect("golden snapshot");
    let evaluator = load(&bytes, &vectors["public_key"]).expect("golden snapshot loads");
    let cases = vectors["cases"].as_array().expect("cases");
    let mut mismatches = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let context: Context = serde_json::from_value(case["context"].clone()).expect("context");
        let now_ms = case["now_ms"].as_i64().expect("now_ms");
        let evaluation = evaluator.evaluate(&context, now_ms);
        let expected = case["expected"].as_object().expect("expected");
        assert_eq!(
            expected.len(),
            evaluation.experiments.len(),
            "case {n}: experiment count"
        );
        for got in &evaluation.experiments {
            let want = &expected[got.experiment_key];
            let step = evaluator.holdout_step(got, &context);
            let got_pair = (
                got.variant,
                got.reason.as_str(),
                step.map(|step| step.arm()),
            );
            let want_pair = (
                want["variant"].as_str(),
                want["reason"].as_str().unwrap_or_default(),
                want["holdout"].as_str(),
            );
            if got_pair != want_pair {
                mismatches.push(format!(
                    "{snapshot_name} case {n} {}: got {got_pair:?}, want {want_pair:?}",
                    got.experiment_key
                ));
            }
            // What its exposures carry (format 2), as the `attributes` object of an event.
            let carried = serde_json::to_value(evaluator.exposure_attributes(got.index, &context))
                .expect("serializes");
            let want_carried = want.get("attributes").cloned().unwrap_or(json!({}));
            if carried != want_carried {
                mismatches.push(format!(
                    "{snapshot_name} case {n} {} attributes: got {carried:?}, want {want_carried:?}",
                    got.experiment_key
                ));
            }
            // Single-experiment evaluation must agree with the full pass.
            let single = evaluator
                .experiment(got.experiment_key, &context, now_ms)
                .expect("known key");
            assert_eq!(&single, got, "case {n}: single evaluation differs");
            assert_eq!(got.log_exposure, got.reason == abx_core::Reason::Assigned);
            // The origin checks a holdout exposure by the unit alone: it must agree.
            if let Some(step) = step {
                let snapshot = evaluator.snapshot();
                let unit_attribute = snapshot.experiments[got.index as usize].unit;
                let unit = context
                    .get(&snapshot.attributes[unit_attribute as usize])
                    .and_then(abx_core::unit_text)
                    .expect("a holdout step has a unit");
                assert_eq!(
                    evaluator.holdout_arm(step.index, &unit),
                    Some(step.arm()),
                    "case {n}: {} holdout arm",
                    got.experiment_key
                );
            }
        }
        let expected_flags = case["flags"].as_object().expect("flags");
        assert_eq!(
            expected_flags.len(),
            evaluation.flags.len(),
            "case {n}: flag count"
        );
        for got in &evaluation.flags {
            let want = &expected_flags[got.flag_key];
            // The arm a caller logs for the flag: that of the experiment it names.
            let step = got.holdout_experiment.map(|e| {
                let answer = &evaluation.experiments[e as usize];
                let step = evaluator.holdout_step(answer, &context);
                let step =
                    step.expect("the flag names an experiment whose answer reached its holdout");
                (step.arm(), answer.experiment_key)
            });
            let got_pair = (got.value, got.reason.as_str(), step);
            let want_step = want["holdout"].as_str().map(|arm| {
                let through = want["holdout_experiment"].as_str();
                (arm, through.expect("an arm names its experiment"))
            });
            let want_pair = (
                want["value"].as_str().unwrap_or_default(),
                want["reason"].as_str().unwrap_or_default(),
                want_step,
            );
            if got_pair != want_pair {
                mismatches.push(format!(
                    "{snapshot_name} case {n} flag {}: got {got_pair:?}, want {want_pair:?}",
                    got.flag_key
                ));
            }
            let single = evaluator
                .flag(got.flag_key, &context, now_ms)
                .expect("known flag");
            assert_eq!(&single, got, "case {n}: single flag evaluation differs");
        }
    }
    (cases.len(), mismatches)
}

#[test]
fn every_vector_matches() {
    let mut total = 0;
    let mut mismatches = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir().join("vectors"))
        .expect("vectors directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.file_name().is_some_and(|n| n != "invalid.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "found {files:?}");
    for file in &files {
        let (cases, found) = check(file);
        total += cases;
        mismatches.extend(found);
    }
    assert!(total >= 20_000, "only {total} cases");
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}

#[test]
fn broken_snapshots_are_refused_with_the_expected_error() {
    let manifest: Json = serde_json::from_slice(
        &std::fs::read(suite_dir().join("vectors/invalid.json")).expect("manifest"),
    )
    .expect("JSON");
    for case in manifest["cases"].as_array().expect("cases") {
        let file = case["file"].as_str().expect("file");
        let bytes = std::fs::read(suite_dir().join("golden").join(file)).expect("broken snapshot");
        let error = load(&bytes, &case["public_key"]).expect_err(file);
        assert_eq!(
            error.code(),
            case["error"].as_str().expect("error"),
            "{file}: {error}"
        );
    }
}

/// `signed_parts`'s recipe for verifying outside abx-core (as the browser package does with
/// WebCrypto), with ed25519-compact standing in for the platform's verifier.
fn load_verified_outside(bytes: &[u8], key: &[u8]) -> Result<Evaluator, Error> {
    if key.len() != 32 {
        return Err(Error::BadPublicKey);
    }
    let parts = abx_core::signed_parts(bytes)?;
    let key = ed25519_compact::PublicKey::from_slice(key).map_err(|_| Error::BadPublicKey)?;
    let signature =
        ed25519_compact::Signature::from_slice(parts.signature).map_err(|_| Error::BadSignature)?;
    key.verify(parts.signed, &signature)
        .map_err(|_| Error::BadSignature)?;
    Evaluator::from_bytes(bytes)
}

/// Appends an Ed25519 signature by `seed` to an envelope whose header has the signed flag.
fn sign(mut unsigned_envelope: Vec<u8>, seed: &[u8; 32]) -> Vec<u8> {
    let key_pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(*seed));
    let signature = key_pair.sk.sign(&unsigned_envelope, None);
    unsigned_envelope.extend_from_slice(signature.as_ref());
    unsigned_envelope
}

#[test]
fn verifying_with_signed_parts_reports_what_decode_verified_reports() {
    let golden = suite_dir().join("golden");
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in [golden.clone(), golden.join("invalid")] {
        for entry in std::fs::read_dir(&dir).expect("golden dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "abxs") {
                inputs.push((
                    path.display().to_string(),
                    std::fs::read(&path).expect("file"),
                ));
            }
        }
    }

    // Byte-level damage to a signed snapshot, each field of the envelope in turn.
    let signed = std::fs::read(golden.join("signed.abxs")).expect("signed snapshot");
    let len = signed.len();
    for (what, at) in [
        ("magic", 0),
        ("version", 4),
        ("flags", 6),
        ("length", 8),
        ("payload", 20),
        ("checksum", len - 66),
        ("signature R", len - 64),
        ("signature S", len - 1),
    ] {
        let mut bytes = signed.clone();
        bytes[at] ^= 0x01;
        inputs.push((format!("signed, {what} flipped"), bytes));
    }
    for cut in [0, 11, 12, 16, len - 64, len - 1] {
        inputs.push((format!("signed, cut at {cut}"), signed[..cut].to_vec()));
    }
    let mut longer = signed.clone();
    longer.push(0);
    inputs.push(("signed, a byte appended".into(), longer));

    // Validly signed envelopes whose payload is refused later: not postcard, and a model that
    // breaks an invariant. Only these reach the payload checks behind the signature.
    let seed = [7u8; 32];
    let payload = b"not a postcard snapshot";
    let mut garbage = Vec::new();
    garbage.extend_from_slice(&abx_core::MAGIC);
    garbage.extend_from_slice(&abx_core::FORMAT_VERSION.to_le_bytes());
    garbage.extend_from_slice(&1u16.to_le_bytes());
    garbage.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    garbage.extend_from_slice(payload);
    garbage.extend_from_slice(&abx_core::crc32(payload).to_le_bytes());
    inputs.push(("signed garbage payload".into(), sign(garbage, &seed)));
    let broken = std::fs::read(golden.join("invalid/broken_model.abxs")).expect("broken model");
    let broken = abx_core::decode(&broken).expect("decodes before validation");
    inputs.push((
        "signed broken model".into(),
        abx_core::encode_signed(&broken, &seed),
    ));
    let good = abx_core::decode(&signed).expect("signed snapshot decodes");
    inputs.push((
        "signed by seed".into(),
        abx_core::encode_signed(&good, &seed),
    ));

    let vectors: Json = serde_json::from_slice(
        &std::fs::read(suite_dir().join("vectors/signed.json")).expect("vectors"),
    )
    .expect("JSON");
    let keys = [
        hex_decode(vectors["public_key"].as_str().expect("public key")),
        abx_core::public_key(&seed).to_vec(),
        vec![0u8; 32],
        vec![1u8; 31],
        Vec::new(),
    ];

    let outcome = |result: Result<Evaluator, Error>| result.map(|_| "ok").map_err(|e| e.code());
    let mut seen = std::collections::BTreeSet::new();
    for (name, bytes) in &inputs {
        for key in &keys {
            let inside = outcome(Evaluator::from_verified_bytes(bytes, key));
            let outside = outcome(load_verified_outside(bytes, key));
            assert_eq!(outside, inside, "{name} with a {}-byte key", key.len());
            seen.insert(inside.unwrap_or_else(|code| code));
        }
    }
    // The inputs reach every stage, so the comparison covers each error of the order.
    let expected = [
        "ok",
        "bad_public_key",
        "truncated",
        "bad_magic",
        "unsupported_version",
        "unknown_flags",
        "too_large",
        "trailing_bytes",
        "bad_checksum",
        "unsigned",
        "bad_signature",
        "malformed_payload",
        "invalid_snapshot",
    ];
    assert_eq!(seen, expected.into_iter().collect(), "outcomes reached");
}
