//! From factorizations to pruned models: a [`FactorBank`] holds one decomposition per
//! prunable matrix (every rank is a truncation of it), a [`RankPlan`] picks a rank per matrix,
//! and applying a plan to the frozen base model swaps in views of the bank's factors — no
//! dense weight is copied per candidate. [`Reductions`] accounts for a plan three ways
//! (DESIGN section 3).

mod bank;
mod estimate;
pub mod folder;
pub mod pipeline;
mod problem;
mod recover;
mod reference;
mod refit;
pub mod report;
mod state_cache;
mod uniform;

pub use bank::{FactorBank, dense_weight, round_planned_q4, stats_to_faer};
pub use estimate::{AccuracyModel, Estimate, chance_level_warning};
pub use folder::PruneFolder;
pub use pipeline::{PruneOptions, RefitOptions, calibrated_bank, keep_grid, prune};
pub use problem::{Refinement, TaskProblem};
pub use recover::{LABEL_LEARNING_RATE, LEARNING_RATE, RecoverSettings, Recovery, recover};
pub use reference::DenseReference;
pub use refit::anchored_refit;
pub use report::{Outcome, PruneReport};
pub use state_cache::{SplitStates, UniformStateCache};
pub use uniform::{Evaluator, Scored, UniformResult, uniform_search};
pub use whittle_runtime::matrix_index;

use serde::Serialize;
use whittle_boards::Dtype;
use whittle_runtime::{BlockWidths, MatrixKind, ModelConfig};

use crate::factorize::rank_for_keep;

/// Every prunable matrix in index order.
pub fn matrices(config: &ModelConfig) -> impl Iterator<Item = (usize, MatrixKind)> + use<> {
    let n_layers = config.n_layers;
    (0..n_layers).flat_map(|layer_idx| MatrixKind::ALL.into_iter().map(move |k| (layer_idx, k)))
}

/// The rank of every prunable matrix (`None` keeps a matrix dense), the neurons each block's
/// MLP keeps and the value dimensions each block's key/value heads keep (`None`: all of them;
/// zero: the sub-block is skipped), the rotary pairs each block's query/key heads keep
/// (`None`: all) and the exit: the number of blocks kept. Blocks from the exit on are removed
/// with all their matrices; their ranks are ignored. A block whose MLP keeps fewer neurons
/// stores its gate, up and down dense on those neurons, one whose heads keep fewer value
/// dimensions its v and o dense on them, and one whose heads keep fewer rotary pairs its q and
/// k dense on them (DESIGN section 2, units that cost nothing to store), never as factor
/// pairs; a skipped attention drops q and k too. In a q4 bundle each prunable matrix may be
/// stored at q8 or q4 (`dtypes`, the search's precision genes; empty: every matrix at the
/// bundle's dtype); a q4 matrix is evaluated as the bundle rounds it ([`FactorBank::apply`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RankPlan {
    ranks: Vec<Option<usize>>,
    widths: Vec<Option<usize>>,
    value_widths: Vec<Option<usize>>,
    pairs: Vec<Option<usize>>,
    exit: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dtypes: Vec<Dtype>,
}

impl RankPlan {
    /// Every matrix dense.
    pub fn dense(config: &ModelConfig) -> Self {
        Self {
            ranks: vec![None; config.n_prunable_matrices()],
            widths: vec![None; config.n_layers],
            value_widths: vec![None; config.n_layers],
            pairs: vec![None; config.n_layers],
            exit: config.n_layers,
            dtypes: Vec::new(),
        }
    }

    /// The same plan with block `layer_idx`'s MLP keeping `width` neurons (`None`: all; zero:
    /// the MLP is skipped): its gate, up and down lose their ranks and are stored dense on the
    /// kept neurons. A width of the whole MLP or more is `None`.
    pub fn with_mlp_width(
        mut self,
        config: &ModelConfig,
        layer_idx: usize,
        width: Option<usize>,
    ) -> Self {
        let width = width.filter(|&w| w < config.intermediate_size);
        if let Some(slot) = self.widths.get_mut(layer_idx) {
            *slot = width;
            if width.is_some() {
                self.drop_ranks(
                    layer_idx,
                    &[MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down],
                );
            }
        }
        self
    }

    /// The same plan with block `layer_idx`'s key/value heads keeping `width` value
    /// dimensions each (`None`: all; zero: the attention is skipped): v and o lose their ranks
    /// and are stored dense on the kept dimensions, and a skipped attention drops q's and k's
    /// too. A width of `head_dim` or more is `None`; so is every width but zero for a model
    /// with q/k/v biases (Qwen2), whose v bias the value projection does not carry.
    pub fn with_value_width(
        mut self,
        config: &ModelConfig,
        layer_idx: usize,
        width: Option<usize>,
    ) -> Self {
        let width = width.filter(|&w| w < config.head_dim() && (w == 0 || !config.arch.qkv_bias));
        if let Some(slot) = self.value_widths.get_mut(layer_idx) {
            *slot = width;
            match width {
                Some(0) => self.drop_ranks(
                    layer_idx,
                    &[MatrixKind::Q, MatrixKind::K, MatrixKind::V, MatrixKind::O],
                ),
                Some(_) => self.drop_ranks(layer_idx, &[MatrixKind::V, MatrixKind::O]),
                None => {}
            }
        }
        self
    }

    /// The same plan with block `layer_idx`'s query/key heads keeping `pairs` of their
    /// `head_dim / 2` rotary pairs each (`None`: all): q and k lose their ranks and are stored
    /// dense on the kept pairs. A count of every pair or more is `None`, fewer than one is one.
    /// A model with query/key head norms (Gemma 3) keeps every pair: the norm spans the whole
    /// head, so dropping lanes would change the kept ones.
    pub fn with_pairs(
        mut self,
        config: &ModelConfig,
        layer_idx: usize,
        pairs: Option<usize>,
    ) -> Self {
        let pairs = pairs
            .map(|p| p.max(1))
            .filter(|&p| p < config.head_dim() / 2 && !config.arch.qk_norm);
        if let Some(slot) = self.pairs.get_mut(layer_idx) {
            *slot = pairs;
            if pairs.is_some() {
                self.drop_ranks(layer_idx, &[MatrixKind::Q, MatrixKind::K]);
            }
        }
        self
    }

    /// Rotary pairs kept per query/key head by block `layer_idx` when pruned by them (`None`:
    /// every pair, a skipped attention, or a block past the exit).
    pub fn pairs(&self, layer_idx: usize) -> Option<usize> {
        self.pairs
            .get(layer_idx)
            .copied()
            .flatten()
            .filter(|_| layer_idx < self.exit && self.value_width(layer_idx) != Some(0))
    }

    /// Rotary pairs kept per block's query/key heads (`None`: all), every block including
    /// those past the exit.
    pub fn pair_counts(&self) -> &[Option<usize>] {
        &self.pairs
    }

    fn drop_ranks(&mut self, layer_idx: usize, kinds: &[MatrixKind]) {
        for &kind in kinds {
            if let Some(rank) = self.ranks.get_mut(matrix_index(layer_idx, kind)) {
                *rank = None;
            }
        }
    }

    /// Value dimensions kept per key/value head by block `layer_idx` when pruned by them
    /// (`None`: every dimension, or a block past the exit).
    pub fn value_width(&self, layer_idx: usize) -> Option<usize> {
        self.value_widths
            .get(layer_idx)
            .copied()
            .flatten()
            .filter(|_| layer_idx < self.exit)
    }

    /// Value dimensions kept per block's key/value heads (`None`: all), every block
    /// including those past the exit.
    pub fn value_widths(&self) -> &[Option<usize>] {
        &self.value_widths
    }

    /// What block `layer_idx` keeps of its MLP, its value heads and its rotary pairs (the
    /// model's full widths where the plan does not prune them; no pairs in a skipped
    /// attention).
    pub fn block_widths(&self, config: &ModelConfig, layer_idx: usize) -> BlockWidths {
        let value = self.value_width(layer_idx).unwrap_or(config.head_dim());
        BlockWidths {
            mlp: self
                .mlp_width(layer_idx)
                .unwrap_or(config.intermediate_size),
            value,
            pairs: match value {
                0 => 0,
                _ => self.pairs(layer_idx).unwrap_or(config.head_dim() / 2),
            },
        }
    }

    /// Neurons kept by block `layer_idx`'s MLP when pruned by neurons (`None`: every neuron,
    /// or a block past the exit).
    pub fn mlp_width(&self, layer_idx: usize) -> Option<usize> {
        self.widths
            .get(layer_idx)
            .copied()
            .flatten()
            .filter(|_| layer_idx < self.exit)
    }

    /// Neurons kept per block's MLP (`None`: all), every block including those past the exit.
    pub fn mlp_widths(&self) -> &[Option<usize>] {
        &self.widths
    }

    /// The widths of every kept block (what the cost model takes).
    pub fn kept_widths(&self, config: &ModelConfig) -> Vec<BlockWidths> {
        (0..self.exit.min(config.n_layers))
            .map(|layer_idx| self.block_widths(config, layer_idx))
            .collect()
    }

    /// The same ranks, exiting after the first `exit` blocks (clamped to the model's depth
    /// and at least one block).
    pub fn with_exit(mut self, exit: usize) -> Self {
        let n_layers = self.ranks.len() / MatrixKind::ALL.len();
        self.exit = exit.clamp(1, n_layers.max(1));
        self
    }

    /// Whether the plan changes block `layer_idx`'s `kind` (factor pairs, or a sub-block
    /// pruned by its units) in a kept block.
    pub fn changes(&self, layer_idx: usize, kind: MatrixKind) -> bool {
        let by_units = match kind {
            MatrixKind::Gate | MatrixKind::Up | MatrixKind::Down => {
                self.mlp_width(layer_idx).is_some()
            }
            MatrixKind::V | MatrixKind::O => self.value_width(layer_idx).is_some(),
            MatrixKind::Q | MatrixKind::K => {
                self.value_width(layer_idx) == Some(0) || self.pairs(layer_idx).is_some()
            }
        };
        layer_idx < self.exit && (self.rank(layer_idx, kind).is_some() || by_units)
    }

    /// Blocks kept.
    pub fn exit(&self) -> usize {
        self.exit
    }

    /// The same plan with every prunable matrix stored as `dtypes` gives it (in matrix index
    /// order; empty: every matrix at the bundle's dtype).
    pub fn with_dtypes(mut self, dtypes: Vec<Dtype>) -> Self {
        self.dtypes = dtypes;
        self
    }

    /// The dtype of every prunable matrix, in matrix index order (empty: the bundle's).
    pub fn dtypes(&self) -> &[Dtype] {
        &self.dtypes
    }

    /// Whether block `layer_idx`'s `kind` is stored at 4 bits by the plan's own choice.
    pub fn is_q4(&self, layer_idx: usize, kind: MatrixKind) -> bool {
        self.dtypes.get(matrix_index(layer_idx, kind)) == Some(&Dtype::Q4)
    }

    /// Whether recovery trains block `layer_idx`'s `kind`: the plan changed it and keeps it at
    /// 8 bits or more (a 4-bit matrix stays on the grid the search scored; recovery's steps
    /// are far below a 4-bit step, so training it through its rounding would change next to
    /// nothing).
    pub fn recovers(&self, layer_idx: usize, kind: MatrixKind) -> bool {
        self.changes(layer_idx, kind) && !self.is_q4(layer_idx, kind)
    }

    /// The configuration of the model the plan keeps: `n_layers` is the exit.
    pub fn kept_config(&self, config: &ModelConfig) -> ModelConfig {
        ModelConfig {
            n_layers: self.exit.min(config.n_layers),
            ..*config
        }
    }

    /// Ranks of the kept blocks' matrices, in matrix index order.
    pub fn kept_ranks(&self) -> &[Option<usize>] {
        &self.ranks[..(self.exit * MatrixKind::ALL.len()).min(self.ranks.len())]
    }

    /// The cost model's prediction of the kept model on `board`.
    pub fn predict(
        &self,
        board: &whittle_boards::BoardProfile,
        config: &ModelConfig,
        dtype: whittle_boards::Dtype,
        head_rows: Option<usize>,
    ) -> Result<whittle_boards::Prediction, whittle_boards::CostError> {
        let kept = self.kept_ranks().len();
        whittle_boards::predict(
            board,
            &self.kept_config(config),
            self.kept_ranks(),
            &self.kept_widths(config),
            dtype,
            self.dtypes.get(..kept).unwrap_or(&[]),
            head_rows,
        )
    }

    /// One keep fraction for every matrix (DESIGN "Rank from a keep fraction").
    pub fn uniform(config: &ModelConfig, keep: f64) -> Self {
        Self::from_keeps(config, |_, _| keep)
    }

    /// A keep fraction per matrix.
    pub fn from_keeps(config: &ModelConfig, keep: impl Fn(usize, MatrixKind) -> f64) -> Self {
        let ranks = matrices(config)
            .map(|(layer_idx, kind)| {
                let (rows, cols) = config.matrix_shape(kind);
                rank_for_keep(keep(layer_idx, kind), rows, cols)
            })
            .collect();
        Self {
            ranks,
            widths: vec![None; config.n_layers],
            value_widths: vec![None; config.n_layers],
            pairs: vec![None; config.n_layers],
            exit: config.n_layers,
            dtypes: Vec::new(),
        }
    }

    /// Rank of one matrix (`None`: dense, or removed past the exit).
    pub fn rank(&self, layer_idx: usize, kind: MatrixKind) -> Option<usize> {
        self.ranks
            .get(matrix_index(layer_idx, kind))
            .copied()
            .flatten()
    }

    /// Ranks in matrix index order.
    pub fn ranks(&self) -> &[Option<usize>] {
        &self.ranks
    }
}

/// The three ways of counting what a plan removes (DESIGN section 3), for f32 weights.
#[derive(Clone, Debug, Serialize)]
pub struct Reductions {
    /// `1 − kept / original` over the prunable linears.
    pub linear_reduction: f64,
    /// The same over every parameter of the model (embedding, norms, tied head).
    pub total_reduction: f64,
    /// Parameters kept in the prunable linears.
    pub kept_linear_params: usize,
    /// Parameters of the whole pruned model.
    pub total_params: usize,
    /// Bytes of the pruned model's f32 weights (what a device stores, before packing).
    pub weight_bytes_f32: usize,
    /// Bytes read per decoded token with f32 weights: every linear, the norms, one embedding
    /// row and the whole (tied) output head.
    pub bytes_per_token_f32: usize,
    /// The same with a task-pruned head that keeps only `n_labels` rows (classification).
    pub bytes_per_token_f32_task_head: Option<usize>,
}

/// Accounts for a plan; `n_labels` adds the task-pruned head figure. Blocks past the exit
/// count as removed: their matrices and norms.
pub fn reductions(config: &ModelConfig, plan: &RankPlan, n_labels: Option<usize>) -> Reductions {
    let mut original_linear = 0;
    let mut kept_linear = 0;
    for (layer_idx, kind) in matrices(config) {
        let (rows, cols) = config.matrix_shape(kind);
        original_linear += rows * cols;
        let (kept_rows, kept_cols) =
            config.matrix_shape_in(kind, plan.block_widths(config, layer_idx));
        kept_linear += match plan.rank(layer_idx, kind) {
            _ if layer_idx >= plan.exit() => 0,
            Some(rank) => rank * (rows + cols),
            None => kept_rows * kept_cols,
        };
    }
    let kept_config = plan.kept_config(config);
    let kept_original_linear: usize = matrices(&kept_config)
        .map(|(_, kind)| {
            let (rows, cols) = config.matrix_shape(kind);
            rows * cols
        })
        .sum();
    let other = kept_config.total_params() - kept_original_linear;
    let total = other + kept_linear;
    let hidden = config.hidden_size;
    let norms = kept_config.n_layers * kept_config.block_norm_params() + hidden;
    let head = config.vocab_size * hidden;
    let per_token = |head_rows: usize| 4 * (kept_linear + norms + hidden + head_rows * hidden);
    Reductions {
        linear_reduction: 1.0 - kept_linear as f64 / original_linear as f64,
        total_reduction: 1.0 - total as f64 / config.total_params() as f64,
        kept_linear_params: kept_linear,
        total_params: total,
        weight_bytes_f32: 4 * total,
        bytes_per_token_f32: 4 * (kept_linear + norms + hidden) + 4 * head,
        bytes_per_token_f32_task_head: n_labels.map(per_token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::tiny_config;

    #[test]
    fn dense_plan_removes_nothing() {
        let config = tiny_config();
        let r = reductions(&config, &RankPlan::dense(&config), Some(2));
        assert_eq!(r.linear_reduction, 0.0);
        assert_eq!(r.total_reduction, 0.0);
        assert_eq!(r.total_params, config.total_params());
        assert_eq!(r.weight_bytes_f32, 4 * config.total_params());
    }

    #[test]
    fn reductions_by_hand() {
        // SmolLM2-135M at a uniform keep of 0.5: q, o 576×576 → rank 144; k, v 192×576 →
        // floor(0.5·72)=72 → 72; gate, up, down 1536×576 → floor(0.5·418.9)=209 → 208.
        let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
        let plan = RankPlan::uniform(&config, 0.5);
        assert_eq!(plan.rank(0, MatrixKind::Q), Some(144));
        assert_eq!(plan.rank(3, MatrixKind::K), Some(72));
        assert_eq!(plan.rank(29, MatrixKind::Down), Some(208));
        let per_layer = 2 * 144 * 1152 + 2 * 72 * 768 + 3 * 208 * 2112;
        let original = 30 * 3_538_944;
        let r = reductions(&config, &plan, Some(2));
        assert_eq!(r.kept_linear_params, 30 * per_layer);
        let expected = 1.0 - (30 * per_layer) as f64 / original as f64;
        assert!((r.linear_reduction - expected).abs() < 1e-12);
        assert_eq!(r.total_params, 134_515_008 - original + 30 * per_layer);
        let head_saving = 4 * (49152 - 2) * 576;
        assert_eq!(
            r.bytes_per_token_f32 - r.bytes_per_token_f32_task_head.unwrap_or(0),
            head_saving
        );
    }

    #[test]
    fn blocks_past_the_exit_count_as_removed() {
        // SmolLM2-135M exiting after 15 of 30 blocks, the kept blocks dense: half the linear
        // parameters, and the removed blocks' 2 × 576 norm weights each, are gone.
        let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
        let plan = RankPlan::dense(&config).with_exit(15);
        assert_eq!(plan.exit(), 15);
        assert_eq!(plan.kept_ranks().len(), 15 * 7);
        assert_eq!(plan.kept_config(&config).n_layers, 15);
        let r = reductions(&config, &plan, Some(2));
        assert_eq!(r.kept_linear_params, 15 * 3_538_944);
        assert!((r.linear_reduction - 0.5).abs() < 1e-12);
        assert_eq!(r.total_params, 134_515_008 - 15 * 3_538_944 - 15 * 2 * 576);
        // A rank past the exit changes nothing; one before it does.
        let ranks = RankPlan::uniform(&config, 0.5).with_exit(15);
        let r_ranks = reductions(&config, &ranks, None);
        let per_layer = 2 * 144 * 1152 + 2 * 72 * 768 + 3 * 208 * 2112;
        assert_eq!(r_ranks.kept_linear_params, 15 * per_layer);
        // The exit is clamped to the model.
        assert_eq!(RankPlan::dense(&config).with_exit(0).exit(), 1);
        assert_eq!(RankPlan::dense(&config).with_exit(99).exit(), 30);
    }
}
