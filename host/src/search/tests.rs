//! The engine on synthetic problems: accuracy `0.9 − Σ harm(level)` with a few bottleneck genes
//! that are very harmful to prune, cost the mean keep fraction.

use std::collections::HashSet;
use std::path::Path;

use super::*;

const N_GENES: usize = 42;
const BOTTLENECKS: [usize; 4] = [3, 17, 30, 41];

/// A deterministic synthetic problem that records every evaluation it is asked for.
#[derive(Debug)]
struct Synthetic {
    levels: Levels,
    /// Mean keep fraction the board's memory allows, if limited.
    memory_budget: Option<f64>,
    /// Half-width of the deterministic noise added to quarter-split accuracies.
    quarter_noise: f64,
    /// Offer water-filling genomes on the harm curves as spectrum seeds.
    spectrum: bool,
    quarter_seen: HashSet<Genome>,
    full_seen: HashSet<Genome>,
    repeats: usize,
    calls: usize,
    /// Set by a test: genomes evaluated at a cost above it are counted in `above_bound`.
    bound: Option<f64>,
    above_bound: usize,
}

impl Synthetic {
    fn new() -> Self {
        Self {
            levels: Levels::default(),
            memory_budget: None,
            quarter_noise: 0.0,
            spectrum: false,
            quarter_seen: HashSet::new(),
            full_seen: HashSet::new(),
            repeats: 0,
            calls: 0,
            bound: None,
            above_bound: 0,
        }
    }

    fn harm(gene: usize, level: u8) -> f64 {
        let per_level = if BOTTLENECKS.contains(&gene) {
            0.05
        } else {
            0.00002
        };
        per_level * f64::from(level)
    }

    fn accuracy(genome: &Genome) -> f64 {
        let harm: f64 = (genome.levels().iter().enumerate())
            .map(|(i, &level)| Self::harm(i, level))
            .sum();
        0.9 - harm
    }

    /// A deterministic value in [-1, 1] from the genome's bytes (FNV-1a).
    fn noise(genome: &Genome) -> f64 {
        let hash = genome
            .levels()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        (hash % 2001) as f64 / 1000.0 - 1.0
    }
}

impl Problem for Synthetic {
    fn n_genes(&self) -> usize {
        N_GENES
    }

    fn dense_accuracy(&self) -> f64 {
        0.9
    }

    fn cost(&self, genome: &Genome) -> Cost {
        let keep = genome.mean_keep(&self.levels);
        let memory_excess = self
            .memory_budget
            .map_or(0.0, |budget| ((keep - budget) / budget).max(0.0));
        Cost {
            cost: keep,
            memory_excess,
            latency_excess: 0.0,
        }
    }

    fn evaluate(&mut self, genomes: &[Genome], stage: Stage) -> anyhow::Result<Vec<Evaluation>> {
        self.calls += 1;
        let seen = match stage {
            Stage::Quarter => &mut self.quarter_seen,
            Stage::Full => &mut self.full_seen,
        };
        for genome in genomes {
            if !seen.insert(genome.clone()) {
                self.repeats += 1;
            }
        }
        if let Some(bound) = self.bound {
            self.above_bound += genomes.iter().filter(|g| self.cost(g).cost > bound).count();
        }
        Ok(genomes
            .iter()
            .map(|genome| {
                let noise = match stage {
                    Stage::Quarter => self.quarter_noise * Self::noise(genome),
                    Stage::Full => 0.0,
                };
                let accuracy = Self::accuracy(genome) + noise;
                Evaluation {
                    accuracy,
                    signal: accuracy,
                }
            })
            .collect())
    }

    fn spectrum_seeds(&self, n: usize) -> Vec<Genome> {
        if !self.spectrum {
            return Vec::new();
        }
        let n_levels = self.levels.len() as u8;
        let errors: Vec<Vec<f64>> = (0..N_GENES)
            .map(|i| (0..n_levels).map(|l| Self::harm(i, l)).collect())
            .collect();
        let bytes = vec![self.levels.keeps().to_vec(); N_GENES];
        let budgets = [0.1, 0.2, 0.3, 0.5, 0.7];
        let mut seeds = water_filling_seeds(&errors, &bytes, &budgets).expect("valid curves");
        seeds.truncate(n);
        seeds
    }
}

fn config(seed: u64) -> SearchConfig {
    SearchConfig {
        seed,
        max_generations: 60,
        patience: 15,
        ..SearchConfig::default()
    }
}

fn run(problem: Synthetic, config: SearchConfig) -> (SearchResult, Synthetic) {
    let mut search = Search::new(problem, config).expect("valid config");
    let result = search.run(|_| {}).expect("the search runs");
    (result, search.into_problem())
}

fn mean_level_of_harmless_genes(genome: &Genome) -> f64 {
    let harmless: Vec<f64> = (0..N_GENES)
        .filter(|i| !BOTTLENECKS.contains(i))
        .map(|i| f64::from(genome.levels()[i]))
        .collect();
    harmless.iter().sum::<f64>() / harmless.len() as f64
}

/// The cheapest uniform genome that is within budget and meets the target.
fn best_uniform_cost(problem: &Synthetic, target: f64) -> f64 {
    (0..problem.levels.len())
        .map(|level| Genome::uniform(N_GENES, level as u8))
        .filter(|g| Synthetic::accuracy(g) >= target && problem.cost(g).is_within_budget())
        .map(|g| problem.cost(&g).cost)
        .fold(f64::INFINITY, f64::min)
}

fn check_finds_bottlenecks(problem: Synthetic, seed: u64, min_mean_level: f64) -> SearchResult {
    let (result, problem) = run(problem, config(seed));
    assert!(result.feasible, "seed {seed}: {result:?}");
    for i in BOTTLENECKS {
        assert_eq!(
            result.best.levels()[i],
            0,
            "seed {seed}: bottleneck {i} pruned"
        );
    }
    let mean_level = mean_level_of_harmless_genes(&result.best);
    assert!(
        mean_level >= min_mean_level,
        "seed {seed}: mean level {mean_level}"
    );
    assert!(result.best_cost.cost < best_uniform_cost(&problem, result.target_accuracy));
    result
}

#[test]
fn keeps_the_bottlenecks_dense_and_prunes_the_rest() {
    // From uniform and random seeds only, the climb is mutation-bound: about 0.07 levels per
    // gene and generation (the optimum, every harmless gene at level 10, takes ~180).
    for seed in [1, 2, 3] {
        check_finds_bottlenecks(Synthetic::new(), seed, 4.0);
    }
}

#[test]
fn spectrum_seeds_start_the_search_near_the_optimum() {
    let problem = Synthetic {
        spectrum: true,
        ..Synthetic::new()
    };
    let (result, _) = run(problem, SearchConfig::default());
    assert!(result.feasible);
    for i in BOTTLENECKS {
        assert_eq!(result.best.levels()[i], 0);
    }
    assert!(mean_level_of_harmless_genes(&result.best) >= 9.5);
    assert!(result.generations <= 30);
}

#[test]
fn climbs_out_of_genomes_over_the_memory_budget() {
    // Within 0.3 of the dense memory, the bottlenecks dense: no first-generation genome is
    // both within budget and accurate enough.
    for seed in [1, 2] {
        let problem = Synthetic {
            memory_budget: Some(0.3),
            ..Synthetic::new()
        };
        let result = check_finds_bottlenecks(problem, seed, 6.0);
        assert!(!result.history[0].feasible, "seed {seed}");
        assert!(result.best_cost.is_within_budget());
    }
}

#[test]
fn early_rejection_saves_full_evaluations_without_changing_the_answer() {
    // With quarter accuracies equal to the full ones the two runs select alike; only the
    // number of full evaluations differs.
    let with = run(Synthetic::new(), config(4)).0;
    let without = run(
        Synthetic::new(),
        SearchConfig {
            early_rejection: false,
            ..config(4)
        },
    )
    .0;
    assert_eq!(with.best, without.best);
    assert_eq!(with.best_fitness, without.best_fitness);
    assert_eq!(with.generations, without.generations);
    assert!(with.history.iter().any(|r| r.rejected > 0));
    assert!(
        with.full_evaluations < without.full_evaluations,
        "{} full evaluations with early rejection, {} without",
        with.full_evaluations,
        without.full_evaluations
    );
}

#[test]
fn only_the_best_survivors_of_the_quarter_reach_the_full_split() {
    let settings = SearchConfig {
        max_promotions: 2,
        ..config(6)
    };
    let (result, _) = run(Synthetic::new(), settings.clone());
    for report in &result.history {
        assert!(
            report.full_evaluations <= settings.max_promotions + settings.elitism,
            "generation {}: {} full evaluations",
            report.generation,
            report.full_evaluations
        );
    }
    assert!(
        result.best_evaluation.accuracy >= result.target_accuracy,
        "{result:?}"
    );
}

#[test]
fn a_noisy_quarter_still_gives_an_answer_checked_on_the_full_split() {
    let problem = Synthetic {
        quarter_noise: 0.03,
        ..Synthetic::new()
    };
    let (result, _) = run(problem, config(5));
    assert!(result.feasible);
    assert_eq!(
        result.best_evaluation.accuracy,
        Synthetic::accuracy(&result.best)
    );
    assert!(result.best_evaluation.accuracy >= result.target_accuracy);
}

#[test]
fn no_genome_is_evaluated_twice() {
    let (result, problem) = run(Synthetic::new(), config(6));
    assert_eq!(problem.repeats, 0);
    assert_eq!(problem.quarter_seen.len(), result.quarter_evaluations);
    assert_eq!(problem.full_seen.len(), result.full_evaluations);
    assert_eq!(
        result.evaluations,
        result.quarter_evaluations + result.full_evaluations
    );
    // One batched call per stage per generation, plus at most a few elite promotions.
    assert!(
        problem.calls <= 3 * result.generations,
        "{} calls",
        problem.calls
    );
}

#[test]
fn genomes_costlier_than_an_admissible_best_are_not_evaluated() {
    let mut search = Search::new(Synthetic::new(), config(8)).expect("valid config");
    let mut left_out = 0;
    while !search.is_finished() {
        let report = search.step().expect("a generation runs");
        left_out += report.costlier;
        // The next generation must not evaluate anything costlier than an admissible best.
        let bound = report.feasible.then_some(report.best_cost);
        search.problem_mut().bound = bound;
    }
    let result = search.result().expect("a result");
    assert!(result.feasible);
    assert!(left_out > 0, "no genome was left out");
    assert_eq!(search.problem().above_bound, 0);
}

#[test]
fn the_same_seed_gives_the_same_search() {
    let first = run(Synthetic::new(), config(7)).0;
    let second = run(Synthetic::new(), config(7)).0;
    assert_eq!(first, second);
}

#[test]
fn another_seed_gives_another_trajectory() {
    let population = |seed| {
        let mut search = Search::new(Synthetic::new(), config(seed)).expect("valid config");
        search.step().expect("the search runs");
        search.step().expect("the search runs");
        search.population().to_vec()
    };
    assert_ne!(population(8), population(9));
}

#[test]
fn progress_is_reported_once_per_generation() {
    let mut search = Search::new(Synthetic::new(), config(10)).expect("valid config");
    let mut generations = Vec::new();
    let result = search
        .run(|report| generations.push(report.generation))
        .expect("the search runs");
    assert_eq!(generations, (0..result.generations).collect::<Vec<_>>());
    assert_eq!(result.history.len(), result.generations);
    let fitness: Vec<f64> = result.history.iter().map(|r| r.best_fitness).collect();
    assert!(fitness.windows(2).all(|w| w[0] <= w[1]), "{fitness:?}");
}

fn resumable_config() -> SearchConfig {
    SearchConfig {
        max_generations: 12,
        patience: 12,
        ..config(11)
    }
}

#[test]
fn a_resumed_search_ends_like_an_uninterrupted_one() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("search.json");
    let uninterrupted = run(Synthetic::new(), resumable_config()).0;

    let mut search = Search::new(Synthetic::new(), resumable_config())
        .expect("valid config")
        .checkpoint_to(&path);
    for _ in 0..5 {
        search.step().expect("the search runs");
    }
    drop(search);
    let mut resumed =
        Search::resume(Synthetic::new(), resumable_config(), &path).expect("the checkpoint loads");
    assert_eq!(resumed.history().len(), 5);
    let result = resumed.run(|_| {}).expect("the search runs");
    assert_eq!(result, uninterrupted);
    // The resumed engine evaluated only the genomes after the checkpoint.
    let after = resumed.problem();
    assert_eq!(after.repeats, 0);
    let before_checkpoint: usize = result.history[..5]
        .iter()
        .map(|r| r.quarter_evaluations + r.full_evaluations)
        .sum();
    assert_eq!(
        after.quarter_seen.len() + after.full_seen.len(),
        result.evaluations - before_checkpoint
    );
}

fn checkpoint_after_two_generations(path: &Path) {
    let mut search = Search::new(Synthetic::new(), resumable_config())
        .expect("valid config")
        .checkpoint_to(path);
    search.step().expect("the search runs");
    search.step().expect("the search runs");
}

fn check_resume_error(path: &Path, config: SearchConfig, expected: &[&str]) {
    let error = Search::resume(Synthetic::new(), config, path)
        .expect_err("the resume must fail")
        .to_string();
    for part in expected {
        assert!(error.contains(part), "{error:?} lacks {part:?}");
    }
}

#[test]
fn resume_refuses_corrupt_and_foreign_checkpoints() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("search.json");
    check_resume_error(
        &path,
        resumable_config(),
        &["cannot read checkpoint", "--resume"],
    );

    std::fs::write(&path, "{\"format\": 1, \"n_genes\": ").expect("written");
    check_resume_error(
        &path,
        resumable_config(),
        &["is corrupt", "delete it or drop --resume"],
    );

    checkpoint_after_two_generations(&path);
    let other_seed = SearchConfig {
        seed: 12,
        ..resumable_config()
    };
    check_resume_error(
        &path,
        other_seed,
        &["another search config (seed = 11, now 12)"],
    );
    let longer = SearchConfig {
        max_generations: 20,
        ..resumable_config()
    };
    assert!(Search::resume(Synthetic::new(), longer, &path).is_ok());

    let mut checkpoint = Checkpoint::read(&path).expect("the checkpoint loads");
    checkpoint.n_genes = 40;
    checkpoint.write(&path).expect("written");
    check_resume_error(
        &path,
        resumable_config(),
        &["was written for 40 genes, not 42"],
    );

    let mut checkpoint = Checkpoint::read(&path).expect("the checkpoint loads");
    checkpoint.n_genes = N_GENES;
    checkpoint.state.population[0].0.pop();
    checkpoint.write(&path).expect("written");
    check_resume_error(&path, resumable_config(), &["is corrupt", "41 genes"]);
}

#[test]
fn greedy_moves_keep_the_harmless_skips_and_refuse_the_rest() -> anyhow::Result<()> {
    // From every gene dense, each move sets one gene to the last level (11): a bottleneck
    // costs 0.55, another gene 0.00022. At a target of 0.89 all 38 harmless moves fit (0.0084
    // in all) and the bottlenecks fail the quarter screen.
    let mut problem = Synthetic::new();
    let answer = Genome::uniform(N_GENES, 0);
    let last = problem.levels.most_pruned();
    let moves: Vec<(usize, String)> = (0..N_GENES).map(|g| (g, format!("gene {g}"))).collect();
    let mut tries = Vec::new();
    let result = greedy_moves(
        &mut problem,
        &answer,
        &moves,
        last,
        0.89,
        100,
        |name, a, kept| {
            tries.push((name.to_owned(), a, kept));
        },
    )?;
    assert_eq!(result.screened, N_GENES);
    assert_eq!(
        result.tried,
        N_GENES - BOTTLENECKS.len(),
        "bottlenecks fail the screen"
    );
    assert_eq!(result.kept.len(), N_GENES - BOTTLENECKS.len());
    for gene in 0..N_GENES {
        let expected = if BOTTLENECKS.contains(&gene) { 0 } else { last };
        assert_eq!(result.genome.levels()[gene], expected, "gene {gene}");
    }
    assert!(
        tries
            .iter()
            .all(|(_, assured, kept)| *kept && *assured >= 0.89)
    );
    // A tighter target: the harm adds up, and the moves past it are refused.
    let mut problem = Synthetic::new();
    let target = 0.9 - 0.00022 * 10.5;
    let result = greedy_moves(
        &mut problem,
        &answer,
        &moves,
        last,
        target,
        100,
        |_, _, _| {},
    )?;
    assert_eq!(result.kept.len(), 10);
    assert_eq!(result.tried, N_GENES - BOTTLENECKS.len());
    // At most `max_tries` full evaluations.
    let mut problem = Synthetic::new();
    let result = greedy_moves(&mut problem, &answer, &moves, last, 0.89, 3, |_, _, _| {})?;
    assert_eq!((result.tried, result.kept.len()), (3, 3));
    Ok(())
}
