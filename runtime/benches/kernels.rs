//! Kernel micro-benchmark: every implementation side by side in one run, on the SmolLM2-135M
//! shapes. Decode (one token) streams weights from memory, so it reports GB/s and the fraction
//! of the memory read bandwidth measured in the same run; prefill (256 tokens) is compute bound
//! and reports GFLOP/s. Ratios are to the portable kernel.
//!
//! `cargo bench -p whittle-runtime --features std --bench kernels [-- --quick]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use whittle_runtime::kernels::{
    self, AnyKernels, AttentionHead, F32Matrix, Kernels, Q8Matrix, Threaded,
};

/// Decode working sets are at least this large, so weights come from memory, not the cache.
const DECODE_WORKING_SET: usize = 256 << 20;
const PREFILL_TOKENS: usize = 256;
const THREADS: usize = 2;

/// (name, rows, cols, matrices per token in the dense model).
const SHAPES: [(&str, usize, usize, usize); 7] = [
    ("q/o 576x576", 576, 576, 60),
    ("k/v 192x576", 192, 576, 60),
    ("gate/up 1536x576", 1536, 576, 60),
    ("down 576x1536", 576, 1536, 30),
    ("head 49152x576", 49152, 576, 1),
    ("low-rank a 64x576", 64, 576, 0),
    ("low-rank b 1536x64", 1536, 64, 0),
];

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn quantize(values: &[f32]) -> Vec<i8> {
    values.iter().map(|v| (v * 254.0) as i8).collect()
}

/// Median seconds per call of `f` over `rounds` rounds of at least `min_time` each.
fn time_per_call(min_time: Duration, rounds: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut samples = Vec::with_capacity(rounds);
    let mut call = 0usize;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut calls = 0usize;
        while start.elapsed() < min_time {
            f(call);
            call += 1;
            calls += 1;
        }
        samples.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Read bandwidth in GB/s: `threads` threads summing disjoint parts of a large buffer.
fn bandwidth(threads: usize, quick: bool) -> f64 {
    let buffer: Vec<u64> = (0..DECODE_WORKING_SET / 8).map(|i| i as u64).collect();
    let part = buffer.len().div_ceil(threads);
    let rounds = if quick { 3 } else { 7 };
    let seconds = time_per_call(Duration::from_millis(1), rounds, |_| {
        std::thread::scope(|scope| {
            for chunk in buffer.chunks(part) {
                scope.spawn(move || {
                    black_box(chunk.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
                });
            }
        });
    });
    (buffer.len() * 8) as f64 / seconds / 1e9
}

struct Row {
    label: String,
    seconds: f64,
}

fn print_rows(title: &str, rows: &[Row], unit: &str, amount: f64, bandwidth: Option<(f64, f64)>) {
    let base = rows.first().map_or(1.0, |r| r.seconds);
    println!("  {title}");
    for row in rows {
        let rate = amount / row.seconds / 1e9;
        let fraction = bandwidth
            .map(|(one, all)| {
                let reference = if row.label.starts_with("threaded") {
                    all
                } else {
                    one
                };
                format!("  {:>4.0}% of bandwidth", 100.0 * rate / reference)
            })
            .unwrap_or_default();
        println!(
            "    {:<20} {:>9.1} µs  {:>7.1} {unit}  x{:>5.2}{fraction}",
            row.label,
            row.seconds * 1e6,
            rate,
            base / row.seconds
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let min_time = Duration::from_millis(if quick { 20 } else { 60 });
    let rounds = if quick { 3 } else { 5 };

    let single: Vec<AnyKernels> = {
        let mut all: Vec<AnyKernels> = kernels::available().collect();
        all.reverse();
        all
    };
    // AVX-512 with and without VNNI's rounded activations, side by side.
    #[cfg(target_arch = "x86_64")]
    let float_decode = kernels::Avx512::detect().map(kernels::Avx512::without_vnni);
    #[cfg(target_arch = "x86_64")]
    let single: Vec<AnyKernels> = {
        let mut single = single;
        if let Some(kernels) = float_decode.filter(|_| kernels::best().rounds_activations(1)) {
            single.insert(single.len() - 1, AnyKernels::Avx512(kernels));
        }
        single
    };
    let label = |k: &dyn Kernels| match k.rounds_activations(1) {
        true => format!("{} int8", k.name()),
        false => k.name().to_string(),
    };
    let threaded = Threaded::new(kernels::best(), THREADS);
    let mut implementations: Vec<(String, &dyn Kernels)> = single
        .iter()
        .map(|k| (label(k), k as &dyn Kernels))
        .collect();
    implementations.push((
        format!(
            "threaded {}x{}",
            label(threaded.inner()),
            threaded.threads()
        ),
        &threaded,
    ));

    let bw_one = bandwidth(1, quick);
    let bw_all = bandwidth(THREADS, quick);
    println!(
        "memory read bandwidth: {bw_one:.1} GB/s (1 thread), {bw_all:.1} GB/s ({THREADS} threads)"
    );
    let mut dense_q8_token = vec![0.0f64; implementations.len()];

    for &(name, rows, cols, per_token) in &SHAPES {
        println!("{name}");
        let x1 = values(cols, 1);
        let mut out1 = vec![0.0f32; rows];
        // Decode, q8: enough copies of the matrix that every call reads it from memory.
        let copies = DECODE_WORKING_SET.div_ceil(rows * cols).max(2);
        let q8 = quantize(&values(rows * cols, 2)).repeat(copies);
        let per_matrix = rows * kernels::q8_blocks_per_row(cols);
        let scales = values(per_matrix * copies, 3);
        let mut decode = Vec::new();
        for (index, (label, kernel)) in implementations.iter().enumerate() {
            let seconds = time_per_call(min_time, rounds, |call| {
                let c = call % copies;
                let w = Q8Matrix {
                    rows,
                    cols,
                    data: &q8[c * rows * cols..(c + 1) * rows * cols],
                    scales: &scales[c * per_matrix..(c + 1) * per_matrix],
                };
                kernel.gemm_q8(w, &x1, 1, &mut out1);
                black_box(&out1);
            });
            dense_q8_token[index] += per_token as f64 * seconds;
            decode.push(Row {
                label: label.clone(),
                seconds,
            });
        }
        print_rows(
            "decode q8",
            &decode,
            "GB/s ",
            (rows * cols) as f64,
            Some((bw_one, bw_all)),
        );
        drop(q8);

        let f32_copies = (DECODE_WORKING_SET / 4).div_ceil(rows * cols).max(2);
        let w32 = values(rows * cols, 4).repeat(f32_copies);
        let mut decode = Vec::new();
        for (label, kernel) in &implementations {
            let seconds = time_per_call(min_time, rounds, |call| {
                let c = call % f32_copies;
                let w = F32Matrix {
                    rows,
                    cols,
                    data: &w32[c * rows * cols..(c + 1) * rows * cols],
                };
                kernel.gemm_f32(w, &x1, 1, &mut out1);
                black_box(&out1);
            });
            decode.push(Row {
                label: label.clone(),
                seconds,
            });
        }
        print_rows(
            "decode f32",
            &decode,
            "GB/s ",
            (rows * cols * 4) as f64,
            Some((bw_one, bw_all)),
        );
        drop(w32);

        if rows > 4096 {
            continue;
        }
        let x = values(PREFILL_TOKENS * cols, 5);
        let mut out = vec![0.0f32; PREFILL_TOKENS * rows];
        let q8 = quantize(&values(rows * cols, 6));
        let scales = values(rows * kernels::q8_blocks_per_row(cols), 7);
        let w32 = values(rows * cols, 8);
        let flops = (2 * rows * cols * PREFILL_TOKENS) as f64;
        for dtype in ["q8", "f32"] {
            let mut prefill = Vec::new();
            for (label, kernel) in &implementations {
                let seconds = time_per_call(min_time, rounds.min(3), |_| {
                    if dtype == "q8" {
                        kernel.gemm_q8(
                            Q8Matrix {
                                rows,
                                cols,
                                data: &q8,
                                scales: &scales,
                            },
                            &x,
                            PREFILL_TOKENS,
                            &mut out,
                        );
                    } else {
                        kernel.gemm_f32(
                            F32Matrix {
                                rows,
                                cols,
                                data: &w32,
                            },
                            &x,
                            PREFILL_TOKENS,
                            &mut out,
                        );
                    }
                    black_box(&out);
                });
                prefill.push(Row {
                    label: label.clone(),
                    seconds,
                });
            }
            print_rows(
                &format!("prefill {PREFILL_TOKENS} tokens {dtype}"),
                &prefill,
                "GFLOP/s",
                flops,
                None,
            );
        }
    }

    println!(
        "dense q8 decode, linear layers and head only (Σ matrices per token × time per call):"
    );
    for ((label, _), seconds) in implementations.iter().zip(&dense_q8_token) {
        println!(
            "    {label:<20} {:>7.2} ms/token  {:>6.1} tok/s",
            seconds * 1e3,
            1.0 / seconds
        );
    }

    attention(&implementations, min_time, rounds);
}

/// Positions a decode token attends to in the attention benchmark (`bench-compare`'s prompt
/// of 256 tokens and a few decoded).
const ATTENTION_POSITIONS: usize = 300;

/// One decode token's attention in all 30 blocks of SmolLM2-135M (9 query heads over 3
/// key/value heads of 64, `ATTENTION_POSITIONS` cached positions), each key/value head's group
/// of three query heads one `Kernels::attend`; the caches (30 × 115 KB of 16-bit keys and as much of
/// f16 values) are read as decode reads them.
fn attention(implementations: &[(String, &dyn Kernels)], min_time: Duration, rounds: usize) {
    const BLOCKS: usize = 30;
    const HEADS: usize = 9;
    const KV_HEADS: usize = 3;
    const HEAD_DIM: usize = 64;
    const GROUP: usize = HEADS / KV_HEADS;
    let kv_dim = KV_HEADS * HEAD_DIM;
    let cache_len = ATTENTION_POSITIONS * kv_dim;
    let mut keys = vec![0i16; BLOCKS * cache_len];
    // By block, key/value head, then position, as the model keeps them.
    let key_scales: Vec<f32> = values(BLOCKS * cache_len, 5)
        .chunks_exact(HEAD_DIM)
        .zip(keys.chunks_exact_mut(HEAD_DIM))
        .map(|(key, rounded)| whittle_runtime::kernels::round_key(key, rounded))
        .collect();
    let cache_values: Vec<u16> = values(BLOCKS * cache_len, 6)
        .into_iter()
        .map(whittle_runtime::kernels::to_f16)
        .collect();
    let q = values(HEADS * HEAD_DIM, 7);
    let mut scores = vec![0.0f32; GROUP * ATTENTION_POSITIONS];
    let mut out = vec![0.0f32; GROUP * HEAD_DIM];
    let mut rows = Vec::new();
    for (label, kernel) in implementations {
        let seconds = time_per_call(min_time, rounds, |_| {
            for block in 0..BLOCKS {
                for kv_head in 0..KV_HEADS {
                    let head_cache = (block * KV_HEADS + kv_head) * ATTENTION_POSITIONS;
                    let kv = head_cache * HEAD_DIM;
                    let group = kv_head * GROUP * HEAD_DIM;
                    let head = AttentionHead {
                        q: &q[group..group + GROUP * HEAD_DIM],
                        head_dim: HEAD_DIM,
                        keys: &keys[kv..],
                        key_scales: &key_scales[head_cache..],
                        values: &cache_values[kv..],
                        stride: HEAD_DIM,
                        positions: ATTENTION_POSITIONS,
                        scale: 0.125,
                    };
                    kernel.attend(&head, &mut scores, &mut out, &mut []);
                }
            }
            black_box(&out);
        });
        rows.push(Row {
            label: label.clone(),
            seconds,
        });
    }
    let flops = (BLOCKS * HEADS * ATTENTION_POSITIONS * 4 * HEAD_DIM) as f64;
    print_rows(
        &format!("attention, one decode token over {ATTENTION_POSITIONS} positions, 30 blocks"),
        &rows,
        "GFLOP/s",
        flops,
        None,
    );
}
