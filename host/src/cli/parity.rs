//! `whittle parity --bundle B`: the runtime (this crate links it, std feature) against the
//! host model the bundle was packed from, on the task's test split: token ids, predictions
//! and label logits.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use rayon::prelude::*;
use serde_json::json;
use whittle_host::bundle::PruneFolder;
use whittle_host::eval::{prompt_ids, prompt_text};
use whittle_host::model::Batch;
use whittle_host::task::{Split, Task};
use whittle_runtime::kernels::Portable;
use whittle_runtime::{AlignedBytes, Bundle, Session};

use super::ModelArgs;
use super::session::Session as HostSession;

/// Token capacity of the runtime sessions parity runs.
const CONTEXT: usize = 512;

#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The bundle to check.
    #[arg(long, value_name = "PATH")]
    bundle: PathBuf,
    /// The prune folder the bundle was packed from [default: the one its header records].
    #[arg(long, value_name = "DIR")]
    prune_dir: Option<PathBuf>,
    /// Task (name or file) [default: the bundle's task].
    #[arg(long)]
    task: Option<String>,
    /// Only the first N test examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
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

pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let raw = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}; check the path", args.bundle.display()))?;
    let aligned = AlignedBytes::new(&raw);
    let bundle = Bundle::parse(aligned.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.bundle.display()))?;
    let header = bundle.header();
    let provenance = header.provenance;
    let host = HostSession::open(&args.model)?;
    if host.digest != provenance.model_digest {
        bail!(
            "{} was packed from a model with sha256 {}, but the given model has {}; pass the same --model",
            args.bundle.display(),
            provenance.model_digest,
            host.digest
        );
    }
    let mut model = host.model.clone();
    if !provenance.source.is_empty() {
        let dir = args
            .prune_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(provenance.source));
        let folder = PruneFolder::open(&dir)?;
        if folder.factors_digest != provenance.factors_digest
            || folder.genome_digest != provenance.genome_digest
        {
            bail!(
                "{} holds other factors or genome than {} was packed from; pass --prune-dir of the folder it was packed from, or re-pack",
                dir.display(),
                args.bundle.display()
            );
        }
        model = model.with_llama(folder.apply(&model.llama, model.llama.device())?);
    } else if args.prune_dir.is_some() {
        bail!(
            "{} is a dense bundle; drop --prune-dir",
            args.bundle.display()
        );
    }
    let task = Task::resolve(args.task.as_deref().unwrap_or(provenance.task))?;
    let mut examples = task.examples(Split::Test)?;
    if let Some(limit) = args.limit {
        examples.truncate(limit);
    }
    if examples.is_empty() {
        bail!("task {}: the test split is empty", task.name());
    }
    let labels = &header.task.labels;
    let label_ids: Vec<u32> = labels.iter().map(|l| l.token_id).collect();
    let bias: Vec<f32> = labels.iter().map(|l| l.bias).collect();
    let (prefix, suffix) = (header.task.prompt_prefix, header.task.prompt_suffix);

    let mut inputs = Vec::with_capacity(examples.len());
    let mut host_ids = Vec::with_capacity(examples.len());
    let mut gold = Vec::with_capacity(examples.len());
    for example in &examples {
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
        inputs.push(input.to_owned());
        host_ids.push(prompt_ids(&model.tokenizer, &example.prompt)?);
        gold.push(example.label.context("test example without a label")?);
    }

    let mut host_logits: Vec<Vec<f32>> = Vec::with_capacity(examples.len());
    for chunk in host_ids.chunks(16) {
        let batch = Batch::new(chunk, model.tokenizer.pad_id(), model.llama.device())?;
        let last = model.llama.last_hidden(&batch)?;
        let logits: Vec<Vec<f32>> = model.llama.logits_for(&last, &label_ids)?.to_vec2()?;
        host_logits.extend(logits);
    }

    let arena_bytes = bundle.arena_bytes(CONTEXT);
    let runtime: Vec<anyhow::Result<(Vec<u32>, Vec<f32>)>> = inputs
        .par_iter()
        .map_init(
            || vec![0u64; arena_bytes.div_ceil(8)],
            |arena, input| {
                let arena: &mut [u8] = bytemuck_bytes(arena);
                let mut session = Session::<_, CONTEXT>::new(&bundle, Portable, arena)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                session
                    .label_scores(input)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let tokens = session.tokens().to_vec();
                let logits = session
                    .label_logits()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_vec();
                Ok((tokens, logits))
            },
        )
        .collect();

    let n = examples.len();
    let (mut agree, mut host_correct, mut runtime_correct, mut token_mismatches) = (0, 0, 0, 0);
    let mut max_diff = 0f32;
    for (i, result) in runtime.into_iter().enumerate() {
        let (tokens, runtime_logits) = result?;
        if tokens != host_ids[i] {
            token_mismatches += 1;
        }
        let host_scores: Vec<f32> = host_logits[i]
            .iter()
            .zip(&bias)
            .map(|(l, b)| l + b)
            .collect();
        let runtime_scores: Vec<f32> = runtime_logits
            .iter()
            .zip(&bias)
            .map(|(l, b)| l + b)
            .collect();
        let (host_prediction, runtime_prediction) = (argmax(&host_scores), argmax(&runtime_scores));
        agree += usize::from(host_prediction == runtime_prediction);
        host_correct += usize::from(host_prediction == gold[i]);
        runtime_correct += usize::from(runtime_prediction == gold[i]);
        for (h, r) in host_logits[i].iter().zip(&runtime_logits) {
            max_diff = max_diff.max((h - r).abs());
        }
    }
    let report = json!({
        "bundle": args.bundle,
        "task": task.name(),
        "dtype": header.dtype.name(),
        "n": n,
        "agreement": agree as f64 / n as f64,
        "max_abs_logit_diff": max_diff,
        "host_accuracy": host_correct as f64 / n as f64,
        "runtime_accuracy": runtime_correct as f64 / n as f64,
        "token_id_mismatches": token_mismatches,
        "bundle_bytes": raw.len(),
        "arena_bytes": arena_bytes,
        "context": CONTEXT,
        "kernels": "portable",
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!(
        "{} on {} test ({n}): agreement {:.4}, max |Δlogit| {:.2e}, host accuracy {:.4}, runtime accuracy {:.4}, token id mismatches {token_mismatches}",
        args.bundle.display(),
        task.name(),
        report["agreement"].as_f64().unwrap_or(0.0),
        max_diff,
        report["host_accuracy"].as_f64().unwrap_or(0.0),
        report["runtime_accuracy"].as_f64().unwrap_or(0.0),
    );
    if args.json {
        println!("{report}");
    }
    Ok(())
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // u64 storage keeps the arena 8-byte aligned.
    bytemuck::cast_slice_mut(words)
}
