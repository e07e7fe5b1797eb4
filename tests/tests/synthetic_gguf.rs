//! A tiny Llama written as GGUF: the host's loader and forward pass against
//! candle-transformers' `quantized_llama`, and every bad-file case. No download.

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use whittle_host::gguf::{GgufFile, read_llama_tensors};
use whittle_host::model::{Batch, Llama};
use whittle_tests::{write_tiny_gguf, write_tiny_gguf_with};

fn open_error(path: &std::path::Path) -> String {
    match GgufFile::open(path).and_then(|g| g.config().map(|_| g)) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn host_forward_matches_candle_transformers_on_a_tiny_gguf() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    let config = write_tiny_gguf(&path, "llama", 11, &[]);
    let device = Device::Cpu;

    let mut gguf = GgufFile::open(&path)?;
    assert_eq!(gguf.config()?, config);
    let tensors = read_llama_tensors(&mut gguf, &config, &device)?;
    let llama = Llama::from_tensors(config, &tensors, &device)?;

    let mut file = std::fs::File::open(&path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut reference = ModelWeights::from_gguf(content, &mut file, &device)?;

    let prompt: Vec<u32> = vec![5, 17, 33, 2, 60, 41, 9, 12, 50];
    let ours = llama.last_hidden(&Batch::new(std::slice::from_ref(&prompt), 0, &device)?)?;
    let ours = llama.logits(&ours)?;
    let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let theirs = reference.forward(&input, 0)?;
    let diff = (ours - theirs)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-4, "max abs difference {diff}");
    Ok(())
}

#[test]
fn truncated_file_names_the_missing_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cut.gguf");
    write_tiny_gguf(&path, "llama", 1, &[]);
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3])?;
    let message = open_error(&path);
    assert!(message.contains("is truncated"), "{message}");
    assert!(message.contains("download the model again"), "{message}");

    std::fs::write(&path, &bytes[..40])?;
    let message = open_error(&path);
    assert!(message.contains("not a readable GGUF file"), "{message}");
    Ok(())
}

#[test]
fn corrupt_file_is_not_gguf() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("noise.gguf");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, noise)?;
    let message = open_error(&path);
    assert!(message.contains("not a readable GGUF file"), "{message}");
    assert!(!message.contains('\n'), "{message}");

    let message = open_error(&dir.path().join("absent.gguf"));
    assert!(message.contains("cannot open model file"), "{message}");
    Ok(())
}

#[test]
fn other_architectures_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gpt2.gguf");
    write_tiny_gguf(&path, "gpt2", 1, &[]);
    let message = open_error(&path);
    assert!(message.contains("holds a `gpt2` model"), "{message}");
    assert!(message.contains("llama and gemma3"), "{message}");
    Ok(())
}

#[test]
fn an_unimplemented_tokenizer_type_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("wordpiece.gguf");
    let model = candle_core::quantized::gguf_file::Value::String("bert".to_owned());
    write_tiny_gguf_with(&path, "llama", 1, &[], &[("tokenizer.ggml.model", model)]);
    let gguf = GgufFile::open(&path)?;
    let message = match whittle_host::tokenizer::TextTokenizer::from_gguf(&gguf) {
        Ok(_) => panic!("a bert tokenizer should be refused"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("tokenizer.ggml.model = bert"), "{message}");
    assert!(
        message.contains("gpt2") && message.contains("llama"),
        "{message}"
    );
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("holed.gguf");
    let config = write_tiny_gguf(&path, "llama", 1, &["blk.1.ffn_down.weight"]);
    let mut gguf = GgufFile::open(&path)?;
    let error = read_llama_tensors(&mut gguf, &config, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("no tensor `blk.1.ffn_down.weight`"),
        "{error}"
    );
    Ok(())
}
