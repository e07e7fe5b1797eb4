//! Real-model test: Gemma 3's SentencePiece tokenizer gives llama.cpp's ids.
//!
//! The reference ids were recorded by `tests/data/record_llamacpp_gemma3_token_ids.py`
//! (llama.cpp `tokenize(text, add_special = true, parse_special = true)`): a list of strings
//! and every sentence of `data/sst2/dev.tsv`.

use serde::Deserialize;
use whittle_host::gguf::GgufFile;
use whittle_host::tokenizer::{ChatTemplate, TextTokenizer};
use whittle_tests::gemma3_path;

#[derive(Deserialize)]
struct Recorded {
    cases: Vec<Case>,
    sst2_dev: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

/// Control tokens written in the recorded strings; decoding skips them, so those strings do
/// not round-trip.
const CONTROL_TEXTS: [&str; 3] = ["<start_of_turn>", "<end_of_turn>", "</s>"];

fn tokenizer() -> TextTokenizer {
    let gguf = GgufFile::open(&gemma3_path()).unwrap_or_else(|e| panic!("{e}"));
    TextTokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"))
}

/// The `sentence` column of data/sst2/dev.tsv, verbatim, as the task's TSV reader gives it.
fn sst2_dev_sentences() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sst2/dev.tsv");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines().filter(|line| !line.is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let column = header.iter().position(|&c| c == "sentence").unwrap_or(0);
    lines
        .map(|line| line.split('\t').nth(column).unwrap_or_default().to_owned())
        .collect()
}

fn check(tokenizer: &TextTokenizer, text: &str, expected: &[u32]) -> anyhow::Result<()> {
    assert_eq!(tokenizer.encode_prompt(text)?, expected, "{text:?}");
    if !CONTROL_TEXTS.iter().any(|control| text.contains(control)) {
        assert_eq!(tokenizer.decode(expected)?, text);
    }
    Ok(())
}

#[test]
fn real_model_gemma3_token_ids_equal_llama_cpp() -> anyhow::Result<()> {
    let recorded: Recorded =
        serde_json::from_str(include_str!("../data/llamacpp_gemma3_token_ids.json"))?;
    let sentences = sst2_dev_sentences();
    assert!(recorded.cases.len() >= 10);
    assert_eq!(sentences.len(), recorded.sst2_dev.len());
    let tokenizer = tokenizer();
    for case in &recorded.cases {
        check(&tokenizer, &case.text, &case.ids)?;
    }
    for (text, ids) in sentences.iter().zip(&recorded.sst2_dev) {
        check(&tokenizer, text, ids)?;
    }
    Ok(())
}

#[test]
fn real_model_gemma3_tokenizer_metadata() -> anyhow::Result<()> {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.vocab_size(), 262_144);
    assert_eq!(tokenizer.stop_ids(), [1, 106]);
    assert_eq!(tokenizer.pad_id(), 0);
    assert_eq!(tokenizer.chat_template(), &ChatTemplate::Unsupported);
    // The bundle's tables: the texts, scores and types, the byte tokens, BOS.
    let tables = tokenizer.tables()?;
    assert_eq!(tables.vocab.len(), 262_144);
    assert!(tables.merges.is_empty());
    assert_eq!(tables.byte_tokens[0x41], 238 + 0x41);
    let spm = tables.sentencepiece.expect("SentencePiece tables");
    assert_eq!(spm.bos, Some(2));
    assert_eq!(spm.scores.len(), 262_144);
    assert_eq!(
        spm.token_types[212], 3,
        "`</s>` is a control token, as llama.cpp makes it"
    );
    Ok(())
}
