//! `whittle-device profile`: measures this machine and writes its `host` board profile, the
//! one `BoardProfile::builtin("host")` reads.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use whittle_boards::{BoardProfile, CpuProfile, HOST_BOARD_NAME, Source, host_profile_path};

use crate::info;
use crate::measure::{self, Bandwidth, KernelSpeed, Throughput};

/// Where Linux describes the CPU.
const CPUINFO_PATH: &str = "/proc/cpuinfo";
/// Where Linux reports the highest clock of the first core, in kHz.
const MAX_FREQ_PATH: &str = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq";
/// Where Linux describes the first core's caches, one `index*` folder per cache.
const CACHE_DIR: &str = "/sys/devices/system/cpu/cpu0/cache";
/// The bandwidth buffer is at least this large, and at least 8× the last-level cache.
const MIN_BUFFER_BYTES: usize = 512 << 20;
/// Runs per figure; the best is kept.
const RUNS: usize = 5;
/// `n` of the `n×n·n×n` sgemm: 3 MiB of matrices per thread, about the size of the model's
/// larger weight matrices.
const SGEMM_SIZE: usize = 512;
/// Products per thread per timed run: about 2.7 GFLOP.
const SGEMM_PRODUCTS_PER_RUN: usize = 10;
/// `rows × cols` of the kernel measurement's matrices: the model's MLP shape.
const KERNEL_SHAPE: (usize, usize) = (1536, 576);
/// Weight bytes per dtype the kernel decode figures stream (at least a quarter of the
/// bandwidth buffer, so several times the last-level cache).
const KERNEL_DECODE_BYTES: usize = 128 << 20;
/// The synthetic model the fixed costs are fitted on: the layer shapes of SmolLM2-135M (the
/// first model whittle prunes), its 30 blocks (110 MB of q8 weights, several times a
/// last-level cache, as in the real decode) and a small vocabulary.
const PROBE_MODEL: whittle_runtime::ModelConfig = whittle_runtime::ModelConfig {
    arch: whittle_runtime::Architecture::LLAMA,
    n_layers: 30,
    hidden_size: 576,
    intermediate_size: 1536,
    n_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
    vocab_size: 1024,
    max_position_embeddings: 512,
    rope_theta: 100_000.0,
    rms_norm_eps: 1e-5,
};
/// Prompt lengths of the two decode contexts; the longer one is also the prefill measured.
const SHORT_PROMPT: usize = 16;
const LONG_PROMPT: usize = 256;
/// The share of the host's memory the model may use: whittle's choice, since a development
/// machine runs other work beside it.
const HOST_MODEL_MEMORY_SHARE: f64 = 0.5;

/// Measures the machine; prints the profile (TOML, or JSON with `json`) unless it writes it to
/// `out`, or to the cache with `install`. With `merge`, every figure is the better of this
/// measurement and the installed host profile's ([`fastest_of`]).
pub fn run(json: bool, out: Option<PathBuf>, install: bool, merge: bool) -> anyhow::Result<()> {
    // Read first: a missing or unmergeable profile is refused before a minute of measuring.
    let installed = if merge {
        Some(BoardProfile::measured_host().map_err(|error| {
            anyhow::anyhow!(
                "--merge combines this measurement with the installed host profile, which cannot be read ({error}); measure it with `whittle-device profile --install` first"
            )
        })?)
    } else {
        None
    };
    let facts = MachineFacts::detect()?;
    let buffer_bytes = bandwidth_buffer_bytes(facts.last_level_cache_bytes, facts.memory_bytes);
    eprintln!(
        "measuring memory read bandwidth ({} MiB, 1 and {} threads) ...",
        buffer_bytes >> 20,
        facts.cores
    );
    let bandwidth = measure::read_bandwidth(buffer_bytes, facts.cores, RUNS);
    eprintln!(
        "measuring f32 matrix throughput (sgemm {SGEMM_SIZE}³, 1 and {} threads) ...",
        facts.cores
    );
    let throughput =
        measure::sgemm_throughput(SGEMM_SIZE, SGEMM_PRODUCTS_PER_RUN, facts.cores, RUNS);
    eprintln!(
        "measuring the runtime's kernels (decode over {} MiB of {}x{} matrices, prefill of {} tokens; 1 and {} threads) ...",
        KERNEL_DECODE_BYTES >> 20,
        KERNEL_SHAPE.0,
        KERNEL_SHAPE.1,
        whittle_runtime::MAX_PREFILL_CHUNK,
        facts.cores
    );
    let kernels = measure::kernel_speed(
        KERNEL_SHAPE,
        KERNEL_DECODE_BYTES.max(buffer_bytes / 4),
        whittle_runtime::MAX_PREFILL_CHUNK,
        facts.cores,
        RUNS,
    );
    let date = utc_date(SystemTime::now());
    let mut profile = host_profile(&facts, &bandwidth, &throughput, Some(&kernels), &date);
    eprintln!(
        "measuring the runtime on a synthetic {}-block model (decode after {SHORT_PROMPT} and {LONG_PROMPT} tokens, prefill of {LONG_PROMPT}; {} threads) ...",
        PROBE_MODEL.n_layers, facts.cores
    );
    let steps = measure::model_steps(
        &PROBE_MODEL,
        SHORT_PROMPT,
        LONG_PROMPT,
        KERNEL_DECODE_BYTES.max(buffer_bytes / 4),
        facts.cores,
        RUNS,
    )?;
    if let Some(kernels) = profile.kernels.as_mut() {
        kernels.probe = Some(steps.probe());
    }
    if let Some(installed) = &installed {
        profile = fastest_of(installed, profile)?;
    }
    add_overheads(&mut profile, &steps, &measured_by(&facts, &date))?;
    profile.validate()?;
    let text = toml::to_string(&profile).context("cannot write the host profile as TOML")?;
    let targets: Vec<PathBuf> = out
        .into_iter()
        .chain(install.then(host_profile_path))
        .collect();
    for path in &targets {
        write_profile(path, &text)?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "host: read bandwidth {:.1} GB/s on 1 thread, {:.1} GB/s on {}; f32 sgemm {:.1} GFLOP/s \
         on 1 thread, {:.1} GFLOP/s on {}; the profile keeps the better of each",
        bandwidth.one_thread_bytes_per_s / 1e9,
        bandwidth.all_threads_bytes_per_s / 1e9,
        bandwidth.threads,
        throughput.one_thread_flops / 1e9,
        throughput.all_threads_flops / 1e9,
        throughput.threads
    );
    if json {
        println!("{}", serde_json::to_string(&profile)?);
    } else if targets.is_empty() {
        print!("{text}");
    }
    Ok(())
}

/// What the operating system says about the machine.
#[derive(Clone, Debug, PartialEq)]
struct MachineFacts {
    cpu_model: String,
    cores: usize,
    clock_ghz: Option<f64>,
    isa_features: Vec<String>,
    memory_bytes: u64,
    last_level_cache_bytes: Option<usize>,
    target_triple: String,
}

impl MachineFacts {
    fn detect() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string(CPUINFO_PATH).unwrap_or_default();
        let max_freq = std::fs::read_to_string(MAX_FREQ_PATH).ok();
        Ok(Self {
            cpu_model: parse_cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_owned()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            clock_ghz: max_freq
                .as_deref()
                .and_then(parse_khz_as_ghz)
                .or_else(|| parse_cpuinfo_ghz(&cpuinfo)),
            isa_features: info::detected_simd_features()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            memory_bytes: info::read_mem_total_bytes(info::MEMINFO_PATH)?,
            last_level_cache_bytes: last_level_cache_bytes(Path::new(CACHE_DIR)),
            target_triple: env!("WHITTLE_DEVICE_TARGET").to_owned(),
        })
    }
}

/// The measured profile, named `host`. Bandwidth and throughput are the better of one thread
/// and all threads: on a busy machine all threads at once can lose to one, and the runtime can
/// always run on one.
fn host_profile(
    facts: &MachineFacts,
    bandwidth: &Bandwidth,
    throughput: &Throughput,
    kernels: Option<&KernelSpeed>,
    date: &str,
) -> BoardProfile {
    let by = measured_by(facts, date);
    let measured = |what: String| Source {
        what: format!("{what}; {by}"),
        url: None,
        verified: true,
        measured: true,
    };
    let mut sources = vec![
        measured(format!(
            "memory_bytes: MemTotal of /proc/meminfo; cpu: {} logical cores, the clock and model \
             from /proc/cpuinfo or cpufreq, ISA features by runtime detection",
            facts.cores
        )),
        measured(format!(
            "bandwidth_bytes_per_s: the better of 1 thread ({:.1} GB/s) and {} threads at once \
             ({:.1} GB/s), each the best of {} sums of a {} MiB buffer of u64 words",
            bandwidth.one_thread_bytes_per_s / 1e9,
            bandwidth.threads,
            bandwidth.all_threads_bytes_per_s / 1e9,
            bandwidth.runs,
            bandwidth.buffer_bytes >> 20
        )),
        measured(format!(
            "cpu_f32_flops: the better of 1 thread ({:.1} GFLOP/s) and {} threads at once \
             ({:.1} GFLOP/s, each multiplying its own matrices), each the best of {} runs of {} \
             matrixmultiply sgemm products {n}x{n}x{n} per thread",
            throughput.one_thread_flops / 1e9,
            throughput.threads,
            throughput.all_threads_flops / 1e9,
            throughput.runs,
            throughput.products_per_run,
            n = throughput.size
        )),
    ];
    if let Some(k) = kernels {
        let pair = |p: [f64; 2], scale: f64| format!("{:.1} / {:.1}", p[0] / scale, p[1] / scale);
        sources.push(measured(format!(
            "kernels: whittle's {} kernels on a persistent pool, 1 / {} threads, the better kept, \
             each the best of {} runs: one-token products over {} MiB of {}x{} weights per dtype, \
             q8 {} GB/s, f32 {} GB/s, q4 {} GB/s of weights; {}-token products, q8 {} GFLOP/s, \
             f32 {} GFLOP/s, q4 {} GFLOP/s (packing included); kernels.decode_by_working_set: \
             the decode products again over the first {} MiB of the matrices, the better of 1 \
             and {} threads",
            k.kernel,
            k.threads,
            RUNS,
            k.decode_bytes >> 20,
            k.shape.0,
            k.shape.1,
            pair(k.q8_decode, 1e9),
            pair(k.f32_decode, 1e9),
            pair(k.q4_decode, 1e9),
            k.prefill_tokens,
            pair(k.q8_prefill, 1e9),
            pair(k.f32_prefill, 1e9),
            pair(k.q4_prefill, 1e9),
            k.working_sets
                .iter()
                .map(|(bytes, _)| (bytes >> 20).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            k.threads,
        )));
    }
    BoardProfile {
        name: HOST_BOARD_NAME.to_owned(),
        aliases: Vec::new(),
        description: format!(
            "The machine whittle-device profile ran on: {}, {} logical cores; sustained \
             figures measured on {date}, not vendor peaks.",
            facts.cpu_model, facts.cores
        ),
        memory_bytes: facts.memory_bytes,
        model_memory_share: HOST_MODEL_MEMORY_SHARE,
        bandwidth_bytes_per_s: bandwidth.best_bytes_per_s() as u64,
        cpu_f32_flops: throughput.best_flops().round(),
        gpu_fp32_flops: None,
        storage_bytes: None,
        latency_budget_ms_per_token: None,
        objective_weight: BoardProfile::DEFAULT_OBJECTIVE_WEIGHT,
        context_length: BoardProfile::DEFAULT_CONTEXT_LENGTH,
        layer_overhead_us: BoardProfile::DEFAULT_LAYER_OVERHEAD_US,
        gpu_layer_overhead_us: BoardProfile::DEFAULT_GPU_LAYER_OVERHEAD_US,
        product_overhead_us: BoardProfile::DEFAULT_PRODUCT_OVERHEAD_US,
        gpu_product_overhead_us: BoardProfile::DEFAULT_GPU_PRODUCT_OVERHEAD_US,
        target_triple: facts.target_triple.clone(),
        kernels: kernels.map(KernelSpeed::rates),
        cpu: CpuProfile {
            cores: u32::try_from(facts.cores).unwrap_or(u32::MAX),
            core: kebab_case(&facts.cpu_model),
            clock_ghz: facts.clock_ghz,
            isa_features: facts.isa_features.clone(),
        },
        sources,
    }
}

/// `measured`, with each rate the higher and each time the lower of its own and `installed`'s,
/// for `whittle-device profile --merge`. A check against a benchmark's fastest of several
/// rounds spread over minutes needs a profile that saw as much of the machine: one
/// measurement takes twenty seconds, and a shared machine's busy stretches last that long
/// (a profile measured once predicted every bundle 10–25% slow against the fastest of five
/// rounds). `installed` must be this machine's profile, measured by these kernels on the same
/// synthetic model and working sets; the fixed costs are fitted afterwards, from the merged
/// figures.
fn fastest_of(
    installed: &BoardProfile,
    mut measured: BoardProfile,
) -> anyhow::Result<BoardProfile> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "cannot merge with the installed host profile: {why}; measure it afresh with `whittle-device profile --install`"
        )
    };
    if installed.target_triple != measured.target_triple
        || installed.cpu.core != measured.cpu.core
        || installed.cpu.cores != measured.cpu.cores
    {
        return Err(refuse("it was measured on another machine"));
    }
    let (Some(old), Some(new)) = (installed.kernels.as_ref(), measured.kernels.as_mut()) else {
        return Err(refuse("it has no kernel rates"));
    };
    if old.revision != new.revision {
        return Err(refuse("it was measured with other kernels"));
    }
    let (Some(old_probe), Some(probe)) = (old.probe.as_ref(), new.probe.as_mut()) else {
        return Err(refuse("it does not keep the synthetic model's times"));
    };
    let same_probe = (
        old_probe.short_context,
        old_probe.long_context,
        old_probe.prefill_tokens,
    ) == (
        probe.short_context,
        probe.long_context,
        probe.prefill_tokens,
    ) && (old_probe.pairs, old_probe.pair_bytes)
        == (probe.pairs, probe.pair_bytes);
    let same_curve = old.decode_by_working_set.len() == new.decode_by_working_set.len()
        && old
            .decode_by_working_set
            .iter()
            .zip(&new.decode_by_working_set)
            .all(|(a, b)| a.bytes == b.bytes);
    if !(same_probe && same_curve) {
        return Err(refuse(
            "its synthetic model or working sets are not this measurement's",
        ));
    }
    for (time, old_time) in [
        (&mut probe.short_decode_s, old_probe.short_decode_s),
        (&mut probe.long_decode_s, old_probe.long_decode_s),
        (
            &mut probe.prefill_s_per_token,
            old_probe.prefill_s_per_token,
        ),
        (&mut probe.pairs_s, old_probe.pairs_s),
    ] {
        *time = time.min(old_time);
    }
    for (rate, old_rate) in [
        (&mut new.q8_decode_bytes_per_s, old.q8_decode_bytes_per_s),
        (&mut new.f32_decode_bytes_per_s, old.f32_decode_bytes_per_s),
        (&mut new.q8_prefill_flops, old.q8_prefill_flops),
        (&mut new.f32_prefill_flops, old.f32_prefill_flops),
    ] {
        *rate = rate.max(old_rate);
    }
    for (rate, old_rate) in [
        (&mut new.q4_decode_bytes_per_s, old.q4_decode_bytes_per_s),
        (&mut new.q4_prefill_flops, old.q4_prefill_flops),
    ] {
        *rate = match (*rate, old_rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    for (point, old_point) in new
        .decode_by_working_set
        .iter_mut()
        .zip(&old.decode_by_working_set)
    {
        point.q8_decode_bytes_per_s = point
            .q8_decode_bytes_per_s
            .max(old_point.q8_decode_bytes_per_s);
        point.f32_decode_bytes_per_s = point
            .f32_decode_bytes_per_s
            .max(old_point.f32_decode_bytes_per_s);
        point.q4_decode_bytes_per_s = point
            .q4_decode_bytes_per_s
            .max(old_point.q4_decode_bytes_per_s);
    }
    let measurements = old.measurements.unwrap_or(1).saturating_add(1);
    new.measurements = Some(measurements);
    measured.bandwidth_bytes_per_s = measured
        .bandwidth_bytes_per_s
        .max(installed.bandwidth_bytes_per_s);
    measured.cpu_f32_flops = measured.cpu_f32_flops.max(installed.cpu_f32_flops);
    measured.sources.push(Source {
        what: format!(
            "bandwidth_bytes_per_s, cpu_f32_flops, kernels: each rate the highest and each time \
             the lowest of {measurements} measurements of this machine (whittle-device profile \
             --merge; the figures in the sources above are the last measurement's), the fixed \
             costs fitted from those"
        ),
        url: None,
        verified: true,
        measured: true,
    });
    Ok(measured)
}

/// Writes the fixed costs fitted on the synthetic model's times (`profile`'s `kernels.probe`,
/// measured as `steps` or merged) into `profile`, whose rates are already measured: the product
/// overhead as measured, the attention rate and the per-block overheads from
/// [`whittle_boards::fit_overheads`], with a source that gives the times.
fn add_overheads(
    profile: &mut BoardProfile,
    steps: &measure::ModelSteps,
    by: &str,
) -> anyhow::Result<()> {
    let probe = profile
        .kernels
        .as_ref()
        .and_then(|k| k.probe.clone())
        .unwrap_or_else(|| steps.probe());
    let fitted = whittle_boards::fit_overheads(
        profile,
        &steps.config,
        whittle_boards::Dtype::Q8,
        &probe.steps(),
    )
    .map_err(|error| anyhow::anyhow!("cannot fit the host's overheads: {error}"))?;
    let q8_rate = profile
        .kernels
        .as_ref()
        .map_or(profile.bandwidth_bytes_per_s as f64, |k| {
            k.q8_decode_bytes_per_s
        });
    let pair_overhead_s =
        (probe.pairs_s - probe.pair_bytes as f64 / q8_rate) / probe.pairs.max(1) as f64;
    profile.product_overhead_us = (pair_overhead_s * 1e6).max(0.0);
    profile.layer_overhead_us = fitted.layer_overhead_us;
    if let Some(kernels) = profile.kernels.as_mut() {
        kernels.attention_flops = fitted.attention_flops.map(f64::round);
        kernels.prefill_layer_overhead_us = Some(fitted.prefill_layer_overhead_us);
    }
    let [(short, short_s), (long, long_s)] = probe.steps().decode;
    profile.sources.push(Source {
        what: format!(
            "product_overhead_us, layer_overhead_us, kernels.attention_flops, \
             kernels.prefill_layer_overhead_us: the runtime on {} threads, the fastest of {} runs, \
             on a synthetic dense q8 model of {} blocks (hidden {}, intermediate {}, {} heads, \
             {} key/value heads, vocabulary {}): decode {:.3} ms per token at context {short} \
             and {:.3} ms at {long}, prefill {:.3} ms per token of a {}-token prompt; {} \
             one-token low-rank pairs of its matrix shapes at half their parameters, {} MiB of \
             q8 weights, {:.3} ms; the overheads are what the kernel rates above leave of these \
             times (the blocks: whittle_boards::fit_overheads; a pair: its time beyond its \
             bytes at the q8 decode rate); {by}",
            steps.threads,
            steps.runs,
            steps.config.n_layers,
            steps.config.hidden_size,
            steps.config.intermediate_size,
            steps.config.n_heads,
            steps.config.n_kv_heads,
            steps.config.vocab_size,
            short_s * 1e3,
            long_s * 1e3,
            probe.prefill_s_per_token * 1e3,
            probe.prefill_tokens,
            probe.pairs,
            probe.pair_bytes >> 20,
            probe.pairs_s * 1e3,
        ),
        url: None,
        verified: true,
        measured: true,
    });
    Ok(())
}

/// How every measured source ends: who measured, when, on what.
fn measured_by(facts: &MachineFacts, date: &str) -> String {
    format!(
        "measured by whittle-device profile on {date}, {}",
        facts.cpu_model
    )
}

/// `max(512 MiB, 8 × last-level cache)`, but at most a quarter of the memory.
fn bandwidth_buffer_bytes(last_level_cache_bytes: Option<usize>, memory_bytes: u64) -> usize {
    let wanted = last_level_cache_bytes
        .map_or(0, |bytes| bytes.saturating_mul(8))
        .max(MIN_BUFFER_BYTES);
    let quarter = usize::try_from(memory_bytes / 4).unwrap_or(usize::MAX);
    wanted.min(quarter).max(1 << 20)
}

/// Writes `text` to `path` atomically ([`whittle_boards::files::write_atomically`]).
fn write_profile(path: &Path, text: &str) -> anyhow::Result<()> {
    whittle_boards::files::write_atomically(path, text.as_bytes()).with_context(|| {
        format!(
            "cannot write the profile to {}; pass --out with a writable folder or set WHITTLE_CACHE_DIR",
            path.display()
        )
    })
}

/// The CPU's name: `model name` (x86), else the Arm implementer and part numbers.
fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    };
    field("model name").or_else(|| {
        let implementer = field("CPU implementer")?;
        let part = field("CPU part")?;
        Some(format!("Arm implementer {implementer} part {part}"))
    })
}

/// The highest `cpu MHz` of any core in `/proc/cpuinfo`, in GHz.
fn parse_cpuinfo_ghz(cpuinfo: &str) -> Option<f64> {
    cpuinfo
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == "cpu MHz").then_some(())?;
            value.trim().parse::<f64>().ok()
        })
        .filter(|mhz| mhz.is_finite() && *mhz > 0.0)
        .fold(None, |best: Option<f64>, mhz| {
            Some(best.map_or(mhz, |b| b.max(mhz)))
        })
        .map(|mhz| mhz / 1e3)
}

/// `cpuinfo_max_freq` (kHz) in GHz.
fn parse_khz_as_ghz(text: &str) -> Option<f64> {
    let khz: u64 = text.trim().parse().ok()?;
    (khz > 0).then(|| khz as f64 / 1e6)
}

/// A sysfs cache size (`32768K`, `1M`, `512`) in bytes.
fn parse_cache_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((split, _)) => text.split_at(split),
        None => (text, ""),
    };
    let value: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(scale)
}

/// The size of the highest-level cache of the first core, from sysfs.
fn last_level_cache_bytes(cache_dir: &Path) -> Option<usize> {
    std::fs::read_dir(cache_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let level: u32 = std::fs::read_to_string(entry.path().join("level"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let size = parse_cache_size(&std::fs::read_to_string(entry.path().join("size")).ok()?)?;
            Some((level, size))
        })
        .max()
        .map(|(_, size)| size)
}

/// Lowercase letters and digits joined by single `-` (`Intel(R) Xeon(R)` → `intel-r-xeon-r`).
fn kebab_case(text: &str) -> String {
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if words.is_empty() {
        "unknown".to_owned()
    } else {
        words.join("-")
    }
}

/// The UTC calendar date of `time`, `YYYY-MM-DD`.
fn utc_date(time: SystemTime) -> String {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Year, month and day of the proleptic Gregorian calendar, `days` after 1970-01-01
/// (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
