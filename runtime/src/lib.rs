//! The on-device half of whittle: `no_std`, allocation-free by default.
//!
//! A bundle (`docs/bundle-format.md`) is parsed from a byte slice without copying
//! ([`Bundle::parse`]); the caller asks how many arena bytes a context length needs
//! ([`Bundle::arena_bytes`]), passes that buffer to a [`Session`], and classifies or generates
//! text. Matrix products go through the [`kernels::Kernels`] trait, so per-architecture kernels
//! plug in without touching the model code.
//!
//! ```
//! use whittle_runtime::{Bundle, Error, Session, kernels::Portable};
//!
//! fn classify(bytes: &[u8], arena: &mut [u8], text: &str) -> Result<usize, Error> {
//!     let bundle = Bundle::parse(bytes)?;
//!     if arena.len() < bundle.arena_bytes(256) {
//!         return Err(Error::ArenaTooSmall { needed: bundle.arena_bytes(256), given: arena.len() });
//!     }
//!     let mut session = Session::<_, 256>::new(&bundle, Portable, arena)?;
//!     Ok(session.classify(text)?.label_index)
//! }
//! assert_eq!(classify(&[0u8; 64], &mut [], "great film"), Err(Error::BadMagic));
//! ```
//!
//! Features: `alloc` (the bundle writer and [`AlignedBytes`]), `std`, and at most one of
//! `defmt` / `log` for diagnostics.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

#[cfg(any(test, feature = "alloc"))]
mod aligned;
mod bundle;
mod config;
mod error;
mod fmt;
pub mod format;
pub mod kernels;
mod model;
mod session;
pub mod spm;
#[cfg(test)]
mod tests;
mod tokenizer;
#[cfg(any(test, feature = "alloc"))]
pub mod writer;

#[cfg(any(test, feature = "alloc"))]
pub use aligned::AlignedBytes;
pub use bundle::{Bundle, Layers, LinearWeights, Prefix, Weight};
pub use config::{
    Activation, Architecture, BlockWidths, ConfigError, MatrixKind, ModelConfig, matrix_at,
    matrix_index,
};
pub use error::Error;
pub use model::{MAX_PREFILL_CHUNK, MIN_PREFILL_CHUNK, Model, prefill_chunk};
pub use session::{Classification, Session};
pub use tokenizer::Tokenizer;

impl Bundle<'_> {
    /// Bytes of arena a session with `context` tokens needs; sessions refuse smaller arenas.
    pub fn arena_bytes(&self, context: usize) -> usize {
        model::arena_bytes(self, context)
    }
}
