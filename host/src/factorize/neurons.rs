//! MLP neurons as a pruning unit that costs nothing to store (DESIGN section 2): keep `r` of
//! the MLP's neurons — rows of gate and up, columns of down — and refit down on the kept
//! neurons' activations, so the block's **output** stays as close as least squares allows.
//!
//! With `C = E[h hᵀ]` the second moment of down's input `h` (the gated activations) and `S`
//! the kept neurons, the best down on `h_S` is the Nyström form `W C[:,S] C[S,S]⁻¹`, and the
//! output error it leaves is `tr(W (C − C[:,S] C[S,S]⁻¹ C[S,:]) Wᵀ)`. The neurons are chosen
//! greedily by the drop in that error (a pivoted Cholesky of `C` whose pivot is the column
//! that most reduces the *output* error, not the input variance): the first `r` picks are the
//! kept set for width `r`, so one selection serves every width, and the error of every width
//! comes with it.

use faer::{Mat, MatRef, Par};

use super::dense::{
    cholesky_lower, from_row_major, leading_columns_row_major, product, solve_lower_in_place,
    solve_lower_transpose_in_place,
};
use super::{Decomposition, FactorizeError, Statistic, check_square, check_weight};

/// A greedy, output-aligned order of an MLP's neurons with what the refit of down needs.
#[derive(Debug, Clone)]
pub struct NeuronSelection {
    /// Neurons in the order they are kept: width `r` keeps the first `r`.
    pub order: Vec<usize>,
    /// `e(r)`, the relative squared output error of down on the calibration statistics when
    /// the first `r` neurons are kept and down refitted, for `r = 0..=order.len()`.
    pub error_curve: Vec<f64>,
    /// `W L`: `rows × order.len()`, `L` the pivoted Cholesky columns of `C`.
    weighted: Mat<f64>,
    /// `L` at the kept rows, `order.len()` square and lower triangular.
    pivots: Mat<f64>,
}

/// Relative ridge added to `C`'s diagonal, so that a neuron that never fires (or two that
/// always fire together) cannot make the refit singular.
const RIDGE: f64 = 1e-8;

/// Orders the `cols` neurons of `down` (`rows × cols`, row-major; `C` its input second moment)
/// and prepares refits up to `max_width` neurons.
pub fn select_neurons(
    down: &[f32],
    rows: usize,
    cols: usize,
    second_moment: MatRef<'_, f64>,
    max_width: usize,
) -> Result<NeuronSelection, FactorizeError> {
    check_weight(down, rows, cols)?;
    check_square(second_moment, cols, Statistic::SecondMoment)?;
    let max_width = max_width.min(cols);
    let w = from_row_major(down, rows, cols);
    let (c, ridge) = ridged(second_moment);
    // G = W R, R the residual second moment (C at the start); its column j, scaled by
    // 1/√R_jj, is what keeping neuron j adds to the explained output. Columns are stored
    // contiguously (column-major) for the rank-one updates.
    let g_mat = product(w.as_ref(), c.as_ref(), Par::Seq);
    let total: f64 = (0..cols)
        .map(|j| (0..rows).map(|i| g_mat[(i, j)] * w[(i, j)]).sum::<f64>())
        .sum();
    let mut g: Vec<f64> = (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| g_mat[(i, j)])
        .collect();
    drop(g_mat);
    let mut residual: Vec<f64> = (0..cols).map(|j| c[(j, j)]).collect();
    // L, column t at `lower[t·cols..]`; W L, column t at `weighted[t·rows..]`.
    let mut lower = vec![0.0f64; cols * max_width];
    let mut weighted = vec![0.0f64; rows * max_width];
    let mut order = Vec::with_capacity(max_width);
    let mut kept = vec![false; cols];
    let mut explained = 0.0;
    let mut error_curve = Vec::with_capacity(max_width + 1);
    error_curve.push(1.0);
    let floor = ridge.max(f64::MIN_POSITIVE);
    let mut l = vec![0.0f64; cols];
    for step in 0..max_width {
        let mut best = None;
        let mut best_gain = -1.0;
        for j in (0..cols).filter(|&j| !kept[j] && residual[j] > floor) {
            let column = &g[j * rows..(j + 1) * rows];
            let gain = column.iter().map(|v| v * v).sum::<f64>() / residual[j];
            if gain > best_gain {
                best_gain = gain;
                best = Some(j);
            }
        }
        let Some(pick) = best else {
            break;
        };
        let pivot = residual[pick].sqrt();
        // l = (C[:, pick] − L L[pick, :]ᵀ) / √R_pp, the next Cholesky column.
        for (i, li) in l.iter_mut().enumerate() {
            *li = c[(i, pick)];
        }
        for t in 0..step {
            let column = &lower[t * cols..(t + 1) * cols];
            let coefficient = column[pick];
            if coefficient != 0.0 {
                for (li, &lt) in l.iter_mut().zip(column) {
                    *li -= lt * coefficient;
                }
            }
        }
        for li in &mut l {
            *li /= pivot;
        }
        let gk = &mut weighted[step * rows..(step + 1) * rows];
        for (gi, &v) in gk.iter_mut().zip(&g[pick * rows..(pick + 1) * rows]) {
            *gi = v / pivot;
        }
        for (j, &lj) in l.iter().enumerate() {
            if lj != 0.0 {
                for (gij, &gi) in g[j * rows..(j + 1) * rows].iter_mut().zip(gk.iter()) {
                    *gij -= gi * lj;
                }
            }
            residual[j] -= lj * lj;
        }
        lower[step * cols..(step + 1) * cols].copy_from_slice(&l);
        kept[pick] = true;
        residual[pick] = 0.0;
        order.push(pick);
        explained += best_gain;
        error_curve.push(if total > 0.0 {
            ((total - explained) / total).max(0.0)
        } else {
            0.0
        });
    }
    let k = order.len();
    let pivots = Mat::from_fn(k, k, |s, t| match t <= s {
        true => lower[t * cols + order[s]],
        false => 0.0,
    });
    let weighted = Mat::from_fn(rows, k, |i, t| weighted[t * rows + i]);
    Ok(NeuronSelection {
        order,
        error_curve,
        weighted,
        pivots,
    })
}

/// `C` with [`RIDGE`] (relative to its mean diagonal) added to the diagonal, and that ridge.
fn ridged(second_moment: MatRef<'_, f64>) -> (Mat<f64>, f64) {
    let cols = second_moment.ncols();
    let ridge = RIDGE * (0..cols).map(|j| second_moment[(j, j)]).sum::<f64>() / cols.max(1) as f64;
    let c = Mat::from_fn(cols, cols, |i, j| {
        second_moment[(i, j)] + if i == j { ridge } else { 0.0 }
    });
    (c, ridge)
}

impl NeuronSelection {
    /// The selection [`select_neurons`] made, rebuilt from its `order` and `error_curve`
    /// (e.g. read from a cache) without the greedy search: `L[S,S]` is the Cholesky factor of
    /// `C[S,S]` (the pivoted Cholesky in pick order) and `W L = W C[:,S] L[S,S]⁻ᵀ`.
    pub fn from_order(
        down: &[f32],
        rows: usize,
        cols: usize,
        second_moment: MatRef<'_, f64>,
        order: Vec<usize>,
        error_curve: Vec<f64>,
    ) -> Result<Self, FactorizeError> {
        check_weight(down, rows, cols)?;
        check_square(second_moment, cols, Statistic::SecondMoment)?;
        let mut seen = vec![false; cols];
        let distinct = order
            .iter()
            .all(|&j| j < cols && !std::mem::replace(&mut seen[j], true));
        if !distinct || error_curve.len() != order.len() + 1 {
            return Err(FactorizeError::NeuronOrder {
                len: order.len(),
                curve: error_curve.len(),
                cols,
            });
        }
        let (c, _) = ridged(second_moment);
        let k = order.len();
        let kept = Mat::from_fn(k, k, |s, t| c[(order[s], order[t])]);
        let Some(pivots) = cholesky_lower(kept, Par::Seq) else {
            return Err(FactorizeError::Decomposition {
                decomposition: Decomposition::Cholesky,
                rows: k,
                cols: k,
            });
        };
        let w = from_row_major(down, rows, cols);
        let columns = Mat::from_fn(cols, k, |i, t| c[(i, order[t])]);
        // (W L)ᵀ = L[S,S]⁻¹ (W C[:,S])ᵀ.
        let mut weighted_t = product(w.as_ref(), columns.as_ref(), Par::Seq)
            .transpose()
            .to_owned();
        solve_lower_in_place(pivots.as_ref(), &mut weighted_t, Par::Seq);
        Ok(Self {
            order,
            error_curve,
            weighted: weighted_t.transpose().to_owned(),
            pivots,
        })
    }

    /// The most neurons a refit is prepared for.
    pub fn max_width(&self) -> usize {
        self.order.len()
    }

    /// The neurons width `width` keeps, in selection order.
    pub fn kept(&self, width: usize) -> &[usize] {
        &self.order[..width.min(self.order.len())]
    }

    /// Down refitted on the first `width` kept neurons, `rows × width` row-major, its columns
    /// in [`Self::kept`] order: `W C[:,S] C[S,S]⁻¹ = (W L_S)(L[S,S])⁻¹`.
    pub fn refit_down(&self, width: usize) -> Vec<f32> {
        let width = width.min(self.order.len());
        let pivots = self.pivots.as_ref().submatrix(0, 0, width, width);
        // X L_SS = W L  ⇔  L_SSᵀ Xᵀ = (W L)ᵀ.
        let mut transposed = self
            .weighted
            .as_ref()
            .subcols(0, width)
            .transpose()
            .to_owned();
        solve_lower_transpose_in_place(pivots, &mut transposed, Par::Seq);
        leading_columns_row_major(transposed.transpose(), width)
    }
}
