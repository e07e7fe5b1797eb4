//! Attention value dimensions as a pruning unit that costs nothing to store (DESIGN section 2):
//! every key/value head's values are projected to `d` dimensions and the projection is folded
//! into the output projection `o`, so the block only gets narrower heads.
//!
//! Query head `h` reads kv head `g = h / (n_heads / n_kv_heads)`, and its attention output
//! `z_h = Σ_t a_t v_t` is a convex combination of that head's values `v = V_g x`. Replacing
//! `V_g` by `Aᵀ V_g` and every `O_h` of the group by `O_h B` (`A`, `B` head_dim × d) turns each
//! `z_h` into `M z_h` with `M = B Aᵀ`, exactly, whatever the attention weights; the block's
//! output error is `E‖Σ_h O_h (I − M_g(h)) z_h‖²`.
//!
//! Pooling a group's heads and ignoring cross-head terms, `M_g` minimises
//! `tr((I − M) C_g (I − M)ᵀ G_g)` over rank-d maps, with `C_g` the mean of the group's diagonal
//! blocks `C_hh` of `C = E[z zᵀ]` and `G_g = Σ_h O_hᵀ O_h`: with `W` the eigenvectors of
//! `S = C_g^½ G_g C_g^½`, eigenvalues descending, `M = C_g^½ W_d W_dᵀ C_g^-½`, that is
//! `A = C_g^-½ W_d` and `B = C_g^½ W_d`. Width `d` keeps the first `d` eigenvectors, so one
//! decomposition per kv head serves every width. The error curve is the exact one of that
//! choice, cross-head terms included.

use faer::{Mat, MatRef, Par};

use super::dense::{
    from_row_major, leading_columns_row_major, product, symmetric_eigen_descending,
};
use super::{FactorizeError, Statistic, check_square, check_weight};

/// A nested, output-aligned projection of every kv head's values, for every width up to
/// `head_dim`.
#[derive(Debug, Clone)]
pub struct ValueProjection {
    /// `e(d) = tr(O (I−M) C (I−M)ᵀ Oᵀ) / tr(O C Oᵀ)`, the relative squared output error of the
    /// attention sub-block on the calibration statistics at width `d` (`M` block diagonal, each
    /// head's block its kv head's `M_g`), for `d = 0..=head_dim`.
    pub error_curve: Vec<f64>,
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// The original v, `(n_kv_heads·head_dim) × hidden`, row-major.
    v: Vec<f32>,
    /// The original o, `hidden × (n_heads·head_dim)`, row-major.
    o: Vec<f32>,
    /// Per kv head, `C_g^-½ W`: its first `d` columns are `A`.
    encoders: Vec<Mat<f64>>,
    /// Per kv head, `C_g^½ W`: its first `d` columns are `B`; `encoderᵀ · decoder = I`.
    decoders: Vec<Mat<f64>>,
}

/// Relative ridge added to each `C_g`'s eigenvalues, so that a value direction no head ever
/// reads cannot make `C_g^-½` infinite.
const RIDGE: f64 = 1e-8;

/// Projects the values of a grouped-query attention block: `v` is `(n_kv_heads·head_dim) ×
/// hidden` and `o` is `hidden × (n_heads·head_dim)`, both row-major, and
/// `o_input_second_moment` is `C = E[z zᵀ]` of o's input, `(n_heads·head_dim)` square.
pub fn project_values(
    v: &[f32],
    o: &[f32],
    o_input_second_moment: MatRef<'_, f64>,
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<ValueProjection, FactorizeError> {
    let (kv_dim, attention_dim) = check_layout(hidden, n_heads, n_kv_heads, head_dim)?;
    check_weight(v, kv_dim, hidden)?;
    check_weight(o, hidden, attention_dim)?;
    let c = o_input_second_moment;
    check_square(c, attention_dim, Statistic::SecondMoment)?;
    let o_mat = from_row_major(o, hidden, attention_dim);
    let group_size = n_heads / n_kv_heads;
    let mut encoders = Vec::with_capacity(n_kv_heads);
    let mut decoders = Vec::with_capacity(n_kv_heads);
    for group in 0..n_kv_heads {
        let heads = group * group_size..(group + 1) * group_size;
        let c_g = Mat::from_fn(head_dim, head_dim, |i, j| {
            heads
                .clone()
                .map(|h| c[(h * head_dim + i, h * head_dim + j)])
                .sum::<f64>()
                / group_size as f64
        });
        let mut g_g = Mat::<f64>::zeros(head_dim, head_dim);
        for h in heads {
            let o_h = o_mat.as_ref().subcols(h * head_dim, head_dim);
            g_g += product(o_h.transpose(), o_h, Par::Seq);
        }
        let (half, inverse_half) = square_roots(c_g.as_ref())?;
        let s = product(
            product(half.as_ref(), g_g.as_ref(), Par::Seq).as_ref(),
            half.as_ref(),
            Par::Seq,
        );
        let w = symmetric_eigen_descending(s.as_ref(), Par::Seq)?.vectors;
        encoders.push(product(inverse_half.as_ref(), w.as_ref(), Par::Seq));
        decoders.push(product(half.as_ref(), w.as_ref(), Par::Seq));
    }
    let error_curve = exact_error_curve(o_mat.as_ref(), c, &encoders, &decoders, group_size);
    Ok(ValueProjection {
        error_curve,
        hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        v: v.to_vec(),
        o: o.to_vec(),
        encoders,
        decoders,
    })
}

/// `(n_kv_heads·head_dim, n_heads·head_dim)`, or an error when the heads cannot be grouped.
pub(super) fn check_layout(
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<(usize, usize), FactorizeError> {
    let dims = n_kv_heads
        .checked_mul(head_dim)
        .zip(n_heads.checked_mul(head_dim));
    let grouped = n_kv_heads > 0 && n_heads >= n_kv_heads && n_heads.is_multiple_of(n_kv_heads);
    match dims {
        Some(dims) if grouped && hidden > 0 && head_dim > 0 => Ok(dims),
        _ => Err(FactorizeError::HeadLayout {
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
        }),
    }
}

/// `(C^½, C^-½)` of the symmetric `c` (lower triangle read) through its eigendecomposition
/// `C = U diag(λ) Uᵀ`, each `λ` floored at 0 and raised by [`RIDGE`] times the mean diagonal
/// (or by [`RIDGE`] when that is 0).
fn square_roots(c: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>), FactorizeError> {
    let n = c.nrows();
    let trace: f64 = (0..n).map(|i| c[(i, i)]).sum();
    let ridge = RIDGE * if trace > 0.0 { trace / n as f64 } else { 1.0 };
    let eigen = symmetric_eigen_descending(c, Par::Seq)?;
    let roots: Vec<f64> = eigen
        .values
        .iter()
        .map(|&lambda| (lambda.max(0.0) + ridge).sqrt())
        .collect();
    let u = eigen.vectors.as_ref();
    let scaled = |power: fn(f64) -> f64| {
        let scaled = Mat::from_fn(n, n, |i, k| u[(i, k)] * power(roots[k]));
        product(scaled.as_ref(), u.transpose(), Par::Seq)
    };
    Ok((scaled(|root| root), scaled(|root| 1.0 / root)))
}

/// `e(d) = N(d) / N(0)`, `N(d) = tr(O (I−M) C (I−M)ᵀ Oᵀ)` at width `d`. As `Aᵀ B = I` per kv
/// head, `I − M = B_{≥d} A_{≥d}ᵀ` (columns `d..head_dim`); with `Â`, `B̂` the block-diagonal
/// encoders and decoders, `K = Âᵀ C Â` (the second moment of the components `Âᵀ z`) and
/// `Q = (O B̂)ᵀ (O B̂)`, `N(d) = Σ_{k, k' ≥ d} R_kk'` with `R_kk' = Σ_{h, h'} K_{hk,h'k'}
/// Q_{hk,h'k'}`. All zero when `N(0) = 0`: a block with no output energy loses nothing.
fn exact_error_curve(
    o: MatRef<'_, f64>,
    c: MatRef<'_, f64>,
    encoders: &[Mat<f64>],
    decoders: &[Mat<f64>],
    group_size: usize,
) -> Vec<f64> {
    let head_dim = encoders.first().map_or(0, |e| e.nrows());
    let n_heads = o.ncols() / head_dim.max(1);
    let mut ob = Mat::<f64>::zeros(o.nrows(), o.ncols());
    let mut ca = Mat::<f64>::zeros(c.nrows(), c.ncols());
    for h in 0..n_heads {
        let (start, group) = (h * head_dim, h / group_size);
        ob.as_mut().subcols_mut(start, head_dim).copy_from(product(
            o.subcols(start, head_dim),
            decoders[group].as_ref(),
            Par::Seq,
        ));
        ca.as_mut().subcols_mut(start, head_dim).copy_from(product(
            c.subcols(start, head_dim),
            encoders[group].as_ref(),
            Par::Seq,
        ));
    }
    let q = product(ob.transpose(), ob.as_ref(), Par::Seq);
    let mut r = Mat::<f64>::zeros(head_dim, head_dim);
    for h in 0..n_heads {
        let k_rows = product(
            encoders[h / group_size].transpose(),
            ca.as_ref().subrows(h * head_dim, head_dim),
            Par::Seq,
        );
        for column in 0..k_rows.ncols() {
            let k2 = column % head_dim;
            for k in 0..head_dim {
                r[(k, k2)] += k_rows[(k, column)] * q[(h * head_dim + k, column)];
            }
        }
    }
    let mut tails = vec![0.0; head_dim + 1];
    for d in (0..head_dim).rev() {
        let cross: f64 = (d + 1..head_dim).map(|k| r[(d, k)] + r[(k, d)]).sum();
        tails[d] = tails[d + 1] + r[(d, d)] + cross;
    }
    let total = tails[0];
    tails
        .iter()
        .map(|&tail| match total > 0.0 {
            true => (tail / total).max(0.0),
            false => 0.0,
        })
        .collect()
}

impl ValueProjection {
    /// [`ValueProjection::error_curve`] on other statistics of o's input (held-out ones: the
    /// projection stays the one fitted, only the error is measured on `c`).
    pub fn error_curve_on(&self, c: MatRef<'_, f64>) -> Result<Vec<f64>, FactorizeError> {
        let attention_dim = self.n_heads * self.head_dim;
        check_square(c, attention_dim, Statistic::HeldOutSecondMoment)?;
        let o = from_row_major(&self.o, self.hidden, attention_dim);
        let group_size = self.n_heads / self.n_kv_heads;
        Ok(exact_error_curve(
            o.as_ref(),
            c,
            &self.encoders,
            &self.decoders,
            group_size,
        ))
    }

    /// The widest projection: `head_dim`, where the weights are the originals.
    pub fn max_width(&self) -> usize {
        self.head_dim
    }

    /// `(v', o')` at width `width`: `v'` is `(n_kv_heads·width) × hidden` with kv head `g`'s
    /// rows `A_gᵀ V_g = W_dᵀ C_g^-½ V_g`, and `o'` is `hidden × (n_heads·width)` with query
    /// head `h`'s columns `O_h B_g = O_h C_g^½ W_d`, both row-major. Width 0 gives two empty
    /// vectors (the attention sub-block is skipped); `width ≥ head_dim` gives the originals.
    pub fn weights(&self, width: usize) -> Result<(Vec<f32>, Vec<f32>), FactorizeError> {
        let (hidden, head_dim) = (self.hidden, self.head_dim);
        if width == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if width >= head_dim {
            return Ok((self.v.clone(), self.o.clone()));
        }
        let group_size = self.n_heads / self.n_kv_heads;
        let v = from_row_major(&self.v, self.n_kv_heads * head_dim, hidden);
        let o = from_row_major(&self.o, hidden, self.n_heads * head_dim);
        let mut v_new = Mat::<f64>::zeros(self.n_kv_heads * width, hidden);
        for (group, encoder) in self.encoders.iter().enumerate() {
            v_new
                .as_mut()
                .subrows_mut(group * width, width)
                .copy_from(product(
                    encoder.as_ref().subcols(0, width).transpose(),
                    v.as_ref().subrows(group * head_dim, head_dim),
                    Par::Seq,
                ));
        }
        let mut o_new = Mat::<f64>::zeros(hidden, self.n_heads * width);
        for h in 0..self.n_heads {
            o_new
                .as_mut()
                .subcols_mut(h * width, width)
                .copy_from(product(
                    o.as_ref().subcols(h * head_dim, head_dim),
                    self.decoders[h / group_size].as_ref().subcols(0, width),
                    Par::Seq,
                ));
        }
        Ok((
            leading_columns_row_major(v_new.as_ref(), hidden),
            leading_columns_row_major(o_new.as_ref(), self.n_heads * width),
        ))
    }
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, Result, anyhow, ensure};
    use faer::Side;

    use super::*;
    use crate::test_rng::Rng;

    /// One calibration sequence: its tokens `x` (hidden × seq_len) and every query head's
    /// attention weights over them (n_heads × seq_len, rows summing to 1).
    struct Sample {
        x: Mat<f64>,
        attention: Mat<f64>,
    }

    /// A random grouped-query attention block and the second moment of o's input over
    /// random attention mixtures of its values.
    struct Attention {
        hidden: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        v: Vec<f32>,
        o: Vec<f32>,
        samples: Vec<Sample>,
        second_moment: Mat<f64>,
    }

    impl Attention {
        fn new(
            seed: u64,
            hidden: usize,
            n_heads: usize,
            n_kv_heads: usize,
            head_dim: usize,
        ) -> Self {
            let (n_samples, seq_len) = (300, 5);
            let mut rng = Rng(seed);
            let v = (0..n_kv_heads * head_dim * hidden)
                .map(|_| rng.normal() as f32)
                .collect();
            let o = (0..hidden * n_heads * head_dim)
                .map(|_| rng.normal() as f32)
                .collect();
            let samples = (0..n_samples)
                .map(|_| {
                    let x = Mat::from_fn(hidden, seq_len, |i, _| {
                        4f64.powf(i as f64 / hidden as f64) * rng.normal()
                    });
                    let logits = Mat::from_fn(n_heads, seq_len, |_, _| 2.0 * rng.normal());
                    let attention = Mat::from_fn(n_heads, seq_len, |h, t| {
                        let sum: f64 = (0..seq_len).map(|s| logits[(h, s)].exp()).sum();
                        logits[(h, t)].exp() / sum
                    });
                    Sample { x, attention }
                })
                .collect();
            let mut block = Attention {
                hidden,
                n_heads,
                n_kv_heads,
                head_dim,
                v,
                o,
                samples,
                second_moment: Mat::zeros(0, 0),
            };
            let v = block.v_mat();
            let dim = n_heads * head_dim;
            let mut c = Mat::<f64>::zeros(dim, dim);
            for sample in &block.samples {
                let z = block.heads_output(v.as_ref(), head_dim, sample);
                c += &z * z.transpose();
            }
            block.second_moment = c * faer::Scale(1.0 / n_samples as f64);
            block
        }

        fn v_mat(&self) -> Mat<f64> {
            from_row_major(&self.v, self.n_kv_heads * self.head_dim, self.hidden)
        }

        fn o_mat(&self) -> Mat<f64> {
            from_row_major(&self.o, self.hidden, self.n_heads * self.head_dim)
        }

        fn project(&self) -> Result<ValueProjection, FactorizeError> {
            project_values(
                &self.v,
                &self.o,
                self.second_moment.as_ref(),
                self.hidden,
                self.n_heads,
                self.n_kv_heads,
                self.head_dim,
            )
        }

        /// `z` (n_heads·width × 1): each query head's attention mixture of its kv head's
        /// values `v x`, `v` holding `width` rows per kv head.
        fn heads_output(&self, v: MatRef<'_, f64>, width: usize, sample: &Sample) -> Mat<f64> {
            let values = v * &sample.x;
            let group_size = self.n_heads / self.n_kv_heads;
            Mat::from_fn(self.n_heads * width, 1, |row, _| {
                let (h, k) = (row / width, row % width);
                (0..sample.x.ncols())
                    .map(|t| sample.attention[(h, t)] * values[((h / group_size) * width + k, t)])
                    .sum()
            })
        }
    }

    /// The block-diagonal `M` at `width`: head `h`'s block is `B_g Aᵀ_g`, its kv head's map.
    fn block_map(projection: &ValueProjection, width: usize) -> Mat<f64> {
        let head_dim = projection.head_dim;
        let group_size = projection.n_heads / projection.n_kv_heads;
        let maps: Vec<Mat<f64>> = (0..projection.n_kv_heads)
            .map(|g| {
                let b = projection.decoders[g].as_ref().subcols(0, width);
                let a = projection.encoders[g].as_ref().subcols(0, width);
                b * a.transpose()
            })
            .collect();
        let dim = projection.n_heads * head_dim;
        Mat::from_fn(dim, dim, |i, j| match i / head_dim == j / head_dim {
            true => maps[i / head_dim / group_size][(i % head_dim, j % head_dim)],
            false => 0.0,
        })
    }

    #[test]
    fn projected_weights_apply_the_map_and_the_curve_is_the_exact_sample_error() -> Result<()> {
        let block = Attention::new(41, 12, 4, 2, 4);
        let (hidden, head_dim) = (block.hidden, block.head_dim);
        let projection = block.project()?;
        ensure!(projection.error_curve.len() == head_dim + 1);
        let (v, o) = (block.v_mat(), block.o_mat());
        for width in 0..=head_dim {
            let (v_new, o_new) = projection.weights(width)?;
            let v_new = from_row_major(&v_new, block.n_kv_heads * width, hidden);
            let o_new = from_row_major(&o_new, hidden, block.n_heads * width);
            let map = block_map(&projection, width);
            let (mut error, mut total) = (0.0, 0.0);
            for sample in &block.samples {
                let z = block.heads_output(v.as_ref(), head_dim, sample);
                let reconstructed = &o * (&map * &z);
                let projected = &o_new * block.heads_output(v_new.as_ref(), width, sample);
                for i in 0..hidden {
                    let (got, want) = (projected[(i, 0)], reconstructed[(i, 0)]);
                    ensure!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "width {width}: {got} vs {want}"
                    );
                }
                let exact = &o * &z;
                error += (&exact - &reconstructed).squared_norm_l2();
                total += exact.squared_norm_l2();
            }
            let (sampled, curve) = (error / total, projection.error_curve[width]);
            ensure!(
                (sampled - curve).abs() <= 1e-9 * sampled + 1e-13,
                "width {width}: sample error {sampled} vs curve {curve}"
            );
        }
        // On other statistics (the first 100 samples alone, as a held-out set would be), the
        // curve is those samples' error of the projection fitted on all of them.
        let held_out = &block.samples[..100];
        let dim = block.n_heads * head_dim;
        let mut c = Mat::<f64>::zeros(dim, dim);
        for sample in held_out {
            let z = block.heads_output(v.as_ref(), head_dim, sample);
            c += &z * z.transpose();
        }
        let curve = projection.error_curve_on(c.as_ref())?;
        for (width, &on) in curve.iter().enumerate() {
            let map = block_map(&projection, width);
            let (mut error, mut total) = (0.0, 0.0);
            for sample in held_out {
                let exact = &o * block.heads_output(v.as_ref(), head_dim, sample);
                let z = block.heads_output(v.as_ref(), head_dim, sample);
                error += (&exact - &o * (&map * &z)).squared_norm_l2();
                total += exact.squared_norm_l2();
            }
            let sampled = error / total;
            ensure!(
                (sampled - on).abs() <= 1e-9 * sampled + 1e-13,
                "held out, width {width}: sample error {sampled} vs curve {on}"
            );
        }
        ensure!(
            projection
                .error_curve_on(Mat::<f64>::zeros(3, 3).as_ref())
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn full_width_keeps_the_originals_and_width_zero_skips_the_sub_block() -> Result<()> {
        let block = Attention::new(42, 12, 4, 2, 4);
        let head_dim = block.head_dim;
        let projection = block.project()?;
        ensure!(projection.max_width() == head_dim);
        let (v, o) = (block.v_mat(), block.o_mat());
        for width in [head_dim, head_dim + 3] {
            let (v_new, o_new) = projection.weights(width)?;
            let v_new = from_row_major(&v_new, block.n_kv_heads * head_dim, block.hidden);
            let o_new = from_row_major(&o_new, block.hidden, block.n_heads * head_dim);
            for sample in &block.samples {
                let want = &o * block.heads_output(v.as_ref(), head_dim, sample);
                let got = &o_new * block.heads_output(v_new.as_ref(), head_dim, sample);
                ensure!((&got - &want).norm_l2() <= 1e-5 * (1.0 + want.norm_l2()));
            }
        }
        // The full-width map is the identity, so the curve's 0 there is the truth.
        let identity = Mat::<f64>::identity(block.n_heads * head_dim, block.n_heads * head_dim);
        ensure!((block_map(&projection, head_dim) - identity).norm_l2() < 1e-9);
        let (v_new, o_new) = projection.weights(0)?;
        ensure!(v_new.is_empty() && o_new.is_empty());
        ensure!(projection.error_curve[0] == 1.0);
        ensure!(projection.error_curve[head_dim] == 0.0);
        Ok(())
    }

    #[test]
    fn with_shared_head_blocks_and_no_cross_terms_the_closed_form_is_optimal() -> Result<()> {
        let (hidden, n_heads, n_kv_heads, head_dim) = (10, 4, 2, 6);
        let group_size = n_heads / n_kv_heads;
        let mut rng = Rng(43);
        let v: Vec<f32> = (0..n_kv_heads * head_dim * hidden)
            .map(|_| rng.normal() as f32)
            .collect();
        let o: Vec<f32> = (0..hidden * n_heads * head_dim)
            .map(|_| rng.normal() as f32)
            .collect();
        // C_g = L Lᵀ, shared by the group's heads; C is block diagonal (no cross terms).
        let roots: Vec<Mat<f64>> = (0..n_kv_heads)
            .map(|_| {
                Mat::from_fn(head_dim, head_dim, |i, j| {
                    let scale = 20f64.powf(i as f64 / (head_dim - 1) as f64);
                    scale * if i == j { 1.0 } else { 0.5 * rng.normal() }
                })
            })
            .collect();
        let blocks: Vec<Mat<f64>> = roots.iter().map(|l| l * l.transpose()).collect();
        let dim = n_heads * head_dim;
        let c = Mat::from_fn(dim, dim, |i, j| match i / head_dim == j / head_dim {
            true => blocks[i / head_dim / group_size][(i % head_dim, j % head_dim)],
            false => 0.0,
        });
        let projection = project_values(&v, &o, c.as_ref(), hidden, n_heads, n_kv_heads, head_dim)?;
        let o_mat = from_row_major(&o, hidden, dim);
        let gram: Vec<Mat<f64>> = (0..n_kv_heads)
            .map(|g| {
                let o_g = o_mat
                    .as_ref()
                    .subcols(g * group_size * head_dim, group_size * head_dim);
                let full = o_g.transpose() * o_g;
                Mat::from_fn(head_dim, head_dim, |i, j| {
                    (0..group_size)
                        .map(|s| full[(s * head_dim + i, s * head_dim + j)])
                        .sum()
                })
            })
            .collect();
        // The optimum leaves the smallest eigenvalues of Lᵀ G L (the spectrum of S).
        let mut spectra = Vec::new();
        for (l, g) in roots.iter().zip(&gram) {
            let mut spectrum = (l.transpose() * g * l)
                .self_adjoint_eigenvalues(Side::Lower)
                .map_err(|error| anyhow!("eigenvalues of Lᵀ G L: {error:?}"))?;
            spectrum.reverse();
            spectra.push(spectrum);
        }
        let total: f64 = spectra.iter().flatten().sum();
        for d in 0..=head_dim {
            let optimum = spectra.iter().flat_map(|s| &s[d..]).sum::<f64>() / total;
            let curve = projection.error_curve[d];
            ensure!(
                (curve - optimum).abs() < 1e-6,
                "width {d}: curve {curve} vs optimum {optimum}"
            );
        }
        ensure!(
            projection
                .error_curve
                .windows(2)
                .all(|e| e[1] <= e[0] + 1e-12)
        );
        let relative_error = |maps: &[Mat<f64>]| {
            let error: f64 = (0..n_kv_heads)
                .map(|g| {
                    let rest = Mat::<f64>::identity(head_dim, head_dim) - &maps[g];
                    (&rest * &blocks[g] * rest.transpose() * &gram[g])
                        .diagonal()
                        .column_vector()
                        .sum()
                })
                .sum();
            error / total
        };
        for d in 1..head_dim {
            for _ in 0..5 {
                let maps: Vec<Mat<f64>> = (0..n_kv_heads)
                    .map(|_| {
                        let basis = Mat::from_fn(head_dim, d, |_, _| rng.normal())
                            .qr()
                            .compute_thin_Q();
                        &basis * basis.transpose()
                    })
                    .collect();
                let random = relative_error(&maps);
                let curve = projection.error_curve[d];
                ensure!(
                    curve <= random + 1e-9,
                    "width {d}: closed form {curve} vs random projection {random}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_wrong_shape_or_head_layout_is_an_error() -> Result<()> {
        let (hidden, n_heads, n_kv_heads, head_dim) = (6, 4, 2, 3);
        let v = vec![1.0f32; n_kv_heads * head_dim * hidden];
        let o = vec![0.5f32; hidden * n_heads * head_dim];
        let c = Mat::<f64>::identity(n_heads * head_dim, n_heads * head_dim);
        let run = |v: &[f32], o: &[f32], c: MatRef<'_, f64>, layout: [usize; 4]| {
            let [hidden, n_heads, n_kv_heads, head_dim] = layout;
            project_values(v, o, c, hidden, n_heads, n_kv_heads, head_dim)
        };
        let layout = [hidden, n_heads, n_kv_heads, head_dim];
        let projection = run(&v, &o, c.as_ref(), layout).context("a valid block")?;
        ensure!(projection.weights(2)?.0.len() == n_kv_heads * 2 * hidden);
        let mut nan_v = v.clone();
        nan_v[3] = f32::NAN;
        let wrong_c = Mat::<f64>::identity(11, 11);
        let nan_c = Mat::from_fn(12, 12, |_, _| f64::NAN);
        let cases = [
            run(&v[1..], &o, c.as_ref(), layout),
            run(&v, &o[1..], c.as_ref(), layout),
            run(&nan_v, &o, c.as_ref(), layout),
            run(&v, &o, wrong_c.as_ref(), layout),
            run(&v, &o, nan_c.as_ref(), layout),
            run(&v, &o, c.as_ref(), [hidden, n_heads, 3, head_dim]),
            run(&v, &o, c.as_ref(), [hidden, n_heads, 0, head_dim]),
            run(&v, &o, c.as_ref(), [hidden, 2, 4, head_dim]),
            run(&v, &o, c.as_ref(), [hidden, 0, n_kv_heads, head_dim]),
            run(&v, &o, c.as_ref(), [hidden, n_heads, n_kv_heads, 0]),
            run(&v, &o, c.as_ref(), [0, n_heads, n_kv_heads, head_dim]),
            run(
                &v,
                &o,
                c.as_ref(),
                [hidden, n_heads, n_kv_heads, usize::MAX],
            ),
        ];
        for (case, result) in cases.iter().enumerate() {
            ensure!(
                matches!(
                    result,
                    Err(FactorizeError::WeightShape { .. }
                        | FactorizeError::HeadLayout { .. }
                        | FactorizeError::NonFiniteWeight { .. }
                        | FactorizeError::BadStatistics { .. })
                ),
                "case {case}: {result:?}"
            );
        }
        Ok(())
    }
}
