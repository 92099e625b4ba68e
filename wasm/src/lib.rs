//! abx-core for browsers and Node through wasm-bindgen. This is the low-level module behind
//! the JavaScript package in `js/` (which pages use); it holds no assignment logic.
//!
//! The interface is shaped for speed across the JavaScript boundary rather than for direct
//! use: contexts arrive as postcard bytes (encoded by `js/src/context.js`, so the module needs
//! no JSON parser), and results leave as packed `u32` words (`abx_wasm_abi::packed`) that the
//! JavaScript side turns into objects using name tables it reads once per snapshot.
//!
//! The module is what every page downloads, so it is kept small (docs/benchmarks.md,
//! "abx-wasm"):
//! - Failures are thrown as their stable code alone (a string, e.g. `"bad_magic"`); the
//!   package turns codes into `AbxError`s with messages, so no `Display` code is linked.
//! - On wasm32 it is `no_std`, with std's allocator (dlmalloc) and a panic handler that traps
//!   without formatting a message: std's handler formats one for a hook whose output goes
//!   nowhere on this target, and that pulls in `core::fmt`. Nothing here panics on any input
//!   (snapshot and context bytes are decoded fallibly, indices are checked), so the handler
//!   is only reached by a bug, and a trap is what std's handler ends in on this target too.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use abx_core::{Context, Evaluator};
use abx_wasm_abi::packed::{FLAG_REASONS, Packer, REASONS, experiment_words, flag_values};
use wasm_bindgen::prelude::*;

/// Error codes of the binding itself; snapshot errors use abx-core's `Error::code()`.
mod code {
    pub const INVALID_CONTEXT: &str = "invalid_context";
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    pub const INTERNAL: &str = "internal";
}

/// What is thrown: the error code as a string (the package adds the message).
fn error(code: &str) -> JsValue {
    JsValue::from_str(code)
}

fn context(bytes: &[u8]) -> Result<Context, JsValue> {
    match postcard::take_from_bytes::<Context>(bytes) {
        Ok((context, [])) => Ok(context),
        _ => Err(error(code::INVALID_CONTEXT)),
    }
}

/// JavaScript times are doubles; abx-core takes whole milliseconds.
fn millis(now_ms: f64) -> Result<i64, JsValue> {
    if now_ms.is_finite() {
        // `f64::floor` needs std; `as` truncates toward zero (saturating), so step down for
        // negative fractions.
        let whole = now_ms as i64;
        Ok(if (whole as f64) > now_ms {
            whole.saturating_sub(1)
        } else {
            whole
        })
    } else {
        Err(error(code::INVALID_ARGUMENT))
    }
}

/// One decoded, validated and indexed snapshot.
#[wasm_bindgen]
pub struct Engine {
    evaluator: Evaluator,
    packer: Packer,
}

#[wasm_bindgen]
impl Engine {
    /// Decodes, validates and indexes snapshot bytes; with a public key (32 bytes), only a
    /// snapshot it signed is accepted. Throws one of docs/snapshot-format.md's error codes.
    pub fn load(snapshot: &[u8], public_key: Option<Vec<u8>>) -> Result<Engine, JsValue> {
        let evaluator = match public_key {
            Some(key) => Evaluator::from_verified_bytes(snapshot, &key),
            None => Evaluator::from_bytes(snapshot),
        }
        .map_err(|e| error(e.code()))?;
        let packer = Packer::new(evaluator.snapshot());
        Ok(Engine { evaluator, packer })
    }

    /// The snapshot's version (a counter, exact as a double up to 2^53).
    #[wasm_bindgen(getter, js_name = snapshotVersion)]
    pub fn snapshot_version(&self) -> f64 {
        self.evaluator.snapshot().snapshot_version as f64
    }

    #[wasm_bindgen(getter, js_name = publishedAtMs)]
    pub fn published_at_ms(&self) -> f64 {
        self.evaluator.snapshot().published_at_ms as f64
    }

    #[wasm_bindgen(js_name = experimentKeys)]
    pub fn experiment_keys(&self) -> Vec<String> {
        let experiments = &self.evaluator.snapshot().experiments;
        experiments.iter().map(|e| e.key.clone()).collect()
    }

    #[wasm_bindgen(js_name = experimentIds)]
    pub fn experiment_ids(&self) -> Vec<String> {
        let experiments = &self.evaluator.snapshot().experiments;
        experiments
            .iter()
            .map(|e| e.id.to_text().as_str().into())
            .collect()
    }

    /// The unit attribute of each experiment (for exposure events).
    #[wasm_bindgen(js_name = experimentUnits)]
    pub fn experiment_units(&self) -> Vec<String> {
        let snapshot = self.evaluator.snapshot();
        let attribute = |i: u32| snapshot.attributes.get(i as usize).cloned();
        snapshot
            .experiments
            .iter()
            .map(|e| attribute(e.unit).unwrap_or_default())
            .collect()
    }

    /// The id of the holdout whose steps each experiment's results can have
    /// (`Evaluator::experiment_holdout`), else `""`: with [`holdout_arms`], what a host needs
    /// to log holdout exposures from packed results, for contexts with the experiment's unit
    /// (without it a host logs no exposure at all).
    #[wasm_bindgen(js_name = experimentHoldoutIds)]
    pub fn experiment_holdout_ids(&self) -> Vec<String> {
        let experiments = self.evaluator.snapshot().experiments.len() as u32;
        (0..experiments)
            .map(|i| {
                let holdout = self.evaluator.experiment_holdout(i);
                holdout.map_or_else(String::new, |(_, id)| id.into())
            })
            .collect()
    }

    /// The names of the attributes that an exposure to experiment `index` carries for this
    /// context (`Evaluator::exposure_attributes`, format 2 snapshots): the host copies their
    /// values from the context it encoded. Empty when there are none.
    #[wasm_bindgen(js_name = exposureAttributes)]
    pub fn exposure_attributes(
        &self,
        index: u32,
        context_bytes: &[u8],
    ) -> Result<Vec<String>, JsValue> {
        let context = context(context_bytes)?;
        let carried = self.evaluator.exposure_attributes(index, &context);
        Ok(carried
            .0
            .iter()
            .map(|(name, _)| String::from(*name))
            .collect())
    }

    /// Variant keys of experiment `index`, in variant order.
    #[wasm_bindgen(js_name = variantKeys)]
    pub fn variant_keys(&self, index: u32) -> Vec<String> {
        let snapshot = self.evaluator.snapshot();
        let text = |i: u32| snapshot.strings.get(i as usize).cloned();
        snapshot
            .experiments
            .get(index as usize)
            .map(|e| {
                e.variants
                    .iter()
                    .map(|v| text(v.key).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Variant configs (JSON text) of experiment `index`, in variant order.
    #[wasm_bindgen(js_name = variantConfigs)]
    pub fn variant_configs(&self, index: u32) -> Vec<String> {
        let experiments = &self.evaluator.snapshot().experiments;
        experiments
            .get(index as usize)
            .map(|e| e.variants.iter().map(|v| v.config.clone()).collect())
            .unwrap_or_default()
    }

    #[wasm_bindgen(js_name = flagKeys)]
    pub fn flag_keys(&self) -> Vec<String> {
        let flags = &self.evaluator.snapshot().flags;
        flags.iter().map(|f| f.key.clone()).collect()
    }

    /// The value table (JSON texts) of flag `index`: off, default, then each rule's values.
    #[wasm_bindgen(js_name = flagValues)]
    pub fn flag_values(&self, index: u32) -> Vec<String> {
        let flags = &self.evaluator.snapshot().flags;
        flags
            .get(index as usize)
            .map(|f| flag_values(f).map(String::from).collect())
            .unwrap_or_default()
    }

    /// Every experiment and flag as packed words (docs/wasm-abi.md, "Packed results").
    pub fn evaluate(&self, context_bytes: &[u8], now_ms: f64) -> Result<Vec<u32>, JsValue> {
        let context = context(context_bytes)?;
        let evaluation = self.evaluator.evaluate(&context, millis(now_ms)?);
        let mut words = Vec::new();
        self.packer
            .pack(&self.evaluator, &evaluation, &mut words)
            .map_err(|_| error(code::INTERNAL))?;
        Ok(words)
    }

    /// One experiment by index: `[reason, variant + 1]`.
    pub fn experiment(
        &self,
        index: u32,
        context_bytes: &[u8],
        now_ms: f64,
    ) -> Result<Vec<u32>, JsValue> {
        let context = context(context_bytes)?;
        let assignment = self
            .evaluator
            .experiment_at(index, &context, millis(now_ms)?)
            .ok_or_else(|| error(code::INVALID_ARGUMENT))?;
        Ok(experiment_words(&assignment).to_vec())
    }

    /// One flag by index, in seven words: `[reason, value]`; `[experiment + 1, reason,
    /// variant + 1]` of the experiment that supplied the value when the reason is
    /// `experiment`, else zeros (so the caller can log that experiment's exposure); and
    /// `[experiment + 1, reason]` of the experiment whose holdout step the caller logs for
    /// the flag (`abx_core::FlagResult::holdout_experiment`), else zeros.
    pub fn flag(&self, index: u32, context_bytes: &[u8], now_ms: f64) -> Result<Vec<u32>, JsValue> {
        let context = context(context_bytes)?;
        let now_ms = millis(now_ms)?;
        let snapshot = self.evaluator.snapshot();
        let unknown = || error(code::INVALID_ARGUMENT);
        let key = &snapshot.flags.get(index as usize).ok_or_else(unknown)?.key;
        let result = self
            .evaluator
            .flag(key, &context, now_ms)
            .ok_or_else(unknown)?;
        let mut words = self
            .packer
            .flag_words(snapshot, &result)
            .map_err(|_| error(code::INTERNAL))?
            .to_vec();
        let answer = |experiment: Option<u32>| {
            let e = experiment?;
            let assignment = self.evaluator.experiment_at(e, &context, now_ms)?;
            let [reason, variant] = experiment_words(&assignment);
            Some([e.saturating_add(1), reason, variant])
        };
        words.extend_from_slice(&answer(result.experiment).unwrap_or_default());
        let holdout = answer(result.holdout_experiment).unwrap_or_default();
        words.extend_from_slice(&holdout[..2]);
        Ok(words)
    }
}

/// Experiment reason names in code order.
#[wasm_bindgen]
pub fn reasons() -> Vec<String> {
    REASONS.iter().map(|r| r.as_str().into()).collect()
}

/// The holdout arm (`held`, `released`) of a result with each reason code, or `""` for
/// none (`abx_core::Reason::holdout_arm`), for experiments with a holdout id and contexts
/// with their unit.
#[wasm_bindgen(js_name = holdoutArms)]
pub fn holdout_arms() -> Vec<String> {
    REASONS
        .iter()
        .map(|r| r.holdout_arm().unwrap_or_default().into())
        .collect()
}

/// Flag reason names in code order.
#[wasm_bindgen(js_name = flagReasons)]
pub fn flag_reasons() -> Vec<String> {
    FLAG_REASONS.iter().map(|r| r.as_str().into()).collect()
}

/// What std would provide on wasm32, without its panic message formatting (crate docs).
#[cfg(target_arch = "wasm32")]
mod runtime {
    /// The allocator std uses on this target.
    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        core::arch::wasm32::unreachable()
    }
}
