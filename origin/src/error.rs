//! The one error type of the origin's HTTP surface. Every failure becomes
//! `{"error": {"code", "message", "details"}}` with the status code of docs/api.md; internal
//! details are logged, never sent.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

pub use abx_origin_domain::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this API key's role ({role}) may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body too large: the limit is {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request is well-formed but invalid")]
    Unprocessable(Vec<FieldError>),
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{message}")]
    Unavailable { message: String, retry_after_s: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The JSON error body, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`, `illegal_transition`.
    pub code: String,
    pub message: String,
    /// Extra structure: a list of field errors for 422, the free layer space for a full
    /// layer; null otherwise.
    #[schema(value_type = Value)]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "bad_request",
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Unprocessable(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Conflict { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unprocessable(_) => "validation_failed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::Unprocessable(fields) => Some(json!(fields)),
            ApiError::Conflict { details, .. } => details.clone(),
            _ => None,
        }
    }
}

/// Marks a 429 for the server's outer layer, which answers it only after a while (see
/// `Settings::rate_limit_hold`).
#[derive(Clone, Copy, Debug)]
pub struct RateLimited {
    pub retry_after: std::time::Duration,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = ?source, "internal error");
        }
        let body = json!({"error": {"code": self.code(), "message": self.to_string(), "details": self.details()}});
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            ApiError::Unavailable { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let ApiError::RateLimited { retry_after_s } = self {
            response.extensions_mut().insert(RateLimited {
                retry_after: std::time::Duration::from_secs(retry_after_s.max(1)),
            });
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if crate::store::db::is_unavailable(&error) {
            tracing::warn!(%error, "database unavailable");
            return ApiError::Unavailable {
                message: "the database is unavailable".into(),
                retry_after_s: 5,
            };
        }
        if crate::store::db::is_unique_violation(&error) {
            return ApiError::conflict("duplicate_key", "an object with this key already exists");
        }
        ApiError::Internal(error.into())
    }
}

impl From<abx_origin_store::Error> for ApiError {
    fn from(error: abx_origin_store::Error) -> Self {
        use abx_origin_store::Error;
        match error {
            Error::Unavailable(error) => {
                tracing::warn!(%error, "database unavailable");
                ApiError::Unavailable {
                    message: "the database is unavailable".into(),
                    retry_after_s: 5,
                }
            }
            Error::Duplicate(_) => {
                ApiError::conflict("duplicate_key", "an object with this key already exists")
            }
            Error::Database(error) => ApiError::Internal(error.into()),
        }
    }
}

impl From<abx_origin_pipeline::Error> for ApiError {
    fn from(error: abx_origin_pipeline::Error) -> Self {
        use abx_origin_pipeline::Error;
        match error {
            Error::Unavailable {
                message,
                retry_after_s,
            } => ApiError::Unavailable {
                message: message.into(),
                retry_after_s,
            },
            Error::Store(error) => error.into(),
            Error::Warehouse(error) => {
                tracing::warn!(%error, "warehouse query failed");
                ApiError::Unavailable {
                    message: "the warehouse is unavailable".into(),
                    retry_after_s: 5,
                }
            }
            Error::Write(message) => ApiError::Internal(anyhow::anyhow!(message)),
            error @ (Error::TicksLeaseLost | Error::ExperimentsFailed { .. }) => {
                ApiError::Internal(error.into())
            }
        }
    }
}

impl From<abx_origin_domain::Error> for ApiError {
    fn from(error: abx_origin_domain::Error) -> Self {
        use abx_origin_domain::Error;
        match error {
            Error::BadRequest { code, message } => ApiError::BadRequest { code, message },
            Error::Invalid(fields) => ApiError::Unprocessable(fields),
            Error::Conflict { code, message } => ApiError::Conflict {
                code,
                message,
                details: None,
            },
            Error::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

/// A body that could not be read whole: over the size limit (413), or cut off — the client
/// went away, or did not send it within the body deadline (`serve::ConnectionLimits`).
impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge {
                limit: crate::api::BODY_LIMIT,
            };
        }
        ApiError::BadRequest {
            code: "invalid_body",
            message: "the request body could not be read whole (it stopped arriving, or did not arrive in time)".into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(rejection) => rejection.into(),
            JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest {
                code: "unsupported_media_type",
                message: "expected a JSON body with `Content-Type: application/json`".into(),
            },
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
                limit: crate::api::BODY_LIMIT,
            },
            other => ApiError::BadRequest {
                code: "invalid_json",
                message: other.body_text(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest {
            code: "invalid_query",
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest {
            code: "invalid_path",
            message: rejection.body_text(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
