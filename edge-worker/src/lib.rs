//! abx-edge-worker: assigns every visitor at the CDN edge (a Cloudflare Worker), so pages and
//! routing can use the variant with no extra round trip.
//!
//! The crate holds no assignment logic: abx-core evaluates the origin's signed snapshot. The
//! modules below are plain Rust (request parsing, rendering, routing, event checks, cache
//! headers, the snapshot policy) and are unit-tested natively; `edge` is the glue to the
//! Workers runtime and is only compiled for `wasm32`. README.md describes configuration,
//! deployment and the design.

pub mod caching;
pub mod config;
pub mod context;
pub mod cookie;
pub mod events;
pub mod render;
pub mod route;
pub mod snapshot;

#[cfg(target_arch = "wasm32")]
mod edge;
