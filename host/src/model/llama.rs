//! The Llama-family decoder in data-flow order: config → components → the public model.
//!
//! Invariant: batches are right-padded. With the causal mask, no real position ever attends
//! to a pad (pads only follow real tokens), so the only padding mask needed is on the
//! outputs: pad positions are computed and then ignored (metrics, observers, last-token
//! gathers all use [`Batch::lengths`]).

use std::collections::HashMap;

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};
use whittle_runtime::{Activation, BlockWidths, MatrixKind, ModelConfig};

use super::linear::Linear;
use super::observe::{InputSite, Observer};
use crate::gguf::{PostNorm, bias_name, gguf_matrix_name, post_norm_name, qk_norm_name};

/// Right-padded token ids of one or more prompts.
#[derive(Clone, Debug)]
pub struct Batch {
    tokens: Tensor,
    lengths: Vec<usize>,
    /// Per row, the first position an observer sees (0 for every row unless set).
    observe_from: Vec<usize>,
}

impl Batch {
    /// Builds a batch, padding every sequence on the right with `pad_id`.
    pub fn new(sequences: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            candle_core::bail!("a batch needs at least one non-empty sequence");
        }
        let mut flat = Vec::with_capacity(sequences.len() * width);
        for sequence in sequences {
            if sequence.is_empty() {
                candle_core::bail!("a batch cannot hold an empty sequence");
            }
            flat.extend_from_slice(sequence);
            flat.resize(flat.len() + width - sequence.len(), pad_id);
        }
        let tokens = Tensor::from_vec(flat, (sequences.len(), width), device)?;
        Ok(Self {
            tokens,
            lengths: sequences.iter().map(Vec::len).collect(),
            observe_from: vec![0; sequences.len()],
        })
    }

    /// The same batch, with observers seeing row `i` from position `starts[i]` on (for
    /// example, a prompt prefix every row shares is observed in one row only). Missing
    /// entries are 0.
    pub fn observing_from(mut self, starts: &[usize]) -> Self {
        for (slot, &start) in self.observe_from.iter_mut().zip(starts) {
            *slot = start;
        }
        self
    }

    /// Positions an observer sees: the real ones from each row's start.
    pub fn observed_tokens(&self) -> usize {
        self.lengths
            .iter()
            .zip(&self.observe_from)
            .map(|(&len, &start)| len.saturating_sub(start))
            .sum()
    }

    /// `(batch, width)` token ids.
    pub fn tokens(&self) -> &Tensor {
        &self.tokens
    }

    /// Number of real tokens of every row.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Width of the padded batch.
    pub fn width(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Whether an observer must skip some rows (padding or positions before a row's start).
    fn observes_a_subset(&self) -> bool {
        let width = self.width();
        self.lengths.iter().any(|&len| len != width) || self.observe_from.iter().any(|&s| s > 0)
    }

    /// Indices, in the flattened `(batch · width)` rows, of the positions an observer sees:
    /// the real ones, from each row's start ([`Batch::observing_from`]).
    pub fn real_rows(&self) -> Result<Tensor> {
        let width = self.width();
        let rows: Vec<u32> = self
            .lengths
            .iter()
            .zip(&self.observe_from)
            .enumerate()
            .flat_map(|(row, (&len, &start))| {
                (start.min(len)..len).map(move |t| (row * width + t) as u32)
            })
            .collect();
        let n_rows = rows.len();
        Tensor::from_vec(rows, n_rows, self.tokens.device())
    }

    /// Indices of every row's last real position in the flattened rows.
    pub fn last_rows(&self) -> Result<Tensor> {
        let width = self.width();
        let rows: Vec<u32> = self
            .lengths
            .iter()
            .enumerate()
            .map(|(row, &len)| (row * width + len - 1) as u32)
            .collect();
        Tensor::from_vec(rows, self.lengths.len(), self.tokens.device())
    }
}

/// Keys and values of the positions already seen, per layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Precomputed rotary tables for every position up to the context length.
#[derive(Clone, Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(config: &ModelConfig, theta: f32, device: &Device) -> Result<Self> {
        let head_dim = config.head_dim();
        let inverse_frequencies: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        let n_freqs = inverse_frequencies.len();
        let inverse_frequencies = Tensor::from_vec(inverse_frequencies, (1, n_freqs), device)?;
        let positions = Tensor::arange(0u32, config.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((config.max_position_embeddings, 1))?;
        let angles = positions.matmul(&inverse_frequencies)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Rotates `(batch, heads, seq, head_dim)` whose first position is `offset`; GGUF stores
    /// q and k permuted for the interleaved-pair form, hence `rope_i` (its differentiable
    /// form when the pass is).
    fn apply(&self, x: &Tensor, offset: usize, differentiable: bool) -> Result<Tensor> {
        let seq_len = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, seq_len)?;
        let sin = self.sin.narrow(0, offset, seq_len)?;
        match differentiable {
            true => candle_nn::rotary_emb::rope_i_slow(&x.contiguous()?, &cos, &sin),
            false => candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin),
        }
    }
}

/// The rotary pairs a block's query/key heads keep (DESIGN section 2): one ascending list per
/// key/value head, shared by its query heads, and the column each lane of a whole head reads
/// from q's and k's narrow outputs followed by one zero column (a dropped pair reads zero).
#[derive(Clone, Debug)]
struct RotaryPairs {
    lists: Vec<Vec<u16>>,
    q_lanes: Tensor,
    k_lanes: Tensor,
}

impl RotaryPairs {
    fn new(config: &ModelConfig, lists: Vec<Vec<u16>>, device: &Device) -> Result<Self> {
        let half = config.head_dim() / 2;
        let pairs = lists.first().map_or(0, Vec::len);
        let well_formed = lists.len() == config.n_kv_heads
            && pairs > 0
            && pairs < half
            && lists.iter().all(|list| {
                list.len() == pairs
                    && list.windows(2).all(|w| w[0] < w[1])
                    && list.iter().all(|&p| usize::from(p) < half)
            });
        if !well_formed {
            candle_core::bail!(
                "rotary pairs must be {} ascending lists of one length in 1..{half}, each index below {half}",
                config.n_kv_heads
            );
        }
        let n_rep = config.n_heads / config.n_kv_heads;
        let lanes = |heads: usize, group: &dyn Fn(usize) -> usize| -> Result<Tensor> {
            let zero = (heads * 2 * pairs) as u32;
            let mut index = vec![zero; heads * config.head_dim()];
            for head in 0..heads {
                for (j, &pair) in lists[group(head)].iter().enumerate() {
                    for lane in 0..2 {
                        index[head * config.head_dim() + 2 * usize::from(pair) + lane] =
                            (head * 2 * pairs + 2 * j + lane) as u32;
                    }
                }
            }
            Tensor::from_vec(index, heads * config.head_dim(), device)
        };
        Ok(Self {
            q_lanes: lanes(config.n_heads, &|head| head / n_rep)?,
            k_lanes: lanes(config.n_kv_heads, &|head| head)?,
            lists,
        })
    }

    /// `(rows, heads · 2p)` narrow outputs spread to `(rows, heads · head_dim)` whole heads.
    fn spread(x: &Tensor, lanes: &Tensor) -> Result<Tensor> {
        let zero = Tensor::zeros((x.dim(0)?, 1), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zero], 1)?.index_select(lanes, 1)
    }
}

/// One transformer block: pre-norm attention and pre-norm gated MLP, both residual, with the
/// architecture's post-norms and query/key head norms when it has them.
#[derive(Clone, Debug)]
struct Block {
    attn_norm: Tensor,
    /// Query and key head norms (`head_dim` each), before the rotation.
    qk_norms: Option<(Tensor, Tensor)>,
    /// Norms of the attention's and the MLP's outputs, before the residual add.
    post_norms: Option<(Tensor, Tensor)>,
    /// Present when q and k keep some of each head's rotary pairs.
    rotary_pairs: Option<RotaryPairs>,
    /// Biases of q's, k's and v's stored rows (Qwen2), absent once the attention is skipped.
    qkv_bias: Option<[Tensor; 3]>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Block {
    fn linear(&self, kind: MatrixKind) -> &Linear {
        match kind {
            MatrixKind::Q => &self.q,
            MatrixKind::K => &self.k,
            MatrixKind::V => &self.v,
            MatrixKind::O => &self.o,
            MatrixKind::Gate => &self.gate,
            MatrixKind::Up => &self.up,
            MatrixKind::Down => &self.down,
        }
    }

    /// What the block keeps: gate's rows (neurons), v's rows per key/value head (value
    /// dimensions) and the rotary pairs per query/key head; zero skips the sub-block.
    fn widths(&self, config: &ModelConfig) -> Result<BlockWidths> {
        let value = self.v.shape()?.0 / config.n_kv_heads.max(1);
        let pairs = match (&self.rotary_pairs, value) {
            (_, 0) => 0,
            (Some(pairs), _) => pairs.lists.first().map_or(0, Vec::len),
            (None, _) => config.head_dim() / 2,
        };
        Ok(BlockWidths {
            mlp: self.gate.shape()?.0,
            value,
            pairs,
        })
    }

    fn linear_mut(&mut self, kind: MatrixKind) -> &mut Linear {
        match kind {
            MatrixKind::Q => &mut self.q,
            MatrixKind::K => &mut self.k,
            MatrixKind::V => &mut self.v,
            MatrixKind::O => &mut self.o,
            MatrixKind::Gate => &mut self.gate,
            MatrixKind::Up => &mut self.up,
            MatrixKind::Down => &mut self.down,
        }
    }
}

/// Per-call state of one forward pass.
struct Pass<'a> {
    batch: usize,
    seq_len: usize,
    offset: usize,
    mask: Option<Tensor>,
    /// The mask of the local layers (within the sliding window); `mask` without one.
    local_mask: Option<Tensor>,
    observer: Option<(&'a mut dyn Observer, Option<Tensor>)>,
    /// Keys and values `(1, kv_heads, offset, head_dim)` of a prefix every row continues.
    shared: Option<(Tensor, Tensor)>,
    /// Through differentiable operations only ([`Llama::hidden_rows`]): candle's
    /// fused RMS norm, softmax and rotary kernels have no backward pass.
    differentiable: bool,
}

impl Pass<'_> {
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        match self.differentiable {
            true => candle_nn::ops::rms_norm_slow(x, weight, eps),
            false => candle_nn::ops::rms_norm(x, weight, eps),
        }
    }

    fn softmax_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        match self.differentiable {
            true => candle_nn::ops::softmax(x, D::Minus1),
            false => candle_nn::ops::softmax_last_dim(x),
        }
    }

    fn observe(&mut self, layer_idx: usize, site: InputSite, x: &Tensor) -> Result<()> {
        if let Some((observer, real_rows)) = &mut self.observer {
            match real_rows {
                Some(rows) => observer.observe(layer_idx, site, &x.index_select(rows, 0)?)?,
                None => observer.observe(layer_idx, site, x)?,
            }
        }
        Ok(())
    }
}

/// A Llama-family decoder with f32 weights and a tied or separate output head.
#[derive(Clone, Debug)]
pub struct Llama {
    config: ModelConfig,
    embedding: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    head: Tensor,
    rope: Rope,
    /// The local layers' tables when their RoPE base differs.
    local_rope: Option<Rope>,
    device: Device,
}

impl Llama {
    /// Builds the model from f32 tensors keyed by their GGUF names (`token_embd.weight`,
    /// `blk.{i}.attn_q.weight`, …); `output.weight` is optional (tied head).
    pub fn from_tensors(
        config: ModelConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let get = |name: &str| -> Result<Tensor> {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))
        };
        let dense = |layer_idx, kind| -> Result<Linear> {
            Ok(Linear::Dense {
                weight: get(&gguf_matrix_name(layer_idx, kind))?,
            })
        };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for layer_idx in 0..config.n_layers {
            let qk_norms = match config.arch.qk_norm {
                true => Some((
                    get(&qk_norm_name(layer_idx, MatrixKind::Q))?,
                    get(&qk_norm_name(layer_idx, MatrixKind::K))?,
                )),
                false => None,
            };
            let post_norms = match config.arch.post_norms {
                true => Some((
                    get(&post_norm_name(layer_idx, PostNorm::Attention))?,
                    get(&post_norm_name(layer_idx, PostNorm::Mlp))?,
                )),
                false => None,
            };
            let qkv_bias = match config.arch.qkv_bias {
                true => Some([
                    get(&bias_name(layer_idx, MatrixKind::Q))?,
                    get(&bias_name(layer_idx, MatrixKind::K))?,
                    get(&bias_name(layer_idx, MatrixKind::V))?,
                ]),
                false => None,
            };
            blocks.push(Block {
                attn_norm: get(&format!("blk.{layer_idx}.attn_norm.weight"))?,
                qk_norms,
                post_norms,
                rotary_pairs: None,
                qkv_bias,
                q: dense(layer_idx, MatrixKind::Q)?,
                k: dense(layer_idx, MatrixKind::K)?,
                v: dense(layer_idx, MatrixKind::V)?,
                o: dense(layer_idx, MatrixKind::O)?,
                ffn_norm: get(&format!("blk.{layer_idx}.ffn_norm.weight"))?,
                gate: dense(layer_idx, MatrixKind::Gate)?,
                up: dense(layer_idx, MatrixKind::Up)?,
                down: dense(layer_idx, MatrixKind::Down)?,
            });
        }
        let embedding = get("token_embd.weight")?;
        let head = match tensors.get("output.weight") {
            Some(head) => head.clone(),
            None => embedding.clone(),
        };
        Ok(Self {
            config,
            embedding,
            blocks,
            final_norm: get("output_norm.weight")?,
            head,
            rope: Rope::new(&config, config.rope_theta, device)?,
            local_rope: match config.arch.sliding_window > 0
                && config.arch.rope_theta_local != config.rope_theta
            {
                true => Some(Rope::new(&config, config.arch.rope_theta_local, device)?),
                false => None,
            },
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The token embedding `(vocab, hidden)`.
    pub fn embedding(&self) -> &Tensor {
        &self.embedding
    }

    /// The output head `(vocab, hidden)`; the embedding itself when tied.
    pub fn head(&self) -> &Tensor {
        &self.head
    }

    /// The same model reading its inputs from `embedding` (same shape); the head stays what
    /// it was (a tied head keeps the old rows).
    pub fn with_embedding(mut self, embedding: Tensor) -> Result<Self> {
        if embedding.dims() != self.embedding.dims() {
            candle_core::bail!(
                "embedding of shape {:?} for a model of {:?}",
                embedding.dims(),
                self.embedding.dims()
            );
        }
        self.embedding = embedding;
        Ok(self)
    }

    /// Whether the head is the embedding (tied weights).
    pub fn head_is_tied(&self) -> bool {
        self.head.id() == self.embedding.id()
    }

    /// The final RMSNorm weight.
    pub fn final_norm(&self) -> &Tensor {
        &self.final_norm
    }

    /// The query and key head norms of one block, when the architecture has them.
    pub fn qk_norms(&self, layer_idx: usize) -> Option<(&Tensor, &Tensor)> {
        let (q, k) = self.blocks.get(layer_idx)?.qk_norms.as_ref()?;
        Some((q, k))
    }

    /// The post-norms of one block's attention and MLP outputs, when the architecture has them.
    pub fn post_norms(&self, layer_idx: usize) -> Option<(&Tensor, &Tensor)> {
        let (attention, mlp) = self.blocks.get(layer_idx)?.post_norms.as_ref()?;
        Some((attention, mlp))
    }

    /// The attention and MLP RMSNorm weights of one block.
    pub fn norms(&self, layer_idx: usize) -> Option<(&Tensor, &Tensor)> {
        self.blocks
            .get(layer_idx)
            .map(|block| (&block.attn_norm, &block.ffn_norm))
    }

    /// Replaces the attention and MLP RMSNorm weights of one block (same shapes).
    pub fn set_norms(
        &mut self,
        layer_idx: usize,
        attn_norm: Tensor,
        ffn_norm: Tensor,
    ) -> Result<()> {
        let hidden = self.config.hidden_size;
        if attn_norm.dims() != [hidden] || ffn_norm.dims() != [hidden] {
            candle_core::bail!("layer {layer_idx}: norm weights must have {hidden} values");
        }
        let Some(block) = self.blocks.get_mut(layer_idx) else {
            candle_core::bail!("layer {layer_idx} does not exist");
        };
        block.attn_norm = attn_norm;
        block.ffn_norm = ffn_norm;
        Ok(())
    }

    /// One prunable matrix.
    pub fn linear(&self, layer_idx: usize, kind: MatrixKind) -> Option<&Linear> {
        self.blocks.get(layer_idx).map(|block| block.linear(kind))
    }

    /// Replaces one prunable matrix (e.g. by its low-rank factors) by one of the same shape
    /// (at the block's current widths); the rest of the model is shared, not copied, with any
    /// clone it came from.
    pub fn set_linear(&mut self, layer_idx: usize, kind: MatrixKind, linear: Linear) -> Result<()> {
        let widths = self.block_widths(layer_idx)?;
        self.replace(layer_idx, widths, [(kind, linear)])
    }

    /// Block `layer_idx`'s biases of q, k and v (of their stored rows), when it has them.
    pub fn qkv_bias(&self, layer_idx: usize) -> Option<&[Tensor; 3]> {
        self.blocks.get(layer_idx)?.qkv_bias.as_ref()
    }

    /// Replaces block `layer_idx`'s biases of q, k and v by ones of the same shapes.
    pub fn set_qkv_bias(&mut self, layer_idx: usize, biases: [Tensor; 3]) -> Result<()> {
        let Some(block) = self.blocks.get_mut(layer_idx) else {
            candle_core::bail!("layer {layer_idx} does not exist");
        };
        let Some(current) = &block.qkv_bias else {
            candle_core::bail!("layer {layer_idx} has no q/k/v biases");
        };
        for (old, new) in current.iter().zip(&biases) {
            if old.dims() != new.dims() {
                candle_core::bail!(
                    "layer {layer_idx}: a bias of shape {:?} replaces one of {:?}",
                    new.dims(),
                    old.dims()
                );
            }
        }
        block.qkv_bias = Some(biases);
        Ok(())
    }

    /// What block `layer_idx` keeps of its MLP and its value heads.
    pub fn block_widths(&self, layer_idx: usize) -> Result<BlockWidths> {
        match self.blocks.get(layer_idx) {
            Some(block) => block.widths(&self.config),
            None => candle_core::bail!("layer {layer_idx} does not exist"),
        }
    }

    /// Replaces block `layer_idx`'s gate, up and down by an MLP of another width (the rows of
    /// gate and up it keeps, down's columns on them; no rows: the MLP is skipped); the rest of
    /// the model is shared.
    pub fn set_mlp(&mut self, layer_idx: usize, [gate, up, down]: [Linear; 3]) -> Result<()> {
        let widths = BlockWidths {
            mlp: gate.shape()?.0,
            ..self.block_widths(layer_idx)?
        };
        let mlp = [
            (MatrixKind::Gate, gate),
            (MatrixKind::Up, up),
            (MatrixKind::Down, down),
        ];
        self.replace(layer_idx, widths, mlp)
    }

    /// Replaces block `layer_idx`'s v and o by value heads of another width (v's rows per
    /// key/value head, o's columns per query head on them); no rows skips the attention, and
    /// q and k are then dropped too. The rest of the model is shared.
    pub fn set_values(&mut self, layer_idx: usize, [v, o]: [Linear; 2]) -> Result<()> {
        let widths = BlockWidths {
            value: v.shape()?.0 / self.config.n_kv_heads.max(1),
            ..self.block_widths(layer_idx)?
        };
        let values = [(MatrixKind::V, v), (MatrixKind::O, o)];
        if widths.value > 0 {
            if self.config.arch.qkv_bias && widths.value < self.config.head_dim() {
                candle_core::bail!(
                    "layer {layer_idx}: a model with q/k/v biases keeps every value dimension or none (the projection of v's bias is not implemented)"
                );
            }
            return self.replace(layer_idx, widths, values);
        }
        let empty = || Linear::empty((0, self.config.hidden_size), &self.device);
        let [(v_kind, v), (o_kind, o)] = values;
        let skipped = [
            (MatrixKind::Q, empty()?),
            (MatrixKind::K, empty()?),
            (v_kind, v),
            (o_kind, o),
        ];
        self.replace(layer_idx, widths, skipped)?;
        if let Some(block) = self.blocks.get_mut(layer_idx) {
            block.rotary_pairs = None;
            block.qkv_bias = None;
        }
        Ok(())
    }

    /// Replaces block `layer_idx`'s q and k by heads keeping the rotary pairs of `lists` (one
    /// ascending list per key/value head, shared by its query heads; q's rows are each query
    /// head's kept pairs' two rows in list order, k's likewise per key/value head). The rest of
    /// the model is shared; the block's attention must not be skipped.
    pub fn set_rotary_pairs(
        &mut self,
        layer_idx: usize,
        [q, k]: [Linear; 2],
        lists: Vec<Vec<u16>>,
    ) -> Result<()> {
        if self.config.arch.qk_norm {
            candle_core::bail!(
                "layer {layer_idx}: a model with query/key head norms keeps every rotary pair (the norm spans the whole head)"
            );
        }
        let pairs = RotaryPairs::new(&self.config, lists, &self.device)?;
        let widths = BlockWidths {
            pairs: pairs.lists.first().map_or(0, Vec::len),
            ..self.block_widths(layer_idx)?
        };
        if widths.value == 0 {
            candle_core::bail!("layer {layer_idx}: a skipped attention keeps no rotary pairs");
        }
        let Some(block) = self.blocks.get(layer_idx) else {
            candle_core::bail!("layer {layer_idx} does not exist");
        };
        let qkv_bias = match (&block.qkv_bias, &block.rotary_pairs) {
            (Some(_), Some(_)) => candle_core::bail!(
                "layer {layer_idx}: the rotary pairs of a block with biases are chosen once"
            ),
            // The kept pairs' rows of each whole head's bias, in q's and k's new row order.
            (Some([q_bias, k_bias, v_bias]), None) => {
                // Lane `r` of the whole heads reads narrow row `lanes[r]` (past the last: zero).
                let kept = |bias: &Tensor, lanes: &Tensor, width: usize| -> Result<Tensor> {
                    let mut rows = vec![0u32; width];
                    for (row, lane) in lanes.to_vec1::<u32>()?.into_iter().enumerate() {
                        if let Some(slot) = rows.get_mut(lane as usize) {
                            *slot = row as u32;
                        }
                    }
                    bias.index_select(&Tensor::new(rows.as_slice(), bias.device())?, 0)
                };
                Some([
                    kept(q_bias, &pairs.q_lanes, q.shape()?.0)?,
                    kept(k_bias, &pairs.k_lanes, k.shape()?.0)?,
                    v_bias.clone(),
                ])
            }
            (None, _) => None,
        };
        self.replace(layer_idx, widths, [(MatrixKind::Q, q), (MatrixKind::K, k)])?;
        if let Some(block) = self.blocks.get_mut(layer_idx) {
            block.rotary_pairs = Some(pairs);
            block.qkv_bias = qkv_bias;
        }
        Ok(())
    }

    /// The rotary pairs block `layer_idx`'s query/key heads keep (one list per key/value
    /// head), when not all.
    pub fn rotary_pairs(&self, layer_idx: usize) -> Option<&[Vec<u16>]> {
        self.blocks
            .get(layer_idx)?
            .rotary_pairs
            .as_ref()
            .map(|pairs| pairs.lists.as_slice())
    }

    /// Swaps in `linears` of block `layer_idx` after checking each against its shape in a
    /// block of `widths`.
    fn replace<const N: usize>(
        &mut self,
        layer_idx: usize,
        widths: BlockWidths,
        linears: [(MatrixKind, Linear); N],
    ) -> Result<()> {
        let full = self.config.full_widths();
        if widths.mlp > full.mlp || widths.value > full.value {
            candle_core::bail!(
                "layer {layer_idx}: {} neurons and {} value dimensions per head exceed the model's {} and {}",
                widths.mlp,
                widths.value,
                full.mlp,
                full.value
            );
        }
        for (kind, linear) in &linears {
            let expected = self.config.matrix_shape_in(*kind, widths);
            if linear.shape()? != expected {
                candle_core::bail!(
                    "layer {layer_idx} {}: new matrix has shape {:?}, expected {expected:?}",
                    kind.name(),
                    linear.shape()?
                );
            }
        }
        let Some(block) = self.blocks.get_mut(layer_idx) else {
            candle_core::bail!("layer {layer_idx} does not exist");
        };
        for (kind, linear) in linears {
            *block.linear_mut(kind) = linear;
        }
        Ok(())
    }

    /// Final hidden states `(batch, width, hidden)` of a batch, starting at position 0.
    /// The observer, if any, sees the input of every linear layer at real positions only.
    pub fn forward_hidden(
        &self,
        batch: &Batch,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Tensor> {
        let real_rows = match observer.is_some() && batch.observes_a_subset() {
            true => Some(batch.real_rows()?),
            false => None,
        };
        let observer = observer.map(|observer| (observer, real_rows));
        self.run(batch.tokens(), 0, None, observer, None)
    }

    /// Token embeddings of a batch as rows `(batch · width, hidden)`: the input of block 0.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.embed_ids(&batch.tokens().flatten_all()?)
    }

    /// Embedding rows of `ids`, scaled by `√hidden_size` when the architecture says so.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.embedding.index_select(ids, 0)?;
        match self.config.arch.scale_embeddings {
            true => x * f64::from((self.config.hidden_size as f32).sqrt()),
            false => Ok(x),
        }
    }

    /// Runs one block on rows `(batch · width, hidden)` of `batch` (position 0 onwards);
    /// the observer sees that block's linear inputs at real positions only. Chaining
    /// [`Llama::embed`] and every block equals [`Llama::forward_hidden`] before the final norm.
    pub fn forward_block(
        &self,
        layer_idx: usize,
        x: &Tensor,
        batch: &Batch,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Tensor> {
        let Some(block) = self.blocks.get(layer_idx) else {
            candle_core::bail!("layer {layer_idx} does not exist");
        };
        let (b, t) = batch.tokens().dims2()?;
        let real_rows = match observer.is_some() && batch.observes_a_subset() {
            true => Some(batch.real_rows()?),
            false => None,
        };
        let mut pass = Pass {
            batch: b,
            seq_len: t,
            offset: 0,
            mask: causal_mask(t, 0, 0, &self.device)?,
            local_mask: causal_mask(t, 0, self.config.arch.sliding_window, &self.device)?,
            observer: observer.map(|observer| (observer, real_rows)),
            shared: None,
            differentiable: false,
        };
        self.block_forward(block, layer_idx, x, &mut pass, None)
    }

    /// Logits `(batch, width, vocab)` for every position of a batch.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.forward_hidden(batch, None)?;
        let (b, t, h) = hidden.dims3()?;
        self.logits(&hidden.reshape((b * t, h))?)?
            .reshape((b, t, self.config.vocab_size))
    }

    /// Hidden state `(batch, hidden)` at every row's last real position.
    pub fn last_hidden(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.forward_hidden(batch, None)?;
        let (b, t, h) = hidden.dims3()?;
        hidden
            .reshape((b * t, h))?
            .index_select(&batch.last_rows()?, 0)
    }

    /// Projects final hidden rows `(n, hidden)` onto the vocabulary: `(n, vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.matmul(&self.head.t()?)
    }

    /// Projects final hidden rows onto a few vocabulary rows only (e.g. label tokens).
    pub fn logits_for(&self, hidden: &Tensor, token_ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(token_ids, &self.device)?;
        let rows = self.head.index_select(&ids, 0)?;
        hidden.matmul(&rows.t()?)
    }

    /// The model that exits after its first `exit` blocks: the same weights (shared, not
    /// copied), `n_layers = exit`, the final norm applied to block `exit − 1`'s output.
    pub fn truncated(&self, exit: usize) -> Result<Self> {
        if exit == 0 || exit > self.blocks.len() {
            candle_core::bail!(
                "exit layer {exit} is outside the model's 1..={} blocks; choose an exit within the model",
                self.blocks.len()
            );
        }
        let mut model = self.clone();
        model.blocks.truncate(exit);
        model.config.n_layers = exit;
        Ok(model)
    }

    /// Like [`Llama::last_hidden_after`] (or [`Llama::last_hidden`] without a prefix), for
    /// every exit at once: element `l` is the final norm of block `l`'s output at every row's
    /// last real position, `(batch, hidden)`, which is what `self.truncated(l + 1)` returns.
    pub fn last_hidden_per_exit(
        &self,
        prefix: Option<&KvCache>,
        batch: &Batch,
    ) -> Result<Vec<Tensor>> {
        let mut taps = Vec::with_capacity(self.blocks.len());
        let offset = prefix.map_or(0, |p| p.len);
        self.run_tapped(
            batch.tokens(),
            offset,
            None,
            None,
            prefix,
            Some(&mut taps),
            false,
        )?;
        let last = batch.last_rows()?;
        taps.iter()
            .map(|x| {
                let rows = x.index_select(&last, 0)?;
                candle_nn::ops::rms_norm(&rows, &self.final_norm, self.config.rms_norm_eps)
            })
            .collect()
    }

    /// Keys and values of one prompt prefix, to be shared by every row of later batches
    /// ([`Llama::last_hidden_after`]).
    pub fn prefix_cache(&self, prefix: &[u32]) -> Result<KvCache> {
        let mut cache = KvCache::default();
        let tokens = Tensor::new(prefix, &self.device)?.unsqueeze(0)?;
        self.run(&tokens, 0, Some(&mut cache), None, None)?;
        Ok(cache)
    }

    /// Hidden state `(batch, hidden)` at every row's last real position, where every row of
    /// `batch` continues the same `prefix` (positions `prefix.len()` onwards). Equals
    /// [`Llama::last_hidden`] of the concatenated sequences, computing the prefix once.
    pub fn last_hidden_after(&self, prefix: &KvCache, batch: &Batch) -> Result<Tensor> {
        let hidden = self.run(batch.tokens(), prefix.len, None, None, Some(prefix))?;
        let (b, t, h) = hidden.dims3()?;
        hidden
            .reshape((b * t, h))?
            .index_select(&batch.last_rows()?, 0)
    }

    /// Continues `cache` with `tokens` `(batch, seq)` (no padding); returns the logits of the
    /// last new position, `(batch, vocab)`.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len;
        let hidden = self.run(tokens, offset, Some(cache), None, None)?;
        let seq_len = hidden.dim(1)?;
        self.logits(&hidden.i((.., seq_len - 1, ..))?.contiguous()?)
    }

    fn run(
        &self,
        tokens: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
        observer: Option<(&mut dyn Observer, Option<Tensor>)>,
        shared: Option<&KvCache>,
    ) -> Result<Tensor> {
        self.run_tapped(tokens, offset, cache, observer, shared, None, false)
    }

    /// The final-normed hidden rows of a batch at [`Batch::real_rows`] (rows in batch order,
    /// each row's positions in order), every row continuing `prefix` when one is given
    /// ([`Llama::prefix_cache`]). With `differentiable` only operations with a backward pass
    /// run, so gradients reach every weight, through the prefix's keys and values too when
    /// they come from [`Llama::differentiable_prefix_cache`]: what training runs through.
    /// Both ways agree up to rounding.
    pub fn hidden_rows(
        &self,
        batch: &Batch,
        prefix: Option<&KvCache>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let offset = prefix.map_or(0, KvCache::len);
        let hidden = self.run_tapped(
            batch.tokens(),
            offset,
            None,
            None,
            prefix,
            None,
            differentiable,
        )?;
        let (b, t, h) = hidden.dims3()?;
        hidden
            .reshape((b * t, h))?
            .index_select(&batch.real_rows()?, 0)
    }

    /// [`Llama::prefix_cache`] through differentiable operations ([`Llama::hidden_rows`]).
    pub fn differentiable_prefix_cache(&self, prefix: &[u32]) -> Result<KvCache> {
        let mut cache = KvCache::default();
        let tokens = Tensor::new(prefix, &self.device)?.unsqueeze(0)?;
        self.run_tapped(&tokens, 0, Some(&mut cache), None, None, None, true)?;
        Ok(cache)
    }

    /// [`Llama::run`], pushing every block's output rows `(batch · seq, hidden)` to `taps`.
    #[allow(clippy::too_many_arguments)]
    fn run_tapped(
        &self,
        tokens: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
        observer: Option<(&mut dyn Observer, Option<Tensor>)>,
        shared: Option<&KvCache>,
        mut taps: Option<&mut Vec<Tensor>>,
        differentiable: bool,
    ) -> Result<Tensor> {
        let (batch, seq_len) = tokens.dims2()?;
        if offset + seq_len > self.config.max_position_embeddings {
            candle_core::bail!(
                "{} positions exceed the model's context length {}",
                offset + seq_len,
                self.config.max_position_embeddings
            );
        }
        let window = self.config.arch.sliding_window;
        let mut pass = Pass {
            batch,
            seq_len,
            offset,
            mask: causal_mask(seq_len, offset, 0, &self.device)?,
            local_mask: causal_mask(seq_len, offset, window, &self.device)?,
            observer,
            shared: None,
            differentiable,
        };
        if let Some(cache) = cache.as_deref_mut() {
            cache.layers.resize(self.config.n_layers, None);
        }
        let ids = tokens.flatten_all()?;
        let mut x = self.embed_ids(&ids)?;
        for (layer_idx, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[layer_idx]);
            let attends = block.widths(&self.config)?.value > 0;
            pass.shared = match shared {
                Some(_) if !attends => None,
                Some(prefix) => match prefix.layers.get(layer_idx) {
                    Some(Some(kv)) => Some(kv.clone()),
                    _ => candle_core::bail!("the prefix cache lacks layer {layer_idx}"),
                },
                None => None,
            };
            x = self.block_forward(block, layer_idx, &x, &mut pass, layer_cache)?;
            if let Some(taps) = taps.as_deref_mut() {
                taps.push(x.clone());
            }
        }
        if let Some(cache) = cache {
            cache.len += seq_len;
        }
        let x = pass.rms_norm(&x, &self.final_norm, self.config.rms_norm_eps)?;
        x.reshape((batch, seq_len, self.config.hidden_size))
    }

    fn block_forward(
        &self,
        block: &Block,
        layer_idx: usize,
        x: &Tensor,
        pass: &mut Pass<'_>,
        layer_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let widths = block.widths(&self.config)?;
        let x = match widths.value {
            0 => x.clone(),
            value => {
                let normed = pass.rms_norm(x, &block.attn_norm, eps)?;
                pass.observe(layer_idx, InputSite::Qkv, &normed)?;
                let attention =
                    self.attention(block, layer_idx, value, &normed, pass, layer_cache)?;
                pass.observe(layer_idx, InputSite::O, &attention)?;
                let out = block.o.forward(&attention)?;
                match &block.post_norms {
                    Some((post, _)) => (x + pass.rms_norm(&out, post, eps)?)?,
                    None => (x + out)?,
                }
            }
        };
        if widths.mlp == 0 {
            return Ok(x);
        }
        let normed = pass.rms_norm(&x, &block.ffn_norm, eps)?;
        pass.observe(layer_idx, InputSite::GateUp, &normed)?;
        let gate = block.gate.forward(&normed)?;
        let gate = match self.config.arch.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let gated = (gate * block.up.forward(&normed)?)?;
        pass.observe(layer_idx, InputSite::Down, &gated)?;
        let out = block.down.forward(&gated)?;
        match &block.post_norms {
            Some((_, post)) => x + pass.rms_norm(&out, post, eps)?,
            None => x + out,
        }
    }

    /// Multi-head attention with grouped key/value heads, each keeping `value` value
    /// dimensions; returns `(rows, n_heads · value)` before the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block,
        layer_idx: usize,
        value: usize,
        x: &Tensor,
        pass: &Pass<'_>,
        layer_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t) = (pass.batch, pass.seq_len);
        let head_dim = self.config.head_dim();
        let (n_heads, n_kv_heads) = (self.config.n_heads, self.config.n_kv_heads);
        let split_heads = |y: Tensor, heads: usize, dim: usize| -> Result<Tensor> {
            y.reshape((b, t, heads, dim))?.transpose(1, 2)
        };
        let (mut q, mut k) = (block.q.forward(x)?, block.k.forward(x)?);
        let mut v = block.v.forward(x)?;
        if let Some([q_bias, k_bias, v_bias]) = &block.qkv_bias {
            q = q.broadcast_add(q_bias)?;
            k = k.broadcast_add(k_bias)?;
            v = v.broadcast_add(v_bias)?;
        }
        let (q, k) = match &block.rotary_pairs {
            Some(pairs) => (
                RotaryPairs::spread(&q, &pairs.q_lanes)?,
                RotaryPairs::spread(&k, &pairs.k_lanes)?,
            ),
            None => (q, k),
        };
        let (q, k) = match &block.qk_norms {
            Some((q_norm, k_norm)) => {
                let eps = self.config.rms_norm_eps;
                let q = q.reshape((b * t, n_heads, head_dim))?;
                let k = k.reshape((b * t, n_kv_heads, head_dim))?;
                (
                    pass.rms_norm(&q, q_norm, eps)?,
                    pass.rms_norm(&k, k_norm, eps)?,
                )
            }
            None => (q, k),
        };
        let q = split_heads(q, n_heads, head_dim)?;
        let k = split_heads(k, n_kv_heads, head_dim)?;
        let v = split_heads(v, n_kv_heads, value)?.contiguous()?;
        let local = self.config.arch.is_local(layer_idx);
        let rope = match (&self.local_rope, local) {
            (Some(rope), true) => rope,
            _ => &self.rope,
        };
        let q = rope.apply(&q, pass.offset, pass.differentiable)?;
        let k = rope.apply(&k, pass.offset, pass.differentiable)?;
        let (k, v) = match (layer_cache, &pass.shared) {
            (None, Some((k_past, v_past))) => {
                let grown = |past: &Tensor, new: &Tensor| -> Result<Tensor> {
                    let (_, heads, positions, dim) = past.dims4()?;
                    let past = past
                        .broadcast_as((b, heads, positions, dim))?
                        .contiguous()?;
                    Tensor::cat(&[&past, new], 2)?.contiguous()
                };
                (grown(k_past, &k)?, grown(v_past, &v)?)
            }
            (None, None) => (k, v),
            (Some(_), Some(_)) => {
                candle_core::bail!("a pass cannot both extend a cache and share a prefix")
            }
            (Some(slot), None) => {
                let (k, v) = match slot.take() {
                    Some((k_past, v_past)) => (
                        Tensor::cat(&[&k_past, &k], 2)?,
                        Tensor::cat(&[&v_past, &v], 2)?,
                    ),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        // Grouped-query attention without copying keys and values: the query heads of one
        // key/value head are consecutive, so they fold into that head's rows.
        let n_rep = n_heads / n_kv_heads;
        let q = q.reshape((b, n_kv_heads, n_rep * t, head_dim))?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let mask = match local {
            true => &pass.local_mask,
            false => &pass.mask,
        };
        let scores = match mask {
            Some(mask) if n_rep > 1 => scores.broadcast_add(&mask.repeat((n_rep, 1))?)?,
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = pass.softmax_last_dim(&scores)?;
        weights
            .matmul(&v)?
            .reshape((b, n_heads, t, value))?
            .transpose(1, 2)?
            .reshape((b * t, n_heads * value))
    }
}

/// Additive mask `(seq, offset + seq)`: −∞ where a query would see a later key or, with a
/// `window` (0: none), a key `window` or more positions back (llama.cpp's standard sliding
/// window); `None` when nothing is masked.
fn causal_mask(
    seq_len: usize,
    offset: usize,
    window: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = offset + seq_len;
    let windowed = window > 0 && total > window;
    if seq_len == 1 && !windowed {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                let query = offset + i;
                if j > query || (window > 0 && query - j >= window) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (seq_len, total), device).map(Some)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(logits, D::Minus1)
}
