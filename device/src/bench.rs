//! `whittle-device run` and `whittle-device bench`: a bundle on this machine, through the
//! runtime with the fastest kernels on a persistent thread pool.
//!
//! `bench` times, on the same prompt every repetition (KV cache emptied in between), a prefill
//! of `--prefill` tokens and then greedy decoding of `--decode` tokens (full-vocabulary logits,
//! argmax, one token fed), and sets the medians beside the board cost model's prediction for
//! the bundle's rank plan at the same context lengths.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use whittle_boards::stats::{least, median};
use whittle_boards::{BenchPrediction, BenchRecord, BoardProfile, BundleVariant, Prediction};
use whittle_runtime::format::{Dtype, HeadRef, LinearRef, TaskKind};
use whittle_runtime::kernels::{AnyKernels, Kernels, Threaded, best};
use whittle_runtime::{AlignedBytes, BlockWidths, Bundle, Model, Session, Tokenizer};

/// Text tokenized for the benchmark prompt when no `--prompt-file` is given.
const BUILTIN_PROMPT: &str = "The history of the region begins with small farming villages \
along the river, which grew into market towns as trade with the coast increased. Over the \
following centuries the towns were fortified, and a network of roads connected them to the \
capital. ";

/// Bytes of the prompt file read (enough text for several thousand tokens).
const PROMPT_FILE_BYTES: usize = 32 * 1024;

/// Token capacity of the prompt buffer.
const PROMPT_CAPACITY: usize = 8192;

/// Token capacity of a `run` session (prompt and answer).
const RUN_CONTEXT: usize = 1024;

/// A bundle read from a file into 64-byte aligned memory.
pub struct LoadedBundle {
    bytes: AlignedBytes,
    path: PathBuf,
}

impl LoadedBundle {
    /// Reads `path` once, straight into aligned memory (the bundle is held once: no second
    /// copy to align it).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use std::io::Read;
        let cannot = || format!("cannot read {}; check the path", path.display());
        let mut file = std::fs::File::open(path).with_context(cannot)?;
        let len = file.metadata().with_context(cannot)?.len();
        let len = usize::try_from(len)
            .with_context(|| format!("{} is too large for this machine", path.display()))?;
        let mut bytes = AlignedBytes::zeroed(len);
        file.read_exact(bytes.as_bytes_mut()).with_context(cannot)?;
        Ok(Self {
            bytes,
            path: path.to_owned(),
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes (64-byte aligned).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_bytes()
    }

    /// Parses and validates the bundle.
    pub fn parse(&self) -> anyhow::Result<Bundle<'_>> {
        Bundle::parse(self.bytes.as_bytes()).map_err(|error| {
            anyhow::anyhow!(
                "{} is not a valid bundle: {error}; re-pack it with `whittle pack`",
                self.path.display()
            )
        })
    }
}

/// The kernels a command runs on: the fastest single-threaded implementation on `threads`
/// threads.
pub fn kernels(threads: usize) -> Threaded<AnyKernels> {
    Threaded::new(best(), threads.max(1))
}

/// A zeroed, 4-byte aligned arena of at least `bytes` bytes.
fn arena(bytes: usize) -> Vec<u32> {
    vec![0u32; bytes.div_ceil(4)]
}

/// Where `whittle-device run` takes its inputs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// One text; the answer is printed as plain text.
    Text(String),
    /// One input per line of a file (`-`: standard input); one JSON object per line out.
    Lines(PathBuf),
}

/// `whittle-device run`: classifies or generates for each input, loading the bundle once.
pub fn run(
    loaded: &LoadedBundle,
    inputs: &Inputs,
    threads: usize,
    max_new_tokens: Option<usize>,
) -> anyhow::Result<()> {
    let bundle = loaded.parse()?;
    let mut words = arena(bundle.arena_bytes(RUN_CONTEXT));
    let mut session: Session<'_, '_, _, RUN_CONTEXT> = Session::new(
        &bundle,
        kernels(threads),
        bytemuck::cast_slice_mut(&mut words),
    )
    .map_err(|error| anyhow::anyhow!("cannot start a session: {error}"))?;
    let task = &bundle.header().task;
    let limit = max_new_tokens.unwrap_or(task.max_new_tokens as usize);
    match inputs {
        Inputs::Text(text) => {
            match answer(&mut session, task.kind, text, limit)? {
                Answer::Label { label, .. } => println!("{label}"),
                Answer::Text(text) => println!("{text}"),
            }
            Ok(())
        }
        Inputs::Lines(path) => {
            use std::io::{BufRead, Write};
            let reader: Box<dyn BufRead> = match path.to_str() {
                Some("-") => Box::new(std::io::stdin().lock()),
                _ => Box::new(std::io::BufReader::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("cannot read {}; check --file", path.display()))?,
                )),
            };
            let mut out = std::io::stdout().lock();
            let mut failed = 0usize;
            for (index, line) in reader.lines().enumerate() {
                let line = line.with_context(|| {
                    format!("cannot read line {} of the inputs (not UTF-8?)", index + 1)
                })?;
                let started = Instant::now();
                let result = answer(&mut session, task.kind, &line, limit);
                // Text in to answer out: tokenizing, the forward pass and the head.
                let ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
                let record = match result {
                    Ok(Answer::Label { label, scores }) => {
                        serde_json::json!({"line": index + 1, "label": label, "scores": scores, "ms": ms})
                    }
                    Ok(Answer::Text(text)) => {
                        serde_json::json!({"line": index + 1, "answer": text, "ms": ms})
                    }
                    Err(error) => {
                        failed += 1;
                        serde_json::json!({"line": index + 1, "error": format!("{error:#}")})
                    }
                };
                writeln!(out, "{record}").context("cannot write the answers")?;
            }
            out.flush().context("cannot write the answers")?;
            match failed {
                0 => Ok(()),
                n => anyhow::bail!("{n} input(s) failed; their lines carry an \"error\""),
            }
        }
    }
}

/// One input's answer.
enum Answer {
    /// The label and every label's logit plus bias, in label order.
    Label { label: String, scores: Vec<f32> },
    /// Generated text.
    Text(String),
}

fn answer<K: Kernels>(
    session: &mut Session<'_, '_, K, RUN_CONTEXT>,
    kind: TaskKind,
    text: &str,
    max_new_tokens: usize,
) -> anyhow::Result<Answer> {
    match kind {
        TaskKind::Classification => {
            let scores = session
                .label_scores(text)
                .map_err(|error| anyhow::anyhow!("cannot classify: {error}"))?
                .to_vec();
            let answer = session
                .classify_scores(&scores)
                .map_err(|error| anyhow::anyhow!("cannot classify: {error}"))?;
            Ok(Answer::Label {
                label: answer.label.to_string(),
                scores,
            })
        }
        TaskKind::Generation => {
            let mut out = vec![0u8; 16 * max_new_tokens.max(1)];
            let answer = session
                .generate(text, max_new_tokens, &mut out)
                .map_err(|error| anyhow::anyhow!("cannot generate: {error}"))?;
            Ok(Answer::Text(answer.to_string()))
        }
    }
}

/// What `whittle-device bench` is asked to do.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The bundle file (with a full head to decode: `whittle pack --head full`) [default: the
    /// installed current bundle].
    pub bundle: Option<PathBuf>,
    /// The store of installed bundles (see `whittle-device install`).
    #[arg(long, env = crate::install::ROOT_ENV, default_value = crate::install::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Threads sharing each matrix product.
    #[arg(long, default_value_t = crate::default_threads())]
    pub threads: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 256)]
    pub prefill: usize,
    /// Greedy tokens decoded after the prompt.
    #[arg(long, default_value_t = 64)]
    pub decode: usize,
    /// Measured repetitions (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Unmeasured repetitions first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Text the prompt is tokenized from (its first 32 KiB) [default: a built-in paragraph].
    #[arg(long, value_name = "PATH")]
    pub prompt_file: Option<PathBuf>,
    /// Board profile whose cost model is compared (name or .toml file).
    #[arg(long, default_value = "host")]
    pub board: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The first `tokens` tokens of `text` under the bundle's tokenizer.
fn prompt_tokens(tokenizer: &Tokenizer<'_>, text: &str, tokens: usize) -> anyhow::Result<Vec<u32>> {
    let mut ids: heapless::Vec<u32, PROMPT_CAPACITY> = heapless::Vec::new();
    let mut cut = text.len().min(PROMPT_FILE_BYTES);
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut piece = &text[..cut];
    // A repeated text when it is short (the built-in prompt): English runs 4 to 5 bytes a
    // token, so 8 bytes a token leave room.
    let repeated;
    if piece.len() < 8 * tokens {
        repeated = piece.repeat((8 * tokens).div_ceil(piece.len().max(1)));
        piece = &repeated;
    }
    tokenizer.encode(&[piece], &mut ids).map_err(|error| {
        anyhow::anyhow!("cannot tokenize the prompt: {error}; pass a shorter --prompt-file")
    })?;
    if ids.len() < tokens {
        bail!(
            "the prompt text has {} tokens, fewer than --prefill {tokens}; pass a longer --prompt-file",
            ids.len()
        );
    }
    Ok(ids[..tokens].to_vec())
}

/// Ranks and dtypes per prunable matrix, widths per block.
type Plan = (Vec<Option<usize>>, Vec<Dtype>, Vec<BlockWidths>);

/// The bundle's rank and dtype per prunable matrix and widths per block, as the cost model
/// takes them.
fn rank_plan(bundle: &Bundle<'_>) -> anyhow::Result<Plan> {
    let config = bundle.header().config;
    let mut ranks = Vec::with_capacity(config.n_prunable_matrices());
    let mut dtypes = Vec::with_capacity(config.n_prunable_matrices());
    let mut widths = Vec::with_capacity(config.n_layers);
    for layer_idx in 0..config.n_layers {
        let layer_error = |error| anyhow::anyhow!("layer {layer_idx}: {error}");
        let layer = bundle.layer(layer_idx).map_err(layer_error)?;
        widths.push(bundle.block_widths(layer_idx).map_err(layer_error)?);
        for linear in &layer.linears {
            let (rank, dtype) = match linear {
                LinearRef::Dense(m) => (None, m.dtype),
                LinearRef::LowRank { a, .. } => (Some(a.rows as usize), a.dtype),
            };
            ranks.push(rank);
            dtypes.push(dtype);
        }
    }
    Ok((ranks, dtypes, widths))
}

/// The cost model's figures for `bundle` on `board`: decode at context `prefill + decode / 2`
/// (the mean position of the measured decode), prefill for a `prefill`-token prompt.
pub fn predict(
    bundle: &Bundle<'_>,
    board: &str,
    prefill: usize,
    decode: usize,
) -> anyhow::Result<BenchPrediction> {
    let header = bundle.header();
    let mut profile = BoardProfile::resolve(board).map_err(|error| anyhow::anyhow!("{error}"))?;
    let (ranks, dtypes, widths) = rank_plan(bundle)?;
    let dtype = header.dtype;
    let head_rows = match header.head {
        HeadRef::Labels(m) => Some(m.rows as usize),
        HeadRef::Tied | HeadRef::Full(_) => None,
    };
    let mut at = |context: usize| -> anyhow::Result<Prediction> {
        profile.context_length = context.max(1);
        whittle_boards::predict(
            &profile,
            &header.config,
            &ranks,
            &widths,
            dtype,
            &dtypes,
            head_rows,
        )
        .map_err(|error| anyhow::anyhow!("{error}"))
    };
    let decoding = at(prefill + decode / 2)?;
    let prefilling = at(prefill)?;
    Ok(BenchPrediction {
        board: profile.name.clone(),
        bandwidth_bytes_per_s: profile.bandwidth_bytes_per_s,
        bytes_read_per_token: decoding.bytes_read_per_token,
        decode_ms_per_token: decoding.decode_ms_per_token_cpu,
        prefill_ms_per_token: prefilling.prefill_ms_per_token_cpu,
    })
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &value) in values.iter().enumerate() {
        if value > best_value {
            best = i;
            best_value = value;
        }
    }
    best as u32
}

/// CPU seconds this process has used (user + system, every thread), from `/proc/self/stat`
/// (fields 14 and 15, in ticks of 1/100 s, Linux's `USER_HZ`); 0 where it cannot be read.
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// One measured prefill and decode.
struct Sample {
    prefill_s: f64,
    decode_s: f64,
    prefill_cpu_s: f64,
    decode_cpu_s: f64,
    generated: Vec<u32>,
}

/// Prefill then greedy decode once from an empty cache.
fn run_once<K: Kernels>(
    model: &mut Model<'_, '_, K>,
    prompt: &[u32],
    decode: usize,
) -> anyhow::Result<Sample> {
    let fail = |error: whittle_runtime::Error| anyhow::anyhow!("the forward pass failed: {error}");
    model.reset();
    let (started, cpu) = (Instant::now(), process_cpu_s());
    model.feed(prompt).map_err(fail)?;
    let (prefill_s, prefill_cpu_s) = (started.elapsed().as_secs_f64(), process_cpu_s() - cpu);
    let mut generated = Vec::with_capacity(decode);
    let (started, cpu) = (Instant::now(), process_cpu_s());
    for _ in 0..decode {
        let token = argmax(model.logits().map_err(fail)?);
        generated.push(token);
        model.feed(&[token]).map_err(fail)?;
    }
    Ok(Sample {
        prefill_s,
        decode_s: started.elapsed().as_secs_f64(),
        prefill_cpu_s,
        decode_cpu_s: process_cpu_s() - cpu,
        generated,
    })
}

/// `whittle-device bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.prefill == 0 || args.repeats == 0 {
        bail!("--prefill and --repeats must be at least 1");
    }
    let loaded = crate::install::bundle_to_run(&args.root, args.bundle.as_deref())?;
    let bundle = loaded.parse()?;
    let header = bundle.header();
    if matches!(header.head, HeadRef::Labels(_)) && args.decode > 0 {
        bail!(
            "{} has a task-pruned head (label rows only), which cannot decode; pack it with `whittle pack --head full`, or pass --decode 0",
            loaded.path().display()
        );
    }
    let text = match &args.prompt_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}; check --prompt-file", path.display()))?,
        None => BUILTIN_PROMPT.to_owned(),
    };
    let prompt = prompt_tokens(&Tokenizer::new(&bundle), &text, args.prefill)?;
    let context = args.prefill + args.decode + 1;
    if context > header.config.max_position_embeddings {
        bail!(
            "--prefill + --decode exceeds the model's {} positions",
            header.config.max_position_embeddings
        );
    }
    let kernels = kernels(args.threads);
    let kernel = kernels.inner().name();
    let mut words = arena(bundle.arena_bytes(context));
    let mut model = Model::new(
        &bundle,
        kernels,
        context,
        bytemuck::cast_slice_mut(&mut words),
    )
    .map_err(|error| anyhow::anyhow!("cannot bind the bundle: {error}"))?;
    for _ in 0..args.warmup {
        run_once(&mut model, &prompt, args.decode)?;
    }
    let samples = (0..args.repeats)
        .map(|_| run_once(&mut model, &prompt, args.decode))
        .collect::<anyhow::Result<Vec<Sample>>>()?;
    let pick = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let (prefill_s, decode_s) = (pick(|s| s.prefill_s), pick(|s| s.decode_s));
    let (prefill_cpu_s, decode_cpu_s) = (pick(|s| s.prefill_cpu_s), pick(|s| s.decode_cpu_s));
    let generated = samples
        .last()
        .map(|s| s.generated.clone())
        .unwrap_or_default();
    let (predicted, predicted_error) =
        match predict(&bundle, &args.board, args.prefill, args.decode) {
            Ok(p) => (Some(p), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
    let rate = |tokens: usize, seconds: f64| {
        if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        }
    };
    let report = BenchRecord {
        bundle: loaded.path().display().to_string(),
        variant: if header.provenance.source.is_empty() {
            BundleVariant::Dense
        } else {
            BundleVariant::Pruned
        },
        dtype: header.dtype,
        kernel: kernel.to_owned(),
        threads: args.threads.max(1),
        prefill_tok_s: rate(args.prefill, median(&prefill_s)),
        decode_tok_s: rate(args.decode, median(&decode_s)),
        prompt_tokens: prompt,
        decode_tokens: args.decode,
        prefill_s,
        decode_s,
        prefill_cpu_s,
        decode_cpu_s,
        generated,
        predicted,
        predicted_error,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &BenchRecord) {
    println!(
        "{} ({} {}, kernel {} × {} threads)",
        r.bundle,
        r.variant.name(),
        r.dtype.name(),
        r.kernel,
        r.threads
    );
    println!(
        "prefill {} tokens: {:.1} tok/s (median of {})",
        r.prompt_tokens.len(),
        r.prefill_tok_s,
        r.prefill_s.len()
    );
    println!(
        "decode {} tokens: {:.1} tok/s (median of {})",
        r.decode_tokens,
        r.decode_tok_s,
        r.decode_s.len()
    );
    match (&r.predicted, &r.predicted_error) {
        (Some(p), _) => {
            // The profile keeps its fastest runs, so the prediction is set beside the fastest
            // repetition.
            let ms_per_token =
                |seconds: &[f64], tokens: usize| 1e3 * least(seconds) / tokens.max(1) as f64;
            let measured_decode_ms = ms_per_token(&r.decode_s, r.decode_tokens);
            let measured_prefill_ms = ms_per_token(&r.prefill_s, r.prompt_tokens.len());
            println!(
                "cost model ({}): decode {:.3} ms/token predicted, {:.3} measured (fastest of {}); prefill {:.3} ms/token predicted, {:.3} measured",
                p.board,
                p.decode_ms_per_token,
                measured_decode_ms,
                r.decode_s.len(),
                p.prefill_ms_per_token,
                measured_prefill_ms
            );
            let ceiling = p.bandwidth_bytes_per_s as f64 / p.bytes_read_per_token.max(1) as f64;
            println!(
                "bandwidth ceiling: {:.1} MB read per token at {:.1} GB/s = {:.1} tok/s; decode reaches {:.0}%",
                p.bytes_read_per_token as f64 / 1e6,
                p.bandwidth_bytes_per_s as f64 / 1e9,
                ceiling,
                100.0 * r.decode_tok_s / ceiling
            );
        }
        (None, Some(error)) => println!("no cost-model prediction: {error}"),
        (None, None) => {}
    }
}
