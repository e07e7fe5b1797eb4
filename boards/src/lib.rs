//! Board profiles as data, and the cost model that reads them.
//!
//! A profile holds the figures the cost model needs about one target board, every one with a
//! cited source. Profiles live in `boards/profiles/*.toml`, are embedded in the crate, and are
//! parsed into a typed [`BoardProfile`] at the CLI edge. A user's own board goes through
//! [`BoardProfile::from_toml_str`], which applies the same checks. The profile of the machine
//! whittle runs on, `host`, is measured by `whittle-device profile` and read from the cache
//! ([`host_profile_path`]).
//!
//! [`predict`] turns a rank plan into bytes, memory and latency on a board (DESIGN section 6);
//! [`feasibility`] checks them against the board's budgets and [`objective_cost`] weighs a
//! plan against the dense model for the search.
//!
//! ```
//! use whittle_boards::{BoardProfile, Dtype, feasibility, predict};
//! use whittle_runtime::ModelConfig;
//!
//! let board = BoardProfile::builtin("jetson-orin").unwrap();
//! assert_eq!(board.name, "jetson-orin-nano-8gb");
//! assert!(board.memory_budget_bytes() < board.memory_bytes);
//! assert!(BoardProfile::builtin("jetson-orin-mega").is_err());
//!
//! let smollm2 = ModelConfig::SMOLLM2_135M;
//! let dense = vec![None; smollm2.n_prunable_matrices()];
//! let prediction = predict(&board, &smollm2, &dense, &[], Dtype::Q8, &[], None).unwrap();
//! assert!(feasibility(&board, &prediction).fits);
//!
//! let mcu = BoardProfile::builtin("stm32h743").unwrap();
//! let prediction = predict(&mcu, &smollm2, &dense, &[], Dtype::Q8, &[], None).unwrap();
//! let verdict = feasibility(&mcu, &prediction);
//! assert!(!verdict.fits);
//! assert!(verdict.to_string().contains("choose a larger board or a smaller model"));
//! ```
#![warn(missing_docs)]

mod bench_record;
mod builtin;
mod cost;
mod feasibility;
pub mod files;
mod host;
mod profile;
pub mod stats;

pub use bench_record::{BenchPrediction, BenchRecord, BundleVariant};
pub use cost::{
    CostError, Dtype, Overheads, Prediction, StepTimes, fit_overheads, matrix_cost, predict,
};
pub use feasibility::{Feasibility, feasibility, objective_cost};
pub use files::{default_cache_dir, default_model_dir};
pub use host::{HOST_BOARD_NAME, host_profile_path, host_profile_path_in};
pub use profile::{
    BoardError, BoardProfile, CpuProfile, KernelRates, ModelProbe, Source, WorkingSetRates,
};
