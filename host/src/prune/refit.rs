use candle_core::{DType, Tensor};
use indicatif::ProgressBar;
use whittle_runtime::MatrixKind;

use super::RankPlan;
use super::dense_weight;
use crate::factorize;
use crate::model::{Batch, InputSite, Linear, Llama, Observer};

/// Keeps the rows a block's linear inputs had during one block pass.
#[derive(Default)]
struct Capture {
    rows: Vec<(InputSite, Tensor)>,
}

impl Capture {
    fn take(&mut self, site: InputSite) -> anyhow::Result<Tensor> {
        let position = self.rows.iter().position(|(s, _)| *s == site);
        match position {
            Some(position) => Ok(self.rows.swap_remove(position).1),
            None => anyhow::bail!("site {site:?} was not observed"),
        }
    }
}

impl Observer for Capture {
    fn observe(
        &mut self,
        _layer_idx: usize,
        site: InputSite,
        rows: &Tensor,
    ) -> candle_core::Result<()> {
        self.rows.push((site, rows.clone()));
        Ok(())
    }
}

fn readers(site: InputSite) -> impl Iterator<Item = MatrixKind> {
    MatrixKind::ALL
        .into_iter()
        .filter(move |&kind| InputSite::of(kind) == site)
}

/// Anchored refit (DESIGN section 2): walks the model block by block and site by site with
/// two streams over `sequences` — the dense model's inputs X and the pruned model's inputs X̂
/// — and replaces every planned matrix by the rank-r minimiser of ‖W X − M X̂‖, so each
/// layer corrects the error of the pruned layers before it. Dense matrices stay as they are.
/// `anchor` λ ≥ 0 adds λ·‖W X − M X‖², the plain output-aligned objective on the dense
/// inputs, so the solution is pulled toward the plain factors (λ → ∞ gives them back).
#[allow(clippy::too_many_arguments)] // the two models, the plan, the data and its batching, λ, progress
pub fn anchored_refit(
    base: &Llama,
    pruned: &Llama,
    plan: &RankPlan,
    sequences: &[Vec<u32>],
    pad_id: u32,
    batch_tokens: usize,
    anchor: f64,
    progress: &ProgressBar,
) -> anyhow::Result<Llama> {
    // The pruned model's blocks: up to its exit.
    let config = *pruned.config();
    let batches = sequence_batches(sequences, pad_id, batch_tokens, base)?;
    let mut dense_states: Vec<Tensor> = Vec::with_capacity(batches.len());
    for batch in &batches {
        dense_states.push(base.embed(batch)?);
    }
    let mut pruned_states = dense_states.clone();
    let mut refit = pruned.clone();
    progress.set_length(config.n_layers as u64);
    progress.set_position(0);
    progress.set_message("anchored refit");
    for layer_idx in 0..config.n_layers {
        let mut dense_inputs: Vec<Capture> = Vec::with_capacity(batches.len());
        for (batch, state) in batches.iter().zip(dense_states.iter_mut()) {
            let mut capture = Capture::default();
            *state = base.forward_block(layer_idx, state, batch, Some(&mut capture))?;
            dense_inputs.push(capture);
        }
        for site in InputSite::ALL {
            let planned: Vec<(MatrixKind, usize)> = readers(site)
                .filter_map(|kind| plan.rank(layer_idx, kind).map(|rank| (kind, rank)))
                .collect();
            if planned.is_empty() {
                continue;
            }
            let dim = config.matrix_shape(planned[0].0).1;
            let mut c_h = Tensor::zeros((dim, dim), DType::F64, base.device())?;
            let mut c_xh = Tensor::zeros((dim, dim), DType::F64, base.device())?;
            for ((batch, state), dense) in batches.iter().zip(&pruned_states).zip(&mut dense_inputs)
            {
                let mut capture = Capture::default();
                refit.forward_block(layer_idx, state, batch, Some(&mut capture))?;
                let x_hat = capture.take(site)?.to_dtype(DType::F64)?;
                let x = dense.take(site)?.to_dtype(DType::F64)?;
                c_h = (c_h + x_hat.t()?.matmul(&x_hat)?)?;
                c_xh = (c_xh + x.t()?.matmul(&x_hat)?)?;
                if anchor > 0.0 {
                    let c = (x.t()?.matmul(&x)? * anchor)?;
                    c_h = (c_h + &c)?;
                    c_xh = (c_xh + c)?;
                }
            }
            let c_h = to_faer(&c_h, dim)?;
            let c_xh = to_faer(&c_xh, dim)?;
            for (kind, rank) in planned {
                let (rows, cols) = config.matrix_shape(kind);
                let weight = dense_weight(base, layer_idx, kind)?;
                let factors = factorize::refit(&weight, rows, cols, &c_h, &c_xh, rank)?;
                for warning in &factors.warnings {
                    eprintln!(
                        "warning: refit layer {layer_idx} {}: {warning}",
                        kind.name()
                    );
                }
                let device = base.device();
                let a = Tensor::from_vec(factors.a, (factors.r_max, cols), device)?;
                let b = Tensor::from_vec(factors.b, (rows, factors.r_max), device)?;
                refit.set_linear(layer_idx, kind, Linear::LowRank { a, b })?;
            }
        }
        for (batch, state) in batches.iter().zip(pruned_states.iter_mut()) {
            *state = refit.forward_block(layer_idx, state, batch, None)?;
        }
        progress.inc(1);
    }
    Ok(refit)
}

fn to_faer(tensor: &Tensor, dim: usize) -> anyhow::Result<faer::Mat<f64>> {
    let values: Vec<f64> = tensor.flatten_all()?.to_vec1()?;
    Ok(faer::Mat::from_fn(dim, dim, |i, j| values[i * dim + j]))
}

/// Length-sorted batches of at most `batch_tokens` padded tokens (one sequence may exceed
/// it alone); an error when there is no token to run.
pub(super) fn sequence_batches(
    sequences: &[Vec<u32>],
    pad_id: u32,
    batch_tokens: usize,
    llama: &Llama,
) -> anyhow::Result<Vec<Batch>> {
    let mut order: Vec<&Vec<u32>> = sequences.iter().filter(|s| !s.is_empty()).collect();
    order.sort_by_key(|s| s.len());
    let mut batches = Vec::new();
    let mut current: Vec<Vec<u32>> = Vec::new();
    for sequence in order {
        if !current.is_empty() && (current.len() + 1) * sequence.len() > batch_tokens {
            batches.push(Batch::new(&current, pad_id, llama.device())?);
            current.clear();
        }
        current.push(sequence.clone());
    }
    if !current.is_empty() {
        batches.push(Batch::new(&current, pad_id, llama.device())?);
    }
    if batches.is_empty() {
        anyhow::bail!("no calibration tokens were given; raise the token budget");
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use indicatif::ProgressBar;

    use super::*;
    use crate::calibrate::{CalibrationSettings, accumulate};
    use crate::factorize::Method;
    use crate::model::synthetic::{tiny_config, tiny_tensors};
    use crate::prune::FactorBank;

    fn sequences(seed: u32) -> Vec<Vec<u32>> {
        (0..48u32)
            .map(|row| {
                (0..16u32)
                    .map(|t| (row * 7 + t * t * 3 + row * t + seed) % 64)
                    .collect()
            })
            .collect()
    }

    fn hidden_error(
        reference: &Llama,
        candidate: &Llama,
        data: &[Vec<u32>],
    ) -> anyhow::Result<f32> {
        let batch = Batch::new(data, 0, &Device::Cpu)?;
        let a = reference.forward_hidden(&batch, None)?;
        let b = candidate.forward_hidden(&batch, None)?;
        Ok((a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
    }

    #[test]
    fn refit_corrects_the_error_of_earlier_layers() -> anyhow::Result<()> {
        let config = tiny_config();
        let tensors = tiny_tensors(&config, 31, &Device::Cpu)?;
        let dense = Llama::from_tensors(config, &tensors, &Device::Cpu)?;
        let calibration_data = sequences(0);
        let settings = CalibrationSettings {
            split: "calibration".into(),
            max_tokens: 1000,
            wikitext_share: 0.0,
        };
        let progress = ProgressBar::hidden();
        let calibration = accumulate(
            &dense,
            &crate::calibrate::CalibrationData {
                observe_from: vec![0; calibration_data.len()],
                sequences: calibration_data.clone(),
            },
            0,
            64,
            settings,
            &progress,
        )?;
        let bank = FactorBank::build(&dense, &calibration, Method::OutputAligned, &progress)?;
        let plan = RankPlan::uniform(&config, 0.5);
        assert_eq!(plan.rank(1, MatrixKind::Q), Some(8));
        let pruned = bank.apply(&dense, &plan)?;
        assert_eq!(
            pruned.linear(1, MatrixKind::Up).and_then(Linear::rank),
            Some(8)
        );
        let refit = anchored_refit(
            &dense,
            &pruned,
            &plan,
            &calibration_data,
            0,
            64,
            0.0,
            &progress,
        )?;
        assert_eq!(
            refit.linear(0, MatrixKind::Down).and_then(Linear::rank),
            Some(8)
        );
        let before = hidden_error(&dense, &pruned, &calibration_data)?;
        let after = hidden_error(&dense, &refit, &calibration_data)?;
        assert!(after < 0.9 * before, "refit {after} vs plain {before}");
        let held_out = sequences(1000);
        let before = hidden_error(&dense, &pruned, &held_out)?;
        let after = hidden_error(&dense, &refit, &held_out)?;
        assert!(after < before, "held out: refit {after} vs plain {before}");
        Ok(())
    }
}
