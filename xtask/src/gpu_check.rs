//! `cargo xtask gpu-check`: the host on an NVIDIA GPU (issue 18). The runs themselves are one
//! script, `xtask/scripts/gpu_kit.sh`: the real-model CUDA test (logits, Gram statistics and
//! storage rescaling on the GPU against the CPU), `whittle eval --task sst2 --split search`
//! and a one-generation `whittle prune`, each on the CPU and on the GPU, one line each in
//! `runs.jsonl`. This module builds what the script runs and turns its lines into the check's
//! one JSON line, in one of three ways:
//!
//! - **On the GPU machine** (`cargo xtask gpu-check`, where Rust and, for the model and without
//!   `nvcc`, the CUDA wheels can be fetched): builds for the GPU's compute capability, runs the
//!   script there and prints the line.
//! - **For a GPU machine that can fetch nothing and has no Rust** (`--kit`): builds here with
//!   the wheels' CUDA 13.0 for compute capability 9.0 (H100, H200) and packs the binaries and
//!   the model into parts small enough to travel (`target/gpu-kit/1`, `2`, …), with the
//!   commands that stage them and run the script there.
//! - **From what such a run wrote** (`--results DIR`, `DIR/runs.jsonl`): prints the line.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cargo;
use crate::workspace::{Built, Executable};

/// The script that runs the check on the GPU machine.
const SCRIPT: &str = "xtask/scripts/gpu_kit.sh";

/// Bytes of a kit part at most: what travels to the device machine with a working tree of
/// about 14 MB stays under its 64 MiB.
const PART_BYTES: u64 = 46 << 20;

/// What `gpu-check` does.
#[derive(Debug)]
pub enum Mode {
    /// Build and run on this machine, which has the GPU.
    Here,
    /// Pack a kit for a GPU machine without Rust or network.
    Kit,
    /// Summarize a kit run's `runs.jsonl` in this folder.
    Results(PathBuf),
}

pub fn run(mode: &Mode) -> anyhow::Result<ExitCode> {
    match mode {
        Mode::Here => here(),
        Mode::Kit => kit(),
        Mode::Results(dir) => {
            println!("{}", summary(&dir.join("runs.jsonl"))?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `compute_cap` of the first GPU `nvidia-smi` reports, without the dot (`9.0` → `90`), as
/// `CUDA_COMPUTE_CAP` takes it.
fn compute_cap() -> anyhow::Result<String> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    let text = match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => bail!(
            "nvidia-smi failed ({}): {}; gpu-check needs an NVIDIA GPU and its driver (R580 or later for CUDA 13); on a machine without one, `cargo xtask gpu-check --kit` packs the check for one",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(error) => bail!(
            "cannot run nvidia-smi ({error}): no NVIDIA driver on this machine; gpu-check needs an NVIDIA GPU and its driver; on a machine without one, `cargo xtask gpu-check --kit` packs the check for one"
        ),
    };
    let cap = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .replace('.', "");
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        bail!("nvidia-smi printed {text:?}, not a compute capability");
    }
    Ok(cap)
}

/// Builds the release `whittle` and the real-model CUDA test with the `cuda` feature for
/// `compute_cap` (the machine's toolkit when `nvcc` is on `PATH` and `local_nvcc`, else the
/// wheels), into `<target>/cuda`, with `extra` environment; returns the two programs.
fn build(compute_cap: &str, local_nvcc: bool, extra: &[(&str, &str)]) -> anyhow::Result<Built> {
    let target_dir = cargo::target_dir()?.join("cuda");
    let mut programs = Built::default();
    // The suite's two cuda builds (less `build`), the host's narrowed to its binary.
    let host = crate::cuda::BUILD[1..5].iter().chain(&["--bin", "whittle"]);
    let test = crate::cuda::BUILD_GPU_TEST[1..].iter().chain(&[]);
    for targets in [host, test] {
        let mut command = cargo::cargo(
            [
                "build",
                "--release",
                "--message-format=json-render-diagnostics",
            ]
            .iter()
            .chain(targets),
        );
        if local_nvcc && cargo::on_path("nvcc") {
            println!("    CUDA: the machine's toolkit (nvcc on PATH)");
        } else {
            crate::cuda::ensure_toolkit()?.configure(&mut command);
        }
        command
            .env("CUDA_COMPUTE_CAP", compute_cap)
            .env("CARGO_TARGET_DIR", &target_dir)
            .envs(extra.iter().copied());
        programs.extend(crate::workspace::built_by(&mut command)?);
    }
    Ok(programs)
}

/// The model file, fetched into the model cache by `whittle` (the program at `whittle`) when
/// missing; `fetch-model` prints its path.
fn model(whittle: &Path) -> anyhow::Result<PathBuf> {
    let printed = cargo::stdout_of(&mut cargo::program(whittle, ["fetch-model"]))?;
    let path = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        bail!("`whittle fetch-model` printed {printed:?}, not the model's path; fetch it again");
    }
    Ok(path)
}

/// The model's file name.
fn file_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("{} has no file name", path.display()))
}

/// `cargo xtask gpu-check` on the GPU machine.
fn here() -> anyhow::Result<ExitCode> {
    let cap = compute_cap()?;
    let start = Instant::now();
    let programs = build(&cap, true, &[])?;
    let model = model(programs.path(Executable::HostTool)?)?;
    let work = cargo::target_dir()?.join("gpu-check");
    let kit = work.join("kit");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(kit.join("models"))
        .with_context(|| format!("cannot create {}", kit.display()))?;
    let links = [
        (programs.path(Executable::HostTool)?, kit.join("whittle")),
        (
            programs.path(Executable::CudaTest)?,
            kit.join("real_model_cuda"),
        ),
        (model.as_path(), kit.join("models").join(file_name(&model)?)),
    ];
    for (from, to) in links {
        std::os::unix::fs::symlink(from, &to)
            .with_context(|| format!("cannot link {} to {}", to.display(), from.display()))?;
    }
    println!(
        "gpu-check: built for compute capability {cap} in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let out = work.join("out");
    cargo::run(
        cargo::program("bash", [SCRIPT, "run"])
            .arg(&out)
            .env("KIT", &kit),
    )?;
    println!("{}", summary(&out.join("runs.jsonl"))?);
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask gpu-check --kit`: the binaries (stripped, xz) and the model in parts of at most
/// [`PART_BYTES`], with `SHA256SUMS` of the assembled files in the first.
fn kit() -> anyhow::Result<ExitCode> {
    // The cuda build cannot run here (no driver): the workspace's `whittle` fetches.
    let model = model(crate::workspace::build()?.path(Executable::HostTool)?)?;
    // Stripped and without debug information, so that the binaries travel.
    let programs = build(
        crate::cuda::COMPUTE_CAP,
        false,
        &[
            ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
            ("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
        ],
    )?;
    let dir = cargo::target_dir()?.join("gpu-kit");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut parts = Parts::new(&dir, PART_BYTES);
    let mut sums = String::new();
    for (executable, name) in [
        (Executable::HostTool, "whittle"),
        (Executable::CudaTest, "real_model_cuda"),
    ] {
        let path = programs.path(executable)?;
        sums.push_str(&format!("{}  {name}\n", sha256(path)?));
        let packed = dir.join(format!("{name}.xz"));
        cargo::run(
            cargo::program("xz", ["-9", "-T2", "-k", "-c"])
                .arg(path)
                .stdout(
                    std::fs::File::create(&packed)
                        .with_context(|| format!("cannot write {}", packed.display()))?,
                ),
        )
        .context("xz is needed to pack the kit (Debian: apt-get install xz-utils)")?;
        parts.add_file(&packed, &format!("{name}.xz"))?;
        std::fs::remove_file(&packed)
            .with_context(|| format!("cannot remove {}", packed.display()))?;
    }
    // The pieces are named after the file, which the script joins them back into.
    let name = file_name(&model)?;
    sums.push_str(&format!("{}  models/{name}\n", sha256(&model)?));
    parts.add_split(&model, &format!("{name}.part"))?;
    parts.add_bytes("SHA256SUMS", sums.as_bytes())?;
    // The built-in tasks' data is read from the source tree the binaries were built in.
    let root = cargo::workspace_root();
    parts.add_bytes("source_root", root.display().to_string().as_bytes())?;
    let names = parts.finish()?;
    println!(
        "gpu-check --kit: {} parts in {}:",
        names.len(),
        dir.display()
    );
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let command = match last {
            true => format!("bash {SCRIPT} stage {name} && bash {SCRIPT} run $OUT/gpu-check"),
            false => format!("bash {SCRIPT} stage {name}"),
        };
        println!(
            "  device run {} of {}: carry [\"{name}\"], command: {command}",
            i + 1,
            names.len()
        );
    }
    println!(
        "one call after another on the same warm machine (it keeps /tmp between calls); then `cargo xtask gpu-check --results <files_at>/gpu-check`"
    );
    Ok(ExitCode::SUCCESS)
}

/// The hex sha256 of a file (`sha256sum`'s, which the kit's `SHA256SUMS` is checked with).
fn sha256(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Folders `1`, `2`, … under a kit folder, each filled up to `limit` bytes ([`PART_BYTES`]).
struct Parts {
    dir: PathBuf,
    limit: u64,
    count: usize,
    used: u64,
}

impl Parts {
    fn new(dir: &Path, limit: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            limit,
            count: 0,
            used: limit,
        }
    }

    /// The current part's folder with room for `len` bytes, a new part when it has none.
    fn room(&mut self, len: u64) -> anyhow::Result<PathBuf> {
        if self.used + len > self.limit {
            self.count += 1;
            self.used = 0;
        }
        self.used += len;
        let part = self.dir.join(self.count.to_string());
        std::fs::create_dir_all(&part)
            .with_context(|| format!("cannot create {}", part.display()))?;
        Ok(part)
    }

    fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.room(bytes.len() as u64)?.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    fn add_file(&mut self, from: &Path, name: &str) -> anyhow::Result<()> {
        let bytes =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        if bytes.len() as u64 > self.limit {
            bail!(
                "{} is {} bytes, more than a part holds ({})",
                from.display(),
                bytes.len(),
                self.limit
            );
        }
        self.add_bytes(name, &bytes)
    }

    /// `from` in pieces `prefix00`, `prefix01`, … (in `cat` order), filling each part.
    fn add_split(&mut self, from: &Path, prefix: &str) -> anyhow::Result<()> {
        let bytes =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        let mut rest = bytes.as_slice();
        let mut piece = 0;
        while !rest.is_empty() {
            let free = self.limit.saturating_sub(self.used);
            let take = match free {
                0 => self.limit,
                free => free,
            }
            .min(rest.len() as u64) as usize;
            let (head, tail) = rest.split_at(take);
            self.add_bytes(&format!("{prefix}{piece:02}"), head)?;
            rest = tail;
            piece += 1;
        }
        Ok(())
    }

    /// The parts' folders, relative to the workspace root (as the device tool's `carry`
    /// names them).
    fn finish(self) -> anyhow::Result<Vec<String>> {
        let root = cargo::workspace_root();
        (1..=self.count)
            .map(|i| {
                let part = self.dir.join(i.to_string());
                part.strip_prefix(&root)
                    .map(|p| p.display().to_string())
                    .with_context(|| format!("{} is outside the workspace", part.display()))
            })
            .collect()
    }
}

/// One line of `runs.jsonl`: a run's name, its wall seconds and the last JSON object it
/// printed; or a genome.
#[derive(Debug, Deserialize)]
struct Line {
    name: String,
    /// The run's exit status (0: it succeeded).
    #[serde(default)]
    status: i32,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    json: Option<serde_json::Value>,
    #[serde(default)]
    genome: Option<serde_json::Value>,
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

/// The lines of a `runs.jsonl`, and the file they came from (for messages).
struct Runs<'a> {
    path: &'a Path,
    lines: Vec<Line>,
}

impl<'a> Runs<'a> {
    fn read(path: &'a Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}; it is what `{SCRIPT} run` writes",
                path.display()
            )
        })?;
        let lines = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} holds a line that is not a run", path.display()))?;
        Ok(Self { path, lines })
    }

    fn find(&self, name: &str) -> anyhow::Result<&Line> {
        self.lines.iter().find(|l| l.name == name).with_context(|| {
            format!(
                "{} has no run `{name}`: the script stopped before it (its output says why)",
                self.path.display()
            )
        })
    }

    /// Run `name`'s wall seconds and its JSON line read as a `T`; an error when it failed or
    /// printed none.
    fn parsed<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<(f64, T)> {
        let line = self.find(name)?;
        if line.status != 0 {
            bail!(
                "the run `{name}` failed (exit status {}); the script's output shows why",
                line.status
            );
        }
        let json = line.json.clone().with_context(|| {
            format!("the run `{name}` printed no JSON line (its output says why)")
        })?;
        let value = serde_json::from_value(json).with_context(|| format!("`{name}`'s line"))?;
        Ok((line.seconds, value))
    }

    fn genome(&self, name: &str) -> anyhow::Result<&serde_json::Value> {
        self.find(name)?
            .genome
            .as_ref()
            .with_context(|| format!("`{name}` holds no genome"))
    }
}

/// The check's JSON line from the script's `runs.jsonl`.
fn summary(path: &Path) -> anyhow::Result<serde_json::Value> {
    let runs = Runs::read(path)?;
    let (_, gpu) = runs.parsed::<serde_json::Value>("gpu")?;
    let (_, parity) = runs.parsed::<serde_json::Value>("parity")?;
    let (eval_cpu_wall, eval_cpu) = runs.parsed::<Eval>("eval-cpu")?;
    let (eval_gpu_wall, eval_gpu) = runs.parsed::<Eval>("eval-gpu")?;
    let (prune_cpu_wall, prune_cpu) = runs.parsed::<Prune>("prune-cpu")?;
    let (prune_gpu_wall, prune_gpu) = runs.parsed::<Prune>("prune-gpu")?;
    let ratio = |cpu: f64, gpu: f64| cpu / gpu.max(1e-9);
    let mut summary = serde_json::json!({
        "gpu": gpu,
        "cuda_parity": parity["cuda_parity"],
        "eval_search_seconds": {
            "cpu": eval_cpu.seconds,
            "gpu": eval_gpu.seconds,
            "speedup": ratio(eval_cpu.seconds, eval_gpu.seconds),
            "wall": {"cpu": eval_cpu_wall, "gpu": eval_gpu_wall},
        },
        "eval_search_accuracy": {"cpu": eval_cpu.value, "gpu": eval_gpu.value},
        "prune_one_generation_seconds": {
            "cpu": prune_cpu_wall,
            "gpu": prune_gpu_wall,
            "speedup": ratio(prune_cpu_wall, prune_gpu_wall),
        },
        "search_seconds": {
            "cpu": prune_cpu.search_seconds,
            "gpu": prune_gpu.search_seconds,
            "speedup": ratio(prune_cpu.search_seconds, prune_gpu.search_seconds),
        },
        "same_genome": runs.genome("genome-cpu")? == runs.genome("genome-gpu")?,
        // Where the genomes differ, how far apart the answers stand: the assured accuracy the
        // search's fitness reads (DESIGN section 5), and what each removes.
        "searched": {
            "assured_difference":
                (prune_cpu.searched.search_assured - prune_gpu.searched.search_assured).abs(),
            "cpu": prune_cpu.searched,
            "gpu": prune_gpu.searched,
        },
    });
    let total: f64 = runs.lines.iter().map(|l| l.seconds).sum();
    if let Some(object) = summary.as_object_mut() {
        object.insert("seconds".to_owned(), total.into());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(genome_gpu: &str, skip: Option<&str>) -> String {
        let prune = |assured: f64, seconds: f64| {
            format!(
                r#"{{"search_seconds":{seconds},"searched":{{"search_assured":{assured},"search_accuracy":0.85,"linear_reduction":0.5,"test_accuracy":0.84}},"seed":1}}"#
            )
        };
        [
            (
                "gpu",
                r#"{"name":"gpu","json":{"gpu":"NVIDIA H100","driver":"580","compute_cap":"9.0"}}"#
                    .to_owned(),
            ),
            (
                "parity",
                r#"{"name":"parity","seconds":20.0,"json":{"cuda_parity":{"max_abs_logit_diff":0.001}}}"#
                    .to_owned(),
            ),
            (
                "eval-cpu",
                r#"{"name":"eval-cpu","seconds":60.0,"json":{"value":0.86,"seconds":50.0,"task":"sst2"}}"#
                    .to_owned(),
            ),
            (
                "eval-gpu",
                r#"{"name":"eval-gpu","seconds":6.0,"json":{"value":0.86,"seconds":5.0}}"#.to_owned(),
            ),
            (
                "prune-cpu",
                format!(r#"{{"name":"prune-cpu","seconds":300.0,"json":{}}}"#, prune(0.84, 100.0)),
            ),
            (
                "prune-gpu",
                format!(r#"{{"name":"prune-gpu","seconds":30.0,"json":{}}}"#, prune(0.835, 10.0)),
            ),
            (
                "genome-cpu",
                r#"{"name":"genome-cpu","genome":{"levels":[1,2,3]}}"#.to_owned(),
            ),
            (
                "genome-gpu",
                format!(r#"{{"name":"genome-gpu","genome":{genome_gpu}}}"#),
            ),
        ]
        .into_iter()
        .filter(|(name, _)| Some(*name) != skip)
        .map(|(_, line)| line + "\n")
        .collect()
    }

    fn summary_of(text: &str) -> anyhow::Result<serde_json::Value> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("runs.jsonl");
        std::fs::write(&path, text)?;
        summary(&path)
    }

    /// The line reads every run: speed-ups as CPU over GPU seconds, the genomes compared, the
    /// assured accuracies' difference.
    #[test]
    fn the_summary_compares_the_cpu_and_gpu_runs() -> anyhow::Result<()> {
        let same = summary_of(&runs(r#"{"levels":[1,2,3]}"#, None))?;
        assert_eq!(same["same_genome"], true);
        assert_eq!(same["eval_search_seconds"]["speedup"], 10.0);
        assert_eq!(same["search_seconds"]["speedup"], 10.0);
        assert_eq!(same["prune_one_generation_seconds"]["speedup"], 10.0);
        assert_eq!(same["gpu"]["gpu"], "NVIDIA H100");
        assert_eq!(same["cuda_parity"]["max_abs_logit_diff"], 0.001);
        let difference = same["searched"]["assured_difference"]
            .as_f64()
            .unwrap_or(1.0);
        assert!((difference - 0.005).abs() < 1e-12, "{difference}");
        assert_eq!(same["seconds"], 416.0);
        let other = summary_of(&runs(r#"{"levels":[1,2,4]}"#, None))?;
        assert_eq!(other["same_genome"], false);
        Ok(())
    }

    /// A run the script did not reach, or that failed, is named, with where to look.
    #[test]
    fn a_missing_or_failed_run_is_named() {
        let failed = runs("{}", None).replace(
            r#"{"name":"eval-gpu","seconds""#,
            r#"{"name":"eval-gpu","status":101,"seconds""#,
        );
        let message = summary_of(&failed)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            message.contains("`eval-gpu` failed (exit status 101)"),
            "{message}"
        );
        let error = summary_of(&runs("{}", Some("prune-gpu"))).map(|_| ());
        let message = format!(
            "{:#}",
            error.err().map(|e| e.to_string()).unwrap_or_default()
        );
        assert!(message.contains("prune-gpu"), "{message}");
    }

    /// A kit's parts hold at most their limit each, and the model's pieces join back in name
    /// order.
    #[test]
    fn parts_fill_up_and_split_in_order() -> anyhow::Result<()> {
        const LIMIT: u64 = 10_000;
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("model");
        let bytes: Vec<u8> = (0..(LIMIT as usize * 2 + 1234))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&source, &bytes)?;
        let kit = dir.path().join("kit");
        let mut parts = Parts::new(&kit, LIMIT);
        parts.add_bytes("first", &[7; 1000])?;
        parts.add_split(&source, "model.part")?;
        let mut pieces: Vec<PathBuf> = Vec::new();
        for part in 1..=parts.count {
            let mut size = 0;
            for entry in std::fs::read_dir(kit.join(part.to_string()))? {
                let path = entry?.path();
                size += std::fs::metadata(&path)?.len();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("model"))
                {
                    pieces.push(path);
                }
            }
            assert!(size <= LIMIT, "part {part}: {size}");
        }
        assert_eq!(parts.count, 3);
        pieces.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
        let mut joined = Vec::new();
        for piece in pieces {
            joined.extend(std::fs::read(piece)?);
        }
        assert!(joined == bytes);
        Ok(())
    }
}
