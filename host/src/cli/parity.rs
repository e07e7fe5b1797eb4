//! `whittle parity --bundle B`: the runtime (this crate links it, std feature) against the
//! host model the bundle was packed from, on the task's test split: token ids, predictions
//! and label logits (`whittle_host::parity`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use whittle_boards::files::write_atomically;
use whittle_host::parity::{CONTEXT, compare, host_reference};
use whittle_host::prune::PruneFolder;
use whittle_host::task::{Split, Task};
use whittle_runtime::format::HeadRef;
use whittle_runtime::kernels::{Kernels, Portable, best};
use whittle_runtime::{AlignedBytes, Bundle};

use super::ModelArgs;
use super::session::open_base;

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
    /// Also write every example's input, predictions and label logits to this JSON file
    /// (what `examples/replay` of the runtime checks on another machine).
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// The runtime's kernels: `portable` (the exact reference, the same on every machine) or
    /// `best`, this machine's fastest, as a device runs the bundle (they may round activations
    /// to int8, `Kernels::rounds_activations`).
    #[arg(long, value_enum, default_value_t = KernelChoice::Portable)]
    kernels: KernelChoice,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KernelChoice {
    Portable,
    Best,
}

pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.record.is_some() && args.kernels != KernelChoice::Portable {
        bail!("--record writes the exact reference another machine replays; drop --kernels best");
    }
    let raw = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}; check the path", args.bundle.display()))?;
    let aligned = AlignedBytes::new(&raw);
    let bundle = Bundle::parse(aligned.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.bundle.display()))?;
    let header = bundle.header();
    let provenance = header.provenance;
    let host = open_base(&args.model)?;
    if host.digest != provenance.model_digest {
        bail!(
            "{} was packed from a model with sha256 {}, but the given model has {}; pass the same --model",
            args.bundle.display(),
            provenance.model_digest,
            host.digest
        );
    }
    let mut model = host.model.clone();
    let mut head = None;
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
        // The folder's fitted head is what a task-head bundle stores; a bundle with the full
        // head reads its labels through the verbalizer rows, and so must the host.
        if matches!(header.head, HeadRef::Labels(_)) {
            head = folder.head()?;
        }
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
    let reference = host_reference(&model, &bundle, &examples, head.as_ref())?;
    let (parity, kernels) = match args.kernels {
        KernelChoice::Portable => (compare(&reference, &bundle, Portable)?, Portable.name()),
        KernelChoice::Best => (compare(&reference, &bundle, best())?, best().name()),
    };
    let n = parity.cases.len();
    let max_diff = parity.max_abs_logit_diff;
    let token_mismatches = parity.token_id_mismatches;
    let arena_bytes = parity.arena_bytes;
    if let Some(path) = &args.record {
        let cases: Vec<serde_json::Value> = parity
            .cases
            .iter()
            .map(|case| {
                json!({
                    "id": case.id,
                    "input": case.input,
                    "gold": case.gold,
                    "runtime_prediction": case.runtime_prediction,
                    "runtime_logits": case.runtime_logits,
                    "host_prediction": case.host_prediction,
                    "host_logits": case.host_logits,
                })
            })
            .collect();
        let record = json!({
            "bundle": args.bundle,
            "task": task.name(),
            "arch": std::env::consts::ARCH,
            "kernels": "portable",
            "context": CONTEXT,
            "cases": cases,
        });
        write_atomically(path, format!("{record:#}\n").as_bytes()).with_context(|| {
            format!("cannot write {}; pass a writable --record", path.display())
        })?;
    }
    let report = json!({
        "bundle": args.bundle,
        "task": task.name(),
        "dtype": header.dtype.name(),
        "n": n,
        "agreement": parity.agreement,
        "max_abs_logit_diff": max_diff,
        "host_accuracy": parity.host_accuracy,
        "runtime_accuracy": parity.runtime_accuracy,
        "token_id_mismatches": token_mismatches,
        "retokenized_agreement": parity.retokenized_agreement,
        "vocab": header.config.vocab_size,
        "source_vocab": header.tokenizer.source_vocab_size,
        "bundle_bytes": raw.len(),
        "arena_bytes": arena_bytes,
        "context": CONTEXT,
        "kernels": kernels,
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
    if let Some(share) = parity.retokenized_agreement {
        println!(
            "the trimmed vocabulary ({} of {} tokens) reads {token_mismatches} inputs in other pieces; {share:.4} of them keep the host's label (max |Δlogit| is over the others)",
            header.config.vocab_size, header.tokenizer.source_vocab_size
        );
    }
    if args.json {
        println!("{report}");
    }
    Ok(())
}
