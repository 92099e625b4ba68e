//! The C ABI (normative description: `docs/wasm-abi.md`).
//!
//! Buffers the host writes into are allocated here (`abx_alloc`) and kept in a table keyed by
//! address, so every later call looks its input up in that table instead of building a slice
//! from a raw pointer: no `unsafe` block is needed, and a wrong pointer or length from the
//! host is an `invalid_buffer` error rather than undefined behaviour. Results live in a
//! buffer owned by this module until the next call.
//!
//! Every export returns a status or a value and never panics or traps on any input: errors
//! are recorded as a stable code that `abx_error_ptr`/`abx_error_len` expose.

// The exports must keep their names (`#[unsafe(no_mangle)]`), which the `unsafe_code` lint
// reports. That attribute is the only thing this module uses the allowance for: there is no
// `unsafe` block in the crate.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;

use abx_core::{Context, Evaluator};

use crate::packed::Packer;
use crate::render::{Description, EvaluationJson, ExperimentJson, FlagJson};

/// Error codes of the ABI itself; snapshot errors use abx-core's `Error::code()`.
mod code {
    pub const INVALID_BUFFER: &str = "invalid_buffer";
    pub const INVALID_HANDLE: &str = "invalid_handle";
    pub const INVALID_CONTEXT: &str = "invalid_context";
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const UNKNOWN_KEY: &str = "unknown_key";
    pub const OUT_OF_MEMORY: &str = "out_of_memory";
    pub const INTERNAL: &str = "internal";
}

/// Context encodings accepted by the evaluation calls.
const CONTEXT_JSON: u32 = 0;
const CONTEXT_POSTCARD: u32 = 1;

/// Result encodings of `abx_evaluate`.
const RESULT_JSON: u32 = 0;
const RESULT_PACKED: u32 = 1;

struct Engine {
    evaluator: Evaluator,
    packer: Packer,
}

/// What a call leaves for the host to read.
enum Output {
    Bytes(Vec<u8>),
    Words(Vec<u32>),
}

struct State {
    /// Host-writable buffers by address.
    buffers: BTreeMap<usize, Vec<u8>>,
    /// Loaded snapshots; handle `n` is slot `n - 1`.
    engines: Vec<Option<Engine>>,
    output: Output,
    error: &'static str,
}

thread_local! {
    // wasm32-unknown-unknown without threads runs one call at a time, and nothing here calls
    // back into the host, so a `RefCell` is never borrowed twice.
    static STATE: RefCell<State> = const {
        RefCell::new(State {
            buffers: BTreeMap::new(),
            engines: Vec::new(),
            output: Output::Bytes(Vec::new()),
            error: "",
        })
    };
}

type Outcome<T> = Result<T, &'static str>;

/// Runs one export: on error records the code and returns `failed`.
fn call<T>(failed: T, body: impl FnOnce(&mut State) -> Outcome<T>) -> T {
    STATE.with(|cell| {
        let Ok(mut state) = cell.try_borrow_mut() else {
            return failed;
        };
        match body(&mut state) {
            Ok(value) => {
                state.error = "";
                value
            }
            Err(code) => {
                state.error = code;
                failed
            }
        }
    })
}

impl State {
    /// The first `len` bytes of the buffer that starts at `ptr` (`len == 0` is empty input).
    fn input(&self, ptr: usize, len: usize) -> Outcome<&[u8]> {
        if len == 0 {
            return Ok(&[]);
        }
        self.buffers
            .get(&ptr)
            .and_then(|buffer| buffer.get(..len))
            .ok_or(code::INVALID_BUFFER)
    }

    fn engine(&self, handle: u32) -> Outcome<&Engine> {
        let slot = (handle as usize)
            .checked_sub(1)
            .ok_or(code::INVALID_HANDLE)?;
        self.engines
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or(code::INVALID_HANDLE)
    }

    fn context(&self, ptr: usize, len: usize, format: u32) -> Outcome<Context> {
        let bytes = self.input(ptr, len)?;
        match format {
            CONTEXT_JSON => serde_json::from_slice(bytes).map_err(|_| code::INVALID_CONTEXT),
            CONTEXT_POSTCARD => match postcard::take_from_bytes::<Context>(bytes) {
                Ok((context, [])) => Ok(context),
                _ => Err(code::INVALID_CONTEXT),
            },
            _ => Err(code::INVALID_ARGUMENT),
        }
    }

    fn key(&self, ptr: usize, len: usize) -> Outcome<&str> {
        std::str::from_utf8(self.input(ptr, len)?).map_err(|_| code::INVALID_ARGUMENT)
    }

    /// Takes the output buffer so that the next result can reuse its allocation.
    fn take_output(&mut self) -> Output {
        std::mem::replace(&mut self.output, Output::Bytes(Vec::new()))
    }
}

impl Output {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Output::Bytes(mut bytes) => {
                bytes.clear();
                bytes
            }
            Output::Words(_) => Vec::new(),
        }
    }

    fn into_words(self) -> Vec<u32> {
        match self {
            Output::Words(mut words) => {
                words.clear();
                words
            }
            Output::Bytes(_) => Vec::new(),
        }
    }
}

/// Serializes `value` as the next output.
fn json_output(previous: Output, value: &impl serde::Serialize) -> Outcome<Output> {
    let mut bytes = previous.into_bytes();
    serde_json::to_writer(&mut bytes, value).map_err(|_| code::INTERNAL)?;
    Ok(Output::Bytes(bytes))
}

/// Allocates a zeroed buffer of `len` bytes (at least one) for the host to write input into.
/// Returns its address, or 0 when memory is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn abx_alloc(len: usize) -> usize {
    call(0, |state| {
        let mut buffer = Vec::new();
        buffer
            .try_reserve_exact(len.max(1))
            .map_err(|_| code::OUT_OF_MEMORY)?;
        buffer.resize(len.max(1), 0);
        let address = buffer.as_mut_ptr() as usize;
        state.buffers.insert(address, buffer);
        Ok(address)
    })
}

/// Frees a buffer from `abx_alloc`. Returns 1, or 0 (`invalid_buffer`) for an unknown address.
#[unsafe(no_mangle)]
pub extern "C" fn abx_free(ptr: usize) -> u32 {
    call(0, |state| {
        state
            .buffers
            .remove(&ptr)
            .map(|_| 1)
            .ok_or(code::INVALID_BUFFER)
    })
}

/// Decodes, validates and indexes a snapshot. With `key_len == 32` the snapshot must carry a
/// valid Ed25519 signature by that key; with `key_len == 0` only its checksum is checked.
/// Returns a handle (≥ 1), or 0 with the error code (`bad_signature`, `truncated`, …).
#[unsafe(no_mangle)]
pub extern "C" fn abx_load(
    snapshot_ptr: usize,
    snapshot_len: usize,
    key_ptr: usize,
    key_len: usize,
) -> u32 {
    call(0, |state| {
        let bytes = state.input(snapshot_ptr, snapshot_len)?;
        let evaluator = if key_len == 0 {
            Evaluator::from_bytes(bytes)
        } else {
            Evaluator::from_verified_bytes(bytes, state.input(key_ptr, key_len)?)
        }
        .map_err(|error| error.code())?;
        let packer = Packer::new(evaluator.snapshot());
        let engine = Some(Engine { evaluator, packer });
        let slot = match state.engines.iter().position(Option::is_none) {
            Some(free) => {
                state.engines[free] = engine;
                free
            }
            None => {
                state.engines.push(engine);
                state.engines.len() - 1
            }
        };
        u32::try_from(slot + 1).map_err(|_| code::OUT_OF_MEMORY)
    })
}

/// Drops a loaded snapshot. Returns 1, or 0 (`invalid_handle`).
#[unsafe(no_mangle)]
pub extern "C" fn abx_unload(handle: u32) -> u32 {
    call(0, |state| {
        state.engine(handle)?;
        let slot = state
            .engines
            .get_mut((handle as usize).wrapping_sub(1))
            .ok_or(code::INVALID_HANDLE)?;
        *slot = None;
        Ok(1)
    })
}

/// The snapshot's version, or -1 (`invalid_handle`).
#[unsafe(no_mangle)]
pub extern "C" fn abx_snapshot_version(handle: u32) -> i64 {
    call(-1, |state| {
        let version = state.engine(handle)?.evaluator.snapshot().snapshot_version;
        i64::try_from(version).map_err(|_| code::INTERNAL)
    })
}

/// Writes the snapshot's name tables as JSON to the output (for reading packed results).
/// Returns 1, or 0.
#[unsafe(no_mangle)]
pub extern "C" fn abx_describe(handle: u32) -> u32 {
    call(0, |state| {
        let engine = state.engine(handle)?;
        let output = json_output(
            Output::Bytes(Vec::new()),
            &Description(engine.evaluator.snapshot()),
        )?;
        state.output = output;
        Ok(1)
    })
}

/// Evaluates every experiment and flag for a context (`context_format` 0 = JSON object,
/// 1 = postcard) at `now_ms`, writing the result as JSON (`result_format` 0) or packed words
/// (1). Returns 1, or 0.
#[unsafe(no_mangle)]
pub extern "C" fn abx_evaluate(
    handle: u32,
    context_ptr: usize,
    context_len: usize,
    context_format: u32,
    now_ms: i64,
    result_format: u32,
) -> u32 {
    call(0, |state| {
        let context = state.context(context_ptr, context_len, context_format)?;
        let previous = state.take_output();
        let engine = state.engine(handle)?;
        let evaluation = engine.evaluator.evaluate(&context, now_ms);
        let output = match result_format {
            RESULT_JSON => json_output(
                previous,
                &EvaluationJson {
                    evaluator: &engine.evaluator,
                    evaluation: &evaluation,
                    context: &context,
                },
            )?,
            RESULT_PACKED => {
                let mut words = previous.into_words();
                engine
                    .packer
                    .pack(&engine.evaluator, &evaluation, &mut words)
                    .map_err(|_| code::INTERNAL)?;
                Output::Words(words)
            }
            _ => return Err(code::INVALID_ARGUMENT),
        };
        state.output = output;
        Ok(1)
    })
}

/// Evaluates one experiment by key, writing
/// `{"experiment", "experiment_id", "variant", "config_json", "reason", "log_exposure"}`.
/// Returns 1, or 0 (`unknown_key` when the snapshot has no such experiment).
#[unsafe(no_mangle)]
pub extern "C" fn abx_experiment(
    handle: u32,
    key_ptr: usize,
    key_len: usize,
    context_ptr: usize,
    context_len: usize,
    context_format: u32,
    now_ms: i64,
) -> u32 {
    call(0, |state| {
        let context = state.context(context_ptr, context_len, context_format)?;
        let key = state.key(key_ptr, key_len)?;
        let engine = state.engine(handle)?;
        let assignment = engine
            .evaluator
            .experiment(key, &context, now_ms)
            .ok_or(code::UNKNOWN_KEY)?;
        let output = json_output(
            Output::Bytes(Vec::new()),
            &ExperimentJson::new(&engine.evaluator, &assignment, &context),
        )?;
        state.output = output;
        Ok(1)
    })
}

/// Evaluates one flag by key, writing `{"flag", "value_json", "reason", "experiment",
/// "holdout", "holdout_experiment"}`.
/// Returns 1, or 0 (`unknown_key`).
#[unsafe(no_mangle)]
pub extern "C" fn abx_flag(
    handle: u32,
    key_ptr: usize,
    key_len: usize,
    context_ptr: usize,
    context_len: usize,
    context_format: u32,
    now_ms: i64,
) -> u32 {
    call(0, |state| {
        let context = state.context(context_ptr, context_len, context_format)?;
        let key = state.key(key_ptr, key_len)?;
        let engine = state.engine(handle)?;
        let result = engine
            .evaluator
            .flag(key, &context, now_ms)
            .ok_or(code::UNKNOWN_KEY)?;
        let answer = result
            .holdout_experiment
            .and_then(|e| engine.evaluator.experiment_at(e, &context, now_ms));
        let json = FlagJson::new(&engine.evaluator, &result, answer.as_ref(), &context);
        let output = json_output(Output::Bytes(Vec::new()), &json)?;
        state.output = output;
        Ok(1)
    })
}

/// Address of the last call's output (valid until the next call that writes output).
#[unsafe(no_mangle)]
pub extern "C" fn abx_result_ptr() -> usize {
    STATE.with(|cell| {
        cell.try_borrow().map_or(0, |state| match &state.output {
            Output::Bytes(bytes) => bytes.as_ptr() as usize,
            Output::Words(words) => words.as_ptr() as usize,
        })
    })
}

/// Length in bytes of the last call's output.
#[unsafe(no_mangle)]
pub extern "C" fn abx_result_len() -> usize {
    STATE.with(|cell| {
        cell.try_borrow().map_or(0, |state| match &state.output {
            Output::Bytes(bytes) => bytes.len(),
            Output::Words(words) => words.len() * 4,
        })
    })
}

/// Address of the last error code (ASCII, e.g. `bad_signature`); empty after a success.
#[unsafe(no_mangle)]
pub extern "C" fn abx_error_ptr() -> usize {
    STATE.with(|cell| cell.try_borrow().map_or(0, |s| s.error.as_ptr() as usize))
}

/// Length of the last error code.
#[unsafe(no_mangle)]
pub extern "C" fn abx_error_len() -> usize {
    STATE.with(|cell| cell.try_borrow().map_or(0, |s| s.error.len()))
}
