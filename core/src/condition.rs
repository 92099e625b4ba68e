//! Attribute tests. Every combination of operator, attribute type and operand type is
//! defined; a combination that makes no sense (a type mismatch) is simply false.

use core::cmp::Ordering;

use crate::context::ValueRef;
use crate::murmur3::murmur3_x86_32;
use crate::snapshot::{Op, Operand};

/// Tests one attribute. `value` is `None` when the context lacks the attribute; `strings` is
/// the snapshot's string table, which the operand's indices refer to (validated beforehand).
pub(crate) fn test(
    value: Option<ValueRef<'_>>,
    op: Op,
    operand: &Operand,
    strings: &[alloc::string::String],
) -> bool {
    let Some(value) = value else {
        return false;
    };
    let string = |index: u32| strings.get(index as usize).map_or("", |s| s.as_str());
    match (op, &value, operand) {
        (Op::Exists, _, _) => true,

        (Op::Eq, ValueRef::Str(a), Operand::Str(b)) => *a == string(*b),
        (Op::Eq, ValueRef::Num(a), Operand::Num(b)) => a == b,
        (Op::Eq, ValueRef::Bool(a), Operand::Bool(b)) => a == b,
        (Op::Ne, ValueRef::Str(a), Operand::Str(b)) => *a != string(*b),
        (Op::Ne, ValueRef::Num(a), Operand::Num(b)) => !a.is_nan() && !b.is_nan() && a != b,
        (Op::Ne, ValueRef::Bool(a), Operand::Bool(b)) => a != b,

        (Op::In, ValueRef::Str(a), Operand::StrList(list)) => list.iter().any(|&i| string(i) == *a),
        (Op::In, ValueRef::List(items), Operand::StrList(list)) => items
            .iter()
            .any(|item| list.iter().any(|&i| string(i) == item)),
        (Op::In, ValueRef::Num(a), Operand::NumList(list)) => list.contains(a),
        (Op::NotIn, ValueRef::Str(a), Operand::StrList(list)) => {
            list.iter().all(|&i| string(i) != *a)
        }
        (Op::NotIn, ValueRef::List(items), Operand::StrList(list)) => !items
            .iter()
            .any(|item| list.iter().any(|&i| string(i) == item)),
        (Op::NotIn, ValueRef::Num(a), Operand::NumList(list)) => !a.is_nan() && !list.contains(a),

        // Private attributes: equality on hashes, with exactly the rows above.
        (Op::Eq, ValueRef::Str(a), Operand::HashedStr(h)) => private_hash_str(a) == *h,
        (Op::Eq, ValueRef::Num(a), Operand::HashedNum(h)) => private_hash_num(*a) == Some(*h),
        (Op::Ne, ValueRef::Str(a), Operand::HashedStr(h)) => private_hash_str(a) != *h,
        (Op::Ne, ValueRef::Num(a), Operand::HashedNum(h)) => {
            private_hash_num(*a).is_some_and(|a| a != *h)
        }
        (Op::In, ValueRef::Str(a), Operand::HashedStrList(list)) => {
            list.contains(&private_hash_str(a))
        }
        (Op::In, ValueRef::List(items), Operand::HashedStrList(list)) => items
            .iter()
            .any(|item| list.contains(&private_hash_str(item))),
        (Op::In, ValueRef::Num(a), Operand::HashedNumList(list)) => {
            private_hash_num(*a).is_some_and(|a| list.contains(&a))
        }
        (Op::NotIn, ValueRef::Str(a), Operand::HashedStrList(list)) => {
            !list.contains(&private_hash_str(a))
        }
        (Op::NotIn, ValueRef::List(items), Operand::HashedStrList(list)) => !items
            .iter()
            .any(|item| list.contains(&private_hash_str(item))),
        (Op::NotIn, ValueRef::Num(a), Operand::HashedNumList(list)) => {
            private_hash_num(*a).is_some_and(|a| !list.contains(&a))
        }

        (Op::Contains, ValueRef::Str(a), Operand::Str(b)) => a.contains(string(*b)),
        (Op::Contains, ValueRef::List(items), Operand::Str(b)) => {
            items.iter().any(|s| s == string(*b))
        }
        (Op::StartsWith, ValueRef::Str(a), Operand::Str(b)) => a.starts_with(string(*b)),
        (Op::EndsWith, ValueRef::Str(a), Operand::Str(b)) => a.ends_with(string(*b)),

        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, ValueRef::Num(a), Operand::Num(b)) => a
            .partial_cmp(b)
            .is_some_and(|ord| ordering_matches(op, ord)),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, ValueRef::Str(a), Operand::Str(b)) => {
            ordering_matches(op, a.as_bytes().cmp(string(*b).as_bytes()))
        }

        (
            Op::SemverEq | Op::SemverGt | Op::SemverGte | Op::SemverLt | Op::SemverLte,
            ValueRef::Str(a),
            Operand::Str(b),
        ) => semver_compare(a, string(*b)).is_some_and(|ord| ordering_matches(op, ord)),

        _ => false,
    }
}

/// The hash that stands for a private string value in a client snapshot: two MurmurHash3
/// x86_32 hashes of its UTF-8 bytes (seeds 1 and 2), high and low half. 64 bits make a false
/// match between distinct values practically impossible; the hash hides values from anyone
/// reading the snapshot, but like any unsalted hash it lets someone confirm a guessed value.
pub fn private_hash_str(value: &str) -> u64 {
    private_hash(value.as_bytes())
}

/// The hash of a private number: of the 8 little-endian bytes of its IEEE 754 bits, with
/// -0 taken as 0 (they are equal); `None` for NaN, which equals nothing.
pub fn private_hash_num(value: f64) -> Option<u64> {
    if value.is_nan() {
        return None;
    }
    let value = if value == 0.0 { 0.0 } else { value };
    Some(private_hash(&value.to_bits().to_le_bytes()))
}

fn private_hash(bytes: &[u8]) -> u64 {
    (u64::from(murmur3_x86_32(bytes, 1)) << 32) | u64::from(murmur3_x86_32(bytes, 2))
}

fn ordering_matches(op: Op, ord: Ordering) -> bool {
    match op {
        Op::Gt | Op::SemverGt => ord == Ordering::Greater,
        Op::Gte | Op::SemverGte => ord != Ordering::Less,
        Op::Lt | Op::SemverLt => ord == Ordering::Less,
        Op::Lte | Op::SemverLte => ord != Ordering::Greater,
        Op::SemverEq => ord == Ordering::Equal,
        _ => false,
    }
}

/// A version split into its parts, borrowed from the text.
struct Semver<'a> {
    /// Exactly three numeric parts; missing trailing parts are "0".
    core: [&'a str; 3],
    /// Pre-release identifiers, empty for a release.
    pre: &'a str,
}

/// Parses `[v]MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]`. Build metadata is ignored, as
/// semver 2.0 requires; missing minor and patch parts count as zero.
fn parse_semver(text: &str) -> Option<Semver<'_>> {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    let text = text
        .split_once('+')
        .map_or(text, |(version, _build)| version);
    let (core_text, pre) = text.split_once('-').unwrap_or((text, ""));
    if text.contains('-') && !valid_identifiers(pre) {
        return None;
    }
    let mut core = ["0"; 3];
    let mut parts = core_text.split('.');
    for slot in &mut core {
        match parts.next() {
            Some(part) if is_digits(part) => *slot = part,
            Some(_) => return None,
            None => break,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Semver { core, pre })
}

/// Whether `text` is a version that the `semver_*` operators can compare, so that the admin
/// API accepts exactly what every runtime understands.
pub fn is_semver(text: &str) -> bool {
    parse_semver(text).is_some()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_identifiers(pre: &str) -> bool {
    pre.split('.')
        .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Compares digit strings by numeric value without overflow.
fn compare_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Semver 2.0 precedence; `None` when either side is not a version.
pub(crate) fn semver_compare(a: &str, b: &str) -> Option<Ordering> {
    let a = parse_semver(a)?;
    let b = parse_semver(b)?;
    for (x, y) in a.core.iter().zip(b.core.iter()) {
        match compare_numeric(x, y) {
            Ordering::Equal => {}
            other => return Some(other),
        }
    }
    Some(compare_prerelease(a.pre, b.pre))
}

fn compare_prerelease(a: &str, b: &str) -> Ordering {
    // A release ranks above any of its pre-releases.
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (is_digits(x), is_digits(y)) {
                    (true, true) => compare_numeric(x, y),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_precedence_follows_the_spec_example() {
        // The ordering example from semver.org, section 11.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1",
            "2",
            "v10.0.0+build.5",
        ];
        for pair in ordered.windows(2) {
            assert_eq!(
                semver_compare(pair[0], pair[1]),
                Some(Ordering::Less),
                "{pair:?}"
            );
            assert_eq!(
                semver_compare(pair[1], pair[0]),
                Some(Ordering::Greater),
                "{pair:?}"
            );
        }
        assert_eq!(semver_compare("1.2.3+a", "1.2.3+b"), Some(Ordering::Equal));
        assert_eq!(semver_compare("1.2", "1.2.0"), Some(Ordering::Equal));
        assert_eq!(
            semver_compare("99999999999999999999999.0", "1.0"),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn semver_rejects_non_versions() {
        for bad in [
            "",
            "v",
            "1..2",
            "1.2.3.4",
            "a.b.c",
            "1.2.3-",
            "1.2.3-a..b",
            "1.2.x",
            "-1",
        ] {
            assert_eq!(semver_compare(bad, "1.0.0"), None, "{bad:?}");
        }
    }
}
