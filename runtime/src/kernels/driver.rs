//! Shape handling and cache blocking shared by the SIMD kernels.
//!
//! An architecture module implements [`Simd`]: row dot products for decode and one register
//! tile for prefill, each an `unsafe fn …_unchecked` that holds only register code. The safe
//! methods [`Simd`] provides check every length those functions rely on, once for every
//! architecture. This module trims every call to the common prefix of its buffers (the same
//! prefix [`Portable`](super::Portable) computes), then either runs the row dot products once
//! per token or packs blocks of weights into a stack buffer (int8 converted to f32, each run of
//! 32 values times its own scale, once per packed block) and reuses each block across every
//! token; a q8 or q4 prefill goes to [`Simd::prefill_integer`] first, which an architecture
//! with integer dot products implements whole (AVX-512 VNNI).
//!
//! `unsafe` is allowed in this module for the declarations of the unchecked functions and the
//! calls to them, each right after the checks that establish its preconditions.
#![allow(unsafe_code)]

use super::{
    DECODE_BELOW_TOKENS, F32Matrix, Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix, q4_block_dot,
    q4_pair, q4_unpack, q8_blocks_per_row,
};

/// Columns of one packed weight block: `KC × NR` f32 stay in L1 while every token tile uses them.
/// A multiple of [`Q8_BLOCK`], so a packed block starts on a q8 scale boundary.
pub(crate) const KC: usize = 256;
const _: () = assert!(KC.is_multiple_of(Q8_BLOCK));

/// The widest tile any architecture uses (rows of `W` per packed block).
pub(crate) const NR_MAX: usize = 32;

/// The most tokens any architecture's tile takes ([`Simd::MR`]).
const MR_MAX: usize = 8;

/// What an architecture module provides: register code behind `unsafe fn …_unchecked`, whose
/// preconditions (lengths only) the provided safe methods check. A value of the implementing
/// type proves that the CPU has the instructions the register code uses; the unchecked
/// functions rely on that too.
pub(crate) trait Simd {
    /// Tokens per register tile (`≤ 8`).
    const MR: usize;
    /// Weight rows per register tile (`≤ NR_MAX`).
    const NR: usize;

    /// `out[i] = Σ_j w[i][j] · x[j]` for every row `i < w.rows`.
    ///
    /// # Safety
    /// `w.cols > 0`, `w.data.len() == w.rows · w.cols`, `x.len() == w.cols` and
    /// `out.len() == w.rows`.
    unsafe fn matvec_f32_unchecked(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]);

    /// As [`Simd::matvec_f32_unchecked`] for int8 weights with one scale per block of
    /// [`Q8_BLOCK`] values of a row ([`Q8Matrix`]).
    ///
    /// # Safety
    /// As for [`Simd::matvec_f32_unchecked`], and `w.scales.len() == w.rows · bpr` with
    /// `bpr = ceil(w.cols / 32)`.
    unsafe fn matvec_q8_unchecked(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]);

    /// [`Kernels::rounds_activations`](super::Kernels::rounds_activations).
    fn rounds_activations(&self, _tokens: usize) -> bool {
        false
    }

    /// A prefill product of q8 or q4 weights in integers, where this instruction set
    /// multiplies bytes (activations rounded as [`Simd::rounds_activations`] says): returns
    /// whether it computed `product`. The default does not, and the driver packs the weights
    /// to f32 instead.
    ///
    /// # Safety
    /// `product.fits()`.
    unsafe fn prefill_integer_unchecked(&self, _product: Product<'_>) -> bool {
        false
    }

    /// [`Simd::prefill_integer_unchecked`] where `product` fits its buffers.
    fn prefill_integer(&self, product: Product<'_>) -> bool {
        // SAFETY: `fits` is the callee's precondition.
        product.fits() && unsafe { self.prefill_integer_unchecked(product) }
    }

    /// As [`Simd::matvec_f32_unchecked`] for 4-bit weights ([`Q4Matrix`]).
    ///
    /// # Safety
    /// `w.cols > 0`, `w.data.len() == w.rows · bpr · 16`, `w.scales.len() == w.rows · bpr · 2`
    /// with `bpr = ceil(w.cols / 32)`, `x.len() == w.cols` and `out.len() == w.rows`.
    unsafe fn matvec_q4_unchecked(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]);

    /// Packs `panel` of `src` as [`pack`] does with `stride = NR`: value `(row0 + r, k0 + k)`
    /// (q8: times its block's scale) into `dst[k·NR + r]`, rows `nr .. NR` zero.
    ///
    /// # Safety
    /// `src.packs(panel, dst.len(), Self::NR)`.
    unsafe fn pack_unchecked(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]);

    /// `out[t·out_stride + i] (+)= Σ_{k<kc} packed[k·NR + i] · x[t·x_stride + k]` for
    /// `t < MT`, `i < nr` ([`Tile`]).
    ///
    /// # Safety
    /// `1 ≤ MT ≤ MR` and `tile.fits(MT, Self::NR)`.
    unsafe fn tile_unchecked<const MT: usize>(&self, tile: Tile<'_>);

    /// [`Simd::matvec_f32_unchecked`] for every row `i < min(w.rows, out.len(), stored rows)`;
    /// does nothing unless `x.len() ≥ w.cols > 0`.
    fn matvec_f32(&self, w: F32Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let cols = w.cols;
        if cols == 0 {
            return;
        }
        let rows = w.rows.min(out.len()).min(w.data.len() / cols);
        let (Some(data), Some(x), Some(out)) = (
            w.data.get(..rows * cols),
            x.get(..cols),
            out.get_mut(..rows),
        ) else {
            return;
        };
        let w = F32Matrix { rows, cols, data };
        // SAFETY: `cols > 0`, and the slices have the lengths the callee requires.
        unsafe { self.matvec_f32_unchecked(w, x, out) }
    }

    /// [`Simd::matvec_q8_unchecked`] for every row `i < min(w.rows, out.len(), stored rows)`;
    /// does nothing unless `x.len() ≥ w.cols > 0`.
    fn matvec_q8(&self, w: Q8Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let cols = w.cols;
        if cols == 0 {
            return;
        }
        let per_row = q8_blocks_per_row(cols);
        let rows = w
            .rows
            .min(out.len())
            .min(w.data.len() / cols)
            .min(w.scales.len() / per_row);
        let (Some(data), Some(scales), Some(x), Some(out)) = (
            w.data.get(..rows * cols),
            w.scales.get(..rows * per_row),
            x.get(..cols),
            out.get_mut(..rows),
        ) else {
            return;
        };
        let w = Q8Matrix {
            rows,
            cols,
            data,
            scales,
        };
        // SAFETY: `cols > 0`, and the slices have the lengths the callee requires.
        unsafe { self.matvec_q8_unchecked(w, x, out) }
    }

    /// [`Simd::matvec_q4_unchecked`] for every row `i < min(w.rows, out.len(), stored rows)`;
    /// does nothing unless `x.len() ≥ w.cols > 0`.
    fn matvec_q4(&self, w: Q4Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let cols = w.cols;
        if cols == 0 {
            return;
        }
        let per_row = q8_blocks_per_row(cols);
        let rows = w
            .rows
            .min(out.len())
            .min(w.data.len() / (per_row * Q4_BLOCK_BYTES))
            .min(w.scales.len() / (2 * per_row));
        let (Some(data), Some(scales), Some(x), Some(out)) = (
            w.data.get(..rows * per_row * Q4_BLOCK_BYTES),
            w.scales.get(..rows * per_row * 2),
            x.get(..cols),
            out.get_mut(..rows),
        ) else {
            return;
        };
        let w = Q4Matrix {
            rows,
            cols,
            data,
            scales,
        };
        // SAFETY: `cols > 0`, and the slices have the lengths the callee requires.
        unsafe { self.matvec_q4_unchecked(w, x, out) }
    }

    /// [`Simd::pack_unchecked`] where `panel` fits every buffer; returns `false`, leaving `dst`
    /// alone, where it does not (the driver then packs in portable code).
    fn pack(&self, src: Source<'_>, panel: Panel, dst: &mut [f32]) -> bool {
        let fits = src.packs(panel, dst.len(), Self::NR);
        if fits {
            // SAFETY: `packs` is the callee's precondition.
            unsafe { self.pack_unchecked(src, panel, dst) };
        }
        fits
    }

    /// [`Simd::tile_unchecked`] for `mt` tokens; does nothing unless `1 ≤ mt ≤ MR` and the
    /// tile fits its buffers.
    fn tile(&self, tile: Tile<'_>, mt: usize) {
        const { assert!(Self::MR <= MR_MAX && Self::NR <= NR_MAX) };
        if mt > Self::MR || !tile.fits(mt, Self::NR) {
            return;
        }
        // SAFETY: `1 ≤ mt ≤ MR` (`fits` refuses `mt = 0`) and the tile fits its buffers.
        unsafe {
            match mt {
                1 => self.tile_unchecked::<1>(tile),
                2 => self.tile_unchecked::<2>(tile),
                3 => self.tile_unchecked::<3>(tile),
                4 => self.tile_unchecked::<4>(tile),
                5 => self.tile_unchecked::<5>(tile),
                6 => self.tile_unchecked::<6>(tile),
                7 => self.tile_unchecked::<7>(tile),
                _ => self.tile_unchecked::<8>(tile),
            }
        }
    }
}

/// Rows `row0 .. row0 + nr` and columns `k0 .. k0 + kc` of a `cols`-column matrix: what one
/// call of [`Simd::pack`] packs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panel {
    pub(crate) cols: usize,
    pub(crate) row0: usize,
    pub(crate) nr: usize,
    pub(crate) k0: usize,
    pub(crate) kc: usize,
}

/// One register tile's operands: `nr` rows of `W` packed as `kc` columns of `NR` values, and
/// the activations and outputs of the tile's tokens, `x_stride` and `out_stride` apart.
#[derive(Debug)]
pub(crate) struct Tile<'a> {
    pub(crate) packed: &'a [f32],
    pub(crate) kc: usize,
    pub(crate) x: &'a [f32],
    pub(crate) x_stride: usize,
    pub(crate) out: &'a mut [f32],
    pub(crate) out_stride: usize,
    pub(crate) nr: usize,
    /// Adds to `out` instead of overwriting it.
    pub(crate) accumulate: bool,
}

impl Tile<'_> {
    /// Whether `mt > 0` tokens of this tile are within every buffer with `nr_max` rows per
    /// packed column: `packed` holds `kc · nr_max` values, `x` `(mt − 1) · x_stride + kc` and
    /// `out` `(mt − 1) · out_stride + nr`, with `0 < nr ≤ nr_max` and `kc > 0`.
    fn fits(&self, mt: usize, nr_max: usize) -> bool {
        mt > 0
            && self.nr > 0
            && self.nr <= nr_max
            && self.kc > 0
            && self.packed.len() >= self.kc * nr_max
            && self.x.len() >= (mt - 1) * self.x_stride + self.kc
            && self.out.len() >= (mt - 1) * self.out_stride + self.nr
    }
}

/// A prefill product as the driver hands it to [`Simd::prefill_integer`]: `rows` rows of `src`
/// (`cols` columns) times `tokens` tokens of `x` (`cols` apart) into `out`, token `t`'s
/// outputs from `t · out_stride`.
pub(crate) struct Product<'a> {
    pub(crate) src: Source<'a>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) tokens: usize,
    pub(crate) x: &'a [f32],
    pub(crate) out: &'a mut [f32],
    pub(crate) out_stride: usize,
}

impl Product<'_> {
    /// Whether every buffer holds what the product reads and writes: `rows` stored rows (q8:
    /// with their scales; q4: their blocks and pairs), `tokens · cols` activations and
    /// `(tokens − 1) · out_stride + rows` outputs, with `rows ≤ out_stride`, all counts
    /// positive.
    pub(crate) fn fits(&self) -> bool {
        let Self {
            src,
            rows,
            cols,
            tokens,
            ..
        } = *self;
        rows > 0
            && tokens > 0
            && cols > 0
            && rows <= self.out_stride
            && src.stored_rows(cols) >= rows
            && self.x.len() >= tokens * cols
            && self.out.len() >= (tokens - 1) * self.out_stride + rows
    }
}

/// The part of a call that every buffer covers.
#[derive(Clone, Copy, Debug)]
struct Extent {
    rows: usize,
    tokens: usize,
}

/// `None` when the matrix is empty (the output is then all zeros, as in the portable kernel).
fn extent(
    rows: usize,
    cols: usize,
    stored_rows: usize,
    x_len: usize,
    tokens: usize,
    out_len: usize,
) -> Option<Extent> {
    if rows == 0 || cols == 0 {
        return None;
    }
    Some(Extent {
        rows: rows.min(stored_rows),
        tokens: tokens.min(x_len / cols).min(out_len / rows),
    })
}

/// The weights a block is packed from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    F32(&'a [f32]),
    /// Values and per-block scales (`ceil(cols / 32)` per row).
    Q8(&'a [i8], &'a [f32]),
    /// Nibble blocks and their f16 `(d, m)` pairs ([`Q4Matrix`]).
    Q4(&'a [u8], &'a [u16]),
}

impl Source<'_> {
    /// Whether `panel` (`nr ≤ nr_max`) of this matrix, packed into `dst_len` values with
    /// `nr_max` rows per column, is within every buffer (q8: with its scales) and starts on a
    /// q8 block.
    pub(crate) fn packs(&self, panel: Panel, dst_len: usize, nr_max: usize) -> bool {
        let Panel { cols, kc, .. } = panel;
        panel.nr <= nr_max
            && kc > 0
            && panel.k0.is_multiple_of(Q8_BLOCK)
            && panel.k0 + kc <= cols
            && dst_len >= kc * nr_max
            && self.stored_rows(cols) >= panel.row0 + panel.nr
    }

    /// The whole rows of `cols` columns this matrix holds (q8: with their scales; q4: their
    /// blocks and pairs).
    pub(crate) fn stored_rows(&self, cols: usize) -> usize {
        match self {
            Self::F32(data) => data.len() / cols.max(1),
            Self::Q8(data, scales) => {
                (data.len() / cols.max(1)).min(scales.len() / q8_blocks_per_row(cols).max(1))
            }
            Self::Q4(data, scales) => {
                let per_row = q8_blocks_per_row(cols).max(1);
                (data.len() / (per_row * Q4_BLOCK_BYTES)).min(scales.len() / (2 * per_row))
            }
        }
    }
}

/// `out = x · Wᵀ` for f32 weights through `simd`.
pub(crate) fn gemm_f32<S: Simd>(
    simd: &S,
    w: F32Matrix<'_>,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let Some(e) = extent(
        w.rows,
        w.cols,
        w.data.len() / w.cols.max(1),
        x.len(),
        tokens,
        out.len(),
    ) else {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    };
    let data = w.data.get(..e.rows * w.cols).unwrap_or_default();
    if e.tokens < DECODE_BELOW_TOKENS {
        for (xt, ot) in x
            .chunks_exact(w.cols)
            .zip(out.chunks_exact_mut(w.rows))
            .take(e.tokens)
        {
            simd.matvec_f32(w, xt, ot);
        }
    } else {
        blocked(simd, Source::F32(data), w.rows, w.cols, e, x, out);
    }
}

/// `out = x · Wᵀ` for int8 weights with per-block scales through `simd`.
pub(crate) fn gemm_q8<S: Simd>(
    simd: &S,
    w: Q8Matrix<'_>,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let per_row = q8_blocks_per_row(w.cols).max(1);
    let stored = (w.data.len() / w.cols.max(1)).min(w.scales.len() / per_row);
    let Some(e) = extent(w.rows, w.cols, stored, x.len(), tokens, out.len()) else {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    };
    let data = w.data.get(..e.rows * w.cols).unwrap_or_default();
    let scales = w.scales.get(..e.rows * per_row).unwrap_or_default();
    if e.tokens < DECODE_BELOW_TOKENS {
        for (xt, ot) in x
            .chunks_exact(w.cols)
            .zip(out.chunks_exact_mut(w.rows))
            .take(e.tokens)
        {
            simd.matvec_q8(w, xt, ot);
        }
    } else {
        prefill_quantized(simd, Source::Q8(data, scales), w.rows, w.cols, e, x, out);
    }
}

/// `out = x · Wᵀ` for 4-bit weights through `simd`.
pub(crate) fn gemm_q4<S: Simd>(
    simd: &S,
    w: Q4Matrix<'_>,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let per_row = q8_blocks_per_row(w.cols).max(1);
    let stored = (w.data.len() / (per_row * Q4_BLOCK_BYTES)).min(w.scales.len() / (2 * per_row));
    let Some(e) = extent(w.rows, w.cols, stored, x.len(), tokens, out.len()) else {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    };
    let data = w
        .data
        .get(..e.rows * per_row * Q4_BLOCK_BYTES)
        .unwrap_or_default();
    let scales = w.scales.get(..e.rows * per_row * 2).unwrap_or_default();
    if e.tokens < DECODE_BELOW_TOKENS {
        for (xt, ot) in x
            .chunks_exact(w.cols)
            .zip(out.chunks_exact_mut(w.rows))
            .take(e.tokens)
        {
            simd.matvec_q4(w, xt, ot);
        }
    } else {
        prefill_quantized(simd, Source::Q4(data, scales), w.rows, w.cols, e, x, out);
    }
}

/// A q8 or q4 prefill: in integers where `simd` has them ([`Simd::prefill_integer`]), else
/// [`blocked`].
fn prefill_quantized<S: Simd>(
    simd: &S,
    src: Source<'_>,
    rows: usize,
    cols: usize,
    e: Extent,
    x: &[f32],
    out: &mut [f32],
) {
    let product = Product {
        src,
        rows: e.rows,
        cols,
        tokens: e.tokens,
        x,
        out: &mut *out,
        out_stride: rows,
    };
    if !simd.prefill_integer(product) {
        blocked(simd, src, rows, cols, e, x, out);
    }
}

/// `L` consecutive values of row `row` of a q4 matrix from column `col` (a multiple of `L`,
/// `L` dividing 16, so that they lie in one block and one nibble half), dequantized; zero
/// where the matrix does not hold them. The arch packers load this instead of decoding
/// nibbles in registers: packing is a small part of a prefill.
#[inline(always)]
pub(crate) fn q4_lanes<const L: usize>(
    data: &[u8],
    scales: &[u16],
    cols: usize,
    row: usize,
    col: usize,
) -> [f32; L] {
    let block = row * q8_blocks_per_row(cols) + col / Q8_BLOCK;
    let within = col % Q8_BLOCK;
    let (shift, first) = if within < Q8_BLOCK / 2 {
        (0, within)
    } else {
        (4, within - Q8_BLOCK / 2)
    };
    let start = block * Q4_BLOCK_BYTES + first;
    let (Some(bytes), Some(pair)) = (
        data.get(start..start + L),
        scales.get(2 * block..2 * block + 2),
    ) else {
        return [0.0; L];
    };
    let (d, m) = q4_pair(pair);
    core::array::from_fn(|k| {
        d * f32::from((bytes.get(k).copied().unwrap_or(0) >> shift) & 0x0f) + m
    })
}

/// The dot product of a q4 row's partial last block (0 when `cols` is a multiple of 32): the
/// scalar [`q4_block_dot`] every SIMD decode ends a row with.
///
/// # Safety
/// `row` holds the row's `ceil(cols / 32)` blocks of 16 bytes, `scales` its `2 · ceil(cols / 32)`
/// halves, and `x` its `cols` activations.
#[inline]
pub(crate) unsafe fn q4_partial_block(
    row: *const u8,
    scales: *const u16,
    x: *const f32,
    cols: usize,
) -> f32 {
    let full = cols / Q8_BLOCK;
    if full * Q8_BLOCK == cols {
        return 0.0;
    }
    // SAFETY: the caller's lengths; block `full` is the row's last.
    unsafe {
        let block = core::slice::from_raw_parts(row.add(full * Q4_BLOCK_BYTES), Q4_BLOCK_BYTES);
        let pair = core::slice::from_raw_parts(scales.add(2 * full), 2);
        let rest = core::slice::from_raw_parts(x.add(full * Q8_BLOCK), cols - full * Q8_BLOCK);
        q4_block_dot(block, pair, rest)
    }
}

/// Packs `panel` as `dst[k·stride + r]`, zero-padding rows `nr..stride`.
///
/// Each row's columns are first converted (and scaled) into a contiguous buffer, which
/// vectorizes, then written to the packed layout with plain indexed stores; the padding rows
/// are zeroed only in a partial panel.
fn pack(src: Source<'_>, panel: Panel, stride: usize, dst: &mut [f32]) {
    let (cols, row0, nr, k0, kc) = (panel.cols, panel.row0, panel.nr, panel.k0, panel.kc);
    let dst = dst.get_mut(..kc * stride).unwrap_or_default();
    if nr < stride {
        dst.iter_mut().for_each(|d| *d = 0.0);
    }
    let mut line = [0.0f32; KC];
    let line = line.get_mut(..kc).unwrap_or_default();
    for r in 0..nr.min(stride) {
        let start = (row0 + r) * cols + k0;
        match src {
            Source::F32(data) => {
                let Some(part) = data.get(start..start + kc) else {
                    continue;
                };
                line.copy_from_slice(part);
            }
            Source::Q8(data, scales) => {
                // `k0` is a multiple of `KC`, hence of `Q8_BLOCK`: the block scales of these
                // columns start at block `k0 / 32` of the row.
                let per_row = q8_blocks_per_row(cols);
                let first = (row0 + r) * per_row + k0 / Q8_BLOCK;
                let (Some(part), Some(row_scales)) = (
                    data.get(start..start + kc),
                    scales.get(first..first + kc.div_ceil(Q8_BLOCK)),
                ) else {
                    continue;
                };
                for ((l, q), &scale) in line
                    .chunks_mut(Q8_BLOCK)
                    .zip(part.chunks(Q8_BLOCK))
                    .zip(row_scales)
                {
                    for (l, &v) in l.iter_mut().zip(q) {
                        *l = scale * f32::from(v);
                    }
                }
            }
            Source::Q4(data, scales) => {
                let first = (row0 + r) * q8_blocks_per_row(cols) + k0 / Q8_BLOCK;
                let blocks = kc.div_ceil(Q8_BLOCK);
                let (Some(part), Some(pairs)) = (
                    data.get(first * Q4_BLOCK_BYTES..(first + blocks) * Q4_BLOCK_BYTES),
                    scales.get(2 * first..2 * (first + blocks)),
                ) else {
                    continue;
                };
                for ((l, block), pair) in line
                    .chunks_mut(Q8_BLOCK)
                    .zip(part.chunks_exact(Q4_BLOCK_BYTES))
                    .zip(pairs.chunks_exact(2))
                {
                    let (d, m) = q4_pair(pair);
                    for (l, q) in l.iter_mut().zip(q4_unpack(block)) {
                        *l = d * f32::from(q) + m;
                    }
                }
            }
        }
        for (d, &v) in dst.iter_mut().skip(r).step_by(stride).zip(line.iter()) {
            *d = v;
        }
    }
}

/// Row panels of `NR` outer, column blocks of `KC` next, token tiles of `MR` inner: each packed
/// block is converted once and used by every token.
fn blocked<S: Simd>(
    simd: &S,
    src: Source<'_>,
    rows: usize,
    cols: usize,
    e: Extent,
    x: &[f32],
    out: &mut [f32],
) {
    let mut packed = [0.0f32; KC * NR_MAX];
    let nr_full = S::NR.min(NR_MAX);
    let mr = S::MR.max(1);
    for row0 in (0..e.rows).step_by(nr_full) {
        let nr = nr_full.min(e.rows - row0);
        for k0 in (0..cols).step_by(KC) {
            let kc = KC.min(cols - k0);
            let panel = Panel {
                cols,
                row0,
                nr,
                k0,
                kc,
            };
            if nr_full != S::NR || !simd.pack(src, panel, &mut packed) {
                pack(src, panel, nr_full, &mut packed);
            }
            for t0 in (0..e.tokens).step_by(mr) {
                let mt = mr.min(e.tokens - t0);
                let tile = Tile {
                    packed: &packed,
                    kc,
                    x: x.get(t0 * cols + k0..).unwrap_or_default(),
                    x_stride: cols,
                    out: out.get_mut(t0 * rows + row0..).unwrap_or_default(),
                    out_stride: rows,
                    nr,
                    accumulate: k0 > 0,
                };
                simd.tile(tile, mt);
            }
        }
    }
}

/// The row order of a decode product for kernels that take four rows at a time: `four(i,
/// quarter)` for rows `i + j · quarter` (`j < 4`) for every `i < quarter = rows / 4`, then
/// `one(i)` for every row `i` from `4 · quarter` on. Four rows a quarter of the matrix apart
/// are four independent streams from memory, which keep the hardware prefetchers busy where
/// four adjacent rows are one stream (decode reads about twice as fast on one thread,
/// docs/RESULTS.md section 5). Inlined, so that the calls compile with the caller's target
/// features.
#[inline(always)]
pub(crate) fn by_quarters(
    rows: usize,
    mut four: impl FnMut(usize, usize),
    mut one: impl FnMut(usize),
) {
    let quarter = rows / 4;
    for i in 0..quarter {
        four(i, quarter);
    }
    for i in 4 * quarter..rows {
        one(i);
    }
}

/// Implements [`Kernels`](super::Kernels) for a [`Simd`] type: its name, the products
/// through this driver and, given `math: "<target features>"`, attention and SwiGLU
/// ([`math`](super::math)) compiled with those features enabled (without, they run at the
/// crate's baseline); `attend: <path>` after it replaces `math::attend` by a function with the
/// same signature whose target features are among those. A value of the type must prove that
/// the CPU has those features.
macro_rules! simd_kernels {
    ($simd:ty, $name:literal, math: $features:literal) => {
        $crate::kernels::driver::simd_kernels!(
            $simd,
            $name,
            math: $features,
            attend: $crate::kernels::math::attend
        );
    };
    ($simd:ty, $name:literal $(, math: $features:literal, attend: $attend:path)?) => {
        impl $crate::kernels::Kernels for $simd {
            fn name(&self) -> &'static str {
                $name
            }

            fn rounds_activations(&self, tokens: usize) -> bool {
                <Self as $crate::kernels::driver::Simd>::rounds_activations(self, tokens)
            }

            fn gemm_f32(
                &self,
                w: $crate::kernels::F32Matrix<'_>,
                x: &[f32],
                tokens: usize,
                out: &mut [f32],
            ) {
                $crate::kernels::driver::gemm_f32(self, w, x, tokens, out);
            }

            fn gemm_q8(
                &self,
                w: $crate::kernels::Q8Matrix<'_>,
                x: &[f32],
                tokens: usize,
                out: &mut [f32],
            ) {
                $crate::kernels::driver::gemm_q8(self, w, x, tokens, out);
            }

            fn gemm_q4(
                &self,
                w: $crate::kernels::Q4Matrix<'_>,
                x: &[f32],
                tokens: usize,
                out: &mut [f32],
            ) {
                $crate::kernels::driver::gemm_q4(self, w, x, tokens, out);
            }

            $(
                fn attend(
                    &self,
                    head: &$crate::kernels::AttentionHead<'_>,
                    scores: &mut [f32],
                    out: &mut [f32],
                    lse: &mut [f32],
                ) {
                    #[target_feature(enable = $features)]
                    unsafe fn attend(
                        head: &$crate::kernels::AttentionHead<'_>,
                        scores: &mut [f32],
                        out: &mut [f32],
                        lse: &mut [f32],
                    ) {
                        $attend(head, scores, out, lse);
                    }
                    // SAFETY: `self` proves the features; the callee is safe code.
                    unsafe { attend(head, scores, out, lse) }
                }

                fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
                    #[target_feature(enable = $features)]
                    unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
                        $crate::kernels::math::swiglu(gate, up);
                    }
                    // SAFETY: as for `attend`.
                    unsafe { swiglu(gate, up) }
                }
            )?
        }
    };
}

pub(crate) use simd_kernels;
