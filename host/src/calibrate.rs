//! Calibration: stream a task split through the dense model and accumulate, in f64, the second
//! moment `C = Σ x xᵀ` (and `Σ |x|`) of every distinct linear input (DESIGN section 2).
//! Memory is bounded by the accumulators, never by the number of tokens. Results are cached
//! on disk, keyed by everything they depend on, and written atomically.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use whittle_boards::files::write_atomically_with;
use whittle_runtime::{BlockWidths, MatrixKind, ModelConfig};

use crate::eval::prompt_ids;
use crate::model::{Batch, InputSite, Llama, LoadedModel, Observer};
use crate::task::{Metric, Split, Task};

/// Bumped whenever the cached statistics would change for the same inputs.
const CACHE_FORMAT: u32 = 2;
/// Tokens per chunk when a text (perplexity task or mixed-in WikiText) is cut for calibration.
const TEXT_CHUNK_TOKENS: usize = 256;

/// What a calibration run reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CalibrationSettings {
    /// Split whose examples are streamed (calibration; test for held-out statistics).
    pub split: String,
    /// Token budget: examples are taken in split order until it is reached.
    pub max_tokens: usize,
    /// Share of the budget filled with WikiText-2 (its calibration split) as a regulariser.
    pub wikitext_share: f64,
}

/// Default calibration token budget, counted with the shared prompt prefix once: at least the
/// 200k distinct tokens a whitened factorization of the 1,536-wide MLP inputs needs (issue 14);
/// on SST-2 the default answer's plan scores within noise at 65,536 and 262,144
/// (docs/RESULTS.md, `#calibration-size`).
pub const DEFAULT_CALIBRATION_TOKENS: usize = 262_144;

impl Default for CalibrationSettings {
    /// The calibration split, [`DEFAULT_CALIBRATION_TOKENS`], no WikiText-2.
    fn default() -> Self {
        Self {
            split: "calibration".to_owned(),
            max_tokens: DEFAULT_CALIBRATION_TOKENS,
            wikitext_share: 0.0,
        }
    }
}

/// Statistics of one linear input.
#[derive(Clone, Debug)]
pub struct SiteStats {
    /// Input width `d`.
    pub dim: usize,
    /// `Σ x xᵀ`, `d × d`, row-major.
    pub second_moment: Vec<f64>,
    /// `Σ |x_j|`.
    pub abs_sum: Vec<f64>,
    /// Number of tokens accumulated.
    pub n_tokens: u64,
}

impl SiteStats {
    /// The input of a sub-block the model skips: nothing seen (width 0, no tokens).
    fn skipped() -> Self {
        Self {
            dim: 0,
            second_moment: Vec::new(),
            abs_sum: Vec::new(),
            n_tokens: 0,
        }
    }
}

/// Second moments of every (layer, site) of a model.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Settings the statistics were computed with.
    pub settings: CalibrationSettings,
    /// `sites[layer_idx][site as usize]`, sites in [`InputSite::ALL`] order.
    pub sites: Vec<Vec<SiteStats>>,
    /// Tokens streamed.
    pub n_tokens: u64,
}

impl Calibration {
    /// Statistics of the input a matrix reads.
    pub fn stats(&self, layer_idx: usize, kind: MatrixKind) -> Option<&SiteStats> {
        self.sites.get(layer_idx)?.get(InputSite::of(kind).index())
    }
}

/// Accumulates f64 statistics as an [`Observer`].
struct Accumulator {
    second_moments: Vec<Vec<Option<Tensor>>>,
    abs_sums: Vec<Vec<Option<Tensor>>>,
}

impl Accumulator {
    fn new(n_layers: usize) -> Self {
        let empty = || vec![vec![None; InputSite::ALL.len()]; n_layers];
        Self {
            second_moments: empty(),
            abs_sums: empty(),
        }
    }
}

impl Observer for Accumulator {
    fn observe(
        &mut self,
        layer_idx: usize,
        site: InputSite,
        rows: &Tensor,
    ) -> candle_core::Result<()> {
        let rows = rows.to_dtype(DType::F64)?;
        let gram = rows.t()?.matmul(&rows)?;
        let abs = rows.abs()?.sum(0)?;
        let slot = site.index();
        let add = |acc: &mut Option<Tensor>, x: Tensor| -> candle_core::Result<()> {
            *acc = Some(match acc.take() {
                Some(previous) => (previous + x)?,
                None => x,
            });
            Ok(())
        };
        add(&mut self.second_moments[layer_idx][slot], gram)?;
        add(&mut self.abs_sums[layer_idx][slot], abs)
    }
}

/// What a calibration streams: token sequences and, per sequence, the first position whose
/// linear inputs are counted. Every task prompt shares the chat template and instruction before
/// its input; that shared prefix is counted in the first sequence only, so the statistics and
/// the token budget weigh each distinct token once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalibrationData {
    /// The sequences, task examples first, then the WikiText share.
    pub sequences: Vec<Vec<u32>>,
    /// Per sequence, the first counted position.
    pub observe_from: Vec<usize>,
}

impl CalibrationData {
    /// Positions counted: the budget the settings gave, at least.
    pub fn counted_tokens(&self) -> usize {
        self.sequences
            .iter()
            .zip(&self.observe_from)
            .map(|(sequence, &start)| sequence.len().saturating_sub(start))
            .sum()
    }
}

/// The token sequences of [`calibration_data`] (the anchored refit streams them whole).
pub fn calibration_sequences(
    model: &LoadedModel,
    task: &Task,
    settings: &CalibrationSettings,
) -> anyhow::Result<Vec<Vec<u32>>> {
    Ok(calibration_data(model, task, settings)?.sequences)
}

/// The task's prompts (or text chunks), then the WikiText share, until each part has counted
/// its share of `settings.max_tokens` (the shared prompt prefix counted once).
pub fn calibration_data(
    model: &LoadedModel,
    task: &Task,
    settings: &CalibrationSettings,
) -> anyhow::Result<CalibrationData> {
    let split: Split = settings.split.parse().map_err(anyhow::Error::msg)?;
    let wikitext_tokens = (settings.max_tokens as f64 * settings.wikitext_share).round() as usize;
    let task_tokens = settings.max_tokens - wikitext_tokens.min(settings.max_tokens);
    let mut data = task_sequences(model, task, split, task_tokens)?;
    if wikitext_tokens > 0 {
        let wikitext = Task::builtin("wikitext2")?;
        let text = task_sequences(model, &wikitext, Split::Calibration, wikitext_tokens)?;
        data.sequences.extend(text.sequences);
        data.observe_from.extend(text.observe_from);
    }
    if data.sequences.is_empty() {
        anyhow::bail!(
            "task {}: the {split} split yields no calibration tokens; raise --calibration-tokens",
            task.name()
        );
    }
    Ok(data)
}

/// Length of the common prefix of two sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn task_sequences(
    model: &LoadedModel,
    task: &Task,
    split: Split,
    budget: usize,
) -> anyhow::Result<CalibrationData> {
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    // The prefix every sequence so far shares with the first (it only shrinks); each later
    // sequence counts from it, so the budget is met with at least the final prefix's count.
    let mut shared = usize::MAX;
    let mut used = 0;
    for example in task.examples(split)? {
        if used >= budget {
            break;
        }
        let chunks = match task.metric() {
            Metric::Perplexity { .. } => {
                let ids = model.tokenizer.encode_prompt(&example.text)?;
                ids.chunks(TEXT_CHUNK_TOKENS).map(<[u32]>::to_vec).collect()
            }
            _ => vec![prompt_ids(&model.tokenizer, &example.prompt)?],
        };
        for mut chunk in chunks {
            if used >= budget {
                break;
            }
            let skip = match sequences.first() {
                None => 0,
                Some(first) => {
                    shared = shared.min(common_prefix(first, &chunk));
                    shared
                }
            };
            chunk.truncate(skip + (budget - used));
            used += chunk.len().saturating_sub(skip);
            sequences.push(chunk);
        }
    }
    let shared = if sequences.len() > 1 { shared } else { 0 };
    let observe_from = (0..sequences.len())
        .map(|i| if i == 0 { 0 } else { shared })
        .collect();
    Ok(CalibrationData {
        sequences,
        observe_from,
    })
}

/// Streams the settings' split through the dense model; reuses the on-disk cache when the
/// model, task, settings and tool version match.
pub fn calibrate(
    model: &LoadedModel,
    model_digest: &str,
    task: &Task,
    settings: &CalibrationSettings,
    cache_dir: &Path,
    batch_tokens: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Calibration> {
    let config = *model.llama.config();
    let key = cache_key(model_digest, task, settings)?;
    let path = cache_dir.join(format!("{key}.calib"));
    if path.is_file() {
        match read_cache(&path, &config, settings) {
            Ok(calibration) => return Ok(calibration),
            Err(error) => eprintln!("ignoring calibration cache {}: {error:#}", path.display()),
        }
    }
    let data = calibration_data(model, task, settings)?;
    progress.set_message(format!(
        "calibrating {} ({}) into {}",
        task.name(),
        settings.split,
        path.display()
    ));
    let calibration = accumulate(
        &model.llama,
        &data,
        model.tokenizer.pad_id(),
        batch_tokens,
        settings.clone(),
        progress,
    )?;
    write_cache(&path, &calibration)?;
    Ok(calibration)
}

/// Streams `sequences` through `llama` (length-sorted batches of at most `batch_tokens`
/// padded tokens) and returns the statistics of every linear input.
pub fn accumulate(
    llama: &Llama,
    data: &CalibrationData,
    pad_id: u32,
    batch_tokens: usize,
    settings: CalibrationSettings,
    progress: &ProgressBar,
) -> anyhow::Result<Calibration> {
    let config = *llama.config();
    let sequences = &data.sequences;
    let start_of = |i: usize| data.observe_from.get(i).copied().unwrap_or(0);
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let total = data.counted_tokens();
    progress.set_length(total as u64);
    progress.set_position(0);
    let mut accumulator = Accumulator::new(config.n_layers);
    let mut order: Vec<usize> = (0..sequences.len())
        .filter(|&i| lengths[i] > start_of(i))
        .collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && (end - start + 1) * lengths[order[end]] <= batch_tokens {
            end += 1;
        }
        let members = &order[start..end];
        let batch_sequences: Vec<Vec<u32>> =
            members.iter().map(|&i| sequences[i].clone()).collect();
        let starts: Vec<usize> = members.iter().map(|&i| start_of(i)).collect();
        let batch = Batch::new(&batch_sequences, pad_id, llama.device())?.observing_from(&starts);
        llama.forward_hidden(&batch, Some(&mut accumulator))?;
        progress.inc(batch.observed_tokens() as u64);
        start = end;
    }
    let widths = (0..config.n_layers)
        .map(|layer_idx| llama.block_widths(layer_idx))
        .collect::<candle_core::Result<Vec<_>>>()?;
    finish(accumulator, &widths, settings, total as u64)
}

fn finish(
    accumulator: Accumulator,
    widths: &[BlockWidths],
    settings: CalibrationSettings,
    n_tokens: u64,
) -> anyhow::Result<Calibration> {
    let mut sites = Vec::with_capacity(widths.len());
    for ((layer_moments, layer_abs), widths) in accumulator
        .second_moments
        .into_iter()
        .zip(accumulator.abs_sums)
        .zip(widths)
    {
        let mut layer = Vec::with_capacity(InputSite::ALL.len());
        for ((moment, abs), site) in layer_moments.into_iter().zip(layer_abs).zip(InputSite::ALL) {
            let skipped = match site {
                InputSite::Qkv | InputSite::O => widths.value == 0,
                InputSite::GateUp | InputSite::Down => widths.mlp == 0,
            };
            let (Some(moment), Some(abs)) = (moment, abs) else {
                if skipped {
                    layer.push(SiteStats::skipped());
                    continue;
                }
                anyhow::bail!("a linear input was never observed during calibration");
            };
            let dim = moment.dim(0)?;
            layer.push(SiteStats {
                dim,
                second_moment: moment.flatten_all()?.to_vec1()?,
                abs_sum: abs.to_vec1()?,
                n_tokens,
            });
        }
        sites.push(layer);
    }
    Ok(Calibration {
        settings,
        sites,
        n_tokens,
    })
}

/// Key of a cached calibration: model digest, the task's definition and the examples of the
/// calibrated split (a change to the search or test split keeps the statistics), settings,
/// format.
pub(crate) fn cache_key(
    model_digest: &str,
    task: &Task,
    settings: &CalibrationSettings,
) -> anyhow::Result<String> {
    let split: Split = settings.split.parse().map_err(anyhow::Error::msg)?;
    derived_cache_key(CACHE_FORMAT, model_digest, task, &[split], settings)
}

/// Key of anything cached from the model and a task: a format number, the tool version, the
/// model digest, the task's fingerprint over `splits` (definition and data) and `settings`.
pub(crate) fn derived_cache_key(
    format: u32,
    model_digest: &str,
    task: &Task,
    splits: &[Split],
    settings: &impl Serialize,
) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format.to_le_bytes());
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(model_digest.as_bytes());
    hasher.update(task.fingerprint_of(splits).as_bytes());
    hasher.update(serde_json::to_vec(settings)?);
    let digest = hasher.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

#[derive(Serialize, Deserialize)]
struct CacheHeader {
    format: u32,
    settings: CalibrationSettings,
    n_layers: usize,
    dims: Vec<usize>,
    n_tokens: u64,
}

pub(crate) fn write_cache(path: &Path, calibration: &Calibration) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the calibration cache {}; set WHITTLE_CACHE_DIR to a writable folder",
            dir.display()
        )
    })?;
    let header = CacheHeader {
        format: CACHE_FORMAT,
        settings: calibration.settings.clone(),
        n_layers: calibration.sites.len(),
        dims: calibration
            .sites
            .first()
            .map(|layer| layer.iter().map(|s| s.dim).collect())
            .unwrap_or_default(),
        n_tokens: calibration.n_tokens,
    };
    let header = serde_json::to_vec(&header)?;
    write_atomically_with(path, |file| {
        let mut writer = BufWriter::new(file);
        writer.write_all(&(header.len() as u64).to_le_bytes())?;
        writer.write_all(&header)?;
        for site in calibration.sites.iter().flatten() {
            for value in site.second_moment.iter().chain(&site.abs_sum) {
                writer.write_all(&value.to_le_bytes())?;
            }
        }
        writer.flush()
    })
    .with_context(|| format!("cannot write the calibration cache {}", path.display()))?;
    Ok(())
}

pub(crate) fn read_cache(
    path: &Path,
    config: &ModelConfig,
    settings: &CalibrationSettings,
) -> anyhow::Result<Calibration> {
    let mut reader = BufReader::new(fs::File::open(path)?);
    let mut length = [0u8; 8];
    reader.read_exact(&mut length)?;
    let length = usize::try_from(u64::from_le_bytes(length))?;
    if length > 1 << 20 {
        anyhow::bail!("corrupt header");
    }
    let mut header = vec![0u8; length];
    reader.read_exact(&mut header)?;
    let header: CacheHeader = serde_json::from_slice(&header)?;
    let expected_dims: Vec<usize> = InputSite::ALL
        .iter()
        .map(|&site| {
            let reader = MatrixKind::ALL
                .into_iter()
                .find(|&k| InputSite::of(k) == site);
            reader.map(|k| config.matrix_shape(k).1).unwrap_or(0)
        })
        .collect();
    if header.format != CACHE_FORMAT
        || header.settings != *settings
        || header.n_layers != config.n_layers
        || header.dims != expected_dims
    {
        anyhow::bail!("stale cache (different format, settings or model)");
    }
    let mut sites = Vec::with_capacity(config.n_layers);
    let mut read_values = |count: usize| -> anyhow::Result<Vec<f64>> {
        let mut bytes = vec![0u8; count * 8];
        reader.read_exact(&mut bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    };
    for _ in 0..config.n_layers {
        let mut layer = Vec::with_capacity(expected_dims.len());
        for &dim in &expected_dims {
            layer.push(SiteStats {
                dim,
                second_moment: read_values(dim * dim)?,
                abs_sum: read_values(dim)?,
                n_tokens: header.n_tokens,
            });
        }
        sites.push(layer);
    }
    Ok(Calibration {
        settings: header.settings,
        sites,
        n_tokens: header.n_tokens,
    })
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::synthetic::{tiny_config, tiny_tensors};

    fn tiny() -> Llama {
        let config = tiny_config();
        let tensors = tiny_tensors(&config, 21, &Device::Cpu).expect("tensors");
        Llama::from_tensors(config, &tensors, &Device::Cpu).expect("llama")
    }

    fn settings() -> CalibrationSettings {
        CalibrationSettings {
            split: "calibration".into(),
            max_tokens: 1000,
            wikitext_share: 0.0,
        }
    }

    fn sequences() -> Vec<Vec<u32>> {
        vec![
            vec![1, 2, 3, 4, 5],
            vec![9, 8],
            vec![7, 7, 7, 30, 31, 32, 33],
            vec![60],
        ]
    }

    fn whole(sequences: Vec<Vec<u32>>) -> CalibrationData {
        CalibrationData {
            observe_from: vec![0; sequences.len()],
            sequences,
        }
    }

    fn accumulate_data(data: &CalibrationData, batch_tokens: usize) -> Calibration {
        accumulate(
            &tiny(),
            data,
            0,
            batch_tokens,
            settings(),
            &ProgressBar::hidden(),
        )
        .expect("calibration")
    }

    /// A shared prefix counted once: the statistics of [p+a, p+b] observed from [0, |p|] are
    /// those of p+a plus those of p+b less those of p alone (a causal model sees the same
    /// context at the prefix positions; f32 activations, so equal to 1e-4), and the count is
    /// |p+a| + |b|.
    #[test]
    fn a_shared_prefix_is_counted_once() {
        let prefix = vec![5u32, 6, 7, 8];
        let with = |tail: &[u32]| [prefix.clone(), tail.to_vec()].concat();
        let shared = CalibrationData {
            sequences: vec![with(&[20, 21]), with(&[30, 31, 32])],
            observe_from: vec![0, prefix.len()],
        };
        assert_eq!(shared.counted_tokens(), 6 + 3);
        for batch_tokens in [1, 64] {
            let counted = accumulate_data(&shared, batch_tokens);
            assert_eq!(counted.n_tokens, 9);
            let first = accumulate_data(&whole(vec![with(&[20, 21])]), batch_tokens);
            let second = accumulate_data(&whole(vec![with(&[30, 31, 32])]), batch_tokens);
            let alone = accumulate_data(&whole(vec![prefix.clone()]), batch_tokens);
            for (layer_idx, layer) in counted.sites.iter().enumerate() {
                for (site, stats) in layer.iter().enumerate() {
                    let part = |c: &Calibration| c.sites[layer_idx][site].second_moment.clone();
                    let (a, b, p) = (part(&first), part(&second), part(&alone));
                    for (i, got) in stats.second_moment.iter().enumerate() {
                        let expected = a[i] + b[i] - p[i];
                        assert!(
                            (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                            "layer {layer_idx} site {site} entry {i}: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }

    fn run(batch_tokens: usize) -> Calibration {
        accumulate(
            &tiny(),
            &whole(sequences()),
            0,
            batch_tokens,
            settings(),
            &ProgressBar::hidden(),
        )
        .expect("calibration")
    }

    #[test]
    fn statistics_do_not_depend_on_batching_and_skip_padding() {
        let one_by_one = run(1);
        let batched = run(64);
        assert_eq!(batched.n_tokens, 15);
        for (a, b) in one_by_one
            .sites
            .iter()
            .flatten()
            .zip(batched.sites.iter().flatten())
        {
            assert_eq!(a.dim, b.dim);
            let diff = a
                .second_moment
                .iter()
                .zip(&b.second_moment)
                .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
                .fold(0.0, f64::max);
            assert!(diff < 1e-5, "{diff}");
        }
    }

    struct Rows(Vec<Tensor>);

    impl Observer for Rows {
        fn observe(
            &mut self,
            layer: usize,
            site: InputSite,
            rows: &Tensor,
        ) -> candle_core::Result<()> {
            if layer == 1 && site == InputSite::Down {
                self.0.push(rows.clone());
            }
            Ok(())
        }
    }

    #[test]
    fn second_moment_is_the_gram_matrix_of_the_inputs() -> anyhow::Result<()> {
        let llama = tiny();
        let mut rows = Rows(Vec::new());
        for sequence in sequences() {
            let batch = Batch::new(&[sequence], 0, &Device::Cpu)?;
            llama.forward_hidden(&batch, Some(&mut rows))?;
        }
        let x = Tensor::cat(&rows.0, 0)?.to_dtype(DType::F64)?;
        let gram: Vec<f64> = x.t()?.matmul(&x)?.flatten_all()?.to_vec1()?;
        let abs: Vec<f64> = x.abs()?.sum(0)?.to_vec1()?;
        let site = &run(64).sites[1][3];
        assert_eq!(site.dim, tiny_config().intermediate_size);
        for (a, b) in gram.iter().zip(&site.second_moment) {
            assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
        for (a, b) in abs.iter().zip(&site.abs_sum) {
            assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()));
        }
        Ok(())
    }

    #[test]
    fn cache_round_trips_and_rejects_other_settings() {
        let calibration = run(64);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.calib");
        write_cache(&path, &calibration).expect("write");
        let read = read_cache(&path, &tiny_config(), &settings()).expect("read");
        assert_eq!(read.n_tokens, calibration.n_tokens);
        for (a, b) in read
            .sites
            .iter()
            .flatten()
            .zip(calibration.sites.iter().flatten())
        {
            assert_eq!(a.second_moment, b.second_moment);
            assert_eq!(a.abs_sum, b.abs_sum);
        }
        let mut other = settings();
        other.max_tokens = 999;
        assert!(read_cache(&path, &tiny_config(), &other).is_err());
        std::fs::write(&path, b"garbage").expect("write");
        assert!(read_cache(&path, &tiny_config(), &settings()).is_err());
    }
}
