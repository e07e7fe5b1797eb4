//! The compression ablation on the test split (docs/RESULTS.md, `#compression`): test accuracy
//! at about 20, 40, 60 and 70% linear reduction for the old path and each lever added in turn:
//!
//! 1. uniform factor pairs, labels through the verbalizer and its fitted bias, 16,384
//!    calibration tokens (the path before issue 14);
//! 2. the same with the default 65,536 calibration tokens (prefix counted once);
//! 3. the same plans read through a fitted task head;
//! 4. early exit: the first blocks kept dense, read through the task head;
//! 5. MLP neurons: the same uniform levels with every MLP pruned by neurons (attention as
//!    factor pairs), read through the task head (`units` mode, which also compares the MLP
//!    alone pruned by neurons against the MLP's factor pairs at equal parameter count).
//!
//! `cargo run --release -p whittle-host --example ablation -- [head examples] [svg path]
//! [prune folder,...] [16k | exits | units | replot]` (defaults 4096 and `docs/figures/compression.svg`);
//! each prune folder's `report.json` adds its searched answer to the figure; row 1 (a second
//! factorization, minutes) only with the last argument `16k`, row 4 alone with `exits`, rows 1
//! and 3 alone with `missing`. The measurements are saved beside
//! the figure (`.json`); `replot` draws the figure and the table from them again. Prints a markdown table and one JSON
//! line. Every head is fitted on the first calibration examples, never on the test split.

use indicatif::ProgressBar;
use whittle_host::calibrate::CalibrationSettings;
use whittle_host::eval::{LabelTokens, last_states, verbalizer_rows};
use whittle_host::head::{LabelReading, fit_head};
use whittle_host::metrics;
use whittle_host::model;
use whittle_host::plot::{Series, line_chart_svg};
use whittle_host::prune::{Evaluator, FactorBank, RankPlan, calibrated_bank, reductions};
use whittle_host::search::width_for_keep;
use whittle_host::task::{Split, Task};
use whittle_runtime::MatrixKind;

/// Linear reductions of the table's columns.
const REDUCTIONS: [f64; 4] = [0.2, 0.4, 0.6, 0.7];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let head_examples: usize = args.first().map_or("4096", String::as_str).parse()?;
    let svg = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "docs/figures/compression.svg".into());
    let answers: Vec<(f64, f64)> = match args.get(2).filter(|dirs| !dirs.is_empty()) {
        Some(dirs) => dirs
            .split(',')
            .map(|dir| {
                let text = std::fs::read_to_string(format!("{dir}/report.json"))?;
                let report: whittle_host::prune::PruneReport = serde_json::from_str(&text)?;
                Ok((
                    report.searched.linear_reduction,
                    report.searched.test_accuracy,
                ))
            })
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let saved = std::path::Path::new(&svg).with_extension("json");
    let mode = args.get(3).map_or("", String::as_str);
    let measured: Measured = match mode {
        "replot" => serde_json::from_str(&std::fs::read_to_string(&saved)?)?,
        // The units rows join the saved measurements of the other levers.
        "units" => {
            let mut measured: Measured = serde_json::from_str(&std::fs::read_to_string(&saved)?)?;
            let (rows, comparison) = measure_units(head_examples)?;
            measured
                .rows
                .retain(|(name, _)| !rows.iter().any(|(n, _)| n == name));
            measured.rows.extend(rows);
            measured.units = comparison;
            std::fs::write(&saved, serde_json::to_string_pretty(&measured)?)?;
            measured
        }
        _ => {
            let mut measured = measure(head_examples, mode)?;
            // Rows and the units comparison measured before (by other modes) are kept.
            if let Ok(text) = std::fs::read_to_string(&saved) {
                let before: Measured = serde_json::from_str(&text)?;
                let kept: Vec<_> = before
                    .rows
                    .into_iter()
                    .filter(|(name, _)| !measured.rows.iter().any(|(n, _)| n == name))
                    // The session-7 points added by hand give way to a measured row.
                    .filter(|(name, _)| {
                        let remeasured = measured
                            .rows
                            .iter()
                            .any(|(n, _)| n.ends_with("verbalizer · 64k tokens"));
                        !(remeasured && name.starts_with("uniform factor pairs · verbalizer"))
                    })
                    .collect();
                measured.rows.splice(0..0, kept);
                measured.units = before.units;
                if measured.every_exit.is_empty() {
                    measured.every_exit = before.every_exit;
                    measured.dense_head = before.dense_head;
                }
            }
            std::fs::write(&saved, serde_json::to_string_pretty(&measured)?)?;
            measured
        }
    };
    report(&measured, &answers, &svg)
}

/// SST-2, the default model, a hidden progress bar and the cache folder.
fn setup() -> anyhow::Result<(Task, model::BaseModel, ProgressBar, std::path::PathBuf)> {
    Ok((
        Task::resolve("sst2")?,
        model::BaseModel::open_default()?,
        ProgressBar::hidden(),
        whittle_boards::default_cache_dir(),
    ))
}

/// What the ablation measured.
#[derive(serde::Serialize, serde::Deserialize)]
struct Measured {
    dense_verbalizer: f64,
    dense_head: f64,
    head_examples: usize,
    test_n: usize,
    /// Per path: (linear reduction, test accuracy) at the table's columns.
    rows: Vec<PathPoints>,
    /// (exit, linear reduction, test accuracy) for every exit, kept blocks dense.
    every_exit: Vec<(usize, f64, f64)>,
    /// The MLP alone at equal parameter count: factor pairs against neurons.
    #[serde(default)]
    units: Vec<UnitPoint>,
}

/// The MLPs of every block at one keep fraction, attention dense, one unit.
#[derive(serde::Serialize, serde::Deserialize)]
struct UnitPoint {
    unit: String,
    keep: f64,
    linear_reduction: f64,
    /// Mean over blocks of the relative squared output error on the calibration statistics:
    /// for neurons the MLP's output (down after the refit), for factor pairs the mean of
    /// gate's, up's and down's own outputs.
    calibration_error: f64,
    test_accuracy: f64,
}

/// A path's name and its (linear reduction, test accuracy) points.
type PathPoints = (String, Vec<(f64, f64)>);

/// Rows of the lever "MLP neurons" and the MLP-alone comparison.
fn measure_units(head_examples: usize) -> anyhow::Result<(Vec<PathPoints>, Vec<UnitPoint>)> {
    let (task, opened, progress, cache) = setup()?;
    let base = &opened.model;
    let config = *base.llama.config();
    let head = Evaluator::new(base, &task, Split::Test, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    let (bank, _) = calibrated_bank(
        &opened,
        &task,
        &CalibrationSettings::default(),
        &cache,
        4096,
        &progress,
    )?;
    let with_widths = |plan: RankPlan, keep: f64| {
        (0..config.n_layers).fold(plan, |plan, layer_idx| {
            plan.with_mlp_width(
                &config,
                layer_idx,
                width_for_keep(keep, config.intermediate_size),
            )
        })
    };
    let score = |bank: &FactorBank, plan: &RankPlan| -> anyhow::Result<(f64, f64)> {
        let pruned = bank.apply(&base.llama, plan)?;
        let accuracy = head.score(&pruned, &progress)?.accuracy;
        Ok((reductions(&config, plan, None).linear_reduction, accuracy))
    };
    let mut points = Vec::new();
    for reduction in REDUCTIONS {
        let keep = 1.0 - reduction;
        let plan = with_widths(RankPlan::uniform(&config, keep), keep);
        let (counted, accuracy) = score(&bank, &plan)?;
        eprintln!("+ MLP neurons: {counted:.3} → {accuracy:.4}");
        points.push((counted, accuracy));
    }
    let rows = vec![(
        "+ MLP neurons (attention factor pairs), task head".to_owned(),
        points,
    )];
    let mlp = [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down];
    let mut comparison = Vec::new();
    for keep in [0.9, 0.7] {
        let factor_plan =
            RankPlan::from_keeps(
                &config,
                |_, kind| if mlp.contains(&kind) { keep } else { 1.0 },
            );
        let neuron_plan = with_widths(RankPlan::dense(&config), keep);
        let width =
            width_for_keep(keep, config.intermediate_size).unwrap_or(config.intermediate_size);
        let mut factor_error = 0.0;
        let mut neuron_error = 0.0;
        for layer_idx in 0..config.n_layers {
            for kind in mlp {
                let rank = factor_plan.rank(layer_idx, kind).unwrap_or(0);
                let curve = bank.error_curve(layer_idx, kind).unwrap_or(&[]);
                factor_error += curve.get(rank).copied().unwrap_or(f64::NAN) / 3.0;
            }
            let curve = bank.neuron_error_curve(layer_idx).unwrap_or(&[]);
            neuron_error += curve.get(width).copied().unwrap_or(f64::NAN);
        }
        let n = config.n_layers as f64;
        for (unit, plan, error) in [
            ("factor pairs", &factor_plan, factor_error / n),
            ("neurons", &neuron_plan, neuron_error / n),
        ] {
            let (counted, accuracy) = score(&bank, plan)?;
            eprintln!(
                "MLP only, {unit} at keep {keep}: {counted:.3} → {accuracy:.4}, calibration error {error:.4}"
            );
            comparison.push(UnitPoint {
                unit: unit.to_owned(),
                keep,
                linear_reduction: counted,
                calibration_error: error,
                test_accuracy: accuracy,
            });
        }
    }
    Ok((rows, comparison))
}

fn measure(head_examples: usize, mode: &str) -> anyhow::Result<Measured> {
    // `missing`: the 16k verbalizer row and the task-head row alone (the rest is saved).
    let missing = mode == "missing";
    let with_16k = mode == "16k" || missing;
    let (task, opened, progress, cache) = setup()?;
    let base = &opened.model;
    let config = *base.llama.config();
    let line = |text: String| eprintln!("{text}");

    let verbalizer = Evaluator::new(base, &task, Split::Test, metrics::LABEL_BIAS_EXAMPLES, 4096)?;
    let head = Evaluator::new(base, &task, Split::Test, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    let dense_verbalizer = verbalizer.score(&base.llama, &progress)?.accuracy;
    line(format!("dense, verbalizer: {dense_verbalizer:.4}"));

    let mut rows: Vec<PathPoints> = Vec::new();
    let banks = [
        ("factor pairs · verbalizer · 16k tokens", 16_384),
        (
            "factor pairs · verbalizer · 64k tokens",
            CalibrationSettings::default().max_tokens,
        ),
    ];
    let factor_rows = if mode == "exits" { 0 } else { 2 };
    for (name, tokens) in banks
        .into_iter()
        .skip(usize::from(!with_16k))
        .take(factor_rows)
    {
        let settings = CalibrationSettings {
            max_tokens: tokens,
            ..CalibrationSettings::default()
        };
        let (bank, _) = calibrated_bank(&opened, &task, &settings, &cache, 4096, &progress)?;
        let default_tokens = tokens == CalibrationSettings::default().max_tokens;
        if !(missing && default_tokens) {
            let mut points = Vec::new();
            for reduction in REDUCTIONS {
                let plan = RankPlan::uniform(&config, 1.0 - reduction);
                let pruned = bank.apply(&base.llama, &plan)?;
                let accuracy = verbalizer.score(&pruned, &progress)?.accuracy;
                let counted = reductions(&config, &plan, None).linear_reduction;
                line(format!("{name}: {counted:.3} → {accuracy:.4}"));
                points.push((counted, accuracy));
            }
            rows.push((name.to_owned(), points));
        }
        if tokens == CalibrationSettings::default().max_tokens {
            let mut points = Vec::new();
            for reduction in REDUCTIONS {
                let plan = RankPlan::uniform(&config, 1.0 - reduction);
                let pruned = bank.apply(&base.llama, &plan)?;
                let accuracy = head.score(&pruned, &progress)?.accuracy;
                let counted = reductions(&config, &plan, None).linear_reduction;
                line(format!("+ task head: {counted:.3} → {accuracy:.4}"));
                points.push((counted, accuracy));
            }
            rows.push(("+ task head".to_owned(), points));
        }
    }

    if missing {
        return Ok(Measured {
            dense_verbalizer,
            dense_head: f64::NAN,
            head_examples,
            test_n: task.examples(Split::Test)?.len(),
            rows,
            every_exit: Vec::new(),
            units: Vec::new(),
        });
    }
    // Every exit from one pass per split: the state after each block, final-normed.
    let labels = LabelTokens::new(&base.tokenizer, task.labels())?;
    let names: Vec<String> = task.labels().iter().map(|l| l.value.clone()).collect();
    let prior = verbalizer_rows(&base.llama, &labels)?;
    let mut calibration = task.examples(Split::Calibration)?;
    calibration.truncate(head_examples);
    let (fit_states, fit_gold, _) = last_states(base, &calibration, 4096, true, &progress)?;
    let test_examples = task.examples(Split::Test)?;
    let (test_states, test_gold, _) = last_states(base, &test_examples, 4096, true, &progress)?;
    let exit_accuracy = |exit: usize| -> anyhow::Result<f64> {
        let fitted = fit_head(&fit_states[exit - 1], &fit_gold, &prior, &names)?;
        let scores = fitted.score_all(&test_states[exit - 1]);
        let predictions = metrics::predict_with_bias(&scores, &[0.0, 0.0]);
        Ok(metrics::accuracy(&predictions, &test_gold))
    };
    let dense_head = exit_accuracy(config.n_layers)?;
    line(format!("dense, task head: {dense_head:.4}"));
    let mut points = Vec::new();
    let mut every_exit = Vec::new();
    for exit in 1..=config.n_layers {
        let plan = RankPlan::dense(&config).with_exit(exit);
        let counted = reductions(&config, &plan, None).linear_reduction;
        let accuracy = exit_accuracy(exit)?;
        every_exit.push((exit, counted, accuracy));
        if REDUCTIONS
            .iter()
            .any(|r| (config.n_layers as f64 * (1.0 - r)).round() as usize == exit)
        {
            line(format!("+ early exit {exit}: {counted:.3} → {accuracy:.4}"));
            points.push((counted, accuracy));
        }
    }
    points.reverse();
    rows.push(("+ early exit (kept blocks dense)".to_owned(), points));
    Ok(Measured {
        dense_verbalizer,
        dense_head,
        head_examples,
        test_n: test_examples.len(),
        rows,
        every_exit,
        units: Vec::new(),
    })
}

fn report(measured: &Measured, answers: &[(f64, f64)], svg: &str) -> anyhow::Result<()> {
    let Measured {
        dense_verbalizer,
        dense_head,
        head_examples,
        test_n,
        rows,
        every_exit,
        units,
    } = measured;
    let (dense_verbalizer, dense_head) = (*dense_verbalizer, *dense_head);
    println!(
        "dense test accuracy: verbalizer {dense_verbalizer:.4}, task head {dense_head:.4} ({test_n} test sentences, heads fitted on {head_examples} calibration examples)\n"
    );
    println!("| path | ~20% | ~40% | ~60% | ~70% |\n|---|---|---|---|---|");
    for (name, points) in rows {
        let cells: Vec<String> = points
            .iter()
            .map(|(r, a)| format!("{a:.4} ({:.0}%)", 100.0 * r))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!("\n| exit | linear reduction | test accuracy (task head) |\n|---|---|---|");
    for (exit, counted, accuracy) in every_exit {
        println!("| {exit} | {:.1}% | {accuracy:.4} |", 100.0 * counted);
    }
    if !units.is_empty() {
        println!(
            "\n| MLP only (attention dense) | keep | linear reduction | calibration output error | test accuracy (task head) |\n|---|---|---|---|---|"
        );
        for u in units {
            println!(
                "| {} | {} | {:.1}% | {:.4} | {:.4} |",
                u.unit,
                u.keep,
                100.0 * u.linear_reduction,
                u.calibration_error,
                u.test_accuracy
            );
        }
    }
    let mut series: Vec<Series> = rows
        .iter()
        .map(|(name, points)| Series {
            name: name.clone(),
            points: points.clone(),
        })
        .collect();
    series.push(Series {
        name: "every exit, task head".into(),
        points: every_exit.iter().map(|&(_, r, a)| (r, a)).collect(),
    });
    if !answers.is_empty() {
        series.push(Series {
            name: "the search's answers".into(),
            points: answers.to_vec(),
        });
    }
    line_chart_svg(
        std::path::Path::new(svg),
        "SST-2 test accuracy against linear reduction (872 GLUE dev sentences)",
        "linear parameters removed",
        "test accuracy",
        &series,
        &[
            ("dense, task head".into(), dense_head),
            ("0.95 × dense (task head)".into(), 0.95 * dense_head),
            ("dense, verbalizer".into(), dense_verbalizer),
        ],
    )?;
    println!(
        "{}",
        serde_json::json!({ "measured": measured, "answers": answers })
    );
    Ok(())
}
