//! Python values as abx-core's `Context`.

use std::borrow::Cow;

use abx_core::{Context, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// One attribute value by docs/assignment.md's "Context" rule, as abx-core applies it to
/// JSON: strings, numbers, booleans and lists whose elements are all strings count; anything
/// else (None, dicts, mixed lists) is absent. `bool` is tested before `int`, its base class.
fn attribute(value: &Bound<'_, PyAny>) -> Option<Value> {
    if let Ok(text) = value.cast::<PyString>() {
        return text.to_str().ok().map(|s| Value::Str(s.into()));
    }
    if value.is_instance_of::<PyBool>() {
        return value.is_truthy().ok().map(Value::Bool);
    }
    if value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
        // Integers beyond f64's range are not numbers any runtime can compare; absent.
        return value.extract::<f64>().ok().map(Value::Num);
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in value.try_iter().ok()? {
            let item = item.ok()?;
            items.push(item.cast::<PyString>().ok()?.to_str().ok()?.into());
        }
        return Some(Value::List(items));
    }
    None
}

/// A context converted once, for the many evaluations of one request (`abx.Context`):
/// converting a dict is most of a call's cost, and a prepared context skips it. It holds
/// every entry, so it serves any snapshot.
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

/// The context abx-core would build from the same attributes as JSON: a prepared `Context`
/// as it is, or a dict's entries among `names` (the snapshot's attributes, with their
/// interned Python twins), the only ones abx-core reads, and of those only the indices in
/// `read`, when given (what one evaluation reads). `None` is the empty context; anything
/// else is a `TypeError`.
pub(crate) fn read<'a>(
    attributes: Option<&'a Bound<'_, PyAny>>,
    names: &[String],
    interned: &[Py<PyString>],
    read: Option<&[u32]>,
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
    let mut take = |i: usize| -> PyResult<()> {
        if let (Some(name), Some(key)) = (names.get(i), interned.get(i))
            && let Some(value) = attributes.get_item(key.bind(py))?
            && let Some(value) = attribute(&value)
        {
            context.insert(name.as_str(), value);
        }
        Ok(())
    };
    match read {
        Some(read) => read.iter().try_for_each(|&i| take(i as usize))?,
        None => (0..names.len()).try_for_each(&mut take)?,
    }
    Ok(Cow::Owned(context))
}
