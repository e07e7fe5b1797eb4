//! q8 and q4 decode with AVX-512 VNNI (`vpdpbusd`: unsigned bytes times signed bytes, four
//! products summed into each 32-bit lane), used by [`Avx512`](super::Avx512) where the CPU has
//! it.
//!
//! The activations are rounded to int8 once per call, per block of 32 (`step = max |x| / 127`,
//! as llama.cpp rounds them for its quantized dot products; [`round_block`], in vectors).
//!
//! q4: they are laid out per four blocks `A, B, C, D` as `A[0..16] B[0..16] C[0..16] D[0..16]`
//! then `A[16..32] … D[16..32]`: the order in which one 64-byte load of the four blocks'
//! nibbles gives, masked, their low nibbles (values `0..16`, one block per 128-bit lane) and,
//! shifted right by four and masked, their high nibbles (values `16..32`). Two `vpdpbusd` then
//! multiply 128 weights into lanes that each hold one block's sums; they are converted once
//! and scaled by `d · step` of their block. `m · Σ x` uses the exact block sums.
//!
//! q8 ([`matvec_q8`]): in their natural order, so that one 64-byte load of a row's weights and
//! one of the activations cover the same two blocks; the signed weights are offset by 128 to
//! be the unsigned operand, and what that adds is taken off per block.
//!
//! Rows go four a quarter of the matrix apart, as in every x86 decode.
//!
//! Against the float q4 decode this is about a fifth of the instructions per weight (decode
//! here was bound by arithmetic, not memory: docs/RESULTS.md, "q4 kernels").
//!
//! `unsafe` is allowed in this module only, under the same rules as `avx512`'s.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512, __m512i, _mm_storeu_si128, _mm256_maskz_loadu_epi16, _mm512_abs_ps, _mm512_add_epi32,
    _mm512_add_ps, _mm512_and_si512, _mm512_cvtepi32_epi8, _mm512_cvtepi32_ps, _mm512_cvtph_ps,
    _mm512_cvtps_epi32, _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_maskz_loadu_epi8, _mm512_maskz_loadu_ps, _mm512_max_ps, _mm512_mul_ps,
    _mm512_permutexvar_ps, _mm512_reduce_add_epi32, _mm512_reduce_add_ps, _mm512_reduce_max_ps,
    _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_srli_epi16,
    _mm512_xor_si512,
};

use super::super::driver;
use super::super::{Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix};

/// Columns rounded at a time: longer rows run in passes of this many, each adding to `out`.
const PASS: usize = 4096;
/// Blocks of 32 in a pass.
const PASS_BLOCKS: usize = PASS / Q8_BLOCK;
/// One pass of a decode: blocks `first .. first + blocks` of every row (a partial last block
/// of a row counts, its activations padded with zeros), added to `out` unless it is the first.
#[derive(Clone, Copy)]
struct Pass {
    first: usize,
    blocks: usize,
    add: bool,
}

/// The passes over `per_row` blocks a row.
fn passes(per_row: usize) -> impl Iterator<Item = Pass> {
    (0..per_row.div_ceil(PASS_BLOCKS)).map(move |pass| {
        let first = pass * PASS_BLOCKS;
        Pass {
            first,
            blocks: (per_row - first).min(PASS_BLOCKS),
            add: pass > 0,
        }
    })
}

/// Blocks whose `(d, m)` pairs one 16-lane conversion covers.
const GROUP: usize = 8;
/// q4 blocks one 64-byte load of nibbles covers.
const QUARTET: usize = 4;

/// One pass of rounded activations.
struct Rounded {
    /// Per four blocks, 128 bytes in the order the module documentation gives.
    q: [i8; PASS],
    /// Per group of eight blocks, lane `2b` the step of block `b`, odd lanes 0.
    steps: [[f32; 16]; PASS_BLOCKS / GROUP],
    /// Per group of eight blocks, lane `2b + 1` the exact `Σ x` of block `b`, even lanes 0.
    sums: [[f32; 16]; PASS_BLOCKS / GROUP],
}

/// Rounds the first `blocks` blocks of `x` (at most [`PASS_BLOCKS`]; the last may be partial)
/// into `r`, clearing only what the pass reads: its pairs' bytes and its groups' lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round(x: &[f32], blocks: usize, r: &mut Rounded) {
    let groups = blocks.div_ceil(GROUP);
    r.steps.iter_mut().take(groups).for_each(|s| *s = [0.0; 16]);
    r.sums.iter_mut().take(groups).for_each(|s| *s = [0.0; 16]);
    let quartet_bytes = blocks.div_ceil(QUARTET) * QUARTET * Q8_BLOCK;
    r.q.iter_mut().take(quartet_bytes).for_each(|q| *q = 0);
    for (b, block) in x.chunks(Q8_BLOCK).take(blocks).enumerate() {
        let Some((q, step, _)) = round_block(block) else {
            continue;
        };
        let (group, lane) = (b / GROUP, 2 * (b % GROUP));
        if let Some(slot) = r.steps.get_mut(group).and_then(|s| s.get_mut(lane)) {
            *slot = step;
        }
        if let Some(sum) = r.sums.get_mut(group).and_then(|s| s.get_mut(lane + 1)) {
            *sum = block.iter().sum();
        }
        // Block `b` is number `b % 4` of quartet `b / 4`: its values `0..16` at `16 · (b % 4)`
        // in the quartet's first 64 bytes, `16..32` at the same offset in its last 64.
        let at = (b / QUARTET) * QUARTET * Q8_BLOCK + (b % QUARTET) * 16;
        let (low, high) = q.split_at(16);
        for (offset, values) in [(at, low), (at + 64, high)] {
            if let Some(slots) = r.q.get_mut(offset..offset + 16) {
                slots.copy_from_slice(values);
            }
        }
    }
}

/// The up to 32 values of `block` in two registers, zero past its end (a row's partial last
/// block), and `max |x|`; `None` when `block` is empty.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) fn load_block(block: &[f32]) -> Option<([__m512; 2], f32)> {
    let block = block
        .get(..block.len().min(Q8_BLOCK))
        .filter(|b| !b.is_empty())?;
    let lanes = |from: usize| {
        let n = block.len().saturating_sub(from).min(16);
        ((1u32 << n) - 1) as u16
    };
    // SAFETY: two 16-lane loads masked to the values of `block`; `wrapping_add` keeps the
    // second address defined when its mask is empty.
    let (low, high) = unsafe {
        (
            _mm512_maskz_loadu_ps(lanes(0), block.as_ptr()),
            _mm512_maskz_loadu_ps(lanes(16), block.as_ptr().wrapping_add(16)),
        )
    };
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    Some(([low, high], amax))
}

/// One block of up to 32 activations rounded to int8 at `step = max |x| / 127`, to nearest
/// with ties to even (the vector conversion in the default rounding mode, as `rintf`), padded
/// with zeros ([`load_block`]): the values, the step and `Σ q`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) fn round_block(block: &[f32]) -> Option<([i8; Q8_BLOCK], f32, i32)> {
    let ([low, high], amax) = load_block(block)?;
    let inverse = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    // |v · inverse| ≤ 127: the narrowing keeps every value.
    let q_low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inverse));
    let q_high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inverse));
    let mut q = [0i8; Q8_BLOCK];
    // SAFETY: two 16-byte stores into the local array.
    unsafe {
        _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q_low));
        _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(q_high));
    }
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q_low, q_high));
    Some((q, amax / 127.0, sum))
}

/// `out = W x` for one token; as [`Simd::matvec_q4_unchecked`](super::super::driver::Simd).
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and the lengths are those of
/// `Simd::matvec_q4_unchecked`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub(super) unsafe fn matvec_q4(w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
    let per_row = w.cols.div_ceil(Q8_BLOCK);
    let mut rounded = Rounded {
        q: [0; PASS],
        steps: [[0.0; 16]; PASS_BLOCKS / GROUP],
        sums: [[0.0; 16]; PASS_BLOCKS / GROUP],
    };
    let out_ptr = out.as_mut_ptr();
    for pass in passes(per_row) {
        round(
            x.get(pass.first * Q8_BLOCK..).unwrap_or_default(),
            pass.blocks,
            &mut rounded,
        );
        let r = &rounded;
        // SAFETY (both calls): the caller's lengths; `by_quarters` passes rows below `w.rows`,
        // and the pass reads its blocks of each.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows::<4>(w, i, quarter, pass, r, out_ptr) },
            |i| unsafe { rows::<1>(w, i, 0, pass, r, out_ptr) },
        );
    }
}

/// Rows `i + j · stride` (`j < N`) over blocks `first .. first + blocks` (`pass`), adding to
/// `out` when `add`. A partial last block is stored padded to 16 bytes and its activations
/// are rounded padded with zeros, so it is read as a whole one.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[inline]
unsafe fn rows<const N: usize>(
    w: Q4Matrix<'_>,
    i: usize,
    stride: usize,
    pass: Pass,
    r: &Rounded,
    out: *mut f32,
) {
    let Pass { first, blocks, add } = pass;
    let (data, scales) = (w.data.as_ptr(), w.scales.as_ptr());
    let per_row = w.cols.div_ceil(Q8_BLOCK);
    // SAFETY: the caller guarantees rows `i + j · stride` of `per_row` blocks and
    // `2 · per_row` scales and those outputs; blocks below `first + blocks ≤ per_row` are
    // read whole, the odd last one of a pass by a 16-byte masked load, and the scale loads are
    // masked to halves below `2 · (first + blocks)`.
    unsafe {
        let r_rows: [*const u8; N] =
            core::array::from_fn(|j| data.add((i + j * stride) * per_row * Q4_BLOCK_BYTES));
        let s_rows: [*const u16; N] =
            core::array::from_fn(|j| scales.add((i + j * stride) * per_row * 2));
        let nibble = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_m = [_mm512_setzero_ps(); N];
        for g in (0..blocks).step_by(GROUP) {
            let in_group = (blocks - g).min(GROUP);
            let steps = _mm512_loadu_ps(r.steps.as_ptr().add(g / GROUP).cast());
            let sums = _mm512_loadu_ps(r.sums.as_ptr().add(g / GROUP).cast());
            let half_mask = ((1u32 << (2 * in_group)) - 1) as u16;
            let mut scale = [_mm512_setzero_ps(); N];
            for ((s, a_m), row) in scale.iter_mut().zip(acc_m.iter_mut()).zip(s_rows) {
                let bits = _mm256_maskz_loadu_epi16(half_mask, row.add(2 * (first + g)).cast());
                let dm = _mm512_cvtph_ps(bits);
                // Odd lanes: m · Σ x; even lanes: d · step, the int dot product's scale.
                *a_m = _mm512_fmadd_ps(dm, sums, *a_m);
                *s = _mm512_mul_ps(dm, steps);
            }
            for p in (0..in_group).step_by(QUARTET) {
                let at = first + g + p;
                let in_quartet = (in_group - p).min(QUARTET);
                let q = r.q.as_ptr().add((g + p) * Q8_BLOCK);
                let (low_x, high_x) = (
                    _mm512_loadu_si512(q.cast()),
                    _mm512_loadu_si512(q.add(64).cast()),
                );
                // The 128-bit lane `k` holds block `p + k`: its scale is lane `2 (p + k)`.
                let pick = quartet_lanes(2 * p as i32);
                let bytes_mask = if in_quartet == QUARTET {
                    u64::MAX
                } else {
                    (1u64 << (16 * in_quartet)) - 1
                };
                for ((acc, s), row) in acc.iter_mut().zip(&scale).zip(r_rows) {
                    let bytes =
                        _mm512_maskz_loadu_epi8(bytes_mask, row.add(at * Q4_BLOCK_BYTES).cast());
                    let low = _mm512_and_si512(bytes, nibble);
                    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), nibble);
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, low_x);
                    let dot = _mm512_dpbusd_epi32(dot, high, high_x);
                    let lane_scale = _mm512_permutexvar_ps(pick, *s);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), lane_scale, *acc);
                }
            }
        }
        for (j, (a, a_m)) in acc.into_iter().zip(acc_m).enumerate() {
            let sum = reduce(a, a_m);
            let o = out.add(i + j * stride);
            *o = if add { *o + sum } else { sum };
        }
    }
}

/// The lane indices `a ×4, a + 2 ×4, a + 4 ×4, a + 6 ×4`: the scale lanes of four
/// consecutive blocks, one per 128-bit lane.
#[target_feature(enable = "avx512f")]
#[inline]
fn quartet_lanes(a: i32) -> __m512i {
    let lanes: [i32; 16] = core::array::from_fn(|l| a + 2 * (l / 4) as i32);
    // SAFETY: a load of a 16-lane array on the stack.
    unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn reduce(a: __m512, b: __m512) -> f32 {
    _mm512_reduce_add_ps(_mm512_add_ps(a, b))
}

/// One pass of activations rounded for the q8 decode: natural order, so one 64-byte load
/// covers two consecutive blocks, as one of a row's weights does.
struct RoundedQ8 {
    /// The rounded values; zero past the pass's blocks (an odd last block is read as a pair
    /// whose second half is zero).
    q: [i8; PASS + Q8_BLOCK],
    /// Per block: its step.
    steps: [f32; PASS_BLOCKS + QUAD],
    /// Per pair of blocks (64 values), lane `l`: `−128 · Σ q` over values `4l .. 4l + 4`,
    /// where a row's integer sum of that pair starts (see [`matvec_q8`]): the same for
    /// every row, so made once per pass.
    starts: [[i32; 16]; PAIRS],
}

/// Pairs of blocks in a pass, an odd last block's included.
const PAIRS: usize = PASS_BLOCKS.div_ceil(2);

/// Blocks of a row whose scales one 16-lane load covers.
const QUAD: usize = 16;

/// Rounds the first `blocks` blocks of `x` (at most [`PASS_BLOCKS`]; the last may be partial)
/// into `r`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_q8(x: &[f32], blocks: usize, r: &mut RoundedQ8) {
    r.q.iter_mut()
        .skip(blocks * Q8_BLOCK)
        .take(Q8_BLOCK)
        .for_each(|q| *q = 0);
    r.steps.iter_mut().for_each(|v| *v = 0.0);
    let blocks_in = x.chunks(Q8_BLOCK).take(blocks);
    let outs = r.q.chunks_exact_mut(Q8_BLOCK);
    for ((block, out), step) in blocks_in.zip(outs).zip(r.steps.iter_mut()) {
        if let Some((q, block_step, _)) = round_block(block) {
            out.copy_from_slice(&q);
            *step = block_step;
        }
    }
    let pairs = r.q.chunks_exact(2 * Q8_BLOCK).take(blocks.div_ceil(2));
    for (pair, start) in pairs.zip(r.starts.iter_mut()) {
        for (four, lane) in pair.chunks_exact(4).zip(start.iter_mut()) {
            *lane = -128 * four.iter().map(|&q| i32::from(q)).sum::<i32>();
        }
    }
}

/// `out = W x` for one token of int8 weights; as
/// [`Simd::matvec_q8_unchecked`](super::super::driver::Simd).
///
/// `vpdpbusd` multiplies unsigned by signed bytes, so the weights are read offset by 128
/// (`w ^ 0x80 = w + 128`, one xor per 64 weights) against the rounded activations `q`:
/// `Σ (w + 128) q = Σ w q + 128 Σ q`, and the second term, the same for every row, is where
/// each row's integer sum starts, negated (`−128 Σ q`, [`RoundedQ8::starts`], made once per
/// pass for all rows), so that it ends exactly at `Σ w q`. Per 64 weights and row: an xor, a
/// `vpdpbusd`, a conversion, a permutation of the block scales and one multiply-add, where
/// the float q8 decode needs sixteen instructions.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI, and the lengths are those of
/// `Simd::matvec_q8_unchecked`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub(super) unsafe fn matvec_q8(w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
    let per_row = w.cols.div_ceil(Q8_BLOCK);
    let mut rounded = RoundedQ8 {
        q: [0; PASS + Q8_BLOCK],
        steps: [0.0; PASS_BLOCKS + QUAD],
        starts: [[0; 16]; PAIRS],
    };
    let out_ptr = out.as_mut_ptr();
    for pass in passes(per_row) {
        round_q8(
            x.get(pass.first * Q8_BLOCK..).unwrap_or_default(),
            pass.blocks,
            &mut rounded,
        );
        let r = &rounded;
        // SAFETY (both calls): the caller's lengths; `by_quarters` passes rows below `w.rows`,
        // and the pass reads its blocks of each.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows_q8::<4>(w, i, quarter, pass, r, out_ptr) },
            |i| unsafe { rows_q8::<1>(w, i, 0, pass, r, out_ptr) },
        );
    }
}

/// Rows `i + j · stride` (`j < N`) of [`matvec_q8`] over blocks `first .. first + blocks`,
/// adding to `out` when `add`. A row's partial last block is read masked to its columns,
/// against activations rounded padded with zeros.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[inline]
unsafe fn rows_q8<const N: usize>(
    w: Q8Matrix<'_>,
    i: usize,
    stride: usize,
    pass: Pass,
    r: &RoundedQ8,
    out: *mut f32,
) {
    let Pass { first, blocks, add } = pass;
    let (data, scales, cols) = (w.data.as_ptr(), w.scales.as_ptr(), w.cols);
    let per_row = cols.div_ceil(Q8_BLOCK);
    // SAFETY: the caller guarantees rows `i + j · stride` of `cols` weights and `per_row`
    // scales and those outputs. Pairs of blocks are read whole where both lie within the
    // pass and the row, else by a load masked to the row's columns of the pass; the scales by
    // loads masked to the pass's blocks; `r` holds `blocks` blocks plus zeros.
    unsafe {
        let w_rows: [*const i8; N] =
            core::array::from_fn(|j| data.add((i + j * stride) * cols + first * Q8_BLOCK));
        let s_rows: [*const f32; N] =
            core::array::from_fn(|j| scales.add((i + j * stride) * per_row + first));
        let offset = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); N];
        for g in (0..blocks).step_by(QUAD) {
            let in_quad = (blocks - g).min(QUAD);
            let mask = ((1u32 << in_quad) - 1) as u16;
            let steps = _mm512_loadu_ps(r.steps.as_ptr().add(g));
            let mut scale = [_mm512_setzero_ps(); N];
            for (s, row) in scale.iter_mut().zip(s_rows) {
                let d = _mm512_maskz_loadu_ps(mask, row.add(g));
                *s = _mm512_mul_ps(d, steps);
            }
            for p in (0..in_quad).step_by(2) {
                let x8 = _mm512_loadu_si512(r.q.as_ptr().add((g + p) * Q8_BLOCK).cast());
                let pick = halves(p as i32, p as i32 + 1);
                let in_pass = if p + 1 < in_quad { 2 } else { 1 } * Q8_BLOCK;
                let valid = (cols - (first + g + p) * Q8_BLOCK).min(in_pass);
                let whole = valid == 2 * Q8_BLOCK;
                let bytes_mask = if whole { u64::MAX } else { (1u64 << valid) - 1 };
                let start = _mm512_loadu_si512(r.starts.as_ptr().add((g + p) / 2).cast());
                for ((acc, s), row) in acc.iter_mut().zip(&scale).zip(w_rows) {
                    let at = row.add((g + p) * Q8_BLOCK);
                    let bytes = if whole {
                        _mm512_loadu_si512(at.cast())
                    } else {
                        _mm512_maskz_loadu_epi8(bytes_mask, at)
                    };
                    let unsigned = _mm512_xor_si512(bytes, offset);
                    let dot = _mm512_dpbusd_epi32(start, unsigned, x8);
                    let lane_scale = _mm512_permutexvar_ps(pick, *s);
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), lane_scale, *acc);
                }
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            let sum = _mm512_reduce_add_ps(a);
            let o = out.add(i + j * stride);
            *o = if add { *o + sum } else { sum };
        }
    }
}

/// The lane indices `a ×8, b ×8`.
#[target_feature(enable = "avx512f")]
#[inline]
fn halves(a: i32, b: i32) -> __m512i {
    let lanes: [i32; 16] = core::array::from_fn(|l| if l < 8 { a } else { b });
    // SAFETY: a load of a 16-lane array on the stack.
    unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
}
