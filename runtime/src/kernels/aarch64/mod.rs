//! aarch64 kernels: NEON (always present on aarch64 Linux), and NEON with the int8 dot product
//! where the core has it.

mod neon;
mod neon_dot;

pub use neon::Neon;
pub use neon_dot::NeonDot;
