//! `whittle sweep --task T --svg FILE`: accuracy against a uniform keep fraction for several
//! factorization methods (no refit: it compares the decompositions themselves).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use whittle_host::factorize::Method;
use whittle_host::plot::{Series, line_chart_svg};
use whittle_host::prune::{Evaluator, FactorBank, RankPlan, reductions};
use whittle_host::task::{Split, Task};

use super::session::{CalibrationArgs, calibrate, open_base};
use super::{ModelArgs, progress_bar};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A built-in classification task or a task file (.toml).
    #[arg(long)]
    task: String,
    /// Methods to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "output_aligned,svd,input_pca"
    )]
    methods: Vec<Method>,
    /// Keep fractions to evaluate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"
    )]
    keeps: Vec<f64>,
    /// Split whose accuracy is plotted.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Calibration examples each candidate fits its label bias on.
    #[arg(long, default_value_t = 128)]
    bias_examples: usize,
    /// Where to write the figure.
    #[arg(long, value_name = "PATH")]
    svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Serialize)]
struct Point {
    method: &'static str,
    keep: f64,
    linear_reduction: f64,
    accuracy: f64,
    accuracy_uncalibrated: f64,
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    if let Some(bad) = args.keeps.iter().find(|k| !(**k > 0.0 && **k <= 1.0)) {
        anyhow::bail!("keep fraction {bad} is outside (0, 1]");
    }
    let task = Task::resolve(&args.task)?;
    let session = open_base(&args.model)?;
    let base = &session.model;
    let config = *base.llama.config();
    let calibration = calibrate(&session, &task, &args.calibration, "calibration")?;
    let batch_tokens = args.calibration.batch_tokens.max(1);
    let evaluator = Evaluator::new(base, &task, args.split, args.bias_examples, batch_tokens)?;
    let progress = progress_bar();
    let dense = evaluator.score(&base.llama, &progress)?;
    let mut points = Vec::new();
    let mut series = Vec::new();
    for &method in &args.methods {
        let bank = FactorBank::build(&base.llama, &calibration, method, &progress)?;
        let mut line = Vec::new();
        for &keep in &args.keeps {
            let plan = RankPlan::uniform(&config, keep);
            let scored = evaluator.score(&bank.apply(&base.llama, &plan)?, &progress)?;
            let linear_reduction = reductions(&config, &plan, None).linear_reduction;
            progress.suspend(|| {
                eprintln!(
                    "{} keep {keep:.2} (linear reduction {:.1}%): accuracy {:.4}",
                    method.name(),
                    100.0 * linear_reduction,
                    scored.accuracy
                )
            });
            line.push((keep, scored.accuracy));
            points.push(Point {
                method: method.name(),
                keep,
                linear_reduction,
                accuracy: scored.accuracy,
                accuracy_uncalibrated: scored.accuracy_uncalibrated,
            });
        }
        series.push(Series {
            name: method.name().to_owned(),
            points: line,
        });
    }
    progress.finish_and_clear();
    line_chart_svg(
        &args.svg,
        &format!(
            "{}: {} accuracy vs uniform keep fraction (no refit)",
            task.name(),
            args.split
        ),
        "keep fraction (every matrix)",
        "accuracy (label bias fitted per model)",
        &series,
        &[("dense".to_owned(), dense.accuracy)],
    )?;
    println!("figure written to {}", args.svg.display());
    if args.json {
        let report = serde_json::json!({
            "task": task.name(),
            "split": args.split.to_string(),
            "dense_accuracy": dense.accuracy,
            "points": points,
            "svg": args.svg,
        });
        println!("{report}");
    }
    Ok(())
}
