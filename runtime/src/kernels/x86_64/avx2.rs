//! AVX2 + FMA kernels: 8 f32 lanes, scalar row tails, a 6 × 16 register tile.
//!
//! `unsafe` is allowed in this module only: the intrinsics need it. Every `#[target_feature]`
//! function is reached through an [`Avx2Fma`] value, which exists only once the features were
//! detected (or enabled at compile time), and every length it relies on is checked once by the
//! driver's safe methods ([`Simd`]).
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m256, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_loadl_epi64, _mm_loadu_si128, _mm_movehl_ps,
    _mm_shuffle_ps, _mm256_add_ps, _mm256_and_si256, _mm256_castps256_ps128, _mm256_cvtepi8_epi32,
    _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_cvtph_ps, _mm256_extractf128_ps,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_permute2f128_ps, _mm256_set1_epi32,
    _mm256_set1_ps, _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_srli_epi32, _mm256_storeu_ps,
    _mm256_unpackhi_ps, _mm256_unpacklo_ps,
};

use super::super::driver::{self, Panel, Simd, Source, Tile, simd_kernels};
use super::super::select::cpu_has;
use super::super::{F32Matrix, Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix, q4_pair};

/// AVX2 + FMA kernels. Constructed only by [`Avx2Fma::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2Fma {
    _detected: (),
}

impl Avx2Fma {
    /// The kernels, if this CPU has AVX2, FMA and F16C (at run time under `std`, at compile
    /// time without it). Every CPU with AVX2 and FMA also has F16C, which q4 decode uses.
    pub fn detect() -> Option<Self> {
        cpu_has!(is_x86_feature_detected, "avx2", "fma", "f16c").then_some(Self { _detected: () })
    }
}

simd_kernels!(Avx2Fma, "avx2", math: "avx2,fma");

const LANES: usize = 8;
const MR: usize = 6;
const NR: usize = 16;

impl Simd for Avx2Fma {
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn matvec_f32_unchecked(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (data, rows, cols) = (w.data.as_ptr(), w.rows, w.cols);
        // SAFETY: `self` proves the features; the driver guarantees `rows · cols` weights,
        // `cols` activations and `rows` outputs.
        unsafe { matvec::<f32>(data, rows, cols, x.as_ptr(), out.as_mut_ptr()) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn matvec_q8_unchecked(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY (both calls): the driver guarantees a whole `w`, `w.cols` activations and
        // `w.rows` outputs; `by_quarters` passes rows below `w.rows`.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows_q8::<4>(w, i, quarter, x, out) },
            |i| unsafe { rows_q8::<1>(w, i, 0, x, out) },
        );
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn matvec_q4_unchecked(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY (both calls): as for `matvec_q8_unchecked`.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows_q4::<4>(w, i, quarter, x, out) },
            |i| unsafe { rows_q4::<1>(w, i, 0, x, out) },
        );
    }

    /// Each half of the rows, 8 columns at a time, is loaded as 8 rows of 8 values (q8:
    /// converted and scaled; q4: dequantized by [`driver::q4_lanes`]; a last chunk of fewer columns through a zero-padded copy),
    /// transposed in registers and stored as 8 columns of 8 rows; rows past `nr` are zero.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_unchecked(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]) {
        let (cols, row0, nr, k0, kc) = (panel.cols, panel.row0, panel.nr, panel.k0, panel.kc);
        let per_row = cols.div_ceil(Q8_BLOCK);
        let dst = dst.as_mut_ptr();
        // SAFETY: the driver guarantees that `src` holds rows `row0 .. row0 + nr` of `cols`
        // values (and `per_row` scales), `k0 + kc ≤ cols`, `k0` a multiple of 32, and `kc · NR`
        // values at `dst`; a chunk of fewer than 8 columns is read value by value, and an
        // 8-column chunk at a multiple of 8 lies in one 32-value block.
        unsafe {
            for half in 0..NR / LANES {
                let rows_here = nr.saturating_sub(half * LANES).min(LANES);
                for c in (0..kc).step_by(LANES) {
                    let cols_here = (kc - c).min(LANES);
                    let block = (k0 + c) / Q8_BLOCK;
                    let mut v = [_mm256_setzero_ps(); LANES];
                    for (j, v) in v.iter_mut().enumerate().take(rows_here) {
                        let row = row0 + half * LANES + j;
                        let at = row * cols + k0 + c;
                        // A q4 chunk, dequantized; it must outlive `values`, which points in.
                        let line: [f32; LANES];
                        let (values, scale) = match src {
                            Source::F32(data) => (Chunk::F32(data.as_ptr().add(at)), 1.0),
                            Source::Q8(data, scales) => (
                                Chunk::Q8(data.as_ptr().add(at)),
                                *scales.as_ptr().add(row * per_row + block),
                            ),
                            Source::Q4(data, scales) => {
                                line = driver::q4_lanes::<LANES>(data, scales, cols, row, k0 + c);
                                (Chunk::F32(line.as_ptr()), 1.0)
                            }
                        };
                        *v = _mm256_mul_ps(values.load(cols_here), _mm256_set1_ps(scale));
                    }
                    for (j, v) in transpose8(v).into_iter().enumerate().take(cols_here) {
                        _mm256_storeu_ps(dst.add((c + j) * NR + half * LANES), v);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_unchecked<const MT: usize>(&self, t: Tile<'_>) {
        let (packed, x, out) = (t.packed.as_ptr(), t.x.as_ptr(), t.out.as_mut_ptr());
        // SAFETY: the driver checked `kc · NR` packed values, `(MT − 1) · x_stride + kc`
        // activations and `(MT − 1) · out_stride + nr` outputs; partial rows go through a
        // local buffer so nothing past `nr` is touched.
        unsafe {
            let mut lo = [_mm256_setzero_ps(); MT];
            let mut hi = [_mm256_setzero_ps(); MT];
            for k in 0..t.kc {
                let w0 = _mm256_loadu_ps(packed.add(k * NR));
                let w1 = _mm256_loadu_ps(packed.add(k * NR + LANES));
                for (m, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    let xv = _mm256_set1_ps(*x.add(m * t.x_stride + k));
                    *l = _mm256_fmadd_ps(w0, xv, *l);
                    *h = _mm256_fmadd_ps(w1, xv, *h);
                }
            }
            for (m, (l, h)) in lo.into_iter().zip(hi).enumerate() {
                let o = out.add(m * t.out_stride);
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

/// Rows `i + j · stride` (`j < N`) of [`Simd::matvec_q8_unchecked`], see there; a block of 32 weights is four 8-byte loads whose
/// products are summed, then scaled once into the row's accumulator; the last, partial block
/// takes whole groups of 8 in vectors and the rest in scalars.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows_q8<const N: usize>(
    w: Q8Matrix<'_>,
    i: usize,
    stride: usize,
    x: *const f32,
    out: *mut f32,
) {
    let (data, scales, cols) = (w.data.as_ptr(), w.scales.as_ptr(), w.cols);
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

/// Rows `i + j · stride` (`j < N`) of [`Simd::matvec_q4_unchecked`]: per whole block, each
/// 8-byte half widened to 8 lanes whose low and high nibbles are the block's values
/// `0..8 | 8..16` and `16..24 | 24..32`, `acc += d · Σ q·x` and `acc_m += m · Σ x` in vectors;
/// the `(d, m)` pairs of four blocks converted from f16 at a time; the last, partial block in
/// scalars.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn rows_q4<const N: usize>(
    w: Q4Matrix<'_>,
    i: usize,
    stride: usize,
    x: *const f32,
    out: *mut f32,
) {
    const GROUP: usize = LANES / 2;
    let (data, scales, cols) = (w.data.as_ptr(), w.scales.as_ptr(), w.cols);
    let per_row = cols.div_ceil(Q8_BLOCK);
    let full = cols / Q8_BLOCK;
    // SAFETY: the caller guarantees rows `i + j · stride` (`j < N`) of `per_row` blocks of 16
    // bytes and `2 · per_row` f16 scales, `cols` activations and those outputs; a group of
    // fewer than four blocks converts its scales one by one.
    unsafe {
        let r: [*const u8; N] =
            core::array::from_fn(|j| data.add((i + j * stride) * per_row * Q4_BLOCK_BYTES));
        let s: [*const u16; N] =
            core::array::from_fn(|j| scales.add((i + j * stride) * per_row * 2));
        let nibble = _mm256_set1_epi32(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acc_m = [_mm256_setzero_ps(); N];
        let mut dm = [[0.0f32; LANES]; N];
        for g in (0..full).step_by(GROUP) {
            for (d, sc) in dm.iter_mut().zip(s) {
                if g + GROUP <= per_row {
                    _mm256_storeu_ps(
                        d.as_mut_ptr(),
                        _mm256_cvtph_ps(_mm_loadu_si128(sc.add(2 * g).cast())),
                    );
                } else {
                    let pairs = core::slice::from_raw_parts(sc.add(2 * g), 2 * (per_row - g));
                    for (d, pair) in d.chunks_exact_mut(2).zip(pairs.chunks_exact(2)) {
                        if let [d, m] = d {
                            (*d, *m) = q4_pair(pair);
                        }
                    }
                }
            }
            for b in g..full.min(g + GROUP) {
                let k = b * Q8_BLOCK;
                let xv = [
                    _mm256_loadu_ps(x.add(k)),
                    _mm256_loadu_ps(x.add(k + LANES)),
                    _mm256_loadu_ps(x.add(k + 2 * LANES)),
                    _mm256_loadu_ps(x.add(k + 3 * LANES)),
                ];
                let xs = _mm256_add_ps(_mm256_add_ps(xv[0], xv[1]), _mm256_add_ps(xv[2], xv[3]));
                let at = 2 * (b - g);
                for (((a, a_m), row), d) in acc.iter_mut().zip(acc_m.iter_mut()).zip(r).zip(&dm) {
                    let row = row.add(b * Q4_BLOCK_BYTES);
                    let first = _mm256_cvtepu8_epi32(_mm_loadl_epi64(row.cast()));
                    let second = _mm256_cvtepu8_epi32(_mm_loadl_epi64(row.add(LANES).cast()));
                    let low = |v| _mm256_cvtepi32_ps(_mm256_and_si256(v, nibble));
                    let high = |v| _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                    let mut p = _mm256_mul_ps(low(first), xv[0]);
                    p = _mm256_fmadd_ps(low(second), xv[1], p);
                    p = _mm256_fmadd_ps(high(first), xv[2], p);
                    p = _mm256_fmadd_ps(high(second), xv[3], p);
                    *a = _mm256_fmadd_ps(p, _mm256_set1_ps(*d.as_ptr().add(at)), *a);
                    *a_m = _mm256_fmadd_ps(xs, _mm256_set1_ps(*d.as_ptr().add(at + 1)), *a_m);
                }
            }
        }
        for (j, ((a, a_m), (row, sc))) in acc
            .into_iter()
            .zip(acc_m)
            .zip(r.into_iter().zip(s))
            .enumerate()
        {
            let mut sum = hsum(_mm256_add_ps(a, a_m));
            sum += driver::q4_partial_block(row, sc, x, cols);
            *out.add(i + j * stride) = sum;
        }
    }
}

/// Transposes the 8 × 8 matrix whose rows are `v` (the usual unpack, shuffle and
/// 128-bit-lane exchange).
#[target_feature(enable = "avx2")]
fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = v;
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
    let (u0, u1) = (
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
    );
    let (u2, u3) = (
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    );
    let (u4, u5) = (
        _mm256_shuffle_ps::<0x44>(t4, t6),
        _mm256_shuffle_ps::<0xEE>(t4, t6),
    );
    let (u6, u7) = (
        _mm256_shuffle_ps::<0x44>(t5, t7),
        _mm256_shuffle_ps::<0xEE>(t5, t7),
    );
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// One row's chunk of up to 8 values for [`Simd::pack_unchecked`].
#[derive(Clone, Copy)]
enum Chunk {
    F32(*const f32),
    Q8(*const i8),
}

impl Chunk {
    /// The chunk's first `n ≤ 8` values as f32, zero past them.
    ///
    /// # Safety
    /// `n` values are readable at the pointer, and the CPU has AVX2.
    #[inline(always)]
    unsafe fn load(self, n: usize) -> __m256 {
        // SAFETY: forwarded from the caller; a short chunk is copied value by value.
        unsafe {
            if n >= LANES {
                return match self {
                    Self::F32(p) => f32::load8(p),
                    Self::Q8(p) => i8::load8(p),
                };
            }
            let mut line = [0.0f32; LANES];
            for (k, l) in line.iter_mut().enumerate().take(n) {
                *l = match self {
                    Self::F32(p) => *p.add(k),
                    Self::Q8(p) => f32::from(*p.add(k)),
                };
            }
            _mm256_loadu_ps(line.as_ptr())
        }
    }
}
