//! The ABI's error contract (docs/wasm-abi.md, "Error codes"): every misuse a host can commit
//! returns its code, and the instance keeps working afterwards.

use std::path::Path;

use anyhow::Result;

use crate::module::{AbiError, AbxModule, Buffer, ContextFormat, ResultFormat};

const NOW_MS: i64 = 1_760_000_000_000;

/// Runs every misuse case; returns (passed, failed) and prints each failure.
pub fn run(module: &mut AbxModule, suite: &Path) -> Result<(usize, usize)> {
    let snapshot = std::fs::read(suite.join("golden/basic.abxs"))?;
    let handle = module.load_snapshot(&snapshot, None)?;
    let json = module.write(br#"{"user_id": "u1", "country": "US"}"#)?;
    let not_a_context = module.write(b"[1, 2, 3]")?;
    let garbage = module.write(&[0xff, 0xff, 0xff, 0xff, 0x0f])?;
    let bad_utf8 = module.write(&[0x66, 0xff, 0x67])?;
    let unloaded = module.load_snapshot(&snapshot, None)?;
    module.unload(unloaded)?;
    let nowhere = Buffer { ptr: 8, len: 4 };
    let too_long = Buffer {
        ptr: json.ptr,
        len: json.len + 1,
    };
    let unknown = module.write(b"no_such_experiment")?;

    type Case<'a> = (&'a str, &'a str, Box<dyn Fn(&mut AbxModule) -> Result<()>>);
    let evaluate = move |h: u32, ctx: Buffer, format: u32, result: u32| {
        move |m: &mut AbxModule| m.evaluate_raw((h, ctx.ptr, ctx.len, format, NOW_MS, result))
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "free of an unknown address",
            "invalid_buffer",
            Box::new(move |m| m.free(nowhere)),
        ),
        (
            "load from an unknown address",
            "invalid_buffer",
            Box::new(move |m| m.load_raw(nowhere, Buffer { ptr: 0, len: 0 }).map(drop)),
        ),
        (
            "load past a buffer's end",
            "invalid_buffer",
            Box::new(move |m| m.load_raw(too_long, Buffer { ptr: 0, len: 0 }).map(drop)),
        ),
        (
            "load of an empty snapshot",
            "truncated",
            Box::new(move |m| {
                m.load_raw(Buffer { ptr: 0, len: 0 }, Buffer { ptr: 0, len: 0 })
                    .map(drop)
            }),
        ),
        (
            "handle 0",
            "invalid_handle",
            Box::new(evaluate(0, json, 0, 0)),
        ),
        (
            "handle never issued",
            "invalid_handle",
            Box::new(evaluate(999, json, 0, 0)),
        ),
        (
            "unloaded handle",
            "invalid_handle",
            Box::new(evaluate(unloaded, json, 0, 1)),
        ),
        (
            "unload twice",
            "invalid_handle",
            Box::new(move |m| m.unload(unloaded)),
        ),
        (
            "JSON context that is not an object",
            "invalid_context",
            Box::new(evaluate(handle, not_a_context, 0, 0)),
        ),
        (
            "postcard context of garbage",
            "invalid_context",
            Box::new(evaluate(handle, garbage, 1, 1)),
        ),
        (
            "JSON text given as postcard",
            "invalid_context",
            Box::new(evaluate(handle, json, 1, 1)),
        ),
        (
            "unknown context format",
            "invalid_argument",
            Box::new(evaluate(handle, json, 7, 0)),
        ),
        (
            "unknown result format",
            "invalid_argument",
            Box::new(evaluate(handle, json, 0, 9)),
        ),
        (
            "unknown experiment key",
            "unknown_key",
            Box::new(move |m| {
                m.single_raw(
                    false,
                    (
                        handle,
                        unknown.ptr,
                        unknown.len,
                        json.ptr,
                        json.len,
                        0,
                        NOW_MS,
                    ),
                )
            }),
        ),
        (
            "unknown flag key",
            "unknown_key",
            Box::new(move |m| {
                m.single_raw(
                    true,
                    (
                        handle,
                        unknown.ptr,
                        unknown.len,
                        json.ptr,
                        json.len,
                        0,
                        NOW_MS,
                    ),
                )
            }),
        ),
        (
            "key that is not UTF-8",
            "invalid_argument",
            Box::new(move |m| {
                m.single_raw(
                    true,
                    (
                        handle,
                        bad_utf8.ptr,
                        bad_utf8.len,
                        json.ptr,
                        json.len,
                        0,
                        NOW_MS,
                    ),
                )
            }),
        ),
    ];

    let (mut passed, mut failed) = (0, 0);
    for (what, want, case) in &cases {
        let outcome = case(module);
        // After every error the instance must still evaluate.
        let healthy = module.evaluate_in_place(
            handle,
            json,
            ContextFormat::Json,
            NOW_MS,
            ResultFormat::Packed,
        );
        match outcome {
            Err(error)
                if error.downcast_ref::<AbiError>() == Some(&AbiError((*want).into()))
                    && healthy.is_ok() =>
            {
                passed += 1
            }
            other => {
                failed += 1;
                eprintln!(
                    "misuse: {what}: got {other:?} (then evaluate: {healthy:?}), want error {want}"
                );
            }
        }
    }
    println!(
        "wasmtime: ABI misuse: {} cases, {failed} failed",
        cases.len()
    );
    module.unload(handle)?;
    Ok((passed, failed))
}
