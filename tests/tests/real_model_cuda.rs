//! Real model on a GPU (builds with `--features cuda` only; fetches SmolLM2-135M-Instruct, 98
//! MB, once): the forward pass on CUDA device 0 against the CPU's on SST-2 prompts (logits of
//! the whole vocabulary at the last position, and the label logits), and the Gram statistics
//! calibration accumulates on each. Prints one JSON line (`cargo xtask gpu-check` reads it).
#![cfg(feature = "cuda")]

use candle_core::Device;
use whittle_host::eval::prompt_ids;
use whittle_host::model::{self, Batch};
use whittle_host::task::{Split, Task};
use whittle_tests::real_model_path;

#[test]
fn real_model_cuda_logits_match_the_cpu() -> anyhow::Result<()> {
    let path = real_model_path();
    let gpu = model::device(true)?;
    let cpu_model = model::load(&path, &Device::Cpu)?;
    let gpu_model = model::load(&path, &gpu)?;
    let task = Task::resolve("sst2")?;
    let sequences: Vec<Vec<u32>> = task
        .examples(Split::Test)?
        .iter()
        .take(32)
        .map(|e| prompt_ids(&cpu_model.tokenizer, &e.prompt))
        .collect::<anyhow::Result<_>>()?;
    let pad = cpu_model.tokenizer.pad_id();
    let logits = |m: &model::LoadedModel, device: &Device| -> anyhow::Result<Vec<Vec<f32>>> {
        let mut rows = Vec::new();
        for chunk in sequences.chunks(8) {
            let batch = Batch::new(chunk, pad, device)?;
            let last = m.llama.last_hidden(&batch)?;
            rows.extend(
                m.llama
                    .logits(&last)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?,
            );
        }
        Ok(rows)
    };
    let (cpu, gpu_rows) = (logits(&cpu_model, &Device::Cpu)?, logits(&gpu_model, &gpu)?);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let mut max_diff = 0f32;
    let mut top1_equal = 0;
    for (a, b) in cpu.iter().zip(&gpu_rows) {
        max_diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(max_diff, f32::max);
        top1_equal += usize::from(argmax(a) == argmax(b));
    }
    println!(
        "{}",
        serde_json::json!({
            "cuda_parity": {
                "prompts": cpu.len(),
                "vocab": cpu.first().map_or(0, Vec::len),
                "max_abs_logit_diff": max_diff,
                "top1_equal": top1_equal,
            }
        })
    );
    assert_eq!(top1_equal, cpu.len(), "top-1 differs between CPU and GPU");
    assert!(
        max_diff < 0.05,
        "max |Δ logit| {max_diff} between CPU and GPU"
    );
    Ok(())
}
