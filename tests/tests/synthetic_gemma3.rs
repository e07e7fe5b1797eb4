//! A tiny Gemma 3 checkpoint (random weights under Hugging Face's names, its norms stored as
//! `w` for `1 + w`, query/key head norms, the half-split rotary layout, local and global
//! layers, a SentencePiece `tokenizer.model`): the host's `--model DIR` loader and forward pass
//! against candle-transformers' `gemma3` (not its `quantized_gemma3`, whose MLP uses SiLU),
//! then the bundle the host packs from it against the host in the runtime. No download.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::gemma3;
use whittle_host::model::Batch;
use whittle_runtime::Architecture;
use whittle_tests::{runtime_matches_the_host, seeded_tensor, write_tiny_task};

const HIDDEN: usize = 32;
const HEADS: usize = 2;
const HEAD_DIM: usize = 24;
const INTERMEDIATE: usize = 48;
const LAYERS: usize = 3;
const VOCAB: usize = 300;
/// Positions a local layer sees, its own included (Hugging Face's and llama.cpp's count).
const WINDOW: usize = 4;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn field_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_varint(out: &mut Vec<u8>, number: u64, value: u64) {
    varint(out, number << 3);
    varint(out, value);
}

/// A SentencePiece `ModelProto`: control `<pad>`, `<eos>`, `<bos>`, unknown `<unk>`, the 256
/// byte pieces, then normal pieces (scores falling); no dummy prefix; BOS 2, EOS 1.
fn tokenizer_model() -> Vec<u8> {
    let mut pieces: Vec<(String, f32, u64)> = vec![
        ("<pad>".into(), 0.0, 3),
        ("<eos>".into(), 0.0, 3),
        ("<bos>".into(), 0.0, 3),
        ("<unk>".into(), 0.0, 2),
    ];
    pieces.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    let words = [
        "▁", "a", "b", "e", "i", "o", "l", "n", "r", "▁a", "▁b", "▁f", "▁g", "▁w", "▁o", "oo",
        "▁good", "▁bad", "▁fine", "▁odd", "▁grim", "▁warm", "▁film", "Review", ":", "Label", "il",
        "im", "ar", "▁fi", "▁gr", "▁wa", "in", "ne", "rm", "ad", "od", "dd", "▁Re",
    ];
    for (i, word) in words.iter().enumerate().take(VOCAB - pieces.len()) {
        pieces.push((word.to_string(), -1.0 - i as f32, 1));
    }
    let mut model = Vec::new();
    for (text, score, kind) in &pieces {
        let mut piece = Vec::new();
        field_bytes(&mut piece, 1, text.as_bytes());
        varint(&mut piece, 2 << 3 | 5);
        piece.extend_from_slice(&score.to_le_bytes());
        field_varint(&mut piece, 3, *kind);
        field_bytes(&mut model, 1, &piece);
    }
    let mut trainer = Vec::new();
    field_varint(&mut trainer, 41, 2);
    field_varint(&mut trainer, 42, 1);
    field_bytes(&mut model, 2, &trainer);
    let mut normalizer = Vec::new();
    field_varint(&mut normalizer, 3, 0);
    field_bytes(&mut model, 3, &normalizer);
    model
}

/// Writes the checkpoint into `dir`; returns its tensors by Hugging Face name (the vocabulary
/// padded to [`VOCAB`] rows).
fn write_checkpoint(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut seed = 11u64;
    let mut tensor = |shape: &[usize], scale: f32| seeded_tensor(&mut seed, shape, scale);
    let mut tensors = HashMap::new();
    let mut put = |name: String, t: Tensor| tensors.insert(name, t);
    put(
        "model.embed_tokens.weight".into(),
        tensor(&[VOCAB, HIDDEN], 1.0)?,
    );
    // Norm weights as Gemma stores them: the model multiplies by 1 + w.
    put("model.norm.weight".into(), tensor(&[HIDDEN], 0.3)?);
    let (q_rows, kv_rows) = (HEADS * HEAD_DIM, HEAD_DIM);
    for layer in 0..LAYERS {
        let name = |suffix: &str| format!("model.layers.{layer}.{suffix}.weight");
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            put(name(norm), tensor(&[HIDDEN], 0.3)?);
        }
        put(name("self_attn.q_norm"), tensor(&[HEAD_DIM], 0.3)?);
        put(name("self_attn.k_norm"), tensor(&[HEAD_DIM], 0.3)?);
        let scale = |cols: usize| 1.7 / (cols as f32).sqrt();
        for (proj, rows, cols) in [
            ("self_attn.q_proj", q_rows, HIDDEN),
            ("self_attn.k_proj", kv_rows, HIDDEN),
            ("self_attn.v_proj", kv_rows, HIDDEN),
            ("self_attn.o_proj", HIDDEN, q_rows),
            ("mlp.gate_proj", INTERMEDIATE, HIDDEN),
            ("mlp.up_proj", INTERMEDIATE, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTERMEDIATE),
        ] {
            put(name(proj), tensor(&[rows, cols], scale(cols))?);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS, "num_key_value_heads": 1, "head_dim": HEAD_DIM,
        "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "max_position_embeddings": 1024,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rms_norm_eps": 1e-6,
        "sliding_window": WINDOW, "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "query_pre_attn_scalar": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": null, "attn_logit_softcapping": null,
        "attention_bias": false, "tie_word_embeddings": true, "eos_token_id": 1,
        "bos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(dir.join("tokenizer.model"), tokenizer_model())?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "add_eos_token": false}"#,
    )?;
    Ok(tensors)
}

#[test]
fn a_gemma3_checkpoint_matches_candle_transformers_and_its_bundle_the_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tensors = write_checkpoint(dir.path())?;
    let device = Device::Cpu;
    let model = whittle_host::model::load(dir.path(), &device)?;
    let arch = Architecture {
        global_every: 2,
        ..Architecture::gemma3(WINDOW)
    };
    assert_eq!(model.llama.config().arch, arch);
    let ids = model.tokenizer.encode_prompt(" good film")?;
    assert_eq!(ids.first(), Some(&2), "BOS first");
    assert_eq!(model.tokenizer.decode(&ids)?, " good film");

    // candle-transformers reads the same files its own way: half-split rotation, `1 + w`
    // norms, GELU. Its window counts the positions before the query's own (a query sees
    // `sliding_window + 1`), one more than Hugging Face's and llama.cpp's, hence one less here.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
    json["sliding_window"] = (WINDOW - 1).into();
    let config: gemma3::Config = serde_json::from_value(json)?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
    let mut reference = gemma3::Model::new(false, &config, vb)?;
    // Longer than the window, so the local layers' masks matter.
    let prompts: [&[u32]; 3] = [
        &[2, 276, 282, 4, 150, 261, 262, 270, 275, 280, 281, 290],
        &[2, 299, 17, 99],
        &[
            2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
        ],
    ];
    let mut max_diff = 0f32;
    for prompt in prompts {
        reference.clear_kv_cache();
        let input = Tensor::new(prompt, &device)?.unsqueeze(0)?;
        let theirs = reference.forward(&input, 0)?.flatten_all()?;
        let hidden = model
            .llama
            .last_hidden(&Batch::new(&[prompt.to_vec()], 0, &device)?)?;
        let ours = model.llama.logits(&hidden)?.flatten_all()?;
        assert_eq!(ours.dims(), theirs.dims());
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        max_diff = max_diff.max(diff);
    }
    println!("gemma3: max |Δ logit| against candle-transformers {max_diff:.2e}");
    assert!(max_diff < 1e-4, "{max_diff}");

    let config = runtime_matches_the_host(&model, &write_tiny_task(dir.path())?)?;
    assert_eq!(config.arch, arch);
    Ok(())
}
