//! Extractive QA: a greedy answer per question, scored by SQuAD-normalised EM and F1.

use indicatif::ProgressBar;
use serde_json::json;

use super::{context_check, progress_style, prompt_ids};
use crate::generate::greedy;
use crate::metrics;
use crate::model::LoadedModel;
use crate::task::Example;

/// The answer is the first line of the generation, trimmed.
pub(super) fn evaluate(
    model: &LoadedModel,
    examples: &[Example],
    max_new_tokens: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(&'static str, f64, serde_json::Value, usize)> {
    progress_style(progress, examples.len(), "greedy answers");
    let (mut exact, mut f1, mut tokens) = (0.0, 0.0, 0);
    for example in examples {
        let ids = prompt_ids(&model.tokenizer, &example.prompt)?;
        context_check(&ids, model, &example.id)?;
        let generated = greedy(
            &model.llama,
            &ids,
            max_new_tokens,
            model.tokenizer.stop_ids(),
        )?;
        tokens += ids.len() + generated.len();
        let text = model.tokenizer.decode(&generated)?;
        let answer = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        exact += metrics::exact_match(answer, &example.answers);
        f1 += metrics::f1(answer, &example.answers);
        progress.inc(1);
    }
    let n = examples.len() as f64;
    let details =
        json!({ "exact_match": exact / n, "f1": f1 / n, "max_new_tokens": max_new_tokens });
    Ok(("squad_f1", f1 / n, details, tokens))
}
