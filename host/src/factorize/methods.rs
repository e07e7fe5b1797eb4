//! The four factorization methods of DESIGN §2, each returning full-width factors in f64 from
//! which every rank is a truncation.

use faer::{Mat, MatRef, Par};

use super::dense::{
    product, regularized_cholesky, relative_tail_curve, symmetric_eigen_descending, thin_svd,
};
use super::{FactorizeError, InputStats, Method};

/// `W ≈ B · A` before truncation, `A` stored transposed: column `i` of `b` and of `a_transpose`
/// is the `i`-th component, most important first.
pub(super) struct Decomposed {
    /// m × k, k ≥ r_max.
    pub(super) b: Mat<f64>,
    /// n × k (A transposed, so both factors truncate by leading columns).
    pub(super) a_transpose: Mat<f64>,
    /// Output-aligned only: `e(r)` for `r = 0..=r_max`.
    pub(super) error_curve: Option<Vec<f64>>,
    pub(super) warnings: Vec<String>,
}

/// How the output-aligned eigenvectors `U` of `S = W C Wᵀ` are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputAlignedRoute {
    /// Eigendecomposition of the m×m `S = (W L)(W L)ᵀ`; cheaper when m ≤ n.
    Eigen,
    /// Thin SVD of the m×n `W L`, `λ = σ²`; cheaper when m > n.
    Svd,
}

impl OutputAlignedRoute {
    pub(super) fn cheaper_for(rows: usize, cols: usize) -> Self {
        if rows > cols { Self::Svd } else { Self::Eigen }
    }
}

/// Runs `method` on validated inputs.
pub(super) fn decompose(
    weight: MatRef<'_, f64>,
    stats: &InputStats,
    method: Method,
    r_max: usize,
    par: Par,
) -> Result<Decomposed, FactorizeError> {
    match method {
        Method::OutputAligned => {
            let route = OutputAlignedRoute::cheaper_for(weight.nrows(), weight.ncols());
            output_aligned(weight, stats, r_max, route, par)
        }
        Method::Svd => data_free_svd(weight, par),
        Method::InputPca => input_pca(weight, stats, r_max, par),
        Method::Asvd => activation_scaled_svd(weight, stats, par),
    }
}

/// The warning for a layer whose input statistics cannot have full rank.
pub(super) fn too_few_tokens_warning(n_tokens: u64, dim: usize) -> Option<String> {
    (n_tokens < dim as u64).then(|| {
        format!(
            "layer input has {n_tokens} tokens for a {dim}-dimensional input; C is rank-deficient: calibrate with more tokens (--calibration-tokens)"
        )
    })
}

/// The warning for a second moment that needed a ridge to be factored.
pub(super) fn ridge_warning(relative_ridge: f64) -> Option<String> {
    (relative_ridge > 0.0).then(|| {
        format!(
            "input second moment is singular or ill-conditioned; added a ridge of {relative_ridge:e}·tr(C)/n to factor it: calibrate with more (and more varied) tokens"
        )
    })
}

/// `S = W C Wᵀ = U Λ Uᵀ`; `B = U`, `A = Uᵀ W`, with `C = L Lᵀ` (ridged when needed).
pub(super) fn output_aligned(
    weight: MatRef<'_, f64>,
    stats: &InputStats,
    r_max: usize,
    route: OutputAlignedRoute,
    par: Par,
) -> Result<Decomposed, FactorizeError> {
    let cols = weight.ncols();
    let token_warning = too_few_tokens_warning(stats.n_tokens, cols);
    let cholesky =
        regularized_cholesky(stats.second_moment.as_ref(), token_warning.is_some(), par)?;
    let weighted = product(weight, cholesky.lower.as_ref(), par);
    let (lambda, u) = match route {
        OutputAlignedRoute::Eigen => {
            let s = product(weighted.as_ref(), weighted.transpose(), par);
            let eigen = symmetric_eigen_descending(s.as_ref(), par)?;
            let lambda: Vec<f64> = eigen.values.into_iter().map(|v| v.max(0.0)).collect();
            (lambda, eigen.vectors)
        }
        OutputAlignedRoute::Svd => {
            let svd = thin_svd(weighted.as_ref(), par)?;
            (svd.sigma.iter().map(|s| s * s).collect(), svd.left)
        }
    };
    let u = u.subcols(0, r_max).to_owned();
    Ok(Decomposed {
        a_transpose: product(weight.transpose(), u.as_ref(), par),
        b: u,
        error_curve: Some(relative_tail_curve(&lambda, r_max)),
        warnings: token_warning
            .into_iter()
            .chain(ridge_warning(cholesky.relative_ridge))
            .collect(),
    })
}

/// `W = P Σ Qᵀ`; `B = P Σ`, `A = Qᵀ`.
fn data_free_svd(weight: MatRef<'_, f64>, par: Par) -> Result<Decomposed, FactorizeError> {
    let svd = thin_svd(weight, par)?;
    Ok(Decomposed {
        b: scale_columns(svd.left.as_ref(), &svd.sigma),
        a_transpose: svd.right,
        error_curve: None,
        warnings: Vec::new(),
    })
}

/// `C = V Λ Vᵀ`; `B = W V`, `A = Vᵀ`. A ridge would not change `V`, so none is added.
fn input_pca(
    weight: MatRef<'_, f64>,
    stats: &InputStats,
    r_max: usize,
    par: Par,
) -> Result<Decomposed, FactorizeError> {
    let eigen = symmetric_eigen_descending(stats.second_moment.as_ref(), par)?;
    let v = eigen.vectors.subcols(0, r_max).to_owned();
    Ok(Decomposed {
        b: product(weight, v.as_ref(), par),
        a_transpose: v,
        error_curve: None,
        warnings: too_few_tokens_warning(stats.n_tokens, weight.ncols())
            .into_iter()
            .collect(),
    })
}

/// Floor for a zero activation scale, relative to the largest scale.
const MIN_RELATIVE_SCALE: f64 = 1e-6;

/// `W diag(s) = P Σ Qᵀ`, `s_j = (mean |x_j|)^½`; `B = P Σ`, `A = Qᵀ diag(1/s)`.
fn activation_scaled_svd(
    weight: MatRef<'_, f64>,
    stats: &InputStats,
    par: Par,
) -> Result<Decomposed, FactorizeError> {
    let cols = weight.ncols();
    let mut warnings: Vec<String> = too_few_tokens_warning(stats.n_tokens, cols)
        .into_iter()
        .collect();
    let mut scale: Vec<f64> = if stats.n_tokens == 0 {
        vec![0.0; cols]
    } else {
        let n_tokens = stats.n_tokens as f64;
        stats
            .abs_sum
            .iter()
            .map(|s| (s / n_tokens).max(0.0).sqrt())
            .collect()
    };
    let largest = scale.iter().copied().fold(0.0, f64::max);
    let n_zero = scale.iter().filter(|&&s| s == 0.0).count();
    if largest == 0.0 {
        scale.fill(1.0);
        warnings.push(
            "layer input was zero on every calibration token; ASVD falls back to the plain SVD: calibrate with text that reaches this layer".to_owned(),
        );
    } else if n_zero > 0 {
        let floor = MIN_RELATIVE_SCALE * largest;
        for s in scale.iter_mut().filter(|s| **s == 0.0) {
            *s = floor;
        }
        warnings.push(format!(
            "{n_zero} of {cols} input coordinates were zero on every calibration token; their ASVD scale is floored at {MIN_RELATIVE_SCALE:e} × the largest: calibrate with more tokens"
        ));
    }
    let scaled = Mat::from_fn(weight.nrows(), cols, |i, j| weight[(i, j)] * scale[j]);
    let svd = thin_svd(scaled.as_ref(), par)?;
    let q = svd.right;
    Ok(Decomposed {
        b: scale_columns(svd.left.as_ref(), &svd.sigma),
        a_transpose: Mat::from_fn(cols, q.ncols(), |j, i| q[(j, i)] / scale[j]),
        error_curve: None,
        warnings,
    })
}

/// `m · diag(d)` for the leading `d.len()` columns of `m`.
pub(super) fn scale_columns(m: MatRef<'_, f64>, d: &[f64]) -> Mat<f64> {
    Mat::from_fn(m.nrows(), d.len(), |i, j| m[(i, j)] * d[j])
}
