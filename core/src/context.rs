//! The evaluation context: the attributes known about one unit (user, device, request).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// An attribute value. Attributes are strings, numbers, booleans or lists of strings; any
/// other shape (objects, mixed lists, null) is treated as absent when deserialized.
///
/// In human-readable formats (JSON) a value is written plainly (`"US"`, `3`, `true`,
/// `["a"]`); in binary formats (postcard) it is an externally tagged enum.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    /// The value borrowed, as evaluation reads it.
    pub fn view(&self) -> ValueRef<'_> {
        match self {
            Value::Str(s) => ValueRef::Str(s),
            Value::Num(n) => ValueRef::Num(*n),
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::List(list) => ValueRef::List(list),
        }
    }
}

/// An attribute value as evaluation reads it: borrowed from a [`Context`], or from a host's
/// own values by a binding that implements [`Attributes`] (so that it converts nothing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    List(&'a [String]),
}

impl From<ValueRef<'_>> for Value {
    fn from(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Str(s) => Value::Str(s.into()),
            ValueRef::Num(n) => Value::Num(n),
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::List(list) => Value::List(list.into()),
        }
    }
}

/// Where an evaluation of one experiment or flag reads the unit's attributes from. A
/// [`Context`] is one; a binding can read its host's values in place instead (abx-python
/// reads a `dict`'s strings where Python keeps them), which spares building a `Context` per
/// call. Evaluation asks only for the attributes [`crate::Evaluator::experiment_attributes`]
/// and [`crate::Evaluator::flag_attributes`] name, and may ask for one more than once.
pub trait Attributes {
    /// The value of the snapshot's attribute `index` (named `name`), or `None` when the unit
    /// has none.
    fn attribute(&self, index: u32, name: &str) -> Option<ValueRef<'_>>;
}

impl Attributes for Context {
    fn attribute(&self, _index: u32, name: &str) -> Option<ValueRef<'_>> {
        self.get(name).map(Value::view)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Num(n)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Num(n as f64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Vec<String>> for Value {
    fn from(list: Vec<String>) -> Self {
        Value::List(list)
    }
}

/// Attributes of one unit. When a name is inserted twice, the later value wins; inserting
/// never scans, so building a context from untrusted input is linear in its size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    entries: Vec<(String, Value)>,
}

impl Context {
    pub fn new() -> Self {
        Context::default()
    }

    /// Builder-style insert.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(name, value);
        self
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.entries.push((name.into(), value.into()));
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Entries in insertion order, including values later replaced by the same name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What an exposure to one experiment carries besides its unit: the name and value of each
/// attribute that [`crate::Evaluator::exposure_attributes`] found in the context. Serializes
/// as a map of names to plain values (an exposure event's `attributes`), integral numbers up
/// to 2^53 as integers (`21`, not `21.0`), which is how JavaScript writes them; the origin
/// stores every number by its f64 value, so other spellings of one value group alike.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExposureAttributes<'s, 'c>(pub Vec<(&'s str, ValueRef<'c>)>);

impl ExposureAttributes<'_, '_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ExposureAttributes<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// Integers up to 2^53 are exact in an f64; a larger magnitude keeps its float form.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            match value {
                ValueRef::Str(s) => map.serialize_entry(name, s)?,
                // `as i64` saturates and truncates, so the round trip holds only for
                // integers in range (`fract` is not in `core`).
                ValueRef::Num(n) if n.abs() <= EXACT && (*n as i64) as f64 == *n => {
                    map.serialize_entry(name, &(*n as i64))?
                }
                ValueRef::Num(n) => map.serialize_entry(name, n)?,
                ValueRef::Bool(b) => map.serialize_entry(name, b)?,
                ValueRef::List(list) => map.serialize_entry(name, list)?,
            }
        }
        map.end()
    }
}

/// JSON: `{"user_id": "u1", "country": "US"}`. Binary: a sequence of `(name, Value)`.
impl Serialize for Context {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return self.entries.serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            match value {
                Value::Str(s) => map.serialize_entry(name, s)?,
                Value::Num(n) => map.serialize_entry(name, n)?,
                Value::Bool(b) => map.serialize_entry(name, b)?,
                Value::List(list) => map.serialize_entry(name, list)?,
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            let entries = Vec::<(String, Value)>::deserialize(deserializer)?;
            return Ok(Context { entries });
        }
        deserializer.deserialize_map(ContextVisitor)
    }
}

struct ContextVisitor;

impl<'de> Visitor<'de> for ContextVisitor {
    type Value = Context;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of attribute names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context, A::Error> {
        let mut context = Context::new();
        while let Some(name) = map.next_key::<String>()? {
            if let MaybeValue(Some(value)) = map.next_value()? {
                context.insert(name, value);
            }
        }
        Ok(context)
    }
}

/// A value that may be of an unsupported shape, which deserializes to `None`.
struct MaybeValue(Option<Value>);

impl<'de> Deserialize<'de> for MaybeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = MaybeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or list of strings")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Bool(v))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Num(v as f64))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Num(v as f64))))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Num(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Str(v.into()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<MaybeValue, E> {
        Ok(MaybeValue(Some(Value::Str(v))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<MaybeValue, E> {
        Ok(MaybeValue(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<MaybeValue, E> {
        Ok(MaybeValue(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<MaybeValue, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeValue, A::Error> {
        let mut list = Vec::new();
        let mut all_strings = true;
        while let Some(element) = seq.next_element::<MaybeValue>()? {
            match element.0 {
                Some(Value::Str(s)) => list.push(s),
                _ => all_strings = false,
            }
        }
        Ok(MaybeValue(all_strings.then_some(Value::List(list))))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeValue, A::Error> {
        // Nested objects are not attributes; skip them whole.
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(MaybeValue(None))
    }
}
