//! The first generation: the caller's uniform baseline, uniform genomes, spectrum-guided
//! genomes (greedy water-filling on the error curves) and seeded random genomes.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Genome, SearchConfig, SearchError};

/// The first generation: `seeds` in order (the caller's baseline, the problem's structural
/// seeds, the uniform genomes, the spectrum-guided genomes), duplicates dropped and cut at the
/// population, then random genomes up to the population.
pub(super) fn initial_population(
    rng: &mut ChaCha8Rng,
    highest: &[u8],
    config: &SearchConfig,
    seeds: impl IntoIterator<Item = Genome>,
) -> Vec<Genome> {
    let mut population: Vec<Genome> = Vec::with_capacity(config.population);
    for genome in seeds {
        if population.len() == config.population {
            break;
        }
        if !population.contains(&genome) {
            population.push(genome);
        }
    }
    while population.len() < config.population {
        population.push(random_genome(
            rng,
            highest,
            config.levels.len(),
            config.random_seed_spread,
        ));
    }
    population
}

/// A share of pruned genes and a centre level, both drawn uniformly; each gene is pruned with
/// that probability, at a level up to `spread` away from the centre (uniformly, clamped to the
/// pruned levels), and kept dense otherwise. Random genomes so cover every size from dense to
/// most pruned, and the sparse ones (a few matrices cut, the rest dense) reach the region next
/// to dense where a tight accuracy target leaves the admissible genomes. A gene with fewer
/// levels (`highest`: each gene's highest) is clamped to its own.
fn random_genome(rng: &mut ChaCha8Rng, highest: &[u8], n_levels: usize, spread: u8) -> Genome {
    let last = n_levels.saturating_sub(1) as i64;
    let share: f64 = rng.random_range(0.0..=1.0);
    let centre = rng.random_range(1.min(last)..=last);
    let spread = i64::from(spread);
    Genome(
        highest
            .iter()
            .map(|&gene_last| {
                let pruned = rng.random_bool(share);
                let level = (centre + rng.random_range(-spread..=spread)).clamp(1.min(last), last);
                if pruned {
                    u8::try_from(level).unwrap_or(u8::MAX).min(gene_last)
                } else {
                    0
                }
            })
            .collect(),
    )
}

/// Greedy global water-filling: every matrix starts at the most pruned level; repeatedly the
/// matrix whose next level up removes the most error per extra byte gets it, as long as the
/// total stays within `budget_fraction` of the dense bytes.
///
/// `errors[i][l]` is matrix `i`'s error at level `l` (e.g. the output error e(r) at the level's
/// rank; level 0 is dense) and `bytes[i][l]` its bytes there. Every matrix has the same number
/// of levels (2 to 256). Steps that add no bytes are free and taken first; ties go to the lower
/// matrix index.
pub fn water_filling(
    errors: &[Vec<f64>],
    bytes: &[Vec<f64>],
    budget_fraction: f64,
) -> Result<Genome, SearchError> {
    let n_levels = check_curves(errors, bytes)?;
    if !(budget_fraction.is_finite() && budget_fraction >= 0.0) {
        return Err(SearchError::WaterFilling(format!(
            "the budget fraction {budget_fraction} is not a finite number ≥ 0"
        )));
    }
    let last = n_levels - 1;
    let dense: f64 = bytes.iter().map(|b| b[0]).sum();
    let budget = budget_fraction * dense * (1.0 + 1e-12);
    let mut levels = vec![last; errors.len()];
    let mut used: f64 = bytes.iter().map(|b| b[last]).sum();
    loop {
        let mut chosen: Option<(usize, f64)> = None;
        for (i, &level) in levels.iter().enumerate() {
            if level == 0 {
                continue;
            }
            let extra = bytes[i][level - 1] - bytes[i][level];
            if used + extra.max(0.0) > budget {
                continue;
            }
            let gain = errors[i][level] - errors[i][level - 1];
            let ratio = if extra <= 0.0 {
                f64::INFINITY
            } else {
                gain / extra
            };
            if chosen.is_none_or(|(_, best)| ratio > best) {
                chosen = Some((i, ratio));
            }
        }
        let Some((i, _)) = chosen else { break };
        used += (bytes[i][levels[i] - 1] - bytes[i][levels[i]]).max(0.0);
        levels[i] -= 1;
    }
    Ok(Genome(
        levels
            .into_iter()
            .map(|l| u8::try_from(l).unwrap_or(u8::MAX))
            .collect(),
    ))
}

/// One [`water_filling`] genome per budget fraction, duplicates dropped.
pub fn water_filling_seeds(
    errors: &[Vec<f64>],
    bytes: &[Vec<f64>],
    budget_fractions: &[f64],
) -> Result<Vec<Genome>, SearchError> {
    let mut seeds: Vec<Genome> = Vec::with_capacity(budget_fractions.len());
    for &fraction in budget_fractions {
        let genome = water_filling(errors, bytes, fraction)?;
        if !seeds.contains(&genome) {
            seeds.push(genome);
        }
    }
    Ok(seeds)
}

/// The common number of levels of the curves, after checking their shapes and values.
fn check_curves(errors: &[Vec<f64>], bytes: &[Vec<f64>]) -> Result<usize, SearchError> {
    let fail = |reason: String| Err(SearchError::WaterFilling(reason));
    if errors.len() != bytes.len() {
        return fail(format!(
            "{} error curves but {} byte curves",
            errors.len(),
            bytes.len()
        ));
    }
    let n_levels = errors.first().map_or(2, Vec::len);
    if !(2..=256).contains(&n_levels) {
        return fail(format!("{n_levels} levels, not 2 to 256"));
    }
    for (i, (e, b)) in errors.iter().zip(bytes).enumerate() {
        if e.len() != n_levels || b.len() != n_levels {
            return fail(format!(
                "matrix {i} has {} errors and {} byte counts, not {n_levels}",
                e.len(),
                b.len()
            ));
        }
        if e.iter().any(|x| !x.is_finite()) || b.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return fail(format!("matrix {i} has a non-finite or negative value"));
        }
    }
    Ok(n_levels)
}
