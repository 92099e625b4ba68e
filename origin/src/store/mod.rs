//! The stores: the configuration database (`abx_origin_store`), and the event log's tables
//! and the warehouse, which only the pipeline writes.

pub use abx_origin_pipeline::{clickhouse, tables as events};
pub use abx_origin_store::*;
