//! The generation loop: evaluate (quarter split, then full split for the survivors), keep the
//! best, breed the next generation, checkpoint.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::operators::{Breeding, Score, breed, generation_rng};
use super::seeding::initial_population;
use super::state::State;
use super::{
    Cost, Evaluation, Genome, Problem, SearchConfig, SearchError, Stage, fitness, target_accuracy,
};

/// One generation's outcome, for progress bars and the search's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    /// 0 for the seeded generation.
    pub generation: usize,
    /// The best genome so far (admissible first, then by fitness; always Full-evaluated).
    pub best: Genome,
    /// Its fitness.
    pub best_fitness: f64,
    /// Its accuracy on the full search split.
    pub best_accuracy: f64,
    /// Its signal on the full search split.
    pub best_signal: f64,
    /// Its cost relative to the dense model.
    pub best_cost: f64,
    /// Whether it is within the board's budgets and meets the accuracy target.
    pub feasible: bool,
    /// Whether the best genome changed in this generation.
    pub improved: bool,
    /// Genomes evaluated on the quarter split in this generation.
    pub quarter_evaluations: usize,
    /// Genomes evaluated on the full split in this generation.
    pub full_evaluations: usize,
    /// New genomes dropped after the quarter split in this generation.
    pub rejected: usize,
    /// New genomes not evaluated because they cost more than the admissible best genome: the
    /// answer is the cheapest admissible genome, so none of them could have become it.
    #[serde(default)]
    pub costlier: usize,
}

/// The answer of a finished (or stopped) search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchResult {
    /// The best genome: the fittest admissible one (within budget, at or above the target on
    /// the full search split) if any, else the fittest Full-evaluated one.
    pub best: Genome,
    /// Its evaluation on the full search split.
    pub best_evaluation: Evaluation,
    /// Its cost.
    pub best_cost: Cost,
    /// Its fitness.
    pub best_fitness: f64,
    /// Whether the best genome fits the budgets and meets the target; when false no genome
    /// seen did, and the caller should say so.
    pub feasible: bool,
    /// The dense model's accuracy on the full search split.
    pub dense_accuracy: f64,
    /// The accuracy target a*.
    pub target_accuracy: f64,
    /// The seed that drove the search.
    pub seed: u64,
    /// Generations run.
    pub generations: usize,
    /// One report per generation.
    pub history: Vec<GenerationReport>,
    /// Genomes evaluated, both stages together.
    pub evaluations: usize,
    /// Genomes evaluated on the quarter split.
    pub quarter_evaluations: usize,
    /// Genomes evaluated on the full split.
    pub full_evaluations: usize,
}

/// The genetic search over a [`Problem`] (DESIGN section 5).
#[derive(Debug)]
pub struct Search<P> {
    problem: P,
    config: SearchConfig,
    n_genes: usize,
    dense_accuracy: f64,
    target: f64,
    baseline: Option<Genome>,
    checkpoint_path: Option<PathBuf>,
    state: State,
}

/// The best genome so far and how it stands.
struct Best {
    genome: Genome,
    evaluation: Evaluation,
    cost: Cost,
    fitness: f64,
    feasible: bool,
}

impl<P: Problem> Search<P> {
    /// A new search over `problem` with `config` (validated).
    pub fn new(problem: P, config: SearchConfig) -> Result<Self, SearchError> {
        config.validate()?;
        let n_genes = problem.n_genes();
        if n_genes == 0 {
            return Err(SearchError::NoGenes);
        }
        let dense_accuracy = problem.dense_accuracy();
        if !dense_accuracy.is_finite() {
            return Err(SearchError::DenseAccuracy(dense_accuracy));
        }
        Ok(Self {
            target: target_accuracy(dense_accuracy, &config),
            problem,
            config,
            n_genes,
            dense_accuracy,
            baseline: None,
            checkpoint_path: None,
            state: State::default(),
        })
    }

    /// Continues the search saved at `path`, writing later checkpoints there too. `config`
    /// must equal the checkpoint's except for `max_generations` and `patience`, and the problem
    /// must have the same genes and dense accuracy.
    pub fn resume(problem: P, config: SearchConfig, path: &Path) -> Result<Self, SearchError> {
        let mut search = Self::new(problem, config)?;
        let checkpoint = Checkpoint::read(path)?;
        search.state =
            checkpoint.into_state(path, search.n_genes, search.dense_accuracy, &search.config)?;
        search.checkpoint_path = Some(path.to_path_buf());
        Ok(search)
    }

    /// Adds the caller's uniform baseline (e.g. the binary search's answer) to the first
    /// generation.
    pub fn with_uniform_baseline(mut self, genome: Genome) -> Result<Self, SearchError> {
        genome.validate(self.n_genes, self.config.levels.len())?;
        self.baseline = Some(genome);
        Ok(self)
    }

    /// Writes a checkpoint to `path` (atomically) after every generation.
    pub fn checkpoint_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint_path = Some(path.into());
        self
    }

    /// The problem, e.g. to read its own counters.
    pub fn problem(&self) -> &P {
        &self.problem
    }

    #[cfg(test)]
    pub(crate) fn problem_mut(&mut self) -> &mut P {
        &mut self.problem
    }

    /// Gives the problem back.
    pub fn into_problem(self) -> P {
        self.problem
    }

    /// The settings.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// The accuracy target a*.
    pub fn target_accuracy(&self) -> f64 {
        self.target
    }

    /// The current generation's genomes (empty before the first step).
    pub fn population(&self) -> &[Genome] {
        &self.state.population
    }

    /// One report per generation run so far.
    pub fn history(&self) -> &[GenerationReport] {
        &self.state.history
    }

    /// Whether a stopping rule holds: `max_generations` run, or `patience` generations in a
    /// row without a better best genome.
    pub fn is_finished(&self) -> bool {
        let generations = self.state.next_generation;
        generations >= self.config.max_generations
            || (generations > 0 && self.state.stale_generations >= self.config.patience)
    }

    /// Runs generations until a stopping rule holds, calling `progress` after each.
    pub fn run(
        &mut self,
        mut progress: impl FnMut(&GenerationReport),
    ) -> Result<SearchResult, SearchError> {
        while !self.is_finished() {
            let report = self.step()?;
            progress(&report);
        }
        self.result().ok_or(SearchError::NotStarted)
    }

    /// Runs one generation regardless of the stopping rules, then checkpoints.
    pub fn step(&mut self) -> Result<GenerationReport, SearchError> {
        let generation = self.state.next_generation;
        let mut rng = generation_rng(self.config.seed, generation);
        let population = if generation == 0 {
            let spectrum = self.problem.spectrum_seeds(self.config.spectrum_seeds);
            let structural = self.problem.structural_seeds(self.target);
            let uniform = self
                .config
                .uniform_seed_levels
                .iter()
                .map(|&level| self.problem.uniform_seed(level));
            let mut seeds: Vec<Genome> = self.baseline.iter().cloned().collect();
            seeds.extend(structural);
            seeds.extend(uniform);
            seeds.extend(spectrum.into_iter().take(self.config.spectrum_seeds));
            for genome in &seeds {
                genome.validate(self.n_genes, self.config.levels.len())?;
            }
            let highest = self.problem.highest_levels(self.config.levels.len());
            initial_population(&mut rng, &highest, &self.config, seeds)
        } else {
            self.next_population(&mut rng)?
        };
        let (quarter_before, full_before) =
            (self.state.quarter_evaluations, self.state.full_evaluations);
        let (rejected, costlier) = self.evaluate_population(&population)?;
        // The genomes left out as costlier than the answer never enter the population.
        let population: Vec<Genome> = population
            .into_iter()
            .filter(|genome| self.state.cache.contains_key(genome))
            .collect();
        let scores = self.scores(&population)?;
        let improved = self.update_best(&population, &scores)?;
        self.state.stale_generations = if improved {
            0
        } else {
            self.state.stale_generations + 1
        };
        let report = self.report(
            generation,
            improved,
            [rejected, costlier],
            quarter_before,
            full_before,
        )?;
        self.state.population = population;
        self.state.history.push(report.clone());
        self.state.next_generation = generation + 1;
        if let Some(path) = &self.checkpoint_path {
            Checkpoint::from_state(&self.state, self.n_genes, self.dense_accuracy, &self.config)
                .write(path)?;
        }
        Ok(report)
    }

    /// The best genome so far; `None` before the first generation.
    pub fn result(&self) -> Option<SearchResult> {
        let best = self.best()?;
        Some(SearchResult {
            best: best.genome,
            best_evaluation: best.evaluation,
            best_cost: best.cost,
            best_fitness: best.fitness,
            feasible: best.feasible,
            dense_accuracy: self.dense_accuracy,
            target_accuracy: self.target,
            seed: self.config.seed,
            generations: self.state.next_generation,
            history: self.state.history.clone(),
            evaluations: self.state.quarter_evaluations + self.state.full_evaluations,
            quarter_evaluations: self.state.quarter_evaluations,
            full_evaluations: self.state.full_evaluations,
        })
    }

    fn best(&self) -> Option<Best> {
        let genome = self.state.best.clone()?;
        let evaluation = self.state.cache.get(&genome)?.full?;
        let cost = self.problem.cost(&genome);
        Some(Best {
            fitness: fitness(evaluation.accuracy, self.target, &cost, &self.config),
            feasible: cost.is_within_budget() && evaluation.accuracy >= self.target,
            genome,
            evaluation,
            cost,
        })
    }

    /// Elites of the current population, then children bred from it.
    fn next_population(
        &mut self,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Vec<Genome>, SearchError> {
        let parents = self.state.population.clone();
        let scores = self.scores(&parents)?;
        let mut population: Vec<Genome> = top_distinct(&parents, &scores, self.config.elitism)
            .into_iter()
            .map(|i| parents[i].clone())
            .collect();
        let highest = self.problem.highest_levels(self.config.levels.len());
        let breeding = Breeding {
            tournament: self.config.tournament,
            crossover_p: self.config.crossover_p,
            mutation_p: self.config.mutation_probability(self.n_genes),
            highest: &highest,
        };
        let n_children = self.config.population - population.len();
        population.extend(breed(rng, &parents, &scores, n_children, breeding));
        Ok(population)
    }

    /// The cost of the best genome when it is admissible: a genome costing more can never
    /// become the answer.
    fn answer_cost(&self) -> Option<f64> {
        self.best()
            .filter(|best| best.feasible)
            .map(|best| best.cost.cost)
    }

    /// Whether `genome` costs no more than `bound` (always, without one).
    fn within(&self, bound: Option<f64>, genome: &Genome) -> bool {
        bound.is_none_or(|bound| self.problem.cost(genome).cost <= bound)
    }

    /// Evaluates the genomes not seen before (quarter split, then the survivors on the full
    /// split), then makes sure the elites are Full-evaluated. Genomes costlier than an
    /// admissible best are not evaluated (they rank last). Returns how many were rejected
    /// after the quarter split and how many were left out as costlier.
    fn evaluate_population(
        &mut self,
        population: &[Genome],
    ) -> Result<(usize, usize), SearchError> {
        let bound = self.answer_cost();
        let mut seen = HashSet::new();
        let unseen: Vec<Genome> = population
            .iter()
            .filter(|g| !self.state.cache.contains_key(*g) && seen.insert(*g))
            .cloned()
            .collect();
        let n_unseen = unseen.len();
        let new: Vec<Genome> = unseen
            .into_iter()
            .filter(|g| self.within(bound, g))
            .collect();
        let costlier = n_unseen - new.len();
        let mut rejected = 0;
        let n_new = new.len();
        if self.config.early_rejection {
            let quarter = self.evaluate_stage(&new, Stage::Quarter)?;
            let threshold = self.target - self.config.early_reject_margin;
            let survivors: Vec<Genome> = new
                .into_iter()
                .zip(quarter)
                .filter(|(_, evaluation)| evaluation.accuracy >= threshold)
                .map(|(genome, _)| genome)
                .collect();
            rejected = n_new - survivors.len();
            // Promotion mirrors the answer's rule: the survivors that meet the target on the
            // quarter split, cheapest first, then the others by fitness.
            let scores = self.scores(&survivors)?;
            let quarter_ok: Vec<bool> = survivors
                .iter()
                .map(|g| {
                    self.state
                        .cache
                        .get(g)
                        .and_then(|c| c.quarter)
                        .is_some_and(|e| e.accuracy >= self.target)
                })
                .collect();
            let mut order: Vec<usize> = (0..survivors.len()).collect();
            order.sort_by(|&a, &b| {
                let cheaper = match quarter_ok[a] && quarter_ok[b] {
                    true => scores[a].cost.total_cmp(&scores[b].cost),
                    false => std::cmp::Ordering::Equal,
                };
                quarter_ok[b]
                    .cmp(&quarter_ok[a])
                    .then(cheaper)
                    .then(scores[b].cmp_fitness(&scores[a]))
            });
            let promoted: Vec<Genome> = order
                .into_iter()
                .take(self.config.max_promotions)
                .map(|i| survivors[i].clone())
                .collect();
            self.evaluate_stage(&promoted, Stage::Full)?;
        } else {
            self.evaluate_stage(&new, Stage::Full)?;
        }
        // The elites (at least one, the candidate for the best genome) must be Full-evaluated;
        // every round promotes at least one genome, so this ends.
        loop {
            let scores = self.scores(population)?;
            let missing: Vec<Genome> =
                top_distinct(population, &scores, self.config.elitism.max(1))
                    .into_iter()
                    .filter(|&i| !scores[i].full && self.within(bound, &population[i]))
                    .map(|i| population[i].clone())
                    .collect();
            if missing.is_empty() {
                return Ok((rejected, costlier));
            }
            self.evaluate_stage(&missing, Stage::Full)?;
        }
    }

    /// One batched call of the problem's evaluator; caches and counts the results.
    fn evaluate_stage(
        &mut self,
        genomes: &[Genome],
        stage: Stage,
    ) -> Result<Vec<Evaluation>, SearchError> {
        if genomes.is_empty() {
            return Ok(Vec::new());
        }
        let evaluations = self
            .problem
            .evaluate(genomes, stage)
            .map_err(SearchError::Evaluation)?;
        if evaluations.len() != genomes.len() {
            return Err(SearchError::EvaluationCount {
                expected: genomes.len(),
                got: evaluations.len(),
            });
        }
        for (genome, evaluation) in genomes.iter().zip(&evaluations) {
            finite("accuracy", evaluation.accuracy)?;
            finite("signal", evaluation.signal)?;
            let cached = self.state.cache.entry(genome.clone()).or_default();
            match stage {
                Stage::Quarter => cached.quarter = Some(*evaluation),
                Stage::Full => cached.full = Some(*evaluation),
            }
        }
        match stage {
            Stage::Quarter => self.state.quarter_evaluations += genomes.len(),
            Stage::Full => self.state.full_evaluations += genomes.len(),
        }
        Ok(evaluations)
    }

    fn scores(&self, population: &[Genome]) -> Result<Vec<Score>, SearchError> {
        population.iter().map(|g| self.score(g)).collect()
    }

    /// A genome's standing: from its Full evaluation if it has one, else from its quarter one;
    /// a genome never evaluated ranks last.
    fn score(&self, genome: &Genome) -> Result<Score, SearchError> {
        let cached = self.state.cache.get(genome).copied().unwrap_or_default();
        let (evaluation, full) = match (cached.full, cached.quarter) {
            (Some(evaluation), _) => (evaluation, true),
            (None, Some(evaluation)) => (evaluation, false),
            (None, None) => {
                return Ok(Score {
                    fitness: f64::NEG_INFINITY,
                    signal: f64::NEG_INFINITY,
                    admissible: false,
                    full: false,
                    cost: f64::INFINITY,
                });
            }
        };
        let cost = self.problem.cost(genome);
        finite("cost", cost.cost)?;
        finite("memory excess", cost.memory_excess)?;
        finite("latency excess", cost.latency_excess)?;
        Ok(Score {
            fitness: fitness(evaluation.accuracy, self.target, &cost, &self.config),
            signal: evaluation.signal,
            admissible: full && cost.is_within_budget() && evaluation.accuracy >= self.target,
            full,
            cost: cost.cost,
        })
    }

    /// Replaces the best genome by a better Full-evaluated one of `population`; true if it
    /// changed.
    fn update_best(
        &mut self,
        population: &[Genome],
        scores: &[Score],
    ) -> Result<bool, SearchError> {
        let mut best = match &self.state.best {
            Some(genome) => Some((genome.clone(), self.score(genome)?)),
            None => None,
        };
        let mut improved = false;
        for (genome, score) in population.iter().zip(scores) {
            if score.full && best.as_ref().is_none_or(|(_, b)| score.cmp_rank(b).is_gt()) {
                best = Some((genome.clone(), *score));
                improved = true;
            }
        }
        self.state.best = best.map(|(genome, _)| genome);
        Ok(improved)
    }

    fn report(
        &self,
        generation: usize,
        improved: bool,
        [rejected, costlier]: [usize; 2],
        quarter_before: usize,
        full_before: usize,
    ) -> Result<GenerationReport, SearchError> {
        let best = self.best().ok_or(SearchError::NotStarted)?;
        Ok(GenerationReport {
            generation,
            best_fitness: best.fitness,
            best_accuracy: best.evaluation.accuracy,
            best_signal: best.evaluation.signal,
            best_cost: best.cost.cost,
            feasible: best.feasible,
            best: best.genome,
            improved,
            quarter_evaluations: self.state.quarter_evaluations - quarter_before,
            full_evaluations: self.state.full_evaluations - full_before,
            rejected,
            costlier,
        })
    }
}

/// Indices of the `n` best distinct genomes by [`Score::cmp_rank`]; equal scores keep
/// population order, and of duplicates the first occurrence counts.
fn top_distinct(population: &[Genome], scores: &[Score], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].cmp_rank(&scores[a]));
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    for i in order {
        if chosen.len() == n {
            break;
        }
        if chosen.iter().all(|&j| population[j] != population[i]) {
            chosen.push(i);
        }
    }
    chosen
}

fn finite(what: &'static str, value: f64) -> Result<(), SearchError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(SearchError::NonFinite { what, value })
    }
}
