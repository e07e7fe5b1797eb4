//! The prune output folder: one module writes and reads it.
//!
//! | file | what | written by |
//! |---|---|---|
//! | `genome.json` | [`GenomeFile`]: the level grid, the genome, the rank per matrix | [`write_genome`] |
//! | `head.json` | [`TaskHead`]: the fitted task head, when the labels are read through one | [`write_head`] |
//! | `factors.safetensors` | `blk.{layer}.{kind}.a` (rank × d_in) and `.b` (d_out × rank) per low-rank matrix; `blk.{layer}.{gate,up,down}.w` for an MLP pruned by neurons | [`write_factors`] |
//! | `report.json`, `report.md` | [`PruneReport`] | [`write_report`] |
//! | `ranks.svg` | the rank map | `pipeline` |
//! | `model.wbundle` | the bundle for the board | `pipeline` |
//! | `checkpoint.json` | the search state, for `--resume` | `search` |
//!
//! [`PruneFolder`] reads a finished folder back: the base model with its factors swapped in,
//! and the digests a bundle's provenance records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use whittle_boards::Dtype;
use whittle_boards::files::{write_atomically, write_atomically_with};
use whittle_runtime::{MatrixKind, ModelConfig};

use super::report::PruneReport;
use super::{RankPlan, matrices, matrix_index};
use crate::fetch::sha256_file;
use crate::head::TaskHead;
use crate::model::{Linear, Llama};

/// The genome and the ranks it stands for.
pub const GENOME_FILE: &str = "genome.json";
/// The low-rank factors of the pruned matrices.
pub const FACTORS_FILE: &str = "factors.safetensors";
/// The typed report.
pub const REPORT_FILE: &str = "report.json";
/// The report for people.
pub const REPORT_MARKDOWN_FILE: &str = "report.md";
/// The fitted task head.
pub const HEAD_FILE: &str = "head.json";
/// The rank map figure.
pub const RANK_MAP_FILE: &str = "ranks.svg";
/// The bundle for the board.
pub const BUNDLE_FILE: &str = "model.wbundle";
/// The search checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// `genome.json`. Fields in alphabetical order, as earlier versions wrote them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenomeFile {
    /// One level index per prunable matrix, in `matrix_index` order.
    pub genome: Vec<u8>,
    /// The keep fraction of each level.
    pub levels: Vec<f64>,
    /// The rank of each prunable matrix; `None` (null) keeps it dense.
    pub ranks: Vec<Option<usize>>,
    /// Blocks kept (the exit); absent when every block is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<usize>,
    /// Neurons each block's MLP keeps (`None`: all; 0: skipped); absent when no MLP is pruned
    /// by neurons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_widths: Option<Vec<Option<usize>>>,
    /// Value dimensions each block's key/value heads keep (`None`: all; 0: the attention is
    /// skipped); absent when no block is pruned by value dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_widths: Option<Vec<Option<usize>>>,
    /// The rotary pairs each block's query/key heads keep (`None`: all; else one ascending
    /// list per key/value head); absent when no block is pruned by rotary pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_pairs: Option<Vec<Option<Vec<Vec<u16>>>>>,
    /// The dtype a q4 bundle stores each prunable matrix in (`"q8"` or `"q4"`, the search's
    /// precision genes); absent when the search had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtypes: Option<Vec<Dtype>>,
}

/// The tensor name of a matrix pruned by its units (an MLP's neurons, a head's value
/// dimensions) in `factors.safetensors`.
pub fn neuron_name(layer_idx: usize, kind: MatrixKind) -> String {
    format!("blk.{layer_idx}.{}.w", kind.name())
}

/// The three matrices of an MLP.
const MLP: [MatrixKind; 3] = [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down];

/// The two matrices of the value heads.
const VALUES: [MatrixKind; 2] = [MatrixKind::V, MatrixKind::O];

/// The two matrices of the query/key heads.
const QUERY_KEY: [MatrixKind; 2] = [MatrixKind::Q, MatrixKind::K];

/// The tensor names of one matrix's factors in `factors.safetensors`: `(a, b)`.
pub fn factor_names(layer_idx: usize, kind: MatrixKind) -> (String, String) {
    (
        format!("blk.{layer_idx}.{}.a", kind.name()),
        format!("blk.{layer_idx}.{}.b", kind.name()),
    )
}

/// Writes `genome.json` into `dir`.
pub fn write_genome(dir: &Path, genome: &GenomeFile) -> anyhow::Result<()> {
    write_atomically(
        &dir.join(GENOME_FILE),
        serde_json::to_string_pretty(genome)?.as_bytes(),
    )?;
    Ok(())
}

/// `tensor` in host memory and contiguous, as safetensors serializes it (candle's
/// serialization of a GPU tensor copies it back with a panic on failure; here a failure is an
/// error).
pub fn host_copy(tensor: &Tensor) -> candle_core::Result<Tensor> {
    tensor.to_device(&Device::Cpu)?.contiguous()
}

/// Writes `factors.safetensors` into `dir`: the factors of every matrix `plan` gives a rank,
/// and the matrices of every sub-block it prunes by units (none for a skipped one).
pub fn write_factors(dir: &Path, model: &Llama, plan: &RankPlan) -> anyhow::Result<()> {
    let mut tensors = HashMap::new();
    for (layer_idx, kind) in matrices(model.config()) {
        let unit_width = match kind {
            _ if MLP.contains(&kind) => plan.mlp_width(layer_idx),
            _ if VALUES.contains(&kind) => plan.value_width(layer_idx),
            _ => plan.pairs(layer_idx),
        };
        if let Some(width) = unit_width {
            if width > 0
                && let Some(Linear::Dense { weight }) = model.linear(layer_idx, kind)
            {
                tensors.insert(neuron_name(layer_idx, kind), host_copy(weight)?);
            }
            continue;
        }
        if plan.rank(layer_idx, kind).is_none() {
            continue;
        }
        if let Some(Linear::LowRank { a, b }) = model.linear(layer_idx, kind) {
            let (a_name, b_name) = factor_names(layer_idx, kind);
            tensors.insert(a_name, host_copy(a)?);
            tensors.insert(b_name, host_copy(b)?);
        }
    }
    let bytes = safetensors::serialize(&tensors, None)?;
    write_atomically_with(&dir.join(FACTORS_FILE), |file| {
        std::io::Write::write_all(file, &bytes)
    })?;
    Ok(())
}

/// Writes `head.json` into `dir`, or removes a stale one when the labels are read through the
/// verbalizer.
pub fn write_head(dir: &Path, head: Option<&TaskHead>) -> anyhow::Result<()> {
    let path = dir.join(HEAD_FILE);
    match head {
        Some(head) => write_atomically(&path, serde_json::to_string_pretty(head)?.as_bytes())?,
        None if path.exists() => std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?,
        None => {}
    }
    Ok(())
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write_report(dir: &Path, report: &PruneReport) -> anyhow::Result<()> {
    write_atomically(
        &dir.join(REPORT_FILE),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_atomically(
        &dir.join(REPORT_MARKDOWN_FILE),
        report.markdown().as_bytes(),
    )?;
    Ok(())
}

/// A finished prune output folder: its factors and genome, and their digests.
#[derive(Clone, Debug)]
pub struct PruneFolder {
    /// The folder.
    pub dir: PathBuf,
    /// sha256 of `factors.safetensors`.
    pub factors_digest: String,
    /// sha256 of `genome.json`.
    pub genome_digest: String,
    /// `report.json`, if present and readable.
    pub report: Option<PruneReport>,
}

impl PruneFolder {
    /// Opens `dir`, which must hold `factors.safetensors` and `genome.json`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let factors = dir.join(FACTORS_FILE);
        let genome = dir.join(GENOME_FILE);
        for path in [&factors, &genome] {
            if !path.is_file() {
                bail!(
                    "{} is missing; pass the output folder of `whittle prune` (it holds {FACTORS_FILE} and {GENOME_FILE})",
                    path.display()
                );
            }
        }
        let report = std::fs::read_to_string(dir.join(REPORT_FILE))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok(Self {
            dir: dir.to_owned(),
            factors_digest: sha256_file(&factors)?,
            genome_digest: sha256_file(&genome)?,
            report,
        })
    }

    /// `genome.json`.
    pub fn genome(&self) -> anyhow::Result<GenomeFile> {
        let path = self.dir.join(GENOME_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a genome file of this version; re-run prune",
                path.display()
            )
        })
    }

    /// `head.json`, when the folder reads its labels through a fitted task head.
    pub fn head(&self) -> anyhow::Result<Option<TaskHead>> {
        let path = self.dir.join(HEAD_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let head = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a task head of this version; re-run prune",
                path.display()
            )
        })?;
        Ok(Some(head))
    }

    /// The base model up to the folder's exit with its low-rank factors swapped in; the ranks
    /// must match `genome.json`.
    pub fn apply(&self, base: &Llama, device: &Device) -> anyhow::Result<Llama> {
        let factors = candle_core::safetensors::load(self.dir.join(FACTORS_FILE), device)
            .with_context(|| format!("cannot read the factors in {}", self.dir.display()))?;
        let genome = self.genome()?;
        let ranks = genome.ranks;
        let exit = genome.exit.unwrap_or(base.config().n_layers);
        if exit == 0 || exit > base.config().n_layers {
            bail!(
                "{}: exit {exit} is outside the model's 1..={} blocks; the folder is for another model, re-run prune",
                self.dir.display(),
                base.config().n_layers
            );
        }
        let mut llama = base.truncated(exit)?;
        let config: ModelConfig = *llama.config();
        for (layer_idx, kind) in matrices(&config) {
            let (a_name, b_name) = factor_names(layer_idx, kind);
            let expected = ranks.get(matrix_index(layer_idx, kind)).copied().flatten();
            match (factors.get(&a_name), factors.get(&b_name)) {
                (Some(a), Some(b)) => {
                    let rank = a.dim(0)?;
                    if expected.is_some_and(|e| e != rank) {
                        bail!(
                            "{}: layer {layer_idx} {} has rank {rank} in {FACTORS_FILE} but {expected:?} in {GENOME_FILE}; the folder is inconsistent, re-run prune",
                            self.dir.display(),
                            kind.name()
                        );
                    }
                    llama.set_linear(
                        layer_idx,
                        kind,
                        Linear::LowRank {
                            a: a.clone(),
                            b: b.clone(),
                        },
                    )?;
                }
                (None, None) => {}
                _ => bail!(
                    "{}: layer {layer_idx} {} has only one of its two factors; re-run prune",
                    self.dir.display(),
                    kind.name()
                ),
            }
        }
        let mlp_widths = genome.mlp_widths.unwrap_or_default();
        let value_widths = genome.value_widths.unwrap_or_default();
        let rotary_pairs = genome.rotary_pairs.unwrap_or_default();
        let hidden = config.hidden_size;
        let device = llama.device().clone();
        let empty = |shape| Linear::empty(shape, &device);
        for layer_idx in 0..config.n_layers {
            let found = |kinds: &[MatrixKind]| -> Vec<_> {
                kinds
                    .iter()
                    .map(|&kind| factors.get(&neuron_name(layer_idx, kind)).cloned())
                    .collect()
            };
            let dense = |weight: &Tensor| Linear::Dense {
                weight: weight.clone(),
            };
            let context = || format!("{}: block {layer_idx}; re-run prune", self.dir.display());
            let width = mlp_widths.get(layer_idx).copied().flatten();
            match (width, found(&MLP).as_slice()) {
                (None, [None, None, None]) => {}
                (Some(0), [None, None, None]) => llama
                    .set_mlp(
                        layer_idx,
                        [
                            empty((0, hidden))?,
                            empty((0, hidden))?,
                            empty((hidden, 0))?,
                        ],
                    )
                    .with_context(context)?,
                (Some(width), [Some(gate), Some(up), Some(down)]) if gate.dim(0)? == width => {
                    llama
                        .set_mlp(layer_idx, [dense(gate), dense(up), dense(down)])
                        .with_context(context)?;
                }
                _ => bail!(
                    "{}: block {layer_idx}'s MLP keeps {width:?} neurons in {GENOME_FILE} but {FACTORS_FILE} does not hold its gate, up and down of that width; the folder is inconsistent, re-run prune",
                    self.dir.display()
                ),
            }
            let lists = rotary_pairs.get(layer_idx).cloned().flatten();
            match (lists, found(&QUERY_KEY).as_slice()) {
                (None, [None, None]) => {}
                (Some(lists), [Some(q), Some(k)]) => llama
                    .set_rotary_pairs(layer_idx, [dense(q), dense(k)], lists)
                    .with_context(context)?,
                (lists, _) => bail!(
                    "{}: block {layer_idx}'s query/key heads keep the rotary pairs {lists:?} in {GENOME_FILE} but {FACTORS_FILE} does not hold its q and k on them; the folder is inconsistent, re-run prune",
                    self.dir.display()
                ),
            }
            let width = value_widths.get(layer_idx).copied().flatten();
            let heads = config.n_kv_heads;
            match (width, found(&VALUES).as_slice()) {
                (None, [None, None]) => {}
                (Some(0), [None, None]) => llama
                    .set_values(layer_idx, [empty((0, hidden))?, empty((hidden, 0))?])
                    .with_context(context)?,
                (Some(width), [Some(v), Some(o)]) if v.dim(0)? == width * heads => {
                    llama
                        .set_values(layer_idx, [dense(v), dense(o)])
                        .with_context(context)?;
                }
                _ => bail!(
                    "{}: block {layer_idx}'s value heads keep {width:?} dimensions in {GENOME_FILE} but {FACTORS_FILE} does not hold its v and o of that width; the folder is inconsistent, re-run prune",
                    self.dir.display()
                ),
            }
        }
        Ok(llama)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genome_file_round_trips_with_dense_matrices_as_null() -> anyhow::Result<()> {
        let file = GenomeFile {
            genome: vec![0, 3],
            levels: vec![1.0, 0.5],
            ranks: vec![None, Some(144)],
            exit: None,
            mlp_widths: None,
            value_widths: None,
            rotary_pairs: None,
            dtypes: None,
        };
        let text = serde_json::to_string(&file)?;
        assert_eq!(
            text,
            r#"{"genome":[0,3],"levels":[1.0,0.5],"ranks":[null,144]}"#
        );
        assert_eq!(serde_json::from_str::<GenomeFile>(&text)?, file);
        Ok(())
    }

    #[test]
    fn a_folder_without_factors_names_what_to_pass() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let error = PruneFolder::open(dir.path()).err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.contains(FACTORS_FILE) && error.contains("whittle prune"),
            "{error}"
        );
        Ok(())
    }
}

#[cfg(test)]
mod exit_tests {
    use candle_core::Device;

    use super::*;
    use crate::model::synthetic::{tiny_config, tiny_tensors};

    fn folder_with(genome: &GenomeFile, head: Option<&str>) -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        write_genome(dir.path(), genome)?;
        let empty: HashMap<String, candle_core::Tensor> = HashMap::new();
        std::fs::write(
            dir.path().join(FACTORS_FILE),
            safetensors::serialize(&empty, None)?,
        )?;
        if let Some(head) = head {
            std::fs::write(dir.path().join(HEAD_FILE), head)?;
        }
        Ok(dir)
    }

    fn genome(exit: Option<usize>) -> GenomeFile {
        let n = tiny_config().n_prunable_matrices();
        GenomeFile {
            genome: vec![0; n],
            levels: vec![1.0, 0.5],
            ranks: vec![None; n],
            exit,
            mlp_widths: None,
            value_widths: None,
            rotary_pairs: None,
            dtypes: None,
        }
    }

    #[test]
    fn the_folder_cuts_the_model_at_its_exit_and_reads_its_head() -> anyhow::Result<()> {
        let config = tiny_config();
        let base = Llama::from_tensors(
            config,
            &tiny_tensors(&config, 3, &Device::Cpu)?,
            &Device::Cpu,
        )?;
        let head = TaskHead {
            weight: vec![vec![0.5; config.hidden_size]; 2],
            bias: vec![0.0, 1.0],
            ridge: 0.1,
        };
        let dir = folder_with(&genome(Some(1)), Some(&serde_json::to_string(&head)?))?;
        let folder = PruneFolder::open(dir.path())?;
        assert_eq!(folder.apply(&base, &Device::Cpu)?.config().n_layers, 1);
        assert_eq!(folder.head()?, Some(head));
        // No exit: every block; no head.json: no head.
        let dir = folder_with(&genome(None), None)?;
        let folder = PruneFolder::open(dir.path())?;
        assert_eq!(
            folder.apply(&base, &Device::Cpu)?.config().n_layers,
            config.n_layers
        );
        assert_eq!(folder.head()?, None);
        Ok(())
    }

    #[test]
    fn an_exit_outside_the_model_or_a_corrupt_head_names_the_fix() -> anyhow::Result<()> {
        let config = tiny_config();
        let base = Llama::from_tensors(
            config,
            &tiny_tensors(&config, 3, &Device::Cpu)?,
            &Device::Cpu,
        )?;
        for exit in [0, config.n_layers + 1] {
            let dir = folder_with(&genome(Some(exit)), None)?;
            let error = PruneFolder::open(dir.path())?
                .apply(&base, &Device::Cpu)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("outside") && error.contains("re-run prune"),
                "{error}"
            );
        }
        let dir = folder_with(&genome(None), Some("{\"weight\": 3"))?;
        let error = PruneFolder::open(dir.path())?
            .head()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("head.json") && error.contains("re-run prune"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn an_mlp_pruned_by_neurons_round_trips_and_a_missing_one_is_refused() -> anyhow::Result<()> {
        let config = tiny_config();
        let device = Device::Cpu;
        let base = Llama::from_tensors(config, &tiny_tensors(&config, 3, &device)?, &device)?;
        let width = config.intermediate_size / 2;
        let kept: Vec<u32> = (0..width as u32).map(|j| 2 * j).collect();
        let kept = candle_core::Tensor::new(kept.as_slice(), &device)?;
        let take = |kind: MatrixKind, dim: usize| -> anyhow::Result<Linear> {
            let Some(Linear::Dense { weight }) = base.linear(1, kind) else {
                bail!("not dense");
            };
            Ok(Linear::Dense {
                weight: weight.index_select(&kept, dim)?.contiguous()?,
            })
        };
        let mut pruned = base.clone();
        let mlp = [
            take(MatrixKind::Gate, 0)?,
            take(MatrixKind::Up, 0)?,
            take(MatrixKind::Down, 1)?,
        ];
        pruned.set_mlp(1, mlp)?;
        let plan = RankPlan::dense(&config).with_mlp_width(&config, 1, Some(width));
        let mut file = genome(None);
        file.mlp_widths = Some(plan.mlp_widths().to_vec());
        let dir = tempfile::tempdir()?;
        write_genome(dir.path(), &file)?;
        write_factors(dir.path(), &pruned, &plan)?;
        let read = PruneFolder::open(dir.path())?.apply(&base, &device)?;
        for kind in MLP {
            let shape = |m: &Llama| m.linear(1, kind).map(|l| l.shape()).transpose();
            let widths = whittle_runtime::BlockWidths {
                mlp: width,
                ..config.full_widths()
            };
            assert_eq!(shape(&read)?, Some(config.matrix_shape_in(kind, widths)));
            assert_eq!(shape(&read)?, shape(&pruned)?);
        }
        assert_eq!(
            read.linear(0, MatrixKind::Gate)
                .map(|l| l.shape())
                .transpose()?,
            Some(config.matrix_shape(MatrixKind::Gate))
        );
        // genome.json says the MLP is narrower, factors.safetensors does not hold it.
        let dir = folder_with(&file, None)?;
        let error = PruneFolder::open(dir.path())?
            .apply(&base, &device)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("neurons") && error.contains("re-run prune"),
            "{error}"
        );
        Ok(())
    }
}
