//! abx-core: deterministic experiment assignment and feature-flag evaluation.
//!
//! The crate is `no_std` + `alloc`, does no IO, reads no clock (time is an argument) and has
//! no randomness: the same snapshot, context and time give the same answer in every runtime
//! (native, WebAssembly in a browser, an edge worker or a wasmtime host).
//!
//! The flow is: [`decode`] (or [`decode_verified`]) snapshot bytes, build an [`Evaluator`]
//! once, then [`Evaluator::evaluate`] contexts. `docs/assignment.md` and
//! `docs/snapshot-format.md` are the normative specifications.
#![no_std]

extern crate alloc;

pub mod builder;
mod client_view;
pub use client_view::client_view;
mod condition;
pub use condition::{is_semver, private_hash_num, private_hash_str};
mod context;
mod envelope;
mod error;
mod evaluator;
mod murmur3;
pub mod snapshot;

pub use builder::{Expr, Literal, SnapshotBuilder, thresholds};
pub use context::{Attributes, Context, ExposureAttributes, Value, ValueRef};
pub use envelope::{
    FORMAT_VERSION, Format, MAGIC, MAX_PAYLOAD_LEN, SignedParts, crc32, decode, decode_verified,
    encode, encode_as, encode_signed, encode_signed_as, format_of, peek_version, public_key,
    signed_parts,
};
pub use error::{Error, Invalid};
pub use evaluator::{
    Assignment, Evaluation, Evaluator, FlagReason, FlagResult, HELD_ARM, HoldoutStep,
    MAX_CONDITION_DEPTH, MAX_EXPOSURE_STRING_BYTES, RELEASED_ARM, Reason, unit_text,
    with_unit_text,
};
pub use murmur3::{Murmur3, bucket, murmur3_x86_32};
pub use snapshot::Snapshot;
