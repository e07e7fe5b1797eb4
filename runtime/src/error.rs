//! The one error type of the runtime: every way a bundle or a call can be refused.

use crate::config::ConfigError;

/// Why a bundle was refused or a session call failed. Each variant's message names the cause
/// and the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The input is shorter than the fixed preamble or than the lengths it declares.
    Truncated,
    /// The first eight bytes are not `WHITTLE\0`.
    BadMagic,
    /// The format version is not the one this runtime reads.
    UnsupportedVersion {
        /// Version found in the file.
        found: u16,
    },
    /// Unknown flag bits are set.
    UnknownFlags,
    /// The CRC-32 of the preamble and header does not match.
    HeaderChecksum,
    /// The header is not a valid postcard [`crate::format::Header`].
    HeaderDecode,
    /// The CRC-32 of the blob does not match.
    BlobChecksum,
    /// Bytes follow the end the preamble declares.
    TrailingBytes,
    /// The bundle does not start at a 4-byte aligned address, so f32 data cannot be borrowed.
    MisalignedBundle,
    /// A tensor reference points outside the blob or is not 64-byte aligned.
    BadSpan,
    /// A tensor's shape, dtype or length disagrees with the model config.
    BadShape,
    /// The model config is inconsistent.
    Config(ConfigError),
    /// A layer record is missing or malformed.
    BadLayer,
    /// A tokenizer table is malformed.
    BadTokenizer,
    /// The task section is malformed (labels, token ids, biases, head).
    BadTask,
    /// A signature is required but the bundle is unsigned.
    SignatureMissing,
    /// The signature does not verify with the given key.
    SignatureInvalid,
    /// The arena passed to a session is smaller than [`crate::Bundle::arena_bytes`] asks.
    ArenaTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The arena does not start at a 4-byte aligned address.
    MisalignedArena,
    /// The prompt does not fit the session's token capacity (context length).
    InputTooLong,
    /// The session's context is larger than the model's trained context.
    ContextTooLong,
    /// The operation needs the full output head, but the bundle carries a task-pruned one.
    NoFullHead,
    /// The bundle's task is not a classification task.
    NotClassification,
    /// The stored prompt prefix was computed for other weights than the bundle's.
    PrefixMismatch,
    /// The bundle holds q4 matrices and this runtime was built without the `q4` feature.
    Q4NotBuilt,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str(
                "bundle is truncated (shorter than its declared lengths); copy the whole file again",
            ),
            Self::BadMagic => f.write_str(
                "not a whittle bundle (bad magic); pass a file written by `whittle prune` or `cargo xtask pack`",
            ),
            Self::UnsupportedVersion { found } => write!(
                f,
                "bundle format version {found} is not supported (this runtime reads version {}); re-pack it with a matching whittle",
                crate::format::FORMAT_VERSION
            ),
            Self::UnknownFlags => f.write_str(
                "bundle sets unknown flags; it was written by a newer whittle, update the runtime",
            ),
            Self::HeaderChecksum => {
                f.write_str("bundle header checksum mismatch (corrupted); copy or re-pack it")
            }
            Self::HeaderDecode => {
                f.write_str("bundle header does not decode (corrupted or foreign); re-pack it")
            }
            Self::BlobChecksum => {
                f.write_str("bundle tensor checksum mismatch (corrupted); copy or re-pack it")
            }
            Self::TrailingBytes => {
                f.write_str("bytes follow the bundle's declared end; pass exactly the bundle file")
            }
            Self::MisalignedBundle => f.write_str(
                "bundle bytes are not 4-byte aligned; place them in an aligned buffer (e.g. `#[repr(align(64))]` or `AlignedBytes`)",
            ),
            Self::BadSpan => f.write_str(
                "a tensor lies outside the blob or is not 64-byte aligned (corrupted); re-pack it",
            ),
            Self::BadShape => f.write_str(
                "a tensor's shape or type disagrees with the model config (corrupted); re-pack it",
            ),
            Self::Config(error) => write!(f, "bundle model config is invalid: {error}; re-pack it"),
            Self::BadLayer => f.write_str("a layer record is malformed (corrupted); re-pack it"),
            Self::BadTokenizer => {
                f.write_str("the tokenizer tables are malformed (corrupted); re-pack it")
            }
            Self::BadTask => f.write_str(
                "the task section (labels, token ids, biases or head) is malformed; re-pack it",
            ),
            Self::SignatureMissing => f.write_str(
                "bundle is unsigned but a signature is required; pack it with --sign KEY",
            ),
            Self::SignatureInvalid => f.write_str(
                "bundle signature does not verify with this key; sign it with the matching key",
            ),
            Self::ArenaTooSmall { needed, given } => write!(
                f,
                "arena of {given} bytes is too small, the bundle needs {needed}; pass a buffer of Bundle::arena_bytes(context) bytes"
            ),
            Self::MisalignedArena => f.write_str(
                "arena is not 4-byte aligned; use an aligned buffer (e.g. `#[repr(align(64))]`)",
            ),
            Self::InputTooLong => f.write_str(
                "prompt and output do not fit the session's context; shorten the input or raise the context length",
            ),
            Self::ContextTooLong => f.write_str(
                "session context exceeds the model's trained context; lower the context length",
            ),
            Self::NoFullHead => f.write_str(
                "the bundle has a task-pruned head and can only classify; pack it with --head full to generate",
            ),
            Self::NotClassification => f.write_str(
                "the bundle's task is not a classification task; use generate instead",
            ),
            Self::PrefixMismatch => f.write_str(
                "the bundle's stored prompt prefix was computed for other weights; re-pack it with `whittle pack`",
            ),
            Self::Q4NotBuilt => f.write_str(
                "the bundle holds 4-bit (q4) weights and this runtime was built without its `q4` feature; enable it (whittle-runtime features = [\"q4\"]) or pack with `--dtype q8`",
            ),
        }
    }
}

impl core::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}
