//! The tokenizer and chat template, both read from the GGUF metadata.
//!
//! candle builds the byte-level BPE from `tokenizer.ggml.*`, but for SmolLM2
//! (`tokenizer.ggml.pre = "smollm"`) it falls back to GPT-2's pre-tokenizer, which merges
//! digits and adds a prefix space. llama.cpp splits every digit and adds no prefix space, so
//! the pre-tokenizer is replaced by digits + byte-level, as in the model's `tokenizer.json`.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use crate::gguf::{GgufFile, ModelError};

/// How a conversation is turned into text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`, with the default system message the model's
    /// template inserts when the conversation has none.
    ChatMl { default_system: Option<String> },
    /// The file has no template this code understands; only raw prompts can be used.
    Unsupported,
}

/// Byte-level BPE tokenizer with the model's special tokens and chat template.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: std::sync::Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    pad_id: u32,
    chat_template: ChatTemplate,
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let error = |reason: String| ModelError::Tokenizer {
            path: gguf.path().to_owned(),
            reason,
        };
        let mut inner = Tokenizer::from_gguf(gguf.content()).map_err(|e| error(e.to_string()))?;
        let pre = gguf
            .metadata("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        if pre == Some("smollm") {
            let digits = Digits::new(true);
            let byte_level = ByteLevel::new(false, true, true);
            inner.with_pre_tokenizer(Some(Sequence::new(vec![digits.into(), byte_level.into()])));
        }
        let token_id = |key: &str| match gguf.metadata(key) {
            Some(Value::U32(id)) => Some(*id),
            Some(Value::I32(id)) => u32::try_from(*id).ok(),
            _ => None,
        };
        let eos = token_id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| error("no tokenizer.ggml.eos_token_id".to_owned()))?;
        let mut stop_ids = vec![eos];
        for special in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = inner.token_to_id(special)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        let pad_id = token_id("tokenizer.ggml.padding_token_id").unwrap_or(eos);
        let chat_template = gguf
            .metadata("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(|t| parse_chat_template(t))
            .unwrap_or(ChatTemplate::Unsupported);
        Ok(Self {
            inner: std::sync::Arc::new(inner),
            stop_ids,
            pad_id,
            chat_template,
        })
    }

    /// Token ids of `text`; special tokens written in the text (e.g. `<|im_start|>`) map to
    /// their ids. No BOS is added (SmolLM2's `add_bos_token` is false).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of token ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("detokenizing failed: {e}"))
    }

    /// The added (special) tokens, matched literally in text: `(id, content)`, by id.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        let mut tokens: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, token)| (id, token.content))
            .collect();
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
        self.inner.get_vocab_size(true)
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
