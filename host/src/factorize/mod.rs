//! Low-rank factorization of a linear layer's weight `W` (m×n, `y = W x`) into `B · A`
//! (DESIGN §2): output-aligned projection and the three baselines it is compared against.
//!
//! Pure mathematics on row-major `f32` slices; the decompositions are faer's, computed in f64.
//! One decomposition per matrix serves every rank: the rank-r factors are the first r columns of
//! `B` and the first r rows of `A`. faer runs sequentially inside one factorization;
//! [`factorize_all`] runs one matrix per rayon worker.
//!
//! ```
//! use whittle_host::factorize::{factorize, InputStats, Method};
//!
//! let (rows, cols) = (2, 3);
//! let weight = [1.0, 2.0, 0.0, 0.0, 1.0, 1.0];
//! let stats = InputStats {
//!     second_moment: faer::Mat::<f64>::identity(cols, cols),
//!     abs_sum: vec![1.0; cols],
//!     n_tokens: 3,
//! };
//! let factors = factorize(&weight, rows, cols, &stats, Method::OutputAligned, 2)?;
//! assert_eq!(factors.error_curve.as_ref().map(|e| e[0]), Some(1.0));
//! # Ok::<(), whittle_host::factorize::FactorizeError>(())
//! ```

mod dense;
mod methods;
mod neurons;
mod pairs;
mod refit;
mod rounding;
#[cfg(test)]
mod tests;
mod values;

use std::fmt;
use std::str::FromStr;

use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

pub use neurons::{NeuronSelection, select_neurons};
pub use pairs::{PairOrder, order_rotary_pairs};
pub use refit::refit;
pub use rounding::{InverseFactor, round_compensated};
pub use values::{ValueProjection, project_values};

/// A prunable matrix's factorization method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `M = U_r U_rᵀ W`, `U` the eigenvectors of `W C Wᵀ`: the optimum for the layer's outputs.
    OutputAligned,
    /// Data-free truncated SVD of `W`.
    Svd,
    /// `M = W V_r V_rᵀ`, `V` the eigenvectors of the input second moment `C`.
    InputPca,
    /// SVD of `W diag(s)`, `s_j = (mean |x_j|)^½`, scaling undone (ASVD-style).
    Asvd,
}

impl Method {
    /// Every method, output-aligned first.
    pub const ALL: [Method; 4] = [
        Method::OutputAligned,
        Method::Svd,
        Method::InputPca,
        Method::Asvd,
    ];

    /// The method's name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Method::OutputAligned => "output_aligned",
            Method::Svd => "svd",
            Method::InputPca => "input_pca",
            Method::Asvd => "asvd",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = FactorizeError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|method| method.name() == name)
            .ok_or_else(|| FactorizeError::UnknownMethod {
                name: name.to_owned(),
            })
    }
}

/// Statistics of a linear layer's input over `n_tokens` calibration tokens.
#[derive(Debug, Clone)]
pub struct InputStats {
    /// `C = Σ x xᵀ` (n×n, symmetric; the lower triangle is read).
    pub second_moment: Mat<f64>,
    /// `Σ |x_j|` per input coordinate.
    pub abs_sum: Vec<f64>,
    /// Number of tokens accumulated.
    pub n_tokens: u64,
}

/// `W ≈ B · A` for every rank `r ≤ r_max`: the rank-r factors are the first r columns of `B` and
/// the first r rows of `A`.
#[derive(Debug, Clone)]
pub struct Factors {
    /// The method that produced the factors.
    pub method: Method,
    /// m, the layer's output dimension.
    pub rows: usize,
    /// n, the layer's input dimension.
    pub cols: usize,
    /// The largest rank the factors hold.
    pub r_max: usize,
    /// `B`, m × r_max, row-major.
    pub b: Vec<f32>,
    /// `A`, r_max × n, row-major.
    pub a: Vec<f32>,
    /// Output-aligned only: `e(r) = Σ_{i>r} λ_i / Σ λ_i` for `r = 0..=r_max`, the relative squared
    /// output error on the calibration statistics (ridged, when a ridge was needed).
    pub error_curve: Option<Vec<f64>>,
    /// Conditions the caller should report (too few tokens, ridge added, scales floored).
    pub warnings: Vec<String>,
}

impl Factors {
    /// Converts the leading `r_max` columns of `b` (m×k) and `a_transpose` (n×k) to row-major f32.
    fn from_columns(
        method: Method,
        b: MatRef<'_, f64>,
        a_transpose: MatRef<'_, f64>,
        r_max: usize,
        error_curve: Option<Vec<f64>>,
        warnings: Vec<String>,
    ) -> Self {
        let (rows, cols) = (b.nrows(), a_transpose.nrows());
        let b_values = dense::leading_columns_row_major(b, r_max);
        let a_values =
            dense::leading_columns_row_major(a_transpose.subcols(0, r_max).transpose(), cols);
        Factors {
            method,
            rows,
            cols,
            r_max,
            b: b_values,
            a: a_values,
            error_curve,
            warnings,
        }
    }

    /// The rank-`rank` factors `(B_r, A_r)`: m×rank and rank×n, row-major.
    pub fn truncated(&self, rank: usize) -> Result<(Vec<f32>, Vec<f32>), FactorizeError> {
        if rank > self.r_max {
            return Err(FactorizeError::RankAboveStored {
                rank,
                r_max: self.r_max,
            });
        }
        if self.b.len() != self.rows * self.r_max || self.a.len() != self.r_max * self.cols {
            return Err(FactorizeError::FactorsShape {
                rows: self.rows,
                cols: self.cols,
                r_max: self.r_max,
            });
        }
        let b = if rank == 0 {
            Vec::new()
        } else {
            self.b
                .chunks_exact(self.r_max)
                .flat_map(|row| &row[..rank])
                .copied()
                .collect()
        };
        let a = self.a[..rank * self.cols].to_vec();
        Ok((b, a))
    }
}

/// Factorizes `weight` (`rows`×`cols`, row-major) with `method`, keeping ranks up to `r_max`
/// (`1 ≤ r_max ≤ min(rows, cols)`). `stats` describe the layer's input (ignored by
/// [`Method::Svd`] apart from its shape).
pub fn factorize(
    weight: &[f32],
    rows: usize,
    cols: usize,
    stats: &InputStats,
    method: Method,
    r_max: usize,
) -> Result<Factors, FactorizeError> {
    check_weight(weight, rows, cols)?;
    check_square(stats.second_moment.as_ref(), cols, Statistic::SecondMoment)?;
    if stats.abs_sum.len() != cols || stats.abs_sum.iter().any(|v| !v.is_finite()) {
        return Err(FactorizeError::BadStatistics {
            statistic: Statistic::AbsSum,
            dim: cols,
        });
    }
    check_rank(r_max, rows, cols)?;
    let w = dense::from_row_major(weight, rows, cols);
    let decomposed = methods::decompose(w.as_ref(), stats, method, r_max, Par::Seq)?;
    Ok(Factors::from_columns(
        method,
        decomposed.b.as_ref(),
        decomposed.a_transpose.as_ref(),
        r_max,
        decomposed.error_curve,
        decomposed.warnings,
    ))
}

/// One matrix for [`factorize_all`].
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The weight, `rows`×`cols`, row-major.
    pub weight: &'a [f32],
    /// m.
    pub rows: usize,
    /// n.
    pub cols: usize,
    /// The layer input's statistics (shared by matrices reading the same input).
    pub stats: &'a InputStats,
    /// The factorization method.
    pub method: Method,
    /// The largest rank to keep.
    pub r_max: usize,
}

/// Runs [`factorize`] on every job, one matrix per rayon worker, results in job order.
pub fn factorize_all(jobs: &[Job<'_>]) -> Vec<Result<Factors, FactorizeError>> {
    jobs.par_iter()
        .map(|job| {
            factorize(
                job.weight, job.rows, job.cols, job.stats, job.method, job.r_max,
            )
        })
        .collect()
}

/// Relative output error `||W X − B_r A_r X||_F / ||W X||_F` in closed form from held-out
/// statistics `C_t = X Xᵀ` (n×n): `sqrt(tr(D C_t Dᵀ) / tr(W C_t Wᵀ))`, `D = W − B_r A_r`.
/// 0 when both traces are 0; infinite when only the denominator is.
pub fn relative_output_error(
    weight: &[f32],
    factors: &Factors,
    rank: usize,
    held_out: &Mat<f64>,
) -> Result<f64, FactorizeError> {
    let (rows, cols) = (factors.rows, factors.cols);
    check_weight(weight, rows, cols)?;
    check_square(held_out.as_ref(), cols, Statistic::HeldOutSecondMoment)?;
    let (b, a) = factors.truncated(rank)?;
    let par = Par::Seq;
    let w = dense::from_row_major(weight, rows, cols);
    let approximation = dense::product(
        dense::from_row_major(&b, rows, rank).as_ref(),
        dense::from_row_major(&a, rank, cols).as_ref(),
        par,
    );
    let difference = &w - &approximation;
    let quadratic_form = |d: MatRef<'_, f64>| -> f64 {
        let dc = dense::product(d, held_out.as_ref(), par);
        (0..rows)
            .flat_map(|i| (0..cols).map(move |j| (i, j)))
            .map(|(i, j)| dc[(i, j)] * d[(i, j)])
            .sum::<f64>()
            .max(0.0)
    };
    let error = quadratic_form(difference.as_ref());
    let signal = quadratic_form(w.as_ref());
    Ok(if error == 0.0 {
        0.0
    } else if signal == 0.0 {
        f64::INFINITY
    } else {
        (error / signal).sqrt()
    })
}

/// Ranks are multiples of this.
const RANK_STEP: usize = 8;

/// The rank for keep fraction `keep` of an m×n matrix: `r = floor(k·m·n/(m+n))` rounded down to a
/// multiple of 8, at least 8. `None` when the matrix stays dense: `keep ≥ 1` (or NaN), or
/// `r·(m+n) ≥ m·n` (factoring would not save). `keep ≤ 0` gives the minimum rank 8.
pub fn rank_for_keep(keep: f64, rows: usize, cols: usize) -> Option<usize> {
    if keep.is_nan() || keep >= 1.0 {
        return None;
    }
    let (dense, per_rank) = (rows.checked_mul(cols)?, rows.checked_add(cols)?);
    if per_rank == 0 {
        return None;
    }
    let ideal = (keep.max(0.0) * dense as f64 / per_rank as f64).floor() as usize;
    let rank = (ideal / RANK_STEP * RANK_STEP).max(RANK_STEP);
    (rank.checked_mul(per_rank)? < dense).then_some(rank)
}

/// The largest rank that still saves parameters: the largest multiple of 8 with
/// `r·(m+n) < m·n`, at least 8.
pub fn max_useful_rank(rows: usize, cols: usize) -> usize {
    let dense = rows.saturating_mul(cols);
    let per_rank = rows.saturating_add(cols);
    if per_rank == 0 {
        return RANK_STEP;
    }
    // The largest r with r·(m+n) < m·n is ceil(m·n/(m+n)) − 1.
    let below = dense.div_ceil(per_rank).saturating_sub(1);
    (below / RANK_STEP * RANK_STEP).max(RANK_STEP)
}

/// A faer decomposition, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decomposition {
    /// Symmetric eigendecomposition.
    SymmetricEigen,
    /// Singular value decomposition.
    Svd,
    /// Cholesky (`L Lᵀ`) factorization, with every ridge tried.
    Cholesky,
}

impl fmt::Display for Decomposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decomposition::SymmetricEigen => "symmetric eigendecomposition",
            Decomposition::Svd => "SVD",
            Decomposition::Cholesky => "Cholesky factorization (even with a ridge)",
        })
    }
}

/// An input statistic, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// The calibration second moment `C`.
    SecondMoment,
    /// The per-coordinate `Σ |x_j|`.
    AbsSum,
    /// The held-out second moment `C_t`.
    HeldOutSecondMoment,
    /// The pruned model's input second moment `C_h`.
    PrunedSecondMoment,
    /// The dense/pruned cross moment `C_xh`.
    CrossMoment,
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Statistic::SecondMoment => "input second moment C",
            Statistic::AbsSum => "input absolute sums",
            Statistic::HeldOutSecondMoment => "held-out second moment",
            Statistic::PrunedSecondMoment => "pruned-input second moment C_h",
            Statistic::CrossMoment => "cross moment C_xh",
        })
    }
}

/// Why a matrix cannot be factorized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactorizeError {
    /// Attention heads that cannot be grouped: every key/value head must serve the same
    /// number of query heads, and no dimension may be zero.
    #[error(
        "{n_heads} query heads over {n_kv_heads} key/value heads of {head_dim} dimensions in a {hidden}-wide model cannot be grouped: the model configuration is damaged; re-fetch the model"
    )]
    HeadLayout {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
        /// Dimensions per head.
        head_dim: usize,
        /// The model's width.
        hidden: usize,
    },
    /// The weight slice does not hold `rows × cols` values.
    #[error(
        "weight has {len} values, not {rows}×{cols}: pass the matrix's own shape (rows = d_out, cols = d_in)"
    )]
    WeightShape {
        len: usize,
        rows: usize,
        cols: usize,
    },
    /// The weight contains NaN or an infinity.
    #[error(
        "weight ({rows}×{cols}) contains NaN or infinite values: the model file or an earlier stage is damaged; re-fetch the model"
    )]
    NonFiniteWeight { rows: usize, cols: usize },
    /// An input statistic has the wrong shape or non-finite values.
    #[error(
        "{statistic} is not finite or not sized for a {dim}-dimensional input: delete the calibration cache and recalibrate"
    )]
    BadStatistics { statistic: Statistic, dim: usize },
    /// The requested rank is 0 or above `min(rows, cols)`.
    #[error(
        "rank {rank} is outside 1..={max} for a {rows}×{cols} matrix: choose it with rank_for_keep or max_useful_rank"
    )]
    Rank {
        rank: usize,
        max: usize,
        rows: usize,
        cols: usize,
    },
    /// A truncation asked for more components than the factors hold.
    #[error("rank {rank} exceeds the {r_max} stored components: factorize with a larger r_max")]
    RankAboveStored { rank: usize, r_max: usize },
    /// The factors' vectors do not match their stated shape.
    #[error(
        "factors claim {rows}×{r_max} and {r_max}×{cols} but their values do not match: rebuild them with factorize"
    )]
    FactorsShape {
        rows: usize,
        cols: usize,
        r_max: usize,
    },
    /// A faer decomposition did not converge.
    #[error(
        "the {decomposition} of a {rows}×{cols} matrix failed: the calibration statistics are extreme or damaged; delete the calibration cache and recalibrate"
    )]
    Decomposition {
        decomposition: Decomposition,
        rows: usize,
        cols: usize,
    },
    /// A stored neuron order that is not an order of distinct neurons of this MLP with one
    /// error per width.
    #[error(
        "a neuron order of {len} entries (with {curve} errors) does not fit an MLP of {cols} neurons: delete the neuron cache and run again"
    )]
    NeuronOrder {
        len: usize,
        curve: usize,
        cols: usize,
    },
    /// A method name that is not one of [`Method::ALL`].
    #[error("unknown factorization method `{name}`: use output_aligned, svd, input_pca or asvd")]
    UnknownMethod { name: String },
}

fn check_weight(weight: &[f32], rows: usize, cols: usize) -> Result<(), FactorizeError> {
    if rows.checked_mul(cols) != Some(weight.len()) {
        return Err(FactorizeError::WeightShape {
            len: weight.len(),
            rows,
            cols,
        });
    }
    if weight.iter().any(|v| !v.is_finite()) {
        return Err(FactorizeError::NonFiniteWeight { rows, cols });
    }
    Ok(())
}

fn check_square(
    matrix: MatRef<'_, f64>,
    dim: usize,
    statistic: Statistic,
) -> Result<(), FactorizeError> {
    if matrix.nrows() != dim || matrix.ncols() != dim || !matrix.is_all_finite() {
        return Err(FactorizeError::BadStatistics { statistic, dim });
    }
    Ok(())
}

fn check_rank(rank: usize, rows: usize, cols: usize) -> Result<(), FactorizeError> {
    let max = rows.min(cols);
    if rank == 0 || rank > max {
        return Err(FactorizeError::Rank {
            rank,
            max,
            rows,
            cols,
        });
    }
    Ok(())
}
