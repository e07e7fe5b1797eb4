//! The board cost model (DESIGN section 6): what a rank plan costs on one board, in bytes and
//! in time per token.
//!
//! Bytes follow the parameter accounting of DESIGN section 3 (the host's `Reductions`): a
//! dense `rows × cols` matrix stores `rows·cols` parameters, a low-rank pair of rank `r`
//! stores `A` (`r × cols`) and `B` (`rows × r`), the tied embedding and output head are stored
//! once, norms stay f32.
//!
//! Time per token is a roofline sum: every piece of work (a matrix, the head, the attention of
//! one block) takes `max(bytes / bandwidth, flops / throughput)`, the pieces run one after the
//! other, every block adds the board's fixed per-layer overhead, and every low-rank pair adds
//! the overhead of its second matrix product (a thread hand-off on a CPU, a kernel launch on a
//! GPU): bytes alone do not order genomes by latency, since trimming a matrix a little saves
//! less streaming time than the extra product costs. Decoding is predicted for
//! the last token of a full context (`context_length`, the worst case a latency budget must
//! hold for); prefill is throughput-bound. Where the profile carries measured kernel rates
//! ([`crate::KernelRates`], the `host` profile), the weight matrices stream at the measured
//! decode rate of their dtype instead of the memory bandwidth, and prefill multiplies them at
//! the measured prefill rate instead of the sgemm throughput.

use serde::Serialize;
use whittle_runtime::{BlockWidths, ConfigError, MatrixKind, ModelConfig};

use crate::BoardProfile;

/// How the weight matrices are stored: the bundle format's own type, whose
/// [`Dtype::matrix_bytes`] the cost model uses. Only the weights shrink: norms, the KV cache and
/// the activations stay f32. Compute is modelled as the same `2·params` FLOPs at the f32 rate
/// (dequantize, then multiply-add), which is conservative where the CPU has an int8 dot
/// product; decoding a q8 model is bandwidth-bound on every board with a cache hierarchy anyway.
pub use whittle_runtime::format::Dtype;

/// What one plan costs on one board.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// What the device stores: today the tensor data, `weight_bytes` (the bundle's header,
    /// tokenizer and alignment padding are added when the bundle format lands).
    pub bundle_bytes: u64,
    /// Every weight by dtype: the prunable linears, the embedding (which is also the tied
    /// head), a task-pruned head when there is one, and the f32 norms.
    pub weight_bytes: u64,
    /// `n_layers · context · (4 · kv_dim + 4 · n_kv_heads)`: keys in 16-bit integers with an
    /// f32 scale per key/value head, and values in f16, for every dtype.
    pub kv_cache_bytes: u64,
    /// The runtime's scratch memory for one decoded token, in f32:
    /// `4 · (4·hidden + 2·kv_dim + 2·intermediate + max(hidden, intermediate)
    /// + n_heads·context + logits)`: residual, normed input, query, attention output and
    /// MLP output; key and value; gate and up; the middle of a low-rank pair; attention
    /// scores; and the logits (`vocab_size`, or `head_rows` with a task-pruned head).
    pub arena_bytes: u64,
    /// `weight_bytes + kv_cache_bytes + arena_bytes`: what the model needs in the board's
    /// memory (weights kept in RAM, not executed in place from flash).
    pub runtime_memory_bytes: u64,
    /// Weight bytes read to decode one token: every linear, the norms, one embedding row and
    /// the whole head (DESIGN section 3). The KV cache read adds to this in the latency.
    pub bytes_read_per_token: u64,
    /// Decode time of the last token of a full context on the CPU, in milliseconds.
    pub decode_ms_per_token_cpu: f64,
    /// Prefill time per token of a full-context prompt on the CPU, in milliseconds.
    pub prefill_ms_per_token_cpu: f64,
    /// The same decode time on the GPU, where the board has one.
    pub decode_ms_per_token_gpu: Option<f64>,
    /// The same prefill time on the GPU, where the board has one.
    pub prefill_ms_per_token_gpu: Option<f64>,
    /// The context the prediction is for: the board's `context_length`, capped at the
    /// model's `max_position_embeddings`.
    pub context_length: usize,
}

impl Prediction {
    /// The decode time the board achieves: the GPU's where it has one and it is faster, else
    /// the CPU's.
    pub fn decode_ms_per_token(&self) -> f64 {
        self.decode_ms_per_token_gpu
            .map_or(self.decode_ms_per_token_cpu, |gpu| {
                gpu.min(self.decode_ms_per_token_cpu)
            })
    }
}

/// Why a plan cannot be costed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CostError {
    /// The model's hyper-parameters are inconsistent.
    #[error("the model config is invalid: {0}; fix the model's hyper-parameters")]
    Config(ConfigError),
    /// The plan has not one entry per prunable matrix.
    #[error(
        "the rank plan has {got} entries but the model has {expected} prunable matrices (n_layers × 7); build the plan for this model"
    )]
    PlanLength {
        /// `n_layers · 7`.
        expected: usize,
        /// The plan's length.
        got: usize,
    },
    /// A rank exceeds what the matrix can have.
    #[error(
        "layer {layer_idx} `{kind}` has rank {rank} but a {rows}×{cols} matrix has at most rank {max}; lower the rank or keep the matrix dense (None)"
    )]
    RankTooLarge {
        /// Block of the matrix.
        layer_idx: usize,
        /// Kind of the matrix (`q`, `gate`, …).
        kind: &'static str,
        /// The rank asked for.
        rank: usize,
        /// `d_out` of the matrix.
        rows: usize,
        /// `d_in` of the matrix.
        cols: usize,
        /// `min(rows, cols)`.
        max: usize,
    },
    /// The block widths are not one per block, or one is outside the model's MLP or heads.
    #[error(
        "the plan's block widths ({got} entries, widest MLP {widest_mlp}, widest value head {widest_value}) must be one per block ({n_layers}) within 0..={intermediate_size} neurons, 0..={head_dim} value dimensions and half as many rotary pairs, or none for full blocks; build the plan for this model"
    )]
    BlockWidths {
        /// Entries given.
        got: usize,
        /// The largest MLP width given.
        widest_mlp: usize,
        /// The largest value width given.
        widest_value: usize,
        /// Blocks of the model.
        n_layers: usize,
        /// Neurons of a full MLP.
        intermediate_size: usize,
        /// Value dimensions of a full head.
        head_dim: usize,
    },
    /// A task-pruned head must keep between one row and the whole vocabulary.
    #[error(
        "a task-pruned head of {head_rows} rows is outside 1..={vocab_size}; pass the number of label tokens, or None for the tied head"
    )]
    HeadRows {
        /// The rows asked for.
        head_rows: usize,
        /// The model's vocabulary.
        vocab_size: usize,
    },
}

/// Predicts bytes, memory and latency of `ranks` (one entry per prunable matrix, index
/// `layer_idx · 7 + kind` in [`MatrixKind::ALL`] order, `None` dense) stored as `dtype` on
/// `profile`, each matrix as `matrix_dtypes` gives it where that is not empty (a mixed q4
/// bundle keeps some at q8; same order as `ranks`). `widths` holds what each block keeps of
/// its MLP and its value heads (empty: every block full; zero skips a sub-block, which then
/// costs nothing). `head_rows` is the row count of a task-pruned head (stored apart from the
/// embedding), `None` for the tied head.
pub fn predict(
    profile: &BoardProfile,
    config: &ModelConfig,
    ranks: &[Option<usize>],
    widths: &[BlockWidths],
    dtype: Dtype,
    matrix_dtypes: &[Dtype],
    head_rows: Option<usize>,
) -> Result<Prediction, CostError> {
    config.validate().map_err(CostError::Config)?;
    if ranks.len() != config.n_prunable_matrices() {
        return Err(CostError::PlanLength {
            expected: config.n_prunable_matrices(),
            got: ranks.len(),
        });
    }
    if !matrix_dtypes.is_empty() && matrix_dtypes.len() != ranks.len() {
        return Err(CostError::PlanLength {
            expected: ranks.len(),
            got: matrix_dtypes.len(),
        });
    }
    check_widths(config, widths, false)?;
    if let Some(rows) = head_rows
        && !(1..=config.vocab_size).contains(&rows)
    {
        return Err(CostError::HeadRows {
            head_rows: rows,
            vocab_size: config.vocab_size,
        });
    }
    let context = profile.context_length.min(config.max_position_embeddings);
    let dtypes = |index: usize| matrix_dtypes.get(index).copied().unwrap_or(dtype);
    let workload = Workload::new(config, ranks, widths, dtype, &dtypes, head_rows, context)?;

    let hidden = config.hidden_size;
    // A q4 bundle keeps its embedding and head at q8 (`Dtype::rows`).
    let embedding_bytes = dtype.rows().matrix_bytes(config.vocab_size, hidden);
    let norm_bytes = norm_bytes(config);
    let task_head_bytes = head_rows.map_or(0, |rows| dtype.rows().matrix_bytes(rows, hidden));
    let weight_bytes = workload
        .linear_bytes
        .saturating_add(embedding_bytes)
        .saturating_add(norm_bytes)
        .saturating_add(task_head_bytes);
    let kv_cache_bytes = product(&[config.n_layers, context, cache_bytes_per_position(config)]);
    let logits = head_rows.unwrap_or(config.vocab_size);
    let arena_floats = [
        product(&[4, hidden.max(config.q_dim())]),
        product(&[2, config.kv_dim()]),
        product(&[2, config.intermediate_size]),
        hidden.max(config.intermediate_size) as u64,
        product(&[config.n_heads, context]),
        logits as u64,
    ]
    .into_iter()
    .fold(0u64, u64::saturating_add);
    let arena_bytes = arena_floats.saturating_mul(F32_BYTES as u64);

    let cpu = Processor::cpu(profile);
    let gpu = Processor::gpu(profile);
    Ok(Prediction {
        bundle_bytes: weight_bytes,
        weight_bytes,
        kv_cache_bytes,
        arena_bytes,
        runtime_memory_bytes: weight_bytes
            .saturating_add(kv_cache_bytes)
            .saturating_add(arena_bytes),
        bytes_read_per_token: workload.weight_bytes_read(),
        decode_ms_per_token_cpu: workload.decode_seconds(&cpu) * MS_PER_S,
        prefill_ms_per_token_cpu: workload.prefill_seconds(&cpu) * MS_PER_S,
        decode_ms_per_token_gpu: gpu
            .as_ref()
            .map(|gpu| workload.decode_seconds(gpu) * MS_PER_S),
        prefill_ms_per_token_gpu: gpu
            .as_ref()
            .map(|gpu| workload.prefill_seconds(gpu) * MS_PER_S),
        context_length: context,
    })
}

const F32_BYTES: usize = 4;
/// Bytes one layer's KV cache keeps per position: a 16-bit key and an f16 value per lane of
/// `kv_dim`, and an f32 scale per key/value head's key.
fn cache_bytes_per_position(config: &ModelConfig) -> usize {
    4 * config.kv_dim() + F32_BYTES * config.n_kv_heads
}
const MS_PER_S: f64 = 1e3;

/// The product of sizes, saturating: a size too large for `u64` never fits a board anyway.
fn product(factors: &[usize]) -> u64 {
    factors
        .iter()
        .fold(1u64, |acc, &factor| acc.saturating_mul(factor as u64))
}

/// Every block's RMSNorm weights (the architecture's post- and query/key norms included) and
/// the final norm, in f32.
fn norm_bytes(config: &ModelConfig) -> u64 {
    let values = product(&[config.n_layers, config.block_norm_params()])
        .saturating_add(config.hidden_size as u64);
    values.saturating_mul(F32_BYTES as u64)
}

/// A processor as the roofline sees it.
#[derive(Clone, Debug)]
struct Processor {
    bytes_per_s: f64,
    flops_per_s: f64,
    /// How fast the weight matrices stream while decoding and how fast prefill multiplies by
    /// them, for f32, q8 and q4 ([`Processor::weight_rates`]): the bandwidth and the
    /// throughput, or the measured kernel rates of the dtype.
    weight_rates: [(f64, f64); 3],
    /// Decode rates of f32, q8 and q4 weights by working set in bytes, ascending
    /// ([`crate::KernelRates::decode_by_working_set`]); empty: `weight_rates` throughout.
    decode_curve: Vec<(f64, [f64; 3])>,
    layer_overhead_s: f64,
    /// What one more matrix product costs (a low-rank pair is two products).
    product_overhead_s: f64,
    /// The measured rate of the runtime's attention, where the profile has one.
    attention_flops_per_s: Option<f64>,
    /// Fixed time per block per prefilled token.
    prefill_layer_overhead_s: f64,
}

impl Processor {
    fn cpu(profile: &BoardProfile) -> Self {
        let bytes_per_s = profile.bandwidth_bytes_per_s as f64;
        let flops_per_s = profile.cpu_f32_flops;
        let rates = |dtype: Dtype| match (&profile.kernels, dtype) {
            (Some(k), Dtype::Q8) => (k.q8_decode_bytes_per_s, k.q8_prefill_flops),
            // A profile measured before q4 has only q8's rates.
            (Some(k), Dtype::Q4) => (
                k.q4_decode_bytes_per_s.unwrap_or(k.q8_decode_bytes_per_s),
                k.q4_prefill_flops.unwrap_or(k.q8_prefill_flops),
            ),
            (Some(k), Dtype::F32) => (k.f32_decode_bytes_per_s, k.f32_prefill_flops),
            (None, _) => (bytes_per_s, flops_per_s),
        };
        let decode_curve = profile.kernels.as_ref().map_or(Vec::new(), |k| {
            k.decode_by_working_set
                .iter()
                .map(|point| {
                    let rates = [
                        point.f32_decode_bytes_per_s,
                        point.q8_decode_bytes_per_s,
                        point.q4_decode_bytes_per_s,
                    ];
                    (point.bytes as f64, rates)
                })
                .collect()
        });
        Self {
            bytes_per_s,
            flops_per_s,
            weight_rates: [rates(Dtype::F32), rates(Dtype::Q8), rates(Dtype::Q4)],
            decode_curve,
            layer_overhead_s: profile.layer_overhead_us * 1e-6,
            product_overhead_s: profile.product_overhead_us * 1e-6,
            attention_flops_per_s: profile.kernels.as_ref().and_then(|k| k.attention_flops),
            prefill_layer_overhead_s: profile
                .kernels
                .as_ref()
                .and_then(|k| k.prefill_layer_overhead_us)
                .unwrap_or(0.0)
                * 1e-6,
        }
    }

    /// The GPU shares the board's memory, hence its bandwidth.
    fn gpu(profile: &BoardProfile) -> Option<Self> {
        profile.gpu_fp32_flops.map(|flops_per_s| Self {
            bytes_per_s: profile.bandwidth_bytes_per_s as f64,
            flops_per_s,
            weight_rates: [(profile.bandwidth_bytes_per_s as f64, flops_per_s); 3],
            decode_curve: Vec::new(),
            layer_overhead_s: profile.gpu_layer_overhead_us * 1e-6,
            product_overhead_s: profile.gpu_product_overhead_us * 1e-6,
            attention_flops_per_s: None,
            prefill_layer_overhead_s: 0.0,
        })
    }

    /// `(bytes per second streamed while decoding, FLOPs per second in prefill)` of weight
    /// matrices stored as `dtype`.
    fn weight_rates(&self, dtype: Dtype) -> (f64, f64) {
        self.weight_rates[dtype_index(dtype)]
    }

    /// Bytes per second at which weights of `dtype` stream in a decode step whose weights and
    /// cached keys and values come to `working_set` bytes: read off the measured curve, the
    /// time per byte interpolated linearly in the logarithm of the bytes between its two
    /// nearest points, its end points' rates beyond them; without a curve, `weight_rates`.
    fn decode_rate(&self, dtype: Dtype, working_set: u64) -> f64 {
        let index = dtype_index(dtype);
        let rate = |point: &(f64, [f64; 3])| point.1[index];
        let bytes = working_set as f64;
        let curve = &self.decode_curve;
        let (Some(first), Some(last)) = (curve.first(), curve.last()) else {
            return self.weight_rates[index].0;
        };
        if bytes <= first.0 {
            return rate(first);
        }
        for pair in curve.windows(2) {
            if let [low, high] = pair
                && bytes <= high.0
            {
                let t = (bytes / low.0).ln() / (high.0 / low.0).ln();
                return 1.0 / ((1.0 - t) / rate(low) + t / rate(high));
            }
        }
        rate(last)
    }
}

fn dtype_index(dtype: Dtype) -> usize {
    match dtype {
        Dtype::F32 => 0,
        Dtype::Q8 => 1,
        Dtype::Q4 => 2,
    }
}

/// One step of decoding a token: the bytes it reads and the FLOPs it performs, on weights
/// stored as `dtype` where it streams weights.
#[derive(Clone, Copy, Debug)]
struct Work {
    bytes: u64,
    flops: u64,
    dtype: Dtype,
}

impl Work {
    fn seconds(self, processor: &Processor) -> f64 {
        (self.bytes as f64 / processor.bytes_per_s).max(self.flops as f64 / processor.flops_per_s)
    }

    /// As [`Work::seconds`] for weights: they stream at the processor's decode rate for a
    /// step of `working_set` bytes.
    fn weight_seconds(self, processor: &Processor, working_set: u64) -> f64 {
        (self.bytes as f64 / processor.decode_rate(self.dtype, working_set))
            .max(self.flops as f64 / processor.flops_per_s)
    }
}

/// What decoding and prefilling one token cost, before a board is chosen.
#[derive(Debug)]
struct Workload {
    /// Every prunable matrix, the head, the norms with the embedding row, in that order.
    weight_steps: Vec<Work>,
    /// The attention of one full block over the whole context.
    attention_per_layer: Work,
    /// Blocks' attention in full blocks' worth: a block keeping `v` of `head_dim` value
    /// dimensions reads its keys whole and `v / head_dim` of its values and does as much of
    /// the weighted sum, `(head_dim + v) / (2·head_dim)` of a full block; a skipped one none.
    attention_layers: f64,
    n_layers: usize,
    /// Prunable matrices stored as a low-rank pair: each is one product more than dense.
    n_low_rank: usize,
    linear_bytes: u64,
    /// The prunable matrices (the first entries of `weight_steps`).
    n_linear: usize,
    /// The attention's FLOPs per prefilled token (mean over a full-context prompt).
    prefill_attention_flops_per_token: f64,
}

impl Workload {
    fn new(
        config: &ModelConfig,
        ranks: &[Option<usize>],
        widths: &[BlockWidths],
        dtype: Dtype,
        matrix_dtype: &dyn Fn(usize) -> Dtype,
        head_rows: Option<usize>,
        context: usize,
    ) -> Result<Self, CostError> {
        let hidden = config.hidden_size;
        let mut weight_steps = Vec::with_capacity(ranks.len() + 2);
        for (index, rank) in ranks.iter().enumerate() {
            let (layer_idx, kind) = whittle_runtime::matrix_at(index);
            let block = widths
                .get(layer_idx)
                .copied()
                .unwrap_or(config.full_widths());
            weight_steps.push(linear_work(
                config,
                layer_idx,
                kind,
                block,
                *rank,
                matrix_dtype(index),
            )?);
        }
        let linear_bytes = weight_steps
            .iter()
            .fold(0u64, |sum, work| sum.saturating_add(work.bytes));
        let head_rows = head_rows.unwrap_or(config.vocab_size);
        weight_steps.push(Work {
            bytes: dtype.rows().matrix_bytes(head_rows, hidden),
            flops: product(&[2, head_rows, hidden]),
            dtype: dtype.rows(),
        });
        weight_steps.push(Work {
            bytes: norm_bytes(config).saturating_add(dtype.rows().matrix_bytes(1, hidden)),
            flops: 0,
            dtype: dtype.rows(),
        });
        // Scores q·k and the weighted sum of v: 2·head_dim FLOPs each, per head and position.
        let attention_per_layer = Work {
            bytes: product(&[context, cache_bytes_per_position(config)]),
            flops: product(&[4, hidden, context]),
            dtype: Dtype::F32,
        };
        // A prompt of `context` tokens: the token at position p attends to p positions, so on
        // average to (context + 1) / 2.
        let mean_attended = (context as f64 + 1.0) / 2.0;
        let head_dim = config.head_dim() as f64;
        let attention_layers = (0..config.n_layers)
            .map(|layer_idx| {
                let value = widths.get(layer_idx).map_or(head_dim, |w| w.value as f64);
                match value > 0.0 {
                    true => (head_dim + value) / (2.0 * head_dim),
                    false => 0.0,
                }
            })
            .sum::<f64>();
        Ok(Self {
            weight_steps,
            attention_per_layer,
            attention_layers,
            n_layers: config.n_layers,
            n_low_rank: ranks.iter().filter(|rank| rank.is_some()).count(),
            linear_bytes,
            n_linear: ranks.len(),
            prefill_attention_flops_per_token: attention_layers
                * 4.0
                * hidden as f64
                * mean_attended,
        })
    }

    fn weight_bytes_read(&self) -> u64 {
        self.weight_steps
            .iter()
            .fold(0u64, |sum, work| sum.saturating_add(work.bytes))
    }

    /// Streaming the weights (every matrix, the head, norms and embedding row) once, at the
    /// rate of a step that reads them and every attending block's keys and values.
    fn weight_stream_seconds(&self, processor: &Processor) -> f64 {
        let cache_bytes = self.attention_per_layer.bytes as f64 * self.attention_layers;
        let working_set = self.weight_bytes_read().saturating_add(cache_bytes as u64);
        self.weight_steps
            .iter()
            .map(|work| work.weight_seconds(processor, working_set))
            .sum()
    }

    /// One block's attention for one decoded token: at the measured attention rate where the
    /// profile has one, else the roofline.
    fn attention_seconds(&self, processor: &Processor) -> f64 {
        match processor.attention_flops_per_s {
            Some(rate) => self.attention_per_layer.flops as f64 / rate,
            None => self.attention_per_layer.seconds(processor),
        }
    }

    fn decode_seconds(&self, processor: &Processor) -> f64 {
        self.weight_stream_seconds(processor)
            + self.attention_layers * self.attention_seconds(processor)
            + self.n_layers as f64 * processor.layer_overhead_s
            + self.n_low_rank as f64 * processor.product_overhead_s
    }

    /// Prefill runs batched matrix products, so it is throughput-bound; the head runs once
    /// per prompt (last position), left out. Each block adds the profile's measured fixed time
    /// per prefilled token, where it has one.
    fn prefill_seconds(&self, processor: &Processor) -> f64 {
        self.weight_steps[..self.n_linear]
            .iter()
            .map(|work| work.flops as f64 / processor.weight_rates(work.dtype).1)
            .sum::<f64>()
            + self.prefill_attention_flops_per_token
                / processor
                    .attention_flops_per_s
                    .unwrap_or(processor.flops_per_s)
            + self.n_layers as f64 * processor.prefill_layer_overhead_s
    }
}

/// Measured step times of one dense model on the board's runtime, from which
/// [`fit_overheads`] derives the fixed costs the kernel rates leave out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimes {
    /// `(context, seconds)`: the time to decode one token (one position through every block,
    /// then the whole head) with `context` positions in the cache, at a short and a long
    /// context.
    pub decode: [(usize, f64); 2],
    /// `(prompt tokens, seconds per token)` of prefilling a prompt from an empty cache.
    pub prefill: (usize, f64),
}

/// What [`fit_overheads`] derives: the profile fields the cost model reads besides its rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Overheads {
    /// [`BoardProfile::layer_overhead_us`].
    pub layer_overhead_us: f64,
    /// [`crate::KernelRates::attention_flops`]; `None` where the longer context did not take
    /// longer (noise), so no rate can be read off.
    pub attention_flops: Option<f64>,
    /// [`crate::KernelRates::prefill_layer_overhead_us`].
    pub prefill_layer_overhead_us: f64,
}

/// The fixed costs that make [`predict`] reproduce `times` for the dense `config` on
/// `profile` (its rates and product overhead as they are): the attention rate from the
/// difference between the two decode contexts (less the difference in streaming the weights),
/// then the per-block decode overhead from the shorter one, then the per-block prefill
/// overhead. Overheads are never negative: where the rates alone already predict more than was
/// measured, the overhead is 0.
pub fn fit_overheads(
    profile: &BoardProfile,
    config: &ModelConfig,
    dtype: Dtype,
    times: &StepTimes,
) -> Result<Overheads, CostError> {
    config.validate().map_err(CostError::Config)?;
    let dense = vec![None; config.n_prunable_matrices()];
    let mut processor = Processor::cpu(profile);
    processor.attention_flops_per_s = None;
    processor.prefill_layer_overhead_s = 0.0;
    let [(short, short_s), (long, long_s)] = times.decode;
    let at = |context: usize| {
        Workload::new(config, &dense, &[], dtype, &|_| dtype, None, context.max(1))
    };
    let (short_work, long_work) = (at(short)?, at(long)?);
    let layers = config.n_layers as f64;
    let extra_flops = layers
        * (long_work.attention_per_layer.flops as f64
            - short_work.attention_per_layer.flops as f64);
    // The longer context also streams the weights more slowly where the profile has a decode
    // curve (its cached keys and values enlarge the working set): only the rest is attention.
    let short_stream_s = short_work.weight_stream_seconds(&processor);
    let extra_s =
        (long_s - long_work.weight_stream_seconds(&processor)) - (short_s - short_stream_s);
    let attention_flops =
        Some(extra_flops / extra_s).filter(|rate| rate.is_finite() && *rate > 0.0);
    processor.attention_flops_per_s = attention_flops;
    let fixed = short_s - short_stream_s - layers * short_work.attention_seconds(&processor);
    let layer_overhead_us = (fixed / layers * 1e6).max(0.0);
    let (prompt, prefill_s) = times.prefill;
    let prompt_work = at(prompt)?;
    let prefill_fixed = prefill_s - prompt_work.prefill_seconds(&processor);
    Ok(Overheads {
        layer_overhead_us,
        attention_flops,
        prefill_layer_overhead_us: (prefill_fixed / layers * 1e6).max(0.0),
    })
}

/// One prunable matrix's share of [`predict`] on the board's CPU: its stored bytes and its
/// decode seconds (streaming or computing, whichever is slower, plus the extra product of a
/// low-rank pair), for `rank` (`None`: dense) in a block of `widths`. It streams at the rate of
/// the largest measured working set (the matrix alone does not say the step's), so on a
/// profile with [`crate::KernelRates::decode_by_working_set`] the shares are proportions.
pub fn matrix_cost(
    profile: &BoardProfile,
    config: &ModelConfig,
    layer_idx: usize,
    kind: MatrixKind,
    widths: BlockWidths,
    rank: Option<usize>,
    dtype: Dtype,
) -> Result<(u64, f64), CostError> {
    check_widths(config, &[widths], true)?;
    let processor = Processor::cpu(profile);
    let work = linear_work(config, layer_idx, kind, widths, rank, dtype)?;
    let extra_product = if rank.is_some() {
        processor.product_overhead_s
    } else {
        0.0
    };
    // One matrix alone says nothing of the step's working set: the rate of the largest.
    Ok((
        work.bytes,
        work.weight_seconds(&processor, u64::MAX) + extra_product,
    ))
}

/// Empty, or one entry per block within the model's MLP and heads; `one_block` checks a
/// single block's.
fn check_widths(
    config: &ModelConfig,
    widths: &[BlockWidths],
    one_block: bool,
) -> Result<(), CostError> {
    let in_range = widths.iter().all(|w| {
        w.mlp <= config.intermediate_size
            && w.value <= config.head_dim()
            && w.pairs <= config.head_dim() / 2
    });
    let count = match one_block {
        true => widths.len() == 1,
        false => widths.is_empty() || widths.len() == config.n_layers,
    };
    if in_range && count {
        return Ok(());
    }
    Err(CostError::BlockWidths {
        got: widths.len(),
        widest_mlp: widths.iter().map(|w| w.mlp).max().unwrap_or(0),
        widest_value: widths.iter().map(|w| w.value).max().unwrap_or(0),
        n_layers: config.n_layers,
        intermediate_size: config.intermediate_size,
        head_dim: config.head_dim(),
    })
}

fn linear_work(
    config: &ModelConfig,
    layer_idx: usize,
    kind: MatrixKind,
    widths: BlockWidths,
    rank: Option<usize>,
    dtype: Dtype,
) -> Result<Work, CostError> {
    let (rows, cols) = config.matrix_shape_in(kind, widths);
    let Some(rank) = rank else {
        return Ok(Work {
            bytes: dtype.matrix_bytes(rows, cols),
            flops: product(&[2, rows, cols]),
            dtype,
        });
    };
    let max = rows.min(cols);
    if rank > max {
        return Err(CostError::RankTooLarge {
            layer_idx,
            kind: kind.name(),
            rank,
            rows,
            cols,
            max,
        });
    }
    Ok(Work {
        bytes: dtype
            .matrix_bytes(rank, cols)
            .saturating_add(dtype.matrix_bytes(rows, rank)),
        flops: product(&[2, rank, rows.saturating_add(cols)]),
        dtype,
    })
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
