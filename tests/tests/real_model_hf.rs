//! Real models (fetch SmolLM2-135M-Instruct, 98 MB, and Gemma 3 270M, 253 MB, once, into the
//! model cache; write 540 MB and 1.07 GB checkpoints into temporary folders): each GGUF written
//! back as a Hugging Face checkpoint (f32 tensors under their Hugging Face names, q and k rows
//! in the half-split rotary order, Gemma's norms as `w − 1`, config.json, tokenizer.json or
//! Gemma's SentencePiece tokenizer.model, tokenizer_config.json) and loaded through `--model
//! DIR` gives the GGUF path's token ids, bundle tokenizer tables, chat prompt and logits.

use candle_core::Device;
use candle_core::quantized::gguf_file::Value;
use whittle_host::eval::prompt_ids;
use whittle_host::gguf::GgufFile;
use whittle_host::model::{self, BaseModel, Batch};
use whittle_host::task::{Split, Task};
use whittle_tests::{gemma3_path, real_model_path};

#[test]
fn real_model_hugging_face_checkpoint_equals_the_gguf() -> anyhow::Result<()> {
    let path = real_model_path();
    let gguf_model = model::load(&path, &Device::Cpu)?;
    let gguf = GgufFile::open(&path)?;
    let template = match gguf.metadata("tokenizer.chat_template") {
        Some(Value::String(text)) => Some(text.clone()),
        _ => None,
    };
    let dir = tempfile::tempdir()?;
    whittle_host::hf::write_checkpoint(&gguf_model, template.as_deref(), dir.path())?;
    let base = BaseModel::open(dir.path(), &Device::Cpu)?;
    let hf_model = &base.model;
    assert_eq!(base.digest.len(), 64);
    reads_as_the_gguf(hf_model, &gguf_model, "sst2-dev", 8)?;

    // A config.json that disagrees with the tensors, and a tokenizer of a type not implemented.
    let config_path = dir.path().join("config.json");
    let original = std::fs::read(&config_path)?;
    let mut config: serde_json::Value = serde_json::from_slice(&original)?;
    config["intermediate_size"] = 1024.into();
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let refusal = |dir: &std::path::Path| match model::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(error) => error.to_string(),
    };
    let message = refusal(dir.path());
    assert!(
        message.contains("model.layers.0.mlp.gate_proj.weight") && message.contains("[1024, 576]"),
        "{message}"
    );
    std::fs::write(&config_path, original)?;
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "<unk>": 1}, "unk_token": "<unk>"}}"#,
    )?;
    let message = refusal(dir.path());
    assert!(
        message.contains("WordLevel") && message.contains("not implement"),
        "{message}"
    );
    Ok(())
}

#[test]
fn real_model_gemma3_hugging_face_checkpoint_equals_the_gguf() -> anyhow::Result<()> {
    let gguf_model = model::load(&gemma3_path(), &Device::Cpu)?;
    let dir = tempfile::tempdir()?;
    whittle_host::hf::write_checkpoint(&gguf_model, None, dir.path())?;
    assert!(dir.path().join("tokenizer.model").is_file());
    let base = BaseModel::open(dir.path(), &Device::Cpu)?;
    let hf_model = &base.model;
    reads_as_the_gguf(hf_model, &gguf_model, "sst2", 6)?;

    // Without tokenizer.model the checkpoint names the file it needs.
    std::fs::remove_file(dir.path().join("tokenizer.model"))?;
    let message = match model::load(dir.path(), &Device::Cpu) {
        Ok(_) => panic!("a Gemma 3 checkpoint without tokenizer.model loaded"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("tokenizer.model"), "{message}");
    Ok(())
}

/// `hf_model` (a checkpoint written from `gguf_model`) reads as the GGUF does: the same config,
/// stop ids, chat template and bundle tokenizer tables, the same token ids on the first `n`
/// test prompts of `task`, and bit-identical logits over the whole vocabulary.
fn reads_as_the_gguf(
    hf_model: &model::LoadedModel,
    gguf_model: &model::LoadedModel,
    task: &str,
    n: usize,
) -> anyhow::Result<()> {
    assert_eq!(hf_model.llama.config(), gguf_model.llama.config());
    assert_eq!(
        hf_model.llama.head_is_tied(),
        gguf_model.llama.head_is_tied()
    );
    assert_eq!(
        hf_model.tokenizer.stop_ids(),
        gguf_model.tokenizer.stop_ids()
    );
    assert_eq!(
        hf_model.tokenizer.chat_template(),
        gguf_model.tokenizer.chat_template()
    );
    let (a, b) = (hf_model.tokenizer.tables()?, gguf_model.tokenizer.tables()?);
    assert_eq!(
        (&a.vocab, &a.merges, &a.byte_tokens, &a.special_ids),
        (&b.vocab, &b.merges, &b.byte_tokens, &b.special_ids)
    );
    assert_eq!(a.sentencepiece, b.sentencepiece);
    let task = Task::resolve(task)?;
    let examples: Vec<_> = task.examples(Split::Test)?.into_iter().take(n).collect();
    let ids = |m: &model::LoadedModel| -> anyhow::Result<Vec<Vec<u32>>> {
        examples
            .iter()
            .map(|e| prompt_ids(&m.tokenizer, &e.prompt))
            .collect()
    };
    let (hf_ids, gguf_ids) = (ids(hf_model)?, ids(gguf_model)?);
    assert_eq!(hf_ids, gguf_ids);
    let logits = |m: &model::LoadedModel| -> anyhow::Result<Vec<Vec<f32>>> {
        let batch = Batch::new(&gguf_ids, m.tokenizer.pad_id(), &Device::Cpu)?;
        let last = m.llama.last_hidden(&batch)?;
        Ok(m.llama.logits(&last)?.to_vec2::<f32>()?)
    };
    let (hf_logits, gguf_logits) = (logits(hf_model)?, logits(gguf_model)?);
    assert_eq!(hf_logits.len(), n);
    let max_diff = hf_logits
        .iter()
        .flatten()
        .zip(gguf_logits.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{}: max |Δ logit| against the GGUF {max_diff:.2e} ({n} prompts, the whole vocabulary)",
        task.name()
    );
    assert!(
        hf_logits == gguf_logits,
        "the checkpoint's logits differ from the GGUF's"
    );
    Ok(())
}
