//! aarch64 kernels: NEON (always present on aarch64 Linux).

mod neon;

pub use neon::Neon;
