//! API keys, roles and rate limits (per key, and per client address for public sdk keys).
//!
//! Keys are random 160-bit secrets shown once; only their SHA-256 is stored (a fast hash is
//! enough for high-entropy secrets, and it keeps authentication cheap on hot paths). The
//! hashes live in memory, so authenticating never touches the database.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub use abx_origin_domain::keys::{
    KeyInfo, NewKey, Permission, Role, generate_key, hash_key, hex, key_from_secret,
};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};

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

/// Requests per second and burst allowed to one bucket.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub per_second: f64,
    pub burst: f64,
}

/// The limits by key class.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Per admin or viewer key.
    pub admin: Limit,
    /// Per sdk key **and client address**: sdk keys are public, so a bucket per key would let
    /// any one client spend every browser's allowance.
    pub sdk: Limit,
    /// Per server key (edges, backends), which carries many users' traffic.
    pub server: Limit,
}

/// Buckets beyond which idle ones are dropped: a bucket that has refilled is the same as
/// none, and a flood from many addresses must not grow the map without bound.
const MAX_BUCKETS: usize = 100_000;

/// (key id, client address for sdk keys) → (tokens, when they were last counted).
type Buckets = HashMap<(String, Option<IpAddr>), (f64, Instant)>;

/// Token buckets. A bucket holds up to `burst` tokens and refills at `per_second`.
pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<(Buckets, Instant)>,
}

/// How often, at most, idle buckets are swept once the map is full: sweeping scans the whole
/// map, and must not cost every request that much.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a client address counts as: IPv4 as it is (IPv4-mapped IPv6 included), IPv6 by its
/// /64, which one client (a home, a server) gets whole — keyed by /128, one client would
/// own 2⁶⁴ buckets.
pub(crate) fn client_bucket(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        RateLimiter {
            limits,
            buckets: Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    /// Takes `cost` tokens from the bucket of `key` (and, for sdk keys, of the client's
    /// address), or says how many seconds to wait.
    pub fn check(&self, key: &KeyInfo, client: Option<IpAddr>, cost: f64) -> Result<(), u64> {
        let (limit, address) = match key.role {
            Role::Sdk => (self.limits.sdk, client.map(client_bucket)),
            Role::Server => (self.limits.server, None),
            Role::Admin | Role::Viewer => (self.limits.admin, None),
        };
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, swept) = &mut *guard;
        if buckets.len() >= MAX_BUCKETS && now.duration_since(*swept) >= SWEEP_INTERVAL {
            *swept = now;
            let limits = self.limits;
            // Keeps only buckets still short of full; the slowest refill bounds their age.
            let full_after = [limits.admin, limits.sdk, limits.server]
                .iter()
                .map(|l| l.burst / l.per_second)
                .fold(0.0_f64, f64::max);
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() < full_after);
        }
        // Between sweeps a full map takes no new client: a flood of new addresses then shares
        // one bucket (the one without an address) instead of growing the map.
        let address =
            if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&(key.id.clone(), address)) {
                None
            } else {
                address
            };
        let (tokens, last) = buckets
            .entry((key.id.clone(), address))
            .or_insert((limit.burst, now));
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

/// The client's address: the TCP peer, or with `trusted_header` set (opt-in, for an origin
/// behind a proxy or CDN that sets it) the last entry of that header, the one the trusted
/// proxy appended (earlier entries are whatever the client claimed). Only the last entry
/// counts, with an optional port or brackets: skipping one that does not parse would let
/// the client's own entry through.
pub fn client_address(
    headers: &HeaderMap,
    extensions: &Extensions,
    trusted_header: Option<&str>,
) -> Option<IpAddr> {
    if let Some(name) = trusted_header {
        let last = headers
            .get_all(name)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if let Some(entry) = last
            && let Some(address) = parse_forwarded(entry)
        {
            return Some(address);
        }
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip())
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// The authenticated caller of a request. Extracting it authenticates and rate-limits.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: String,
    pub role: Role,
    /// The client's address, when known (see `client_address`).
    pub client: Option<IpAddr>,
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
        let client = client_address(
            &parts.headers,
            &parts.extensions,
            state.settings.trusted_proxy_header.as_deref(),
        );
        state
            .limiter
            .check(&key, client, 1.0)
            .map_err(|retry_after_s| ApiError::RateLimited { retry_after_s })?;
        Ok(Caller {
            key_id: key.id,
            role: key.role,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn forwarded(value: &str) -> Option<IpAddr> {
        let (parts, ()) = axum::http::Request::builder()
            .header("x-forwarded-for", value)
            .body(())
            .expect("request")
            .into_parts();
        client_address(&parts.headers, &parts.extensions, Some("x-forwarded-for"))
    }

    /// One IPv6 client holds a whole /64: it gets one bucket, not 2⁶⁴ of them; IPv4
    /// written as IPv6 is the IPv4 client.
    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            client_bucket(ip("2001:db8::1")),
            client_bucket(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            client_bucket(ip("2001:db8::1")),
            client_bucket(ip("2001:db8:0:1::1"))
        );
        assert_eq!(client_bucket(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_bucket(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    /// Only the entry the trusted proxy appended counts, with a port or brackets; one that
    /// does not parse never lets an earlier, client-written entry through.
    #[test]
    fn only_the_proxys_entry_names_the_client() {
        assert_eq!(forwarded("10.0.0.1, 192.0.2.7"), Some(ip("192.0.2.7")));
        assert_eq!(forwarded("10.0.0.1, 192.0.2.7:5678"), Some(ip("192.0.2.7")));
        assert_eq!(forwarded("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(forwarded("10.0.0.1, unknown"), None);
    }
}
