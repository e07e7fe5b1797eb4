//! q8 and q4 prefill with AVX-512 VNNI, used by [`Avx512`](super::Avx512) where the CPU has
//! it: weights packed as bytes, activations rounded per block of 32 in two int8 levels, products
//! summed in 32-bit integers per block and scaled once.
//!
//! A register of packed weights holds 16 rows × 4 consecutive columns (row `r` in dword lane
//! `r`), so one `vpdpbusd` against 4 activation bytes broadcast to every lane adds 64 products
//! into 16 rows' sums for one token; a block of 32 columns is 8 of them per level. Per block,
//! row and token the integer sum is converted once and multiplied by the row's scale times the
//! token's step. Against the float tile's 32 multiply-adds per block of 16 rows and one token,
//! that is 16 `vpdpbusd` and five instructions around them (q4: six), and packing copies bytes
//! instead of converting every weight to f32.
//!
//! Two levels ([`round_block_fine`]: `x ≈ step · (q + r / 256)`, `step = max |x| / 127`) and
//! not one, as decode rounds them: a classification is one prefill, and one level moved SST-2
//! label logits by up to 0.38 and flipped 2 of 300 labels of the dense q8 bundle against the
//! exact kernels, where two levels give the exact kernels' labels and logits (docs/RESULTS.md,
//! anchor `vnni-prefill`). The second level costs a third of the gain.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: q4 values `0 ..= 15` are unsigned as they
//! are (`w = d · q + m`: `d · step · Σ q·x̂ + m · Σ x`, the second with the exact block sums);
//! q8 weights are stored offset by 128 (`w ^ 0x80`) and each sum starts at
//! `−128 · Σ (256 q + r)`, so that it ends exactly at `Σ w · (256 q + r)`.
//!
//! Loops: chunks of tokens whose rounded activations fit [`HELD`] bytes, then panels of 16 rows,
//! then [`KB`] blocks of columns packed once, then tiles of up to [`MR`] tokens.
//!
//! `unsafe` is allowed in this module only, under the same rules as `avx512`'s.
#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m512i, _mm_storeu_si128, _mm256_loadu_si256, _mm256_maskz_loadu_epi8, _mm512_add_epi32,
    _mm512_add_ps, _mm512_and_si512, _mm512_castps_si512, _mm512_castsi256_si512,
    _mm512_castsi512_ps, _mm512_cvtepi32_epi8, _mm512_cvtepi32_ps, _mm512_cvtph_ps,
    _mm512_cvtps_epi32, _mm512_cvtsepi32_epi8, _mm512_dpbusd_epi32, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_storeu_ps, _mm512_maskz_loadu_epi8,
    _mm512_maskz_loadu_ps, _mm512_max_epi32, _mm512_min_epi32, _mm512_mul_ps,
    _mm512_permutexvar_epi64, _mm512_reduce_add_epi32, _mm512_set_epi64, _mm512_set1_epi8,
    _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_slli_epi32,
    _mm512_srlv_epi64, _mm512_storeu_ps, _mm512_storeu_si512, _mm512_sub_ps, _mm512_xor_si512,
};

use super::super::driver::{Product, Source};
use super::super::{Q4_BLOCK_BYTES, Q8_BLOCK, q8_blocks_per_row};
use super::avx512::transpose16;
use super::vnni::load_block;

/// Rows per panel: one register of 32-bit lanes.
const NR: usize = 16;
/// Tokens per tile.
const MR: usize = 8;
/// Blocks of 32 columns packed at a time (16 KB of weights).
const KB: usize = 32;
/// Bytes of rounded activations held at a time: `tokens × 32 · ceil(cols / 32)`.
const HELD: usize = 64 * 1024;
const HELD_BLOCKS: usize = HELD / Q8_BLOCK;

/// Whether rows of `cols` columns fit this path (one token's rounded activations in [`HELD`]).
pub(super) fn takes(cols: usize) -> bool {
    cols > 0 && q8_blocks_per_row(cols) <= HELD_BLOCKS
}

/// Rounded activations of a chunk of tokens, `32 · ceil(cols / 32)` bytes a level per token (a
/// partial last block zero-padded) and, per token and block, its step and its correction
/// term ([`round_block_fine`]).
#[repr(C, align(64))]
struct Activations {
    /// The first level, `round(x / step)`, `step = max |x| / 127`.
    q: [i8; HELD],
    /// The second level, `round(256 · (x / step − q))`.
    r: [i8; HELD],
    /// `step / 256`, what the joined sum `Σ w · (256 q + r)` is multiplied by.
    steps: [f32; HELD_BLOCKS],
    /// q8: `−128 · Σ (256 q + r)` (the offset weights' extra sum, exact in integers).
    offsets: [i32; HELD_BLOCKS],
    /// q4: the exact `Σ x` (the minimum's term).
    sums: [f32; HELD_BLOCKS],
}

/// One panel: per block, 8 registers of 16 rows × 4 bytes, the rows' scales (q8) or `d` (q4)
/// and, for q4, the rows' minimums.
#[repr(C, align(64))]
struct Packed {
    w: [i8; KB * Q8_BLOCK * NR],
    d: [f32; KB * NR],
    m: [f32; KB * NR],
}

/// `out[t · out_stride + i] = Σ_j W[i][j] · x̂[t][j]` for q8 or q4 `product.src`, the
/// activations rounded per block.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and VNNI; `product.fits()`, `product.src` is q8 or q4 and
/// [`takes`]`(product.cols)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
pub(super) unsafe fn gemm(product: Product<'_>) {
    let Product {
        src,
        rows,
        cols,
        tokens,
        x,
        out,
        out_stride,
    } = product;
    let per_row = q8_blocks_per_row(cols);
    let chunk = HELD_BLOCKS / per_row;
    let mut held = Activations {
        q: [0; HELD],
        r: [0; HELD],
        steps: [0.0; HELD_BLOCKS],
        offsets: [0; HELD_BLOCKS],
        sums: [0.0; HELD_BLOCKS],
    };
    let mut packed = Packed {
        w: [0; KB * Q8_BLOCK * NR],
        d: [0.0; KB * NR],
        m: [0.0; KB * NR],
    };
    let q4 = matches!(src, Source::Q4(..));
    let out = out.as_mut_ptr();
    for t0 in (0..tokens).step_by(chunk) {
        let tc = chunk.min(tokens - t0);
        round(x.get(t0 * cols..).unwrap_or_default(), tc, cols, &mut held);
        for row0 in (0..rows).step_by(NR) {
            let nr = NR.min(rows - row0);
            for kb0 in (0..per_row).step_by(KB) {
                let nb = KB.min(per_row - kb0);
                // SAFETY: `fits` gives `rows` stored rows of `cols` columns; the panel's rows
                // and blocks are below them.
                unsafe { pack(src, cols, row0, nr, kb0, nb, &mut packed) };
                for t in (0..tc).step_by(MR) {
                    let tile = Tile {
                        packed: &packed,
                        held: &held,
                        per_row,
                        kb0,
                        nb,
                        token: t,
                        // SAFETY: `fits` gives `(tokens − 1) · out_stride + rows` outputs;
                        // this tile's are below it.
                        out: unsafe { out.add((t0 + t) * out_stride + row0) },
                        out_stride,
                        nr,
                        accumulate: kb0 > 0,
                        q4,
                    };
                    // SAFETY: the tile's tokens, blocks and rows were rounded and packed above.
                    unsafe {
                        match MR.min(tc - t) {
                            1 => tile.run::<1>(),
                            2 => tile.run::<2>(),
                            3 => tile.run::<3>(),
                            4 => tile.run::<4>(),
                            5 => tile.run::<5>(),
                            6 => tile.run::<6>(),
                            7 => tile.run::<7>(),
                            _ => tile.run::<8>(),
                        }
                    }
                }
            }
        }
    }
}

/// Rounds `tokens` rows of `cols` activations (`x` holds them) into `held`, a partial last
/// block zero-padded.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round(x: &[f32], tokens: usize, cols: usize, held: &mut Activations) {
    let per_row = q8_blocks_per_row(cols);
    let rows = x.chunks(cols).take(tokens);
    for (t, row) in rows.enumerate() {
        for (b, block) in row.chunks(Q8_BLOCK).enumerate() {
            let Some((q, r, step, sum_q)) = round_block_fine(block) else {
                continue;
            };
            let at = t * per_row + b;
            if let Some(dst) = held.q.get_mut(at * Q8_BLOCK..(at + 1) * Q8_BLOCK) {
                dst.copy_from_slice(&q);
            }
            if let Some(dst) = held.r.get_mut(at * Q8_BLOCK..(at + 1) * Q8_BLOCK) {
                dst.copy_from_slice(&r);
            }
            if let (Some(s), Some(o), Some(sum)) = (
                held.steps.get_mut(at),
                held.offsets.get_mut(at),
                held.sums.get_mut(at),
            ) {
                *s = step;
                *o = -128 * sum_q;
                *sum = block.iter().sum();
            }
        }
    }
}

/// One block rounded in two int8 levels: `x ≈ step · (q + r / 256)` with `step = max |x| / 127`,
/// `q = round(x / step)` and `r = round(256 · (x / step − q))` (saturated to int8; `|r| ≤ 128`).
/// Returns `q`, `r`, `step / 256` and `256 · Σ q + Σ r`: the block's products are then
/// `step / 256 · Σ w · (256 q + r)`. `None` when `block` is empty.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn round_block_fine(block: &[f32]) -> Option<([i8; Q8_BLOCK], [i8; Q8_BLOCK], f32, i32)> {
    let (halves, amax) = load_block(block)?;
    let inverse = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    // SAFETY: 16-byte stores into the local arrays.
    unsafe {
        let (mut q, mut r) = ([0i8; Q8_BLOCK], [0i8; Q8_BLOCK]);
        let mut sum = _mm512_setzero_si512();
        for (h, v) in halves.into_iter().enumerate() {
            let scaled = _mm512_mul_ps(v, inverse);
            // |scaled| ≤ 127: the narrowing keeps every value of `q`.
            let whole = _mm512_cvtps_epi32(scaled);
            let rest = _mm512_sub_ps(scaled, _mm512_cvtepi32_ps(whole));
            let fine = _mm512_cvtps_epi32(_mm512_mul_ps(rest, _mm512_set1_ps(256.0)));
            let fine = _mm512_max_epi32(
                _mm512_min_epi32(fine, _mm512_set1_epi32(127)),
                _mm512_set1_epi32(-128),
            );
            _mm_storeu_si128(
                q.as_mut_ptr().add(16 * h).cast(),
                _mm512_cvtepi32_epi8(whole),
            );
            _mm_storeu_si128(
                r.as_mut_ptr().add(16 * h).cast(),
                _mm512_cvtsepi32_epi8(fine),
            );
            sum = _mm512_add_epi32(sum, _mm512_add_epi32(_mm512_slli_epi32::<8>(whole), fine));
        }
        Some((q, r, amax / 127.0 / 256.0, _mm512_reduce_add_epi32(sum)))
    }
}

/// Packs rows `row0 .. row0 + nr` (`nr ≤ 16`), blocks `kb0 .. kb0 + nb` (`nb ≤ KB`) of `src`
/// into `p`: two blocks (64 columns) of 16 rows at a time, each row's 64 bytes (q4: its two
/// blocks' nibbles spread to one byte each) loaded into a register and the 16 × 16 dwords
/// transposed, so that register `j` holds columns `4j .. 4j + 4` of every row; q8 bytes offset
/// by 128. Columns past `cols` are zero (their activations are too); rows past `nr` are left
/// as they were (their outputs are not stored).
///
/// # Safety
/// `src` holds rows below `row0 + nr` of `cols` columns (q8: `cols` bytes and
/// `ceil(cols / 32)` scales a row; q4: `ceil(cols / 32)` blocks and pairs), and
/// `kb0 + nb ≤ ceil(cols / 32)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack(
    src: Source<'_>,
    cols: usize,
    row0: usize,
    nr: usize,
    kb0: usize,
    nb: usize,
    p: &mut Packed,
) {
    let per_row = q8_blocks_per_row(cols);
    // Q4: qwords 0, 1 (block A's bytes) into the first and second quarter, shifted by 0 and 4
    // (its low nibbles, values 0..16, then its high ones, 16..32); block B's into the others.
    let spread = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
    let shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    let nibble = _mm512_set1_epi8(0x0f);
    let offset = _mm512_set1_epi8(-128);
    // SAFETY: every load below is masked to columns below `cols` (q8) or to blocks below
    // `per_row` (q4) of rows below `row0 + nr`; every store is within `p`.
    unsafe {
        for b in (0..nb).step_by(2) {
            let block = kb0 + b;
            let mut v = [_mm512_setzero_ps(); NR];
            for (r, v) in v.iter_mut().enumerate().take(nr) {
                let row = row0 + r;
                let bytes = match src {
                    Source::Q8(data, _) => {
                        let start = block * Q8_BLOCK;
                        let valid = (cols - start).min(2 * Q8_BLOCK);
                        let mask = if valid == 64 {
                            u64::MAX
                        } else {
                            (1u64 << valid) - 1
                        };
                        let at = data.as_ptr().add(row * cols + start);
                        _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, at), offset)
                    }
                    Source::Q4(data, _) => {
                        let valid = (per_row - block).min(2);
                        let mask = if valid == 2 { u32::MAX } else { 0xffff };
                        let at = data.as_ptr().add((row * per_row + block) * Q4_BLOCK_BYTES);
                        let both = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(mask, at.cast()));
                        let spread = _mm512_permutexvar_epi64(spread, both);
                        _mm512_and_si512(_mm512_srlv_epi64(spread, shift), nibble)
                    }
                    Source::F32(_) => _mm512_setzero_si512(),
                };
                *v = _mm512_castsi512_ps(bytes);
            }
            // The q8 offset makes padding bytes 128, not 0: harmless, as the padded
            // activations are 0.
            transpose16(&mut v);
            let registers = if b + 1 < nb { NR } else { NR / 2 };
            for (j, v) in v.into_iter().enumerate().take(registers) {
                let at = p.w.as_mut_ptr().add((b * 8 + j) * 64);
                _mm512_storeu_si512(at.cast(), _mm512_castps_si512(v));
            }
        }
        for b in 0..nb {
            let block = kb0 + b;
            let (d, m) = (p.d.as_mut_ptr().add(b * NR), p.m.as_mut_ptr().add(b * NR));
            match src {
                Source::Q8(_, scales) => {
                    for r in 0..nr {
                        *d.add(r) = *scales.as_ptr().add((row0 + r) * per_row + block);
                    }
                }
                Source::Q4(_, scales) => {
                    let (mut db, mut mb) = ([0u16; NR], [0u16; NR]);
                    for (r, (db, mb)) in db.iter_mut().zip(&mut mb).enumerate().take(nr) {
                        let pair = scales.as_ptr().add(2 * ((row0 + r) * per_row + block));
                        *db = *pair;
                        *mb = *pair.add(1);
                    }
                    let cvt =
                        |h: &[u16; NR]| _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr().cast()));
                    _mm512_storeu_ps(d, cvt(&db));
                    _mm512_storeu_ps(m, cvt(&mb));
                }
                Source::F32(_) => {}
            }
        }
    }
}

/// One register tile: tokens `token .. token + MT` of the held chunk against a packed panel.
struct Tile<'a> {
    packed: &'a Packed,
    held: &'a Activations,
    /// Blocks per token in `held`.
    per_row: usize,
    /// The panel's first block and its number of blocks.
    kb0: usize,
    nb: usize,
    token: usize,
    /// The tile's first output (token `token`, the panel's first row).
    out: *mut f32,
    out_stride: usize,
    nr: usize,
    accumulate: bool,
    q4: bool,
}

impl Tile<'_> {
    /// # Safety
    /// The CPU has AVX-512 F, BW, VL and VNNI; `held` holds tokens below `token + MT` and
    /// `packed` blocks below `nb`; `out` has `(MT − 1) · out_stride + nr` outputs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    unsafe fn run<const MT: usize>(&self) {
        let (p, h) = (self.packed, self.held);
        let lanes = if self.nr >= NR {
            0xffff
        } else {
            ((1u32 << self.nr) - 1) as u16
        };
        // SAFETY: the caller's guarantees; every index below is below them.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); MT];
            for b in 0..self.nb {
                let block = |t: usize| (self.token + t) * self.per_row + self.kb0 + b;
                let mut dot: [__m512i; MT] = core::array::from_fn(|t| {
                    if self.q4 {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_set1_epi32(*h.offsets.as_ptr().add(block(t)))
                    }
                });
                let mut coarse = [_mm512_setzero_si512(); MT];
                for g in 0..Q8_BLOCK / 4 {
                    let w = _mm512_loadu_si512(p.w.as_ptr().add((b * 8 + g) * 64).cast());
                    for (t, (dot, coarse)) in dot.iter_mut().zip(coarse.iter_mut()).enumerate() {
                        let at = block(t) * Q8_BLOCK + 4 * g;
                        let q = h.q.as_ptr().add(at).cast::<i32>().read_unaligned();
                        let r = h.r.as_ptr().add(at).cast::<i32>().read_unaligned();
                        *dot = _mm512_dpbusd_epi32(*dot, w, _mm512_set1_epi32(r));
                        *coarse = _mm512_dpbusd_epi32(*coarse, w, _mm512_set1_epi32(q));
                    }
                }
                for (dot, coarse) in dot.iter_mut().zip(coarse) {
                    *dot = _mm512_add_epi32(*dot, _mm512_slli_epi32::<8>(coarse));
                }
                let d = _mm512_loadu_ps(p.d.as_ptr().add(b * NR));
                for (t, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(*h.steps.as_ptr().add(block(t))));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
                }
                if self.q4 {
                    let m = _mm512_loadu_ps(p.m.as_ptr().add(b * NR));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let sum = _mm512_set1_ps(*h.sums.as_ptr().add(block(t)));
                        *acc = _mm512_fmadd_ps(m, sum, *acc);
                    }
                }
            }
            for (t, v) in acc.into_iter().enumerate() {
                let o = self.out.add(t * self.out_stride);
                let v = if self.accumulate {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, o))
                } else {
                    v
                };
                _mm512_mask_storeu_ps(o, lanes, v);
            }
        }
    }
}
