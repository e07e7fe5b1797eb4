//! AVX-512 kernels: 16 f32 lanes, masked loads for row tails, an 8 × 32 register tile; a q8
//! block of 32 weights is two int8 loads, its dot product scaled once.
//!
//! `unsafe` is allowed in this module only: the intrinsics need it. Every `#[target_feature]`
//! function is reached through an [`Avx512`] value, which exists only once the features were
//! detected (or enabled at compile time), and every length it relies on is checked once by the
//! driver's safe methods ([`Simd`]).
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m128i, __m512, __m512i, __mmask16, _mm_cvtsi32_si128, _mm_loadu_si128, _mm_maskz_loadu_epi8,
    _mm_setzero_si128, _mm256_maskz_loadu_epi16, _mm512_add_ps, _mm512_and_si512,
    _mm512_castsi128_si512, _mm512_castsi512_si128, _mm512_cvtepi8_epi32, _mm512_cvtepi32_ps,
    _mm512_cvtepu8_epi32, _mm512_cvtph_ps, _mm512_extracti32x4_epi32, _mm512_fmadd_ps,
    _mm512_inserti32x4, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_blend_epi32,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_permutex2var_epi32,
    _mm512_permutex2var_ps, _mm512_permutexvar_epi32, _mm512_reduce_add_ps, _mm512_set1_epi8,
    _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512,
    _mm512_shuffle_epi8, _mm512_srl_epi16, _mm512_srli_epi32, _mm512_storeu_ps,
};

use super::super::driver::{self, Panel, Product, Simd, Source, Tile, simd_kernels};
use super::super::select::cpu_has;
use super::super::{F32Matrix, Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix};
use super::{attention, vnni, vnni_prefill};

/// AVX-512 F/BW/VL kernels. Constructed only by [`Avx512::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    /// The CPU has AVX-512 VNNI: q8 and q4 products multiply weights by activations rounded
    /// to int8 (`vpdpbusd`), in decode and prefill.
    vnni: bool,
}

impl Avx512 {
    /// The kernels, if this CPU has AVX-512 F, BW and VL and FMA (at run time under `std`,
    /// at compile time without it).
    pub fn detect() -> Option<Self> {
        cpu_has!(
            is_x86_feature_detected,
            "avx512f",
            "avx512bw",
            "avx512vl",
            "fma"
        )
        .then(|| Self {
            vnni: cpu_has!(is_x86_feature_detected, "avx512vnni"),
        })
    }

    /// The same kernels with the float paths where VNNI would round the activations: for
    /// benchmarks that compare the two.
    pub fn without_vnni(self) -> Self {
        Self { vnni: false }
    }
}

simd_kernels!(
    Avx512,
    "avx512",
    math: "avx512f,avx512bw,avx512vl,fma",
    attend: attention::attend
);

const LANES: usize = 16;
const MR: usize = 8;
const NR: usize = 32;

impl Simd for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;

    unsafe fn matvec_f32_unchecked(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (data, rows, cols) = (w.data.as_ptr(), w.rows, w.cols);
        // SAFETY: `self` proves the features; the driver guarantees `rows · cols` weights,
        // `cols` activations and `rows` outputs.
        unsafe { matvec_f32(data, rows, cols, x.as_ptr(), out.as_mut_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn matvec_q8_unchecked(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
        if self.vnni {
            // SAFETY: `vnni` says the CPU has the feature; the rest is forwarded.
            return unsafe { vnni::matvec_q8(w, x, out) };
        }
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY (both calls): the driver guarantees a whole `w`, `w.cols` activations and
        // `w.rows` outputs; `by_quarters` passes rows below `w.rows`.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows_q8::<4>(w, i, quarter, x, out) },
            |i| unsafe { rows_q8::<1>(w, i, 0, x, out) },
        );
    }

    fn rounds_activations(&self, _tokens: usize) -> bool {
        self.vnni
    }

    unsafe fn prefill_integer_unchecked(&self, product: Product<'_>) -> bool {
        let quantized = matches!(product.src, Source::Q8(..) | Source::Q4(..));
        if !(self.vnni && quantized && vnni_prefill::takes(product.cols)) {
            return false;
        }
        // SAFETY: `vnni` says the CPU has the features; the driver checked `fits`, and the
        // source and width were checked above.
        unsafe { vnni_prefill::gemm(product) };
        true
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn matvec_q4_unchecked(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
        if self.vnni {
            // SAFETY: `vnni` says the CPU has the feature; the rest is forwarded.
            return unsafe { vnni::matvec_q4(w, x, out) };
        }
        let (x, out) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY (both calls): as for `matvec_q8_unchecked`.
        driver::by_quarters(
            w.rows,
            |i, quarter| unsafe { rows_q4::<4>(w, i, quarter, x, out) },
            |i| unsafe { rows_q4::<1>(w, i, 0, x, out) },
        );
    }

    /// Each half of the rows, 16 columns at a time: f32 rows are loaded as 16 rows of 16
    /// values and transposed in registers; q8 and q4 rows as 16 rows of 16 bytes (q4: one
    /// nibble half of a block), transposed as bytes ([`transpose_bytes`]), then widened,
    /// converted and scaled (q8: times the rows' block scales; q4: `d · q + m`) one column of
    /// 16 rows at a time. Stored as 16 columns of 16 rows; rows past `nr` are zero. One store
    /// per 16 values, where the portable packer stores every value on its own.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn pack_unchecked(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]) {
        let (cols, row0, nr, k0, kc) = (panel.cols, panel.row0, panel.nr, panel.k0, panel.kc);
        let per_row = cols.div_ceil(Q8_BLOCK);
        let dst = dst.as_mut_ptr();
        // SAFETY: the driver guarantees that `src` holds rows `row0 .. row0 + nr` of `cols`
        // values (and `per_row` scales), `k0 + kc ≤ cols`, `k0` a multiple of 32, and `kc · NR`
        // values at `dst`; the masks read only columns below `k0 + kc` and rows below
        // `row0 + nr`, and a 16-column chunk at a multiple of 16 lies in one 32-value block.
        unsafe {
            for half in 0..NR / LANES {
                let rows_here = nr.saturating_sub(half * LANES).min(LANES);
                let first_row = row0 + half * LANES;
                for c in (0..kc).step_by(LANES) {
                    let cols_here = (kc - c).min(LANES);
                    let m = mask(cols_here);
                    let block = (k0 + c) / Q8_BLOCK;
                    let columns = match src {
                        Source::F32(data) => {
                            let mut v = [_mm512_setzero_ps(); LANES];
                            for (j, v) in v.iter_mut().enumerate().take(rows_here) {
                                let at = (first_row + j) * cols + k0 + c;
                                *v = _mm512_maskz_loadu_ps(m, data.as_ptr().add(at));
                            }
                            transpose16(&mut v);
                            v
                        }
                        Source::Q8(data, scales) => {
                            let mut at = [core::ptr::null::<u8>(); LANES];
                            let mut scale = [0.0f32; LANES];
                            for (j, (at, s)) in
                                at.iter_mut().zip(&mut scale).enumerate().take(rows_here)
                            {
                                let row = first_row + j;
                                *at = data.as_ptr().add(row * cols + k0 + c).cast();
                                *s = *scales.as_ptr().add(row * per_row + block);
                            }
                            let scale = _mm512_loadu_ps(scale.as_ptr());
                            let mut v = [_mm512_setzero_ps(); LANES];
                            let rows = row_bytes(&at, rows_here, m);
                            for (v, q) in v.iter_mut().zip(transpose_bytes(rows)) {
                                let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                                *v = _mm512_mul_ps(q, scale);
                            }
                            v
                        }
                        Source::Q4(data, scales) => {
                            let mut at = [core::ptr::null::<u8>(); LANES];
                            let (mut d, mut min) = ([0.0f32; LANES], [0.0f32; LANES]);
                            for (j, (at, (d, min))) in at
                                .iter_mut()
                                .zip(d.iter_mut().zip(&mut min))
                                .enumerate()
                                .take(rows_here)
                            {
                                let block = (first_row + j) * per_row + block;
                                *at = data.as_ptr().add(block * Q4_BLOCK_BYTES);
                                let pair = scales.as_ptr().add(2 * block);
                                *d = half::f16::from_bits(*pair).to_f32();
                                *min = half::f16::from_bits(*pair.add(1)).to_f32();
                            }
                            let (d, min) =
                                (_mm512_loadu_ps(d.as_ptr()), _mm512_loadu_ps(min.as_ptr()));
                            // Values `16 .. 32` of a block are its bytes' high nibbles.
                            let shift = _mm_cvtsi32_si128(if (k0 + c) % Q8_BLOCK >= Q8_BLOCK / 2 {
                                4
                            } else {
                                0
                            });
                            let nibble = _mm512_set1_epi8(0x0f);
                            let rows = row_bytes(&at, rows_here, 0xffff)
                                .map(|z| _mm512_and_si512(_mm512_srl_epi16(z, shift), nibble));
                            let mut v = [_mm512_setzero_ps(); LANES];
                            for (v, q) in v.iter_mut().zip(transpose_bytes(rows)) {
                                let q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
                                *v = _mm512_fmadd_ps(q, d, min);
                            }
                            v
                        }
                    };
                    for (j, v) in columns.into_iter().enumerate().take(cols_here) {
                        _mm512_storeu_ps(dst.add((c + j) * NR + half * LANES), v);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn tile_unchecked<const MT: usize>(&self, t: Tile<'_>) {
        let (packed, x, out) = (t.packed.as_ptr(), t.x.as_ptr(), t.out.as_mut_ptr());
        // SAFETY: the driver checked `kc · NR` packed values, `(MT − 1) · x_stride + kc`
        // activations and `(MT − 1) · out_stride + nr` outputs; masked lanes are not touched.
        unsafe {
            let mut lo = [_mm512_setzero_ps(); MT];
            let mut hi = [_mm512_setzero_ps(); MT];
            for k in 0..t.kc {
                let w0 = _mm512_loadu_ps(packed.add(k * NR));
                let w1 = _mm512_loadu_ps(packed.add(k * NR + LANES));
                for (m, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    let xv = _mm512_set1_ps(*x.add(m * t.x_stride + k));
                    *l = _mm512_fmadd_ps(w0, xv, *l);
                    *h = _mm512_fmadd_ps(w1, xv, *h);
                }
            }
            let m_lo = mask(t.nr);
            let m_hi = mask(t.nr.saturating_sub(LANES));
            for (m, (l, h)) in lo.into_iter().zip(hi).enumerate() {
                let o = out.add(m * t.out_stride);
                let mut v = l;
                if t.accumulate {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m_lo, o));
                }
                _mm512_mask_storeu_ps(o, m_lo, v);
                if m_hi != 0 {
                    let o = o.add(LANES);
                    let mut v = h;
                    if t.accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m_hi, o));
                    }
                    _mm512_mask_storeu_ps(o, m_hi, v);
                }
            }
        }
    }
}

/// The mask of the first `n` lanes (all for `n ≥ 16`).
pub(super) fn mask(n: usize) -> __mmask16 {
    if n >= LANES {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn matvec_f32(data: *const f32, rows: usize, cols: usize, x: *const f32, out: *mut f32) {
    let full = cols / LANES * LANES;
    let tail = mask(cols - full);
    // SAFETY: the caller guarantees `rows · cols` weights, `cols` activations and `rows`
    // outputs; every offset below is below those bounds, and masked lanes are not read.
    unsafe {
        let mut i = 0;
        while i + 4 <= rows {
            let r = [
                data.add(i * cols),
                data.add((i + 1) * cols),
                data.add((i + 2) * cols),
                data.add((i + 3) * cols),
            ];
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut k = 0;
            while k < full {
                let xv = _mm512_loadu_ps(x.add(k));
                for (a, row) in acc.iter_mut().zip(r) {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(k)), xv, *a);
                }
                k += LANES;
            }
            if full < cols {
                let xv = _mm512_maskz_loadu_ps(tail, x.add(full));
                for (a, row) in acc.iter_mut().zip(r) {
                    *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, row.add(full)), xv, *a);
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                *out.add(i + j) = _mm512_reduce_add_ps(a);
            }
            i += 4;
        }
        while i < rows {
            let row = data.add(i * cols);
            let mut acc = _mm512_setzero_ps();
            let mut k = 0;
            while k < full {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(k)), _mm512_loadu_ps(x.add(k)), acc);
                k += LANES;
            }
            if full < cols {
                let xv = _mm512_maskz_loadu_ps(tail, x.add(full));
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, row.add(full)), xv, acc);
            }
            *out.add(i) = _mm512_reduce_add_ps(acc);
            i += 1;
        }
    }
}

/// Sixteen int8 weights at `p` (only the `m` lanes) as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_q8(p: *const i8, m: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees that the lanes in `m` are readable.
    unsafe {
        let bytes = if m == 0xffff {
            _mm_loadu_si128(p.cast())
        } else {
            _mm_maskz_loadu_epi8(m, p)
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
    }
}

/// `Σ_j q[j] · x[j]` over one block of 32 int8 weights at `row` (lanes `m0` of the first 16,
/// `m1` of the next 16) against the activations `x0`, `x1` (zero outside the masks).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
#[inline]
unsafe fn block_dot(
    row: *const i8,
    x0: __m512,
    x1: __m512,
    m0: __mmask16,
    m1: __mmask16,
) -> __m512 {
    // SAFETY: the caller guarantees that the lanes in `m0` at `row` and in `m1` at `row + 16`
    // are readable; `wrapping_add` keeps the address computation defined when `m1` is empty.
    unsafe {
        let p = _mm512_mul_ps(load_q8(row, m0), x0);
        _mm512_fmadd_ps(load_q8(row.wrapping_add(LANES), m1), x1, p)
    }
}

/// Rows `i + j · stride` (`j < N`) of [`Simd::matvec_q8_unchecked`], see there: every block's dot product
/// times its scale, summed in one accumulator per row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
    let rest = cols - full * Q8_BLOCK;
    // SAFETY: the caller guarantees rows `i + j · stride` (`j < N`) of `cols` weights and
    // `per_row` scales, `cols` activations and those outputs; the last block reads only its `rest` lanes.
    unsafe {
        let r: [*const i8; N] = core::array::from_fn(|j| data.add((i + j * stride) * cols));
        let s: [*const f32; N] = core::array::from_fn(|j| scales.add((i + j * stride) * per_row));
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..full {
            let k = b * Q8_BLOCK;
            let x0 = _mm512_loadu_ps(x.add(k));
            let x1 = _mm512_loadu_ps(x.add(k + LANES));
            for ((a, row), sc) in acc.iter_mut().zip(r).zip(s) {
                let p = block_dot(row.add(k), x0, x1, 0xffff, 0xffff);
                *a = _mm512_fmadd_ps(p, _mm512_set1_ps(*sc.add(b)), *a);
            }
        }
        if rest > 0 {
            let k = full * Q8_BLOCK;
            let (m0, m1) = (mask(rest), mask(rest.saturating_sub(LANES)));
            let x0 = _mm512_maskz_loadu_ps(m0, x.add(k));
            let x1 = _mm512_maskz_loadu_ps(m1, x.wrapping_add(k + LANES));
            for ((a, row), sc) in acc.iter_mut().zip(r).zip(s) {
                let p = block_dot(row.add(k), x0, x1, m0, m1);
                *a = _mm512_fmadd_ps(p, _mm512_set1_ps(*sc.add(full)), *a);
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            *out.add(i + j * stride) = _mm512_reduce_add_ps(a);
        }
    }
}

/// Rows `i + j · stride` (`j < N`) of [`Simd::matvec_q4_unchecked`]: per whole block, the 16
/// bytes widened once to 16 lanes whose low and high nibbles are the block's two halves,
/// `acc += d · Σ q·x` and `acc_m += m · Σ x` in vectors; the `(d, m)` pairs of eight blocks
/// converted from f16 at a time into a stack buffer, so each is a broadcast from memory; the
/// last, partial block in scalars.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
    // bytes and `2 · per_row` f16 scales, `cols` activations and those outputs; the masked
    // scale loads read only halves below `2 · per_row` of a row.
    unsafe {
        let r: [*const u8; N] =
            core::array::from_fn(|j| data.add((i + j * stride) * per_row * Q4_BLOCK_BYTES));
        let s: [*const u16; N] =
            core::array::from_fn(|j| scales.add((i + j * stride) * per_row * 2));
        let nibble = _mm512_set1_epi32(0x0f);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut acc_m = [_mm512_setzero_ps(); N];
        let mut dm = [[0.0f32; LANES]; N];
        for g in (0..full).step_by(GROUP) {
            let halves = (2 * (per_row - g)).min(LANES);
            for (d, sc) in dm.iter_mut().zip(s) {
                let bits = _mm256_maskz_loadu_epi16(mask(halves), sc.add(2 * g).cast());
                _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(bits));
            }
            for b in g..full.min(g + GROUP) {
                let k = b * Q8_BLOCK;
                let x0 = _mm512_loadu_ps(x.add(k));
                let x1 = _mm512_loadu_ps(x.add(k + LANES));
                let xs = _mm512_add_ps(x0, x1);
                let at = 2 * (b - g);
                for (((a, a_m), row), d) in acc.iter_mut().zip(acc_m.iter_mut()).zip(r).zip(&dm) {
                    let wide =
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(row.add(b * Q4_BLOCK_BYTES).cast()));
                    let q0 = _mm512_cvtepi32_ps(_mm512_and_si512(wide, nibble));
                    let q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(wide));
                    let p = _mm512_fmadd_ps(q1, x1, _mm512_mul_ps(q0, x0));
                    *a = _mm512_fmadd_ps(p, _mm512_set1_ps(*d.as_ptr().add(at)), *a);
                    *a_m = _mm512_fmadd_ps(xs, _mm512_set1_ps(*d.as_ptr().add(at + 1)), *a_m);
                }
            }
        }
        for (j, ((a, a_m), (row, sc))) in acc
            .into_iter()
            .zip(acc_m)
            .zip(r.into_iter().zip(s))
            .enumerate()
        {
            let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(a, a_m));
            sum += driver::q4_partial_block(row, sc, x, cols);
            *out.add(i + j * stride) = sum;
        }
    }
}

/// The 16 bytes at each of `at[j]` for `j < rows` (lanes `m`; zero after `rows`), four rows
/// to a register: row `j` in 128-bit lane `j % 4` of register `j / 4`. Loaded straight into
/// the lanes (assembling them in memory would make the register's load wait for four
/// smaller stores).
///
/// # Safety
/// The lanes `m` of 16 bytes at `at[j]` are readable for `j < rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn row_bytes(at: &[*const u8; LANES], rows: usize, m: __mmask16) -> [__m512i; 4] {
    let mut z = [_mm512_setzero_si512(); 4];
    for (g, (z, four)) in z.iter_mut().zip(at.chunks_exact(4)).enumerate() {
        let row = |k: usize| match four.get(k) {
            // SAFETY: the caller's guarantee for rows below `rows`.
            Some(&p) if 4 * g + k < rows => unsafe { _mm_maskz_loadu_epi8(m, p.cast()) },
            _ => _mm_setzero_si128(),
        };
        let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(row(0)), row(1));
        *z = _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(v, row(2)), row(3));
    }
    z
}

/// The 16 × 16 bytes of [`row_bytes`] transposed: column `c` (byte `c` of every row, rows in
/// order) as element `c`. Per output register two dword permutes gather four columns' dwords
/// of all 16 rows, a byte shuffle transposes each lane's 4 × 4 bytes and a dword permute puts
/// the columns in lanes: a quarter of the shuffles of transposing the converted values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn transpose_bytes(z: [__m512i; 4]) -> [__m128i; LANES] {
    // Lane `l` of `4 × 4` bytes: byte `4c + r` from byte `4r + c`.
    let within: [i8; 64] = core::array::from_fn(|i| (((i % 16) % 4) * 4 + (i % 16) / 4) as i8);
    // Dword `4c + l` from dword `4l + c`: columns into lanes.
    let across: [i32; 16] = core::array::from_fn(|i| ((i % 4) * 4 + i / 4) as i32);
    // SAFETY: loads of arrays on the stack.
    let (within, across) = unsafe {
        (
            _mm512_loadu_si512(within.as_ptr().cast()),
            _mm512_loadu_si512(across.as_ptr().cast()),
        )
    };
    let mut out = [_mm_setzero_si128(); LANES];
    for (q, columns) in out.chunks_exact_mut(4).enumerate() {
        // Dword `r` of the gathered register: dword `q` (bytes `4q .. 4q + 4`) of row `r`,
        // which is dword `4 (r % 4) + q` of register `r / 4`; rows 0–7 from the first pair,
        // 8–15 from the second, with the same indices.
        let index: [i32; 16] =
            core::array::from_fn(|r| (((r % 8) / 4) * 16 + (r % 4) * 4 + q) as i32);
        // SAFETY: a load of a 16-lane array on the stack.
        let index = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
        let [z0, z1, z2, z3] = z;
        let low = _mm512_permutex2var_epi32(z0, index, z1);
        let high = _mm512_permutex2var_epi32(z2, index, z3);
        let gathered = _mm512_mask_blend_epi32(0xff00, low, high);
        let t = _mm512_permutexvar_epi32(across, _mm512_shuffle_epi8(gathered, within));
        if let [a, b, c, d] = columns {
            *a = _mm512_castsi512_si128(t);
            *b = _mm512_extracti32x4_epi32::<1>(t);
            *c = _mm512_extracti32x4_epi32::<2>(t);
            *d = _mm512_extracti32x4_epi32::<3>(t);
        }
    }
    out
}

/// Transposes the 16 × 16 matrix whose rows are `v` in place: four rounds of two-register
/// permutes, each swapping the off-diagonal blocks of every `2h × 2h` block (`h` = 8, 4, 2, 1).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(v: &mut [__m512; 16]) {
    for h in [8usize, 4, 2, 1] {
        // Lane `l` of the first output: `a[l]` where `l & h == 0`, else `b[l − h]`; of the
        // second: `a[l + h]`, else `b[l]` (`b`'s lanes are 16 ..= 31 of the pair).
        let first: [i32; 16] = core::array::from_fn(|l| {
            if l & h == 0 {
                l as i32
            } else {
                (16 + l - h) as i32
            }
        });
        let second: [i32; 16] = core::array::from_fn(|l| {
            if l & h == 0 {
                (l + h) as i32
            } else {
                (16 + l) as i32
            }
        });
        // SAFETY: loads of two 16-lane arrays on the stack.
        let (first, second) = unsafe {
            (
                _mm512_loadu_si512(first.as_ptr().cast()),
                _mm512_loadu_si512(second.as_ptr().cast()),
            )
        };
        // Rows `i` and `i + h` with `i & h == 0`: the two halves of every run of `2h` rows.
        for run in v.chunks_exact_mut(2 * h) {
            let (upper, lower) = run.split_at_mut(h);
            for (x, y) in upper.iter_mut().zip(lower) {
                let (a, b) = (*x, *y);
                *x = _mm512_permutex2var_ps(a, first, b);
                *y = _mm512_permutex2var_ps(a, second, b);
            }
        }
    }
}
