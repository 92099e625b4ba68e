//! The evaluation context of a request: what the edge knows about the visitor (country, city,
//! colo, user agent), the unit from the `abx_uid` cookie, and, for `/abx/assignments`, the
//! query parameters.

use abx_core::{Context, Value};

/// Request data the edge knows. Absent values are left out of the context rather than sent
/// as empty strings, so `exists` conditions see the truth.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeData<'a> {
    pub country: Option<&'a str>,
    pub city: Option<&'a str>,
    pub colo: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Context attribute names of the edge data (also in README.md).
pub const EDGE_ATTRIBUTES: [&str; 4] = ["country", "city", "colo", "user_agent"];

/// The context of a visitor as the proxy path sees it: edge data, then the unit.
pub fn visitor_context(edge: &EdgeData<'_>, unit_attribute: &str, uid: &str) -> Context {
    let mut context = Context::new();
    push_edge(&mut context, edge);
    context.insert(unit_attribute, uid);
    context
}

fn push_edge(context: &mut Context, edge: &EdgeData<'_>) {
    let values = [edge.country, edge.city, edge.colo, edge.user_agent];
    for (name, value) in EDGE_ATTRIBUTES.iter().zip(values) {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            context.insert(*name, value);
        }
    }
}

/// A parsed `/abx/assignments` query.
#[derive(Debug, PartialEq)]
pub struct AssignmentsQuery {
    pub context: Context,
    pub now_ms: i64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("now_ms must be an integer number of milliseconds since the epoch")]
    NowMs,
    #[error("context must be a JSON object of attributes: {0}")]
    Context(String),
    #[error("exact must be true or false")]
    Exact,
}

/// Builds the context of `/abx/assignments?…`. Later sources win when a name repeats: edge
/// data, the cookie's unit, plain query parameters (string attributes), then `context` (a
/// JSON object of typed attributes, as in the origin's assignment endpoint). `now_ms`
/// sets the evaluation time (switchback debugging); `exact=1` evaluates the query's
/// attributes alone, without edge data or the cookie's unit, which is how the conformance
/// suite and server-side callers ask about a context that is not this visitor.
pub fn assignments_query(
    query: Option<&str>,
    edge: &EdgeData<'_>,
    unit_attribute: &str,
    uid: &str,
    now_ms: i64,
) -> Result<AssignmentsQuery, QueryError> {
    let mut plain: Vec<(String, String)> = Vec::new();
    let mut typed: Option<Context> = None;
    let mut now = now_ms;
    let mut exact = false;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "now_ms" => now = value.trim().parse().map_err(|_| QueryError::NowMs)?,
            "exact" => {
                exact = match value.as_ref() {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(QueryError::Exact),
                }
            }
            "context" => {
                typed = Some(
                    serde_json::from_str(&value).map_err(|e| QueryError::Context(e.to_string()))?,
                )
            }
            _ => plain.push((name.into_owned(), value.into_owned())),
        }
    }
    let mut context = Context::new();
    if !exact {
        push_edge(&mut context, edge);
        context.insert(unit_attribute, uid);
    }
    for (name, value) in plain {
        context.insert(name, Value::Str(value));
    }
    if let Some(typed) = typed {
        for (name, value) in typed.iter() {
            context.insert(name, value.clone());
        }
    }
    Ok(AssignmentsQuery {
        context,
        now_ms: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: EdgeData<'static> = EdgeData {
        country: Some("DE"),
        city: None,
        colo: Some("FRA"),
        user_agent: Some("Mozilla/5.0"),
    };

    fn get<'c>(context: &'c Context, name: &str) -> Option<&'c Value> {
        context.get(name)
    }

    #[test]
    fn visitor_context_has_edge_data_and_unit() {
        let context = visitor_context(&EDGE, "user_id", "u1");
        assert_eq!(get(&context, "country"), Some(&Value::from("DE")));
        assert_eq!(get(&context, "colo"), Some(&Value::from("FRA")));
        assert_eq!(
            get(&context, "user_agent"),
            Some(&Value::from("Mozilla/5.0"))
        );
        assert_eq!(get(&context, "city"), None, "absent data is left out");
        assert_eq!(get(&context, "user_id"), Some(&Value::from("u1")));
        let device = visitor_context(&EdgeData::default(), "device_id", "d1");
        assert_eq!(device.len(), 1);
        assert_eq!(get(&device, "device_id"), Some(&Value::from("d1")));
    }

    #[test]
    fn query_sources_in_order() {
        let parsed = assignments_query(
            Some("country=US&plan=pro&context=%7B%22age%22%3A36%2C%22plan%22%3A%22team%22%7D&now_ms=1760001600000"),
            &EDGE,
            "user_id",
            "u1",
            5,
        )
        .expect("valid");
        let c = &parsed.context;
        assert_eq!(parsed.now_ms, 1_760_001_600_000);
        assert_eq!(
            get(c, "country"),
            Some(&Value::from("US")),
            "query beats edge"
        );
        assert_eq!(
            get(c, "plan"),
            Some(&Value::from("team")),
            "context beats query"
        );
        assert_eq!(get(c, "age"), Some(&Value::Num(36.0)));
        assert_eq!(get(c, "user_id"), Some(&Value::from("u1")));
        assert_eq!(get(c, "colo"), Some(&Value::from("FRA")));

        let overridden =
            assignments_query(Some("user_id=account-7"), &EDGE, "user_id", "u1", 5).unwrap();
        assert_eq!(
            get(&overridden.context, "user_id"),
            Some(&Value::from("account-7"))
        );
        assert_eq!(overridden.now_ms, 5);
    }

    #[test]
    fn exact_leaves_out_edge_data_and_cookie() {
        let parsed = assignments_query(
            Some("exact=1&context=%7B%22user_id%22%3Anull%2C%22tags%22%3A%5B%22a%22%5D%7D"),
            &EDGE,
            "user_id",
            "u1",
            5,
        )
        .unwrap();
        // A null attribute is absent (docs/assignment.md), and nothing else was added.
        assert_eq!(parsed.context.len(), 1);
        assert_eq!(
            get(&parsed.context, "tags"),
            Some(&Value::List(vec!["a".into()]))
        );
        for exact in ["exact", "exact=true"] {
            let parsed = assignments_query(Some(exact), &EDGE, "user_id", "u1", 5).unwrap();
            assert!(parsed.context.is_empty(), "{exact}");
        }
        let not_exact = assignments_query(Some("exact=0"), &EDGE, "user_id", "u1", 5).unwrap();
        assert_eq!(not_exact.context.len(), 4);
    }

    #[test]
    fn malformed_queries_are_errors() {
        type Check = fn(&QueryError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("now_ms=soon", |e| *e == QueryError::NowMs),
            ("now_ms=1.5", |e| *e == QueryError::NowMs),
            ("now_ms=99999999999999999999", |e| *e == QueryError::NowMs),
            ("exact=maybe", |e| *e == QueryError::Exact),
            ("context=%7B", |e| matches!(e, QueryError::Context(_))),
            ("context=%5B1%5D", |e| matches!(e, QueryError::Context(_))),
            ("context=42", |e| matches!(e, QueryError::Context(_))),
        ];
        for (query, check) in cases {
            let error = assignments_query(Some(query), &EDGE, "user_id", "u1", 5).expect_err(query);
            assert!(check(&error), "{query}: {error:?}");
        }
    }

    #[test]
    fn odd_but_harmless_queries_are_accepted() {
        // Lossy decoding of broken percent escapes and repeated names never fails: the
        // values are only ever compared, never interpreted.
        for query in ["%zz=1", "a=%ff%fe", "&&&", "=", "a=1&a=2", "a"] {
            assignments_query(Some(query), &EDGE, "user_id", "u1", 5).expect(query);
        }
        let repeated = assignments_query(Some("a=1&a=2"), &EDGE, "user_id", "u1", 5).unwrap();
        assert_eq!(get(&repeated.context, "a"), Some(&Value::from("2")));
    }
}
