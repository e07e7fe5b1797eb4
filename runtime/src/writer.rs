//! Writing bundles (feature `alloc`): the blob builder, q8 quantization and the framing of
//! `docs/bundle-format.md`. The host's packer fills a [`Header`] with the spans this returns.

use alloc::vec::Vec;

use crate::format::{
    ALIGN, CRC32, Dtype, FLAG_SIGNED, FORMAT_VERSION, HeadRef, Header, LayerRecords, LayerRef,
    LinearRef, MAGIC, MatrixRef, NO_TOKEN, PREAMBLE_LEN, PreTokenizer, Provenance, Q8_BLOCK,
    SelfCheck, SentencePieceRef, Span, TaskKind, TaskRef, TokenizerRef, align_up,
};
use crate::{Architecture, ModelConfig};

/// Why a bundle could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WriteError {
    /// The header does not encode (postcard).
    Encode,
    /// The blob or header exceeds the format's 4 GiB offsets.
    TooLarge,
    /// A matrix's block scales do not match its shape.
    ScaleCount,
}

impl core::fmt::Display for WriteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Encode => "the bundle header does not encode; this is a bug, please report it",
            Self::TooLarge => "the bundle exceeds 4 GiB; prune harder or use --dtype q8",
            Self::ScaleCount => {
                "a matrix's block scales do not match its shape; this is a bug, please report it"
            }
        })
    }
}

impl core::error::Error for WriteError {}

/// The tokenizer in the form the writer stores it.
#[derive(Clone, Debug, Default)]
pub struct TokenizerTables {
    /// Raw bytes of every token (special tokens as written).
    pub vocab: Vec<Vec<u8>>,
    /// `(left, right, merged)` in rank order.
    pub merges: Vec<(u32, u32, u32)>,
    /// The token of every single byte ([`crate::format::NO_TOKEN`] if none).
    pub byte_tokens: Vec<u32>,
    /// Special tokens (matched literally, skipped on decode).
    pub special_ids: Vec<u32>,
    /// Tokens that end generation.
    pub stop_ids: Vec<u32>,
    /// Set when the vocabulary is a task's part of the source model's.
    pub trimmed: Option<Trimmed>,
    /// Set for a SentencePiece vocabulary (`merges` empty).
    pub sentencepiece: Option<SentencePieceTables>,
    /// How a byte-level BPE splits text before merging.
    pub pre_tokenizer: PreTokenizer,
}

/// What a SentencePiece vocabulary adds to the token texts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SentencePieceTables {
    /// Each token's score.
    pub scores: Vec<f32>,
    /// Each token's `tokenizer.ggml.token_type`.
    pub token_types: Vec<u8>,
    /// The token every prompt starts with.
    pub bos: Option<u32>,
}

/// What a task-trimmed vocabulary keeps of its source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Tokens in the source vocabulary.
    pub source_vocab_size: u32,
    /// The source id of every kept token, strictly ascending (token `i` was `source_ids[i]`).
    pub source_ids: Vec<u32>,
}

/// The tensor blob under construction; every push starts at a multiple of 64 bytes.
#[derive(Clone, Debug, Default)]
pub struct BlobBuilder {
    bytes: Vec<u8>,
}

impl BlobBuilder {
    /// An empty blob.
    pub fn new() -> Self {
        Self::default()
    }

    /// The blob so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Appends raw bytes, 64-byte aligned.
    pub fn push_bytes(&mut self, data: &[u8]) -> Result<Span, WriteError> {
        self.bytes.resize(align_up(self.bytes.len()), 0);
        let offset = u32::try_from(self.bytes.len()).map_err(|_| WriteError::TooLarge)?;
        let len = u32::try_from(data.len()).map_err(|_| WriteError::TooLarge)?;
        self.bytes.extend_from_slice(data);
        Ok(Span { offset, len })
    }

    /// Appends little-endian f32 values.
    pub fn push_f32(&mut self, values: &[f32]) -> Result<Span, WriteError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_bytes(&bytes)
    }

    /// Appends little-endian u32 values.
    pub fn push_u32(&mut self, values: &[u32]) -> Result<Span, WriteError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_bytes(&bytes)
    }

    /// Appends a row-major `rows × cols` matrix rounded with the given block `scales` (a
    /// packer's own choice of scales, e.g. after error-compensating rounding); `values` are
    /// rounded to them as [`round_q8`] and [`round_q4`] do.
    pub fn push_matrix_with_scales(
        &mut self,
        rows: usize,
        cols: usize,
        values: &[f32],
        scales: &BlockScales,
    ) -> Result<MatrixRef, WriteError> {
        let (rows_u32, cols_u32) = (
            u32::try_from(rows).map_err(|_| WriteError::TooLarge)?,
            u32::try_from(cols).map_err(|_| WriteError::TooLarge)?,
        );
        let blocks = rows.saturating_mul(cols.div_ceil(Q8_BLOCK));
        let (dtype, data, scales) = match scales {
            BlockScales::Q8(scales) if scales.len() == blocks => {
                let q = round_q8(values, cols, scales);
                let bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                (Dtype::Q8, self.push_bytes(&bytes)?, self.push_f32(scales)?)
            }
            BlockScales::Q4(scales) if scales.len() == 2 * blocks => {
                let data = round_q4(values, cols, scales);
                let bytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                (Dtype::Q4, self.push_bytes(&data)?, self.push_bytes(&bytes)?)
            }
            _ => return Err(WriteError::ScaleCount),
        };
        Ok(MatrixRef {
            rows: rows_u32,
            cols: cols_u32,
            dtype,
            data,
            scales: Some(scales),
        })
    }

    /// Appends a row-major `rows × cols` matrix in `dtype` (quantizing for q8).
    pub fn push_matrix(
        &mut self,
        rows: usize,
        cols: usize,
        values: &[f32],
        dtype: Dtype,
    ) -> Result<MatrixRef, WriteError> {
        let (rows_u32, cols_u32) = (
            u32::try_from(rows).map_err(|_| WriteError::TooLarge)?,
            u32::try_from(cols).map_err(|_| WriteError::TooLarge)?,
        );
        let (data, scales) = match dtype {
            Dtype::F32 => (self.push_f32(values)?, None),
            Dtype::Q8 => {
                let (q, scales) = quantize_q8(values, cols);
                let bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                (self.push_bytes(&bytes)?, Some(self.push_f32(&scales)?))
            }
            Dtype::Q4 => {
                let (data, scales) = quantize_q4(values, cols);
                let bytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                (self.push_bytes(&data)?, Some(self.push_bytes(&bytes)?))
            }
        };
        Ok(MatrixRef {
            rows: rows_u32,
            cols: cols_u32,
            dtype,
            data,
            scales,
        })
    }

    /// Appends the tokenizer tables.
    pub fn push_tokenizer(&mut self, tables: &TokenizerTables) -> Result<TokenizerRef, WriteError> {
        let mut offsets = Vec::with_capacity(tables.vocab.len() + 1);
        let mut vocab_bytes = Vec::new();
        offsets.push(0u32);
        for token in &tables.vocab {
            vocab_bytes.extend_from_slice(token);
            offsets.push(u32::try_from(vocab_bytes.len()).map_err(|_| WriteError::TooLarge)?);
        }
        let mut merges: Vec<(u32, u32, u32, u32)> = Vec::with_capacity(tables.merges.len());
        for (rank, &(left, right, merged)) in tables.merges.iter().enumerate() {
            let rank = u32::try_from(rank).map_err(|_| WriteError::TooLarge)?;
            merges.push((left, right, rank, merged));
        }
        merges.sort_unstable();
        merges.dedup_by_key(|m| (m.0, m.1));
        let merge_words: Vec<u32> = merges.iter().flat_map(|m| [m.0, m.1, m.2, m.3]).collect();
        Ok(TokenizerRef {
            vocab_offsets: self.push_u32(&offsets)?,
            vocab_bytes: self.push_bytes(&vocab_bytes)?,
            merges: self.push_u32(&merge_words)?,
            byte_tokens: self.push_u32(&tables.byte_tokens)?,
            special_ids: self.push_u32(&tables.special_ids)?,
            stop_ids: self.push_u32(&tables.stop_ids)?,
            source_vocab_size: match &tables.trimmed {
                Some(trimmed) => trimmed.source_vocab_size,
                None => u32::try_from(tables.vocab.len()).map_err(|_| WriteError::TooLarge)?,
            },
            source_ids: match &tables.trimmed {
                Some(trimmed) => self.push_u32(&trimmed.source_ids)?,
                None => Span::default(),
            },
            sentencepiece: match &tables.sentencepiece {
                Some(spm) => {
                    let owned = crate::spm::OwnedSpmTables::build(
                        &tables.vocab,
                        &spm.scores,
                        &spm.token_types,
                    )
                    .map_err(|_| WriteError::TooLarge)?;
                    Some(SentencePieceRef {
                        scores: self.push_bytes(&owned.scores)?,
                        token_types: self.push_bytes(&owned.token_types)?,
                        sorted_ids: self.push_bytes(&owned.sorted_ids)?,
                        literal_ids: self.push_bytes(&owned.literal_ids)?,
                        bos: spm.bos.unwrap_or(NO_TOKEN),
                    })
                }
                None => None,
            },
            pre_tokenizer: tables.pre_tokenizer,
        })
    }
}

/// The per-block scales of a quantized matrix, row-major by block: q8's `scale` per block, or
/// q4's f16 bits of `(d, m)` per block.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockScales {
    /// [`Dtype::Q8`]: `rows · ceil(cols / 32)` scales.
    Q8(Vec<f32>),
    /// [`Dtype::Q4`]: `2 · rows · ceil(cols / 32)` f16 bits, `d` then `m` per block.
    Q4(Vec<u16>),
}

/// The writer's q8 scales: per block of [`Q8_BLOCK`] consecutive values of a row
/// `max|w| / 127` (1 for an all-zero block), row-major by block.
pub fn q8_scales(values: &[f32], cols: usize) -> Vec<f32> {
    let mut scales = Vec::with_capacity(values.len().div_ceil(Q8_BLOCK));
    for row in values.chunks(cols.max(1)) {
        for block in row.chunks(Q8_BLOCK) {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            scales.push(if max > 0.0 { max / 127.0 } else { 1.0 });
        }
    }
    scales
}

/// `q = round(w / scale)` clamped to ±127, with `scales` as [`q8_scales`] lays them out.
pub fn round_q8(values: &[f32], cols: usize, scales: &[f32]) -> Vec<i8> {
    let mut q = Vec::with_capacity(values.len());
    let mut scale = scales.iter();
    for row in values.chunks(cols.max(1)) {
        for block in row.chunks(Q8_BLOCK) {
            let s = scale.next().copied().unwrap_or(1.0);
            q.extend(
                block
                    .iter()
                    .map(|v| libm::roundf(v / s).clamp(-127.0, 127.0) as i8),
            );
        }
    }
    q
}

/// Symmetric int8 in blocks of [`Q8_BLOCK`] consecutive values of a row: per block
/// `scale = max|w| / 127` (1 for an all-zero block), `q = round(w / scale)`. Returns the
/// values and `rows · ceil(cols / 32)` scales, row-major (block `b` of row `i` at
/// `i · ceil(cols / 32) + b`); the last block of a row is partial when `cols % 32 != 0`.
pub fn quantize_q8(values: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let scales = q8_scales(values, cols);
    (round_q8(values, cols, &scales), scales)
}

/// The writer's q4 scales: per block the minimum `m` and `d = (max − m) / 15`, both rounded to
/// f16 (`d` after `m`), as f16 bits `(d, m)` per block, row-major by block.
pub fn q4_scales(values: &[f32], cols: usize) -> Vec<u16> {
    use half::f16;
    let mut scales = Vec::with_capacity(2 * values.len().div_ceil(Q8_BLOCK));
    for row in values.chunks(cols.max(1)) {
        for block in row.chunks(Q8_BLOCK) {
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m = f16::from_f32(min);
            let d = f16::from_f32((max - m.to_f32()) / 15.0);
            scales.push(d.to_bits());
            scales.push(m.to_bits());
        }
    }
    scales
}

/// `q = round((w − m) / d)` clamped to `0..=15` (0 where `d` is 0), with `scales` as
/// [`q4_scales`] lays them out; 16 bytes per block (byte `k`: value `k` low, `k + 16` high; a
/// partial last block of a row padded with zeros).
pub fn round_q4(values: &[f32], cols: usize, scales: &[u16]) -> Vec<u8> {
    use half::f16;
    let blocks = values.len().div_ceil(Q8_BLOCK);
    let mut data = Vec::with_capacity(blocks * crate::format::Q4_BLOCK_BYTES);
    let mut pairs = scales.chunks(2);
    for row in values.chunks(cols.max(1)) {
        for block in row.chunks(Q8_BLOCK) {
            let (d32, m32) = match pairs.next() {
                Some(&[d, m]) => (f16::from_bits(d).to_f32(), f16::from_bits(m).to_f32()),
                _ => (0.0, 0.0),
            };
            let mut q = [0u8; Q8_BLOCK];
            for (slot, &w) in q.iter_mut().zip(block) {
                if d32 > 0.0 {
                    *slot = libm::roundf((w - m32) / d32).clamp(0.0, 15.0) as u8;
                }
            }
            let (low, high) = q.split_at(Q8_BLOCK / 2);
            data.extend(low.iter().zip(high).map(|(l, h)| l | (h << 4)));
        }
    }
    data
}

/// 4-bit in blocks of [`Q8_BLOCK`] consecutive values of a row ([`Dtype::Q4`]): per block
/// the minimum `m` and `d = (max − m) / 15`, both rounded to f16, then
/// `q = round((w − m) / d)` clamped to `0..=15` (0 where `d` is 0: a constant block is exact).
/// Returns the packed blocks (16 bytes each; a partial last block of a row is padded with
/// zeros) and the f16 bits of `(d, m)` per block, row-major. (A least-squares refit of `d`
/// and `m` lowered the largest logit error on SST-2 but not the disagreement with f32:
/// docs/RESULTS.md, "q4".)
pub fn quantize_q4(values: &[f32], cols: usize) -> (Vec<u8>, Vec<u16>) {
    let scales = q4_scales(values, cols);
    (round_q4(values, cols, &scales), scales)
}

/// The postcard records of the layers, for [`Header::layers`].
pub fn encode_layers(layers: &[LayerRef]) -> Result<Vec<u8>, WriteError> {
    let mut out = Vec::new();
    for layer in layers {
        out.extend(postcard::to_allocvec(layer).map_err(|_| WriteError::Encode)?);
    }
    Ok(out)
}

/// Signs the bytes before the trailer and returns the 64-byte ed25519 signature.
pub type Signer<'s> = &'s dyn Fn(&[u8]) -> [u8; 64];

/// Frames `header` and `blob` into a bundle; `sign`, if given, signs every byte before the
/// trailer and returns the 64-byte ed25519 signature.
pub fn write_bundle(
    header: &Header<'_>,
    blob: &[u8],
    sign: Option<Signer<'_>>,
) -> Result<Vec<u8>, WriteError> {
    let header_bytes = postcard::to_allocvec(header).map_err(|_| WriteError::Encode)?;
    let header_len = u32::try_from(header_bytes.len()).map_err(|_| WriteError::TooLarge)?;
    let flags: u16 = if sign.is_some() { FLAG_SIGNED } else { 0 };
    let mut out = Vec::with_capacity(PREAMBLE_LEN + header_bytes.len() + ALIGN + blob.len() + 68);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    let crc = CRC32.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(align_up(out.len()), 0);
    out.extend_from_slice(blob);
    out.extend_from_slice(&CRC32.checksum(blob).to_le_bytes());
    if let Some(sign) = sign {
        let signature = sign(&out);
        out.extend_from_slice(&signature);
    }
    Ok(out)
}

/// Context of the session a self-check runs in (prompt and input): 512 tokens, or
/// [`SELF_CHECK_SMALL_CONTEXT`] for a model with fewer positions.
pub const SELF_CHECK_CONTEXT: usize = 512;

/// The self-check context of a model with fewer than [`SELF_CHECK_CONTEXT`] positions.
pub const SELF_CHECK_SMALL_CONTEXT: usize = 64;

/// One input's self-check answer and margin, or why it does not run.
pub type CheckAnswer = Result<(u32, f32), crate::Error>;

/// The self-check answer and its margin ([`crate::Session::check_answer`]) for each input,
/// in one session: an error for an input that does not run (too long, say); the outer error
/// when the bundle does not run at all.
pub fn self_check_answers<K: crate::kernels::Kernels>(
    bundle: &crate::Bundle<'_>,
    kernels: K,
    inputs: &[&str],
) -> Result<Vec<CheckAnswer>, crate::Error> {
    if bundle.header().config.max_position_embeddings >= SELF_CHECK_CONTEXT {
        answers_in::<K, SELF_CHECK_CONTEXT>(bundle, kernels, inputs)
    } else {
        answers_in::<K, SELF_CHECK_SMALL_CONTEXT>(bundle, kernels, inputs)
    }
}

fn answers_in<K: crate::kernels::Kernels, const CONTEXT: usize>(
    bundle: &crate::Bundle<'_>,
    kernels: K,
    inputs: &[&str],
) -> Result<Vec<CheckAnswer>, crate::Error> {
    let mut words = alloc::vec![0u32; bundle.arena_bytes(CONTEXT).div_ceil(4)];
    let mut session =
        crate::Session::<K, CONTEXT>::new(bundle, kernels, bytemuck::cast_slice_mut(&mut words))?;
    Ok(inputs
        .iter()
        .map(|input| session.check_answer(input))
        .collect())
}

/// The self-check a packer records ([`crate::format::SelfCheck`]): runs `bundle` (a complete
/// bundle, its check not yet set) on each candidate input with `kernels` and keeps the one
/// whose answer has the widest margin, so that another machine's kernels, whose sums round
/// differently, give the same answer. `None` when no candidate runs (all too long).
pub fn choose_self_check<'i, K: crate::kernels::Kernels>(
    bundle: &[u8],
    kernels: K,
    candidates: &[&'i str],
) -> Result<Option<SelfCheck<'i>>, crate::Error> {
    let bytes = crate::AlignedBytes::new(bundle);
    let bundle = crate::Bundle::parse(bytes.as_bytes())?;
    let answers = self_check_answers(&bundle, kernels, candidates)?;
    let mut chosen: Option<SelfCheck<'i>> = None;
    for (&input, answer) in candidates.iter().zip(answers) {
        let Ok((expected, margin)) = answer else {
            continue;
        };
        if chosen.is_none_or(|best| margin > best.margin) {
            chosen = Some(SelfCheck {
                input,
                expected,
                margin,
            });
        }
    }
    Ok(chosen)
}

/// Most tokens a stored prompt prefix (and a prompt checked against it) may have.
pub const MAX_PREFIX_TOKENS: usize = 2048;

/// Characters a stored prompt prefix may stop short of the task's (see [`prefix_cache`]).
pub const MAX_PREFIX_BACKOFF: usize = 16;

/// A task prompt's prefix run through a bundle: what [`attach_prefix`] stores.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixCache {
    /// Bytes of the prompt prefix covered.
    pub text_len: usize,
    /// The token ids of those bytes.
    pub tokens: Vec<u32>,
    /// Keys, `n_layers × tokens.len() × kv_dim`, layer-major.
    pub keys: Vec<f32>,
    /// Values, laid out as the keys.
    pub values: Vec<f32>,
}

/// Runs the prompt prefix of `bundle` (a complete bundle without a stored prefix) with
/// `kernels` and returns its tokens, keys and values. The stored part is the longest start of
/// the prefix (cut at most [`MAX_PREFIX_BACKOFF`] characters early) after which every one of
/// `inputs` tokenizes apart: the whole prompt's tokens are the stored ones followed by those
/// of the rest, the input and the suffix (a byte-level BPE pre-tokenizer joins trailing
/// whitespace to the next word, so a prefix ending in a blank line is cut before it). `None`
/// when no such start has tokens.
pub fn prefix_cache<K: crate::kernels::Kernels>(
    bundle: &[u8],
    kernels: K,
    inputs: &[&str],
) -> Result<Option<PrefixCache>, crate::Error> {
    let bytes = crate::AlignedBytes::new(bundle);
    let bundle = crate::Bundle::parse(bytes.as_bytes())?;
    let task = &bundle.header().task;
    let tokenizer = crate::Tokenizer::new(&bundle);
    let text = task.prompt_prefix;
    let cuts = text
        .char_indices()
        .map(|(at, _)| at)
        .chain([text.len()])
        .rev()
        .take(MAX_PREFIX_BACKOFF + 1);
    let mut chosen = None;
    'cuts: for cut in cuts {
        let (head, rest) = text.split_at(cut);
        let mut tokens = heapless::Vec::<u32, MAX_PREFIX_TOKENS>::new();
        tokenizer.encode_prompt(&[head], &mut tokens)?;
        if tokens.is_empty() {
            break;
        }
        for input in inputs {
            let mut whole = heapless::Vec::<u32, MAX_PREFIX_TOKENS>::new();
            let mut split = tokens.clone();
            let encoded = tokenizer
                .encode_prompt(&[text, input, task.prompt_suffix], &mut whole)
                .and_then(|()| tokenizer.encode(&[rest, input, task.prompt_suffix], &mut split));
            if encoded.is_ok() && whole != split {
                continue 'cuts;
            }
        }
        chosen = Some((cut, tokens));
        break;
    }
    let Some((text_len, tokens)) = chosen else {
        return Ok(None);
    };
    let config = &bundle.header().config;
    let len = tokens.len();
    let mut words = alloc::vec![0u32; bundle.arena_bytes(len).div_ceil(4)];
    let mut model = crate::Model::new(&bundle, kernels, len, bytemuck::cast_slice_mut(&mut words))?;
    model.feed(&tokens)?;
    let values_len = config.n_layers * len * config.kv_dim();
    let mut keys = alloc::vec![0.0f32; values_len];
    let mut values = alloc::vec![0.0f32; values_len];
    model.cached_keys_values(len, &mut keys, &mut values)?;
    Ok(Some(PrefixCache {
        text_len,
        tokens: tokens.to_vec(),
        keys,
        values,
    }))
}

/// Appends `cache` to `blob` and points `header.prefix` at it, with the CRC-32 of the blob
/// before it (the weights it was computed from).
pub fn attach_prefix(
    header: &mut Header<'_>,
    blob: &mut BlobBuilder,
    cache: &PrefixCache,
) -> Result<(), WriteError> {
    let tokens = blob.push_u32(&cache.tokens)?;
    let weights_crc = CRC32.checksum(blob.bytes().get(..tokens.offset as usize).unwrap_or(&[]));
    let keys = blob.push_f32(&cache.keys)?;
    let values = blob.push_f32(&cache.values)?;
    header.prefix = Some(crate::format::PrefixRef {
        text_len: u32::try_from(cache.text_len).map_err(|_| WriteError::TooLarge)?,
        tokens,
        keys,
        values,
        weights_crc,
    });
    Ok(())
}

/// A release of the synthetic model of [`synthetic_bundle`] for a deployment test: task
/// `task`, release number `sequence`, a self-check chosen by the portable kernels, signed
/// by `sign` if given.
pub fn synthetic_release(
    config: &ModelConfig,
    task: &str,
    sequence: u64,
    sign: Option<Signer<'_>>,
) -> Result<Vec<u8>, WriteError> {
    let parts = synthetic_parts(config, Dtype::Q8)?;
    let mut header = parts.header(&parts.layer_bytes);
    let blob = &parts.blob;
    header.task.name = task;
    header.provenance.task = task;
    header.provenance.sequence = sequence;
    let probe = write_bundle(&header, blob.bytes(), None)?;
    let candidates = ["the film is a delight", "dull and long"];
    header.provenance.check = choose_self_check(&probe, crate::kernels::Portable, &candidates)
        .map_err(|_| WriteError::Encode)?;
    write_bundle(&header, blob.bytes(), sign)
}

/// A dense model of `config`'s shapes with deterministic pseudo-random weights (uniform in
/// ±0.05, norms of 1), a byte-level tokenizer (tokens past 256 are never produced) and a tied
/// head: what `whittle-device profile` times the runtime on, and what tests need when only the
/// shapes matter.
pub fn synthetic_bundle(config: &ModelConfig, dtype: Dtype) -> Result<Vec<u8>, WriteError> {
    let parts = synthetic_parts(config, dtype)?;
    write_bundle(&parts.header(&parts.layer_bytes), parts.blob.bytes(), None)
}

/// A one-block f32 model of width 8 with the given tokenizer tables (its vocabulary as large
/// as theirs): what tests of a tokenizer's tables run.
pub fn synthetic_bundle_with_tables(tables: &TokenizerTables) -> Result<Vec<u8>, WriteError> {
    let config = ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 1,
        hidden_size: 8,
        intermediate_size: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        vocab_size: tables.vocab.len(),
        max_position_embeddings: 4096,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    };
    let parts = synthetic_parts_with(&config, Dtype::F32, tables)?;
    write_bundle(&parts.header(&parts.layer_bytes), parts.blob.bytes(), None)
}

/// The blob, layer records and header fields of [`synthetic_bundle`].
struct SyntheticParts {
    config: ModelConfig,
    dtype: Dtype,
    blob: BlobBuilder,
    layer_bytes: Vec<u8>,
    tokenizer: TokenizerRef,
    embedding: MatrixRef,
    final_norm: Span,
}

fn synthetic_parts(config: &ModelConfig, dtype: Dtype) -> Result<SyntheticParts, WriteError> {
    let tables = TokenizerTables {
        vocab: (0..config.vocab_size)
            .map(|id| match u8::try_from(id) {
                Ok(byte) => alloc::vec![byte],
                Err(_) => alloc::format!("<{id}>").into_bytes(),
            })
            .collect(),
        merges: Vec::new(),
        byte_tokens: (0..256u32).collect(),
        special_ids: Vec::new(),
        stop_ids: Vec::new(),
        trimmed: None,
        sentencepiece: None,
        pre_tokenizer: PreTokenizer::Smollm,
    };
    synthetic_parts_with(config, dtype, &tables)
}

fn synthetic_parts_with(
    config: &ModelConfig,
    dtype: Dtype,
    tables: &TokenizerTables,
) -> Result<SyntheticParts, WriteError> {
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    };
    let mut blob = BlobBuilder::new();
    let tokenizer = blob.push_tokenizer(tables)?;
    let embedding = blob.push_matrix(vocab, hidden, &values(vocab * hidden), dtype)?;
    let ones = alloc::vec![1.0f32; hidden];
    let final_norm = blob.push_f32(&ones)?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for _ in 0..config.n_layers {
        let attn_norm = blob.push_f32(&ones)?;
        let ffn_norm = blob.push_f32(&ones)?;
        let post_norms = match config.arch.post_norms {
            true => Some((blob.push_f32(&ones)?, blob.push_f32(&ones)?)),
            false => None,
        };
        let qk_norms = match config.arch.qk_norm {
            true => {
                let ones = alloc::vec![1.0f32; config.head_dim()];
                Some((blob.push_f32(&ones)?, blob.push_f32(&ones)?))
            }
            false => None,
        };
        let mut linears = [LinearRef::Dense(embedding); 7];
        for (slot, kind) in linears.iter_mut().zip(crate::MatrixKind::ALL) {
            let (rows, cols) = config.matrix_shape(kind);
            *slot = LinearRef::Dense(blob.push_matrix(rows, cols, &values(rows * cols), dtype)?);
        }
        let qkv_bias = match config.arch.qkv_bias {
            true => {
                let mut bias = |kind| blob.push_f32(&values(config.matrix_shape(kind).0));
                Some([
                    bias(crate::MatrixKind::Q)?,
                    bias(crate::MatrixKind::K)?,
                    bias(crate::MatrixKind::V)?,
                ])
            }
            false => None,
        };
        layers.push(LayerRef {
            attn_norm,
            ffn_norm,
            linears,
            post_norms,
            qk_norms,
            qkv_bias,
            rotary_pairs: Span::default(),
        });
    }
    let layer_bytes = encode_layers(&layers)?;
    Ok(SyntheticParts {
        config: *config,
        dtype,
        blob,
        layer_bytes,
        tokenizer,
        embedding,
        final_norm,
    })
}

impl SyntheticParts {
    fn header<'a>(&self, layer_bytes: &'a [u8]) -> Header<'a> {
        Header {
            config: self.config,
            dtype: self.dtype,
            tokenizer: self.tokenizer,
            task: TaskRef {
                name: "synthetic",
                kind: TaskKind::Generation,
                prompt_prefix: "",
                prompt_suffix: "",
                labels: heapless::Vec::new(),
                max_new_tokens: 1,
            },
            embedding: self.embedding,
            final_norm: self.final_norm,
            head: HeadRef::Tied,
            layers: LayerRecords(layer_bytes),
            provenance: Provenance {
                model_digest: "synthetic",
                model_licence: "",
                factors_digest: "",
                genome_digest: "",
                source: "",
                task: "",
                board: "",
                epsilon: None,
                seed: None,
                dense_accuracy: None,
                pruned_accuracy: None,
                tool_version: env!("CARGO_PKG_VERSION"),
                sequence: 0,
                check: None,
            },
            prefix: None,
        }
    }
}
