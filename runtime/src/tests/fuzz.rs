//! Bounded fuzzing of the parser and a session: random bytes, every truncation, random bit
//! flips with and without re-sealed checksums. Any input must give a bundle or an error.
//! Every execution is counted (and caught, so a panic is counted and reported with its input
//! instead of ending the run); `WHITTLE_FUZZ_ITERATIONS` (default 3000) sets the number of
//! random inputs after the truncations, e.g. for the long run in docs/RESULTS.md:
//! `WHITTLE_FUZZ_ITERATIONS=1000000 cargo test -p whittle-runtime --release --lib fuzz -- --nocapture`.

use alloc::vec::Vec;

use super::{CONTEXT, tiny_bundle};
use crate::format::{CRC32, Dtype, PREAMBLE_LEN, align_up};
use crate::kernels::Portable;
use crate::{AlignedBytes, Bundle, Session};

fn iterations() -> usize {
    std::env::var("WHITTLE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Recomputes both checksums so mutations reach the structural checks.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < PREAMBLE_LEN {
        return;
    }
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let blob_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let header_end = PREAMBLE_LEN + header_len;
    if header_end + 4 > bytes.len() {
        return;
    }
    let crc = CRC32.checksum(&bytes[..header_end]);
    bytes[header_end..header_end + 4].copy_from_slice(&crc.to_le_bytes());
    let blob_start = align_up(header_end + 4);
    if blob_start + blob_len + 4 > bytes.len() {
        return;
    }
    let crc = CRC32.checksum(&bytes[blob_start..blob_start + blob_len]);
    bytes[blob_start + blob_len..blob_start + blob_len + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What one input did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Parsed,
    Classified,
}

/// Parses, and on success runs a classification in a right-sized arena.
fn exercise(bytes: &[u8]) -> Outcome {
    let aligned = AlignedBytes::new(bytes);
    let Ok(bundle) = Bundle::parse(aligned.as_bytes()) else {
        return Outcome::Refused;
    };
    let needed = bundle.arena_bytes(CONTEXT);
    if needed > 64 << 20 {
        return Outcome::Parsed;
    }
    let mut words = alloc::vec![0u32; needed.div_ceil(4)];
    let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    match Session::<_, CONTEXT>::new(&bundle, Portable, arena) {
        Ok(mut session) => {
            let _ = session.classify("abc 1");
            Outcome::Classified
        }
        Err(_) => Outcome::Parsed,
    }
}

/// Counts of a fuzz run.
#[derive(Default)]
struct Tally {
    executions: usize,
    refused: usize,
    parsed: usize,
    classified: usize,
    panics: Vec<Vec<u8>>,
}

impl Tally {
    fn run(&mut self, bytes: &[u8]) -> Option<Outcome> {
        self.executions += 1;
        match std::panic::catch_unwind(|| exercise(bytes)) {
            Ok(outcome) => {
                match outcome {
                    Outcome::Refused => self.refused += 1,
                    Outcome::Parsed => self.parsed += 1,
                    Outcome::Classified => self.classified += 1,
                }
                Some(outcome)
            }
            Err(_) => {
                self.panics.push(bytes.to_vec());
                None
            }
        }
    }
}

#[test]
fn random_truncated_and_flipped_bundles_never_panic() {
    let good = tiny_bundle(Dtype::Q8, false, None);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();
    for len in 0..good.len() {
        let outcome = tally.run(&good[..len]);
        assert!(
            outcome.is_none() || outcome == Some(Outcome::Refused),
            "a bundle truncated to {len} bytes was accepted"
        );
    }
    let truncations = tally.executions;
    let iterations = iterations();
    let header_end = PREAMBLE_LEN + u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    for i in 0..iterations {
        let mut bytes: Vec<u8> = match i % 4 {
            0 => (0..rng.below(512)).map(|_| rng.next() as u8).collect(),
            _ => good.clone(),
        };
        if i % 4 != 0 {
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                // Half the flips target the header, where structure lives.
                let at = if rng.below(2) == 0 {
                    rng.below(header_end)
                } else {
                    rng.below(bytes.len())
                };
                bytes[at] ^= 1 << rng.below(8);
            }
            if i % 4 != 1 {
                reseal(&mut bytes);
            }
        }
        tally.run(&bytes);
    }
    assert_eq!(tally.executions, truncations + iterations);
    std::eprintln!(
        "fuzz: {} executions ({truncations} truncations, {iterations} random / bit-flipped / resealed): {} refused, {} parsed, {} classified, {} panics",
        tally.executions,
        tally.refused,
        tally.parsed,
        tally.classified,
        tally.panics.len()
    );
    assert!(
        tally.panics.is_empty(),
        "{} inputs panicked; the first: {:?}",
        tally.panics.len(),
        tally.panics.first()
    );
}
