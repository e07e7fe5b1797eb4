//! `whittle pack`: a bundle from a prune folder (or the dense model) with the chosen dtype,
//! head and signature; `prune` calls [`write_prune_bundle`] for its default bundle.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use whittle_host::bundle::{
    HeadChoice, PackOptions, Packed, ProvenanceInfo, PruneFolder, fit_label_bias, pack,
    tokenizer_tables,
};
use whittle_host::gguf::GgufFile;
use whittle_host::model::LoadedModel;
use whittle_host::plot::write_atomically;
use whittle_host::task::{Metric, Task};
use whittle_runtime::format::Dtype;

use super::keygen::read_signing_key;
use super::session::Session;
use super::{ModelArgs, progress_bar};

#[derive(Debug, Args)]
pub struct PackArgs {
    /// Output folder of `whittle prune`; without it the dense model is packed.
    #[arg(long, value_name = "DIR")]
    prune_dir: Option<PathBuf>,
    /// Task (built-in name or task file) [default: the prune folder's task].
    #[arg(long)]
    task: Option<String>,
    /// Storage type of every matrix.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Output head: the whole vocabulary, or the label rows only (classification).
    #[arg(long, value_enum, default_value = "full")]
    head: HeadChoice,
    /// Sign with this key (made by `whittle keygen`).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// The bundle file to write.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Upper bound on padded tokens per forward batch (label bias fit).
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    #[command(flatten)]
    model: ModelArgs,
}

/// Packs `model` (the base, or the base with `prune`'s factors) for `task` into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_bundle_file(
    model_path: &Path,
    model_digest: &str,
    model: &LoadedModel,
    task: &Task,
    prune: Option<&PruneFolder>,
    mut provenance: ProvenanceInfo,
    dtype: Dtype,
    head: HeadChoice,
    sign: Option<&Path>,
    batch_tokens: usize,
    out: &Path,
) -> anyhow::Result<Packed> {
    let gguf = GgufFile::open(model_path)?;
    let tables = tokenizer_tables(&gguf, &model.tokenizer)?;
    let progress = progress_bar();
    progress.set_message(format!("{} calibration (label bias)", task.name()));
    let bias = match task.metric() {
        Metric::Accuracy => fit_label_bias(model, task, batch_tokens.max(1), &progress)?,
        _ => Vec::new(),
    };
    progress.finish_and_clear();
    provenance.model_digest = model_digest.to_owned();
    if let Some(prune) = prune {
        provenance.factors_digest = prune.factors_digest.clone();
        provenance.genome_digest = prune.genome_digest.clone();
        let dir = prune
            .dir
            .canonicalize()
            .unwrap_or_else(|_| prune.dir.clone());
        provenance.source = dir.display().to_string();
    }
    let signing_key = sign.map(read_signing_key).transpose()?;
    let options = PackOptions {
        dtype,
        head,
        signing_key,
        provenance,
    };
    let packed = pack(model, &tables, task, &bias, &options)?;
    write_atomically(out, &packed.bytes)
        .with_context(|| format!("cannot write {}; pass a writable --out", out.display()))?;
    Ok(packed)
}

/// One line on what was written, with the task-head saving.
pub fn describe(packed: &Packed, head: HeadChoice, out: &Path) -> String {
    let mut line = format!(
        "wrote {} ({:.2} MB)",
        out.display(),
        packed.bytes.len() as f64 / 1e6
    );
    if head == HeadChoice::Task {
        line.push_str(&format!("; task-pruned head {} bytes", packed.head_bytes));
        if packed.full_head_bytes == 0 {
            line.push_str(
                " (the full head is tied to the embedding, which the bundle keeps for the input, so the file is not smaller)",
            );
        } else {
            line.push_str(&format!(
                " instead of {} ({:.2} MB saved)",
                packed.full_head_bytes,
                (packed.full_head_bytes.saturating_sub(packed.head_bytes)) as f64 / 1e6
            ));
        }
    }
    line
}

fn report_f64(report: &Option<serde_json::Value>, pointer: &str) -> Option<f64> {
    report
        .as_ref()
        .and_then(|r| r.pointer(pointer))
        .and_then(|v| v.as_f64())
}

pub fn run(args: PackArgs) -> anyhow::Result<()> {
    let prune = args
        .prune_dir
        .as_deref()
        .map(PruneFolder::open)
        .transpose()?;
    let report = prune.as_ref().and_then(|p| p.report.clone());
    let task_name = match (&args.task, &report) {
        (Some(task), _) => task.clone(),
        (None, Some(report)) => report["task"]
            .as_str()
            .map(str::to_owned)
            .context("the prune folder's report.json names no task; pass --task")?,
        (None, None) => anyhow::bail!("pass --task (a built-in name or a task file)"),
    };
    let task = Task::resolve(&task_name)?;
    let model_path = args.model.resolve()?;
    let session = Session::open(&args.model)?;
    let model = match &prune {
        Some(prune) => session
            .model
            .with_llama(prune.apply(&session.model.llama, session.model.llama.device())?),
        None => session.model.clone(),
    };
    let provenance = ProvenanceInfo {
        board: report
            .as_ref()
            .and_then(|r| r["board"].as_str())
            .unwrap_or_default()
            .to_owned(),
        epsilon: report_f64(&report, "/epsilon"),
        seed: report.as_ref().and_then(|r| r["seed"].as_u64()),
        dense_accuracy: report_f64(&report, "/dense_test_accuracy"),
        pruned_accuracy: report_f64(&report, "/searched/test_accuracy"),
        ..ProvenanceInfo::default()
    };
    let packed = write_bundle_file(
        &model_path,
        &session.digest,
        &model,
        &task,
        prune.as_ref(),
        provenance,
        args.dtype,
        args.head,
        args.sign.as_deref(),
        args.batch_tokens,
        &args.out,
    )?;
    println!("{}", describe(&packed, args.head, &args.out));
    Ok(())
}

/// The bundle `prune` writes into its output folder (`model.wbundle`, the board's dtype, full
/// head), after `factors.safetensors` and `genome.json`.
pub fn write_prune_bundle(
    session: &Session,
    model_args: &ModelArgs,
    pruned: &whittle_host::model::Llama,
    task: &Task,
    out_dir: &Path,
    provenance: ProvenanceInfo,
    dtype: Dtype,
) -> anyhow::Result<()> {
    let folder = PruneFolder::open(out_dir)?;
    let model = session.model.with_llama(pruned.clone());
    let path = out_dir.join("model.wbundle");
    let packed = write_bundle_file(
        &model_args.resolve()?,
        &session.digest,
        &model,
        task,
        Some(&folder),
        provenance,
        dtype,
        HeadChoice::Full,
        None,
        4096,
        &path,
    )?;
    println!("{}", describe(&packed, HeadChoice::Full, &path));
    Ok(())
}
