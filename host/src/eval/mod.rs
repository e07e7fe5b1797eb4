//! Evaluating a model on a task split with the task's metric (DESIGN section 4):
//! classification by verbalizer log-probability (with and without the per-label bias fitted
//! on the calibration split), extractive QA by SQuAD EM/F1 on greedy answers, and strided
//! perplexity.

mod classify;
mod perplexity;
mod qa;

use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;

pub use classify::{
    ClassScores, ExitStates, LabelTokens, last_states, score_labels, shared_prefix, verbalizer_rows,
};

use crate::model::LoadedModel;
use crate::task::{Example, Metric, Prompt, Split, Task};
use crate::tokenizer::{ChatTemplate, TextTokenizer};

/// How an evaluation runs.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Evaluate only the first `limit` examples of each split used (quick checks).
    pub limit: Option<usize>,
    /// Fit the per-label bias on the calibration split and report calibrated accuracy.
    pub label_bias: bool,
    /// Upper bound on padded tokens per forward batch.
    pub batch_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            limit: None,
            label_bias: true,
            batch_tokens: 4096,
        }
    }
}

/// The result of one evaluation; `value` is the headline number of `metric`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Task name.
    pub task: String,
    /// Split evaluated.
    pub split: String,
    /// Number of examples (for perplexity: articles) evaluated.
    pub n: usize,
    /// `accuracy`, `squad_f1` or `perplexity`.
    pub metric: String,
    /// The headline value: calibrated accuracy (or raw, with the bias off), F1, perplexity.
    pub value: f64,
    /// Metric-specific details (raw accuracy, bias, EM, token counts, …).
    pub details: serde_json::Value,
    /// Tokens run through the model, padding excluded.
    pub tokens: usize,
    /// Wall-clock seconds of the evaluation.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_second: f64,
}

/// Evaluates `model` on one split of `task`.
pub fn evaluate(
    model: &LoadedModel,
    task: &Task,
    split: Split,
    options: &EvalOptions,
    progress: &ProgressBar,
) -> anyhow::Result<EvalReport> {
    let started = Instant::now();
    let examples = limited(task.examples(split)?, options.limit);
    if examples.is_empty() {
        anyhow::bail!(
            "task {}: the {split} split is empty; check the [splits] fractions of its task file",
            task.name()
        );
    }
    let (metric, value, details, tokens) = match task.metric() {
        Metric::Accuracy => classify::evaluate(model, task, split, &examples, options, progress)?,
        Metric::Squad { max_new_tokens } => {
            qa::evaluate(model, &examples, *max_new_tokens, progress)?
        }
        Metric::Perplexity { window, stride } => {
            perplexity::evaluate(model, &examples, *window, *stride, options, progress)?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        task: task.name().to_owned(),
        split: split.to_string(),
        n: examples.len(),
        metric: metric.to_owned(),
        value,
        details,
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}

fn limited(mut examples: Vec<Example>, limit: Option<usize>) -> Vec<Example> {
    if let Some(limit) = limit {
        examples.truncate(limit);
    }
    examples
}

/// The text of a prompt: through the chat template when the task asks for it.
pub fn prompt_text(tokenizer: &TextTokenizer, prompt: &Prompt) -> anyhow::Result<String> {
    let base_model = *tokenizer.chat_template() == ChatTemplate::Unsupported;
    if prompt.chat && base_model {
        return prompt.plain.clone().context(
            "the model has no chat template (a pretrained base model); give the task a whole prompt for such models: plain = \"...{field}...\" in [prompt], or chat = false",
        );
    }
    if prompt.chat {
        tokenizer.chat_prompt(
            prompt.system.as_deref(),
            &prompt.user,
            &prompt.assistant_prefix,
        )
    } else {
        Ok(format!("{}{}", prompt.user, prompt.assistant_prefix))
    }
}

/// Token ids of a prompt: through the chat template when the task asks for it.
pub fn prompt_ids(tokenizer: &TextTokenizer, prompt: &Prompt) -> anyhow::Result<Vec<u32>> {
    let text = prompt_text(tokenizer, prompt)?;
    let ids = tokenizer.encode_prompt(&text)?;
    if ids.is_empty() {
        anyhow::bail!("a prompt tokenizes to nothing; check the task's prompt template");
    }
    Ok(ids)
}

/// Groups indices of `lengths` (sorted by length) into batches of at most `batch_tokens`
/// padded tokens.
fn length_batches(lengths: &[usize], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for index in order {
        let width = lengths[index];
        if !current.is_empty() && (current.len() + 1) * width > batch_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(index);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn progress_style(progress: &ProgressBar, len: usize, message: &str) {
    progress.set_length(len as u64);
    progress.set_position(0);
    progress.set_message(message.to_owned());
}

fn context_check(ids: &[u32], model: &LoadedModel, id: &str) -> anyhow::Result<()> {
    let context = model.llama.config().max_position_embeddings;
    if ids.len() > context {
        return Err(anyhow::anyhow!(
            "example {id}: prompt of {} tokens exceeds the model's context of {context}; shorten the prompt template",
            ids.len()
        ))
        .context("evaluation stopped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lengths: &[usize], budget: usize, expected: &[&[usize]]) {
        let batches = length_batches(lengths, budget);
        let expected: Vec<Vec<usize>> = expected.iter().map(|b| b.to_vec()).collect();
        assert_eq!(batches, expected);
    }

    #[test]
    fn batches_respect_the_token_budget() {
        check(&[5, 3, 9, 4], 12, &[&[1, 3], &[0], &[2]]);
        check(&[5, 3, 9, 4], 100, &[&[1, 3, 0, 2]]);
        check(&[50], 10, &[&[0]]);
        check(&[], 10, &[]);
    }
}
