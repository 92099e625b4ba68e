//! What can go wrong on the way from events to rollups.

use crate::clickhouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event log or the broker cannot take events now; retry after `retry_after_s`.
    #[error("{message}")]
    Unavailable {
        message: &'static str,
        retry_after_s: u64,
    },
    #[error(transparent)]
    Store(#[from] abx_origin_store::Error),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Writing events failed for another reason than availability.
    #[error("writing events: {0}")]
    Write(String),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Store(error.into())
    }
}
