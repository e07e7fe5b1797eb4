//! Recovery (DESIGN section 2, "Recovery"): after the search, the matrices the plan changed
//! (factor pairs, MLPs pruned by neurons) are trained so that the pruned model's normed hidden
//! state at its exit matches the dense model's at the same block, on the task's calibration
//! inputs. The dense model is the teacher and no label is read, so accuracy "relative to
//! dense" keeps its meaning. Every other weight stays as it is.
//!
//! The loss of a batch is the relative squared error `Σ‖s − t‖² / Σ‖t‖²` over its real
//! positions after the prompt prefix the sequences share (`s` the student's state, `t` the
//! teacher's; the prefix runs once per step, its keys and values in the graph) or, with a label
//! head, the mean KL divergence from the teacher's label distribution to the student's at each
//! sequence's last position, both read through the dense model's head at the exit; AdamW, no
//! weight decay (the pruned weights are the starting point, not zero), one pass over the
//! training sequences in batches of at most the batch budget, in a seeded order. The losses on
//! held-out calibration sequences are reported before and after.

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
use crate::head::TaskHead;
use crate::model::{Batch, KvCache, Linear, Llama};

/// AdamW's step size, chosen by the held-out loss on the default SST-2 answer's plan (16,384
/// calibration tokens; 3·10⁻⁵, 10⁻⁴ and 3·10⁻⁴ tried, 10⁻⁴ lowest; docs/RESULTS.md, recovery).
pub const LEARNING_RATE: f64 = 1e-4;

/// AdamW's step size for the label objective, chosen by the held-out KL on the same plan and
/// tokens (10⁻⁴ diverges; 10⁻⁵ and 10⁻⁶ tried, 10⁻⁶ lowest; docs/RESULTS.md, recovery): the
/// two-label distribution at the last position moves far more per step than the state.
pub const LABEL_LEARNING_RATE: f64 = 1e-6;

/// How the recovery trains.
#[derive(Clone, Copy, Debug)]
pub struct RecoverSettings<'a> {
    /// Upper bound on padded tokens per batch (one optimizer step per batch).
    pub batch_tokens: usize,
    /// AdamW's step size ([`LEARNING_RATE`] in `prune`).
    pub learning_rate: f64,
    /// Seeds the order of the batches.
    pub seed: u64,
    /// With the dense model's task head at the exit: match its label distribution at each
    /// sequence's last position (KL) instead of the state at every position.
    pub label_head: Option<&'a TaskHead>,
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
    /// With a label head: the mean KL divergence of the label distributions at the held-out
    /// sequences' last positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_label_kl_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_label_kl_after: Option<f64>,
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
    let head = settings
        .label_head
        .map(|head| LabelHead::new(head, dense.device()))
        .transpose()?;
    let (held_out_loss_before, held_out_label_kl_before) = mean_loss(
        &teacher,
        teacher_prefix.as_ref(),
        pruned,
        prefix,
        &held_out_batches,
        head.as_ref(),
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
    progress.set_message(match head {
        Some(_) => "recovery: distilling the dense model's label distribution at the exit",
        None => "recovery: distilling the dense model's state at the exit",
    });
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
        let loss = match &head {
            Some(head) => head.kl(&rows, &target, batch)?,
            None => relative_error(&rows, &target)?,
        };
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
    let (held_out_loss_after, held_out_label_kl_after) = mean_loss(
        &teacher,
        teacher_prefix.as_ref(),
        &student,
        prefix,
        &held_out_batches,
        head.as_ref(),
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
            held_out_label_kl_before,
            held_out_label_kl_after,
            first_loss,
            last_loss,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// `pruned` with every matrix `plan` changed before the exit made of variables: the model,
/// the variables per matrix, and their parameter count; only those [`RankPlan::recovers`].
fn trainable(pruned: &Llama, plan: &RankPlan) -> anyhow::Result<(Llama, Vec<Vec<Var>>, usize)> {
    let mut student = pruned.clone();
    let mut vars = Vec::new();
    let mut parameters = 0;
    let exit = pruned.config().n_layers;
    for (layer_idx, kind) in matrices(pruned.config()) {
        if layer_idx >= exit || !plan.recovers(layer_idx, kind) {
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
/// the teacher's energy, and with `head` the mean label KL at the sequences' last positions.
fn mean_loss(
    teacher: &Llama,
    teacher_prefix: Option<&KvCache>,
    student: &Llama,
    prefix: &[u32],
    batches: &[Batch],
    head: Option<&LabelHead>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let student_prefix = (!prefix.is_empty())
        .then(|| student.prefix_cache(prefix))
        .transpose()?;
    let (mut error, mut scale, mut kl, mut sequences) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for batch in batches {
        let target = teacher.hidden_rows(batch, teacher_prefix, false)?;
        let rows = student.hidden_rows(batch, student_prefix.as_ref(), false)?;
        error += f64::from((&rows - &target)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
        scale += f64::from(target.sqr()?.sum_all()?.to_scalar::<f32>()?);
        if let Some(head) = head {
            let n = batch.lengths().len();
            kl += n as f64 * f64::from(head.kl(&rows, &target, batch)?.to_scalar::<f32>()?);
            sequences += n;
        }
    }
    let relative = if scale > 0.0 { error / scale } else { 0.0 };
    Ok((relative, head.map(|_| kl / sequences.max(1) as f64)))
}

/// The dense model's task head at the exit as tensors: `W` transposed `(hidden, labels)`, `b`.
struct LabelHead {
    weight_t: Tensor,
    bias: Tensor,
}

impl LabelHead {
    fn new(head: &TaskHead, device: &candle_core::Device) -> anyhow::Result<Self> {
        let labels = head.weight.len();
        let hidden = head.weight.first().map_or(0, Vec::len);
        let flat: Vec<f32> = head.weight.iter().flatten().copied().collect();
        if labels == 0 || flat.len() != labels * hidden || head.bias.len() != labels {
            anyhow::bail!("the task head's rows and bias do not agree; fit the head again");
        }
        Ok(Self {
            weight_t: Tensor::from_vec(flat, (labels, hidden), device)?
                .t()?
                .contiguous()?,
            bias: Tensor::new(head.bias.as_slice(), device)?,
        })
    }

    /// Mean over the batch's sequences of `KL(p_teacher ‖ p_student)` at each one's last
    /// position (rows: every real position, sequence after sequence).
    fn kl(&self, student: &Tensor, teacher: &Tensor, batch: &Batch) -> anyhow::Result<Tensor> {
        let mut end = 0u32;
        let last: Vec<u32> = batch
            .lengths()
            .iter()
            .map(|&len| {
                end += len as u32;
                end - 1
            })
            .collect();
        let last = Tensor::new(last.as_slice(), student.device())?;
        let log_probs = |rows: &Tensor| -> anyhow::Result<Tensor> {
            let logits = rows
                .index_select(&last, 0)?
                .matmul(&self.weight_t)?
                .broadcast_add(&self.bias)?;
            Ok(candle_nn::ops::log_softmax(
                &logits,
                candle_core::D::Minus1,
            )?)
        };
        let (student, teacher) = (log_probs(student)?, log_probs(&teacher.detach())?);
        let kl = (teacher.exp()? * (&teacher - &student)?)?.sum(candle_core::D::Minus1)?;
        Ok(kl.mean_all()?)
    }
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
            label_head: None,
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
        // Through a label head (two labels reading the first two hidden dimensions) the
        // held-out label KL falls too, and it is reported.
        let hidden = config.hidden_size;
        let row = |i: usize| (0..hidden).map(|j| f32::from(u8::from(j == i))).collect();
        let head = TaskHead {
            weight: vec![row(0), row(1)],
            bias: vec![0.1, -0.1],
            ridge: 1.0,
        };
        let labels = RecoverSettings {
            label_head: Some(&head),
            ..settings
        };
        let (_, recovery) = recover(
            &dense,
            &pruned,
            &plan,
            &prompts(0, 192),
            &prompts(1000, 16),
            0,
            labels,
            &progress,
        )?;
        let (Some(before), Some(after)) = (
            recovery.held_out_label_kl_before,
            recovery.held_out_label_kl_after,
        ) else {
            anyhow::bail!("no label KL reported: {recovery:?}");
        };
        assert!(before > 0.0 && after < before, "{recovery:?}");
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
