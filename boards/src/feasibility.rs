//! Whether a prediction fits a board's budgets, and the search's objective (DESIGN section 5).

use std::fmt;

use serde::Serialize;

use crate::BoardProfile;
use crate::cost::Prediction;

/// How a prediction stands against a board's memory budget and latency budget.
///
/// The latency is [`Prediction::decode_ms_per_token`]: the GPU's where the board has one and it
/// is faster, else the CPU's. Excesses are zero when within budget, so the search can penalise
/// an infeasible genome in proportion to them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Feasibility {
    /// The board's canonical name.
    pub board: String,
    /// [`Prediction::runtime_memory_bytes`].
    pub memory_needed_bytes: u64,
    /// [`BoardProfile::memory_budget_bytes`].
    pub memory_budget_bytes: u64,
    /// How far the memory needed exceeds the budget; 0 when it fits.
    pub memory_excess_bytes: u64,
    /// Predicted decode time per token.
    pub latency_ms_per_token: f64,
    /// The board's latency budget, if it has one.
    pub latency_budget_ms_per_token: Option<f64>,
    /// How far the latency exceeds the budget; 0 when within it or without a budget.
    pub latency_excess_ms: f64,
    /// Both budgets hold.
    pub fits: bool,
}

/// Checks `prediction` against `profile`'s memory budget and latency budget.
pub fn feasibility(profile: &BoardProfile, prediction: &Prediction) -> Feasibility {
    let memory_budget_bytes = profile.memory_budget_bytes();
    let memory_excess_bytes = prediction
        .runtime_memory_bytes
        .saturating_sub(memory_budget_bytes);
    let latency_ms_per_token = prediction.decode_ms_per_token();
    let latency_excess_ms = profile
        .latency_budget_ms_per_token
        .map_or(0.0, |budget| (latency_ms_per_token - budget).max(0.0));
    Feasibility {
        board: profile.name.clone(),
        memory_needed_bytes: prediction.runtime_memory_bytes,
        memory_budget_bytes,
        memory_excess_bytes,
        latency_ms_per_token,
        latency_budget_ms_per_token: profile.latency_budget_ms_per_token,
        latency_excess_ms,
        fits: memory_excess_bytes == 0 && latency_excess_ms == 0.0,
    }
}

/// The search's cost of a plan relative to the dense model (DESIGN section 5):
/// `w·bytes/bytes_dense + (1 − w)·latency/latency_dense`, with `w` the board's
/// `objective_weight`, bytes the [`Prediction::bundle_bytes`] and latency
/// [`Prediction::decode_ms_per_token`]. 1 for the dense model itself; predict both with the
/// same board, dtype and head.
pub fn objective_cost(profile: &BoardProfile, plan: &Prediction, dense: &Prediction) -> f64 {
    let w = profile.objective_weight;
    let bytes = plan.bundle_bytes as f64 / dense.bundle_bytes as f64;
    let latency = plan.decode_ms_per_token() / dense.decode_ms_per_token();
    w * bytes + (1.0 - w) * latency
}

impl fmt::Display for Feasibility {
    /// One line: what fits, or by how much it does not and what to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memory_fails = self.memory_excess_bytes > 0;
        let latency_budget = self
            .latency_budget_ms_per_token
            .filter(|_| self.latency_excess_ms > 0.0);
        if !memory_fails && latency_budget.is_none() {
            write!(
                f,
                "{}: fits: needs {} at runtime of the {} the board allows, decodes in {:.3} ms per token",
                self.board,
                format_bytes(self.memory_needed_bytes),
                format_bytes(self.memory_budget_bytes),
                self.latency_ms_per_token
            )?;
            if let Some(budget) = self.latency_budget_ms_per_token {
                write!(f, " (budget {budget:.3} ms)")?;
            }
            return Ok(());
        }
        write!(f, "{}: ", self.board)?;
        if memory_fails {
            write!(
                f,
                "the model needs {} at runtime but the board allows {} ({} too large)",
                format_bytes(self.memory_needed_bytes),
                format_bytes(self.memory_budget_bytes),
                format_ratio(self.memory_needed_bytes as f64 / self.memory_budget_bytes as f64)
            )?;
        }
        if let Some(budget) = latency_budget {
            if memory_fails {
                f.write_str(" and ")?;
            }
            write!(
                f,
                "decoding takes {:.3} ms per token but the budget is {budget:.3} ms ({} too slow)",
                self.latency_ms_per_token,
                format_ratio(self.latency_ms_per_token / budget)
            )?;
        }
        if memory_fails {
            f.write_str("; choose a larger board or a smaller model")
        } else {
            f.write_str(
                "; prune further, choose a faster board or raise latency_budget_ms_per_token",
            )
        }
    }
}

/// Decimal units, one decimal: `147.5 MB`, `0.8 MB`, `64.0 kB`.
fn format_bytes(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else if bytes >= 1e5 {
        format!("{:.1} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// `188×` from 10 up, `1.3×` below.
fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.1}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bytes(bytes: u64, expected: &str) {
        assert_eq!(format_bytes(bytes), expected, "for {bytes} bytes");
    }

    fn check_ratio(ratio: f64, expected: &str) {
        assert_eq!(format_ratio(ratio), expected, "for {ratio}");
    }

    #[test]
    fn bytes_are_shown_in_decimal_units() {
        check_bytes(0, "0 B");
        check_bytes(999, "999 B");
        check_bytes(64_000, "64.0 kB");
        check_bytes(786_432, "0.8 MB");
        check_bytes(147_470_592, "147.5 MB");
        check_bytes(5_153_960_755, "5.2 GB");
    }

    #[test]
    fn ratios_keep_a_decimal_below_ten() {
        check_ratio(1.26, "1.3×");
        check_ratio(9.94, "9.9×");
        check_ratio(187.52, "188×");
        check_ratio(f64::INFINITY, "inf×");
    }
}
