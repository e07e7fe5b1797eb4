//! Host f32 prefill throughput against candle-transformers' dequantized `quantized_llama`,
//! measured side by side in one run (real model, fetched on first use), and the throughput
//! of `eval` on the sst2 search split. Prints ratios; asserts nothing about time.
//!
//! `cargo xtask bench-host` (or `cargo bench -p whittle-tests --bench prefill`).

use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use whittle_boards::stats::median;
use whittle_host::eval::{EvalOptions, evaluate};
use whittle_host::model::Batch;
use whittle_host::task::{Split, Task};
use whittle_tests::real_model_and_reference;

const PROMPT_TOKENS: usize = 256;
const REPEATS: usize = 5;

fn main() -> anyhow::Result<()> {
    let (ours, mut reference) = real_model_and_reference()?;
    let device = Device::Cpu;

    let text = include_str!("../../data/wikitext2/wikitext2-test-raw.txt");
    let all_ids = ours.tokenizer.encode(&text[..200_000])?;
    println!(
        "prefill of {PROMPT_TOKENS}-token prompts, median of {REPEATS} runs, {} threads",
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:>6} {:>14} {:>14} {:>8}",
        "batch", "host tok/s", "candle tok/s", "ratio"
    );
    for batch_size in [1usize, 4, 8] {
        let prompts: Vec<Vec<u32>> = (0..batch_size)
            .map(|row| all_ids[row * PROMPT_TOKENS..(row + 1) * PROMPT_TOKENS].to_vec())
            .collect();
        let batch = Batch::new(&prompts, 0, &device)?;
        let flat: Vec<u32> = prompts.concat();
        let input = Tensor::from_vec(flat, (batch_size, PROMPT_TOKENS), &device)?;
        let (mut host_times, mut reference_times) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS + 1 {
            let started = Instant::now();
            let last = ours.llama.last_hidden(&batch)?;
            ours.llama.logits(&last)?.sum_all()?.to_scalar::<f32>()?;
            host_times.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            reference
                .forward(&input, 0)?
                .sum_all()?
                .to_scalar::<f32>()?;
            reference_times.push(started.elapsed().as_secs_f64());
        }
        // The first run of each warms caches and the allocator.
        let tokens = (batch_size * PROMPT_TOKENS) as f64;
        let host = tokens / median(&host_times[1..]);
        let candle = tokens / median(&reference_times[1..]);
        println!(
            "{batch_size:>6} {host:>14.0} {candle:>14.0} {:>8.2}",
            host / candle
        );
    }

    let task = Task::builtin("sst2")?;
    let options = EvalOptions {
        label_bias: false,
        ..EvalOptions::default()
    };
    let report = evaluate(
        &ours,
        &task,
        Split::Search,
        &options,
        &ProgressBar::hidden(),
    )?;
    println!(
        "eval sst2 search: n = {}, {} tokens in {:.1} s = {:.0} tok/s (accuracy without bias {:.4})",
        report.n, report.tokens, report.seconds, report.tokens_per_second, report.value
    );
    Ok(())
}
