use indicatif::ProgressBar;
use serde::Serialize;

use crate::eval::{
    ClassScores, ExitStates, LabelTokens, last_states, score_labels, verbalizer_rows,
};
use crate::head::{LabelReading, TaskHead, cross_fit_scores, fit_head};
use crate::metrics;
use crate::model::{Llama, LoadedModel};
use crate::task::{Example, Split, Task};

/// Scores candidate models on a classification task's split, reading the labels as
/// [`LabelReading`] says: through the verbalizer with the per-label bias each candidate fits
/// on (a prefix of) the calibration split, or through a task head fitted for each candidate,
/// either on those calibration examples or, without running any other example, cross-fitted
/// on the split's own states ([`cross_fit_scores`]). The dense model is scored the same way.
#[derive(Debug)]
pub struct Evaluator {
    base: LoadedModel,
    labels: LabelTokens,
    search: Vec<Example>,
    bias_examples: Vec<Example>,
    batch_tokens: usize,
    reading: LabelReading,
    cross_fit: bool,
    /// The verbalizer rows a head is pulled toward, and the label names.
    prior: Vec<Vec<f32>>,
    names: Vec<String>,
    /// Per exit, the rows a cross-fitted head is pulled toward instead (the dense model's
    /// head at that exit, [`Evaluator::with_exit_heads`]).
    exit_priors: std::collections::HashMap<usize, TaskHead>,
    /// What the progress bar says while scoring.
    stage: String,
}

/// Accuracy of one candidate.
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    /// Accuracy with the candidate's own label bias.
    pub accuracy: f64,
    /// Accuracy without any bias.
    pub accuracy_uncalibrated: f64,
    /// The fitted bias.
    pub label_bias: Vec<f64>,
    /// Mean log-probability of the gold label among the labels, after the bias: a
    /// lower-variance signal than accuracy.
    pub gold_log_prob: f64,
    /// Per example, in split order: whether the biased prediction is the gold label.
    #[serde(skip)]
    pub correct: Vec<bool>,
    /// Per example, in split order: the log-probability of the gold label after the bias.
    #[serde(skip)]
    pub gold_log_probs: Vec<f64>,
    /// The task head fitted on the calibration examples, when one was.
    #[serde(skip)]
    pub head: Option<TaskHead>,
}

impl Evaluator {
    /// Prepares `split` of `task` (search by default) and up to `bias_examples` calibration
    /// examples for the bias fit.
    pub fn new(
        base: &LoadedModel,
        task: &Task,
        split: Split,
        bias_examples: usize,
        batch_tokens: usize,
    ) -> anyhow::Result<Self> {
        let labels = LabelTokens::new(&base.tokenizer, task.labels())?;
        let search = task.examples(split)?;
        if search.is_empty() {
            anyhow::bail!(
                "task {} has an empty {split} split; give its task file a {split} fraction",
                task.name()
            );
        }
        let mut calibration = task.examples(Split::Calibration)?;
        calibration.truncate(bias_examples);
        let prior = verbalizer_rows(&base.llama, &labels)?;
        Ok(Self {
            base: base.clone(),
            labels,
            search,
            bias_examples: calibration,
            batch_tokens,
            reading: LabelReading::Verbalizer,
            cross_fit: false,
            prior,
            names: task.labels().iter().map(|l| l.value.clone()).collect(),
            exit_priors: std::collections::HashMap::new(),
            stage: format!("scoring the {} split of {}", split, task.name()),
        })
    }

    /// Reads the labels as `reading`; with [`LabelReading::Head`] and `cross_fit`, each
    /// candidate's head is cross-fitted on the split itself (no calibration example is run),
    /// otherwise fitted on the calibration examples.
    pub fn with_reading(mut self, reading: LabelReading, cross_fit: bool) -> Self {
        self.reading = reading;
        self.cross_fit = cross_fit;
        self
    }

    /// The dense `llama`'s task head after every block (`heads[e − 1]` reads exit `e`), fitted
    /// (toward the verbalizer rows) on this evaluator's calibration examples: one pass of the
    /// model. What [`Evaluator::with_exit_heads`] pulls the search's heads toward.
    pub fn dense_exit_heads(
        &self,
        llama: &Llama,
        progress: &ProgressBar,
    ) -> anyhow::Result<Vec<TaskHead>> {
        let model = self.base.with_llama(llama.clone());
        progress.set_position(0);
        progress.set_message(format!("{} (dense heads at every exit)", self.stage));
        let (states, gold, _) = last_states(
            &model,
            &self.bias_examples,
            self.batch_tokens,
            true,
            progress,
        )?;
        Ok(states
            .iter()
            .map(|exit_states| fit_head(exit_states, &gold, &self.prior, &self.names))
            .collect::<Result<_, _>>()?)
    }

    /// Pulls the cross-fitted head of a candidate exiting after block `e` toward `heads[e]`,
    /// the dense model's head at that exit ([`Evaluator::dense_exit_heads`]). A candidate's
    /// state at an exit stays close to the dense model's, so a few hundred search-split states
    /// then correct a good head instead of learning one from nothing, and the search's reading
    /// of an early exit approaches the calibration-fitted head the test split is read with.
    pub fn with_exit_heads(mut self, heads: impl IntoIterator<Item = (usize, TaskHead)>) -> Self {
        self.exit_priors.extend(heads);
        self
    }

    /// How the labels are read.
    pub fn reading(&self) -> LabelReading {
        self.reading
    }

    /// The accuracy of always answering the split's most frequent gold label.
    pub fn majority_rate(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for label in self.search.iter().filter_map(|e| e.label) {
            *counts.entry(label).or_insert(0usize) += 1;
        }
        let most = counts.values().copied().max().unwrap_or(0);
        most as f64 / self.search.len().max(1) as f64
    }

    /// Scores a candidate decoder (sharing the base model's tokenizer) with the label bias
    /// it fits on the calibration examples: the honest measurement, as reported.
    pub fn score(&self, llama: &Llama, progress: &ProgressBar) -> anyhow::Result<Scored> {
        let model = self.base.with_llama(llama.clone());
        if self.reading == LabelReading::Head {
            return self.score_head(&model, progress);
        }
        let (search, _) = self.scores(&model, &self.search, progress)?;
        let (calibration, _) = self.scores(&model, &self.bias_examples, progress)?;
        let bias = metrics::fit_label_bias(&calibration.scores, &calibration.gold);
        Ok(Self::scored(&search, bias))
    }

    /// A cheap screening score: the label bias is fitted on the scored examples themselves,
    /// so no calibration example is run. The accuracy is optimistic (it can only be at or
    /// above what a bias fitted elsewhere gives on these examples, up to the fit's
    /// tolerance), which makes it safe for rejecting candidates that fall clearly below the
    /// target; `gold_log_prob` becomes the best mean log-likelihood any bias reaches, a
    /// bias-free, low-variance measure of how well the labels separate.
    ///
    /// With a task head the score is [`Evaluator::score`]'s: a head fitted in sample on a few
    /// hundred states would separate them perfectly and say nothing.
    pub fn score_in_sample(&self, llama: &Llama, progress: &ProgressBar) -> anyhow::Result<Scored> {
        let model = self.base.with_llama(llama.clone());
        if self.reading == LabelReading::Head {
            return self.score_head(&model, progress);
        }
        let (search, _) = self.scores(&model, &self.search, progress)?;
        let bias = metrics::fit_label_bias(&search.scores, &search.gold);
        Ok(Self::scored(&search, bias))
    }

    /// The states of the split's examples after every block of `llama` (one pass), and the
    /// gold labels: what [`Evaluator::score_states`] reads for every exit of the model.
    pub fn every_exit_states(
        &self,
        llama: &Llama,
        progress: &ProgressBar,
    ) -> anyhow::Result<(ExitStates, Vec<usize>)> {
        let model = self.base.with_llama(llama.clone());
        progress.set_position(0);
        progress.set_message(format!("{} (every exit)", self.stage));
        let (states, gold, _) =
            last_states(&model, &self.search, self.batch_tokens, true, progress)?;
        Ok((states, gold))
    }

    /// The cross-fitted task head's score of the first `states.len()` examples of the split,
    /// given their states after block `exit` (the split's own, e.g. from
    /// [`Evaluator::every_exit_states`]).
    pub fn score_states(
        &self,
        states: &[Vec<f32>],
        gold: &[usize],
        exit: usize,
    ) -> anyhow::Result<Scored> {
        let prior = self
            .exit_priors
            .get(&exit)
            .map_or(&self.prior, |head| &head.weight);
        let scores = cross_fit_scores(states, gold, prior, &self.names)?;
        let gold = gold.to_vec();
        Ok(Self::scored(
            &ClassScores { scores, gold },
            vec![0.0; self.prior.len()],
        ))
    }

    /// Scores states of this split's examples (in split order, e.g. from
    /// [`Evaluator::split_states`]) through `head`.
    pub fn score_states_with_head(
        &self,
        head: &TaskHead,
        states: &[Vec<f32>],
        gold: &[usize],
    ) -> Scored {
        Self::through(head.clone(), states, gold.to_vec())
    }

    /// The normed state at every example's last prompt token after `llama`'s last block, in
    /// split order, and the gold labels.
    pub fn split_states(
        &self,
        llama: &Llama,
        progress: &ProgressBar,
    ) -> anyhow::Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let model = self.base.with_llama(llama.clone());
        progress.set_position(0);
        progress.set_message(self.stage.clone());
        let (states, gold, _) =
            last_states(&model, &self.search, self.batch_tokens, false, progress)?;
        Ok((states.into_iter().next().unwrap_or_default(), gold))
    }

    fn through(head: TaskHead, states: &[Vec<f32>], gold: Vec<usize>) -> Scored {
        let scores = head.score_all(states);
        let n_labels = head.bias.len();
        let mut scored = Self::scored(&ClassScores { scores, gold }, vec![0.0; n_labels]);
        scored.label_bias = head.bias.iter().map(|&b| f64::from(b)).collect();
        scored.head = Some(head);
        scored
    }

    /// Scores with a task head read from the model's last block (the candidate's exit).
    fn score_head(&self, model: &LoadedModel, progress: &ProgressBar) -> anyhow::Result<Scored> {
        let (states, gold) = self.split_states(&model.llama, progress)?;
        if self.cross_fit {
            return self.score_states(&states, &gold, model.llama.config().n_layers);
        }
        progress.set_position(0);
        progress.set_message(format!("{} (task head fit)", self.stage));
        let (fit_states, fit_gold, _) = last_states(
            model,
            &self.bias_examples,
            self.batch_tokens,
            false,
            progress,
        )?;
        let fit_states = fit_states.into_iter().next().unwrap_or_default();
        let head = fit_head(&fit_states, &fit_gold, &self.prior, &self.names)?;
        Ok(Self::through(head, &states, gold))
    }

    fn scored(search: &ClassScores, bias: Vec<f64>) -> Scored {
        let predictions = metrics::predict_with_bias(&search.scores, &bias);
        let zero = vec![0.0; bias.len()];
        let raw = metrics::predict_with_bias(&search.scores, &zero);
        let gold_log_probs: Vec<f64> = search
            .scores
            .iter()
            .zip(&search.gold)
            .map(|(scores, &gold)| {
                let shifted: Vec<f64> = scores.iter().zip(&bias).map(|(s, b)| s + b).collect();
                let max = shifted.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = shifted.iter().map(|s| (s - max).exp()).sum::<f64>().ln() + max;
                shifted.get(gold).copied().unwrap_or(f64::NEG_INFINITY) - log_sum
            })
            .collect();
        let gold_log_prob = gold_log_probs.iter().sum::<f64>() / search.gold.len().max(1) as f64;
        let correct = predictions
            .iter()
            .zip(&search.gold)
            .map(|(p, g)| p == g)
            .collect();
        Scored {
            accuracy: metrics::accuracy(&predictions, &search.gold),
            accuracy_uncalibrated: metrics::accuracy(&raw, &search.gold),
            label_bias: bias,
            gold_log_prob,
            correct,
            gold_log_probs,
            head: None,
        }
    }

    fn scores(
        &self,
        model: &LoadedModel,
        examples: &[Example],
        progress: &ProgressBar,
    ) -> anyhow::Result<(ClassScores, usize)> {
        progress.set_position(0);
        progress.set_message(self.stage.clone());
        score_labels(model, examples, &self.labels, self.batch_tokens, progress)
    }

    /// The same evaluator on the first `1/parts` of its examples (at least one).
    pub fn fraction(&self, parts: usize) -> Self {
        let keep = (self.search.len() / parts.max(1)).max(1);
        self.subset(0..keep, format!("{} (1/{parts})", self.stage))
    }

    /// The same evaluator without its first `n` examples.
    pub fn skipping(&self, n: usize) -> Self {
        let n = n.min(self.search.len());
        self.subset(n..self.search.len(), self.stage.clone())
    }

    fn subset(&self, range: std::ops::Range<usize>, stage: String) -> Self {
        Self {
            base: self.base.clone(),
            labels: self.labels.clone(),
            search: self.search[range].to_vec(),
            bias_examples: self.bias_examples.clone(),
            batch_tokens: self.batch_tokens,
            reading: self.reading,
            cross_fit: self.cross_fit,
            prior: self.prior.clone(),
            names: self.names.clone(),
            exit_priors: self.exit_priors.clone(),
            stage,
        }
    }

    /// Whether [`Evaluator::score`] cross-fits a task head on the split's own states (then a
    /// score is [`Evaluator::score_states`] of the candidate's states, however they were run).
    pub fn cross_fits(&self) -> bool {
        self.reading == LabelReading::Head && self.cross_fit
    }

    /// Number of calibration examples a head or a label bias is fitted on.
    pub fn fit_examples(&self) -> usize {
        self.bias_examples.len()
    }

    /// Number of examples scored.
    pub fn len(&self) -> usize {
        self.search.len()
    }

    /// Whether no example is scored.
    pub fn is_empty(&self) -> bool {
        self.search.is_empty()
    }

    /// The base (dense) model.
    pub fn base(&self) -> &LoadedModel {
        &self.base
    }
}

/// The smallest uniform keep fraction that meets the accuracy target.
#[derive(Clone, Debug, Serialize)]
pub struct UniformResult {
    /// Dense accuracy on the split searched.
    pub dense_accuracy: f64,
    /// `(1 − ε) · dense_accuracy`.
    pub target_accuracy: f64,
    /// The keep fraction found (1.0: nothing could be removed).
    pub keep: f64,
    /// Its accuracy on the split searched.
    pub accuracy: f64,
    /// Every keep fraction tried and its accuracy, in the order tried.
    pub trials: Vec<(f64, f64)>,
}

/// Binary search over `grid` (ascending keep fractions ending in 1.0, the dense model) for
/// the smallest keep whose accuracy is at least `(1 − ε) · dense_accuracy`; assumes accuracy
/// grows with keep. `accuracy_at` scores the uniform plan of a keep fraction.
pub fn uniform_search(
    grid: &[f64],
    epsilon: f64,
    dense_accuracy: f64,
    accuracy_at: &mut dyn FnMut(f64) -> anyhow::Result<f64>,
) -> anyhow::Result<UniformResult> {
    let target = (1.0 - epsilon) * dense_accuracy;
    if grid.last() != Some(&1.0) || grid.windows(2).any(|w| w[0] >= w[1]) {
        anyhow::bail!("the keep-fraction grid must ascend and end at 1.0 (dense)");
    }
    // Invariant: grid[hi] meets the target (grid[last] is the dense model) and `best` is its
    // (keep, accuracy).
    let (mut lo, mut hi) = (0usize, grid.len() - 1);
    let mut best = (1.0, dense_accuracy);
    let mut trials = Vec::new();
    while lo < hi {
        let mid = (lo + hi) / 2;
        let keep = grid[mid];
        let accuracy = accuracy_at(keep)?;
        trials.push((keep, accuracy));
        if accuracy >= target {
            hi = mid;
            best = (keep, accuracy);
        } else {
            lo = mid + 1;
        }
    }
    Ok(UniformResult {
        dense_accuracy,
        target_accuracy: target,
        keep: best.0,
        accuracy: best.1,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(threshold: f64, expected_keep: f64, max_trials: usize) {
        let grid: Vec<f64> = (2..=20).map(|i| f64::from(i) * 0.05).collect();
        let mut calls = 0;
        let mut accuracy_at = |keep: f64| {
            calls += 1;
            Ok(if keep >= threshold - 1e-9 { 0.80 } else { 0.5 })
        };
        let result = uniform_search(&grid, 0.05, 0.82, &mut accuracy_at).expect("search");
        assert!((result.keep - expected_keep).abs() < 1e-9, "{result:?}");
        assert!(calls <= max_trials, "{calls} evaluations");
        assert_eq!(result.trials.len(), calls);
    }

    #[test]
    fn finds_the_smallest_passing_keep() {
        check(0.6, 0.6, 5);
        check(0.1, 0.1, 5);
        check(1.01, 1.0, 5);
        check(0.95, 0.95, 5);
    }

    #[test]
    fn rejects_a_grid_without_dense() {
        let mut never = |_: f64| -> anyhow::Result<f64> { Ok(0.0) };
        assert!(uniform_search(&[0.5, 0.9], 0.05, 0.8, &mut never).is_err());
        assert!(uniform_search(&[0.9, 0.5, 1.0], 0.05, 0.8, &mut never).is_err());
    }
}
