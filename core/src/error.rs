use core::fmt;

/// Everything that can go wrong when reading a snapshot. Snapshot bytes are untrusted, so
/// every malformation maps to one of these rather than to a panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the fixed header.
    Truncated,
    /// The first four bytes are not `ABXS`.
    BadMagic,
    /// A format version this build does not understand.
    UnsupportedVersion(u16),
    /// Header flag bits this build does not understand.
    UnknownFlags(u16),
    /// The declared payload length exceeds [`crate::MAX_PAYLOAD_LEN`].
    TooLarge(u32),
    /// Bytes remain after the checksum (and signature).
    TrailingBytes,
    /// The payload's CRC-32 does not match.
    BadChecksum,
    /// A public key was given but the snapshot is not signed.
    Unsigned,
    /// The Ed25519 signature does not verify with the given key.
    BadSignature,
    /// The public key is not a valid Ed25519 key.
    BadPublicKey,
    /// The payload is not a valid postcard encoding of a snapshot.
    Payload,
    /// The payload decoded but breaks an invariant of the model.
    Invalid(Invalid),
}

/// A broken snapshot invariant, found when an evaluator is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// An index points outside the table it refers to.
    IndexOutOfRange { what: &'static str, index: u32 },
    /// A condition refers to a node that is not strictly before it.
    ConditionOrder { node: u32 },
    /// Conditions nest deeper than [`crate::MAX_CONDITION_DEPTH`].
    ConditionTooDeep { node: u32 },
    /// A basis-point value above 10 000.
    BasisPoints { what: &'static str, value: u16 },
    /// An experiment without variants.
    NoVariants { experiment: u32 },
    /// Variant thresholds must not decrease and must end at 10 000.
    Thresholds { experiment: u32 },
    /// A slot range that is empty or outside `0..10000`.
    SlotRange { experiment: u32 },
    /// Two experiments of one layer own overlapping slots.
    LayerOverlap { layer: u32 },
    /// Experiments of one layer disagree on unit attribute or switchback period, which
    /// would break the layer's mutual exclusion.
    LayerUnit { layer: u32 },
    /// A switchback period of zero seconds.
    SwitchbackPeriod { experiment: u32 },
    /// A flag rule's per-variant values do not match the experiment's variants.
    FlagVariants { flag: u32 },
    /// Two experiments or two flags share a key.
    DuplicateKey { what: &'static str, index: u32 },
    /// A table that runs beside another (one entry per experiment, or per holdout) is neither
    /// empty nor as long as that table.
    SideTable { what: &'static str, len: u32 },
}

impl Error {
    /// A stable machine-readable name, the same in every runtime.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadMagic => "bad_magic",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::UnknownFlags(_) => "unknown_flags",
            Error::TooLarge(_) => "too_large",
            Error::TrailingBytes => "trailing_bytes",
            Error::BadChecksum => "bad_checksum",
            Error::Unsigned => "unsigned",
            Error::BadSignature => "bad_signature",
            Error::BadPublicKey => "bad_public_key",
            Error::Payload => "malformed_payload",
            Error::Invalid(_) => "invalid_snapshot",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("snapshot is truncated"),
            Error::BadMagic => f.write_str("not an abx snapshot (bad magic bytes)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported snapshot format version {v}"),
            Error::UnknownFlags(bits) => write!(f, "unknown snapshot header flags {bits:#06x}"),
            Error::TooLarge(len) => write!(f, "snapshot payload length {len} is too large"),
            Error::TrailingBytes => f.write_str("trailing bytes after the snapshot"),
            Error::BadChecksum => f.write_str("snapshot checksum mismatch"),
            Error::Unsigned => f.write_str("snapshot is not signed but a public key was given"),
            Error::BadSignature => f.write_str("snapshot signature does not verify"),
            Error::BadPublicKey => f.write_str("invalid Ed25519 public key"),
            Error::Payload => f.write_str("snapshot payload is malformed"),
            Error::Invalid(invalid) => write!(f, "invalid snapshot: {invalid}"),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::IndexOutOfRange { what, index } => {
                write!(f, "{what} index {index} out of range")
            }
            Invalid::ConditionOrder { node } => {
                write!(
                    f,
                    "condition {node} refers to a node that does not precede it"
                )
            }
            Invalid::ConditionTooDeep { node } => write!(f, "condition {node} nests too deeply"),
            Invalid::BasisPoints { what, value } => write!(f, "{what} of {value} bp exceeds 10000"),
            Invalid::NoVariants { experiment } => {
                write!(f, "experiment {experiment} has no variants")
            }
            Invalid::Thresholds { experiment } => {
                write!(
                    f,
                    "experiment {experiment} has malformed variant thresholds"
                )
            }
            Invalid::SlotRange { experiment } => {
                write!(f, "experiment {experiment} has a malformed slot range")
            }
            Invalid::LayerOverlap { layer } => {
                write!(f, "layer {layer} has overlapping slot ranges")
            }
            Invalid::LayerUnit { layer } => {
                write!(
                    f,
                    "experiments of layer {layer} differ in unit or switchback period"
                )
            }
            Invalid::SwitchbackPeriod { experiment } => {
                write!(f, "experiment {experiment} has a zero switchback period")
            }
            Invalid::FlagVariants { flag } => {
                write!(
                    f,
                    "flag {flag} has per-variant values that do not match its experiment"
                )
            }
            Invalid::DuplicateKey { what, index } => write!(f, "duplicate {what} key at {index}"),
            Invalid::SideTable { what, len } => {
                write!(f, "{what} has {len} entries, neither none nor one per item")
            }
        }
    }
}

impl core::error::Error for Error {}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Error::Invalid(invalid)
    }
}
