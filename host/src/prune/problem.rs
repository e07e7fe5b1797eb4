use std::collections::HashMap;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use whittle_boards::{BoardProfile, Dtype, Prediction, feasibility, matrix_cost, objective_cost};
use whittle_runtime::ModelConfig;

use super::state_cache::{SplitStates, UniformStateCache};
use super::{
    AccuracyModel, DenseReference, Estimate, Evaluator, FactorBank, RankPlan, Scored, matrices,
};
use crate::head::LabelReading;
use crate::search::{
    Cost, Evaluation, Genome, Levels, Problem, Stage, exit_for_level, greedy_moves,
    water_filling_seeds,
};

/// The board-aware pruning problem of one task: genomes are rank levels per matrix of the
/// factor bank, accuracy comes from the task's search split (a quarter of it first), cost from
/// the board's cost model.
///
/// On the full split a candidate's accuracy is the [`Estimate::assured`] one of the
/// [`AccuracyModel`] (log-probability prediction less one paired standard error, capped by the
/// measurement), with the slope fitted on [`TaskProblem::PROBE_KEEPS`]; full-split scores are
/// kept per plan, so the uniform binary search and the search share them.
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
    accuracy: AccuracyModel,
    scored: HashMap<RankPlan, Scored>,
    /// Quarter-split scores known without a forward pass (every exit of the dense model).
    quarter_scored: HashMap<RankPlan, Scored>,
    /// With a cross-fitted head: each screened plan's states on the quarter split (the full
    /// split's first quarter) and their gold labels, so its full score runs only the rest.
    quarter_states: HashMap<RankPlan, SplitStates>,
    /// Where the uniform plans' full-split states are cached across runs (cross-fitted heads).
    uniform_cache: Option<UniformStateCache>,
    progress: ProgressBar,
}

impl TaskProblem {
    /// Uniform keep fractions whose full-split scores fit the slope of the accuracy model:
    /// far enough from dense to move the log-probability, and the first ones the uniform
    /// binary search tries, so their scores serve it too.
    pub const PROBE_KEEPS: [f64; 3] = [0.55, 0.8, 0.9];

    /// Prepares the problem: scores the dense model and the [`Self::PROBE_KEEPS`] uniform
    /// plans on the full search split and fits the accuracy model. With a task head, the
    /// dense `reference` gives the priors of the candidates' heads and every exit's score, and
    /// `uniform_cache` (when given) the uniform plans' states an earlier run computed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bank: FactorBank,
        full: Evaluator,
        reference: Option<&DenseReference>,
        levels: Levels,
        board: BoardProfile,
        dtype: Dtype,
        head_rows: Option<usize>,
        uniform_cache: Option<UniformStateCache>,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let config = *full.base().llama.config();
        let dense_plan = RankPlan::dense(&config);
        let dense_prediction = dense_plan.predict(&board, &config, dtype, head_rows)?;
        let exits: Vec<usize> = (0..levels.len())
            .map(|level| exit_for_level(config.n_layers, levels.len(), level as u8))
            .collect();
        let reference = match (full.reading(), reference) {
            (LabelReading::Head, Some(reference)) => Some(reference),
            (LabelReading::Head, None) => {
                anyhow::bail!("a search reading a task head needs the dense reference")
            }
            (LabelReading::Verbalizer, _) => None,
        };
        let full = match reference {
            Some(reference) => full.with_exit_heads(reference.heads()),
            None => full,
        };
        let quarter = full.fraction(4);
        let uniform_cache = uniform_cache.filter(|_| full.cross_fits());
        let mut scored = HashMap::new();
        let mut quarter_scored = HashMap::new();
        if let Some(reference) = reference {
            // The dense model's state after every block gives every exit the exit gene can
            // take, with the kept blocks dense, on both splits (the quarter is the full
            // split's first quarter) without a forward pass.
            let (states, gold) = reference.search_states();
            let n_quarter = quarter.len().min(gold.len());
            for (exit, exit_states) in (1..=config.n_layers).zip(states) {
                if !exits.contains(&exit) {
                    continue;
                }
                let plan = RankPlan::dense(&config).with_exit(exit);
                let quarter_score =
                    quarter.score_states(&exit_states[..n_quarter], &gold[..n_quarter], exit)?;
                quarter_scored.insert(plan.clone(), quarter_score);
                scored.insert(plan, full.score_states(exit_states, gold, exit)?);
            }
        }
        let dense = match scored.get(&dense_plan) {
            Some(dense) => dense.clone(),
            None => full.score(&full.base().llama, progress)?,
        };
        scored.insert(dense_plan, dense.clone());
        let mut problem = Self {
            bank,
            config,
            levels,
            full,
            quarter,
            board,
            dtype,
            head_rows,
            dense_prediction,
            accuracy: AccuracyModel::fit(dense.clone(), &[]),
            scored,
            quarter_scored,
            quarter_states: HashMap::new(),
            uniform_cache,
            progress: progress.clone(),
        };
        let mut probes = Vec::with_capacity(Self::PROBE_KEEPS.len());
        for keep in Self::PROBE_KEEPS {
            probes.push(problem.score_uniform(keep)?.0);
        }
        problem.accuracy = AccuracyModel::fit(dense, &probes);
        // Candidates of the search are scored quietly: the search prints a line per generation.
        problem.progress = ProgressBar::hidden();
        Ok(problem)
    }

    /// A plan's full-split score and how it stands against the target (computed once per
    /// plan).
    pub fn score_plan(&mut self, plan: &RankPlan) -> anyhow::Result<(Scored, Estimate)> {
        let scored = match self.scored.get(plan) {
            Some(scored) => scored.clone(),
            None => {
                let scored = if self.full.cross_fits() {
                    let (states, gold) = self.full_states(plan)?;
                    self.full.score_states(&states, &gold, plan.exit())?
                } else {
                    let candidate = self.bank.apply(&self.full.base().llama, plan)?;
                    self.full.score(&candidate, &self.progress)?
                };
                self.scored.insert(plan.clone(), scored.clone());
                scored
            }
        };
        let estimate = self.accuracy.estimate(&scored);
        Ok((scored, estimate))
    }

    /// [`Self::score_plan`] of the uniform plan keeping `keep`, its states read from the
    /// uniform cache when an earlier run left them there, and left there otherwise.
    pub fn score_uniform(&mut self, keep: f64) -> anyhow::Result<(Scored, Estimate)> {
        let plan = RankPlan::uniform(&self.config, keep);
        if let Some(cache) = self.uniform_cache.clone()
            && !self.scored.contains_key(&plan)
        {
            let (states, gold) = match cache.load(keep, self.full.len()) {
                Some(states) => states,
                None => {
                    let (states, gold) = self.full_states(&plan)?;
                    cache.save(keep, &states, &gold);
                    (states, gold)
                }
            };
            let scored = self.full.score_states(&states, &gold, plan.exit())?;
            self.scored.insert(plan.clone(), scored);
        }
        self.score_plan(&plan)
    }

    /// A plan's states on the full split and their gold labels (cross-fitted heads): only the
    /// last three quarters are run when the plan was screened on the first.
    fn full_states(&mut self, plan: &RankPlan) -> anyhow::Result<SplitStates> {
        let candidate = self.bank.apply(&self.full.base().llama, plan)?;
        Ok(match self.quarter_states.remove(plan) {
            Some((mut states, mut gold)) => {
                let rest = self.full.skipping(states.len());
                let (rest_states, rest_gold) = rest.split_states(&candidate, &self.progress)?;
                states.extend(rest_states);
                gold.extend(rest_gold);
                (states, gold)
            }
            None => self.full.split_states(&candidate, &self.progress)?,
        })
    }

    /// The accuracy model the target is checked with.
    pub fn accuracy_model(&self) -> &AccuracyModel {
        &self.accuracy
    }

    /// The cost-model prediction of a plan on the board.
    pub fn prediction(&self, plan: &RankPlan) -> anyhow::Result<Prediction> {
        Ok(plan.predict(&self.board, &self.config, self.dtype, self.head_rows)?)
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

impl TaskProblem {
    /// Whether genomes carry the exit gene: labels read by a fitted task head can be read
    /// after any block.
    pub fn has_exit_gene(&self) -> bool {
        self.full.reading() == LabelReading::Head
    }

    /// Whether genomes carry precision genes: a q4 bundle stores each matrix at q8 or q4.
    pub fn has_precision_genes(&self) -> bool {
        self.dtype == Dtype::Q4
    }

    /// The problem's genome from the matrices' genes, every MLP-width, value-width and
    /// rotary-pair gene at `unit_levels` and the exit gene, when the problem has one, at
    /// `exit_level`; with precision genes, q4 for every kept matrix that 4 bits store
    /// near-exactly ([`Self::near_exact_at_q4`]) and q8 for the rest.
    pub fn genome(&self, matrices: Genome, unit_levels: [u8; 3], exit_level: u8) -> Genome {
        let exit = self.has_exit_gene().then_some(exit_level);
        let genome = Genome::assemble(&self.config, matrices, unit_levels, exit);
        if !self.has_precision_genes() {
            return genome;
        }
        let q4 = self.near_exact_at_q4(&genome).unwrap_or_else(|error| {
            eprintln!("warning: the seed's matrices at q8: cannot round them to q4 ({error:#})");
            Vec::new()
        });
        genome.with_precision(&self.config, |index| q4.get(index) == Some(&true))
    }

    /// Which prunable matrices of `genome`'s plan the bundle's 4-bit rounding stores within
    /// [`NEAR_EXACT_Q4`] relative error (`‖round(W) − W‖ / ‖W‖`, each factor of a pair): the
    /// matrices a 4-bit source model gave and the plan left whole or cut by rows. False past
    /// the exit.
    pub fn near_exact_at_q4(&self, genome: &Genome) -> anyhow::Result<Vec<bool>> {
        let plan = self.plan(genome)?.with_dtypes(Vec::new());
        let applied = self.bank.apply(&self.full.base().llama, &plan)?;
        let relative = |tensor: &candle_core::Tensor| -> anyhow::Result<f64> {
            let rounded = crate::bundle::as_stored(tensor, Dtype::Q4)?;
            let norm = f64::from(tensor.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
            let error = f64::from((rounded - tensor)?.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
            Ok(if norm > 0.0 { error / norm } else { 0.0 })
        };
        matrices(&self.config)
            .map(|(layer_idx, kind)| {
                let Some(linear) = applied
                    .linear(layer_idx, kind)
                    .filter(|l| layer_idx < plan.exit() && l.n_params() > 0)
                else {
                    return Ok(false);
                };
                let error = match linear {
                    crate::model::Linear::Dense { weight } => relative(weight)?,
                    crate::model::Linear::LowRank { a, b } => relative(a)?.max(relative(b)?),
                };
                Ok(error <= NEAR_EXACT_Q4)
            })
            .collect()
    }
}

/// Relative rounding error under which a seed stores a matrix at q4: a 4-bit source's blocks
/// come back to within their f16 scales' rounding, anything re-blocked or refactored does not.
pub const NEAR_EXACT_Q4: f64 = 1e-3;

/// What [`TaskProblem::refine_sub_blocks`] or [`TaskProblem::refine_precision`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refinement {
    /// Moves screened (each alone, on the quarter split).
    pub screened: usize,
    /// Moves tried on the full split, in order.
    pub tried: usize,
    /// The moves kept, as `"block 7 attention"` (skipped) or `"block 3 down at q4"`.
    pub skipped: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl TaskProblem {
    /// Greedy sub-block removal after the search (DESIGN section 5): every attention and MLP
    /// of the answer's kept blocks that it does not skip already is skipped alone and screened
    /// on the quarter split; in the order of their quarter accuracy, those at or above `target`
    /// there (at most `max_tries`) are added one at a time, each kept when the combined genome
    /// still assures `target` on the full split within the budgets. Returns the refined genome
    /// (the answer itself when nothing holds).
    pub fn refine_sub_blocks(
        &mut self,
        answer: &Genome,
        target: f64,
        max_tries: usize,
    ) -> anyhow::Result<(Genome, Refinement)> {
        let plan = self.plan(answer)?;
        let skip = self.levels.most_pruned();
        let moves: Vec<(usize, String)> = (0..plan.exit())
            .flat_map(|layer_idx| {
                [
                    (Genome::value_gene(&self.config, layer_idx), "attention"),
                    (Genome::mlp_gene(&self.config, layer_idx), "MLP"),
                ]
                .map(|(gene, name)| (gene, format!("block {layer_idx} {name}")))
            })
            .filter(|(gene, _)| answer.0.get(*gene).is_some_and(|&level| level != skip))
            .collect();
        self.greedy_refinement(answer, &moves, skip, target, max_tries, " skipped")
    }

    /// [`greedy_moves`] with a line per try, as a [`Refinement`] (`what` follows a move's name
    /// in the line).
    fn greedy_refinement(
        &mut self,
        answer: &Genome,
        moves: &[(usize, String)],
        level: u8,
        target: f64,
        max_tries: usize,
        what: &str,
    ) -> anyhow::Result<(Genome, Refinement)> {
        let started = std::time::Instant::now();
        let progress = self.progress.clone();
        let greedy = greedy_moves(
            self,
            answer,
            moves,
            level,
            target,
            max_tries,
            |name, assured, kept| {
                progress.suspend(|| {
                    eprintln!(
                        "refine: {name}{what}: assured {assured:.4} (target {target:.4}){}",
                        if kept { "" } else { ", refused" }
                    )
                })
            },
        )?;
        Ok((
            greedy.genome,
            Refinement {
                screened: greedy.screened,
                tried: greedy.tried,
                skipped: greedy.kept,
                seconds: started.elapsed().as_secs_f64(),
            },
        ))
    }

    /// Greedy precision after the search (q4 bundles): every kept matrix of the answer that it
    /// stores at q8 is moved to q4 alone and screened on the quarter split; in the order of
    /// their quarter accuracy, those at or above `target` there (at most `max_tries`) are
    /// added one at a time, each kept when the combined genome still assures `target` on the
    /// full split within the budgets. The search's mutations flip one precision gene among
    /// hundreds of genes now and then; this tries each of the answer's own.
    pub fn refine_precision(
        &mut self,
        answer: &Genome,
        target: f64,
        max_tries: usize,
    ) -> anyhow::Result<(Genome, Refinement)> {
        let plan = self.plan(answer)?;
        let moves: Vec<(usize, String)> = matrices(&self.config)
            .enumerate()
            .filter(|&(index, (layer_idx, kind))| {
                let widths = plan.block_widths(&self.config, layer_idx);
                let stored = self.config.matrix_shape_in(kind, widths);
                let gene = Genome::precision_gene(&self.config, index);
                layer_idx < plan.exit() && stored.0 * stored.1 > 0 && answer.0.get(gene) == Some(&0)
            })
            .map(|(index, (layer_idx, kind))| {
                (
                    Genome::precision_gene(&self.config, index),
                    format!("block {layer_idx} {} at q4", kind.name()),
                )
            })
            .collect();
        self.greedy_refinement(answer, &moves, 1, target, max_tries, "")
    }
}

impl Problem for TaskProblem {
    fn n_genes(&self) -> usize {
        Genome::n_genes(
            &self.config,
            self.has_exit_gene(),
            self.has_precision_genes(),
        )
    }

    /// Every gene at the levels' alphabet but the precision genes, which have two.
    fn highest_levels(&self, n_levels: usize) -> Vec<u8> {
        let last = u8::try_from(n_levels.saturating_sub(1)).unwrap_or(u8::MAX);
        let mut highest = vec![last; self.n_genes()];
        if self.has_precision_genes() {
            let start = Genome::precision_gene(&self.config, 0);
            for slot in &mut highest[start..start + self.config.n_prunable_matrices()] {
                *slot = 1;
            }
        }
        highest
    }

    fn dense_accuracy(&self) -> f64 {
        self.accuracy.dense_accuracy()
    }

    fn cost(&self, genome: &Genome) -> Cost {
        self.cost_of(genome).unwrap_or(Cost {
            cost: 1.0,
            memory_excess: f64::INFINITY,
            latency_excess: f64::INFINITY,
        })
    }

    fn evaluate(&mut self, genomes: &[Genome], stage: Stage) -> anyhow::Result<Vec<Evaluation>> {
        let mut evaluations = Vec::with_capacity(genomes.len());
        for genome in genomes {
            let plan = self.plan(genome)?;
            let evaluation = match stage {
                // The quarter split screens with an in-sample bias (no calibration examples
                // run): optimistic, so safe for rejecting candidates clearly below the target.
                // With a task head it is the cross-fitted score of the quarter.
                Stage::Quarter => {
                    let scored = match self.quarter_scored.get(&plan) {
                        Some(scored) => scored.clone(),
                        None if self.quarter.cross_fits() && !self.scored.contains_key(&plan) => {
                            let candidate = self.bank.apply(&self.quarter.base().llama, &plan)?;
                            let (states, gold) =
                                self.quarter.split_states(&candidate, &self.progress)?;
                            let scored = self.quarter.score_states(&states, &gold, plan.exit())?;
                            self.quarter_states.insert(plan.clone(), (states, gold));
                            scored
                        }
                        None => {
                            let candidate = self.bank.apply(&self.quarter.base().llama, &plan)?;
                            self.quarter.score_in_sample(&candidate, &self.progress)?
                        }
                    };
                    Evaluation {
                        accuracy: scored.accuracy,
                        signal: scored.gold_log_prob,
                    }
                }
                // The full split checks the assured accuracy.
                Stage::Full => {
                    let (scored, estimate) = self.score_plan(&plan)?;
                    Evaluation {
                        accuracy: estimate.assured,
                        signal: scored.gold_log_prob,
                    }
                }
            };
            evaluations.push(evaluation);
        }
        Ok(evaluations)
    }

    /// Water-filling on the error curves, half against the board's own objective, half
    /// against the stored bytes: under the objective a matrix at a level costs
    /// `w·bytes/bytes_dense + (1 − w)·time/time_dense` over the prunable matrices (bytes and
    /// time from the cost model's [`matrix_cost`], which counts the extra product of a low-rank
    /// pair), so a latency-led board's seeds avoid slight trims that a bytes-led
    /// board's seeds take.
    fn spectrum_seeds(&self, n: usize) -> Vec<Genome> {
        let mut errors = Vec::with_capacity(self.n_genes());
        let mut bytes = Vec::with_capacity(self.n_genes());
        let mut times = Vec::with_capacity(self.n_genes());
        for (layer_idx, kind) in matrices(&self.config) {
            let (rows, cols) = self.config.matrix_shape(kind);
            let curve = self.bank.error_curve(layer_idx, kind);
            let mut matrix_errors = Vec::with_capacity(self.levels.len());
            let mut matrix_bytes = Vec::with_capacity(self.levels.len());
            let mut matrix_times = Vec::with_capacity(self.levels.len());
            for &keep in self.levels.keeps() {
                let rank = crate::factorize::rank_for_keep(keep, rows, cols);
                let error = match (rank, curve) {
                    (None, _) => 0.0,
                    (Some(rank), Some(curve)) => curve.get(rank).copied().unwrap_or(0.0),
                    (Some(_), None) => 1.0 - keep,
                };
                // Ranks from a keep fraction are always within the matrix; a cost model that
                // refused one would leave the search without spectrum seeds, not fail it.
                let Ok((stored, time)) = matrix_cost(
                    &self.board,
                    &self.config,
                    layer_idx,
                    kind,
                    self.config.full_widths(),
                    rank,
                    self.dtype,
                ) else {
                    return Vec::new();
                };
                matrix_errors.push(error);
                matrix_bytes.push(stored as f64);
                matrix_times.push(time);
            }
            errors.push(matrix_errors);
            bytes.push(matrix_bytes);
            times.push(matrix_times);
        }
        let dense_bytes: f64 = bytes.iter().map(|b| b[0]).sum();
        let dense_time: f64 = times.iter().map(|t| t[0]).sum();
        let w = self.board.objective_weight;
        let costs: Vec<Vec<f64>> = bytes
            .iter()
            .zip(&times)
            .map(|(b, t)| {
                b.iter()
                    .zip(t)
                    .map(|(b, t)| w * b / dense_bytes + (1.0 - w) * t / dense_time)
                    .collect()
            })
            .collect();
        // Budgets close to dense (0.97, 0.94, …): a tight accuracy target leaves the
        // admissible genomes there. Half the seeds follow the board's objective, half the
        // stored bytes alone (on a latency-led board the first may all miss the target where
        // the second do not).
        let budgets: Vec<f64> = (0..n.div_ceil(2))
            .map(|i| 1.0 - 0.03 * (i + 1) as f64)
            .collect();
        let by_objective = water_filling_seeds(&errors, &costs, &budgets).unwrap_or_default();
        let by_bytes = water_filling_seeds(&errors, &bytes, &budgets).unwrap_or_default();
        let mut seeds = Vec::with_capacity(n);
        for (a, b) in by_objective.into_iter().zip(by_bytes) {
            for genome in [a, b] {
                let genome = self.genome(genome, [0, 0, 0], 0);
                if seeds.len() < n && !seeds.contains(&genome) {
                    seeds.push(genome);
                }
            }
        }
        seeds
    }

    /// Every matrix at `level` as factor pairs, every block kept.
    fn uniform_seed(&self, level: u8) -> Genome {
        self.genome(
            Genome::uniform(self.config.n_prunable_matrices(), level),
            [0, 0, 0],
            0,
        )
    }

    /// Units the factor pairs cannot reach by small steps. Without an exit gene: every MLP
    /// pruned by neurons at the first three levels, then every value head, then the rotary
    /// pairs too. With one: the
    /// exits with the kept blocks dense (scored without a forward pass) down to one past the
    /// shallowest that assures `target` on the search split; at that exit every MLP pruned by
    /// neurons at the first three levels, then at the third with every value head at the first
    /// three, then at the third with every value head at the second and every query/key head's
    /// rotary pairs at the first three; at the next deeper exit every MLP at the first three
    /// levels (the depth the task needs is the largest single saving; the MLPs of the kept
    /// blocks are the next, their attention after).
    fn structural_seeds(&self, target: f64) -> Vec<Genome> {
        let dense = Genome::uniform(self.config.n_prunable_matrices(), 0);
        let width_levels = (1..self.levels.len()).take(3).map(|l| l as u8);
        let third = width_levels.clone().next_back().unwrap_or(0);
        let second = width_levels.clone().nth(1).unwrap_or(0);
        let units = |exit: u8, with_values: bool| {
            let mlp_only = width_levels.clone().map(|width| [width, 0, 0]);
            let values = width_levels
                .clone()
                .filter(move |_| with_values)
                .map(move |value| [third, value, 0]);
            let pairs = width_levels
                .clone()
                .filter(move |_| with_values)
                .map(move |pairs| [third, second, pairs]);
            mlp_only
                .chain(values)
                .chain(pairs)
                .map(move |levels| (levels, exit))
                .collect::<Vec<_>>()
        };
        if !self.has_exit_gene() {
            return units(0, true)
                .into_iter()
                .map(|(levels, exit)| self.genome(dense.clone(), levels, exit))
                .collect();
        }
        let exit_levels = 1..self.levels.len() as u8;
        let shallowest = exit_levels
            .clone()
            .filter(|&level| {
                let exit = exit_for_level(self.config.n_layers, self.levels.len(), level);
                let plan = RankPlan::dense(&self.config).with_exit(exit);
                self.scored
                    .get(&plan)
                    .is_some_and(|scored| self.accuracy.estimate(scored).assured >= target)
            })
            .max()
            .unwrap_or(0);
        let mut seeds: Vec<Genome> = exit_levels
            .take_while(|&level| level <= shallowest + 1)
            .map(|level| self.genome(dense.clone(), [0, 0, 0], level))
            .collect();
        let deeper = shallowest.saturating_sub(1);
        for (levels, exit) in units(shallowest, true)
            .into_iter()
            .chain(units(deeper, false))
        {
            let genome = self.genome(dense.clone(), levels, exit);
            if !seeds.contains(&genome) {
                seeds.push(genome);
            }
        }
        seeds
    }
}
