//! Time to label: text in, label out, over the SST-2 test sentences (all 872 GLUE dev
//! sentences unless `--label-sentences` says fewer). whittle: `whittle-device run BUNDLE --file`
//! (the bundle loaded once; each line's `ms` is tokenizing, the forward pass after the stored
//! prompt prefix and the label head). llama.cpp: the same chat prompt text through `cyllama`
//! (tokenized, run from an empty KV cache, full-vocabulary logits), as its user would. Both on
//! the same threads; medians per sentence.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use whittle_boards::stats::median;
use whittle_runtime::{AlignedBytes, Bundle};

use crate::cargo;
use crate::workspace::{Built, Executable};

/// The test sentences, relative to the workspace root (`sentence<TAB>label`, a header line).
const SENTENCES: &str = "data/sst2/dev.tsv";

/// What the comparison found.
#[derive(Debug, Serialize)]
pub struct TimeToLabel {
    /// Sentences timed.
    pub sentences: usize,
    /// Threads both engines ran on.
    pub threads: usize,
    /// whittle's median, ms per sentence.
    pub whittle_median_ms: f64,
    /// llama.cpp's median, ms per sentence.
    pub llama_median_ms: f64,
    /// Prompt tokens whittle ran per sentence: llama.cpp's median less the bundle's stored
    /// prefix (both tokenize the same text alike: `whittle parity` counts the mismatches).
    pub whittle_median_tokens_run: f64,
    /// Prompt tokens llama.cpp ran per sentence (median).
    pub llama_median_tokens: f64,
    /// Fraction of sentences both label alike (the bundle's label bias added on both sides;
    /// llama.cpp runs the Q4_1 weights, whittle their q8 requantization).
    pub label_agreement: f64,
}

#[derive(Deserialize)]
struct WhittleLine {
    label: String,
    ms: f64,
}

#[derive(Deserialize)]
struct LlamaRecord {
    label_s: Vec<f64>,
    labels: Vec<usize>,
    prompt_tokens: Vec<f64>,
}

/// Runs both engines over the first `limit` test sentences on `threads` threads.
pub fn compare(
    built: &Built,
    python: &Path,
    model: &Path,
    bundle: &Path,
    threads: usize,
    limit: usize,
) -> anyhow::Result<TimeToLabel> {
    let root = cargo::workspace_root();
    let text = std::fs::read_to_string(root.join(SENTENCES))
        .with_context(|| format!("cannot read {SENTENCES}"))?;
    let sentences: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split('\t').next())
        .take(limit)
        .collect();
    if sentences.is_empty() {
        bail!("{SENTENCES} has no sentences");
    }
    let bytes =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let aligned = AlignedBytes::new(&bytes);
    let parsed = Bundle::parse(aligned.as_bytes())
        .map_err(|error| anyhow::anyhow!("{} is not a valid bundle: {error}", bundle.display()))?;
    let task = &parsed.header().task;
    let names: Vec<&str> = task.labels.iter().map(|l| l.name).collect();
    let label_tokens: Vec<String> = task.labels.iter().map(|l| l.token_id.to_string()).collect();
    let label_bias: Vec<String> = task.labels.iter().map(|l| l.bias.to_string()).collect();
    let prompts: Vec<String> = sentences
        .iter()
        .map(|s| format!("{}{s}{}", task.prompt_prefix, task.prompt_suffix))
        .collect();
    let stored = parsed.prefix().map_or(0, |p| p.tokens.len());

    let dir = cargo::target_dir()?.join("time-to-label");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let inputs = dir.join("sentences.txt");
    std::fs::write(&inputs, sentences.join("\n") + "\n")?;
    let prompt_file = dir.join("prompts.json");
    std::fs::write(&prompt_file, serde_json::to_string(&prompts)?)?;

    eprintln!(
        "time to label: whittle on {} sentences, {threads} thread(s)",
        sentences.len()
    );
    let mut run = built.command(
        Executable::DeviceTool,
        [
            OsString::from("run"),
            bundle.as_os_str().to_owned(),
            "--file".into(),
            inputs.as_os_str().to_owned(),
            "--threads".into(),
            threads.to_string().into(),
        ],
    )?;
    let stdout = cargo::stdout_of(&mut run)?;
    let lines: Vec<WhittleLine> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("cannot read whittle-device run's JSON lines")?;
    eprintln!(
        "time to label: llama.cpp on {} sentences, {threads} thread(s)",
        sentences.len()
    );
    let mut llama = cargo::program(
        python,
        [
            OsString::from("xtask/scripts/llamacpp_bench.py"),
            "--model".into(),
            model.as_os_str().to_owned(),
            "--label-prompts".into(),
            prompt_file.as_os_str().to_owned(),
            "--label-tokens".into(),
            label_tokens.join(",").into(),
            "--label-bias".into(),
            label_bias.join(",").into(),
            "--threads".into(),
            threads.to_string().into(),
            "--warmup".into(),
            "1".into(),
        ],
    );
    let llama: LlamaRecord = super::last_json(&cargo::stdout_of(&mut llama)?, "llama.cpp")?;
    if lines.len() != sentences.len() || llama.labels.len() != sentences.len() {
        bail!(
            "{} sentences, but whittle answered {} and llama.cpp {}",
            sentences.len(),
            lines.len(),
            llama.labels.len()
        );
    }
    let agree = lines
        .iter()
        .zip(&llama.labels)
        .filter(|(w, l)| names.get(**l) == Some(&w.label.as_str()))
        .count();
    let whittle_ms: Vec<f64> = lines.iter().map(|l| l.ms).collect();
    let llama_ms: Vec<f64> = llama.label_s.iter().map(|s| 1e3 * s).collect();
    let llama_tokens = median(&llama.prompt_tokens);
    Ok(TimeToLabel {
        sentences: sentences.len(),
        threads,
        whittle_median_ms: median(&whittle_ms),
        llama_median_ms: median(&llama_ms),
        whittle_median_tokens_run: llama_tokens - stored as f64,
        llama_median_tokens: llama_tokens,
        label_agreement: agree as f64 / sentences.len() as f64,
    })
}
