//! Strided perplexity over the split's articles joined by blank lines: windows of `window`
//! tokens starting every `stride` tokens; each window scores only the tokens no earlier
//! window scored (the first token of the text is never scored).

use candle_core::{IndexOp, Tensor};
use indicatif::ProgressBar;
use serde_json::json;

use super::{EvalOptions, progress_style};
use crate::metrics;
use crate::model::{Batch, LoadedModel, log_softmax};
use crate::task::Example;

/// Rows of logits materialised at once (bounds memory at `ROW_CHUNK × vocab` floats).
const ROW_CHUNK: usize = 256;

pub(super) fn evaluate(
    model: &LoadedModel,
    examples: &[Example],
    window: usize,
    stride: usize,
    _options: &EvalOptions,
    progress: &ProgressBar,
) -> anyhow::Result<(&'static str, f64, serde_json::Value, usize)> {
    let context = model.llama.config().max_position_embeddings;
    if window < 2 || stride == 0 || stride > window || window > context {
        anyhow::bail!(
            "perplexity window {window} / stride {stride} invalid: need 2 ≤ window ≤ {context} and 1 ≤ stride ≤ window"
        );
    }
    let text = examples
        .iter()
        .map(|e| e.text.trim())
        .collect::<Vec<_>>()
        .join("\n\n");
    let ids = model.tokenizer.encode_prompt(&text)?;
    if ids.len() < 2 {
        anyhow::bail!("the split's text tokenizes to fewer than two tokens");
    }
    let starts: Vec<usize> = (0..ids.len() - 1).step_by(stride).collect();
    progress_style(progress, starts.len(), "perplexity windows");
    let (mut total_nll, mut scored, mut tokens, mut previous_end) = (0.0, 0usize, 0, 0usize);
    for start in starts {
        let end = (start + window).min(ids.len());
        let first_target = previous_end.max(start + 1);
        if first_target >= end {
            break;
        }
        let tokens_in = &ids[start..end];
        let batch = Batch::new(&[tokens_in.to_vec()], 0, model.llama.device())?;
        let hidden = model.llama.forward_hidden(&batch, None)?.squeeze(0)?;
        // Position p predicts token p + 1; targets first_target..end are predicted by rows
        // first_target - 1 - start ..end - 1 - start of this window.
        let mut row = first_target - 1 - start;
        while row < end - 1 - start {
            let chunk_end = (row + ROW_CHUNK).min(end - 1 - start);
            let rows = hidden.i(row..chunk_end)?.contiguous()?;
            let log_probs = log_softmax(&model.llama.logits(&rows)?)?;
            let targets: Vec<u32> = tokens_in[row + 1..chunk_end + 1].to_vec();
            let targets = Tensor::new(targets.as_slice(), model.llama.device())?.unsqueeze(1)?;
            let picked = log_probs
                .gather(&targets, 1)?
                .sum_all()?
                .to_scalar::<f32>()?;
            total_nll -= f64::from(picked);
            row = chunk_end;
        }
        scored += end - first_target;
        tokens += end - start;
        previous_end = end;
        progress.inc(1);
        if end == ids.len() {
            break;
        }
    }
    let perplexity = metrics::perplexity(total_nll, scored);
    let details = json!({
        "scored_tokens": scored,
        "text_tokens": ids.len(),
        "window": window,
        "stride": stride,
        "mean_nll": total_nll / scored as f64,
    });
    Ok(("perplexity", perplexity, details, tokens))
}
