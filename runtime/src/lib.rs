//! The on-device half of whittle: `no_std`, allocation-free by default.
//!
//! Today this crate holds the schema both sides agree on: the hyper-parameters of a
//! Llama-family model ([`ModelConfig`]) and the names of its prunable matrices
//! ([`MatrixKind`]). The host builds these from a GGUF file; the bundle parser and the
//! kernels that execute a bundle arrive with the bundle issue.
//!
//! ```
//! use whittle_runtime::{MatrixKind, ModelConfig};
//!
//! let config = ModelConfig {
//!     n_layers: 30,
//!     hidden_size: 576,
//!     intermediate_size: 1536,
//!     n_heads: 9,
//!     n_kv_heads: 3,
//!     vocab_size: 49152,
//!     max_position_embeddings: 8192,
//!     rope_theta: 100_000.0,
//!     rms_norm_eps: 1e-5,
//! };
//! config.validate().unwrap();
//! assert_eq!(config.head_dim(), 64);
//! assert_eq!(config.matrix_shape(MatrixKind::K), (192, 576));
//! assert_eq!(config.n_prunable_matrices(), 210);
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]

mod config;
pub mod kernels;

pub use config::{ConfigError, MatrixKind, ModelConfig};
