//! Experiment and flag keys → their indices, found from the `str` a caller passes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::prelude::*;
use pyo3::types::PyString;

/// A snapshot's experiment (or flag) keys and their indices.
pub(crate) struct Keys {
    /// The keys as interned `str`s, found by their address. A program's literal keys made
    /// of ASCII identifier characters are interned too, so most calls pass that very object,
    /// which is found here without a call into the interpreter. Open addressing over a
    /// power-of-two table at most half full. The table holds the objects, so an address
    /// found here is the key's own.
    by_address: Vec<(Option<Py<PyString>>, u32)>,
    /// log2 of `by_address.len()`.
    bits: u32,
    /// The keys by their text, for any other equal `str` (made at run time, or a literal
    /// with a `-` or a `.`): its UTF-8 is lent by Python and hashed here, with no reference
    /// taken and released and no `int` read, as a Python dict's lookup needed. A `str`
    /// subclass is found by its text too: its own `__eq__` and `__hash__` are not asked.
    by_text: HashMap<Box<str>, u32, BuildHasherDefault<KeyHasher>>,
}

/// Where the search for `address` starts in a table of `2^bits` slots: Fibonacci hashing of
/// the address without its alignment bits (objects are 16-byte aligned).
fn home(address: usize, bits: u32) -> usize {
    let mixed = ((address >> 4) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - bits)) as usize
}

/// A word-at-a-time multiplicative hash (the Fx hash of rustc): keys are short, and come
/// from the signed snapshot, so they are not chosen to collide; a caller's key only looks up.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        // Shifted into a register: copied into a stack buffer, the word stalled on the
        // byte stores that had just written it.
        let rest = chunks.remainder().iter().rev();
        self.add(rest.fold(0, |word, &byte| (word << 8) | u64::from(byte)));
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        // The table picks buckets by the low bits, which the multiplications leave poorly
        // mixed for short keys; rotated, the well-mixed high bits land there.
        self.0.rotate_left(26)
    }
}

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

impl Keys {
    /// The keys in index order; a repeated key maps to its last index.
    pub(crate) fn new<'a>(py: Python<'_>, keys: impl ExactSizeIterator<Item = &'a String>) -> Self {
        let bits = (keys.len() * 2).next_power_of_two().max(2).trailing_zeros();
        let mut by_address: Vec<(Option<Py<PyString>>, u32)> = Vec::new();
        by_address.resize_with(1 << bits, || (None, 0));
        let mut by_text = HashMap::default();
        for (index, key) in keys.enumerate() {
            by_text.insert(key.as_str().into(), index as u32);
            let object = PyString::intern(py, key);
            let mut slot = home(object.as_ptr() as usize, bits);
            while by_address[slot]
                .0
                .as_ref()
                .is_some_and(|o| o.as_ptr() != object.as_ptr())
            {
                slot = (slot + 1) & (by_address.len() - 1);
            }
            by_address[slot] = (Some(object.unbind()), index as u32);
        }
        Keys {
            by_address,
            bits,
            by_text,
        }
    }

    /// The index of `key`, or `None` when the snapshot has no such key.
    pub(crate) fn index(&self, key: &Bound<'_, PyString>) -> Option<u32> {
        let mut slot = home(key.as_ptr() as usize, self.bits);
        while let (Some(object), index) = &self.by_address[slot] {
            if object.as_ptr() == key.as_ptr() {
                return Some(*index);
            }
            slot = (slot + 1) & (self.by_address.len() - 1);
        }
        // A `str` that is not valid UTF-8 (a lone surrogate) equals no key of the snapshot.
        self.by_text.get(key.to_str().ok()?).copied()
    }
}
