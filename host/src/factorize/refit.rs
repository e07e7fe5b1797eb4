//! DESIGN §2 "Anchored refit": the rank-r `M` minimising `||W X − M X̂||_F` from `C_h = X̂ X̂ᵀ`
//! and `C_xh = X X̂ᵀ`.

use faer::{Mat, MatRef, Par};

use super::dense::{
    from_row_major, product, regularized_cholesky, solve_lower_in_place,
    solve_lower_transpose_in_place, thin_svd,
};
use super::methods::{Decomposed, ridge_warning, scale_columns};
use super::{FactorizeError, Factors, Method, Statistic, check_rank, check_square, check_weight};

/// Recomputes rank-`rank` factors of `weight` (m×n, row-major) for the inputs `X̂` a pruned model
/// feeds the layer, anchored to the dense outputs `W X`.
///
/// With `C_h = L Lᵀ` (ridge `δ·tr(C_h)/n` added when needed, with a warning) and the truncated
/// SVD `W C_xh L⁻ᵀ = P Σ Qᵀ`: `B = P_r Σ_r`, `A = Q_rᵀ L⁻¹`. The result has `r_max = rank`,
/// method [`Method::OutputAligned`] and no error curve. Both statistics are n×n; `c_h`'s lower
/// triangle is read. When `X̂ = X` this is exactly the output-aligned factorization.
pub fn refit(
    weight: &[f32],
    rows: usize,
    cols: usize,
    c_h: &Mat<f64>,
    c_xh: &Mat<f64>,
    rank: usize,
) -> Result<Factors, FactorizeError> {
    check_weight(weight, rows, cols)?;
    check_square(c_h.as_ref(), cols, Statistic::PrunedSecondMoment)?;
    check_square(c_xh.as_ref(), cols, Statistic::CrossMoment)?;
    check_rank(rank, rows, cols)?;
    let par = Par::Seq;
    let w = from_row_major(weight, rows, cols);
    let decomposed = refit_decomposed(w.as_ref(), c_h.as_ref(), c_xh.as_ref(), rank, par)?;
    Ok(Factors::from_columns(
        Method::OutputAligned,
        decomposed.b.as_ref(),
        decomposed.a_transpose.as_ref(),
        rank,
        None,
        decomposed.warnings,
    ))
}

/// `B` and `Aᵀ` with `rank` columns each.
fn refit_decomposed(
    w: MatRef<'_, f64>,
    c_h: MatRef<'_, f64>,
    c_xh: MatRef<'_, f64>,
    rank: usize,
    par: Par,
) -> Result<Decomposed, FactorizeError> {
    let cholesky = regularized_cholesky(c_h, false, par)?;
    let lower = cholesky.lower.as_ref();
    // Gᵀ = L⁻¹ (W C_xh)ᵀ, so G = W C_xh L⁻ᵀ.
    let mut g_transpose = product(c_xh.transpose(), w.transpose(), par);
    solve_lower_in_place(lower, &mut g_transpose, par);
    let svd = thin_svd(g_transpose.transpose(), par)?;
    let b = scale_columns(svd.left.as_ref(), &svd.sigma[..rank]);
    // Aᵀ = L⁻ᵀ Q_r.
    let mut a_transpose = svd.right.as_ref().subcols(0, rank).to_owned();
    solve_lower_transpose_in_place(lower, &mut a_transpose, par);
    Ok(Decomposed {
        b,
        a_transpose,
        error_curve: None,
        warnings: ridge_warning(cholesky.relative_ridge).into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Result;
    use faer::Mat;

    use super::refit;
    use crate::factorize::Method;
    use crate::factorize::tests::{Problem, error, product_at, second_moment};

    #[test]
    fn refit_on_dense_inputs_is_output_aligned() -> Result<()> {
        for (seed, rows, cols, rank) in [(50, 8, 12, 3), (51, 14, 7, 4)] {
            let problem = Problem::new(seed, rows, cols, 3 * cols, 10.0);
            let c = &problem.stats.second_moment;
            let refitted = refit(&problem.weight, rows, cols, c, c, rank)?;
            let aligned = problem.factorize(Method::OutputAligned, rank)?;
            let ours = error(&problem.weight, &refitted, rank, c)?;
            let expected = error(&problem.weight, &aligned, rank, c)?;
            assert!((ours - expected).abs() < 1e-6, "{ours} vs {expected}");
            assert!(refitted.warnings.is_empty(), "{:?}", refitted.warnings);
        }
        Ok(())
    }

    /// `||W X − M X̂||_F` with explicit inputs.
    fn anchored_error(w: &Mat<f64>, m: &Mat<f64>, x: &Mat<f64>, x_hat: &Mat<f64>) -> f64 {
        (w * x - m * x_hat).norm_l2()
    }

    #[test]
    fn refit_corrects_for_perturbed_inputs() -> Result<()> {
        for (seed, rows, cols, rank) in [(60, 10, 12, 4), (61, 16, 8, 3), (62, 9, 9, 5)] {
            let problem = Problem::new(seed, rows, cols, 4 * cols, 10.0);
            let noise = problem.held_out(seed + 1, 4 * cols);
            let x_hat = &problem.x + Mat::from_fn(cols, 4 * cols, |i, t| 0.3 * noise[(i, t)]);
            let c_h = second_moment(x_hat.as_ref());
            let c_xh = &problem.x * x_hat.transpose();
            let refitted = refit(&problem.weight, rows, cols, &c_h, &c_xh, rank)?;
            let aligned = problem.factorize(Method::OutputAligned, rank)?;
            let w = problem.w();
            let ours = anchored_error(&w, &product_at(&refitted, rank)?, &problem.x, &x_hat);
            let plain = anchored_error(&w, &product_at(&aligned, rank)?, &problem.x, &x_hat);
            assert!(
                ours <= plain * (1.0 + 1e-6),
                "{rows}×{cols}: refit {ours} > {plain}"
            );
            assert!(
                ours < 0.99 * plain,
                "{rows}×{cols}: refit {ours} barely below {plain}"
            );
        }
        Ok(())
    }
}
