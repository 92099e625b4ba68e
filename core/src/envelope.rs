//! The binary envelope around a postcard-encoded [`Snapshot`].
//!
//! ```text
//! offset  size  field
//! 0       4     magic "ABXS"
//! 4       2     format version, u16 little-endian (currently 1)
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
pub const FORMAT_VERSION: u16 = 1;
/// Payloads above 64 MiB are refused before any allocation.
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;
const HEADER_LEN: usize = 12;
const CHECKSUM_LEN: usize = 4;
const SIGNATURE_LEN: usize = 64;
const FLAG_SIGNED: u16 = 1;

/// Encodes an unsigned snapshot.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    encode_with_flags(snapshot, 0)
}

/// Encodes a snapshot signed with the Ed25519 key derived from `seed` (32 bytes). Ed25519
/// signatures are deterministic, so equal inputs give equal bytes.
pub fn encode_signed(snapshot: &Snapshot, seed: &[u8; 32]) -> Vec<u8> {
    let mut bytes = encode_with_flags(snapshot, FLAG_SIGNED);
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

fn encode_with_flags(snapshot: &Snapshot, flags: u16) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail: postcard only errors on
    // unsupported serde shapes, which the snapshot model does not use.
    let payload = postcard::to_allocvec(snapshot).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out
}

/// Decodes a snapshot without checking any signature it may carry.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, Error> {
    let parts = split(bytes)?;
    decode_payload(parts.payload)
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
    decode_payload(parts.payload)
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
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
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
        payload,
        signed: &bytes[..checksum_end],
        signature: (signature_len > 0).then(|| &bytes[checksum_end..]),
    })
}

fn decode_payload(payload: &[u8]) -> Result<Snapshot, Error> {
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
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
