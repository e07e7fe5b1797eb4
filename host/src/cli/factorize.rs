//! `whittle factorize --task T --compare`: held-out relative output error of every method.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use whittle_host::calibrate::peak_resident_bytes;
use whittle_host::factorize::{self, Job, Method, max_useful_rank, rank_for_keep};
use whittle_host::model::InputSite;
use whittle_host::prune::{matrices, stats_to_faer};
use whittle_host::task::{Split, Task};
use whittle_runtime::MatrixKind;

use super::ModelArgs;
use super::session::{CalibrationArgs, calibrate, open_base};

const KEEPS: [f64; 3] = [0.25, 0.5, 0.75];

#[derive(Debug, Args)]
pub struct FactorizeArgs {
    /// A built-in task or a task file (.toml).
    #[arg(long)]
    task: String,
    /// Compare output-aligned, SVD, input PCA and ASVD on held-out (test-split) tokens.
    #[arg(long)]
    compare: bool,
    /// Split whose tokens measure the error (`calibration` gives the in-sample error).
    #[arg(long, default_value = "test")]
    held_out: Split,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Serialize)]
struct ErrorRow {
    matrix_type: &'static str,
    keep: f64,
    method: &'static str,
    rel_error: f64,
}

#[derive(Serialize)]
struct Report {
    task: String,
    held_out_split: String,
    calibration_tokens: u64,
    held_out_tokens: u64,
    factorize_seconds: BTreeMap<&'static str, f64>,
    peak_resident_bytes: Option<u64>,
    errors: Vec<ErrorRow>,
    output_aligned_lowest_everywhere: bool,
}

pub fn run(args: FactorizeArgs) -> anyhow::Result<()> {
    if !args.compare {
        anyhow::bail!(
            "factorize needs --compare (factorizations for pruning are built by `uniform` and `prune`)"
        );
    }
    let task = Task::resolve(&args.task)?;
    let session = open_base(&args.model)?;
    let config = *session.model.llama.config();
    let calibration = calibrate(&session, &task, &args.calibration, "calibration")?;
    let held_out = calibrate(&session, &task, &args.calibration, args.held_out.name())?;
    let calibration_stats: Vec<Vec<_>> = calibration
        .sites
        .iter()
        .map(|layer| layer.iter().map(stats_to_faer).collect())
        .collect();
    let held_out_stats: Vec<Vec<_>> = held_out
        .sites
        .iter()
        .map(|layer| {
            layer
                .iter()
                .map(|s| stats_to_faer(s).second_moment)
                .collect()
        })
        .collect();
    let mut weights = Vec::new();
    for (layer_idx, kind) in matrices(&config) {
        weights.push(whittle_host::prune::dense_weight(
            &session.model.llama,
            layer_idx,
            kind,
        )?);
    }
    let site_of = |kind: MatrixKind| InputSite::of(kind).index();
    // sums[(kind, keep index, method)] = (Σ relative error, count)
    let mut sums: BTreeMap<(MatrixKind, usize, Method), (f64, usize)> = BTreeMap::new();
    let mut factorize_seconds = BTreeMap::new();
    for method in Method::ALL {
        let jobs: Vec<Job<'_>> = matrices(&config)
            .zip(&weights)
            .map(|((layer_idx, kind), weight)| {
                let (rows, cols) = config.matrix_shape(kind);
                Job {
                    weight,
                    rows,
                    cols,
                    stats: &calibration_stats[layer_idx][site_of(kind)],
                    method,
                    r_max: max_useful_rank(rows, cols),
                }
            })
            .collect();
        let started = Instant::now();
        let results = factorize::factorize_all(&jobs);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "{}: factorized {} matrices in {seconds:.1} s",
            method.name(),
            jobs.len()
        );
        factorize_seconds.insert(method.name(), seconds);
        for (((layer_idx, kind), weight), result) in matrices(&config).zip(&weights).zip(results) {
            let factors = result?;
            let (rows, cols) = config.matrix_shape(kind);
            for (keep_idx, &keep) in KEEPS.iter().enumerate() {
                let Some(rank) = rank_for_keep(keep, rows, cols) else {
                    continue;
                };
                let held_out_c = &held_out_stats[layer_idx][site_of(kind)];
                let error = factorize::relative_output_error(weight, &factors, rank, held_out_c)?;
                let entry = sums.entry((kind, keep_idx, method)).or_default();
                entry.0 += error;
                entry.1 += 1;
            }
        }
    }
    let mut errors = Vec::new();
    let mut lowest_everywhere = true;
    println!(
        "mean relative output error on held-out ({}) tokens:",
        held_out.n_tokens
    );
    println!(
        "{:>6} {:>5} {:>15} {:>10} {:>10} {:>10}",
        "matrix", "keep", "output_aligned", "svd", "input_pca", "asvd"
    );
    for kind in MatrixKind::ALL {
        for (keep_idx, &keep) in KEEPS.iter().enumerate() {
            let mean = |method| {
                sums.get(&(kind, keep_idx, method))
                    .map(|(sum, count)| sum / *count as f64)
            };
            let Some(aligned) = mean(Method::OutputAligned) else {
                continue;
            };
            let mut line = format!("{:>6} {keep:>5.2}", kind.name());
            for method in Method::ALL {
                let value = mean(method).unwrap_or(f64::NAN);
                line.push_str(&format!(" {value:>10.4}"));
                if method != Method::OutputAligned && value < aligned {
                    lowest_everywhere = false;
                    eprintln!(
                        "note: {} beats output_aligned for {} at keep {keep}: {value:.4} < {aligned:.4}",
                        method.name(),
                        kind.name()
                    );
                }
                errors.push(ErrorRow {
                    matrix_type: kind.name(),
                    keep,
                    method: method.name(),
                    rel_error: value,
                });
            }
            println!("{line}");
        }
    }
    println!(
        "output_aligned lowest for every matrix type and keep: {}",
        if lowest_everywhere { "yes" } else { "no" }
    );
    let peak = peak_resident_bytes();
    if let Some(peak) = peak {
        println!(
            "peak resident memory: {:.2} GiB",
            peak as f64 / (1u64 << 30) as f64
        );
    }
    if args.json {
        let report = Report {
            task: task.name().to_owned(),
            held_out_split: args.held_out.to_string(),
            calibration_tokens: calibration.n_tokens,
            held_out_tokens: held_out.n_tokens,
            factorize_seconds,
            peak_resident_bytes: peak,
            errors,
            output_aligned_lowest_everywhere: lowest_everywhere,
        };
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
