use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use rayon::prelude::*;
use whittle_boards::Dtype;
use whittle_runtime::{MatrixKind, ModelConfig};

use super::{RankPlan, matrices, matrix_index};
use crate::calibrate::{Calibration, SiteStats};
use crate::factorize::{
    self, Factors, InputStats, Job, Method, NeuronSelection, PairOrder, ValueProjection,
    max_useful_rank, order_rotary_pairs, project_values, select_neurons,
};
use crate::model::{InputSite, Linear, Llama};

/// One decomposition per prunable matrix, kept as f32 tensors: `a` is `(r_max, d_in)` and
/// `bt` is `(r_max, d_out)` (B transposed), so the rank-r factors are row prefixes — views,
/// never copies.
///
/// With [`FactorBank::with_units`] it also holds, per block, the output-aligned order of the
/// MLP's neurons and the output-aligned projection of its value heads; an MLP or a pair of v
/// and o pruned to a width is built once per (block, width) and shared.
#[derive(Clone, Debug)]
pub struct FactorBank {
    method: Method,
    config: ModelConfig,
    entries: Vec<Entry>,
    neurons: Vec<Arc<NeuronSelection>>,
    values: Vec<Arc<ValueProjection>>,
    pairs: Vec<Arc<PairOrder>>,
    mlps: Arc<Mutex<MlpCache>>,
    attention: Arc<Mutex<ValueCache>>,
    rotary: Arc<Mutex<PairCache>>,
}

/// Writes every block's neuron order and error curve (safetensors `{l}.order`, `{l}.curve`).
fn save_neuron_orders(
    path: &std::path::Path,
    selections: &[Arc<NeuronSelection>],
) -> anyhow::Result<()> {
    let mut tensors = HashMap::new();
    for (layer_idx, selection) in selections.iter().enumerate() {
        let order: Vec<u32> = selection.order.iter().map(|&j| j as u32).collect();
        let (n, m) = (order.len(), selection.error_curve.len());
        tensors.insert(
            format!("{layer_idx}.order"),
            Tensor::from_vec(order, n, &Device::Cpu)?,
        );
        tensors.insert(
            format!("{layer_idx}.curve"),
            Tensor::from_vec(selection.error_curve.clone(), m, &Device::Cpu)?,
        );
    }
    let bytes = safetensors::serialize(&tensors, None)?;
    whittle_boards::files::write_atomically_with(path, |file| {
        std::io::Write::write_all(file, &bytes)
    })?;
    Ok(())
}

/// Reads what [`save_neuron_orders`] wrote for `n_layers` blocks.
fn load_neuron_orders(
    path: &std::path::Path,
    n_layers: usize,
) -> anyhow::Result<Vec<(Vec<usize>, Vec<f64>)>> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let orders = (0..n_layers)
        .map(|layer_idx| {
            let (Some(order), Some(curve)) = (
                tensors.remove(&format!("{layer_idx}.order")),
                tensors.remove(&format!("{layer_idx}.curve")),
            ) else {
                anyhow::bail!("block {layer_idx} is missing");
            };
            let order = order.to_vec1::<u32>()?.into_iter().map(|j| j as usize);
            Ok((order.collect(), curve.to_vec1::<f64>()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !tensors.is_empty() {
        anyhow::bail!("{} tensors belong to no block", tensors.len());
    }
    Ok(orders)
}

/// Gate, up and down of a block pruned to a width, by (block, width).
type MlpCache = HashMap<(usize, usize), [Linear; 3]>;
type ValueCache = HashMap<(usize, usize), [Linear; 2]>;
/// q and k of a block keeping some rotary pairs, and the pairs, by (block, pairs per head).
type PairCache = HashMap<(usize, usize), ([Linear; 2], Vec<Vec<u16>>)>;

#[derive(Clone, Debug)]
struct Entry {
    a: Tensor,
    bt: Tensor,
    r_max: usize,
    error_curve: Option<Vec<f64>>,
}

/// Converts calibration statistics to the factorization's input form.
pub fn stats_to_faer(stats: &SiteStats) -> InputStats {
    let d = stats.dim;
    InputStats {
        second_moment: faer::Mat::from_fn(d, d, |i, j| stats.second_moment[i * d + j]),
        abs_sum: stats.abs_sum.clone(),
        n_tokens: stats.n_tokens,
    }
}

/// The dense weight of a matrix of the base model, row-major.
pub fn dense_weight(llama: &Llama, layer_idx: usize, kind: MatrixKind) -> anyhow::Result<Vec<f32>> {
    match llama.linear(layer_idx, kind) {
        Some(Linear::Dense { weight }) => Ok(weight.flatten_all()?.to_vec1()?),
        _ => anyhow::bail!(
            "layer {layer_idx} {} is not a dense matrix of the base model",
            kind.name()
        ),
    }
}

impl FactorBank {
    /// Decomposes every prunable matrix of the dense `llama` with `method`, one matrix per
    /// core. Warnings (ridge added, too few tokens) are printed once per matrix.
    pub fn build(
        llama: &Llama,
        calibration: &Calibration,
        method: Method,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let config = *llama.config();
        let mut site_stats = Vec::with_capacity(config.n_layers);
        for layer in &calibration.sites {
            site_stats.push(layer.iter().map(stats_to_faer).collect::<Vec<_>>());
        }
        let mut weights = Vec::with_capacity(config.n_prunable_matrices());
        for (layer_idx, kind) in matrices(&config) {
            weights.push(dense_weight(llama, layer_idx, kind)?);
        }
        let mut jobs = Vec::with_capacity(weights.len());
        for ((layer_idx, kind), weight) in matrices(&config).zip(&weights) {
            let (rows, cols) = config.matrix_shape(kind);
            let site = crate::model::InputSite::of(kind).index();
            jobs.push(Job {
                weight,
                rows,
                cols,
                stats: &site_stats[layer_idx][site],
                method,
                r_max: max_useful_rank(rows, cols),
            });
        }
        progress.set_length(jobs.len() as u64);
        progress.set_position(0);
        progress.set_message(format!("factorizing ({})", method.name()));
        let results = factorize::factorize_all(&jobs);
        progress.set_position(jobs.len() as u64);
        let device = llama.device().clone();
        let mut entries = Vec::with_capacity(results.len());
        // One line per distinct warning, with the matrices it concerns, not one per matrix.
        let mut warnings: Vec<(String, Vec<String>)> = Vec::new();
        for ((layer_idx, kind), result) in matrices(&config).zip(results) {
            let factors = result?;
            for warning in &factors.warnings {
                let matrix = format!("{layer_idx}.{}", kind.name());
                match warnings.iter_mut().find(|(w, _)| w == warning) {
                    Some((_, where_)) => where_.push(matrix),
                    None => warnings.push((warning.clone(), vec![matrix])),
                }
            }
            entries.push(Entry::from_factors(factors, &device)?);
        }
        for (warning, where_) in warnings {
            let shown: Vec<&str> = where_.iter().take(6).map(String::as_str).collect();
            let more = where_.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            eprintln!(
                "warning: {} matrices ({}{more}): {warning}",
                where_.len(),
                shown.join(", ")
            );
        }
        Ok(Self {
            method,
            config,
            entries,
            neurons: Vec::new(),
            values: Vec::new(),
            pairs: Vec::new(),
            mlps: Arc::default(),
            attention: Arc::default(),
            rotary: Arc::default(),
        })
    }

    /// The same bank with every block's MLP neurons ordered for pruning by neurons
    /// ([`select_neurons`] on down and its input statistics), its value heads projected
    /// ([`project_values`] on v, o and o's input statistics, a closed form of well under a
    /// second per block) and its rotary pairs ranked ([`order_rotary_pairs`] on q, k and
    /// their input statistics), one block per core. The neuron orders and error curves are cached at
    /// `cache` (written after the first run); from there a selection is rebuilt by one
    /// Cholesky factorization ([`NeuronSelection::from_order`]) instead of the greedy search.
    /// A cache that does not fit is ignored with a line saying so.
    pub fn with_units(
        mut self,
        llama: &Llama,
        calibration: &Calibration,
        cache: &std::path::Path,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let config = self.config;
        let (rows, cols) = config.matrix_shape(MatrixKind::Down);
        let mut cached = match cache.is_file() {
            true => match load_neuron_orders(cache, config.n_layers) {
                Ok(orders) => orders.into_iter().map(Some).collect(),
                Err(error) => {
                    eprintln!(
                        "ignoring the neuron order cache {}: {error:#}; ordering again",
                        cache.display()
                    );
                    Vec::new()
                }
            },
            false => Vec::new(),
        };
        // A cache is read whole or not at all.
        cached.resize_with(config.n_layers, || None);
        let from_cache = cached.iter().all(Option::is_some);
        progress.set_length(config.n_layers as u64);
        progress.set_position(0);
        progress.set_message(match from_cache {
            true => {
                "rebuilding the MLP neuron orders from the cache, projecting value heads, ranking rotary pairs"
            }
            false => {
                "ordering MLP neurons, projecting value heads and ranking rotary pairs (output-aligned)"
            }
        });
        let done = std::sync::atomic::AtomicU64::new(0);
        let second_moment = |layer_idx: usize, site: InputSite| match calibration
            .sites
            .get(layer_idx)
            .and_then(|sites| sites.get(site.index()))
        {
            Some(stats) => Ok(stats_to_faer(stats).second_moment),
            None => anyhow::bail!(
                "the calibration has no statistics for block {layer_idx}'s {site:?} input; calibrate again"
            ),
        };
        let units = cached
            .into_par_iter()
            .enumerate()
            .map(|(layer_idx, cached)| {
                let down = dense_weight(llama, layer_idx, MatrixKind::Down)?;
                let c = second_moment(layer_idx, InputSite::Down)?;
                let selection = match cached {
                    Some((order, curve)) => {
                        NeuronSelection::from_order(&down, rows, cols, c.as_ref(), order, curve)?
                    }
                    None => select_neurons(&down, rows, cols, c.as_ref(), cols - 1)?,
                };
                let v = dense_weight(llama, layer_idx, MatrixKind::V)?;
                let o = dense_weight(llama, layer_idx, MatrixKind::O)?;
                let c = second_moment(layer_idx, InputSite::O)?;
                let values = project_values(
                    &v,
                    &o,
                    c.as_ref(),
                    config.hidden_size,
                    config.n_heads,
                    config.n_kv_heads,
                    config.head_dim(),
                )?;
                let q = dense_weight(llama, layer_idx, MatrixKind::Q)?;
                let k = dense_weight(llama, layer_idx, MatrixKind::K)?;
                let c = second_moment(layer_idx, InputSite::Qkv)?;
                let pairs = order_rotary_pairs(
                    &q,
                    &k,
                    c.as_ref(),
                    config.hidden_size,
                    config.n_heads,
                    config.n_kv_heads,
                    config.head_dim(),
                )?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress.set_position(n);
                Ok((Arc::new(selection), (Arc::new(values), Arc::new(pairs))))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (selections, attention): (Vec<_>, Vec<_>) = units.into_iter().unzip();
        let (values, pairs): (Vec<_>, Vec<_>) = attention.into_iter().unzip();
        if !from_cache && let Err(error) = save_neuron_orders(cache, &selections) {
            eprintln!(
                "warning: cannot cache the neuron orders at {}: {error:#}; the next run orders them again",
                cache.display()
            );
        }
        self.neurons = selections;
        self.values = values;
        self.pairs = pairs;
        Ok(self)
    }

    /// Block `layer_idx`'s rotary pair order (after [`FactorBank::with_units`]).
    pub fn pair_order(&self, layer_idx: usize) -> Option<&PairOrder> {
        self.pairs.get(layer_idx).map(AsRef::as_ref)
    }

    /// Block `layer_idx`'s q and k keeping `pairs` rotary pairs per head (each key/value head's
    /// first `pairs` of its order, shared by its query heads), and the pair lists; built once
    /// per block and count from the base model's dense q and k.
    pub fn rotary_pairs(
        &self,
        base: &Llama,
        layer_idx: usize,
        pairs: usize,
    ) -> anyhow::Result<([Linear; 2], Vec<Vec<u16>>)> {
        let key = (layer_idx, pairs);
        if let Some(found) = self.lock(&self.rotary).get(&key) {
            return Ok(found.clone());
        }
        let Some(order) = self.pairs.get(layer_idx) else {
            anyhow::bail!(
                "block {layer_idx}'s rotary pairs are not ranked; build the bank with_units"
            );
        };
        let lists = order.lists(pairs);
        let config = &self.config;
        let (head_dim, n_rep) = (config.head_dim(), config.n_heads / config.n_kv_heads);
        let rows = |heads: usize, group: &dyn Fn(usize) -> usize| -> Vec<u32> {
            (0..heads)
                .flat_map(|head| {
                    lists[group(head)].iter().flat_map(move |&pair| {
                        let row = head * head_dim + 2 * usize::from(pair);
                        [row as u32, row as u32 + 1]
                    })
                })
                .collect()
        };
        let select = |kind: MatrixKind, rows: Vec<u32>| -> anyhow::Result<Linear> {
            let Some(Linear::Dense { weight }) = base.linear(layer_idx, kind) else {
                anyhow::bail!(
                    "layer {layer_idx} {} is not dense in the base model",
                    kind.name()
                );
            };
            let n = rows.len();
            let index = Tensor::from_vec(rows, n, base.device())?;
            Ok(Linear::Dense {
                weight: weight.index_select(&index, 0)?.contiguous()?,
            })
        };
        let found = (
            [
                select(MatrixKind::Q, rows(config.n_heads, &|head| head / n_rep))?,
                select(MatrixKind::K, rows(config.n_kv_heads, &|head| head))?,
            ],
            lists,
        );
        self.lock(&self.rotary).insert(key, found.clone());
        Ok(found)
    }

    /// Block `layer_idx`'s MLP neuron order (after [`FactorBank::with_units`]).
    pub fn neuron_selection(&self, layer_idx: usize) -> Option<&NeuronSelection> {
        self.neurons.get(layer_idx).map(AsRef::as_ref)
    }

    /// Block `layer_idx`'s value-head projection (after [`FactorBank::with_units`]).
    pub fn value_projection(&self, layer_idx: usize) -> Option<&ValueProjection> {
        self.values.get(layer_idx).map(AsRef::as_ref)
    }

    /// Block `layer_idx`'s v and o with its key/value heads keeping `width` value dimensions
    /// each (built once per block and width); zero gives the empty v and o of a skipped
    /// attention.
    pub fn values(
        &self,
        base: &Llama,
        layer_idx: usize,
        width: usize,
    ) -> anyhow::Result<[Linear; 2]> {
        let key = (layer_idx, width);
        if let Some(values) = self.lock(&self.attention).get(&key) {
            return Ok(values.clone());
        }
        let Some(projection) = self.values.get(layer_idx) else {
            anyhow::bail!(
                "block {layer_idx}'s value heads are not projected; build the bank with_units"
            );
        };
        let (v, o) = projection.weights(width)?;
        let (hidden, device) = (self.config.hidden_size, base.device());
        let v_rows = self.config.n_kv_heads * width;
        let o_cols = self.config.n_heads * width;
        let values = [
            Linear::Dense {
                weight: Tensor::from_vec(v, (v_rows, hidden), device)?,
            },
            Linear::Dense {
                weight: Tensor::from_vec(o, (hidden, o_cols), device)?,
            },
        ];
        self.lock(&self.attention).insert(key, values.clone());
        Ok(values)
    }

    /// The relative output error `e(w)` of block `layer_idx`'s MLP pruned to `w` neurons, for
    /// `w = 0..` (after [`FactorBank::with_neurons`]).
    pub fn neuron_error_curve(&self, layer_idx: usize) -> Option<&[f64]> {
        self.neurons
            .get(layer_idx)
            .map(|selection| selection.error_curve.as_slice())
    }

    /// Block `layer_idx`'s gate, up and down keeping `width` neurons of `base`: the kept rows
    /// of gate and up, down refitted on them (built once per block and width).
    pub fn mlp(&self, base: &Llama, layer_idx: usize, width: usize) -> anyhow::Result<[Linear; 3]> {
        let key = (layer_idx, width);
        if let Some(mlp) = self.lock(&self.mlps).get(&key) {
            return Ok(mlp.clone());
        }
        let hidden = self.config.hidden_size;
        if width == 0 {
            let empty = |shape| Linear::empty(shape, base.device());
            return Ok([
                empty((0, hidden))?,
                empty((0, hidden))?,
                empty((hidden, 0))?,
            ]);
        }
        let Some(selection) = self.neurons.get(layer_idx) else {
            anyhow::bail!(
                "block {layer_idx}'s MLP neurons are not ordered; build the bank with_neurons"
            );
        };
        if width > selection.max_width() {
            anyhow::bail!(
                "an MLP width of {width} for block {layer_idx} is outside 0..={}",
                selection.max_width()
            );
        }
        let device = base.device();
        let kept: Vec<u32> = selection
            .kept(width)
            .iter()
            .map(|&j| u32::try_from(j))
            .collect::<Result<_, _>>()?;
        let kept = Tensor::new(kept.as_slice(), device)?;
        let rows_of = |kind: MatrixKind| -> anyhow::Result<Linear> {
            match base.linear(layer_idx, kind) {
                Some(Linear::Dense { weight }) => Ok(Linear::Dense {
                    weight: weight.index_select(&kept, 0)?.contiguous()?,
                }),
                _ => anyhow::bail!(
                    "block {layer_idx} {} is not dense in the base model",
                    kind.name()
                ),
            }
        };
        let down = Tensor::from_vec(selection.refit_down(width), (hidden, width), device)?;
        let mlp = [
            rows_of(MatrixKind::Gate)?,
            rows_of(MatrixKind::Up)?,
            Linear::Dense { weight: down },
        ];
        self.lock(&self.mlps).insert(key, mlp.clone());
        Ok(mlp)
    }

    fn lock<'m, T>(&self, cache: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
        // A panic while holding the lock leaves a map of finished entries: still sound.
        cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the bank to `path` (safetensors, atomically): `{i}.a`, `{i}.bt` and, for
    /// output-aligned banks, the error curve `{i}.e` of matrix `i` in index order.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for (i, entry) in self.entries.iter().enumerate() {
            tensors.insert(format!("{i}.a"), super::folder::host_copy(&entry.a)?);
            tensors.insert(format!("{i}.bt"), super::folder::host_copy(&entry.bt)?);
            if let Some(curve) = &entry.error_curve {
                let len = curve.len();
                tensors.insert(
                    format!("{i}.e"),
                    Tensor::from_vec(curve.clone(), len, &Device::Cpu)?,
                );
            }
        }
        let bytes = safetensors::serialize(&tensors, None)?;
        whittle_boards::files::write_atomically_with(path, |file| {
            std::io::Write::write_all(file, &bytes)
        })?;
        Ok(())
    }

    /// Reads a bank [`FactorBank::save`] wrote for `config` and `method`; an error when the
    /// file does not hold one factor pair of the right shapes per prunable matrix.
    pub fn load(
        path: &std::path::Path,
        config: &ModelConfig,
        method: Method,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, device)?;
        let mut entries = Vec::with_capacity(config.n_prunable_matrices());
        for (i, (_, kind)) in matrices(config).enumerate() {
            let (rows, cols) = config.matrix_shape(kind);
            let (Some(a), Some(bt)) = (
                tensors.remove(&format!("{i}.a")),
                tensors.remove(&format!("{i}.bt")),
            ) else {
                anyhow::bail!("matrix {i} is missing");
            };
            let r_max = a.dim(0)?;
            if a.dims() != [r_max, cols] || bt.dims() != [r_max, rows] {
                anyhow::bail!(
                    "matrix {i} has factors of shapes {:?} and {:?}",
                    a.dims(),
                    bt.dims()
                );
            }
            let error_curve = tensors
                .remove(&format!("{i}.e"))
                .map(|e| e.to_vec1::<f64>())
                .transpose()?;
            entries.push(Entry {
                a,
                bt,
                r_max,
                error_curve,
            });
        }
        if !tensors.is_empty() {
            anyhow::bail!("{} tensors belong to no matrix", tensors.len());
        }
        Ok(Self {
            method,
            config: *config,
            entries,
            neurons: Vec::new(),
            values: Vec::new(),
            pairs: Vec::new(),
            mlps: Arc::default(),
            attention: Arc::default(),
            rotary: Arc::default(),
        })
    }

    /// The method the bank was built with.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The calibration error curve `e(r)` of a matrix (output-aligned only).
    pub fn error_curve(&self, layer_idx: usize, kind: MatrixKind) -> Option<&[f64]> {
        self.entries
            .get(matrix_index(layer_idx, kind))?
            .error_curve
            .as_deref()
    }

    /// The rank-`rank` factors of a matrix as a low-rank [`Linear`] (views into the bank).
    pub fn linear(
        &self,
        layer_idx: usize,
        kind: MatrixKind,
        rank: usize,
    ) -> anyhow::Result<Linear> {
        let Some(entry) = self.entries.get(matrix_index(layer_idx, kind)) else {
            anyhow::bail!("layer {layer_idx} {} is not in the bank", kind.name());
        };
        if rank == 0 || rank > entry.r_max {
            anyhow::bail!(
                "rank {rank} for layer {layer_idx} {} is outside 1..={}",
                kind.name(),
                entry.r_max
            );
        }
        Ok(Linear::LowRank {
            a: entry.a.narrow(0, 0, rank)?,
            b: entry.bt.narrow(0, 0, rank)?.t()?,
        })
    }

    /// The base model up to the plan's exit, with every planned matrix replaced by its
    /// factors, every MLP pruned by neurons, every attention by value dimensions to its
    /// width and every query/key head by rotary pairs, and every matrix the plan stores at 4
    /// bits rounded as the bundle rounds it; the rest is shared.
    pub fn apply(&self, base: &Llama, plan: &RankPlan) -> anyhow::Result<Llama> {
        let mut pruned = base.truncated(plan.exit())?;
        for (layer_idx, kind) in matrices(&plan.kept_config(&self.config)) {
            if let Some(rank) = plan.rank(layer_idx, kind) {
                pruned.set_linear(layer_idx, kind, self.linear(layer_idx, kind, rank)?)?;
            }
        }
        for layer_idx in 0..plan.exit() {
            if let Some(width) = plan.mlp_width(layer_idx) {
                pruned.set_mlp(layer_idx, self.mlp(base, layer_idx, width)?)?;
            }
            if let Some(width) = plan.value_width(layer_idx) {
                pruned.set_values(layer_idx, self.values(base, layer_idx, width)?)?;
            }
            if let Some(pairs) = plan.pairs(layer_idx) {
                let (qk, lists) = self.rotary_pairs(base, layer_idx, pairs)?;
                pruned.set_rotary_pairs(layer_idx, qk, lists)?;
            }
        }
        round_planned_q4(&mut pruned, plan)?;
        Ok(pruned)
    }
}

/// Rounds every matrix `plan` stores at 4 bits in `model` (cut at the plan's exit) to what the
/// bundle's rounding to nearest stores (the packer's compensated rounding only does better), so
/// that the search scores their cost and what follows keeps them on their grid.
pub fn round_planned_q4(model: &mut Llama, plan: &RankPlan) -> anyhow::Result<()> {
    for (layer_idx, kind) in matrices(model.config()) {
        if !plan.is_q4(layer_idx, kind) {
            continue;
        }
        if let Some(linear) = model.linear(layer_idx, kind).filter(|l| l.n_params() > 0) {
            let rounded = crate::bundle::stored_linear(linear, Dtype::Q4)?;
            model.set_linear(layer_idx, kind, rounded)?;
        }
    }
    Ok(())
}

impl Entry {
    fn from_factors(factors: Factors, device: &Device) -> anyhow::Result<Self> {
        let (rows, cols, r_max) = (factors.rows, factors.cols, factors.r_max);
        let a = Tensor::from_vec(factors.a, (r_max, cols), device)?;
        let b = Tensor::from_vec(factors.b, (rows, r_max), device)?;
        Ok(Self {
            a,
            bt: b.t()?.contiguous()?,
            r_max,
            error_curve: factors.error_curve,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use indicatif::ProgressBar;

    use super::*;
    use crate::calibrate::{CalibrationData, CalibrationSettings, accumulate};
    use crate::model::synthetic::{tiny_config, tiny_tensors};

    fn values(linear: &Linear) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(match linear {
            Linear::Dense { weight } => vec![weight.flatten_all()?.to_vec1()?],
            Linear::LowRank { a, b } => {
                vec![a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?]
            }
        })
    }

    #[test]
    fn a_planned_4_bit_matrix_holds_what_the_bundle_stores() -> anyhow::Result<()> {
        let config = tiny_config();
        let dense = Llama::from_tensors(
            config,
            &tiny_tensors(&config, 7, &Device::Cpu)?,
            &Device::Cpu,
        )?;
        let sequences: Vec<Vec<u32>> = (0..8u32)
            .map(|s| {
                (0..24)
                    .map(|i| (s * 31 + i * 7) % config.vocab_size as u32)
                    .collect()
            })
            .collect();
        let settings = CalibrationSettings {
            split: "calibration".into(),
            max_tokens: 1000,
            wikitext_share: 0.0,
        };
        let progress = ProgressBar::hidden();
        let data = CalibrationData {
            observe_from: vec![0; sequences.len()],
            sequences,
        };
        let calibration = accumulate(&dense, &data, 0, 64, settings, &progress)?;
        let bank = FactorBank::build(&dense, &calibration, Method::OutputAligned, &progress)?;
        let mut dtypes = vec![Dtype::Q8; config.n_prunable_matrices()];
        dtypes[matrix_index(0, MatrixKind::Up)] = Dtype::Q4;
        dtypes[matrix_index(1, MatrixKind::Q)] = Dtype::Q4;
        for plan in [RankPlan::dense(&config), RankPlan::uniform(&config, 0.5)] {
            let plain = bank.apply(&dense, &plan)?;
            let mixed = bank.apply(&dense, &plan.clone().with_dtypes(dtypes.clone()))?;
            for (layer_idx, kind) in matrices(&config) {
                let (Some(p), Some(m)) =
                    (plain.linear(layer_idx, kind), mixed.linear(layer_idx, kind))
                else {
                    anyhow::bail!("layer {layer_idx} {} is missing", kind.name());
                };
                let expected = match dtypes[matrix_index(layer_idx, kind)] {
                    Dtype::Q4 => crate::bundle::stored_linear(p, Dtype::Q4)?,
                    _ => p.clone(),
                };
                assert_eq!(
                    values(m)?,
                    values(&expected)?,
                    "layer {layer_idx} {}",
                    kind.name()
                );
            }
            // The rounding changed the 4-bit matrices.
            let up = |model: &Llama| model.linear(0, MatrixKind::Up).map(values).transpose();
            assert_ne!(up(&plain)?, up(&mixed)?);
        }
        Ok(())
    }
}
