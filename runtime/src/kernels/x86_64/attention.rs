//! One query head's attention with AVX-512: the plain-Rust [`math::attend`] spends most of its
//! time per cached position on a horizontal sum (each key's dot product reduced on its own)
//! and on reading and writing the output once per position. Here sixteen positions' dot
//! products accumulate in sixteen registers and are reduced together by a tree of shuffles
//! (three instructions per pair and level: 46 for sixteen positions where sixteen horizontal
//! sums take about 130), and the weighted sum of values keeps up to 64 output lanes in
//! registers across all positions. The softmax in between is `math`'s, which vectorizes.
//!
//! `unsafe` is allowed in this module only, under the same rules as `avx512`'s.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_mask_reduce_max_ps,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_permutexvar_ps,
    _mm512_set1_ps, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps,
};

use super::super::math::{self, AttentionHead};
use super::avx512::mask;

/// Positions whose dot products are reduced together, and lanes of a register.
const LANES: usize = 16;
/// Output lanes kept in registers while the values are summed.
const OUT_CHUNKS: usize = 4;

/// As [`math::attend`]; positions whose key or value would lie past the slices, or past
/// `scores`, are left out.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) fn attend(head: &AttentionHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (head_dim, width) = (head.q.len(), out.len());
    let positions = head
        .positions
        .min(scores.len())
        .min(fitting(head.keys.len(), head_dim, head.stride))
        .min(fitting(head.values.len(), width, head.stride));
    let scores = scores.get_mut(..positions).unwrap_or_default();
    if positions == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    // SAFETY: every position below `positions` has `head_dim` keys and `width` values inside
    // the slices (`fitting`); loads and stores are masked to those lengths and to `scores`.
    let max = unsafe { scaled_dots(head, positions, scores) };
    scores
        .iter_mut()
        .for_each(|score| *score = math::exp(*score - max));
    let inverse_sum = 1.0 / math::sum(scores);
    // SAFETY: as above.
    unsafe { weighted_values(head, scores, inverse_sum, out) };
}

/// How many positions `stride` apart have `len` values inside a slice of `total`.
fn fitting(total: usize, len: usize, stride: usize) -> usize {
    match total.checked_sub(len) {
        None => 0,
        Some(_) if stride == 0 => usize::MAX,
        Some(rest) => rest / stride + 1,
    }
}

/// `scores[j] = scale · q · k_j` for `j < positions`; returns their maximum.
///
/// # Safety
/// Positions below `positions` have `q.len()` keys inside `head.keys`, and `scores` holds
/// `positions` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn scaled_dots(head: &AttentionHead<'_>, positions: usize, scores: &mut [f32]) -> f32 {
    let head_dim = head.q.len();
    let (q, keys) = (head.q.as_ptr(), head.keys.as_ptr());
    let scale = _mm512_set1_ps(head.scale);
    let mut max = f32::NEG_INFINITY;
    for first in (0..positions).step_by(LANES) {
        let n = (positions - first).min(LANES);
        let mut acc = [_mm512_setzero_ps(); LANES];
        for c in (0..head_dim).step_by(LANES) {
            let dims = mask(head_dim - c);
            // SAFETY: lanes below `head_dim` of `q` and of each valid position's key.
            unsafe {
                let q = _mm512_maskz_loadu_ps(dims, q.add(c));
                for (p, acc) in acc.iter_mut().enumerate() {
                    if p < n {
                        let key = keys.add((first + p) * head.stride + c);
                        *acc = _mm512_fmadd_ps(q, _mm512_maskz_loadu_ps(dims, key), *acc);
                    }
                }
            }
        }
        let dots = _mm512_mul_ps(sum_lanes(&acc), scale);
        // SAFETY: `n` values from `first`, inside `scores`.
        unsafe { _mm512_mask_storeu_ps(scores.as_mut_ptr().add(first), mask(n), dots) };
        max = max.max(_mm512_mask_reduce_max_ps(mask(n), dots));
    }
    max
}

/// Lane `j` of the result is the sum of `v[j]`'s sixteen lanes.
#[target_feature(enable = "avx512f")]
fn sum_lanes(v: &[__m512; LANES]) -> __m512 {
    // Each level adds pairs after moving what belongs together into the same positions: by
    // 256-bit halves, then 128-bit quarters, then pairs and single lanes within quarters.
    let halves: [__m512; 8] = pairwise(v, |a, b| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xee>(a, b),
        )
    });
    // Quarter `k` of `quarters[i]`: four partial sums of `v[4i + k]`.
    let quarters: [__m512; 4] = pairwise(&halves, |a, b| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xdd>(a, b),
        )
    });
    // Quarter `k` of `pairs[i]`: two partial sums of `v[8i + k]`, then two of `v[8i + 4 + k]`.
    let [a, b]: [__m512; 2] = pairwise(&quarters, |a, b| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xee>(a, b),
        )
    });
    // Lane `4k + s` holds the sum of `v[4s + k]`.
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(a, b),
        _mm512_shuffle_ps::<0xdd>(a, b),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, sums)
}

/// `combine` applied to `v`'s consecutive pairs (`v` holds `2 · N` registers).
#[target_feature(enable = "avx512f")]
#[inline]
fn pairwise<const N: usize>(
    v: &[__m512],
    combine: impl Fn(__m512, __m512) -> __m512,
) -> [__m512; N] {
    let (pairs, _) = v.as_chunks::<2>();
    core::array::from_fn(|i| {
        pairs
            .get(i)
            .map_or_else(|| _mm512_setzero_ps(), |&[a, b]| combine(a, b))
    })
}

/// `out = inverse_sum · Σ_j weights[j] · v_j`, 64 output lanes at a time.
///
/// # Safety
/// Positions below `weights.len()` have `out.len()` values inside `head.values`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn weighted_values(
    head: &AttentionHead<'_>,
    weights: &[f32],
    inverse_sum: f32,
    out: &mut [f32],
) {
    let width = out.len();
    let values = head.values.as_ptr();
    for first in (0..width).step_by(LANES * OUT_CHUNKS) {
        let masks: [__mmask16; OUT_CHUNKS] =
            core::array::from_fn(|c| mask(width.saturating_sub(first + c * LANES)));
        let mut acc = [_mm512_setzero_ps(); OUT_CHUNKS];
        for (j, &weight) in weights.iter().enumerate() {
            let weight = _mm512_set1_ps(weight);
            let row = j * head.stride + first;
            for (c, (acc, &mask)) in acc.iter_mut().zip(&masks).enumerate() {
                if mask != 0 {
                    // SAFETY: lanes below `width` of position `j`'s values.
                    let v = unsafe { _mm512_maskz_loadu_ps(mask, values.add(row + c * LANES)) };
                    *acc = _mm512_fmadd_ps(weight, v, *acc);
                }
            }
        }
        let inverse_sum = _mm512_set1_ps(inverse_sum);
        for (c, (acc, &mask)) in acc.iter().zip(&masks).enumerate() {
            if mask != 0 {
                // SAFETY: lanes below `width` of `out`.
                unsafe {
                    _mm512_mask_storeu_ps(
                        out.as_mut_ptr().add(first + c * LANES),
                        mask,
                        _mm512_mul_ps(*acc, inverse_sum),
                    );
                }
            }
        }
    }
}
