//! Board profiles as data: the figures the cost model needs about each target board, every
//! one with a cited source.
//!
//! Profiles live in `boards/profiles/*.toml`, are embedded in the crate, and are parsed into
//! a typed [`BoardProfile`] at the CLI edge. A user's own board goes through
//! [`BoardProfile::from_toml_str`], which applies the same checks.
//!
//! ```
//! use whittle_boards::BoardProfile;
//!
//! let board = BoardProfile::builtin("jetson-orin").unwrap();
//! assert_eq!(board.name, "jetson-orin-nano-8gb");
//! assert_eq!(board.target_triple, "aarch64-unknown-linux-gnu");
//! assert!(board.model_memory_bytes() < board.memory_bytes);
//! assert!(BoardProfile::builtin("jetson-orin-mega").is_err());
//! ```
#![warn(missing_docs)]

mod builtin;
mod profile;

pub use profile::{BoardError, BoardProfile, CpuProfile, Source};
