//! Which sub-blocks the task needs (docs/RESULTS.md, `#compression`): starting from a prune
//! folder's answer, each kept block's attention, then its MLP, is skipped alone and the plan
//! scored on the search split exactly as the search scores it (the head cross-fitted on the
//! search split, pulled toward the dense model's head at the exit; the assured accuracy of the
//! accuracy model). Then a greedy pass on the search split: the skips in order of their
//! assured accuracy, each kept while the combined plan still assures the target. The greedy
//! plan is scored once on the test split (head fitted on the first calibration examples, as
//! every test number in the report), for the record only: nothing is chosen on it.
//!
//! `cargo run --release -p whittle-host --example sub_blocks -- <prune folder> [max greedy
//! steps]` (default 12). Prints markdown tables and one JSON line; `… -- plot <JSON line file>
//! <svg>` draws the single skips from that line.

use indicatif::ProgressBar;
use whittle_boards::{BoardProfile, Dtype};
use whittle_host::calibrate::CalibrationSettings;
use whittle_host::head::LabelReading;
use whittle_host::prune::folder::GenomeFile;
use whittle_host::prune::{
    DenseReference, Evaluator, RankPlan, TaskProblem, calibrated_bank, reductions,
};
use whittle_host::search::{Genome, Levels, Problem};
use whittle_host::task::{Split, Task};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(folder) = args.first() else {
        anyhow::bail!("usage: sub_blocks <prune folder> [max greedy steps] | plot <json> <svg>");
    };
    if folder == "plot" {
        let (Some(json), Some(svg)) = (args.get(1), args.get(2)) else {
            anyhow::bail!("usage: sub_blocks plot <JSON line file> <svg>");
        };
        return plot(json, svg);
    }
    let max_steps: usize = args.get(1).map_or("12", String::as_str).parse()?;
    let genome: GenomeFile =
        serde_json::from_str(&std::fs::read_to_string(format!("{folder}/genome.json"))?)?;

    let task = Task::resolve("sst2")?;
    let base = whittle_host::model::BaseModel::open_default()?;
    let progress = ProgressBar::hidden();
    let cache = whittle_boards::default_cache_dir();
    let config = *base.model.llama.config();
    let levels = Levels::new(genome.levels.clone())?;
    let plan = Genome(genome.genome.clone()).to_plan(&config, &levels)?;
    let (bank, _) = calibrated_bank(
        &base,
        &task,
        &CalibrationSettings::default(),
        &cache,
        4096,
        &progress,
    )?;
    let head_examples = 4096;
    let search = Evaluator::new(&base.model, &task, Split::Search, head_examples, 4096)?
        .with_reading(LabelReading::Head, true);
    let test = Evaluator::new(&base.model, &task, Split::Test, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    let reference =
        DenseReference::load_or_compute(&base, &task, &search, &test, &cache, 4096, &progress)?;
    let board = BoardProfile::resolve("jetson-orin")?;
    eprintln!("building the problem (the accuracy model's probes take minutes)");
    let mut problem = TaskProblem::new(
        bank.clone(),
        search,
        Some(&reference),
        levels,
        board,
        Dtype::Q8,
        Some(2),
        None,
        &progress,
    )?;
    let target = 0.95 * problem.dense_accuracy();
    let reduction = |plan: &RankPlan| reductions(&config, plan, None).linear_reduction;
    let (_, start) = problem.score_plan(&plan)?;
    eprintln!(
        "answer: exit {}, linear reduction {:.4}, search assured {:.4} (target {target:.4})",
        plan.exit(),
        reduction(&plan),
        start.assured
    );

    // Every kept sub-block skipped alone.
    let mut singles = Vec::new();
    for layer_idx in 0..plan.exit() {
        for (sub_block, skipped) in [
            (
                "attention",
                plan.clone().with_value_width(&config, layer_idx, Some(0)),
            ),
            (
                "MLP",
                plan.clone().with_mlp_width(&config, layer_idx, Some(0)),
            ),
        ] {
            let (scored, estimate) = problem.score_plan(&skipped)?;
            eprintln!(
                "block {layer_idx} {sub_block} skipped: search {:.4}, assured {:.4}, linear reduction {:.4}",
                scored.accuracy,
                estimate.assured,
                reduction(&skipped)
            );
            singles.push((layer_idx, sub_block, estimate.assured, reduction(&skipped)));
        }
    }
    println!("| block | attention skipped: assured | MLP skipped: assured |");
    println!("|---|---|---|");
    for pair in singles.chunks(2) {
        if let [(layer_idx, _, attention, _), (_, _, mlp, _)] = pair {
            println!("| {layer_idx} | {attention:.4} | {mlp:.4} |");
        }
    }

    // Greedy: the least harmful skips first, each kept while the target is assured.
    let mut order = singles.clone();
    order.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut greedy = plan.clone();
    let mut taken = Vec::new();
    for &(layer_idx, sub_block, single, _) in order.iter().take(max_steps) {
        if single < target {
            break;
        }
        let candidate = match sub_block {
            "attention" => greedy.clone().with_value_width(&config, layer_idx, Some(0)),
            _ => greedy.clone().with_mlp_width(&config, layer_idx, Some(0)),
        };
        let (_, estimate) = problem.score_plan(&candidate)?;
        let kept = estimate.assured >= target;
        eprintln!(
            "greedy: + block {layer_idx} {sub_block}: assured {:.4}, linear reduction {:.4}{}",
            estimate.assured,
            reduction(&candidate),
            if kept { "" } else { " (refused)" }
        );
        if kept {
            greedy = candidate;
            taken.push(format!("{layer_idx} {sub_block}"));
        }
    }
    let (greedy_scored, greedy_estimate) = problem.score_plan(&greedy)?;
    let pruned = bank.apply(&base.model.llama, &greedy)?;
    let tested = test.score(&pruned, &progress)?;
    println!(
        "\ngreedy plan: skips {taken:?}; linear reduction {:.4} (answer {:.4}); search {:.4}, assured {:.4} (target {target:.4}); test {:.4}",
        reduction(&greedy),
        reduction(&plan),
        greedy_scored.accuracy,
        greedy_estimate.assured,
        tested.accuracy
    );
    let json = serde_json::json!({
        "answer_reduction": reduction(&plan),
        "answer_assured": start.assured,
        "target": target,
        "singles": singles.iter().map(|(l, s, a, r)| serde_json::json!({"block": l, "sub_block": s, "assured": a, "linear_reduction": r})).collect::<Vec<_>>(),
        "greedy_skips": taken,
        "greedy_reduction": reduction(&greedy),
        "greedy_search": greedy_scored.accuracy,
        "greedy_assured": greedy_estimate.assured,
        "greedy_test": tested.accuracy,
    });
    println!("{json}");
    Ok(())
}

/// The single skips of a saved JSON line as an SVG: assured search accuracy per block, one line
/// for the attention and one for the MLP, against the answer's and the target.
fn plot(json: &str, svg: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(json)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow::anyhow!("{json} has no JSON line"))?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    let number = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let singles = value["singles"].as_array().cloned().unwrap_or_default();
    let series = ["attention", "MLP"].map(|sub_block| whittle_host::plot::Series {
        name: format!("block's {sub_block} skipped"),
        points: singles
            .iter()
            .filter(|s| s["sub_block"] == sub_block)
            .map(|s| (number(s, "block"), number(s, "assured").max(0.5)))
            .collect(),
    });
    whittle_host::plot::line_chart_svg(
        std::path::Path::new(svg),
        "SST-2: one sub-block of the default answer skipped (search split, assured)",
        "block",
        "assured search accuracy (floored at 0.5)",
        &series,
        &[
            ("the answer".to_owned(), number(&value, "answer_assured")),
            ("target 0.95 × dense".to_owned(), number(&value, "target")),
        ],
    )
}
