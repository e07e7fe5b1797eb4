//! Choosing an implementation: every kernel this machine can run, fastest first.

use super::{AttentionHead, F32Matrix, Kernels, Portable, Q4Matrix, Q8Matrix};
#[cfg(target_arch = "x86_64")]
use super::{Avx2Fma, Avx512};
#[cfg(target_arch = "aarch64")]
use super::{Neon, NeonDot};

/// Whether the CPU has every one of the target features (string literals): detected at run
/// time under `std` with `std::arch::$detect` (`is_x86_feature_detected`,
/// `is_aarch64_feature_detected`), enabled at compile time without it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! cpu_has {
    ($detect:ident, $($feature:tt),+) => {{
        #[cfg(any(test, feature = "std"))]
        let has = $(std::arch::$detect!($feature))&&+;
        #[cfg(not(any(test, feature = "std")))]
        let has = cfg!(all($(target_feature = $feature),+));
        has
    }};
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use cpu_has;

/// One of the single-threaded implementations, chosen at run time.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum AnyKernels {
    /// [`Portable`].
    Portable(Portable),
    /// [`Avx2Fma`].
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(Avx2Fma),
    /// [`Avx512`].
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    /// [`Neon`].
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
    /// [`NeonDot`].
    #[cfg(target_arch = "aarch64")]
    NeonDot(NeonDot),
}

/// The fastest implementation this machine offers (run-time detection under `std`,
/// compile-time target features without it).
pub fn best() -> AnyKernels {
    available().next().unwrap_or(AnyKernels::Portable(Portable))
}

/// Every implementation this machine can run, fastest first; [`Portable`] is always last.
pub fn available() -> impl Iterator<Item = AnyKernels> {
    #[cfg(target_arch = "x86_64")]
    let simd = [
        Avx512::detect().map(AnyKernels::Avx512),
        Avx2Fma::detect().map(AnyKernels::Avx2Fma),
    ];
    #[cfg(target_arch = "aarch64")]
    let simd = [
        NeonDot::detect().map(AnyKernels::NeonDot),
        Neon::detect().map(AnyKernels::Neon),
    ];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let simd: [Option<AnyKernels>; 0] = [];
    simd.into_iter()
        .flatten()
        .chain(core::iter::once(AnyKernels::Portable(Portable)))
}

impl AnyKernels {
    fn inner(&self) -> &dyn Kernels {
        match self {
            Self::Portable(k) => k,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma(k) => k,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(k) => k,
            #[cfg(target_arch = "aarch64")]
            Self::Neon(k) => k,
            #[cfg(target_arch = "aarch64")]
            Self::NeonDot(k) => k,
        }
    }
}

impl Kernels for AnyKernels {
    fn name(&self) -> &'static str {
        self.inner().name()
    }

    fn gemm_f32(&self, w: F32Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.inner().gemm_f32(w, x, tokens, out);
    }

    fn gemm_q8(&self, w: Q8Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.inner().gemm_q8(w, x, tokens, out);
    }

    fn gemm_q4(&self, w: Q4Matrix<'_>, x: &[f32], tokens: usize, out: &mut [f32]) {
        self.inner().gemm_q4(w, x, tokens, out);
    }

    fn attend(
        &self,
        head: &AttentionHead<'_>,
        scores: &mut [f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        self.inner().attend(head, scores, out, lse);
    }

    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        self.inner().swiglu(gate, up);
    }

    fn rounds_activations(&self, tokens: usize) -> bool {
        self.inner().rounds_activations(tokens)
    }
}
