//! Hand-computed cases for the cost model. The arithmetic is in the comments.

use super::*;
use crate::feasibility::{feasibility, objective_cost};
use whittle_runtime::Architecture;

/// 2 blocks, hidden 32, intermediate 64, 4 heads of 8, 2 KV heads (kv_dim 16), vocab 100.
/// Matrices: q, o 32×32 = 1024; k, v 16×32 = 512; gate, up 64×32 = 2048; down 32×64 = 2048;
/// 9216 per block, 18432 in all. Embedding 100×32 = 3200; norms (2·2 + 1)·32 = 160.
fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 2,
        hidden_size: 32,
        intermediate_size: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 100,
        max_position_embeddings: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    }
}

/// Round figures: 1 byte and 1 FLOP per nanosecond on the CPU, a GPU at a quarter of that
/// (so it is the slower one), the default overheads (10 µs CPU, 50 µs GPU per block; 2 µs
/// CPU, 5 µs GPU per extra product of a low-rank pair), a
/// context of 16 and a budget of 500,000 bytes.
fn round_board(extra: &str) -> BoardProfile {
    match BoardProfile::from_toml_str(&round_text(extra), "round.toml") {
        Ok(board) => board,
        Err(error) => panic!("{error}"),
    }
}

/// The TOML of [`round_board`].
fn round_text(extra: &str) -> String {
    format!(
        r#"
name = "round"
description = "A synthetic board with round figures."
memory_bytes = 1_000_000
model_memory_share = 0.5
bandwidth_bytes_per_s = 1_000_000_000
cpu_f32_flops = 1_000_000_000.0
gpu_fp32_flops = 250_000_000.0
context_length = 16
target_triple = "aarch64-unknown-linux-gnu"
{extra}
[cpu]
cores = 1
core = "synthetic"
isa_features = []

[[sources]]
what = "invented for the tests"
url = "https://example.invalid/round"
"#
    )
}

fn builtin(name: &str) -> BoardProfile {
    match BoardProfile::builtin(name) {
        Ok(board) => board,
        Err(error) => panic!("{error}"),
    }
}

/// Layer 0: gate, up, down at rank 4; layer 1: q at rank 8; the rest dense.
fn tiny_low_rank_plan() -> Vec<Option<usize>> {
    let mut ranks = vec![None; 14];
    ranks[4] = Some(4);
    ranks[5] = Some(4);
    ranks[6] = Some(4);
    ranks[7] = Some(8);
    ranks
}

#[derive(Debug)]
struct Expected {
    weight_bytes: u64,
    kv_cache_bytes: u64,
    arena_bytes: u64,
    bytes_read_per_token: u64,
    decode_ns_cpu: f64,
    prefill_ns_cpu: f64,
    decode_ns_gpu: Option<f64>,
}

fn predicted(
    board: &BoardProfile,
    config: &ModelConfig,
    ranks: &[Option<usize>],
    dtype: Dtype,
    head_rows: Option<usize>,
) -> Prediction {
    match predict(board, config, ranks, &[], dtype, &[], head_rows) {
        Ok(prediction) => prediction,
        Err(error) => panic!("{error}"),
    }
}

fn check(ranks: &[Option<usize>], dtype: Dtype, head_rows: Option<usize>, expected: Expected) {
    let p = predicted(&round_board(""), &tiny_config(), ranks, dtype, head_rows);
    let context = format!("{dtype:?}, head {head_rows:?}, {ranks:?}");
    assert_eq!(p.weight_bytes, expected.weight_bytes, "{context}");
    assert_eq!(p.bundle_bytes, expected.weight_bytes, "{context}");
    assert_eq!(p.kv_cache_bytes, expected.kv_cache_bytes, "{context}");
    assert_eq!(p.arena_bytes, expected.arena_bytes, "{context}");
    assert_eq!(
        p.runtime_memory_bytes,
        expected.weight_bytes + expected.kv_cache_bytes + expected.arena_bytes,
        "{context}"
    );
    assert_eq!(
        p.bytes_read_per_token, expected.bytes_read_per_token,
        "{context}"
    );
    assert_eq!(p.context_length, 16);
    let close = |got: f64, ns: f64| (got - ns * 1e-6).abs() < 1e-9;
    assert!(
        close(p.decode_ms_per_token_cpu, expected.decode_ns_cpu),
        "{context}: decode {} ms",
        p.decode_ms_per_token_cpu
    );
    assert!(
        close(p.prefill_ms_per_token_cpu, expected.prefill_ns_cpu),
        "{context}: prefill {} ms",
        p.prefill_ms_per_token_cpu
    );
    match (p.decode_ms_per_token_gpu, expected.decode_ns_gpu) {
        (Some(got), Some(ns)) => assert!(close(got, ns), "{context}: gpu decode {got} ms"),
        (_, None) => {}
        (None, Some(_)) => panic!("{context}: no GPU prediction"),
    }
    // The GPU of the round board is slower, so the board decodes on the CPU.
    assert_eq!(p.decode_ms_per_token(), p.decode_ms_per_token_cpu);
}

#[test]
fn tiny_dense_f32_by_hand() {
    check(
        &[None; 14],
        Dtype::F32,
        None,
        Expected {
            // 4 · (18432 + 3200 + 160) = 4 · 21792.
            weight_bytes: 87_168,
            // 2 layers · context 16 · (kv_dim 16 · (2 B key + 2 B value) + 2 KV heads · 4 B
            // key scale).
            kv_cache_bytes: 2_304,
            // 4 · (4·32 + 2·16 + 2·64 + max(32, 64) + 4 heads·16 + 100 logits) = 4 · 516.
            arena_bytes: 2_064,
            // 4 · (18432 linears + 160 norms + 32 embedding row) + 4 · 3200 head.
            bytes_read_per_token: 87_296,
            // Matrices at max(4p B, 2p FLOP) ns = 4 · 18432 = 73728; head max(12800, 6400);
            // norms and embedding row 640 + 128 = 768; per block attention max(16·16·6 B,
            // 4·32·16 FLOP) = 2048 plus 10000 overhead, twice = 24096.
            decode_ns_cpu: 73_728.0 + 12_800.0 + 768.0 + 24_096.0,
            // 2 · 18432 FLOPs + 2 blocks · 4·32 · (16 + 1)/2 = 36864 + 2176.
            prefill_ns_cpu: 39_040.0,
            // GPU at 4 ns per FLOP: 8 · 18432 = 147456; head max(12800, 25600); 768;
            // per block max(2048, 8192) + 50000, twice = 116384.
            decode_ns_gpu: Some(147_456.0 + 25_600.0 + 768.0 + 116_384.0),
        },
    );
}

#[test]
fn tiny_dense_q8_by_hand() {
    check(
        &[None; 14],
        Dtype::Q8,
        None,
        Expected {
            // One f32 scale per 32 values of a row. Per block: q, o 1024 + 4·32 = 1152; k, v
            // 512 + 4·16 = 576; gate, up 2048 + 4·64 = 2304; down 2048 + 4·32·2 = 2304: 10368,
            // twice 20736. Embedding 3200 + 4·100 = 3600; norms stay f32, 640.
            weight_bytes: 20_736 + 3_600 + 640,
            kv_cache_bytes: 2_304,
            arena_bytes: 2_064,
            // Linears 20736 + norms 640 + one q8 row 32 + 4 + the whole head 3600.
            bytes_read_per_token: 25_012,
            // Compute-bound at 1 ns per FLOP: per block 2·2048 + 2·1024 + 3·4096 = 18432,
            // twice 36864; head max(3600, 6400); norms and row 676; blocks 24096.
            decode_ns_cpu: 36_864.0 + 6_400.0 + 676.0 + 24_096.0,
            prefill_ns_cpu: 39_040.0,
            decode_ns_gpu: None,
        },
    );
}

#[test]
fn tiny_low_rank_f32_by_hand() {
    check(
        &tiny_low_rank_plan(),
        Dtype::F32,
        None,
        Expected {
            // Layer 0: q, k, v, o dense 3072; gate, up 4·(64 + 32) = 384 each; down
            // 4·(32 + 64) = 384: 4224. Layer 1: q 8·(32 + 32) = 512, the rest 8192: 8704.
            // Linears 12928; 4 · (12928 + 3200 + 160).
            weight_bytes: 65_152,
            kv_cache_bytes: 2_304,
            arena_bytes: 2_064,
            // 4 · (12928 + 160 + 32) + 12800.
            bytes_read_per_token: 65_280,
            // 4 · 12928 = 51712, then as dense, plus 4 low-rank pairs · 2000 for their second
            // products.
            decode_ns_cpu: 51_712.0 + 12_800.0 + 768.0 + 24_096.0 + 8_000.0,
            // 2 · 12928 + 2176.
            prefill_ns_cpu: 28_032.0,
            // 8 · 12928 = 103424, then as dense, plus 4 · 5000.
            decode_ns_gpu: Some(103_424.0 + 25_600.0 + 768.0 + 116_384.0 + 20_000.0),
        },
    );
}

#[test]
fn tiny_low_rank_q8_by_hand() {
    check(
        &tiny_low_rank_plan(),
        Dtype::Q8,
        None,
        Expected {
            // Gate rank 4: A 4×32 (128 + 4·4) + B 64×4 (256 + 4·64) = 656, up the same;
            // down: A 4×64 (256 + 4·4·2) + B 32×4 (128 + 128) = 544. Layer 0: 1152 + 576 + 576
            // + 1152 + 656 + 656 + 544 = 5312. Layer 1 q rank 8: A 8×32 (256 + 32) + B 32×8
            // (256 + 128) = 672; + 576 + 576 + 1152 + 2304 + 2304 + 2304 = 9888.
            weight_bytes: 5_312 + 9_888 + 3_600 + 640,
            kv_cache_bytes: 2_304,
            arena_bytes: 2_064,
            bytes_read_per_token: 15_200 + 640 + 36 + 3_600,
            // Layer 0: 2048 + 1024 + 1024 + 2048 + 3 · max(≤656, 768) = 8448; layer 1:
            // max(672, 1024) + 1024 + 1024 + 2048 + 3 · 4096 = 17408; 4 pairs · 2000.
            decode_ns_cpu: 8_448.0 + 17_408.0 + 6_400.0 + 676.0 + 24_096.0 + 8_000.0,
            prefill_ns_cpu: 28_032.0,
            decode_ns_gpu: None,
        },
    );
}

#[test]
fn a_task_pruned_head_is_stored_apart_and_read_instead() {
    check(
        &[None; 14],
        Dtype::F32,
        Some(2),
        Expected {
            // The embedding stays for the input; the head adds 4 · 2 · 32 = 256.
            weight_bytes: 87_168 + 256,
            kv_cache_bytes: 2_304,
            // 2 logits instead of 100: 4 · (516 − 98).
            arena_bytes: 1_672,
            // 4 · (18432 + 160 + 32) + 256.
            bytes_read_per_token: 74_752,
            // Head max(256, 128).
            decode_ns_cpu: 73_728.0 + 256.0 + 768.0 + 24_096.0,
            prefill_ns_cpu: 39_040.0,
            decode_ns_gpu: None,
        },
    );
}

#[test]
fn smollm2_dense_f32_weighs_four_bytes_per_parameter() {
    let board = builtin("jetson-orin");
    let config = ModelConfig::SMOLLM2_135M;
    let dense = vec![None; 210];
    let p = predicted(&board, &config, &dense, Dtype::F32, None);
    assert_eq!(p.weight_bytes, 4 * 134_515_008);
    // The host's `bytes_per_token_f32`: 4 · (linears + norms + one row) + 4 · head, which is
    // the weights plus one embedding row.
    assert_eq!(p.bytes_read_per_token, 4 * 134_515_008 + 4 * 576);
    // 30 · 2048 · (192 · (2 + 2) + 3 · 4).
    assert_eq!(p.kv_cache_bytes, 47_923_200);
    // Bandwidth-bound on the CPU: at least the weights over 68 GB/s, about 7.9 ms.
    assert!(p.decode_ms_per_token_cpu > 538_062_336.0 / 68e9 * 1e3);
    assert!(p.decode_ms_per_token_gpu.is_some());
}

#[test]
fn smollm2_does_not_fit_the_mcu_and_says_by_how_much() {
    let board = builtin("stm32h743");
    let dense = vec![None; 210];
    let p = predicted(&board, &ModelConfig::SMOLLM2_135M, &dense, Dtype::Q8, None);
    // One scale per 32 values: a layer is 3,538,944 int8 + 4 · 110,592 scales = 3,981,312;
    // the embedding 28,311,552 + 4 · 884,736 = 31,850,496. Weights 30 · 3,981,312 +
    // 31,850,496 + 140,544 = 151,430,400; KV at the board's context of 256: 30 · 256 ·
    // (192 · (2 + 2) + 3 · 4) = 5,990,400; arena 4 · (2304 + 384 + 3072 + 1536 + 2304 + 49152) =
    // 235,008.
    assert_eq!(p.weight_bytes, 151_430_400);
    assert_eq!(p.runtime_memory_bytes, 157_655_808);
    let verdict = feasibility(&board, &p);
    assert!(!verdict.fits);
    // Budget 1,048,576 · 0.75 = 786,432.
    assert_eq!(verdict.memory_excess_bytes, 157_655_808 - 786_432);
    assert_eq!(
        verdict.to_string(),
        "stm32h743: the model needs 157.7 MB at runtime but the board allows 0.8 MB \
         (200× too large); choose a larger board or a smaller model"
    );
}

fn check_verdict(board: &BoardProfile, ranks: &[Option<usize>], fits: bool, message: &str) {
    let p = predicted(board, &tiny_config(), ranks, Dtype::F32, None);
    let verdict = feasibility(board, &p);
    assert_eq!(verdict.fits, fits, "{verdict}");
    assert_eq!(verdict.to_string(), message);
}

#[test]
fn feasibility_names_what_exceeds_and_the_fix() {
    let dense = [None; 14];
    check_verdict(
        &round_board(""),
        &dense,
        true,
        "round: fits: needs 91.5 kB at runtime of the 0.5 MB the board allows, decodes in \
         0.111 ms per token",
    );
    let with_budget = round_board("latency_budget_ms_per_token = 0.1");
    check_verdict(
        &with_budget,
        &dense,
        false,
        "round: decoding takes 0.111 ms per token but the budget is 0.100 ms (1.1× too slow); \
         prune further, choose a faster board or raise latency_budget_ms_per_token",
    );
    // The plan decodes in 0.097376 ms.
    check_verdict(
        &with_budget,
        &tiny_low_rank_plan(),
        true,
        "round: fits: needs 69.5 kB at runtime of the 0.5 MB the board allows, decodes in \
         0.097 ms per token (budget 0.100 ms)",
    );
    let small = round_board("latency_budget_ms_per_token = 0.1");
    let small = BoardProfile {
        memory_bytes: 100_000,
        ..small
    };
    // Budget 50,000 bytes; 91,536 needed.
    check_verdict(
        &small,
        &dense,
        false,
        "round: the model needs 91.5 kB at runtime but the board allows 50.0 kB (1.8× too \
         large) and decoding takes 0.111 ms per token but the budget is 0.100 ms (1.1× too \
         slow); choose a larger board or a smaller model",
    );
    let p = predicted(&small, &tiny_config(), &dense, Dtype::F32, None);
    let verdict = feasibility(&small, &p);
    assert_eq!(verdict.memory_excess_bytes, 41_536);
    assert!((verdict.latency_excess_ms - 0.011_392).abs() < 1e-9);
}

#[test]
fn the_objective_weighs_bytes_against_latency() {
    let board = round_board("objective_weight = 0.25");
    let config = tiny_config();
    let dense = predicted(&board, &config, &[None; 14], Dtype::F32, None);
    let plan = predicted(&board, &config, &tiny_low_rank_plan(), Dtype::F32, None);
    assert!((objective_cost(&board, &dense, &dense) - 1.0).abs() < 1e-12);
    let expected = 0.25 * 65_152.0 / 87_168.0 + 0.75 * 97_376.0 / 111_392.0;
    assert!((objective_cost(&board, &plan, &dense) - expected).abs() < 1e-12);
}

/// Ranks at a keep fraction of each matrix (`floor(keep · m·n / (m + n))`), dense at 1.
fn keep_plan(config: &ModelConfig, keep: f64) -> Vec<Option<usize>> {
    (0..config.n_prunable_matrices())
        .map(|index| {
            let (rows, cols) = config.matrix_shape(MatrixKind::ALL[index % 7]);
            (keep < 1.0).then(|| (keep * (rows * cols) as f64 / (rows + cols) as f64) as usize)
        })
        .collect()
}

/// `smaller` must cost less than `larger` in every byte figure, and in time too unless it
/// factors a matrix that `larger` keeps dense (that adds a product).
fn check_never_costlier(
    board: &BoardProfile,
    config: &ModelConfig,
    larger: &[Option<usize>],
    smaller: &[Option<usize>],
) {
    let same_products = larger
        .iter()
        .zip(smaller)
        .all(|(l, s)| l.is_some() == s.is_some());
    for dtype in [Dtype::F32, Dtype::Q8] {
        for head_rows in [None, Some(3)] {
            let big = predicted(board, config, larger, dtype, head_rows);
            let small = predicted(board, config, smaller, dtype, head_rows);
            let context = format!("{} {dtype:?} {head_rows:?}", board.name);
            assert!(small.weight_bytes < big.weight_bytes, "{context}");
            assert!(
                small.runtime_memory_bytes < big.runtime_memory_bytes,
                "{context}"
            );
            assert!(
                small.bytes_read_per_token < big.bytes_read_per_token,
                "{context}"
            );
            assert!(
                !same_products || small.decode_ms_per_token_cpu <= big.decode_ms_per_token_cpu,
                "{context}"
            );
            assert!(
                small.prefill_ms_per_token_cpu < big.prefill_ms_per_token_cpu,
                "{context}"
            );
            let gpu_pair = small
                .decode_ms_per_token_gpu
                .zip(big.decode_ms_per_token_gpu);
            assert!(
                !same_products || gpu_pair.is_none_or(|(s, b)| s <= b),
                "{context}"
            );
        }
    }
}

#[test]
fn lower_ranks_never_cost_more() {
    let config = ModelConfig::SMOLLM2_135M;
    let keeps = [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.02];
    for board in [
        builtin("jetson-orin"),
        builtin("raspberry-pi-5"),
        builtin("stm32h743"),
    ] {
        for pair in keeps.windows(2) {
            let larger = keep_plan(&config, pair[0]);
            let smaller = keep_plan(&config, pair[1]);
            check_never_costlier(&board, &config, &larger, &smaller);
        }
        // One matrix at a time, from dense down to the most pruned plan.
        let mut plan = vec![None; config.n_prunable_matrices()];
        let target = keep_plan(&config, 0.1);
        for index in [0, 11, 33, 70, 209] {
            let before = plan.clone();
            plan[index] = target[index];
            check_never_costlier(&board, &config, &before, &plan);
        }
    }
}

#[test]
fn a_slight_trim_saves_bytes_but_costs_time() {
    // Jetson Orin Nano 8GB, q8: the gate of block 0 (1536 × 576) streams 884,736 + 4 · 1536
    // · 18 = 995,328 bytes in 14.64 µs at 68 GB/s. At keep 0.95 (rank 400) its pair streams
    // 400 · 576 + 4 · 400 · 18 + 1536 · 400 + 4 · 1536 · 13 = 953,472 bytes, 0.62 µs less,
    // and adds a second product, 2 µs: slower. At keep 0.5 (rank 210) it saves 7.3 µs.
    let board = builtin("jetson-orin");
    let config = ModelConfig::SMOLLM2_135M;
    let dense = vec![None; 210];
    let gate = 4;
    let mut trimmed = dense.clone();
    trimmed[gate] = Some(400);
    let mut halved = dense.clone();
    halved[gate] = Some(210);
    let p_dense = predicted(&board, &config, &dense, Dtype::Q8, None);
    let p_trimmed = predicted(&board, &config, &trimmed, Dtype::Q8, None);
    let p_halved = predicted(&board, &config, &halved, Dtype::Q8, None);
    assert_eq!(
        p_dense.weight_bytes - p_trimmed.weight_bytes,
        995_328 - 953_472
    );
    let slower_us = (p_trimmed.decode_ms_per_token_cpu - p_dense.decode_ms_per_token_cpu) * 1e3;
    assert!(
        (slower_us - (2.0 - 41_856.0 / 68e9 * 1e6)).abs() < 1e-6,
        "{slower_us}"
    );
    assert!(p_halved.decode_ms_per_token_cpu < p_dense.decode_ms_per_token_cpu);
}

#[test]
fn a_matrix_cost_is_its_share_of_the_prediction() {
    // Changing one matrix changes the CPU decode time and the weight bytes by exactly the
    // difference of its matrix costs.
    let board = builtin("jetson-orin");
    let config = ModelConfig::SMOLLM2_135M;
    let dense = vec![None; 210];
    for (index, rank) in [
        (4, Some(400)),
        (4, Some(20)),
        (0, Some(100)),
        (209, Some(7)),
    ] {
        let kind = MatrixKind::ALL[index % 7];
        let mut plan = dense.clone();
        plan[index] = rank;
        let cost = |rank| match matrix_cost(
            &board,
            &config,
            index / 7,
            kind,
            config.full_widths(),
            rank,
            Dtype::Q8,
        ) {
            Ok(cost) => cost,
            Err(error) => panic!("{error}"),
        };
        let ((dense_bytes, dense_s), (bytes, s)) = (cost(None), cost(rank));
        let p_dense = predicted(&board, &config, &dense, Dtype::Q8, None);
        let p = predicted(&board, &config, &plan, Dtype::Q8, None);
        assert_eq!(p_dense.weight_bytes - p.weight_bytes, dense_bytes - bytes);
        let predicted_s = (p.decode_ms_per_token_cpu - p_dense.decode_ms_per_token_cpu) * 1e-3;
        assert!(
            (predicted_s - (s - dense_s)).abs() < 1e-12,
            "{index}: {predicted_s} vs {}",
            s - dense_s
        );
    }
}

fn check_error(
    config: ModelConfig,
    ranks: &[Option<usize>],
    head_rows: Option<usize>,
    fragment: &str,
) {
    match predict(
        &round_board(""),
        &config,
        ranks,
        &[],
        Dtype::F32,
        &[],
        head_rows,
    ) {
        Ok(p) => panic!("predicted {p:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
            assert!(!message.contains('\n'), "not one line: {message}");
        }
    }
}

#[test]
fn bad_plans_are_errors_not_panics() {
    let config = tiny_config();
    check_error(
        config,
        &[None; 13],
        None,
        "the rank plan has 13 entries but the model has 14",
    );
    check_error(config, &[], None, "has 0 entries");
    let mut too_large = [None; 14];
    too_large[1] = Some(17);
    check_error(
        config,
        &too_large,
        None,
        "layer 0 `k` has rank 17 but a 16×32 matrix has at most rank 16",
    );
    check_error(config, &[None; 14], Some(0), "outside 1..=100");
    check_error(config, &[None; 14], Some(101), "outside 1..=100");
    let broken = ModelConfig {
        n_heads: 5,
        ..config
    };
    check_error(broken, &[None; 14], None, "the model config is invalid");
}

#[test]
fn a_rank_of_zero_removes_the_matrix() {
    let mut ranks = [None; 14];
    ranks[0] = Some(0);
    let dense = predicted(
        &round_board(""),
        &tiny_config(),
        &[None; 14],
        Dtype::F32,
        None,
    );
    let p = predicted(&round_board(""), &tiny_config(), &ranks, Dtype::F32, None);
    assert_eq!(dense.weight_bytes - p.weight_bytes, 4 * 1024);
}

#[test]
fn the_context_is_capped_at_the_models_limit() {
    let board = round_board("");
    let board = BoardProfile {
        context_length: 1_000,
        ..board
    };
    let p = predicted(&board, &tiny_config(), &[None; 14], Dtype::F32, None);
    assert_eq!(p.context_length, 64);
    // 2 · 64 · (16 · (2 + 2) + 2 · 4).
    assert_eq!(p.kv_cache_bytes, 9_216);
}

#[test]
fn measured_kernel_rates_replace_bandwidth_and_throughput_for_the_weights() {
    let plain = round_board("");
    let measured = round_board(
        "[kernels]\nq8_decode_bytes_per_s = 1e6\nf32_decode_bytes_per_s = 2e6\n\
         q8_prefill_flops = 1e6\nf32_prefill_flops = 4e6\n",
    );
    let config = tiny_config();
    let dense = vec![None; 14];
    // Dense tiny model: 2·18432 FLOPs of prunable matrices per prefilled token.
    let linear_flops = 2.0 * 18432.0;
    for (dtype, bytes_per_s, flops_per_s) in [(Dtype::Q8, 1e6, 1e6), (Dtype::F32, 2e6, 4e6)] {
        let (p, m) = match (
            predict(&plain, &config, &dense, &[], dtype, &[], None),
            predict(&measured, &config, &dense, &[], dtype, &[], None),
        ) {
            (Ok(p), Ok(m)) => (p, m),
            other => panic!("{other:?}"),
        };
        assert_eq!(m.bytes_read_per_token, p.bytes_read_per_token);
        // Every weight byte streams at the measured rate (decode) and every linear FLOP runs at
        // the measured rate (prefill); attention and overhead as before.
        let weights_ms = m.bytes_read_per_token as f64 / bytes_per_s * 1e3;
        let linear_ms = linear_flops / flops_per_s * 1e3;
        for (measured, floor, plain) in [
            (
                m.decode_ms_per_token_cpu,
                weights_ms,
                p.decode_ms_per_token_cpu,
            ),
            (
                m.prefill_ms_per_token_cpu,
                linear_ms,
                p.prefill_ms_per_token_cpu,
            ),
        ] {
            assert!(
                measured >= floor && measured <= floor + plain,
                "{dtype:?}: {measured} against {floor} + {plain}"
            );
        }
        // The GPU keeps the board's bandwidth.
        assert_eq!(m.decode_ms_per_token_gpu, p.decode_ms_per_token_gpu);
    }
}

#[test]
fn kernel_rates_must_be_positive() {
    let text = "[kernels]\nq8_decode_bytes_per_s = 0.0\nf32_decode_bytes_per_s = 1.0\n\
                q8_prefill_flops = 1.0\nf32_prefill_flops = 1.0\n";
    let board = round_board("");
    let mut bad = board.clone();
    bad.kernels = Some(crate::KernelRates {
        q8_decode_bytes_per_s: 0.0,
        f32_decode_bytes_per_s: 1.0,
        q8_prefill_flops: 1.0,
        f32_prefill_flops: 1.0,
        q4_decode_bytes_per_s: None,
        q4_prefill_flops: None,
        attention_flops: None,
        prefill_layer_overhead_us: None,
        revision: None,
        decode_by_working_set: Vec::new(),
        probe: None,
        measurements: None,
    });
    assert!(bad.validate().is_err(), "{text}");
    let mut bad_q4 = board.clone();
    bad_q4.kernels = Some(crate::KernelRates {
        q8_decode_bytes_per_s: 1.0,
        f32_decode_bytes_per_s: 1.0,
        q8_prefill_flops: 1.0,
        f32_prefill_flops: 1.0,
        q4_decode_bytes_per_s: Some(-1.0),
        q4_prefill_flops: None,
        attention_flops: None,
        prefill_layer_overhead_us: None,
        revision: None,
        decode_by_working_set: Vec::new(),
        probe: None,
        measurements: None,
    });
    assert!(bad_q4.validate().is_err(), "a negative q4 rate");
    assert!(board.validate().is_ok());
}

#[test]
fn a_measured_attention_rate_and_prefill_overhead_enter_the_prediction() {
    let rates = "[kernels]\nq8_decode_bytes_per_s = 1e9\nf32_decode_bytes_per_s = 1e9\n\
                 q8_prefill_flops = 1e9\nf32_prefill_flops = 1e9\n";
    let plain = round_board(rates);
    let measured = round_board(&format!(
        "{rates}attention_flops = 1e6\nprefill_layer_overhead_us = 3.0\n"
    ));
    let config = tiny_config();
    let dense = vec![None; 14];
    let p = predicted(&plain, &config, &dense, Dtype::F32, None);
    let m = predicted(&measured, &config, &dense, Dtype::F32, None);
    // Decode attention per block at context 16: 4·32·16 = 2048 FLOPs. Plain roofline:
    // max(2·16·16·4 = 2048 bytes at 1 B/ns, 2048 FLOPs at 1 FLOP/ns) = 2.048 µs; measured
    // rate 1 FLOP/µs: 2048 µs. Two blocks: +2·(2048 − 2.048) µs.
    let decode_gap_ms = m.decode_ms_per_token_cpu - p.decode_ms_per_token_cpu;
    assert!(
        (decode_gap_ms - 2.0 * (2048.0 - 2.048) * 1e-3).abs() < 1e-9,
        "{decode_gap_ms}"
    );
    // Prefill attention per token: 2 blocks · 4·32·(17/2) = 2176 FLOPs: 2.176 µs plain,
    // 2176 µs measured; plus 2 blocks · 3 µs.
    let prefill_gap_ms = m.prefill_ms_per_token_cpu - p.prefill_ms_per_token_cpu;
    assert!(
        (prefill_gap_ms - ((2176.0 - 2.176) + 6.0) * 1e-3).abs() < 1e-9,
        "{prefill_gap_ms}"
    );
}

#[test]
fn fitted_overheads_reproduce_the_step_times_they_come_from() {
    // A decode curve whose knee lies between the two contexts' working sets (the q8 weights,
    // about 143 MB, and 1.5 or 13 MB of keys and values), so the longer context also streams
    // its weights more slowly: the fit must not count that as attention.
    let rates = "[kernels]\nq8_decode_bytes_per_s = 2e10\nf32_decode_bytes_per_s = 3e10\n\
                 q8_prefill_flops = 1e11\nf32_prefill_flops = 9e10\n";
    let point = |bytes: u64, q8: f64| {
        format!(
            "[[kernels.decode_by_working_set]]\nbytes = {bytes}\nq8_decode_bytes_per_s = {q8:e}\n\
             f32_decode_bytes_per_s = 3e10\nq4_decode_bytes_per_s = 2e10\n"
        )
    };
    let curve = format!("{}{}", point(100_000_000, 4e10), point(200_000_000, 2e10));
    let truth = round_board(&format!(
        "layer_overhead_us = 37.0\n{rates}attention_flops = 4e9\nprefill_layer_overhead_us = 5.5\n\
         {curve}"
    ));
    let config = ModelConfig::SMOLLM2_135M;
    let dense = vec![None; config.n_prunable_matrices()];
    let at = |board: &BoardProfile, context: usize| {
        let board = BoardProfile {
            context_length: context,
            ..board.clone()
        };
        predicted(&board, &config, &dense, Dtype::Q8, None)
    };
    let times = StepTimes {
        decode: [
            (32, at(&truth, 32).decode_ms_per_token_cpu * 1e-3),
            (288, at(&truth, 288).decode_ms_per_token_cpu * 1e-3),
        ],
        prefill: (256, at(&truth, 256).prefill_ms_per_token_cpu * 1e-3),
    };
    // Fitted from a profile that has only the rates and the curve (and a different layer
    // overhead).
    let fitted = match fit_overheads(
        &round_board(&format!("{rates}{curve}")),
        &config,
        Dtype::Q8,
        &times,
    ) {
        Ok(fitted) => fitted,
        Err(error) => panic!("{error}"),
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs();
    assert!(close(fitted.layer_overhead_us, 37.0), "{fitted:?}");
    assert!(
        close(fitted.attention_flops.unwrap_or(0.0), 4e9),
        "{fitted:?}"
    );
    assert!(close(fitted.prefill_layer_overhead_us, 5.5), "{fitted:?}");
}

#[test]
fn fitted_overheads_are_never_negative_and_noise_gives_no_attention_rate() {
    let rates = "[kernels]\nq8_decode_bytes_per_s = 2e10\nf32_decode_bytes_per_s = 3e10\n\
                 q8_prefill_flops = 1e11\nf32_prefill_flops = 9e10\n";
    let config = ModelConfig::SMOLLM2_135M;
    // Faster than the weights can stream, and the long context no slower than the short one.
    let times = StepTimes {
        decode: [(32, 1e-6), (288, 1e-6)],
        prefill: (256, 1e-9),
    };
    let fitted = match fit_overheads(&round_board(rates), &config, Dtype::Q8, &times) {
        Ok(fitted) => fitted,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(
        fitted,
        Overheads {
            layer_overhead_us: 0.0,
            attention_flops: None,
            prefill_layer_overhead_us: 0.0,
        }
    );
}

#[test]
fn narrower_heads_and_skipped_sub_blocks_cost_their_matrices_less() {
    let config = ModelConfig::SMOLLM2_135M;
    let board = round_board("");
    let dense = vec![None; config.n_prunable_matrices()];
    let full = config.full_widths();
    let mut widths = vec![full; config.n_layers];
    // Block 0 skips both sub-blocks; block 1 keeps 32 of 64 value dimensions per head and
    // block 2 16 of 32 rotary pairs per query/key head.
    widths[0] = BlockWidths {
        mlp: 0,
        value: 0,
        pairs: 0,
    };
    widths[1] = BlockWidths { value: 32, ..full };
    widths[2] = BlockWidths { pairs: 16, ..full };
    let p_dense = predicted(&board, &config, &dense, Dtype::F32, None);
    let p = match predict(&board, &config, &dense, &widths, Dtype::F32, &[], None) {
        Ok(p) => p,
        Err(error) => panic!("{error}"),
    };
    let block = 4 * config.block_linear_params() as u64;
    let halved_values = 4 * (192 * 576 + 576 * 576) as u64 / 2;
    let halved_pairs = 4 * (576 * 576 + 192 * 576) as u64 / 2;
    assert_eq!(
        p_dense.weight_bytes - p.weight_bytes,
        block + halved_values + halved_pairs
    );
    assert!(p.decode_ms_per_token_cpu < p_dense.decode_ms_per_token_cpu);
    // A value head wider than head_dim, an MLP wider than the model's, more rotary pairs
    // than a head has: one-line errors.
    for bad in [
        BlockWidths { value: 65, ..full },
        BlockWidths { mlp: 1537, ..full },
        BlockWidths { pairs: 33, ..full },
    ] {
        widths[2] = bad;
        match predict(&board, &config, &dense, &widths, Dtype::F32, &[], None) {
            Ok(p) => panic!("predicted {p:?}"),
            Err(error) => assert!(error.to_string().contains("block widths"), "{error}"),
        }
    }
}

#[test]
fn a_mixed_plan_costs_each_matrix_at_its_own_dtype() {
    let board = round_board(
        "[kernels]\nq8_decode_bytes_per_s = 1e6\nf32_decode_bytes_per_s = 2e6\n\
         q8_prefill_flops = 1e6\nf32_prefill_flops = 4e6\n\
         q4_decode_bytes_per_s = 5e5\nq4_prefill_flops = 3e6\n",
    );
    let config = tiny_config();
    let dense = vec![None; 14];
    let at = |matrix_dtypes: &[Dtype]| match predict(
        &board,
        &config,
        &dense,
        &[],
        Dtype::Q4,
        matrix_dtypes,
        None,
    ) {
        Ok(p) => p,
        Err(error) => panic!("{error}"),
    };
    let q4 = at(&[]);
    assert_eq!(at(&[Dtype::Q4; 14]), q4);
    // Matrix 0 (block 0's q) at q8: its bytes at q8's size, its time at q8's rates.
    let mut one_q8 = [Dtype::Q4; 14];
    one_q8[0] = Dtype::Q8;
    let mixed = at(&one_q8);
    let (rows, cols) = config.matrix_shape(MatrixKind::Q);
    let (q8_bytes, q4_bytes) = (
        Dtype::Q8.matrix_bytes(rows, cols),
        Dtype::Q4.matrix_bytes(rows, cols),
    );
    assert_eq!(mixed.bundle_bytes, q4.bundle_bytes - q4_bytes + q8_bytes);
    let decode_ms = (q8_bytes as f64 / 1e6 - q4_bytes as f64 / 5e5) * 1e3;
    assert!((mixed.decode_ms_per_token_cpu - q4.decode_ms_per_token_cpu - decode_ms).abs() < 1e-9);
    let flops = 2.0 * (rows * cols) as f64;
    let prefill_ms = (flops / 1e6 - flops / 3e6) * 1e3;
    assert!(
        (mixed.prefill_ms_per_token_cpu - q4.prefill_ms_per_token_cpu - prefill_ms).abs() < 1e-9
    );
    // A list of the wrong length is an error, not a guess.
    assert!(matches!(
        predict(
            &board,
            &config,
            &dense,
            &[],
            Dtype::Q4,
            &[Dtype::Q8; 3],
            None
        ),
        Err(CostError::PlanLength {
            expected: 14,
            got: 3
        })
    ));
}

#[test]
fn a_decode_step_streams_at_the_rate_of_its_working_set() {
    let rates = "[kernels]\nq8_decode_bytes_per_s = 1e6\nf32_decode_bytes_per_s = 1e6\n\
                 q8_prefill_flops = 1e6\nf32_prefill_flops = 1e6\n";
    let config = tiny_config();
    let dense = vec![None; 14];
    let decode_ms = |extra: &str| {
        let board = round_board(&format!("{rates}{extra}"));
        match predict(&board, &config, &dense, &[], Dtype::F32, &[], None) {
            Ok(p) => (p.decode_ms_per_token_cpu, p.bytes_read_per_token),
            Err(error) => panic!("{error}"),
        }
    };
    let (flat, bytes) = decode_ms("");
    // The step's working set: its weights and the blocks' keys and values at the context.
    let kv = config.n_layers * 16 * (config.kv_dim() * (2 + 2) + config.n_kv_heads * 4);
    let working_set = bytes + kv as u64;
    let point = |bytes: u64, rate: f64| {
        format!(
            "[[kernels.decode_by_working_set]]\nbytes = {bytes}\nq8_decode_bytes_per_s = 1e6\n\
             f32_decode_bytes_per_s = {rate:e}\nq4_decode_bytes_per_s = 1e6\n"
        )
    };
    let weights_ms = |rate: f64| bytes as f64 / rate * 1e3;
    let rest = flat - weights_ms(1e6);
    // The weights' time on a curve of two points, `(bytes, f32 rate)`.
    let weights_on = |[(a, rate_a), (b, rate_b)]: [(u64, f64); 2]| {
        decode_ms(&format!("{}{}", point(a, rate_a), point(b, rate_b))).0 - rest
    };
    // Below the curve's first point: its rate; above the last: the last's.
    let below = weights_on([(working_set * 2, 4e6), (working_set * 8, 1e6)]);
    assert!((below - weights_ms(4e6)).abs() < 1e-9, "{below}");
    let above = weights_on([(working_set / 8, 4e6), (working_set / 2, 2e6)]);
    assert!((above - weights_ms(2e6)).abs() < 1e-9, "{above}");
    // Halfway in the logarithm between two points: halfway in time per byte.
    let between = weights_on([(working_set / 2, 4e6), (working_set * 2, 1e6)]);
    let expected = bytes as f64 * (0.5 / 4e6 + 0.5 / 1e6) * 1e3;
    assert!(
        (between - expected).abs() < 1e-9,
        "{between} against {expected}"
    );
    // Points out of order are refused by name.
    let text = format!(
        "{rates}{}{}",
        point(working_set * 2, 1e6),
        point(working_set, 1e6)
    );
    let board = BoardProfile::from_toml_str(&round_text(&text), "round.toml");
    assert!(
        board
            .as_ref()
            .is_err_and(|e| e.to_string().contains("decode_by_working_set")),
        "{board:?}"
    );
}
