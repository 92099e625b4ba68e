//! Domain types of the admin API and their validation. Nothing here does IO; handlers load
//! what validation needs (known layers, metrics, segments) and pass it in.

pub mod catalog;
pub mod experiment;
pub mod filter;
pub mod flag;
pub mod slots;
pub mod targeting;

use serde::Serialize;
use serde_json::Value as Json;

use crate::FieldError;

/// Converts a percentage with at most two decimals to basis points.
pub fn percent_to_bp(percent: f64, field: &str, errors: &mut Vec<FieldError>) -> u16 {
    let bp = percent * 100.0;
    if !(0.0..=10_000.0).contains(&bp) || !percent.is_finite() {
        errors.push(FieldError::new(field, "must be between 0 and 100"));
        return 0;
    }
    if (bp - bp.round()).abs() > 1e-6 {
        errors.push(FieldError::new(field, "at most two decimals"));
    }
    bp.round() as u16
}

pub fn bp_to_percent(bp: i64) -> f64 {
    bp as f64 / 100.0
}

/// The key of an experiment, layer, flag, metric, segment or holdout: a [`check_key`] that
/// does not read as an id. Every route finds these objects by id or by key, so a key that
/// is another object's id (a UUID) would let a change meant for one reach the other.
pub fn check_object_key(key: &str, field: &str, errors: &mut Vec<FieldError>) {
    check_key(key, field, errors);
    if uuid::Uuid::try_parse(key).is_ok() {
        errors.push(FieldError::new(
            field,
            "must not be a UUID: objects are found by id or key",
        ));
    }
}

/// Keys of experiments, layers, flags, metrics, segments and holdouts: stable identifiers
/// used in URLs, SDK calls and snapshots.
pub fn check_key(key: &str, field: &str, errors: &mut Vec<FieldError>) {
    let ok = !key.is_empty()
        && key.len() <= 100
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        errors.push(FieldError::new(
            field,
            "1-100 characters: letters, digits, `_`, `-`, `.`, starting with a letter or digit",
        ));
    }
}

pub fn check_text(text: &str, field: &str, max: usize, errors: &mut Vec<FieldError>) {
    if text.chars().count() > max {
        errors.push(FieldError::new(field, format!("at most {max} characters")));
    }
    // PostgreSQL's text cannot hold NUL, and no name or description needs it.
    if text.contains('\0') {
        errors.push(FieldError::new(field, "must not contain NUL characters"));
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A list page: `next_cursor` continues the listing when more items exist.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Checks a page size: 1 to 500, default 100.
pub fn page_limit(limit: Option<u32>) -> Result<i64, crate::Error> {
    match limit.unwrap_or(100) {
        n @ 1..=500 => Ok(i64::from(n)),
        _ => Err(crate::Error::bad_request("limit must be between 1 and 500")),
    }
}

/// One entry of the audit log.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    #[schema(value_type = Object)]
    pub details: Json,
}
