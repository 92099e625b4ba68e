//! The origin's integration tests, in one binary: each module drives the real pieces
//! (`app(state)` in-process, or the built `abx-origin` binary) over SQLite, PostgreSQL,
//! JetStream and ClickHouse, with `common` setting them up.

#[macro_use]
mod common;

mod analysis;
mod api;
mod capping;
mod connections;
mod crash;
mod cuped;
mod demo;
mod dimensions;
mod events;
mod holdouts;
mod jetstream;
mod layering;
mod properties;
mod quantiles;
mod warehouse;
mod windows;
