//! Shape handling and cache blocking shared by the SIMD kernels, in safe Rust.
//!
//! An architecture module provides a [`Simd`]: row dot products for decode and one register
//! tile for prefill. This module trims every call to the common prefix of its buffers (the
//! same prefix [`Portable`](super::Portable) computes), then either runs the row dot products
//! once per token or packs blocks of weights into a stack buffer (int8 converted to f32, each
//! run of 32 values times its own scale, once per packed block) and reuses each block across
//! every token.

use super::{DECODE_BELOW_TOKENS, F32Matrix, Q8_BLOCK, Q8Matrix, q8_blocks_per_row};

/// Columns of one packed weight block: `KC × NR` f32 stay in L1 while every token tile uses them.
/// A multiple of [`Q8_BLOCK`], so a packed block starts on a q8 scale boundary.
pub(crate) const KC: usize = 256;
const _: () = assert!(KC.is_multiple_of(Q8_BLOCK));

/// The widest tile any architecture uses (rows of `W` per packed block).
pub(crate) const NR_MAX: usize = 32;

/// What an architecture module provides. Every method is safe: implementations check the
/// lengths they rely on and do nothing when a caller breaks the stated contract.
pub(crate) trait Simd {
    /// Tokens per register tile.
    const MR: usize;
    /// Weight rows per register tile (`≤ NR_MAX`).
    const NR: usize;

    /// `out[i] = Σ_j data[i·cols + j] · x[j]` for every `i < min(out.len(), data.len() / cols)`;
    /// needs `x.len() ≥ cols`.
    fn matvec_f32(&self, data: &[f32], cols: usize, x: &[f32], out: &mut [f32]);

    /// As [`Simd::matvec_f32`] for int8 weights with one scale per block of [`Q8_BLOCK`]
    /// values of a row: `out[i] = Σ_b scales[i·bpr + b] · Σ_{j in block b} data[i·cols + j] · x[j]`
    /// with `bpr = ceil(cols / 32)`, for every `i < min(out.len(), data.len() / cols,
    /// scales.len() / bpr)`.
    fn matvec_q8(&self, data: &[i8], scales: &[f32], cols: usize, x: &[f32], out: &mut [f32]);

    /// Packs a block as [`pack`] does with `stride = NR`: rows `row0 .. row0 + nr` (`nr ≤
    /// NR`), columns `k0 .. k0 + kc` (`k0` a multiple of [`KC`], `kc ≤ KC`) of a `cols`-column
    /// matrix (q8: each value times its block's scale) into `dst[k·NR + r]`, rows `nr .. NR`
    /// zero. Returns `false`, leaving `dst` alone, where it does not (the default, and on any
    /// length it cannot satisfy); the driver then packs in portable code.
    #[allow(clippy::too_many_arguments)]
    fn pack(
        &self,
        _src: Source<'_>,
        _cols: usize,
        _row0: usize,
        _nr: usize,
        _k0: usize,
        _kc: usize,
        _dst: &mut [f32],
    ) -> bool {
        false
    }

    /// `out[t·out_stride + i] (+)= Σ_{k<kc} packed[k·NR + i] · x[t·x_stride + k]` for
    /// `t < mt ≤ MR`, `i < nr ≤ NR`; adds to `out` when `accumulate`, else overwrites it.
    #[allow(clippy::too_many_arguments)]
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
    );
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
}

impl Source<'_> {
    /// Whether a [`Simd::pack`] of rows `row0 .. row0 + nr` (`nr ≤ nr_max`), columns `k0 ..
    /// k0 + kc` of this `cols`-column matrix into `dst_len` values with `nr_max` rows per
    /// column is within every buffer (q8: with its scales) and starts on a q8 block.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn packs(
        &self,
        cols: usize,
        row0: usize,
        nr: usize,
        k0: usize,
        kc: usize,
        dst_len: usize,
        nr_max: usize,
    ) -> bool {
        let stored = match self {
            Self::F32(data) => data.len() / cols.max(1),
            Self::Q8(data, scales) => {
                (data.len() / cols.max(1)).min(scales.len() / q8_blocks_per_row(cols).max(1))
            }
        };
        nr <= nr_max
            && kc > 0
            && k0.is_multiple_of(Q8_BLOCK)
            && k0 + kc <= cols
            && dst_len >= kc * nr_max
            && stored >= row0 + nr
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
            simd.matvec_f32(data, w.cols, xt, ot.get_mut(..e.rows).unwrap_or_default());
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
            simd.matvec_q8(
                data,
                scales,
                w.cols,
                xt,
                ot.get_mut(..e.rows).unwrap_or_default(),
            );
        }
    } else {
        blocked(simd, Source::Q8(data, scales), w.rows, w.cols, e, x, out);
    }
}

/// Packs `nr` rows from `row0`, columns `k0..k0 + kc`, as `dst[k·stride + r]`, zero-padding
/// rows `nr..stride`.
///
/// Each row's columns are first converted (and scaled) into a contiguous buffer, which
/// vectorizes, then written to the packed layout with plain indexed stores; the padding rows
/// are zeroed only in a partial panel.
#[allow(clippy::too_many_arguments)]
fn pack(
    src: Source<'_>,
    cols: usize,
    row0: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    stride: usize,
    dst: &mut [f32],
) {
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
            if nr_full != S::NR || !simd.pack(src, cols, row0, nr, k0, kc, &mut packed) {
                pack(src, cols, row0, nr, k0, kc, nr_full, &mut packed);
            }
            for t0 in (0..e.tokens).step_by(mr) {
                let mt = mr.min(e.tokens - t0);
                let xs = x.get(t0 * cols + k0..).unwrap_or_default();
                let os = out.get_mut(t0 * rows + row0..).unwrap_or_default();
                simd.tile(&packed, kc, xs, cols, mt, os, rows, nr, k0 > 0);
            }
        }
    }
}
