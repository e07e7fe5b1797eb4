//! A tiny Qwen2 checkpoint (random weights under Hugging Face's names, q/k/v biases, the
//! half-split rotary layout, a byte-level tokenizer): the host's `--model DIR` loader and
//! forward pass against candle-transformers' `qwen2`, then the bundle the host packs from it
//! against the host in the runtime. No download.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen2;
use whittle_host::model::Batch;
use whittle_host::task::{Split, Task};
use whittle_runtime::{AlignedBytes, Architecture, Bundle};
use whittle_tests::{runtime_matches_the_host, seeded_tensor, write_tiny_task};

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const INTERMEDIATE: usize = 48;
const LAYERS: usize = 2;
/// Embedding rows: more than the tokenizer's 257 tokens (256 bytes and `<|endoftext|>`), as
/// Qwen2.5 pads its vocabulary.
const VOCAB: usize = 272;

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

/// Qwen2's split pattern, as its `tokenizer.json` spells it.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Writes Qwen2's `tokenizer.json` (NFC, its split pattern, byte-level) over the 256 bytes,
/// `merges` (pairs of tokens as byte-level strings, in rank order) and `<|endoftext|>`, and a
/// `tokenizer_config.json` naming it the end of sequence.
fn write_tokenizer(dir: &Path, merges: &[(String, String)]) -> anyhow::Result<()> {
    let mut vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), serde_json::Value::from(id)))
        .collect();
    for (left, right) in merges {
        let id = vocab.len() + 1; // 256 is <|endoftext|>
        vocab.insert(format!("{left}{right}"), serde_json::Value::from(id));
    }
    let merges: Vec<String> = merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let pre_tokenizer = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
            "invert": false},
        byte_level]});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 256, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "NFC"}, "pre_tokenizer": pre_tokenizer,
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tokenizer)?)?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )?;
    Ok(())
}

/// Writes `config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json`
/// of a tiny Qwen2 into `dir`; returns the tensors by Hugging Face name.
fn write_checkpoint(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut seed = 7u64;
    let mut tensor = |shape: &[usize], scale: f32| seeded_tensor(&mut seed, shape, scale);
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
    write_tokenizer(dir, &[])?;
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

    // The f32 bundle (prompt prefix stored, the embedding cut to the tokenizer's 257 tokens)
    // gives the host's label logits in the runtime; the q8 one stays close.
    let config = runtime_matches_the_host(&model, &write_tiny_task(dir.path())?)?;
    assert_eq!(config.arch, Architecture::QWEN2);
    assert_eq!(config.vocab_size, 257);
    Ok(())
}

/// Merges learned on `texts` read whole (so many cross the places where the pre-tokenizer
/// cuts): `n` rounds of merging the most frequent adjacent pair, as byte-level strings.
fn merges_across_pieces(texts: &[String], n: usize) -> Vec<(String, String)> {
    let chars = byte_chars();
    let mut words: Vec<Vec<String>> = texts
        .iter()
        .map(|t| t.bytes().map(|b| chars[b as usize].to_string()).collect())
        .collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut made: std::collections::HashSet<String> = chars.iter().map(|c| c.to_string()).collect();
    for _ in 0..n {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for word in &words {
            for pair in word.windows(2) {
                *counts
                    .entry((pair[0].clone(), pair[1].clone()))
                    .or_default() += 1;
            }
        }
        // The most frequent pair making a new token (ties by the pair, for determinism).
        let Some(best) = counts
            .into_iter()
            .filter(|(pair, _)| !made.contains(&format!("{}{}", pair.0, pair.1)))
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(pair, _)| pair)
        else {
            break;
        };
        for word in &mut words {
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == best.0 && word[i + 1] == best.1 {
                    merged.push(format!("{}{}", best.0, best.1));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            *word = merged;
        }
        made.insert(format!("{}{}", best.0, best.1));
        merges.push(best);
    }
    merges
}

/// The runtime cuts text as Qwen2's pattern does: with merges that cross the pattern's cuts, a
/// wrong cut changes the ids. Edge cases of each alternative (contractions in any case, a
/// letter run after punctuation or a tab, single digits, punctuation runs with line breaks,
/// whitespace runs with and without line breaks, text after a special token) and 300 SST-2
/// test sentences, against Hugging Face `tokenizers`.
#[test]
fn the_runtime_cuts_text_as_qwen2s_pattern() -> anyhow::Result<()> {
    let mut texts: Vec<String> = [
        "It's THEY'RE we'Ve I'M you'LL he'd 'tis 'S",
        "(hello) [world] {x}y \"quoted\" 'apostrophe",
        "tab\tsep\tvalues and \u{a0}nbsp",
        "12345 abc123def 3.14159 1,000,000 ٣٤ ½",
        "Wait...!!!\n\nNext line?\r\n\r\nok",
        "spaces   between    words   \n   \n  indented",
        "trailing spaces   ",
        "  leading",
        "\n\n\nnewlines first",
        "café naïve 日本語のテキスト Ελληνικά Русский",
        "emoji 🎉🎉 party!! :-) <3",
        "a<|endoftext|>b <|endoftext|> c",
        "x\n",
        "''''",
        "- dash -- double --- triple",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let task = Task::resolve("sst2")?;
    let sentences: Vec<String> = task
        .examples(Split::Test)?
        .into_iter()
        .take(300)
        .filter_map(|e| e.prompt.user.lines().last().map(str::to_owned))
        .collect();
    texts.extend(sentences);
    let dir = tempfile::tempdir()?;
    write_tokenizer(dir.path(), &merges_across_pieces(&texts, 400))?;
    let host = whittle_host::tokenizer::TextTokenizer::from_hf_dir(dir.path(), None)?;
    let tables = host.tables()?;
    assert_eq!(
        tables.pre_tokenizer,
        whittle_runtime::format::PreTokenizer::Qwen2
    );
    let bytes = whittle_runtime::writer::synthetic_bundle_with_tables(&tables)?;
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = whittle_runtime::Tokenizer::new(&bundle);
    let mut merged_tokens = 0;
    for text in &texts {
        let expected = host.encode(text)?;
        let mut out = heapless::Vec::<u32, 4096>::new();
        runtime
            .encode(&[text], &mut out)
            .map_err(|e| anyhow::anyhow!("{text:?}: {e}"))?;
        assert_eq!(out.as_slice(), expected.as_slice(), "{text:?}");
        merged_tokens += expected.iter().filter(|&&id| id > 256).count();
    }
    // The merges are used, so a cut in the wrong place would show.
    println!(
        "qwen2 pre-tokenizer: {} texts read alike by the runtime and tokenizers, {merged_tokens} merged tokens",
        texts.len()
    );
    assert!(merged_tokens > 1000, "{merged_tokens}");
    Ok(())
}

/// A pre-tokenizer the runtime lacks (Llama 3's: digits in runs of up to three) is refused
/// for bundles with the reason; the model still loads and runs on the host.
#[test]
fn a_pre_tokenizer_the_runtime_lacks_is_refused_for_bundles() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_checkpoint(dir.path())?;
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let llama3 = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|");
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = llama3.into();
    std::fs::write(&path, serde_json::to_vec(&tokenizer)?)?;
    let model = whittle_host::model::load(dir.path(), &Device::Cpu)?;
    assert_eq!(model.tokenizer.encode("123")?.len(), 3);
    let message = match model.tokenizer.tables() {
        Ok(_) => panic!("Llama 3's pre-tokenizer was accepted for a bundle"),
        Err(error) => error.to_string(),
    };
    assert!(
        message.contains("pre-tokenizer") && message.contains("cannot be packed"),
        "{message}"
    );
    Ok(())
}

/// A checkpoint tensor in a dtype the loader does not read (an integer one, as a quantized
/// export would hold) is refused with the tensor, its dtype and what is read.
#[test]
fn a_tensor_of_an_unknown_dtype_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut tensors = write_checkpoint(dir.path())?;
    let name = "model.layers.1.mlp.up_proj.weight";
    let quantized = tensors[name]
        .abs()?
        .affine(100.0, 0.0)?
        .to_dtype(DType::U8)?;
    tensors.insert(name.to_owned(), quantized);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors"))?;
    let message = match whittle_host::model::load(dir.path(), &Device::Cpu) {
        Ok(_) => panic!("a u8 tensor was read as a weight"),
        Err(error) => error.to_string(),
    };
    assert!(
        message.contains(name) && message.contains("U8") && message.contains("bf16, f16 and f32"),
        "{message}"
    );
    Ok(())
}
