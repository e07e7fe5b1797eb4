//! Real model on a GPU (builds with `--features cuda` only; fetches SmolLM2-135M-Instruct, 98
//! MB, once): the forward pass on CUDA device 0 against the CPU's on SST-2 prompts (logits of
//! the whole vocabulary at the last position), the Gram statistics calibration accumulates on
//! each, and the model rescaled for q8 storage (its storage scales chosen on each device from
//! those statistics; the rescaling keeps the function). Prints one JSON line (`cargo xtask gpu-check` reads it).
#![cfg(feature = "cuda")]

use candle_core::Device;
use indicatif::ProgressBar;
use whittle_host::bundle::{InputMoments, for_storage};
use whittle_host::calibrate::{CalibrationData, CalibrationSettings, accumulate};
use whittle_host::eval::prompt_ids;
use whittle_host::model::{self, Batch, Llama};
use whittle_host::task::{Split, Task};
use whittle_runtime::format::Dtype;
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
    let logits = |llama: &Llama, device: &Device| -> anyhow::Result<Vec<Vec<f32>>> {
        let mut rows = Vec::new();
        for chunk in sequences.chunks(8) {
            let batch = Batch::new(chunk, pad, device)?;
            let last = llama.last_hidden(&batch)?;
            rows.extend(
                llama
                    .logits(&last)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?,
            );
        }
        Ok(rows)
    };
    let (cpu, gpu_rows) = (
        logits(&cpu_model.llama, &Device::Cpu)?,
        logits(&gpu_model.llama, &gpu)?,
    );
    let (max_diff, top1_equal) = compare(&cpu, &gpu_rows);

    // Calibration's Gram statistics (f64 on both devices) of the same prompts.
    let data = CalibrationData {
        observe_from: vec![0; sequences.len()],
        sequences: sequences.clone(),
    };
    let settings = CalibrationSettings {
        max_tokens: data.counted_tokens(),
        ..CalibrationSettings::default()
    };
    let hidden = ProgressBar::hidden();
    let gram_cpu = accumulate(
        &cpu_model.llama,
        &data,
        pad,
        2048,
        settings.clone(),
        &hidden,
    )?;
    let gram_gpu = accumulate(&gpu_model.llama, &data, pad, 2048, settings, &hidden)?;
    let mut gram_rel = 0f64;
    for (a, b) in gram_cpu
        .sites
        .iter()
        .flatten()
        .zip(gram_gpu.sites.iter().flatten())
    {
        let norm = a.second_moment.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff = (a.second_moment.iter().zip(&b.second_moment))
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        gram_rel = gram_rel.max(diff / norm.max(f64::MIN_POSITIVE));
    }

    // The model rescaled for q8 storage, its scales chosen from each device's statistics.
    let rescaled = |m: &model::LoadedModel, device: &Device| -> anyhow::Result<Vec<Vec<f32>>> {
        let moments = InputMoments::of_sequences(&m.llama, sequences.clone(), pad)?;
        logits(&for_storage(&m.llama, Dtype::Q8, Some(&moments))?, device)
    };
    let (q8_cpu, q8_gpu) = (
        rescaled(&cpu_model, &Device::Cpu)?,
        rescaled(&gpu_model, &gpu)?,
    );
    let (q8_max_diff, q8_top1_equal) = compare(&q8_cpu, &q8_gpu);
    println!(
        "{}",
        serde_json::json!({
            "cuda_parity": {
                "prompts": cpu.len(),
                "vocab": cpu.first().map_or(0, Vec::len),
                "max_abs_logit_diff": max_diff,
                "top1_equal": top1_equal,
                "gram_max_relative_diff": gram_rel,
                "q8_rescaled_max_abs_logit_diff": q8_max_diff,
                "q8_rescaled_top1_equal": q8_top1_equal,
            }
        })
    );
    assert_eq!(top1_equal, cpu.len(), "top-1 differs between CPU and GPU");
    assert!(
        max_diff < 0.05,
        "max |Δ logit| {max_diff} between CPU and GPU"
    );
    assert!(
        gram_rel < 1e-4,
        "Gram statistics differ by {gram_rel} (relative)"
    );
    assert_eq!(
        q8_top1_equal,
        cpu.len(),
        "top-1 of the model rescaled for q8 differs"
    );
    // The rescaling keeps the function on each device, whichever scales each chose: the same
    // bound as the logits'.
    assert!(
        q8_max_diff < 0.05,
        "max |Δ logit| {q8_max_diff} between the models rescaled for q8"
    );
    Ok(())
}

/// The largest |Δ| between matching logits, and how many rows have the same top-1.
fn compare(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, usize) {
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
    };
    let mut max_diff = 0f32;
    let mut top1_equal = 0;
    for (x, y) in a.iter().zip(b) {
        max_diff = (x.iter().zip(y))
            .map(|(p, q)| (p - q).abs())
            .fold(max_diff, f32::max);
        top1_equal += usize::from(argmax(x) == argmax(y));
    }
    (max_diff, top1_equal)
}
