//! The generation tasks with the new units (docs/RESULTS.md, `#compression`): for each task,
//! the dense model, uniform factor pairs at one keep fraction, and the same with every MLP
//! pruned by neurons instead (attention as factor pairs), on the whole test split. No early
//! exit: a generation task reads the full vocabulary after the last block.
//!
//! `cargo run --release -p whittle-host --example units_generation -- [tasks] [keep]`
//! (defaults `xquad,wikitext2` and 0.9). Each task calibrates on its own calibration split
//! (cached as `prune` caches it). Prints a markdown table and one JSON line.

use indicatif::ProgressBar;
use whittle_host::calibrate::CalibrationSettings;
use whittle_host::eval::{EvalOptions, evaluate};
use whittle_host::model;
use whittle_host::prune::{RankPlan, calibrated_bank, reductions};
use whittle_host::search::width_for_keep;
use whittle_host::task::{Split, Task};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks = args.first().map_or("xquad,wikitext2", String::as_str);
    let keep: f64 = args.get(1).map_or("0.9", String::as_str).parse()?;
    let opened = model::BaseModel::open_default()?;
    let base = &opened.model;
    let config = *base.llama.config();
    let progress = ProgressBar::hidden();
    let cache = whittle_boards::default_cache_dir();
    let factor_plan = RankPlan::uniform(&config, keep);
    let width = width_for_keep(keep, config.intermediate_size);
    let neuron_plan = (0..config.n_layers).fold(factor_plan.clone(), |plan, layer_idx| {
        plan.with_mlp_width(&config, layer_idx, width)
    });
    let mut rows = Vec::new();
    println!(
        "| task | plan | linear reduction | metric | test value | n |\n|---|---|---|---|---|---|"
    );
    for name in tasks.split(',') {
        let task = Task::resolve(name)?;
        eprintln!("{name}: calibration statistics, factor bank and neuron orders");
        let (bank, _) = calibrated_bank(
            &opened,
            &task,
            &CalibrationSettings::default(),
            &cache,
            4096,
            &progress,
        )?;
        for (label, plan) in [
            ("dense", RankPlan::dense(&config)),
            ("uniform factor pairs", factor_plan.clone()),
            (
                "+ MLP neurons (attention factor pairs)",
                neuron_plan.clone(),
            ),
        ] {
            let pruned = opened.model.with_llama(bank.apply(&base.llama, &plan)?);
            let report = evaluate(
                &pruned,
                &task,
                Split::Test,
                &EvalOptions::default(),
                &progress,
            )?;
            let reduction = reductions(&config, &plan, None).linear_reduction;
            eprintln!("{name} · {label}: {} {:.4}", report.metric, report.value);
            println!(
                "| {name} | {label} | {:.1}% | {} | {:.4} | {} |",
                100.0 * reduction,
                report.metric,
                report.value,
                report.n
            );
            rows.push(serde_json::json!({
                "task": name,
                "plan": label,
                "keep": keep,
                "linear_reduction": reduction,
                "metric": report.metric,
                "value": report.value,
                "details": report.details,
                "n": report.n,
            }));
        }
    }
    println!("{}", serde_json::json!({ "rows": rows }));
    Ok(())
}
