//! The bundle's wire schema (`docs/bundle-format.md`), shared by the host's writer and the
//! runtime's parser: the fixed preamble, the postcard-encoded [`Header`] and the references it
//! holds into the tensor blob.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"WHITTLE\0";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u16 = 7;
/// Bytes before the header: magic, version, flags, header length, blob length.
pub const PREAMBLE_LEN: usize = 24;
/// Values per q8 scale: each row of a q8 matrix is cut into blocks of this many consecutive
/// values (the last one partial when `cols` is not a multiple), one f32 scale each.
pub const Q8_BLOCK: usize = 32;

/// Scales per row of a q8 matrix with `cols` columns: `ceil(cols / Q8_BLOCK)`.
pub const fn q8_blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(Q8_BLOCK)
}
/// Alignment of the blob and of every tensor in it, in bytes.
pub const ALIGN: usize = 64;
/// Flag bit: a 64-byte ed25519 signature trailer follows the blob checksum.
pub const FLAG_SIGNED: u16 = 1;
/// Length of the signature trailer.
pub const SIGNATURE_LEN: usize = 64;
/// Most labels a classification bundle may carry.
pub const MAX_LABELS: usize = 16;
/// Length of one merge record: left id, right id, rank, merged id (`u32` LE each).
pub const MERGE_RECORD_LEN: usize = 16;
/// Marks a byte with no token of its own in the byte table.
pub const NO_TOKEN: u32 = u32::MAX;

/// CRC-32 (ISO-HDLC, the zlib/PNG polynomial) of the preamble + header and of the blob.
pub const CRC32: crc::Crc<u32, CrcTable> = crc::Crc::<u32, CrcTable>::new(&crc::CRC_32_ISO_HDLC);

/// The CRC's lookup tables. Under `std` (boards with an OS, where a 150 MB bundle is checked
/// at every load) sixteen tables of 1 KiB process 16 bytes per step: the 145 MB dense bundle
/// parses in 29 ms instead of 297 on the development machine. Without it (microcontrollers,
/// where flash is scarce and bundles are small) one table. The checksum is the same either way.
#[cfg(feature = "std")]
pub type CrcTable = crc::Table<16>;
/// See the `std` variant.
#[cfg(not(feature = "std"))]
pub type CrcTable = crc::Table<1>;

/// Rounds `n` up to the next multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A byte range of the blob: `offset` from the blob's start (a multiple of [`ALIGN`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Start, relative to the blob.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// How the weights of a matrix are stored. The one dtype type of the workspace: the bundle
/// stores it, the cost model prices it ([`Dtype::matrix_bytes`]) and the CLIs parse it (with
/// the `clap` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Little-endian f32, row-major.
    F32,
    /// int8, row-major, with one f32 scale per block of [`Q8_BLOCK`] consecutive values of a
    /// row: `w[i][j] = scale[i · ceil(cols / 32) + j / 32] · q[i][j]`.
    Q8,
    /// 4-bit, in blocks of [`Q8_BLOCK`] (32) consecutive values of a row, each block 16 bytes
    /// (byte `k` holds value `k` in its low nibble and value `k + 16` in its high nibble) with
    /// an f16 scale `d` and an f16 minimum `m`: `w = d · q + m`, `q` in `0..=15`.
    Q4,
}

impl Dtype {
    /// `f32` or `q8`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// Whether a bundle of this dtype may store a matrix in `matrix`: its own dtype, f32 in
    /// any (the packer keeps a task's label rows exact), and q8 in a q4 bundle (mixed
    /// precision: the packer keeps the embedding, the head and any matrix it finds too
    /// sensitive for 4 bits at 8).
    pub fn admits(self, matrix: Dtype) -> bool {
        matrix == self || matrix == Self::F32 || (self == Self::Q4 && matrix == Self::Q8)
    }

    /// The dtype a bundle of this dtype stores its embedding and head in: its own, except q8
    /// for q4 (each row goes straight into the residual stream or a logit, with nothing after
    /// it to average a 4-bit rounding away; docs/RESULTS.md, "q4").
    pub const fn rows(self) -> Dtype {
        match self {
            Self::Q4 => Self::Q8,
            other => other,
        }
    }

    /// Bytes of one stored `rows × cols` matrix, scales included (saturating).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> u64 {
        let product = |factors: &[usize]| {
            factors
                .iter()
                .fold(1u64, |acc, &factor| acc.saturating_mul(factor as u64))
        };
        match self {
            Self::F32 => product(&[4, rows, cols]),
            Self::Q8 => {
                product(&[rows, cols]).saturating_add(product(&[4, rows, cols.div_ceil(Q8_BLOCK)]))
            }
            Self::Q4 => product(&[Q4_BLOCK_BYTES + 4, rows, cols.div_ceil(Q8_BLOCK)]),
        }
    }
}

/// Bytes of one q4 block's values (32 nibbles); its `(d, m)` pair of f16 is in `scales`.
pub const Q4_BLOCK_BYTES: usize = 16;

/// A row-major matrix in the blob; `scales` is present exactly for [`Dtype::Q8`] and
/// [`Dtype::Q4`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixRef {
    /// Number of rows (outputs).
    pub rows: u32,
    /// Number of columns (inputs).
    pub cols: u32,
    /// Storage type.
    pub dtype: Dtype,
    /// The values: `rows · cols · 4` bytes (f32), `rows · cols` bytes (q8) or
    /// `rows · ceil(cols / 32) · 16` bytes (q4).
    pub data: Span,
    /// Per block of [`Q8_BLOCK`] values of a row, row-major: one f32 (q8) or an f16 scale
    /// and an f16 minimum (q4); `rows · ceil(cols / 32)` blocks in all.
    pub scales: Option<Span>,
}

/// A prunable linear layer: whole, or as `y = B (A x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinearRef {
    /// `(d_out, d_in)`.
    Dense(MatrixRef),
    /// `a` is `(rank, d_in)`, `b` is `(d_out, rank)`.
    LowRank {
        /// The input-side factor.
        a: MatrixRef,
        /// The output-side factor.
        b: MatrixRef,
    },
}

/// One transformer block: two norms and the seven linears in [`crate::MatrixKind::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// RMSNorm weight before attention (`hidden_size` f32).
    pub attn_norm: Span,
    /// RMSNorm weight before the MLP (`hidden_size` f32).
    pub ffn_norm: Span,
    /// q, k, v, o, gate, up, down.
    pub linears: [LinearRef; 7],
    /// `(after the attention, after the MLP)` output norms (`hidden_size` f32 each): present
    /// exactly when the config's architecture has post-norms.
    pub post_norms: Option<(Span, Span)>,
    /// `(query, key)` head norms (`head_dim` f32 each, in the interleaved rotary order):
    /// present exactly when the architecture has query/key norms.
    pub qk_norms: Option<(Span, Span)>,
    /// Biases of q, k and v (f32, one per stored output row: q's and k's in the interleaved
    /// rotary order, and of the kept pairs' rows when the block keeps some; v's of the kept
    /// value dimensions): present exactly when the architecture has them and the attention is
    /// not skipped.
    pub qkv_bias: Option<[Span; 3]>,
    /// The rotary pairs the block's query/key heads keep, when not all: `n_kv_heads` lists of
    /// equal length `p` (`u16` LE, each strictly ascending, below `head_dim / 2`), one per
    /// key/value head and shared by its query heads. q then has `2p` rows per query head and k
    /// `2p` per key/value head: the rows of pair `i` (lanes `2i`, `2i + 1`) of each list's
    /// pairs, in list order. Empty when every pair is kept or the attention is skipped.
    pub rotary_pairs: Span,
}

/// The output projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadRef {
    /// The token embedding serves as the head.
    Tied,
    /// A separate `(vocab_size, hidden_size)` head.
    Full(MatrixRef),
    /// Task-pruned: only the label tokens' rows, `(n_labels, hidden_size)`, in label order.
    Labels(MatrixRef),
}

/// The tokenizer's tables in the blob: a byte-level BPE (merges), or a SentencePiece
/// vocabulary when [`TokenizerRef::sentencepiece`] is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerRef {
    /// `vocab_size + 1` `u32` offsets into `vocab_bytes`; token `i` is `[off[i], off[i+1])`.
    pub vocab_offsets: Span,
    /// Every token's raw bytes (byte-level decoded; special tokens as written).
    pub vocab_bytes: Span,
    /// Merge records sorted by (left, right): see [`MERGE_RECORD_LEN`].
    pub merges: Span,
    /// 256 `u32`: the token of every single byte ([`NO_TOKEN`] if none).
    pub byte_tokens: Span,
    /// Ids of the special tokens, matched literally in text and skipped when decoding.
    pub special_ids: Span,
    /// Ids that end generation.
    pub stop_ids: Span,
    /// Tokens in the source model's vocabulary (`vocab_size` unless trimmed).
    pub source_vocab_size: u32,
    /// A task-trimmed vocabulary: the source id of every token (`vocab_size` `u32`, strictly
    /// ascending, below `source_vocab_size`); empty when the vocabulary is whole.
    pub source_ids: Span,
    /// The SentencePiece tables (llama.cpp's `llama` tokenizer, Gemma 3's): `merges` is then
    /// empty and `byte_tokens` holds the `<0xXX>` tokens.
    pub sentencepiece: Option<SentencePieceRef>,
    /// How a byte-level BPE splits text before merging (ignored for SentencePiece).
    pub pre_tokenizer: PreTokenizer,
}

/// The pre-tokenizer of a byte-level BPE: how text is cut into pieces that merges never cross.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PreTokenizer {
    /// SmolLM2's: every digit alone, then GPT-2's pattern
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    #[default]
    Smollm,
    /// Qwen2's pattern `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Qwen2,
}

/// A SentencePiece vocabulary's tables beside the token texts ([`crate::spm::SpmTables`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentencePieceRef {
    /// `vocab_size` `f32`: each token's score (higher merges first).
    pub scores: Span,
    /// `vocab_size` bytes: each token's `tokenizer.ggml.token_type`.
    pub token_types: Span,
    /// `vocab_size` `u32`: every id, ordered by its token's bytes.
    pub sorted_ids: Span,
    /// `u32`: the control, unknown and user-defined tokens, longest text first.
    pub literal_ids: Span,
    /// The token every prompt starts with ([`NO_TOKEN`]: none).
    pub bos: u32,
}

/// One label of a classification task.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelRef<'a> {
    /// The label's value in the task's data (`"0"`, `"yes"`).
    pub name: &'a str,
    /// The single verbalizer token scored for it.
    pub token_id: u32,
    /// Per-label bias fitted on the calibration split, added to the logit.
    pub bias: f32,
}

/// What the bundle's task asks of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Argmax over the labels' verbalizer logits plus bias.
    Classification,
    /// Greedy generation.
    Generation,
}

/// The task: how input text becomes a prompt, and what is read off the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRef<'a> {
    /// Task name.
    pub name: &'a str,
    /// Classification or generation.
    pub kind: TaskKind,
    /// Prompt text before the input (chat template included).
    pub prompt_prefix: &'a str,
    /// Prompt text after the input.
    pub prompt_suffix: &'a str,
    /// Labels (classification); empty otherwise.
    #[serde(borrow)]
    pub labels: heapless::Vec<LabelRef<'a>, MAX_LABELS>,
    /// Default token budget for generation.
    pub max_new_tokens: u32,
}

/// Where the bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance<'a> {
    /// sha256 of the source GGUF file (hex).
    pub model_digest: &'a str,
    /// The terms the source model comes under, when the packer knows them (a model fetched by
    /// name, e.g. Gemma 3 270M under the Gemma Terms of Use); empty otherwise.
    pub model_licence: &'a str,
    /// sha256 of the prune folder's `factors.safetensors` (hex), empty for a dense bundle.
    pub factors_digest: &'a str,
    /// The prune folder's genome (`genome.json`) digest (hex), empty for a dense bundle.
    pub genome_digest: &'a str,
    /// The prune folder the factors came from, empty for a dense bundle.
    pub source: &'a str,
    /// Task name.
    pub task: &'a str,
    /// Board the model was pruned for, empty for a dense bundle.
    pub board: &'a str,
    /// Relative accuracy tolerance of the search.
    pub epsilon: Option<f64>,
    /// Seed of the search.
    pub seed: Option<u64>,
    /// Dense accuracy on the test split, if measured.
    pub dense_accuracy: Option<f64>,
    /// Pruned accuracy on the test split, if measured.
    pub pruned_accuracy: Option<f64>,
    /// Version of the tool that wrote the bundle.
    pub tool_version: &'a str,
    /// Release number (the packing time in Unix milliseconds unless the packer set one): a
    /// device refuses a bundle whose number is below that of an installed bundle of the same
    /// task, so a captured older bundle cannot be replayed (the signature covers it).
    pub sequence: u64,
    /// One input and the answer the packer's runtime gave for it, run again when a device
    /// installs the bundle.
    #[serde(borrow)]
    pub check: Option<SelfCheck<'a>>,
}

/// An input and the answer recorded for it at packing: the label index (classification) or
/// the first greedy token id (generation); see [`crate::Session::check_answer`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfCheck<'a> {
    /// The input text (without the prompt).
    pub input: &'a str,
    /// The answer the packer's runtime gave.
    pub expected: u32,
    /// Its margin over the runner-up (label score or logit) there.
    pub margin: f32,
}

/// Opaque postcard-encoded [`LayerRef`] records, one per layer, decoded on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerRecords<'a>(pub &'a [u8]);

impl Serialize for LayerRecords<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LayerRecords<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(LayerRecords)
    }
}

/// An ed25519 public key written as 64 hex digits (the `KEY.pub` of `whittle keygen`),
/// surrounding whitespace ignored; `None` for anything else.
pub fn public_key_from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Everything the runtime needs besides the blob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header<'a> {
    /// Model hyper-parameters.
    pub config: ModelConfig,
    /// Storage type of every matrix (norms are always f32).
    pub dtype: Dtype,
    /// Tokenizer tables.
    pub tokenizer: TokenizerRef,
    /// The task.
    #[serde(borrow)]
    pub task: TaskRef<'a>,
    /// Token embedding, `(vocab_size, hidden_size)`.
    pub embedding: MatrixRef,
    /// Final RMSNorm weight.
    pub final_norm: Span,
    /// Output head.
    pub head: HeadRef,
    /// `n_layers` [`LayerRef`] records.
    #[serde(borrow)]
    pub layers: LayerRecords<'a>,
    /// Provenance.
    #[serde(borrow)]
    pub provenance: Provenance<'a>,
    /// The prompt prefix run at packing (every input of the task starts with it).
    pub prefix: Option<PrefixRef>,
}

/// The task prompt's prefix, run once by the packer: its tokens and every layer's keys and
/// values for them, so that a session starts after it and runs only the input and the suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRef {
    /// Bytes of the task's `prompt_prefix` it covers (a character boundary): the runtime
    /// tokenizes the rest of the prefix with the input, so that no token spans the cut.
    pub text_len: u32,
    /// The token ids of those bytes (`u32`).
    pub tokens: Span,
    /// Keys: `n_layers × len × kv_dim` f32, layer-major, one `kv_dim` slot per position (the
    /// runtime's KV cache layout).
    pub keys: Span,
    /// Values, laid out as the keys (a position's kept value dimensions at the start of each
    /// key/value head's share of its slot, the rest zero).
    pub values: Span,
    /// CRC-32 of the blob's bytes before `tokens`: the weights the keys and values were
    /// computed from (`Error::PrefixMismatch` when they differ).
    pub weights_crc: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn public_keys_are_64_hex_digits() {
        let text = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let key = super::public_key_from_hex(text);
        assert_eq!(key.map(|k| (k[0], k[1], k[31])), Some((0x00, 0x11, 0xff)));
        for bad in ["", "00", &text.trim()[1..], &text.replace('0', "g")] {
            assert_eq!(super::public_key_from_hex(bad), None, "{bad:?}");
        }
    }

    use super::CRC32;

    /// Every table layout computes CRC-32/ISO-HDLC: the standard check value, and one table
    /// against sixteen on bytes of every value and odd lengths.
    #[test]
    fn crc_is_iso_hdlc_whatever_the_tables() {
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
        let one = crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);
        let sixteen = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);
        let bytes: alloc::vec::Vec<u8> = (0..4099u32).map(|i| (i * 131 % 251) as u8).collect();
        for len in [0, 1, 15, 16, 17, 1000, 4099] {
            let part = bytes.get(..len).unwrap_or_default();
            assert_eq!(one.checksum(part), sixteen.checksum(part), "length {len}");
            assert_eq!(CRC32.checksum(part), one.checksum(part), "length {len}");
        }
    }
}
