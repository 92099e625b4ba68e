//! Why the domain refuses an input. The server turns each into its HTTP error (docs/api.md);
//! nothing here knows about status codes.

use serde::Serialize;

/// A field-level validation problem, reported in `details` of a 422.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input cannot be read at all (`code` is stable, e.g. `invalid_json`).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The input is well-formed, but these fields are invalid.
    #[error("the request is well-formed but invalid")]
    Invalid(Vec<FieldError>),
    /// The input conflicts with the current state (`code`, e.g. `illegal_transition`).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The input is larger than `limit` (bytes or events).
    #[error("the input is too large: the limit is {limit}")]
    TooLarge { limit: usize },
}

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest {
            code: "bad_request",
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }
}
