//! NEON with the int8 dot product (`dotprod`, Armv8.2's `sdot`; Cortex-A55/A76/A78 and later,
//! so every Jetson Orin and the Raspberry Pi 5): the [`Neon`] kernels, except that a one-token
//! q8 product rounds the activations to int8 (one scale per block of 32, as llama.cpp does for
//! its q8 dot products) and multiplies them with the weights in integers. `sdot` sums four
//! int8 products into each of four 32-bit lanes: a block of 32 weights is two loads and two
//! `sdot`, then one conversion and one multiply-add with the two scales, where [`Neon`]
//! widens every weight to f32 (in the release build, 42 instructions per row and block
//! against 10.5; ARCHITECTURE.md has the count).
//!
//! Decode on these cores should be bound by arithmetic, not memory: by that count an A78 at
//! 1.5 GHz widening int8 to f32 gets through about 3 GB/s of weights per core, while an Orin
//! Nano's memory gives each of its six cores about 11 GB/s (not yet timed on a board). Rows are taken four at a time, a quarter of the matrix
//! apart (four memory streams, as on x86).
//!
//! `sdot` is written with `asm!`: its intrinsic (`vdotq_s32`) is not stable Rust yet.
//!
//! `unsafe` is allowed in this module only, under the same rules as [`Neon`]'s.
#![allow(unsafe_code)]

use core::arch::aarch64::{
    float32x4_t, int8x16_t, int32x4_t, vabsq_f32, vaddvq_f32, vcombine_s8, vcombine_s16,
    vcvtnq_s32_f32, vcvtq_f32_s32, vdupq_n_f32, vdupq_n_s32, vfmaq_n_f32, vld1q_f32, vld1q_s8,
    vmaxq_f32, vmaxvq_f32, vmulq_n_f32, vqmovn_s16, vqmovn_s32, vst1q_s8,
};
use core::arch::asm;

use super::super::driver::{self, Panel, Simd, Source, Tile};
use super::super::select::cpu_has;
use super::super::{
    AttentionHead, DECODE_BELOW_TOKENS, F32Matrix, Kernels, Q4Matrix, Q8_BLOCK, Q8Matrix,
};
use super::Neon;

/// Columns of activations rounded at a time: a product with more columns runs in passes of
/// this many, each adding to `out`. 4,096 covers every matrix of models up to 7B parameters
/// in one pass and keeps the rounded copy (4.5 KiB) on the stack.
const PASS: usize = 4096;

/// [`Neon`] plus the int8 dot product. Constructed only by [`NeonDot::detect`].
#[derive(Clone, Copy, Debug)]
pub struct NeonDot {
    base: Neon,
}

impl NeonDot {
    /// The kernels, if this CPU has NEON and the dot product (at run time under `std`, at
    /// compile time without it).
    pub fn detect() -> Option<Self> {
        let base = Neon::detect()?;
        cpu_has!(is_aarch64_feature_detected, "dotprod").then_some(Self { base })
    }
}

impl Kernels for NeonDot {
    fn name(&self) -> &'static str {
        "neon-dotprod"
    }

    fn rounds_activations(&self, tokens: usize) -> bool {
        tokens < DECODE_BELOW_TOKENS
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.base.gemm_f32(w, x, tokens, out);
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        driver::gemm_q8(self, w, x, tokens, out);
    }

    fn gemm_q4(&self, w: Q4Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.base.gemm_q4(w, x, tokens, out);
    }

    fn attend(
        &self,
        head: &AttentionHead<'_>,
        scores: &mut [f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        self.base.attend(head, scores, out, lse);
    }

    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        self.base.swiglu(gate, up);
    }
}

/// One pass of activations rounded to int8: `q[j] · scales[j / 32] ≈ x[j]`, zero past the
/// pass's columns up to a whole block.
struct Rounded {
    q: [i8; PASS],
    scales: [f32; PASS / Q8_BLOCK],
}

impl Simd for NeonDot {
    const MR: usize = <Neon as Simd>::MR;
    const NR: usize = <Neon as Simd>::NR;

    unsafe fn matvec_f32_unchecked(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]) {
        // SAFETY: forwarded; `Neon` has the same preconditions.
        unsafe { self.base.matvec_f32_unchecked(w, x, out) }
    }

    unsafe fn matvec_q8_unchecked(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (rows, cols, per_row) = (w.rows, w.cols, w.blocks_per_row());
        let mut rounded = Rounded {
            q: [0; PASS],
            scales: [0.0; PASS / Q8_BLOCK],
        };
        for (pass, x) in x.chunks(PASS).enumerate() {
            let k0 = pass * PASS;
            // SAFETY: `self` proves the features; the driver guarantees `rows · cols` weights
            // and `rows · per_row` scales, so the product reads, from column `k0 < cols`,
            // `x.len() ≤ PASS` weights and `ceil(x.len() / 32)` scales (block `k0 / 32` on) of
            // every row `< rows`, and writes the `rows` outputs.
            unsafe {
                round(x, &mut rounded);
                matvec(
                    w.data.as_ptr().add(k0),
                    w.scales.as_ptr().add(k0 / Q8_BLOCK),
                    rows,
                    cols,
                    per_row,
                    x.len(),
                    &rounded,
                    out.as_mut_ptr(),
                    pass > 0,
                );
            }
        }
    }

    unsafe fn matvec_q4_unchecked(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
        // SAFETY: forwarded; `Neon` has the same preconditions.
        unsafe { self.base.matvec_q4_unchecked(w, x, out) }
    }

    unsafe fn pack_unchecked(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]) {
        // SAFETY: forwarded; `Neon` has the same `NR`.
        unsafe { self.base.pack_unchecked(src, panel, dst) }
    }

    unsafe fn tile_unchecked<const MT: usize>(&self, tile: Tile<'_>) {
        // SAFETY: forwarded; `Neon` has the same `MR` and `NR`.
        unsafe { self.base.tile_unchecked::<MT>(tile) }
    }
}

/// Rounds `x` (at most [`PASS`] values) into `r`: per block of 32, `step = max |x| / 127`
/// and `q = round(x / step)` (to nearest, ties to even); the block's last values past `x` are
/// zero.
#[target_feature(enable = "neon")]
unsafe fn round(x: &[f32], r: &mut Rounded) {
    for ((block, q), scale) in x
        .chunks(Q8_BLOCK)
        .zip(r.q.chunks_exact_mut(Q8_BLOCK))
        .zip(r.scales.iter_mut())
    {
        let mut v = [0.0f32; Q8_BLOCK];
        v.iter_mut().zip(block).for_each(|(v, x)| *v = *x);
        // SAFETY: every pointer below is into `v` (32 values) or `q` (32 bytes).
        unsafe {
            let lanes: [float32x4_t; 8] =
                core::array::from_fn(|i| vld1q_f32(v.as_ptr().add(4 * i)));
            let amax = vmaxvq_f32(
                lanes
                    .iter()
                    .fold(vdupq_n_f32(0.0), |m, &l| vmaxq_f32(m, vabsq_f32(l))),
            );
            let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            *scale = amax / 127.0;
            let [a, b, c, d, e, f, g, h] = lanes.map(|l| vcvtnq_s32_f32(vmulq_n_f32(l, inverse)));
            let bytes = |w: int32x4_t, x: int32x4_t, y: int32x4_t, z: int32x4_t| {
                let low = vcombine_s16(vqmovn_s32(w), vqmovn_s32(x));
                let high = vcombine_s16(vqmovn_s32(y), vqmovn_s32(z));
                vcombine_s8(vqmovn_s16(low), vqmovn_s16(high))
            };
            vst1q_s8(q.as_mut_ptr(), bytes(a, b, c, d));
            vst1q_s8(q.as_mut_ptr().add(16), bytes(e, f, g, h));
        }
    }
}

/// `acc + Σ` of four products of `a`'s and `b`'s bytes per 32-bit lane.
macro_rules! sdot {
    ($acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        let (a, b): (int8x16_t, int8x16_t) = ($a, $b);
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }};
}

/// Rows `i + j · stride` (`j < N`) over one pass of `n` columns: per block, two `sdot` per
/// row, converted to f32 and added times `weight scale · activation scale`. A last, partial
/// block's weights are copied into a zero-padded buffer first (the rounded activations are
/// zero there too).
#[target_feature(enable = "neon,dotprod")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_q8<const N: usize>(
    data: *const i8,
    scales: *const f32,
    i: usize,
    stride: usize,
    cols: usize,
    per_row: usize,
    n: usize,
    r: &Rounded,
    out: *mut f32,
    accumulate: bool,
) {
    let full = n / Q8_BLOCK;
    let rest = n - full * Q8_BLOCK;
    // SAFETY: the caller guarantees rows `i + j · stride` (`j < N`) with `n` weights from
    // `data + row · cols` and `ceil(n / 32)` scales from `scales + row · per_row`, and those
    // outputs; the partial block reads only its `rest` weights.
    unsafe {
        let w: [*const i8; N] = core::array::from_fn(|j| data.add((i + j * stride) * cols));
        let s: [*const f32; N] = core::array::from_fn(|j| scales.add((i + j * stride) * per_row));
        let mut acc = [vdupq_n_f32(0.0); N];
        for b in 0..full {
            let k = b * Q8_BLOCK;
            let q0 = vld1q_s8(r.q.as_ptr().add(k));
            let q1 = vld1q_s8(r.q.as_ptr().add(k + 16));
            let xs = *r.scales.as_ptr().add(b);
            for ((a, row), sc) in acc.iter_mut().zip(w).zip(s) {
                let d = sdot!(vdupq_n_s32(0), vld1q_s8(row.add(k)), q0);
                let d = sdot!(d, vld1q_s8(row.add(k + 16)), q1);
                *a = vfmaq_n_f32(*a, vcvtq_f32_s32(d), *sc.add(b) * xs);
            }
        }
        if rest > 0 {
            let k = full * Q8_BLOCK;
            let q0 = vld1q_s8(r.q.as_ptr().add(k));
            let q1 = vld1q_s8(r.q.as_ptr().add(k + 16));
            let xs = *r.scales.as_ptr().add(full);
            for ((a, row), sc) in acc.iter_mut().zip(w).zip(s) {
                let mut last = [0i8; Q8_BLOCK];
                core::ptr::copy_nonoverlapping(row.add(k), last.as_mut_ptr(), rest);
                let d = sdot!(vdupq_n_s32(0), vld1q_s8(last.as_ptr()), q0);
                let d = sdot!(d, vld1q_s8(last.as_ptr().add(16)), q1);
                *a = vfmaq_n_f32(*a, vcvtq_f32_s32(d), *sc.add(full) * xs);
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            let o = out.add(i + j * stride);
            let v = vaddvq_f32(a);
            *o = if accumulate { *o + v } else { v };
        }
    }
}

/// `out[i] (+)= Σ_j w[i][j] · x[j]` over one pass of `n` columns (from the pointers' start),
/// for every row `< rows`.
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec(
    data: *const i8,
    scales: *const f32,
    rows: usize,
    cols: usize,
    per_row: usize,
    n: usize,
    r: &Rounded,
    out: *mut f32,
    accumulate: bool,
) {
    // SAFETY (both calls): as for `rows_q8`; `by_quarters` passes rows below `rows`.
    driver::by_quarters(
        rows,
        |i, quarter| unsafe {
            rows_q8::<4>(
                data, scales, i, quarter, cols, per_row, n, r, out, accumulate,
            )
        },
        |i| unsafe { rows_q8::<1>(data, scales, i, 0, cols, per_row, n, r, out, accumulate) },
    );
}
