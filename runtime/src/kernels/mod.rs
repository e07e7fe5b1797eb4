//! Matrix kernels behind one trait, so per-architecture implementations (AVX2 with FMA,
//! AVX-512 F/BW/VL with FMA, NEON with and without the int8 dot product) can replace the
//! portable one without touching the model code.
//!
//! Layout conventions, shared by every implementation:
//! - weights are row-major, `rows × cols` (a linear layer `y = W x` has `rows = d_out`,
//!   `cols = d_in`);
//! - activations are row-major, `tokens × cols`; outputs `tokens × rows`;
//! - `tokens == 1` is decode (matrix–vector), `tokens > 1` is prefill (matrix–matrix).
//!
//! A low-rank layer `y = B (A x)` is two products, `A` (`r × d_in`) then `B` (`d_out × r`):
//! [`Kernels::gemm_low_rank`], which `Threaded` runs as one pool job in decode.
//! Kernels never allocate; the caller owns every buffer.

//!
//! [`best`] picks the fastest implementation this machine offers: at run time under `std`
//! (CPU feature detection), from the compile-time target features without it. Under `std`,
//! [`Threaded`] spreads any implementation over a persistent pool of threads.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod driver;
pub(crate) mod math;
mod portable;
mod select;
#[cfg(any(test, feature = "std"))]
mod threaded;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{Neon, NeonDot};
pub use math::{AttentionHead, from_f16, round_key, to_f16};
pub use portable::Portable;
pub use select::{AnyKernels, available, best};
#[cfg(any(test, feature = "std"))]
pub use threaded::Threaded;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{Avx2Fma, Avx512};

use core::ops::Range;

pub use crate::format::{Q4_BLOCK_BYTES, Q8_BLOCK, q8_blocks_per_row};

/// A row-major f32 matrix borrowed from a bundle.
#[derive(Clone, Copy, Debug)]
pub struct F32Matrix<'a> {
    /// Number of rows (outputs).
    pub rows: usize,
    /// Number of columns (inputs).
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: &'a [f32],
}

/// A row-major int8 matrix with one f32 scale per block of [`Q8_BLOCK`] (32) consecutive
/// values of a row.
///
/// Row `i` is cut into `blocks_per_row = ceil(cols / 32)` blocks, the last one partial when
/// `cols` is not a multiple of 32; scales are row-major by block:
/// `w[i][j] = scales[i · blocks_per_row + j / 32] · data[i·cols + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Q8Matrix<'a> {
    /// Number of rows (outputs).
    pub rows: usize,
    /// Number of columns (inputs).
    pub cols: usize,
    /// `rows * cols` quantized values, row-major.
    pub data: &'a [i8],
    /// `rows * blocks_per_row` scales: `scales[row * blocks_per_row + block]`.
    pub scales: &'a [f32],
}

impl Q8Matrix<'_> {
    /// Scales per row: `ceil(cols / Q8_BLOCK)`.
    pub const fn blocks_per_row(&self) -> usize {
        q8_blocks_per_row(self.cols)
    }
}

/// A row-major 4-bit matrix ([`crate::format::Dtype::Q4`]): per block of 32 values of a row,
/// 16 bytes of nibbles (value `k` in the low nibble of byte `k`, value `k + 16` in its high
/// nibble) and, in `scales`, the f16 bits of its scale `d` and minimum `m`:
/// `w = d · q + m`. Blocks are row-major; a partial last block of a row is padded.
#[derive(Clone, Copy, Debug)]
pub struct Q4Matrix<'a> {
    /// Number of rows (outputs).
    pub rows: usize,
    /// Number of columns (inputs).
    pub cols: usize,
    /// `rows · blocks_per_row · 16` bytes.
    pub data: &'a [u8],
    /// `rows · blocks_per_row · 2` f16 bits: `d` then `m` of each block.
    pub scales: &'a [u16],
}

impl Q4Matrix<'_> {
    /// Blocks per row: `ceil(cols / 32)`.
    pub const fn blocks_per_row(&self) -> usize {
        q8_blocks_per_row(self.cols)
    }
}

/// One product of a decode step's group that shares its input ([`Kernels::gemm_shared`]):
/// `out = W x`, where `W` is `first` or, low-rank, `second · first` through `low`.
#[derive(Debug)]
pub struct SharedProduct<'w, 'o> {
    /// The matrix, or a low-rank layer's `A` (`rank × d_in`).
    pub first: Weight<'w>,
    /// A low-rank layer's `B` (`d_out × rank`).
    pub second: Option<Weight<'w>>,
    /// A low-rank layer's `A x` (`rank` values, overwritten); unused for one matrix.
    pub low: &'o mut [f32],
    /// `W x`.
    pub out: &'o mut [f32],
}

/// A matrix of any dtype, as the bundle stores it and the kernels take it.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// f32 values.
    F32(F32Matrix<'a>),
    /// int8 values with one scale per block of 32 values of a row.
    Q8(Q8Matrix<'a>),
    /// 4-bit values with a scale and a minimum per block of 32 values of a row.
    Q4(Q4Matrix<'a>),
}

impl<'a> Weight<'a> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Self::F32(m) => m.rows,
            Self::Q8(m) => m.rows,
            Self::Q4(m) => m.rows,
        }
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        match self {
            Self::F32(m) => m.cols,
            Self::Q8(m) => m.cols,
            Self::Q4(m) => m.cols,
        }
    }

    /// Whether the stored values (and scales) cover all `rows × cols`.
    pub fn is_whole(&self) -> bool {
        match self {
            Self::F32(m) => m.data.len() >= m.rows * m.cols,
            Self::Q8(m) => {
                m.data.len() >= m.rows * m.cols && m.scales.len() >= m.rows * m.blocks_per_row()
            }
            Self::Q4(m) => {
                let blocks = m.rows * m.blocks_per_row();
                m.data.len() >= blocks * Q4_BLOCK_BYTES && m.scales.len() >= 2 * blocks
            }
        }
    }

    /// Rows `start .. start + n` as a `n × cols` matrix; the stored part only (empty past the
    /// end).
    pub fn row_range(&self, start: usize, n: usize) -> Weight<'a> {
        let cols = self.cols();
        let range = start * cols..(start + n) * cols;
        match self {
            Self::F32(m) => Self::F32(F32Matrix {
                rows: n,
                cols,
                data: m.data.get(range).unwrap_or(&[]),
            }),
            Self::Q8(m) => {
                let per_row = m.blocks_per_row();
                Self::Q8(Q8Matrix {
                    rows: n,
                    cols,
                    data: m.data.get(range).unwrap_or(&[]),
                    scales: m
                        .scales
                        .get(start * per_row..(start + n) * per_row)
                        .unwrap_or(&[]),
                })
            }
            Self::Q4(m) => {
                let per_row = m.blocks_per_row();
                let blocks = start * per_row..(start + n) * per_row;
                Self::Q4(Q4Matrix {
                    rows: n,
                    cols,
                    data: m
                        .data
                        .get(blocks.start * Q4_BLOCK_BYTES..blocks.end * Q4_BLOCK_BYTES)
                        .unwrap_or(&[]),
                    scales: m
                        .scales
                        .get(2 * blocks.start..2 * blocks.end)
                        .unwrap_or(&[]),
                })
            }
        }
    }

    /// One row as a `1 × cols` matrix (empty if out of range).
    pub fn row(&self, index: usize) -> Weight<'a> {
        self.row_range(index, 1)
    }

    /// Writes row `index`, dequantized, into `out` (`cols` values).
    pub fn copy_row(&self, index: usize, out: &mut [f32]) {
        match self.row(index) {
            Self::F32(m) => out.iter_mut().zip(m.data).for_each(|(o, &w)| *o = w),
            Self::Q8(m) => {
                for ((o, q), &scale) in out
                    .chunks_mut(Q8_BLOCK)
                    .zip(m.data.chunks(Q8_BLOCK))
                    .zip(m.scales)
                {
                    o.iter_mut()
                        .zip(q)
                        .for_each(|(o, &w)| *o = scale * f32::from(w));
                }
            }
            Self::Q4(m) => {
                for ((o, block), pair) in out
                    .chunks_mut(Q8_BLOCK)
                    .zip(m.data.chunks_exact(Q4_BLOCK_BYTES))
                    .zip(m.scales.chunks_exact(2))
                {
                    let (d, min) = q4_pair(pair);
                    let values = q4_unpack(block);
                    o.iter_mut()
                        .zip(values)
                        .for_each(|(o, q)| *o = d * f32::from(q) + min);
                }
            }
        }
    }
}

/// The `(d, m)` of a q4 block from its two f16 bits.
pub fn q4_pair(pair: &[u16]) -> (f32, f32) {
    let value = |i: usize| half::f16::from_bits(pair.get(i).copied().unwrap_or(0)).to_f32();
    (value(0), value(1))
}

/// The 32 values `q` of a q4 block's 16 bytes.
pub fn q4_unpack(block: &[u8]) -> [u8; Q8_BLOCK] {
    let mut q = [0u8; Q8_BLOCK];
    let (low, high) = q.split_at_mut(Q8_BLOCK / 2);
    for ((&byte, l), h) in block.iter().zip(low).zip(high) {
        *l = byte & 0x0f;
        *h = byte >> 4;
    }
    q
}

/// The dot product of one q4 block (`block`: 16 bytes, `pair`: its f16 `d` and `m`) with up
/// to 32 activations: the scalar path for a row's partial last block.
pub(crate) fn q4_block_dot(block: &[u8], pair: &[u16], x: &[f32]) -> f32 {
    let (d, m) = q4_pair(pair);
    let q = q4_unpack(block);
    let (mut qx, mut sx) = (0.0f32, 0.0f32);
    for (&q, &x) in q.iter().zip(x) {
        qx += f32::from(q) * x;
        sx += x;
    }
    d * qx + m * sx
}

/// The work of [`Kernels::for_each_part`] on one range of items: `(range, out_part, scratch)`.
pub type PartJob<'a> = dyn Fn(Range<usize>, &mut [f32], &mut [f32]) + Sync + 'a;

/// Matrix products for one thread. Every method computes `out = x · Wᵀ`, that is
/// `out[t][i] = Σ_j W[i][j] · x[t][j]`, for `t < tokens`, overwriting `out`.
///
/// Callers guarantee `x.len() == tokens * w.cols` and `out.len() == tokens * w.rows`
/// (the model code checks shapes once when a bundle is parsed); implementations may
/// debug-assert it but must not panic in release builds on any input: on a length mismatch
/// they compute over the common prefix.
///
/// Kernels are `Sync`: the parts of [`Kernels::for_each_part`] may call them from several
/// threads at once.
pub trait Kernels: Sync {
    /// A short name for reports and benchmarks (`"portable"`, `"avx2"`, `"neon"`, …).
    fn name(&self) -> &'static str;

    /// f32 weights.
    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]);

    /// int8 weights with per-block scales ([`Q8Matrix`]); activations stay f32.
    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]);

    /// 4-bit weights ([`Q4Matrix`]); activations stay f32. The default is the portable
    /// kernel; the SIMD sets have their own decode and pack q4 for their prefill tile.
    fn gemm_q4(&self, w: Q4Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        portable::gemm_q4(w, x, tokens, out);
    }

    /// Any dtype.
    fn gemm(&self, w: Weight<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        match w {
            Weight::F32(m) => self.gemm_f32(m, x, tokens, out),
            Weight::Q8(m) => self.gemm_q8(m, x, tokens, out),
            Weight::Q4(m) => self.gemm_q4(m, x, tokens, out),
        }
    }

    /// A low-rank layer, `out = (x · Aᵀ) · Bᵀ`, through `low = x · Aᵀ` (`tokens × a.rows`,
    /// overwritten). Callers guarantee `b.cols == a.rows`, `low.len() == tokens * a.rows` and
    /// the lengths of [`Kernels::gemm`] for both products; on a mismatch the result is that
    /// of the two products one after the other, which is what this default does.
    fn gemm_low_rank(
        &self,
        a: Weight<'_>,
        b: Weight<'_>,
        x: &[f32],
        tokens: usize,
        low: &mut [f32],
        out: &mut [f32],
    ) {
        self.gemm(a, x, tokens, low);
        self.gemm(b, low, tokens, out);
    }

    /// The products of one token that share their input `x` (a block's q, k and v; its gate
    /// and up), with the lengths of [`Kernels::gemm`] and [`Kernels::gemm_low_rank`] for each.
    /// This default runs them one after the other; a pool runs them as one job, each thread
    /// taking its share of the rows of every product.
    fn gemm_shared(&self, products: &mut [SharedProduct<'_, '_>], x: &[f32]) {
        for p in products {
            match p.second {
                None => self.gemm(p.first, x, 1, p.out),
                Some(second) => self.gemm_low_rank(p.first, second, x, 1, p.low, p.out),
            }
        }
    }

    /// Runs `job(range, out_part, scratch)` over consecutive ranges of `0..items` that together
    /// cover it, where `out_part` is the range's share of `out` (`out.len() / items` values per
    /// item) and `scratch` is a buffer of `scratch.len()` values that no other call sees. The
    /// calls may run in parallel, for work outside the matrix products (attention) that splits
    /// into independent items; this default makes one call with everything.
    fn for_each_part(&self, items: usize, out: &mut [f32], scratch: &mut [f32], job: &PartJob<'_>) {
        job(0..items, out, scratch);
    }

    /// The attention of the query heads sharing one key/value head ([`AttentionHead`]) into
    /// `out` (one value width per query), with `scores` (at least `positions` values per
    /// query) as scratch; `lse[g]`, where `lse` holds it, is query `g`'s log-sum-exp
    /// `max + ln Σ_j e^(s_j − max)` of its scaled scores, which merges attentions over
    /// disjoint positions ([`merge_attention`]). The default is the plain-Rust
    /// version at the crate's baseline instruction set; SIMD kernels compile the same code for
    /// their registers.
    fn attend(
        &self,
        head: &AttentionHead<'_>,
        scores: &mut [f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        math::attend(head, scores, out, lse);
    }

    /// Threads that share a product or a [`Kernels::for_each_part`] (1 unless pooled).
    fn threads(&self) -> usize {
        1
    }

    /// `gate[i] = silu(gate[i]) · up[i]` over the common length (the MLP's middle); compiled
    /// per instruction set as [`Kernels::attend`].
    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        math::swiglu(gate, up);
    }

    /// Whether quantized products (q8 or q4) of `tokens` tokens may round each block of 32
    /// activations to int8 first, at a step of `max |x| / 127` over the block, to multiply in
    /// integers (llama.cpp does the same for its quantized dot products). Their result then
    /// differs from the exact one by at most `Σ_j |w_j| · step_j / 2` beyond rounding (q4:
    /// `|d| · q_j`, the minimum's term stays exact); f32 products are unaffected. The NEON
    /// dot-product kernels round in decode (fewer than [`DECODE_BELOW_TOKENS`] tokens), the
    /// AVX-512 ones with VNNI in decode and, in two int8 levels whose error is within 1/256 of
    /// that bound, in prefill.
    fn rounds_activations(&self, tokens: usize) -> bool {
        let _ = tokens;
        false
    }
}

/// The revision of this crate's kernels as a measured speed describes them: it changes
/// whenever a kernel's speed does, so that a `host` profile measured with older kernels can be
/// told apart and measured again. 1: the kernels of bundle format 7; 2: q8 decode on AVX-512
/// VNNI and AVX-512's q8 and q4 prefill packing through bytes; 3: q8 and q4 prefill on
/// AVX-512 VNNI; 4: AVX-512 attention; 5: the KV cache's values in f16; 6: its keys in 16-bit
/// integers, and a vectorized `exp`.
pub const REVISION: u32 = 6;

/// Products of fewer tokens than this run as one row dot product per token (decode); from
/// this many, as blocked matrix–matrix products (prefill). See
/// [`Kernels::rounds_activations`].
pub const DECODE_BELOW_TOKENS: usize = 4;

#[cfg(test)]
mod tests;
