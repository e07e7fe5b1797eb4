//! `cargo xtask gpu-check`: the host on an NVIDIA GPU, in one command on a machine that has
//! one (issue 18). It builds `whittle` and the real-model CUDA test with the `cuda` feature
//! (the machine's CUDA toolkit when `nvcc` is on `PATH`, else the PyPI wheels of
//! [`crate::cuda`]), for the GPU's own compute capability; runs the test (logits on the GPU
//! against the CPU); times `whittle eval --task sst2 --split search` and a one-generation
//! `whittle prune` on the CPU and on the GPU, comparing the genomes they choose; and prints one
//! JSON line. The model and the wheels come from PyPI on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cargo;

/// The GPU as `nvidia-smi` reports it.
struct Gpu {
    name: String,
    driver: String,
    /// `compute_cap` without the dot (`9.0` → `90`), as `CUDA_COMPUTE_CAP` takes it.
    compute_cap: String,
}

fn gpu() -> anyhow::Result<Gpu> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,compute_cap",
            "--format=csv,noheader",
        ])
        .output();
    let text = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => bail!(
            "nvidia-smi failed ({}): {}; gpu-check needs an NVIDIA GPU and its driver (R580 or later for CUDA 13)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(error) => bail!(
            "cannot run nvidia-smi ({error}): no NVIDIA driver on this machine; gpu-check needs an NVIDIA GPU and its driver"
        ),
    };
    let line = text.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    match fields.as_slice() {
        [name, driver, cap] => Ok(Gpu {
            name: (*name).to_owned(),
            driver: (*driver).to_owned(),
            compute_cap: cap.replace('.', ""),
        }),
        _ => bail!("nvidia-smi printed {line:?}, not name, driver and compute capability"),
    }
}

/// A cargo command configured for the cuda build of `gpu`: the machine's toolkit when `nvcc`
/// is on `PATH` (cudarc asks it for the version), else the wheels; kernels for the GPU's
/// compute capability; the cuda target folder.
fn cuda_cargo<I, S>(args: I, gpu: &Gpu) -> anyhow::Result<Command>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let mut command = cargo::cargo(args);
    if cargo::on_path("nvcc") {
        println!("    CUDA: the machine's toolkit (nvcc on PATH)");
    } else {
        crate::cuda::ensure_toolkit()?.configure(&mut command);
    }
    command
        .env("CUDA_COMPUTE_CAP", &gpu.compute_cap)
        .env("CARGO_TARGET_DIR", cargo::target_dir()?.join("cuda"));
    Ok(command)
}

/// Runs `command`, returning its wall time in seconds and its stdout's last line that parses
/// as a `T`.
fn timed_json<T: serde::de::DeserializeOwned>(command: &mut Command) -> anyhow::Result<(f64, T)> {
    println!("    $ {}", cargo::describe(command));
    let start = Instant::now();
    let stdout = cargo::stdout_of(command)?;
    let seconds = start.elapsed().as_secs_f64();
    let json = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .with_context(|| {
            format!(
                "`{}` printed no JSON line of the expected fields",
                cargo::describe(command)
            )
        })?;
    Ok((seconds, json))
}

/// What gpu-check reads of `whittle eval --json` (the host's `EvalReport`).
#[derive(Debug, Deserialize)]
struct Eval {
    value: f64,
    seconds: f64,
}

/// What gpu-check reads of `whittle prune --json` (the host's `PruneReport`).
#[derive(Debug, Deserialize)]
struct Prune {
    search_seconds: f64,
    searched: Searched,
}

/// The searched answer's `Outcome`, as far as gpu-check compares it.
#[derive(Debug, Deserialize, Serialize)]
struct Searched {
    search_assured: f64,
    search_accuracy: f64,
    linear_reduction: f64,
}

/// `whittle` (the cuda build) with `args`, on the GPU when `cuda`.
fn whittle(binary: &Path, args: &[&str], cuda: bool) -> Command {
    let mut command = cargo::program(binary, args);
    if cuda {
        command.arg("--cuda");
    }
    command
}

pub fn run() -> anyhow::Result<ExitCode> {
    let gpu = gpu()?;
    println!(
        "gpu-check: {} (driver {}, compute capability {})",
        gpu.name, gpu.driver, gpu.compute_cap
    );
    let start = Instant::now();
    // The suite's cuda build, for the `whittle` binary only.
    let build = ["build", "--release"]
        .iter()
        .chain(&crate::cuda::BUILD[1..5])
        .chain(&["--bin", "whittle"]);
    cargo::run(&mut cuda_cargo(build, &gpu)?)?;
    let build_seconds = start.elapsed().as_secs_f64();
    let binary: PathBuf = cargo::target_dir()?.join("cuda/release/whittle");
    // The suite builds this test (`cuda::BUILD_GPU_TEST`, dev profile); here it runs, optimized.
    let test = ["test", "--release"]
        .iter()
        .chain(&crate::cuda::BUILD_GPU_TEST[1..])
        .chain(&["--", "--nocapture"]);
    // The test's line is passed on as it is.
    let (_, parity): (_, serde_json::Value) = timed_json(&mut cuda_cargo(test, &gpu)?)?;
    let eval = ["eval", "--task", "sst2", "--split", "search", "--json"];
    let (eval_cpu, eval_cpu_json): (_, Eval) = timed_json(&mut whittle(&binary, &eval, false))?;
    let (eval_gpu, eval_gpu_json): (_, Eval) = timed_json(&mut whittle(&binary, &eval, true))?;
    // Fresh caches each run, so both sides calibrate and factorize from nothing.
    let scratch = cargo::target_dir()?.join("gpu-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot clear {}", scratch.display()))?;
    }
    let prune = |name: &str, cuda: bool| -> anyhow::Result<(f64, Prune, String)> {
        let dir = scratch.join(name);
        let (out, cache) = (dir.join("out"), dir.join("cache"));
        let args = [
            "prune",
            "--board",
            "jetson-orin",
            "--calibration-tokens",
            "16384",
            "--generations",
            "1",
            "--no-recover",
            "--refine-tries",
            "0",
            "--json",
            "--out",
            out.to_str().unwrap_or_default(),
            "--cache-dir",
            cache.to_str().unwrap_or_default(),
        ];
        let (seconds, json) = timed_json(&mut whittle(&binary, &args, cuda))?;
        let genome = std::fs::read_to_string(out.join("genome.json"))
            .with_context(|| format!("{} has no genome.json", out.display()))?;
        Ok((seconds, json, genome))
    };
    let (prune_cpu, prune_cpu_json, genome_cpu) = prune("cpu", false)?;
    let (prune_gpu, prune_gpu_json, genome_gpu) = prune("gpu", true)?;
    let ratio = |cpu: f64, gpu: f64| cpu / gpu.max(1e-9);
    let (cpu, gpu_run) = (&prune_cpu_json, &prune_gpu_json);
    let summary = serde_json::json!({
        "gpu": gpu.name,
        "driver": gpu.driver,
        "compute_cap": gpu.compute_cap,
        "build_seconds": build_seconds,
        "cuda_parity": parity["cuda_parity"],
        "eval_search_seconds": {
            "cpu": eval_cpu_json.seconds,
            "gpu": eval_gpu_json.seconds,
            "speedup": ratio(eval_cpu_json.seconds, eval_gpu_json.seconds),
            "wall": {"cpu": eval_cpu, "gpu": eval_gpu},
        },
        "eval_search_accuracy": {"cpu": eval_cpu_json.value, "gpu": eval_gpu_json.value},
        "prune_one_generation_seconds": {"cpu": prune_cpu, "gpu": prune_gpu, "speedup": ratio(prune_cpu, prune_gpu)},
        "search_seconds": {
            "cpu": cpu.search_seconds,
            "gpu": gpu_run.search_seconds,
            "speedup": ratio(cpu.search_seconds, gpu_run.search_seconds),
        },
        "same_genome": genome_cpu == genome_gpu,
        // Where the genomes differ, how far apart the answers stand: the assured accuracy the
        // search's fitness reads (DESIGN section 5), and what each removes.
        "searched": {
            "cpu": cpu.searched,
            "gpu": gpu_run.searched,
            "assured_difference": (cpu.searched.search_assured - gpu_run.searched.search_assured).abs(),
        },
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}
