//! Pins the hash to published MurmurHash3 x86_32 vectors and to the reference crate.

use abx_core::{Murmur3, bucket, murmur3_x86_32};
use proptest::prelude::*;

fn reference(bytes: &[u8], seed: u32) -> u32 {
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), seed).expect("reading a slice")
}

#[test]
fn published_vectors() {
    let cases: &[(&[u8], u32, u32)] = &[
        (b"", 0, 0),
        (b"", 1, 0x514E_28B7),
        (b"", 0xFFFF_FFFF, 0x81F1_6F39),
        (&[0, 0, 0, 0], 0, 0x2362_F9DE),
        (&[0x21, 0x43, 0x65, 0x87], 0, 0xF55B_516B),
        (b"abc", 0, 0xB3DD_93FA),
        (b"aaaa", 0x9747_B28C, 0x5A97_808A),
        (b"Hello, world!", 0x9747_B28C, 0x2488_4CBA),
        ("ππππππππ".as_bytes(), 0x9747_B28C, 0xD580_63C1),
        (
            b"The quick brown fox jumps over the lazy dog",
            0x9747_B28C,
            0x2FA8_26CD,
        ),
        (b"foo", 0, 4_138_058_784),
        ("My 🚀 is full of 🦎.".as_bytes(), 0, 1_818_098_979),
        ("吉 星 高 照".as_bytes(), 0, 3_435_142_074),
        // Keys whose hash sits on the boundaries of the u32 range.
        (b"ejOoVL", 0, 0x0000_0000),
        (b"bY9fO-", 0, 0x0000_0001),
        (b"SI7p-", 0, 0x7FFF_FFFF),
        (b"6LvT0", 0, 0x8000_0000),
        (b"ceQdGm", 0, 0xFFFF_FFFF),
    ];
    for &(bytes, seed, expected) in cases {
        assert_eq!(
            murmur3_x86_32(bytes, seed),
            expected,
            "{:?} seed {seed:#x}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// SMHasher's VerificationTest: hash keys {}, {0}, {0,1}, ... {0..254} with seed 256 - len,
/// then hash the 256 little-endian results with seed 0.
#[test]
fn smhasher_verification() {
    let mut key = Vec::with_capacity(256);
    let mut results = Vec::with_capacity(256 * 4);
    for i in 0..256u32 {
        results.extend_from_slice(&murmur3_x86_32(&key, 256 - i).to_le_bytes());
        key.push(i as u8);
    }
    assert_eq!(murmur3_x86_32(&results, 0), 0xB0F5_7EE3);
}

#[test]
fn bucket_is_hash_mod_10000() {
    assert_eq!(bucket(""), 0);
    assert_eq!(bucket("foo"), (4_138_058_784u32 % 10_000) as u16);
    assert_eq!(bucket("ceQdGm"), (u32::MAX % 10_000) as u16);
}

proptest! {
    #[test]
    fn matches_reference_crate(bytes in proptest::collection::vec(any::<u8>(), 0..200), seed: u32) {
        prop_assert_eq!(murmur3_x86_32(&bytes, seed), reference(&bytes, seed));
    }

    #[test]
    fn incremental_equals_one_shot(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
        cuts in proptest::collection::vec(0usize..100, 0..5),
        seed: u32,
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut hasher = Murmur3::new(seed);
        let mut start = 0;
        for cut in cuts {
            hasher.write(&bytes[start..cut]);
            start = cut;
        }
        hasher.write(&bytes[start..]);
        prop_assert_eq!(hasher.finish(), reference(&bytes, seed));
    }

    #[test]
    fn bucket_in_range(s in ".*") {
        prop_assert!(bucket(&s) < 10_000);
    }
}
