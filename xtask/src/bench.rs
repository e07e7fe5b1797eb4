//! `cargo xtask bench-compare` and `cargo xtask bench`: the runtime's speed on this machine.
//!
//! `bench-compare` runs, side by side, `whittle-device bench` on the dense q8 bundle and on a
//! pruned q8 bundle, and llama.cpp (PyPI `cyllama`, in a virtual environment this command
//! creates) on the same GGUF file and the same prompt token ids: prefill of 256 tokens, greedy
//! decode of 64, on 1 and 2 threads. Every round runs every configuration once (after one
//! unmeasured warm-up run, in a fresh process), the order rotating from round to round, so that
//! a busy machine slows every engine alike; medians over rounds are reported as ratios.
//!
//! `bench` refreshes the measured `host` profile (with `--board host`) and sets each bundle's
//! measured latency beside the board's cost model.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cargo;

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

/// What the comparison runs.
#[derive(Clone, Debug)]
pub struct CompareArgs {
    /// Output folder of `whittle prune` (packed to a q8 bundle with a full head).
    pub prune_dir: Option<PathBuf>,
    /// An already packed pruned bundle (full head) instead of `prune_dir`.
    pub pruned_bundle: Option<PathBuf>,
    /// Rounds (each runs every configuration once).
    pub repeats: usize,
    /// Prompt tokens.
    pub prefill: usize,
    /// Greedy tokens after the prompt.
    pub decode: usize,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Pack the bundles again even when cached.
    pub repack: bool,
    /// Compare the dense bundle only (no pruned model at hand).
    pub dense_only: bool,
    /// One JSON object on the last line.
    pub json: bool,
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set; set it to a writable folder")
}

/// Where generated bundles are cached: `~/.cache/whittle/bench`.
fn bench_dir() -> anyhow::Result<PathBuf> {
    Ok(home()?.join(".cache/whittle/bench"))
}

fn model_path() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("WHITTLE_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => home()?.join(".cache/whittle/models"),
    };
    Ok(dir.join(GGUF_NAME))
}

fn release_binary(name: &str) -> PathBuf {
    cargo::target_dir().join("release").join(name)
}

/// Builds the release binaries the comparison runs.
fn build(packages: &[&str]) -> anyhow::Result<()> {
    let mut args: Vec<&str> = vec!["build", "--release", "--quiet"];
    for package in packages {
        args.extend(["-p", package]);
    }
    cargo::run(&mut cargo::cargo(args))
}

/// Runs `whittle pack` into `out` (atomically: the packer writes a temporary file and renames).
fn pack(prune_dir: Option<&Path>, out: &Path) -> anyhow::Result<()> {
    build(&["whittle-host"])?;
    let mut args: Vec<OsString> = vec!["pack".into()];
    if let Some(dir) = prune_dir {
        args.extend(["--prune-dir".into(), dir.as_os_str().to_owned()]);
    } else {
        args.extend(["--task".into(), DENSE_TASK.into()]);
    }
    args.extend(
        ["--dtype", "q8", "--head", "full", "--out"]
            .into_iter()
            .map(OsString::from),
    );
    args.push(out.as_os_str().to_owned());
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("cannot create the folder of {}", out.display()))?;
    cargo::run(&mut cargo::program(
        &release_binary("whittle").to_string_lossy(),
        args,
    ))
}

/// The dense q8 bundle with a full head, packed once into the cache.
fn dense_bundle(repack: bool) -> anyhow::Result<PathBuf> {
    let path = bench_dir()?.join("dense-q8-full.wbundle");
    if repack || !path.exists() {
        pack(None, &path)?;
    }
    Ok(path)
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

/// The pruned bundle: given, or packed (q8, full head) from a prune folder into the cache.
fn pruned_bundle(args: &CompareArgs) -> anyhow::Result<PathBuf> {
    if let Some(bundle) = &args.pruned_bundle {
        if !bundle.exists() {
            bail!("{} does not exist; check --pruned-bundle", bundle.display());
        }
        return Ok(bundle.clone());
    }
    let Some(dir) = &args.prune_dir else {
        bail!(
            "no pruned model: pass --prune-dir DIR, the output folder of `cargo xtask prune --task sst2 --board jetson-orin --out DIR` (ε = 0.05 by default), or --pruned-bundle FILE (packed with --head full)"
        );
    };
    let path = bench_dir()?.join(format!("pruned-{:016x}-q8-full.wbundle", prune_key(dir)?));
    if args.repack || !path.exists() {
        pack(Some(dir), &path)?;
    }
    Ok(path)
}

/// The virtual environment with cyllama, created (and cyllama installed) when missing.
fn venv_python() -> anyhow::Result<PathBuf> {
    let venv = home()?.join(".cache/whittle/venvs/cyllama");
    let python = venv.join("bin/python");
    let version = |python: &Path| {
        cargo::program(
            &python.to_string_lossy(),
            ["-c", "import cyllama; print(cyllama.__version__)"],
        )
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if version(&python).as_deref() == Some(CYLLAMA_VERSION) {
        return Ok(python);
    }
    if !python.exists() {
        cargo::run(&mut cargo::program(
            "python3",
            [
                OsString::from("-m"),
                "venv".into(),
                venv.as_os_str().to_owned(),
            ],
        ))
        .context("cannot create the virtual environment; install python3 with venv (Debian: python3-venv)")?;
    }
    cargo::run(&mut cargo::program(
        &python.to_string_lossy(),
        ["-m", "pip", "install", "--quiet", CYLLAMA],
    ))
    .with_context(|| format!("cannot install {CYLLAMA} from PyPI"))?;
    match version(&python) {
        Some(v) if v == CYLLAMA_VERSION => Ok(python),
        other => bail!("{CYLLAMA} did not install (found {other:?}); check the pip output above"),
    }
}

/// Parses the last line of `stdout` as JSON.
fn last_json(stdout: &str, what: &str) -> anyhow::Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed invalid JSON"))
}

fn floats(value: &Value, key: &str) -> Vec<f64> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The engines compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Dense,
    Pruned,
    Llama,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Self::Dense => "runtime dense q8",
            Self::Pruned => "runtime pruned q8",
            Self::Llama => "llama.cpp Q4_1",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Pruned => "pruned",
            Self::Llama => "llamacpp",
        }
    }
}

/// Every sample of one engine at one thread count.
#[derive(Debug, Default)]
struct Samples {
    prefill_s: Vec<f64>,
    decode_s: Vec<f64>,
    prefill_cpu_s: Vec<f64>,
    decode_cpu_s: Vec<f64>,
    last: Option<Value>,
}

impl Samples {
    fn add(&mut self, report: Value) {
        self.prefill_s.extend(floats(&report, "prefill_s"));
        self.decode_s.extend(floats(&report, "decode_s"));
        self.prefill_cpu_s.extend(floats(&report, "prefill_cpu_s"));
        self.decode_cpu_s.extend(floats(&report, "decode_cpu_s"));
        self.last = Some(report);
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// Runs one engine once (one warm-up, one measured run) and returns its report.
fn run_engine(
    engine: Engine,
    bundles: (&Path, &Path),
    python: &Path,
    model: &Path,
    tokens: &str,
    threads: usize,
    args: &CompareArgs,
) -> anyhow::Result<Value> {
    let threads_s = threads.to_string();
    let (prefill, decode) = (args.prefill.to_string(), args.decode.to_string());
    let mut command = match engine {
        Engine::Dense | Engine::Pruned => {
            let bundle = if engine == Engine::Dense {
                bundles.0
            } else {
                bundles.1
            };
            cargo::program(
                &release_binary("whittle-device").to_string_lossy(),
                [
                    OsString::from("bench"),
                    bundle.as_os_str().to_owned(),
                    "--threads".into(),
                    threads_s.into(),
                    "--prefill".into(),
                    prefill.into(),
                    "--decode".into(),
                    decode.into(),
                    "--repeats".into(),
                    "1".into(),
                    "--warmup".into(),
                    "1".into(),
                    "--prompt-file".into(),
                    PROMPT_FILE.into(),
                    "--json".into(),
                ],
            )
        }
        Engine::Llama => cargo::program(
            &python.to_string_lossy(),
            [
                OsString::from("xtask/scripts/llamacpp_bench.py"),
                "--model".into(),
                model.as_os_str().to_owned(),
                "--tokens".into(),
                tokens.into(),
                "--threads".into(),
                threads_s.into(),
                "--decode".into(),
                decode.into(),
                "--repeats".into(),
                "1".into(),
                "--warmup".into(),
                "1".into(),
            ],
        ),
    };
    let stdout = cargo::stdout_of(&mut command)?;
    last_json(&stdout, engine.name())
}

/// `cargo xtask bench-compare`.
pub fn compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    if args.repeats == 0 || args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--repeats and every --threads value must be at least 1");
    }
    let model = model_path()?;
    if !model.exists() {
        cargo::run(&mut cargo::cargo(crate::host::host_cargo_args(
            "fetch-model",
            &[],
        )))?;
    }
    let pruned = if args.dense_only {
        None
    } else {
        Some(pruned_bundle(args)?)
    };
    let dense = dense_bundle(args.repack)?;
    build(&["whittle-device"])?;
    let python = venv_python()?;

    // The prompt's token ids, from the runtime's tokenizer (the bundle's tables).
    let probe = cargo::stdout_of(&mut cargo::program(
        &release_binary("whittle-device").to_string_lossy(),
        [
            OsString::from("bench"),
            dense.as_os_str().to_owned(),
            "--threads".into(),
            "1".into(),
            "--prefill".into(),
            args.prefill.to_string().into(),
            "--decode".into(),
            "0".into(),
            "--repeats".into(),
            "1".into(),
            "--warmup".into(),
            "0".into(),
            "--prompt-file".into(),
            PROMPT_FILE.into(),
            "--json".into(),
        ],
    ))?;
    let probe = last_json(&probe, "whittle-device bench")?;
    let tokens: Vec<String> = probe
        .get("prompt_tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|t| t.to_string())
                .collect()
        })
        .unwrap_or_default();
    if tokens.len() != args.prefill {
        bail!(
            "the prompt has {} tokens, not {}",
            tokens.len(),
            args.prefill
        );
    }
    let tokens = tokens.join(",");

    let engines: Vec<Engine> = [Engine::Dense, Engine::Pruned, Engine::Llama]
        .into_iter()
        .filter(|&e| e != Engine::Pruned || pruned.is_some())
        .collect();
    let mut samples: Vec<((Engine, usize), Samples)> = Vec::new();
    for &threads in &args.threads {
        for &engine in &engines {
            samples.push(((engine, threads), Samples::default()));
        }
    }
    for round in 0..args.repeats {
        for (t_index, &threads) in args.threads.iter().enumerate() {
            for step in 0..engines.len() {
                let engine = engines[(round + t_index + step) % engines.len()];
                eprintln!(
                    "round {}/{}: {} on {threads} thread(s)",
                    round + 1,
                    args.repeats,
                    engine.name()
                );
                let report = run_engine(
                    engine,
                    (&dense, pruned.as_deref().unwrap_or(&dense)),
                    &python,
                    &model,
                    &tokens,
                    threads,
                    args,
                )?;
                if let Some((_, s)) = samples.iter_mut().find(|(k, _)| *k == (engine, threads)) {
                    s.add(report);
                }
            }
        }
    }
    let summary = summarize(args, &samples, &dense, pruned.as_deref());
    print_summary(args, &summary);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Medians, ratios, the bandwidth fraction and the cost model's errors as one JSON value.
fn summarize(
    args: &CompareArgs,
    samples: &[((Engine, usize), Samples)],
    dense: &Path,
    pruned: Option<&Path>,
) -> Value {
    let find = |engine: Engine, threads: usize| {
        samples
            .iter()
            .find(|(k, _)| *k == (engine, threads))
            .map(|(_, s)| s)
    };
    let mut configs = Vec::new();
    for ((engine, threads), s) in samples {
        let predicted = s.last.as_ref().and_then(|r| r.get("predicted")).cloned();
        configs.push(json!({
            "engine": engine.key(),
            "threads": threads,
            "prefill_tok_s": rate(args.prefill, median(&s.prefill_s)),
            "decode_tok_s": rate(args.decode, median(&s.decode_s)),
            "prefill_tok_per_cpu_s": rate(args.prefill, median(&s.prefill_cpu_s)),
            "decode_tok_per_cpu_s": rate(args.decode, median(&s.decode_cpu_s)),
            "runs": s.decode_s.len(),
            "predicted": predicted,
        }));
    }
    let tok_s = |engine: Engine, threads: usize, prefill: bool| {
        find(engine, threads).map_or(0.0, |s| {
            if prefill {
                rate(args.prefill, median(&s.prefill_s))
            } else {
                rate(args.decode, median(&s.decode_s))
            }
        })
    };
    let ratio = |a: f64, b: f64| {
        if a > 0.0 && b > 0.0 {
            json!(a / b)
        } else {
            Value::Null
        }
    };
    let top = args.threads.iter().copied().max().unwrap_or(1);
    let ratios_at = |threads: usize| {
        json!({
            "dense_decode_ratio": ratio(tok_s(Engine::Dense, threads, false), tok_s(Engine::Llama, threads, false)),
            "pruned_decode_ratio": ratio(tok_s(Engine::Pruned, threads, false), tok_s(Engine::Llama, threads, false)),
            "prefill_ratio": ratio(tok_s(Engine::Dense, threads, true), tok_s(Engine::Llama, threads, true)),
            "pruned_prefill_ratio": ratio(tok_s(Engine::Pruned, threads, true), tok_s(Engine::Llama, threads, true)),
        })
    };
    // The cost model against the runtime's faster thread count (the host profile keeps the
    // better of its one- and all-thread figures too).
    let mut cost_rows = Vec::new();
    let mut max_error: f64 = 0.0;
    let mut max_error_cpu: f64 = 0.0;
    let mut bandwidth_fraction = json!({});
    for engine in [Engine::Dense, Engine::Pruned] {
        let Some(predicted) = args
            .threads
            .iter()
            .find_map(|&t| find(engine, t)?.last.as_ref()?.get("predicted").cloned())
            .filter(|p| !p.is_null())
        else {
            continue;
        };
        let get = |key: &str| predicted.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        for (phase, prefill, key) in [
            ("decode", false, "decode_ms_per_token"),
            ("prefill", true, "prefill_ms_per_token"),
        ] {
            let best = args
                .threads
                .iter()
                .map(|&t| (t, tok_s(engine, t, prefill)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((1, 0.0));
            let measured_ms = if best.1 > 0.0 { 1e3 / best.1 } else { 0.0 };
            // One thread's CPU time: the time the work takes when it has a core to itself.
            let cpu_ms = find(engine, 1).map_or(0.0, |s| {
                let (cpu, n) = if prefill {
                    (median(&s.prefill_cpu_s), args.prefill)
                } else {
                    (median(&s.decode_cpu_s), args.decode)
                };
                if n > 0 { 1e3 * cpu / n as f64 } else { 0.0 }
            });
            let predicted_ms = get(key);
            let error = if measured_ms > 0.0 {
                (predicted_ms - measured_ms) / measured_ms
            } else {
                0.0
            };
            let error_cpu = if cpu_ms > 0.0 {
                (predicted_ms - cpu_ms) / cpu_ms
            } else {
                0.0
            };
            max_error = max_error.max(error.abs());
            max_error_cpu = max_error_cpu.max(error_cpu.abs());
            cost_rows.push(json!({
                "bundle": engine.key(),
                "phase": phase,
                "predicted_ms_per_token": predicted_ms,
                "measured_ms_per_token": measured_ms,
                "measured_threads": best.0,
                "relative_error": error,
                "one_thread_cpu_ms_per_token": cpu_ms,
                "relative_error_to_cpu_time": error_cpu,
            }));
        }
        let bytes = get("bytes_read_per_token");
        let bandwidth = get("bandwidth_bytes_per_s");
        let ceiling = if bytes > 0.0 { bandwidth / bytes } else { 0.0 };
        let best_decode = args
            .threads
            .iter()
            .map(|&t| tok_s(engine, t, false))
            .fold(0.0, f64::max);
        bandwidth_fraction[engine.key()] = json!({
            "bytes_read_per_token": bytes,
            "bandwidth_bytes_per_s": bandwidth,
            "ceiling_tok_s": ceiling,
            "decode_tok_s": best_decode,
            "fraction": if ceiling > 0.0 { best_decode / ceiling } else { 0.0 },
        });
    }
    let mut summary = ratios_at(top);
    summary["threads_for_ratios"] = json!(top);
    summary["ratios_by_threads"] = Value::Array(
        args.threads
            .iter()
            .map(|&t| {
                let mut r = ratios_at(t);
                r["threads"] = json!(t);
                r
            })
            .collect(),
    );
    summary["cost_model_max_error"] = json!(max_error);
    summary["cost_model_max_error_to_cpu_time"] = json!(max_error_cpu);
    summary["cost_model"] = Value::Array(cost_rows);
    summary["bandwidth"] = bandwidth_fraction;
    summary["configurations"] = Value::Array(configs);
    summary["prefill_tokens"] = json!(args.prefill);
    summary["decode_tokens"] = json!(args.decode);
    summary["rounds"] = json!(args.repeats);
    summary["dense_bundle"] = json!(dense.display().to_string());
    summary["pruned_bundle"] = json!(pruned.map(|p| p.display().to_string()));
    summary
}

fn print_summary(args: &CompareArgs, s: &Value) {
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    println!(
        "\nprefill {} tokens, greedy decode {} tokens; medians of {} rounds (tok/s, wall clock; \
         tok per CPU-second in brackets)",
        args.prefill, args.decode, args.repeats
    );
    println!(
        "{:<20} {:>7} {:>20} {:>20}",
        "engine", "threads", "prefill tok/s", "decode tok/s"
    );
    for c in s["configurations"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:>7} {:>10.1} [{:>7.1}] {:>10.1} [{:>7.1}]",
            c["engine"].as_str().unwrap_or(""),
            c["threads"],
            f(c, "prefill_tok_s"),
            f(c, "prefill_tok_per_cpu_s"),
            f(c, "decode_tok_s"),
            f(c, "decode_tok_per_cpu_s"),
        );
    }
    let ratio = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"))
    };
    println!("\nratios (runtime ÷ llama.cpp):");
    for r in s["ratios_by_threads"].as_array().into_iter().flatten() {
        println!(
            "  {} thread(s): dense decode {}, pruned decode {}, dense prefill {}, pruned prefill {}",
            r["threads"],
            ratio(r, "dense_decode_ratio"),
            ratio(r, "pruned_decode_ratio"),
            ratio(r, "prefill_ratio"),
            ratio(r, "pruned_prefill_ratio"),
        );
    }
    println!("\ncost model (host profile) against the runtime (faster thread count):");
    for row in s["cost_model"].as_array().into_iter().flatten() {
        println!(
            "  {:<7} {:<8} predicted {:>7.3} ms/token, measured {:>7.3} ({} thr), error {:+.0}%; 1-thread CPU time {:>7.3}, error {:+.0}%",
            row["bundle"].as_str().unwrap_or(""),
            row["phase"].as_str().unwrap_or(""),
            f(row, "predicted_ms_per_token"),
            f(row, "measured_ms_per_token"),
            row["measured_threads"],
            100.0 * f(row, "relative_error"),
            f(row, "one_thread_cpu_ms_per_token"),
            100.0 * f(row, "relative_error_to_cpu_time"),
        );
    }
    for key in ["dense", "pruned"] {
        if let Some(b) = s["bandwidth"].get(key) {
            println!(
                "  {key}: {:.1} MB read per token at {:.1} GB/s: ceiling {:.0} tok/s, decode {:.1} tok/s = {:.0}% of it",
                f(b, "bytes_read_per_token") / 1e6,
                f(b, "bandwidth_bytes_per_s") / 1e9,
                f(b, "ceiling_tok_s"),
                f(b, "decode_tok_s"),
                100.0 * f(b, "fraction"),
            );
        }
    }
}

/// `cargo xtask bench --board B`: refreshes the measured `host` profile (for `host`), then
/// benchmarks the dense bundle (and the pruned one, given) against the board's cost model.
pub fn bench(board: &str, prune_dir: Option<&Path>, repeats: usize) -> anyhow::Result<ExitCode> {
    build(&["whittle-device"])?;
    let device = release_binary("whittle-device");
    if board == "host" {
        cargo::run(&mut cargo::program(
            &device.to_string_lossy(),
            ["profile", "--install"],
        ))?;
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
        json: false,
    };
    let mut bundles = vec![dense_bundle(false)?];
    if prune_dir.is_some() {
        bundles.push(pruned_bundle(&args)?);
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
            cargo::run(&mut cargo::program(
                &device.to_string_lossy(),
                [
                    OsString::from("bench"),
                    bundle.as_os_str().to_owned(),
                    "--board".into(),
                    board.into(),
                    "--threads".into(),
                    threads.to_string().into(),
                    "--repeats".into(),
                    repeats.to_string().into(),
                    "--prompt-file".into(),
                    PROMPT_FILE.into(),
                ],
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[2.0, 9.0, 1.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn the_last_json_line_is_parsed() {
        match last_json("progress\n{\"a\": 1}\n", "x") {
            Ok(value) => assert_eq!(value["a"], 1),
            Err(error) => panic!("{error:#}"),
        }
        assert!(last_json("no json here\n", "x").is_err());
    }
}
