//! `whittle pack`: a bundle from a prune folder (or the dense model) with the chosen dtype,
//! head and signature (`whittle_host::bundle::pack_to_file`).

use std::path::PathBuf;

use clap::Args;
use whittle_host::bundle::{HeadChoice, PackOptions, ProvenanceInfo, describe, pack_to_file};
use whittle_host::prune::PruneFolder;
use whittle_host::task::Task;
use whittle_host::vocab::VocabChoice;
use whittle_runtime::format::Dtype;

use super::ModelArgs;
use super::keygen::read_signing_key;
use super::session::open_base;

#[derive(Debug, Args)]
pub struct PackArgs {
    /// Output folder of `whittle prune`; without it the dense model is packed.
    #[arg(long, value_name = "DIR")]
    prune_dir: Option<PathBuf>,
    /// Task (built-in name or task file) [default: the prune folder's task].
    #[arg(long)]
    task: Option<String>,
    /// Storage type of the matrices (q4 keeps the embedding and the head at q8, and for a
    /// classification task as many block matrices as it takes for the search split's labels to
    /// agree with the f32 model on 0.98 of them).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Output head: the whole vocabulary, or the label rows only (classification)
    /// [default: `task` for a prune folder with a fitted task head (`head.json`), else `full`].
    #[arg(long, value_enum)]
    head: Option<HeadChoice>,
    /// Sign with this key (made by `whittle keygen`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Release number: a device refuses a bundle for the same task numbered below the one it
    /// has installed [default: the packing time in Unix milliseconds].
    #[arg(long, value_name = "N")]
    sequence: Option<u64>,
    /// Store no prompt prefix: every input runs the whole prompt (1.7 MB less for SmolLM2 and
    /// SST-2; slower to a label).
    #[arg(long)]
    no_prefix: bool,
    /// Vocabulary: the model's whole one, or only the tokens the task's calibration and search
    /// inputs produce (classification; an input with unseen words tokenizes into smaller kept
    /// pieces; on SST-2 a 65 MB instead of an 87 MB q8 bundle, 0.5 points less test accuracy:
    /// docs/RESULTS.md, "Task-vocabulary trimming").
    #[arg(long, value_enum, default_value = "full")]
    vocab: VocabChoice,
    /// The bundle file to write.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Upper bound on padded tokens per forward batch (label bias fit).
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: PackArgs) -> anyhow::Result<()> {
    let prune = args
        .prune_dir
        .as_deref()
        .map(PruneFolder::open)
        .transpose()?;
    let report = prune.as_ref().and_then(|p| p.report.as_ref());
    let task_name = match (&args.task, report) {
        (Some(task), _) => task.clone(),
        (None, Some(report)) => report.task.clone(),
        (None, None) => anyhow::bail!(
            "pass --task (a built-in name or a task file); without a readable report.json in the prune folder the task is unknown"
        ),
    };
    let task = Task::resolve(&task_name)?;
    let base = open_base(&args.model)?;
    let model = match &prune {
        Some(prune) => base
            .model
            .with_llama(prune.apply(&base.model.llama, base.model.llama.device())?),
        None => base.model.clone(),
    };
    let provenance = match report {
        Some(report) => ProvenanceInfo {
            board: report.board.clone(),
            epsilon: Some(report.epsilon),
            seed: Some(report.seed),
            dense_accuracy: Some(report.dense_test_accuracy),
            pruned_accuracy: Some(report.searched.test_accuracy),
            ..ProvenanceInfo::default()
        },
        None => ProvenanceInfo::default(),
    };
    let has_head = match &prune {
        Some(prune) => prune.head()?.is_some(),
        None => false,
    };
    let head = args.head.unwrap_or(if has_head {
        HeadChoice::Task
    } else {
        HeadChoice::Full
    });
    let options = PackOptions {
        matrix_dtypes: Vec::new(),
        dtype: args.dtype,
        head,
        signing_key: args.sign.as_deref().map(read_signing_key).transpose()?,
        provenance,
        sequence: args.sequence,
        store_prefix: !args.no_prefix,
        vocab: args.vocab,
    };
    let packed = pack_to_file(
        &base,
        &model,
        &task,
        prune.as_ref(),
        options,
        args.batch_tokens,
        &args.out,
    )?;
    println!("{}", describe(&packed, head, &args.out));
    Ok(())
}
