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
        let types = match array("tokenizer.ggml.token_type") {
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
        let id_of = |key: &str| token_id(gguf, key).filter(|&id| (id as usize) < n);
        let (bos, eos) = added(
            (
                id_of("tokenizer.ggml.bos_token_id"),
                flag("tokenizer.ggml.add_bos_token", true),
            ),
            (
                id_of("tokenizer.ggml.eos_token_id"),
                flag("tokenizer.ggml.add_eos_token", false),
            ),
        )?;
        Self::from_pieces(texts, &scores[..n], types, bos, eos)
    }

    /// The vocabulary of a SentencePiece model file (`tokenizer.model`, the `ModelProto`
    /// message of sentencepiece's `sentencepiece_model.proto`: its pieces' texts, scores and
    /// types, the trainer's BOS and EOS ids and the normalizer's `add_dummy_prefix`), with BOS
    /// and EOS added as `add_bos` and `add_eos` say; read as llama.cpp's converter and loader
    /// read it ([`Self::from_gguf`]); and the model's EOS id.
    pub(super) fn from_model_proto(
        bytes: &[u8],
        add_bos: bool,
        add_eos: bool,
    ) -> Result<(Self, Option<u32>), String> {
        let mut texts = Vec::new();
        let mut scores = Vec::new();
        let mut types = Vec::new();
        let (mut bos, mut eos, mut dummy_prefix) = (1i64, 2i64, true);
        for field in proto::fields(bytes) {
            match field? {
                (1, proto::Value::Bytes(piece)) => {
                    let (mut text, mut score, mut kind) = (String::new(), 0f32, 1u64);
                    for field in proto::fields(piece) {
                        match field? {
                            (1, proto::Value::Bytes(t)) => {
                                text = String::from_utf8(t.to_vec())
                                    .map_err(|_| "a piece is not UTF-8".to_owned())?;
                            }
                            (2, proto::Value::Fixed32(bits)) => score = f32::from_bits(bits),
                            (3, proto::Value::Varint(t)) => kind = t,
                            _ => {}
                        }
                    }
                    if text.is_empty() {
                        text = format!("[EMPTY_{}]", texts.len());
                    }
                    texts.push(text);
                    scores.push(score);
                    types.push(u8::try_from(kind).unwrap_or(0));
                }
                (2, proto::Value::Bytes(trainer)) => {
                    for field in proto::fields(trainer) {
                        match field? {
                            // int32 as a varint: -1 is 2^64 - 1.
                            (41, proto::Value::Varint(id)) => bos = id as i64,
                            (42, proto::Value::Varint(id)) => eos = id as i64,
                            _ => {}
                        }
                    }
                }
                (3, proto::Value::Bytes(normalizer)) => {
                    for field in proto::fields(normalizer) {
                        if let (3, proto::Value::Varint(flag)) = field? {
                            dummy_prefix = flag != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if texts.is_empty() {
            return Err("it holds no pieces: not a SentencePiece model file".into());
        }
        if dummy_prefix {
            return Err("its normalizer adds a space before the text (add_dummy_prefix): a SentencePiece tokenizer that does is not implemented".into());
        }
        let id = |id: i64| {
            u32::try_from(id)
                .ok()
                .filter(|&id| (id as usize) < texts.len())
        };
        let (bos_id, eos_id) = (id(bos), id(eos));
        let (bos, eos) = added((bos_id, add_bos), (eos_id, add_eos))?;
        let spm = Self::from_pieces(texts, &scores, types, bos, eos)?;
        Ok((spm, eos_id))
    }

    /// The vocabulary of `texts` with their `scores` and `types` (the texts of
    /// [`LLAMA_CPP_CONTROL_TEXTS`] made control tokens), adding `bos` and `eos` around every
    /// whole text when given.
    fn from_pieces(
        texts: Vec<String>,
        scores: &[f32],
        mut types: Vec<u8>,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Self, String> {
        for (text, kind) in texts.iter().zip(types.iter_mut()) {
            if LLAMA_CPP_CONTROL_TEXTS.contains(&text.as_str()) {
                *kind = TokenType::Control as u8;
            }
        }
        let n = texts.len();
        let tables =
            OwnedSpmTables::build(&texts, &scores[..n], &types[..n]).map_err(|e| e.to_string())?;
        Ok(Self { tables, bos, eos })
    }

    /// The vocabulary as a SentencePiece model file ([`Self::from_model_proto`] reads it back):
    /// every piece, the BOS it adds and `eos` as the trainer's ids, no dummy prefix.
    pub(super) fn model_proto(&self, eos: u32) -> anyhow::Result<Vec<u8>> {
        let (bos, eos) = (self.bos, Some(eos));
        let tables = self.tables()?;
        let mut out = Vec::new();
        for (id, score) in self.tables.scores.chunks_exact(4).enumerate() {
            let id = u32::try_from(id)?;
            let mut piece = Vec::new();
            proto::put_bytes(&mut piece, 1, tables.token_bytes(id));
            proto::put_fixed32(
                &mut piece,
                2,
                u32::from_le_bytes([score[0], score[1], score[2], score[3]]),
            );
            proto::put_varint(&mut piece, 3, u64::from(tables.token_type(id) as u8));
            proto::put_bytes(&mut out, 1, &piece);
        }
        let id = |id: Option<u32>| id.map_or(u64::MAX, u64::from);
        let mut trainer = Vec::new();
        proto::put_varint(&mut trainer, 41, id(bos));
        proto::put_varint(&mut trainer, 42, id(eos));
        proto::put_bytes(&mut out, 2, &trainer);
        let mut normalizer = Vec::new();
        proto::put_varint(&mut normalizer, 3, 0);
        proto::put_bytes(&mut out, 3, &normalizer);
        Ok(out)
    }

    /// Whether BOS starts (and EOS ends) every whole text.
    pub(super) fn adds(&self) -> (bool, bool) {
        (self.bos.is_some(), self.eos.is_some())
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
            pre_tokenizer: Default::default(),
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

/// The BOS and EOS a vocabulary adds, from each token's id and whether it is added: an error
/// when one is asked for but the vocabulary has no such token.
fn added(
    (bos, add_bos): (Option<u32>, bool),
    (eos, add_eos): (Option<u32>, bool),
) -> Result<(Option<u32>, Option<u32>), String> {
    if (add_bos && bos.is_none()) || (add_eos && eos.is_none()) {
        return Err("add_bos_token or add_eos_token is true but the token id is missing".into());
    }
    Ok((bos.filter(|_| add_bos), eos.filter(|_| add_eos)))
}

/// The protobuf wire format, as much of it as a SentencePiece model file needs.
mod proto {
    /// A field's value by wire type.
    pub(super) enum Value<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*at).ok_or("a varint runs past the end")?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is longer than ten bytes".into())
    }

    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let end = at.checked_add(n).filter(|&end| end <= bytes.len());
        let slice = end
            .and_then(|end| bytes.get(*at..end))
            .ok_or("a field runs past the end")?;
        *at += n;
        Ok(slice)
    }

    /// The fields of one message, `(field number, value)` in file order.
    pub(super) fn fields(bytes: &[u8]) -> impl Iterator<Item = Result<(u32, Value<'_>), String>> {
        let mut at = 0;
        std::iter::from_fn(move || {
            (at < bytes.len()).then(|| {
                let key = varint(bytes, &mut at)?;
                let number = u32::try_from(key >> 3).map_err(|_| "a field number overflows")?;
                let value = match key & 7 {
                    0 => Value::Varint(varint(bytes, &mut at)?),
                    1 => {
                        take(bytes, &mut at, 8)?;
                        Value::Fixed64
                    }
                    2 => {
                        let len = usize::try_from(varint(bytes, &mut at)?)
                            .map_err(|_| "a length overflows")?;
                        Value::Bytes(take(bytes, &mut at, len)?)
                    }
                    5 => {
                        let b = take(bytes, &mut at, 4)?;
                        Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    kind => return Err(format!("wire type {kind} is not protobuf's")),
                };
                Ok((number, value))
            })
        })
    }

    fn put_key(out: &mut Vec<u8>, number: u32, kind: u64) {
        put_raw_varint(out, (u64::from(number) << 3) | kind);
    }

    fn put_raw_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    pub(super) fn put_varint(out: &mut Vec<u8>, number: u32, value: u64) {
        put_key(out, number, 0);
        put_raw_varint(out, value);
    }

    pub(super) fn put_fixed32(out: &mut Vec<u8>, number: u32, value: u32) {
        put_key(out, number, 5);
        out.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
        put_key(out, number, 2);
        put_raw_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces() -> (Vec<String>, Vec<f32>, Vec<u8>) {
        let mut texts: Vec<String> = ["<unk>", "<s>", "</s>", "▁a", "▁ab", "b"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let mut scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let mut types = vec![2, 3, 3, 1, 1, 1];
        for byte in 0..=255u8 {
            texts.push(format!("<0x{byte:02X}>"));
            scores.push(0.0);
            types.push(TokenType::Byte as u8);
        }
        (texts, scores, types)
    }

    /// A model file written from a vocabulary reads back as it: pieces, scores, types, BOS and
    /// EOS; what the reader cannot run or read is named.
    #[test]
    fn a_sentencepiece_model_file_round_trips_and_bad_ones_are_named() -> anyhow::Result<()> {
        let (texts, scores, types) = pieces();
        let spm = SentencePiece::from_pieces(texts, &scores, types, Some(1), None)
            .map_err(anyhow::Error::msg)?;
        let bytes = spm.model_proto(2)?;
        let (back, eos) =
            SentencePiece::from_model_proto(&bytes, true, false).map_err(anyhow::Error::msg)?;
        assert_eq!(eos, Some(2));
        assert_eq!(back.adds(), (true, false));
        assert_eq!(back.tables.scores, spm.tables.scores);
        assert_eq!(back.tables.token_types, spm.tables.token_types);
        assert_eq!(
            back.encode(" ab", true, None)?,
            spm.encode(" ab", true, None)?
        );
        assert_eq!(back.encode(" ab", true, None)?, vec![1, 4]);

        let error = |bytes: &[u8]| match SentencePiece::from_model_proto(bytes, true, false) {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error,
        };
        assert!(error(&bytes[..bytes.len() / 2]).contains("past the end"));
        assert!(error(b"").contains("no pieces"));
        // The normalizer's add_dummy_prefix set.
        let mut prefixed = bytes.clone();
        let mut normalizer = Vec::new();
        proto::put_varint(&mut normalizer, 3, 1);
        proto::put_bytes(&mut prefixed, 3, &normalizer);
        assert!(error(&prefixed).contains("add_dummy_prefix"));
        Ok(())
    }
}
