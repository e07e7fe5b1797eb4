//! Classification: each label is scored by the log-probability of its verbalizer tokens after
//! the prompt; the prediction is the argmax, optionally after the per-label bias fitted on
//! the calibration split.

use candle_core::{IndexOp, Tensor};
use indicatif::ProgressBar;
use serde_json::json;

use super::{EvalOptions, context_check, length_batches, limited, progress_style, prompt_ids};
use crate::metrics;
use crate::model::{Batch, Llama, LoadedModel, log_softmax};
use crate::task::{Example, Label, Split, Task};
use crate::tokenizer::TextTokenizer;

/// The token ids of every label's verbalizer.
#[derive(Clone, Debug)]
pub struct LabelTokens {
    ids: Vec<Vec<u32>>,
}

impl LabelTokens {
    /// Tokenizes every verbalizer; one that tokenizes to nothing is an error.
    pub fn new(tokenizer: &TextTokenizer, labels: &[Label]) -> anyhow::Result<Self> {
        if labels.len() < 2 {
            anyhow::bail!("a classification task needs at least two [[labels]] entries");
        }
        let mut ids = Vec::with_capacity(labels.len());
        for label in labels {
            let tokens = tokenizer.encode(&label.verbalizer)?;
            if tokens.is_empty() {
                anyhow::bail!(
                    "label {:?}: verbalizer {:?} tokenizes to nothing; give it visible text, e.g. verbalizer = \" {}\"",
                    label.value,
                    label.verbalizer,
                    label.value
                );
            }
            ids.push(tokens);
        }
        Ok(Self { ids })
    }

    /// The single token of every label, when each verbalizer is one token.
    fn single_tokens(&self) -> Option<Vec<u32>> {
        self.ids
            .iter()
            .map(|ids| (ids.len() == 1).then(|| ids[0]))
            .collect()
    }
}

/// The rows of the output head at each label's first verbalizer token: the verbalizer head
/// that a fitted task head is pulled toward ([`crate::head`]).
pub fn verbalizer_rows(llama: &Llama, labels: &LabelTokens) -> anyhow::Result<Vec<Vec<f32>>> {
    let first: Vec<u32> = labels
        .ids
        .iter()
        .filter_map(|ids| ids.first().copied())
        .collect();
    let ids = Tensor::new(first.as_slice(), llama.device())?;
    Ok(llama.head().index_select(&ids, 0)?.to_vec2()?)
}

/// Per-example label log-probabilities and gold labels.
#[derive(Clone, Debug, Default)]
pub struct ClassScores {
    /// `scores[i][k]`: log-probability of label `k`'s verbalizer after example `i`'s prompt.
    pub scores: Vec<Vec<f64>>,
    /// Gold label index of every example.
    pub gold: Vec<usize>,
}

/// Scores every label for every example; returns the scores and the tokens run.
pub fn score_labels(
    model: &LoadedModel,
    examples: &[Example],
    labels: &LabelTokens,
    batch_tokens: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(ClassScores, usize)> {
    let longest = labels.ids.iter().map(Vec::len).max().unwrap_or(0);
    let (prompts, gold) = labelled_prompts(model, examples, longest)?;
    let mut scores = vec![Vec::new(); examples.len()];
    let tokens = match labels.single_tokens() {
        // With single-token labels only the last position is read: the label scores are the
        // log-softmax of the last state's logits, read at the label tokens.
        Some(label_ids) => {
            let ids = Tensor::new(label_ids.as_slice(), model.llama.device())?;
            run_last_states(
                model,
                &prompts,
                batch_tokens,
                false,
                progress,
                |indices, states| {
                    let log_probs = log_softmax(&model.llama.logits(&states[0])?)?;
                    let picked: Vec<Vec<f32>> = log_probs.index_select(&ids, 1)?.to_vec2()?;
                    for (&index, row) in indices.iter().zip(picked) {
                        scores[index] = row.into_iter().map(f64::from).collect();
                    }
                    Ok(())
                },
            )?
        }
        None => {
            let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
            progress.set_length(examples.len() as u64);
            for batch_indices in length_batches(&lengths, batch_tokens) {
                let batch_prompts: Vec<&[u32]> =
                    batch_indices.iter().map(|&i| &prompts[i][..]).collect();
                let batch_scores = score_multi_token(model, &batch_prompts, labels)?;
                for (&index, row) in batch_indices.iter().zip(batch_scores) {
                    scores[index] = row;
                }
                progress.inc(batch_indices.len() as u64);
            }
            lengths.iter().sum()
        }
    };
    Ok((ClassScores { scores, gold }, tokens))
}

/// Hidden states by exit, then by example: `states[e][i]` is example `i`'s state after exit `e`.
pub type ExitStates = Vec<Vec<Vec<f32>>>;

/// The normalised hidden state at every example's last prompt token, and the gold labels:
/// `states[e][i]` is example `i`'s state after exit `e` (block `e`; with `per_exit` false only
/// the model's last block, so `states` has one element). Returns the tokens run too.
pub fn last_states(
    model: &LoadedModel,
    examples: &[Example],
    batch_tokens: usize,
    per_exit: bool,
    progress: &ProgressBar,
) -> anyhow::Result<(ExitStates, Vec<usize>, usize)> {
    let (prompts, gold) = labelled_prompts(model, examples, 0)?;
    let n_exits = if per_exit {
        model.llama.config().n_layers
    } else {
        1
    };
    let mut states = vec![vec![Vec::new(); examples.len()]; n_exits];
    let tokens = run_last_states(
        model,
        &prompts,
        batch_tokens,
        per_exit,
        progress,
        |indices, batch_states| {
            for (exit, tensor) in batch_states.iter().enumerate() {
                let rows: Vec<Vec<f32>> = tensor.to_vec2()?;
                for (&index, row) in indices.iter().zip(rows) {
                    states[exit][index] = row;
                }
            }
            Ok(())
        },
    )?;
    Ok((states, gold, tokens))
}

/// The token ids of every example's prompt and its gold label, checked to leave `room`
/// tokens of context after the prompt.
fn labelled_prompts(
    model: &LoadedModel,
    examples: &[Example],
    room: usize,
) -> anyhow::Result<(Vec<Vec<u32>>, Vec<usize>)> {
    let mut gold = Vec::with_capacity(examples.len());
    let mut prompts = Vec::with_capacity(examples.len());
    for example in examples {
        let Some(label) = example.label else {
            anyhow::bail!(
                "example {} has no label; the task's data lacks a label field",
                example.id
            );
        };
        let ids = prompt_ids(&model.tokenizer, &example.prompt)?;
        context_check(&ids[..], model, &example.id)?;
        if ids.len() + room > model.llama.config().max_position_embeddings {
            anyhow::bail!(
                "example {}: prompt and verbalizer exceed the context",
                example.id
            );
        }
        gold.push(label);
        prompts.push(ids);
    }
    Ok((prompts, gold))
}

/// Runs every prompt in length-sorted batches and hands each batch's last-position states to
/// `each` (`(indices, states)`: one `(batch, hidden)` tensor, or one per exit with
/// `per_exit`). The prompt prefix every example shares (system message, instruction) is run
/// once and its keys and values are reused by every batch (DESIGN section 5, cost control).
/// Returns the tokens run.
fn run_last_states(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    batch_tokens: usize,
    per_exit: bool,
    progress: &ProgressBar,
    mut each: impl FnMut(&[usize], &[Tensor]) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    progress.set_length(prompts.len() as u64);
    let (prefix, skip) = match shared_prefix(prompts) {
        0 => (None, 0),
        len => (Some(model.llama.prefix_cache(&prompts[0][..len])?), len),
    };
    let mut tokens = skip;
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len() - skip).collect();
    for batch_indices in length_batches(&lengths, batch_tokens) {
        let sequences: Vec<Vec<u32>> = batch_indices
            .iter()
            .map(|&i| prompts[i][skip..].to_vec())
            .collect();
        let batch = Batch::new(&sequences, model.tokenizer.pad_id(), model.llama.device())?;
        let states = match (per_exit, &prefix) {
            (true, prefix) => model.llama.last_hidden_per_exit(prefix.as_ref(), &batch)?,
            (false, Some(prefix)) => vec![model.llama.last_hidden_after(prefix, &batch)?],
            (false, None) => vec![model.llama.last_hidden(&batch)?],
        };
        each(&batch_indices, &states)?;
        tokens += batch_indices.iter().map(|&i| lengths[i]).sum::<usize>();
        progress.inc(batch_indices.len() as u64);
    }
    Ok(tokens)
}

/// A shared prefix shorter than this is not worth a separate pass.
const MIN_SHARED_PREFIX: usize = 4;

/// The length of the prompt prefix every prompt shares (system message, instruction) when it
/// is worth running once for all of them, else 0; every prompt keeps at least one token.
pub fn shared_prefix(prompts: &[Vec<u32>]) -> usize {
    match shared_prefix_len(prompts) {
        len if len >= MIN_SHARED_PREFIX => len,
        _ => 0,
    }
}

/// Length of the longest token prefix every prompt shares, leaving every prompt at least
/// one token of its own.
fn shared_prefix_len(prompts: &[Vec<u32>]) -> usize {
    let Some((first, rest)) = prompts.split_first() else {
        return 0;
    };
    let mut len = first.len().saturating_sub(1);
    for prompt in rest {
        len = len.min(prompt.len().saturating_sub(1));
        len = first
            .iter()
            .zip(prompt)
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    len
}

/// One sequence per (prompt, label): the sum of the verbalizer tokens' log-probabilities.
fn score_multi_token(
    model: &LoadedModel,
    prompts: &[&[u32]],
    labels: &LabelTokens,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut sequences = Vec::new();
    for prompt in prompts {
        for verbalizer in &labels.ids {
            let mut sequence = prompt.to_vec();
            sequence.extend_from_slice(verbalizer);
            sequences.push(sequence);
        }
    }
    let batch = Batch::new(&sequences, model.tokenizer.pad_id(), model.llama.device())?;
    let hidden = model.llama.forward_hidden(&batch, None)?;
    let n_labels = labels.ids.len();
    let mut out = vec![vec![0f64; n_labels]; prompts.len()];
    for (row, sequence) in sequences.iter().enumerate() {
        let (prompt_index, label) = (row / n_labels, row % n_labels);
        let verbalizer = &labels.ids[label];
        let start = sequence.len() - verbalizer.len() - 1;
        let rows = hidden
            .i((row, start..sequence.len() - 1, ..))?
            .contiguous()?;
        let log_probs = log_softmax(&model.llama.logits(&rows)?)?;
        let log_probs: Vec<Vec<f32>> = log_probs.to_vec2()?;
        out[prompt_index][label] = verbalizer
            .iter()
            .zip(&log_probs)
            .map(|(&token, row)| f64::from(row[token as usize]))
            .sum();
    }
    Ok(out)
}

/// Classification metric for `split`, with the bias fitted on the calibration split.
pub(super) fn evaluate(
    model: &LoadedModel,
    task: &Task,
    split: Split,
    examples: &[Example],
    options: &EvalOptions,
    progress: &ProgressBar,
) -> anyhow::Result<(&'static str, f64, serde_json::Value, usize)> {
    let labels = LabelTokens::new(&model.tokenizer, task.labels())?;
    progress_style(
        progress,
        examples.len(),
        &format!("{} {split}", task.name()),
    );
    let (scored, mut tokens) =
        score_labels(model, examples, &labels, options.batch_tokens, progress)?;
    let raw_predictions: Vec<usize> = scored.scores.iter().map(|s| argmax(s)).collect();
    let raw_accuracy = metrics::accuracy(&raw_predictions, &scored.gold);
    let mut counts = vec![0usize; task.labels().len()];
    for &gold in &scored.gold {
        if let Some(count) = counts.get_mut(gold) {
            *count += 1;
        }
    }
    let majority =
        counts.iter().copied().max().unwrap_or(0) as f64 / scored.gold.len().max(1) as f64;
    let mut details = json!({
        "accuracy_uncalibrated": raw_accuracy,
        "majority_class_accuracy": majority,
        "gold_label_counts": counts,
        "labels": task.labels().iter().map(|l| &l.value).collect::<Vec<_>>(),
    });
    if task.labels().len() == 2 {
        let margins: Vec<f64> = scored.scores.iter().map(|s| s[1] - s[0]).collect();
        let positives: Vec<bool> = scored.gold.iter().map(|&g| g == 1).collect();
        details["auc"] = json!(metrics::roc_auc(&margins, &positives));
    }
    if !options.label_bias {
        return Ok(("accuracy", raw_accuracy, details, tokens));
    }
    let calibration = if split == Split::Calibration {
        scored.clone()
    } else {
        let mut calibration_examples = limited(task.examples(Split::Calibration)?, options.limit);
        calibration_examples.truncate(metrics::LABEL_BIAS_EXAMPLES);
        progress_style(
            progress,
            calibration_examples.len(),
            &format!("{} calibration (label bias)", task.name()),
        );
        let (calibration, calibration_tokens) = score_labels(
            model,
            &calibration_examples,
            &labels,
            options.batch_tokens,
            progress,
        )?;
        tokens += calibration_tokens;
        calibration
    };
    let bias = metrics::fit_label_bias(&calibration.scores, &calibration.gold);
    let predictions = metrics::predict_with_bias(&scored.scores, &bias);
    let accuracy = metrics::accuracy(&predictions, &scored.gold);
    details["label_bias"] = json!(bias);
    details["calibration_examples"] = json!(calibration.gold.len());
    Ok(("accuracy", accuracy, details, tokens))
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::shared_prefix_len;

    fn check(prompts: &[&[u32]], expected: usize) {
        let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        assert_eq!(shared_prefix_len(&prompts), expected, "{prompts:?}");
    }

    #[test]
    fn shared_prefix_leaves_every_prompt_a_token() {
        check(&[&[1, 2, 3, 4], &[1, 2, 3, 5, 6]], 3);
        check(&[&[1, 2, 3], &[1, 2, 3, 4]], 2);
        check(&[&[1, 2, 3]], 2);
        check(&[&[7, 2], &[1, 2]], 0);
        check(&[], 0);
        check(&[&[1], &[1]], 0);
    }
}
