//! A tiny Qwen2 checkpoint (random weights under Hugging Face's names, q/k/v biases, the
//! half-split rotary layout, a byte-level tokenizer): the host's `--model DIR` loader and
//! forward pass against candle-transformers' `qwen2`, then the bundle the host packs from it
//! against the host in the runtime. No download.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen2;
use whittle_host::bundle::{HeadChoice, PackOptions, ProvenanceInfo, pack};
use whittle_host::model::{Batch, LoadedModel};
use whittle_host::parity::{compare, host_reference};
use whittle_host::task::{Split, Task};
use whittle_host::vocab::VocabChoice;
use whittle_runtime::format::Dtype;
use whittle_runtime::kernels::best;
use whittle_runtime::{AlignedBytes, Architecture, Bundle};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const INTERMEDIATE: usize = 48;
const LAYERS: usize = 2;
/// Embedding rows: more than the tokenizer's 257 tokens (256 bytes and `<|endoftext|>`), as
/// Qwen2.5 pads its vocabulary.
const VOCAB: usize = 272;

/// Seeded values uniform in `[-scale, scale)`.
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// GPT-2's byte-to-character map of byte-level BPE vocabularies.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            let code = match printable(b) {
                true => b,
                false => {
                    next += 1;
                    next - 1
                }
            };
            char::from_u32(code).unwrap_or('?')
        })
        .collect()
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json`
/// of a tiny Qwen2 into `dir`; returns the tensors by Hugging Face name.
fn write_checkpoint(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let device = Device::Cpu;
    let mut seed = 7u64;
    let mut tensor = |shape: &[usize], scale: f32| -> anyhow::Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(
            values(&mut seed, n, scale),
            shape,
            &device,
        )?)
    };
    let mut tensors = HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".to_owned(),
        tensor(&[VOCAB, HIDDEN], 1.0)?,
    );
    tensors.insert(
        "model.norm.weight".to_owned(),
        (tensor(&[HIDDEN], 0.2)? + 1.0)?,
    );
    let kv = KV_HEADS * HEAD_DIM;
    for layer in 0..LAYERS {
        let name = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.insert(
                name(&format!("{norm}.weight")),
                (tensor(&[HIDDEN], 0.2)? + 1.0)?,
            );
        }
        let scale = 1.7 / (HIDDEN as f32).sqrt();
        for (proj, rows, cols) in [
            ("self_attn.q_proj", HIDDEN, HIDDEN),
            ("self_attn.k_proj", kv, HIDDEN),
            ("self_attn.v_proj", kv, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HIDDEN),
            ("mlp.gate_proj", INTERMEDIATE, HIDDEN),
            ("mlp.up_proj", INTERMEDIATE, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTERMEDIATE),
        ] {
            tensors.insert(
                name(&format!("{proj}.weight")),
                tensor(&[rows, cols], scale)?,
            );
            if proj.starts_with("self_attn") && proj != "self_attn.o_proj" {
                // Biases as large as the projections' outputs, so that one added in the
                // wrong place or rotary order moves the logits.
                tensors.insert(name(&format!("{proj}.bias")), tensor(&[rows], 1.0)?);
            }
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": 1024,
        "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
        "sliding_window": 1024, "max_window_layers": LAYERS, "use_sliding_window": false,
        "hidden_act": "silu", "eos_token_id": 256, "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), serde_json::Value::from(id)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    // SmolLM2's pre-tokenizer, the one bundles implement (Qwen2's own splits some texts
    // otherwise; the host refuses to pack it, below).
    let pre_tokenizer = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true}, byte_level]});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 256, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tokenizer)?)?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )?;
    Ok(tensors)
}

#[test]
fn a_qwen2_checkpoint_matches_candle_transformers_and_its_bundle_the_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tensors = write_checkpoint(dir.path())?;
    let device = Device::Cpu;
    let model = whittle_host::model::load(dir.path(), &device)?;
    assert_eq!(model.llama.config().arch, Architecture::QWEN2);

    // candle-transformers reads the same files its own way: half-split rotation, biases.
    let config: qwen2::Config =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), DType::F32, &device);
    let mut reference = qwen2::Model::new(&config, vb)?;
    let embedding = &tensors["model.embed_tokens.weight"];
    let prompts: [&[u32]; 3] = [
        &[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100],
        &[3, 250, 17, 99],
        &[
            256, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
        ],
    ];
    let mut max_diff = 0f32;
    for prompt in prompts {
        reference.clear_kv_cache();
        let input = Tensor::new(prompt, &device)?.unsqueeze(0)?;
        let theirs = reference
            .forward(&input, 0, None)?
            .squeeze(0)?
            .matmul(&embedding.t()?)?;
        let ours = model
            .llama
            .forward(&Batch::new(&[prompt.to_vec()], 256, &device)?)?
            .squeeze(0)?;
        assert_eq!(ours.dims(), theirs.dims());
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        max_diff = max_diff.max(diff);
    }
    println!("qwen2: max |Δ logit| against candle-transformers {max_diff:.2e}");
    assert!(max_diff < 1e-4, "{max_diff}");

    // Without its biases the model is another one: the comparison above can fail.
    let mut unbiased = model.llama.clone();
    for layer in 0..LAYERS {
        let zeros = unbiased
            .qkv_bias(layer)
            .map(|b| b.clone().map(|t| t.zeros_like()))
            .ok_or_else(|| anyhow::anyhow!("layer {layer} has no biases"))?;
        let [q, k, v] = zeros;
        unbiased.set_qkv_bias(layer, [q?, k?, v?])?;
    }
    let batch = Batch::new(&[prompts[0].to_vec()], 256, &device)?;
    let moved = (unbiased.forward(&batch)? - model.llama.forward(&batch)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(moved > 1e-2, "{moved}");

    runtime_matches_the_host(&model, dir.path())
}

/// The f32 bundle of the tiny Qwen2 (prompt prefix stored, the embedding cut to the
/// tokenizer's 257 tokens) gives the host's label logits in the runtime; the q8 one stays
/// close.
fn runtime_matches_the_host(model: &LoadedModel, dir: &Path) -> anyhow::Result<()> {
    let mut rows = String::from("sentence\tlabel\n");
    for i in 0..60 {
        let words = ["good", "bad", "fine", "odd", "grim", "warm"];
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
    let task = Task::from_path(&task_path)?;
    let tables = model.tokenizer.tables()?;
    let examples = task.examples(Split::Test)?;
    for (dtype, bound) in [(Dtype::F32, 1e-4f32), (Dtype::Q8, 0.1)] {
        let options = PackOptions {
            sequence: Some(1),
            store_prefix: true,
            vocab: VocabChoice::Full,
            dtype,
            head: HeadChoice::Full,
            signing_key: None,
            provenance: ProvenanceInfo::default(),
        };
        let packed = pack(model, &tables, &task, &[0.0, 0.0], None, &options)?;
        let bytes = AlignedBytes::new(&packed.bytes);
        let bundle = Bundle::parse(bytes.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(bundle.header().config.arch, Architecture::QWEN2);
        assert_eq!(bundle.header().config.vocab_size, 257);
        let reference = host_reference(model, &bundle, &examples, None)?;
        let report = compare(&reference, &bundle, best())?;
        println!(
            "qwen2 {dtype:?} bundle: max |Δ label logit| {:.2e} on {} test prompts, agreement {}",
            report.max_abs_logit_diff,
            report.cases.len(),
            report.agreement
        );
        assert_eq!(report.token_id_mismatches, 0);
        assert!(
            report.max_abs_logit_diff < bound,
            "{dtype:?}: {}",
            report.max_abs_logit_diff
        );
    }
    Ok(())
}

/// Qwen2's own pre-tokenizer (its regex splits letters after punctuation and digits otherwise)
/// is not the runtime's: the model loads and runs on the host, and packing it is refused with
/// the reason.
#[test]
fn a_pre_tokenizer_the_runtime_lacks_is_refused_for_bundles() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint(dir.path())?;
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    tokenizer["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex":
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
            "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
    std::fs::write(&path, serde_json::to_vec(&tokenizer)?)?;
    let model = whittle_host::model::load(dir.path(), &Device::Cpu)?;
    assert_eq!(model.tokenizer.encode("(hi")?.len(), 3);
    let message = match model.tokenizer.tables() {
        Ok(_) => panic!("a Qwen2 pre-tokenizer was accepted for a bundle"),
        Err(error) => error.to_string(),
    };
    assert!(
        message.contains("pre-tokenizer") && message.contains("cannot be packed"),
        "{message}"
    );
    Ok(())
}
