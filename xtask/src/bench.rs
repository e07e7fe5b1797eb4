//! `cargo xtask bench-compare` and `cargo xtask bench`: the runtime's speed on this machine.
//!
//! `bench-compare` runs, side by side, `whittle-device bench` on the dense bundle and on a
//! pruned bundle, each packed q8 and q4, and llama.cpp (PyPI `cyllama`, in a virtual environment this command
//! creates) on the same GGUF file and the same prompt token ids: prefill of 256 tokens, greedy
//! decode of 64, on 1 and 2 threads. Every round runs every configuration once (after one
//! unmeasured warm-up run, in a fresh process), the order rotating from round to round, so that
//! a busy machine slows every engine alike; medians over rounds are reported as ratios.
//!
//! `bench` refreshes the measured `host` profile (with `--board host`) and sets each bundle's
//! measured latency beside the board's cost model.

mod label;
mod summary;

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use whittle_boards::files::{cache_root, default_model_dir};
use whittle_boards::{BenchPrediction, BenchRecord};

use crate::workspace::{self, Built, Executable};
use crate::{cargo, prerequisites};

/// The llama.cpp Python binding and the version the comparison is pinned to.
const CYLLAMA: &str = "cyllama==0.2.18";
const CYLLAMA_VERSION: &str = "0.2.18";
/// The default model file (what `whittle fetch-model` caches).
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The prompt text, relative to the workspace root.
const PROMPT_FILE: &str = "data/wikitext2/wikitext2-test-raw.txt";
/// The task the dense bundle is packed for (decode uses the full head; the task only sets the
/// prompt and labels, which the benchmark does not use).
const DENSE_TASK: &str = "sst2";

/// What `cargo xtask bench-compare` runs.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// Output folder of `whittle prune` (packed as q8 with a full head, cached in
    /// $XDG_CACHE_HOME/whittle/bench, by default ~/.cache/whittle/bench).
    #[arg(long, value_name = "DIR")]
    pub prune_dir: Option<PathBuf>,
    /// A pruned bundle already packed with `--head full` (instead of --prune-dir).
    #[arg(long, value_name = "FILE", conflicts_with = "prune_dir")]
    pub pruned_bundle: Option<PathBuf>,
    /// Rounds; every round runs every configuration once.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 256)]
    pub prefill: usize,
    /// Greedy tokens decoded after the prompt.
    #[arg(long, default_value_t = 64)]
    pub decode: usize,
    /// Thread counts to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Pack the bundles again even when cached.
    #[arg(long)]
    pub repack: bool,
    /// Compare the dense bundle only, when no pruned model is at hand (pruned ratios null).
    #[arg(long, conflicts_with_all = ["prune_dir", "pruned_bundle"])]
    pub dense_only: bool,
    /// SST-2 test sentences timed from text to label on both engines (0: none).
    #[arg(long, default_value_t = 872)]
    pub label_sentences: usize,
    /// A model other than the default, by name (`gemma3-270m`): its dense q8 bundle and, with
    /// --prune-dir (a prune folder of that model), its pruned q8 bundle against llama.cpp on
    /// its GGUF. Its q4 bundles and the time to label are not compared (pass
    /// --label-sentences 0).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

/// Where generated bundles are cached: `<cache root>/bench` (`~/.cache/whittle/bench` on
/// Linux unless `XDG_CACHE_HOME` is set).
fn bench_dir() -> PathBuf {
    cache_root().join("bench")
}

/// Runs `whittle pack` into `out` in `dtype` (atomically: the packer writes a temporary file
/// and renames), of `model` (the default when `None`).
fn pack(
    built: &Built,
    prune_dir: Option<&Path>,
    dtype: &str,
    model: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = vec!["pack".into()];
    if let Some(model) = model {
        args.extend(["--model".into(), model.into()]);
    }
    if let Some(dir) = prune_dir {
        args.extend(["--prune-dir".into(), dir.as_os_str().to_owned()]);
    } else {
        args.extend(["--task".into(), DENSE_TASK.into()]);
    }
    args.extend(
        ["--dtype", dtype, "--head", "full", "--out"]
            .into_iter()
            .map(OsString::from),
    );
    args.push(out.as_os_str().to_owned());
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("cannot create the folder of {}", out.display()))?;
    cargo::run(&mut built.command(Executable::HostTool, args)?)
}

/// The dense bundle of `model` (the default when `None`) in `dtype` with a full head, packed
/// once into the cache.
fn dense_bundle(
    built: &Built,
    dtype: &str,
    model: Option<&str>,
    repack: bool,
) -> anyhow::Result<PathBuf> {
    let name = match model {
        Some(model) => format!("dense-{model}-{dtype}-full.wbundle"),
        None => format!("dense-{dtype}-full.wbundle"),
    };
    let path = bench_dir().join(name);
    if repack || !current(&path) {
        pack(built, None, dtype, model, &path)?;
    }
    Ok(path)
}

/// Whether `path` is a bundle this runtime reads and the packer would write the same way (a
/// cached one from an older format, or a q4 one whose embedding is not q8 as the packer now
/// keeps it, is not).
fn current(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        whittle_runtime::Bundle::parse(whittle_runtime::AlignedBytes::new(&bytes).as_bytes())
            .is_ok_and(|bundle| {
                let header = bundle.header();
                header.embedding.dtype == header.dtype.rows()
            })
    })
}

/// A cache key for a prune folder: its path and its genome and factor files' contents/sizes.
fn prune_key(dir: &Path) -> anyhow::Result<u64> {
    let mut hasher = DefaultHasher::new();
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_owned())
        .hash(&mut hasher);
    let genome = std::fs::read(dir.join("genome.json")).with_context(|| {
        format!(
            "{} has no genome.json; pass the output folder of `cargo xtask prune --task sst2 --board jetson-orin --out DIR` (ε = 0.05), or --pruned-bundle",
            dir.display()
        )
    })?;
    genome.hash(&mut hasher);
    let factors = std::fs::metadata(dir.join("factors.safetensors")).with_context(|| {
        format!(
            "{} has no factors.safetensors; the prune run has not finished, wait for it or pass another --prune-dir",
            dir.display()
        )
    })?;
    factors.len().hash(&mut hasher);
    factors.modified().ok().hash(&mut hasher);
    Ok(hasher.finish())
}

/// The pruned bundle in `dtype`: given (q8 only), or packed (full head) from a prune folder
/// into the cache.
fn pruned_bundle(
    built: &Built,
    args: &CompareArgs,
    dtype: &str,
) -> anyhow::Result<Option<PathBuf>> {
    if let Some(bundle) = &args.pruned_bundle {
        if !bundle.exists() {
            bail!("{} does not exist; check --pruned-bundle", bundle.display());
        }
        return Ok((dtype == "q8").then(|| bundle.clone()));
    }
    let Some(dir) = &args.prune_dir else {
        bail!(
            "no pruned model: pass --prune-dir DIR, the output folder of `cargo xtask prune --task sst2 --board jetson-orin --out DIR` (ε = 0.05 by default), or --pruned-bundle FILE (packed with --head full)"
        );
    };
    let path = bench_dir().join(format!(
        "pruned-{:016x}-{dtype}-full.wbundle",
        prune_key(dir)?
    ));
    if args.repack || !current(&path) {
        pack(built, Some(dir), dtype, args.model.as_deref(), &path)?;
    }
    Ok(Some(path))
}

/// The virtual environment with cyllama, created (and cyllama installed) when missing.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let python = prerequisites::virtual_environment("cyllama")?;
    let version = |python: &Path| {
        cargo::program(python, ["-c", "import cyllama; print(cyllama.__version__)"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if version(&python).as_deref() == Some(CYLLAMA_VERSION) {
        return Ok(python);
    }
    cargo::run(&mut cargo::program(
        &python,
        ["-m", "pip", "install", "--quiet", CYLLAMA],
    ))
    .with_context(|| format!("cannot install {CYLLAMA} from PyPI"))?;
    match version(&python) {
        Some(v) if v == CYLLAMA_VERSION => Ok(python),
        other => bail!("{CYLLAMA} did not install (found {other:?}); check the pip output above"),
    }
}

/// Parses the last JSON line of `stdout` (a program's record); a missing field is an error
/// that names it.
fn last_json<T: DeserializeOwned>(stdout: &str, what: &str) -> anyhow::Result<T> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed invalid JSON"))
}

/// The engines compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Dense,
    DenseQ4,
    Pruned,
    PrunedQ4,
    Llama,
}

impl Contender {
    const ALL: [Self; 5] = [
        Self::Dense,
        Self::DenseQ4,
        Self::Pruned,
        Self::PrunedQ4,
        Self::Llama,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Dense => "runtime dense q8",
            Self::DenseQ4 => "runtime dense q4",
            Self::Pruned => "runtime pruned q8",
            Self::PrunedQ4 => "runtime pruned q4",
            Self::Llama => "llama.cpp (the GGUF as published)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::DenseQ4 => "dense_q4",
            Self::Pruned => "pruned",
            Self::PrunedQ4 => "pruned_q4",
            Self::Llama => "llamacpp",
        }
    }
}

/// The seconds of every measured run, as both engines report them (`whittle-device bench
/// --json` and `xtask/scripts/llamacpp_bench.py` print these fields).
#[derive(Debug, Default, Deserialize)]
struct Timings {
    prefill_s: Vec<f64>,
    decode_s: Vec<f64>,
    prefill_cpu_s: Vec<f64>,
    decode_cpu_s: Vec<f64>,
}

impl From<BenchRecord> for Timings {
    fn from(record: BenchRecord) -> Self {
        Self {
            prefill_s: record.prefill_s,
            decode_s: record.decode_s,
            prefill_cpu_s: record.prefill_cpu_s,
            decode_cpu_s: record.decode_cpu_s,
        }
    }
}

/// Every sample of one engine at one thread count.
#[derive(Debug, Default)]
struct Samples {
    times: Timings,
    /// The cost model's figures from the last run (the runtime's engines only).
    predicted: Option<BenchPrediction>,
}

impl Samples {
    fn add(&mut self, run: Timings, predicted: Option<BenchPrediction>) {
        self.times.prefill_s.extend(run.prefill_s);
        self.times.decode_s.extend(run.decode_s);
        self.times.prefill_cpu_s.extend(run.prefill_cpu_s);
        self.times.decode_cpu_s.extend(run.decode_cpu_s);
        self.predicted = predicted;
    }
}

/// `whittle-device bench BUNDLE` on the prompt file, with `options` (flag, value).
fn device_bench(
    built: &Built,
    bundle: &Path,
    options: &[(&str, String)],
) -> anyhow::Result<Command> {
    let mut args = vec![OsString::from("bench"), bundle.as_os_str().to_owned()];
    for (flag, value) in options {
        args.extend([OsString::from(flag), OsString::from(value)]);
    }
    args.extend([OsString::from("--prompt-file"), PROMPT_FILE.into()]);
    built.command(Executable::DeviceTool, args)
}

/// Runs `whittle-device bench --json` once and reads its record.
fn device_record(
    built: &Built,
    bundle: &Path,
    options: &[(&str, String)],
) -> anyhow::Result<BenchRecord> {
    let mut command = device_bench(built, bundle, options)?;
    command.arg("--json");
    last_json(&cargo::stdout_of(&mut command)?, "whittle-device bench")
}

/// What every engine's runs share.
struct Setup<'a> {
    built: &'a Built,
    /// The runtime's bundles, per engine.
    bundles: &'a [(Contender, PathBuf)],
    python: &'a Path,
    model: &'a Path,
    /// The prompt's token ids, comma-separated.
    tokens: &'a str,
}

/// Runs one engine once (one warm-up, one measured run) and returns its times and, for the
/// runtime, the cost model's figures.
fn run_engine(
    engine: Contender,
    setup: &Setup<'_>,
    threads: usize,
    args: &CompareArgs,
) -> anyhow::Result<(Timings, Option<BenchPrediction>)> {
    let bundle = match engine {
        Contender::Llama => {
            let mut command = cargo::program(
                setup.python,
                [
                    OsString::from("xtask/scripts/llamacpp_bench.py"),
                    "--model".into(),
                    setup.model.as_os_str().to_owned(),
                    "--tokens".into(),
                    setup.tokens.into(),
                    "--threads".into(),
                    threads.to_string().into(),
                    "--decode".into(),
                    args.decode.to_string().into(),
                    "--repeats".into(),
                    "1".into(),
                    "--warmup".into(),
                    "1".into(),
                ],
            );
            let times = last_json(&cargo::stdout_of(&mut command)?, engine.name())?;
            return Ok((times, None));
        }
        runtime => setup
            .bundles
            .iter()
            .find(|(e, _)| *e == runtime)
            .map(|(_, path)| path.as_path())
            .with_context(|| format!("no bundle for {}", runtime.name()))?,
    };
    let record = device_record(
        setup.built,
        bundle,
        &[
            ("--threads", threads.to_string()),
            ("--prefill", args.prefill.to_string()),
            ("--decode", args.decode.to_string()),
            ("--repeats", "1".to_owned()),
            ("--warmup", "1".to_owned()),
        ],
    )
    .with_context(|| engine.name())?;
    let predicted = record.predicted.clone();
    Ok((record.into(), predicted))
}

/// `cargo xtask bench-compare`.
pub fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    if args.repeats == 0 || args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--repeats and every --threads value must be at least 1");
    }
    if args.model.is_some() && args.label_sentences > 0 {
        bail!(
            "the time to label is compared for the default model only; pass --label-sentences 0 with --model"
        );
    }
    let built = workspace::build()?;
    let model = match &args.model {
        Some(name) => {
            let mut fetch =
                built.command(Executable::HostTool, ["fetch-model", "--model", name])?;
            PathBuf::from(cargo::stdout_of(&mut fetch)?.trim())
        }
        None => default_model_dir().join(GGUF_NAME),
    };
    if !model.exists() {
        cargo::run(&mut built.command(Executable::HostTool, ["fetch-model"])?)?;
    }
    // The cost model is checked against the `host` profile measured now, as `bench` does: a
    // shared machine's cache and memory are not what they were when an older profile was
    // measured (the L3's knee moved by tens of MiB between runs), and a profile of older kernels
    // would check older kernels. Without it there would be no prediction to check. It is
    // measured again before every later round and merged (below).
    eprintln!(
        "measuring this machine for the cost model's check (whittle-device profile --install)"
    );
    crate::boards::measure_host_profile(&built, false)?;
    let name = args.model.as_deref();
    let dense = dense_bundle(&built, "q8", name, args.repack)?;
    let mut bundles = vec![(Contender::Dense, dense.clone())];
    // A non-default model's q4 bundles are not packed: the q4 packer's search for the matrices
    // that keep the labels (a few minutes for SmolLM2) is not part of this comparison.
    if name.is_none() {
        bundles.push((
            Contender::DenseQ4,
            dense_bundle(&built, "q4", None, args.repack)?,
        ));
    }
    if !args.dense_only {
        let dtypes: &[(Contender, &str)] = match name {
            Some(_) => &[(Contender::Pruned, "q8")],
            None => &[(Contender::Pruned, "q8"), (Contender::PrunedQ4, "q4")],
        };
        for &(engine, dtype) in dtypes {
            if let Some(path) = pruned_bundle(&built, args, dtype)? {
                bundles.push((engine, path));
            }
        }
    }
    let pruned = bundles
        .iter()
        .find(|(e, _)| *e == Contender::Pruned)
        .map(|(_, p)| p.clone());
    let python = venv_python()?;

    // The prompt's token ids, from the runtime's tokenizer (the bundle's tables).
    let probe = device_record(
        &built,
        &dense,
        &[
            ("--threads", "1".to_owned()),
            ("--prefill", args.prefill.to_string()),
            ("--decode", "0".to_owned()),
            ("--repeats", "1".to_owned()),
            ("--warmup", "0".to_owned()),
        ],
    )?;
    if probe.prompt_tokens.len() != args.prefill {
        bail!(
            "the prompt has {} tokens, not {}",
            probe.prompt_tokens.len(),
            args.prefill
        );
    }
    let tokens: Vec<String> = probe.prompt_tokens.iter().map(u32::to_string).collect();
    let tokens = tokens.join(",");
    let setup = Setup {
        built: &built,
        bundles: &bundles,
        python: &python,
        model: &model,
        tokens: &tokens,
    };

    let engines: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|&e| e == Contender::Llama || bundles.iter().any(|(b, _)| *b == e))
        .collect();
    let mut samples: Vec<((Contender, usize), Samples)> = Vec::new();
    for &threads in &args.threads {
        for &engine in &engines {
            samples.push(((engine, threads), Samples::default()));
        }
    }
    for round in 0..args.repeats {
        // The check sets each prediction beside the fastest round, and the profile keeps its
        // fastest runs: measured once, in twenty seconds, it saw less of a shared machine's
        // quiet moments than the rounds' minutes do, and predicted every bundle 10–25% slow in
        // some runs. Measured before every round and merged figure by figure, it samples the
        // same minutes; the last round predicts from all of them.
        if round > 0 {
            eprintln!(
                "round {}/{}: measuring this machine again, keeping each figure's best (whittle-device profile --install --merge)",
                round + 1,
                args.repeats
            );
            crate::boards::measure_host_profile(&built, true)?;
        }
        for (t_index, &threads) in args.threads.iter().enumerate() {
            for step in 0..engines.len() {
                let engine = engines[(round + t_index + step) % engines.len()];
                eprintln!(
                    "round {}/{}: {} on {threads} thread(s)",
                    round + 1,
                    args.repeats,
                    engine.name()
                );
                let (times, predicted) = run_engine(engine, &setup, threads, args)?;
                if let Some((_, s)) = samples.iter_mut().find(|(k, _)| *k == (engine, threads)) {
                    s.add(times, predicted);
                }
            }
        }
    }
    let mut summary = summary::summarize(args, &samples, &dense, pruned.as_deref());
    if args.label_sentences > 0 {
        let threads = args.threads.iter().copied().max().unwrap_or(1);
        summary.set_time_to_label(label::compare(
            &built,
            &python,
            &model,
            &dense,
            threads,
            args.label_sentences,
        )?);
    }
    summary::print(args, &summary);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask bench --board B`: refreshes the measured `host` profile (for `host`), then
/// benchmarks the dense bundle (and the pruned one, given) against the board's cost model.
pub fn bench(board: &str, prune_dir: Option<&Path>, repeats: usize) -> anyhow::Result<ExitCode> {
    let built = workspace::build()?;
    if board == "host" {
        crate::boards::measure_host_profile(&built, false)?;
    }
    let args = CompareArgs {
        prune_dir: prune_dir.map(Path::to_path_buf),
        pruned_bundle: None,
        repeats,
        prefill: 256,
        decode: 64,
        threads: Vec::new(),
        repack: false,
        dense_only: prune_dir.is_none(),
        label_sentences: 0,
        model: None,
        json: false,
    };
    let mut bundles = vec![dense_bundle(&built, "q8", None, false)?];
    if prune_dir.is_some() {
        bundles.extend(pruned_bundle(&built, &args, "q8")?);
    }
    // One thread and all threads: the profile keeps the better of its one- and all-thread
    // figures, so the better of these two is what its prediction is for.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    for bundle in &bundles {
        for threads in &thread_counts {
            let options = [
                ("--board", board.to_owned()),
                ("--threads", threads.to_string()),
                ("--repeats", repeats.to_string()),
            ];
            cargo::run(&mut device_bench(&built, bundle, &options)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_json_line_is_parsed() {
        match last_json::<serde_json::Value>("progress\n{\"a\": 1}\n", "x") {
            Ok(value) => assert_eq!(value["a"], 1),
            Err(error) => panic!("{error:#}"),
        }
        assert!(last_json::<serde_json::Value>("no json here\n", "x").is_err());
    }

    #[test]
    fn a_record_without_a_field_is_refused_by_name() {
        let stdout = r#"{"prefill_s":[1.0],"decode_s":[2.0],"prefill_cpu_s":[1.0]}"#;
        match last_json::<Timings>(stdout, "llama.cpp Q4_1") {
            Ok(times) => panic!("accepted {times:?}"),
            Err(error) => {
                let message = format!("{error:#}");
                assert!(
                    message.contains("missing field `decode_cpu_s`"),
                    "{message}"
                );
            }
        }
    }
}
