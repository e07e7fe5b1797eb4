//! Packing a model into a bundle (DESIGN section 7, `docs/bundle-format.md`): the prompt split
//! around the input, the tokenizer tables, the label tokens and bias, every tensor in f32 or
//! q8, the output head (full or task-pruned), provenance, and an optional ed25519 signature.
//! Also rebuilds the host model a bundle was packed from (dense, or base + a prune folder).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::Tensor;
use ed25519_dalek::{Signer as _, SigningKey};
use indicatif::ProgressBar;
use rayon::prelude::*;
use whittle_runtime::format::{
    Dtype, HeadRef, Header, LabelRef, LayerRecords, LayerRef, LinearRef, MAX_LABELS, Provenance,
    Q8_BLOCK, TaskKind, TaskRef,
};
use whittle_runtime::writer::{
    BlobBuilder, BlockScales, TokenizerTables, attach_prefix, choose_self_check, encode_layers,
    prefix_cache, quantize_q4, quantize_q8, write_bundle,
};

use crate::factorize::{InverseFactor, round_compensated};
use whittle_runtime::{MatrixKind, ModelConfig};

use crate::calibrate::{Calibration, CalibrationData, CalibrationSettings, SiteStats, accumulate};
use crate::eval::{LabelTokens, prompt_text, score_labels};
use crate::head::TaskHead;
use crate::metrics;
use crate::model::{BaseModel, Batch, InputSite, Linear, Llama, LoadedModel};
use crate::progress::progress_bar;
use crate::prune::PruneFolder;
use crate::task::{Metric, Split, Task};
use crate::tokenizer::TextTokenizer;
use crate::vocab::{VocabChoice, VocabTrim};
use whittle_boards::files::write_atomically;

/// Stands for the input while the prompt template is rendered, then splits it in two.
const INPUT_MARKER: &str = "\u{1}whittle-input\u{1}";

/// Which output head the bundle carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadChoice {
    /// The whole vocabulary (classification and generation).
    Full,
    /// Only the label tokens' rows (classification only).
    Task,
}

/// Provenance recorded in the header (owned form of the runtime's `Provenance`).
#[derive(Clone, Debug, Default)]
pub struct ProvenanceInfo {
    /// sha256 of the GGUF file.
    pub model_digest: String,
    /// The terms the model comes under, for a model whittle fetches by name.
    pub model_licence: String,
    /// sha256 of the prune folder's `factors.safetensors`, empty for dense.
    pub factors_digest: String,
    /// sha256 of the prune folder's `genome.json`, empty for dense.
    pub genome_digest: String,
    /// The prune folder, empty for dense.
    pub source: String,
    /// Board name, empty for dense.
    pub board: String,
    /// ε of the search.
    pub epsilon: Option<f64>,
    /// Seed of the search.
    pub seed: Option<u64>,
    /// Dense test accuracy.
    pub dense_accuracy: Option<f64>,
    /// Pruned test accuracy.
    pub pruned_accuracy: Option<f64>,
}

/// How to pack.
#[derive(Debug)]
pub struct PackOptions {
    /// Storage type of every matrix.
    pub dtype: Dtype,
    /// Output head.
    pub head: HeadChoice,
    /// Signs the bundle when given.
    pub signing_key: Option<SigningKey>,
    /// Provenance.
    pub provenance: ProvenanceInfo,
    /// The release number ([`Provenance::sequence`]); the packing time in Unix milliseconds
    /// when `None`.
    pub sequence: Option<u64>,
    /// Store the prompt prefix's keys and values (`docs/bundle-format.md`, `PrefixRef`).
    pub store_prefix: bool,
    /// The whole vocabulary, or the task's part of it ([`VocabTrim`]).
    pub vocab: VocabChoice,
    /// A q4 bundle's dtype per prunable matrix, as a prune search chose them (matrix index
    /// order; [`pack_to_file`] reads them from the prune folder); empty: the packer chooses.
    pub matrix_dtypes: Vec<Dtype>,
}

/// Search-split examples tried for the bundle's self-check (the widest margin is kept).
const SELF_CHECK_CANDIDATES: usize = 8;

/// Search-split inputs the stored prompt prefix must tokenize apart from.
const PREFIX_CHECK_INPUTS: usize = 256;

/// A packed bundle and the figures the report states.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The bundle file.
    pub bytes: Vec<u8>,
    /// Bytes of the output head as stored (0 when tied to the embedding and full).
    pub head_bytes: usize,
    /// Bytes `--head full` would store in this dtype (0 when the model ties its head to the
    /// embedding, which the bundle stores anyway).
    pub full_head_bytes: usize,
    /// q4 classification bundles: the block matrices kept at q8, of those that could be, and
    /// the search-split agreement with the f32 model that chose them.
    pub mixed: Option<Mixed>,
    /// Task-trimmed bundles: `(kept tokens, source vocabulary)` and the embedding's bytes
    /// before and after.
    pub trim: Option<TrimSummary>,
}

/// What trimming the vocabulary to the task kept ([`VocabTrim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimSummary {
    /// Tokens kept.
    pub kept: usize,
    /// Tokens of the source vocabulary.
    pub source: usize,
    /// Bytes of the embedding as stored.
    pub embedding_bytes: u64,
    /// Bytes it would take with the whole vocabulary.
    pub full_embedding_bytes: u64,
}

/// What a q4 bundle keeps at 8 bits ([`StoredModel::q4_for_labels`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixed {
    /// Block matrices stored q8.
    pub q8: usize,
    /// Block matrices that could have been (every compensated one).
    pub candidates: usize,
    /// Share of the search-split examples whose label matches the f32 model's.
    pub agreement: f64,
}

/// Search-split examples that choose a q4 bundle's q8 matrices.
pub const MIXED_CHECK_EXAMPLES: usize = 200;

/// The agreement with the f32 model a q4 bundle must reach on those examples (the bar
/// for q4 parity).
pub const MIXED_AGREEMENT: f64 = 0.98;

/// Packs `model` (the base, or the base with a prune folder's factors) for `task` and writes
/// the bundle atomically to `out`: reads the tokenizer tables from the base file, fits the
/// label bias on the calibration split (classification), and records the base's digest and
/// the prune folder's in the provenance.
pub fn pack_to_file(
    base: &BaseModel,
    model: &LoadedModel,
    task: &Task,
    prune: Option<&PruneFolder>,
    mut options: PackOptions,
    batch_tokens: usize,
    out: &Path,
) -> anyhow::Result<Packed> {
    let tables = model.tokenizer.tables()?;
    let mut head = prune.map(PruneFolder::head).transpose()?.flatten();
    if head.is_some() && options.head == HeadChoice::Full {
        // A full head serves generation and speed measurements; the labels are then read
        // through the verbalizer rows, which the fitted head replaced.
        eprintln!(
            "warning: the prune folder reads its labels through a fitted task head (head.json), which only a task-pruned head stores; this --head full bundle reads them through the verbalizer rows instead (pack with --head task to classify as the prune run measured)"
        );
        head = None;
    }
    let progress = progress_bar();
    progress.set_message(format!("{} calibration (label bias)", task.name()));
    let bias = match (task.metric(), &head) {
        (Metric::Accuracy, None) => fit_label_bias(model, task, batch_tokens.max(1), &progress)?,
        (Metric::Accuracy, Some(head)) => head.bias.iter().map(|&b| f64::from(b)).collect(),
        _ => Vec::new(),
    };
    progress.finish_and_clear();
    let provenance = &mut options.provenance;
    provenance.model_digest = base.digest.clone();
    provenance.model_licence = crate::fetch::KNOWN_MODELS
        .into_iter()
        .find(|known| known.sha256 == base.digest)
        .map_or_else(String::new, |known| known.licence.to_owned());
    if let Some(prune) = prune {
        if options.dtype == Dtype::Q4 && options.matrix_dtypes.is_empty() {
            options.matrix_dtypes = prune.genome()?.dtypes.unwrap_or_default();
        }
        let expected = base.model.llama.config().n_prunable_matrices();
        if !options.matrix_dtypes.is_empty() && options.matrix_dtypes.len() != expected {
            bail!(
                "{}/genome.json gives {} matrix dtypes for a model of {expected} prunable matrices; it belongs to another model: pass the prune folder of this model, or pack --dtype q8",
                prune.dir.display(),
                options.matrix_dtypes.len()
            );
        }
        let provenance = &mut options.provenance;
        provenance.factors_digest = prune.factors_digest.clone();
        provenance.genome_digest = prune.genome_digest.clone();
        let dir = prune
            .dir
            .canonicalize()
            .unwrap_or_else(|_| prune.dir.clone());
        provenance.source = dir.display().to_string();
    }
    let packed = pack(model, &tables, task, &bias, head.as_ref(), &options)?;
    write_atomically(out, &packed.bytes)
        .with_context(|| format!("cannot write {}; pass a writable --out", out.display()))?;
    Ok(packed)
}

/// One line on what was written, with the task-head saving.
pub fn describe(packed: &Packed, head: HeadChoice, out: &Path) -> String {
    let mut line = format!(
        "wrote {} ({:.2} MB)",
        out.display(),
        packed.bytes.len() as f64 / 1e6
    );
    if head == HeadChoice::Task {
        line.push_str(&format!("; task-pruned head {} bytes", packed.head_bytes));
        if packed.full_head_bytes == 0 {
            line.push_str(
                " (the full head is tied to the embedding, which the bundle keeps for the input, so the file is not smaller)",
            );
        } else {
            line.push_str(&format!(
                " instead of {} ({:.2} MB saved)",
                packed.full_head_bytes,
                (packed.full_head_bytes.saturating_sub(packed.head_bytes)) as f64 / 1e6
            ));
        }
    }
    if let Some(mixed) = &packed.mixed {
        line.push_str(&format!(
            "; {} of {} block matrices kept at q8 (search-split agreement with f32 {:.3})",
            mixed.q8, mixed.candidates, mixed.agreement
        ));
    }
    if let Some(trim) = &packed.trim {
        line.push_str(&format!(
            "; vocabulary trimmed to the task's {} of {} tokens (embedding {:.2} MB instead of {:.2})",
            trim.kept,
            trim.source,
            trim.embedding_bytes as f64 / 1e6,
            trim.full_embedding_bytes as f64 / 1e6
        ));
    }
    line
}

/// The packing time in Unix milliseconds (0 on a clock before 1970).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The input texts of the first `count` search-split examples (the prompt stripped of the
/// bundle's prefix and suffix): the candidates of the bundle's self-check, and the inputs
/// its stored prompt prefix must tokenize apart from.
fn task_inputs(
    model: &LoadedModel,
    task: &Task,
    prefix: &str,
    suffix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut inputs = Vec::new();
    for example in task.examples(Split::Search)?.iter().take(count) {
        let text = prompt_text(&model.tokenizer, &example.prompt)?;
        if let Some(input) = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        {
            inputs.push(input.to_owned());
        }
    }
    Ok(inputs)
}

/// Whether a bundle can hold `task`: the runtime renders prompts with exactly one input field.
pub fn check_bundle_task(task: &Task) -> anyhow::Result<()> {
    let fields = task.prompt_fields();
    if fields.len() != 1 {
        bail!(
            "task {}: the runtime renders prompts with one input field, this task has {} ({}); make a task file whose prompt uses one {{field}}",
            task.name(),
            fields.len(),
            fields.join(", ")
        );
    }
    Ok(())
}

/// The prompt text before and after the input: the task's template must have exactly one
/// placeholder ([`check_bundle_task`]).
pub fn prompt_parts(tokenizer: &TextTokenizer, task: &Task) -> anyhow::Result<(String, String)> {
    check_bundle_task(task)?;
    let text = prompt_text(tokenizer, &task.render_prompt_with(INPUT_MARKER))?;
    let Some((prefix, suffix)) = text.split_once(INPUT_MARKER) else {
        bail!(
            "task {}: the prompt template does not show its input",
            task.name()
        );
    };
    if suffix.contains(INPUT_MARKER) {
        bail!(
            "task {}: the prompt uses its input field twice; the runtime inserts it once",
            task.name()
        );
    }
    Ok((prefix.to_owned(), suffix.to_owned()))
}

/// The single verbalizer token of every label.
pub fn label_token_ids(tokenizer: &TextTokenizer, task: &Task) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for label in task.labels() {
        let tokens = tokenizer.encode(&label.verbalizer)?;
        match tokens.as_slice() {
            [id] => ids.push(*id),
            _ => bail!(
                "label {:?}: verbalizer {:?} is {} tokens; the runtime scores one-token verbalizers, choose one that tokenizes to a single token",
                label.value,
                label.verbalizer,
                tokens.len()
            ),
        }
    }
    if ids.len() > MAX_LABELS {
        bail!(
            "task {} has {} labels; a bundle holds at most {MAX_LABELS}",
            task.name(),
            ids.len()
        );
    }
    Ok(ids)
}

/// The per-label bias, fitted on the calibration split as `eval` does.
pub fn fit_label_bias(
    model: &LoadedModel,
    task: &Task,
    batch_tokens: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<f64>> {
    let labels = LabelTokens::new(&model.tokenizer, task.labels())?;
    let mut examples = task.examples(Split::Calibration)?;
    examples.truncate(metrics::LABEL_BIAS_EXAMPLES);
    let (scores, _) = score_labels(model, &examples, &labels, batch_tokens, progress)?;
    Ok(metrics::fit_label_bias(&scores.scores, &scores.gold))
}

fn values(tensor: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
}

fn push_tensor(
    blob: &mut BlobBuilder,
    tensor: &Tensor,
    dtype: Dtype,
) -> anyhow::Result<whittle_runtime::format::MatrixRef> {
    let (rows, cols) = tensor.dims2()?;
    Ok(blob.push_matrix(rows, cols, &values(tensor)?, dtype)?)
}

/// The factor pair `(a, b)` of `y = b · (a · x)` with rank component `j` scaled so that `b`'s
/// column `j` and `a`'s row `j` have the same norm (`b · D`, `D⁻¹ · a`): the product is the
/// same, and a quantized row of `b`, whose blocks run across rank components, no longer
/// shares one scale between components of very different sizes (a refit's `B = U Σ` spans
/// the whole singular spectrum). Components with a zero factor are left as they are.
fn balanced(a: &Tensor, b: &Tensor) -> anyhow::Result<(Tensor, Tensor)> {
    let a_norms = a.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
    let b_norms = b.sqr()?.sum(0)?.sqrt()?.to_vec1::<f32>()?;
    let scale: Vec<f32> = a_norms
        .iter()
        .zip(&b_norms)
        .map(|(&na, &nb)| {
            let d = (na / nb).sqrt();
            if d.is_finite() && d > 0.0 { d } else { 1.0 }
        })
        .collect();
    let rank = scale.len();
    let scale = Tensor::from_vec(scale, rank, a.device())?;
    let a = a.broadcast_div(&scale.reshape((rank, 1))?)?;
    let b = b.broadcast_mul(&scale.reshape((1, rank))?)?;
    Ok((a, b))
}

/// `linear` with input column `j` multiplied by `scale[j]` (`scale` is `(d_in)`).
fn scale_columns(linear: &Linear, scale: &Tensor) -> anyhow::Result<Linear> {
    let row = scale.reshape((1, scale.elem_count()))?;
    Ok(match linear {
        Linear::Dense { weight } => Linear::Dense {
            weight: weight.broadcast_mul(&row)?,
        },
        Linear::LowRank { a, b } => Linear::LowRank {
            a: a.broadcast_mul(&row)?,
            b: b.clone(),
        },
    })
}

/// `linear` with output row `i` multiplied by `scale[i]` (`scale` is `(d_out)`).
fn scale_rows(linear: &Linear, scale: &Tensor) -> anyhow::Result<Linear> {
    let column = scale.reshape((scale.elem_count(), 1))?;
    Ok(match linear {
        Linear::Dense { weight } => Linear::Dense {
            weight: weight.broadcast_mul(&column)?,
        },
        Linear::LowRank { a, b } => Linear::LowRank {
            a: a.clone(),
            b: b.broadcast_mul(&column)?,
        },
    })
}

/// The prompt token ids of the first `n` examples of `task`'s `split`.
fn first_prompts(
    model: &LoadedModel,
    task: &Task,
    split: Split,
    n: usize,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut examples = task.examples(split)?;
    examples.truncate(n);
    examples
        .iter()
        .map(|e| crate::eval::prompt_ids(&model.tokenizer, &e.prompt))
        .collect()
}

/// The second moment `E[x xᵀ]` of every linear input, per block and site: a [`Calibration`]
/// of the model being packed (not the dense one) on a few task prompts, each counted whole.
#[derive(Debug)]
pub struct InputMoments(Calibration);

/// Padded tokens per forward pass of [`InputMoments::of_sequences`].
const STORAGE_BATCH_TOKENS: usize = 2048;

impl InputMoments {
    /// Runs `model` on the prompts of `task`'s calibration split (at most `examples` of them).
    pub fn measure(model: &LoadedModel, task: &Task, examples: usize) -> anyhow::Result<Self> {
        let sequences = first_prompts(model, task, Split::Calibration, examples)?;
        Self::of_sequences(&model.llama, sequences, model.tokenizer.pad_id())
    }

    /// Runs `llama` on `sequences`, every position counted.
    pub fn of_sequences(
        llama: &Llama,
        sequences: Vec<Vec<u32>>,
        pad_id: u32,
    ) -> anyhow::Result<Self> {
        let data = CalibrationData {
            observe_from: vec![0; sequences.len()],
            sequences,
        };
        let settings = CalibrationSettings {
            max_tokens: data.counted_tokens(),
            ..CalibrationSettings::default()
        };
        Ok(Self(accumulate(
            llama,
            &data,
            pad_id,
            STORAGE_BATCH_TOKENS,
            settings,
            &ProgressBar::hidden(),
        )?))
    }

    fn site(&self, layer_idx: usize, site: InputSite) -> Option<(&SiteStats, f64)> {
        let stats = self.0.sites.get(layer_idx)?.get(site.index())?;
        // A skipped sub-block's input is never seen: no statistics.
        (stats.n_tokens > 0).then_some((stats, stats.n_tokens as f64))
    }

    /// The mean square of each input dimension of `site` in block `layer_idx`.
    fn of(&self, layer_idx: usize, site: InputSite) -> Option<Vec<f64>> {
        let (stats, n) = self.site(layer_idx, site)?;
        let width = stats.dim;
        Some(
            (0..width)
                .map(|i| stats.second_moment[i * width + i] / n)
                .collect(),
        )
    }

    /// `E[x xᵀ]` of `site`'s input in block `layer_idx`.
    fn second_moment(&self, layer_idx: usize, site: InputSite) -> Option<faer::Mat<f64>> {
        let (stats, n) = self.site(layer_idx, site)?;
        let width = stats.dim;
        Some(faer::Mat::from_fn(width, width, |i, j| {
            stats.second_moment[i * width + j] / n
        }))
    }
}

/// The model as a bundle of one dtype stores it: rescaled ([`for_storage`]), then every dense
/// matrix rounded with error compensation against its input's second moment
/// ([`crate::factorize::round_compensated`], GPTQ with the bundle's blocks) and every factor
/// pair balanced and rounded to nearest ([`stored_linear`]).
#[derive(Debug)]
pub struct StoredModel {
    /// The model with every matrix holding the values the bundle stores (f32 for f32).
    pub llama: Llama,
    /// The block scales of every compensated matrix, which reproduce its values exactly.
    scales: HashMap<(usize, MatrixKind), BlockScales>,
    /// q4 rescaled for q8: every compensated matrix's q4 and q8 roundings, by decreasing relative output error
    /// of its q4 rounding (`tr(Δ C Δᵀ) / tr(W C Wᵀ)`), the order in which they go to 8 bits.
    candidates: Vec<Candidate>,
    /// The dtype of each prunable matrix as a plan gave it (empty: the bundle's), for the
    /// matrices stored without block scales (factor pairs).
    planned: Vec<Dtype>,
}

/// One matrix of a q4 bundle that may be kept at q8.
#[derive(Debug)]
struct Candidate {
    key: (usize, MatrixKind),
    q4: (Linear, BlockScales),
    q8: (Linear, BlockScales),
}

/// The labels of the first [`MIXED_CHECK_EXAMPLES`] search-split examples as the f32 model
/// reads them through label `rows` plus `bias`, against which a stored model's are checked.
struct LabelCheck<'a> {
    reference: &'a LoadedModel,
    ids: Vec<Vec<u32>>,
    rows: &'a Tensor,
    bias: &'a [f32],
    expected: Vec<usize>,
}

impl<'a> LabelCheck<'a> {
    fn new(
        reference: &'a LoadedModel,
        task: &Task,
        rows: &'a Tensor,
        bias: &'a [f32],
    ) -> anyhow::Result<Self> {
        let ids = first_prompts(reference, task, Split::Search, MIXED_CHECK_EXAMPLES)?;
        let mut check = Self {
            reference,
            ids,
            rows,
            bias,
            expected: Vec::new(),
        };
        check.expected = check.labels(&reference.llama)?;
        Ok(check)
    }

    fn labels(&self, llama: &Llama) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.ids.len());
        for chunk in self.ids.chunks(16) {
            let batch = Batch::new(chunk, self.reference.tokenizer.pad_id(), llama.device())?;
            let logits = llama.last_hidden(&batch)?.matmul(&self.rows.t()?)?;
            for row in logits.to_vec2::<f32>()? {
                let scored: Vec<f32> = row.iter().zip(self.bias).map(|(l, b)| l + b).collect();
                out.push(
                    (0..scored.len())
                        .max_by(|&a, &b| scored[a].total_cmp(&scored[b]))
                        .unwrap_or(0),
                );
            }
        }
        Ok(out)
    }

    /// Share of the examples on which `llama` reads the reference's label.
    fn agreement(&self, llama: &Llama) -> anyhow::Result<f64> {
        let got = self.labels(llama)?;
        let same = got
            .iter()
            .zip(&self.expected)
            .filter(|(a, b)| a == b)
            .count();
        Ok(same as f64 / self.expected.len().max(1) as f64)
    }
}

/// `tr(Δ C Δᵀ) / tr(W C Wᵀ)` for the row-major `rows × cols` weight and its rounding.
fn relative_output_error(weight: &[f32], rounded: &[f32], cols: usize, c: &faer::Mat<f64>) -> f64 {
    let rows = weight.len() / cols.max(1);
    let w = faer::Mat::from_fn(rows, cols, |i, j| f64::from(weight[i * cols + j]));
    let d = faer::Mat::from_fn(rows, cols, |i, j| {
        f64::from(rounded[i * cols + j] - weight[i * cols + j])
    });
    let energy = |m: &faer::Mat<f64>| -> f64 {
        let mc = m * c;
        (0..rows)
            .map(|i| (0..cols).map(|j| mc[(i, j)] * m[(i, j)]).sum::<f64>())
            .sum()
    };
    let total = energy(&w);
    if total > 0.0 { energy(&d) / total } else { 0.0 }
}

impl StoredModel {
    /// Rounds `model` for a bundle of `dtype`, measuring its linear inputs on `task`'s
    /// calibration prompts (twice: for the rescaling, then on the rescaled model for the
    /// compensation). f32 is the model as it is.
    pub fn new(model: &LoadedModel, task: &Task, dtype: Dtype) -> anyhow::Result<Self> {
        if dtype == Dtype::F32 {
            return Ok(Self {
                llama: model.llama.clone(),
                scales: HashMap::new(),
                candidates: Vec::new(),
                planned: Vec::new(),
            });
        }
        let moments = InputMoments::measure(model, task, STORAGE_SCALE_EXAMPLES)?;
        let all = Precision::All(dtype);
        Self::build(model, task, all, all, &moments)
    }

    /// [`StoredModel::new`] with each matrix rounded to its dtype in `round` and the rescaling
    /// chosen for rounding to `scaled_for`, from the unscaled model's `moments`. A q4 model
    /// rescaled for q8 also keeps each matrix's q8 rounding as a candidate
    /// ([`StoredModel::q4_for_labels`]).
    fn build(
        model: &LoadedModel,
        task: &Task,
        round: Precision<'_>,
        scaled_for: Precision<'_>,
        moments: &InputMoments,
    ) -> anyhow::Result<Self> {
        let scaled = for_storage_each(&model.llama, scaled_for, Some(moments))?;
        let with_alternatives = matches!(
            (round, scaled_for),
            (Precision::All(Dtype::Q4), Precision::All(Dtype::Q8))
        );
        let moments = InputMoments::measure(
            &model.with_llama(scaled.clone()),
            task,
            STORAGE_SCALE_EXAMPLES,
        )?;
        let config = *scaled.config();
        let sites: Vec<(usize, InputSite)> = (0..config.n_layers)
            .flat_map(|layer| InputSite::ALL.map(|site| (layer, site)))
            .collect();
        let factors: HashMap<(usize, InputSite), InverseFactor> = sites
            .par_iter()
            .filter_map(|&(layer, site)| {
                let c = moments.second_moment(layer, site)?;
                Some(InverseFactor::new(c.as_ref()).map(|f| ((layer, site), f)))
            })
            .collect::<Result<_, _>>()?;
        type Rounded = (
            Linear,
            Option<BlockScales>,
            Option<(Linear, BlockScales, f64)>,
        );
        let rounded: Vec<((usize, MatrixKind), Rounded)> = crate::prune::matrices(&config)
            .collect::<Vec<_>>()
            .into_par_iter()
            .filter_map(|(layer, kind)| {
                let linear = scaled.linear(layer, kind)?;
                let site = InputSite::of(kind);
                let dtype = round.of(layer, kind);
                let result = (|| -> anyhow::Result<Rounded> {
                    let (Linear::Dense { weight }, Some(factor)) =
                        (linear, factors.get(&(layer, site)))
                    else {
                        return Ok((stored_linear(linear, dtype)?, None, None));
                    };
                    let (rows, cols) = weight.dims2()?;
                    if rows == 0 || cols == 0 {
                        return Ok((linear.clone(), None, None));
                    }
                    let exact = values(weight)?;
                    let dense = |values: Vec<f32>| -> anyhow::Result<Linear> {
                        Ok(Linear::Dense {
                            weight: Tensor::from_vec(values, (rows, cols), weight.device())?,
                        })
                    };
                    let (rounded, scales) = round_compensated(&exact, rows, cols, factor, dtype)?;
                    // A q4 matrix's q8 alternative and the q4 rounding's relative error.
                    let alternative = match moments.second_moment(layer, site) {
                        Some(c) if with_alternatives => {
                            let error = relative_output_error(&exact, &rounded, cols, &c);
                            let (q8, q8_scales) =
                                round_compensated(&exact, rows, cols, factor, Dtype::Q8)?;
                            q8_scales.map(|q8_scales| (q8, q8_scales, error))
                        }
                        _ => None,
                    }
                    .map(|(q8, q8_scales, error)| {
                        Ok::<_, anyhow::Error>((dense(q8)?, q8_scales, error))
                    })
                    .transpose()?;
                    Ok((dense(rounded)?, scales, alternative))
                })();
                Some(result.map(|r| ((layer, kind), r)))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut llama = scaled;
        let mut scales = HashMap::new();
        let mut candidates = Vec::new();
        for (key, (linear, block_scales, alternative)) in rounded {
            llama.set_linear(key.0, key.1, linear.clone())?;
            if let Some(block_scales) = block_scales {
                if let Some((q8, q8_scales, error)) = alternative {
                    candidates.push((
                        error,
                        Candidate {
                            key,
                            q4: (linear, block_scales.clone()),
                            q8: (q8, q8_scales),
                        },
                    ));
                }
                scales.insert(key, block_scales);
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(Self {
            llama,
            scales,
            candidates: candidates.into_iter().map(|(_, c)| c).collect(),
            planned: match round {
                Precision::Each(dtypes) => dtypes.to_vec(),
                Precision::All(_) => Vec::new(),
            },
        })
    }

    /// Stores the first `n` candidates at q8 and the rest at q4.
    fn keep_q8(&mut self, n: usize) -> anyhow::Result<()> {
        for (i, candidate) in self.candidates.iter().enumerate() {
            let (linear, scales) = if i < n { &candidate.q8 } else { &candidate.q4 };
            let (layer, kind) = candidate.key;
            self.llama.set_linear(layer, kind, linear.clone())?;
            self.scales.insert(candidate.key, scales.clone());
        }
        Ok(())
    }

    /// A q4 bundle for classification: every block matrix at q4 (rescaled for q4) when the
    /// labels of [`MIXED_CHECK_EXAMPLES`] search-split examples then agree with `reference`
    /// (the f32 model) on at least [`MIXED_AGREEMENT`] of them; else rescaled for q8 (which
    /// both roundings must share), the fewest matrices at q8, in the candidates' order, that
    /// reach it (all at q8 if none does). A binary search over the count: agreement grows with
    /// it, not strictly, so the count found reaches the target and a smaller one might too.
    /// Labels are read through the label `rows` plus `bias`.
    pub fn q4_for_labels(
        reference: &LoadedModel,
        task: &Task,
        rows: &Tensor,
        bias: &[f32],
    ) -> anyhow::Result<(Self, Mixed)> {
        let check = LabelCheck::new(reference, task, rows, bias)?;
        let moments = InputMoments::measure(reference, task, STORAGE_SCALE_EXAMPLES)?;
        Self::q4_checked(reference, task, &check, &moments)
    }

    /// [`StoredModel::q4_for_labels`] with its label check and the unscaled model's input
    /// moments given.
    fn q4_checked(
        reference: &LoadedModel,
        task: &Task,
        check: &LabelCheck<'_>,
        moments: &InputMoments,
    ) -> anyhow::Result<(Self, Mixed)> {
        let agreement = |stored: &mut Self, n: usize| -> anyhow::Result<f64> {
            stored.keep_q8(n)?;
            check.agreement(&stored.llama)
        };
        let q4 = Precision::All(Dtype::Q4);
        let mut plain = Self::build(reference, task, q4, q4, moments)?;
        let at_zero = agreement(&mut plain, 0)?;
        if at_zero >= MIXED_AGREEMENT {
            // Every dense block matrix could have been kept at q8.
            let candidates = plain.scales.len();
            return Ok((
                plain,
                Mixed {
                    q8: 0,
                    candidates,
                    agreement: at_zero,
                },
            ));
        }
        let mut mixed = Self::build(reference, task, q4, Precision::All(Dtype::Q8), moments)?;
        let candidates = mixed.candidates.len();
        let mut best = (candidates, agreement(&mut mixed, candidates)?);
        if best.1 >= MIXED_AGREEMENT {
            let (mut low, mut high) = (0, candidates);
            while high - low > 1 {
                let middle = (low + high) / 2;
                let a = agreement(&mut mixed, middle)?;
                if a >= MIXED_AGREEMENT {
                    high = middle;
                    best = (middle, a);
                } else {
                    low = middle;
                }
            }
        }
        mixed.keep_q8(best.0)?;
        Ok((
            mixed,
            Mixed {
                q8: best.0,
                candidates,
                agreement: best.1,
            },
        ))
    }

    /// A q4 bundle for classification with each block matrix at the dtype `planned` gives it
    /// (the prune search's precision genes, matrix index order): rescaled for those dtypes and
    /// rounded with compensation. When its labels of [`MIXED_CHECK_EXAMPLES`] search-split
    /// examples agree with `reference` on less than [`MIXED_AGREEMENT`], the packer chooses
    /// instead ([`StoredModel::q4_for_labels`]) and says so.
    pub fn q4_as_planned(
        reference: &LoadedModel,
        task: &Task,
        rows: &Tensor,
        bias: &[f32],
        planned: &[Dtype],
    ) -> anyhow::Result<(Self, Mixed)> {
        let moments = InputMoments::measure(reference, task, STORAGE_SCALE_EXAMPLES)?;
        let precision = Precision::Each(planned);
        let stored = Self::build(reference, task, precision, precision, &moments)?;
        let check = LabelCheck::new(reference, task, rows, bias)?;
        let agreement = check.agreement(&stored.llama)?;
        let config = *reference.llama.config();
        let kept: Vec<Dtype> = crate::prune::matrices(&config)
            .filter(|&(layer, kind)| {
                reference
                    .llama
                    .linear(layer, kind)
                    .is_some_and(|l| l.n_params() > 0)
            })
            .map(|(layer, kind)| precision.of(layer, kind))
            .collect();
        let mixed = Mixed {
            q8: kept.iter().filter(|&&d| d == Dtype::Q8).count(),
            candidates: kept.len(),
            agreement,
        };
        if agreement >= MIXED_AGREEMENT {
            return Ok((stored, mixed));
        }
        eprintln!(
            "note: the search's precision ({} of {} block matrices at q8) agrees with the f32 model on {agreement:.3} of {MIXED_CHECK_EXAMPLES} search-split labels, under {MIXED_AGREEMENT}; the packer chooses the q8 matrices instead",
            mixed.q8, mixed.candidates
        );
        Self::q4_checked(reference, task, &check, &moments)
    }

    /// Appends matrix `kind` of block `layer_idx` to `blob` as the bundle of `dtype` stores it.
    fn push(
        &self,
        blob: &mut BlobBuilder,
        layer_idx: usize,
        kind: MatrixKind,
        dtype: Dtype,
    ) -> anyhow::Result<LinearRef> {
        let linear = self
            .llama
            .linear(layer_idx, kind)
            .with_context(|| format!("layer {layer_idx} {} is missing", kind.name()))?;
        let dtype = match self.planned.is_empty() {
            true => dtype,
            false => Precision::Each(&self.planned).of(layer_idx, kind),
        };
        Ok(match linear {
            Linear::Dense { weight } => match self.scales.get(&(layer_idx, kind)) {
                Some(scales) => {
                    let (rows, cols) = weight.dims2()?;
                    LinearRef::Dense(blob.push_matrix_with_scales(
                        rows,
                        cols,
                        &values(weight)?,
                        scales,
                    )?)
                }
                None => LinearRef::Dense(push_tensor(blob, weight, dtype)?),
            },
            // Already balanced and rounded: the writer's rounding of these values is exact.
            Linear::LowRank { a, b } => LinearRef::LowRank {
                a: push_tensor(blob, a, dtype)?,
                b: push_tensor(blob, b, dtype)?,
            },
        })
    }
}

/// Calibration prompts whose linear inputs set the storage scales ([`for_storage`]).
pub const STORAGE_SCALE_EXAMPLES: usize = 64;

/// Candidate exponents `α` of the storage scales `s_k = rms(x_k)^α` (0: no rescaling).
const SCALE_EXPONENTS: [f32; 9] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0];

/// The output error of storing `linears` (all reading the same input) with input column `k`
/// multiplied by `s[k]` and the input divided by it: `Σ_i Σ_k (stored − w·s)²_ik · E[x_k²] /
/// s_k²` (the diagonal of the input's second moment; `power`). `linears` are on the CPU.
fn scaled_error(linears: &[(&Linear, Dtype)], s: &[f32], power: &[f64]) -> anyhow::Result<f64> {
    let columns = Tensor::from_vec(s.to_vec(), s.len(), &candle_core::Device::Cpu)?;
    let weight: Vec<f64> = s
        .iter()
        .zip(power)
        .map(|(&s, &p)| p / (f64::from(s) * f64::from(s)))
        .collect();
    let mut total = 0.0;
    for &(linear, dtype) in linears {
        // The matrix whose columns meet the input: the weight, or `a` of a pair (its error
        // then passes through `b`, which this proxy leaves out).
        let (exact, stored) = match scale_columns(linear, &columns)? {
            Linear::Dense { weight } => {
                let stored = as_stored(&weight, dtype)?;
                (weight, stored)
            }
            Linear::LowRank { a, b } => {
                let (a, _) = balanced(&a, &b)?;
                let stored = as_stored(&a, dtype)?;
                (a, stored)
            }
        };
        let squared = (stored - exact)?.sqr()?.sum(0)?.to_vec1::<f32>()?;
        total += squared
            .iter()
            .zip(&weight)
            .map(|(&e, &w)| f64::from(e) * w)
            .sum::<f64>();
    }
    Ok(total)
}

/// Candidate exponents `β` of the peak-flattening factor `min(1, median peak / peak_k)^β`.
const PEAK_EXPONENTS: [f32; 3] = [0.0, 0.5, 1.0];

/// The largest |weight| of each input column over `linears` (of `a` for a pair).
fn column_peaks(linears: &[&Linear]) -> anyhow::Result<Vec<f32>> {
    let mut peaks: Vec<f32> = Vec::new();
    for linear in linears {
        let inner = match linear {
            Linear::Dense { weight } => weight,
            Linear::LowRank { a, .. } => a,
        };
        let column = inner.abs()?.max(0)?.to_vec1::<f32>()?;
        if peaks.is_empty() {
            peaks = column;
        } else {
            for (p, c) in peaks.iter_mut().zip(column) {
                *p = p.max(c);
            }
        }
    }
    Ok(peaks)
}

/// The storage scales for one input shared by `linears` (column `k` multiplied by `s_k`, the
/// input divided by it), the candidate with the least [`scaled_error`]: `s_k = rms(x_k)^α ·
/// min(1, median peak / peak_k)^β` for `α` of [`SCALE_EXPONENTS`] and `β` of
/// [`PEAK_EXPONENTS`] (the first favours the columns that meet large inputs, as AWQ does; the
/// second shrinks a column whose few huge weights set a coarse scale for their blocks),
/// normalized to geometric mean 1. `groups[c]` lists the input columns that channel `c`
/// scales (one `s` per channel, from the mean power and largest peak of its columns).
fn best_scales(
    linears: &[(&Linear, Dtype)],
    power: &[f64],
    groups: &[Vec<usize>],
) -> anyhow::Result<Vec<f32>> {
    // The candidates are scored on the CPU, where `as_stored` rounds anyway: one copy of each
    // matrix, not one a candidate, and every tensor of [`scaled_error`] on one device.
    let on_cpu = linears
        .iter()
        .map(|&(linear, _)| linear.to_device(&candle_core::Device::Cpu))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let linears: Vec<(&Linear, Dtype)> = on_cpu
        .iter()
        .zip(linears)
        .map(|(l, &(_, dtype))| (l, dtype))
        .collect();
    let linears = linears.as_slice();
    let channel_power: Vec<f64> = groups
        .iter()
        .map(|g| g.iter().filter_map(|&i| power.get(i)).sum::<f64>() / g.len().max(1) as f64)
        .collect();
    let peaks = column_peaks(&linears.iter().map(|&(l, _)| l).collect::<Vec<_>>())?;
    let channel_peak: Vec<f64> = groups
        .iter()
        .map(|g| {
            g.iter()
                .filter_map(|&i| peaks.get(i))
                .fold(0f64, |m, &p| m.max(f64::from(p)))
        })
        .collect();
    let mut sorted = channel_peak.clone();
    sorted.sort_by(f64::total_cmp);
    let median_peak = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let mut best: Option<(f64, Vec<f32>)> = None;
    for alpha in SCALE_EXPONENTS {
        for beta in PEAK_EXPONENTS {
            let raw: Vec<f64> = channel_power
                .iter()
                .zip(&channel_peak)
                .map(|(p, &peak)| {
                    let flatten = if peak > median_peak && peak > 0.0 {
                        (median_peak / peak).powf(f64::from(beta))
                    } else {
                        1.0
                    };
                    p.max(1e-12).powf(f64::from(alpha) / 2.0) * flatten
                })
                .collect();
            let log_mean = raw.iter().map(|r| r.ln()).sum::<f64>() / raw.len().max(1) as f64;
            let channel: Vec<f32> = raw.iter().map(|r| (r / log_mean.exp()) as f32).collect();
            let mut columns = vec![1f32; power.len()];
            for (group, &s) in groups.iter().zip(&channel) {
                for &i in group {
                    if let Some(slot) = columns.get_mut(i) {
                        *slot = s;
                    }
                }
            }
            let error = scaled_error(linears, &columns, power)?;
            if best.as_ref().is_none_or(|(e, _)| error < *e) {
                best = Some((error, channel));
            }
        }
    }
    Ok(best.map(|(_, s)| s).unwrap_or_default())
}

/// The model a bundle of `dtype` rounds, rescaled exactly (the same function in f32, up to
/// float rounding) so that its per-block rounding costs the task's outputs less (activation-
/// aware scaling, as AWQ does for 4 bits): each matrix's input column `k` is divided by
/// `s_k` and whatever produces that input multiplied by it: the RMSNorm weight before q, k, v
/// and before gate, up; the row of v that produces o's input (one `s` per v row, shared by its
/// query heads); up's row for down's column (the MLP's activation is linear in up). A row
/// scaled whole keeps its relative rounding error, and an input column with a large mean
/// square then gets a finer share of its block's scale. `s_k = rms(x_k)^α` over the inputs in
/// `power`, with `α` per input chosen from [`SCALE_EXPONENTS`] (0 included) by the predicted
/// output error. Without `power`, or for f32, the model is returned as it is. Factor pairs are
/// balanced at [`stored_linear`].
pub fn for_storage(
    llama: &Llama,
    dtype: Dtype,
    power: Option<&InputMoments>,
) -> anyhow::Result<Llama> {
    for_storage_each(llama, Precision::All(dtype), power)
}

/// Each block matrix's storage: one dtype for all, or one per prunable matrix in matrix
/// index order (a mixed q4 bundle as the search planned it).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Precision<'a> {
    All(Dtype),
    Each(&'a [Dtype]),
}

impl Precision<'_> {
    /// The dtype of block `layer_idx`'s `kind` (q8 where a plan has no entry).
    fn of(self, layer_idx: usize, kind: MatrixKind) -> Dtype {
        match self {
            Self::All(dtype) => dtype,
            Self::Each(dtypes) => dtypes
                .get(crate::prune::matrix_index(layer_idx, kind))
                .copied()
                .unwrap_or(Dtype::Q8),
        }
    }
}

/// [`for_storage`] with each matrix's rounding error counted at its own dtype.
fn for_storage_each(
    llama: &Llama,
    precision: Precision<'_>,
    power: Option<&InputMoments>,
) -> anyhow::Result<Llama> {
    let Some(power) = power.filter(|_| precision != Precision::All(Dtype::F32)) else {
        return Ok(llama.clone());
    };
    let config = *llama.config();
    let mut out = llama.clone();
    let device = llama.device().clone();
    let vector = |values: Vec<f32>| Tensor::from_vec(values.clone(), values.len(), &device);
    let inverse = |s: &[f32]| s.iter().map(|s| 1.0 / s).collect::<Vec<f32>>();
    for layer_idx in 0..config.n_layers {
        let widths = llama.block_widths(layer_idx)?;
        let current = |model: &Llama, kind: MatrixKind| -> anyhow::Result<Linear> {
            model
                .linear(layer_idx, kind)
                .cloned()
                .with_context(|| format!("layer {layer_idx} {} is missing", kind.name()))
        };
        let singles = |n: usize| (0..n).map(|j| vec![j]).collect::<Vec<_>>();
        let Some((attn_norm, ffn_norm)) = llama.norms(layer_idx) else {
            bail!("layer {layer_idx} is missing");
        };
        let (mut attn_norm, mut ffn_norm) = (attn_norm.clone(), ffn_norm.clone());
        if widths.value > 0 {
            // RMSNorm weight → q, k, v.
            if let Some(p) = power.of(layer_idx, InputSite::Qkv) {
                let kinds = [MatrixKind::Q, MatrixKind::K, MatrixKind::V];
                let linears = kinds
                    .iter()
                    .map(|&k| current(&out, k))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let refs: Vec<(&Linear, Dtype)> = linears
                    .iter()
                    .zip(kinds)
                    .map(|(linear, kind)| (linear, precision.of(layer_idx, kind)))
                    .collect();
                let s = best_scales(&refs, &p, &singles(p.len()))?;
                let columns = vector(s.clone())?;
                for (kind, linear) in kinds.into_iter().zip(&linears) {
                    out.set_linear(layer_idx, kind, scale_columns(linear, &columns)?)?;
                }
                attn_norm = attn_norm.mul(&vector(inverse(&s))?)?;
            }
            // v's rows → o's columns: v row `g·value + d` feeds o column `h·value + d` of every
            // query head `h` of key/value head `g`.
            if let Some(p) = power.of(layer_idx, InputSite::O) {
                let group = config.n_heads / config.n_kv_heads.max(1);
                let value = widths.value;
                let groups: Vec<Vec<usize>> = (0..config.n_kv_heads * value)
                    .map(|row| {
                        let (g, d) = (row / value, row % value);
                        (g * group..(g + 1) * group)
                            .map(|h| h * value + d)
                            .collect()
                    })
                    .collect();
                let o = current(&out, MatrixKind::O)?;
                let s = best_scales(&[(&o, precision.of(layer_idx, MatrixKind::O))], &p, &groups)?;
                let columns: Vec<f32> = (0..config.n_heads * value)
                    .map(|c| s[(c / value / group) * value + c % value])
                    .collect();
                let v = current(&out, MatrixKind::V)?;
                let rows = vector(inverse(&s))?;
                out.set_linear(layer_idx, MatrixKind::V, scale_rows(&v, &rows)?)?;
                if let Some([q_bias, k_bias, v_bias]) = out.qkv_bias(layer_idx).cloned() {
                    out.set_qkv_bias(layer_idx, [q_bias, k_bias, v_bias.mul(&rows)?])?;
                }
                out.set_linear(
                    layer_idx,
                    MatrixKind::O,
                    scale_columns(&o, &vector(columns)?)?,
                )?;
            }
        }
        if widths.mlp > 0 {
            // RMSNorm weight → gate, up.
            if let Some(p) = power.of(layer_idx, InputSite::GateUp) {
                let (gate, up) = (
                    current(&out, MatrixKind::Gate)?,
                    current(&out, MatrixKind::Up)?,
                );
                let s = best_scales(
                    &[
                        (&gate, precision.of(layer_idx, MatrixKind::Gate)),
                        (&up, precision.of(layer_idx, MatrixKind::Up)),
                    ],
                    &p,
                    &singles(p.len()),
                )?;
                let columns = vector(s.clone())?;
                out.set_linear(layer_idx, MatrixKind::Gate, scale_columns(&gate, &columns)?)?;
                out.set_linear(layer_idx, MatrixKind::Up, scale_columns(&up, &columns)?)?;
                ffn_norm = ffn_norm.mul(&vector(inverse(&s))?)?;
            }
            // up's rows → down's columns.
            if let Some(p) = power.of(layer_idx, InputSite::Down) {
                let down = current(&out, MatrixKind::Down)?;
                let s = best_scales(
                    &[(&down, precision.of(layer_idx, MatrixKind::Down))],
                    &p,
                    &singles(p.len()),
                )?;
                let up = current(&out, MatrixKind::Up)?;
                out.set_linear(
                    layer_idx,
                    MatrixKind::Down,
                    scale_columns(&down, &vector(s.clone())?)?,
                )?;
                out.set_linear(
                    layer_idx,
                    MatrixKind::Up,
                    scale_rows(&up, &vector(inverse(&s))?)?,
                )?;
            }
        }
        out.set_norms(layer_idx, attn_norm, ffn_norm)?;
    }
    Ok(out)
}

/// `tensor` as a bundle of `dtype` stores it: quantized and dequantized again (the identity
/// for f32). The host side of the bundle's rounding, for measuring what it costs.
pub fn as_stored(tensor: &Tensor, dtype: Dtype) -> anyhow::Result<Tensor> {
    let (rows, cols) = tensor.dims2()?;
    let v = values(tensor)?;
    let restored: Vec<f32> = match dtype {
        Dtype::F32 => return Ok(tensor.clone()),
        Dtype::Q8 => {
            let (q, scales) = quantize_q8(&v, cols);
            let per_row = cols.div_ceil(Q8_BLOCK);
            q.iter()
                .enumerate()
                .map(|(i, &q)| {
                    let (row, col) = (i / cols, i % cols);
                    scales[row * per_row + col / Q8_BLOCK] * f32::from(q)
                })
                .collect()
        }
        Dtype::Q4 => {
            let (data, scales) = quantize_q4(&v, cols);
            let per_row = cols.div_ceil(Q8_BLOCK);
            let half = Q8_BLOCK / 2;
            (0..rows * cols)
                .map(|i| {
                    let (row, col) = (i / cols, i % cols);
                    let block = row * per_row + col / Q8_BLOCK;
                    let k = col % Q8_BLOCK;
                    let byte = data[block * (Q8_BLOCK / 2) + k % half];
                    let q = if k < half { byte & 0x0f } else { byte >> 4 };
                    let d = half::f16::from_bits(scales[2 * block]).to_f32();
                    let m = half::f16::from_bits(scales[2 * block + 1]).to_f32();
                    d * f32::from(q) + m
                })
                .collect()
        }
    };
    Ok(Tensor::from_vec(restored, (rows, cols), tensor.device())?)
}

/// `linear` as a bundle of `dtype` stores it: a factor pair balanced as [`pack`] balances it,
/// each matrix through [`as_stored`].
pub fn stored_linear(linear: &Linear, dtype: Dtype) -> anyhow::Result<Linear> {
    Ok(match linear {
        Linear::Dense { weight } => Linear::Dense {
            weight: as_stored(weight, dtype)?,
        },
        Linear::LowRank { a, b } => {
            let (a, b) = balanced(a, b)?;
            Linear::LowRank {
                a: as_stored(&a, dtype)?,
                b: as_stored(&b, dtype)?,
            }
        }
    })
}

/// Packs `model` for `task`. With a fitted task `head`, its rows are the label rows of the
/// task-pruned head (`options.head` must be [`HeadChoice::Task`]) and `label_bias` should be its
/// bias; `model` is already cut at the head's exit.
pub fn pack(
    model: &LoadedModel,
    tables: &TokenizerTables,
    task: &Task,
    label_bias: &[f64],
    head: Option<&TaskHead>,
    options: &PackOptions,
) -> anyhow::Result<Packed> {
    let mut stored = None;
    let mut config: ModelConfig = *model.llama.config();
    let (prefix, suffix) = prompt_parts(&model.tokenizer, task)?;
    let kind = match task.metric() {
        Metric::Accuracy => TaskKind::Classification,
        Metric::Squad { .. } => TaskKind::Generation,
        Metric::Perplexity { .. } => bail!(
            "task {}: perplexity tasks have no input to answer; pack a classification or QA task",
            task.name()
        ),
    };
    let max_new_tokens = match task.metric() {
        Metric::Squad { max_new_tokens } => *max_new_tokens as u32,
        _ => 0,
    };
    let mut labels = heapless::Vec::<LabelRef<'_>, MAX_LABELS>::new();
    let label_ids = match kind {
        TaskKind::Classification => label_token_ids(&model.tokenizer, task)?,
        TaskKind::Generation => Vec::new(),
    };
    let trim = match (options.vocab, kind) {
        (VocabChoice::Full, _) => None,
        (VocabChoice::Task, TaskKind::Classification) => Some(VocabTrim::for_task(
            &model.tokenizer,
            tables,
            task,
            &label_ids,
        )?),
        (VocabChoice::Alphabet, TaskKind::Classification) => Some(VocabTrim::for_alphabet(
            &model.tokenizer,
            tables,
            task,
            &label_ids,
        )?),
        (VocabChoice::Task | VocabChoice::Alphabet, TaskKind::Generation) => bail!(
            "task {}: --vocab task and alphabet keep only the tokens a classification task's inputs need, and a generated answer may need any token; pack it with --vocab full",
            task.name()
        ),
    };
    let trimmed_tables = trim.as_ref().map(|trim| trim.tables(tables)).transpose()?;
    let tables = trimmed_tables.as_ref().unwrap_or(tables);
    if let Some(trim) = &trim {
        config.vocab_size = trim.kept().len();
    }
    if kind == TaskKind::Classification && label_bias.len() != label_ids.len() {
        bail!(
            "{} label biases for {} labels; fit the bias on the calibration split",
            label_bias.len(),
            label_ids.len()
        );
    }
    for ((label, &token_id), &bias) in task.labels().iter().zip(&label_ids).zip(label_bias) {
        labels
            .push(LabelRef {
                name: &label.value,
                token_id: match &trim {
                    Some(trim) => trim.required_id(token_id)?,
                    None => token_id,
                },
                bias: bias as f32,
            })
            .map_err(|_| anyhow::anyhow!("too many labels"))?;
    }
    if options.head == HeadChoice::Task && kind != TaskKind::Classification {
        bail!("--head task needs a classification task; use --head full");
    }
    let mixed = match (options.dtype, kind) {
        (Dtype::Q4, TaskKind::Classification) => {
            let rows = match head {
                Some(head) => head.rows(model.llama.device())?,
                None => {
                    let ids = Tensor::new(label_ids.as_slice(), model.llama.device())?;
                    model.llama.head().index_select(&ids, 0)?
                }
            };
            let bias: Vec<f32> = label_bias.iter().map(|&b| b as f32).collect();
            let (q4, mixed) = match options.matrix_dtypes.is_empty() {
                true => StoredModel::q4_for_labels(model, task, &rows, &bias)?,
                false => {
                    StoredModel::q4_as_planned(model, task, &rows, &bias, &options.matrix_dtypes)?
                }
            };
            stored = Some(q4);
            Some(mixed)
        }
        _ => None,
    };
    let stored = match stored {
        Some(stored) => stored,
        None => StoredModel::new(model, task, options.dtype)?,
    };
    let llama = &stored.llama;

    let dtype = options.dtype;
    let rows_dtype = dtype.rows();
    let mut blob = BlobBuilder::new();
    let tokenizer = blob.push_tokenizer(tables)?;
    // Rows past the tokenizer's vocabulary (Qwen2.5 pads its 151,665 tokens to 151,936 rows)
    // are never read: the bundle keeps the tokenizer's.
    if trim.is_none() && tables.vocab.len() < config.vocab_size {
        config.vocab_size = tables.vocab.len();
    }
    let vocab_rows = |matrix: &Tensor| match &trim {
        Some(trim) => trim.rows(matrix),
        None => Ok(matrix.narrow(0, 0, config.vocab_size)?),
    };
    let embedding = push_tensor(&mut blob, &vocab_rows(llama.embedding())?, rows_dtype)?;
    let final_norm = blob.push_f32(&values(llama.final_norm())?)?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for layer_idx in 0..config.n_layers {
        let Some((attn_norm, ffn_norm)) = llama.norms(layer_idx) else {
            bail!("layer {layer_idx} is missing");
        };
        let attn_norm = blob.push_f32(&values(attn_norm)?)?;
        let ffn_norm = blob.push_f32(&values(ffn_norm)?)?;
        let mut pair = |norms: Option<(&Tensor, &Tensor)>| -> anyhow::Result<_> {
            Ok(match norms {
                Some((first, second)) => Some((
                    blob.push_f32(&values(first)?)?,
                    blob.push_f32(&values(second)?)?,
                )),
                None => None,
            })
        };
        let post_norms = pair(llama.post_norms(layer_idx))?;
        let qk_norms = pair(llama.qk_norms(layer_idx))?;
        let mut linears = Vec::with_capacity(7);
        for kind in MatrixKind::ALL {
            linears.push(stored.push(&mut blob, layer_idx, kind, dtype)?);
        }
        let linears: [LinearRef; 7] = linears
            .try_into()
            .map_err(|_| anyhow::anyhow!("a block has seven linears"))?;
        let rotary_pairs = match llama.rotary_pairs(layer_idx) {
            Some(lists) => {
                let bytes: Vec<u8> = lists
                    .iter()
                    .flatten()
                    .flat_map(|p| p.to_le_bytes())
                    .collect();
                blob.push_bytes(&bytes)?
            }
            None => whittle_runtime::format::Span::default(),
        };
        let qkv_bias = match llama.qkv_bias(layer_idx) {
            Some(biases) => {
                let mut spans = [whittle_runtime::format::Span::default(); 3];
                for (span, bias) in spans.iter_mut().zip(biases) {
                    *span = blob.push_f32(&values(bias)?)?;
                }
                Some(spans)
            }
            None => None,
        };
        layers.push(LayerRef {
            attn_norm,
            ffn_norm,
            linears,
            post_norms,
            qk_norms,
            qkv_bias,
            rotary_pairs,
        });
    }
    let row_bytes = |rows: usize| {
        usize::try_from(rows_dtype.matrix_bytes(rows, config.hidden_size)).unwrap_or(usize::MAX)
    };
    let full_head_bytes = if llama.head_is_tied() {
        0
    } else {
        row_bytes(config.vocab_size)
    };
    let fitted = head;
    let (head, head_bytes) = match options.head {
        HeadChoice::Task => {
            let rows = match fitted {
                Some(fitted) => {
                    if fitted.weight.len() != label_ids.len()
                        || fitted.weight.iter().any(|r| r.len() != config.hidden_size)
                    {
                        bail!(
                            "the task head has {} rows for {} labels of width {}; it belongs to another task or model, re-run prune",
                            fitted.weight.len(),
                            label_ids.len(),
                            config.hidden_size
                        );
                    }
                    fitted.rows(llama.device())?
                }
                None => {
                    let ids = Tensor::new(label_ids.as_slice(), llama.device())?;
                    llama.head().index_select(&ids, 0)?
                }
            };
            // The label rows stay f32 in every bundle: a few kilobytes, and each weight meets
            // the exit state's outlier dimensions with nothing after it to average a rounding
            // away (q8 rows alone flipped 5 of 200 SST-2 search predictions of the pruned
            // answer: docs/RESULTS.md, "q8 parity of the pruned answer").
            let f32_bytes = Dtype::F32.matrix_bytes(label_ids.len(), config.hidden_size);
            (
                HeadRef::Labels(push_tensor(&mut blob, &rows, Dtype::F32)?),
                usize::try_from(f32_bytes).unwrap_or(usize::MAX),
            )
        }
        HeadChoice::Full if fitted.is_some() => {
            bail!("a fitted task head is stored as label rows; use --head task")
        }
        HeadChoice::Full if llama.head_is_tied() => (HeadRef::Tied, 0),
        HeadChoice::Full => (
            HeadRef::Full(push_tensor(
                &mut blob,
                &vocab_rows(llama.head())?,
                rows_dtype,
            )?),
            full_head_bytes,
        ),
    };
    let layer_bytes = encode_layers(&layers)?;
    let info = &options.provenance;
    let tool_version = env!("CARGO_PKG_VERSION");
    let check_inputs = task_inputs(model, task, &prefix, &suffix, SELF_CHECK_CANDIDATES)?;
    let prefix_inputs = task_inputs(model, task, &prefix, &suffix, PREFIX_CHECK_INPUTS)?;
    let candidates: Vec<&str> = check_inputs.iter().map(String::as_str).collect();
    let mut header = Header {
        config,
        dtype,
        tokenizer,
        task: TaskRef {
            name: task.name(),
            kind,
            prompt_prefix: &prefix,
            prompt_suffix: &suffix,
            labels,
            max_new_tokens,
        },
        embedding,
        final_norm,
        head,
        layers: LayerRecords(&layer_bytes),
        provenance: Provenance {
            model_digest: &info.model_digest,
            model_licence: &info.model_licence,
            factors_digest: &info.factors_digest,
            genome_digest: &info.genome_digest,
            source: &info.source,
            task: task.name(),
            board: &info.board,
            epsilon: info.epsilon,
            seed: info.seed,
            dense_accuracy: info.dense_accuracy,
            pruned_accuracy: info.pruned_accuracy,
            tool_version,
            sequence: options.sequence.unwrap_or_else(now_millis),
            check: None,
        },
        prefix: None,
    };
    // The prompt prefix, run once here: every input starts after it on the device. With the
    // exact kernels: the stored keys and values are then the same whatever machine packs, and
    // carry no rounding of activations (`Kernels::rounds_activations`) into every input.
    let probe = write_bundle(&header, blob.bytes(), None)?;
    let boundary: Vec<&str> = prefix_inputs.iter().map(String::as_str).collect();
    let cache = match options.store_prefix {
        true => prefix_cache(&probe, whittle_runtime::kernels::Portable, &boundary)
            .map_err(|error| anyhow::anyhow!("the packed bundle does not run: {error}"))?,
        false => None,
    };
    match &cache {
        Some(cache) => attach_prefix(&mut header, &mut blob, cache)?,
        None if !options.store_prefix => {}
        None => eprintln!(
            "note: the prompt prefix of task {} is not stored (it has no tokens that stay apart from the input); every input runs the whole prompt",
            task.name()
        ),
    }
    let probe = write_bundle(&header, blob.bytes(), None)?;
    header.provenance.check =
        choose_self_check(&probe, whittle_runtime::kernels::best(), &candidates)
            .map_err(|error| anyhow::anyhow!("the packed bundle does not run: {error}"))?;
    let signer = options
        .signing_key
        .as_ref()
        .map(|key| move |bytes: &[u8]| key.sign(bytes).to_bytes());
    let bytes = match &signer {
        Some(sign) => write_bundle(&header, blob.bytes(), Some(sign))?,
        None => write_bundle(&header, blob.bytes(), None)?,
    };
    let trim = trim.map(|trim| TrimSummary {
        kept: trim.kept().len(),
        source: trim.source_vocab_size(),
        embedding_bytes: rows_dtype.matrix_bytes(trim.kept().len(), config.hidden_size),
        full_embedding_bytes: rows_dtype.matrix_bytes(trim.source_vocab_size(), config.hidden_size),
    });
    Ok(Packed {
        bytes,
        head_bytes,
        full_head_bytes,
        mixed,
        trim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `B = U Σ`, `A = Vᵀ` with a singular spectrum over three decades: balancing keeps the
    /// product and lowers the q8 error of the packed pair.
    #[test]
    fn balancing_a_factor_pair_keeps_its_product_and_quantizes_it_better() -> anyhow::Result<()> {
        use candle_core::Device;
        let (rows, rank, cols) = (48usize, 64usize, 40usize);
        let mut rng = crate::test_rng::Rng(3);
        let sigma: Vec<f32> = (0..rank)
            .map(|j| 10f32.powf(-3.0 * j as f32 / rank as f32))
            .collect();
        let b: Vec<f32> = (0..rows * rank)
            .map(|i| rng.normal() as f32 * sigma[i % rank])
            .collect();
        let a: Vec<f32> = (0..rank * cols).map(|_| rng.normal() as f32).collect();
        let device = Device::Cpu;
        let b = Tensor::from_vec(b, (rows, rank), &device)?;
        let a = Tensor::from_vec(a, (rank, cols), &device)?;
        let (a2, b2) = balanced(&a, &b)?;
        let product = b.matmul(&a)?;
        let difference = (b2.matmul(&a2)? - &product)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(difference < 1e-4, "{difference}");
        let q8_error = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
            let dequantize = |t: &Tensor| -> anyhow::Result<Tensor> {
                let (r, c) = t.dims2()?;
                let (q, scales) = whittle_runtime::writer::quantize_q8(&values(t)?, c);
                let v: Vec<f32> = q
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| f32::from(q) * scales[(i / c) * c.div_ceil(32) + (i % c) / 32])
                    .collect();
                Ok(Tensor::from_vec(v, (r, c), &device)?)
            };
            let error = (dequantize(b)?.matmul(&dequantize(a)?)? - &product)?;
            Ok(error.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
        };
        let (before, after) = (q8_error(&a, &b)?, q8_error(&a2, &b2)?);
        // 0.93 before, 0.70 after on this spectrum.
        assert!(
            after < 0.9 * before,
            "q8 error {before} before balancing, {after} after"
        );
        Ok(())
    }

    /// Every linear of `llama` as a bundle of `dtype` stores it.
    fn all_stored(llama: &Llama, dtype: Dtype) -> anyhow::Result<Llama> {
        let mut out = llama.clone();
        for (layer_idx, kind) in crate::prune::matrices(llama.config()) {
            if let Some(linear) = llama.linear(layer_idx, kind) {
                out.set_linear(layer_idx, kind, stored_linear(linear, dtype)?)?;
            }
        }
        Ok(out)
    }

    /// The rescaling for storage is exact in f32, and with an input dimension that carries
    /// large activations and an o column with a few huge weights (what SmolLM2's blocks have)
    /// it makes the q8 and q4 model's outputs closer to the f32 model's than plain rounding.
    #[test]
    fn rescaling_for_storage_keeps_the_function_and_rounds_it_better() -> anyhow::Result<()> {
        use crate::model::synthetic::tiny_config;
        rescaling_keeps_the_function_and_rounds_it_better(tiny_config())?;
        // v's bias is rescaled with v's rows.
        rescaling_keeps_the_function_and_rounds_it_better(ModelConfig {
            arch: whittle_runtime::Architecture::QWEN2,
            ..tiny_config()
        })
    }

    fn rescaling_keeps_the_function_and_rounds_it_better(
        config: ModelConfig,
    ) -> anyhow::Result<()> {
        use crate::model::synthetic::tiny_tensors;
        use candle_core::Device;
        let device = Device::Cpu;
        let mut tensors = tiny_tensors(&config, 5, &device)?;
        for layer_idx in 0..config.n_layers {
            // One hidden dimension through a norm weight 20× the others, and one o column
            // with a weight 50× its row's.
            let name = format!("blk.{layer_idx}.attn_norm.weight");
            let mut norm = tensors[&name].to_vec1::<f32>()?;
            norm[3] *= 20.0;
            tensors.insert(name, Tensor::new(norm, &device)?);
            let name = format!("blk.{layer_idx}.attn_output.weight");
            let o = &tensors[&name];
            let (rows, cols) = o.dims2()?;
            let mut values = o.flatten_all()?.to_vec1::<f32>()?;
            values[5 * cols + 7] *= 50.0;
            tensors.insert(name, Tensor::from_vec(values, (rows, cols), &device)?);
        }
        let llama = Llama::from_tensors(config, &tensors, &device)?;
        let sequences: Vec<Vec<u32>> = (0..8u32)
            .map(|i| (0..24u32).map(|t| (i * 7 + t * 13) % 64).collect())
            .collect();
        let batch = crate::model::Batch::new(&sequences, 0, &device)?;
        let power = InputMoments::of_sequences(&llama, sequences.clone(), 0)?;
        let reference = llama.forward(&batch)?;
        let error = |model: &Llama| -> anyhow::Result<f32> {
            let diff = (model.forward(&batch)? - &reference)?;
            Ok(diff.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?)
        };
        for dtype in [Dtype::Q8, Dtype::Q4] {
            let scaled = for_storage(&llama, dtype, Some(&power))?;
            let exact = error(&scaled)?;
            assert!(
                exact < 1e-4,
                "{dtype:?}: rescaled f32 model is off by {exact}"
            );
            let (plain, rescaled) = (
                error(&all_stored(&llama, dtype)?)?,
                error(&all_stored(&scaled, dtype)?)?,
            );
            assert!(
                rescaled < 0.8 * plain,
                "{dtype:?}: output error {plain} plain, {rescaled} rescaled"
            );
        }
        assert!(
            for_storage(&llama, Dtype::F32, Some(&power))?
                .linear(0, MatrixKind::O)
                .is_some_and(|o| matches!(o, Linear::Dense { .. })),
        );
        Ok(())
    }

    /// A model whose block 0 skips its attention and block 1 its MLP (sub-blocks the search's
    /// refinement may skip): its storage statistics have no inputs there, and its rescaling
    /// for q8 keeps the skipped sub-blocks skipped and the function the same.
    #[test]
    fn a_model_with_skipped_sub_blocks_is_measured_and_stored() -> anyhow::Result<()> {
        use crate::model::synthetic::{tiny_config, tiny_tensors};
        use candle_core::Device;
        let config = tiny_config();
        let device = Device::Cpu;
        let tensors = tiny_tensors(&config, 5, &device)?;
        let mut llama = Llama::from_tensors(config, &tensors, &device)?;
        let hidden = config.hidden_size;
        let empty = |shape| Linear::empty(shape, &device);
        llama.set_values(0, [empty((0, hidden))?, empty((hidden, 0))?])?;
        llama.set_mlp(
            1,
            [
                empty((0, hidden))?,
                empty((0, hidden))?,
                empty((hidden, 0))?,
            ],
        )?;
        let sequences: Vec<Vec<u32>> = (0..8u32)
            .map(|i| (0..24u32).map(|t| (i * 7 + t * 13) % 64).collect())
            .collect();
        let power = InputMoments::of_sequences(&llama, sequences, 0)?;
        assert!(power.second_moment(0, InputSite::Qkv).is_none());
        assert!(power.second_moment(1, InputSite::Down).is_none());
        assert!(power.second_moment(1, InputSite::Qkv).is_some());
        let stored = for_storage(&llama, Dtype::Q8, Some(&power))?;
        assert_eq!(stored.block_widths(0)?.value, 0);
        assert_eq!(stored.block_widths(1)?.mlp, 0);
        // The rescaling is exact up to float rounding: the same function.
        let batch = crate::model::Batch::new(&[vec![1, 5, 9, 13]], 0, &device)?;
        let logits = |m: &Llama| m.logits(&m.last_hidden(&batch)?);
        let difference = (logits(&stored)? - logits(&llama)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(difference < 1e-4, "{difference}");
        Ok(())
    }

    /// With the search's precision, a matrix planned at q4 whose values are already on the
    /// 4-bit grid (a 4-bit source's) stays on it: the rescaling counts its error at q4, where
    /// any rescaling only costs; rescaled for q8 everywhere it would leave the grid.
    #[test]
    fn a_planned_q4_matrix_on_its_grid_keeps_it() -> anyhow::Result<()> {
        use crate::model::synthetic::{tiny_config, tiny_tensors};
        use candle_core::Device;
        let config = tiny_config();
        let device = Device::Cpu;
        let mut tensors = tiny_tensors(&config, 5, &device)?;
        let name = "blk.0.attn_norm.weight".to_owned();
        let mut norm = tensors[&name].to_vec1::<f32>()?;
        norm[3] *= 20.0;
        tensors.insert(name, Tensor::new(norm, &device)?);
        for kind in ["attn_q", "attn_k", "attn_v"] {
            let name = format!("blk.0.{kind}.weight");
            let on_grid = as_stored(&tensors[&name], Dtype::Q4)?;
            tensors.insert(name, on_grid);
        }
        let llama = Llama::from_tensors(config, &tensors, &device)?;
        let sequences: Vec<Vec<u32>> = (0..8u32)
            .map(|i| (0..24u32).map(|t| (i * 7 + t * 13) % 64).collect())
            .collect();
        let power = InputMoments::of_sequences(&llama, sequences, 0)?;
        let mut planned = vec![Dtype::Q8; config.n_prunable_matrices()];
        for kind in [MatrixKind::Q, MatrixKind::K, MatrixKind::V] {
            planned[crate::prune::matrix_index(0, kind)] = Dtype::Q4;
        }
        let off_grid = |model: &Llama| -> anyhow::Result<f32> {
            let Some(Linear::Dense { weight }) = model.linear(0, MatrixKind::Q) else {
                anyhow::bail!("q is not dense");
            };
            Ok((as_stored(weight, Dtype::Q4)? - weight)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?)
        };
        let kept = for_storage_each(&llama, Precision::Each(&planned), Some(&power))?;
        assert!(off_grid(&kept)? < 1e-6, "{}", off_grid(&kept)?);
        let for_q8 = for_storage(&llama, Dtype::Q8, Some(&power))?;
        assert!(off_grid(&for_q8)? > 1e-4, "{}", off_grid(&for_q8)?);
        Ok(())
    }

    /// `as_stored` is what the runtime reads back: the writer's q8 scales times its values,
    /// and the q4 `d · q + m` of every block, partial last block included.
    #[test]
    fn as_stored_reads_back_what_the_writer_wrote() -> anyhow::Result<()> {
        use candle_core::Device;
        let (rows, cols) = (3usize, 45usize);
        let mut rng = crate::test_rng::Rng(9);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let t = Tensor::from_vec(v.clone(), (rows, cols), &Device::Cpu)?;
        let q8 = values(&as_stored(&t, Dtype::Q8)?)?;
        let (q, scales) = quantize_q8(&v, cols);
        for (i, &got) in q8.iter().enumerate() {
            let want = scales[(i / cols) * 2 + (i % cols) / 32] * f32::from(q[i]);
            assert_eq!(got, want, "q8 value {i}");
        }
        let q4 = values(&as_stored(&t, Dtype::Q4)?)?;
        let (_, q4_scales) = quantize_q4(&v, cols);
        for (i, (&got, &exact)) in q4.iter().zip(&v).enumerate() {
            // Within half a step `d` of its block (a wrong nibble is a whole step off or
            // more), f16 rounding of the minimum aside.
            let block = (i / cols) * 2 + (i % cols) / 32;
            let d = half::f16::from_bits(q4_scales[2 * block]).to_f32();
            assert!(
                (got - exact).abs() <= 0.5 * d + 2e-3,
                "q4 value {i}: {got} for {exact}, step {d}"
            );
        }
        assert_eq!(values(&as_stored(&t, Dtype::F32)?)?, v);
        Ok(())
    }

    #[test]
    fn only_tasks_with_one_prompt_field_can_be_bundled() -> anyhow::Result<()> {
        check_bundle_task(&Task::builtin("sst2")?)?;
        let error = match check_bundle_task(&Task::builtin("pubmedqa")?) {
            Ok(()) => panic!("pubmedqa has two prompt fields"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("one input field") && error.contains("2 (context, question)"),
            "{error}"
        );
        Ok(())
    }
}
