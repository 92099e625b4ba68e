//! Event ingestion: beacon batches parsed by the domain (`abx_origin_domain::event`) go to
//! the pipeline's group-commit writer, which acknowledges only once they are durable, or to
//! JetStream.

pub use abx_origin_domain::event::*;
pub use abx_origin_pipeline::{jetstream, tail, writer};
