//! Micro-benchmarks for the `host` profile: memory read bandwidth and f32 matrix throughput.
//! Each figure is the best of several runs, so a briefly busy machine lowers it less.

use std::hint::black_box;
use std::time::Instant;

use whittle_boards::stats::least;

/// Memory read bandwidth, in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    /// Bytes in the buffer that is read.
    pub buffer_bytes: usize,
    /// Threads of the all-threads figure.
    pub threads: usize,
    /// Runs per figure; the best is kept.
    pub runs: usize,
    /// One thread summing the whole buffer.
    pub one_thread_bytes_per_s: f64,
    /// `threads` threads summing one slice of the buffer each, at once.
    pub all_threads_bytes_per_s: f64,
}

impl Bandwidth {
    /// The better of the two figures.
    pub fn best_bytes_per_s(&self) -> f64 {
        self.one_thread_bytes_per_s
            .max(self.all_threads_bytes_per_s)
    }
}

/// Reads a buffer of `buffer_bytes` (rounded down to whole `u64` words) by summing its words,
/// on one thread and on `threads` threads; the buffer should be several times larger than the
/// last-level cache.
pub fn read_bandwidth(buffer_bytes: usize, threads: usize, runs: usize) -> Bandwidth {
    let words = (buffer_bytes / size_of::<u64>()).max(1);
    let threads = threads.clamp(1, words);
    let runs = runs.max(1);
    // Distinct values: a buffer of zeros could be backed by one shared zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let bytes = (words * size_of::<u64>()) as f64;
    let slice_len = words.div_ceil(threads);
    let one_thread_s = best_seconds(runs, || {
        black_box(sum_words(&buffer));
    });
    let all_threads_s = best_seconds(runs, || {
        std::thread::scope(|scope| {
            for slice in buffer.chunks(slice_len) {
                scope.spawn(move || black_box(sum_words(slice)));
            }
        });
    });
    Bandwidth {
        buffer_bytes: words * size_of::<u64>(),
        threads,
        runs,
        one_thread_bytes_per_s: bytes / one_thread_s,
        all_threads_bytes_per_s: bytes / all_threads_s,
    }
}

/// f32 matrix-multiply throughput, in FLOP/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// `n` of the `n×n` by `n×n` products.
    pub size: usize,
    /// Products per thread per run.
    pub products_per_run: usize,
    /// Threads of the all-threads figure.
    pub threads: usize,
    /// Runs per figure; the best is kept.
    pub runs: usize,
    /// One thread.
    pub one_thread_flops: f64,
    /// `threads` threads, each multiplying its own matrices, at once.
    pub all_threads_flops: f64,
}

impl Throughput {
    /// The better of the two figures.
    pub fn best_flops(&self) -> f64 {
        self.one_thread_flops.max(self.all_threads_flops)
    }
}

/// Times `products_per_run` sgemm products of `size×size` matrices (`2·size³` FLOPs each) on
/// one thread, then on `threads` threads at once, each with its own matrices; matrixmultiply
/// runs single-threaded inside each.
pub fn sgemm_throughput(
    size: usize,
    products_per_run: usize,
    threads: usize,
    runs: usize,
) -> Throughput {
    let size = size.max(1);
    let products_per_run = products_per_run.max(1);
    let threads = threads.max(1);
    let runs = runs.max(1);
    let flops_per_thread = 2.0 * (size as f64).powi(3) * products_per_run as f64;
    let mut workspaces: Vec<Sgemm> = (0..threads).map(|_| Sgemm::new(size)).collect();
    let one_thread_s = match workspaces.first_mut() {
        Some(workspace) => best_seconds(runs, || workspace.multiply(products_per_run)),
        None => f64::INFINITY,
    };
    let all_threads_s = best_seconds(runs, || {
        std::thread::scope(|scope| {
            for workspace in &mut workspaces {
                scope.spawn(move || workspace.multiply(products_per_run));
            }
        });
    });
    Throughput {
        size,
        products_per_run,
        threads,
        runs,
        one_thread_flops: flops_per_thread / one_thread_s,
        all_threads_flops: flops_per_thread * threads as f64 / all_threads_s,
    }
}

/// The runtime's own products on this machine, per weight dtype: the fastest kernel
/// ([`whittle_runtime::kernels::best`]) on a persistent pool of one thread and of `threads`.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpeed {
    /// The kernel's name.
    pub kernel: &'static str,
    /// Threads of the all-threads figures.
    pub threads: usize,
    /// `rows × cols` of every matrix.
    pub shape: (usize, usize),
    /// Bytes of weights the decode figures stream per pass (each dtype).
    pub decode_bytes: usize,
    /// Tokens of the prefill products.
    pub prefill_tokens: usize,
    /// Weight bytes/s of one-token products, q8 then f32, one thread then all threads.
    pub q8_decode: [f64; 2],
    /// As `q8_decode`, f32 weights.
    pub f32_decode: [f64; 2],
    /// FLOP/s of `prefill_tokens`-token products, q8, one thread then all threads.
    pub q8_prefill: [f64; 2],
    /// As `q8_prefill`, f32 weights.
    pub f32_prefill: [f64; 2],
    /// As `q8_decode`, q4 weights.
    pub q4_decode: [f64; 2],
    /// As `q8_prefill`, q4 weights.
    pub q4_prefill: [f64; 2],
    /// The decode figures again over the first matrices only, for working sets smaller than
    /// `decode_bytes`: `(bytes, q8, f32, q4)` per working set, ascending, each dtype's one
    /// thread then all threads (the bytes are q8's; the f32 and q4 sweeps cover about as many).
    pub working_sets: Vec<(usize, [[f64; 2]; 3])>,
}

impl KernelSpeed {
    /// The better of one thread and all threads, per figure, as the profile keeps them.
    pub fn rates(&self) -> whittle_boards::KernelRates {
        let best = |pair: [f64; 2]| pair[0].max(pair[1]);
        whittle_boards::KernelRates {
            q8_decode_bytes_per_s: best(self.q8_decode).round(),
            f32_decode_bytes_per_s: best(self.f32_decode).round(),
            q8_prefill_flops: best(self.q8_prefill).round(),
            f32_prefill_flops: best(self.f32_prefill).round(),
            q4_decode_bytes_per_s: Some(best(self.q4_decode).round()),
            q4_prefill_flops: Some(best(self.q4_prefill).round()),
            attention_flops: None,
            prefill_layer_overhead_us: None,
            revision: Some(whittle_runtime::kernels::REVISION),
            probe: None,
            measurements: None,
            decode_by_working_set: self
                .working_sets
                .iter()
                .map(|&(bytes, [q8, f32, q4])| whittle_boards::WorkingSetRates {
                    bytes: bytes as u64,
                    q8_decode_bytes_per_s: best(q8).round(),
                    f32_decode_bytes_per_s: best(f32).round(),
                    q4_decode_bytes_per_s: best(q4).round(),
                })
                .chain(std::iter::once(whittle_boards::WorkingSetRates {
                    bytes: self.decode_bytes as u64,
                    q8_decode_bytes_per_s: best(self.q8_decode).round(),
                    f32_decode_bytes_per_s: best(self.f32_decode).round(),
                    q4_decode_bytes_per_s: best(self.q4_decode).round(),
                }))
                .collect(),
        }
    }
}

/// Working sets below the large decode sweep at which [`kernel_speed`] times decode again: a
/// server's last-level cache holds hundreds of MiB (260 MiB on the machines RESULTS was
/// measured on), so a small model's weights partly stay in it from one token to the next.
/// Steps of 16 MiB from 128 MiB: a shared cache's knee fell between 128 and 192 MiB there,
/// where the dense q8 SmolLM2 (151 MB a token) lies.
pub const WORKING_SETS_MIB: [usize; 13] =
    [16, 32, 48, 64, 96, 128, 144, 160, 176, 192, 208, 224, 256];

/// Passes over all of [`WORKING_SETS_MIB`]; each point keeps its best.
const CURVE_PASSES: usize = 3;

/// Times the runtime's kernels: one-token products over `decode_bytes` of weights per dtype
/// (several times the last-level cache, so they stream from memory, as a large model's decode
/// does) and over the first [`WORKING_SETS_MIB`] of them, and `prefill_tokens`-token products
/// over a few matrices; `rows × cols` matrices, the best of `runs`.
pub fn kernel_speed(
    shape: (usize, usize),
    decode_bytes: usize,
    prefill_tokens: usize,
    threads: usize,
    runs: usize,
) -> KernelSpeed {
    use whittle_runtime::kernels::{
        F32Matrix, Kernels, Q4_BLOCK_BYTES, Q4Matrix, Q8Matrix, Threaded, best, q8_blocks_per_row,
    };
    let (rows, cols) = (shape.0.max(1), shape.1.max(1));
    let size = rows * cols;
    // A q8 matrix as stored: int8 values and one f32 scale per 32 values of a row.
    let scale_count = rows * q8_blocks_per_row(cols);
    let q8_bytes = size + 4 * scale_count;
    let q8_count = (decode_bytes / q8_bytes).max(1);
    let f32_count = (decode_bytes / (4 * size)).max(1);
    let q8_data: Vec<i8> = (0..q8_count * size)
        .map(|i| ((i * 31 % 255) as i32 - 127) as i8)
        .collect();
    let f32_data: Vec<f32> = (0..f32_count * size)
        .map(|i| (i % 97) as f32 * 0.01 - 0.5)
        .collect();
    let scales = vec![0.01f32; q8_count * scale_count];
    // A q4 matrix as stored: 16 bytes of nibbles and an f16 (d, m) pair per 32 values.
    let q4_data_len = scale_count * Q4_BLOCK_BYTES;
    let q4_bytes = q4_data_len + 4 * scale_count;
    let q4_count = (decode_bytes / q4_bytes).max(1);
    let q4_data: Vec<u8> = (0..q4_count * q4_data_len)
        .map(|i| (i * 37 % 256) as u8)
        .collect();
    let q4_scales: Vec<u16> = (0..2 * q4_count * scale_count)
        .map(|i| half::f16::from_f32(if i % 2 == 0 { 0.01 } else { -0.08 }).to_bits())
        .collect();
    let q4 = |m: usize| Q4Matrix {
        rows,
        cols,
        data: q4_data
            .get(m * q4_data_len..(m + 1) * q4_data_len)
            .unwrap_or_default(),
        scales: q4_scales
            .get(2 * m * scale_count..2 * (m + 1) * scale_count)
            .unwrap_or_default(),
    };
    let q8 = |m: usize| Q8Matrix {
        rows,
        cols,
        data: q8_data.get(m * size..(m + 1) * size).unwrap_or_default(),
        scales: scales
            .get(m * scale_count..(m + 1) * scale_count)
            .unwrap_or_default(),
    };
    let f32m = |m: usize| F32Matrix {
        rows,
        cols,
        data: f32_data.get(m * size..(m + 1) * size).unwrap_or_default(),
    };
    let tokens = prefill_tokens.max(1);
    let x: Vec<f32> = (0..tokens * cols).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; tokens * rows];
    let prefill_matrices = 8.min(q8_count).min(f32_count).min(q4_count);
    let prefill_flops = 2.0 * (tokens * size * prefill_matrices) as f64;
    let runs = runs.max(1);
    // Matrices per dtype in each smaller working set.
    let working_sets: Vec<[usize; 3]> = WORKING_SETS_MIB
        .iter()
        .map(|mib| mib << 20)
        .filter(|&bytes| bytes < q8_count * q8_bytes)
        .map(|bytes| {
            let count = |matrix_bytes: usize, most: usize| (bytes / matrix_bytes).clamp(1, most);
            [
                count(q8_bytes, q8_count),
                count(4 * size, f32_count),
                count(q4_bytes, q4_count),
            ]
        })
        .collect();
    let mut measure = |threads: usize| {
        let k = Threaded::new(best(), threads);
        let x1 = x.get(..cols).unwrap_or_default();
        // Decode rates (bytes/s) of q8, f32 and q4 over the first matrices of each dtype.
        let sweep = |[q8s, f32s, q4s]: [usize; 3], runs: usize| {
            let mut out1 = vec![0.0f32; rows];
            let q8 = best_seconds(runs, || {
                (0..q8s).for_each(|m| k.gemm_q8(q8(m), x1, 1, &mut out1));
                black_box(&out1);
            });
            let f32 = best_seconds(runs, || {
                (0..f32s).for_each(|m| k.gemm_f32(f32m(m), x1, 1, &mut out1));
                black_box(&out1);
            });
            let q4 = best_seconds(runs, || {
                (0..q4s).for_each(|m| k.gemm_q4(q4(m), x1, 1, &mut out1));
                black_box(&out1);
            });
            [
                (q8s * q8_bytes) as f64 / q8,
                (4 * f32s * size) as f64 / f32,
                (q4s * q4_bytes) as f64 / q4,
            ]
        };
        // Each pass times every working set (the best of `runs` in a row, as a model's weights
        // are read token after token) and a point keeps its best pass: a busy stretch of a
        // shared machine then slows one pass of every point, not every run of a few
        // neighbouring points.
        let mut smaller = vec![[0.0f64; 3]; working_sets.len()];
        for _ in 0..CURVE_PASSES {
            for (best, &set) in smaller.iter_mut().zip(&working_sets) {
                for (best, rate) in best.iter_mut().zip(sweep(set, runs)) {
                    *best = best.max(rate);
                }
            }
        }
        let [q8_decode, f32_decode, q4_decode] = sweep([q8_count, f32_count, q4_count], runs);
        let q8_prefill = best_seconds(runs, || {
            for m in 0..prefill_matrices {
                k.gemm_q8(q8(m), &x, tokens, &mut out);
            }
            black_box(&out);
        });
        let f32_prefill = best_seconds(runs, || {
            for m in 0..prefill_matrices {
                k.gemm_f32(f32m(m), &x, tokens, &mut out);
            }
            black_box(&out);
        });
        let q4_prefill = best_seconds(runs, || {
            for m in 0..prefill_matrices {
                k.gemm_q4(q4(m), &x, tokens, &mut out);
            }
            black_box(&out);
        });
        let large = [
            q8_decode,
            f32_decode,
            prefill_flops / q8_prefill,
            prefill_flops / f32_prefill,
            q4_decode,
            prefill_flops / q4_prefill,
        ];
        (large, smaller)
    };
    let (one, one_smaller) = measure(1);
    let (all, all_smaller) = measure(threads.max(1));
    let working_sets = working_sets
        .iter()
        .zip(one_smaller.iter().zip(&all_smaller))
        .map(|([q8s, ..], (one, all))| {
            let pair = |i: usize| [one[i], all[i]];
            (q8s * q8_bytes, [pair(0), pair(1), pair(2)])
        })
        .collect();
    KernelSpeed {
        kernel: best().name(),
        threads: threads.max(1),
        shape: (rows, cols),
        decode_bytes: q8_count * q8_bytes,
        prefill_tokens: tokens,
        q8_decode: [one[0], all[0]],
        f32_decode: [one[1], all[1]],
        q8_prefill: [one[2], all[2]],
        f32_prefill: [one[3], all[3]],
        q4_decode: [one[4], all[4]],
        q4_prefill: [one[5], all[5]],
        working_sets,
    }
}

/// Step times of the runtime on a synthetic dense model, and the speed of low-rank pairs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSteps {
    /// The synthetic model's shapes.
    pub config: whittle_runtime::ModelConfig,
    /// Threads of the pool.
    pub threads: usize,
    /// Runs per figure; the fastest is kept.
    pub runs: usize,
    /// Decode (short and long context) and prefill times, as the cost model's fit takes them.
    pub times: whittle_boards::StepTimes,
    /// Low-rank pairs of the model's shapes, streamed.
    pub pairs: PairSpeed,
}

impl ModelSteps {
    /// The figures as the profile keeps them.
    pub fn probe(&self) -> whittle_boards::ModelProbe {
        let [
            (short_context, short_decode_s),
            (long_context, long_decode_s),
        ] = self.times.decode;
        whittle_boards::ModelProbe {
            short_context,
            short_decode_s,
            long_context,
            long_decode_s,
            prefill_tokens: self.times.prefill.0,
            prefill_s_per_token: self.times.prefill.1,
            pairs: self.pairs.pairs,
            pair_bytes: self.pairs.bytes as u64,
            pairs_s: self.pairs.seconds,
        }
    }
}

/// Tokens decoded per timed decode figure.
const DECODE_STEPS: usize = 16;

/// Times the runtime (the fastest kernel on a pool of `threads`) on a synthetic dense q8 model
/// of `config`'s shapes: decoding [`DECODE_STEPS`] tokens (one position, then the whole head)
/// after prompts of `short` and `long` tokens, prefilling a `long`-token prompt, and
/// `pair_bytes` of low-rank pairs of its shapes ([`low_rank_pairs`]). Each figure is the
/// fastest of `runs`, as the kernel rates are: a run of sixteen steps includes the wait for the
/// slower thread, which a real step costs too, and the fastest run is the machine at its
/// quietest, which `bench-compare`'s check compares with the fastest of its rounds (a busy
/// stretch on a shared machine moved the median by a quarter).
pub fn model_steps(
    config: &whittle_runtime::ModelConfig,
    short: usize,
    long: usize,
    pair_bytes: usize,
    threads: usize,
    runs: usize,
) -> anyhow::Result<ModelSteps> {
    use whittle_runtime::format::Dtype;
    use whittle_runtime::kernels::{Threaded, best};
    use whittle_runtime::{AlignedBytes, Bundle, Model, writer};

    let threads = threads.max(1);
    let runs = runs.max(1);
    let bytes = writer::synthetic_bundle(config, Dtype::Q8)
        .map_err(|error| anyhow::anyhow!("cannot build the synthetic model: {error}"))?;
    let bytes = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(bytes.as_bytes())
        .map_err(|error| anyhow::anyhow!("the synthetic model does not parse: {error}"))?;
    let context = long + DECODE_STEPS;
    let mut words = vec![0u64; bundle.arena_bytes(context).div_ceil(8)];
    let arena: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let mut model = Model::new(&bundle, Threaded::new(best(), threads), context, arena)
        .map_err(|error| anyhow::anyhow!("cannot run the synthetic model: {error}"))?;
    let vocab = config.vocab_size.max(1);
    let prompt: Vec<u32> = (0..long).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    let run_err =
        |error: whittle_runtime::Error| anyhow::anyhow!("the synthetic model failed: {error}");
    let mut decode_after = |length: usize| -> anyhow::Result<f64> {
        model.reset();
        model
            .feed(prompt.get(..length).unwrap_or_default())
            .map_err(run_err)?;
        let started = Instant::now();
        for step in 0..DECODE_STEPS {
            model.feed(&[(step % vocab) as u32]).map_err(run_err)?;
            black_box(model.logits().map_err(run_err)?);
        }
        Ok(started.elapsed().as_secs_f64() / DECODE_STEPS as f64)
    };
    // The two contexts alternate, so that a busier moment of a shared machine slows both and
    // not only their difference, which the attention rate is read from.
    let (mut short_s, mut long_s) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        short_s.push(decode_after(short)?);
        long_s.push(decode_after(long)?);
    }
    let mean_context = |length: usize| length + DECODE_STEPS / 2;
    let decode = [
        (mean_context(short), least(&short_s)),
        (mean_context(long), least(&long_s)),
    ];
    let mut prefill = Vec::with_capacity(runs);
    for _ in 0..runs {
        model.reset();
        let started = Instant::now();
        model.feed(&prompt).map_err(run_err)?;
        prefill.push(started.elapsed().as_secs_f64() / long.max(1) as f64);
    }
    let prefill = (long, least(&prefill));

    let pairs = low_rank_pairs(config, pair_bytes, threads, runs);
    Ok(ModelSteps {
        config: *config,
        threads,
        runs,
        times: whittle_boards::StepTimes {
            decode,
            prefill: (prefill.0, prefill.1),
        },
        pairs,
    })
}

/// Low-rank pairs streamed from memory: what a decode step's pairs cost beside their bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairSpeed {
    /// Pairs per pass.
    pub pairs: usize,
    /// q8 bytes of `A` and `B` of every pair in a pass (several times the last-level cache).
    pub bytes: usize,
    /// The fastest pass's seconds.
    pub seconds: f64,
}

/// Times one-token low-rank products ([`Kernels::gemm_low_rank`], one pool job of two phases)
/// over about `pair_bytes` of q8 pairs (at least one of each shape): every matrix shape of `config` at half its parameters
/// (rank `rows·cols / (2·(rows + cols))`), repeated; the fastest of `runs` passes.
fn low_rank_pairs(
    config: &whittle_runtime::ModelConfig,
    pair_bytes: usize,
    threads: usize,
    runs: usize,
) -> PairSpeed {
    use whittle_runtime::MatrixKind;
    use whittle_runtime::kernels::{Kernels, Q8Matrix, Threaded, Weight, best, q8_blocks_per_row};

    // Per matrix kind: (rows, cols, rank).
    let shapes: Vec<(usize, usize, usize)> = MatrixKind::ALL
        .iter()
        .map(|&kind| {
            let (rows, cols) = config.matrix_shape(kind);
            (rows, cols, (rows * cols / (2 * (rows + cols))).max(1))
        })
        .collect();
    let q8_bytes = |rows: usize, cols: usize| rows * cols + 4 * rows * q8_blocks_per_row(cols);
    let set_bytes: usize = shapes
        .iter()
        .map(|&(rows, cols, rank)| q8_bytes(rank, cols) + q8_bytes(rows, rank))
        .sum();
    let sets = (pair_bytes / set_bytes.max(1)).max(1);
    let mut layout = Vec::with_capacity(sets * shapes.len());
    let (mut values, mut scales) = (0usize, 0usize);
    for _ in 0..sets {
        for &(rows, cols, rank) in &shapes {
            layout.push((rows, cols, rank, values, scales));
            values += rank * cols + rows * rank;
            scales += rank * q8_blocks_per_row(cols) + rows * q8_blocks_per_row(rank);
        }
    }
    let data: Vec<i8> = (0..values)
        .map(|i| ((i * 31 % 255) as i32 - 127) as i8)
        .collect();
    let scale_data = vec![0.01f32; scales];
    let widest = shapes
        .iter()
        .map(|&(rows, cols, _)| rows.max(cols))
        .max()
        .unwrap_or(1);
    let x: Vec<f32> = (0..widest).map(|i| (i % 13) as f32 * 0.1).collect();
    let (mut low, mut out) = (vec![0.0f32; widest], vec![0.0f32; widest]);
    let pool = Threaded::new(best(), threads);
    let seconds: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            for &(rows, cols, rank, at, scale_at) in &layout {
                let a_len = rank * cols;
                let a_scales = rank * q8_blocks_per_row(cols);
                let matrix = |rows: usize, cols: usize, at: usize, scale_at: usize| Q8Matrix {
                    rows,
                    cols,
                    data: data.get(at..at + rows * cols).unwrap_or_default(),
                    scales: scale_data
                        .get(scale_at..scale_at + rows * q8_blocks_per_row(cols))
                        .unwrap_or_default(),
                };
                pool.gemm_low_rank(
                    Weight::Q8(matrix(rank, cols, at, scale_at)),
                    Weight::Q8(matrix(rows, rank, at + a_len, scale_at + a_scales)),
                    x.get(..cols).unwrap_or_default(),
                    1,
                    low.get_mut(..rank).unwrap_or_default(),
                    out.get_mut(..rows).unwrap_or_default(),
                );
            }
            black_box(&out);
            started.elapsed().as_secs_f64()
        })
        .collect();
    PairSpeed {
        pairs: layout.len(),
        bytes: sets * set_bytes,
        seconds: least(&seconds),
    }
}

/// The wrapping sum of the words: reads every one, and vectorizes.
fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |sum, &word| sum.wrapping_add(word))
}

/// The shortest wall time of `runs` calls, in seconds (never zero).
fn best_seconds(runs: usize, mut work: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
        .max(f64::MIN_POSITIVE)
}

/// Square row-major matrices for `c = a · b`.
#[derive(Debug)]
struct Sgemm {
    size: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Sgemm {
    fn new(size: usize) -> Self {
        let len = size * size;
        let fill = |seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7 + seed) % 13) as f32 / 13.0 - 0.5)
                .collect()
        };
        Self {
            size,
            a: fill(1),
            b: fill(5),
            c: vec![0.0; len],
        }
    }

    fn multiply(&mut self, products: usize) {
        for _ in 0..products {
            sgemm_row_major(
                self.size,
                self.size,
                self.size,
                &self.a,
                &self.b,
                &mut self.c,
            );
        }
        black_box(&self.c);
    }
}

/// `c = a · b` for row-major `a` (`m×k`), `b` (`k×n`) and `c` (`m×n`).
///
/// # Panics
/// When a slice's length is not its shape's: a programming error, never input.
#[allow(unsafe_code)]
fn sgemm_row_major(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert_eq!(a.len(), m * k, "a is not m×k");
    assert_eq!(b.len(), k * n, "b is not k×n");
    assert_eq!(c.len(), m * n, "c is not m×n");
    let (k_stride, n_stride) = (k as isize, n as isize);
    // SAFETY: the lengths checked above cover every element matrixmultiply addresses through
    // these row-major strides, `c` is borrowed mutably so nothing else aliases it, and with
    // beta = 0 its previous contents are never read.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k_stride,
            1,
            b.as_ptr(),
            n_stride,
            1,
            0.0,
            c.as_mut_ptr(),
            n_stride,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_multiplies_row_major_matrices() {
        // [1 2 3; 4 5 6] · [1 0; 0 1; 1 1] = [4 5; 10 11].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [f32::NAN; 4];
        sgemm_row_major(2, 3, 2, &a, &b, &mut c);
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
    }

    #[test]
    fn sgemm_agrees_with_the_naive_product_at_odd_sizes() {
        let (m, k, n) = (33, 17, 29);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
        let mut c = vec![f32::NAN; m * n];
        sgemm_row_major(m, k, n, &a, &b, &mut c);
        for row in 0..m {
            for col in 0..n {
                let expected: f32 = (0..k).map(|i| a[row * k + i] * b[i * n + col]).sum();
                // Small integers: every partial sum is exact in f32.
                assert_eq!(c[row * n + col], expected, "at ({row}, {col})");
            }
        }
    }

    #[test]
    fn words_sum_wrapping() {
        assert_eq!(sum_words(&[1, 2, 3]), 6);
        assert_eq!(sum_words(&[u64::MAX, 2]), 1);
        assert_eq!(sum_words(&[]), 0);
    }

    #[test]
    fn small_measurements_give_positive_finite_figures() {
        // Sizes only; these machines are shared, so no timing is asserted.
        let bandwidth = read_bandwidth(1 << 16, 3, 2);
        assert_eq!(bandwidth.buffer_bytes, 1 << 16);
        assert_eq!(bandwidth.threads, 3);
        for figure in [
            bandwidth.one_thread_bytes_per_s,
            bandwidth.all_threads_bytes_per_s,
        ] {
            assert!(figure.is_finite() && figure > 0.0, "{bandwidth:?}");
        }
        let throughput = sgemm_throughput(16, 2, 2, 2);
        for figure in [throughput.one_thread_flops, throughput.all_threads_flops] {
            assert!(figure.is_finite() && figure > 0.0, "{throughput:?}");
        }
    }

    #[test]
    fn a_small_synthetic_model_gives_positive_step_times() {
        let config = whittle_runtime::ModelConfig {
            arch: whittle_runtime::Architecture::LLAMA,
            n_layers: 2,
            hidden_size: 64,
            intermediate_size: 128,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            vocab_size: 300,
            max_position_embeddings: 64,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
        };
        let steps = match model_steps(&config, 4, 20, 1 << 16, 2, 1) {
            Ok(steps) => steps,
            Err(error) => panic!("{error:#}"),
        };
        let [(short, short_s), (long, long_s)] = steps.times.decode;
        assert_eq!((short, long), (4 + DECODE_STEPS / 2, 20 + DECODE_STEPS / 2));
        assert_eq!(steps.times.prefill.0, 20);
        // Sizes only: these machines are shared, so no timing is compared.
        for seconds in [short_s, long_s, steps.times.prefill.1, steps.pairs.seconds] {
            assert!(seconds.is_finite() && seconds > 0.0, "{steps:?}");
        }
        // Every matrix kind at least once, its bytes counted.
        assert!(
            steps.pairs.pairs >= 7 && steps.pairs.pairs % 7 == 0,
            "{steps:?}"
        );
        assert!(steps.pairs.bytes >= 1 << 15, "{steps:?}");
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let bandwidth = read_bandwidth(0, 0, 0);
        assert_eq!((bandwidth.buffer_bytes, bandwidth.threads), (8, 1));
        let throughput = sgemm_throughput(0, 0, 0, 0);
        assert_eq!((throughput.size, throughput.threads), (1, 1));
    }
}
