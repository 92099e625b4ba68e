//! The per-request calls of `abx.Client` (`assign`, `flag_detail`), in Rust. As Python
//! methods around `Engine` they cost a fifth more than the evaluation they wrap (a Python
//! frame, attribute loads, the clock read in Python), which is most of what separates a
//! call from native speed (docs/benchmarks.md, "abx for Python"). `abx.Client` subclasses
//! `ClientCore`: following the origin, the cache on disk and the event queue stay in Python.
//!
//! The class is shared between threads (`frozen`). The engine in use sits in a one-item
//! Python list, which the GIL guards: reading it is two calls into the interpreter, where a
//! mutex cost two atomic operations, a fifth of what the client adds to `Engine.assign`. The
//! exposure memory sits behind a mutex; every access holds the GIL and never calls Python
//! while it holds the lock, so a fork (which happens with the GIL held) never finds it taken.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::context::PreparedContext;
use crate::results::{Exposure, PyAssignment, PyFlagDetail, clone_exposure};
use crate::{Engine, NewExposure};

/// Exposures a process remembers having logged; when full it forgets them all (and logs
/// each again once), which bounds a long-lived process's memory.
const MAX_REMEMBERED_EXPOSURES: usize = 100_000;

const NOT_LOADED: &str = "not_loaded";
const UNKNOWN: &str = "unknown_key";

#[pyclass(subclass, frozen, module = "abx._abx")]
pub(crate) struct ClientCore {
    /// `[engine]`, or `[None]` before a snapshot loads.
    engine: Py<PyList>,
    /// Hashes of the `(experiment_id, unit_attribute, unit)` exposures logged so far.
    exposures: Mutex<HashSet<u64, BuildHasherDefault<Prehashed>>>,
    /// Keyed per process, so that no unit id can be chosen to collide with another's (a
    /// collision would leave an exposure unlogged).
    hasher: RandomState,
    /// Whether `assign` and `flag_detail` log exposures (the client has an event queue).
    logs_exposures: AtomicBool,
}

/// The exposure memory's own hasher: its values are keyed hashes already, spread evenly,
/// so hashing them again (SipHash, a tenth of a call that checks the memory) adds nothing.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A context as `Engine` takes it: a dict, an `abx.Context`, or `None` as they are; any
/// other mapping copied into a dict.
fn attributes<'py>(context: Option<Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyAny>>> {
    match context {
        Some(c)
            if !c.is_exact_instance_of::<PyDict>()
                && !c.is_exact_instance_of::<PreparedContext>() =>
        {
            Ok(Some(c.py().get_type::<PyDict>().call1((c,))?.into_any()))
        }
        other => Ok(other),
    }
}

impl ClientCore {
    fn current_engine<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Engine>> {
        let engine = self.engine.bind(py).get_item(0).ok()?;
        engine.cast_into::<Engine>().ok()
    }

    fn remember(&self, experiment_id: &str, unit_attribute: &str, unit: &str) -> bool {
        let hash = self.hasher.hash_one((experiment_id, unit_attribute, unit));
        let mut seen = self.exposures.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&hash) {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED_EXPOSURES {
            seen.clear();
        }
        seen.insert(hash)
    }

    /// What decides which exposures to log: none without an event queue, and otherwise
    /// those this process has not logged before.
    fn new_exposures(&self) -> Option<impl FnMut(&str, &str, &str) -> bool + '_> {
        let logs = self.logs_exposures.load(Ordering::Relaxed);
        logs.then_some(|id: &str, attribute: &str, unit: &str| self.remember(id, attribute, unit))
    }

    /// Logs `exposure` (new to this process) through the Python client's `_record_exposure`,
    /// with the context it was evaluated with when it is an exposure to an experiment (whose
    /// attributes it carries), `None` for one to a holdout.
    fn expose(
        slf: &Bound<'_, Self>,
        exposure: Option<&Exposure>,
        variant: Option<&Py<PyString>>,
        now_ms: i64,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let Some(exposure) = exposure else {
            return Ok(());
        };
        let exposure = clone_exposure(slf.py(), exposure);
        slf.call_method1("_record_exposure", (exposure, variant, now_ms, context))?;
        Ok(())
    }
}

#[pymethods]
impl ClientCore {
    /// Takes whatever `abx.Client.__init__` takes; that sets the client up.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        Ok(ClientCore {
            engine: PyList::new(py, [py.None()])?.unbind(),
            exposures: Mutex::new(HashSet::default()),
            hasher: RandomState::new(),
            logs_exposures: AtomicBool::new(false),
        })
    }

    /// The engine of the snapshot in use, or `None` before one loads.
    #[getter(_engine)]
    fn engine<'py>(&self, py: Python<'py>) -> Option<Bound<'py, Engine>> {
        self.current_engine(py)
    }

    #[setter(_engine)]
    fn set_engine(&self, py: Python<'_>, engine: Option<Py<Engine>>) -> PyResult<()> {
        self.engine.bind(py).set_item(0, engine)
    }

    #[setter(_logs_exposures)]
    fn set_logs_exposures(&self, on: bool) {
        self.logs_exposures.store(on, Ordering::Relaxed);
    }

    /// Whether this exposure is new to this process (and remembers it).
    fn _first_exposure(&self, experiment_id: &str, unit_attribute: &str, unit: &str) -> bool {
        self.remember(experiment_id, unit_attribute, unit)
    }

    /// Forgets the exposures logged so far (a forked worker logs its own).
    fn _forget_exposures(&self) {
        self.exposures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Takes what `assign` takes, does nothing and returns `None`: the cost of a call of
    /// that shape (method lookup, arguments, keyword) into the extension, which
    /// `python/bench/calls.py` subtracts to find what `assign` itself costs.
    #[pyo3(signature = (_experiment_key, _context = None, *, now_ms = None))]
    fn _call_cost(
        &self,
        _experiment_key: &Bound<'_, PyString>,
        _context: Option<Bound<'_, PyAny>>,
        now_ms: Option<i64>,
    ) {
        let _ = now_ms;
    }

    /// One experiment for ``context``: ``Assignment(variant, config, reason)``. Logs the
    /// exposure the first time this process assigns this unit a variant of it.
    #[pyo3(signature = (experiment_key, context = None, *, now_ms = None))]
    fn assign(
        slf: &Bound<'_, Self>,
        experiment_key: &Bound<'_, PyString>,
        context: Option<Bound<'_, PyAny>>,
        now_ms: Option<i64>,
    ) -> PyResult<Py<PyAssignment>> {
        let py = slf.py();
        let empty = |reason: &Bound<'_, PyString>| Py::new(py, PyAssignment::empty(reason));
        let Some(engine) = slf.get().current_engine(py) else {
            slf.call_method0("_not_loaded")?;
            return empty(intern!(py, NOT_LOADED));
        };
        let now = now_ms.unwrap_or_else(self::now_ms);
        let context = attributes(context)?;
        let mut first = slf.get().new_exposures();
        let first = first.as_mut().map(|f| f as &mut NewExposure<'_>);
        let assignment =
            engine
                .get()
                .assignment_of(py, experiment_key, context.as_ref(), now, first)?;
        let Some(assignment) = assignment else {
            return empty(intern!(py, UNKNOWN));
        };
        let answer = assignment.get();
        let variant = answer.variant.as_ref();
        Self::expose(
            slf,
            answer.exposure.as_ref(),
            variant,
            now,
            context.as_ref(),
        )?;
        if let Some((exposure, arm)) = &answer.holdout_exposure {
            Self::expose(slf, Some(exposure), Some(arm), now, None)?;
        }
        Ok(assignment)
    }

    /// A flag's ``FlagDetail(value, reason, variant)``; ``variant`` is that of the
    /// experiment that supplied the value, when one did, and its exposure is logged when it
    /// assigned this unit, as is the unit's arm in the holdout it reached through the
    /// experiments the flag consulted.
    #[pyo3(signature = (key, context = None, default = None, *, now_ms = None))]
    fn flag_detail(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyString>,
        context: Option<Bound<'_, PyAny>>,
        default: Option<Py<PyAny>>,
        now_ms: Option<i64>,
    ) -> PyResult<PyFlagDetail> {
        let py = slf.py();
        let default = || default.unwrap_or_else(|| py.None());
        let reason = |r: &Bound<'_, PyString>| r.clone().unbind();
        let Some(engine) = slf.get().current_engine(py) else {
            slf.call_method0("_not_loaded")?;
            return Ok(PyFlagDetail::holding(
                py,
                default(),
                reason(intern!(py, NOT_LOADED)),
            ));
        };
        let now = now_ms.unwrap_or_else(self::now_ms);
        let context = attributes(context)?;
        let mut first = slf.get().new_exposures();
        let first = first.as_mut().map(|f| f as &mut NewExposure<'_>);
        let detail = engine
            .get()
            .flag_of(py, key, context.as_ref(), now, first)?;
        let Some(detail) = detail else {
            return Ok(PyFlagDetail::holding(
                py,
                default(),
                reason(intern!(py, UNKNOWN)),
            ));
        };
        let variant = detail.variant.as_ref();
        Self::expose(
            slf,
            detail.exposure.as_ref(),
            variant,
            now,
            context.as_ref(),
        )?;
        if let Some((exposure, arm)) = &detail.holdout_exposure {
            Self::expose(slf, Some(exposure), Some(arm), now, None)?;
        }
        Ok(detail)
    }
}
