//! The units that cost nothing to store against factor pairs at equal parameter count, per
//! matrix type (docs/RESULTS.md, `#compression`): held-out output error on every block, and
//! SST-2 test accuracy with every block's v and o, or q and k, pruned one way or the other.
//!
//! The units and the factor pairs are fitted on the calibration statistics of the first 65,536
//! counted tokens of GLUE train; the held-out statistics are those of the next tokens of the
//! same stream: the statistics of `[held-out budget]` tokens minus the default ones (both are
//! sums over a prefix of the same token stream, so the difference is exactly the later
//! tokens'). Errors are relative squared output errors `tr(E C Eᵀ) / tr(W C Wᵀ)`:
//! - value dimensions: o's output (the block's attention output), exactly, cross-head terms
//!   included ([`whittle_host::factorize::ValueProjection::error_curve_on`]);
//! - MLP neurons: down's output (the block's MLP output) after the refit;
//! - rotary pairs: q's and k's own outputs (the dropped pairs' rows; a ranking, no refit, so
//!   like the factor pairs' columns, not the attention's output);
//! - factor pairs: each matrix's own output (v, o; gate, up, down), which for v and gate/up
//!   is not the sub-block's output, so the columns are not the same quantity.
//!
//! `cargo run --release -p whittle-host --example unit_errors -- [held-out budget]
//! [error keeps] [accuracy keeps] [head examples]` (defaults 262144, `0.75,0.5,0.25`, `0.5`,
//! 4096). Prints markdown tables and one JSON line.

use faer::{Mat, MatRef};
use indicatif::ProgressBar;
use whittle_host::calibrate::{Calibration, CalibrationSettings, SiteStats, calibrate};
use whittle_host::factorize::rank_for_keep;
use whittle_host::head::LabelReading;
use whittle_host::model::{InputSite, Linear};
use whittle_host::prune::{
    Evaluator, FactorBank, RankPlan, calibrated_bank, dense_weight, reductions, stats_to_faer,
};
use whittle_host::search::{pairs_for_keep, value_width_for_keep, width_for_keep};
use whittle_host::task::{Split, Task};
use whittle_runtime::MatrixKind;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let held_out_budget: usize = args.first().map_or("262144", String::as_str).parse()?;
    let keeps = |i: usize, default: &str| -> anyhow::Result<Vec<f64>> {
        let text = args.get(i).map_or(default, String::as_str);
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Ok(s.parse()?))
            .collect()
    };
    let error_keeps = keeps(1, "0.75,0.5,0.25")?;
    let accuracy_keeps = keeps(2, "0.5")?;
    let head_examples: usize = args.get(3).map_or("4096", String::as_str).parse()?;

    let task = Task::resolve("sst2")?;
    let base = whittle_host::model::BaseModel::open_default()?;
    let progress = ProgressBar::hidden();
    let cache = whittle_boards::default_cache_dir();
    let llama = &base.model.llama;
    let config = *llama.config();
    let fitted_settings = CalibrationSettings {
        max_tokens: 65_536,
        ..CalibrationSettings::default()
    };
    if held_out_budget <= fitted_settings.max_tokens {
        anyhow::bail!(
            "the held-out budget {held_out_budget} must exceed the fitted {} tokens",
            fitted_settings.max_tokens
        );
    }
    let (bank, _) = calibrated_bank(&base, &task, &fitted_settings, &cache, 4096, &progress)?;
    let stats = |settings: &CalibrationSettings| {
        calibrate(
            &base.model,
            &base.digest,
            &task,
            settings,
            &cache,
            4096,
            &progress,
        )
    };
    eprintln!("reading the statistics");
    let fitted = stats(&fitted_settings)?;
    let longer = stats(&CalibrationSettings {
        max_tokens: held_out_budget,
        ..fitted_settings.clone()
    })?;
    let held_out = |layer_idx: usize, site: InputSite| -> anyhow::Result<Mat<f64>> {
        let site_of = |c: &Calibration| -> anyhow::Result<SiteStats> {
            c.sites
                .get(layer_idx)
                .and_then(|sites| sites.get(site.index()))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no statistics for block {layer_idx}"))
        };
        let (long, short) = (site_of(&longer)?, site_of(&fitted)?);
        let difference = SiteStats {
            dim: long.dim,
            second_moment: long
                .second_moment
                .iter()
                .zip(&short.second_moment)
                .map(|(a, b)| a - b)
                .collect(),
            abs_sum: long
                .abs_sum
                .iter()
                .zip(&short.abs_sum)
                .map(|(a, b)| a - b)
                .collect(),
            n_tokens: long.n_tokens - short.n_tokens,
        };
        Ok(stats_to_faer(&difference).second_moment)
    };
    eprintln!(
        "held out: {} tokens after the fitted {}",
        longer.n_tokens - fitted.n_tokens,
        fitted.n_tokens
    );

    let mut rows = Vec::new();
    for &keep in &error_keeps {
        let mut sums = Errors::default();
        for layer_idx in 0..config.n_layers {
            let errors = block_errors(&bank, llama, layer_idx, keep, &held_out)?;
            sums.add(&errors);
        }
        let n = config.n_layers as f64;
        let mean = sums.scaled(1.0 / n);
        eprintln!("keep {keep}: {mean:?}");
        rows.push((keep, mean));
    }
    println!(
        "| keep (parameters of the matrices) | value dims (o's output) | v pair | o pair | MLP neurons (down's output) | gate pair | up pair | down pair | rotary pairs: q | k | q pair | k pair |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (keep, e) in &rows {
        println!(
            "| {keep} | **{:.4}** | {:.4} | {:.4} | **{:.4}** | {:.4} | {:.4} | {:.4} | **{:.4}** | **{:.4}** | {:.4} | {:.4} |",
            e.values,
            e.v_pair,
            e.o_pair,
            e.neurons,
            e.gate_pair,
            e.up_pair,
            e.down_pair,
            e.pairs_q,
            e.pairs_k,
            e.q_pair,
            e.k_pair
        );
    }

    let head = Evaluator::new(&base.model, &task, Split::Test, head_examples, 4096)?
        .with_reading(LabelReading::Head, false);
    let mut accuracy = Vec::new();
    for &keep in &accuracy_keeps {
        let width = value_width_for_keep(keep, config.head_dim());
        let by_values = (0..config.n_layers).fold(RankPlan::dense(&config), |plan, layer_idx| {
            plan.with_value_width(&config, layer_idx, width)
        });
        let pairs = pairs_for_keep(keep, config.head_dim() / 2);
        let by_rotary = (0..config.n_layers).fold(RankPlan::dense(&config), |plan, layer_idx| {
            plan.with_pairs(&config, layer_idx, pairs)
        });
        let factor_pairs = |kinds: [MatrixKind; 2]| {
            RankPlan::from_keeps(&config, |_, kind| match kinds.contains(&kind) {
                true => keep,
                false => 1.0,
            })
        };
        let values = [MatrixKind::V, MatrixKind::O];
        let query_key = [MatrixKind::Q, MatrixKind::K];
        for (matrices, unit, plan) in [
            ("v and o", "value dimensions", by_values),
            ("v and o", "factor pairs", factor_pairs(values)),
            ("q and k", "rotary pairs", by_rotary),
            ("q and k", "factor pairs", factor_pairs(query_key)),
        ] {
            let pruned = bank.apply(llama, &plan)?;
            let scored = head.score(&pruned, &progress)?;
            let counted = reductions(&config, &plan, None).linear_reduction;
            eprintln!(
                "{matrices} of every block, {unit} at keep {keep}: linear reduction {counted:.4}, test {:.4}",
                scored.accuracy
            );
            accuracy.push((matrices, unit, keep, counted, scored.accuracy));
        }
    }
    println!(
        "\n| matrices of every block | unit | keep | linear reduction | test accuracy (task head) |"
    );
    println!("|---|---|---|---|---|");
    for (matrices, unit, keep, counted, test) in &accuracy {
        println!(
            "| {matrices} | {unit} | {keep} | {:.1}% | {test:.4} |",
            100.0 * counted
        );
    }
    let json = serde_json::json!({
        "held_out_tokens": longer.n_tokens - fitted.n_tokens,
        "errors": rows.iter().map(|(keep, e)| serde_json::json!({"keep": keep, "mean": format!("{e:?}")})).collect::<Vec<_>>(),
        "accuracy": accuracy.iter().map(|(matrices, unit, keep, counted, test)| serde_json::json!({"matrices": matrices, "unit": unit, "keep": keep, "linear_reduction": counted, "test_accuracy": test})).collect::<Vec<_>>(),
    });
    println!("{json}");
    Ok(())
}

/// Mean relative squared output errors of one block at one keep.
#[derive(Debug, Default, Clone, Copy)]
struct Errors {
    values: f64,
    v_pair: f64,
    o_pair: f64,
    neurons: f64,
    gate_pair: f64,
    up_pair: f64,
    down_pair: f64,
    pairs_q: f64,
    pairs_k: f64,
    q_pair: f64,
    k_pair: f64,
}

impl Errors {
    fn add(&mut self, other: &Errors) {
        self.values += other.values;
        self.v_pair += other.v_pair;
        self.o_pair += other.o_pair;
        self.neurons += other.neurons;
        self.gate_pair += other.gate_pair;
        self.up_pair += other.up_pair;
        self.down_pair += other.down_pair;
        self.pairs_q += other.pairs_q;
        self.pairs_k += other.pairs_k;
        self.q_pair += other.q_pair;
        self.k_pair += other.k_pair;
    }

    fn scaled(&self, s: f64) -> Errors {
        Errors {
            values: self.values * s,
            v_pair: self.v_pair * s,
            o_pair: self.o_pair * s,
            neurons: self.neurons * s,
            gate_pair: self.gate_pair * s,
            up_pair: self.up_pair * s,
            down_pair: self.down_pair * s,
            pairs_q: self.pairs_q * s,
            pairs_k: self.pairs_k * s,
            q_pair: self.q_pair * s,
            k_pair: self.k_pair * s,
        }
    }
}

fn block_errors(
    bank: &FactorBank,
    llama: &whittle_host::model::Llama,
    layer_idx: usize,
    keep: f64,
    held_out: &dyn Fn(usize, InputSite) -> anyhow::Result<Mat<f64>>,
) -> anyhow::Result<Errors> {
    let config = *llama.config();
    let weight = |kind: MatrixKind| -> anyhow::Result<Mat<f64>> {
        let (rows, cols) = config.matrix_shape(kind);
        let w = dense_weight(llama, layer_idx, kind)?;
        Ok(Mat::from_fn(rows, cols, |i, j| f64::from(w[i * cols + j])))
    };
    let pair_error = |kind: MatrixKind, c: MatRef<'_, f64>| -> anyhow::Result<f64> {
        let (rows, cols) = config.matrix_shape(kind);
        let w = weight(kind)?;
        let Some(rank) = rank_for_keep(keep, rows, cols) else {
            return Ok(0.0);
        };
        let Linear::LowRank { a, b } = bank.linear(layer_idx, kind, rank)? else {
            anyhow::bail!("a factor pair was expected");
        };
        let (a, b) = (to_mat(&a)?, to_mat(&b)?);
        Ok(relative_error(w.as_ref(), (&w - &b * &a).as_ref(), c))
    };
    let c_qkv = held_out(layer_idx, InputSite::Qkv)?;
    let c_o = held_out(layer_idx, InputSite::O)?;
    let c_gate_up = held_out(layer_idx, InputSite::GateUp)?;
    let c_down = held_out(layer_idx, InputSite::Down)?;

    let values = match value_width_for_keep(keep, config.head_dim()) {
        None => 0.0,
        Some(width) => {
            let Some(projection) = bank.value_projection(layer_idx) else {
                anyhow::bail!("the bank has no value projections");
            };
            projection.error_curve_on(c_o.as_ref())?[width]
        }
    };
    let neurons = match width_for_keep(keep, config.intermediate_size) {
        None => 0.0,
        Some(width) => {
            let Some(selection) = bank.neuron_selection(layer_idx) else {
                anyhow::bail!("the bank has no neuron orders");
            };
            let down = weight(MatrixKind::Down)?;
            let refit = selection.refit_down(width);
            let mut approximation = Mat::<f64>::zeros(config.hidden_size, config.intermediate_size);
            for (k, &j) in selection.kept(width).iter().enumerate() {
                for i in 0..config.hidden_size {
                    approximation[(i, j)] = f64::from(refit[i * width + k]);
                }
            }
            relative_error(
                down.as_ref(),
                (&down - &approximation).as_ref(),
                c_down.as_ref(),
            )
        }
    };
    // Rotary pairs: the rows of the dropped pairs of q (every query head, its key/value head's
    // list) and of k are the error.
    let (pairs_q, pairs_k) = match pairs_for_keep(keep, config.head_dim() / 2) {
        None => (0.0, 0.0),
        Some(pairs) => {
            let Some(order) = bank.pair_order(layer_idx) else {
                anyhow::bail!("the bank has no rotary pair orders");
            };
            let lists = order.lists(pairs);
            let n_rep = config.n_heads / config.n_kv_heads;
            let head_dim = config.head_dim();
            let dropped =
                |kind: MatrixKind, group: &dyn Fn(usize) -> usize| -> anyhow::Result<f64> {
                    let w = weight(kind)?;
                    let mut e = w.clone();
                    for r in 0..w.nrows() {
                        let (head, pair) = (r / head_dim, (r % head_dim) / 2);
                        if lists[group(head)].contains(&(pair as u16)) {
                            for j in 0..w.ncols() {
                                e[(r, j)] = 0.0;
                            }
                        }
                    }
                    Ok(relative_error(w.as_ref(), e.as_ref(), c_qkv.as_ref()))
                };
            (
                dropped(MatrixKind::Q, &|head| head / n_rep)?,
                dropped(MatrixKind::K, &|head| head)?,
            )
        }
    };
    Ok(Errors {
        pairs_q,
        pairs_k,
        q_pair: pair_error(MatrixKind::Q, c_qkv.as_ref())?,
        k_pair: pair_error(MatrixKind::K, c_qkv.as_ref())?,
        values,
        v_pair: pair_error(MatrixKind::V, c_qkv.as_ref())?,
        o_pair: pair_error(MatrixKind::O, c_o.as_ref())?,
        neurons,
        gate_pair: pair_error(MatrixKind::Gate, c_gate_up.as_ref())?,
        up_pair: pair_error(MatrixKind::Up, c_gate_up.as_ref())?,
        down_pair: pair_error(MatrixKind::Down, c_down.as_ref())?,
    })
}

/// `tr(E C Eᵀ) / tr(W C Wᵀ)`.
fn relative_error(w: MatRef<'_, f64>, e: MatRef<'_, f64>, c: MatRef<'_, f64>) -> f64 {
    let quadratic = |m: MatRef<'_, f64>| -> f64 {
        let mc = m * c;
        (0..m.nrows())
            .map(|i| (0..m.ncols()).map(|j| mc[(i, j)] * m[(i, j)]).sum::<f64>())
            .sum()
    };
    quadratic(e) / quadratic(w)
}

fn to_mat(t: &candle_core::Tensor) -> anyhow::Result<Mat<f64>> {
    let (rows, cols) = t.dims2()?;
    let values = t.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Mat::from_fn(rows, cols, |i, j| {
        f64::from(values[i * cols + j])
    }))
}
