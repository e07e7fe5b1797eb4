//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, e.g. Gemma 3) read from the
//! GGUF metadata into the runtime's [`whittle_runtime::spm`] tables, the one implementation.

use candle_core::quantized::gguf_file::Value;
use whittle_runtime::format::NO_TOKEN;
use whittle_runtime::spm::{OwnedSpmTables, SpmTables, TokenType};
use whittle_runtime::writer::{SentencePieceTables, TokenizerTables};

use super::token_id;
use crate::gguf::GgufFile;

/// A SentencePiece vocabulary as the runtime's tables, with what llama.cpp adds around it.
pub(super) struct SentencePiece {
    pub(super) tables: OwnedSpmTables,
    /// BOS, when `tokenizer.ggml.add_bos_token` asks for it.
    bos: Option<u32>,
    /// EOS, when `tokenizer.ggml.add_eos_token` asks for it.
    eos: Option<u32>,
}

impl std::fmt::Debug for SentencePiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentencePiece")
            .field("vocab_size", &self.tables.token_types.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Token texts llama.cpp makes control tokens whatever their type (its end-of-generation
/// names, `llama_vocab::impl::load`).
const LLAMA_CPP_CONTROL_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl SentencePiece {
    /// The vocabulary of `tokenizer.ggml.{tokens,scores,token_type}` as llama.cpp loads it:
    /// an empty token reads `[EMPTY_<id>]`, a missing score is 0, a missing type normal, and
    /// the texts of [`LLAMA_CPP_CONTROL_TEXTS`] are control tokens (for Gemma 3: `</s>`, a
    /// user-defined token, is then matched only when parsing specials and never decoded).
    pub(super) fn from_gguf(gguf: &GgufFile) -> Result<Self, String> {
        let flag = |key: &str, default: bool| {
            gguf.metadata(key)
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default)
        };
        if flag("tokenizer.ggml.add_space_prefix", true) {
            return Err(
                "tokenizer.ggml.add_space_prefix is true (or absent, which llama.cpp reads as true): a SentencePiece tokenizer that adds a space before the text is not implemented".into(),
            );
        }
        let array = |key: &str| gguf.metadata(key).and_then(|v| v.to_vec().ok());
        let tokens = array("tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let mut texts = Vec::with_capacity(n);
        for (id, token) in tokens.iter().enumerate() {
            let text = token
                .to_string()
                .map_err(|_| format!("token {id} is not a string"))?;
            texts.push(if text.is_empty() {
                format!("[EMPTY_{id}]")
            } else {
                text.clone()
            });
        }
        let scores = match array("tokenizer.ggml.scores") {
            Some(values) => values
                .iter()
                .map(|v| match v {
                    Value::F32(score) => Some(*score),
                    Value::I32(score) => Some(*score as f32),
                    _ => None,
                })
                .collect::<Option<Vec<f32>>>()
                .filter(|scores| scores.len() >= n)
                .ok_or("tokenizer.ggml.scores is not one f32 or i32 per token")?,
            None => vec![0.0; n],
        };
        let mut types = match array("tokenizer.ggml.token_type") {
            Some(values) => values
                .iter()
                .map(|v| match v {
                    Value::I32(kind) => Some(u8::try_from(*kind).unwrap_or(0)),
                    _ => None,
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|types| types.len() >= n)
                .ok_or("tokenizer.ggml.token_type is not one i32 per token")?,
            None => vec![TokenType::Normal as u8; n],
        };
        for (text, kind) in texts.iter().zip(types.iter_mut()) {
            if LLAMA_CPP_CONTROL_TEXTS.contains(&text.as_str()) {
                *kind = TokenType::Control as u8;
            }
        }
        let tables =
            OwnedSpmTables::build(&texts, &scores[..n], &types[..n]).map_err(|e| e.to_string())?;
        let id_of = |key: &str| token_id(gguf, key).filter(|&id| (id as usize) < n);
        let (bos, eos) = (
            id_of("tokenizer.ggml.bos_token_id"),
            id_of("tokenizer.ggml.eos_token_id"),
        );
        let add_bos = flag("tokenizer.ggml.add_bos_token", true);
        let add_eos = flag("tokenizer.ggml.add_eos_token", false);
        if (add_bos && bos.is_none()) || (add_eos && eos.is_none()) {
            return Err(
                "add_bos_token or add_eos_token is true but the token id is missing".into(),
            );
        }
        Ok(Self {
            tables,
            bos: bos.filter(|_| add_bos),
            eos: eos.filter(|_| add_eos),
        })
    }

    pub(super) fn tables(&self) -> anyhow::Result<SpmTables<'_>> {
        Ok(self.tables.tables()?)
    }

    /// Ids of `text`, with BOS and EOS around them (as the vocabulary asks) when `whole`;
    /// `merged`, when given, receives the token of every merge on the way.
    pub(super) fn encode(
        &self,
        text: &str,
        whole: bool,
        merged: Option<&mut dyn FnMut(u32)>,
    ) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 2);
        ids.extend(self.bos.filter(|_| whole));
        self.tables()?
            .encode_to_vec(&[text], true, &mut ids, merged)?;
        ids.extend(self.eos.filter(|_| whole));
        Ok(ids)
    }

    /// The tables a bundle stores: every token's text, its score and type, the `<0xXX>` token of
    /// each byte, BOS; the control tokens are the special ones.
    pub(super) fn bundle_tables(&self, stop_ids: &[u32]) -> anyhow::Result<TokenizerTables> {
        if self.eos.is_some() {
            anyhow::bail!(
                "the tokenizer appends EOS to every text (add_eos_token), which bundles do not store"
            );
        }
        let tables = self.tables()?;
        let n = tables.vocab_size();
        let ids = 0..u32::try_from(n)?;
        let vocab: Vec<Vec<u8>> = ids
            .clone()
            .map(|id| tables.token_bytes(id).to_vec())
            .collect();
        let scores = self
            .tables
            .scores
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let byte_tokens = (0..=255u8)
            .map(|byte| {
                tables
                    .token_id(format!("<0x{byte:02X}>").as_bytes())
                    .unwrap_or(NO_TOKEN)
            })
            .collect();
        let special_ids = ids
            .filter(|&id| tables.token_type(id) == TokenType::Control)
            .collect();
        Ok(TokenizerTables {
            vocab,
            merges: Vec::new(),
            byte_tokens,
            special_ids,
            stop_ids: stop_ids.to_vec(),
            trimmed: None,
            sentencepiece: Some(SentencePieceTables {
                scores,
                token_types: self.tables.token_types.clone(),
                bos: self.bos,
            }),
        })
    }

    pub(super) fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let tables = self.tables()?;
        let room = ids.iter().map(|&id| tables.token_bytes(id).len()).sum();
        let mut bytes = vec![0u8; room];
        let written = tables.decode_into(ids, &mut bytes);
        bytes.truncate(written);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
