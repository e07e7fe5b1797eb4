//! Selection, crossover and mutation, and the per-generation random stream.

use std::cmp::Ordering;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Genome;

/// The random stream of one generation: the search's seed, with the generation as the ChaCha
/// stream number, so no random state needs saving and a resumed search draws exactly what an
/// uninterrupted one would.
pub(super) fn generation_rng(seed: u64, generation: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(generation as u64);
    rng
}

/// How a scored genome stands in its generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Score {
    /// From [`super::fitness`], with the Full accuracy when there is one.
    pub fitness: f64,
    /// The evaluation's signal.
    pub signal: f64,
    /// Full-evaluated, within budget and at or above the target.
    pub admissible: bool,
    /// Evaluated on the whole search split.
    pub full: bool,
    /// The board objective's cost (lower is smaller or faster).
    pub cost: f64,
}

impl Score {
    /// Selection order: fitness, then signal.
    pub fn cmp_fitness(&self, other: &Self) -> Ordering {
        self.fitness
            .total_cmp(&other.fitness)
            .then(self.signal.total_cmp(&other.signal))
    }

    /// Order of elites and of the best genome: admissible first; among admissible genomes
    /// the cheapest (the answer is the smallest model that assures the target within the
    /// budgets, not the one with the widest accuracy margin), then by fitness.
    pub fn cmp_rank(&self, other: &Self) -> Ordering {
        let cheaper = match self.admissible && other.admissible {
            true => other.cost.total_cmp(&self.cost),
            false => Ordering::Equal,
        };
        self.admissible
            .cmp(&other.admissible)
            .then(cheaper)
            .then(self.cmp_fitness(other))
    }
}

/// Index of the fittest of `size` genomes drawn with replacement; the first drawn wins ties.
pub(super) fn tournament(rng: &mut ChaCha8Rng, scores: &[Score], size: usize) -> usize {
    let mut winner = rng.random_range(0..scores.len());
    for _ in 1..size {
        let contender = rng.random_range(0..scores.len());
        if scores[contender].cmp_fitness(&scores[winner]) == Ordering::Greater {
            winner = contender;
        }
    }
    winner
}

/// Each gene from either parent with equal probability.
pub(super) fn uniform_crossover(rng: &mut ChaCha8Rng, first: &Genome, second: &Genome) -> Genome {
    Genome(
        first
            .levels()
            .iter()
            .zip(second.levels())
            .map(|(&a, &b)| if rng.random::<bool>() { a } else { b })
            .collect(),
    )
}

/// Moves each gene one level up or down with probability `p`, clamped to its levels (`highest`:
/// each gene's highest level). A gene of two levels flips.
pub(super) fn mutate(rng: &mut ChaCha8Rng, genome: &mut Genome, p: f64, highest: &[u8]) {
    for (level, &last) in genome.0.iter_mut().zip(highest) {
        if rng.random::<f64>() < p {
            *level = if last <= 1 {
                last - (*level).min(last)
            } else if rng.random::<bool>() {
                level.saturating_add(1).min(last)
            } else {
                level.saturating_sub(1)
            };
        }
    }
}

/// What breeding needs besides the parents.
#[derive(Clone, Copy, Debug)]
pub(super) struct Breeding<'a> {
    pub tournament: usize,
    pub crossover_p: f64,
    pub mutation_p: f64,
    /// Each gene's highest level.
    pub highest: &'a [u8],
}

/// `n` children of `parents`: two tournament winners, uniform crossover with probability
/// `crossover_p` (else a copy of the first), then mutation.
pub(super) fn breed(
    rng: &mut ChaCha8Rng,
    parents: &[Genome],
    scores: &[Score],
    n: usize,
    breeding: Breeding<'_>,
) -> Vec<Genome> {
    (0..n)
        .map(|_| {
            let first = &parents[tournament(rng, scores, breeding.tournament)];
            let second = &parents[tournament(rng, scores, breeding.tournament)];
            let mut child = if rng.random::<f64>() < breeding.crossover_p {
                uniform_crossover(rng, first, second)
            } else {
                first.clone()
            };
            mutate(rng, &mut child, breeding.mutation_p, breeding.highest);
            child
        })
        .collect()
}
