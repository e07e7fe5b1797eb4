//! Zero-copy parsing and validation of a bundle: every offset, length, alignment, shape and
//! checksum is checked once in [`Bundle::parse`], so the model code can trust the references.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::config::{BlockWidths, MatrixKind, ModelConfig};
use crate::error::Error;
use crate::format::{
    ALIGN, CRC32, Dtype, FLAG_SIGNED, FORMAT_VERSION, HeadRef, Header, LayerRef, LinearRef, MAGIC,
    MERGE_RECORD_LEN, MatrixRef, NO_TOKEN, PREAMBLE_LEN, SIGNATURE_LEN, Span, TaskKind, align_up,
    q8_blocks_per_row,
};
use crate::kernels::{F32Matrix, Q4_BLOCK_BYTES, Q4Matrix, Q8Matrix};

/// A parsed, validated bundle borrowing its bytes.
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    header: Header<'a>,
    blob: &'a [u8],
    signed_part: &'a [u8],
    signature: Option<&'a [u8]>,
    len: usize,
}

pub use crate::kernels::Weight;

/// A linear layer borrowed from the blob.
#[derive(Clone, Copy, Debug)]
pub enum LinearWeights<'a> {
    /// `W`.
    Dense(Weight<'a>),
    /// `B (A x)`.
    LowRank {
        /// `(rank, d_in)`.
        a: Weight<'a>,
        /// `(d_out, rank)`.
        b: Weight<'a>,
    },
}

/// The layer records of a bundle, decoded one after the other ([`Bundle::layers`]); a record
/// that does not decode ends the iteration with [`Error::BadLayer`].
#[derive(Clone, Debug)]
pub struct Layers<'a> {
    rest: &'a [u8],
    left: usize,
}

impl Iterator for Layers<'_> {
    type Item = Result<LayerRef, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        match postcard::take_from_bytes::<LayerRef>(self.rest) {
            Ok((layer, tail)) => {
                self.rest = tail;
                Some(Ok(layer))
            }
            Err(_) => {
                self.left = 0;
                Some(Err(Error::BadLayer))
            }
        }
    }
}

/// A bundle's stored prompt prefix, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub struct Prefix<'a> {
    /// The end of the task's prompt prefix it does not cover (tokenized with the input).
    pub rest: &'a str,
    /// Its token ids.
    pub tokens: &'a [u32],
    /// Keys, `n_layers × tokens.len() × kv_dim`, layer-major.
    pub keys: &'a [f32],
    /// Values, laid out as the keys.
    pub values: &'a [f32],
}

impl<'a> Bundle<'a> {
    /// Parses and validates `bytes`; a signature trailer, if present, is not checked (see
    /// [`Bundle::parse_signed`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let preamble = bytes.get(..PREAMBLE_LEN).ok_or(Error::Truncated)?;
        if preamble.get(..8) != Some(&MAGIC[..]) {
            return Err(Error::BadMagic);
        }
        let version = u16::from_le_bytes(array(preamble, 8)?);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: version });
        }
        let flags = u16::from_le_bytes(array(preamble, 10)?);
        if flags & !FLAG_SIGNED != 0 {
            return Err(Error::UnknownFlags);
        }
        let header_len = to_usize(u32::from_le_bytes(array(preamble, 12)?))?;
        let blob_len = usize::try_from(u64::from_le_bytes(array(preamble, 16)?))
            .map_err(|_| Error::Truncated)?;
        let header_end = PREAMBLE_LEN
            .checked_add(header_len)
            .ok_or(Error::Truncated)?;
        let crc_end = header_end.checked_add(4).ok_or(Error::Truncated)?;
        let blob_start = align_up(crc_end);
        let blob_end = blob_start.checked_add(blob_len).ok_or(Error::Truncated)?;
        let blob_crc_end = blob_end.checked_add(4).ok_or(Error::Truncated)?;
        let end = match flags & FLAG_SIGNED != 0 {
            true => blob_crc_end
                .checked_add(SIGNATURE_LEN)
                .ok_or(Error::Truncated)?,
            false => blob_crc_end,
        };
        if bytes.len() < end {
            return Err(Error::Truncated);
        }
        if bytes.len() > end {
            return Err(Error::TrailingBytes);
        }
        let covered = bytes.get(..header_end).ok_or(Error::Truncated)?;
        if CRC32.checksum(covered) != u32::from_le_bytes(array(bytes, header_end)?) {
            return Err(Error::HeaderChecksum);
        }
        let blob = bytes.get(blob_start..blob_end).ok_or(Error::Truncated)?;
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err(Error::MisalignedBundle);
        }
        let header_bytes = bytes
            .get(PREAMBLE_LEN..header_end)
            .ok_or(Error::Truncated)?;
        let (header, rest) = postcard::take_from_bytes::<Header<'a>>(header_bytes)
            .map_err(|_| Error::HeaderDecode)?;
        if !rest.is_empty() {
            return Err(Error::HeaderDecode);
        }
        // One pass over the blob: the CRC of the bytes before the stored prompt prefix (the
        // weights it was computed from) on the way to the whole blob's.
        let cut = header
            .prefix
            .map_or(0, |prefix| (prefix.tokens.offset as usize).min(blob.len()));
        let (weights, after) = blob.split_at(cut);
        let mut digest = CRC32.digest();
        digest.update(weights);
        let weights_crc = digest.clone().finalize();
        digest.update(after);
        if digest.finalize() != u32::from_le_bytes(array(bytes, blob_end)?) {
            return Err(Error::BlobChecksum);
        }
        if header
            .prefix
            .is_some_and(|prefix| prefix.weights_crc != weights_crc)
        {
            return Err(Error::PrefixMismatch);
        }
        let signature = match flags & FLAG_SIGNED != 0 {
            true => Some(bytes.get(blob_crc_end..end).ok_or(Error::Truncated)?),
            false => None,
        };
        let bundle = Self {
            header,
            blob,
            signed_part: bytes.get(..blob_crc_end).ok_or(Error::Truncated)?,
            signature,
            len: end,
        };
        bundle.validate()?;
        crate::fmt::debug!("bundle parsed: {} bytes", end);
        Ok(bundle)
    }

    /// Parses `bytes` and requires a signature that verifies with the ed25519 public key
    /// `public_key`.
    pub fn parse_signed(bytes: &'a [u8], public_key: &[u8; 32]) -> Result<Self, Error> {
        let bundle = Self::parse(bytes)?;
        bundle.verify(public_key)?;
        Ok(bundle)
    }

    /// Checks the signature trailer against `public_key`.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), Error> {
        let signature = self.signature.ok_or(Error::SignatureMissing)?;
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::SignatureInvalid)?;
        let signature = Signature::from_slice(signature).map_err(|_| Error::SignatureInvalid)?;
        key.verify(self.signed_part, &signature)
            .map_err(|_| Error::SignatureInvalid)
    }

    /// Whether the bundle carries a signature trailer.
    pub fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// The decoded header.
    pub fn header(&self) -> &Header<'a> {
        &self.header
    }

    /// Total length of the bundle in bytes.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// Length of the tensor blob in bytes.
    pub fn blob_len(&self) -> usize {
        self.blob.len()
    }

    /// The record of layer `layer_idx` (decoding the records before it: to visit every
    /// layer, [`Bundle::layers`] decodes each once).
    pub fn layer(&self, layer_idx: usize) -> Result<LayerRef, Error> {
        self.layers().nth(layer_idx).unwrap_or(Err(Error::BadLayer))
    }

    /// The records of the `n_layers` layers in order, each decoded once.
    pub fn layers(&self) -> Layers<'a> {
        Layers {
            rest: self.header.layers.0,
            left: self.header.config.n_layers,
        }
    }

    /// The bytes of a span (validated at parse time).
    pub fn span(&self, span: Span) -> &'a [u8] {
        let start = span.offset as usize;
        self.blob
            .get(start..start.saturating_add(span.len as usize))
            .unwrap_or(&[])
    }

    /// A span of f32 values.
    pub fn f32s(&self, span: Span) -> &'a [f32] {
        bytemuck::try_cast_slice(self.span(span)).unwrap_or(&[])
    }

    /// A matrix ready for the kernels.
    pub fn weight(&self, matrix: &MatrixRef) -> Weight<'a> {
        let (rows, cols) = (matrix.rows as usize, matrix.cols as usize);
        match (matrix.dtype, matrix.scales) {
            (Dtype::Q8, Some(scales)) => Weight::Q8(Q8Matrix {
                rows,
                cols,
                data: bytemuck::cast_slice(self.span(matrix.data)),
                scales: self.f32s(scales),
            }),
            (Dtype::Q4, Some(scales)) => Weight::Q4(Q4Matrix {
                rows,
                cols,
                data: self.span(matrix.data),
                scales: bytemuck::try_cast_slice(self.span(scales)).unwrap_or(&[]),
            }),
            _ => Weight::F32(F32Matrix {
                rows,
                cols,
                data: self.f32s(matrix.data),
            }),
        }
    }

    /// A linear layer ready for the kernels.
    pub fn linear(&self, linear: &LinearRef) -> LinearWeights<'a> {
        match linear {
            LinearRef::Dense(w) => LinearWeights::Dense(self.weight(w)),
            LinearRef::LowRank { a, b } => LinearWeights::LowRank {
                a: self.weight(a),
                b: self.weight(b),
            },
        }
    }

    /// Neurons kept by the MLP of block `layer_idx` and value dimensions kept per key/value
    /// head (`intermediate_size` and `head_dim` unless the block was pruned by those units;
    /// zero: the sub-block is skipped).
    pub fn block_widths(&self, layer_idx: usize) -> Result<BlockWidths, Error> {
        block_widths(&self.layer(layer_idx)?, &self.header.config).ok_or(Error::BadLayer)
    }

    /// The largest rank of any low-rank layer (0 when all are dense).
    pub fn max_rank(&self) -> usize {
        self.layers()
            .flatten()
            .flat_map(|layer| layer.linears)
            .filter_map(|linear| match linear {
                LinearRef::LowRank { a, .. } => Some(a.rows as usize),
                LinearRef::Dense(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn validate(&self) -> Result<(), Error> {
        let config = &self.header.config;
        config.validate()?;
        let dtype = self.header.dtype;
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        self.check_matrix(&self.header.embedding, vocab, hidden, dtype)?;
        self.check_f32s(self.header.final_norm, hidden)?;
        let n_labels = self.header.task.labels.len();
        match &self.header.head {
            HeadRef::Tied => {}
            HeadRef::Full(m) => self.check_matrix(m, vocab, hidden, dtype)?,
            HeadRef::Labels(m) => {
                if n_labels == 0 || self.header.task.kind != TaskKind::Classification {
                    return Err(Error::BadTask);
                }
                self.check_matrix(m, n_labels, hidden, dtype)?;
            }
        }
        let mut layers = self.layers();
        for layer in layers.by_ref() {
            let layer = layer?;
            self.check_f32s(layer.attn_norm, hidden)?;
            self.check_f32s(layer.ffn_norm, hidden)?;
            match (layer.post_norms, config.arch.post_norms) {
                (Some((attention, mlp)), true) => {
                    self.check_f32s(attention, hidden)?;
                    self.check_f32s(mlp, hidden)?;
                }
                (None, false) => {}
                _ => return Err(Error::BadLayer),
            }
            match (layer.qk_norms, config.arch.qk_norm) {
                (Some((q, k)), true) => {
                    self.check_f32s(q, config.head_dim())?;
                    self.check_f32s(k, config.head_dim())?;
                }
                (None, false) => {}
                _ => return Err(Error::BadLayer),
            }
            // A block may keep fewer MLP neurons than `intermediate_size` (gate's output sets
            // the width) and fewer value dimensions per key/value head than `head_dim` (v's
            // output sets them); every other matrix must agree. Zero skips the sub-block.
            let widths = block_widths(&layer, config).ok_or(Error::BadShape)?;
            match (layer.qkv_bias, config.arch.qkv_bias && widths.value > 0) {
                (Some(biases), true) => {
                    for (bias, kind) in biases.into_iter().zip(MatrixKind::ALL) {
                        self.check_f32s(bias, config.matrix_shape_in(kind, widths).0)?;
                    }
                }
                (None, false) => {}
                _ => return Err(Error::BadLayer),
            }
            self.check_rotary_pairs(layer.rotary_pairs, widths.pairs, config)?;
            for (kind, linear) in MatrixKind::ALL.into_iter().zip(&layer.linears) {
                let (rows, cols) = config.matrix_shape_in(kind, widths);
                match linear {
                    LinearRef::Dense(w) => self.check_matrix(w, rows, cols, dtype)?,
                    LinearRef::LowRank { a, b } => {
                        let rank = a.rows as usize;
                        if rank == 0 || rank > rows.min(cols) {
                            return Err(Error::BadShape);
                        }
                        self.check_matrix(a, rank, cols, dtype)?;
                        self.check_matrix(b, rows, rank, dtype)?;
                    }
                }
            }
        }
        // Nothing after the last record.
        if !layers.rest.is_empty() {
            return Err(Error::BadLayer);
        }
        self.validate_tokenizer()?;
        self.validate_task()?;
        self.validate_prefix()
    }

    fn validate_prefix(&self) -> Result<(), Error> {
        let Some(prefix) = self.header.prefix else {
            return Ok(());
        };
        let config = &self.header.config;
        if !self
            .header
            .task
            .prompt_prefix
            .is_char_boundary(prefix.text_len as usize)
        {
            return Err(Error::BadTask);
        }
        let tokens = self.checked_span(prefix.tokens)?;
        let len = tokens.len() / 4;
        if len == 0 || !tokens.len().is_multiple_of(4) || len > config.max_position_embeddings {
            return Err(Error::BadShape);
        }
        for chunk in tokens.chunks_exact(4) {
            if u32::from_le_bytes(array(chunk, 0)?) as usize >= config.vocab_size {
                return Err(Error::BadTokenizer);
            }
        }
        let values = config
            .n_layers
            .checked_mul(len)
            .and_then(|n| n.checked_mul(config.kv_dim()))
            .ok_or(Error::BadShape)?;
        self.check_f32s(prefix.keys, values)?;
        self.check_f32s(prefix.values, values)
    }

    /// The stored prompt prefix: its token ids and every layer's keys and values
    /// ([`crate::format::PrefixRef`]), `None` when the bundle has none.
    pub fn prefix(&self) -> Option<Prefix<'a>> {
        let prefix = self.header.prefix?;
        let text = self.header.task.prompt_prefix;
        Some(Prefix {
            rest: text.get(prefix.text_len as usize..).unwrap_or(""),
            tokens: bytemuck::try_cast_slice(self.span(prefix.tokens)).ok()?,
            keys: self.f32s(prefix.keys),
            values: self.f32s(prefix.values),
        })
    }

    fn validate_task(&self) -> Result<(), Error> {
        let task = &self.header.task;
        let vocab = self.header.config.vocab_size;
        if task.kind == TaskKind::Classification && task.labels.len() < 2 {
            return Err(Error::BadTask);
        }
        for label in &task.labels {
            if label.token_id as usize >= vocab || !label.bias.is_finite() {
                return Err(Error::BadTask);
            }
        }
        Ok(())
    }

    fn validate_tokenizer(&self) -> Result<(), Error> {
        let tokenizer = &self.header.tokenizer;
        let vocab = self.header.config.vocab_size;
        let bad = Error::BadTokenizer;
        let offsets = self
            .checked_span(tokenizer.vocab_offsets)
            .map_err(|_| bad)?;
        let vocab_bytes = self.checked_span(tokenizer.vocab_bytes).map_err(|_| bad)?;
        if offsets.len() != (vocab + 1) * 4 {
            return Err(bad);
        }
        let mut previous = 0u32;
        for chunk in offsets.chunks_exact(4) {
            let offset = u32::from_le_bytes(array(chunk, 0)?);
            if offset < previous || offset as usize > vocab_bytes.len() {
                return Err(bad);
            }
            previous = offset;
        }
        let merges = self.checked_span(tokenizer.merges).map_err(|_| bad)?;
        if !merges.len().is_multiple_of(MERGE_RECORD_LEN) {
            return Err(bad);
        }
        let mut previous_pair = None;
        for record in merges.chunks_exact(MERGE_RECORD_LEN) {
            let left = u32::from_le_bytes(array(record, 0)?);
            let right = u32::from_le_bytes(array(record, 4)?);
            let merged = u32::from_le_bytes(array(record, 12)?);
            if [left, right, merged].iter().any(|&id| id as usize >= vocab) {
                return Err(bad);
            }
            if previous_pair.is_some_and(|pair| pair >= (left, right)) {
                return Err(bad);
            }
            previous_pair = Some((left, right));
        }
        let byte_tokens = self.checked_span(tokenizer.byte_tokens).map_err(|_| bad)?;
        if byte_tokens.len() != 256 * 4 {
            return Err(bad);
        }
        for chunk in byte_tokens.chunks_exact(4) {
            let id = u32::from_le_bytes(array(chunk, 0)?);
            if id != NO_TOKEN && id as usize >= vocab {
                return Err(bad);
            }
        }
        for span in [tokenizer.special_ids, tokenizer.stop_ids] {
            let ids = self.checked_span(span).map_err(|_| bad)?;
            if !ids.len().is_multiple_of(4) {
                return Err(bad);
            }
            for chunk in ids.chunks_exact(4) {
                let id = u32::from_le_bytes(array(chunk, 0)?);
                if id as usize >= vocab {
                    return Err(bad);
                }
            }
        }
        if let Some(spm) = tokenizer.sentencepiece {
            let tables = crate::spm::SpmTables::new(
                offsets,
                vocab_bytes,
                self.checked_span(spm.scores).map_err(|_| bad)?,
                self.checked_span(spm.token_types).map_err(|_| bad)?,
                self.checked_span(spm.sorted_ids).map_err(|_| bad)?,
                self.checked_span(spm.literal_ids).map_err(|_| bad)?,
            )
            .map_err(|_| bad)?;
            let ids_in_range = |span: Span| -> Result<bool, Error> {
                let ids = self.checked_span(span).map_err(|_| bad)?;
                Ok(ids.len().is_multiple_of(4)
                    && ids.chunks_exact(4).all(|c| {
                        array(c, 0).is_ok_and(|b| (u32::from_le_bytes(b) as usize) < vocab)
                    }))
            };
            let bos_ok = spm.bos == NO_TOKEN || (spm.bos as usize) < vocab;
            if !merges.is_empty()
                || tables.vocab_size() != vocab
                || !ids_in_range(spm.sorted_ids)?
                || !ids_in_range(spm.literal_ids)?
                || !bos_ok
            {
                return Err(bad);
            }
        }
        let source_ids = self.checked_span(tokenizer.source_ids).map_err(|_| bad)?;
        let source_vocab = tokenizer.source_vocab_size as usize;
        if source_ids.is_empty() {
            return if source_vocab == vocab {
                Ok(())
            } else {
                Err(bad)
            };
        }
        if source_ids.len() != vocab * 4 {
            return Err(bad);
        }
        let mut previous = None;
        for chunk in source_ids.chunks_exact(4) {
            let id = u32::from_le_bytes(array(chunk, 0)?);
            if previous.is_some_and(|p| p >= id) || id as usize >= source_vocab {
                return Err(bad);
            }
            previous = Some(id);
        }
        Ok(())
    }

    fn checked_span(&self, span: Span) -> Result<&'a [u8], Error> {
        let start = span.offset as usize;
        if !start.is_multiple_of(ALIGN) {
            return Err(Error::BadSpan);
        }
        let end = start.checked_add(span.len as usize).ok_or(Error::BadSpan)?;
        self.blob.get(start..end).ok_or(Error::BadSpan)
    }

    fn check_f32s(&self, span: Span, count: usize) -> Result<(), Error> {
        self.checked_span(span)?;
        if Some(span.len as usize) != count.checked_mul(4) {
            return Err(Error::BadShape);
        }
        Ok(())
    }

    /// A block's rotary pairs span: empty when every pair is kept (`pairs` = `head_dim / 2`)
    /// or the attention is skipped, else in the blob with each key/value head's `pairs`
    /// indices strictly ascending below `head_dim / 2`.
    fn check_rotary_pairs(
        &self,
        span: Span,
        pairs: usize,
        config: &ModelConfig,
    ) -> Result<(), Error> {
        let half = config.head_dim() / 2;
        if span.len == 0 {
            return Ok(());
        }
        let bytes = self.checked_span(span)?;
        for kv_head in 0..config.n_kv_heads {
            let mut previous = None;
            for j in 0..pairs {
                let pair = rotary_pair(bytes, pairs, kv_head, j);
                if pair >= half || previous.is_some_and(|p| pair <= p) {
                    return Err(Error::BadShape);
                }
                previous = Some(pair);
            }
        }
        Ok(())
    }

    fn check_matrix(
        &self,
        matrix: &MatrixRef,
        rows: usize,
        cols: usize,
        bundle: Dtype,
    ) -> Result<(), Error> {
        if matrix.rows as usize != rows
            || matrix.cols as usize != cols
            || !bundle.admits(matrix.dtype)
        {
            return Err(Error::BadShape);
        }
        let dtype = matrix.dtype;
        if dtype == Dtype::Q4 && !cfg!(feature = "q4") {
            return Err(Error::Q4NotBuilt);
        }
        let count = rows.checked_mul(cols).ok_or(Error::BadShape)?;
        self.checked_span(matrix.data)?;
        match (dtype, matrix.scales) {
            (Dtype::F32, None) if matrix.data.len as usize == count * 4 => Ok(()),
            (Dtype::Q8, Some(scales)) if matrix.data.len as usize == count => {
                let blocks = rows
                    .checked_mul(q8_blocks_per_row(cols))
                    .ok_or(Error::BadShape)?;
                self.check_f32s(scales, blocks)
            }
            (Dtype::Q4, Some(scales)) => {
                let blocks = rows
                    .checked_mul(q8_blocks_per_row(cols))
                    .ok_or(Error::BadShape)?;
                if Some(matrix.data.len as usize) != blocks.checked_mul(Q4_BLOCK_BYTES) {
                    return Err(Error::BadShape);
                }
                // Two f16 a block: the same bytes as one f32.
                self.check_f32s(scales, blocks)
            }
            _ => Err(Error::BadShape),
        }
    }
}

fn to_usize(n: u32) -> Result<usize, Error> {
    usize::try_from(n).map_err(|_| Error::Truncated)
}

/// `N` bytes of `bytes` at `at`.
pub(crate) fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], Error> {
    bytes
        .get(at..at.saturating_add(N))
        .and_then(|slice| slice.try_into().ok())
        .ok_or(Error::Truncated)
}

/// The widths a block's matrices imply: gate's output rows (the MLP's neurons), v's output
/// rows per key/value head (the value dimensions) and the rotary pairs list's length per
/// key/value head (every pair when empty); `None` when rows do not divide into the heads, a
/// width exceeds the model's, or the pairs list is present without an attention, not whole
/// or not shorter than a head.
pub(crate) fn block_widths(layer: &LayerRef, config: &ModelConfig) -> Option<BlockWidths> {
    let rows = |kind: MatrixKind| {
        let index = MatrixKind::ALL.iter().position(|&k| k == kind)?;
        Some(match layer.linears.get(index)? {
            LinearRef::Dense(w) => w.rows as usize,
            LinearRef::LowRank { b, .. } => b.rows as usize,
        })
    };
    let mlp = rows(MatrixKind::Gate)?;
    let value_rows = rows(MatrixKind::V)?;
    let value = value_rows / config.n_kv_heads.max(1);
    let whole = value * config.n_kv_heads == value_rows;
    let half = config.head_dim() / 2;
    let listed = layer.rotary_pairs.len as usize / 2;
    let pairs = match (value, listed) {
        (0, 0) => 0,
        (_, 0) => half,
        (0, _) => return None,
        (_, listed) => {
            let per_head = listed / config.n_kv_heads.max(1);
            let exact = per_head * config.n_kv_heads * 2 == layer.rotary_pairs.len as usize;
            (exact && per_head > 0 && per_head < half).then_some(per_head)?
        }
    };
    (whole && mlp <= config.intermediate_size && value <= config.head_dim())
        .then_some(BlockWidths { mlp, value, pairs })
}

/// Pair `j` of key/value head `kv_head`'s list in a `rotary_pairs` span's bytes (`pairs` per
/// head); 0 past the end (the span is validated at parse time).
pub(crate) fn rotary_pair(bytes: &[u8], pairs: usize, kv_head: usize, j: usize) -> usize {
    array::<2>(bytes, 2 * (kv_head * pairs + j)).map_or(0, |b| usize::from(u16::from_le_bytes(b)))
}
