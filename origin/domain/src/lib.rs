//! abx-origin-domain: what the origin knows without doing any IO.
//!
//! The configuration model and its validation (`model`), API key roles and hashing
//! (`keys`), the event record and its parsing (`event`), what the pipeline needs of an
//! experiment (`plan`), rollups (`rollup`) and the application of abx-stats to them
//! (`results`). Invariant: no tokio, no sqlx, no axum, no HTTP status; every function is a
//! function of its arguments (and, for `clock::now_ms` and `model::new_id`, of the clock
//! and the random source).

pub mod clock;
mod error;
pub mod event;
pub mod keys;
pub mod model;
pub mod plan;
pub mod results;
pub mod rollup;

pub use error::{Error, FieldError};
