//! Genomes (one level per prunable matrix), the accuracy target and the fitness.

use serde::{Deserialize, Serialize};
use whittle_boards::Dtype;
use whittle_runtime::ModelConfig;

use super::{Cost, Levels, SearchConfig, SearchError};
use crate::prune::{RankPlan, matrix_index};

/// A task's genome: one keep level per prunable matrix, in [`matrix_index`] order (level 0 is
/// dense), then one MLP-width gene per block (level 0 keeps every neuron; level `l` keeps
/// [`width_for_keep`] of the level's keep fraction, the block's MLP then pruned by neurons
/// instead of its matrices' factor pairs), then one value-width gene per block (the same for
/// each key/value head's value dimensions, [`value_width_for_keep`]; v and o then pruned by
/// them), then one rotary-pair gene per block (the pairs each query/key head keeps,
/// [`pairs_for_keep`]; q and k then pruned by them), and optionally one more gene, the exit:
/// level 0 keeps every block, higher levels exit earlier ([`exit_for_level`]). On an MLP- or
/// value-width gene the most pruned level skips the sub-block (zero neurons, zero value
/// dimensions); a rotary-pair gene keeps at least one pair. Every gene shares the keep
/// levels' alphabet, so crossover and mutation treat them alike. A search for a q4 bundle adds
/// one precision gene per prunable matrix before the exit gene, of two levels: 0 stores the
/// matrix at q8, 1 at q4 ([`Genome::with_precision`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Genome(pub Vec<u8>);

impl Genome {
    /// Every gene at `level`.
    pub fn uniform(n_genes: usize, level: u8) -> Self {
        Self(vec![level; n_genes])
    }

    /// The level of every gene.
    pub fn levels(&self) -> &[u8] {
        &self.0
    }

    /// Number of genes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the genome has no gene.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Mean keep fraction over the genes (1.0 for an empty genome).
    pub fn mean_keep(&self, levels: &Levels) -> f64 {
        if self.0.is_empty() {
            return 1.0;
        }
        let sum: f64 = self.0.iter().filter_map(|&l| levels.keep(l)).sum();
        sum / self.0.len() as f64
    }

    /// Checks the length against `n_genes` and every level against `n_levels`.
    pub fn validate(&self, n_genes: usize, n_levels: usize) -> Result<(), SearchError> {
        if self.0.len() != n_genes {
            return Err(SearchError::GenomeLength {
                expected: n_genes,
                got: self.0.len(),
            });
        }
        match self.0.iter().find(|&&l| usize::from(l) >= n_levels) {
            Some(&level) => Err(SearchError::LevelOutOfRange { level, n_levels }),
            None => Ok(()),
        }
    }

    /// A genome of `config`'s layout from its matrices' genes (`matrices`, padded with dense
    /// or cut to the matrix count), every MLP-width gene at `width_level`, every value-width
    /// gene at `value_level`, every rotary-pair gene at `pair_level` and, when given, the exit
    /// gene at `exit_level`.
    pub fn assemble(
        config: &ModelConfig,
        mut matrices: Genome,
        [width_level, value_level, pair_level]: [u8; 3],
        exit_level: Option<u8>,
    ) -> Self {
        matrices.0.resize(config.n_prunable_matrices(), 0);
        for level in [width_level, value_level, pair_level] {
            matrices
                .0
                .extend(std::iter::repeat_n(level, config.n_layers));
        }
        matrices.0.extend(exit_level);
        matrices
    }

    /// Genes of `config`'s layout: matrices, MLP widths, value widths, rotary pairs, with
    /// `precision` one precision gene per matrix and, with `exit`, the exit gene.
    pub fn n_genes(config: &ModelConfig, exit: bool, precision: bool) -> usize {
        let precision = if precision {
            config.n_prunable_matrices()
        } else {
            0
        };
        config.n_prunable_matrices() + 3 * config.n_layers + precision + usize::from(exit)
    }

    /// `(precision genes, exit gene)` of a genome of this length in `config`'s layout; `None`
    /// for a length no layout has.
    fn layout(&self, config: &ModelConfig) -> Option<(bool, bool)> {
        [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .find(|&(precision, exit)| Self::n_genes(config, exit, precision) == self.0.len())
    }

    /// The precision gene of prunable matrix `index` (in [`matrix_index`] order).
    pub fn precision_gene(config: &ModelConfig, index: usize) -> usize {
        config.n_prunable_matrices() + 3 * config.n_layers + index
    }

    /// The same genome with precision genes set to 1 (q4) where `q4` holds for the matrix index
    /// and 0 (q8) elsewhere, added before the exit gene when it had none.
    pub fn with_precision(mut self, config: &ModelConfig, q4: impl Fn(usize) -> bool) -> Self {
        let (precision, exit) = self.layout(config).unwrap_or((false, false));
        let start = Self::precision_gene(config, 0);
        let genes = (0..config.n_prunable_matrices()).map(|index| u8::from(q4(index)));
        if precision {
            for (slot, gene) in self.0[start..].iter_mut().zip(genes) {
                *slot = gene;
            }
        } else {
            let tail = self.0.split_off(start.min(self.0.len()));
            self.0.extend(genes);
            self.0.extend(tail.into_iter().filter(|_| exit));
        }
        self
    }

    /// The gene of block `layer_idx`'s MLP width in `config`'s layout.
    pub fn mlp_gene(config: &ModelConfig, layer_idx: usize) -> usize {
        config.n_prunable_matrices() + layer_idx
    }

    /// The gene of block `layer_idx`'s value width in `config`'s layout.
    pub fn value_gene(config: &ModelConfig, layer_idx: usize) -> usize {
        config.n_prunable_matrices() + config.n_layers + layer_idx
    }

    /// The gene of block `layer_idx`'s rotary pairs in `config`'s layout.
    pub fn pair_gene(config: &ModelConfig, layer_idx: usize) -> usize {
        config.n_prunable_matrices() + 2 * config.n_layers + layer_idx
    }

    /// The rank plan of this genome: each matrix's keep fraction through
    /// [`RankPlan::from_keeps`] (DESIGN "Rank from a keep fraction"), each block's MLP width,
    /// and the exit of the exit gene when the genome has one.
    pub fn to_plan(&self, config: &ModelConfig, levels: &Levels) -> Result<RankPlan, SearchError> {
        let n_matrices = config.n_prunable_matrices();
        let (with_precision, with_exit) = self.layout(config).unwrap_or((false, false));
        self.validate(
            Self::n_genes(config, with_exit, with_precision),
            levels.len(),
        )?;
        let mut plan = RankPlan::from_keeps(config, |layer_idx, kind| {
            self.0
                .get(matrix_index(layer_idx, kind))
                .and_then(|&level| levels.keep(level))
                .unwrap_or(1.0)
        });
        // A width gene's level: `None` keeps the sub-block whole, `Some(None)` skips it (the
        // most pruned level), else its keep fraction.
        let unit = |gene: usize| -> Option<Option<f64>> {
            let level = self.0.get(gene).copied().filter(|&l| l > 0)?;
            Some((level < levels.most_pruned()).then(|| levels.keep(level).unwrap_or(1.0)))
        };
        for layer_idx in 0..config.n_layers {
            let width = unit(Self::mlp_gene(config, layer_idx)).and_then(|keep| {
                keep.map_or(Some(0), |k| width_for_keep(k, config.intermediate_size))
            });
            plan = plan.with_mlp_width(config, layer_idx, width);
            let value = unit(Self::value_gene(config, layer_idx)).and_then(|keep| {
                keep.map_or(Some(0), |k| value_width_for_keep(k, config.head_dim()))
            });
            plan = plan.with_value_width(config, layer_idx, value);
            let pairs = self
                .0
                .get(Self::pair_gene(config, layer_idx))
                .and_then(|&level| levels.keep(level))
                .and_then(|keep| pairs_for_keep(keep, config.head_dim() / 2));
            plan = plan.with_pairs(config, layer_idx, pairs);
        }
        if with_precision {
            let start = Self::precision_gene(config, 0);
            let dtypes = self.0[start..start + n_matrices]
                .iter()
                .map(|&gene| if gene > 0 { Dtype::Q4 } else { Dtype::Q8 })
                .collect();
            plan = plan.with_dtypes(dtypes);
        }
        Ok(match with_exit.then(|| self.0.last()).flatten() {
            Some(&level) => plan.with_exit(exit_for_level(config.n_layers, levels.len(), level)),
            None => plan,
        })
    }

    /// The same genome with its exit gene (the last gene of a genome of `config`'s layout) set
    /// to `level`.
    pub fn with_exit_level(mut self, config: &ModelConfig, level: u8) -> Self {
        match self.layout(config) {
            Some((_, true)) => {}
            Some((_, false)) => self.0.push(0),
            None => self.0.resize(Self::n_genes(config, true, false), 0),
        }
        if let Some(exit) = self.0.last_mut() {
            *exit = level;
        }
        self
    }
}

/// Neurons an MLP of `intermediate` keeps at keep fraction `keep`: `floor(keep·intermediate)`
/// rounded down to a multiple of 8, at least 8 (the parameters fall in the same proportion);
/// `None` keeps every neuron (`keep ≥ 1`, NaN, or a width of the whole MLP).
pub fn width_for_keep(keep: f64, intermediate: usize) -> Option<usize> {
    if keep.is_nan() || keep >= 1.0 {
        return None;
    }
    let ideal = (keep.max(0.0) * intermediate as f64).floor() as usize;
    let width = (ideal / 8 * 8).max(8);
    (width < intermediate).then_some(width)
}

/// Value dimensions a key/value head of `head_dim` keeps at keep fraction `keep`:
/// `floor(keep·head_dim)`, at least 1 (v's and o's parameters fall in the same proportion);
/// `None` keeps every dimension (`keep ≥ 1`, NaN, or the whole head).
pub fn value_width_for_keep(keep: f64, head_dim: usize) -> Option<usize> {
    if keep.is_nan() || keep >= 1.0 {
        return None;
    }
    let width = ((keep.max(0.0) * head_dim as f64).floor() as usize).max(1);
    (width < head_dim).then_some(width)
}

/// Rotary pairs a query/key head of `half` pairs keeps at keep fraction `keep`:
/// `floor(keep·half)`, at least 1 (q's and k's parameters fall in the same proportion); `None`
/// keeps every pair (`keep ≥ 1`, NaN, or the whole head).
pub fn pairs_for_keep(keep: f64, half: usize) -> Option<usize> {
    value_width_for_keep(keep, half)
}

/// The fewest blocks an exit gene keeps: a quarter of the model (at least one).
pub fn min_exit(n_layers: usize) -> usize {
    (n_layers / 4).max(1)
}

/// The blocks kept at exit-gene `level` of `n_levels`: every block at level 0, then one
/// whole step fewer per level (the step spreads the levels over the model down to about
/// [`min_exit`]; 2 blocks for 30 blocks and 12 levels: 30, 28, …, 8), never below
/// [`min_exit`].
pub fn exit_for_level(n_layers: usize, n_levels: usize, level: u8) -> usize {
    let last = n_levels.saturating_sub(1).max(1) as f64;
    let span = n_layers.saturating_sub(min_exit(n_layers)) as f64;
    let step = ((span / last).round() as usize).max(1);
    n_layers
        .saturating_sub(usize::from(level) * step)
        .max(min_exit(n_layers))
}

/// The accuracy target a*: `(1 − ε)·dense`, or `dense − ε` with `config.absolute`.
pub fn target_accuracy(dense_accuracy: f64, config: &SearchConfig) -> f64 {
    if config.absolute {
        dense_accuracy - config.epsilon
    } else {
        (1.0 - config.epsilon) * dense_accuracy
    }
}

/// The fitness of a genome with `accuracy` and `cost` against the target `target`.
///
/// Within budget: `(1 − c)·σ(s·(accuracy − a*))` with `c` the cost clamped to [0, 1] and `s`
/// the sigmoid sharpness, a number in [0, 1]. Over budget: the same minus `1 + λ·excess`
/// (`excess` the summed relative memory and latency excess, λ the infeasibility penalty),
/// capped below 0. So every over-budget genome ranks below every genome within budget — in
/// particular below one with the same accuracy — and among over-budget genomes a smaller
/// violation, a higher accuracy or a lower cost ranks higher, which lets the search climb out.
pub fn fitness(accuracy: f64, target: f64, cost: &Cost, config: &SearchConfig) -> f64 {
    let quality =
        (1.0 - cost.cost.clamp(0.0, 1.0)) * sigmoid(config.sigmoid_sharpness * (accuracy - target));
    if cost.is_within_budget() {
        quality
    } else {
        (quality - 1.0 - config.infeasibility_penalty * cost.excess()).min(-f64::MIN_POSITIVE)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
