//! Replays a parity record on this machine: `replay BUNDLE RECORD [--threads N]`.
//!
//! `RECORD` is the JSON file `whittle parity --record` writes (the runtime's predictions and
//! label logits for some test inputs, computed on the recording machine). Every input is
//! classified again here with the fastest kernels this machine has; the replay fails when a
//! prediction differs, or a label logit differs by more than the tolerance (wider where the
//! kernels round decode activations to int8). `cargo xtask test` records on x86_64 and
//! replays the record for aarch64 under `qemu-aarch64` twice: on a Cortex-A72 (NEON) and on
//! qemu's default CPU (NEON with the int8 dot product).

use std::process::ExitCode;
use std::time::Instant;

use serde::Deserialize;
use whittle_runtime::kernels::{DECODE_BELOW_TOKENS, Kernels, Threaded, best};
use whittle_runtime::{AlignedBytes, Bundle, Session};

/// Token capacity of the sessions, as in `whittle parity`.
const CONTEXT: usize = 512;

/// Largest accepted |Δ label logit| between machines: kernels sum in different orders.
const TOLERANCE: f32 = 2e-3;

/// The same where this machine's kernels round activations to int8
/// (`Kernels::rounds_activations`; in decode, the label head is a one-token product): on SST-2
/// that moves label logits by 0.05–0.07 (two cases, NEON dot product under qemu), about a third
/// of what rounding the weights to q8 moves them by (docs/RESULTS.md section 4).
const ROUNDED_TOLERANCE: f32 = 0.2;

#[derive(Deserialize)]
struct Record {
    context: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    input: String,
    runtime_prediction: usize,
    runtime_logits: Vec<f32>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("replay: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bundle_path, record_path) = match args.as_slice() {
        [bundle, record, ..] => (bundle, record),
        _ => return Err("usage: replay BUNDLE RECORD [--threads N]".to_owned()),
    };
    let threads = match args.get(2).map(String::as_str) {
        Some("--threads") => args
            .get(3)
            .and_then(|n| n.parse().ok())
            .ok_or("--threads takes a number")?,
        Some(other) => return Err(format!("unknown argument {other}")),
        None => 1,
    };
    let raw = std::fs::read(bundle_path).map_err(|e| format!("cannot read {bundle_path}: {e}"))?;
    let record: Record = std::fs::read_to_string(record_path)
        .map_err(|e| format!("cannot read {record_path}: {e}"))
        .and_then(|text| {
            serde_json::from_str(&text).map_err(|e| format!("{record_path} is not a record: {e}"))
        })?;
    if record.context != CONTEXT {
        return Err(format!(
            "{record_path} was recorded with context {}, replay uses {CONTEXT}",
            record.context
        ));
    }
    let aligned = AlignedBytes::new(&raw);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| format!("{bundle_path}: {e}"))?;
    let kernels = Threaded::new(best(), threads);
    let kernel_name = kernels.inner().name();
    let tolerance =
        if kernels.rounds_activations(1) || kernels.rounds_activations(DECODE_BELOW_TOKENS) {
            ROUNDED_TOLERANCE
        } else {
            TOLERANCE
        };
    let mut arena = vec![0u64; bundle.arena_bytes(CONTEXT).div_ceil(8)];
    let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut arena);
    let mut session =
        Session::<_, CONTEXT>::new(&bundle, kernels, arena).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (mut failures, mut max_diff) = (0usize, 0f32);
    for (i, case) in record.cases.iter().enumerate() {
        let prediction = session
            .classify(&case.input)
            .map_err(|e| format!("case {i}: {e}"))?
            .label_index;
        let logits = session
            .label_logits()
            .map_err(|e| format!("case {i}: {e}"))?;
        let diff = logits
            .iter()
            .zip(&case.runtime_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        max_diff = max_diff.max(diff);
        let ok = prediction == case.runtime_prediction
            && logits.len() == case.runtime_logits.len()
            && diff <= tolerance;
        failures += usize::from(!ok);
        println!(
            "case {i}: prediction {prediction} (recorded {}), max |Δlogit| {diff:.2e}{}",
            case.runtime_prediction,
            if ok { "" } else { "  MISMATCH" }
        );
    }
    println!(
        "{} cases on {} ({} kernels, {threads} threads) in {:.1}s: {failures} mismatches, max |Δlogit| {max_diff:.2e} (tolerance {tolerance:.0e})",
        record.cases.len(),
        std::env::consts::ARCH,
        kernel_name,
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        return Err(format!(
            "{failures} of {} cases differ from {record_path}",
            record.cases.len()
        ));
    }
    Ok(())
}
