//! `whittle uniform --task T`: the uniform baseline — the smallest single keep fraction whose
//! search-split accuracy stays within ε of dense — with anchored refit on by default.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use whittle_host::calibrate::calibration_sequences;
use whittle_host::factorize::Method;
use whittle_host::prune::{
    Evaluator, FactorBank, RankPlan, Reductions, UniformResult, anchored_refit, reductions,
    uniform_search,
};
use whittle_host::task::{Split, Task};

use super::session::{CalibrationArgs, RefitArgs, calibrate, open_base};
use super::{ModelArgs, progress_bar};

#[derive(Debug, Args)]
pub struct UniformArgs {
    /// A built-in classification task or a task file (.toml).
    #[arg(long)]
    task: String,
    /// Relative accuracy tolerance: the target is (1 − ε) · dense accuracy on the search split.
    #[arg(long, default_value_t = 0.05)]
    epsilon: f64,
    #[command(flatten)]
    refit: RefitArgs,
    /// Calibration examples each candidate fits its label bias on.
    #[arg(long, default_value_t = 128)]
    bias_examples: usize,
    /// Factorization method.
    #[arg(long, default_value = "output_aligned")]
    method: Method,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Serialize)]
struct Report {
    task: String,
    method: &'static str,
    epsilon: f64,
    refit: bool,
    search: UniformResult,
    dense_test_accuracy: f64,
    test_accuracy: f64,
    test_accuracy_uncalibrated: f64,
    reductions: Reductions,
    calibration_tokens: u64,
    seconds: f64,
}

pub fn run(args: UniformArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !(args.epsilon > 0.0 && args.epsilon < 1.0) {
        anyhow::bail!(
            "--epsilon {} is outside (0, 1); e.g. 0.05 for 5%",
            args.epsilon
        );
    }
    let task = Task::resolve(&args.task)?;
    let session = open_base(&args.model)?;
    let base = &session.model;
    let config = *base.llama.config();
    let calibration = calibrate(&session, &task, &args.calibration, "calibration")?;
    let progress = progress_bar();
    let bank = FactorBank::build(&base.llama, &calibration, args.method, &progress)?;
    let batch_tokens = args.calibration.batch_tokens.max(1);
    let mut refit_settings = args.calibration.settings("calibration")?;
    refit_settings.max_tokens = args.refit.refit_tokens;
    let refit_sequences = calibration_sequences(base, &task, &refit_settings)?;
    let build = |plan: &RankPlan| -> anyhow::Result<_> {
        let pruned = bank.apply(&base.llama, plan)?;
        if args.refit.no_refit {
            return Ok(pruned);
        }
        anchored_refit(
            &base.llama,
            &pruned,
            plan,
            &refit_sequences,
            base.tokenizer.pad_id(),
            batch_tokens,
            args.refit.refit_anchor,
            &progress,
        )
    };
    let evaluator = Evaluator::new(base, &task, Split::Search, args.bias_examples, batch_tokens)?;
    let dense = evaluator.score(&base.llama, &progress)?;
    let mut accuracy_at = |keep: f64| -> anyhow::Result<f64> {
        let candidate = build(&RankPlan::uniform(&config, keep))?;
        let accuracy = evaluator.score(&candidate, &progress)?.accuracy;
        progress.suspend(|| eprintln!("uniform keep {keep:.2}: search accuracy {accuracy:.4}"));
        Ok(accuracy)
    };
    let result = uniform_search(
        &whittle_host::prune::keep_grid(),
        args.epsilon,
        dense.accuracy,
        &mut accuracy_at,
    )?;
    let plan = RankPlan::uniform(&config, result.keep);
    let chosen = build(&plan)?;
    let test = Evaluator::new(base, &task, Split::Test, args.bias_examples, batch_tokens)?;
    let dense_test = test.score(&base.llama, &progress)?;
    let pruned_test = test.score(&chosen, &progress)?;
    progress.finish_and_clear();
    let reductions = reductions(&config, &plan, Some(task.labels().len()));
    println!(
        "task {} · ε = {} · refit {} · dense search accuracy {:.4} → target {:.4}",
        task.name(),
        args.epsilon,
        if args.refit.no_refit { "off" } else { "on" },
        result.dense_accuracy,
        result.target_accuracy
    );
    println!(
        "uniform keep {:.2}: search accuracy {:.4}; test accuracy {:.4} (dense {:.4})",
        result.keep, result.accuracy, pruned_test.accuracy, dense_test.accuracy
    );
    println!(
        "linear reduction {:.1}% · total reduction {:.1}% · f32 weights {:.1} MB · bytes/token {:.1} MB ({:.1} MB with a task head)",
        100.0 * reductions.linear_reduction,
        100.0 * reductions.total_reduction,
        reductions.weight_bytes_f32 as f64 / 1e6,
        reductions.bytes_per_token_f32 as f64 / 1e6,
        reductions.bytes_per_token_f32_task_head.unwrap_or(0) as f64 / 1e6,
    );
    let report = Report {
        task: task.name().to_owned(),
        method: args.method.name(),
        epsilon: args.epsilon,
        refit: !args.refit.no_refit,
        search: result,
        dense_test_accuracy: dense_test.accuracy,
        test_accuracy: pruned_test.accuracy,
        test_accuracy_uncalibrated: pruned_test.accuracy_uncalibrated,
        reductions,
        calibration_tokens: calibration.n_tokens,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.report {
        whittle_boards::files::write_atomically(path, json.as_bytes())?;
    }
    if args.json {
        println!("{json}");
    }
    Ok(())
}
