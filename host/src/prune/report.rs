//! The report of one prune run: one typed value, rendered as `report.json`, `report.md` and
//! the `--json` line, and read back by `pack` for a bundle's provenance.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use whittle_boards::Dtype;

use crate::head::LabelReading;

fn verbalizer() -> LabelReading {
    LabelReading::Verbalizer
}

/// How one plan (the uniform baseline or the searched answer) did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Measured on the search split.
    pub search_accuracy: f64,
    /// Predicted from the paired log-probability difference (`AccuracyModel`).
    pub search_predicted: f64,
    /// One paired standard error of the accuracy difference against dense.
    pub search_margin: f64,
    /// What the target was checked against: `min(predicted − margin, measured)`.
    pub search_assured: f64,
    /// Whether the anchored refit was kept (it is kept only when it does not lower the
    /// assured accuracy).
    pub refit_kept: bool,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Blocks kept (the exit layer); the model's depth when every block is kept.
    #[serde(default)]
    pub exit_layer: usize,
    /// Kept blocks whose MLP is pruned by neurons (the rest of their matrices as factor pairs
    /// or dense).
    #[serde(default)]
    pub neuron_pruned_mlps: usize,
    /// Kept blocks whose attention keeps fewer value dimensions per head (or is skipped).
    #[serde(default)]
    pub value_pruned_attentions: usize,
    /// Kept blocks whose query/key heads keep fewer rotary pairs.
    #[serde(default)]
    pub pair_pruned_attentions: usize,
    /// DESIGN section 3.
    pub linear_reduction: f64,
    /// DESIGN section 3.
    pub total_reduction: f64,
    /// Predicted bundle bytes on the board.
    pub bundle_bytes: u64,
    /// Predicted decode time per token on the board.
    pub predicted_decode_ms: f64,
    /// Predicted memory the model needs on the board.
    pub runtime_memory_bytes: u64,
}

/// Recovery of the answer ([`super::recover`]): what it did and the answer before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// What the training did.
    #[serde(flatten)]
    pub training: super::Recovery,
    /// The answer's search-split accuracy (measured and assured) and test accuracy.
    pub search_accuracy_before: f64,
    pub search_accuracy_after: f64,
    pub search_assured_before: f64,
    pub search_assured_after: f64,
    pub test_accuracy_before: f64,
    pub test_accuracy_after: f64,
    /// Whether the recovered model is the answer (its assured search accuracy is not lower).
    pub kept: bool,
}

/// Everything a prune run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Board profile name.
    pub board: String,
    /// Task name.
    pub task: String,
    /// Relative accuracy tolerance.
    pub epsilon: f64,
    /// Weight storage the cost model assumed and the bundle uses.
    pub dtype: Dtype,
    /// Dense accuracy on the search split.
    pub dense_accuracy: f64,
    /// Set when the dense model is within noise of the majority-class rate.
    pub chance_level_warning: Option<String>,
    /// Dense accuracy on the test split, the labels read as every other accuracy here is.
    pub dense_test_accuracy: f64,
    /// Dense accuracy on the test split through the verbalizer and its fitted bias (what
    /// `eval` reports), when the run reads the labels through a task head.
    #[serde(default)]
    pub dense_test_accuracy_verbalizer: Option<f64>,
    /// How the labels are read.
    #[serde(default = "verbalizer")]
    pub reading: LabelReading,
    /// Calibration examples the test-split task heads are fitted on.
    #[serde(default)]
    pub head_examples: Option<usize>,
    /// Examples of the search split.
    pub search_n: usize,
    /// Examples of the test split every test accuracy is measured on.
    pub test_n: usize,
    /// Calibration positions counted (the shared prompt prefix once).
    pub calibration_tokens: u64,
    /// `(1 − ε) · dense_accuracy`.
    pub target_accuracy: f64,
    /// Slope of the assured-accuracy model; `None` when accuracy is measured directly.
    pub accuracy_slope: Option<f64>,
    /// The uniform baseline.
    pub uniform: Outcome,
    /// The uniform baseline's keep fraction.
    pub uniform_keep: f64,
    /// The searched answer.
    pub searched: Outcome,
    /// The bundle file in the output folder, when one was written.
    pub bundle: Option<String>,
    /// Why no bundle was written.
    pub bundle_skipped: Option<String>,
    /// The answer meets the target and fits the board.
    pub feasible: bool,
    /// The board-fit verdict, in words.
    pub board_fit: String,
    /// The one seed.
    pub seed: u64,
    /// Generations run.
    pub generations: usize,
    /// Genomes evaluated.
    pub evaluations: usize,
    /// Whether the anchored refit was tried.
    pub refit: bool,
    /// The recovery of the answer, when `--recover-tokens` asked for one.
    #[serde(default)]
    pub recovery: Option<RecoveryReport>,
    /// The greedy sub-block refinement of the answer, when it ran.
    #[serde(default)]
    pub refinement: Option<super::Refinement>,
    /// The greedy precision refinement of the answer (q4 bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_refinement: Option<super::Refinement>,
    /// Wall time of the uniform baseline.
    pub uniform_seconds: f64,
    /// Wall time of the search.
    pub search_seconds: f64,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// The output folder.
    pub output_dir: PathBuf,
}

impl PruneReport {
    /// The one-line summary the CLI prints.
    pub fn summary_line(&self) -> String {
        format!(
            "{} on {}: dense {:.4} → searched {:.4} test (uniform keep {:.2}: {:.4}); linear reduction {:.1}% vs uniform {:.1}% (exit after block {}); {}",
            self.task,
            self.board,
            self.dense_test_accuracy,
            self.searched.test_accuracy,
            self.uniform_keep,
            self.uniform.test_accuracy,
            100.0 * self.searched.linear_reduction,
            100.0 * self.uniform.linear_reduction,
            self.searched.exit_layer,
            self.board_fit
        )
    }

    /// How the labels were read, and where the answer exits.
    fn reading_line(&self) -> String {
        match (self.reading, self.head_examples) {
            (LabelReading::Head, Some(n)) => format!(
                "Labels read through a task head (logistic regression on the exit's hidden state, \
                 pulled toward the verbalizer rows): cross-fitted on the search split during the \
                 search, fitted on {n} calibration examples for the test split, the dense model \
                 exactly as the pruned ones (through the verbalizer, dense test accuracy {}). \
                 The answer exits after block {}.\n\n",
                self.dense_test_accuracy_verbalizer
                    .map_or_else(|| "not measured".to_owned(), |a| format!("{a:.4}")),
                self.searched.exit_layer
            ),
            _ => "Labels read through the verbalizer tokens with a fitted per-label bias.\n\n"
                .to_owned(),
        }
    }

    /// What the recovery did, when there was one.
    fn recovery_line(&self) -> String {
        let Some(r) = &self.recovery else {
            return String::new();
        };
        let t = &r.training;
        format!(
            "Recovery: {} tokens ({} steps) trained {} matrices ({} parameters) toward the dense \
             model's state at the exit in {:.0} s; held-out loss {:.4} → {:.4}; search accuracy \
             {:.4} → {:.4} (assured {:.4} → {:.4}); test accuracy {:.4} → {:.4}; {}.\n\n",
            t.tokens,
            t.steps,
            t.matrices,
            t.parameters,
            t.seconds,
            t.held_out_loss_before,
            t.held_out_loss_after,
            r.search_accuracy_before,
            r.search_accuracy_after,
            r.search_assured_before,
            r.search_assured_after,
            r.test_accuracy_before,
            r.test_accuracy_after,
            if r.kept {
                "the recovered model is the answer"
            } else {
                "not kept (it lowered the assured search accuracy)"
            }
        )
    }

    /// What the precision refinement kept at q4, when it ran.
    fn precision_line(&self) -> String {
        let Some(r) = &self.precision_refinement else {
            return String::new();
        };
        let kept = match r.skipped.is_empty() {
            true => "none".to_owned(),
            false => r.skipped.join(", "),
        };
        format!(
            "Precision: of the answer's q8 matrices, {} screened at q4 and {} tried on the whole \
             search split in {:.0} s; moved to q4: {kept}.\n\n",
            r.screened, r.tried, r.seconds
        )
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let row = |name: &str, outcome: &Outcome| {
            format!(
                "| {name} | {:.4} | {:.4} | {:.4} | {:.1}% | {:.1}% | {:.1} MB | {:.2} ms |\n",
                outcome.search_accuracy,
                outcome.search_assured,
                outcome.test_accuracy,
                100.0 * outcome.linear_reduction,
                100.0 * outcome.total_reduction,
                outcome.bundle_bytes as f64 / 1e6,
                outcome.predicted_decode_ms,
            )
        };
        format!(
            "# Pruning report: {} on {}\n\nε = {}, seed = {}, dense search accuracy {:.4} (target {:.4}), dense test accuracy {:.4}.\n\n{}\
             | plan | search acc | assured | test acc | linear red. | total red. | bundle | decode/token |\n|---|---|---|---|---|---|---|---|\n{}{}\n\
             The target is checked against the assured accuracy: the accuracy predicted from the paired \
             gold log-probability difference against dense (slope {}), less one paired standard error, \
             capped by the measured accuracy.\n\n\
             {}{}Board fit: {}\n\n![kept rank per layer and matrix](ranks.svg)\n",
            self.task,
            self.board,
            self.epsilon,
            self.seed,
            self.dense_accuracy,
            self.target_accuracy,
            self.dense_test_accuracy,
            self.reading_line(),
            row(
                &format!("uniform (keep {:.2})", self.uniform_keep),
                &self.uniform
            ),
            row("searched", &self.searched),
            self.accuracy_slope.map_or_else(
                || "none: measured accuracy".to_owned(),
                |b| format!("{b:.3}")
            ),
            self.precision_line(),
            self.recovery_line(),
            self.board_fit,
        )
    }
}
