//! The install's stream reader: exactly the announced number of bytes from a pipe or file into
//! the staging file, hashed on the way, never more than announced (the library part of
//! `whittle-device`, so that `fuzz/` can drive it).

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Bytes read from the source per call.
const CHUNK: usize = 64 * 1024;

/// Why a transfer did not deliver the announced bytes.
#[derive(Debug)]
pub enum ReceiveError {
    /// The source ended early: a cut transfer or a killed writer.
    Short {
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The source has more bytes than announced.
    Long {
        /// Bytes announced.
        expected: u64,
    },
    /// The announced sha256 does not match what arrived.
    Digest {
        /// sha256 (hex) of what arrived.
        received: String,
        /// sha256 (hex) announced.
        expected: String,
    },
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the staging file failed (a full disk, usually).
    Write(io::Error),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short { received, expected } => write!(
                f,
                "the transfer ended after {received} of {expected} bytes (cut connection or killed sender); send it again"
            ),
            Self::Long { expected } => write!(
                f,
                "the sender sent more than the {expected} bytes announced with --len; send the bundle with its own length"
            ),
            Self::Digest { received, expected } => write!(
                f,
                "the bytes received have sha256 {received}, not the {expected} announced: they were changed on the way; send the bundle again"
            ),
            Self::Read(error) => write!(f, "cannot read the bundle: {error}"),
            Self::Write(error) if error.kind() == io::ErrorKind::StorageFull => write!(
                f,
                "the device is out of space while storing the bundle ({error}); free space on it or install with a smaller --keep"
            ),
            Self::Write(error) => write!(f, "cannot store the bundle: {error}"),
        }
    }
}

impl std::error::Error for ReceiveError {}

/// Copies exactly `len` bytes of `source` into `sink`, hashing them, and checks the sha256
/// against `expected` (hex, any case) when given. Reads at most one byte past `len` (to tell a
/// longer source), so a sender cannot fill the disk past what it announced.
pub fn receive(
    source: &mut impl Read,
    sink: &mut impl Write,
    len: u64,
    expected: Option<&str>,
) -> Result<[u8; 32], ReceiveError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut received = 0u64;
    while received < len {
        let want = usize::try_from(len - received).map_or(CHUNK, |left| left.min(CHUNK));
        let Some(chunk) = buffer.get_mut(..want) else {
            break;
        };
        let read = match source.read(chunk) {
            Ok(0) => {
                return Err(ReceiveError::Short {
                    received,
                    expected: len,
                });
            }
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ReceiveError::Read(error)),
        };
        let bytes = chunk.get(..read).unwrap_or_default();
        hasher.update(bytes);
        sink.write_all(bytes).map_err(ReceiveError::Write)?;
        received += read as u64;
    }
    let mut probe = [0u8; 1];
    loop {
        match source.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err(ReceiveError::Long { expected: len }),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ReceiveError::Read(error)),
        }
    }
    sink.flush().map_err(ReceiveError::Write)?;
    let digest: [u8; 32] = hasher.finalize().into();
    if let Some(expected) = expected {
        let received = hex(&digest);
        if !received.eq_ignore_ascii_case(expected.trim()) {
            return Err(ReceiveError::Digest {
                received,
                expected: expected.trim().to_owned(),
            });
        }
    }
    Ok(digest)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    #[test]
    fn takes_exactly_the_announced_bytes_and_checks_their_digest() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut sink = Vec::new();
        let digest = receive(
            &mut bytes.as_slice(),
            &mut sink,
            bytes.len() as u64,
            Some(&digest_of(&bytes).to_uppercase()),
        );
        assert!(matches!(digest, Ok(d) if hex(&d) == digest_of(&bytes)));
        assert_eq!(sink, bytes);

        let half = &bytes[..bytes.len() / 2];
        let short = receive(&mut &half[..], &mut Vec::new(), bytes.len() as u64, None);
        assert!(
            matches!(short, Err(ReceiveError::Short { received, .. }) if received == half.len() as u64)
        );
        let mut sink = Vec::new();
        let long = receive(&mut bytes.as_slice(), &mut sink, 1000, None);
        assert!(matches!(long, Err(ReceiveError::Long { expected: 1000 })));
        assert_eq!(
            sink.len(),
            1000,
            "nothing past the announced length is stored"
        );
        let mut flipped = bytes.clone();
        flipped[777] ^= 0x10;
        let changed = receive(
            &mut flipped.as_slice(),
            &mut Vec::new(),
            bytes.len() as u64,
            Some(&digest_of(&bytes)),
        );
        assert!(matches!(changed, Err(ReceiveError::Digest { .. })));
    }
}
