//! abx-core as a plain `wasm32-unknown-unknown` module for hosts that are not JavaScript
//! (wasmtime, wasmer, any language with a WebAssembly runtime), with a small C ABI and no
//! imports at all. `docs/wasm-abi.md` documents the ABI; [`packed`] is the binary result
//! format, which `abx-wasm` (the JavaScript binding) shares.
//!
//! Like abx-wasm, this crate holds no assignment logic: it moves bytes in and out of linear
//! memory and calls abx-core.

// Used as a library (the `exports` feature off), the crate is `no_std` so that abx-wasm, which
// is `no_std` on wasm32 to keep panic formatting out of the browser module, links no std. The
// C-ABI module itself (with `exports`) and the tests use std.
#![cfg_attr(not(any(test, feature = "exports")), no_std)]

extern crate alloc;

pub mod packed;

#[cfg(feature = "exports")]
mod exports;
#[cfg(feature = "exports")]
mod render;
