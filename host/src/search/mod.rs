//! The genetic search for a rank level per prunable matrix (DESIGN section 5).
//!
//! The engine knows nothing of models: a [`Problem`] says how many genes a [`Genome`] has, what
//! a genome costs on the board (cheap) and how accurate it is (expensive, batched, at two
//! [`Stage`]s). [`Search`] seeds a population, evaluates each generation on a quarter of the
//! search split first and promotes only the candidates not clearly below the target, keeps a
//! cache so that no genome is evaluated twice, selects by tournament with elitism, recombines by
//! uniform crossover, mutates by ±1 level, checkpoints every generation and resumes. One seed
//! drives every random choice.
//!
//! ```
//! use whittle_host::search::{Cost, Evaluation, Genome, Problem, Search, SearchConfig, Stage};
//!
//! /// Gene 0 must stay dense; pruning the others is free.
//! struct Toy;
//!
//! impl Problem for Toy {
//!     fn n_genes(&self) -> usize {
//!         4
//!     }
//!     fn dense_accuracy(&self) -> f64 {
//!         0.9
//!     }
//!     fn cost(&self, genome: &Genome) -> Cost {
//!         let mean_level = genome.levels().iter().map(|&l| f64::from(l)).sum::<f64>() / 4.0;
//!         Cost::fits(1.0 - mean_level / 10.0)
//!     }
//!     fn evaluate(&mut self, genomes: &[Genome], _: Stage) -> anyhow::Result<Vec<Evaluation>> {
//!         Ok(genomes
//!             .iter()
//!             .map(|g| {
//!                 let accuracy = 0.9 - 0.1 * f64::from(g.levels()[0]);
//!                 Evaluation { accuracy, signal: accuracy }
//!             })
//!             .collect())
//!     }
//! }
//!
//! let config = SearchConfig { population: 8, max_generations: 20, ..SearchConfig::default() };
//! let result = Search::new(Toy, config)?.run(|_| {})?;
//! assert!(result.feasible);
//! assert_eq!(result.best.levels()[0], 0);
//! # Ok::<(), whittle_host::search::SearchError>(())
//! ```

mod checkpoint;
mod config;
mod engine;
mod genome;
mod operators;
mod refine;
mod seeding;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unit_tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use checkpoint::{CHECKPOINT_FORMAT, Checkpoint};
pub use config::{Levels, SearchConfig};
pub use engine::{GenerationReport, Search, SearchResult};
pub use genome::{
    Genome, exit_for_level, fitness, min_exit, pairs_for_keep, target_accuracy,
    value_width_for_keep, width_for_keep,
};
pub use refine::{GreedyMoves, greedy_moves};
pub use seeding::{water_filling, water_filling_seeds};
pub use state::{CacheRecord, Cached, State};

/// Which part of the search split a candidate is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// A fixed quarter of the search split: the cheap first look at every new candidate.
    Quarter,
    /// The whole search split: the candidates that survive the quarter, the elites and the
    /// final answer.
    Full,
}

/// What the caller measured for one genome at one [`Stage`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The accuracy the target `a*` is checked against (the caller decides what it means at
    /// each stage; it must be comparable with [`Problem::dense_accuracy`]).
    pub accuracy: f64,
    /// A low-variance companion of the accuracy (e.g. the mean log-probability of the gold
    /// label, or agreement with the dense model); higher is better. It breaks ties between
    /// equally fit genomes and is reported.
    pub signal: f64,
}

/// The board cost of a genome, relative to the dense model and the board's budgets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// `w·bytes/bytes_dense + (1 − w)·latency/latency_dense` (1 for the dense model).
    pub cost: f64,
    /// `(memory − budget) / budget`, 0 when the genome fits the board's memory.
    pub memory_excess: f64,
    /// `(latency − budget) / budget`, 0 when within the latency budget (or without one).
    pub latency_excess: f64,
}

impl Cost {
    /// A cost that fits both budgets.
    pub fn fits(cost: f64) -> Self {
        Self {
            cost,
            memory_excess: 0.0,
            latency_excess: 0.0,
        }
    }

    /// Whether both budgets hold.
    pub fn is_within_budget(&self) -> bool {
        self.memory_excess <= 0.0 && self.latency_excess <= 0.0
    }

    /// The summed relative violation of both budgets (0 when within them).
    pub fn excess(&self) -> f64 {
        self.memory_excess.max(0.0) + self.latency_excess.max(0.0)
    }
}

/// What the search asks of the caller: the genes, the dense accuracy, a cheap cost model and a
/// batched evaluator. Implementations must be deterministic for a search to be reproducible
/// and resumable.
pub trait Problem {
    /// Number of genes (prunable matrices), e.g. 210 for SmolLM2-135M.
    fn n_genes(&self) -> usize;

    /// The dense model's accuracy on the full search split; the target is derived from it.
    fn dense_accuracy(&self) -> f64;

    /// The genome's cost on the board (cheap: the cost model, no forward pass).
    fn cost(&self, genome: &Genome) -> Cost;

    /// Scores `genomes` at `stage`, one [`Evaluation`] per genome in order.
    fn evaluate(&mut self, genomes: &[Genome], stage: Stage) -> anyhow::Result<Vec<Evaluation>>;

    /// Up to `n` spectrum-guided genomes (e.g. [`water_filling_seeds`] on the factorization
    /// error curves) for the first generation.
    fn spectrum_seeds(&self, n: usize) -> Vec<Genome> {
        let _ = n;
        Vec::new()
    }

    /// Genomes of the problem's own structure for the first generation, right after the
    /// caller's baseline (e.g. every exit depth with the kept matrices dense); `target` is the
    /// accuracy the search must assure.
    fn structural_seeds(&self, target: f64) -> Vec<Genome> {
        let _ = target;
        Vec::new()
    }

    /// The highest level of every gene, of `n_levels` levels in all: the last for every gene
    /// unless the problem has genes with fewer levels (a precision gene has two). Seeding and
    /// mutation keep each gene within its own.
    fn highest_levels(&self, n_levels: usize) -> Vec<u8> {
        vec![u8::try_from(n_levels.saturating_sub(1)).unwrap_or(u8::MAX); self.n_genes()]
    }

    /// The uniform seed genome at `level` (every gene at `level` unless the problem has genes
    /// of another meaning).
    fn uniform_seed(&self, level: u8) -> Genome {
        Genome::uniform(self.n_genes(), level)
    }
}

/// Why a search could not be configured, run, checkpointed or resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// A setting is outside its range.
    #[error(
        "search setting {setting} = {value} is invalid: it must be {expected}; fix the search config"
    )]
    InvalidSetting {
        /// The setting's name in the config.
        setting: &'static str,
        /// Its value.
        value: String,
        /// The range it must be in.
        expected: &'static str,
    },
    /// The keep levels do not start at 1.0 and descend.
    #[error(
        "keep levels {levels:?} are invalid: they must start at 1.0 (dense), strictly descend, stay above 0 and number 2 to 256; fix `levels` in the search config"
    )]
    InvalidLevels {
        /// The levels given.
        levels: Vec<f64>,
    },
    /// The problem has no genes.
    #[error("the search problem has no genes; give it at least one prunable matrix")]
    NoGenes,
    /// The dense accuracy is not a finite number.
    #[error(
        "the dense accuracy is {0}, not a finite number; check the evaluation of the dense model"
    )]
    DenseAccuracy(f64),
    /// A genome has the wrong number of genes.
    #[error(
        "a genome has {got} genes but the problem has {expected}; build genomes for this model"
    )]
    GenomeLength {
        /// Genes of the problem.
        expected: usize,
        /// Genes of the genome.
        got: usize,
    },
    /// A gene names a level that does not exist.
    #[error(
        "a gene has level {level} but there are only {n_levels} keep levels; build genomes for these levels"
    )]
    LevelOutOfRange {
        /// The level found.
        level: u8,
        /// Number of levels.
        n_levels: usize,
    },
    /// The inputs of [`water_filling`] do not line up.
    #[error(
        "water filling needs one error curve and one byte count per matrix and level, finite and non-negative: {0}; fix the curves"
    )]
    WaterFilling(String),
    /// The problem's evaluator failed.
    #[error("evaluating candidates failed: {0:#}")]
    Evaluation(anyhow::Error),
    /// The problem's evaluator returned the wrong number of results.
    #[error(
        "the problem returned {got} evaluations for {expected} genomes; its evaluate must return one per genome"
    )]
    EvaluationCount {
        /// Genomes asked for.
        expected: usize,
        /// Evaluations returned.
        got: usize,
    },
    /// The problem returned a non-finite accuracy, signal or cost.
    #[error(
        "the problem returned a non-finite {what} ({value}); its evaluations and costs must be finite numbers"
    )]
    NonFinite {
        /// Which number.
        what: &'static str,
        /// The number.
        value: f64,
    },
    /// No generation has been run, so there is no best genome.
    #[error("the search has no Full-evaluated genome yet; run at least one generation")]
    NotStarted,
    /// A checkpoint could not be read.
    #[error("cannot read checkpoint {}: {source}; check the path or drop --resume", path.display())]
    CheckpointRead {
        /// The checkpoint.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint could not be written.
    #[error("cannot write checkpoint {}: {source}; choose a writable folder", path.display())]
    CheckpointWrite {
        /// The checkpoint.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is not a valid search state.
    #[error("checkpoint {} is corrupt ({reason}); delete it or drop --resume", path.display())]
    CheckpointCorrupt {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint belongs to another search.
    #[error("checkpoint {} was written for {reason}; delete it or drop --resume", path.display())]
    CheckpointIncompatible {
        /// The checkpoint.
        path: PathBuf,
        /// How it differs, e.g. "210 genes, not 42".
        reason: String,
    },
}
