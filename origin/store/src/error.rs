//! What can go wrong in the store, in the terms its callers decide by.

use crate::db::{is_unavailable, is_unique_violation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached or has no connection to spare; retrying later may
    /// work.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A unique key is taken (an object with this key already exists).
    #[error("an object with this key already exists: {0}")]
    Duplicate(#[source] sqlx::Error),
    /// Anything else: a bug or stored data this build cannot read.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Error::Unavailable(error)
        } else if is_unique_violation(&error) {
            Error::Duplicate(error)
        } else {
            Error::Database(error)
        }
    }
}
