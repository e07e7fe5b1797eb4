//! The runtime tokenizer of the tiny test bundle on any text (split into pieces at the input's
//! zero bytes, read as lossy UTF-8) and any token ids (the input's bytes as little-endian
//! words) decoded into a short buffer: an error or a result, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use whittle_runtime::{AlignedBytes, Bundle, Tokenizer};

static BYTES: OnceLock<AlignedBytes> = OnceLock::new();
static BUNDLE: OnceLock<Bundle<'static>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // Parsed once: the target exercises the tokenizer, not the parser.
    let bundle = BUNDLE.get_or_init(|| {
        let bytes = BYTES.get_or_init(|| {
            AlignedBytes::new(include_bytes!("../../runtime/firmware-example/tiny.wbundle"))
        });
        match Bundle::parse(bytes.as_bytes()) {
            Ok(bundle) => bundle,
            Err(error) => panic!("the tiny test bundle does not parse: {error}"),
        }
    });
    let tokenizer = Tokenizer::new(bundle);
    let text = String::from_utf8_lossy(data);
    let pieces: Vec<&str> = text.split('\0').collect();
    let mut ids = heapless::Vec::<u32, 256>::new();
    let _ = tokenizer.encode(&pieces, &mut ids);
    let mut out = [0u8; 96];
    let _ = tokenizer.decode_into(&ids, &mut out);
    let words: Vec<u32> = data
        .chunks(4)
        .map(|chunk| {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_le_bytes(word)
        })
        .collect();
    let _ = tokenizer.decode_into(&words, &mut out);
    for &id in &words {
        let _ = tokenizer.token_bytes(id);
        let _ = tokenizer.is_special(id);
    }
});
