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

/// `value` as abx-core reads it, by [`Held::of`]'s rule; a list's items are copied into
/// `items`, which keeps the first copy (an evaluation that reads a list again copies it
/// again: lists are rare, and seldom read twice). Values other than a `str` are classified
/// again at each read, which for an `int` or `float` subclass may call its `__float__`
/// again: an object whose answer changes between reads is not a context any runtime can
/// evaluate.
fn view<'a>(value: &'a Bound<'_, PyAny>, items: &'a OnceCell<Vec<String>>) -> Option<ValueRef<'a>> {
    // An exact `str`, the commonest value, known by its type's address.
    if let Ok(text) = value.cast_exact::<PyString>() {
        return text.to_str().ok().map(ValueRef::Str);
    }
    match Held::of(value.clone())? {
        Held::Str(_) => value
            .cast::<PyString>()
            .ok()?
            .to_str()
            .ok()
            .map(ValueRef::Str),
        Held::Num(n) => Some(ValueRef::Num(n)),
        Held::Bool(b) => Some(ValueRef::Bool(b)),
        Held::List(list) => Some(ValueRef::List(items.get_or_init(|| list))),
    }
}

/// A dict as the attributes of one evaluation, read in place and on demand: an attribute is
/// looked up the first time the evaluation asks for it (one that stops early, say at a
/// targeting test that fails, reads fewer), and its value is borrowed where Python keeps it
/// (a `str`'s UTF-8), so no `Context` is built and no string is copied (only a list's items
/// are). Building a `Context` was half of a call's cost from a dict.
///
/// Only the value looked up is kept (a pointer), and how abx-core sees it is derived at
/// each read: keeping that too (an enum of three words) cost more than deriving it again,
/// since copying it out of the cell stalled on the narrower stores that had just written
/// it (perf: half of the read's own time, more than the dict lookups).
struct InPlace<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    /// The snapshot's attribute names, interned.
    interned: &'a [Py<PyString>],
    /// The attributes the evaluation may read; the slices below are in the same order.
    read: &'a [u32],
    /// What the dict held for each, once looked up (kept alive while its UTF-8 is lent).
    values: &'a [OnceCell<Option<Bound<'py, PyAny>>>],
    /// A list's items, copied at its first read.
    lists: &'a [OnceCell<Vec<String>>],
    /// The first error a lookup raised (a key's `__eq__` can raise), for the caller.
    error: Cell<Option<PyErr>>,
}

impl<'py> InPlace<'_, 'py> {
    fn look_up(&self, index: u32) -> Option<Bound<'py, PyAny>> {
        let key = self.interned.get(index as usize)?;
        match self.dict.get_item(key.bind(self.dict.py())) {
            Ok(value) => value,
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
        let (values, lists): (&'a [_], &'a [_]) = (self.values, self.lists);
        // `set` and `get` rather than `get_or_init`, whose initialising path is outlined as
        // cold: here every slot read is initialised once per call.
        if values[slot].get().is_none() {
            let _ = values[slot].set(self.look_up(index));
        }
        view(values[slot].get()?.as_ref()?, &lists[slot])
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
    // The values are declared before the context, which borrows them.
    let (values_on_stack, mut values_on_heap) = (Default::default(), Vec::new());
    let values = cells(read.len(), &values_on_stack, &mut values_on_heap);
    let (lists_on_stack, mut lists_on_heap) = (Default::default(), Vec::new());
    let lists = cells(read.len(), &lists_on_stack, &mut lists_on_heap);
    let context = InPlace {
        dict,
        interned,
        read,
        values,
        lists,
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
