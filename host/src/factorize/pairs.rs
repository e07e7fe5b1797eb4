//! Query/key rotary pairs as a pruning unit that costs nothing to store (DESIGN section 2):
//! every query and key head keeps some of its `head_dim / 2` rotary pairs, the same ones for a
//! key/value head and the query heads that read it, and q and k lose the rows of the others.
//!
//! With interleaved rotary embeddings pair `i` of a head is the lanes `2i`, `2i + 1`, rotated
//! by an angle proportional to the position. A query-key product is the sum over pairs of
//! `Re(q̄_i k_i e^{iθ_i (n−m)})`, whose magnitude is at most `|q_i| |k_i|`; dropping a pair
//! removes exactly its term, whatever the positions. Its expected magnitude is bounded by
//! `√(E|q_i|² · E|k_i|²)` (Cauchy–Schwarz), and both second moments are read off the
//! calibration statistics of the block's attention input `x` (`E|q_i|² = Σ_r w_rᵀ C w_r` over
//! q's two rows of the pair, `C = E[x xᵀ]`). A key/value head's pairs are ranked by that bound
//! summed over its query heads; keeping `p` pairs keeps the first `p` of the order. There is no
//! closed form for the softmax's output, so this is a ranking, not a refit.

use faer::{Mat, MatRef, Par};

use super::dense::{from_row_major, product};
use super::values::check_layout;
use super::{FactorizeError, Statistic, check_square, check_weight};

/// Every key/value head's rotary pairs, most important first, and their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct PairOrder {
    /// Per key/value head, the pair indices by descending score.
    pub orders: Vec<Vec<usize>>,
    /// Per key/value head, the score of each pair (by pair index): `Σ_h √(E|q_{h,i}|²
    /// E|k_i|²)` over the head's query heads.
    pub scores: Vec<Vec<f64>>,
}

impl PairOrder {
    /// The pairs each key/value head keeps at `pairs` per head (its first `pairs` of the
    /// order), ascending, as the bundle stores them.
    pub fn lists(&self, pairs: usize) -> Vec<Vec<u16>> {
        self.orders
            .iter()
            .map(|order| {
                let mut kept: Vec<u16> = order
                    .iter()
                    .take(pairs)
                    .map(|&pair| u16::try_from(pair).unwrap_or(u16::MAX))
                    .collect();
                kept.sort_unstable();
                kept
            })
            .collect()
    }

    /// The share of the summed scores the dropped pairs carry at `pairs` per head (0 when
    /// every pair is kept): a bound-based stand-in for the error, for reports.
    pub fn dropped_share(&self, pairs: usize) -> f64 {
        let total: f64 = self.scores.iter().flatten().sum();
        let kept: f64 = self
            .orders
            .iter()
            .zip(&self.scores)
            .map(|(order, scores)| order.iter().take(pairs).map(|&i| scores[i]).sum::<f64>())
            .sum();
        match total > 0.0 {
            true => (1.0 - kept / total).max(0.0),
            false => 0.0,
        }
    }
}

/// Orders the rotary pairs of a grouped-query attention block: `q` is `(n_heads·head_dim) ×
/// hidden` and `k` `(n_kv_heads·head_dim) × hidden`, both row-major (interleaved pairs, as
/// GGUF stores them), and `input_second_moment` is `C = E[x xᵀ]` of their input, `hidden`
/// square.
pub fn order_rotary_pairs(
    q: &[f32],
    k: &[f32],
    input_second_moment: MatRef<'_, f64>,
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<PairOrder, FactorizeError> {
    let (kv_dim, q_dim) = check_layout(hidden, n_heads, n_kv_heads, head_dim)?;
    if !head_dim.is_multiple_of(2) {
        return Err(FactorizeError::HeadLayout {
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
        });
    }
    check_weight(q, q_dim, hidden)?;
    check_weight(k, kv_dim, hidden)?;
    let c = input_second_moment;
    check_square(c, hidden, Statistic::SecondMoment)?;
    // E|w_r x|² = w_rᵀ C w_r for every row: the row sums of (W C) ⊙ W.
    let energies = |w: &[f32], rows: usize| -> Vec<f64> {
        let w = from_row_major(w, rows, hidden);
        let wc: Mat<f64> = product(w.as_ref(), c, Par::Seq);
        (0..rows)
            .map(|r| {
                (0..hidden)
                    .map(|j| wc[(r, j)] * w[(r, j)])
                    .sum::<f64>()
                    .max(0.0)
            })
            .collect()
    };
    let (q_energy, k_energy) = (energies(q, q_dim), energies(k, kv_dim));
    let half = head_dim / 2;
    let pair = |energy: &[f64], head: usize, i: usize| {
        energy[head * head_dim + 2 * i] + energy[head * head_dim + 2 * i + 1]
    };
    let group_size = n_heads / n_kv_heads;
    let mut orders = Vec::with_capacity(n_kv_heads);
    let mut all_scores = Vec::with_capacity(n_kv_heads);
    for group in 0..n_kv_heads {
        let scores: Vec<f64> = (0..half)
            .map(|i| {
                let key = pair(&k_energy, group, i).sqrt();
                (group * group_size..(group + 1) * group_size)
                    .map(|h| pair(&q_energy, h, i).sqrt() * key)
                    .sum()
            })
            .collect();
        let mut order: Vec<usize> = (0..half).collect();
        // Descending score, ties by index, so the order is deterministic.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        orders.push(order);
        all_scores.push(scores);
    }
    Ok(PairOrder {
        orders,
        scores: all_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two query heads on one key/value head of four lanes (two pairs), identity statistics:
    /// the pair whose rows carry more weight in both q and k comes first.
    #[test]
    fn the_pair_with_the_larger_bound_comes_first() -> Result<(), FactorizeError> {
        let hidden = 4;
        let c = Mat::<f64>::identity(hidden, hidden);
        // q: two heads × 4 lanes; pair 1 (lanes 2, 3) is large in both heads.
        let mut q = vec![0.0f32; 8 * hidden];
        let mut k = vec![0.0f32; 4 * hidden];
        for (row, value) in [(0, 0.1), (1, 0.1), (2, 2.0), (3, 2.0)] {
            q[row * hidden + row] = value;
            q[(4 + row) * hidden + row] = value;
            k[row * hidden + row] = 1.0;
        }
        let order = order_rotary_pairs(&q, &k, c.as_ref(), hidden, 2, 1, 4)?;
        assert_eq!(order.orders, vec![vec![1, 0]]);
        // Pair i's score: 2 heads × √(2·w_q²) · √(2·w_k²).
        let expected = [
            2.0 * (0.02f64).sqrt() * 2f64.sqrt(),
            2.0 * 8f64.sqrt() * 2f64.sqrt(),
        ];
        for (got, want) in order.scores[0].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(order.lists(1), vec![vec![1]]);
        assert_eq!(order.lists(2), vec![vec![0, 1]]);
        assert!(order.dropped_share(2).abs() < 1e-12);
        let share = order.dropped_share(1);
        assert!((share - expected[0] / (expected[0] + expected[1])).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn bad_layouts_are_refused() {
        let c = Mat::<f64>::identity(4, 4);
        let q = vec![0.0f32; 16];
        // An odd head has no whole pairs; k of the wrong size.
        assert!(matches!(
            order_rotary_pairs(&q[..12], &q[..12], c.as_ref(), 4, 1, 1, 3),
            Err(FactorizeError::HeadLayout { .. })
        ));
        assert!(order_rotary_pairs(&q, &q[..8], c.as_ref(), 4, 1, 1, 4).is_err());
    }
}
