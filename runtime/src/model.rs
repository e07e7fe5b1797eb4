//! The forward pass over a bundle, in the caller's arena: RMSNorm, interleaved ("rope_i")
//! rotary embeddings, grouped-query attention with a KV cache, SwiGLU or GeGLU, and the output
//! head, with what the architecture adds (`Architecture`: Gemma 3's scaled embeddings, query/key
//! head norms, post-norms and sliding-window local layers with their own RoPE base). It mirrors
//! the host's `Llama` (host/src/model/llama.rs) operation for operation.

use crate::bundle::{Bundle, LinearWeights, Weight};
use crate::config::{Activation, MatrixKind, ModelConfig};
use crate::error::Error;
use crate::format::{HeadRef, LayerRef};
use crate::kernels::math::{dot, merge_attention};
use crate::kernels::{AttentionHead, Kernels, SharedProduct, from_f16, round_key, to_f16};

/// The shortest prefill chunk (tokens run through the blocks together): the chunk is a quarter
/// of the context, between this and [`MAX_PREFILL_CHUNK`] (and never more than the context).
/// Every chunk converts each weight block once, so longer chunks share that cost among more
/// tokens; short contexts (small boards) keep small buffers.
pub const MIN_PREFILL_CHUNK: usize = 16;

/// The longest prefill chunk.
pub const MAX_PREFILL_CHUNK: usize = 64;

/// Tokens per prefill chunk for a context of `context` positions.
pub fn prefill_chunk(context: usize) -> usize {
    (context / 4)
        .clamp(MIN_PREFILL_CHUNK, MAX_PREFILL_CHUNK)
        .min(context)
        .max(1)
}

/// Sizes, in values, of the arena's regions for one bundle and context length: 16 bits for
/// the cached keys and values, f32 for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    context: usize,
    chunk: usize,
    kv_cache: usize,
    key_scales: usize,
    hidden_rows: usize,
    q_rows: usize,
    kv_rows: usize,
    inter_rows: usize,
    rank_rows: usize,
    rope: usize,
    scores: usize,
    partials: usize,
    logits: usize,
}

impl Layout {
    fn new(bundle: &Bundle<'_>, context: usize) -> Self {
        let config = &bundle.header().config;
        let chunk = prefill_chunk(context);
        let logits = match bundle.header().head {
            HeadRef::Labels(m) => m.rows as usize,
            HeadRef::Tied | HeadRef::Full(_) => config.vocab_size,
        };
        Self {
            context,
            chunk,
            kv_cache: config.n_layers * context * config.kv_dim(),
            key_scales: config.n_layers * config.n_kv_heads * context,
            hidden_rows: chunk * config.hidden_size,
            q_rows: chunk * config.q_dim(),
            kv_rows: chunk * config.kv_dim(),
            inter_rows: chunk * config.intermediate_size,
            rank_rows: chunk * bundle.max_rank(),
            // The global layers' table, then (with a sliding window) the local layers'.
            rope: rope_tables(config) * chunk * config.head_dim(),
            // One row per query head of a key/value group.
            scores: config.n_heads / config.n_kv_heads.max(1) * context,
            // A decode step's attention over up to `MAX_SPLITS` parts of the positions: each
            // query's output and log-sum-exp per part.
            partials: MAX_SPLITS * config.n_heads * (config.head_dim() + 1),
            logits,
        }
    }

    /// The arena's size in f32 values (the 16-bit keys' and values' caches each rounded up to
    /// whole ones).
    fn total_f32(&self) -> usize {
        2 * self.kv_cache.div_ceil(2)
            + self.key_scales
            + 3 * self.hidden_rows
            + 2 * self.q_rows
            + 2 * self.kv_rows
            + 2 * self.inter_rows
            + self.rank_rows
            + self.rope
            + self.scores
            + self.partials
            + self.logits
    }
}

/// Bytes of arena a session over `bundle` with `context` tokens needs.
pub fn arena_bytes(bundle: &Bundle<'_>, context: usize) -> usize {
    Layout::new(bundle, context).total_f32() * 4
}

fn take<'b>(rest: &mut &'b mut [f32], n: usize) -> Result<&'b mut [f32], Error> {
    let whole = core::mem::take(rest);
    let given = whole.len() * 4;
    let (head, tail) = whole.split_at_mut_checked(n).ok_or(Error::ArenaTooSmall {
        needed: n * 4,
        given,
    })?;
    *rest = tail;
    Ok(head)
}

/// `n` 16-bit values (f16 bits or integers) from the front of `rest`.
fn take_halves<'b, T: bytemuck::Pod>(
    rest: &mut &'b mut [f32],
    n: usize,
) -> Result<&'b mut [T], Error> {
    let halves: &mut [T] = bytemuck::cast_slice_mut(take(rest, n.div_ceil(2))?);
    halves.get_mut(..n).ok_or(Error::BadShape)
}

/// Working buffers carved from the arena.
#[derive(Debug)]
struct Buffers<'b> {
    /// Keys by layer, key/value head and position (`n_layers × n_kv_heads × context ×
    /// head_dim`, [`CacheSlot::index`]: one contiguous stream per head for attention), each
    /// rounded to 16-bit integers ([`round_key`]): a key moves every score inside the
    /// softmax's exponent, where f16's 2⁻¹¹ is too coarse.
    k_cache: &'b mut [i16],
    /// The keys' scales, one per layer, key/value head and position, in the same order.
    k_scales: &'b mut [f32],
    /// Values, laid out as the keys (a block keeping fewer value dimensions leaves the rest of
    /// each position's `head_dim` unused), f16 bits: attention's weighted sum of them is
    /// linear, so their rounding moves its output by at most 2⁻¹¹ of its size.
    v_cache: &'b mut [u16],
    x: &'b mut [f32],
    normed: &'b mut [f32],
    q: &'b mut [f32],
    k: &'b mut [f32],
    v: &'b mut [f32],
    attn: &'b mut [f32],
    proj: &'b mut [f32],
    gate: &'b mut [f32],
    up: &'b mut [f32],
    low: &'b mut [f32],
    rope: &'b mut [f32],
    scores: &'b mut [f32],
    partials: &'b mut [f32],
    logits: &'b mut [f32],
}

/// A model bound to its arena and kernels; keeps the KV cache of the positions run so far.
#[derive(Debug)]
pub struct Model<'b, 'a, K: Kernels> {
    bundle: &'b Bundle<'a>,
    kernels: K,
    layout: Layout,
    buffers: Buffers<'b>,
    position: usize,
}

impl<'b, 'a, K: Kernels> Model<'b, 'a, K> {
    /// Binds `bundle` to `arena` for up to `context` positions.
    pub fn new(
        bundle: &'b Bundle<'a>,
        kernels: K,
        context: usize,
        arena: &'b mut [u8],
    ) -> Result<Self, Error> {
        let config = &bundle.header().config;
        if context == 0 || context > config.max_position_embeddings {
            return Err(Error::ContextTooLong);
        }
        let layout = Layout::new(bundle, context);
        let needed = layout.total_f32() * 4;
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall {
                needed,
                given: arena.len(),
            });
        }
        let arena = arena
            .get_mut(..needed)
            .ok_or(Error::ArenaTooSmall { needed, given: 0 })?;
        let mut rest: &mut [f32] =
            bytemuck::try_cast_slice_mut(arena).map_err(|_| Error::MisalignedArena)?;
        let buffers = Buffers {
            k_cache: take_halves(&mut rest, layout.kv_cache)?,
            k_scales: take(&mut rest, layout.key_scales)?,
            v_cache: take_halves(&mut rest, layout.kv_cache)?,
            x: take(&mut rest, layout.hidden_rows)?,
            normed: take(&mut rest, layout.hidden_rows)?,
            q: take(&mut rest, layout.q_rows)?,
            k: take(&mut rest, layout.kv_rows)?,
            v: take(&mut rest, layout.kv_rows)?,
            attn: take(&mut rest, layout.q_rows)?,
            proj: take(&mut rest, layout.hidden_rows)?,
            gate: take(&mut rest, layout.inter_rows)?,
            up: take(&mut rest, layout.inter_rows)?,
            low: take(&mut rest, layout.rank_rows)?,
            rope: take(&mut rest, layout.rope)?,
            scores: take(&mut rest, layout.scores)?,
            partials: take(&mut rest, layout.partials)?,
            logits: take(&mut rest, layout.logits)?,
        };
        Ok(Self {
            bundle,
            kernels,
            layout,
            buffers,
            position: 0,
        })
    }

    /// Number of positions in the KV cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The context length the arena was sized for.
    pub fn context(&self) -> usize {
        self.layout.context
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Starts after the bundle's stored prompt prefix ([`Bundle::prefix`]): its keys and
    /// values copied into the cache and the position set after it; forgets what was cached.
    /// Returns the prefix's length (0, and an empty cache, without one).
    pub fn load_prefix(&mut self) -> Result<usize, Error> {
        self.position = 0;
        let Some(prefix) = self.bundle.prefix() else {
            return Ok(0);
        };
        let config = &self.bundle.header().config;
        let len = prefix.tokens.len();
        if len > self.layout.context {
            return Err(Error::InputTooLong);
        }
        let b = &mut self.buffers;
        prefix_positions(self.bundle, self.layout.context, len, |at, slot, value| {
            let key = prefix.keys.get(at..).unwrap_or(&[]);
            store_key(config, key, b.k_cache, b.k_scales, slot);
            let values = prefix.values.get(at..).unwrap_or(&[]);
            store_values(config, value, values, b.v_cache, slot);
        })?;
        self.position = len;
        Ok(len)
    }

    /// Writes the keys and values of the first `len` cached positions, layer-major
    /// (`n_layers × len × kv_dim` values each, a position's unused value lanes zero): what a
    /// packer stores as the prompt prefix (the keys and values as the cache holds them, so
    /// that loading them gives the same cache).
    pub fn cached_keys_values(
        &self,
        len: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) -> Result<(), Error> {
        let config = &self.bundle.header().config;
        let kv_dim = config.kv_dim();
        let per_layer = len * kv_dim;
        if len > self.position
            || keys.len() != config.n_layers * per_layer
            || values.len() != keys.len()
        {
            return Err(Error::BadShape);
        }
        prefix_positions(self.bundle, self.layout.context, len, |at, slot, value| {
            let key = keys.get_mut(at..).unwrap_or(&mut []);
            load_key(config, &self.buffers, key, slot);
            let position = values.get_mut(at..at + kv_dim).unwrap_or(&mut []);
            position.iter_mut().for_each(|v| *v = 0.0);
            load_values(config, value, &self.buffers, position, slot);
        })
    }

    /// Runs `tokens` after the cached positions; the hidden state of the last one is kept for
    /// [`Model::logits`] / [`Model::label_logits`].
    pub fn feed(&mut self, tokens: &[u32]) -> Result<(), Error> {
        if tokens.is_empty() {
            return Ok(());
        }
        if self.position + tokens.len() > self.layout.context {
            return Err(Error::InputTooLong);
        }
        let vocab = self.bundle.header().config.vocab_size;
        if tokens.iter().any(|&t| t as usize >= vocab) {
            return Err(Error::InputTooLong);
        }
        let mut last_len = 0;
        for chunk in tokens.chunks(self.layout.chunk) {
            self.forward_chunk(chunk)?;
            last_len = chunk.len();
        }
        let hidden = self.bundle.header().config.hidden_size;
        let eps = self.bundle.header().config.rms_norm_eps;
        let norm = self.bundle.f32s(self.bundle.header().final_norm);
        let start = (last_len - 1) * hidden;
        let (x, normed) = (&self.buffers.x, &mut self.buffers.normed);
        if let (Some(x), Some(out)) = (x.get(start..start + hidden), normed.get_mut(..hidden)) {
            rms_norm(x, norm, eps, out);
        }
        Ok(())
    }

    /// Logits over the whole vocabulary at the last fed position.
    pub fn logits(&mut self) -> Result<&[f32], Error> {
        let header = self.bundle.header();
        let head = match &header.head {
            HeadRef::Tied => self.bundle.weight(&header.embedding),
            HeadRef::Full(m) => self.bundle.weight(m),
            HeadRef::Labels(_) => return Err(Error::NoFullHead),
        };
        let hidden = header.config.hidden_size;
        let x = self.buffers.normed.get(..hidden).unwrap_or(&[]);
        gemm(&self.kernels, head, x, 1, self.buffers.logits);
        Ok(self.buffers.logits)
    }

    /// The logit of every label (in label order, bias not added) at the last fed position.
    pub fn label_logits(&mut self) -> Result<&[f32], Error> {
        let header = self.bundle.header();
        let labels = &header.task.labels;
        let hidden = header.config.hidden_size;
        let x = self.buffers.normed.get(..hidden).unwrap_or(&[]);
        let n = labels.len();
        let out = self.buffers.logits.get_mut(..n).ok_or(Error::BadTask)?;
        match &header.head {
            HeadRef::Labels(m) => gemm(&self.kernels, self.bundle.weight(m), x, 1, out),
            HeadRef::Tied | HeadRef::Full(_) => {
                let head = match &header.head {
                    HeadRef::Full(m) => self.bundle.weight(m),
                    _ => self.bundle.weight(&header.embedding),
                };
                for (label, slot) in labels.iter().zip(out.iter_mut()) {
                    let mut one = [0.0f32];
                    gemm(
                        &self.kernels,
                        head.row(label.token_id as usize),
                        x,
                        1,
                        &mut one,
                    );
                    *slot = one[0];
                }
            }
        }
        Ok(self.buffers.logits.get(..n).unwrap_or(&[]))
    }

    fn forward_chunk(&mut self, tokens: &[u32]) -> Result<(), Error> {
        let bundle = self.bundle;
        let config = bundle.header().config;
        let hidden = config.hidden_size;
        let n = tokens.len();
        let embedding = bundle.weight(&bundle.header().embedding);
        let scale = libm::sqrtf(hidden as f32);
        for (&token, row) in tokens.iter().zip(self.buffers.x.chunks_exact_mut(hidden)) {
            embedding.copy_row(token as usize, row);
            if config.arch.scale_embeddings {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        self.fill_rope(n, &config);
        for (layer_idx, layer) in bundle.layers().enumerate() {
            self.block(layer_idx, &layer?, n, &config);
        }
        self.position += n;
        Ok(())
    }

    /// The rotation tables of the chunk's `n` positions: the global layers' (base
    /// `rope_theta`) and, with a sliding window, the local layers' after them.
    fn fill_rope(&mut self, n: usize, config: &ModelConfig) {
        let head_dim = config.head_dim();
        let half = head_dim / 2;
        let table = self.layout.chunk * head_dim;
        let tables = rope_tables(config);
        let thetas = [config.rope_theta, config.arch.rope_theta_local];
        for (rows, theta) in self
            .buffers
            .rope
            .chunks_exact_mut(table)
            .zip(thetas)
            .take(tables)
        {
            for (t, row) in rows.chunks_exact_mut(head_dim).take(n).enumerate() {
                let position = (self.position + t) as f32;
                let (cos, sin) = row.split_at_mut(half);
                for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
                    let exponent = (2 * i) as f32 / head_dim as f32;
                    let inverse_frequency = 1.0 / libm::powf(theta, exponent);
                    let angle = position * inverse_frequency;
                    *c = libm::cosf(angle);
                    *s = libm::sinf(angle);
                }
            }
        }
    }

    fn block(&mut self, layer_idx: usize, layer: &LayerRef, n: usize, config: &ModelConfig) {
        let bundle = self.bundle;
        // Validated in `Bundle::parse`: within the model's widths, which the arena holds.
        let widths = crate::bundle::block_widths(layer, config).unwrap_or(config.full_widths());
        let linear = |kind: MatrixKind| {
            let index = MatrixKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
            layer.linears.get(index).map(|l| bundle.linear(l))
        };
        if widths.value > 0 {
            self.attention_block(layer_idx, layer, n, config, widths, &linear);
        }
        if widths.mlp == 0 {
            return;
        }
        let (hidden, inter) = (config.hidden_size, widths.mlp);
        let b = &mut self.buffers;
        let ffn_norm = bundle.f32s(layer.ffn_norm);
        for (x, out) in
            b.x.chunks_exact(hidden)
                .zip(b.normed.chunks_exact_mut(hidden))
                .take(n)
        {
            rms_norm(x, ffn_norm, config.rms_norm_eps, out);
        }
        let normed = b.normed.get(..n * hidden).unwrap_or(&[]);
        let k = &self.kernels;
        let products = [
            (linear(MatrixKind::Gate), &mut *b.gate),
            (linear(MatrixKind::Up), &mut *b.up),
        ];
        apply_shared(k, products, normed, n, b.low);
        match config.arch.activation {
            Activation::Silu => k.swiglu(prefix_mut(b.gate, n * inter), prefix(b.up, n * inter)),
            Activation::GeluTanh => geglu(prefix_mut(b.gate, n * inter), prefix(b.up, n * inter)),
        }
        let gated = b.gate.get(..n * inter).unwrap_or(&[]);
        apply(k, linear(MatrixKind::Down), gated, n, b.proj, b.low);
        let post = layer.post_norms.map(|(_, mlp)| bundle.f32s(mlp));
        add_output(b, post, n, hidden, config.rms_norm_eps);
    }

    /// The attention sub-block of a block of `widths`: its key/value heads keep `value`
    /// dimensions each (a head's values of a position sit at the start of its `head_dim` slot in the
    /// cache) and its query/key heads `pairs` rotary pairs each (spread back to whole heads
    /// with zeros in the dropped pairs before the rotation).
    fn attention_block<'w>(
        &mut self,
        layer_idx: usize,
        layer: &LayerRef,
        n: usize,
        config: &ModelConfig,
        widths: crate::BlockWidths,
        linear: &impl Fn(MatrixKind) -> Option<LinearWeights<'w>>,
    ) {
        let value = widths.value;
        let (hidden, q_dim, kv_dim) = (config.hidden_size, config.q_dim(), config.kv_dim());
        let value_dim = config.n_kv_heads * value;
        let b = &mut self.buffers;
        let attn_norm = self.bundle.f32s(layer.attn_norm);
        for (x, out) in
            b.x.chunks_exact(hidden)
                .zip(b.normed.chunks_exact_mut(hidden))
                .take(n)
        {
            rms_norm(x, attn_norm, config.rms_norm_eps, out);
        }
        let normed = b.normed.get(..n * hidden).unwrap_or(&[]);
        let k = &self.kernels;
        let products = [
            (linear(MatrixKind::Q), &mut *b.q),
            (linear(MatrixKind::K), &mut *b.k),
            (linear(MatrixKind::V), &mut *b.v),
        ];
        apply_shared(k, products, normed, n, b.low);
        if let Some([q_bias, k_bias, v_bias]) = layer.qkv_bias {
            for (out, bias) in [
                (&mut *b.q, q_bias),
                (&mut *b.k, k_bias),
                (&mut *b.v, v_bias),
            ] {
                let bias = self.bundle.f32s(bias);
                let rows = prefix_mut(out, n * bias.len());
                rows.chunks_exact_mut(bias.len().max(1))
                    .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
            }
        }
        let head_dim = config.head_dim();
        if widths.pairs < head_dim / 2 {
            let list = self.bundle.span(layer.rotary_pairs);
            let n_rep = config.n_heads / config.n_kv_heads;
            let shape = Spread {
                n,
                pairs: widths.pairs,
                head_dim,
            };
            spread_pairs(b.q, list, config.n_heads, n_rep, shape);
            spread_pairs(b.k, list, config.n_kv_heads, 1, shape);
        }
        let eps = config.rms_norm_eps;
        if let Some((q_norm, k_norm)) = layer.qk_norms {
            let (q_norm, k_norm) = (self.bundle.f32s(q_norm), self.bundle.f32s(k_norm));
            let (q, k) = (prefix_mut(b.q, n * q_dim), prefix_mut(b.k, n * kv_dim));
            q.chunks_exact_mut(head_dim)
                .for_each(|head| rms_norm_in_place(head, q_norm, eps));
            k.chunks_exact_mut(head_dim)
                .for_each(|head| rms_norm_in_place(head, k_norm, eps));
        }
        let local = config.arch.is_local(layer_idx);
        let table = self.layout.chunk * head_dim;
        let rope = match local {
            true => b.rope.get(table..).unwrap_or(&[]),
            false => &*b.rope,
        };
        rotate(b.q, rope, n, q_dim, head_dim);
        rotate(b.k, rope, n, kv_dim, head_dim);
        for t in 0..n {
            let slot = CacheSlot {
                layer: layer_idx,
                position: self.position + t,
                context: self.layout.context,
            };
            let key = b.k.get(t * kv_dim..).unwrap_or(&[]);
            store_key(config, key, b.k_cache, b.k_scales, slot);
            let values = b.v.get(t * value_dim..).unwrap_or(&[]);
            store_values(config, value, values, b.v_cache, slot);
        }
        let window = match local {
            true => config.arch.sliding_window,
            false => 0,
        };
        let span = Span {
            layer: layer_idx,
            context: self.layout.context,
            start: self.position,
            n,
            window,
        };
        attention(k, b, config, value, span);
        let attn = b.attn.get(..n * config.n_heads * value).unwrap_or(&[]);
        apply(k, linear(MatrixKind::O), attn, n, b.proj, b.low);
        let post = layer
            .post_norms
            .map(|(attention, _)| self.bundle.f32s(attention));
        add_output(b, post, n, hidden, eps);
    }
}

/// Rotation tables a chunk needs: the global layers', and the local layers' with a sliding
/// window.
fn rope_tables(config: &ModelConfig) -> usize {
    match config.arch.sliding_window {
        0 => 1,
        _ => 2,
    }
}

/// Where one layer's attention reads: its cache, the chunk's first position and length, and
/// its sliding window (0: none; a query sees the keys of its last `window` positions).
#[derive(Clone, Copy)]
struct Span {
    layer: usize,
    context: usize,
    start: usize,
    n: usize,
    window: usize,
}

/// Adds a sub-block's output rows (`proj`) to the residual stream, through the post-norm
/// `post` when the architecture has one (normalized into `normed`, free by then).
fn add_output(b: &mut Buffers<'_>, post: Option<&[f32]>, n: usize, hidden: usize, eps: f32) {
    match post {
        Some(weight) => {
            for (row, out) in b
                .proj
                .chunks_exact(hidden)
                .zip(b.normed.chunks_exact_mut(hidden))
                .take(n)
            {
                rms_norm(row, weight, eps, out);
            }
            add(b.x, b.normed, n * hidden);
        }
        None => add(b.x, b.proj, n * hidden),
    }
}

/// `gate ← gelu(gate) ⊙ up`, GELU in its tanh approximation (as the host's candle `gelu`).
fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
        *g = 0.5 * x * (1.0 + libm::tanhf(inner)) * u;
    }
}

/// Parts a decode step's positions are split into at most, so that the pool's threads share
/// the attention of fewer key/value heads than threads evenly.
const MAX_SPLITS: usize = 4;
/// Positions a part keeps at least.
const MIN_SPLIT_POSITIONS: usize = 16;

/// The attention of the `n` new tokens against the layer's cache, into `b.attn`. Items are
/// the `n_rep` query heads of one token that share a key/value head; a decode step with as
/// many threads as parts (at most [`MAX_SPLITS`]) also splits the positions, so three
/// key/value heads spread evenly over two threads, and merges the parts by their log-sum-exps.
fn attention<K: Kernels>(
    kernels: &K,
    b: &mut Buffers<'_>,
    config: &ModelConfig,
    value: usize,
    span: Span,
) {
    let Span {
        layer,
        context,
        start,
        n,
        window,
    } = span;
    let (head_dim, n_kv_heads) = (config.head_dim(), config.n_kv_heads);
    let n_rep = config.n_heads / n_kv_heads;
    let scale = 1.0 / libm::sqrtf(head_dim as f32);
    let (q, k_cache, k_scales, v_cache) = (&*b.q, &*b.k_cache, &*b.k_scales, &*b.v_cache);
    // The positions token `t` attends to: from `first(t)` to its own.
    let first = |t: usize| match window {
        0 => 0,
        window => (start + t + 1).saturating_sub(window),
    };
    let splits = match n {
        1 => kernels
            .threads()
            .min(MAX_SPLITS)
            .min((start + 1 - first(0)) / MIN_SPLIT_POSITIONS)
            .max(1),
        _ => 1,
    };
    // Queries of a group: `n_rep · head_dim` values at `(t · n_kv_heads + kv_head) · n_rep ·
    // head_dim` (q_dim = n_heads · head_dim); outputs `n_rep · value` values at the same
    // group's place in o's input.
    let group_q = n_rep * head_dim;
    let group_out = n_rep * value;
    // Item `(t · n_kv_heads + kv_head) · splits + part`: one group's attention over one part
    // of its positions.
    let head = |item: usize| {
        let (group, part) = (item / splits, item % splits);
        let t = group / n_kv_heads;
        let (from, to) = (first(t), start + t + 1);
        let positions = to - from;
        let lo = from + part * positions / splits;
        let hi = from + (part + 1) * positions / splits;
        let kv_head = group % n_kv_heads;
        let slot = CacheSlot {
            layer,
            position: lo,
            context,
        };
        let at = slot.index(n_kv_heads, kv_head);
        AttentionHead {
            q: q.get(group * group_q..(group + 1) * group_q).unwrap_or(&[]),
            head_dim,
            keys: k_cache.get(at * head_dim..).unwrap_or(&[]),
            key_scales: k_scales.get(at..).unwrap_or(&[]),
            values: v_cache.get(at * head_dim..).unwrap_or(&[]),
            stride: head_dim,
            positions: hi - lo,
            scale,
        }
    };
    let items = n * n_kv_heads * splits;
    if splits == 1 {
        let out = b.attn.get_mut(..items * group_out).unwrap_or(&mut []);
        kernels.for_each_part(items, out, b.scores, &|range, out, scores| {
            for (item, out) in range.zip(out.chunks_exact_mut(group_out.max(1))) {
                kernels.attend(&head(item), scores, out, &mut []);
            }
        });
        return;
    }
    // Each part's outputs, then its log-sum-exps.
    let per_item = group_out + n_rep;
    let partials = b.partials.get_mut(..items * per_item).unwrap_or(&mut []);
    kernels.for_each_part(items, partials, b.scores, &|range, partials, scores| {
        for (item, partial) in range.zip(partials.chunks_exact_mut(per_item.max(1))) {
            let (out, lse) = partial.split_at_mut(group_out);
            kernels.attend(&head(item), scores, out, lse);
        }
    });
    let groups = partials.chunks_exact(splits * per_item);
    for (parts, out) in groups.zip(b.attn.chunks_exact_mut(group_out.max(1))) {
        merge_attention(parts, splits, n_rep, value, out);
    }
}

/// A position of one layer's cache.
#[derive(Clone, Copy)]
struct CacheSlot {
    layer: usize,
    position: usize,
    context: usize,
}

impl CacheSlot {
    /// Where key/value head `kv_head`'s entry for this position lies in the cache: by layer,
    /// head, then position, so a head's positions are consecutive (one stream for attention
    /// to read). Its scale is at this index, its key and value at this index times `head_dim`.
    fn index(self, n_kv_heads: usize, kv_head: usize) -> usize {
        (self.layer * n_kv_heads + kv_head) * self.context + self.position
    }
}

/// Calls `f(at, slot, value)` for every layer and each of its first `len` positions: `at` is
/// the position's offset in a stored prefix's layer-major keys and values (`kv_dim` a
/// position), `slot` its place in a cache of `context` positions, `value` the layer's value
/// width.
fn prefix_positions(
    bundle: &Bundle<'_>,
    context: usize,
    len: usize,
    mut f: impl FnMut(usize, CacheSlot, usize),
) -> Result<(), Error> {
    let config = &bundle.header().config;
    for layer in 0..config.n_layers {
        let value = bundle.block_widths(layer)?.value;
        for position in 0..len {
            let slot = CacheSlot {
                layer,
                position,
                context,
            };
            f((layer * len + position) * config.kv_dim(), slot, value);
        }
    }
    Ok(())
}

/// One position's key (`kv_dim` values from the front of `key`) rounded into the cache, a
/// scale per key/value head.
fn store_key(
    config: &ModelConfig,
    key: &[f32],
    cache: &mut [i16],
    scales: &mut [f32],
    slot: CacheSlot,
) {
    let head_dim = config.head_dim();
    let heads = key.chunks_exact(head_dim.max(1)).take(config.n_kv_heads);
    for (kv_head, key) in heads.enumerate() {
        let at = slot.index(config.n_kv_heads, kv_head);
        let (Some(out), Some(scale)) = (
            cache.get_mut(at * head_dim..(at + 1) * head_dim),
            scales.get_mut(at),
        ) else {
            return;
        };
        *scale = round_key(key, out);
    }
}

/// One cached position's key, as f32, into the front of `key` (`kv_dim` values).
fn load_key(config: &ModelConfig, b: &Buffers<'_>, key: &mut [f32], slot: CacheSlot) {
    let head_dim = config.head_dim();
    let heads = key
        .chunks_exact_mut(head_dim.max(1))
        .take(config.n_kv_heads);
    for (kv_head, key) in heads.enumerate() {
        let at = slot.index(config.n_kv_heads, kv_head);
        let cached = b
            .k_cache
            .get(at * head_dim..(at + 1) * head_dim)
            .unwrap_or(&[]);
        let scale = b.k_scales.get(at).copied().unwrap_or(0.0);
        key.iter_mut()
            .zip(cached)
            .for_each(|(k, &q)| *k = scale * f32::from(q));
    }
}

/// One position's values (`value` per key/value head, one head after the other, from the
/// front of `values`) rounded to f16 into the cache.
fn store_values(
    config: &ModelConfig,
    value: usize,
    values: &[f32],
    cache: &mut [u16],
    slot: CacheSlot,
) {
    let heads = values.chunks_exact(value.max(1)).take(config.n_kv_heads);
    for (kv_head, values) in heads.enumerate() {
        let from = slot.index(config.n_kv_heads, kv_head) * config.head_dim();
        store_f16(Some(values), cache.get_mut(from..from + value));
    }
}

/// One cached position's values, as f32, into the front of `values` (`value` per key/value
/// head, one head after the other).
fn load_values(
    config: &ModelConfig,
    value: usize,
    b: &Buffers<'_>,
    values: &mut [f32],
    slot: CacheSlot,
) {
    let heads = values
        .chunks_exact_mut(value.max(1))
        .take(config.n_kv_heads);
    for (kv_head, values) in heads.enumerate() {
        let from = slot.index(config.n_kv_heads, kv_head) * config.head_dim();
        load_f16(b.v_cache.get(from..from + value), Some(values));
    }
}

/// `from` rounded to f16 ([`to_f16`]) into `to`.
fn store_f16(from: Option<&[f32]>, to: Option<&mut [u16]>) {
    if let (Some(from), Some(to)) = (from, to) {
        to.iter_mut().zip(from).for_each(|(t, &f)| *t = to_f16(f));
    }
}

/// `from`'s f16 bits widened into `to`.
fn load_f16(from: Option<&[u16]>, to: Option<&mut [f32]>) {
    if let (Some(from), Some(to)) = (from, to) {
        to.iter_mut().zip(from).for_each(|(t, &f)| *t = from_f16(f));
    }
}

fn add(x: &mut [f32], y: &[f32], n: usize) {
    x.iter_mut().zip(y).take(n).for_each(|(a, b)| *a += b);
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean_square = dot(x, x) / x.len().max(1) as f32;
    let inverse = 1.0 / libm::sqrtf(mean_square + eps);
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * inverse * w;
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_square = dot(x, x) / x.len().max(1) as f32;
    let inverse = 1.0 / libm::sqrtf(mean_square + eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inverse * w;
    }
}

/// Rows, kept pairs per head and head width of a [`spread_pairs`] call.
#[derive(Clone, Copy)]
struct Spread {
    n: usize,
    pairs: usize,
    head_dim: usize,
}

/// Spreads `n` rows of `heads` heads of `2·pairs` values (q's or k's outputs, each head's kept
/// pairs in list order) into rows of `heads` heads of `head_dim` values, in place: pair `j` of
/// head `h` goes to lanes `2·list[j]` and `2·list[j] + 1` of key/value head `h / n_rep`'s list,
/// every other lane is zero (a dropped pair adds nothing to a query-key product). It walks
/// backwards, so no value is overwritten before it is read (a kept lane never moves left).
fn spread_pairs(x: &mut [f32], list: &[u8], heads: usize, n_rep: usize, shape: Spread) {
    let Spread { n, pairs, head_dim } = shape;
    for item in (0..n * heads).rev() {
        let kv_head = (item % heads) / n_rep;
        let (from, to) = (item * 2 * pairs, item * head_dim);
        let mut j = pairs;
        for pair in (0..head_dim / 2).rev() {
            let kept = j > 0 && crate::bundle::rotary_pair(list, pairs, kv_head, j - 1) == pair;
            let values = match kept {
                true => {
                    j -= 1;
                    [
                        x.get(from + 2 * j).copied(),
                        x.get(from + 2 * j + 1).copied(),
                    ]
                }
                false => [Some(0.0); 2],
            };
            for (lane, value) in values.into_iter().enumerate() {
                if let (Some(slot), Some(value)) = (x.get_mut(to + 2 * pair + lane), value) {
                    *slot = value;
                }
            }
        }
    }
}

/// Rotates interleaved pairs `(x[2i], x[2i+1])` of every head of `n` rows of width `width`.
fn rotate(x: &mut [f32], rope: &[f32], n: usize, width: usize, head_dim: usize) {
    let half = head_dim / 2;
    for (row, table) in x
        .chunks_exact_mut(width)
        .zip(rope.chunks_exact(head_dim))
        .take(n)
    {
        let (cos, sin) = table.split_at(half);
        for head in row.chunks_exact_mut(head_dim) {
            for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                if let [a, b] = pair {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * c - x1 * s;
                    *b = x0 * s + x1 * c;
                }
            }
        }
    }
}

fn gemm<K: Kernels>(kernels: &K, w: Weight<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
    kernels.gemm(
        w,
        prefix(x, tokens * w.cols()),
        tokens,
        prefix_mut(out, tokens * w.rows()),
    );
}

fn prefix(values: &[f32], len: usize) -> &[f32] {
    values.get(..len.min(values.len())).unwrap_or(&[])
}

fn prefix_mut(values: &mut [f32], len: usize) -> &mut [f32] {
    let len = len.min(values.len());
    values.get_mut(..len).unwrap_or(&mut [])
}

/// The linears of `products` on the same input `x` into their outputs: for one token as one
/// [`Kernels::gemm_shared`] (one pool job) where `low` holds every low-rank layer's `A x`,
/// otherwise one after the other.
fn apply_shared<K: Kernels, const N: usize>(
    kernels: &K,
    products: [(Option<LinearWeights<'_>>, &mut [f32]); N],
    x: &[f32],
    tokens: usize,
    low: &mut [f32],
) {
    let rank = |linear: &Option<LinearWeights<'_>>| match linear {
        Some(LinearWeights::LowRank { a, .. }) => a.rows(),
        _ => 0,
    };
    let ranks: usize = products.iter().map(|(linear, _)| rank(linear)).sum();
    if tokens != 1 || ranks > low.len() {
        for (linear, out) in products {
            apply(kernels, linear, x, tokens, out, low);
        }
        return;
    }
    let mut shared = heapless::Vec::<SharedProduct<'_, '_>, N>::new();
    let mut rest = low;
    for (linear, out) in products {
        let (low, tail) = core::mem::take(&mut rest).split_at_mut(rank(&linear));
        rest = tail;
        let product = match linear {
            Some(LinearWeights::Dense(w)) => SharedProduct {
                first: w,
                second: None,
                low,
                out: prefix_mut(out, w.rows()),
            },
            Some(LinearWeights::LowRank { a, b }) => SharedProduct {
                first: a,
                second: Some(b),
                low,
                out: prefix_mut(out, b.rows()),
            },
            None => continue,
        };
        // At most `N` products: the push cannot fail.
        let _ = shared.push(product);
    }
    kernels.gemm_shared(&mut shared, x);
}

fn apply<K: Kernels>(
    kernels: &K,
    linear: Option<LinearWeights<'_>>,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
    low: &mut [f32],
) {
    match linear {
        Some(LinearWeights::Dense(w)) => gemm(kernels, w, x, tokens, out),
        Some(LinearWeights::LowRank { a, b }) => kernels.gemm_low_rank(
            a,
            b,
            prefix(x, tokens * a.cols()),
            tokens,
            prefix_mut(low, tokens * a.rows()),
            prefix_mut(out, tokens * b.rows()),
        ),
        None => {}
    }
}
