//! The tokenizer and chat template, both read from the GGUF metadata.
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): candle builds it from `tokenizer.ggml.*`,
//! but for SmolLM2 (`tokenizer.ggml.pre = "smollm"`) it falls back to GPT-2's pre-tokenizer,
//! which merges digits and adds a prefix space. llama.cpp splits every digit and adds no prefix
//! space, so the pre-tokenizer is replaced by digits + byte-level, as in the model's
//! `tokenizer.json`.
//!
//! SentencePiece (`"llama"`, e.g. Gemma 3): the runtime's [`whittle_runtime::spm`], the one
//! implementation, over tables built from the token texts, scores and types as llama.cpp loads
//! them (`sentencepiece`).

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use whittle_runtime::format::{NO_TOKEN, PreTokenizer};
use whittle_runtime::writer::TokenizerTables;

use crate::gguf::{GgufFile, ModelError};

mod sentencepiece;
use sentencepiece::SentencePiece;

/// How a conversation is turned into text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`, with the default system message the model's
    /// template inserts when the conversation has none.
    ChatMl { default_system: Option<String> },
    /// The file has no template this code understands; only raw prompts can be used.
    Unsupported,
}

/// The model's tokenizer (byte-level BPE or SentencePiece) with its special tokens and chat
/// template.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    backend: Backend,
    stop_ids: Vec<u32>,
    pad_id: u32,
    chat_template: ChatTemplate,
}

#[derive(Clone, Debug)]
enum Backend {
    Bpe(Arc<Tokenizer>),
    SentencePiece(Arc<SentencePiece>),
}

/// A metadata value read as a token id.
fn token_id(gguf: &GgufFile, key: &str) -> Option<u32> {
    match gguf.metadata(key) {
        Some(Value::U32(id)) => Some(*id),
        Some(Value::I32(id)) => u32::try_from(*id).ok(),
        _ => None,
    }
}

/// `tokenizer_config.json` of a checkpoint, `null` when there is none.
fn read_tokenizer_config(dir: &Path) -> Result<serde_json::Value, String> {
    match std::fs::read(dir.join("tokenizer_config.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("tokenizer_config.json is not JSON ({e})")),
        Err(_) => Ok(serde_json::Value::Null),
    }
}

/// SmolLM2's byte-level BPE pre-tokenizer: single digits, then GPT-2's pattern.
fn smollm_pre_tokenizer() -> Sequence {
    Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])
}

/// Qwen2's (and Qwen2.5's) split pattern, before a byte-level step without a regex.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which of the runtime's pre-tokenizers (`runtime/src/tokenizer.rs`) `tokenizer` (its JSON)
/// uses: SmolLM2's or Qwen2's; any other would read some texts in other tokens in a bundle, so
/// it is refused. A normalizer may be absent or NFC (Qwen2's), which the runtime does not
/// apply: text in NFC, as nearly all text is, reads the same.
fn bundle_pre_tokenizer(tokenizer: &serde_json::Value) -> anyhow::Result<PreTokenizer> {
    let pre = &tokenizer["pre_tokenizer"];
    let qwen2 = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
            "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
            "use_regex": false}]});
    let kind = if *pre == serde_json::to_value(smollm_pre_tokenizer())? {
        PreTokenizer::Smollm
    } else if *pre == qwen2 {
        PreTokenizer::Qwen2
    } else {
        anyhow::bail!(
            "the runtime's byte-level BPE splits text as SmolLM2's or Qwen2's tokenizer does; this tokenizer's pre-tokenizer is another ({pre}), so a bundle would read some texts in other tokens: its model runs on the host (eval, prune) but cannot be packed yet"
        );
    };
    let normalizer = &tokenizer["normalizer"];
    if !normalizer.is_null() && normalizer["type"].as_str() != Some("NFC") {
        anyhow::bail!(
            "the tokenizer normalizes text ({normalizer}), which the runtime does not: a bundle would read some texts in other tokens"
        );
    }
    Ok(kind)
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let error = |reason: String| ModelError::Tokenizer {
            path: gguf.path().to_owned(),
            reason,
        };
        let text = |key: &str| {
            gguf.metadata(key)
                .and_then(|v| v.to_string().ok())
                .map(String::as_str)
        };
        let backend = match text("tokenizer.ggml.model") {
            Some("llama") => {
                Backend::SentencePiece(Arc::new(SentencePiece::from_gguf(gguf).map_err(error)?))
            }
            Some(other) if other != "gpt2" => {
                return Err(error(format!(
                    "tokenizer.ggml.model = {other} is a tokenizer type whittle does not implement"
                )));
            }
            _ => {
                let mut inner =
                    Tokenizer::from_gguf(gguf.content()).map_err(|e| error(e.to_string()))?;
                if text("tokenizer.ggml.pre") == Some("smollm") {
                    inner.with_pre_tokenizer(Some(smollm_pre_tokenizer()));
                }
                Backend::Bpe(Arc::new(inner))
            }
        };
        let eos = token_id(gguf, "tokenizer.ggml.eos_token_id")
            .ok_or_else(|| error("no tokenizer.ggml.eos_token_id".to_owned()))?;
        let pad_id = token_id(gguf, "tokenizer.ggml.padding_token_id").unwrap_or(eos);
        let chat_template = text("tokenizer.chat_template")
            .map(parse_chat_template)
            .unwrap_or(ChatTemplate::Unsupported);
        Ok(Self::from_parts(backend, eos, pad_id, chat_template))
    }

    /// The tokenizer of a Hugging Face checkpoint: `tokenizer.json` (a byte-level BPE), and
    /// from `tokenizer_config.json` the chat template and, by name, the end-of-sequence token
    /// (or `eos` from config.json).
    pub fn from_hf_dir(dir: &Path, eos: Option<u32>) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let error = |reason: String| ModelError::Tokenizer {
            path: path.clone(),
            reason,
        };
        let inner = Tokenizer::from_file(&path).map_err(|e| error(e.to_string()))?;
        let kind = serde_json::to_value(&inner)
            .ok()
            .and_then(|json| json["model"]["type"].as_str().map(str::to_owned));
        if kind.as_deref() != Some("BPE") {
            return Err(error(format!(
                "its model is {}, a tokenizer type whittle does not implement",
                kind.unwrap_or_else(|| "unknown".to_owned())
            )));
        }
        let config = read_tokenizer_config(dir).map_err(error)?;
        let named = |key: &str| {
            let token = &config[key];
            token
                .as_str()
                .or_else(|| token["content"].as_str())
                .and_then(|name| inner.token_to_id(name))
        };
        let eos = eos.or_else(|| named("eos_token")).ok_or_else(|| {
            error(
                "no eos_token_id in config.json and no eos_token in tokenizer_config.json"
                    .to_owned(),
            )
        })?;
        let pad_id = named("pad_token").unwrap_or(eos);
        let chat_template = config["chat_template"]
            .as_str()
            .map(parse_chat_template)
            .unwrap_or(ChatTemplate::Unsupported);
        Ok(Self::from_parts(
            Backend::Bpe(Arc::new(inner)),
            eos,
            pad_id,
            chat_template,
        ))
    }

    /// The SentencePiece tokenizer of a Hugging Face checkpoint (Gemma 3): `tokenizer.model`,
    /// and from `tokenizer_config.json` whether BOS and EOS are added (`add_bos_token`, true
    /// if absent; `add_eos_token`) and the chat template; the end-of-sequence token is `eos`
    /// (from config.json) or the model file's.
    pub fn from_sentencepiece_dir(dir: &Path, eos: Option<u32>) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.model");
        let error = |reason: String| ModelError::Tokenizer {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            error(format!(
                "cannot read it ({e}); a Gemma 3 checkpoint carries its SentencePiece model there"
            ))
        })?;
        let config = read_tokenizer_config(dir).map_err(error)?;
        let flag = |key: &str, default: bool| config[key].as_bool().unwrap_or(default);
        let (spm, model_eos) = SentencePiece::from_model_proto(
            &bytes,
            flag("add_bos_token", true),
            flag("add_eos_token", false),
        )
        .map_err(error)?;
        let eos = eos
            .or(model_eos)
            .ok_or_else(|| error("no end-of-sequence token".to_owned()))?;
        let chat_template = config["chat_template"]
            .as_str()
            .map(parse_chat_template)
            .unwrap_or(ChatTemplate::Unsupported);
        let backend = Backend::SentencePiece(Arc::new(spm));
        Ok(Self::from_parts(backend, eos, eos, chat_template))
    }

    fn from_parts(backend: Backend, eos: u32, pad_id: u32, chat_template: ChatTemplate) -> Self {
        let mut stop_ids = vec![eos];
        for special in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = backend.token_to_id(special)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        Self {
            backend,
            stop_ids,
            pad_id,
            chat_template,
        }
    }

    /// The byte-level BPE, or an error naming `what` SentencePiece models cannot do yet.
    fn bpe(&self, what: &str) -> anyhow::Result<&Tokenizer> {
        match &self.backend {
            Backend::Bpe(inner) => Ok(inner),
            Backend::SentencePiece(_) => anyhow::bail!("{what} of SentencePiece models: not yet"),
        }
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` (chat template, end-of-sequence
    /// token) into `dir`: what [`TextTokenizer::from_hf_dir`] reads; for a SentencePiece
    /// vocabulary `tokenizer.model` and a `tokenizer_config.json` with whether BOS and EOS are
    /// added, what [`TextTokenizer::from_sentencepiece_dir`] reads.
    pub fn save_hf(&self, dir: &Path, chat_template: Option<&str>) -> anyhow::Result<()> {
        if let Backend::SentencePiece(spm) = &self.backend {
            let model = spm.model_proto(self.stop_ids[0])?;
            whittle_boards::files::write_atomically(&dir.join("tokenizer.model"), &model)?;
            let (add_bos, add_eos) = spm.adds();
            let config = serde_json::json!({
                "add_bos_token": add_bos, "add_eos_token": add_eos, "chat_template": chat_template
            });
            whittle_boards::files::write_atomically(
                &dir.join("tokenizer_config.json"),
                serde_json::to_string_pretty(&config)?.as_bytes(),
            )?;
            return Ok(());
        }
        let json = self
            .bpe("Hugging Face checkpoints")?
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?;
        whittle_boards::files::write_atomically(&dir.join("tokenizer.json"), json.as_bytes())?;
        let eos = self.decode_special(self.stop_ids[0])?;
        let config = serde_json::json!({ "eos_token": eos, "chat_template": chat_template });
        whittle_boards::files::write_atomically(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        Ok(())
    }

    fn decode_special(&self, id: u32) -> anyhow::Result<String> {
        self.bpe("Hugging Face checkpoints")?
            .id_to_token(id)
            .ok_or_else(|| anyhow::anyhow!("token {id} is not in the vocabulary"))
    }

    /// The tables a bundle stores: every token's raw bytes (byte-level decoded; added tokens as
    /// written), the merges in rank order, the token of each byte, the special and stop ids.
    pub fn tables(&self) -> anyhow::Result<TokenizerTables> {
        if let Backend::SentencePiece(spm) = &self.backend {
            return spm.bundle_tables(&self.stop_ids);
        }
        let json = serde_json::to_value(self.bpe("bundles")?)?;
        let model = &json["model"];
        if model["type"].as_str() != Some("BPE") {
            anyhow::bail!("the bundle stores byte-level BPE tokenizers; this one is not BPE");
        }
        let pre_tokenizer = bundle_pre_tokenizer(&json)?;
        let vocab: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())?;
        let special = self.added_tokens();
        let size = vocab
            .values()
            .chain(special.iter().map(|(id, _)| id))
            .max()
            .map_or(0, |&id| id as usize + 1);
        let chars = byte_chars();
        let char_to_byte: HashMap<char, u8> = chars
            .iter()
            .enumerate()
            .map(|(byte, &c)| (c, byte as u8))
            .collect();
        let mut bytes = vec![Vec::new(); size];
        for (token, &id) in &vocab {
            let slot = &mut bytes[id as usize];
            for c in token.chars() {
                match char_to_byte.get(&c) {
                    Some(&b) => slot.push(b),
                    None => slot.extend_from_slice(c.to_string().as_bytes()),
                }
            }
        }
        for (id, content) in &special {
            bytes[*id as usize] = content.as_bytes().to_vec();
        }
        let mut merges = Vec::new();
        for merge in model["merges"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (left, right) = match (merge.as_str(), merge.as_array()) {
                (Some(text), _) => text.split_once(' ').unwrap_or((text, "")),
                (_, Some(pair)) => (
                    pair.first().and_then(|v| v.as_str()).unwrap_or(""),
                    pair.get(1).and_then(|v| v.as_str()).unwrap_or(""),
                ),
                _ => anyhow::bail!("a merge of the tokenizer is neither \"a b\" nor [a, b]"),
            };
            if let (Some(&l), Some(&r), Some(&m)) = (
                vocab.get(left),
                vocab.get(right),
                vocab.get(format!("{left}{right}").as_str()),
            ) {
                merges.push((l, r, m));
            }
        }
        let byte_tokens = chars
            .iter()
            .map(|c| {
                vocab
                    .get(c.to_string().as_str())
                    .copied()
                    .unwrap_or(NO_TOKEN)
            })
            .collect();
        Ok(TokenizerTables {
            vocab: bytes,
            merges,
            byte_tokens,
            special_ids: special.iter().map(|(id, _)| *id).collect(),
            stop_ids: self.stop_ids.clone(),
            trimmed: None,
            sentencepiece: None,
            pre_tokenizer,
        })
    }

    /// Token ids of a whole prompt (or document) as llama.cpp's `tokenize(text, add_special =
    /// true, parse_special = true)` gives them: special tokens written in the text (e.g.
    /// `<|im_start|>`) map to their ids. BPE adds no BOS (SmolLM2's `add_bos_token` is false);
    /// SentencePiece adds BOS (and EOS) as `tokenizer.ggml.add_bos_token` (`add_eos_token`)
    /// say.
    pub fn encode_prompt(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match &self.backend {
            Backend::Bpe(_) => self.encode(text),
            Backend::SentencePiece(spm) => spm.encode(text, true, None),
        }
    }

    /// [`Self::encode_prompt`] with, for a SentencePiece vocabulary, the token of every merge
    /// made on the way (what a trimmed vocabulary must keep to read `text` as the whole one
    /// does); none for BPE, whose merges the trim reads from its table.
    pub fn encode_prompt_with_merges(&self, text: &str) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
        match &self.backend {
            Backend::Bpe(_) => Ok((self.encode(text)?, Vec::new())),
            Backend::SentencePiece(spm) => {
                let mut merged = Vec::new();
                let ids = spm.encode(text, true, Some(&mut |id| merged.push(id)))?;
                Ok((ids, merged))
            }
        }
    }

    /// Token ids of `text` alone (`add_special = false`): a piece of a prompt, a label's word.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match &self.backend {
            Backend::Bpe(inner) => {
                let encoding = inner
                    .encode(text, false)
                    .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
                Ok(encoding.get_ids().to_vec())
            }
            Backend::SentencePiece(spm) => spm.encode(text, false, None),
        }
    }

    /// Text of token ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        match &self.backend {
            Backend::Bpe(inner) => inner
                .decode(ids, true)
                .map_err(|e| anyhow::anyhow!("detokenizing failed: {e}")),
            Backend::SentencePiece(spm) => spm.decode(ids),
        }
    }

    /// The added (special) tokens, matched literally in text: `(id, content)`, by id. For
    /// SentencePiece: the control, unknown and user-defined tokens.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        let mut tokens: Vec<(u32, String)> = match &self.backend {
            Backend::Bpe(inner) => inner
                .get_added_tokens_decoder()
                .into_iter()
                .map(|(id, token)| (id, token.content))
                .collect(),
            Backend::SentencePiece(spm) => spm.tables().map_or_else(
                |_| Vec::new(),
                |tables| {
                    (0..tables.vocab_size() as u32)
                        .filter(|&id| tables.token_type(id).is_literal(true))
                        .map(|id| (id, String::from_utf8_lossy(tables.token_bytes(id)).into()))
                        .collect()
                },
            ),
        };
        tokens.sort();
        tokens
    }

    /// Ids that end a generated answer.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Id used to pad batches (never attended to by real positions).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Bpe(inner) => inner.get_vocab_size(true),
            Backend::SentencePiece(spm) => spm.tables.token_types.len(),
        }
    }

    /// The chat template read from the metadata.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat_template
    }

    /// A single-turn chat prompt that ends inside the assistant's turn, after
    /// `assistant_prefix`, so the next token continues the answer.
    pub fn chat_prompt(
        &self,
        system: Option<&str>,
        user: &str,
        assistant_prefix: &str,
    ) -> anyhow::Result<String> {
        let ChatTemplate::ChatMl { default_system } = &self.chat_template else {
            anyhow::bail!(
                "the model's chat template is not ChatML, the only one whittle renders; use a task with chat = false"
            );
        };
        let mut text = String::new();
        if let Some(system) = system.or(default_system.as_deref()) {
            text.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
        }
        text.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n"));
        text.push_str("<|im_start|>assistant\n");
        text.push_str(assistant_prefix);
        Ok(text)
    }
}

impl Backend {
    fn token_to_id(&self, text: &str) -> Option<u32> {
        match self {
            Self::Bpe(inner) => inner.token_to_id(text),
            Self::SentencePiece(spm) => spm.tables().ok()?.token_id(text.as_bytes()),
        }
    }
}

/// GPT-2's byte ↔ printable-character table: `table[byte]` is the character standing for it.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

/// Recognises a ChatML Jinja template and the default system message it inserts.
fn parse_chat_template(template: &str) -> ChatTemplate {
    let template = template.replace("\\n", "\n");
    if !template.contains("<|im_start|>") || !template.contains("<|im_end|>") {
        return ChatTemplate::Unsupported;
    }
    const MARKER: &str = "<|im_start|>system\n";
    let default_system = template.find(MARKER).and_then(|start| {
        let rest = &template[start + MARKER.len()..];
        rest.find("<|im_end|>").map(|end| rest[..end].to_owned())
    });
    ChatTemplate::ChatMl { default_system }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, expected: ChatTemplate) {
        assert_eq!(parse_chat_template(template), expected);
    }

    #[test]
    fn chat_templates() {
        check(
            "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}",
            ChatTemplate::ChatMl {
                default_system: Some("You are SmolLM".to_owned()),
            },
        );
        check(
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'}}",
            ChatTemplate::ChatMl {
                default_system: None,
            },
        );
        check(
            "{{ bos_token }}[INST] {{ message }} [/INST]",
            ChatTemplate::Unsupported,
        );
    }
}
