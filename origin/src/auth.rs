//! API keys, roles and per-key rate limits.
//!
//! Keys are random 160-bit secrets shown once; only their SHA-256 is stored (a fast hash is
//! enough for high-entropy secrets, and it keeps authentication cheap on hot paths). The
//! hashes live in memory, so authenticating never touches the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read configuration and results; run the calculators.
    Viewer,
    /// Read snapshots, evaluate, send events. Safe to embed in a web page.
    Sdk,
}

/// What a request wants to do; each route asks for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    ReadSnapshot,
    SendEvents,
    ReadConfig,
    WriteConfig,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::ReadSnapshot => "read snapshots",
            Permission::SendEvents => "send events",
            Permission::ReadConfig => "read configuration or results",
            Permission::WriteConfig => "change configuration",
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Sdk => "sdk",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            "sdk" => Some(Role::Sdk),
            _ => None,
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (
                    Role::Viewer,
                    Permission::ReadSnapshot | Permission::ReadConfig
                )
                | (Role::Sdk, Permission::ReadSnapshot | Permission::SendEvents)
        )
    }
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct NewKey {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

pub fn generate_key(role: Role) -> NewKey {
    let mut random = [0u8; 20];
    getrandom::fill(&mut random).expect("the operating system's random number generator");
    let secret = format!("abx_{}_{}", role.as_str(), hex(&random));
    NewKey {
        hash: hash_key(&secret),
        prefix: secret[..secret.len().min(16)].to_string(),
        secret,
    }
}

/// Registers a key chosen by the operator (e.g. `ABX_BOOTSTRAP_ADMIN_KEY`).
pub fn key_from_secret(secret: &str) -> NewKey {
    NewKey {
        secret: secret.to_string(),
        hash: hash_key(secret),
        prefix: secret[..secret.len().min(16)].to_string(),
    }
}

pub fn hash_key(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Lower-case hex. Every authenticated request hashes its key and looks the hash up by its
/// hex text, so this avoids a formatting call and an allocation per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: String,
    pub role: Role,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        assert_eq!(hex(&[]), "");
    }
}
