//! Cache headers of proxied responses. A response rendered for one visitor's variants must
//! never be served to another visitor from a shared cache (a CDN, a corporate proxy), while
//! responses that do not depend on assignment (static assets) should stay cacheable.
//!
//! The rule, applied when the request carried assignments or the response sets a new
//! `abx_uid` cookie:
//! - **Dependent** responses — the upstream lists `x-abx-assignments` or `x-abx-uid` in
//!   `Vary` (the HTTP way to say "my body depends on that request header"), or the edge
//!   routed the request for a split-URL test, or the response sets a new `abx_uid` cookie
//!   (a shared cache must never hand one visitor's id to another) — become `private`
//!   (`public` and `s-maxage` are dropped, `max-age` stays for the visitor's own browser),
//!   and their `Vary` names `Cookie` instead of the internal headers, which browsers and
//!   caches never see.
//! - Responses with no `Cache-Control` at all become `private`, since shared caches may
//!   store them heuristically and the edge cannot know whether they used the assignment.
//! - Anything else (an explicit `public` or `max-age` without `Vary`: static assets) is left
//!   alone.

const INTERNAL: [&str; 2] = ["x-abx-assignments", "x-abx-uid"];

/// The headers to set on the response; `None` leaves a header as the upstream sent it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheHeaders {
    pub cache_control: Option<String>,
    pub vary: Option<String>,
}

fn tokens(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Applies the rule above.
pub fn downstream(
    cache_control: Option<&str>,
    vary: Option<&str>,
    assigned: bool,
    routed: bool,
    new_cookie: bool,
) -> CacheHeaders {
    if !assigned && !new_cookie {
        return CacheHeaders::default();
    }
    let varies_internally =
        vary.is_some_and(|v| tokens(v).any(|t| INTERNAL.iter().any(|i| t.eq_ignore_ascii_case(i))));
    let dependent = varies_internally || routed || new_cookie;
    let mut out = CacheHeaders::default();
    if varies_internally || routed {
        let mut kept: Vec<&str> = vary
            .map(|v| {
                tokens(v)
                    .filter(|t| !INTERNAL.iter().any(|i| t.eq_ignore_ascii_case(i)))
                    .collect()
            })
            .unwrap_or_default();
        if !kept
            .iter()
            .any(|t| t.eq_ignore_ascii_case("cookie") || *t == "*")
        {
            kept.push("Cookie");
        }
        out.vary = Some(kept.join(", "));
    }
    match cache_control {
        None => out.cache_control = Some("private".into()),
        Some(value) if dependent => {
            let directives: Vec<&str> = tokens(value).collect();
            let already_private = directives.iter().any(|d| {
                let name = d.split('=').next().unwrap_or("").trim();
                name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
            });
            let mut kept: Vec<&str> = directives
                .into_iter()
                .filter(|d| {
                    let name = d.split('=').next().unwrap_or("").trim();
                    !name.eq_ignore_ascii_case("public") && !name.eq_ignore_ascii_case("s-maxage")
                })
                .collect();
            if !already_private {
                kept.insert(0, "private");
            }
            out.cache_control = Some(kept.join(", "));
        }
        Some(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        // (cache-control, vary, assigned, routed, new cookie) → (cache-control, vary)
        type Case = (
            (Option<&'static str>, Option<&'static str>, bool, bool, bool),
            (Option<&'static str>, Option<&'static str>),
        );
        let cases: &[Case] = &[
            // No assignments sent and no cookie set: untouched.
            ((None, None, false, false, false), (None, None)),
            (
                (
                    Some("public, max-age=60"),
                    Some("x-abx-assignments"),
                    false,
                    false,
                    false,
                ),
                (None, None),
            ),
            // No Cache-Control: private by default.
            ((None, None, true, false, false), (Some("private"), None)),
            // Static asset: explicit public caching is kept.
            (
                (
                    Some("public, max-age=31536000, immutable"),
                    None,
                    true,
                    false,
                    false,
                ),
                (None, None),
            ),
            (
                (
                    Some("max-age=60"),
                    Some("Accept-Encoding"),
                    true,
                    false,
                    false,
                ),
                (None, None),
            ),
            // The upstream says the body depends on the assignment.
            (
                (
                    Some("public, max-age=60, s-maxage=600"),
                    Some("Accept-Encoding, X-ABX-Assignments"),
                    true,
                    false,
                    false,
                ),
                (Some("private, max-age=60"), Some("Accept-Encoding, Cookie")),
            ),
            (
                (Some("no-store"), Some("x-abx-uid"), true, false, false),
                (Some("no-store"), Some("Cookie")),
            ),
            (
                (None, Some("x-abx-assignments"), true, false, false),
                (Some("private"), Some("Cookie")),
            ),
            (
                (
                    Some("private, max-age=5"),
                    Some("cookie, x-abx-assignments"),
                    true,
                    false,
                    false,
                ),
                (Some("private, max-age=5"), Some("cookie")),
            ),
            // Routed by a split-URL test.
            (
                (Some("public, max-age=300"), None, true, true, false),
                (Some("private, max-age=300"), Some("Cookie")),
            ),
            (
                (Some("max-age=300"), Some("*"), true, true, false),
                (Some("private, max-age=300"), Some("*")),
            ),
            // A new cookie must never be stored by a shared cache, with or without a snapshot.
            (
                (Some("public, max-age=31536000"), None, false, false, true),
                (Some("private, max-age=31536000"), None),
            ),
            (
                (Some("public, max-age=31536000"), None, true, false, true),
                (Some("private, max-age=31536000"), None),
            ),
        ];
        for ((cc, vary, assigned, routed, cookie), (want_cc, want_vary)) in cases {
            let got = downstream(*cc, *vary, *assigned, *routed, *cookie);
            assert_eq!(
                (got.cache_control.as_deref(), got.vary.as_deref()),
                (*want_cc, *want_vary),
                "{cc:?} {vary:?} assigned={assigned} routed={routed} cookie={cookie}"
            );
        }
    }
}
