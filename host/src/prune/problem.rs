use indicatif::ProgressBar;
use whittle_boards::{BoardProfile, Dtype, Prediction, feasibility, objective_cost, predict};
use whittle_runtime::ModelConfig;

use super::{Evaluator, FactorBank, RankPlan, matrices};
use crate::search::{Cost, Evaluation, Genome, Levels, Problem, Stage, water_filling_seeds};

/// The board-aware pruning problem of one task: genomes are rank levels per matrix of the
/// factor bank, accuracy comes from the task's search split (a quarter of it first), cost from
/// the board's cost model.
#[derive(Debug)]
pub struct TaskProblem {
    bank: FactorBank,
    config: ModelConfig,
    levels: Levels,
    full: Evaluator,
    quarter: Evaluator,
    board: BoardProfile,
    dtype: Dtype,
    head_rows: Option<usize>,
    dense_prediction: Prediction,
    dense_accuracy: f64,
    progress: ProgressBar,
}

impl TaskProblem {
    /// Prepares the problem; scores the dense model on the full search split once.
    pub fn new(
        bank: FactorBank,
        full: Evaluator,
        levels: Levels,
        board: BoardProfile,
        dtype: Dtype,
        head_rows: Option<usize>,
    ) -> anyhow::Result<Self> {
        let config = *full.base().llama.config();
        let dense_plan = RankPlan::dense(&config);
        let dense_prediction = predict(&board, &config, dense_plan.ranks(), dtype, head_rows)?;
        let progress = ProgressBar::hidden();
        let dense_accuracy = full.score(&full.base().llama, &progress)?.accuracy;
        let quarter = full.fraction(4);
        Ok(Self {
            bank,
            config,
            levels,
            full,
            quarter,
            board,
            dtype,
            head_rows,
            dense_prediction,
            dense_accuracy,
            progress,
        })
    }

    /// The cost-model prediction of a plan on the board.
    pub fn prediction(&self, plan: &RankPlan) -> anyhow::Result<Prediction> {
        Ok(predict(
            &self.board,
            &self.config,
            plan.ranks(),
            self.dtype,
            self.head_rows,
        )?)
    }

    /// The prediction of the dense model.
    pub fn dense_prediction(&self) -> &Prediction {
        &self.dense_prediction
    }

    /// The plan a genome stands for.
    pub fn plan(&self, genome: &Genome) -> anyhow::Result<RankPlan> {
        Ok(genome.to_plan(&self.config, &self.levels)?)
    }

    /// The evaluator of the full search split.
    pub fn full_evaluator(&self) -> &Evaluator {
        &self.full
    }

    /// The factor bank candidates are built from.
    pub fn bank(&self) -> &FactorBank {
        &self.bank
    }

    fn cost_of(&self, genome: &Genome) -> anyhow::Result<Cost> {
        let prediction = self.prediction(&self.plan(genome)?)?;
        let fit = feasibility(&self.board, &prediction);
        let memory_excess = if fit.memory_budget_bytes > 0 {
            fit.memory_excess_bytes as f64 / fit.memory_budget_bytes as f64
        } else {
            f64::INFINITY
        };
        let latency_excess = match fit.latency_budget_ms_per_token {
            Some(budget) if budget > 0.0 => fit.latency_excess_ms / budget,
            _ => 0.0,
        };
        Ok(Cost {
            cost: objective_cost(&self.board, &prediction, &self.dense_prediction),
            memory_excess,
            latency_excess,
        })
    }
}

impl Problem for TaskProblem {
    fn n_genes(&self) -> usize {
        self.config.n_prunable_matrices()
    }

    fn dense_accuracy(&self) -> f64 {
        self.dense_accuracy
    }

    fn cost(&self, genome: &Genome) -> Cost {
        self.cost_of(genome).unwrap_or(Cost {
            cost: 1.0,
            memory_excess: f64::INFINITY,
            latency_excess: f64::INFINITY,
        })
    }

    fn evaluate(&mut self, genomes: &[Genome], stage: Stage) -> anyhow::Result<Vec<Evaluation>> {
        let evaluator = match stage {
            Stage::Quarter => &self.quarter,
            Stage::Full => &self.full,
        };
        let mut evaluations = Vec::with_capacity(genomes.len());
        for genome in genomes {
            let candidate = self
                .bank
                .apply(&evaluator.base().llama, &self.plan(genome)?)?;
            // The quarter split screens with an in-sample bias (no calibration examples
            // run); the full split measures with the calibration-fitted bias, as reported.
            let scored = match stage {
                Stage::Quarter => evaluator.score_in_sample(&candidate, &self.progress)?,
                Stage::Full => evaluator.score(&candidate, &self.progress)?,
            };
            evaluations.push(Evaluation {
                accuracy: scored.accuracy,
                signal: scored.gold_log_prob,
            });
        }
        Ok(evaluations)
    }

    fn spectrum_seeds(&self, n: usize) -> Vec<Genome> {
        let mut errors = Vec::with_capacity(self.n_genes());
        let mut bytes = Vec::with_capacity(self.n_genes());
        for (layer_idx, kind) in matrices(&self.config) {
            let (rows, cols) = self.config.matrix_shape(kind);
            let curve = self.bank.error_curve(layer_idx, kind);
            let mut matrix_errors = Vec::with_capacity(self.levels.len());
            let mut matrix_bytes = Vec::with_capacity(self.levels.len());
            for &keep in self.levels.keeps() {
                let rank = crate::factorize::rank_for_keep(keep, rows, cols);
                let error = match (rank, curve) {
                    (None, _) => 0.0,
                    (Some(rank), Some(curve)) => curve.get(rank).copied().unwrap_or(0.0),
                    (Some(_), None) => 1.0 - keep,
                };
                matrix_errors.push(error);
                matrix_bytes.push(4.0 * rank.map_or(rows * cols, |r| r * (rows + cols)) as f64);
            }
            errors.push(matrix_errors);
            bytes.push(matrix_bytes);
        }
        let budgets: Vec<f64> = (0..n)
            .map(|i| 0.9 - 0.4 * i as f64 / n.max(1) as f64)
            .collect();
        water_filling_seeds(&errors, &bytes, &budgets).unwrap_or_default()
    }
}
