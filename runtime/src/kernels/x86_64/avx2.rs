//! AVX2 + FMA kernels: 8 f32 lanes, scalar row tails, a 6 × 16 register tile.
//!
//! `unsafe` is allowed in this module only: the intrinsics need it. Every `#[target_feature]`
//! function is reached through an [`Avx2Fma`] value, which exists only once the features were
//! detected (or enabled at compile time), and every raw pointer range is checked by the safe
//! wrapper that calls it.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m256, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_loadl_epi64, _mm_movehl_ps, _mm_shuffle_ps,
    _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtepi8_epi32, _mm256_cvtepi32_ps,
    _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_storeu_ps,
};

use super::super::driver::{self, Simd};
use super::super::{AttentionHead, F32Matrix, Kernels, Q8_BLOCK, Q8Matrix, math};

/// AVX2 + FMA kernels. Constructed only by [`Avx2Fma::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma {
    _detected: (),
}

impl Avx2Fma {
    /// The kernels, if this CPU has AVX2 and FMA (at run time under `std`, at compile time
    /// without it).
    pub fn detect() -> Option<Self> {
        detected().then_some(Self { _detected: () })
    }
}

#[cfg(any(test, feature = "std"))]
fn detected() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(any(test, feature = "std")))]
fn detected() -> bool {
    cfg!(all(target_feature = "avx2", target_feature = "fma"))
}

impl Kernels for Avx2Fma {
    fn name(&self) -> &'static str {
        "avx2"
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        driver::gemm_f32(self, w, x, tokens, out);
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        driver::gemm_q8(self, w, x, tokens, out);
    }

    fn attend(&self, head: &AttentionHead<'_>, scores: &mut [f32], out: &mut [f32]) {
        // SAFETY: `self` proves the features; the callee is safe code (slices only).
        unsafe { attend(head, scores, out) }
    }

    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        // SAFETY: as for `attend`.
        unsafe { swiglu(gate, up) }
    }
}

/// [`math::attend`] compiled for these registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn attend(head: &AttentionHead<'_>, scores: &mut [f32], out: &mut [f32]) {
    math::attend(head, scores, out);
}

/// [`math::swiglu`] compiled for these registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    math::swiglu(gate, up);
}

const LANES: usize = 8;
const MR: usize = 6;
const NR: usize = 16;

impl Simd for Avx2Fma {
    const MR: usize = MR;
    const NR: usize = NR;

    fn matvec_f32(&self, data: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
        if cols == 0 || x.len() < cols {
            return;
        }
        let rows = out.len().min(data.len() / cols);
        // SAFETY: `self` proves the features; the callee reads `rows · cols ≤ data.len()`
        // weights, `cols ≤ x.len()` activations and writes `rows ≤ out.len()` outputs.
        unsafe { matvec::<f32>(data.as_ptr(), rows, cols, x.as_ptr(), out.as_mut_ptr()) }
    }

    fn matvec_q8(&self, data: &[i8], scales: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
        if cols == 0 || x.len() < cols {
            return;
        }
        let rows = out
            .len()
            .min(data.len() / cols)
            .min(scales.len() / cols.div_ceil(Q8_BLOCK));
        // SAFETY: as for `matvec_f32`, and `rows · ceil(cols / 32) ≤ scales.len()`.
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
        // SAFETY: `self` proves the features; the checks above bound every access of the tile:
        // packed `kc · NR`, x `(mt − 1) · x_stride + kc`, out `(mt − 1) · out_stride + nr`.
        unsafe {
            match mt {
                1 => tile::<1>(t),
                2 => tile::<2>(t),
                3 => tile::<3>(t),
                4 => tile::<4>(t),
                5 => tile::<5>(t),
                _ => tile::<6>(t),
            }
        }
    }
}

/// A weight element type the row kernels can widen to f32, eight lanes at a time.
trait Element: Copy {
    /// Eight weights at `p` as f32.
    ///
    /// # Safety
    /// Eight elements at `p` are readable, and the CPU has AVX2.
    unsafe fn load8(p: *const Self) -> __m256;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: forwarded from the caller.
        unsafe { _mm256_loadu_ps(p) }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for i8 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: forwarded from the caller; `_mm_loadl_epi64` reads exactly eight bytes.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn matvec<E: Element>(
    data: *const E,
    rows: usize,
    cols: usize,
    x: *const f32,
    out: *mut f32,
) {
    let full = cols / LANES * LANES;
    // SAFETY: the caller guarantees `rows · cols` weights, `cols` activations and `rows`
    // outputs; every offset below is below those bounds.
    unsafe {
        let tail = |row: *const E| {
            let mut sum = 0.0f32;
            for k in full..cols {
                sum += (*row.add(k)).to_f32() * *x.add(k);
            }
            sum
        };
        let mut i = 0;
        while i + 4 <= rows {
            let r = [
                data.add(i * cols),
                data.add((i + 1) * cols),
                data.add((i + 2) * cols),
                data.add((i + 3) * cols),
            ];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k < full {
                let xv = _mm256_loadu_ps(x.add(k));
                for (a, row) in acc.iter_mut().zip(r) {
                    *a = _mm256_fmadd_ps(E::load8(row.add(k)), xv, *a);
                }
                k += LANES;
            }
            for (j, (a, row)) in acc.into_iter().zip(r).enumerate() {
                *out.add(i + j) = hsum(a) + tail(row);
            }
            i += 4;
        }
        while i < rows {
            let row = data.add(i * cols);
            let mut acc = _mm256_setzero_ps();
            let mut k = 0;
            while k < full {
                acc = _mm256_fmadd_ps(E::load8(row.add(k)), _mm256_loadu_ps(x.add(k)), acc);
                k += LANES;
            }
            *out.add(i) = hsum(acc) + tail(row);
            i += 1;
        }
    }
}

/// Rows `i + j · stride` (`j < N`) of [`matvec_q8`], see there; a block of 32 weights is four 8-byte loads whose
/// products are summed, then scaled once into the row's accumulator; the last, partial block
/// takes whole groups of 8 in vectors and the rest in scalars.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows_q8<const N: usize>(
    data: *const i8,
    scales: *const f32,
    i: usize,
    stride: usize,
    cols: usize,
    x: *const f32,
    out: *mut f32,
) {
    let per_row = cols.div_ceil(Q8_BLOCK);
    let full = cols / Q8_BLOCK;
    let k_rest = full * Q8_BLOCK;
    let groups = (cols - k_rest) / LANES;
    let k_tail = k_rest + groups * LANES;
    // SAFETY: the caller guarantees rows `i + j · stride` (`j < N`) of `cols` weights and
    // `per_row` scales, `cols` activations and those outputs; every offset below is below those bounds.
    unsafe {
        let r: [*const i8; N] = core::array::from_fn(|j| data.add((i + j * stride) * cols));
        let s: [*const f32; N] = core::array::from_fn(|j| scales.add((i + j * stride) * per_row));
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..full {
            let k = b * Q8_BLOCK;
            let xv = [
                _mm256_loadu_ps(x.add(k)),
                _mm256_loadu_ps(x.add(k + LANES)),
                _mm256_loadu_ps(x.add(k + 2 * LANES)),
                _mm256_loadu_ps(x.add(k + 3 * LANES)),
            ];
            for ((a, row), sc) in acc.iter_mut().zip(r).zip(s) {
                let row = row.add(k);
                let mut p = _mm256_mul_ps(i8::load8(row), xv[0]);
                p = _mm256_fmadd_ps(i8::load8(row.add(LANES)), xv[1], p);
                p = _mm256_fmadd_ps(i8::load8(row.add(2 * LANES)), xv[2], p);
                p = _mm256_fmadd_ps(i8::load8(row.add(3 * LANES)), xv[3], p);
                *a = _mm256_fmadd_ps(p, _mm256_set1_ps(*sc.add(b)), *a);
            }
        }
        let mut tail = [0.0f32; N];
        if k_rest < cols {
            for ((a, t), (row, sc)) in acc
                .iter_mut()
                .zip(tail.iter_mut())
                .zip(r.into_iter().zip(s))
            {
                let scale = *sc.add(full);
                let mut p = _mm256_setzero_ps();
                for g in 0..groups {
                    let k = k_rest + g * LANES;
                    p = _mm256_fmadd_ps(i8::load8(row.add(k)), _mm256_loadu_ps(x.add(k)), p);
                }
                *a = _mm256_fmadd_ps(p, _mm256_set1_ps(scale), *a);
                let mut sum = 0.0f32;
                for k in k_tail..cols {
                    sum += f32::from(*row.add(k)) * *x.add(k);
                }
                *t = scale * sum;
            }
        }
        for (j, (a, t)) in acc.into_iter().zip(tail).enumerate() {
            *out.add(i + j * stride) = hsum(a) + t;
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_q8(
    data: *const i8,
    scales: *const f32,
    rows: usize,
    cols: usize,
    x: *const f32,
    out: *mut f32,
) {
    // Four rows a quarter of the matrix apart at a time: four independent streams from memory
    // keep the hardware prefetchers busy where four adjacent rows are one stream (decode reads
    // about twice as fast on one thread, docs/RESULTS.md section 5).
    // SAFETY: the caller guarantees `rows · cols` weights, `rows · ceil(cols / 32)` scales,
    // `cols` activations and `rows` outputs; each call below covers rows below `rows`
    // (`i + 3 · quarter < 4 · quarter ≤ rows`).
    unsafe {
        let quarter = rows / 4;
        for i in 0..quarter {
            rows_q8::<4>(data, scales, i, quarter, cols, x, out);
        }
        for i in 4 * quarter..rows {
            rows_q8::<1>(data, scales, i, 0, cols, x, out);
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

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const MT: usize>(t: Tile) {
    // SAFETY: the caller checked `kc · NR` packed values, `(MT − 1) · x_stride + kc`
    // activations and `(MT − 1) · out_stride + nr` outputs; partial rows go through a local
    // buffer so nothing past `nr` is touched.
    unsafe {
        let mut lo = [_mm256_setzero_ps(); MT];
        let mut hi = [_mm256_setzero_ps(); MT];
        for k in 0..t.kc {
            let w0 = _mm256_loadu_ps(t.packed.add(k * NR));
            let w1 = _mm256_loadu_ps(t.packed.add(k * NR + LANES));
            for (m, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let xv = _mm256_set1_ps(*t.x.add(m * t.x_stride + k));
                *l = _mm256_fmadd_ps(w0, xv, *l);
                *h = _mm256_fmadd_ps(w1, xv, *h);
            }
        }
        for (m, (l, h)) in lo.into_iter().zip(hi).enumerate() {
            let o = t.out.add(m * t.out_stride);
            if t.nr == NR {
                let (mut l, mut h) = (l, h);
                if t.accumulate {
                    l = _mm256_add_ps(l, _mm256_loadu_ps(o));
                    h = _mm256_add_ps(h, _mm256_loadu_ps(o.add(LANES)));
                }
                _mm256_storeu_ps(o, l);
                _mm256_storeu_ps(o.add(LANES), h);
            } else {
                let mut buf = [0.0f32; NR];
                _mm256_storeu_ps(buf.as_mut_ptr(), l);
                _mm256_storeu_ps(buf.as_mut_ptr().add(LANES), h);
                for (j, v) in buf.into_iter().take(t.nr).enumerate() {
                    let slot = o.add(j);
                    *slot = if t.accumulate { *slot + v } else { v };
                }
            }
        }
    }
}
