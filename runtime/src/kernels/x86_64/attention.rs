//! The attention of the query heads that share a key/value head, with AVX-512: the plain-Rust
//! [`math::attend`] spends most of its time per cached position on a horizontal sum (each
//! key's dot product reduced on its own) and on reading and writing the output once per
//! position, and reads the cache once per query. Here sixteen positions' dot products
//! accumulate in sixteen registers and are reduced together by a tree of shuffles (three
//! instructions per pair and level: 46 for sixteen positions where sixteen horizontal sums take
//! about 130), every query of the group on those sixteen keys while they are in the L1 cache
//! (16-bit integers, widened per query, the position's scale applied to the sum);
//! the weighted sum of values keeps up to 64 output lanes of up to four queries in registers
//! across all positions, each value (f16, widened by `vcvtph2ps`) read once for them. The softmax in between is `math`'s,
//! which vectorizes.
//!
//! `unsafe` is allowed in this module only, under the same rules as `avx512`'s.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512, __mmask16, _mm256_loadu_si256, _mm256_maskz_loadu_epi16, _mm512_add_ps,
    _mm512_cvtepi16_epi32, _mm512_cvtepi32_ps, _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_mask_max_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps,
    _mm512_permutexvar_ps, _mm512_reduce_max_ps, _mm512_set1_ps, _mm512_setr_epi32,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps,
};

use super::super::math::{self, AttentionHead};
use super::avx512::mask;

/// Positions whose dot products are reduced together, and lanes of a register.
const LANES: usize = 16;
/// Output lanes kept in registers per query while the values are summed.
const OUT_CHUNKS: usize = 4;
/// Queries whose weighted values are summed in one pass over the values (`4 · OUT_CHUNKS`
/// accumulators, the values and a weight fit in the 32 registers).
const MAX_GROUP: usize = 4;

/// As [`math::attend`]; positions whose key or value would lie past the slices, or past
/// what `scores` holds for every query, are left out. The group's queries share each read
/// of the cache: sixteen positions' keys are read from memory for the first query and from
/// the L1 cache for the others, and every value is read once for up to [`MAX_GROUP`] queries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) fn attend(
    head: &AttentionHead<'_>,
    scores: &mut [f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let queries = head.queries();
    out.iter_mut().for_each(|o| *o = 0.0);
    lse.iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
    let Some(width) = out.len().checked_div(queries) else {
        return;
    };
    let positions = head.fitting_positions(scores.len(), width);
    if positions == 0 || width == 0 {
        return;
    }
    let mut first = 0;
    while first < queries {
        let group = (queries - first).min(MAX_GROUP);
        let part = Part {
            first,
            positions,
            width,
        };
        // SAFETY: every position below `positions` has `head_dim` keys and `width` values
        // inside the slices, and `scores` holds `positions` values for every query
        // (`fitting_positions`); loads and stores are masked to those lengths.
        unsafe {
            let lse = lse.get_mut(first..).unwrap_or_default();
            match group {
                1 => attend_group::<1>(head, part, scores, out, lse),
                2 => attend_group::<2>(head, part, scores, out, lse),
                3 => attend_group::<3>(head, part, scores, out, lse),
                _ => attend_group::<MAX_GROUP>(head, part, scores, out, lse),
            }
        }
        first += group;
    }
}

/// Queries `first .. first + G` of a group over `positions` positions into outputs of
/// `width` values.
#[derive(Clone, Copy)]
struct Part {
    first: usize,
    positions: usize,
    width: usize,
}

/// Queries `part.first .. part.first + G`: their scores in `scores[g · positions ..]`, their
/// softmax, their weighted values and, where `lse` holds them, their log-sum-exps.
///
/// # Safety
/// As [`attend`] establishes: positions below `part.positions` lie inside the slices, `scores`
/// holds `part.positions` values for each of the group's queries, and `out` `part.width`
/// values for each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn attend_group<const G: usize>(
    head: &AttentionHead<'_>,
    part: Part,
    scores: &mut [f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let Part {
        first,
        positions,
        width,
    } = part;
    // SAFETY: the caller's guarantees.
    let max = unsafe { scaled_dots::<G>(head, first, positions, scores) };
    let mut inverse_sums = [0.0f32; G];
    for (g, ((row, max), inverse_sum)) in scores
        .chunks_exact_mut(positions)
        .zip(max)
        .zip(&mut inverse_sums)
        .enumerate()
    {
        row.iter_mut()
            .for_each(|score| *score = math::exp(*score - max));
        let total = math::sum(row);
        if let Some(lse) = lse.get_mut(g) {
            *lse = max + libm::logf(total);
        }
        *inverse_sum = 1.0 / total;
    }
    let out = out.get_mut(first * width..).unwrap_or_default();
    // SAFETY: as above.
    unsafe { weighted_values::<G>(head, scores, positions, inverse_sums, out, width) };
}

/// `scores[g · positions + j] = scale · q_{first + g} · k_j` for `j < positions` and `g < G`;
/// returns each query's maximum. Sixteen positions at a time, all `G` queries on them before
/// the next sixteen, so their keys come from memory once.
///
/// # Safety
/// Positions below `positions` have `head_dim` keys inside `head.keys`, queries
/// `first .. first + G` lie inside `head.q`, and `scores` holds `G · positions` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn scaled_dots<const G: usize>(
    head: &AttentionHead<'_>,
    first: usize,
    positions: usize,
    scores: &mut [f32],
) -> [f32; G] {
    let scale = _mm512_set1_ps(head.scale);
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); G];
    for start in (0..positions).step_by(LANES) {
        let n = (positions - start).min(LANES);
        // SAFETY: position `start` lies inside `head.keys`, the `n` from it inside
        // `head.key_scales`.
        let (keys, key_scales) = unsafe {
            (
                head.keys.as_ptr().add(start * head.stride),
                _mm512_maskz_loadu_ps(mask(n), head.key_scales.as_ptr().add(start)),
            )
        };
        let key_scales = _mm512_mul_ps(key_scales, scale);
        for (g, max) in max.iter_mut().enumerate() {
            // SAFETY: query `first + g` lies inside `head.q`; the `n` positions from `start`
            // have their keys inside `head.keys`.
            let sums = unsafe {
                let q = head.q.as_ptr().add((first + g) * head.head_dim);
                if n == LANES {
                    dots::<true>(q, keys, head, LANES)
                } else {
                    dots::<false>(q, keys, head, n)
                }
            };
            let dots = _mm512_mul_ps(sums, key_scales);
            // SAFETY: `n` values from `g · positions + start`, inside `scores`.
            unsafe {
                _mm512_mask_storeu_ps(
                    scores.as_mut_ptr().add(g * positions + start),
                    mask(n),
                    dots,
                );
            }
            *max = _mm512_mask_max_ps(*max, mask(n), *max, dots);
        }
    }
    max.map(|max| _mm512_reduce_max_ps(max))
}

/// Lane `p` of the result is `q · k_p` for the first `n` positions from `keys` (`head.stride`
/// apart, their integers unscaled), the others zero. A chunk of sixteen lanes of the query
/// stays in a register while the `n` keys' chunks are widened and multiplied into their
/// accumulators.
///
/// # Safety
/// `q` points at `head.head_dim` values, `keys` at `n` positions' keys (`head.head_dim` values
/// each, `head.stride` apart).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
#[inline]
unsafe fn dots<const WHOLE: bool>(
    q: *const f32,
    keys: *const i16,
    head: &AttentionHead<'_>,
    n: usize,
) -> __m512 {
    // A whole block's count is a constant, so its loops unroll and the sums stay in registers.
    let n = if WHOLE { LANES } else { n };
    let mut acc = [_mm512_setzero_ps(); LANES];
    let mut c = 0;
    while c < head.head_dim {
        // SAFETY: lanes below `head_dim` of the query and of each of the `n` keys.
        unsafe {
            let mut key = keys.add(c);
            if c + LANES <= head.head_dim {
                let q = _mm512_loadu_ps(q.add(c));
                for acc in acc.iter_mut().take(n) {
                    let k = _mm512_cvtepi16_epi32(_mm256_loadu_si256(key.cast()));
                    *acc = _mm512_fmadd_ps(q, _mm512_cvtepi32_ps(k), *acc);
                    key = key.wrapping_add(head.stride);
                }
            } else {
                let dims = mask(head.head_dim - c);
                let q = _mm512_maskz_loadu_ps(dims, q.add(c));
                for acc in acc.iter_mut().take(n) {
                    let k = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(dims, key));
                    *acc = _mm512_fmadd_ps(q, _mm512_cvtepi32_ps(k), *acc);
                    key = key.wrapping_add(head.stride);
                }
            }
        }
        c += LANES;
    }
    sum_lanes(&acc)
}

/// Lane `j` of the result is the sum of `v[j]`'s sixteen lanes.
#[target_feature(enable = "avx512f")]
#[inline]
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

/// `out[g · width ..] = inverse_sums[g] · Σ_j weights[g · positions + j] · v_j` for `g < G`,
/// 64 output lanes at a time: each value is loaded once for the `G` queries.
///
/// # Safety
/// Positions below `positions` have `width` values inside `head.values`, `weights` holds
/// `G · positions` values and `out` `G · width`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn weighted_values<const G: usize>(
    head: &AttentionHead<'_>,
    weights: &[f32],
    positions: usize,
    inverse_sums: [f32; G],
    out: &mut [f32],
    width: usize,
) {
    let values = head.values.as_ptr();
    let (weights, out) = (weights.as_ptr(), out.as_mut_ptr());
    for first in (0..width).step_by(LANES * OUT_CHUNKS) {
        let masks: [__mmask16; OUT_CHUNKS] =
            core::array::from_fn(|c| mask(width.saturating_sub(first + c * LANES)));
        let mut acc = [[_mm512_setzero_ps(); OUT_CHUNKS]; G];
        for j in 0..positions {
            let row = j * head.stride + first;
            let mut v = [_mm512_setzero_ps(); OUT_CHUNKS];
            for (c, (v, &mask)) in v.iter_mut().zip(&masks).enumerate() {
                // SAFETY: lanes below `width` of position `j`'s values (zero where masked off),
                // f16 bits widened to f32.
                *v = unsafe {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        mask,
                        values.add(row + c * LANES).cast::<i16>(),
                    ))
                };
            }
            for (g, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `g · positions + j < G · positions`.
                let weight = _mm512_set1_ps(unsafe { *weights.add(g * positions + j) });
                for (acc, &v) in acc.iter_mut().zip(&v) {
                    *acc = _mm512_fmadd_ps(weight, v, *acc);
                }
            }
        }
        for (g, (acc, inverse_sum)) in acc.iter().zip(inverse_sums).enumerate() {
            let inverse_sum = _mm512_set1_ps(inverse_sum);
            for (c, (acc, &mask)) in acc.iter().zip(&masks).enumerate() {
                if mask != 0 {
                    // SAFETY: lanes below `width` of query `g`'s output.
                    unsafe {
                        _mm512_mask_storeu_ps(
                            out.add(g * width + first + c * LANES),
                            mask,
                            _mm512_mul_ps(*acc, inverse_sum),
                        );
                    }
                }
            }
        }
    }
}
