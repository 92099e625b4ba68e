//! Snapshot bytes are untrusted: decoding, validation and evaluation must never panic.
//! The input is tried as a whole envelope and, reframed with a valid header and checksum,
//! as a payload of each format, so that the fuzzer reaches the postcard decoder (format 1's
//! and format 2's) and the validator.
#![no_main]

use abx_core::{Context, Evaluator};
use libfuzzer_sys::fuzz_target;

fn exercise(bytes: &[u8]) {
    let _ = abx_core::peek_version(bytes);
    let _ = abx_core::decode_verified(bytes, &[0x3b; 32]);
    if let Ok(evaluator) = Evaluator::from_bytes(bytes) {
        let contexts = [
            Context::new(),
            Context::new().with("user_id", "u-1").with("country", "US").with("age", 30i64),
            Context::new().with("user_id", 42i64).with("tags", vec!["vip".to_string()]).with("beta", true),
        ];
        for context in &contexts {
            for now_ms in [0, 1_760_000_000_000, i64::MIN, i64::MAX] {
                let evaluation = evaluator.evaluate(context, now_ms);
                for a in &evaluation.experiments {
                    let _ = evaluator.experiment(a.experiment_key, context, now_ms);
                    let _ = evaluator.holdout_step(a, context);
                    let _ = evaluator.exposure_attributes(a.index, context);
                }
                for f in &evaluation.flags {
                    let _ = evaluator.flag(f.flag_key, context, now_ms);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    for header in [b"ABXS\x01\x00\x00\x00", b"ABXS\x02\x00\x00\x00"] {
        let mut framed = header.to_vec();
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&abx_core::crc32(data).to_le_bytes());
        exercise(&framed);
    }
});
