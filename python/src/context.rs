//! Python values as abx-core reads them: a dict in place (`with_context`), or converted once
//! into abx-core's `Context` (`abx.Context`, and evaluating everything).

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};

use abx_core::{Attributes, Context, Value, ValueRef};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// One attribute value read from Python, holding what its [`ValueRef`] borrows.
enum Held<'py> {
    Str(Bound<'py, PyString>),
    Num(f64),
    Bool(bool),
    List(Vec<String>),
}

impl<'py> Held<'py> {
    /// An attribute value by docs/assignment.md's "Context" rule, as abx-core applies it to
    /// JSON: strings, numbers, booleans and lists whose elements are all strings count;
    /// anything else (None, dicts, mixed lists) is absent. `bool` is tested before `int`, its
    /// base class.
    fn of(value: Bound<'py, PyAny>) -> Option<Self> {
        // An exact `str` by its type's address, before the subclass-aware test's call.
        if value.is_exact_instance_of::<PyString>() {
            return value.cast_into::<PyString>().ok().map(Held::Str);
        }
        let value = match value.cast_into::<PyString>() {
            Ok(text) => return Some(Held::Str(text)),
            Err(other) => other.into_inner(),
        };
        // An exact `int` first, the commonest number: read as an integer, since reading it
        // as a float would make (and free) a `float` object. `i64 as f64` rounds as
        // `float(int)` does, to the nearest even.
        if value.is_exact_instance_of::<PyInt>()
            && let Ok(n) = value.extract::<i64>()
        {
            return Some(Held::Num(n as f64));
        }
        if value.is_instance_of::<PyBool>() {
            return value.is_truthy().ok().map(Held::Bool);
        }
        if value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
            // Integers beyond f64's range are not numbers any runtime can compare; absent.
            return value.extract::<f64>().ok().map(Held::Num);
        }
        if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
            let mut items = Vec::new();
            for item in value.try_iter().ok()? {
                let item = item.ok()?;
                items.push(item.cast::<PyString>().ok()?.to_str().ok()?.into());
            }
            return Some(Held::List(items));
        }
        None
    }

    /// The value as abx-core reads it; `None` for a string that is not valid UTF-8 (a lone
    /// surrogate), which no other runtime could hold either.
    fn view(&self) -> Option<ValueRef<'_>> {
        match self {
            Held::Str(text) => text.to_str().ok().map(ValueRef::Str),
            Held::Num(n) => Some(ValueRef::Num(*n)),
            Held::Bool(b) => Some(ValueRef::Bool(*b)),
            Held::List(items) => Some(ValueRef::List(items)),
        }
    }
}

fn attribute(value: &Bound<'_, PyAny>) -> Option<Value> {
    Held::of(value.clone())?.view().map(Value::from)
}

/// A context converted once, for the many evaluations of one request (`abx.Context`):
/// reading a dict is about a quarter of a call's cost, and a prepared context skips it. It
/// holds every entry, so it serves any snapshot.
#[pyclass(frozen, name = "Context", module = "abx._abx")]
pub(crate) struct PreparedContext {
    context: Context,
}

#[pymethods]
impl PreparedContext {
    #[new]
    fn new(attributes: &Bound<'_, PyDict>) -> Self {
        let mut context = Context::new();
        for (name, value) in attributes.iter() {
            if let (Ok(name), Some(value)) = (name.cast::<PyString>(), attribute(&value))
                && let Ok(name) = name.to_str()
            {
                context.insert(name, value);
            }
        }
        PreparedContext { context }
    }

    fn __len__(&self) -> usize {
        self.context.len()
    }
}

/// The context abx-core would build from the same attributes as JSON, for evaluating
/// everything: a prepared `Context` as it is, or a dict's entries among `names` (the
/// snapshot's attributes, with their interned Python twins), the only ones abx-core reads.
/// `None` is the empty context; anything else is a `TypeError`.
pub(crate) fn read<'a>(
    attributes: Option<&'a Bound<'_, PyAny>>,
    names: &[String],
    interned: &[Py<PyString>],
) -> PyResult<Cow<'a, Context>> {
    let Some(attributes) = attributes else {
        return Ok(Cow::Owned(Context::new()));
    };
    if let Ok(prepared) = attributes.cast::<PreparedContext>() {
        return Ok(Cow::Borrowed(&prepared.get().context));
    }
    let attributes = attributes.cast::<PyDict>()?;
    let mut context = Context::new();
    if attributes.is_empty() {
        return Ok(Cow::Owned(context));
    }
    let py = attributes.py();
    for (name, key) in names.iter().zip(interned) {
        if let Some(value) = attributes.get_item(key.bind(py))?
            && let Some(value) = attribute(&value)
        {
            context.insert(name.as_str(), value);
        }
    }
    Ok(Cow::Owned(context))
}

/// An evaluation reading at most this many attributes (a unit and up to three targeting
/// attributes: most experiments) keeps what it reads from a dict on the stack; one that reads
/// more, in a `Vec`. The conformance suite runs both: its `targeting` scenario reads five.
const ON_STACK: usize = 4;

/// `n` empty cells: `stack`'s when `n` fits there, otherwise `heap` grown to `n`.
fn cells<'s, T>(
    n: usize,
    stack: &'s [OnceCell<T>; ON_STACK],
    heap: &'s mut Vec<OnceCell<T>>,
) -> &'s [OnceCell<T>] {
    if n <= ON_STACK {
        &stack[..n]
    } else {
        heap.resize_with(n, OnceCell::new);
        &heap[..]
    }
}

/// A dict as the attributes of one evaluation, read in place and on demand: an attribute is
/// looked up the first time the evaluation asks for it (one that stops early, say at a
/// targeting test that fails, reads fewer), and its value is borrowed where Python keeps it
/// (a `str`'s UTF-8), so no `Context` is built and no string is copied (only a list's items
/// are). Building a `Context` was half of a call's cost from a dict.
struct InPlace<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    /// The snapshot's attribute names, interned.
    interned: &'a [Py<PyString>],
    /// The attributes the evaluation may read, what each held when it was first read, and
    /// how abx-core sees that (kept, since an evaluation may read one attribute many times).
    read: &'a [u32],
    held: &'a [OnceCell<Option<Held<'py>>>],
    views: &'a [OnceCell<Option<ValueRef<'a>>>],
    /// The first error a lookup raised (a key's `__eq__` can raise), for the caller.
    error: Cell<Option<PyErr>>,
}

impl<'py> InPlace<'_, 'py> {
    fn look_up(&self, index: u32) -> Option<Held<'py>> {
        let key = self.interned.get(index as usize)?;
        match self.dict.get_item(key.bind(self.dict.py())) {
            Ok(value) => value.and_then(Held::of),
            Err(error) => {
                let first = self.error.take();
                self.error.set(Some(first.unwrap_or(error)));
                None
            }
        }
    }
}

impl<'a> Attributes for InPlace<'a, '_> {
    fn attribute(&self, index: u32, _name: &str) -> Option<ValueRef<'_>> {
        let slot = self.read.iter().position(|&i| i == index)?;
        let (held, views): (&'a [_], &'a [_]) = (self.held, self.views);
        if let Some(view) = views[slot].get() {
            return *view;
        }
        // `set` and `get` rather than `get_or_init`, whose initialising path is outlined as
        // cold: here every slot read is initialised once per call.
        let _ = held[slot].set(self.look_up(index));
        let view = held[slot]
            .get()
            .and_then(Option::as_ref)
            .and_then(Held::view);
        let _ = views[slot].set(view);
        view
    }
}

/// Runs `f` on the caller's context as an evaluation reading the attributes `read` (indices
/// into the snapshot's attributes, whose interned Python names are `interned`) sees it: a
/// dict's entries read in place, a prepared `Context` as it is, `None` as the empty context;
/// anything else is a `TypeError`. `f`'s second argument says whether reading the dict has
/// failed so far: its error is raised once `f` returns, so `f` must not act on an answer
/// (remember an exposure) when it has.
pub(crate) fn with_context<R>(
    attributes: Option<&Bound<'_, PyAny>>,
    interned: &[Py<PyString>],
    read: &[u32],
    f: impl FnOnce(&dyn Attributes, &dyn Fn() -> bool) -> R,
) -> PyResult<R> {
    let never = || false;
    let Some(attributes) = attributes else {
        return Ok(f(&Context::new(), &never));
    };
    // A dict first: most calls pass one, and its check is a flag test, where a class's is
    // a subtype search.
    let dict = match attributes.cast::<PyDict>() {
        Ok(dict) => dict,
        Err(not_a_dict) => match attributes.cast::<PreparedContext>() {
            Ok(prepared) => return Ok(f(&prepared.get().context, &never)),
            Err(_) => return Err(not_a_dict.into()),
        },
    };
    // The held values are declared before the views, which borrow from them.
    let (held_on_stack, mut held_on_heap) = (Default::default(), Vec::new());
    let held = cells(read.len(), &held_on_stack, &mut held_on_heap);
    let (views_on_stack, mut views_on_heap) = (Default::default(), Vec::new());
    let views = cells(read.len(), &views_on_stack, &mut views_on_heap);
    let context = InPlace {
        dict,
        interned,
        read,
        held,
        views,
        error: Cell::new(None),
    };
    let failed = || {
        let error = context.error.take();
        let failed = error.is_some();
        context.error.set(error);
        failed
    };
    let result = f(&context, &failed);
    match context.error.into_inner() {
        Some(error) => Err(error),
        None => Ok(result),
    }
}
