//! Python values as abx-core reads them: a dict in place (`with_context`), or converted once
//! into abx-core's `Context` (`abx.Context`, and evaluating everything).

use std::borrow::Cow;

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
        let value = match value.cast_into::<PyString>() {
            Ok(text) => return Some(Held::Str(text)),
            Err(other) => other.into_inner(),
        };
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

/// A dict's values for the attributes one evaluation reads, borrowed where Python keeps them
/// (a `str`'s UTF-8): no `Context` is built and no string copied (only a list's items are),
/// which was half of a call's cost from a dict.
struct InPlace<'a>(&'a [(u32, Option<ValueRef<'a>>)]);

impl Attributes for InPlace<'_> {
    fn attribute(&self, index: u32, _name: &str) -> Option<ValueRef<'_>> {
        let found = self.0.iter().find(|(i, _)| *i == index);
        found.and_then(|(_, value)| *value)
    }
}

/// Runs `f` on the caller's context as an evaluation reading the attributes `read` (indices
/// into the snapshot's attributes, whose interned Python names are `interned`) sees it: a
/// dict's entries read in place, a prepared `Context` as it is, `None` as the empty context;
/// anything else is a `TypeError`.
pub(crate) fn with_context<R>(
    attributes: Option<&Bound<'_, PyAny>>,
    interned: &[Py<PyString>],
    read: &[u32],
    f: impl FnOnce(&dyn Attributes) -> R,
) -> PyResult<R> {
    let Some(attributes) = attributes else {
        return Ok(f(&Context::new()));
    };
    // A dict first: most calls pass one, and its check is a flag test, where a class's is
    // a subtype search.
    let dict = match attributes.cast::<PyDict>() {
        Ok(dict) => dict,
        Err(not_a_dict) => match attributes.cast::<PreparedContext>() {
            Ok(prepared) => return Ok(f(&prepared.get().context)),
            Err(_) => return Err(not_a_dict.into()),
        },
    };
    let py = dict.py();
    // Two steps, because the views borrow from the values the first step holds.
    let mut held_on_stack: [Option<Held<'_>>; ON_STACK] = Default::default();
    let mut held_on_heap = Vec::new();
    let held = if read.len() <= ON_STACK {
        &mut held_on_stack[..read.len()]
    } else {
        held_on_heap.resize_with(read.len(), || None);
        &mut held_on_heap[..]
    };
    for (slot, &i) in held.iter_mut().zip(read) {
        if let Some(key) = interned.get(i as usize)
            && let Some(value) = dict.get_item(key.bind(py))?
        {
            *slot = Held::of(value);
        }
    }
    let mut views_on_stack = [(u32::MAX, None); ON_STACK];
    let mut views_on_heap = Vec::new();
    let views = if read.len() <= ON_STACK {
        &mut views_on_stack[..read.len()]
    } else {
        views_on_heap.resize(read.len(), (u32::MAX, None));
        &mut views_on_heap[..]
    };
    for ((view, &i), held) in views.iter_mut().zip(read).zip(held.iter()) {
        *view = (i, held.as_ref().and_then(Held::view));
    }
    Ok(f(&InPlace(views)))
}
