//! Accuracy at fixed pruning plans against the calibration-statistics size (issue 14, lever 2):
//! the evidence the default `DEFAULT_CALIBRATION_TOKENS` is decided from.
//!
//! For each token budget N the statistics and the factor bank are built (or read from the
//! cache) with the settings the CLI uses by default but `max_tokens: N`, and two fixed plans
//! are scored on SST-2 through a task head fitted on the first calibration examples:
//!
//! - `exit16-mlp1224`: the default prune answer, the first 16 blocks kept, every kept MLP at
//!   1,224 neurons, attention dense; scored on the search split (where the default is decided)
//!   and on the test split (reported only, never used to decide);
//! - `mlp1072`: every block kept, every MLP at 1,072 neurons (keep 0.7), attention dense;
//!   search split only.
//!
//! `cargo run --release -p whittle-host --example calibration_size -- [budgets] [head examples]
//! [out folder]` (defaults `16384,65536,262144`, 4096 and `/work/runs/calib-size`). Prints a
//! markdown table and writes every measurement to `results.json` in the out folder (rewritten
//! after each budget, so an interrupted run keeps what it measured).

use std::time::Instant;

use indicatif::ProgressBar;
use whittle_host::calibrate::CalibrationSettings;
use whittle_host::head::LabelReading;
use whittle_host::model;
use whittle_host::prune::{Evaluator, FactorBank, RankPlan, calibrated_bank, reductions};
use whittle_host::task::{Split, Task};
use whittle_runtime::ModelConfig;

/// One plan scored with the statistics of one budget.
#[derive(serde::Serialize)]
struct Row {
    budget_tokens: usize,
    counted_tokens: u64,
    plan: String,
    linear_reduction: f64,
    search_accuracy: f64,
    search_gold_log_prob: f64,
    test_accuracy: Option<f64>,
    test_gold_log_prob: Option<f64>,
    /// Mean over the kept blocks of the relative output error of the MLP at the plan's width
    /// on the budget's own calibration statistics (`FactorBank::neuron_error_curve`).
    neuron_calibration_error: f64,
    /// Seconds scoring this plan (search and, where measured, test).
    score_seconds: f64,
    /// Seconds the statistics and the bank took for this budget (cache reads included).
    bank_seconds: f64,
}

/// A named fixed plan and whether its test split is scored.
struct Fixed {
    name: &'static str,
    plan: RankPlan,
    test: bool,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let budgets: Vec<usize> = args
        .first()
        .map_or("16384,65536,262144", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let head_examples: usize = args.get(1).map_or("4096", String::as_str).parse()?;
    let out = std::path::PathBuf::from(args.get(2).map_or("/work/runs/calib-size", String::as_str));
    std::fs::create_dir_all(&out)?;

    let task = Task::resolve("sst2")?;
    let opened = model::BaseModel::open_default()?;
    let base = &opened.model;
    let config = *base.llama.config();
    let progress = ProgressBar::hidden();
    let cache = whittle_boards::default_cache_dir();
    let plans = fixed_plans(&config);

    let search = Evaluator::new(base, &task, Split::Search, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    let test = Evaluator::new(base, &task, Split::Test, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    eprintln!(
        "sst2: {} search, {} test examples; heads fitted on the first {head_examples} calibration examples; cache {}",
        search.len(),
        test.len(),
        cache.display()
    );
    let started = Instant::now();
    let dense = search.score(&base.llama, &progress)?;
    eprintln!(
        "dense: search accuracy {:.4}, gold log-prob {:.4} ({:.0} s)",
        dense.accuracy,
        dense.gold_log_prob,
        started.elapsed().as_secs_f64()
    );

    let mut rows: Vec<Row> = Vec::new();
    for &budget in &budgets {
        let settings = CalibrationSettings {
            max_tokens: budget,
            ..CalibrationSettings::default()
        };
        let started = Instant::now();
        let (bank, counted) = calibrated_bank(&opened, &task, &settings, &cache, 4096, &progress)?;
        let bank_seconds = started.elapsed().as_secs_f64();
        eprintln!("N = {budget}: {counted} tokens counted, bank in {bank_seconds:.0} s");
        for fixed in &plans {
            let started = Instant::now();
            let pruned = bank.apply(&base.llama, &fixed.plan)?;
            let searched = search.score(&pruned, &progress)?;
            let tested = if fixed.test {
                Some(test.score(&pruned, &progress)?)
            } else {
                None
            };
            let row = Row {
                budget_tokens: budget,
                counted_tokens: counted,
                plan: fixed.name.to_owned(),
                linear_reduction: reductions(&config, &fixed.plan, None).linear_reduction,
                search_accuracy: searched.accuracy,
                search_gold_log_prob: searched.gold_log_prob,
                test_accuracy: tested.as_ref().map(|t| t.accuracy),
                test_gold_log_prob: tested.as_ref().map(|t| t.gold_log_prob),
                neuron_calibration_error: neuron_error(&bank, &config, &fixed.plan),
                score_seconds: started.elapsed().as_secs_f64(),
                bank_seconds,
            };
            eprintln!(
                "N = {budget} · {}: search {:.4} (gold log-prob {:.4}), test {}, neuron error {:.4}, {:.0} s",
                row.plan,
                row.search_accuracy,
                row.search_gold_log_prob,
                row.test_accuracy
                    .map_or("—".to_owned(), |a| format!("{a:.4}")),
                row.neuron_calibration_error,
                row.score_seconds
            );
            rows.push(row);
        }
        let json = serde_json::json!({
            "task": task.name(),
            "head_examples": head_examples,
            "search_n": search.len(),
            "test_n": test.len(),
            "dense_search_accuracy": dense.accuracy,
            "dense_search_gold_log_prob": dense.gold_log_prob,
            "budgets": budgets,
            "rows": rows,
        });
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
    }

    println!(
        "| N | counted tokens | plan | linear reduction | search acc | search gold log-prob | test acc | neuron error | seconds (bank + score) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1}% | {:.4} | {:.4} | {} | {:.4} | {:.0} + {:.0} |",
            r.budget_tokens,
            r.counted_tokens,
            r.plan,
            100.0 * r.linear_reduction,
            r.search_accuracy,
            r.search_gold_log_prob,
            r.test_accuracy
                .map_or("—".to_owned(), |a| format!("{a:.4}")),
            r.neuron_calibration_error,
            r.bank_seconds,
            r.score_seconds
        );
    }
    Ok(())
}

/// The two fixed plans: the default prune answer, and every MLP at keep 0.7.
fn fixed_plans(config: &ModelConfig) -> Vec<Fixed> {
    let widths = |plan: RankPlan, blocks: usize, width: usize| {
        (0..blocks).fold(plan, |plan, layer_idx| {
            plan.with_mlp_width(config, layer_idx, Some(width))
        })
    };
    vec![
        Fixed {
            name: "exit16-mlp1224",
            plan: widths(RankPlan::dense(config).with_exit(16), 16, 1224),
            test: true,
        },
        Fixed {
            name: "mlp1072",
            plan: widths(RankPlan::dense(config), config.n_layers, 1072),
            test: false,
        },
    ]
}

/// Mean over the plan's kept blocks of the MLP's calibration output error at its width (NaN
/// where a curve is missing; dense MLPs count as zero).
fn neuron_error(bank: &FactorBank, config: &ModelConfig, plan: &RankPlan) -> f64 {
    let kept = plan.exit().min(config.n_layers);
    let total: f64 = (0..kept)
        .map(|layer_idx| match plan.mlp_width(layer_idx) {
            Some(width) => bank
                .neuron_error_curve(layer_idx)
                .and_then(|curve| curve.get(width).copied())
                .unwrap_or(f64::NAN),
            None => 0.0,
        })
        .sum();
    total / kept.max(1) as f64
}
