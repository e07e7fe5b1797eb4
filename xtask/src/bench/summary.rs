//! What `bench-compare` reports: medians, ratios, the bandwidth fraction and the cost model's
//! errors, one type that both the table and `--json` print. Fields are in alphabetical order,
//! the order the JSON has always had.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use whittle_boards::BenchPrediction;
use whittle_boards::stats::{least, median};

use super::{CompareArgs, Contender, Samples};

/// The whole comparison (`--json` prints it on one line).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Per runtime bundle, its decode against the memory-bandwidth ceiling.
    bandwidth: BTreeMap<&'static str, Bandwidth>,
    configurations: Vec<Configuration>,
    cost_model: Vec<CostRow>,
    /// The largest relative error of a prediction; `null` when no prediction was made.
    cost_model_max_error: Option<f64>,
    cost_model_max_error_to_cpu_time: Option<f64>,
    decode_tokens: usize,
    dense_bundle: String,
    /// The ratios at the largest thread count.
    #[serde(flatten)]
    ratios: Ratios,
    prefill_tokens: usize,
    pruned_bundle: Option<String>,
    ratios_by_threads: Vec<ThreadRatios>,
    rounds: usize,
    threads_for_ratios: usize,
    /// Text in to label out over the SST-2 test sentences, both engines.
    time_to_label: Option<super::label::TimeToLabel>,
    /// llama.cpp's median time to label ÷ whittle's (dense bundle).
    time_to_label_ratio: Option<f64>,
}

impl Summary {
    /// Adds the time-to-label comparison.
    pub(super) fn set_time_to_label(&mut self, label: super::label::TimeToLabel) {
        self.time_to_label_ratio = (label.whittle_median_ms > 0.0)
            .then(|| label.llama_median_ms / label.whittle_median_ms);
        self.time_to_label = Some(label);
    }
}

/// Runtime ÷ llama.cpp throughput; `null` where either side is missing. Unprefixed: the q8
/// bundles; `q4_`: the same bundles packed q4.
#[derive(Debug, Serialize)]
struct Ratios {
    dense_decode_ratio: Option<f64>,
    prefill_ratio: Option<f64>,
    pruned_decode_ratio: Option<f64>,
    pruned_prefill_ratio: Option<f64>,
    q4_dense_decode_ratio: Option<f64>,
    q4_prefill_ratio: Option<f64>,
    q4_pruned_decode_ratio: Option<f64>,
    q4_pruned_prefill_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ThreadRatios {
    #[serde(flatten)]
    ratios: Ratios,
    threads: usize,
}

/// One engine at one thread count.
#[derive(Debug, Serialize)]
struct Configuration {
    decode_tok_per_cpu_s: f64,
    decode_tok_s: f64,
    engine: &'static str,
    predicted: Option<BenchPrediction>,
    prefill_tok_per_cpu_s: f64,
    prefill_tok_s: f64,
    runs: usize,
    threads: usize,
}

/// The cost model against one runtime bundle in one phase.
#[derive(Debug, Serialize)]
struct CostRow {
    bundle: &'static str,
    /// The fastest round at the faster thread count (the profile keeps its fastest runs).
    measured_ms_per_token: f64,
    measured_threads: usize,
    one_thread_cpu_ms_per_token: f64,
    phase: &'static str,
    predicted_ms_per_token: f64,
    relative_error: f64,
    relative_error_to_cpu_time: f64,
}

#[derive(Debug, Serialize)]
struct Bandwidth {
    bandwidth_bytes_per_s: f64,
    bytes_read_per_token: f64,
    ceiling_tok_s: f64,
    decode_tok_s: f64,
    fraction: f64,
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// `a / b` when both are positive.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

/// `(predicted - measured) / measured`; 0 without a measurement.
fn relative_error(predicted: f64, measured: f64) -> f64 {
    if measured > 0.0 {
        (predicted - measured) / measured
    } else {
        0.0
    }
}

/// Medians, ratios, the bandwidth fraction and the cost model's errors.
pub(super) fn summarize(
    args: &CompareArgs,
    samples: &[((Contender, usize), Samples)],
    dense: &Path,
    pruned: Option<&Path>,
) -> Summary {
    let find = |engine: Contender, threads: usize| {
        samples
            .iter()
            .find(|(k, _)| *k == (engine, threads))
            .map(|(_, s)| s)
    };
    let configurations = samples
        .iter()
        .map(|((engine, threads), s)| Configuration {
            decode_tok_per_cpu_s: rate(args.decode, median(&s.times.decode_cpu_s)),
            decode_tok_s: rate(args.decode, median(&s.times.decode_s)),
            engine: engine.key(),
            predicted: s.predicted.clone(),
            prefill_tok_per_cpu_s: rate(args.prefill, median(&s.times.prefill_cpu_s)),
            prefill_tok_s: rate(args.prefill, median(&s.times.prefill_s)),
            runs: s.times.decode_s.len(),
            threads: *threads,
        })
        .collect();
    // Tokens per second of `engine` on `threads`, from `statistic` of its rounds' times.
    let tok_s_by = |statistic: fn(&[f64]) -> f64, engine: Contender, threads: usize, prefill| {
        find(engine, threads).map_or(0.0, |s| {
            if prefill {
                rate(args.prefill, statistic(&s.times.prefill_s))
            } else {
                rate(args.decode, statistic(&s.times.decode_s))
            }
        })
    };
    let tok_s = |engine, threads, prefill| tok_s_by(median, engine, threads, prefill);
    let ratios_at = |threads: usize| {
        let against_llama = |engine: Contender, prefill: bool| {
            ratio(
                tok_s(engine, threads, prefill),
                tok_s(Contender::Llama, threads, prefill),
            )
        };
        Ratios {
            dense_decode_ratio: against_llama(Contender::Dense, false),
            prefill_ratio: against_llama(Contender::Dense, true),
            pruned_decode_ratio: against_llama(Contender::Pruned, false),
            pruned_prefill_ratio: against_llama(Contender::Pruned, true),
            q4_dense_decode_ratio: against_llama(Contender::DenseQ4, false),
            q4_prefill_ratio: against_llama(Contender::DenseQ4, true),
            q4_pruned_decode_ratio: against_llama(Contender::PrunedQ4, false),
            q4_pruned_prefill_ratio: against_llama(Contender::PrunedQ4, true),
        }
    };
    // The fastest round: the cost model's profile keeps its fastest runs (the machine at its
    // quietest), so its predictions are checked against the fastest rounds, not the medians.
    let best_tok_s = |engine, threads, prefill| tok_s_by(least, engine, threads, prefill);
    let top = args.threads.iter().copied().max().unwrap_or(1);
    // The cost model against the runtime's faster thread count (the host profile keeps the
    // better of its one- and all-thread figures too).
    let mut cost_model = Vec::new();
    let mut bandwidth = BTreeMap::new();
    for engine in Contender::ALL
        .into_iter()
        .filter(|&e| e != Contender::Llama)
    {
        let Some(predicted) = args
            .threads
            .iter()
            .find_map(|&t| find(engine, t)?.predicted.as_ref())
        else {
            continue;
        };
        for (phase, prefill, predicted_ms) in [
            ("decode", false, predicted.decode_ms_per_token),
            ("prefill", true, predicted.prefill_ms_per_token),
        ] {
            let best = args
                .threads
                .iter()
                .map(|&t| (t, best_tok_s(engine, t, prefill)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((1, 0.0));
            let measured_ms = if best.1 > 0.0 { 1e3 / best.1 } else { 0.0 };
            // One thread's CPU time: the time the work takes when it has a core to itself.
            let cpu_ms = find(engine, 1).map_or(0.0, |s| {
                let (cpu, n) = if prefill {
                    (median(&s.times.prefill_cpu_s), args.prefill)
                } else {
                    (median(&s.times.decode_cpu_s), args.decode)
                };
                if n > 0 { 1e3 * cpu / n as f64 } else { 0.0 }
            });
            cost_model.push(CostRow {
                bundle: engine.key(),
                measured_ms_per_token: measured_ms,
                measured_threads: best.0,
                one_thread_cpu_ms_per_token: cpu_ms,
                phase,
                predicted_ms_per_token: predicted_ms,
                relative_error: relative_error(predicted_ms, measured_ms),
                relative_error_to_cpu_time: relative_error(predicted_ms, cpu_ms),
            });
        }
        let bytes = predicted.bytes_read_per_token as f64;
        let bytes_per_s = predicted.bandwidth_bytes_per_s as f64;
        let ceiling = if bytes > 0.0 {
            bytes_per_s / bytes
        } else {
            0.0
        };
        let best_decode = args
            .threads
            .iter()
            .map(|&t| tok_s(engine, t, false))
            .fold(0.0, f64::max);
        bandwidth.insert(
            engine.key(),
            Bandwidth {
                bandwidth_bytes_per_s: bytes_per_s,
                bytes_read_per_token: bytes,
                ceiling_tok_s: ceiling,
                decode_tok_s: best_decode,
                fraction: if ceiling > 0.0 {
                    best_decode / ceiling
                } else {
                    0.0
                },
            },
        );
    }
    let max_error = |error: fn(&CostRow) -> f64| {
        cost_model
            .iter()
            .map(|row| error(row).abs())
            .reduce(f64::max)
    };
    Summary {
        cost_model_max_error: max_error(|row| row.relative_error),
        cost_model_max_error_to_cpu_time: max_error(|row| row.relative_error_to_cpu_time),
        bandwidth,
        configurations,
        cost_model,
        decode_tokens: args.decode,
        dense_bundle: dense.display().to_string(),
        ratios: ratios_at(top),
        prefill_tokens: args.prefill,
        pruned_bundle: pruned.map(|p| p.display().to_string()),
        ratios_by_threads: args
            .threads
            .iter()
            .map(|&threads| ThreadRatios {
                ratios: ratios_at(threads),
                threads,
            })
            .collect(),
        rounds: args.repeats,
        threads_for_ratios: top,
        time_to_label: None,
        time_to_label_ratio: None,
    }
}

/// Prints the summary as tables.
pub(super) fn print(args: &CompareArgs, s: &Summary) {
    println!(
        "\nprefill {} tokens, greedy decode {} tokens; medians of {} rounds (tok/s, wall clock; \
         tok per CPU-second in brackets)",
        args.prefill, args.decode, args.repeats
    );
    println!(
        "{:<20} {:>7} {:>20} {:>20}",
        "engine", "threads", "prefill tok/s", "decode tok/s"
    );
    for c in &s.configurations {
        println!(
            "{:<20} {:>7} {:>10.1} [{:>7.1}] {:>10.1} [{:>7.1}]",
            c.engine,
            c.threads,
            c.prefill_tok_s,
            c.prefill_tok_per_cpu_s,
            c.decode_tok_s,
            c.decode_tok_per_cpu_s,
        );
    }
    let shown = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"));
    println!("\nratios (runtime ÷ llama.cpp):");
    for r in &s.ratios_by_threads {
        println!(
            "  {} thread(s): q8: dense decode {}, pruned decode {}, dense prefill {}, pruned prefill {}; q4: dense decode {}, pruned decode {}, dense prefill {}, pruned prefill {}",
            r.threads,
            shown(r.ratios.dense_decode_ratio),
            shown(r.ratios.pruned_decode_ratio),
            shown(r.ratios.prefill_ratio),
            shown(r.ratios.pruned_prefill_ratio),
            shown(r.ratios.q4_dense_decode_ratio),
            shown(r.ratios.q4_pruned_decode_ratio),
            shown(r.ratios.q4_prefill_ratio),
            shown(r.ratios.q4_pruned_prefill_ratio),
        );
    }
    println!(
        "\ncost model (host profile, its fastest runs) against the runtime (fastest round, faster thread count):"
    );
    if s.cost_model.is_empty() {
        println!(
            "  no predictions: the host profile could not be read (`whittle-device profile --install` measures it)"
        );
    }
    for row in &s.cost_model {
        println!(
            "  {:<7} {:<8} predicted {:>7.3} ms/token, measured {:>7.3} ({} thr), error {:+.0}%; 1-thread CPU time {:>7.3}, error {:+.0}%",
            row.bundle,
            row.phase,
            row.predicted_ms_per_token,
            row.measured_ms_per_token,
            row.measured_threads,
            100.0 * row.relative_error,
            row.one_thread_cpu_ms_per_token,
            100.0 * row.relative_error_to_cpu_time,
        );
    }
    if let (Some(t), Some(ratio)) = (&s.time_to_label, s.time_to_label_ratio) {
        println!(
            "\ntime to label ({} SST-2 test sentences, {} thread(s)): whittle {:.1} ms ({} prompt tokens run), llama.cpp {:.1} ms ({} tokens): {ratio:.2}x; labels agree on {:.3}",
            t.sentences,
            t.threads,
            t.whittle_median_ms,
            t.whittle_median_tokens_run,
            t.llama_median_ms,
            t.llama_median_tokens,
            t.label_agreement
        );
    }
    for (key, b) in &s.bandwidth {
        println!(
            "  {key}: {:.1} MB read per token at {:.1} GB/s: ceiling {:.0} tok/s, decode {:.1} tok/s = {:.0}% of it",
            b.bytes_read_per_token / 1e6,
            b.bandwidth_bytes_per_s / 1e9,
            b.ceiling_tok_s,
            b.decode_tok_s,
            100.0 * b.fraction,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Timings;

    fn args() -> CompareArgs {
        CompareArgs {
            prune_dir: None,
            pruned_bundle: None,
            repeats: 1,
            prefill: 4,
            decode: 2,
            threads: vec![1],
            repack: false,
            dense_only: true,
            label_sentences: 0,
            model: None,
            json: true,
        }
    }

    fn samples(predicted: Option<BenchPrediction>) -> Vec<((Contender, usize), Samples)> {
        let times = || Timings {
            prefill_s: vec![0.04],
            decode_s: vec![0.02],
            prefill_cpu_s: vec![0.04],
            decode_cpu_s: vec![0.02],
        };
        let mut dense = Samples::default();
        dense.add(times(), predicted);
        let mut llama = Samples::default();
        llama.add(times(), None);
        vec![
            ((Contender::Dense, 1), dense),
            ((Contender::Llama, 1), llama),
        ]
    }

    /// Without predictions the error is absent (`null`), never a perfect 0.
    #[test]
    fn no_prediction_reports_no_error() {
        let summary = summarize(&args(), &samples(None), Path::new("d.wbundle"), None);
        let json = serde_json::to_value(&summary).expect("serializes");
        assert_eq!(json["cost_model"], serde_json::json!([]));
        assert!(json["cost_model_max_error"].is_null(), "{json}");
        assert!(json["cost_model_max_error_to_cpu_time"].is_null(), "{json}");
    }

    /// With a prediction off by half the measured time, the error says so.
    #[test]
    fn a_wrong_prediction_is_an_error() {
        let predicted = BenchPrediction {
            board: "host".to_owned(),
            bandwidth_bytes_per_s: 10_000_000_000,
            bytes_read_per_token: 100_000_000,
            decode_ms_per_token: 15.0,
            prefill_ms_per_token: 10.0,
        };
        let summary = summarize(
            &args(),
            &samples(Some(predicted)),
            Path::new("d.wbundle"),
            None,
        );
        let json = serde_json::to_value(&summary).expect("serializes");
        let error = json["cost_model_max_error"].as_f64().expect("an error");
        assert!(error > 0.2, "{json}");
    }

    /// The check sets the prediction beside the fastest round, as the profile keeps its
    /// fastest runs: two slow rounds of three do not make a right prediction wrong.
    #[test]
    fn the_check_compares_with_the_fastest_round() {
        let args = CompareArgs {
            repeats: 3,
            ..args()
        };
        let mut dense = Samples::default();
        for slow in [1.0, 2.0, 2.0] {
            let times = Timings {
                prefill_s: vec![0.04 * slow],
                decode_s: vec![0.02 * slow],
                prefill_cpu_s: vec![0.04 * slow],
                decode_cpu_s: vec![0.02 * slow],
            };
            let predicted = BenchPrediction {
                board: "host".to_owned(),
                bandwidth_bytes_per_s: 10_000_000_000,
                bytes_read_per_token: 100_000_000,
                decode_ms_per_token: 10.0,
                prefill_ms_per_token: 10.0,
            };
            dense.add(times, Some(predicted));
        }
        let samples = vec![((Contender::Dense, 1), dense)];
        let summary = summarize(&args, &samples, Path::new("d.wbundle"), None);
        let json = serde_json::to_value(&summary).expect("serializes");
        let error = json["cost_model_max_error"].as_f64().expect("an error");
        assert!(error.abs() < 1e-9, "{json}");
        // The throughput keeps the median: 2 tokens in 0.04 s.
        assert_eq!(json["configurations"][0]["decode_tok_s"], 50.0, "{json}");
    }
}
