//! x86_64 kernels: AVX2 with FMA, and AVX-512 (F, BW, VL) where present.

mod attention;
mod avx2;
mod avx512;
mod vnni;
mod vnni_prefill;

pub use avx2::Avx2Fma;
pub use avx512::Avx512;
