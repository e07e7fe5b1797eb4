//! The install's stream reader (`whittle_device::stream::receive`) on any stream: the input's
//! first 8 bytes announce a length, the next one picks the announced digest (the stream's
//! own, a wrong one, none), the one after that how the source cuts its reads and whether the
//! sink fills up; the rest is what arrives. The reader must deliver exactly the announced
//! bytes or say why not (short, long, changed, full), never store past the announced length,
//! never panic; what it accepts then goes through the install's checks (`Bundle::parse`).
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use whittle_device::stream::{ReceiveError, hex, receive};
use whittle_runtime::{AlignedBytes, Bundle};

/// A source that returns at most `step` bytes a read and an `Interrupted` error every
/// `interrupt`-th read (never two in a row, as a signal-interrupted pipe does).
struct Choppy<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: usize,
    reads: usize,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.interrupt > 0 && self.reads % self.interrupt == 0 {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A sink that holds at most `room` bytes, then fails like a full disk.
struct Disk {
    bytes: Vec<u8>,
    room: usize,
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.room {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let stream = &data[10..];
    let announced = u64::from_le_bytes(data[..8].try_into().unwrap_or_default())
        % (2 * stream.len() as u64 + 2);
    let own = hex(&Sha256::digest(stream.get(..announced as usize).unwrap_or(stream)));
    let digest = match data[8] % 3 {
        0 => Some(own.clone()),
        1 => Some("00".repeat(32)),
        _ => None,
    };
    let shape = data[9];
    let mut source = Choppy {
        data: stream,
        step: 1 + usize::from(shape & 0x3f) * 97,
        interrupt: match shape >> 6 {
            0 => 0,
            n => usize::from(n) + 1,
        },
        reads: 0,
    };
    let room = if shape & 0x20 != 0 { stream.len() / 2 } else { usize::MAX };
    let mut disk = Disk {
        bytes: Vec::new(),
        room,
    };
    let result = receive(&mut source, &mut disk, announced, digest.as_deref());
    assert!(disk.bytes.len() as u64 <= announced, "stored past the announced length");
    match result {
        Ok(received) => {
            assert_eq!(stream.len() as u64, announced);
            assert_eq!(disk.bytes, stream);
            assert_eq!(hex(&received), own);
            let aligned = AlignedBytes::new(&disk.bytes);
            if let Ok(bundle) = Bundle::parse(aligned.as_bytes()) {
                let _ = bundle.verify(&[7u8; 32]);
            }
        }
        Err(ReceiveError::Short { received, expected }) => {
            assert!(received < expected);
            assert!((stream.len() as u64) < announced);
        }
        Err(ReceiveError::Long { .. }) => assert!(stream.len() as u64 > announced),
        Err(ReceiveError::Digest { .. }) => assert_ne!(digest.as_deref(), Some(own.as_str())),
        Err(ReceiveError::Write(_)) => assert!(room < stream.len()),
        Err(ReceiveError::Read(error)) => panic!("the source never fails: {error}"),
    }
});
