//! MurmurHash3, x86 32-bit variant, as published in SMHasher.
//!
//! The hasher is incremental so that a prefix shared by every unit (for example
//! `"{experiment_id}:"`) is absorbed once when the evaluator is built; each evaluation then
//! only feeds the unit's own bytes. Feeding the bytes in any number of pieces gives the same
//! result as hashing their concatenation.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// The assignment bucket of a string: `murmur3_x86_32(utf8(s), seed 0) % 10000`.
pub fn bucket(s: &str) -> u16 {
    to_bucket(murmur3_x86_32(s.as_bytes(), 0))
}

/// Reduces a 32-bit hash to a bucket in `0..10000`.
#[inline]
pub(crate) fn to_bucket(hash: u32) -> u16 {
    // The remainder is below 10000, so it always fits in a u16.
    (hash % 10_000) as u16
}

/// One-shot MurmurHash3 x86_32.
pub fn murmur3_x86_32(bytes: &[u8], seed: u32) -> u32 {
    let mut hasher = Murmur3::new(seed);
    hasher.write(bytes);
    hasher.finish()
}

/// Incremental MurmurHash3 x86_32. Copy it to fork a shared prefix.
#[derive(Clone, Copy, Debug)]
pub struct Murmur3 {
    h1: u32,
    /// Bytes of an incomplete block, little-endian, lowest byte first.
    tail: u32,
    tail_len: u32,
    /// Total bytes absorbed; the algorithm mixes in the length modulo 2^32.
    len: u32,
}

#[inline(always)]
fn mix_k1(mut k1: u32) -> u32 {
    k1 = k1.wrapping_mul(C1);
    k1 = k1.rotate_left(15);
    k1.wrapping_mul(C2)
}

#[inline(always)]
fn mix_h1(mut h1: u32, k1: u32) -> u32 {
    h1 ^= mix_k1(k1);
    h1 = h1.rotate_left(13);
    h1.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

impl Murmur3 {
    pub const fn new(seed: u32) -> Self {
        Murmur3 {
            h1: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    #[inline]
    pub fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u32);
        // Complete a pending partial block first.
        while self.tail_len != 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = rest;
            if self.tail_len == 4 {
                self.h1 = mix_h1(self.h1, self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut blocks = bytes.chunks_exact(4);
        for block in &mut blocks {
            let k1 = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
            self.h1 = mix_h1(self.h1, k1);
        }
        for (i, &b) in blocks.remainder().iter().enumerate() {
            self.tail |= u32::from(b) << (8 * i);
        }
        self.tail_len = blocks.remainder().len() as u32;
    }

    #[inline]
    pub fn finish(self) -> u32 {
        let mut h1 = self.h1;
        if self.tail_len != 0 {
            h1 ^= mix_k1(self.tail);
        }
        h1 ^= self.len;
        h1 ^= h1 >> 16;
        h1 = h1.wrapping_mul(0x85eb_ca6b);
        h1 ^= h1 >> 13;
        h1 = h1.wrapping_mul(0xc2b2_ae35);
        h1 ^ (h1 >> 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_equal_whole() {
        let text = b"0123456789abcdefghij";
        let whole = murmur3_x86_32(text, 42);
        for split_a in 0..text.len() {
            for split_b in split_a..text.len() {
                let mut h = Murmur3::new(42);
                h.write(&text[..split_a]);
                h.write(&text[split_a..split_b]);
                h.write(&text[split_b..]);
                assert_eq!(h.finish(), whole, "split at {split_a}/{split_b}");
            }
        }
    }
}
