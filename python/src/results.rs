//! What evaluation returns to Python: `Assignment` and `FlagDetail` objects, made here
//! because building them in Python was most of an evaluation's cost from Python, and the
//! read-only mappings `Engine.evaluate` returns, which build an object only for the keys a
//! caller reads (evaluating 1,000 experiments is cheap; 1,200 Python objects are not).

use abx_core::{Context, FlagReason, Reason};
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString};

use crate::{Engine, NewExposure, every_exposure};

/// `(experiment_id, unit_attribute, unit)` of an exposure to log.
pub(crate) type Exposure = (Py<PyString>, Py<PyString>, Py<PyString>);

/// An answer's exposures to log: to its experiment, and to its holdout with the arm.
pub(crate) type Exposures = (Option<Exposure>, Option<(Exposure, Py<PyString>)>);

/// `json.loads`, looked up once: an `Assignment`'s config is parsed at every read.
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn parse_json(py: Python<'_>, json: &Py<PyString>) -> PyResult<Py<PyAny>> {
    let loads = LOADS.get_or_try_init(py, || {
        PyResult::Ok(py.import("json")?.getattr("loads")?.unbind())
    })?;
    Ok(loads.bind(py).call1((json.bind(py),))?.unbind())
}

pub(crate) fn clone_exposure(py: Python<'_>, (id, attribute, unit): &Exposure) -> Exposure {
    (
        id.clone_ref(py),
        attribute.clone_ref(py),
        unit.clone_ref(py),
    )
}

fn text(py: Python<'_>, s: &Py<PyString>) -> String {
    s.bind(py).to_string_lossy().into_owned()
}

/// One experiment's answer (`abx.Assignment`). `config` is the variant's configuration,
/// parsed from its JSON at each read, so that every reader has its own: most answers are
/// shared between calls (`Engine::assignment`).
#[pyclass(frozen, name = "Assignment", module = "abx._abx")]
pub(crate) struct PyAssignment {
    #[pyo3(get)]
    pub(crate) variant: Option<Py<PyString>>,
    #[pyo3(get)]
    pub(crate) reason: Py<PyString>,
    #[pyo3(get)]
    pub(crate) experiment_id: Option<Py<PyString>>,
    #[pyo3(get)]
    pub(crate) config_json: Option<Py<PyString>>,
    /// Set when the client is to log an exposure.
    pub(crate) exposure: Option<Exposure>,
    /// Set when the client is to log an exposure to the experiment's holdout, with its arm.
    pub(crate) holdout_exposure: Option<(Exposure, Py<PyString>)>,
}

impl PyAssignment {
    /// No variant, for `reason` (nothing loaded, an unknown key).
    pub(crate) fn empty(reason: &Bound<'_, PyString>) -> Self {
        PyAssignment::new(None, None, reason.clone().unbind(), None)
    }

    fn key(&self, py: Python<'_>) -> (Option<String>, String, Option<String>) {
        (
            self.variant.as_ref().map(|s| text(py, s)),
            text(py, &self.reason),
            self.config_json.as_ref().map(|s| text(py, s)),
        )
    }
}

#[pymethods]
impl PyAssignment {
    #[new]
    #[pyo3(signature = (variant, config_json, reason, experiment_id = None))]
    fn new(
        variant: Option<Py<PyString>>,
        config_json: Option<Py<PyString>>,
        reason: Py<PyString>,
        experiment_id: Option<Py<PyString>>,
    ) -> Self {
        PyAssignment {
            variant,
            reason,
            experiment_id,
            config_json,
            exposure: None,
            holdout_exposure: None,
        }
    }

    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.config_json {
            Some(json) => parse_json(py, json),
            None => Ok(py.None()),
        }
    }

    #[getter(_exposure)]
    fn exposure(&self, py: Python<'_>) -> Option<Exposure> {
        self.exposure.as_ref().map(|e| clone_exposure(py, e))
    }

    /// `(exposure, arm)` of the exposure to the experiment's holdout to log.
    #[getter(_holdout_exposure)]
    fn holdout_exposure(&self, py: Python<'_>) -> Option<(Exposure, Py<PyString>)> {
        let (exposure, arm) = self.holdout_exposure.as_ref()?;
        Some((clone_exposure(py, exposure), arm.clone_ref(py)))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        let other = other.cast::<PyAssignment>();
        other.is_ok_and(|other| self.key(py) == other.get().key(py))
    }

    fn __hash__(&self, py: Python<'_>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.key(py).hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (variant, reason, config) = self.key(py);
        let config = config.as_deref().unwrap_or("None");
        format!("Assignment(variant={variant:?}, reason={reason:?}, config={config})")
    }
}

/// One flag's answer (`abx.FlagDetail`): `value` (parsed from the snapshot's JSON on first
/// access, or the caller's default), `reason`, and the `variant` of the experiment that
/// supplied the value, when one did.
#[pyclass(frozen, name = "FlagDetail", module = "abx._abx")]
pub(crate) struct PyFlagDetail {
    pub(crate) value_json: Option<Py<PyString>>,
    pub(crate) value: PyOnceLock<Py<PyAny>>,
    #[pyo3(get)]
    pub(crate) reason: Py<PyString>,
    #[pyo3(get)]
    pub(crate) variant: Option<Py<PyString>>,
    pub(crate) exposure: Option<Exposure>,
    /// Set when the client is to log the unit's arm in the holdout it reached through the
    /// experiments the flag consulted (`abx_core::FlagResult::holdout_experiment`).
    pub(crate) holdout_exposure: Option<(Exposure, Py<PyString>)>,
}

impl PyFlagDetail {
    /// A detail holding `value` itself, for `reason` (the caller's default).
    pub(crate) fn holding(py: Python<'_>, value: Py<PyAny>, reason: Py<PyString>) -> Self {
        PyFlagDetail::new(py, value, reason, None)
    }
}

#[pymethods]
impl PyFlagDetail {
    /// A detail holding `value` itself (the client's answer when it serves a default).
    #[new]
    #[pyo3(signature = (value, reason, variant = None))]
    fn new(
        py: Python<'_>,
        value: Py<PyAny>,
        reason: Py<PyString>,
        variant: Option<Py<PyString>>,
    ) -> Self {
        let lock = PyOnceLock::new();
        lock.get_or_init(py, || value);
        PyFlagDetail {
            value_json: None,
            value: lock,
            reason,
            variant,
            exposure: None,
            holdout_exposure: None,
        }
    }

    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let value = self.value.get_or_try_init(py, || match &self.value_json {
            Some(json) => parse_json(py, json),
            None => Ok(py.None()),
        })?;
        Ok(value.clone_ref(py))
    }

    #[getter(_exposure)]
    fn exposure(&self, py: Python<'_>) -> Option<Exposure> {
        self.exposure.as_ref().map(|e| clone_exposure(py, e))
    }

    /// `(exposure, arm)` of the exposure to the holdout to log.
    #[getter(_holdout_exposure)]
    fn holdout_exposure(&self, py: Python<'_>) -> Option<(Exposure, Py<PyString>)> {
        let (exposure, arm) = self.holdout_exposure.as_ref()?;
        Some((clone_exposure(py, exposure), arm.clone_ref(py)))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PyFlagDetail>() else {
            return Ok(false);
        };
        let other = other.get();
        let labels =
            |d: &PyFlagDetail| (text(py, &d.reason), d.variant.as_ref().map(|v| text(py, v)));
        Ok(labels(self) == labels(other) && self.value(py)?.bind(py).eq(other.value(py)?)?)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let value = self.value(py)?.bind(py).repr()?.to_string();
        let variant = self.variant.as_ref().map(|v| text(py, v));
        Ok(format!(
            "FlagDetail(value={value}, reason={:?}, variant={variant:?})",
            text(py, &self.reason)
        ))
    }
}

/// One experiment's evaluation, kept compact until it is read.
#[derive(Clone, Copy)]
pub(crate) struct Answer {
    pub(crate) variant: Option<u32>,
    pub(crate) reason: Reason,
    pub(crate) log_exposure: bool,
    /// Whether the unit is held, when it reached the experiment's holdout.
    pub(crate) holdout: Option<bool>,
}

/// One flag's evaluation, kept compact until it is read.
pub(crate) struct FlagAnswer {
    pub(crate) value: Box<str>,
    pub(crate) reason: FlagReason,
    /// `(experiment, variant)` when an experiment that assigned the unit supplied the value.
    pub(crate) variant: Option<(u32, u32)>,
}

/// A read-only mapping over one evaluation's results in snapshot order; `item` builds the
/// Python object for entry `i`.
trait LazyMapping {
    fn engine(&self) -> &Py<Engine>;
    fn names<'e>(&self, engine: &'e Engine) -> Vec<&'e str>;
    fn index(&self, engine: &Engine, key: &str) -> Option<u32>;
    fn item(&self, py: Python<'_>, engine: &Engine, i: u32) -> PyResult<Py<PyAny>>;
}

/// The mapping protocol of a `LazyMapping` (registered as a `collections.abc.Mapping` by
/// the package).
macro_rules! mapping_methods {
    ($type:ty) => {
        #[pymethods]
        impl $type {
            fn __len__(&self) -> usize {
                self.names(self.engine().get()).len()
            }

            fn __getitem__(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
                let engine = self.engine().get();
                match self.index(engine, key) {
                    Some(i) => self.item(py, engine, i),
                    None => Err(PyKeyError::new_err(key.to_owned())),
                }
            }

            fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
                let key = key.cast::<PyString>().ok().and_then(|k| k.to_str().ok());
                key.is_some_and(|k| self.index(self.engine().get(), k).is_some())
            }

            fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Ok(self.keys(py)?.into_any().try_iter()?.into_any())
            }

            fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
                PyList::new(py, self.names(self.engine().get()))
            }

            fn values(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
                let engine = self.engine().get();
                let count = self.names(engine).len() as u32;
                (0..count).map(|i| self.item(py, engine, i)).collect()
            }

            fn items(&self, py: Python<'_>) -> PyResult<Vec<(String, Py<PyAny>)>> {
                let engine = self.engine().get();
                let keys = self.names(engine);
                let items = keys.iter().enumerate();
                items
                    .map(|(i, k)| Ok(((*k).to_owned(), self.item(py, engine, i as u32)?)))
                    .collect()
            }

            #[pyo3(signature = (key, default = None))]
            fn get(
                &self,
                py: Python<'_>,
                key: &str,
                default: Option<Py<PyAny>>,
            ) -> PyResult<Py<PyAny>> {
                let engine = self.engine().get();
                match self.index(engine, key) {
                    Some(i) => self.item(py, engine, i),
                    None => Ok(default.unwrap_or_else(|| py.None())),
                }
            }
        }
    };
}

/// `Evaluation.experiments`: experiment key → `Assignment`.
#[pyclass(frozen, name = "Experiments", module = "abx._abx", mapping)]
pub(crate) struct Experiments {
    pub(crate) engine: Py<Engine>,
    pub(crate) answers: Vec<Answer>,
    /// For the units of exposures, should the caller log them.
    pub(crate) context: Context,
    /// Whether answers carry their holdout exposures (`Engine.evaluate`).
    pub(crate) holdout_exposures: bool,
}

impl LazyMapping for Experiments {
    fn engine(&self) -> &Py<Engine> {
        &self.engine
    }

    fn names<'e>(&self, engine: &'e Engine) -> Vec<&'e str> {
        let experiments = &engine.evaluator.snapshot().experiments;
        experiments.iter().map(|e| e.key.as_str()).collect()
    }

    fn index(&self, engine: &Engine, key: &str) -> Option<u32> {
        engine.evaluator.experiment_index(key)
    }

    fn item(&self, py: Python<'_>, engine: &Engine, i: u32) -> PyResult<Py<PyAny>> {
        let answer = self.answers.get(i as usize).copied();
        let answer = answer.ok_or_else(|| PyKeyError::new_err(i))?;
        let context = &self.context;
        let exposure = engine.exposure(py, i, answer, context, Some(&mut every_exposure));
        let mut every = every_exposure;
        let first = self
            .holdout_exposures
            .then_some(&mut every as &mut NewExposure<'_>);
        let holdout = engine.holdout_exposure(py, i, answer, context, first);
        Ok(engine
            .assignment(py, i, answer, (exposure, holdout))?
            .into_any())
    }
}

mapping_methods!(Experiments);

/// `Evaluation.flags`: flag key → `FlagDetail`.
#[pyclass(frozen, name = "Flags", module = "abx._abx", mapping)]
pub(crate) struct Flags {
    pub(crate) engine: Py<Engine>,
    pub(crate) answers: Vec<FlagAnswer>,
}

impl LazyMapping for Flags {
    fn engine(&self) -> &Py<Engine> {
        &self.engine
    }

    fn names<'e>(&self, engine: &'e Engine) -> Vec<&'e str> {
        let flags = &engine.evaluator.snapshot().flags;
        flags.iter().map(|f| f.key.as_str()).collect()
    }

    fn index(&self, engine: &Engine, key: &str) -> Option<u32> {
        engine.evaluator.flag_index(key)
    }

    fn item(&self, py: Python<'_>, engine: &Engine, i: u32) -> PyResult<Py<PyAny>> {
        let answer = self.answers.get(i as usize);
        let answer = answer.ok_or_else(|| PyKeyError::new_err(i))?;
        Ok(
            Bound::new(py, engine.flag_detail(py, answer, (None, None)))?
                .into_any()
                .unbind(),
        )
    }
}

mapping_methods!(Flags);
