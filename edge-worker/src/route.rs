//! Split-URL tests: a variant's config may carry a `$route` key that sends the visitor's
//! request somewhere else.
//!
//! ```json
//! {"$route": "https://beta.example.com"}                  // every path, another upstream
//! {"$route": {"/pricing": "/pricing-v2"}}                 // one path, rewritten
//! {"$route": {"/docs/*": "https://docs-v2.example.com/*"}} // a subtree, another upstream
//! ```
//!
//! A string is shorthand for `{"*": string}`. Patterns are exact paths, or a prefix ending in
//! `*` (a lone `*` matches everything); a target's trailing `*` receives the rest of the path
//! after the pattern's prefix. A target is a path (the upstream stays), an `http(s)` origin
//! without a path (the path stays, the upstream changes), or a full URL. A target with a
//! query string replaces the request's query; otherwise the query is kept.
//!
//! The first experiment in snapshot order that has a rule for the path and gives the visitor
//! a variant decides the request; the variant's matching rule (if it has one: a control arm
//! usually has none) is applied, and that experiment's exposure is logged.

use abx_core::Assignment;
use abx_core::Snapshot;
use url::Url;

/// The config key that routes a request.
pub const ROUTE_KEY: &str = "$route";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// Matches paths starting with the prefix (empty for `*`).
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Prefix(String::new()));
        }
        if !text.starts_with('/') {
            return Err(format!("pattern `{text}` must start with `/` or be `*`"));
        }
        match text.strip_suffix('*') {
            Some(prefix) => Ok(Pattern::Prefix(prefix.to_string())),
            None => Ok(Pattern::Exact(text.to_string())),
        }
    }

    /// The rest of the path after the pattern's prefix when it matches.
    fn matches<'p>(&self, path: &'p str) -> Option<&'p str> {
        match self {
            Pattern::Exact(exact) => (path == exact).then_some(""),
            Pattern::Prefix(prefix) => path.strip_prefix(prefix.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A new path (may end with `*`) and optionally a new query; same upstream.
    Path { path: String, query: Option<String> },
    /// A new upstream; path and query unchanged.
    Upstream(Url),
    /// A new upstream and path (may end with `*`, here kept as the literal URL's path).
    Url { url: Url, splat: bool },
}

impl Target {
    fn parse(text: &str) -> Result<Target, String> {
        if text.starts_with('/') {
            let (path, query) = match text.split_once('?') {
                Some((path, query)) => (path, Some(query.to_string())),
                None => (text, None),
            };
            return Ok(Target::Path {
                path: path.to_string(),
                query,
            });
        }
        let url = Url::parse(text).map_err(|e| format!("target `{text}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("target `{text}` must be a path or an http(s) URL"));
        }
        // `Url` normalises an empty path to `/`, so look at the text: is there anything
        // after the authority?
        let after_scheme = text.split_once("://").map_or("", |(_, rest)| rest);
        let has_path = after_scheme.contains(['/', '?']);
        if has_path {
            Ok(Target::Url {
                splat: url.path().ends_with('*'),
                url,
            })
        } else {
            Ok(Target::Upstream(url))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pattern: Pattern,
    target: Target,
}

/// The rules of every experiment that has any, parsed once per snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    /// (experiment index, rules per variant), in snapshot order.
    experiments: Vec<(u32, Vec<Vec<Rule>>)>,
}

/// A `$route` that could not be used; the rest of the snapshot still is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteProblem {
    pub experiment: String,
    pub variant: String,
    pub message: String,
}

impl RouteTable {
    /// Collects the `$route` rules of every variant. A variant whose `$route` is malformed
    /// gets no rules (its visitors are served the unrouted page) and is reported.
    pub fn build(snapshot: &Snapshot) -> (RouteTable, Vec<RouteProblem>) {
        let mut table = RouteTable::default();
        let mut problems = Vec::new();
        for (index, experiment) in snapshot.experiments.iter().enumerate() {
            let mut any = false;
            let mut per_variant = Vec::with_capacity(experiment.variants.len());
            for variant in &experiment.variants {
                // Most configs have no route; skip parsing them.
                let rules = if variant.config.contains("\"$route\"") {
                    parse_rules(&variant.config).unwrap_or_else(|message| {
                        problems.push(RouteProblem {
                            experiment: experiment.key.clone(),
                            variant: snapshot
                                .strings
                                .get(variant.key as usize)
                                .cloned()
                                .unwrap_or_default(),
                            message,
                        });
                        Vec::new()
                    })
                } else {
                    Vec::new()
                };
                any |= !rules.is_empty();
                per_variant.push(rules);
            }
            if any {
                table.experiments.push((index as u32, per_variant));
            }
        }
        (table, problems)
    }

    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty()
    }

    /// The experiments (snapshot indices) whose variants route `path`, in snapshot order.
    pub fn routing(&self, path: &str) -> impl Iterator<Item = u32> {
        self.routing_rules(path).map(|(index, _)| index)
    }

    fn routing_rules<'t>(&'t self, path: &str) -> impl Iterator<Item = (u32, &'t [Vec<Rule>])> {
        self.experiments
            .iter()
            .filter_map(move |(index, per_variant)| {
                let routes_path = per_variant
                    .iter()
                    .flatten()
                    .any(|rule| rule.pattern.matches(path).is_some());
                routes_path.then_some((*index, per_variant.as_slice()))
            })
    }

    /// Decides how `path` is routed for a visitor with these assignments (all experiments of
    /// the snapshot, in order).
    pub fn decide<'t>(
        &'t self,
        path: &str,
        assignments: &[Assignment<'_>],
    ) -> Option<Decision<'t>> {
        for (index, per_variant) in self.routing_rules(path) {
            let Some(assignment) = assignments.get(index as usize) else {
                continue;
            };
            let Some(variant) = assignment.variant_index else {
                continue;
            };
            let rule = per_variant.get(variant as usize).and_then(|rules| {
                rules.iter().find_map(|rule| {
                    rule.pattern
                        .matches(path)
                        .map(|rest| (rule, rest.to_string()))
                })
            });
            return Some(Decision {
                experiment: index,
                log_exposure: assignment.log_exposure,
                rule,
            });
        }
        None
    }
}

fn parse_rules(config: &str) -> Result<Vec<Rule>, String> {
    let value: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
    let Some(route) = value.get(ROUTE_KEY) else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(&str, &serde_json::Value)> = match route {
        serde_json::Value::String(_) => vec![("*", route)],
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        _ => return Err("`$route` must be a string or an object of path → target".into()),
    };
    pairs
        .into_iter()
        .map(|(pattern, target)| {
            let target = target
                .as_str()
                .ok_or_else(|| format!("the target of `{pattern}` must be a string"))?;
            Ok(Rule {
                pattern: Pattern::parse(pattern)?,
                target: Target::parse(target)?,
            })
        })
        .collect()
}

/// The experiment that decided a request, and the rule its variant applies.
#[derive(Debug, PartialEq)]
pub struct Decision<'t> {
    pub experiment: u32,
    pub log_exposure: bool,
    /// The rule and the rest of the path after its prefix; `None` when the visitor's variant
    /// keeps the request where it was (typically the control).
    pub rule: Option<(&'t Rule, String)>,
}

/// The URL a request goes to: `upstream` (scheme, host, port, and a path prefix) followed by
/// the request's path and query.
pub fn forward_url(upstream: &Url, path: &str, query: Option<&str>) -> Url {
    let mut url = upstream.clone();
    let prefix = upstream.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    url.set_query(query);
    url
}

/// Where a routed request goes, given the upstream it would have gone to.
pub fn routed_url(rule: &Rule, rest: &str, upstream: &Url, path: &str, query: Option<&str>) -> Url {
    let splat = |p: &str| match p.strip_suffix('*') {
        Some(prefix) => format!("{prefix}{rest}"),
        None => p.to_string(),
    };
    match &rule.target {
        Target::Path {
            path: new_path,
            query: new_query,
        } => forward_url(upstream, &splat(new_path), new_query.as_deref().or(query)),
        Target::Upstream(new_upstream) => forward_url(new_upstream, path, query),
        Target::Url { url, splat: true } => {
            let mut routed = url.clone();
            let new_path = splat(url.path());
            routed.set_path(&new_path);
            if url.query().is_none() {
                routed.set_query(query);
            }
            routed
        }
        Target::Url { url, splat: false } => {
            let mut routed = url.clone();
            if url.query().is_none() {
                routed.set_query(query);
            }
            routed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abx_core::Reason;

    fn rules(config: &str) -> Vec<Rule> {
        parse_rules(config).expect(config)
    }

    #[test]
    fn parse_and_apply() {
        let upstream = Url::parse("http://127.0.0.1:9000/").unwrap();
        // (config, request path, request query, expected URL or None when not matched)
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (
                r#"{"$route": {"/pricing": "/pricing-v2"}}"#,
                "/pricing",
                Some("a=1"),
                Some("http://127.0.0.1:9000/pricing-v2?a=1"),
            ),
            (
                r#"{"$route": {"/pricing": "/pricing-v2"}}"#,
                "/pricing/x",
                None,
                None,
            ),
            (
                r#"{"$route": {"/pricing": "/pricing-v2?ref=ab"}}"#,
                "/pricing",
                Some("a=1"),
                Some("http://127.0.0.1:9000/pricing-v2?ref=ab"),
            ),
            (
                r#"{"$route": "https://beta.example.com"}"#,
                "/any/page",
                Some("q=1"),
                Some("https://beta.example.com/any/page?q=1"),
            ),
            (
                r#"{"$route": "http://127.0.0.1:9100"}"#,
                "/",
                None,
                Some("http://127.0.0.1:9100/"),
            ),
            (
                r#"{"$route": {"/docs/*": "https://docs.example.com/v2/*"}}"#,
                "/docs/a/b",
                None,
                Some("https://docs.example.com/v2/a/b"),
            ),
            (
                r#"{"$route": {"/docs/*": "/v2/*"}}"#,
                "/docs/",
                Some("x=y"),
                Some("http://127.0.0.1:9000/v2/?x=y"),
            ),
            (r#"{"$route": {"/docs/*": "/v2/*"}}"#, "/doc", None, None),
            (
                r#"{"$route": {"/landing": "https://b.example.com/welcome"}}"#,
                "/landing",
                Some("utm=1"),
                Some("https://b.example.com/welcome?utm=1"),
            ),
            (
                r#"{"$route": {"*": "/maintenance"}}"#,
                "/anything",
                None,
                Some("http://127.0.0.1:9000/maintenance"),
            ),
        ];
        for (config, path, query, expected) in cases {
            let parsed = rules(config);
            let found = parsed
                .iter()
                .find_map(|rule| rule.pattern.matches(path).map(|rest| (rule, rest)));
            let url = found.map(|(rule, rest)| routed_url(rule, rest, &upstream, path, *query));
            assert_eq!(url.as_ref().map(Url::as_str), *expected, "{config} {path}");
        }
    }

    #[test]
    fn upstream_prefix_is_kept() {
        let upstream = Url::parse("https://backend.example.com/site/").unwrap();
        assert_eq!(
            forward_url(&upstream, "/a", Some("b=1")).as_str(),
            "https://backend.example.com/site/a?b=1"
        );
        let bare = Url::parse("https://backend.example.com").unwrap();
        assert_eq!(
            forward_url(&bare, "/", None).as_str(),
            "https://backend.example.com/"
        );
    }

    #[test]
    fn malformed_routes_are_reported() {
        let cases = [
            r#"{"$route": 42}"#,
            r#"{"$route": ["/a"]}"#,
            r#"{"$route": {"pricing": "/x"}}"#,
            r#"{"$route": {"/a": 1}}"#,
            r#"{"$route": {"/a": "ftp://x.example.com"}}"#,
            r#"{"$route": {"/a": "relative/path"}}"#,
            r#"{"$route": "mailto:someone@example.com"}"#,
        ];
        for config in cases {
            assert!(parse_rules(config).is_err(), "{config}");
        }
        assert_eq!(parse_rules(r#"{"color": "$route"}"#), Ok(Vec::new()));
    }

    fn assignment(index: u32, variant: Option<u32>) -> Assignment<'static> {
        Assignment {
            index,
            experiment_key: "e",
            experiment_id: "67e55044-10b1-426f-9247-bb680e5fe0c8",
            variant: variant.map(|_| "v"),
            variant_index: variant,
            config: None,
            reason: if variant.is_some() {
                Reason::Assigned
            } else {
                Reason::NotInTraffic
            },
            log_exposure: variant.is_some(),
        }
    }

    #[test]
    fn first_experiment_with_a_variant_decides() {
        let table = RouteTable {
            experiments: vec![
                (0, vec![vec![], rules(r#"{"$route": {"/p": "/p-a"}}"#)]),
                (1, vec![vec![], rules(r#"{"$route": {"/p": "/p-b"}}"#)]),
                (2, vec![rules(r#"{"$route": {"/q": "/q-c"}}"#), vec![]]),
            ],
        };
        // Not in experiment 0: experiment 1 decides, with its treatment's rule.
        let out = [
            assignment(0, None),
            assignment(1, Some(1)),
            assignment(2, Some(0)),
        ];
        let decision = table.decide("/p", &out).expect("routed");
        assert_eq!(decision.experiment, 1);
        assert!(decision.log_exposure);
        assert!(
            matches!(&decision.rule, Some((rule, _)) if rule.target == Target::Path { path: "/p-b".into(), query: None })
        );
        // In experiment 0's control: experiment 0 decides and keeps the request.
        let control = [
            assignment(0, Some(0)),
            assignment(1, Some(1)),
            assignment(2, Some(0)),
        ];
        let decision = table.decide("/p", &control).expect("decided");
        assert_eq!(decision.experiment, 0);
        assert!(decision.rule.is_none());
        // A path no experiment routes.
        assert_eq!(table.decide("/elsewhere", &control), None);
        // Experiment 2 routes /q for its first variant.
        assert_eq!(table.decide("/q", &control).map(|d| d.experiment), Some(2));
    }
}
