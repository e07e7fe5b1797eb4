//! One suite, instantiated for every implementation, checked against [`Portable`].
//!
//! Results must agree within a tolerance relative to `Σ_j |W[i][j]| · |x[t][j]|` (the SIMD
//! kernels sum in a different order, and the q8 ones scale each block of 32 before summing), and every
//! output the portable kernel leaves untouched must stay untouched.

use proptest::prelude::*;

use super::{
    AttentionHead, DECODE_BELOW_TOKENS, F32Matrix, Kernels, Portable, Q4_BLOCK_BYTES, Q4Matrix,
    Q8_BLOCK, Q8Matrix, SharedProduct, Threaded, Weight, from_f16, q4_pair, q8_blocks_per_row,
    round_key, to_f16,
};

const SENTINEL: f32 = 12345.0;

/// Deterministic values in [-1, 1): the crate's test generator, doubled (exactly: both steps
/// are exact in f32).
fn values(seed: u64, n: usize) -> Vec<f32> {
    crate::tests::values(seed, n)
        .into_iter()
        .map(|v| 2.0 * v)
        .collect()
}

fn quantized(seed: u64, n: usize) -> Vec<i8> {
    values(seed, n)
        .into_iter()
        .map(|v| (v * 127.0) as i8)
        .collect()
}

/// One product with deliberately odd buffer lengths (each may be short or long).
#[derive(Clone, Debug)]
struct Case {
    rows: usize,
    cols: usize,
    tokens: usize,
    data_len: usize,
    scales_len: usize,
    x_len: usize,
    out_len: usize,
    seed: u64,
}

impl Case {
    fn exact(rows: usize, cols: usize, tokens: usize, seed: u64) -> Self {
        Self {
            rows,
            cols,
            tokens,
            data_len: rows * cols,
            scales_len: rows * q8_blocks_per_row(cols),
            x_len: tokens * cols,
            out_len: tokens * rows,
            seed,
        }
    }
}

fn bound(abs_w: &[f32], rows: usize, cols: usize, x: &[f32], index: usize) -> f32 {
    let (t, i) = (index / rows.max(1), index % rows.max(1));
    let row = abs_w.get(i * cols..(i + 1) * cols).unwrap_or(&[]);
    let xt = x.get(t * cols..(t + 1) * cols).unwrap_or(&[]);
    row.iter().zip(xt).map(|(w, x)| w * x.abs()).sum::<f32>()
}

/// What rounding each block of 32 activations to int8 may add to output `index`:
/// `Σ_j |W[i][j]| · step(j) / 2`, `step = max |x| / 127` over `x[j]`'s block (see
/// [`Kernels::rounds_activations`]).
fn rounding_bound(abs_w: &[f32], rows: usize, cols: usize, x: &[f32], index: usize) -> f32 {
    let (t, i) = (index / rows.max(1), index % rows.max(1));
    let row = abs_w.get(i * cols..(i + 1) * cols).unwrap_or(&[]);
    let xt = x.get(t * cols..(t + 1) * cols).unwrap_or(&[]);
    row.chunks(Q8_BLOCK)
        .zip(xt.chunks(Q8_BLOCK))
        .map(|(w, x)| {
            let step = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            w.iter().sum::<f32>() * step / 2.0
        })
        .sum()
}

fn compare(
    kernel: &dyn Kernels,
    case: &Case,
    expected: &[f32],
    got: &[f32],
    (abs_w, x): (&[f32], &[f32]),
    rounding: f32,
) {
    assert_eq!(expected.len(), got.len());
    for (index, (e, g)) in expected.iter().zip(got).enumerate() {
        let mut tolerance = 3e-5 * bound(abs_w, case.rows, case.cols, x, index) + 1e-6;
        if rounding > 0.0 {
            tolerance += rounding * rounding_bound(abs_w, case.rows, case.cols, x, index);
        }
        assert!(
            (e - g).abs() <= tolerance,
            "{}: {case:?}: out[{index}] = {g}, portable {e} (tolerance {tolerance})",
            kernel.name(),
        );
        assert_eq!(
            *e == SENTINEL,
            *g == SENTINEL,
            "{}: {case:?}: out[{index}]",
            kernel.name()
        );
    }
}

/// The q4 form of `case`: random nibbles and f16 `(d, m)` pairs (`m` of either sign, up to
/// 16 steps, so that `d · q + m` cancels as real blocks do), as many bytes as `data_len`
/// values in whole rows plus the odd rest, and two halves per scale of `scales_len`.
fn q4_case(case: &Case) -> (Vec<u8>, Vec<u16>) {
    let per_row = q8_blocks_per_row(case.cols).max(1);
    let whole = case.data_len / case.cols.max(1);
    let len = whole * per_row * Q4_BLOCK_BYTES + case.data_len % case.cols.max(1);
    let data = values(case.seed ^ 4, len)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as u8)
        .collect();
    let scales = values(case.seed ^ 5, case.scales_len)
        .iter()
        .flat_map(|s| {
            let d = 0.01 + s.abs() / 64.0;
            [d, -8.0 * d * s]
        })
        .map(|v| half::f16::from_f32(v).to_bits())
        .collect();
    (data, scales)
}

/// `|d| · q + |m|` for every value of a q4 case (0 past what is stored): the tolerance's
/// weights, an upper bound on every term either decomposition sums.
fn q4_magnitudes(case: &Case, data: &[u8], scales: &[u16]) -> Vec<f32> {
    let per_row = q8_blocks_per_row(case.cols).max(1);
    let mut abs_w = vec![0.0f32; case.rows * case.cols];
    for (index, a) in abs_w.iter_mut().enumerate() {
        let (i, j) = (index / case.cols, index % case.cols);
        let block = i * per_row + j / Q8_BLOCK;
        let within = j % Q8_BLOCK;
        let byte = data
            .get(block * Q4_BLOCK_BYTES + within % 16)
            .copied()
            .unwrap_or(0);
        let q = if within < 16 { byte & 0x0f } else { byte >> 4 };
        if let Some(pair) = scales.get(2 * block..2 * block + 2) {
            let (d, m) = q4_pair(pair);
            *a = d.abs() * f32::from(q) + m.abs();
        }
    }
    abs_w
}

/// Runs `case` through `kernel` and through [`Portable`], f32, q8 and q4, and compares: q8
/// and q4 within the bound of rounding activations to int8 where the kernel says it may.
fn check(kernel: &dyn Kernels, case: &Case) {
    // The tokens the buffers cover decide between decode and prefill.
    let tokens = case
        .tokens
        .min(case.x_len / case.cols.max(1))
        .min(case.out_len / case.rows.max(1));
    let rounding = if kernel.rounds_activations(tokens) {
        1.0
    } else {
        0.0
    };
    check_within(kernel, case, rounding);
}

/// [`check`], with q8 and q4 within `rounding` times the bound of rounding activations to int8.
fn check_within(kernel: &dyn Kernels, case: &Case, rounding: f32) {
    let x = values(case.seed, case.x_len);
    let w = values(case.seed ^ 1, case.data_len);
    let q = quantized(case.seed ^ 2, case.data_len);
    let scales: Vec<f32> = values(case.seed ^ 3, case.scales_len)
        .iter()
        .map(|s| 0.01 + s.abs() / 64.0)
        .collect();

    let matrix = F32Matrix {
        rows: case.rows,
        cols: case.cols,
        data: &w,
    };
    let mut expected = vec![SENTINEL; case.out_len];
    let mut got = vec![SENTINEL; case.out_len];
    Portable.gemm_f32(matrix, &x, case.tokens, &mut expected);
    kernel.gemm_f32(matrix, &x, case.tokens, &mut got);
    let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    compare(kernel, case, &expected, &got, (&abs_w, &x), 0.0);

    let matrix = Q8Matrix {
        rows: case.rows,
        cols: case.cols,
        data: &q,
        scales: &scales,
    };
    let mut expected = vec![SENTINEL; case.out_len];
    let mut got = vec![SENTINEL; case.out_len];
    Portable.gemm_q8(matrix, &x, case.tokens, &mut expected);
    kernel.gemm_q8(matrix, &x, case.tokens, &mut got);
    // Each value times its block's scale (block `j / 32` of its row); 0 past the scales.
    let per_row = q8_blocks_per_row(case.cols).max(1);
    let abs_w: Vec<f32> = q
        .chunks(case.cols.max(1))
        .enumerate()
        .flat_map(|(i, row)| {
            let scales = &scales;
            row.chunks(Q8_BLOCK)
                .enumerate()
                .flat_map(move |(b, block)| {
                    let s = scales.get(i * per_row + b).copied().unwrap_or(0.0);
                    block.iter().map(move |v| s * f32::from(*v).abs())
                })
        })
        .collect();
    compare(kernel, case, &expected, &got, (&abs_w, &x), rounding);

    let (data, scales) = q4_case(case);
    let matrix = Q4Matrix {
        rows: case.rows,
        cols: case.cols,
        data: &data,
        scales: &scales,
    };
    let mut expected = vec![SENTINEL; case.out_len];
    let mut got = vec![SENTINEL; case.out_len];
    Portable.gemm_q4(matrix, &x, case.tokens, &mut expected);
    kernel.gemm_q4(matrix, &x, case.tokens, &mut got);
    let abs_w = q4_magnitudes(case, &data, &scales);
    compare(kernel, case, &expected, &got, (&abs_w, &x), rounding);
}

/// A low-rank layer: `A` is `rank × cols`, `B` is `rows × rank`.
#[derive(Clone, Copy, Debug)]
struct LowRankCase {
    rank: usize,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
}

/// Both factors of `case` in one dtype: f32 values, or int8 values with their block scales.
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    qa: Vec<i8>,
    qb: Vec<i8>,
    sa: Vec<f32>,
    sb: Vec<f32>,
}

impl Factors {
    fn new(case: &LowRankCase) -> Self {
        let scales = |seed: u64, n: usize| -> Vec<f32> {
            values(seed, n)
                .iter()
                .map(|s| 0.01 + s.abs() / 64.0)
                .collect()
        };
        Self {
            a: values(case.seed ^ 1, case.rank * case.cols),
            b: values(case.seed ^ 2, case.rows * case.rank),
            qa: quantized(case.seed ^ 3, case.rank * case.cols),
            qb: quantized(case.seed ^ 4, case.rows * case.rank),
            sa: scales(case.seed ^ 5, case.rank * q8_blocks_per_row(case.cols)),
            sb: scales(case.seed ^ 6, case.rows * q8_blocks_per_row(case.rank)),
        }
    }

    fn weights(&self, case: &LowRankCase, q8: bool) -> (Weight<'_>, Weight<'_>) {
        if q8 {
            (
                Weight::Q8(Q8Matrix {
                    rows: case.rank,
                    cols: case.cols,
                    data: &self.qa,
                    scales: &self.sa,
                }),
                Weight::Q8(Q8Matrix {
                    rows: case.rows,
                    cols: case.rank,
                    data: &self.qb,
                    scales: &self.sb,
                }),
            )
        } else {
            (
                Weight::F32(F32Matrix {
                    rows: case.rank,
                    cols: case.cols,
                    data: &self.a,
                }),
                Weight::F32(F32Matrix {
                    rows: case.rows,
                    cols: case.rank,
                    data: &self.b,
                }),
            )
        }
    }
}

/// `|W|` with q8 block scales applied, as a dense row-major matrix.
fn magnitudes(w: Weight<'_>) -> Vec<f32> {
    let mut row = vec![0.0; w.cols()];
    (0..w.rows())
        .flat_map(|i| {
            w.copy_row(i, &mut row);
            row.iter().map(|v| v.abs()).collect::<Vec<_>>()
        })
        .collect()
}

/// Runs `case` through `kernel`'s and [`Portable`]'s `gemm_low_rank`, f32 and q8, and compares
/// the intermediate and the output within the rounding of two products.
fn check_low_rank(kernel: &dyn Kernels, case: &LowRankCase) {
    let factors = Factors::new(case);
    let x = values(case.seed, case.tokens * case.cols);
    for q8 in [false, true] {
        let (a, b) = factors.weights(case, q8);
        let mut expected_low = vec![SENTINEL; case.tokens * case.rank];
        let mut expected = vec![SENTINEL; case.tokens * case.rows];
        Portable.gemm_low_rank(a, b, &x, case.tokens, &mut expected_low, &mut expected);
        let mut low = vec![SENTINEL; case.tokens * case.rank];
        let mut got = vec![SENTINEL; case.tokens * case.rows];
        kernel.gemm_low_rank(a, b, &x, case.tokens, &mut low, &mut got);

        let (abs_a, abs_b) = (magnitudes(a), magnitudes(b));
        let rounded = q8 && kernel.rounds_activations(case.tokens);
        let low_bound: Vec<f32> = (0..case.tokens * case.rank)
            .map(|index| bound(&abs_a, case.rank, case.cols, &x, index))
            .collect();
        // What rounding `x` may add to each intermediate (zero unless this kernel rounds).
        let low_rounding: Vec<f32> = (0..case.tokens * case.rank)
            .map(|index| {
                if rounded {
                    rounding_bound(&abs_a, case.rank, case.cols, &x, index)
                } else {
                    0.0
                }
            })
            .collect();
        for (index, (e, g)) in expected_low.iter().zip(&low).enumerate() {
            let tolerance = 3e-5 * low_bound[index] + low_rounding[index] + 1e-6;
            assert!(
                (e - g).abs() <= tolerance,
                "{}: {case:?} q8 {q8}: low[{index}] = {g}, portable {e}",
                kernel.name()
            );
        }
        // Each intermediate carries its own error into every output: bound the output by
        // `|B| · (|low| + bound(low))`, plus, where activations are rounded, `|B|` times the
        // intermediate's rounding error and what rounding the intermediate itself may add.
        let carried: Vec<f32> = expected_low
            .iter()
            .zip(&low_bound)
            .zip(&low_rounding)
            .map(|((l, b), r)| l.abs() + b + r)
            .collect();
        for (index, (e, g)) in expected.iter().zip(&got).enumerate() {
            let mut tolerance = 1e-4 * bound(&abs_b, case.rows, case.rank, &carried, index) + 1e-6;
            if rounded {
                tolerance += bound(&abs_b, case.rows, case.rank, &low_rounding, index)
                    + rounding_bound(&abs_b, case.rows, case.rank, &carried, index);
            }
            assert!(
                (e - g).abs() <= tolerance,
                "{}: {case:?} q8 {q8}: out[{index}] = {g}, portable {e} (tolerance {tolerance})",
                kernel.name()
            );
        }
    }
}

fn low_rank_case() -> impl Strategy<Value = LowRankCase> {
    (0usize..70, 0usize..70, 0usize..70, 0usize..=9, any::<u64>()).prop_map(
        |(rank, rows, cols, tokens, seed)| LowRankCase {
            rank,
            rows,
            cols,
            tokens,
            seed,
        },
    )
}

fn odd_case() -> impl Strategy<Value = Case> {
    (0usize..70, 0usize..70, 0usize..=9, any::<u64>())
        .prop_map(|(rows, cols, tokens, seed)| Case::exact(rows, cols, tokens, seed))
}

fn mismatched_case() -> impl Strategy<Value = Case> {
    (
        0usize..40,
        0usize..40,
        0usize..=9,
        any::<u64>(),
        prop::array::uniform4(-3i64..3),
    )
        .prop_map(|(rows, cols, tokens, seed, d)| {
            let mut c = Case::exact(rows, cols, tokens, seed);
            let shift = |n: usize, by: i64, unit: usize| {
                n.saturating_add_signed(by as isize * unit.max(1) as isize)
            };
            c.data_len = shift(c.data_len, d[0], cols);
            // Whole rows of scales or single ones, short or long.
            let unit = if seed % 2 == 0 {
                q8_blocks_per_row(cols)
            } else {
                1
            };
            c.scales_len = shift(c.scales_len, d[1], unit);
            c.x_len = shift(c.x_len, d[2], cols / 2 + 1);
            c.out_len = shift(c.out_len, d[3], rows / 2 + 1);
            c
        })
}

/// The matrices of SmolLM2-135M and of its low-rank factors.
const MODEL_SHAPES: [(usize, usize); 8] = [
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (8, 576),
    (576, 8),
    (136, 576),
    (1536, 136),
];

/// Low-rank layers of SmolLM2-135M as `(rank, rows, cols)`: q/o, k/v, gate/up and down at a
/// few ranks, one of them below a thread's share of rows.
const LOW_RANK_SHAPES: [(usize, usize, usize); 6] = [
    (136, 576, 576),
    (24, 192, 576),
    (400, 1536, 576),
    (300, 576, 1536),
    (8, 576, 576),
    (33, 64, 40),
];

/// `kernel.attend` on a group of `queries` query heads against the softmax computed in f64 (of
/// the cache's f16 values), with `width` value dimensions (fewer than `head_dim` where a block's values are pruned);
/// also that a scratch shorter than the positions attends to the ones it holds instead of
/// panicking.
fn check_attention(kernel: &dyn Kernels, shape: AttentionShape) {
    let AttentionShape {
        queries,
        head_dim,
        width,
        stride,
        positions,
    } = shape;
    let inputs = shape.inputs();
    let (q, cache_values) = (&inputs.q, &inputs.values);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let head = AttentionHead {
        q,
        head_dim,
        keys: &inputs.keys,
        key_scales: &inputs.key_scales,
        values: cache_values,
        stride,
        positions,
        scale,
    };
    // The attention of `query` over `positions` positions, and its log-sum-exp.
    let reference = |query: usize, positions: usize| -> (Vec<f64>, f64) {
        let q = &q[query * head_dim..(query + 1) * head_dim];
        let logits: Vec<f64> = (0..positions)
            .map(|j| {
                let key = inputs.key(j, stride, head_dim);
                q.iter()
                    .zip(&key)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let out = (0..width)
            .map(|i| {
                (0..positions)
                    .map(|j| weights[j] / total * f64::from(from_f16(cache_values[j * stride + i])))
                    .sum()
            })
            .collect();
        (out, max + total.ln())
    };
    for held in [positions, positions.div_ceil(2)] {
        let mut scores = vec![f32::NAN; queries * held];
        let mut out = vec![f32::NAN; queries * width];
        let mut lse = vec![f32::NAN; queries];
        kernel.attend(&head, &mut scores, &mut out, &mut lse);
        for (query, (out, &lse)) in out.chunks_exact(width).zip(&lse).enumerate() {
            let (want_out, want_lse) = reference(query, held);
            let context = format!(
                "{}: {shape:?}, scratch for {held} positions, query {query}",
                kernel.name()
            );
            for (i, (&got, want)) in out.iter().zip(want_out).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5,
                    "{context}, value {i}: {got} against {want}"
                );
            }
            assert!(
                (f64::from(lse) - want_lse).abs() <= 1e-5 * want_lse.abs().max(1.0),
                "{context}, log-sum-exp: {lse} against {want_lse}"
            );
        }
    }
}

/// Attentions over two parts of the positions, merged by their log-sum-exps, are the
/// attention over all of them (as a decode step splits them over threads).
fn check_split_attention(kernel: &dyn Kernels, shape: AttentionShape, split: usize) {
    let AttentionShape {
        queries,
        head_dim,
        width,
        stride,
        positions,
    } = shape;
    let inputs = shape.inputs();
    let head = |from: usize, to: usize| AttentionHead {
        q: &inputs.q,
        head_dim,
        keys: inputs.keys.get(from * stride..).unwrap_or_default(),
        key_scales: inputs.key_scales.get(from..).unwrap_or_default(),
        values: inputs.values.get(from * stride..).unwrap_or_default(),
        stride,
        positions: to - from,
        scale: 0.3,
    };
    let mut scores = vec![0.0; queries * positions];
    let mut whole = vec![0.0; queries * width];
    kernel.attend(&head(0, positions), &mut scores, &mut whole, &mut []);
    // Two parts, each its outputs then its log-sum-exps.
    let per_part = queries * (width + 1);
    let mut partials = vec![f32::NAN; 2 * per_part];
    for (part, (from, to)) in [(0, split), (split, positions)].into_iter().enumerate() {
        let (out, lse) =
            partials[part * per_part..(part + 1) * per_part].split_at_mut(queries * width);
        kernel.attend(&head(from, to), &mut scores, out, lse);
    }
    let mut merged = vec![f32::NAN; queries * width];
    super::math::merge_attention(&partials, 2, queries, width, &mut merged);
    for (i, (&got, &want)) in merged.iter().zip(&whole).enumerate() {
        assert!(
            (got - want).abs() <= 1e-5,
            "{}: {shape:?} split at {split}, value {i}: merged {got}, whole {want}",
            kernel.name()
        );
    }
}

#[test]
fn the_caches_f16_conversions_are_exact_and_finite() {
    for bits in 0..=u16::MAX {
        let value = half::f16::from_bits(bits);
        if value.is_finite() {
            assert_eq!(
                from_f16(bits).to_bits(),
                value.to_f32().to_bits(),
                "{bits:#06x}"
            );
            assert_eq!(to_f16(value.to_f32()), bits, "{bits:#06x} back");
        }
    }
    // Every f32 up to the largest f16 rounds as `half` rounds it (a sweep of bit patterns).
    for bits in (0..=0x477f_e000u32).step_by(997) {
        for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
            assert_eq!(
                to_f16(x),
                half::f16::from_f32(x).to_bits(),
                "{x:e} ({bits:#010x})"
            );
        }
    }
    assert_eq!(to_f16(1e6), half::f16::MAX.to_bits());
    assert_eq!(to_f16(f32::NEG_INFINITY), half::f16::MIN.to_bits());
    assert_eq!(to_f16(f32::NAN), 0);
    // Ties to even: 1 + 2⁻¹¹ lies halfway between 1 and the next f16.
    assert_eq!(to_f16(1.0 + 2f32.powi(-11)), half::f16::ONE.to_bits());
}

#[test]
fn keys_round_to_sixteen_bits_within_half_a_step() {
    let key: Vec<f32> = values(41, 64)
        .iter()
        .enumerate()
        .map(|(i, v)| v * if i == 7 { 300.0 } else { 2.0 })
        .collect();
    let mut rounded = vec![0i16; 64];
    let scale = round_key(&key, &mut rounded);
    let max = key.iter().fold(0.0f32, |m, k| m.max(k.abs()));
    assert!((scale - max / 32_767.0).abs() <= f32::EPSILON * scale);
    assert_eq!(
        rounded[7].unsigned_abs(),
        32_767,
        "the largest lane uses the whole range"
    );
    for (&k, &q) in key.iter().zip(&rounded) {
        let error = (f64::from(scale) * f64::from(q) - f64::from(k)).abs();
        assert!(error <= 0.5001 * f64::from(scale), "{k}: {q} · {scale}");
    }
    // Rounding what the cache holds again gives the same integers and scale (a stored prompt
    // prefix is the cache's keys as f32).
    let back: Vec<f32> = rounded.iter().map(|&q| scale * f32::from(q)).collect();
    let mut again = vec![0i16; 64];
    let scale_again = round_key(&back, &mut again);
    assert_eq!(again, rounded);
    assert!((scale_again - scale).abs() <= f32::EPSILON * scale);
    // Zeros, subnormals, NaNs and infinities give finite keys.
    let mut out = [1i16; 3];
    assert_eq!(round_key(&[0.0, -0.0, 1e-40], &mut out), 0.0);
    assert_eq!(out, [0; 3]);
    let scale = round_key(&[f32::NAN, f32::INFINITY, -1.0], &mut out);
    assert!(scale.is_finite() && scale > 0.0);
    assert_eq!(out, [0, 32_767, 0]);
}

/// A group of query heads over a key/value head's cached positions.
#[derive(Clone, Copy, Debug)]
struct AttentionShape {
    queries: usize,
    head_dim: usize,
    width: usize,
    stride: usize,
    positions: usize,
}

impl AttentionShape {
    /// Queries (times four, so that the softmax is not flat), keys and values, seeded by the
    /// shape.
    /// The values are f16 bits, as the cache keeps them.
    /// The queries, the cache's keys as [`round_key`] rounds them with their scales (each
    /// position's keys at a different magnitude), and its values as f16 bits.
    fn inputs(&self) -> AttentionInputs {
        let seed = (self.queries * 100_000 + self.head_dim * 1000 + self.positions) as u64;
        let cache = self.positions * self.stride;
        let raw = values(seed + 1, cache);
        let mut keys = vec![0i16; cache];
        let key_scales = (0..self.positions)
            .map(|j| {
                let at = j * self.stride;
                let magnitude = 0.5 + (j % 7) as f32;
                let key: Vec<f32> = raw[at..at + self.head_dim]
                    .iter()
                    .map(|k| k * magnitude)
                    .collect();
                round_key(&key, &mut keys[at..at + self.head_dim])
            })
            .collect();
        AttentionInputs {
            q: values(seed, self.queries * self.head_dim)
                .iter()
                .map(|v| v * 4.0)
                .collect(),
            keys,
            key_scales,
            values: values(seed + 2, cache).into_iter().map(to_f16).collect(),
        }
    }
}

/// [`AttentionShape::inputs`].
struct AttentionInputs {
    q: Vec<f32>,
    keys: Vec<i16>,
    key_scales: Vec<f32>,
    values: Vec<u16>,
}

impl AttentionInputs {
    /// Position `j`'s key as f32.
    fn key(&self, j: usize, stride: usize, head_dim: usize) -> Vec<f32> {
        self.keys[j * stride..j * stride + head_dim]
            .iter()
            .map(|&k| self.key_scales[j] * f32::from(k))
            .collect()
    }
}

macro_rules! kernel_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            fn kernel() -> Option<Box<dyn Kernels>> {
                $make
            }

            #[test]
            fn model_shapes_match_portable() {
                let Some(kernel) = kernel() else { return };
                for (index, &(rows, cols)) in MODEL_SHAPES.iter().enumerate() {
                    for tokens in [1, 5, 19] {
                        check(
                            kernel.as_ref(),
                            &Case::exact(rows, cols, tokens, index as u64),
                        );
                    }
                }
            }

            #[test]
            fn model_low_rank_shapes_match_portable() {
                let Some(kernel) = kernel() else { return };
                for (index, &(rank, rows, cols)) in LOW_RANK_SHAPES.iter().enumerate() {
                    for tokens in [1, 5, 19] {
                        let case = LowRankCase {
                            rank,
                            rows,
                            cols,
                            tokens,
                            seed: index as u64,
                        };
                        check_low_rank(kernel.as_ref(), &case);
                    }
                }
            }

            #[test]
            fn head_decode_matches_portable() {
                let Some(kernel) = kernel() else { return };
                check(kernel.as_ref(), &Case::exact(49152, 576, 1, 7));
            }

            #[test]
            fn column_blocks_accumulate() {
                let Some(kernel) = kernel() else { return };
                for cols in [255, 256, 257, 513, 1000] {
                    check(kernel.as_ref(), &Case::exact(37, cols, 11, cols as u64));
                }
            }

            /// Rows longer than a kernel's pass over rounded activations (4,096 columns)
            /// add the passes up, in decode.
            #[test]
            fn long_rows_decode() {
                let Some(kernel) = kernel() else { return };
                for cols in [4095, 4096, 4097, 8300] {
                    check(kernel.as_ref(), &Case::exact(9, cols, 1, cols as u64));
                }
            }

            /// Prefill rows longer than the int8 tile packs at once (1,024 columns), and more
            /// tokens than its rounded activations hold at once (64 KiB), in partial panels.
            #[test]
            fn long_rows_prefill() {
                let Some(kernel) = kernel() else { return };
                for (rows, cols, tokens) in [(21, 1025, 9), (17, 2100, 40)] {
                    check(
                        kernel.as_ref(),
                        &Case::exact(rows, cols, tokens, cols as u64),
                    );
                }
            }

            #[test]
            fn empty_matrices_zero_the_output() {
                let Some(kernel) = kernel() else { return };
                for (rows, cols, tokens) in [(0, 5, 3), (5, 0, 3), (0, 0, 0), (4, 4, 0)] {
                    let mut case = Case::exact(rows, cols, tokens, 0);
                    case.out_len = 6;
                    check(kernel.as_ref(), &case);
                }
            }

            #[test]
            fn swiglu_matches_a_double_precision_silu() {
                let Some(kernel) = kernel() else { return };
                for len in [0, 1, 7, 16, 1536, 1539] {
                    let mut gate: Vec<f32> =
                        values(len as u64, len).iter().map(|v| v * 30.0).collect();
                    let up = values(len as u64 + 1, len);
                    let want: Vec<f64> = gate
                        .iter()
                        .zip(&up)
                        .map(|(&g, &u)| {
                            let g = f64::from(g);
                            g / (1.0 + (-g).exp()) * f64::from(u)
                        })
                        .collect();
                    kernel.swiglu(&mut gate, &up);
                    for (i, (&got, want)) in gate.iter().zip(want).enumerate() {
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-6 * (1.0 + want.abs()) * 16.0,
                            "{}: length {len}, value {i}: {got} against {want}",
                            kernel.name()
                        );
                    }
                }
            }

            #[test]
            fn attention_matches_a_double_precision_softmax() {
                let Some(kernel) = kernel() else { return };
                for (queries, head_dim, width, stride, positions) in [
                    (1, 64, 64, 192, 1),
                    (3, 64, 64, 192, 1),
                    (1, 64, 64, 192, 300),
                    (3, 64, 64, 192, 300),
                    (3, 64, 40, 192, 300),
                    (1, 7, 7, 9, 5),
                    (2, 33, 33, 40, 77),
                    (4, 64, 64, 64, 1000),
                    (4, 256, 256, 256, 70),
                    (6, 256, 200, 256, 70),
                    (9, 32, 32, 32, 20),
                ] {
                    let shape = AttentionShape {
                        queries,
                        head_dim,
                        width,
                        stride,
                        positions,
                    };
                    check_attention(kernel.as_ref(), shape);
                    for split in [0, positions / 2, positions] {
                        check_split_attention(kernel.as_ref(), shape, split);
                    }
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                #[test]
                fn odd_attention_shapes_match(
                    queries in 1usize..7,
                    head_dim in 1usize..80,
                    pruned in 0usize..80,
                    extra in 0usize..20,
                    positions in 1usize..200,
                ) {
                    let Some(kernel) = kernel() else { return Ok(()) };
                    let width = head_dim - pruned % head_dim;
                    let stride = head_dim + extra;
                    let shape = AttentionShape { queries, head_dim, width, stride, positions };
                    check_attention(kernel.as_ref(), shape);
                }
            }

            proptest! {
                #[test]
                fn odd_shapes_match_portable(case in odd_case()) {
                    let Some(kernel) = kernel() else { return Ok(()) };
                    check(kernel.as_ref(), &case);
                }

                #[test]
                fn odd_low_rank_shapes_match_portable(case in low_rank_case()) {
                    let Some(kernel) = kernel() else { return Ok(()) };
                    check_low_rank(kernel.as_ref(), &case);
                }

                #[test]
                fn mismatched_lengths_use_the_common_prefix(case in mismatched_case()) {
                    let Some(kernel) = kernel() else { return Ok(()) };
                    check(kernel.as_ref(), &case);
                }
            }
        }
    };
}

kernel_suite!(portable, Some(Box::new(Portable)));
#[cfg(target_arch = "x86_64")]
kernel_suite!(
    avx2,
    super::super::Avx2Fma::detect().map(|k| Box::new(k) as Box<dyn Kernels>)
);
#[cfg(target_arch = "x86_64")]
kernel_suite!(
    avx512,
    super::super::Avx512::detect().map(|k| Box::new(k) as Box<dyn Kernels>)
);
#[cfg(target_arch = "x86_64")]
kernel_suite!(
    avx512_float,
    super::super::Avx512::detect().map(|k| Box::new(k.without_vnni()) as Box<dyn Kernels>)
);
#[cfg(target_arch = "aarch64")]
kernel_suite!(
    neon,
    super::super::Neon::detect().map(|k| Box::new(k) as Box<dyn Kernels>)
);
#[cfg(target_arch = "aarch64")]
kernel_suite!(
    neon_dotprod,
    super::super::NeonDot::detect().map(|k| Box::new(k) as Box<dyn Kernels>)
);
kernel_suite!(best, Some(Box::new(super::super::best())));
kernel_suite!(
    threaded_best,
    Some(Box::new(Threaded::new(super::super::best(), 2)))
);
kernel_suite!(
    threaded_portable,
    Some(Box::new(Threaded::new(Portable, 3)))
);

/// AVX-512 VNNI rounds prefill activations in two int8 levels: within 1/256 of the one-level
/// bound (a prefill that rounded once would fail this).
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_prefill_rounds_in_two_levels() {
    let Some(kernel) =
        super::Avx512::detect().filter(|k| k.rounds_activations(DECODE_BELOW_TOKENS))
    else {
        return;
    };
    for (rows, cols, tokens) in [(37, 200, 9), (16, 1100, 5), (576, 576, 19)] {
        check_within(
            &kernel,
            &Case::exact(rows, cols, tokens, cols as u64),
            1.0 / 256.0,
        );
    }
}

#[test]
fn best_is_the_first_available() {
    let best = super::best();
    let first = super::available().next().map(|k| k.name());
    assert_eq!(Some(best.name()), first);
    assert_eq!(
        super::available().last().map(|k| k.name()),
        Some("portable")
    );
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        best.name(),
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            "neon-dotprod"
        } else {
            "neon"
        }
    );
}

/// Every kernel named in `WHITTLE_REQUIRE_KERNELS` (comma-separated) is available here, so a
/// suite that returns early for a kernel this machine lacks cannot pass unnoticed where the
/// kernel is expected (`cargo xtask test` requires `neon-dotprod` under qemu).
#[test]
fn required_kernels_are_available() {
    let Ok(required) = std::env::var("WHITTLE_REQUIRE_KERNELS") else {
        return;
    };
    let names: Vec<&str> = super::available().map(|k| k.name()).collect();
    for name in required.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        assert!(names.contains(&name), "{name} is not among {names:?}");
    }
}

/// `for_each_part` covers every item once, hands each its own share of `out`, and gives every
/// call a scratch of the caller's length that no other call writes.
#[test]
fn for_each_part_covers_every_item_once() {
    for threads in [1, 2, 3] {
        let kernel = Threaded::new(Portable, threads);
        for items in 0..12 {
            for per_item in 1..4 {
                let mut out = vec![-1.0f32; items * per_item];
                let mut scratch = vec![0.0f32; 5];
                kernel.for_each_part(items, &mut out, &mut scratch, &|range, out, scratch| {
                    assert_eq!(out.len(), range.len() * per_item);
                    assert_eq!(scratch.len(), 5);
                    for (item, values) in range.zip(out.chunks_exact_mut(per_item)) {
                        scratch.iter_mut().for_each(|s| *s = item as f32);
                        for value in values.iter_mut() {
                            assert_eq!(*value, -1.0, "item {item} written twice");
                            *value = item as f32;
                        }
                        assert!(scratch.iter().all(|&s| s == item as f32));
                    }
                });
                let expected: Vec<f32> = (0..items)
                    .flat_map(|i| std::iter::repeat_n(i as f32, per_item))
                    .collect();
                assert_eq!(
                    out, expected,
                    "{items} items × {per_item} on {threads} threads"
                );
            }
        }
    }
}

#[test]
fn threaded_is_shared_safely_between_callers() {
    let kernel = Threaded::new(super::best(), 2);
    std::thread::scope(|scope| {
        for seed in 0..3u64 {
            let kernel = &kernel;
            scope.spawn(move || {
                for tokens in [1, 1, 6] {
                    check(kernel, &Case::exact(200, 96, tokens, seed));
                }
            });
        }
    });
}

/// A pool's `gemm_shared` (one job for a group of products on one input) gives every
/// product's output, and a low-rank layer's intermediate, exactly as the kernel underneath
/// computes them one after the other: dense and low-rank products, one too small to split.
#[test]
fn shared_products_match_one_after_the_other() {
    let cols = 40;
    let x = values(7, cols);
    let dense = values(8, 70 * cols);
    let small = values(9, 10 * cols);
    let (a, b) = (values(10, 20 * cols), values(11, 50 * 20));
    let f32s = |rows: usize, cols: usize, data| Weight::F32(F32Matrix { rows, cols, data });
    let run = |kernel: &dyn Kernels| {
        let (mut out_dense, mut out_small) = (vec![SENTINEL; 70], vec![SENTINEL; 10]);
        let (mut low, mut out_low_rank) = (vec![SENTINEL; 20], vec![SENTINEL; 50]);
        let mut products = [
            SharedProduct {
                first: f32s(70, cols, &dense),
                second: None,
                low: &mut [],
                out: &mut out_dense,
            },
            SharedProduct {
                first: f32s(20, cols, &a),
                second: Some(f32s(50, 20, &b)),
                low: &mut low,
                out: &mut out_low_rank,
            },
            SharedProduct {
                first: f32s(10, cols, &small),
                second: None,
                low: &mut [],
                out: &mut out_small,
            },
        ];
        kernel.gemm_shared(&mut products, &x);
        [out_dense, low, out_low_rank, out_small]
    };
    let expected = run(&Portable);
    assert!(expected.iter().flatten().all(|v| *v != SENTINEL));
    for threads in [2, 3] {
        assert_eq!(
            run(&Threaded::new(Portable, threads)),
            expected,
            "{threads} threads"
        );
    }
}
