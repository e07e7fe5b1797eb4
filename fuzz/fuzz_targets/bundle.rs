//! `Bundle::parse` on any bytes, as given and with both checksums recomputed (so that
//! mutations reach the structural checks behind them); a bundle that parses runs one
//! classification or a few generated tokens in an arena of the size it asks for. Any input
//! must give a bundle or an error, never a panic, a hang or an allocation beyond the arena.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whittle_runtime::format::{CRC32, PREAMBLE_LEN, TaskKind, align_up};
use whittle_runtime::kernels::Portable;
use whittle_runtime::{AlignedBytes, Bundle, Session};

/// Tokens of context the sessions open with.
const CONTEXT: usize = 32;
/// Largest arena a parsed bundle may ask for before it is only parsed.
const MAX_ARENA: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut resealed = data.to_vec();
    reseal(&mut resealed);
    if resealed != data {
        exercise(&resealed);
    }
});

fn exercise(bytes: &[u8]) {
    let aligned = AlignedBytes::new(bytes);
    let Ok(bundle) = Bundle::parse(aligned.as_bytes()) else {
        return;
    };
    let needed = bundle.arena_bytes(CONTEXT);
    if needed > MAX_ARENA {
        return;
    }
    let mut arena = AlignedBytes::zeroed(needed);
    let Ok(mut session) = Session::<_, CONTEXT>::new(&bundle, Portable, arena.as_bytes_mut())
    else {
        return;
    };
    match bundle.header().task.kind {
        TaskKind::Classification => {
            let _ = session.classify("a charming film");
        }
        _ => {
            let mut out = [0u8; 64];
            let _ = session.generate("a", 4, &mut out);
        }
    }
}

/// Recomputes the header's and the blob's CRC-32 where the preamble says they are.
fn reseal(bytes: &mut [u8]) {
    let field = |bytes: &[u8], range: std::ops::Range<usize>| -> Option<usize> {
        let slice = bytes.get(range)?;
        let mut word = [0u8; 8];
        word[..slice.len()].copy_from_slice(slice);
        usize::try_from(u64::from_le_bytes(word)).ok()
    };
    if bytes.len() < PREAMBLE_LEN {
        return;
    }
    let (Some(header_len), Some(blob_len)) = (field(bytes, 12..16), field(bytes, 16..24)) else {
        return;
    };
    let Some(header_end) = PREAMBLE_LEN.checked_add(header_len) else {
        return;
    };
    let Some(header) = bytes.get(..header_end) else {
        return;
    };
    let crc = CRC32.checksum(header).to_le_bytes();
    let Some(slot) = bytes.get_mut(header_end..header_end + 4) else {
        return;
    };
    slot.copy_from_slice(&crc);
    let blob_start = align_up(header_end + 4);
    let Some(blob_end) = blob_start.checked_add(blob_len) else {
        return;
    };
    let Some(blob) = bytes.get(blob_start..blob_end) else {
        return;
    };
    let crc = CRC32.checksum(blob).to_le_bytes();
    if let Some(slot) = bytes.get_mut(blob_end..blob_end + 4) {
        slot.copy_from_slice(&crc);
    }
}
