//! Greedy removal after the search: genes of the answer that may each be set to one level (a
//! sub-block skipped) are screened alone on the quarter split, then added one at a time, best
//! screened first, while the combined genome stays admissible on the full split.

use super::{Genome, Problem, Stage};

/// What [`greedy_moves`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct GreedyMoves {
    /// The answer with every kept move.
    pub genome: Genome,
    /// Moves screened on the quarter split.
    pub screened: usize,
    /// Moves tried on the full split.
    pub tried: usize,
    /// The names of the kept moves, in the order they were kept.
    pub kept: Vec<String>,
}

/// Each move `(gene, name)` sets `gene` of `answer` to `level`. The moves are screened alone on
/// the quarter split; those at or above `target` there, best first and at most `max_tries`,
/// are added to the answer one at a time, each kept when the combined genome assures `target`
/// on the full split within the budgets. `on_try(name, assured, kept)` sees every try.
pub fn greedy_moves<P: Problem + ?Sized>(
    problem: &mut P,
    answer: &Genome,
    moves: &[(usize, String)],
    level: u8,
    target: f64,
    max_tries: usize,
    mut on_try: impl FnMut(&str, f64, bool),
) -> anyhow::Result<GreedyMoves> {
    let moved = |genome: &Genome, gene: usize| {
        let mut genome = genome.clone();
        if let Some(slot) = genome.0.get_mut(gene) {
            *slot = level;
        }
        genome
    };
    let singles: Vec<Genome> = moves.iter().map(|&(gene, _)| moved(answer, gene)).collect();
    let screened = problem.evaluate(&singles, Stage::Quarter)?;
    let mut order: Vec<(&(usize, String), f64)> = moves
        .iter()
        .zip(&screened)
        .map(|(m, evaluation)| (m, evaluation.accuracy))
        .filter(|&(_, accuracy)| accuracy >= target)
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut result = GreedyMoves {
        genome: answer.clone(),
        screened: singles.len(),
        tried: 0,
        kept: Vec::new(),
    };
    for ((gene, name), _) in order.into_iter().take(max_tries) {
        let candidate = moved(&result.genome, *gene);
        result.tried += 1;
        let assured = problem
            .evaluate(std::slice::from_ref(&candidate), Stage::Full)?
            .first()
            .map_or(f64::NEG_INFINITY, |e| e.accuracy);
        let kept = assured >= target && problem.cost(&candidate).is_within_budget();
        on_try(name, assured, kept);
        if kept {
            result.genome = candidate;
            result.kept.push(name.clone());
        }
    }
    Ok(result)
}
