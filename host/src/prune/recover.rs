//! Recovery (DESIGN section 2, "Recovery"): after the search, the matrices the plan changed
//! (factor pairs, MLPs pruned by neurons) are trained so that the pruned model's normed hidden
//! state at its exit matches the dense model's at the same block, on the task's calibration
//! inputs. The dense model is the teacher and no label is read, so accuracy "relative to
//! dense" keeps its meaning. Every other weight stays as it is.
//!
//! The loss of a batch is the relative squared error `Σ‖s − t‖² / Σ‖t‖²` over its real
//! positions after the prompt prefix the sequences share (`s` the student's state, `t` the
//! teacher's; the prefix runs once per step, its keys and values in the graph); AdamW, no weight decay (the pruned
//! weights are the starting point, not zero), one pass over the training sequences in batches
//! of at most the batch budget, in a seeded order. The loss on held-out calibration sequences is
//! reported before and after.

use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::refit::sequence_batches;
use super::{RankPlan, matrices};
use crate::eval::shared_prefix;
use crate::model::{Batch, KvCache, Linear, Llama};

/// AdamW's step size, chosen by the held-out loss on the default SST-2 answer's plan (16,384
/// calibration tokens; 3·10⁻⁵, 10⁻⁴ and 3·10⁻⁴ tried, 10⁻⁴ lowest; docs/RESULTS.md, recovery).
pub const LEARNING_RATE: f64 = 1e-4;

/// How the recovery trains.
#[derive(Clone, Copy, Debug)]
pub struct RecoverSettings {
    /// Upper bound on padded tokens per batch (one optimizer step per batch).
    pub batch_tokens: usize,
    /// AdamW's step size ([`LEARNING_RATE`] in `prune`).
    pub learning_rate: f64,
    /// Seeds the order of the batches.
    pub seed: u64,
}

/// What the recovery did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Tokens trained on (real positions, every prompt in full).
    pub tokens: usize,
    /// Optimizer steps (one per batch).
    pub steps: usize,
    /// Matrices trained and their parameters.
    pub matrices: usize,
    pub parameters: usize,
    /// Relative squared error against the teacher on held-out calibration sequences.
    pub held_out_loss_before: f64,
    pub held_out_loss_after: f64,
    /// Training loss of the first and the last step.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Trains the matrices `plan` changed in `pruned` toward `dense`'s state at `pruned`'s exit
/// on `train` (token sequences), and measures the loss on `held_out` before and after.
/// Returns the trained model (plain tensors) and what happened.
#[allow(clippy::too_many_arguments)] // the two models, the plan, the two data sets, padding, settings, progress
pub fn recover(
    dense: &Llama,
    pruned: &Llama,
    plan: &RankPlan,
    train: &[Vec<u32>],
    held_out: &[Vec<u32>],
    pad_id: u32,
    settings: RecoverSettings,
    progress: &ProgressBar,
) -> anyhow::Result<(Llama, Recovery)> {
    let started = Instant::now();
    if train.iter().all(Vec::is_empty) {
        anyhow::bail!(
            "recovery has no training tokens; give --recover-tokens a positive budget or leave it out"
        );
    }
    let exit = pruned.config().n_layers;
    let teacher = match exit < dense.config().n_layers {
        true => dense.truncated(exit)?,
        false => dense.clone(),
    };
    let (mut student, vars, parameters) = trainable(pruned, plan)?;
    if vars.is_empty() {
        anyhow::bail!("the plan changes no matrix before its exit; there is nothing to recover");
    }
    let n_matrices = vars.len();
    let vars: Vec<Var> = vars.into_iter().flatten().collect();
    // The prompt prefix every sequence shares runs once per step (its keys and values in the
    // graph, so its matrices learn too); the loss reads the sequences' own positions.
    let prefix_len = shared_prefix(&[train, held_out].concat());
    let prefix = train
        .iter()
        .find(|s| !s.is_empty())
        .map_or(&[][..], |s| &s[..prefix_len]);
    let own = |sequences: &[Vec<u32>]| -> Vec<Vec<u32>> {
        sequences.iter().map(|s| s[prefix_len..].to_vec()).collect()
    };
    let train_batches = sequence_batches(&own(train), pad_id, settings.batch_tokens, dense)?;
    let held_out_batches = sequence_batches(&own(held_out), pad_id, settings.batch_tokens, dense)?;
    let teacher_prefix = (prefix_len > 0)
        .then(|| teacher.prefix_cache(prefix))
        .transpose()?;
    let held_out_loss_before = mean_loss(
        &teacher,
        teacher_prefix.as_ref(),
        pruned,
        prefix,
        &held_out_batches,
    )?;
    let mut optimizer = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: settings.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut order: Vec<usize> = (0..train_batches.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(settings.seed));
    progress.set_length(order.len() as u64);
    progress.set_position(0);
    progress.set_message("recovery: distilling the dense model's state at the exit");
    let (mut first_loss, mut last_loss, mut tokens) = (f64::NAN, f64::NAN, 0);
    for (step, &index) in order.iter().enumerate() {
        let batch = &train_batches[index];
        let target = teacher
            .hidden_rows(batch, teacher_prefix.as_ref(), false)?
            .detach();
        let shared = (prefix_len > 0)
            .then(|| student.differentiable_prefix_cache(prefix))
            .transpose()?;
        let rows = student.hidden_rows(batch, shared.as_ref(), true)?;
        let loss = relative_error(&rows, &target)?;
        optimizer.backward_step(&loss)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            anyhow::bail!(
                "recovery diverged at step {step} (loss {value}); run without --recover-tokens"
            );
        }
        if step == 0 {
            first_loss = value;
        }
        last_loss = value;
        tokens += prefix_len + batch.lengths().iter().sum::<usize>();
        progress.set_message(format!("recovery: loss {value:.4} (first {first_loss:.4})"));
        progress.inc(1);
    }
    detach(&mut student, &vars)?;
    let held_out_loss_after = mean_loss(
        &teacher,
        teacher_prefix.as_ref(),
        &student,
        prefix,
        &held_out_batches,
    )?;
    Ok((
        student,
        Recovery {
            tokens,
            steps: order.len(),
            matrices: n_matrices,
            parameters,
            held_out_loss_before,
            held_out_loss_after,
            first_loss,
            last_loss,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// `pruned` with every matrix `plan` changed before the exit made of variables: the model,
/// the variables per matrix, and their parameter count.
fn trainable(pruned: &Llama, plan: &RankPlan) -> anyhow::Result<(Llama, Vec<Vec<Var>>, usize)> {
    let mut student = pruned.clone();
    let mut vars = Vec::new();
    let mut parameters = 0;
    let exit = pruned.config().n_layers;
    for (layer_idx, kind) in matrices(pruned.config()) {
        if layer_idx >= exit || !plan.changes(layer_idx, kind) {
            continue;
        }
        // A skipped sub-block's matrices have nothing to train.
        let Some(linear) = pruned.linear(layer_idx, kind).filter(|l| l.n_params() > 0) else {
            continue;
        };
        parameters += linear.n_params();
        let (linear, matrix_vars) = match linear {
            Linear::Dense { weight } => {
                let weight = Var::from_tensor(weight)?;
                let linear = Linear::Dense {
                    weight: weight.as_tensor().clone(),
                };
                (linear, vec![weight])
            }
            Linear::LowRank { a, b } => {
                let (a, b) = (Var::from_tensor(a)?, Var::from_tensor(b)?);
                let linear = Linear::LowRank {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                };
                (linear, vec![a, b])
            }
        };
        student.set_linear(layer_idx, kind, linear)?;
        vars.push(matrix_vars);
    }
    Ok((student, vars, parameters))
}

/// Replaces every variable of `student` by a plain tensor holding its trained values.
fn detach(student: &mut Llama, vars: &[Var]) -> anyhow::Result<()> {
    let is_var = |t: &Tensor| vars.iter().any(|v| v.as_tensor().id() == t.id());
    let plain = |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.detach().copy()?) };
    for (layer_idx, kind) in matrices(student.config()) {
        let linear = match student.linear(layer_idx, kind) {
            Some(Linear::Dense { weight }) if is_var(weight) => Linear::Dense {
                weight: plain(weight)?,
            },
            Some(Linear::LowRank { a, b }) if is_var(a) || is_var(b) => Linear::LowRank {
                a: plain(a)?,
                b: plain(b)?,
            },
            _ => continue,
        };
        student.set_linear(layer_idx, kind, linear)?;
    }
    Ok(())
}

/// `Σ‖s − t‖² / Σ‖t‖²`, a scalar tensor.
fn relative_error(student: &Tensor, teacher: &Tensor) -> anyhow::Result<Tensor> {
    let error = (student - teacher)?.sqr()?.sum_all()?;
    let scale = teacher.sqr()?.sum_all()?;
    Ok(error.broadcast_div(&scale)?)
}

/// The relative error of `student` over `batches` (each row continuing `prefix`), weighted by
/// the teacher's energy.
fn mean_loss(
    teacher: &Llama,
    teacher_prefix: Option<&KvCache>,
    student: &Llama,
    prefix: &[u32],
    batches: &[Batch],
) -> anyhow::Result<f64> {
    let student_prefix = (!prefix.is_empty())
        .then(|| student.prefix_cache(prefix))
        .transpose()?;
    let (mut error, mut scale) = (0.0f64, 0.0f64);
    for batch in batches {
        let target = teacher.hidden_rows(batch, teacher_prefix, false)?;
        let rows = student.hidden_rows(batch, student_prefix.as_ref(), false)?;
        error += f64::from((rows - &target)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
        scale += f64::from(target.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(if scale > 0.0 { error / scale } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use whittle_runtime::MatrixKind;

    use super::*;
    use crate::calibrate::{CalibrationData, CalibrationSettings, accumulate};
    use crate::factorize::Method;
    use crate::model::synthetic::{tiny_config, tiny_tensors};
    use crate::prune::FactorBank;

    fn sequences(seed: u32, n: u32) -> Vec<Vec<u32>> {
        (0..n)
            .map(|row| {
                (0..16u32)
                    .map(|t| (row * 7 + t * t * 3 + row * t + seed) % 64)
                    .collect()
            })
            .collect()
    }

    /// `sequences` behind one shared five-token prompt prefix.
    fn prompts(seed: u32, n: u32) -> Vec<Vec<u32>> {
        sequences(seed, n)
            .into_iter()
            .map(|s| [&[1, 2, 3, 4, 5][..], &s].concat())
            .collect()
    }

    #[test]
    fn recovery_trains_the_changed_matrices_toward_the_dense_state() -> anyhow::Result<()> {
        let config = tiny_config();
        let device = Device::Cpu;
        let dense = Llama::from_tensors(config, &tiny_tensors(&config, 41, &device)?, &device)?;
        let data = sequences(0, 192);
        let progress = ProgressBar::hidden();
        let calibration = accumulate(
            &dense,
            &CalibrationData {
                observe_from: vec![0; data.len()],
                sequences: data.clone(),
            },
            0,
            64,
            CalibrationSettings {
                split: "calibration".into(),
                max_tokens: 4000,
                wikitext_share: 0.0,
            },
            &progress,
        )?;
        let dir = tempfile::tempdir()?;
        let bank = FactorBank::build(&dense, &calibration, Method::OutputAligned, &progress)?
            .with_units(&dense, &calibration, &dir.path().join("n"), &progress)?;
        let width = config.intermediate_size / 2;
        let plan = RankPlan::dense(&config)
            .with_mlp_width(&config, 0, Some(width))
            .with_exit(1);
        let pruned = bank.apply(&dense, &plan)?;
        let settings = RecoverSettings {
            batch_tokens: 64,
            learning_rate: 2e-3,
            seed: 0,
        };
        for (train, held_out, prefix) in [
            (data.clone(), sequences(1000, 16), 0),
            (prompts(0, 192), prompts(1000, 16), 5),
        ] {
            let (recovered, recovery) = recover(
                &dense, &pruned, &plan, &train, &held_out, 0, settings, &progress,
            )?;
            assert_eq!(recovery.matrices, 3, "gate, up and down of block 0");
            assert_eq!(recovery.tokens, 192 * 16 + recovery.steps * prefix);
            assert!(
                recovery.held_out_loss_after < 0.9 * recovery.held_out_loss_before,
                "{recovery:?}"
            );
            // The kept shapes and the untouched matrices stay; trained ones are plain tensors.
            assert_eq!(recovered.config().n_layers, 1);
            for kind in MatrixKind::ALL {
                let (Some(after), Some(before)) =
                    (recovered.linear(0, kind), pruned.linear(0, kind))
                else {
                    anyhow::bail!("block 0 lacks {kind:?}");
                };
                assert_eq!(after.shape()?, before.shape()?);
                let (Linear::Dense { weight: a }, Linear::Dense { weight: b }) = (after, before)
                else {
                    anyhow::bail!("dense matrices expected");
                };
                assert!(!a.is_variable());
                let moved = (a - b)?.abs()?.sum_all()?.to_scalar::<f32>()?;
                let mlp = matches!(kind, MatrixKind::Gate | MatrixKind::Up | MatrixKind::Down);
                assert_eq!(moved > 0.0, mlp, "{kind:?} moved by {moved}");
            }
        }
        // Nothing to train, or nothing to train on, is refused.
        let held_out = sequences(1000, 16);
        let dense_plan = RankPlan::dense(&config);
        let error = recover(
            &dense,
            &dense,
            &dense_plan,
            &data,
            &held_out,
            0,
            settings,
            &progress,
        )
        .expect_err("nothing to recover");
        assert!(format!("{error:#}").contains("nothing to recover"));
        let error = recover(
            &dense,
            &pruned,
            &plan,
            &[],
            &held_out,
            0,
            settings,
            &progress,
        )
        .expect_err("no tokens");
        assert!(format!("{error:#}").contains("--recover-tokens"));
        Ok(())
    }
}
