//! How much of a task's unseen text a trimmed vocabulary reads as the whole one does (issue
//! 17): the vocabulary of the calibration split's prompts alone, and the share of the search
//! split's prompts, which that trim never saw, that tokenize to other pieces. The test split
//! is not read.
//!
//! `cargo run --release -p whittle-host --example vocab_coverage -- [TASK]` (default: sst2).

use whittle_host::bundle::label_token_ids;
use whittle_host::eval::prompt_ids;
use whittle_host::task::{Split, Task};
use whittle_host::vocab::VocabTrim;
use whittle_runtime::writer::synthetic_bundle_with_tables;
use whittle_runtime::{AlignedBytes, Bundle, Tokenizer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = Task::resolve(args.first().map_or("sst2", String::as_str))?;
    let base = whittle_host::model::BaseModel::open_default()?;
    let model = &base.model;
    let tables = model.tokenizer.tables()?;
    let labels = label_token_ids(&model.tokenizer, &task)?;
    let search: Vec<Vec<u32>> = task
        .examples(Split::Search)?
        .iter()
        .map(|e| prompt_ids(&model.tokenizer, &e.prompt))
        .collect::<anyhow::Result<_>>()?;
    let texts: Vec<String> = task
        .examples(Split::Search)?
        .iter()
        .map(|e| whittle_host::eval::prompt_text(&model.tokenizer, &e.prompt))
        .collect::<anyhow::Result<_>>()?;
    let trim = VocabTrim::of_splits(
        &model.tokenizer,
        &tables,
        &task,
        &[Split::Calibration],
        &labels,
    )?;
    let bytes = synthetic_bundle_with_tables(&trim.tables(&tables)?)?;
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer = Tokenizer::new(&bundle);
    let mut differ = 0;
    for (text, expected) in texts.iter().zip(&search) {
        let mut out = heapless::Vec::<u32, 4096>::new();
        tokenizer
            .encode(&[text], &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let got: Vec<u32> = out.iter().map(|&id| tokenizer.source_id(id)).collect();
        differ += usize::from(&got != expected);
    }
    println!(
        "{}: the calibration split's vocabulary keeps {} of {} tokens; {differ} of {} search prompts ({:.1}%) tokenize to other pieces with it",
        task.name(),
        trim.kept().len(),
        trim.source_vocab_size(),
        search.len(),
        100.0 * differ as f64 / search.len() as f64
    );
    Ok(())
}
