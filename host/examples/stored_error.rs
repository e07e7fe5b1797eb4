//! Where a bundle's rounding moves the label logits of a pruned model (issue 16: pruned q8
//! agreed with f32 on only 0.92 of SST-2's test sentences): the host model with one group of
//! matrices as the bundle stores them ([`whittle_host::bundle::stored_linear`], the task head
//! through [`whittle_host::bundle::as_stored`]), the rest f32, on the search split (never the
//! test split), against the f32 model: largest |Δ label logit| and flipped predictions; then
//! the label margins and, per matrix type, the weights' largest |value| over their RMS. The
//! first row is the bundle's own rounding ([`whittle_host::bundle::StoredModel`]).
//!
//! `cargo run --release -p whittle-host --example stored_error -- PRUNE_DIR [q8|q4] [N]
//! [blocks|embedding]` (defaults: q8, 200 examples; `blocks` adds one row per block, `embedding`
//! shows only the embedding's q4 rounding as an input table; N = 0 only the weights).

use candle_core::Tensor;
use whittle_host::bundle::{
    InputMoments, STORAGE_SCALE_EXAMPLES, StoredModel, as_stored, for_storage, stored_linear,
};
use whittle_host::eval::prompt_ids;
use whittle_host::model::{Batch, Linear, Llama, LoadedModel};
use whittle_host::prune::{PruneFolder, matrices};
use whittle_host::task::{Split, Task};
use whittle_runtime::MatrixKind;
use whittle_runtime::format::Dtype;

fn logits(model: &LoadedModel, rows: &Tensor, ids: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(16) {
        let batch = Batch::new(chunk, model.tokenizer.pad_id(), model.llama.device())?;
        let last = model.llama.last_hidden(&batch)?;
        out.extend(last.matmul(&rows.t()?)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

fn prediction(logits: &[f32], bias: &[f32]) -> usize {
    let mut best = 0;
    for i in 0..logits.len() {
        if logits[i] + bias[i] > logits[best] + bias[best] {
            best = i;
        }
    }
    best
}

fn compare(reference: &[Vec<f32>], other: &[Vec<f32>], bias: &[f32]) -> (f32, usize) {
    let mut max = 0f32;
    let mut flips = 0;
    for (r, o) in reference.iter().zip(other) {
        for (a, b) in r.iter().zip(o) {
            max = max.max((a - b).abs());
        }
        flips += usize::from(prediction(r, bias) != prediction(o, bias));
    }
    (max, flips)
}

fn with_stored(
    llama: &Llama,
    dtype: Dtype,
    pick: impl Fn(usize, MatrixKind) -> bool,
) -> anyhow::Result<Llama> {
    let mut out = llama.clone();
    for (layer_idx, kind) in matrices(llama.config()) {
        if !pick(layer_idx, kind) {
            continue;
        }
        if let Some(linear) = llama.linear(layer_idx, kind) {
            out.set_linear(layer_idx, kind, stored_linear(linear, dtype)?)?;
        }
    }
    Ok(out)
}

fn peak_over_rms(t: &Tensor) -> anyhow::Result<f32> {
    let max = t.abs()?.max_all()?.to_scalar::<f32>()?;
    let rms = t.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(max / rms)
}

/// `‖stored(W) − W‖ / ‖W‖`.
fn relative_error(t: &Tensor, dtype: Dtype) -> anyhow::Result<f32> {
    let stored = as_stored(t, dtype)?;
    let num = (stored - t)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let den = t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(num / den)
}

/// The largest column's peak |value| over the median column's: large when a few input
/// dimensions carry the outliers (every row's block there shares one coarse scale).
fn column_concentration(t: &Tensor) -> anyhow::Result<f32> {
    let mut peaks = t.abs()?.max(0)?.to_vec1::<f32>()?;
    peaks.sort_by(f32::total_cmp);
    Ok(peaks[peaks.len() - 1] / peaks[peaks.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map_or("out/sst2-jetson-orin-nano-8gb", String::as_str);
    let dtype = match args.get(1).map_or("q8", String::as_str) {
        "q8" => Dtype::Q8,
        "q4" => Dtype::Q4,
        other => anyhow::bail!("dtype {other}: use q8 or q4"),
    };
    let n: usize = args.get(2).map_or("200", String::as_str).parse()?;
    let base = whittle_host::model::BaseModel::open_default()?;
    let folder = PruneFolder::open(std::path::Path::new(dir))?;
    let task = Task::resolve("sst2")?;
    let head = folder
        .head()?
        .ok_or_else(|| anyhow::anyhow!("{dir} has no task head"))?;
    let model = base
        .model
        .with_llama(folder.apply(&base.model.llama, base.model.llama.device())?);
    let n_layers = model.llama.config().n_layers;
    println!(
        "| matrix type | low-rank | max |w| / rms (dense or a, b) | relative {} error (worst block) | worst column peak / median column peak |",
        dtype.name()
    );
    println!("|---|---|---|---|---|");
    for kind in MatrixKind::ALL {
        let mut low_rank = 0;
        let mut peaks = (0f32, 0f32, 0f32);
        let mut worst = (0f32, 0usize, 0f32);
        for layer in 0..n_layers {
            match model.llama.linear(layer, kind) {
                Some(Linear::Dense { weight }) => {
                    peaks.0 = peaks.0.max(peak_over_rms(weight)?);
                    let error = relative_error(weight, dtype)?;
                    if error > worst.0 {
                        worst = (error, layer, column_concentration(weight)?);
                    }
                }
                Some(Linear::LowRank { a, b }) => {
                    low_rank += 1;
                    peaks.1 = peaks.1.max(peak_over_rms(a)?);
                    peaks.2 = peaks.2.max(peak_over_rms(b)?);
                }
                None => {}
            }
        }
        println!(
            "| {} | {low_rank}/{n_layers} | {:.1} ({:.1}, {:.1}) | {:.4} (block {}) | {:.1} |",
            kind.name(),
            peaks.0,
            peaks.1,
            peaks.2,
            worst.0,
            worst.1,
            worst.2
        );
    }
    println!(
        "task head rows: max |w| / rms {:.1}",
        peak_over_rms(&head.rows(base.model.llama.device())?)?
    );
    if n == 0 {
        return Ok(());
    }
    let mut examples = task.examples(Split::Search)?;
    examples.truncate(n);
    let ids = examples
        .iter()
        .map(|e| prompt_ids(&model.tokenizer, &e.prompt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = model.llama.device().clone();
    let rows = head.rows(&device)?;
    let bias = head.bias.clone();
    let reference = logits(&model, &rows, &ids)?;

    let mut margins: Vec<f32> = reference
        .iter()
        .map(|l| ((l[0] + bias[0]) - (l[1] + bias[1])).abs())
        .collect();
    margins.sort_by(f32::total_cmp);
    println!(
        "{} search examples, {}: label margin |Δ(logit+bias)| min {:.3}, 5% {:.3}, median {:.3}; share under 0.1: {:.3}, under 0.5: {:.3}",
        ids.len(),
        dtype.name(),
        margins[0],
        margins[margins.len() / 20],
        margins[margins.len() / 2],
        margins.iter().filter(|&&m| m < 0.1).count() as f64 / margins.len() as f64,
        margins.iter().filter(|&&m| m < 0.5).count() as f64 / margins.len() as f64,
    );
    println!("| stored as {} | max abs Δ logit | flips |", dtype.name());
    println!("|---|---|---|");
    let report = |name: &str, llama: Llama, rows: &Tensor| -> anyhow::Result<()> {
        let other = logits(&model.with_llama(llama), rows, &ids)?;
        let (max, flips) = compare(&reference, &other, &bias);
        println!("| {name} | {max:.4} | {flips} |");
        Ok(())
    };
    if args.get(3).is_some_and(|a| a == "embedding") {
        // The embedding as an input table only (the task head reads the label rows): at q4
        // alone, and with every block matrix as a q8 bundle stores it.
        let embedding = as_stored(model.llama.embedding(), Dtype::Q4)?;
        report(
            "the embedding at q4 (input lookups only)",
            model.llama.clone().with_embedding(embedding.clone())?,
            &rows,
        )?;
        let stored = StoredModel::new(&model, &task, dtype)?;
        report(
            &format!("every matrix as a {} bundle stores it", dtype.name()),
            stored.llama.clone(),
            &rows,
        )?;
        report(
            &format!(
                "every matrix as a {} bundle stores it, the embedding at q4",
                dtype.name()
            ),
            stored.llama.with_embedding(embedding)?,
            &rows,
        )?;
        return Ok(());
    }
    // What the packer stores: the model rescaled for storage, every matrix rounded, the
    // label rows f32; then each part alone, without the rescaling, to show where the error
    // came from.
    let stored = StoredModel::new(&model, &task, dtype)?;
    report(
        "every matrix as the bundle stores it: rescaled, compensated rounding",
        stored.llama,
        &rows,
    )?;
    let power = InputMoments::measure(&model, &task, STORAGE_SCALE_EXAMPLES)?;
    let scaled = for_storage(&model.llama, dtype, Some(&power))?;
    report(
        "every matrix, rescaled, rounded to nearest",
        with_stored(&scaled, dtype, |_, _| true)?,
        &rows,
    )?;
    for kind in MatrixKind::ALL {
        report(
            &format!("{}, rescaled", kind.name()),
            with_stored(&scaled, dtype, |_, k| k == kind)?,
            &rows,
        )?;
    }
    let head_rows = as_stored(&rows, dtype)?;
    report(
        "the label rows only (not rescaled)",
        model.llama.clone(),
        &head_rows,
    )?;
    for kind in MatrixKind::ALL {
        report(
            &format!("{} (not rescaled)", kind.name()),
            with_stored(&model.llama, dtype, |_, k| k == kind)?,
            &rows,
        )?;
    }
    let all = with_stored(&model.llama, dtype, |_, _| true)?;
    report("every matrix (not rescaled)", all.clone(), &rows)?;
    report(
        "every matrix and the label rows (not rescaled)",
        all,
        &head_rows,
    )?;
    if args.get(3).is_some_and(|a| a == "blocks") {
        for layer in 0..n_layers {
            report(
                &format!("block {layer} (not rescaled)"),
                with_stored(&model.llama, dtype, |l, _| l == layer)?,
                &rows,
            )?;
        }
    }
    Ok(())
}
