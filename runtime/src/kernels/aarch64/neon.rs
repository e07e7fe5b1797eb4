//! NEON kernels: 4 f32 lanes, int8 widened to f32 eight at a time, an 8 × 8 register tile.
//!
//! `unsafe` is allowed in this module only: the intrinsics need it. Every `#[target_feature]`
//! function is reached through a [`Neon`] value, which exists only once the feature was
//! detected (or enabled at compile time), and every raw pointer range is checked by the safe
//! wrapper that calls it.
#![allow(unsafe_code)]

use core::arch::aarch64::{
    float32x4_t, vaddq_f32, vaddvq_f32, vcvtq_f32_s32, vdupq_n_f32, vfmaq_f32, vget_high_s16,
    vget_low_s16, vld1_s8, vld1q_dup_f32, vld1q_f32, vmovl_s8, vmovl_s16, vst1q_f32,
};

use super::super::driver::{self, Simd};
use super::super::{F32Matrix, Kernels, Q8Matrix};

/// NEON kernels. Constructed only by [`Neon::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Neon {
    _detected: (),
}

impl Neon {
    /// The kernels, if this CPU has NEON (at run time under `std`, at compile time without it).
    pub fn detect() -> Option<Self> {
        detected().then_some(Self { _detected: () })
    }
}

#[cfg(any(test, feature = "std"))]
fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(any(test, feature = "std")))]
fn detected() -> bool {
    cfg!(target_feature = "neon")
}

impl Kernels for Neon {
    fn name(&self) -> &'static str {
        "neon"
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        driver::gemm_f32(self, w, x, tokens, out);
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        driver::gemm_q8(self, w, x, tokens, out);
    }
}

const LANES: usize = 4;
const MR: usize = 8;
const NR: usize = 8;

impl Simd for Neon {
    const MR: usize = MR;
    const NR: usize = NR;

    fn matvec_f32(&self, data: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
        if cols == 0 || x.len() < cols {
            return;
        }
        let rows = out.len().min(data.len() / cols);
        // SAFETY: `self` proves the feature; the callee reads `rows · cols ≤ data.len()`
        // weights, `cols ≤ x.len()` activations and writes `rows ≤ out.len()` outputs.
        unsafe { matvec_f32(data.as_ptr(), rows, cols, x.as_ptr(), out.as_mut_ptr()) }
    }

    fn matvec_q8(&self, data: &[i8], scales: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
        if cols == 0 || x.len() < cols {
            return;
        }
        let rows = out.len().min(data.len() / cols).min(scales.len());
        // SAFETY: as for `matvec_f32`, and `rows ≤ scales.len()`.
        unsafe {
            matvec_q8(
                data.as_ptr(),
                scales.as_ptr(),
                rows,
                cols,
                x.as_ptr(),
                out.as_mut_ptr(),
            )
        }
    }

    fn tile(
        &self,
        packed: &[f32],
        kc: usize,
        x: &[f32],
        x_stride: usize,
        mt: usize,
        out: &mut [f32],
        out_stride: usize,
        nr: usize,
        accumulate: bool,
    ) {
        if mt == 0 || mt > MR || nr == 0 || nr > NR || kc == 0 {
            return;
        }
        if packed.len() < kc * NR
            || x.len() < (mt - 1) * x_stride + kc
            || out.len() < (mt - 1) * out_stride + nr
        {
            return;
        }
        let t = Tile {
            packed: packed.as_ptr(),
            kc,
            x: x.as_ptr(),
            x_stride,
            out: out.as_mut_ptr(),
            out_stride,
            nr,
            accumulate,
        };
        // SAFETY: `self` proves the feature; the checks above bound every access of the tile:
        // packed `kc · NR`, x `(mt − 1) · x_stride + kc`, out `(mt − 1) · out_stride + nr`.
        unsafe {
            match mt {
                1 => tile::<1>(t),
                2 => tile::<2>(t),
                3 => tile::<3>(t),
                4 => tile::<4>(t),
                5 => tile::<5>(t),
                6 => tile::<6>(t),
                7 => tile::<7>(t),
                _ => tile::<8>(t),
            }
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn matvec_f32(data: *const f32, rows: usize, cols: usize, x: *const f32, out: *mut f32) {
    let full = cols / (2 * LANES) * (2 * LANES);
    // SAFETY: the caller guarantees `rows · cols` weights, `cols` activations and `rows`
    // outputs; every offset below is below those bounds.
    unsafe {
        for i in 0..rows {
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
            *out.add(i) = sum;
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn matvec_q8(
    data: *const i8,
    scales: *const f32,
    rows: usize,
    cols: usize,
    x: *const f32,
    out: *mut f32,
) {
    let full = cols / (2 * LANES) * (2 * LANES);
    // SAFETY: the caller guarantees `rows · cols` weights, `rows` scales, `cols` activations and
    // `rows` outputs; every offset below is below those bounds (`vld1_s8` reads eight bytes).
    unsafe {
        let mut i = 0;
        while i + 2 <= rows {
            let r0 = data.add(i * cols);
            let r1 = r0.add(cols);
            let (mut a0, mut a1, mut b0, mut b1) = (
                vdupq_n_f32(0.0),
                vdupq_n_f32(0.0),
                vdupq_n_f32(0.0),
                vdupq_n_f32(0.0),
            );
            let mut k = 0;
            while k < full {
                let x0 = vld1q_f32(x.add(k));
                let x1 = vld1q_f32(x.add(k + LANES));
                let w = vmovl_s8(vld1_s8(r0.add(k)));
                a0 = vfmaq_f32(a0, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), x0);
                a1 = vfmaq_f32(a1, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), x1);
                let w = vmovl_s8(vld1_s8(r1.add(k)));
                b0 = vfmaq_f32(b0, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), x0);
                b1 = vfmaq_f32(b1, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), x1);
                k += 2 * LANES;
            }
            let (mut s0, mut s1) = (vaddvq_f32(vaddq_f32(a0, a1)), vaddvq_f32(vaddq_f32(b0, b1)));
            for k in full..cols {
                s0 += f32::from(*r0.add(k)) * *x.add(k);
                s1 += f32::from(*r1.add(k)) * *x.add(k);
            }
            *out.add(i) = *scales.add(i) * s0;
            *out.add(i + 1) = *scales.add(i + 1) * s1;
            i += 2;
        }
        if i < rows {
            let row = data.add(i * cols);
            let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut k = 0;
            while k < full {
                let w = vmovl_s8(vld1_s8(row.add(k)));
                a0 = vfmaq_f32(
                    a0,
                    vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))),
                    vld1q_f32(x.add(k)),
                );
                a1 = vfmaq_f32(
                    a1,
                    vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))),
                    vld1q_f32(x.add(k + LANES)),
                );
                k += 2 * LANES;
            }
            let mut sum = vaddvq_f32(vaddq_f32(a0, a1));
            for k in full..cols {
                sum += f32::from(*row.add(k)) * *x.add(k);
            }
            *out.add(i) = *scales.add(i) * sum;
        }
    }
}

/// One register tile's operands (see [`Simd::tile`]).
#[derive(Clone, Copy)]
struct Tile {
    packed: *const f32,
    kc: usize,
    x: *const f32,
    x_stride: usize,
    out: *mut f32,
    out_stride: usize,
    nr: usize,
    accumulate: bool,
}

#[target_feature(enable = "neon")]
unsafe fn tile<const MT: usize>(t: Tile) {
    // SAFETY: the caller checked `kc · NR` packed values, `(MT − 1) · x_stride + kc`
    // activations and `(MT − 1) · out_stride + nr` outputs; partial rows go through a local
    // buffer so nothing past `nr` is touched.
    unsafe {
        let mut lo: [float32x4_t; MT] = [vdupq_n_f32(0.0); MT];
        let mut hi: [float32x4_t; MT] = [vdupq_n_f32(0.0); MT];
        for k in 0..t.kc {
            let w0 = vld1q_f32(t.packed.add(k * NR));
            let w1 = vld1q_f32(t.packed.add(k * NR + LANES));
            for (m, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let xv = vld1q_dup_f32(t.x.add(m * t.x_stride + k));
                *l = vfmaq_f32(*l, w0, xv);
                *h = vfmaq_f32(*h, w1, xv);
            }
        }
        for (m, (l, h)) in lo.into_iter().zip(hi).enumerate() {
            let o = t.out.add(m * t.out_stride);
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
