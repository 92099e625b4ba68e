//! Event ingestion: beacon batches parsed by the domain (`abx_origin_domain::event`) go to
//! the group-commit writer, which acknowledges only once they are durable, or to JetStream.

pub mod jetstream;
pub mod tail;
pub mod writer;

pub use abx_origin_domain::event::*;
