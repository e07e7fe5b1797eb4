//! Diagnostic: search-split accuracy of one uniform plan with the plain factors and with the
//! anchored refit under several settings (`cargo run --release -p whittle-host --example
//! refit_probe -- [task] [keep] [refit tokens] [anchor,...] [wikitext share]`).

use indicatif::ProgressBar;
use whittle_host::calibrate::{CalibrationSettings, calibration_sequences};
use whittle_host::model;
use whittle_host::prune::{Evaluator, RankPlan, anchored_refit, calibrated_bank};
use whittle_host::task::{Split, Task};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let task = Task::resolve(&arg(0, "sst2"))?;
    let keep: f64 = arg(1, "0.9").parse()?;
    let refit_tokens: usize = arg(2, "8192").parse()?;
    let anchors: Vec<f64> = arg(3, "0")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let wikitext_share: f64 = arg(4, "0").parse()?;
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
    let plan = RankPlan::uniform(&config, keep);
    let pruned = bank.apply(&base.llama, &plan)?;
    let evaluator = Evaluator::new(base, &task, Split::Search, 128, 4096)?;
    let dense = evaluator.score(&base.llama, &progress)?.accuracy;
    let plain = evaluator.score(&pruned, &progress)?;
    println!(
        "{} keep {keep}: dense {dense:.4}, plain {:.4} (gold log-prob {:.4})",
        task.name(),
        plain.accuracy,
        plain.gold_log_prob
    );
    let refit_settings = CalibrationSettings {
        max_tokens: refit_tokens,
        wikitext_share,
        ..CalibrationSettings::default()
    };
    let sequences = calibration_sequences(base, &task, &refit_settings)?;
    for anchor in anchors {
        let started = std::time::Instant::now();
        let refit = anchored_refit(
            &base.llama,
            &pruned,
            &plan,
            &sequences,
            base.tokenizer.pad_id(),
            4096,
            anchor,
            &progress,
        )?;
        let scored = evaluator.score(&refit, &progress)?;
        println!(
            "refit tokens {refit_tokens} wikitext {wikitext_share} anchor {anchor}: {:.4} (gold log-prob {:.4}) in {:.0} s",
            scored.accuracy,
            scored.gold_log_prob,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
