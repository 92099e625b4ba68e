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
    /// The warehouse's ticks' lease ran out while this process was ticking (it stalled
    /// past it, and another process may have ticked since): it stores nothing more.
    #[error("the warehouse's ticks' lease ran out while ticking")]
    TicksLeaseLost,
    /// A tick went through every experiment, but could not compute the rollups of these
    /// (each failure is logged with its experiment); the next tick tries them again.
    #[error("the rollups of {} experiment(s) could not be computed, first {}", failed.len(), failed.first().map_or("", String::as_str))]
    ExperimentsFailed { failed: Vec<String> },
    /// Writing events failed for another reason than availability.
    #[error("writing events: {0}")]
    Write(String),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Store(error.into())
    }
}
