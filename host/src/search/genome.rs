//! Genomes (one level per prunable matrix), the accuracy target and the fitness.

use serde::{Deserialize, Serialize};
use whittle_runtime::ModelConfig;

use super::{Cost, Levels, SearchConfig, SearchError};
use crate::prune::{RankPlan, matrix_index};

/// One keep level per prunable matrix, in [`matrix_index`] order; level 0 is dense.
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

    /// The rank plan of this genome: each matrix's keep fraction through
    /// [`RankPlan::from_keeps`] (DESIGN "Rank from a keep fraction").
    pub fn to_plan(&self, config: &ModelConfig, levels: &Levels) -> Result<RankPlan, SearchError> {
        self.validate(config.n_prunable_matrices(), levels.len())?;
        Ok(RankPlan::from_keeps(config, |layer_idx, kind| {
            self.0
                .get(matrix_index(layer_idx, kind))
                .and_then(|&level| levels.keep(level))
                .unwrap_or(1.0)
        }))
    }
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
