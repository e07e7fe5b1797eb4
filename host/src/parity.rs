//! The runtime against the host model a bundle was packed from (DESIGN section 7: the same
//! predictions on the test split, logits within a stated tolerance): token ids, predictions
//! and label logits, example by example. `whittle parity` and the real-model tests call it.

use anyhow::Context;
use rayon::prelude::*;
use whittle_runtime::kernels::Kernels;
use whittle_runtime::{Bundle, Session};

use crate::eval::{prompt_ids, prompt_text};
use crate::head::TaskHead;
use crate::model::{Batch, LoadedModel};
use crate::task::Example;

/// Token capacity of the runtime sessions parity runs.
pub const CONTEXT: usize = 512;

/// The host's side for some examples: the input text the runtime receives, the prompt ids and
/// the raw label logits of the host model.
#[derive(Clone, Debug)]
pub struct HostReference {
    /// Example ids.
    pub ids: Vec<String>,
    /// The text between the bundle's prompt prefix and suffix.
    pub inputs: Vec<String>,
    /// The host's prompt token ids.
    pub token_ids: Vec<Vec<u32>>,
    /// Gold label indices.
    pub gold: Vec<usize>,
    /// The host's label logits (no bias), in label order.
    pub logits: Vec<Vec<f32>>,
    /// The label biases of the bundle (added to both sides before the argmax).
    pub bias: Vec<f32>,
}

/// One example, both sides.
#[derive(Clone, Debug)]
pub struct ParityCase {
    /// Example id.
    pub id: String,
    /// The input text.
    pub input: String,
    /// Gold label index.
    pub gold: usize,
    /// Whether the runtime tokenized the prompt exactly as the host.
    pub same_token_ids: bool,
    /// Host label logits (no bias).
    pub host_logits: Vec<f32>,
    /// Runtime label logits (no bias).
    pub runtime_logits: Vec<f32>,
    /// Host argmax of logit + bias.
    pub host_prediction: usize,
    /// Runtime argmax of logit + bias.
    pub runtime_prediction: usize,
}

/// The comparison over a set of examples.
#[derive(Clone, Debug)]
pub struct ParityReport {
    /// Every example.
    pub cases: Vec<ParityCase>,
    /// Share of examples with the same prediction.
    pub agreement: f64,
    /// Largest |host logit − runtime logit| over every label of the examples tokenized alike
    /// (the numerics; a task-trimmed bundle reads an unseen word in other pieces).
    pub max_abs_logit_diff: f32,
    /// Host accuracy.
    pub host_accuracy: f64,
    /// Runtime accuracy.
    pub runtime_accuracy: f64,
    /// Examples whose prompt token ids differ (in source ids: only a task-trimmed bundle's
    /// tokenizer may read an input in other pieces).
    pub token_id_mismatches: usize,
    /// Share of those examples with the host's prediction, `None` when there are none.
    pub retokenized_agreement: Option<f64>,
    /// Arena bytes of one session.
    pub arena_bytes: usize,
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if values.get(best).is_some_and(|b| v > b) {
            best = i;
        }
    }
    best
}

fn with_bias(logits: &[f32], bias: &[f32]) -> Vec<f32> {
    logits.iter().zip(bias).map(|(l, b)| l + b).collect()
}

/// Runs the host `model` on `examples` with the prompt template, labels and bias of `bundle`;
/// the label logits are read through the fitted task `head` when the bundle was packed with
/// one (without its bias, which the bundle's labels carry), else through the output head's
/// label rows.
pub fn host_reference(
    model: &LoadedModel,
    bundle: &Bundle<'_>,
    examples: &[Example],
    head: Option<&TaskHead>,
) -> anyhow::Result<HostReference> {
    let task = &bundle.header().task;
    // In the source model's ids, which a task-trimmed bundle renumbers.
    let tokenizer = whittle_runtime::Tokenizer::new(bundle);
    let label_ids: Vec<u32> = task
        .labels
        .iter()
        .map(|l| tokenizer.source_id(l.token_id))
        .collect();
    let (prefix, suffix) = (task.prompt_prefix, task.prompt_suffix);
    let mut reference = HostReference {
        ids: Vec::with_capacity(examples.len()),
        inputs: Vec::with_capacity(examples.len()),
        token_ids: Vec::with_capacity(examples.len()),
        gold: Vec::with_capacity(examples.len()),
        logits: Vec::with_capacity(examples.len()),
        bias: task.labels.iter().map(|l| l.bias).collect(),
    };
    for example in examples {
        let text = prompt_text(&model.tokenizer, &example.prompt)?;
        let input = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .with_context(|| {
                format!(
                    "example {}: its prompt does not match the bundle's prompt template; pass the task the bundle was packed for",
                    example.id
                )
            })?;
        reference.ids.push(example.id.clone());
        reference.inputs.push(input.to_owned());
        reference
            .token_ids
            .push(prompt_ids(&model.tokenizer, &example.prompt)?);
        reference
            .gold
            .push(example.label.context("test example without a label")?);
    }
    let rows = head
        .map(|head| head.rows(model.llama.device()))
        .transpose()?;
    for chunk in reference.token_ids.chunks(16) {
        let batch = Batch::new(chunk, model.tokenizer.pad_id(), model.llama.device())?;
        let last = model.llama.last_hidden(&batch)?;
        let logits = match &rows {
            Some(rows) => last.matmul(&rows.t()?)?,
            None => model.llama.logits_for(&last, &label_ids)?,
        };
        reference.logits.extend(logits.to_vec2::<f32>()?);
    }
    Ok(reference)
}

/// Runs `bundle` on the reference's inputs (one session per rayon worker) and compares.
pub fn compare<K: Kernels + Clone + Send + Sync>(
    reference: &HostReference,
    bundle: &Bundle<'_>,
    kernels: K,
) -> anyhow::Result<ParityReport> {
    let arena_bytes = bundle.arena_bytes(CONTEXT);
    // Tokens are compared in the source model's ids, which a task-trimmed bundle renumbers.
    let tokenizer = whittle_runtime::Tokenizer::new(bundle);
    let runtime: Vec<anyhow::Result<(Vec<u32>, Vec<f32>)>> = reference
        .inputs
        .par_iter()
        .map_init(
            || vec![0u64; arena_bytes.div_ceil(8)],
            |arena, input| {
                // u64 storage keeps the arena 8-byte aligned.
                let arena: &mut [u8] = bytemuck::cast_slice_mut(arena);
                let mut session = Session::<_, CONTEXT>::new(bundle, kernels.clone(), arena)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                session
                    .label_scores(input)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let tokens = session
                    .tokens()
                    .iter()
                    .map(|&id| tokenizer.source_id(id))
                    .collect();
                let logits = session
                    .label_logits()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_vec();
                Ok((tokens, logits))
            },
        )
        .collect();

    let n = reference.inputs.len();
    let mut cases = Vec::with_capacity(n);
    let mut max_diff = 0f32;
    for (i, result) in runtime.into_iter().enumerate() {
        let (tokens, runtime_logits) = result?;
        let host_logits = reference.logits.get(i).cloned().unwrap_or_default();
        let same_token_ids = reference.token_ids.get(i) == Some(&tokens);
        if same_token_ids {
            for (h, r) in host_logits.iter().zip(&runtime_logits) {
                max_diff = max_diff.max((h - r).abs());
            }
        }
        cases.push(ParityCase {
            id: reference.ids.get(i).cloned().unwrap_or_default(),
            input: reference.inputs.get(i).cloned().unwrap_or_default(),
            gold: reference.gold.get(i).copied().unwrap_or(usize::MAX),
            same_token_ids,
            host_prediction: argmax(&with_bias(&host_logits, &reference.bias)),
            runtime_prediction: argmax(&with_bias(&runtime_logits, &reference.bias)),
            host_logits,
            runtime_logits,
        });
    }
    let share = |count: usize| count as f64 / n.max(1) as f64;
    let count = |f: &dyn Fn(&ParityCase) -> bool| cases.iter().filter(|c| f(c)).count();
    Ok(ParityReport {
        agreement: share(count(&|c| c.host_prediction == c.runtime_prediction)),
        host_accuracy: share(count(&|c| c.host_prediction == c.gold)),
        runtime_accuracy: share(count(&|c| c.runtime_prediction == c.gold)),
        token_id_mismatches: count(&|c| !c.same_token_ids),
        retokenized_agreement: {
            let differ = count(&|c| !c.same_token_ids);
            let agree = count(&|c| !c.same_token_ids && c.host_prediction == c.runtime_prediction);
            (differ > 0).then(|| agree as f64 / differ as f64)
        },
        max_abs_logit_diff: max_diff,
        arena_bytes,
        cases,
    })
}
