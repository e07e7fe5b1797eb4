//! The reference kernels: plain Rust, every target, the oracle the others are tested against.

use super::{F32Matrix, Kernels, Q4_BLOCK_BYTES, Q4Matrix, Q8_BLOCK, Q8Matrix, q4_block_dot};

/// Portable scalar kernels (the compiler auto-vectorises the inner dot products).
#[derive(Clone, Copy, Debug, Default)]
pub struct Portable;

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorise without reassociating.
    let mut acc = [0.0f32; 8];
    let mut a_chunks = a.chunks_exact(8);
    let mut b_chunks = b.chunks_exact(8);
    for (ca, cb) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

fn dot_q8(a: &[i8], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut a_chunks = a.chunks_exact(8);
    let mut b_chunks = b.chunks_exact(8);
    for (ca, cb) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += f32::from(*x) * y;
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += f32::from(*x) * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// The q4 product every kernel set uses so far: per block, `d · Σ q·x + m · Σ x`.
pub(crate) fn gemm_q4(w: Q4Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
    if w.cols == 0 || w.rows == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let per_row = w.blocks_per_row();
    for (xt, ot) in x
        .chunks_exact(w.cols)
        .zip(out.chunks_exact_mut(w.rows))
        .take(tokens)
    {
        for ((row, scales), o) in w
            .data
            .chunks_exact(per_row * Q4_BLOCK_BYTES)
            .zip(w.scales.chunks_exact(2 * per_row))
            .zip(ot.iter_mut())
        {
            *o = row
                .chunks_exact(Q4_BLOCK_BYTES)
                .zip(xt.chunks(Q8_BLOCK))
                .zip(scales.chunks_exact(2))
                .map(|((block, x), pair)| q4_block_dot(block, pair, x))
                .sum();
        }
    }
}

impl Kernels for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        if w.cols == 0 || w.rows == 0 {
            out.iter_mut().for_each(|o| *o = 0.0);
            return;
        }
        for (xt, ot) in x
            .chunks_exact(w.cols)
            .zip(out.chunks_exact_mut(w.rows))
            .take(tokens)
        {
            for (row, o) in w.data.chunks_exact(w.cols).zip(ot.iter_mut()) {
                *o = dot_f32(row, xt);
            }
        }
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        if w.cols == 0 || w.rows == 0 {
            out.iter_mut().for_each(|o| *o = 0.0);
            return;
        }
        for (xt, ot) in x
            .chunks_exact(w.cols)
            .zip(out.chunks_exact_mut(w.rows))
            .take(tokens)
        {
            let per_row = w.blocks_per_row();
            for ((row, scales), o) in w
                .data
                .chunks_exact(w.cols)
                .zip(w.scales.chunks_exact(per_row))
                .zip(ot.iter_mut())
            {
                *o = row
                    .chunks(Q8_BLOCK)
                    .zip(xt.chunks(Q8_BLOCK))
                    .zip(scales)
                    .map(|((q, x), scale)| scale * dot_q8(q, x))
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_hand_computed() {
        // W = [[1, 2, 3], [4, 5, 6]], x = [[1, 0, -1], [2, 1, 0]].
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut out = [0.0; 4];
        let m = F32Matrix {
            rows: 2,
            cols: 3,
            data: &w,
        };
        Portable.gemm_f32(m, &x, 2, &mut out);
        assert_eq!(out, [-2.0, -2.0, 4.0, 13.0]);

        let q = [1i8, 2, 3, 4, 5, 6];
        let scales = [0.5, 2.0];
        let m = Q8Matrix {
            rows: 2,
            cols: 3,
            data: &q,
            scales: &scales,
        };
        Portable.gemm_q8(m, &x, 2, &mut out);
        assert_eq!(out, [-1.0, -4.0, 2.0, 26.0]);
    }

    #[test]
    fn q8_scales_apply_per_block_of_32() {
        // One row of 70 ones: blocks of 32, 32 and a partial 6, scaled 1, 2 and 4.
        let q = [1i8; 70];
        let scales = [1.0, 2.0, 4.0];
        let x = [1.0f32; 70];
        let mut out = [0.0];
        let m = Q8Matrix {
            rows: 1,
            cols: 70,
            data: &q,
            scales: &scales,
        };
        Portable.gemm_q8(m, &x, 1, &mut out);
        assert_eq!(out, [32.0 + 64.0 + 24.0]);
    }
}
