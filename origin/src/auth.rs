//! API keys, roles and per-key rate limits.
//!
//! Keys are random 160-bit secrets shown once; only their SHA-256 is stored (a fast hash is
//! enough for high-entropy secrets, and it keeps authentication cheap on hot paths). The
//! hashes live in memory, so authenticating never touches the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub use abx_origin_domain::keys::{
    KeyInfo, NewKey, Permission, Role, generate_key, hash_key, hex, key_from_secret,
};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::AppState;
use crate::error::ApiError;

/// Key hash → key, reloaded from the database at start, after key changes and periodically
/// (so keys created with the CLI while the server runs become valid within seconds).
#[derive(Default)]
pub struct KeyCache {
    keys: RwLock<Arc<HashMap<String, KeyInfo>>>,
}

impl KeyCache {
    pub fn replace(&self, keys: HashMap<String, KeyInfo>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    pub fn lookup(&self, secret: &str) -> Option<KeyInfo> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        keys.get(&hash_key(secret)).cloned()
    }
}

/// Requests per second and burst allowed per key, by role.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub per_second: f64,
    pub burst: f64,
}

/// Token buckets per key. A bucket holds up to `burst` tokens and refills at `per_second`.
pub struct RateLimiter {
    admin: Limit,
    sdk: Limit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(admin: Limit, sdk: Limit) -> Self {
        RateLimiter {
            admin,
            sdk,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens, or says how many seconds to wait.
    pub fn check(&self, key: &KeyInfo, cost: f64) -> Result<(), u64> {
        let limit = if key.role == Role::Sdk {
            self.sdk
        } else {
            self.admin
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(key.id.clone()).or_insert((limit.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(limit.burst);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            Ok(())
        } else {
            Err(((cost - *tokens) / limit.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The authenticated caller of a request. Extracting it authenticates and rate-limits.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                role: self.role.as_str(),
                action: permission.describe(),
            })
        }
    }

    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

/// The secret from `Authorization: Bearer …`, `x-abx-key: …` or `?key=…` (the last for
/// `EventSource` and `sendBeacon`, which cannot set headers).
pub fn secret_from(parts: &Parts) -> Option<String> {
    let headers = &parts.headers;
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_string());
    }
    if let Some(value) = headers.get("x-abx-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_string());
    }
    let query = parts.uri.query()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .map(|k| k.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = secret_from(parts).ok_or(ApiError::Unauthorized)?;
        let key = state.keys.lookup(&secret).ok_or(ApiError::Unauthorized)?;
        state
            .limiter
            .check(&key, 1.0)
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
        Ok(Caller {
            key_id: key.id,
            role: key.role,
        })
    }
}
