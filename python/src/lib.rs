//! abx-core for Python: the extension module `abx._abx` behind the `abx` package (python/abx).
//! It holds no assignment logic: it lends Python values to abx-core's evaluator (reading a
//! dict in place, or a prepared `Context`), calls it and hands back result objects, which the
//! package adds exposure logging to.
//!
//! A call is a few hundred nanoseconds of Python machinery around a few hundred of
//! evaluation, so the boundary is kept cheap (docs/benchmarks.md, "abx for Python"): a dict
//! context is read by looking up the snapshot's own attribute names (interned once per
//! snapshot), string values are borrowed from Python's UTF-8 cache (hence abi3 for 3.10 and
//! later), a context can be prepared once for many calls (`abx.Context`), the strings a
//! result names (experiment ids, variant keys, configs, reasons) are Python objects made once
//! per snapshot, and evaluating everything builds result objects only for the keys read.

mod client;
mod context;
mod keys;
mod results;

use std::collections::HashMap;
use std::hint::black_box;

use abx_core::snapshot::FlagValue;
use abx_core::{
    Attributes, Context, Error, Evaluator, FlagReason, HELD_ARM, RELEASED_ARM, Reason, ValueRef,
    with_unit_text,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::context::PreparedContext;
use crate::keys::Keys;
use crate::results::{
    Answer, Experiments, Exposure, Exposures, FlagAnswer, Flags, PyAssignment, PyFlagDetail,
};

// An evaluation allocates its memo tables, and evaluating everything or preparing a context
// makes many small strings, all freed at once; mimalloc's thread-local free lists make that
// cheaper than the system allocator does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pyo3::create_exception!(
    _abx,
    SnapshotError,
    PyValueError,
    "A snapshot was refused. `args` is `(code, message)`; the codes are docs/snapshot-format.md's."
);

fn refused(error: &Error) -> PyErr {
    SnapshotError::new_err((error.code(), error.to_string()))
}

/// Python strings of one experiment, made once per snapshot.
struct ExperimentNames {
    id: Py<PyString>,
    /// The id of the holdout the experiment respects, if any.
    holdout_id: Option<Py<PyString>>,
    unit: Py<PyString>,
    variant_keys: Vec<Py<PyString>>,
    variant_configs: Vec<Py<PyString>>,
}

/// One decoded, validated (and, given keys, verified) snapshot, indexed for evaluation.
/// Immutable, so one engine serves every thread.
#[pyclass(frozen, module = "abx._abx")]
struct Engine {
    evaluator: Evaluator,
    /// The snapshot's attribute names, interned: the only context entries abx-core reads.
    attributes: Vec<Py<PyString>>,
    experiments: Vec<ExperimentNames>,
    /// Experiment and flag keys → their indices.
    experiment_keys: Keys,
    flag_keys: Keys,
    /// Each experiment's answers without an exposure to log, one per variant (or none) and
    /// reason, made on first use and shared: nothing in them can change or differ between
    /// calls (`config` is parsed afresh at each read), and after its first exposure every
    /// call of a unit gets one. A Python list of `None` until made, which the GIL guards: a
    /// once-cell would block a thread (or a forked child) that finds it being filled; two
    /// threads filling one slot at once only make one object too many.
    shared_answers: Py<PyList>,
    /// Where each experiment's slots start in `shared_answers` (one past the last
    /// experiment's at the end): `(variants + 1) × Reason::ALL.len()` each.
    shared_answer_offsets: Vec<usize>,
    /// The attributes each experiment and each flag reads
    /// (`Evaluator::experiment_attributes`), so that one evaluation converts only those.
    experiment_reads: Vec<Vec<u32>>,
    flag_reads: Vec<Vec<u32>>,
    /// Reason names in `Reason::ALL` order, and flag reasons in `FLAG_REASONS` order.
    reasons: Vec<Py<PyString>>,
    flag_reasons: Vec<Py<PyString>>,
    /// Flag values that are JSON scalars, parsed once: immutable, so every `FlagDetail` can
    /// share them, and most flags are booleans, numbers or short strings. Objects and lists
    /// are parsed per read, so that no caller sees another's changes.
    scalars: HashMap<Box<str>, Py<PyAny>>,
}

/// Every flag value of a snapshot that is a JSON scalar, parsed.
fn parse_scalars(
    py: Python<'_>,
    snapshot: &abx_core::Snapshot,
) -> PyResult<HashMap<Box<str>, Py<PyAny>>> {
    let loads = py.import("json")?.getattr("loads")?;
    let mut scalars = HashMap::new();
    for flag in &snapshot.flags {
        let rules = flag.rules.iter().flat_map(|rule| match &rule.value {
            FlagValue::Json(value) => std::slice::from_ref(value).iter(),
            FlagValue::Experiment { values, .. } => values.iter(),
        });
        for text in [&flag.off_value, &flag.default_value]
            .into_iter()
            .chain(rules)
        {
            if scalars.contains_key(text.as_str()) {
                continue;
            }
            let value = loads.call1((text.as_str(),))?;
            let scalar = value.is_none()
                || value.is_instance_of::<PyBool>()
                || value.is_instance_of::<PyInt>()
                || value.is_instance_of::<PyFloat>()
                || value.is_instance_of::<PyString>();
            if scalar {
                scalars.insert(text.as_str().into(), value.unbind());
            }
        }
    }
    Ok(scalars)
}

const FLAG_REASONS: [FlagReason; 4] = [
    FlagReason::Disabled,
    FlagReason::Rule,
    FlagReason::Experiment,
    FlagReason::Default,
];

impl Engine {
    /// The caller's context, for evaluating everything.
    fn context<'a>(
        &self,
        attributes: Option<&'a Bound<'_, PyAny>>,
    ) -> PyResult<std::borrow::Cow<'a, Context>> {
        let names = &self.evaluator.snapshot().attributes;
        context::read(attributes, names, &self.attributes)
    }

    /// Runs `f` on the caller's context as the evaluation reading the attributes `read`
    /// sees it (`context::with_context`).
    fn with_context<R>(
        &self,
        attributes: Option<&Bound<'_, PyAny>>,
        read: Option<&Vec<u32>>,
        f: impl FnOnce(&dyn Attributes, &dyn Fn() -> bool) -> R,
    ) -> PyResult<R> {
        let read = read.map_or(&[][..], Vec::as_slice);
        context::with_context(attributes, &self.attributes, read, f)
    }

    /// The exposure of experiment `index` to log for this context, if its answer asks for
    /// one and `first(experiment_id, unit_attribute, unit)` says it is new: asked before any
    /// Python string is made, so that a client's repeated exposures cost no allocation.
    /// Without `first` (a client that logs nothing) nothing is looked at.
    fn exposure(
        &self,
        py: Python<'_>,
        index: u32,
        answer: Answer,
        context: &dyn Attributes,
        first: Option<&mut NewExposure<'_>>,
    ) -> Option<Exposure> {
        let first = first.filter(|_| answer.log_exposure)?;
        let names = self.experiments.get(index as usize)?;
        self.unit_exposure(py, &names.id, index, context, first)
    }

    /// Like [`Engine::exposure`] for the holdout experiment `index` respects, when the
    /// answer reached it (`abx_core::HoldoutStep`): the exposure to the holdout's id, and
    /// the arm it names.
    fn holdout_exposure(
        &self,
        py: Python<'_>,
        index: u32,
        answer: Answer,
        context: &dyn Attributes,
        first: Option<&mut NewExposure<'_>>,
    ) -> Option<(Exposure, Py<PyString>)> {
        let held = answer.holdout?;
        let first = first?;
        let id = self.experiments.get(index as usize)?.holdout_id.as_ref()?;
        let exposure = self.unit_exposure(py, id, index, context, first)?;
        let arm = PyString::intern(py, if held { HELD_ARM } else { RELEASED_ARM });
        Some((exposure, arm.unbind()))
    }

    /// The exposure to `id` of the unit experiment `index` randomizes by, if `first` says
    /// it is new.
    fn unit_exposure(
        &self,
        py: Python<'_>,
        id: &Py<PyString>,
        index: u32,
        context: &dyn Attributes,
        first: &mut NewExposure<'_>,
    ) -> Option<Exposure> {
        let names = self.experiments.get(index as usize)?;
        let experiment = self.evaluator.snapshot().experiments.get(index as usize)?;
        let attribute = self
            .evaluator
            .snapshot()
            .attributes
            .get(experiment.unit as usize)?;
        let value = context.attribute(experiment.unit, attribute)?;
        let id_text = id.bind(py).to_str().ok()?;
        let unit = with_unit_text(value, |unit| {
            first(id_text, attribute, unit).then(|| PyString::new(py, unit).unbind())
        })??;
        Some((id.clone_ref(py), names.unit.clone_ref(py), unit))
    }

    fn variant_key(&self, py: Python<'_>, index: u32, variant: u32) -> Option<Py<PyString>> {
        let names = self.experiments.get(index as usize)?;
        names
            .variant_keys
            .get(variant as usize)
            .map(|s| s.clone_ref(py))
    }

    /// Experiment `index`'s answer as an `Assignment`: a shared one unless it carries an
    /// exposure to log. (The exposures are only looked at here and moved on the rare path:
    /// copying them on entry stalled on the stores that had just written them.)
    fn assignment(
        &self,
        py: Python<'_>,
        index: u32,
        answer: Answer,
        exposures: Exposures,
    ) -> PyResult<Py<PyAssignment>> {
        match exposures {
            (None, None) => self.shared_assignment(py, index, answer),
            exposures => Py::new(py, self.new_assignment(py, index, answer, exposures)),
        }
    }

    /// The shared `Assignment` of experiment `index` for `answer`, made on first use.
    fn shared_assignment(
        &self,
        py: Python<'_>,
        index: u32,
        answer: Answer,
    ) -> PyResult<Py<PyAssignment>> {
        let first = self.shared_answer_offsets.get(index as usize);
        let end = self.shared_answer_offsets.get(index as usize + 1);
        let slot = first.map(|first| {
            let variant = answer.variant.map_or(0, |v| v as usize + 1);
            first + variant * Reason::ALL.len() + reason_index(answer.reason)
        });
        let Some(slot) = slot.filter(|slot| end.is_some_and(|end| slot < end)) else {
            return Py::new(py, self.new_assignment(py, index, answer, (None, None)));
        };
        let shared = self.shared_answers.bind(py);
        if let Ok(made) = shared.get_item(slot)
            && let Ok(made) = made.cast_into::<PyAssignment>()
        {
            return Ok(made.unbind());
        }
        let made = Py::new(py, self.new_assignment(py, index, answer, (None, None)))?;
        shared.set_item(slot, made.clone_ref(py))?;
        Ok(made)
    }

    /// A new `Assignment` of experiment `index` for `answer`, carrying `exposures`.
    fn new_assignment(
        &self,
        py: Python<'_>,
        index: u32,
        answer: Answer,
        (exposure, holdout_exposure): Exposures,
    ) -> PyAssignment {
        let names = self.experiments.get(index as usize);
        PyAssignment {
            variant: answer.variant.and_then(|v| self.variant_key(py, index, v)),
            reason: self.reasons[reason_index(answer.reason)].clone_ref(py),
            experiment_id: names.map(|n| n.id.clone_ref(py)),
            config_json: answer.variant.and_then(|v| {
                names
                    .and_then(|n| n.variant_configs.get(v as usize))
                    .map(|s| s.clone_ref(py))
            }),
            exposure,
            holdout_exposure,
        }
    }

    /// A flag's answer as a `FlagDetail`.
    fn flag_detail(
        &self,
        py: Python<'_>,
        answer: &FlagAnswer,
        (exposure, holdout_exposure): Exposures,
    ) -> PyFlagDetail {
        let reason = FLAG_REASONS.iter().position(|r| *r == answer.reason);
        let value = PyOnceLock::new();
        let value_json = match self.scalars.get(&answer.value) {
            Some(scalar) => {
                value.get_or_init(py, || scalar.clone_ref(py));
                None
            }
            None => Some(PyString::new(py, &answer.value).unbind()),
        };
        PyFlagDetail {
            value_json,
            value,
            reason: self.flag_reasons[reason.unwrap_or(0)].clone_ref(py),
            variant: answer.variant.and_then(|(e, v)| self.variant_key(py, e, v)),
            exposure,
            holdout_exposure,
        }
    }

    /// `Engine.assign`, for `ClientCore` too; `first` decides which exposures to hand back.
    fn assignment_of(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
        first: Option<&mut NewExposure<'_>>,
    ) -> PyResult<Option<Py<PyAssignment>>> {
        let Some(index) = self.experiment_keys.index(key) else {
            return Ok(None);
        };
        let read = self.experiment_reads.get(index as usize);
        // The answer object is made in the evaluation's closure, so that only a pointer
        // leaves it: the answer and its exposures (nine words) were copied out through
        // memory, and each copy stalled on the stores that had just written them.
        let assignment = self.with_context(attributes, read, |context, failed| {
            // Read where it was returned, not moved out of its `Option` (a copy that stalled).
            let evaluated = self.evaluator.experiment_at(index, context, now_ms);
            let answer = answer(&self.evaluator, evaluated.as_ref()?, context);
            // A failed read raises: its exposures must not be remembered as logged.
            let mut first = first.filter(|_| !failed());
            let exposure = self.exposure(py, index, answer, context, first.as_deref_mut());
            let holdout = self.holdout_exposure(py, index, answer, context, first);
            Some(self.assignment(py, index, answer, (exposure, holdout)))
        })?;
        assignment.transpose()
    }

    /// `Engine.flag`, for `ClientCore` too; `first` decides which exposures to hand back.
    fn flag_of(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
        first: Option<&mut NewExposure<'_>>,
    ) -> PyResult<Option<PyFlagDetail>> {
        let Some(index) = self.flag_keys.index(key) else {
            return Ok(None);
        };
        let read = self.flag_reads.get(index as usize);
        self.with_context(attributes, read, |context, failed| {
            let result = self.evaluator.flag_at(index, context, now_ms)?;
            let answer_of = |e: u32| {
                let a = self.evaluator.experiment_at(e, context, now_ms)?;
                Some((e, a.variant_index, answer(&self.evaluator, &a, context)))
            };
            let experiment = result.experiment.and_then(answer_of);
            let mut first = first.filter(|_| !failed());
            let exposure = experiment
                .and_then(|(e, _, a)| self.exposure(py, e, a, context, first.as_deref_mut()));
            // Most often the experiment that supplied the value: its answer serves both.
            let holdout = match result.holdout_experiment {
                Some(e) if experiment.is_some_and(|(supplier, ..)| supplier == e) => experiment,
                other => other.and_then(answer_of),
            };
            let holdout =
                holdout.and_then(|(e, _, a)| self.holdout_exposure(py, e, a, context, first));
            let flag = FlagAnswer {
                value: result.value.into(),
                reason: result.reason,
                variant: experiment.and_then(|(e, v, _)| Some((e, v?))),
            };
            Some(self.flag_detail(py, &flag, (exposure, holdout)))
        })
    }
}

/// Whether an exposure `(experiment_id, unit_attribute, unit)` is to be logged: always for
/// `Engine`'s own calls, once per process for a client's.
pub(crate) type NewExposure<'a> = dyn FnMut(&str, &str, &str) -> bool + 'a;

/// Every exposure, for the engine's own calls (the caller decides what to log).
fn every_exposure(_: &str, _: &str, _: &str) -> bool {
    true
}

/// `reason`'s position in `Reason::ALL` (that of `Engine::reasons`).
fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

/// An answer kept compact; `context` is the one evaluated (for its holdout step).
fn answer(
    evaluator: &Evaluator,
    assignment: &abx_core::Assignment<'_>,
    context: &dyn Attributes,
) -> Answer {
    Answer {
        variant: assignment.variant_index,
        reason: assignment.reason,
        log_exposure: assignment.log_exposure,
        holdout: evaluator
            .holdout_step(assignment, context)
            .map(|step| step.held),
    }
}

#[pymethods]
impl Engine {
    /// What an exposure to the experiment with id `experiment_id` carries for `context` (a
    /// dict, an `abx.Context` or `None`) besides its unit (format 2 snapshots): a dict of
    /// the attributes its results are broken down by that the context has as a string, a
    /// number or a boolean (`abx_core::Evaluator::exposure_attributes`), or `None`. Numbers
    /// without a fraction come back as `int`, which JSON writes without one, as every other
    /// runtime does.
    fn _exposure_attributes<'py>(
        &self,
        py: Python<'py>,
        experiment_id: &str,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let index = abx_core::snapshot::Id::parse(experiment_id)
            .and_then(|id| self.evaluator.experiment_index_by_id(&id));
        let Some(index) = index else {
            return Ok(None);
        };
        let read = self
            .evaluator
            .snapshot()
            .exposure_attributes
            .get(index as usize);
        if read.is_none_or(Vec::is_empty) {
            return Ok(None);
        }
        self.with_context(context.as_ref(), read, |context, _| {
            let carried = self.evaluator.exposure_attributes(index, context);
            if carried.is_empty() {
                return Ok(None);
            }
            let dict = PyDict::new(py);
            for (name, value) in carried.0 {
                match value {
                    ValueRef::Str(s) => dict.set_item(name, s)?,
                    ValueRef::Num(n) if n.abs() <= 9_007_199_254_740_992.0 && n.fract() == 0.0 => {
                        dict.set_item(name, n as i64)?
                    }
                    ValueRef::Num(n) => dict.set_item(name, n)?,
                    ValueRef::Bool(b) => dict.set_item(name, b)?,
                    // `exposure_attributes` leaves lists out.
                    ValueRef::List(_) => {}
                }
            }
            Ok(Some(dict))
        })?
    }

    /// Decodes snapshot bytes. With `public_keys` (32-byte Ed25519 keys; several while the
    /// origin's signing key is rotated), only a snapshot one of them signed is accepted.
    /// Raises `SnapshotError(code, message)`.
    #[new]
    #[pyo3(signature = (snapshot, public_keys = None))]
    fn new(py: Python<'_>, snapshot: &[u8], public_keys: Option<Vec<Vec<u8>>>) -> PyResult<Self> {
        let evaluator = match public_keys {
            None => Evaluator::from_bytes(snapshot),
            Some(keys) => {
                let mut result = Err(Error::BadPublicKey);
                for key in &keys {
                    result = Evaluator::from_verified_bytes(snapshot, key);
                    // Only a signature that another key may have made is worth another try.
                    if !matches!(result, Err(Error::BadSignature)) {
                        break;
                    }
                }
                result
            }
        }
        .map_err(|e| refused(&e))?;
        let s = evaluator.snapshot();
        let text = |t: &str| PyString::intern(py, t).unbind();
        let string = |i: u32| text(s.strings.get(i as usize).map_or("", String::as_str));
        let experiments = s
            .experiments
            .iter()
            .map(|e| ExperimentNames {
                id: text(e.id.to_text().as_str()),
                holdout_id: e
                    .holdout
                    .and_then(|h| s.holdouts.get(h as usize))
                    .map(|h| text(h.id.to_text().as_str())),
                unit: text(s.attributes.get(e.unit as usize).map_or("", String::as_str)),
                variant_keys: e.variants.iter().map(|v| string(v.key)).collect(),
                variant_configs: e.variants.iter().map(|v| text(&v.config)).collect(),
            })
            .collect();
        let shared_answer_offsets = std::iter::once(0)
            .chain(s.experiments.iter().scan(0, |end, e| {
                *end += (e.variants.len() + 1) * Reason::ALL.len();
                Some(*end)
            }))
            .collect::<Vec<_>>();
        let slots = shared_answer_offsets.last().copied().unwrap_or(0);
        Ok(Engine {
            attributes: s.attributes.iter().map(|a| text(a)).collect(),
            experiments,
            experiment_keys: Keys::new(py, s.experiments.iter().map(|e| &e.key)),
            flag_keys: Keys::new(py, s.flags.iter().map(|f| &f.key)),
            shared_answers: PyList::new(py, (0..slots).map(|_| py.None()))?.unbind(),
            shared_answer_offsets,
            reasons: Reason::ALL.iter().map(|r| text(r.as_str())).collect(),
            flag_reasons: FLAG_REASONS.iter().map(|r| text(r.as_str())).collect(),
            scalars: parse_scalars(py, s)?,
            experiment_reads: (0..s.experiments.len() as u32)
                .map(|i| evaluator.experiment_attributes(i))
                .collect(),
            flag_reads: (0..s.flags.len() as u32)
                .map(|i| evaluator.flag_attributes(i))
                .collect(),
            evaluator,
        })
    }

    #[getter]
    fn version(&self) -> u64 {
        self.evaluator.snapshot().snapshot_version
    }

    #[getter]
    fn published_at_ms(&self) -> i64 {
        self.evaluator.snapshot().published_at_ms
    }

    /// One experiment's `Assignment`, or `None` for an unknown key. Its `_exposure` is
    /// `(experiment_id, unit_attribute, unit)` when the unit was assigned.
    #[pyo3(signature = (key, attributes, now_ms))]
    fn assign(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
    ) -> PyResult<Option<Py<PyAssignment>>> {
        self.assignment_of(py, key, attributes, now_ms, Some(&mut every_exposure))
    }

    /// One flag's `FlagDetail`, or `None` for an unknown key. Its `_exposure` is set when
    /// the value came from an experiment that assigned the unit, its `_holdout_exposure`
    /// when the unit reached a holdout through the experiments the flag consulted.
    #[pyo3(signature = (key, attributes, now_ms))]
    fn flag(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyString>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
    ) -> PyResult<Option<PyFlagDetail>> {
        self.flag_of(py, key, attributes, now_ms, Some(&mut every_exposure))
    }

    /// Every experiment and flag: `(experiments, flags)`, read-only mappings from key to
    /// `Assignment` and to `FlagDetail` that build an object only for the keys read. Their
    /// holdout exposures are made only with `holdout_exposures`: most answers without a
    /// variant reach a holdout, and would otherwise each need an object of their own.
    #[pyo3(signature = (attributes, now_ms, holdout_exposures = false))]
    fn evaluate(
        slf: &Bound<'_, Self>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
        holdout_exposures: bool,
    ) -> PyResult<(Experiments, Flags)> {
        let engine = slf.get();
        let context = engine.context(attributes)?;
        let evaluation = engine.evaluator.evaluate(&context, now_ms);
        let answers: Vec<Answer> = evaluation
            .experiments
            .iter()
            .map(|a| answer(&engine.evaluator, a, &*context))
            .collect();
        let flags = evaluation
            .flags
            .iter()
            .map(|f| FlagAnswer {
                value: f.value.into(),
                reason: f.reason,
                variant: f
                    .experiment
                    .and_then(|e| Some((e, answers.get(e as usize)?.variant?))),
            })
            .collect();
        Ok((
            Experiments {
                engine: slf.clone().unbind(),
                answers,
                context: context.into_owned(),
                holdout_exposures,
            },
            Flags {
                engine: slf.clone().unbind(),
                answers: flags,
            },
        ))
    }

    /// Seconds per evaluation of `key` (or of everything, without a key) over `iterations`
    /// runs in Rust, with the context converted once: the native figure that
    /// python/bench/bench.py sets beside the Python calls, measured in the same process.
    #[pyo3(signature = (key, attributes, now_ms, iterations))]
    fn time_native(
        &self,
        key: Option<&str>,
        attributes: Option<&Bound<'_, PyAny>>,
        now_ms: i64,
        iterations: u32,
    ) -> PyResult<f64> {
        let context = self.context(attributes)?;
        let iterations = iterations.max(1);
        let started = std::time::Instant::now();
        for _ in 0..iterations {
            match key {
                Some(key) => {
                    black_box(self.evaluator.experiment(key, black_box(&*context), now_ms));
                }
                None => {
                    black_box(self.evaluator.evaluate(black_box(&context), now_ms));
                }
            }
        }
        Ok(started.elapsed().as_secs_f64() / f64::from(iterations))
    }
}

#[pymodule]
fn _abx(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Engine>()?;
    module.add_class::<client::ClientCore>()?;
    module.add_class::<PreparedContext>()?;
    module.add_class::<PyAssignment>()?;
    module.add_class::<PyFlagDetail>()?;
    module.add_class::<Experiments>()?;
    module.add_class::<Flags>()?;
    module.add("SnapshotError", module.py().get_type::<SnapshotError>())?;
    Ok(())
}
