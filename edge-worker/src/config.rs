//! Configuration from wrangler vars and secrets. Every value is a string binding; this module
//! turns them into typed settings once per isolate and reports what is wrong by name.

use url::Url;

/// The default snapshot TTL: how long an isolate serves its snapshot before revalidating it
/// with the origin (in the background, so no request waits for it).
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// How long the first request of a cold isolate with no cached copy may wait for the origin.
pub const DEFAULT_SNAPSHOT_TIMEOUT_MS: u64 = 1_000;
/// How long exposures logged by the edge itself may wait in memory before they are sent.
pub const DEFAULT_EXPOSURE_FLUSH_MS: u64 = 10_000;

/// Typed settings of one deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The origin's base URL; the worker appends `/api/v1/...`.
    pub origin: Url,
    /// Where proxied requests go. `None` forwards to the request's own URL, which on
    /// Cloudflare is the zone's origin server when the worker runs on a route.
    pub upstream: Option<Url>,
    /// The sdk key sent to the origin (snapshot and events).
    pub sdk_key: String,
    pub verification: Verification,
    pub ttl_ms: u64,
    pub snapshot_timeout_ms: u64,
    pub exposure_flush_ms: u64,
    /// The attribute the `abx_uid` cookie fills in (`user_id` unless configured).
    pub unit_attribute: String,
    pub cookie: CookieConfig,
}

/// How snapshots are checked before they are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Only snapshots signed by one of these Ed25519 keys are accepted (production). One key,
    /// or the old and the new one while the origin's signing key is rotated.
    PublicKeys(Vec<[u8; 32]>),
    /// The checksum alone is checked. Only with `ABX_ALLOW_UNSIGNED=true`, for local test
    /// snapshots: a missing key must never silently turn verification off.
    ChecksumOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    pub http_only: bool,
    /// `Domain` attribute, to share the id across subdomains; host-only when `None`.
    pub domain: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("`{0}` is not set")]
    Missing(&'static str),
    #[error("`{name}` is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl ConfigError {
    fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name,
            reason: reason.into(),
        }
    }
}

/// Reads the configuration through `get` (a binding name → its value, `None` when unset).
/// Empty strings count as unset, so a var can be blanked without deleting it.
pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let read = |name: &str| {
        get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };

    let origin = read("ABX_ORIGIN_URL").ok_or(ConfigError::Missing("ABX_ORIGIN_URL"))?;
    let origin = http_url("ABX_ORIGIN_URL", &origin)?;
    let upstream = read("ABX_UPSTREAM_URL")
        .map(|u| http_url("ABX_UPSTREAM_URL", &u))
        .transpose()?;
    let sdk_key = read("ABX_SDK_KEY").ok_or(ConfigError::Missing("ABX_SDK_KEY"))?;

    let allow_unsigned = flag(read("ABX_ALLOW_UNSIGNED"), "ABX_ALLOW_UNSIGNED", false)?;
    let verification = match read("ABX_PUBLIC_KEY") {
        Some(list) => Verification::PublicKeys(public_keys(&list)?),
        None if allow_unsigned => Verification::ChecksumOnly,
        None => return Err(ConfigError::Missing("ABX_PUBLIC_KEY")),
    };

    let ttl_ms = match read("ABX_SNAPSHOT_TTL_S") {
        Some(text) => seconds_to_ms("ABX_SNAPSHOT_TTL_S", &text)?,
        None => DEFAULT_TTL_MS,
    };
    let snapshot_timeout_ms = millis(
        read("ABX_SNAPSHOT_TIMEOUT_MS"),
        "ABX_SNAPSHOT_TIMEOUT_MS",
        DEFAULT_SNAPSHOT_TIMEOUT_MS,
    )?;
    let exposure_flush_ms = millis(
        read("ABX_EXPOSURE_FLUSH_MS"),
        "ABX_EXPOSURE_FLUSH_MS",
        DEFAULT_EXPOSURE_FLUSH_MS,
    )?;
    let unit_attribute = read("ABX_UNIT_ATTRIBUTE").unwrap_or_else(|| "user_id".to_string());
    let cookie = CookieConfig {
        http_only: flag(read("ABX_COOKIE_HTTP_ONLY"), "ABX_COOKIE_HTTP_ONLY", true)?,
        domain: read("ABX_COOKIE_DOMAIN")
            .map(|d| cookie_domain("ABX_COOKIE_DOMAIN", d))
            .transpose()?,
    };

    Ok(Config {
        origin,
        upstream,
        sdk_key,
        verification,
        ttl_ms,
        snapshot_timeout_ms,
        exposure_flush_ms,
        unit_attribute,
        cookie,
    })
}

/// The upstream alone, for a worker whose configuration is otherwise unusable: it still
/// forwards requests where they belong, only without assignments.
pub fn upstream_only(get: impl Fn(&str) -> Option<String>) -> Option<Url> {
    let text = get("ABX_UPSTREAM_URL")?;
    http_url("ABX_UPSTREAM_URL", text.trim()).ok()
}

fn http_url(name: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| ConfigError::invalid(name, e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::invalid(name, "must be an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            name,
            "must not have a query or fragment",
        ));
    }
    Ok(url)
}

/// `ABX_PUBLIC_KEY`: one key, or several separated by commas during a key rotation.
fn public_keys(list: &str) -> Result<Vec<[u8; 32]>, ConfigError> {
    let keys = list
        .split(',')
        .map(|hex| public_key(hex.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.len() > 4 {
        return Err(ConfigError::invalid(
            "ABX_PUBLIC_KEY",
            "lists more than 4 keys (a rotation needs two)",
        ));
    }
    Ok(keys)
}

fn public_key(hex: &str) -> Result<[u8; 32], ConfigError> {
    let invalid = || {
        ConfigError::invalid(
            "ABX_PUBLIC_KEY",
            "must be 64 hexadecimal digits, or several such keys separated by commas",
        )
    };
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| invalid())?;
    }
    Ok(key)
}

fn flag(value: Option<String>, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(_) => Err(ConfigError::invalid(name, "must be true or false")),
    }
}

/// Seconds, fractions allowed (tests use sub-second TTLs), at least 1 ms and at most a day.
fn seconds_to_ms(name: &'static str, text: &str) -> Result<u64, ConfigError> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| ConfigError::invalid(name, "must be a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(ConfigError::invalid(
            name,
            "must be between 0.001 and 86400 seconds",
        ));
    }
    Ok((seconds * 1000.0).round() as u64)
}

fn millis(value: Option<String>, name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms <= 600_000)
            .ok_or_else(|| ConfigError::invalid(name, "must be 0 to 600000 milliseconds")),
    }
}

/// The domain ends up inside a `Set-Cookie` header, so only hostname characters pass.
fn cookie_domain(name: &'static str, domain: String) -> Result<String, ConfigError> {
    let ok = domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if ok {
        Ok(domain)
    } else {
        Err(ConfigError::invalid(name, "must be a hostname"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3b398be265f0221a7aa62696d59f434c3ad6ea6642378397a5476f483100d0f4";

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    const BASE: &[(&str, &str)] = &[
        ("ABX_ORIGIN_URL", "https://abx.example.com"),
        ("ABX_SDK_KEY", "sdk-secret"),
        ("ABX_PUBLIC_KEY", KEY),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
        for (name, value) in extra {
            pairs.retain(|(n, _)| n != name);
            pairs.push((name, value));
        }
        from_lookup(lookup(&pairs))
    }

    #[test]
    fn defaults() {
        let config = with(&[]).expect("valid");
        assert_eq!(config.origin.as_str(), "https://abx.example.com/");
        assert_eq!(config.upstream, None);
        assert_eq!(config.ttl_ms, DEFAULT_TTL_MS);
        assert_eq!(config.snapshot_timeout_ms, DEFAULT_SNAPSHOT_TIMEOUT_MS);
        assert_eq!(config.exposure_flush_ms, DEFAULT_EXPOSURE_FLUSH_MS);
        assert_eq!(config.unit_attribute, "user_id");
        assert_eq!(
            config.cookie,
            CookieConfig {
                http_only: true,
                domain: None
            }
        );
        let Verification::PublicKeys(keys) = config.verification else {
            panic!("a public key was configured");
        };
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0][0], 0x3b);
        assert_eq!(keys[0][31], 0xf4);
    }

    #[test]
    fn overrides() {
        let config = with(&[
            ("ABX_UPSTREAM_URL", "http://127.0.0.1:9000"),
            ("ABX_SNAPSHOT_TTL_S", "0.5"),
            ("ABX_SNAPSHOT_TIMEOUT_MS", "250"),
            ("ABX_EXPOSURE_FLUSH_MS", "0"),
            ("ABX_UNIT_ATTRIBUTE", "device_id"),
            ("ABX_COOKIE_HTTP_ONLY", "false"),
            ("ABX_COOKIE_DOMAIN", "example.com"),
        ])
        .expect("valid");
        assert_eq!(
            config.upstream.map(String::from).as_deref(),
            Some("http://127.0.0.1:9000/")
        );
        assert_eq!(config.ttl_ms, 500);
        assert_eq!(config.snapshot_timeout_ms, 250);
        assert_eq!(config.exposure_flush_ms, 0);
        assert_eq!(config.unit_attribute, "device_id");
        assert!(!config.cookie.http_only);
        assert_eq!(config.cookie.domain.as_deref(), Some("example.com"));
    }

    #[test]
    fn unsigned_needs_an_explicit_opt_in() {
        let without_key = |extra: &[(&str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = BASE
                .iter()
                .copied()
                .filter(|(n, _)| *n != "ABX_PUBLIC_KEY")
                .collect();
            pairs.extend_from_slice(extra);
            from_lookup(lookup(&pairs))
        };
        assert_eq!(
            without_key(&[]),
            Err(ConfigError::Missing("ABX_PUBLIC_KEY"))
        );
        assert_eq!(
            without_key(&[("ABX_ALLOW_UNSIGNED", "true")]).map(|c| c.verification),
            Ok(Verification::ChecksumOnly)
        );
        // A configured key wins over the opt-in: verification never gets weaker.
        assert!(matches!(
            with(&[("ABX_ALLOW_UNSIGNED", "true")]).map(|c| c.verification),
            Ok(Verification::PublicKeys(_))
        ));
    }

    #[test]
    fn invalid_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("ABX_ORIGIN_URL", "not a url", "ABX_ORIGIN_URL"),
            ("ABX_ORIGIN_URL", "ftp://abx.example.com", "ABX_ORIGIN_URL"),
            (
                "ABX_ORIGIN_URL",
                "https://abx.example.com/?a=1",
                "ABX_ORIGIN_URL",
            ),
            ("ABX_UPSTREAM_URL", "mailto:a@b.c", "ABX_UPSTREAM_URL"),
            ("ABX_PUBLIC_KEY", "abcd", "ABX_PUBLIC_KEY"),
            ("ABX_PUBLIC_KEY", KEY_WITH_NON_HEX, "ABX_PUBLIC_KEY"),
            ("ABX_SNAPSHOT_TTL_S", "soon", "ABX_SNAPSHOT_TTL_S"),
            ("ABX_SNAPSHOT_TTL_S", "0", "ABX_SNAPSHOT_TTL_S"),
            ("ABX_SNAPSHOT_TTL_S", "NaN", "ABX_SNAPSHOT_TTL_S"),
            ("ABX_SNAPSHOT_TIMEOUT_MS", "-1", "ABX_SNAPSHOT_TIMEOUT_MS"),
            ("ABX_EXPOSURE_FLUSH_MS", "9999999", "ABX_EXPOSURE_FLUSH_MS"),
            ("ABX_COOKIE_HTTP_ONLY", "maybe", "ABX_COOKIE_HTTP_ONLY"),
            ("ABX_COOKIE_DOMAIN", "a.com; Path=/x", "ABX_COOKIE_DOMAIN"),
            ("ABX_ALLOW_UNSIGNED", "sure", "ABX_ALLOW_UNSIGNED"),
        ];
        for (name, value, expected) in cases {
            let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
            pairs.retain(|(n, _)| n != name);
            pairs.push((name, value));
            match from_lookup(lookup(&pairs)) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, *expected, "{value}"),
                other => panic!("{name}={value}: expected an error, got {other:?}"),
            }
        }
        let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
        pairs.retain(|(n, _)| *n != "ABX_SDK_KEY");
        assert_eq!(
            from_lookup(lookup(&pairs)),
            Err(ConfigError::Missing("ABX_SDK_KEY"))
        );
        // Blank counts as unset.
        assert_eq!(
            with(&[("ABX_ORIGIN_URL", "  ")]),
            Err(ConfigError::Missing("ABX_ORIGIN_URL"))
        );
    }

    #[test]
    fn upstream_survives_other_errors() {
        let broken = lookup(&[("ABX_UPSTREAM_URL", "http://127.0.0.1:9000")]);
        assert!(from_lookup(&broken).is_err());
        assert_eq!(
            upstream_only(&broken).map(String::from).as_deref(),
            Some("http://127.0.0.1:9000/")
        );
        assert_eq!(upstream_only(lookup(&[("ABX_UPSTREAM_URL", "nope")])), None);
        assert_eq!(upstream_only(lookup(&[])), None);
    }

    const KEY_WITH_NON_HEX: &str =
        "zz398be265f0221a7aa62696d59f434c3ad6ea6642378397a5476f483100d0f4";
}
