//! The whittle host: loads a Llama-family GGUF model, evaluates it on tasks, calibrates,
//! factorizes and searches a pruned model for a board.
//!
//! The pipeline is a chain of typed stages: [`fetch`] → [`gguf`] → [`model`] with
//! [`tokenizer`] → [`calibrate`] (a `Calibration`) → [`factorize`] / [`prune`] (a
//! `FactorBank`) → [`search`] (a `Genome`) → a pruned `Llama` (a `RankPlan` applied to the
//! frozen base), each judged by [`eval`] on a [`task`] with [`metrics`].

pub mod bundle;
pub mod calibrate;
pub mod eval;
pub mod factorize;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod head;
pub mod hf;
pub mod metrics;
pub mod model;
pub mod parity;
pub mod plot;
pub mod progress;
pub mod prune;
pub mod search;
pub mod task;
#[cfg(test)]
mod test_rng;
pub mod tokenizer;
pub mod vocab;
