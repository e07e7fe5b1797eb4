use clap::Args;
use whittle_host::eval::{EvalOptions, evaluate};
use whittle_host::model;
use whittle_host::task::{Split, Task};

use super::{ModelArgs, progress_bar};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A built-in task (sst2, pubmedqa, boolq, xquad, wikitext2) or a task file (.toml).
    #[arg(long)]
    task: String,
    /// calibration, search or test.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Evaluate only the first N examples of each split used.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Report raw accuracy only: skip fitting the per-label bias on the calibration split.
    #[arg(long)]
    no_label_bias: bool,
    /// Upper bound on padded tokens per forward batch.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let task = Task::resolve(&args.task)?;
    let path = args.model.resolve()?;
    let device = model::device(args.model.cuda)?;
    let loaded = model::load(&path, &device)?;
    let options = EvalOptions {
        limit: args.limit,
        label_bias: !args.no_label_bias,
        batch_tokens: args.batch_tokens.max(1),
    };
    let progress = progress_bar();
    let report = evaluate(&loaded, &task, args.split, &options, &progress)?;
    progress.finish_and_clear();
    println!(
        "task {} · split {} · n = {} · {} = {:.4} · {} tokens in {:.1} s ({:.0} tok/s)",
        report.task,
        report.split,
        report.n,
        report.metric,
        report.value,
        report.tokens,
        report.seconds,
        report.tokens_per_second
    );
    if let Some(raw) = report.details.get("accuracy_uncalibrated") {
        println!("accuracy without the label bias = {raw:.4}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
