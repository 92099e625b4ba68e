//! `bench`: evaluates every experiment and flag of the realistic 1,000-experiment snapshot for
//! one user, natively (abx-core in this process) and through the module in wasmtime, and
//! prints both with their ratio. Same user and time as `core/benches/assign.rs`.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use abx_core::{Context, Evaluator};
use anyhow::{Result, anyhow};

use crate::module::{AbxModule, ContextFormat, ResultFormat};

const NOW_MS: i64 = 1_760_000_000_000;

fn user() -> Context {
    Context::new()
        .with("user_id", "8f14e45f-ceea-467f-a0e6-0a1b2c3d4e5f")
        .with("country", "US")
        .with("platform", "ios")
        .with("app_version", "2.4.1")
        .with("plan", "pro")
        .with("age", 34i64)
}

/// Median time of one call in microseconds over 7 rounds of about 0.3 s each.
fn measure(mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut warm = 0u32;
    while start.elapsed().as_secs_f64() < 0.3 {
        call()?;
        warm += 1;
    }
    let per_round = (f64::from(warm) * 0.3 / start.elapsed().as_secs_f64()).max(1.0) as u32;
    let mut rounds = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..per_round {
            call()?;
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

pub fn run(wasm: &[u8], suite: &Path) -> Result<()> {
    let bytes = std::fs::read(suite.join("golden/realistic_1000.abxs"))?;
    let evaluator = Evaluator::from_bytes(&bytes).map_err(|e| anyhow!("{e}"))?;
    let context = user();
    let experiments = evaluator.snapshot().experiments.len();
    let flags = evaluator.snapshot().flags.len();
    println!(
        "realistic_1000.abxs: {} bytes, {experiments} experiments, {flags} flags",
        bytes.len()
    );

    let native = measure(|| {
        black_box(evaluator.evaluate(black_box(&context), NOW_MS));
        Ok(())
    })?;
    println!("native abx-core evaluate: {native:.2} µs");
    let native_load = measure(|| {
        black_box(Evaluator::from_bytes(black_box(&bytes)).map_err(|e| anyhow!("{e}"))?);
        Ok(())
    })?;

    let mut module = AbxModule::load(wasm)?;
    let handle = module.load_snapshot(&bytes, None)?;
    let postcard = module.write(&postcard::to_allocvec(&context)?)?;
    let json = module.write(&serde_json::to_vec(&context)?)?;
    let mut words = Vec::new();
    let packed = measure(|| {
        module.evaluate_in_place(
            handle,
            postcard,
            ContextFormat::Postcard,
            NOW_MS,
            ResultFormat::Packed,
        )?;
        module.result_words(&mut words)
    })?;
    if words.len() != 2 * (experiments + flags) {
        return Err(anyhow!("packed result has {} words", words.len()));
    }
    let packed_json_context = measure(|| {
        module.evaluate_in_place(
            handle,
            json,
            ContextFormat::Json,
            NOW_MS,
            ResultFormat::Packed,
        )?;
        module.result_words(&mut words)
    })?;
    let json_result = measure(|| {
        module.evaluate_in_place(
            handle,
            json,
            ContextFormat::Json,
            NOW_MS,
            ResultFormat::Json,
        )?;
        black_box(module.result()?);
        Ok(())
    })?;
    let wasm_load = measure(|| {
        let handle = module.load_snapshot(&bytes, None)?;
        module.unload(handle)
    })?;

    let ratio = |t: f64| t / native;
    println!(
        "wasmtime evaluate, postcard context, packed result: {packed:.2} µs ({:.2}× native)",
        ratio(packed)
    );
    println!(
        "wasmtime evaluate, JSON context, packed result: {packed_json_context:.2} µs ({:.2}× native)",
        ratio(packed_json_context)
    );
    println!(
        "wasmtime evaluate, JSON context, JSON result (copied out): {json_result:.2} µs ({:.2}× native)",
        ratio(json_result)
    );
    println!(
        "load snapshot: native {native_load:.0} µs, wasmtime {wasm_load:.0} µs ({:.2}×)",
        wasm_load / native_load
    );
    Ok(())
}
