//! Chooses recovery's learning rate on held-out calibration data (docs/RESULTS.md, recovery):
//! the default SST-2 answer's plan (exit after block 16, every kept MLP at 1,224 neurons) is
//! recovered on the first `tokens` calibration tokens at each learning rate, and the relative
//! error of the state at the exit against the dense model's is measured on held-out calibration
//! sequences (the next eighth), before and after. No label, no search or test example is read.
//!
//! With `labels` as the third argument the objective is the dense model's label distribution
//! at each sequence's last position, read through the dense head at the exit (the cached dense
//! reference's), instead of the state at every position; both held-out losses are printed.
//!
//! `cargo run --release -p whittle-host --example recovery_probe -- [tokens] [rates]
//! [state | labels]` (defaults 16384, `3e-5,1e-4,3e-4` and `state`). Prints one line per rate
//! and one JSON line.

use indicatif::ProgressBar;
use whittle_host::calibrate::{CalibrationSettings, calibration_sequences};
use whittle_host::head::LabelReading;
use whittle_host::model;
use whittle_host::prune::{
    DenseReference, Evaluator, RankPlan, RecoverSettings, calibrated_bank, recover,
};
use whittle_host::task::{Split, Task};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens: usize = args.first().map_or("16384", String::as_str).parse()?;
    let rates: Vec<f64> = args
        .get(1)
        .map_or("3e-5,1e-4,3e-4", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let labels = args.get(2).map(String::as_str) == Some("labels");
    let opened = model::BaseModel::open_default()?;
    let task = Task::resolve("sst2")?;
    let config = *opened.model.llama.config();
    let progress = ProgressBar::hidden();
    let (bank, _) = calibrated_bank(
        &opened,
        &task,
        &CalibrationSettings::default(),
        &whittle_boards::default_cache_dir(),
        4096,
        &progress,
    )?;
    let plan = (0..16).fold(RankPlan::dense(&config).with_exit(16), |plan, layer_idx| {
        plan.with_mlp_width(&config, layer_idx, Some(1224))
    });
    let pruned = bank.apply(&opened.model.llama, &plan)?;
    let settings = CalibrationSettings {
        max_tokens: tokens + tokens / 8,
        ..CalibrationSettings::default()
    };
    let mut train = calibration_sequences(&opened.model, &task, &settings)?;
    let held_out = train.split_off(train.len() * 8 / 9);
    let head = match labels {
        true => {
            let progress = ProgressBar::hidden();
            let cache = whittle_boards::default_cache_dir();
            let search = Evaluator::new(&opened.model, &task, Split::Search, 4096, 4096)?
                .with_reading(LabelReading::Head, true);
            let test = Evaluator::new(&opened.model, &task, Split::Test, 4096, 4096)?
                .with_reading(LabelReading::Head, false);
            let reference = DenseReference::load_or_compute(
                &opened, &task, &search, &test, &cache, 4096, &progress,
            )?;
            match reference.head(plan.exit()) {
                Some(head) => Some(head.clone()),
                None => anyhow::bail!("the dense reference has no head at exit {}", plan.exit()),
            }
        }
        false => None,
    };
    let mut rows = Vec::new();
    for rate in rates {
        let (_, recovery) = recover(
            &opened.model.llama,
            &pruned,
            &plan,
            &train,
            &held_out,
            opened.model.tokenizer.pad_id(),
            RecoverSettings {
                batch_tokens: 1024,
                learning_rate: rate,
                seed: 0,
                label_head: head.as_ref(),
            },
            &progress,
        )?;
        println!(
            "lr {rate:e}: {} tokens, {} steps, held-out loss {:.5} → {:.5}, held-out label KL {:?} → {:?}, train loss {:.5} → {:.5}, {:.0} s",
            recovery.tokens,
            recovery.steps,
            recovery.held_out_loss_before,
            recovery.held_out_loss_after,
            recovery.held_out_label_kl_before,
            recovery.held_out_label_kl_after,
            recovery.first_loss,
            recovery.last_loss,
            recovery.seconds
        );
        rows.push(serde_json::json!({ "learning_rate": rate, "recovery": recovery }));
    }
    println!("{}", serde_json::json!({ "tokens": tokens, "rows": rows }));
    Ok(())
}
