//! NEON kernels: 4 f32 lanes, int8 widened to f32 eight at a time, an 8 × 8 register tile.
//!
//! `unsafe` is allowed in this module only: the intrinsics need it. Every `#[target_feature]`
//! function is reached through a [`Neon`] value, which exists only once the feature was
//! detected (or enabled at compile time), and every length it relies on is checked once by the
//! driver's safe methods ([`Simd`]).
#![allow(unsafe_code)]

use core::arch::aarch64::{
    float32x4_t, uint8x16_t, vaddq_f32, vaddvq_f32, vandq_u8, vcvtq_f32_s32, vcvtq_f32_u32,
    vdupq_n_f32, vdupq_n_u8, vfmaq_f32, vget_high_s16, vget_high_u8, vget_high_u16, vget_low_s16,
    vget_low_u8, vget_low_u16, vld1_s8, vld1q_dup_f32, vld1q_f32, vld1q_u8, vmovl_s8, vmovl_s16,
    vmovl_u8, vmovl_u16, vmulq_f32, vmulq_n_f32, vreinterpretq_f32_f64, vreinterpretq_f64_f32,
    vshrq_n_u8, vst1q_f32, vtrn1q_f32, vtrn1q_f64, vtrn2q_f32, vtrn2q_f64,
};

use super::super::driver::{self, Panel, Simd, Source, Tile, simd_kernels};
use super::super::select::cpu_has;
use super::super::{F32Matrix, Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix, q4_pair};

/// NEON kernels. Constructed only by [`Neon::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Neon {
    _detected: (),
}

impl Neon {
    /// The kernels, if this CPU has NEON (at run time under `std`, at compile time without it).
    pub fn detect() -> Option<Self> {
        cpu_has!(is_aarch64_feature_detected, "neon").then_some(Self { _detected: () })
    }
}

simd_kernels!(Neon, "neon");

const LANES: usize = 4;
const MR: usize = 8;
const NR: usize = 8;

impl Simd for Neon {
    const MR: usize = MR;
    const NR: usize = NR;

    #[target_feature(enable = "neon")]
    unsafe fn matvec_f32_unchecked(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let cols = w.cols;
        let full = cols / (2 * LANES) * (2 * LANES);
        let (data, x) = (w.data.as_ptr(), x.as_ptr());
        // SAFETY: the driver guarantees `w.rows · cols` weights, `cols` activations and
        // `w.rows` outputs; every offset below is below those bounds.
        unsafe {
            for (i, o) in out.iter_mut().enumerate() {
                let row = data.add(i * cols);
                let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let mut k = 0;
                while k < full {
                    a0 = vfmaq_f32(a0, vld1q_f32(row.add(k)), vld1q_f32(x.add(k)));
                    a1 = vfmaq_f32(
                        a1,
                        vld1q_f32(row.add(k + LANES)),
                        vld1q_f32(x.add(k + LANES)),
                    );
                    k += 2 * LANES;
                }
                let mut sum = vaddvq_f32(vaddq_f32(a0, a1));
                for k in full..cols {
                    sum += *row.add(k) * *x.add(k);
                }
                *o = sum;
            }
        }
    }

    #[target_feature(enable = "neon")]
    unsafe fn matvec_q8_unchecked(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY: the driver guarantees a whole `w`, `w.cols` activations and `w.rows`
        // outputs; each call below covers rows below `w.rows`.
        unsafe {
            let mut i = 0;
            while i + 2 <= w.rows {
                rows_q8::<2>(w, i, x, out);
                i += 2;
            }
            while i < w.rows {
                rows_q8::<1>(w, i, x, out);
                i += 1;
            }
        }
    }

    #[target_feature(enable = "neon")]
    unsafe fn matvec_q4_unchecked(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY: as for `matvec_q8_unchecked`.
        unsafe {
            let mut i = 0;
            while i + 2 <= w.rows {
                rows_q4::<2>(w, i, x, out);
                i += 2;
            }
            while i < w.rows {
                rows_q4::<1>(w, i, x, out);
                i += 1;
            }
        }
    }

    /// 8 columns at a time, each of the 8 rows is loaded as two vectors (q8: widened,
    /// converted and scaled; q4: dequantized by [`driver::q4_lanes`]; a last chunk of fewer columns through a zero-padded copy), the
    /// four 4 × 4 blocks are transposed in registers, and every column is stored as two
    /// vectors; rows past `nr` are zero. Two stores per 8 values, where the portable packer
    /// stores every value on its own.
    #[target_feature(enable = "neon")]
    unsafe fn pack_unchecked(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]) {
        let (cols, row0, nr, k0, kc) = (panel.cols, panel.row0, panel.nr, panel.k0, panel.kc);
        let per_row = cols.div_ceil(Q8_BLOCK);
        let dst = dst.as_mut_ptr();
        // SAFETY: the driver guarantees that `src` holds rows `row0 .. row0 + nr` of `cols`
        // values (and `per_row` scales), `k0 + kc ≤ cols`, `k0` a multiple of 32, and `kc · NR`
        // values at `dst`; a chunk of fewer than 8 columns is read value by value, and an
        // 8-column chunk at a multiple of 8 lies in one 32-value block.
        unsafe {
            for c in (0..kc).step_by(2 * LANES) {
                let cols_here = (kc - c).min(2 * LANES);
                let block = (k0 + c) / Q8_BLOCK;
                let zero = vdupq_n_f32(0.0);
                let mut low = [zero; NR];
                let mut high = [zero; NR];
                for ((j, l), h) in low.iter_mut().enumerate().zip(high.iter_mut()).take(nr) {
                    let row = row0 + j;
                    let at = row * cols + k0 + c;
                    let mut line = [0.0f32; 2 * LANES];
                    let (scale, values) = match src {
                        Source::F32(data) if cols_here == 2 * LANES => (1.0, data.as_ptr().add(at)),
                        Source::F32(data) => {
                            for (k, v) in line.iter_mut().enumerate().take(cols_here) {
                                *v = *data.as_ptr().add(at + k);
                            }
                            (1.0, line.as_ptr())
                        }
                        Source::Q8(data, scales) => {
                            let scale = *scales.as_ptr().add(row * per_row + block);
                            if cols_here == 2 * LANES {
                                let w = vmovl_s8(vld1_s8(data.as_ptr().add(at)));
                                *l = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), scale);
                                *h = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), scale);
                                continue;
                            }
                            for (k, v) in line.iter_mut().enumerate().take(cols_here) {
                                *v = f32::from(*data.as_ptr().add(at + k));
                            }
                            (scale, line.as_ptr())
                        }
                        Source::Q4(data, scales) => {
                            line =
                                driver::q4_lanes::<{ 2 * LANES }>(data, scales, cols, row, k0 + c);
                            (1.0, line.as_ptr())
                        }
                    };
                    *l = vmulq_n_f32(vld1q_f32(values), scale);
                    *h = vmulq_n_f32(vld1q_f32(values.add(LANES)), scale);
                }
                let [l0, l1, l2, l3, l4, l5, l6, l7] = low;
                let [h0, h1, h2, h3, h4, h5, h6, h7] = high;
                // Column `k`: rows 0–3 from the upper blocks, rows 4–7 from the lower ones.
                let upper = transpose4(l0, l1, l2, l3)
                    .into_iter()
                    .chain(transpose4(h0, h1, h2, h3));
                let lower = transpose4(l4, l5, l6, l7)
                    .into_iter()
                    .chain(transpose4(h4, h5, h6, h7));
                for (k, (top, bottom)) in upper.zip(lower).enumerate().take(cols_here) {
                    let column = dst.add((c + k) * NR);
                    vst1q_f32(column, top);
                    vst1q_f32(column.add(LANES), bottom);
                }
            }
        }
    }

    #[target_feature(enable = "neon")]
    unsafe fn tile_unchecked<const MT: usize>(&self, t: Tile<'_>) {
        let (packed, x, out) = (t.packed.as_ptr(), t.x.as_ptr(), t.out.as_mut_ptr());
        // SAFETY: the driver checked `kc · NR` packed values, `(MT − 1) · x_stride + kc`
        // activations and `(MT − 1) · out_stride + nr` outputs; partial rows go through a
        // local buffer so nothing past `nr` is touched.
        unsafe {
            let mut lo: [float32x4_t; MT] = [vdupq_n_f32(0.0); MT];
            let mut hi: [float32x4_t; MT] = [vdupq_n_f32(0.0); MT];
            for k in 0..t.kc {
                let w0 = vld1q_f32(packed.add(k * NR));
                let w1 = vld1q_f32(packed.add(k * NR + LANES));
                for (m, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    let xv = vld1q_dup_f32(x.add(m * t.x_stride + k));
                    *l = vfmaq_f32(*l, w0, xv);
                    *h = vfmaq_f32(*h, w1, xv);
                }
            }
            for (m, (l, h)) in lo.into_iter().zip(hi).enumerate() {
                let o = out.add(m * t.out_stride);
                if t.nr == NR {
                    let (mut l, mut h) = (l, h);
                    if t.accumulate {
                        l = vaddq_f32(l, vld1q_f32(o));
                        h = vaddq_f32(h, vld1q_f32(o.add(LANES)));
                    }
                    vst1q_f32(o, l);
                    vst1q_f32(o.add(LANES), h);
                } else {
                    let mut buf = [0.0f32; NR];
                    vst1q_f32(buf.as_mut_ptr(), l);
                    vst1q_f32(buf.as_mut_ptr().add(LANES), h);
                    for (j, v) in buf.into_iter().take(t.nr).enumerate() {
                        let slot = o.add(j);
                        *slot = if t.accumulate { *slot + v } else { v };
                    }
                }
            }
        }
    }
}

/// The columns of the 4 × 4 matrix whose rows are `a`, `b`, `c`, `d`.
#[target_feature(enable = "neon")]
fn transpose4(a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t) -> [float32x4_t; 4] {
    let (ab_even, ab_odd) = (vtrn1q_f32(a, b), vtrn2q_f32(a, b));
    let (cd_even, cd_odd) = (vtrn1q_f32(c, d), vtrn2q_f32(c, d));
    let pair = |x: float32x4_t, y: float32x4_t| {
        let (x, y) = (vreinterpretq_f64_f32(x), vreinterpretq_f64_f32(y));
        (
            vreinterpretq_f32_f64(vtrn1q_f64(x, y)),
            vreinterpretq_f32_f64(vtrn2q_f64(x, y)),
        )
    };
    let (c0, c2) = pair(ab_even, cd_even);
    let (c1, c3) = pair(ab_odd, cd_odd);
    [c0, c1, c2, c3]
}

/// Eight int8 weights at `row` times the eight activations at `x`, added to `(lo, hi)`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn fma8(
    lo: float32x4_t,
    hi: float32x4_t,
    row: *const i8,
    x: *const f32,
) -> (float32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees eight readable weights at `row` and activations at `x`.
    unsafe {
        let w = vmovl_s8(vld1_s8(row));
        (
            vfmaq_f32(lo, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), vld1q_f32(x)),
            vfmaq_f32(
                hi,
                vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))),
                vld1q_f32(x.add(LANES)),
            ),
        )
    }
}

/// Rows `i .. i + N` of [`Simd::matvec_q8_unchecked`]: a block of 32 weights is four 8-byte loads whose
/// products are summed in two vectors, then scaled once into the row's accumulator; the last,
/// partial block takes whole groups of 8 in vectors and the rest in scalars.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn rows_q8<const N: usize>(w: Q8Matrix<'_>, i: usize, x: *const f32, out: *mut f32) {
    let (data, scales, cols) = (w.data.as_ptr(), w.scales.as_ptr(), w.cols);
    let per_row = cols.div_ceil(Q8_BLOCK);
    let full = cols / Q8_BLOCK;
    let k_rest = full * Q8_BLOCK;
    let groups = (cols - k_rest) / (2 * LANES);
    let k_tail = k_rest + groups * 2 * LANES;
    // SAFETY: the caller guarantees rows `i .. i + N` of `cols` weights and `per_row` scales,
    // `cols` activations and outputs `i .. i + N`; every offset below is below those bounds.
    unsafe {
        let r: [*const i8; N] = core::array::from_fn(|j| data.add((i + j) * cols));
        let s: [*const f32; N] = core::array::from_fn(|j| scales.add((i + j) * per_row));
        let mut acc = [vdupq_n_f32(0.0); N];
        let mut tail = [0.0f32; N];
        for ((a, t), (row, sc)) in acc
            .iter_mut()
            .zip(tail.iter_mut())
            .zip(r.into_iter().zip(s))
        {
            for b in 0..full {
                let k = b * Q8_BLOCK;
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                (lo, hi) = fma8(lo, hi, row.add(k), x.add(k));
                (lo, hi) = fma8(lo, hi, row.add(k + 8), x.add(k + 8));
                (lo, hi) = fma8(lo, hi, row.add(k + 16), x.add(k + 16));
                (lo, hi) = fma8(lo, hi, row.add(k + 24), x.add(k + 24));
                *a = vfmaq_f32(*a, vaddq_f32(lo, hi), vdupq_n_f32(*sc.add(b)));
            }
            if k_rest < cols {
                let scale = *sc.add(full);
                let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                for g in 0..groups {
                    let k = k_rest + g * 2 * LANES;
                    (lo, hi) = fma8(lo, hi, row.add(k), x.add(k));
                }
                *a = vfmaq_f32(*a, vaddq_f32(lo, hi), vdupq_n_f32(scale));
                let mut sum = 0.0f32;
                for k in k_tail..cols {
                    sum += f32::from(*row.add(k)) * *x.add(k);
                }
                *t = scale * sum;
            }
        }
        for (j, (a, t)) in acc.into_iter().zip(tail).enumerate() {
            *out.add(i + j) = vaddvq_f32(a) + t;
        }
    }
}

/// The four `f32` vectors of a block's 16 nibbles selected by `half` (low or high nibbles).
#[target_feature(enable = "neon")]
#[inline]
fn widen_nibbles(half: uint8x16_t) -> [float32x4_t; 4] {
    let (low, high) = (vmovl_u8(vget_low_u8(half)), vmovl_u8(vget_high_u8(half)));
    [
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(low))),
        vcvtq_f32_u32(vmovl_u16(vget_high_u16(low))),
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(high))),
        vcvtq_f32_u32(vmovl_u16(vget_high_u16(high))),
    ]
}

/// Rows `i .. i + N` of [`Simd::matvec_q4_unchecked`]: per whole block, its low nibbles
/// (values 0–15) and high nibbles (16–31) widened to eight vectors, `Σ q·x` in two
/// accumulators, then `d · Σ q·x + m · Σ x` into the row's; the last, partial block in scalars.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn rows_q4<const N: usize>(w: Q4Matrix<'_>, i: usize, x: *const f32, out: *mut f32) {
    let (data, scales, cols) = (w.data.as_ptr(), w.scales.as_ptr(), w.cols);
    let per_row = cols.div_ceil(Q8_BLOCK);
    let full = cols / Q8_BLOCK;
    // SAFETY: the caller guarantees rows `i .. i + N` of `per_row` blocks of 16 bytes and
    // `2 · per_row` f16 scales, `cols` activations and outputs `i .. i + N`; every offset below
    // is below those bounds.
    unsafe {
        let r: [*const u8; N] =
            core::array::from_fn(|j| data.add((i + j) * per_row * Q4_BLOCK_BYTES));
        let s: [*const u16; N] = core::array::from_fn(|j| scales.add((i + j) * per_row * 2));
        let nibble = vdupq_n_u8(0x0f);
        let mut acc = [vdupq_n_f32(0.0); N];
        for b in 0..full {
            let k = b * Q8_BLOCK;
            let xv: [float32x4_t; 8] = core::array::from_fn(|v| vld1q_f32(x.add(k + v * LANES)));
            let xs = vaddq_f32(
                vaddq_f32(vaddq_f32(xv[0], xv[1]), vaddq_f32(xv[2], xv[3])),
                vaddq_f32(vaddq_f32(xv[4], xv[5]), vaddq_f32(xv[6], xv[7])),
            );
            for ((a, row), sc) in acc.iter_mut().zip(r).zip(s) {
                let bytes = vld1q_u8(row.add(b * Q4_BLOCK_BYTES));
                let [q0, q1, q2, q3] = widen_nibbles(vandq_u8(bytes, nibble));
                let [q4, q5, q6, q7] = widen_nibbles(vshrq_n_u8::<4>(bytes));
                let mut lo = vmulq_f32(q0, xv[0]);
                let mut hi = vmulq_f32(q1, xv[1]);
                lo = vfmaq_f32(lo, q2, xv[2]);
                hi = vfmaq_f32(hi, q3, xv[3]);
                lo = vfmaq_f32(lo, q4, xv[4]);
                hi = vfmaq_f32(hi, q5, xv[5]);
                lo = vfmaq_f32(lo, q6, xv[6]);
                hi = vfmaq_f32(hi, q7, xv[7]);
                let (d, m) = q4_pair(core::slice::from_raw_parts(sc.add(2 * b), 2));
                *a = vfmaq_f32(*a, vaddq_f32(lo, hi), vdupq_n_f32(d));
                *a = vfmaq_f32(*a, xs, vdupq_n_f32(m));
            }
        }
        for (j, ((a, row), sc)) in acc.into_iter().zip(r).zip(s).enumerate() {
            let mut sum = vaddvq_f32(a);
            sum += driver::q4_partial_block(row, sc, x, cols);
            *out.add(i + j) = sum;
        }
    }
}
