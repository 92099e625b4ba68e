//! The `abx_uid` cookie: the visitor's unit id at the edge.

use crate::config::CookieConfig;

pub const COOKIE_NAME: &str = "abx_uid";
/// One year, so a returning visitor keeps their variants.
pub const MAX_AGE_S: u32 = 365 * 24 * 60 * 60;
const MAX_UID_LEN: usize = 64;

/// Whether `uid` may be used as a unit id. Ids end up in request headers to the upstream
/// (`x-abx-uid`), in events and in `Set-Cookie`, so only a conservative token alphabet passes;
/// anything else is treated as absent and replaced by a fresh id.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= MAX_UID_LEN
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// The visitor's id from a `Cookie` header: the first valid `abx_uid` value.
pub fn find_uid(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| name.trim() == COOKIE_NAME)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .find(|value| is_valid_uid(value))
}

/// The `Set-Cookie` value for a newly created id.
pub fn set_cookie(uid: &str, config: &CookieConfig) -> String {
    let mut cookie = format!("{COOKIE_NAME}={uid}; Path=/; Max-Age={MAX_AGE_S}; Secure");
    if config.http_only {
        cookie.push_str("; HttpOnly");
    }
    cookie.push_str("; SameSite=Lax");
    if let Some(domain) = &config.domain {
        cookie.push_str("; Domain=");
        cookie.push_str(domain);
    }
    cookie
}

/// The id to use for a request: the cookie's when valid, else `fresh()` (a new random id),
/// with whether it was created (and so must be set on the response).
pub fn resolve(cookie_header: Option<&str>, fresh: impl FnOnce() -> String) -> (String, bool) {
    match cookie_header.and_then(find_uid) {
        Some(uid) => (uid.to_string(), false),
        None => (fresh(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_valid_uid() {
        let cases: &[(&str, Option<&str>)] = &[
            ("abx_uid=abc-123", Some("abc-123")),
            ("a=1; abx_uid=abc; b=2", Some("abc")),
            ("a=1;abx_uid=\"quoted\"", Some("quoted")),
            (" abx_uid = spaced ", Some("spaced")),
            ("abx_uid=bad value; abx_uid=good", Some("good")),
            ("abx_uid=; other=1", None),
            ("abx_uid=<script>", None),
            ("abx_uidx=abc", None),
            ("xabx_uid=abc", None),
            ("abx_uid", None),
            ("", None),
            ("abx_uid=\r\nx: y", None),
        ];
        for (header, expected) in cases {
            assert_eq!(find_uid(header), *expected, "{header:?}");
        }
        let too_long = format!("abx_uid={}", "a".repeat(65));
        assert_eq!(find_uid(&too_long), None);
        let longest = format!("abx_uid={}", "a".repeat(64));
        assert_eq!(find_uid(&longest).map(str::len), Some(64));
    }

    #[test]
    fn set_cookie_attributes() {
        let cases = [
            (
                CookieConfig {
                    http_only: true,
                    domain: None,
                },
                "abx_uid=u1; Path=/; Max-Age=31536000; Secure; HttpOnly; SameSite=Lax",
            ),
            (
                CookieConfig {
                    http_only: false,
                    domain: Some("example.com".into()),
                },
                "abx_uid=u1; Path=/; Max-Age=31536000; Secure; SameSite=Lax; Domain=example.com",
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(set_cookie("u1", &config), expected);
        }
    }

    #[test]
    fn resolve_creates_only_when_needed() {
        assert_eq!(
            resolve(Some("abx_uid=kept"), || "new".into()),
            ("kept".into(), false)
        );
        assert_eq!(
            resolve(Some("abx_uid=not valid"), || "new".into()),
            ("new".into(), true)
        );
        assert_eq!(resolve(None, || "new".into()), ("new".into(), true));
    }
}
