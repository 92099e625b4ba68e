//! The isolate's snapshot: verification and decoding of fetched bytes, and the small state
//! machine that decides, per request, whether to serve the snapshot in memory, revalidate it
//! in the background (stale-while-revalidate), or load one first.
//!
//! The I/O (origin, Cache API) lives in the wasm glue; everything here is plain Rust so the
//! policy is unit-tested natively.

use std::rc::Rc;

use abx_core::Evaluator;
use abx_core::snapshot::FlagValue;

use crate::config::Verification;
use crate::render::is_json;
use crate::route::{RouteProblem, RouteTable};

/// A background load that has not finished after this long is presumed dead (the runtime may
/// cancel `waitUntil` work), so a new one may start.
pub const STUCK_AFTER_MS: f64 = 30_000.0;
/// Without any snapshot, a failed load is retried at least this often (in the background).
pub const EMPTY_RETRY_MS: f64 = 5_000.0;

/// Where a snapshot in memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Origin,
    /// The copy a previous isolate of this colo stored in the Cache API.
    Cache,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Origin => "origin",
            Source::Cache => "cache",
        }
    }
}

/// A verified, decoded snapshot with everything derived from it once.
#[derive(Debug)]
pub struct Loaded {
    pub evaluator: Evaluator,
    pub version: u64,
    pub etag: Option<String>,
    pub routes: RouteTable,
    pub route_problems: Vec<RouteProblem>,
    /// Every config and flag value is valid JSON, so responses embed them without checking.
    pub all_json_valid: bool,
    pub source: Source,
    /// The raw bytes, kept to write the Cache API copy.
    pub bytes: Rc<[u8]>,
}

/// Why a snapshot could not be loaded. The decoding codes are abx-core's (the same in every
/// runtime, pinned by `snapshots/vectors/invalid.json`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Decode(abx_core::Error),
    #[error("the origin answered HTTP {0}")]
    Status(u16),
    #[error("the origin could not be reached: {0}")]
    Network(String),
    #[error("the origin did not answer within {0} ms")]
    Timeout(u64),
    #[error("the origin served version {got}, older than version {have} in use")]
    Older { got: u64, have: u64 },
}

impl SnapshotError {
    pub fn code(&self) -> &'static str {
        match self {
            SnapshotError::Decode(e) => e.code(),
            SnapshotError::Status(_) => "origin_status",
            SnapshotError::Network(_) => "origin_unreachable",
            SnapshotError::Timeout(_) => "origin_timeout",
            SnapshotError::Older { .. } => "older_version",
        }
    }
}

/// A snapshot signed by any of `keys`; when none verifies it, the first key's error.
fn verified_by_any(bytes: &[u8], keys: &[[u8; 32]]) -> Result<Evaluator, abx_core::Error> {
    let mut first = None;
    for key in keys {
        match Evaluator::from_verified_bytes(bytes, key) {
            Ok(evaluator) => return Ok(evaluator),
            // Only the signature depends on the key: any other error is the same for all.
            Err(abx_core::Error::BadSignature) => {
                first.get_or_insert(abx_core::Error::BadSignature);
            }
            Err(error) => return Err(error),
        }
    }
    Err(first.unwrap_or(abx_core::Error::BadPublicKey))
}

/// Verifies and decodes snapshot bytes.
pub fn accept(
    bytes: Rc<[u8]>,
    verification: &Verification,
    etag: Option<String>,
    source: Source,
) -> Result<Loaded, SnapshotError> {
    let evaluator = match verification {
        Verification::PublicKeys(keys) => verified_by_any(&bytes, keys),
        Verification::ChecksumOnly => Evaluator::from_bytes(&bytes),
    }
    .map_err(SnapshotError::Decode)?;
    let snapshot = evaluator.snapshot();
    let (routes, route_problems) = RouteTable::build(snapshot);
    let all_json_valid = snapshot
        .experiments
        .iter()
        .flat_map(|e| e.variants.iter().map(|v| v.config.as_str()))
        .chain(snapshot.flags.iter().flat_map(|f| {
            let rule_values = f.rules.iter().flat_map(|r| match &r.value {
                FlagValue::Json(value) => std::slice::from_ref(value),
                FlagValue::Experiment { values, .. } => values.as_slice(),
            });
            [f.off_value.as_str(), f.default_value.as_str()]
                .into_iter()
                .chain(rule_values.map(String::as_str))
        }))
        .all(is_json);
    Ok(Loaded {
        version: snapshot.snapshot_version,
        evaluator,
        etag,
        routes,
        route_problems,
        all_json_valid,
        source,
        bytes,
    })
}

/// What a request should do about the snapshot.
#[derive(Debug)]
pub enum Plan {
    /// Serve the snapshot in memory.
    Serve(Rc<Loaded>),
    /// Serve it, and revalidate it with the origin in the background.
    ServeAndRefresh(Rc<Loaded>),
    /// No snapshot: this request loads one (Cache API copy, else the origin) and waits for
    /// it up to the configured timeout. Only the first request of an isolate does this.
    LoadAndWait,
    /// No snapshot, and another request is loading one: wait for it up to the timeout.
    Wait,
    /// No snapshot: answer without one and retry loading in the background.
    PassThroughAndLoad,
    /// No snapshot, and a load is already running or not yet due.
    PassThrough,
}

/// The last failure, for `/abx/status` and the logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub error: SnapshotError,
    pub at_ms: f64,
}

/// The per-isolate snapshot holder.
#[derive(Debug, Default)]
pub struct Cell {
    current: Option<Rc<Loaded>>,
    /// When the snapshot was last confirmed current by the origin (or loaded).
    checked_at_ms: Option<f64>,
    /// When the next revalidation (or, without a snapshot, the next load) is due.
    next_check_ms: f64,
    busy_since_ms: Option<f64>,
    /// Until when requests may wait for the isolate's first load.
    wait_until_ms: Option<f64>,
    attempted: bool,
    last_failure: Option<Failure>,
}

impl Cell {
    pub fn current(&self) -> Option<Rc<Loaded>> {
        self.current.clone()
    }

    pub fn checked_at_ms(&self) -> Option<f64> {
        self.checked_at_ms
    }

    pub fn last_failure(&self) -> Option<&Failure> {
        self.last_failure.as_ref()
    }

    /// Whether a load or revalidation is running.
    pub fn busy(&self, now_ms: f64) -> bool {
        self.busy_since_ms
            .is_some_and(|since| now_ms - since < STUCK_AFTER_MS)
    }

    /// The moment waiting requests stop waiting for the isolate's first load.
    pub fn wait_deadline_ms(&self) -> Option<f64> {
        self.wait_until_ms
    }

    /// Decides what a request does; when the plan starts a load, the cell marks itself busy
    /// so concurrent requests do not start another. `wait_ms` bounds how long requests wait
    /// for the isolate's first load: after that, requests never wait, even while the load
    /// is still running.
    pub fn plan(&mut self, now_ms: f64, wait_ms: u64) -> Plan {
        let busy = self.busy(now_ms);
        let due = now_ms >= self.next_check_ms;
        match &self.current {
            Some(loaded) if due && !busy => {
                self.busy_since_ms = Some(now_ms);
                Plan::ServeAndRefresh(loaded.clone())
            }
            Some(loaded) => Plan::Serve(loaded.clone()),
            None if busy => match self.wait_until_ms {
                Some(until) if now_ms < until => Plan::Wait,
                _ => Plan::PassThrough,
            },
            None if !self.attempted => {
                self.attempted = true;
                self.busy_since_ms = Some(now_ms);
                self.wait_until_ms = Some(now_ms + wait_ms as f64);
                Plan::LoadAndWait
            }
            None if due => {
                self.busy_since_ms = Some(now_ms);
                Plan::PassThroughAndLoad
            }
            None => Plan::PassThrough,
        }
    }

    /// A load or revalidation produced a snapshot. An older version than the one in use is
    /// refused: signatures do not stop a replayed old snapshot, versions do.
    pub fn install(
        &mut self,
        loaded: Loaded,
        now_ms: f64,
        ttl_ms: u64,
    ) -> Result<(), SnapshotError> {
        if let Some(current) = &self.current
            && loaded.version < current.version
        {
            let error = SnapshotError::Older {
                got: loaded.version,
                have: current.version,
            };
            self.fail(error.clone(), now_ms, ttl_ms);
            return Err(error);
        }
        // A copy from the Cache API may be old: revalidate it with the origin at once.
        self.next_check_ms = match loaded.source {
            Source::Cache => now_ms,
            Source::Origin => now_ms + ttl_ms as f64,
        };
        if loaded.source == Source::Origin {
            self.checked_at_ms = Some(now_ms);
        }
        self.current = Some(Rc::new(loaded));
        self.busy_since_ms = None;
        Ok(())
    }

    /// The origin confirmed the snapshot in memory (304).
    pub fn confirm(&mut self, now_ms: f64, ttl_ms: u64) {
        self.checked_at_ms = Some(now_ms);
        self.next_check_ms = now_ms + ttl_ms as f64;
        self.busy_since_ms = None;
    }

    /// A load or revalidation failed. The snapshot in memory (if any) stays in use
    /// indefinitely; the next attempt waits a TTL (shorter when there is no snapshot).
    pub fn fail(&mut self, error: SnapshotError, now_ms: f64, ttl_ms: u64) {
        let wait = if self.current.is_some() {
            ttl_ms as f64
        } else {
            (ttl_ms as f64).min(EMPTY_RETRY_MS)
        };
        self.next_check_ms = now_ms + wait;
        self.busy_since_ms = None;
        self.last_failure = Some(Failure {
            error,
            at_ms: now_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn golden(name: &str) -> Rc<[u8]> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../snapshots/golden")
            .join(name);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into()
    }

    fn key(hex: &str) -> Verification {
        let config = crate::config::from_lookup(|name| match name {
            "ABX_ORIGIN_URL" => Some("https://o.example".into()),
            "ABX_SDK_KEY" => Some("k".into()),
            "ABX_PUBLIC_KEY" => Some(hex.into()),
            _ => None,
        })
        .expect("valid config");
        config.verification
    }

    #[derive(serde::Deserialize)]
    struct InvalidCase {
        file: String,
        public_key: Option<String>,
        error: String,
    }

    /// Every broken snapshot of the conformance suite is refused with its pinned code.
    #[test]
    fn invalid_vectors_are_refused_with_their_code() {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../snapshots/vectors/invalid.json");
        #[derive(serde::Deserialize)]
        struct Cases {
            cases: Vec<InvalidCase>,
        }
        let cases: Cases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(cases.cases.len() >= 14);
        for case in cases.cases {
            let verification = match &case.public_key {
                Some(hex) => key(hex),
                None => Verification::ChecksumOnly,
            };
            let error = accept(golden(&case.file), &verification, None, Source::Origin)
                .expect_err(&case.file);
            assert_eq!(error.code(), case.error, "{}", case.file);
        }
    }

    #[test]
    fn signed_snapshot_needs_the_right_key() {
        let signed_key = "3b398be265f0221a7aa62696d59f434c3ad6ea6642378397a5476f483100d0f4";
        let loaded = accept(
            golden("signed.abxs"),
            &key(signed_key),
            Some("\"e\"".into()),
            Source::Origin,
        )
        .expect("verifies");
        assert_eq!(loaded.etag.as_deref(), Some("\"e\""));
        assert!(loaded.all_json_valid);
        let wrong = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
        let error = accept(golden("signed.abxs"), &key(wrong), None, Source::Origin).unwrap_err();
        assert_eq!(error.code(), "bad_signature");
        // An unsigned snapshot is refused once a key is configured.
        let error =
            accept(golden("basic.abxs"), &key(signed_key), None, Source::Origin).unwrap_err();
        assert_eq!(error.code(), "unsigned");
        // During a key rotation either key verifies, in any order; neither alone is enough
        // when the snapshot was signed by the other.
        for list in [
            format!("{wrong},{signed_key}"),
            format!("{signed_key}, {wrong}"),
        ] {
            accept(golden("signed.abxs"), &key(&list), None, Source::Origin).expect(&list);
        }
        let error = accept(
            golden("signed.abxs"),
            &key(&format!("{wrong},{wrong}")),
            None,
            Source::Origin,
        )
        .unwrap_err();
        assert_eq!(error.code(), "bad_signature");
    }

    #[test]
    fn realistic_snapshot_loads() {
        let loaded = accept(
            golden("realistic_1000.abxs"),
            &Verification::ChecksumOnly,
            None,
            Source::Cache,
        )
        .expect("decodes");
        assert_eq!(loaded.evaluator.snapshot().experiments.len(), 1000);
        assert!(loaded.all_json_valid);
        assert_eq!(loaded.source, Source::Cache);
    }

    fn loaded(version: u64, source: Source) -> Loaded {
        let mut loaded = accept(
            golden("basic.abxs"),
            &Verification::ChecksumOnly,
            None,
            source,
        )
        .expect("decodes");
        loaded.version = version;
        loaded
    }

    fn kind(plan: &Plan) -> &'static str {
        match plan {
            Plan::Serve(_) => "serve",
            Plan::ServeAndRefresh(_) => "serve+refresh",
            Plan::LoadAndWait => "load+wait",
            Plan::Wait => "wait",
            Plan::PassThroughAndLoad => "pass+load",
            Plan::PassThrough => "pass",
        }
    }

    const WAIT: u64 = 100;

    #[test]
    fn cold_isolate_loads_once_then_serves() {
        let mut cell = Cell::default();
        assert_eq!(kind(&cell.plan(0.0, WAIT)), "load+wait");
        assert_eq!(
            kind(&cell.plan(1.0, WAIT)),
            "wait",
            "a concurrent request waits"
        );
        cell.install(loaded(3, Source::Origin), 10.0, 1000).unwrap();
        assert_eq!(kind(&cell.plan(500.0, WAIT)), "serve");
        // After the TTL, one request revalidates; the others keep serving meanwhile.
        assert_eq!(kind(&cell.plan(1010.0, WAIT)), "serve+refresh");
        assert_eq!(kind(&cell.plan(1011.0, WAIT)), "serve");
        cell.confirm(1020.0, 1000);
        assert_eq!(cell.checked_at_ms(), Some(1020.0));
        assert_eq!(kind(&cell.plan(1500.0, WAIT)), "serve");
        assert_eq!(kind(&cell.plan(2020.0, WAIT)), "serve+refresh");
    }

    #[test]
    fn origin_failures_keep_the_last_snapshot() {
        let mut cell = Cell::default();
        cell.plan(0.0, WAIT);
        cell.install(loaded(3, Source::Origin), 0.0, 1000).unwrap();
        for round in 1..=5 {
            let now = round as f64 * 1000.0;
            assert_eq!(
                kind(&cell.plan(now, WAIT)),
                "serve+refresh",
                "round {round}"
            );
            cell.fail(SnapshotError::Network("refused".into()), now, 1000);
            assert_eq!(cell.current().map(|l| l.version), Some(3));
        }
        assert_eq!(
            cell.last_failure().map(|f| f.error.code()),
            Some("origin_unreachable")
        );
        // A replayed older snapshot is refused and the newer one stays.
        cell.plan(6000.0, WAIT);
        let error = cell
            .install(loaded(2, Source::Origin), 6000.0, 1000)
            .unwrap_err();
        assert_eq!(error.code(), "older_version");
        assert_eq!(cell.current().map(|l| l.version), Some(3));
        cell.install(loaded(4, Source::Origin), 6001.0, 1000)
            .unwrap();
        assert_eq!(cell.current().map(|l| l.version), Some(4));
    }

    #[test]
    fn cached_copy_is_revalidated_at_once() {
        let mut cell = Cell::default();
        cell.plan(0.0, WAIT);
        cell.install(loaded(3, Source::Cache), 5.0, 30_000).unwrap();
        assert_eq!(
            cell.checked_at_ms(),
            None,
            "the origin has not confirmed it"
        );
        assert_eq!(kind(&cell.plan(6.0, WAIT)), "serve+refresh");
    }

    #[test]
    fn only_the_first_load_is_waited_for_and_only_until_the_deadline() {
        let mut cell = Cell::default();
        assert_eq!(kind(&cell.plan(0.0, WAIT)), "load+wait");
        assert_eq!(cell.wait_deadline_ms(), Some(100.0));
        assert_eq!(kind(&cell.plan(50.0, WAIT)), "wait");
        // The origin hangs: past the deadline nobody waits, though the load still runs.
        assert_eq!(kind(&cell.plan(100.0, WAIT)), "pass");
        assert_eq!(kind(&cell.plan(5_000.0, WAIT)), "pass");
        cell.install(loaded(1, Source::Origin), 9_000.0, 1000)
            .unwrap();
        assert_eq!(kind(&cell.plan(9_001.0, WAIT)), "serve");
    }

    #[test]
    fn without_any_snapshot_requests_pass_through() {
        let mut cell = Cell::default();
        assert_eq!(kind(&cell.plan(0.0, WAIT)), "load+wait");
        cell.fail(SnapshotError::Timeout(1000), 1000.0, 30_000);
        // Later requests never wait again; a background retry runs every EMPTY_RETRY_MS.
        assert_eq!(kind(&cell.plan(1001.0, WAIT)), "pass");
        assert_eq!(kind(&cell.plan(6000.0, WAIT)), "pass+load");
        assert_eq!(
            kind(&cell.plan(6001.0, WAIT)),
            "pass",
            "the retry is running"
        );
        cell.fail(SnapshotError::Status(503), 6100.0, 30_000);
        assert_eq!(kind(&cell.plan(6200.0, WAIT)), "pass");
        // A dead background load does not block retries forever.
        assert_eq!(kind(&cell.plan(11_100.0, WAIT)), "pass+load");
        assert_eq!(
            kind(&cell.plan(11_100.0 + STUCK_AFTER_MS, WAIT)),
            "pass+load"
        );
    }
}
