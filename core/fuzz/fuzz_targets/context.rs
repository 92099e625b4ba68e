//! Contexts arrive from hosts as postcard (the C-ABI module) or JSON: neither decoder may
//! panic, and whatever decodes must evaluate.
#![no_main]

use abx_core::{Context, Evaluator};
use libfuzzer_sys::fuzz_target;

const GOLDEN: &[u8] = include_bytes!("../../../snapshots/golden/targeting.abxs");

fuzz_target!(|data: &[u8]| {
    let evaluator = Evaluator::from_bytes(GOLDEN).expect("golden snapshot");
    let decoded = [postcard::from_bytes::<Context>(data).ok(), serde_json::from_slice::<Context>(data).ok()];
    for context in decoded.into_iter().flatten() {
        let _ = evaluator.evaluate(&context, 1_760_000_000_000);
    }
});
