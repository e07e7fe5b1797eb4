//! Diagnostic: accuracy of the fitted task head at every exit layer of the dense model
//! (`cargo run --release -p whittle-host --example exit_probe -- [task] [head examples]`):
//! the head is fitted on the first calibration examples, scored on the search split, once
//! out of sample by the cross-fit the search uses and once by the calibration-fitted head.

use indicatif::ProgressBar;
use whittle_host::eval::{LabelTokens, last_states, verbalizer_rows};
use whittle_host::head::{TaskHead, cross_fit_scores, fit_head};
use whittle_host::model;
use whittle_host::task::{Split, Task};

fn accuracy(scores: &[Vec<f64>], gold: &[usize]) -> f64 {
    let right = scores
        .iter()
        .zip(gold)
        .filter(|(s, g)| {
            let best = (0..s.len()).fold(0, |b, k| if s[k] > s[b] { k } else { b });
            best == **g
        })
        .count();
    right as f64 / gold.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let task = Task::resolve(&arg(0, "sst2"))?;
    let head_examples: usize = arg(1, "4096").parse()?;
    let opened = model::BaseModel::open_default()?;
    let base = &opened.model;
    let labels = LabelTokens::new(&base.tokenizer, task.labels())?;
    let names: Vec<String> = task.labels().iter().map(|l| l.value.clone()).collect();
    let prior = verbalizer_rows(&base.llama, &labels)?;
    let progress = ProgressBar::hidden();
    let mut calibration = task.examples(Split::Calibration)?;
    calibration.truncate(head_examples);
    let started = std::time::Instant::now();
    let (fit_states, fit_gold, _) = last_states(base, &calibration, 4096, true, &progress)?;
    let search = task.examples(Split::Search)?;
    let (search_states, search_gold, _) = last_states(base, &search, 4096, true, &progress)?;
    println!(
        "states of {} + {} examples in {:.0} s",
        calibration.len(),
        search.len(),
        started.elapsed().as_secs_f64()
    );
    println!("exit  verbalizer  cross-fit  calibration-fit  ridge  fit-s");
    for exit in 0..fit_states.len() {
        let verbalizer = TaskHead::verbalizer(&prior, &vec![0.0; prior.len()]);
        let v = accuracy(&verbalizer.score_all(&search_states[exit]), &search_gold);
        let t = std::time::Instant::now();
        let cross = cross_fit_scores(&search_states[exit], &search_gold, &prior, &names)?;
        let head = fit_head(&fit_states[exit], &fit_gold, &prior, &names)?;
        let fitted = accuracy(&head.score_all(&search_states[exit]), &search_gold);
        println!(
            "{:>4}  {v:>10.4}  {:>9.4}  {fitted:>15.4}  {:.1e}  {:.1}",
            exit + 1,
            accuracy(&cross, &search_gold),
            head.ridge,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
