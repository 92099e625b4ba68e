//! The binary envelope around a postcard-encoded [`Snapshot`].
//!
//! ```text
//! offset  size  field
//! 0       4     magic "ABXS"
//! 4       2     format version, u16 little-endian (1 or 2, see [`Format`])
//! 6       2     flags, u16 little-endian (bit 0: signed)
//! 8       4     payload length N, u32 little-endian
//! 12      N     payload: postcard encoding of Snapshot
//! 12+N    4     CRC-32 (IEEE) of the payload, u32 little-endian
//! 16+N    64    Ed25519 signature of bytes 0..16+N (only when the signed flag is set)
//! ```

use alloc::vec::Vec;

use crate::error::Error;
use crate::snapshot::Snapshot;

pub const MAGIC: [u8; 4] = *b"ABXS";
/// The newest format version, which [`encode`] writes.
pub const FORMAT_VERSION: u16 = Format::LATEST.version();

/// A format version this crate reads and writes. Format 2 appends two tables to format 1's
/// payload ([`Snapshot::exposure_attributes`] and [`Snapshot::holdout_units`]). Readers
/// built for format 1 refuse version 2 in the header, so an origin keeps serving format 1
/// to clients that do not ask for 2; encoding a snapshot as format 1 leaves those tables
/// out, and decoding format 1 gives them empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V1,
    V2,
}

impl Format {
    pub const LATEST: Format = Format::V2;

    /// The version number in the header.
    pub const fn version(self) -> u16 {
        match self {
            Format::V1 => 1,
            Format::V2 => 2,
        }
    }

    pub fn from_version(version: u16) -> Option<Format> {
        match version {
            1 => Some(Format::V1),
            2 => Some(Format::V2),
            _ => None,
        }
    }
}

/// The postcard encoding of what format 2 appended, empty: two zero-length sequences. A
/// postcard struct is its fields' encodings one after another, with no framing, so a format 1
/// payload followed by these bytes is a whole format 2 payload.
const EMPTY_FORMAT_2_TABLES: [u8; 2] = [0, 0];
/// Payloads above 64 MiB are refused before any allocation.
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;
const HEADER_LEN: usize = 12;
const CHECKSUM_LEN: usize = 4;
const SIGNATURE_LEN: usize = 64;
const FLAG_SIGNED: u16 = 1;

/// Encodes an unsigned snapshot in the newest format.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    encode_as(snapshot, Format::LATEST)
}

/// Encodes an unsigned snapshot in `format`.
pub fn encode_as(snapshot: &Snapshot, format: Format) -> Vec<u8> {
    encode_with_flags(snapshot, format, 0)
}

/// Encodes a snapshot in the newest format, signed with the Ed25519 key derived from `seed`
/// (32 bytes). Ed25519 signatures are deterministic, so equal inputs give equal bytes.
pub fn encode_signed(snapshot: &Snapshot, seed: &[u8; 32]) -> Vec<u8> {
    encode_signed_as(snapshot, seed, Format::LATEST)
}

/// Like [`encode_signed`], in `format`.
pub fn encode_signed_as(snapshot: &Snapshot, seed: &[u8; 32], format: Format) -> Vec<u8> {
    let mut bytes = encode_with_flags(snapshot, format, FLAG_SIGNED);
    let key_pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(*seed));
    let signature = key_pair.sk.sign(&bytes, None);
    bytes.extend_from_slice(signature.as_ref());
    bytes
}

/// The Ed25519 public key (32 bytes) that verifies snapshots signed with `seed`.
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    let key_pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(*seed));
    *key_pair.pk
}

fn encode_with_flags(snapshot: &Snapshot, format: Format, flags: u16) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail: postcard only errors on
    // unsupported serde shapes, which the snapshot model does not use.
    let mut payload = postcard::to_allocvec(snapshot).unwrap_or_default();
    if format == Format::V1 {
        // Format 1 is the same payload without the tables that format 2 appended.
        let tables = (&snapshot.exposure_attributes, &snapshot.holdout_units);
        let appended = postcard::to_allocvec(&tables).unwrap_or_default().len();
        payload.truncate(payload.len().saturating_sub(appended));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&format.version().to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out
}

/// Decodes a snapshot without checking any signature it may carry.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, Error> {
    let parts = split(bytes)?;
    decode_payload(parts.payload, parts.format)
}

/// The format of snapshot bytes, from a valid envelope's header (the signature unchecked).
pub fn format_of(bytes: &[u8]) -> Result<Format, Error> {
    split(bytes).map(|parts| parts.format)
}

/// Decodes a snapshot and requires a valid signature by `public_key`.
pub fn decode_verified(bytes: &[u8], public_key: &[u8]) -> Result<Snapshot, Error> {
    let key =
        ed25519_compact::PublicKey::from_slice(public_key).map_err(|_| Error::BadPublicKey)?;
    let parts = split(bytes)?;
    let signature = parts.signature.ok_or(Error::Unsigned)?;
    let signature =
        ed25519_compact::Signature::from_slice(signature).map_err(|_| Error::BadSignature)?;
    key.verify(parts.signed, &signature)
        .map_err(|_| Error::BadSignature)?;
    decode_payload(parts.payload, parts.format)
}

/// What a signature check covers, for runtimes that verify Ed25519 with a platform API (a
/// browser's WebCrypto) rather than with [`decode_verified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// The bytes the signature covers: header, payload and checksum.
    pub signed: &'a [u8],
    /// The Ed25519 signature (64 bytes).
    pub signature: &'a [u8],
}

/// Checks the envelope of a snapshot that must be signed, without verifying the signature,
/// and returns what to verify. Its errors are those of [`decode_verified`] up to that point,
/// in the same order: the envelope's, then [`Error::Unsigned`]. Checking the public key first
/// (32 bytes, else [`Error::BadPublicKey`]), then this, then the signature
/// ([`Error::BadSignature`]), then [`decode`], reports exactly what `decode_verified` reports.
pub fn signed_parts(bytes: &[u8]) -> Result<SignedParts<'_>, Error> {
    let parts = split(bytes)?;
    let signature = parts.signature.ok_or(Error::Unsigned)?;
    Ok(SignedParts {
        signed: parts.signed,
        signature,
    })
}

/// Reads only the header's snapshot version without decoding the payload, for caches that
/// want to compare versions cheaply. Validates the envelope (not the signature).
pub fn peek_version(bytes: &[u8]) -> Result<u64, Error> {
    let parts = split(bytes)?;
    // snapshot_version is the payload's first field, a postcard varint.
    postcard::take_from_bytes::<u64>(parts.payload)
        .map(|(v, _)| v)
        .map_err(|_| Error::Payload)
}

struct Parts<'a> {
    format: Format,
    payload: &'a [u8],
    /// Everything the signature covers.
    signed: &'a [u8],
    signature: Option<&'a [u8]>,
}

fn split(bytes: &[u8]) -> Result<Parts<'_>, Error> {
    let header = bytes.get(..HEADER_LEN).ok_or(Error::Truncated)?;
    if header[..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    let format = Format::from_version(version).ok_or(Error::UnsupportedVersion(version))?;
    let flags = u16::from_le_bytes([header[6], header[7]]);
    if flags & !FLAG_SIGNED != 0 {
        return Err(Error::UnknownFlags(flags));
    }
    let declared = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if declared > MAX_PAYLOAD_LEN {
        return Err(Error::TooLarge(declared));
    }
    let payload_end = HEADER_LEN + declared as usize;
    let checksum_end = payload_end + CHECKSUM_LEN;
    let signature_len = if flags & FLAG_SIGNED != 0 {
        SIGNATURE_LEN
    } else {
        0
    };
    let total = checksum_end + signature_len;
    if bytes.len() < total {
        return Err(Error::Truncated);
    }
    if bytes.len() > total {
        return Err(Error::TrailingBytes);
    }
    let payload = &bytes[HEADER_LEN..payload_end];
    let stored = &bytes[payload_end..checksum_end];
    if crc32(payload).to_le_bytes() != stored {
        return Err(Error::BadChecksum);
    }
    Ok(Parts {
        format,
        payload,
        signed: &bytes[..checksum_end],
        signature: (signature_len > 0).then(|| &bytes[checksum_end..]),
    })
}

fn decode_payload(payload: &[u8], format: Format) -> Result<Snapshot, Error> {
    if format == Format::V1 {
        let mut whole = Vec::with_capacity(payload.len() + EMPTY_FORMAT_2_TABLES.len());
        whole.extend_from_slice(payload);
        whole.extend_from_slice(&EMPTY_FORMAT_2_TABLES);
        let snapshot = decode_whole(&whole)?;
        // Bytes after a format 1 payload would have been read as the tables, which the
        // appended empty ones then trail: they are trailing bytes of format 1.
        if !snapshot.exposure_attributes.is_empty() || !snapshot.holdout_units.is_empty() {
            return Err(Error::TrailingBytes);
        }
        return Ok(snapshot);
    }
    decode_whole(payload)
}

fn decode_whole(payload: &[u8]) -> Result<Snapshot, Error> {
    match postcard::take_from_bytes::<Snapshot>(payload) {
        Ok((snapshot, [])) => Ok(snapshot),
        Ok(_) => Err(Error::TrailingBytes),
        Err(_) => Err(Error::Payload),
    }
}

/// CRC-32 with the IEEE polynomial (as in zlib, PNG and Ethernet).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_is_format_2_without_its_tables() {
        let snapshot = Snapshot {
            snapshot_version: 7,
            attributes: alloc::vec!["user_id".into(), "country".into()],
            ..Snapshot::default()
        };
        let empty_v1 = encode_as(&snapshot, Format::V1);
        let empty_v2 = encode_as(&snapshot, Format::V2);
        assert_eq!(&empty_v1[4..6], &[1, 0]);
        assert_eq!(&empty_v2[4..6], &[2, 0]);
        assert_eq!(decode(&empty_v1), Ok(snapshot.clone()));
        assert_eq!(decode(&empty_v2), Ok(snapshot.clone()));
        let payload_v1 = &empty_v1[HEADER_LEN..empty_v1.len() - CHECKSUM_LEN];
        let payload_v2 = &empty_v2[HEADER_LEN..empty_v2.len() - CHECKSUM_LEN];
        assert_eq!(&payload_v2[..payload_v1.len()], payload_v1);
        assert_eq!(&payload_v2[payload_v1.len()..], &EMPTY_FORMAT_2_TABLES);
    }

    #[test]
    fn format_1_leaves_the_format_2_tables_out() {
        let snapshot = Snapshot {
            attributes: alloc::vec!["user_id".into(), "country".into()],
            ..Snapshot::default()
        };
        let mut with_tables = snapshot.clone();
        // Side tables of a snapshot without experiments or holdouts must be empty for an
        // evaluator, but the envelope encodes whatever it is given.
        with_tables.exposure_attributes = alloc::vec![alloc::vec![1, 0]];
        with_tables.holdout_units = alloc::vec![0, 0, 1];
        assert_eq!(
            decode(&encode_as(&with_tables, Format::V1)),
            Ok(snapshot.clone())
        );
        assert_eq!(
            decode(&encode_as(&with_tables, Format::V2)),
            Ok(with_tables)
        );
    }

    #[test]
    fn bytes_after_a_format_1_payload_are_trailing() {
        let bytes = encode_as(&Snapshot::default(), Format::V1);
        let payload = &bytes[HEADER_LEN..bytes.len() - CHECKSUM_LEN];
        for tail in [&[1u8][..], &[1, 1], &[0, 1, 0], &[0]] {
            let mut longer = payload.to_vec();
            longer.extend_from_slice(tail);
            let mut framed = bytes[..8].to_vec();
            framed.extend_from_slice(&(longer.len() as u32).to_le_bytes());
            framed.extend_from_slice(&longer);
            framed.extend_from_slice(&crc32(&longer).to_le_bytes());
            assert_eq!(decode(&framed), Err(Error::TrailingBytes), "{tail:?}");
        }
    }

    #[test]
    fn a_format_1_payload_labelled_format_2_is_malformed() {
        let mut bytes = encode_as(&Snapshot::default(), Format::V1);
        bytes[4] = 2;
        assert_eq!(decode(&bytes), Err(Error::Payload));
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
