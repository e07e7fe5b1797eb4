//! Diagnostic: per-example label scores of the dense model and of the Full-evaluated genomes of
//! a finished search, on the calibration, search and test splits, written as JSON for offline
//! study of which search-split statistic predicts test accuracy (`cargo run --release -p
//! whittle-host --example selection_probe -- CHECKPOINT OUT.json [task] [top N]`).

use indicatif::ProgressBar;
use whittle_host::calibrate::CalibrationSettings;
use whittle_host::eval::{LabelTokens, score_labels};
use whittle_host::model;
use whittle_host::prune::calibrated_bank;
use whittle_host::search::Checkpoint;
use whittle_host::task::{Split, Task};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let checkpoint = Checkpoint::read(std::path::Path::new(&arg(0, "checkpoint.json")))?;
    let out = arg(1, "selection.json");
    let task = Task::resolve(&arg(2, "sst2"))?;
    let top: usize = arg(3, "12").parse()?;
    let opened = model::BaseModel::open_default()?;
    let progress = ProgressBar::hidden();
    let (bank, _) = calibrated_bank(
        &opened,
        &task,
        &CalibrationSettings::default(),
        &whittle_boards::default_cache_dir(),
        4096,
        &progress,
    )?;
    let base = &opened.model;
    let config = *base.llama.config();
    let labels = LabelTokens::new(&base.tokenizer, task.labels())?;
    let mut records: Vec<_> = checkpoint
        .state
        .cache
        .iter()
        .filter_map(|(genome, cached)| cached.full.map(|f| (genome.clone(), f)))
        .collect();
    records.sort_by(|a, b| b.1.accuracy.total_cmp(&a.1.accuracy));
    records.truncate(top);
    let splits = [Split::Calibration, Split::Search, Split::Test];
    let examples: Vec<_> = splits
        .iter()
        .map(|&s| task.examples(s))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (genome, full) in records {
        let started = std::time::Instant::now();
        let plan = genome.to_plan(&config, &checkpoint.config.levels)?;
        let candidate = base.with_llama(bank.apply(&base.llama, &plan)?);
        let mut per_split = serde_json::Map::new();
        for (split, examples) in splits.iter().zip(&examples) {
            let (scores, _) = score_labels(&candidate, examples, &labels, 4096, &progress)?;
            per_split.insert(
                split.to_string(),
                serde_json::json!({"scores": scores.scores, "gold": scores.gold}),
            );
        }
        eprintln!(
            "genome sum {} search acc {:.4} in {:.0} s",
            genome
                .levels()
                .iter()
                .map(|&l| usize::from(l))
                .sum::<usize>(),
            full.accuracy,
            started.elapsed().as_secs_f64()
        );
        rows.push(serde_json::json!({
            "genome": genome.levels(),
            "search_accuracy": full.accuracy,
            "signal": full.signal,
            "splits": per_split,
        }));
    }
    std::fs::write(&out, serde_json::to_string(&rows)?)?;
    Ok(())
}
