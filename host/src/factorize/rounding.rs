//! Error-compensating rounding of a weight to the bundle's block formats (GPTQ, Frantar et
//! al. 2022, with the bundle's blocks of 32 as groups): columns are rounded in order and each
//! rounding error is spread over the columns not yet rounded, weighted by the input's second
//! moment, so that `E‖(Ŵ − W) x‖²` is what is kept small, not `‖Ŵ − W‖²`.

use faer::{Accum, Mat, MatRef, Par};
use whittle_runtime::format::{Dtype, Q8_BLOCK};
use whittle_runtime::writer::{BlockScales, q4_scales, q8_scales};

use super::FactorizeError;
use super::dense::{cholesky_lower, product, regularized_cholesky, solve_lower_in_place};

/// GPTQ's damping: `λ = 1%` of the mean diagonal of the second moment, added before inverting.
const DAMPING: f64 = 0.01;

/// The upper Cholesky factor `U` of `(C + λI)⁻¹` (`Uᵀ U = (C + λI)⁻¹`) that GPTQ's column
/// updates read; one per input, shared by the matrices that read it.
#[derive(Debug)]
pub struct InverseFactor {
    upper: Mat<f64>,
}

impl InverseFactor {
    /// From the input's second moment `c` (`n × n`, symmetric positive semi-definite).
    pub fn new(c: MatRef<'_, f64>) -> Result<Self, FactorizeError> {
        let n = c.nrows();
        let trace: f64 = (0..n).map(|i| c[(i, i)]).sum();
        let damping = DAMPING * if trace > 0.0 { trace / n as f64 } else { 1.0 };
        let damped = Mat::from_fn(n, n, |i, j| c[(i, j)] + if i == j { damping } else { 0.0 });
        let par = Par::Seq;
        let lower = regularized_cholesky(damped.as_ref(), false, par)?.lower;
        let mut inverse_lower = Mat::<f64>::identity(n, n);
        solve_lower_in_place(lower.as_ref(), &mut inverse_lower, par);
        let inverse = product(inverse_lower.transpose(), inverse_lower.as_ref(), par);
        let lower = match cholesky_lower(inverse.clone(), par) {
            Some(lower) => lower,
            None => regularized_cholesky(inverse.as_ref(), true, par)?.lower,
        };
        Ok(Self {
            upper: lower.transpose().to_owned(),
        })
    }

    /// Input width.
    pub fn width(&self) -> usize {
        self.upper.nrows()
    }
}

/// One value rounded with a block's scales: q8 `scale · round(w / scale)`, q4
/// `d · round((w − m) / d) + m`, as the writer rounds.
fn round_value(w: f32, dtype: Dtype, scales: &[f32]) -> f32 {
    match (dtype, scales) {
        (Dtype::Q8, &[scale]) => scale * (w / scale).round().clamp(-127.0, 127.0),
        (Dtype::Q4, &[d, m]) if d > 0.0 => d * ((w - m) / d).round().clamp(0.0, 15.0) + m,
        (Dtype::Q4, &[_, m]) => m,
        _ => w,
    }
}

/// Rounds the row-major `rows × cols` `weight` to `dtype` (q8 or q4) column by column,
/// compensating each error on the later columns through `factor` (of the input's second
/// moment). Each block's scales are the writer's, taken from the block's values when its
/// first column is reached. Returns the rounded values (which the writer reproduces exactly
/// with the returned scales: `BlobBuilder::push_matrix_with_scales`) and the scales; f32 is
/// returned as it is, with no scales.
pub fn round_compensated(
    weight: &[f32],
    rows: usize,
    cols: usize,
    factor: &InverseFactor,
    dtype: Dtype,
) -> Result<(Vec<f32>, Option<BlockScales>), FactorizeError> {
    if weight.len() != rows * cols {
        return Err(FactorizeError::WeightShape {
            len: weight.len(),
            rows,
            cols,
        });
    }
    if dtype == Dtype::F32 {
        return Ok((weight.to_vec(), None));
    }
    if factor.width() != cols {
        return Err(FactorizeError::WeightShape {
            len: factor.width(),
            rows: cols,
            cols,
        });
    }
    let u = factor.upper.as_ref();
    let mut w = Mat::from_fn(rows, cols, |i, j| f64::from(weight[i * cols + j]));
    let blocks = cols.div_ceil(Q8_BLOCK);
    let per_block = if dtype == Dtype::Q4 { 2 } else { 1 };
    let mut q8 = vec![0f32; rows * blocks];
    let mut q4 = vec![0u16; 2 * rows * blocks];
    let mut row_values = [0f32; Q8_BLOCK];
    for block in 0..blocks {
        let (start, end) = (block * Q8_BLOCK, ((block + 1) * Q8_BLOCK).min(cols));
        let width = end - start;
        // The block's scales, per row, from its current (already compensated) values.
        let mut scales = vec![0f32; rows * per_block];
        for r in 0..rows {
            for (k, slot) in row_values.iter_mut().take(width).enumerate() {
                *slot = w[(r, start + k)] as f32;
            }
            let values = &row_values[..width];
            match dtype {
                Dtype::Q8 => {
                    let s = q8_scales(values, width)[0];
                    q8[r * blocks + block] = s;
                    scales[r] = s;
                }
                _ => {
                    let pair = q4_scales(values, width);
                    q4[2 * (r * blocks + block)] = pair[0];
                    q4[2 * (r * blocks + block) + 1] = pair[1];
                    scales[2 * r] = half::f16::from_bits(pair[0]).to_f32();
                    scales[2 * r + 1] = half::f16::from_bits(pair[1]).to_f32();
                }
            }
        }
        let mut errors = Mat::<f64>::zeros(rows, width);
        for j in start..end {
            let pivot = u[(j, j)];
            for r in 0..rows {
                let exact = w[(r, j)];
                let rounded = round_value(
                    exact as f32,
                    dtype,
                    &scales[r * per_block..(r + 1) * per_block],
                );
                w[(r, j)] = f64::from(rounded);
                let error = (exact - f64::from(rounded)) / pivot;
                errors[(r, j - start)] = error;
                for k in j + 1..end {
                    w[(r, k)] -= error * u[(j, k)];
                }
            }
        }
        if end < cols {
            faer::linalg::matmul::matmul(
                w.as_mut().subcols_mut(end, cols - end),
                Accum::Add,
                errors.as_ref(),
                u.submatrix(start, end, width, cols - end),
                -1.0,
                Par::Seq,
            );
        }
    }
    let values = (0..rows * cols)
        .map(|i| w[(i / cols, i % cols)] as f32)
        .collect();
    let scales = match dtype {
        Dtype::Q8 => BlockScales::Q8(q8),
        _ => BlockScales::Q4(q4),
    };
    Ok((values, Some(scales)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use whittle_runtime::writer::{round_q4, round_q8};

    /// Correlated inputs (a shared factor plus noise) and a random weight: compensated
    /// rounding has a smaller output error `E‖(Ŵ − W) x‖²` than rounding to nearest, for q8 and
    /// q4, and the writer reproduces its values exactly from its scales.
    #[test]
    fn compensated_rounding_lowers_the_output_error_and_round_trips() -> Result<(), FactorizeError>
    {
        let (rows, cols, n) = (24usize, 80usize, 400usize);
        let mut rng = crate::test_rng::Rng(11);
        let weight: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let x: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let shared = rng.normal();
                (0..cols)
                    .map(|k| shared * (1.0 + (k % 7) as f64) + 0.3 * rng.normal())
                    .collect()
            })
            .collect();
        let c = Mat::from_fn(cols, cols, |i, j| {
            x.iter().map(|v| v[i] * v[j]).sum::<f64>() / n as f64
        });
        let factor = InverseFactor::new(c.as_ref())?;
        let output_error = |rounded: &[f32]| -> f64 {
            x.iter()
                .map(|v| {
                    (0..rows)
                        .map(|r| {
                            let e: f64 = (0..cols)
                                .map(|k| {
                                    f64::from(rounded[r * cols + k] - weight[r * cols + k]) * v[k]
                                })
                                .sum();
                            e * e
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n as f64
        };
        for dtype in [Dtype::Q8, Dtype::Q4] {
            let (values, scales) = round_compensated(&weight, rows, cols, &factor, dtype)?;
            let nearest: Vec<f32> = match dtype {
                Dtype::Q8 => {
                    let (q, s) = whittle_runtime::writer::quantize_q8(&weight, cols);
                    q.iter()
                        .enumerate()
                        .map(|(i, &q)| s[(i / cols) * 3 + (i % cols) / 32] * f32::from(q))
                        .collect()
                }
                _ => {
                    let s = q4_scales(&weight, cols);
                    (0..rows * cols)
                        .map(|i| {
                            let b = (i / cols) * 3 + (i % cols) / 32;
                            let (d, m) = (
                                half::f16::from_bits(s[2 * b]).to_f32(),
                                half::f16::from_bits(s[2 * b + 1]).to_f32(),
                            );
                            round_value(weight[i], Dtype::Q4, &[d, m])
                        })
                        .collect()
                }
            };
            let (compensated, plain) = (output_error(&values), output_error(&nearest));
            assert!(
                compensated < 0.7 * plain,
                "{dtype:?}: output error {compensated} compensated, {plain} nearest"
            );
            // The writer re-rounds the values to the same integers with these scales.
            match scales {
                None => panic!("{dtype:?}: no scales"),
                Some(BlockScales::Q8(s)) => {
                    let q = round_q8(&values, cols, &s);
                    for (i, (&v, &q)) in values.iter().zip(&q).enumerate() {
                        let back = s[(i / cols) * 3 + (i % cols) / 32] * f32::from(q);
                        assert_eq!(back, v, "q8 value {i}");
                    }
                }
                Some(BlockScales::Q4(s)) => {
                    let data = round_q4(&values, cols, &s);
                    for (i, &v) in values.iter().enumerate() {
                        let (r, c) = (i / cols, i % cols);
                        let b = r * 3 + c / 32;
                        let k = c % 32;
                        let byte = data[b * 16 + k % 16];
                        let q = if k < 16 { byte & 15 } else { byte >> 4 };
                        let (d, m) = (
                            half::f16::from_bits(s[2 * b]).to_f32(),
                            half::f16::from_bits(s[2 * b + 1]).to_f32(),
                        );
                        assert_eq!(d * f32::from(q) + m, v, "q4 value {i}");
                    }
                }
            }
        }
        Ok(())
    }
}
