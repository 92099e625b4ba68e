//! A Rust host for the portable module (`abx-wasm-abi`, docs/wasm-abi.md) on wasmtime.
//!
//! ```text
//! abx-wasmtime-host conformance MODULE.wasm [SUITE_DIR]   # replay snapshots/ through the module
//! abx-wasmtime-host bench MODULE.wasm [SUITE_DIR]         # wasmtime vs native abx-core
//! ```
//!
//! `conformance` replays every vector file and the invalid-snapshot manifest. Each case goes
//! through the module four ways (JSON context with JSON result, postcard context with packed
//! result, and every experiment and flag one at a time) and must equal both the vector's
//! expected values and native abx-core's evaluation of the same case; then every misuse of the
//! ABI must return its error code and leave the instance working. It ends with the line
//! `N passed, M failed` (cases) and exits non-zero on any failure.

mod conformance;
mod misuse;
mod module;
mod perf;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, wasm_path, suite, repository_suite) = match args.as_slice() {
        [mode, wasm] => (
            mode.as_str(),
            wasm,
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../snapshots"),
            true,
        ),
        [mode, wasm, suite] => (mode.as_str(), wasm, PathBuf::from(suite), false),
        _ => bail!("usage: abx-wasmtime-host conformance|bench MODULE.wasm [SUITE_DIR]"),
    };
    let wasm = std::fs::read(wasm_path).with_context(|| format!("reading {wasm_path}"))?;
    match mode {
        "conformance" => conformance::run(&wasm, &suite, repository_suite),
        "bench" => perf::run(&wasm, &suite).map(|()| true),
        other => bail!("unknown mode {other:?}; expected conformance or bench"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("abx-wasmtime-host: {error:#}");
            ExitCode::FAILURE
        }
    }
}
