//! The stores: the configuration database (`abx_origin_store`), and the event log and
//! warehouse that the pipeline writes.

pub mod clickhouse;
pub mod events;

pub use abx_origin_store::*;
