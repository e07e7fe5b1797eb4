use std::collections::BTreeMap;

use candle_core::{Device, IndexOp, Result, Tensor};
use whittle_runtime::{MatrixKind, ModelConfig};

use super::synthetic::{tiny_config, tiny_tensors};
use super::*;

fn tiny_llama(seed: u64) -> Result<Llama> {
    let config = tiny_config();
    let tensors = tiny_tensors(&config, seed, &Device::Cpu)?;
    Llama::from_tensors(config, &tensors, &Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// `a` and `b` give the same states (within 1e-4) through a full pass, a shared prefix and
/// cached decoding.
fn assert_same_states(a: &Llama, b: &Llama) -> Result<()> {
    let device = Device::Cpu;
    let batch = Batch::new(&sequences(), 0, &device)?;
    let diff = max_abs_diff(&a.forward(&batch)?, &b.forward(&batch)?)?;
    assert!(diff < 1e-4, "full pass: {diff}");
    let prefix = [1u32, 17, 42, 5, 9];
    let shared = a.last_hidden_after(&a.prefix_cache(&prefix)?, &batch)?;
    let expected = b.last_hidden_after(&b.prefix_cache(&prefix)?, &batch)?;
    let diff = max_abs_diff(&shared, &expected)?;
    assert!(diff < 1e-4, "shared prefix: {diff}");
    let mut caches = (KvCache::default(), KvCache::default());
    for &token in &sequences()[0] {
        let token = Tensor::new(&[[token]], &device)?;
        let x = a.forward_cached(&token, &mut caches.0)?;
        let y = b.forward_cached(&token, &mut caches.1)?;
        let diff = max_abs_diff(&x, &y)?;
        assert!(diff < 1e-4, "cached decoding: {diff}");
    }
    Ok(())
}

fn sequences() -> Vec<Vec<u32>> {
    vec![
        vec![3, 14, 15, 9, 26, 5, 35],
        vec![8, 9, 7],
        vec![60, 1, 2, 3, 4],
    ]
}

#[test]
fn padded_batch_matches_each_prompt_alone() -> Result<()> {
    let llama = tiny_llama(1)?;
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let batched = llama.forward(&batch)?;
    for (row, sequence) in sequences().iter().enumerate() {
        let alone = llama.forward(&Batch::new(
            std::slice::from_ref(sequence),
            0,
            &Device::Cpu,
        )?)?;
        let real = batched.i((row, 0..sequence.len(), ..))?;
        let diff = max_abs_diff(&real, &alone.i(0)?)?;
        assert!(diff < 1e-4, "row {row}: {diff}");
    }
    Ok(())
}

#[test]
fn last_hidden_picks_each_rows_last_real_position() -> Result<()> {
    let llama = tiny_llama(2)?;
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let last = llama.last_hidden(&batch)?;
    let hidden = llama.forward_hidden(&batch, None)?;
    for (row, sequence) in sequences().iter().enumerate() {
        let expected = hidden.i((row, sequence.len() - 1, ..))?;
        assert!(max_abs_diff(&last.i(row)?, &expected)? == 0.0);
    }
    Ok(())
}

#[test]
fn a_shared_prefix_run_once_matches_the_full_prompts() -> Result<()> {
    let llama = tiny_llama(4)?;
    let prefix = [1u32, 17, 42, 5, 9];
    let full: Vec<Vec<u32>> = sequences()
        .into_iter()
        .map(|suffix| prefix.iter().copied().chain(suffix).collect())
        .collect();
    let expected = llama.last_hidden(&Batch::new(&full, 0, &Device::Cpu)?)?;
    let cache = llama.prefix_cache(&prefix)?;
    assert_eq!(cache.len(), prefix.len());
    let suffixes = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let shared = llama.last_hidden_after(&cache, &suffixes)?;
    let diff = max_abs_diff(&shared, &expected)?;
    assert!(diff < 1e-4, "{diff}");
    Ok(())
}

#[test]
fn cached_decoding_matches_the_full_forward() -> Result<()> {
    let llama = tiny_llama(3)?;
    let sequence = sequences()[0].clone();
    let full = llama.forward(&Batch::new(
        std::slice::from_ref(&sequence),
        0,
        &Device::Cpu,
    )?)?;
    let mut cache = KvCache::default();
    let prefix = Tensor::new(&sequence[..4], &Device::Cpu)?.unsqueeze(0)?;
    let logits = llama.forward_cached(&prefix, &mut cache)?;
    assert!(max_abs_diff(&logits.i(0)?, &full.i((0, 3))?)? < 1e-4);
    for (position, &token) in sequence.iter().enumerate().skip(4) {
        let step = Tensor::new(&[token], &Device::Cpu)?.unsqueeze(0)?;
        let logits = llama.forward_cached(&step, &mut cache)?;
        let diff = max_abs_diff(&logits.i(0)?, &full.i((0, position))?)?;
        assert!(diff < 1e-4, "position {position}: {diff}");
    }
    assert_eq!(cache.len(), sequence.len());
    Ok(())
}

#[derive(Default)]
struct RowCounter {
    rows: BTreeMap<(usize, InputSite), (usize, usize)>,
}

impl Observer for RowCounter {
    fn observe(&mut self, layer_idx: usize, site: InputSite, rows: &Tensor) -> Result<()> {
        let (n, d) = rows.dims2()?;
        let entry = self.rows.entry((layer_idx, site)).or_default();
        entry.0 += n;
        entry.1 = d;
        Ok(())
    }
}

#[test]
fn observer_sees_every_linear_input_without_padding() -> Result<()> {
    let llama = tiny_llama(4)?;
    let config = *llama.config();
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let mut counter = RowCounter::default();
    llama.forward_hidden(&batch, Some(&mut counter))?;
    let real_tokens: usize = sequences().iter().map(Vec::len).sum();
    assert_eq!(counter.rows.len(), config.n_layers * InputSite::ALL.len());
    for ((_, site), (n, d)) in counter.rows {
        assert_eq!(n, real_tokens);
        let reader = MatrixKind::ALL
            .into_iter()
            .find(|&k| InputSite::of(k) == site);
        let expected_d = reader.map(|k| config.matrix_shape(k).1);
        assert_eq!(Some(d), expected_d, "{site:?}");
    }
    Ok(())
}

#[test]
fn observed_rows_are_the_real_positions() -> Result<()> {
    struct Capture(Option<Tensor>);
    impl Observer for Capture {
        fn observe(&mut self, layer_idx: usize, site: InputSite, rows: &Tensor) -> Result<()> {
            if layer_idx == 1 && site == InputSite::Down {
                self.0 = Some(rows.clone());
            }
            Ok(())
        }
    }
    let llama = tiny_llama(5)?;
    let batched = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let mut padded = Capture(None);
    llama.forward_hidden(&batched, Some(&mut padded))?;
    let mut alone_rows = Vec::new();
    for sequence in sequences() {
        let mut alone = Capture(None);
        llama.forward_hidden(&Batch::new(&[sequence], 0, &Device::Cpu)?, Some(&mut alone))?;
        alone_rows.extend(alone.0);
    }
    let expected = Tensor::cat(&alone_rows, 0)?;
    let got = padded
        .0
        .ok_or_else(|| candle_core::Error::Msg("not observed".into()))?;
    assert!(max_abs_diff(&got, &expected)? < 1e-4);
    Ok(())
}

#[test]
fn full_rank_factors_reproduce_the_dense_model() -> Result<()> {
    let dense = tiny_llama(6)?;
    let mut factored = dense.clone();
    for layer_idx in 0..dense.config().n_layers {
        for kind in MatrixKind::ALL {
            let Some(Linear::Dense { weight }) = dense.linear(layer_idx, kind) else {
                panic!("expected dense");
            };
            let (rows, _) = weight.dims2()?;
            let identity = Tensor::eye(rows, candle_core::DType::F32, &Device::Cpu)?;
            let linear = Linear::LowRank {
                a: weight.clone(),
                b: identity,
            };
            factored.set_linear(layer_idx, kind, linear)?;
        }
    }
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let diff = max_abs_diff(&dense.forward(&batch)?, &factored.forward(&batch)?)?;
    assert!(diff < 1e-4, "{diff}");
    let wrong = Linear::Dense {
        weight: Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu)?,
    };
    assert!(factored.set_linear(0, MatrixKind::Q, wrong).is_err());
    Ok(())
}

#[test]
fn context_overflow_is_an_error() -> Result<()> {
    let llama = tiny_llama(7)?;
    let too_long = vec![1u32; llama.config().max_position_embeddings + 1];
    assert!(
        llama
            .forward(&Batch::new(&[too_long], 0, &Device::Cpu)?)
            .is_err()
    );
    assert!(Batch::new(&[vec![]], 0, &Device::Cpu).is_err());
    Ok(())
}

#[test]
fn block_by_block_equals_the_whole_forward() -> Result<()> {
    let llama = tiny_llama(8)?;
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let mut x = llama.embed(&batch)?;
    for layer_idx in 0..llama.config().n_layers {
        x = llama.forward_block(layer_idx, &x, &batch, None)?;
    }
    let x = candle_nn::ops::rms_norm(&x, &llama_final_norm(&llama)?, llama.config().rms_norm_eps)?;
    let whole = llama.forward_hidden(&batch, None)?.flatten_to(1)?;
    assert!(max_abs_diff(&x, &whole)? < 1e-5);
    assert!(llama.forward_block(9, &x, &batch, None).is_err());
    Ok(())
}

fn llama_final_norm(llama: &Llama) -> Result<Tensor> {
    let config = *llama.config();
    Ok(tiny_tensors(&config, 8, &Device::Cpu)?["output_norm.weight"].clone())
}

#[test]
fn every_exit_of_one_pass_equals_the_truncated_model() -> Result<()> {
    let llama = tiny_llama(9)?;
    let prefix = [1u32, 17, 42, 5, 9];
    let cache = llama.prefix_cache(&prefix)?;
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    for shared in [None, Some(&cache)] {
        let per_exit = llama.last_hidden_per_exit(shared, &batch)?;
        assert_eq!(per_exit.len(), llama.config().n_layers);
        for (l, state) in per_exit.iter().enumerate() {
            let truncated = llama.truncated(l + 1)?;
            assert_eq!(truncated.config().n_layers, l + 1);
            let expected = match shared {
                Some(_) => {
                    truncated.last_hidden_after(&truncated.prefix_cache(&prefix)?, &batch)?
                }
                None => truncated.last_hidden(&batch)?,
            };
            let diff = max_abs_diff(state, &expected)?;
            assert!(diff < 1e-5, "exit {}: {diff}", l + 1);
        }
    }
    Ok(())
}

#[test]
fn an_exit_outside_the_model_is_an_error() -> Result<()> {
    let llama = tiny_llama(10)?;
    let n = llama.config().n_layers;
    assert!(llama.truncated(n).is_ok());
    for exit in [0, n + 1] {
        let message = llama.truncated(exit).unwrap_err().to_string();
        assert!(message.contains("outside"), "{message}");
        assert!(message.contains("choose an exit"), "{message}");
    }
    Ok(())
}

#[test]
fn the_differentiable_pass_equals_the_fused_one_and_reaches_every_weight() -> Result<()> {
    let llama = tiny_llama(5)?;
    let batch = Batch::new(&sequences(), 0, &Device::Cpu)?;
    let fused = llama.forward_hidden(&batch, None)?;
    let rows = llama.hidden_rows(&batch, None, true)?;
    let mut at = 0;
    for (row, sequence) in sequences().iter().enumerate() {
        let real = fused.i((row, 0..sequence.len(), ..))?;
        let mine = rows.narrow(0, at, sequence.len())?;
        let diff = max_abs_diff(&real, &mine)?;
        assert!(diff < 1e-4, "row {row}: {diff}");
        at += sequence.len();
    }
    assert_eq!(at, rows.dim(0)?);
    // After a shared prefix, both ways agree too.
    let prefix = [5u32, 6, 7, 8];
    let fused = llama.hidden_rows(&batch, Some(&llama.prefix_cache(&prefix)?), false)?;
    let shared = llama.differentiable_prefix_cache(&prefix)?;
    let mine = llama.hidden_rows(&batch, Some(&shared), true)?;
    assert!(max_abs_diff(&fused, &mine)? < 1e-4);
    // A trainable down of the first block and q of the last receive gradients.
    let mut trained = llama.clone();
    let mut vars = Vec::new();
    for (layer_idx, kind) in [(0, MatrixKind::Down), (1, MatrixKind::Q)] {
        let Some(Linear::Dense { weight }) = llama.linear(layer_idx, kind) else {
            candle_core::bail!("a dense matrix");
        };
        let var = candle_core::Var::from_tensor(weight)?;
        trained.set_linear(
            layer_idx,
            kind,
            Linear::Dense {
                weight: var.as_tensor().clone(),
            },
        )?;
        vars.push(var);
    }
    // With a shared prefix run differentiably, every trained matrix still gets a gradient.
    let shared = trained.differentiable_prefix_cache(&prefix)?;
    let loss = trained
        .hidden_rows(&batch, Some(&shared), true)?
        .sqr()?
        .mean_all()?;
    let grads = loss.backward()?;
    for var in &vars {
        let Some(grad) = grads.get(var.as_tensor()) else {
            candle_core::bail!("no gradient reached a trained matrix");
        };
        let norm = grad.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!(norm > 0.0 && norm.is_finite(), "{norm}");
    }
    Ok(())
}

/// Block 0 keeps 3 of its 8 value dimensions per key/value head and skips its MLP; block 1
/// skips its attention. The same model with full-shaped matrices (the missing value rows and o
/// columns zero, block 0's gate zero so that its MLP adds nothing, block 1's o zero) gives
/// the same states, through a full pass, a shared prefix and cached decoding alike.
#[test]
fn narrower_value_heads_and_skipped_sub_blocks_equal_their_zero_padded_blocks() -> Result<()> {
    let base = tiny_llama(9)?;
    let config = *base.config();
    let (head_dim, hidden, kept) = (config.head_dim(), config.hidden_size, 3);
    let device = Device::Cpu;
    let weight = |layer_idx: usize, kind: MatrixKind| -> Result<Tensor> {
        match base.linear(layer_idx, kind) {
            Some(Linear::Dense { weight }) => Ok(weight.clone()),
            _ => candle_core::bail!("not dense"),
        }
    };
    // Kept value rows of v (per key/value head) and columns of o (per query head).
    let kept_rows = |heads: usize| -> Vec<u32> {
        (0..heads)
            .flat_map(|h| (0..kept).map(move |d| (h * head_dim + d) as u32))
            .collect()
    };
    let v_rows = Tensor::new(kept_rows(config.n_kv_heads).as_slice(), &device)?;
    let o_cols = Tensor::new(kept_rows(config.n_heads).as_slice(), &device)?;
    let dense = |weight: Tensor| Linear::Dense { weight };
    let mut narrow = base.clone();
    narrow.set_values(
        0,
        [
            dense(weight(0, MatrixKind::V)?.index_select(&v_rows, 0)?),
            dense(weight(0, MatrixKind::O)?.index_select(&o_cols, 1)?),
        ],
    )?;
    let empty = |shape| Linear::empty(shape, &device);
    narrow.set_mlp(
        0,
        [
            empty((0, hidden))?,
            empty((0, hidden))?,
            empty((hidden, 0))?,
        ],
    )?;
    narrow.set_values(1, [empty((0, hidden))?, empty((hidden, 0))?])?;
    assert_eq!(
        narrow.block_widths(0)?,
        whittle_runtime::BlockWidths {
            mlp: 0,
            value: kept,
            pairs: head_dim / 2,
        }
    );
    assert_eq!(
        narrow.linear(1, MatrixKind::Q).map(Linear::n_params),
        Some(0)
    );

    // 1 on the kept value dimensions (rows of v, or columns of o), 0 elsewhere.
    let mask = |(rows, cols): (usize, usize), by_row: bool| -> Result<Tensor> {
        let keep = |i: usize| f32::from(u8::from(i % head_dim < kept));
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| keep(if by_row { i / cols } else { i % cols }))
            .collect();
        Tensor::from_vec(values, (rows, cols), &device)
    };
    let mut padded = base.clone();
    let v = weight(0, MatrixKind::V)?;
    let o = weight(0, MatrixKind::O)?;
    let (v_mask, o_mask) = (mask(v.dims2()?, true)?, mask(o.dims2()?, false)?);
    padded.set_linear(0, MatrixKind::V, dense((v * v_mask)?))?;
    padded.set_linear(0, MatrixKind::O, dense((o * o_mask)?))?;
    padded.set_linear(
        0,
        MatrixKind::Gate,
        dense(weight(0, MatrixKind::Gate)?.zeros_like()?),
    )?;
    padded.set_linear(
        1,
        MatrixKind::O,
        dense(weight(1, MatrixKind::O)?.zeros_like()?),
    )?;

    assert_same_states(&narrow, &padded)?;
    // Shapes that disagree with the block's widths are refused.
    assert!(
        narrow
            .set_values(0, [empty((5, hidden))?, empty((hidden, 4 * 3))?])
            .is_err()
    );
    assert!(
        narrow
            .set_linear(0, MatrixKind::V, empty((config.kv_dim(), hidden))?)
            .is_err()
    );
    Ok(())
}

/// Block 0's query/key heads keep two of their four rotary pairs (key/value head 0 pairs 1
/// and 3, head 1 pairs 0 and 2, shared by their query heads). The same model with q's and k's
/// rows of the dropped pairs zero gives the same states, through a full pass, a shared prefix
/// and cached decoding; the lists are checked.
#[test]
fn kept_rotary_pairs_equal_their_block_with_the_dropped_pairs_rows_zeroed() -> Result<()> {
    kept_rotary_pairs_equal_zeroed_rows(tiny_llama(10)?)?;
    // Qwen2's q and k biases follow their rows.
    let config = ModelConfig {
        arch: whittle_runtime::Architecture::QWEN2,
        ..tiny_config()
    };
    let tensors = tiny_tensors(&config, 10, &Device::Cpu)?;
    kept_rotary_pairs_equal_zeroed_rows(Llama::from_tensors(config, &tensors, &Device::Cpu)?)
}

fn kept_rotary_pairs_equal_zeroed_rows(base: Llama) -> Result<()> {
    let config = *base.config();
    let (head_dim, n_rep) = (config.head_dim(), config.n_heads / config.n_kv_heads);
    let device = Device::Cpu;
    let lists: Vec<Vec<u16>> = vec![vec![1, 3], vec![0, 2]];
    let weight = |kind: MatrixKind| -> Result<Tensor> {
        match base.linear(0, kind) {
            Some(Linear::Dense { weight }) => Ok(weight.clone()),
            _ => candle_core::bail!("not dense"),
        }
    };
    let group = |kind: MatrixKind, head: usize| match kind {
        MatrixKind::Q => head / n_rep,
        _ => head,
    };
    let heads = |kind: MatrixKind| match kind {
        MatrixKind::Q => config.n_heads,
        _ => config.n_kv_heads,
    };
    let kept_rows = |kind: MatrixKind| -> Vec<u32> {
        (0..heads(kind))
            .flat_map(|head| {
                lists[group(kind, head)].iter().flat_map(move |&pair| {
                    let row = (head * head_dim + 2 * usize::from(pair)) as u32;
                    [row, row + 1]
                })
            })
            .collect()
    };
    let dense = |weight: Tensor| Linear::Dense { weight };
    let narrow_matrix = |kind: MatrixKind| -> Result<Linear> {
        let rows = Tensor::new(kept_rows(kind).as_slice(), &device)?;
        Ok(dense(weight(kind)?.index_select(&rows, 0)?))
    };
    let mut narrow = base.clone();
    narrow.set_rotary_pairs(
        0,
        [narrow_matrix(MatrixKind::Q)?, narrow_matrix(MatrixKind::K)?],
        lists.clone(),
    )?;
    assert_eq!(narrow.block_widths(0)?.pairs, 2);
    assert_eq!(narrow.rotary_pairs(0), Some(lists.as_slice()));
    assert_eq!(narrow.rotary_pairs(1), None);

    let mut padded = base.clone();
    for kind in [MatrixKind::Q, MatrixKind::K] {
        let full = weight(kind)?;
        let (rows, cols) = full.dims2()?;
        let kept = kept_rows(kind);
        let mask: Vec<f32> = (0..rows * cols)
            .map(|i| f32::from(u8::from(kept.contains(&((i / cols) as u32)))))
            .collect();
        let mask = Tensor::from_vec(mask, (rows, cols), &device)?;
        padded.set_linear(0, kind, dense((full * mask)?))?;
    }
    if let Some([q_bias, k_bias, v_bias]) = base.qkv_bias(0).cloned() {
        let zeroed = |bias: Tensor, kind: MatrixKind| -> Result<Tensor> {
            let kept = kept_rows(kind);
            let mask: Vec<f32> = (0..bias.dim(0)?)
                .map(|row| f32::from(u8::from(kept.contains(&(row as u32)))))
                .collect();
            bias * Tensor::new(mask, &device)?
        };
        let biases = [
            zeroed(q_bias, MatrixKind::Q)?,
            zeroed(k_bias, MatrixKind::K)?,
            v_bias,
        ];
        padded.set_qkv_bias(0, biases)?;
    }

    assert_same_states(&narrow, &padded)?;
    // Lists out of order, out of range, of unequal length or keeping every pair are refused.
    for bad in [
        vec![vec![3, 1], vec![0, 2]],
        vec![vec![1, 4], vec![0, 2]],
        vec![vec![1], vec![0, 2]],
        vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3]],
    ] {
        let q = narrow_matrix(MatrixKind::Q)?;
        let k = narrow_matrix(MatrixKind::K)?;
        assert!(base.clone().set_rotary_pairs(0, [q, k], bad).is_err());
    }
    Ok(())
}

/// `--cuda` where it cannot run (a build without the feature, or no GPU or driver) is a
/// one-line error naming the fix; it never falls back to the CPU silently.
#[test]
fn cuda_that_cannot_run_is_a_one_line_error_with_its_fix() {
    match device(true) {
        Ok(device) => assert!(device.is_cuda(), "--cuda gave {device:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("drop --cuda"), "{message}");
            assert!(!message.contains('\n'), "{message}");
            if !cfg!(feature = "cuda") {
                assert!(message.contains("--features cuda"), "{message}");
            }
        }
    }
    assert!(device(false).is_ok_and(|d| d.is_cpu()));
}

/// A CUDA failure in the middle of a run (out of memory, a driver older than the kernels, kernels
/// for another GPU) is named with its fix from the status code in candle's error text; other
/// errors are left as they are.
#[test]
fn cuda_failures_are_named_by_their_status_code() {
    let cases = [
        (
            "Cuda(DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\"))",
            "ran out of memory",
        ),
        (
            "cublas: CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "ran out of memory",
        ),
        (
            "DriverError(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, \"the provided PTX was compiled with an unsupported toolchain.\")",
            "version mismatch",
        ),
        (
            "DriverError(CUDA_ERROR_NO_BINARY_FOR_GPU, \"no kernel image is available\")",
            "CUDA_COMPUTE_CAP",
        ),
    ];
    for (message, expected) in cases {
        let cause = cuda_cause(message);
        assert!(
            cause.is_some_and(|c| c.contains(expected)),
            "{message}: {cause:?}"
        );
        assert!(cause.is_some_and(|c| !c.contains('\n')));
    }
    assert_eq!(cuda_cause("shape mismatch in matmul"), None);
    assert_eq!(
        cuda_cause("DriverError(CUDA_ERROR_INVALID_VALUE, \"invalid argument\")"),
        None
    );
}

/// A Gemma-3-shaped model (GeGLU, post-norms, query/key norms, scaled embeddings, heads wider
/// than hidden / heads) with every layer local and a window of 3: two layers see
/// 2 · (3 − 1) = 4 positions back, so the last of 8 positions does not depend on the first
/// token, through a full pass, a shared prefix and cached decoding alike; with every layer
/// global it does.
#[test]
fn a_sliding_window_hides_what_lies_beyond_it() -> Result<()> {
    let device = Device::Cpu;
    let model = |global_every: usize| -> Result<Llama> {
        let config = ModelConfig {
            arch: whittle_runtime::Architecture {
                global_every,
                ..whittle_runtime::Architecture::gemma3(3)
            },
            head_dim: 24,
            ..tiny_config()
        };
        Llama::from_tensors(config, &tiny_tensors(&config, 3, &device)?, &device)
    };
    let last = |llama: &Llama, first: u32| -> Result<(Tensor, Tensor, Tensor)> {
        let tokens = vec![first, 7, 8, 9, 10, 11, 12, 13];
        let batch = Batch::new(std::slice::from_ref(&tokens), 0, &device)?;
        let full = llama.last_hidden(&batch)?;
        let rest = Batch::new(&[tokens[5..].to_vec()], 0, &device)?;
        let shared = llama.last_hidden_after(&llama.prefix_cache(&tokens[..5])?, &rest)?;
        let mut cache = KvCache::default();
        let mut cached = None;
        for &token in &tokens {
            cached = Some(llama.forward_cached(&Tensor::new(&[[token]], &device)?, &mut cache)?);
        }
        let cached = cached.expect("eight tokens");
        Ok((llama.logits(&full)?, llama.logits(&shared)?, cached))
    };
    let local = model(0)?;
    let (full, shared, cached) = last(&local, 1)?;
    assert!(max_abs_diff(&full, &shared)? < 1e-4);
    assert!(max_abs_diff(&full, &cached)? < 1e-4);
    let (other, _, other_cached) = last(&local, 50)?;
    assert!(max_abs_diff(&full, &other)? < 1e-5);
    assert!(max_abs_diff(&cached, &other_cached)? < 1e-5);
    let global = model(1)?;
    let (full, shared, _) = last(&global, 1)?;
    assert!(max_abs_diff(&full, &shared)? < 1e-4);
    assert!(max_abs_diff(&full, &last(&global, 50)?.0)? > 1e-3);
    Ok(())
}
