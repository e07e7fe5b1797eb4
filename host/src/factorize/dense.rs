//! Thin wrappers over faer's dense kernels with an explicit [`Par`], so that one matrix per rayon
//! worker runs faer sequentially (faer's own `Mat::self_adjoint_eigen` and friends read the
//! global parallelism setting instead).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::{cholesky, evd, matmul, svd, triangular_solve};
use faer::{Accum, Mat, MatRef, Par};

use super::{Decomposition, FactorizeError};

/// `lhs · rhs`.
pub(super) fn product(lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let mut out = Mat::zeros(lhs.nrows(), rhs.ncols());
    matmul::matmul(out.as_mut(), Accum::Replace, lhs, rhs, 1.0, par);
    out
}

/// `A = V diag(values) Vᵀ`, values descending.
pub(super) struct SymmetricEigen {
    pub(super) values: Vec<f64>,
    /// The eigenvectors as columns, matching `values`.
    pub(super) vectors: Mat<f64>,
}

/// Eigendecomposition of a symmetric matrix (lower triangle read).
pub(super) fn symmetric_eigen_descending(
    a: MatRef<'_, f64>,
    par: Par,
) -> Result<SymmetricEigen, FactorizeError> {
    let n = a.nrows();
    let mut values = faer::diag::Diag::<f64>::zeros(n);
    let mut vectors = Mat::<f64>::zeros(n, n);
    let scratch = evd::self_adjoint_evd_scratch::<f64>(
        n,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    );
    evd::self_adjoint_evd(
        a,
        values.as_mut(),
        Some(vectors.as_mut()),
        par,
        MemStack::new(&mut MemBuffer::new(scratch)),
        Default::default(),
    )
    .map_err(|_| FactorizeError::Decomposition {
        decomposition: Decomposition::SymmetricEigen,
        rows: n,
        cols: n,
    })?;
    let descending: Vec<usize> = (0..n).rev().collect();
    Ok(SymmetricEigen {
        values: descending
            .iter()
            .map(|&i| values.column_vector()[i])
            .collect(),
        vectors: Mat::from_fn(n, n, |i, j| vectors[(i, descending[j])]),
    })
}

/// `A = P diag(σ) Qᵀ` with k = min(m, n) components, σ descending.
pub(super) struct ThinSvd {
    pub(super) sigma: Vec<f64>,
    /// P, m × k.
    pub(super) left: Mat<f64>,
    /// Q, n × k.
    pub(super) right: Mat<f64>,
}

/// Thin SVD of `a` (m×n).
pub(super) fn thin_svd(a: MatRef<'_, f64>, par: Par) -> Result<ThinSvd, FactorizeError> {
    let (m, n) = a.shape();
    let k = m.min(n);
    let mut sigma = faer::diag::Diag::<f64>::zeros(k);
    let mut p = Mat::<f64>::zeros(m, k);
    let mut q = Mat::<f64>::zeros(n, k);
    let scratch = svd::svd_scratch::<f64>(
        m,
        n,
        svd::ComputeSvdVectors::Thin,
        svd::ComputeSvdVectors::Thin,
        par,
        Default::default(),
    );
    svd::svd(
        a,
        sigma.as_mut(),
        Some(p.as_mut()),
        Some(q.as_mut()),
        par,
        MemStack::new(&mut MemBuffer::new(scratch)),
        Default::default(),
    )
    .map_err(|_| FactorizeError::Decomposition {
        decomposition: Decomposition::Svd,
        rows: m,
        cols: n,
    })?;
    Ok(ThinSvd {
        sigma: (0..k).map(|i| sigma.column_vector()[i]).collect(),
        left: p,
        right: q,
    })
}

/// Relative ridges δ tried in turn by [`regularized_cholesky`] after the unregularized attempt.
const RIDGE_LADDER: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// Smallest accepted pivot `L_ii²` relative to the mean diagonal `tr(C)/n`; below it `C` is
/// numerically singular and a ridge is added.
const MIN_RELATIVE_PIVOT: f64 = 1e-12;

/// A Cholesky factor of `C + ridge·I`.
pub(super) struct RidgedCholesky {
    /// Lower-triangular `L` with `L Lᵀ = C + ridge·I`.
    pub(super) lower: Mat<f64>,
    /// The relative ridge δ used (0 when none was needed); the absolute ridge is `δ·tr(C)/n`.
    pub(super) relative_ridge: f64,
}

/// Cholesky factor of the symmetric positive semi-definite `c` (lower triangle read), adding the
/// smallest ridge `δ·tr(C)/n` of the ladder that makes every pivot clearly positive.
/// `rank_deficient` skips the unregularized attempt (the caller knows `C` is singular).
pub(super) fn regularized_cholesky(
    c: MatRef<'_, f64>,
    rank_deficient: bool,
    par: Par,
) -> Result<RidgedCholesky, FactorizeError> {
    let n = c.nrows();
    let trace: f64 = (0..n).map(|i| c[(i, i)]).sum();
    let scale = if trace > 0.0 { trace / n as f64 } else { 1.0 };
    let first = if rank_deficient { None } else { Some(0.0) };
    for relative_ridge in first.into_iter().chain(RIDGE_LADDER) {
        let ridge = relative_ridge * scale;
        let lower = Mat::from_fn(n, n, |i, j| {
            if i < j {
                0.0
            } else if i == j {
                c[(i, j)] + ridge
            } else {
                c[(i, j)]
            }
        });
        let Some(lower) = cholesky_lower(lower, par) else {
            continue;
        };
        let pivots_ok = (0..n).all(|i| {
            let pivot = lower[(i, i)];
            pivot.is_finite() && pivot * pivot >= MIN_RELATIVE_PIVOT * scale
        });
        if pivots_ok {
            return Ok(RidgedCholesky {
                lower,
                relative_ridge,
            });
        }
    }
    Err(FactorizeError::Decomposition {
        decomposition: Decomposition::Cholesky,
        rows: n,
        cols: n,
    })
}

/// The lower Cholesky factor of the symmetric `c` (its lower triangle read), or `None` when a
/// pivot is not positive.
pub(super) fn cholesky_lower(mut c: Mat<f64>, par: Par) -> Option<Mat<f64>> {
    let n = c.nrows();
    let scratch =
        cholesky::llt::factor::cholesky_in_place_scratch::<f64>(n, par, Default::default());
    cholesky::llt::factor::cholesky_in_place(
        c.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut MemBuffer::new(scratch)),
        Default::default(),
    )
    .ok()?;
    // faer uses the strict upper triangle as workspace.
    for j in 1..n {
        for i in 0..j {
            c[(i, j)] = 0.0;
        }
    }
    Some(c)
}

/// Solves `L · out = rhs` for lower-triangular `L`, in place.
pub(super) fn solve_lower_in_place(lower: MatRef<'_, f64>, rhs: &mut Mat<f64>, par: Par) {
    triangular_solve::solve_lower_triangular_in_place(lower, rhs.as_mut(), par);
}

/// Solves `Lᵀ · out = rhs` for lower-triangular `L`, in place.
pub(super) fn solve_lower_transpose_in_place(lower: MatRef<'_, f64>, rhs: &mut Mat<f64>, par: Par) {
    triangular_solve::solve_upper_triangular_in_place(lower.transpose(), rhs.as_mut(), par);
}

/// Row-major `f32` → `f64` matrix.
pub(super) fn from_row_major(values: &[f32], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| f64::from(values[i * cols + j]))
}

/// The first `cols` columns of `m` as a row-major `f32` vector.
pub(super) fn leading_columns_row_major(m: MatRef<'_, f64>, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * cols);
    for i in 0..m.nrows() {
        out.extend((0..cols).map(|j| m[(i, j)] as f32));
    }
    out
}

/// Tail sums `Σ_{i>r} λ_i / Σ λ_i` for `r = 0..=r_max`, λ descending and non-negative.
/// All zero when Σ λ = 0: a layer with no output energy loses nothing at any rank.
pub(super) fn relative_tail_curve(lambda: &[f64], r_max: usize) -> Vec<f64> {
    let mut tails = vec![0.0; lambda.len() + 1];
    for i in (0..lambda.len()).rev() {
        tails[i] = tails[i + 1] + lambda[i].max(0.0);
    }
    let total = tails[0];
    (0..=r_max)
        .map(|r| {
            let tail = tails.get(r).copied().unwrap_or(0.0);
            if total > 0.0 { tail / total } else { 0.0 }
        })
        .collect()
}
