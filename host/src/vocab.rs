//! Task-vocabulary trimming: a bundle for one classification task keeps the embedding rows of
//! the tokens its inputs produce and drops the rest, with ids renumbered in the bundle's
//! tokenizer so that any input still tokenizes.
//!
//! The kept set is every token of the task's calibration and search prompts (the prompt
//! template included), every single-byte token, the special and stop tokens and the label
//! tokens, closed under the merges: a kept token keeps the two tokens of every merge that
//! makes it, so each step of the byte-level BPE that produced a kept token is still there.
//! The trimmed tokenizer drops the merges that make a dropped token. An input seen while
//! trimming therefore tokenizes exactly as before (each merge the BPE applied is kept, and
//! dropping merges it did not apply cannot change which applicable merge ranks lowest); an
//! input with an unseen word gets that word in smaller kept pieces, never an error (every
//! byte has a kept token).
//!
//! The alphabet trim ([`VocabTrim::for_alphabet`], `--vocab alphabet`) keeps instead every token
//! the bytes of those prompts can spell: larger, but exact on any text written with them.
//!
//! A SentencePiece vocabulary (Gemma 3) has no merge list: a piece forms when two adjacent
//! symbols concatenate to a token, highest score first. The kept set there is every token of
//! the prompts and every token a merge formed on the way to them (recorded while tokenizing),
//! with the byte, stop and BOS tokens; control tokens no prompt holds are dropped (written in
//! an input they then read as text). A seen input tokenizes as before (every merge it made is
//! still a token, and a candidate that never won cannot change which one wins); an unseen word
//! falls back to smaller kept pieces or bytes.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::Tensor;
use rayon::prelude::*;
use whittle_runtime::format::NO_TOKEN;
use whittle_runtime::writer::{SentencePieceTables, TokenizerTables, Trimmed};

use crate::eval::prompt_text;
use crate::task::{Split, Task};
use crate::tokenizer::TextTokenizer;

/// Which vocabulary a bundle keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VocabChoice {
    /// The source model's whole vocabulary.
    Full,
    /// The tokens of the task's calibration and search inputs ([`VocabTrim::for_task`]);
    /// classification only.
    Task,
    /// Every token the bytes of the task's calibration and search inputs can spell
    /// ([`VocabTrim::for_alphabet`]): any text written with them tokenizes exactly as with the
    /// whole vocabulary; classification only.
    Alphabet,
}

/// The tokens a task-trimmed bundle keeps, by source id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VocabTrim {
    /// Source ids of the kept tokens, ascending: kept token `i` is source token `kept[i]`.
    kept: Vec<u32>,
    /// The new id of every source token ([`NO_TOKEN`] for a dropped one).
    new_ids: Vec<u32>,
}

impl VocabTrim {
    /// The tokens of `task`'s calibration and search prompts (whole prompts, template
    /// included) and `label_ids`, with the tables' byte, special and stop tokens, closed under
    /// the merges.
    pub fn for_task(
        tokenizer: &TextTokenizer,
        tables: &TokenizerTables,
        task: &Task,
        label_ids: &[u32],
    ) -> anyhow::Result<Self> {
        Self::of_splits(
            tokenizer,
            tables,
            task,
            &[Split::Calibration, Split::Search],
            label_ids,
        )
    }

    /// Every token whose bytes all occur in the task's calibration and search prompts (whole
    /// prompts, template included; a space also allows SentencePiece's `▁`), and `label_ids`,
    /// with the tables' byte, special and stop tokens. Any text made of those bytes then
    /// tokenizes as with the whole vocabulary: every token the tokenizer forms on the way is a
    /// piece of the text (BPE: each merge's result; SentencePiece: each pair it joins), so its
    /// bytes are the text's, and it is kept. Larger than [`Self::for_task`], which keeps only
    /// the tokens those prompts produce; exact on unseen words.
    pub fn for_alphabet(
        tokenizer: &TextTokenizer,
        tables: &TokenizerTables,
        task: &Task,
        label_ids: &[u32],
    ) -> anyhow::Result<Self> {
        let mut allowed = [false; 256];
        for split in [Split::Calibration, Split::Search] {
            for example in task.examples(split)? {
                for byte in prompt_text(tokenizer, &example.prompt)?.bytes() {
                    allowed[usize::from(byte)] = true;
                }
            }
        }
        if allowed[usize::from(b' ')] && tables.sentencepiece.is_some() {
            for byte in "▁".bytes() {
                allowed[usize::from(byte)] = true;
            }
        }
        Self::spelled_by(tables, &allowed, label_ids)
    }

    /// Every token made of `allowed` bytes, and `label_ids`, with the tables' byte, special
    /// and stop tokens ([`Self::for_alphabet`]).
    fn spelled_by(
        tables: &TokenizerTables,
        allowed: &[bool; 256],
        label_ids: &[u32],
    ) -> anyhow::Result<Self> {
        let mut seen: Vec<bool> = tables
            .vocab
            .iter()
            .map(|bytes| !bytes.is_empty() && bytes.iter().all(|&b| allowed[usize::from(b)]))
            .collect();
        for &id in label_ids {
            mark(&mut seen, id)?;
        }
        Self::closed(tables, seen)
    }

    /// The tokens of `splits`' prompts and `label_ids`, with the tables' byte, special and
    /// stop tokens, closed under the merges.
    pub fn of_splits(
        tokenizer: &TextTokenizer,
        tables: &TokenizerTables,
        task: &Task,
        splits: &[Split],
        label_ids: &[u32],
    ) -> anyhow::Result<Self> {
        let mut seen = vec![false; tables.vocab.len()];
        for &split in splits {
            let examples = task.examples(split)?;
            let ids: Vec<(Vec<u32>, Vec<u32>)> = examples
                .par_iter()
                .map(|example| {
                    tokenizer.encode_prompt_with_merges(&prompt_text(tokenizer, &example.prompt)?)
                })
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("tokenizing the {} split", split.name()))?;
            for (prompt, merged) in &ids {
                for id in prompt.iter().chain(merged) {
                    mark(&mut seen, *id)?;
                }
            }
        }
        for &id in label_ids {
            mark(&mut seen, id)?;
        }
        Self::closed(tables, seen)
    }

    /// `seen` with every byte, special (BPE) or BOS (SentencePiece) and stop token added,
    /// closed under the merges.
    fn closed(tables: &TokenizerTables, mut seen: Vec<bool>) -> anyhow::Result<Self> {
        let fixed = tables.byte_tokens.iter().filter(|&&id| id != NO_TOKEN);
        let specials: Vec<u32> = match &tables.sentencepiece {
            Some(spm) => spm.bos.into_iter().collect(),
            None => tables.special_ids.clone(),
        };
        for &id in fixed.chain(&specials).chain(&tables.stop_ids) {
            mark(&mut seen, id)?;
        }
        let mut makers: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
        for &(left, right, merged) in &tables.merges {
            makers.entry(merged).or_default().push((left, right));
        }
        let mut work: Vec<u32> = (0..seen.len() as u32)
            .filter(|&id| seen[id as usize])
            .collect();
        while let Some(id) = work.pop() {
            for &(left, right) in makers.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                for part in [left, right] {
                    if !std::mem::replace(slot(&mut seen, part)?, true) {
                        work.push(part);
                    }
                }
            }
        }
        let kept: Vec<u32> = (0..seen.len() as u32)
            .filter(|&id| seen[id as usize])
            .collect();
        let mut new_ids = vec![NO_TOKEN; seen.len()];
        for (new, &source) in kept.iter().enumerate() {
            new_ids[source as usize] = new as u32;
        }
        Ok(Self { kept, new_ids })
    }

    /// Source ids of the kept tokens, ascending.
    pub fn kept(&self) -> &[u32] {
        &self.kept
    }

    /// Tokens in the source vocabulary.
    pub fn source_vocab_size(&self) -> usize {
        self.new_ids.len()
    }

    /// The kept id of source token `source`, `None` when it is dropped.
    pub fn id(&self, source: u32) -> Option<u32> {
        self.new_ids
            .get(source as usize)
            .copied()
            .filter(|&id| id != NO_TOKEN)
    }

    /// The kept id of a token the trim must hold (a label, a prompt token).
    pub fn required_id(&self, source: u32) -> anyhow::Result<u32> {
        self.id(source).with_context(|| {
            format!("token {source} is not in the trimmed vocabulary; pack with --vocab full")
        })
    }

    /// The tables renumbered to the kept tokens: their bytes, the merges among kept tokens in
    /// rank order, and the byte, special and stop tokens.
    pub fn tables(&self, tables: &TokenizerTables) -> anyhow::Result<TokenizerTables> {
        if tables.vocab.len() != self.new_ids.len() {
            bail!(
                "a trim of {} tokens applied to a vocabulary of {}; trim the tables it was made from",
                self.new_ids.len(),
                tables.vocab.len()
            );
        }
        let vocab = self
            .kept
            .iter()
            .map(|&id| tables.vocab[id as usize].clone())
            .collect();
        let merges = tables
            .merges
            .iter()
            .filter_map(|&(l, r, m)| Some((self.id(l)?, self.id(r)?, self.id(m)?)))
            .collect();
        let byte_tokens = tables
            .byte_tokens
            .iter()
            .map(|&id| match id {
                NO_TOKEN => Ok(NO_TOKEN),
                id => self.required_id(id),
            })
            .collect::<anyhow::Result<_>>()?;
        let ids = |ids: &[u32]| -> anyhow::Result<Vec<u32>> {
            ids.iter().map(|&id| self.required_id(id)).collect()
        };
        let kept = |values: &[u8]| -> Vec<u8> {
            self.kept.iter().map(|&id| values[id as usize]).collect()
        };
        let sentencepiece = match &tables.sentencepiece {
            Some(spm) => Some(SentencePieceTables {
                scores: self
                    .kept
                    .iter()
                    .map(|&id| spm.scores[id as usize])
                    .collect(),
                token_types: kept(&spm.token_types),
                bos: spm.bos.map(|bos| self.required_id(bos)).transpose()?,
            }),
            None => None,
        };
        let special_ids = match sentencepiece {
            // Control tokens no prompt held are dropped.
            Some(_) => tables
                .special_ids
                .iter()
                .filter_map(|&id| self.id(id))
                .collect(),
            None => ids(&tables.special_ids)?,
        };
        Ok(TokenizerTables {
            vocab,
            merges,
            byte_tokens,
            special_ids,
            stop_ids: ids(&tables.stop_ids)?,
            trimmed: Some(Trimmed {
                source_vocab_size: u32::try_from(self.new_ids.len())?,
                source_ids: self.kept.clone(),
            }),
            sentencepiece,
            pre_tokenizer: tables.pre_tokenizer,
        })
    }

    /// The kept rows of a `(source vocabulary, hidden)` matrix (the embedding, a full head).
    pub fn rows(&self, matrix: &Tensor) -> anyhow::Result<Tensor> {
        let ids = Tensor::new(self.kept.as_slice(), matrix.device())?;
        Ok(matrix.index_select(&ids, 0)?)
    }
}

fn slot(seen: &mut [bool], id: u32) -> anyhow::Result<&mut bool> {
    let vocab = seen.len();
    seen.get_mut(id as usize).with_context(|| {
        format!("token id {id} is outside the vocabulary of {vocab}; the tokenizer does not belong to these tables")
    })
}

fn mark(seen: &mut [bool], id: u32) -> anyhow::Result<()> {
    *slot(seen, id)? = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use whittle_runtime::writer::synthetic_bundle_with_tables;
    use whittle_runtime::{AlignedBytes, Bundle, Tokenizer};

    /// Bytes 0..=255, then `ab` (256), `abc` (257), `<s>` (258), ` a` (259), `bc` (260),
    /// `xy` (261).
    fn tables() -> TokenizerTables {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for token in ["ab", "abc", "<s>", " a", "bc", "xy"] {
            vocab.push(token.as_bytes().to_vec());
        }
        TokenizerTables {
            vocab,
            merges: vec![
                (97, 98, 256),
                (256, 99, 257),
                (32, 97, 259),
                (98, 99, 260),
                (120, 121, 261),
            ],
            byte_tokens: (0..256).collect(),
            special_ids: vec![258],
            stop_ids: vec![258],
            trimmed: None,
            sentencepiece: None,
            pre_tokenizer: Default::default(),
        }
    }

    fn trim(seeds: &[u32]) -> anyhow::Result<VocabTrim> {
        let tables = tables();
        let mut seen = vec![false; tables.vocab.len()];
        for &id in seeds {
            mark(&mut seen, id)?;
        }
        VocabTrim::closed(&tables, seen)
    }

    fn bundle(tables: &TokenizerTables) -> anyhow::Result<Vec<u8>> {
        Ok(synthetic_bundle_with_tables(tables)?)
    }

    fn encode(tables: &TokenizerTables, text: &str) -> anyhow::Result<Vec<u32>> {
        let bytes = bundle(tables)?;
        let aligned = AlignedBytes::new(&bytes);
        let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tokenizer = Tokenizer::new(&bundle);
        let mut out = heapless::Vec::<u32, 64>::new();
        tokenizer
            .encode(&[text], &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(out.iter().map(|&id| tokenizer.source_id(id)).collect())
    }

    #[test]
    fn a_kept_token_keeps_the_merges_that_make_it() -> anyhow::Result<()> {
        // `abc` seen: `ab` (its left part) comes with it; `bc`, ` a` and `xy` were never made.
        let trim = trim(&[257])?;
        assert_eq!(trim.kept().len(), 256 + 3);
        assert_eq!(trim.id(256), Some(256));
        assert_eq!(trim.id(257), Some(257));
        assert_eq!(trim.id(258), Some(258));
        for dropped in [259, 260, 261] {
            assert_eq!(trim.id(dropped), None);
        }
        let trimmed = trim.tables(&tables())?;
        assert_eq!(trimmed.merges, vec![(97, 98, 256), (256, 99, 257)]);
        assert_eq!(trimmed.vocab[258], b"<s>".to_vec());
        Ok(())
    }

    /// The alphabet trim keeps every token its bytes spell (and the fixed ones), so any text of
    /// those bytes, seen or not, tokenizes as with the whole vocabulary.
    #[test]
    fn an_alphabet_trim_reads_every_text_of_its_bytes_as_before() -> anyhow::Result<()> {
        let full = tables();
        let mut allowed = [false; 256];
        for byte in "abc a".bytes() {
            allowed[usize::from(byte)] = true;
        }
        let trim = VocabTrim::spelled_by(&full, &allowed, &[])?;
        for kept in [256, 257, 258, 259, 260] {
            assert!(trim.id(kept).is_some(), "{kept}");
        }
        assert_eq!(trim.id(261), None);
        let trimmed = trim.tables(&full)?;
        for text in ["cab bca a", "<s>abcabc", " a a ab", "bbcc"] {
            assert_eq!(encode(&trimmed, text)?, encode(&full, text)?, "{text}");
        }
        // Other bytes still tokenize, in smaller pieces.
        assert_eq!(encode(&trimmed, "xy")?, vec![120, 121]);
        Ok(())
    }

    #[test]
    fn seen_text_tokenizes_as_before_and_unseen_text_in_smaller_pieces() -> anyhow::Result<()> {
        let full = tables();
        let trimmed = trim(&[257])?.tables(&full)?;
        for seen in ["abc", "<s>abc", "cab"] {
            assert_eq!(encode(&trimmed, seen)?, encode(&full, seen)?, "{seen}");
        }
        assert_eq!(encode(&full, "xy a")?, vec![261, 259]);
        assert_eq!(encode(&trimmed, "xy a")?, vec![120, 121, 32, 97]);
        Ok(())
    }

    #[test]
    fn the_bundle_records_the_source_ids() -> anyhow::Result<()> {
        let trimmed = trim(&[261])?.tables(&tables())?;
        let bytes = bundle(&trimmed)?;
        let aligned = AlignedBytes::new(&bytes);
        let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let refs = bundle.header().tokenizer;
        assert_eq!(refs.source_vocab_size, 262);
        assert_eq!(bundle.header().config.vocab_size, 256 + 2);
        let tokenizer = Tokenizer::new(&bundle);
        assert_eq!(tokenizer.source_id(257), 261);
        assert_eq!(tokenizer.token_bytes(257), b"xy");
        Ok(())
    }

    /// A SentencePiece vocabulary: `<pad>`, `<eos>`, `<bos>` (control), the 256 byte tokens,
    /// then pieces with scores; `▁` is a space.
    fn spm_tables() -> TokenizerTables {
        let mut vocab: Vec<Vec<u8>> = ["<pad>", "<eos>", "<bos>", "<unused0>"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let mut scores = vec![0.0f32; 4];
        let mut token_types = vec![3u8; 4];
        for byte in 0..=255u8 {
            vocab.push(format!("<0x{byte:02X}>").into_bytes());
            scores.push(0.0);
            token_types.push(6);
        }
        let pieces = [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("c", -4.0),
            ("ab", -5.0),
            ("abc", -6.0),
            ("▁ab", -7.0),
            ("x", -8.0),
            ("y", -9.0),
            ("xy", -1.5),
            ("bc", -10.0),
        ];
        for (piece, score) in pieces {
            vocab.push(piece.as_bytes().to_vec());
            scores.push(score);
            token_types.push(1);
        }
        let byte_tokens = (4..260).collect();
        TokenizerTables {
            vocab,
            merges: Vec::new(),
            byte_tokens,
            special_ids: vec![0, 1, 2, 3],
            stop_ids: vec![1],
            trimmed: None,
            sentencepiece: Some(SentencePieceTables {
                scores,
                token_types,
                bos: Some(2),
            }),
            pre_tokenizer: Default::default(),
        }
    }

    #[test]
    fn a_sentencepiece_trim_keeps_the_merges_of_seen_text() -> anyhow::Result<()> {
        use whittle_runtime::spm::OwnedSpmTables;
        let full = spm_tables();
        let spm = full.sentencepiece.clone().expect("SentencePiece");
        let owned = OwnedSpmTables::build(&full.vocab, &spm.scores, &spm.token_types)?;
        let seen_text = "abc ab";
        let (mut ids, mut merged) = (Vec::new(), Vec::new());
        owned.tables()?.encode_to_vec(
            &[seen_text],
            true,
            &mut ids,
            Some(&mut |id| merged.push(id)),
        )?;
        // `ab` then `abc`, and `▁ab` by way of `ab`: the intermediate `ab` is a merge.
        let token = |text: &str| full.vocab.iter().position(|t| t == text.as_bytes());
        let ab = token("ab").expect("ab") as u32;
        assert!(merged.contains(&ab));
        let mut seen = vec![false; full.vocab.len()];
        for &id in ids.iter().chain(&merged) {
            mark(&mut seen, id)?;
        }
        let trim = VocabTrim::closed(&full, seen)?;
        // Bytes, BOS and EOS, and the pieces seen; `<pad>`, `<unused0>`, `x`, `y`, `xy`, `bc`
        // dropped.
        for dropped in ["<pad>", "<unused0>", "xy", "x", "bc"] {
            assert_eq!(
                trim.id(token(dropped).expect("a token") as u32),
                None,
                "{dropped}"
            );
        }
        let trimmed = trim.tables(&full)?;
        assert_eq!(
            trimmed.sentencepiece.as_ref().and_then(|s| s.bos),
            trim.id(2)
        );
        assert_eq!(encode(&trimmed, seen_text)?, encode(&full, seen_text)?);
        // An unseen word: its bytes, and the text reads back.
        let unseen = "xy abc";
        let pieces = encode(&trimmed, unseen)?;
        assert_ne!(pieces, encode(&full, unseen)?);
        let bytes = bundle(&trimmed)?;
        let aligned = AlignedBytes::new(&bytes);
        let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tokenizer = Tokenizer::new(&bundle);
        let mut out = heapless::Vec::<u32, 64>::new();
        tokenizer
            .encode(&[unseen], &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut text = [0u8; 64];
        let n = tokenizer.decode_into(&out, &mut text);
        assert_eq!(&text[..n], unseen.as_bytes());
        Ok(())
    }

    #[test]
    fn a_token_outside_the_vocabulary_is_an_error() -> anyhow::Result<()> {
        let tables = tables();
        let mut seen = vec![false; tables.vocab.len()];
        assert!(mark(&mut seen, 9_999).is_err());
        let other = trim(&[])?;
        let mut longer = tables.clone();
        longer.vocab.push(b"zz".to_vec());
        let message = match other.tables(&longer) {
            Ok(_) => anyhow::bail!("trimmed another vocabulary"),
            Err(error) => error.to_string(),
        };
        assert!(
            message.contains("262 tokens") && message.contains("263"),
            "{message}"
        );
        Ok(())
    }
}
