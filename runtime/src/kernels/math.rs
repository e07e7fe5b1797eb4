//! Plain-Rust numerics shared by the model and the kernels: a dot product, a sum and `e^x`
//! that vectorize, and the attention of a group of query heads. They are `#[inline(always)]`, so each
//! kernel that calls them from its `#[target_feature]` functions gets them compiled for its
//! own registers (AVX-512 and AVX2 on x86_64; NEON is the aarch64 baseline already).

/// The attention of the query heads that share one key/value head (grouped-query attention)
/// over the cached positions `0..positions`: position `j`'s key is
/// `key_scales[j] · keys[j · stride ..][.. head_dim]`, its value
/// `values[j · stride ..][.. width]`, read once for all the group's queries. Keys are 16-bit
/// integers with a scale per position ([`round_key`]); values are IEEE binary16 bits
/// ([`to_f16`], [`from_f16`]), as the KV cache keeps them.
#[derive(Clone, Copy, Debug)]
pub struct AttentionHead<'a> {
    /// The group's (rotated) queries, `head_dim` values each, one after the other.
    pub q: &'a [f32],
    /// Values of a query and of a key.
    pub head_dim: usize,
    /// Keys of the key/value head, from position 0, `stride` apart, as [`round_key`] rounds
    /// them.
    pub keys: &'a [i16],
    /// Each position's key scale, from position 0, one after the other.
    pub key_scales: &'a [f32],
    /// Values of the same head, `stride` apart as the keys; each is as long as an output
    /// (`head_dim`, or fewer when the block keeps fewer value dimensions); f16 bits.
    pub values: &'a [u16],
    /// Values between the starts of two positions' keys (the model's `kv_dim`).
    pub stride: usize,
    /// Positions attended to (the queries' own included).
    pub positions: usize,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
}

impl AttentionHead<'_> {
    /// Queries in the group: `q.len() / head_dim`.
    pub fn queries(&self) -> usize {
        self.q.len().checked_div(self.head_dim).unwrap_or(0)
    }

    /// Positions the call attends to: `positions`, at most what `scores` holds for every
    /// query, and those whose key (`head_dim` values and a scale) and value (`width`) lie
    /// inside the slices.
    pub(crate) fn fitting_positions(&self, scores: usize, width: usize) -> usize {
        let fitting = |total: usize, len: usize| match total.checked_sub(len) {
            None => 0,
            Some(_) if self.stride == 0 => usize::MAX,
            Some(rest) => rest / self.stride + 1,
        };
        self.positions
            .min(scores.checked_div(self.queries()).unwrap_or(0))
            .min(self.key_scales.len())
            .min(fitting(self.keys.len(), self.head_dim))
            .min(fitting(self.values.len(), width))
    }
}

/// For each query `g` of the group, `out[g · width ..][.. width] = Σ_j softmax(scale ·
/// q_g·k_j)_j · v_j` over `head.positions` positions (`width = out.len() / queries`), using
/// `scores` (at least `queries · positions` values) as scratch. Positions whose key or value
/// lies outside the slices, or beyond what `scores` holds, are left out rather than panicking.
/// `lse[g]`, where `lse` holds it, is query `g`'s log-sum-exp of its scaled scores (−∞ over no
/// positions).
#[inline(always)]
pub(crate) fn attend(
    head: &AttentionHead<'_>,
    scores: &mut [f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (head_dim, queries) = (head.head_dim, head.queries());
    let width = out.len().checked_div(queries).unwrap_or(0);
    let positions = head.fitting_positions(scores.len(), width);
    let scores = scores.get_mut(..positions).unwrap_or_default();
    out.iter_mut().for_each(|o| *o = 0.0);
    lse.iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
    let queries = head.q.chunks_exact(head_dim.max(1)).take(queries);
    for (g, (q, out)) in queries.zip(out.chunks_exact_mut(width.max(1))).enumerate() {
        let mut max = f32::NEG_INFINITY;
        for (j, score) in scores.iter_mut().enumerate() {
            let at = j * head.stride;
            let key = head.keys.get(at..at + head_dim).unwrap_or(&[]);
            let key_scale = head.key_scales.get(j).copied().unwrap_or(0.0);
            *score = dot(q, key) * key_scale * head.scale;
            max = max.max(*score);
        }
        scores
            .iter_mut()
            .for_each(|score| *score = exp(*score - max));
        let total = sum(scores);
        if let Some(lse) = lse.get_mut(g).filter(|_| total > 0.0) {
            *lse = max + libm::logf(total);
        }
        let inverse_sum = 1.0 / total;
        for (j, &weight) in scores.iter().enumerate() {
            let at = j * head.stride;
            let value = head.values.get(at..at + out.len()).unwrap_or(&[]);
            let weight = weight * inverse_sum;
            for (o, &v) in out.iter_mut().zip(value) {
                *o += weight * from_f16(v);
            }
        }
    }
}

/// `key` rounded to 16-bit integers into `out` (as many as both hold), with one scale,
/// `max |k| / 32767`, which it returns: the key is `scale · out`. The relative error of its
/// largest lanes is below 2⁻¹⁵, where an f16 key's is 2⁻¹¹ (too coarse: a key moves every score
/// inside the softmax's exponent, and f16 keys cost the SST-2 answer its parity). A NaN counts
/// as 0 and an infinity as the largest finite f32; a key of zeros or subnormals gives zeros and
/// scale 0. Branchless per lane, so the rounding vectorizes.
#[inline(always)]
pub fn round_key(key: &[f32], out: &mut [i16]) -> f32 {
    const LARGEST: f32 = 32_767.0;
    // Adding 1.5·2²³ rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4B40_0000;
    let finite = |x: f32| {
        if x.is_nan() {
            0.0
        } else {
            x.clamp(-f32::MAX, f32::MAX)
        }
    };
    let max = key.iter().fold(0.0f32, |m, &x| m.max(finite(x).abs()));
    if max < f32::MIN_POSITIVE {
        out.iter_mut().for_each(|o| *o = 0);
        return 0.0;
    }
    let inverse = LARGEST / max;
    for (o, &x) in out.iter_mut().zip(key) {
        // |x · inverse| ≤ 32767 (and a rounding above it stays below 32767.5).
        let rounded = finite(x) * inverse + ROUND;
        *o = rounded.to_bits().wrapping_sub(ROUND_BITS) as i16;
    }
    max / LARGEST
}

/// The f32 value of IEEE binary16 bits, without a branch (so loops over it vectorize): the
/// magnitude's bits moved into an f32's exponent and mantissa, then scaled by 2¹¹² (exact for
/// normal and subnormal values), and the sign put back. Infinities and NaNs, which
/// [`to_f16`] never writes, would come out as large finite values.
#[inline(always)]
pub fn from_f16(bits: u16) -> f32 {
    const SCALE: f32 = f32::from_bits((127 + 112) << 23);
    let bits = u32::from(bits);
    let magnitude = f32::from_bits((bits & 0x7fff) << 13) * SCALE;
    f32::from_bits(magnitude.to_bits() | ((bits & 0x8000) << 16))
}

/// `x` rounded to the nearest IEEE binary16 value (ties to even), as its bits; beyond the
/// largest finite value (65,504) it saturates there, and a NaN becomes 0, so the KV cache
/// never holds a non-finite value. Without a branch, so that storing a token's values
/// vectorizes: below 2⁻¹⁴ (subnormal results) adding 0.5 lets the FPU round the magnitude at
/// the subnormals' step and leaves the result in the low bits; above, the exponent is
/// rebiased and the 13 dropped bits rounded to nearest even by adding `0xfff` and the kept
/// part's lowest bit.
#[inline(always)]
pub fn to_f16(x: f32) -> u16 {
    const HALF: f32 = 0.5;
    // (15 − 127) << 23, the exponent's rebias, as a wrapping addition.
    const REBIAS: u32 = 0xc800_0000;
    let x = if x.is_nan() {
        0.0
    } else {
        x.clamp(-65_504.0, 65_504.0)
    };
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let magnitude = bits & 0x7fff_ffff;
    let subnormal = (f32::from_bits(magnitude) + HALF)
        .to_bits()
        .wrapping_sub(HALF.to_bits());
    let odd = (magnitude >> 13) & 1;
    let normal = magnitude.wrapping_add(REBIAS + 0xfff).wrapping_add(odd) >> 13;
    let magnitude = if magnitude < 0x3880_0000 {
        subnormal
    } else {
        normal
    };
    (magnitude | sign) as u16
}

/// Merges `parts` attentions of the same `queries` queries over disjoint positions into `out`
/// (`queries · width` values): `partials` holds `parts` blocks of `queries · width` outputs,
/// each normalized over its own positions as [`attend`] writes them, followed by the
/// `queries` log-sum-exps of those positions. A part over no positions (log-sum-exp −∞)
/// weighs nothing; a query no part saw gets zeros.
pub(crate) fn merge_attention(
    partials: &[f32],
    parts: usize,
    queries: usize,
    width: usize,
    out: &mut [f32],
) {
    let per_part = queries * (width + 1);
    let lse = |part: usize, g: usize| {
        let at = part * per_part + queries * width + g;
        partials.get(at).copied().unwrap_or(f32::NEG_INFINITY)
    };
    for (g, out) in out.chunks_exact_mut(width.max(1)).take(queries).enumerate() {
        out.iter_mut().for_each(|o| *o = 0.0);
        let max = (0..parts)
            .map(|part| lse(part, g))
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let weight = |part: usize| match lse(part, g) {
            f32::NEG_INFINITY => 0.0,
            lse => exp(lse - max),
        };
        let total: f32 = (0..parts).map(weight).sum();
        for part in 0..parts {
            let w = weight(part) / total;
            let at = part * per_part + g * width;
            let part_out = partials.get(at..at + width).unwrap_or_default();
            for (o, v) in out.iter_mut().zip(part_out) {
                *o += w * v;
            }
        }
    }
}

/// `gate[i] = silu(gate[i]) · up[i]` over the common length (SwiGLU's middle), with
/// `silu(x) = x / (1 + e^−x)`.
#[inline(always)]
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `Σ a[i]·b[i]` (`b` f32, or a cached key's integers) with eight independent partial sums, so the compiler vectorizes it (a single
/// running sum is a chain of dependent additions).
#[inline(always)]
pub(crate) fn dot<T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for (x, y) in a8.iter().zip(b8) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y.into();
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(&x, &y)| x * y.into()).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ values`, with eight partial sums (vectorizes, as [`dot`]).
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f32 {
    let (chunks, tail) = values.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for chunk in chunks {
        for (s, &v) in acc.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `e^x` without a library call, so loops over it vectorize: `x = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2`, a degree-7 Taylor polynomial for `e^r` (relative error below 2·10⁻⁷, as
/// close as `libm::expf` for these purposes), times `2^n` built in the exponent bits. `x` is
/// clamped to `[-87, 88]`: below, the result is about 1.6·10⁻³⁸ instead of a denormal or 0,
/// which is immaterial to a softmax or a SiLU.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (|x·log2 e| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    // `rounded`'s bits are those of 1.5·2²³ plus `n` (its unit in the last place is 1).
    const ROUND_BITS: u32 = 0x4B40_0000;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n ∈ [-126, 127]: a normal power of two, `(n + 127) << 23`, in integers that vectorize
    // (a float-to-integer cast saturates, which compiles to scalar code per lane).
    let scale = f32::from_bits(rounded.to_bits().wrapping_sub(ROUND_BITS - 127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::{exp, sum};
    use alloc::vec::Vec;

    fn check_exp(x: f32) {
        let (got, want) = (exp(x), libm::expf(x));
        let tolerance = 4.0 * f32::EPSILON * want + 1e-37;
        assert!(
            (got - want).abs() <= tolerance,
            "exp({x}) = {got}, libm {want}"
        );
    }

    #[test]
    fn exp_matches_libm() {
        for i in -8700..=8800 {
            check_exp(i as f32 / 100.0);
        }
        for x in [
            0.0,
            -0.0,
            1e-8,
            -1e-8,
            0.346_573_6,
            -0.346_573_6,
            88.0,
            -87.0,
        ] {
            check_exp(x);
        }
    }

    #[test]
    fn exp_saturates_instead_of_overflowing() {
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn sums() {
        let values: Vec<f32> = (1..=21).map(|v| v as f32).collect();
        assert_eq!(sum(&values), 231.0);
        assert_eq!(sum(&[]), 0.0);
    }
}
