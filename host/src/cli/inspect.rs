//! `whittle inspect BUNDLE`: validates a bundle and prints its header and provenance.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use whittle_runtime::format::{HeadRef, LinearRef};
use whittle_runtime::{AlignedBytes, Bundle};

use super::keygen::read_public_key;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Require a signature that verifies with this public key (KEY.pub).
    #[arg(long, value_name = "KEY.pub")]
    verify: Option<PathBuf>,
    /// Context length for the arena figure.
    #[arg(long, default_value_t = 512)]
    context: usize,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}; check the path", args.bundle.display()))?;
    let bytes = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(bytes.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.bundle.display()))?;
    if let Some(key) = &args.verify {
        bundle
            .verify(&read_public_key(key)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.bundle.display()))?;
    }
    let header = bundle.header();
    let config = &header.config;
    let p = &header.provenance;
    let mut low_rank = 0;
    for layer_idx in 0..config.n_layers {
        let layer = bundle
            .layer(layer_idx)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        low_rank += layer
            .linears
            .iter()
            .filter(|l| matches!(l, LinearRef::LowRank { .. }))
            .count();
    }
    println!(
        "bundle      {} ({} bytes, blob {} bytes)",
        args.bundle.display(),
        bundle.len_bytes(),
        bundle.blob_len()
    );
    println!(
        "format      version {}, {}",
        whittle_runtime::format::FORMAT_VERSION,
        if bundle.is_signed() {
            if args.verify.is_some() {
                "signed (verified)"
            } else {
                "signed (not verified; pass --verify KEY.pub)"
            }
        } else {
            "unsigned"
        }
    );
    println!(
        "model       {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {}",
        config.n_layers,
        config.hidden_size,
        config.intermediate_size,
        config.n_heads,
        config.n_kv_heads,
        config.vocab_size
    );
    let source_vocab = header.tokenizer.source_vocab_size as usize;
    if source_vocab != config.vocab_size {
        println!(
            "vocabulary  trimmed to the task: {} of the model's {source_vocab} tokens",
            config.vocab_size
        );
    }
    println!(
        "weights     {}, {} of {} matrices low-rank",
        header.dtype.name(),
        low_rank,
        config.n_prunable_matrices()
    );
    println!(
        "head        {}",
        match header.head {
            HeadRef::Tied => "tied to the embedding".to_owned(),
            HeadRef::Full(_) => "full".to_owned(),
            HeadRef::Labels(m) => format!("task-pruned ({} label rows)", m.rows),
        }
    );
    println!("task        {} ({:?})", header.task.name, header.task.kind);
    for label in &header.task.labels {
        println!(
            "  label     {:?}: token {}, bias {:+.4}",
            label.name, label.token_id, label.bias
        );
    }
    match (header.prefix, bundle.prefix()) {
        (Some(stored), Some(prefix)) => println!(
            "prefix      {} prompt tokens stored with their keys and values ({} bytes; {} of the prefix's {} bytes, the rest runs with the input)",
            prefix.tokens.len(),
            u64::from(stored.keys.len)
                + u64::from(stored.values.len)
                + u64::from(stored.tokens.len),
            stored.text_len,
            header.task.prompt_prefix.len()
        ),
        _ => println!("prefix      none stored: every input runs the whole prompt"),
    }
    println!(
        "release     {}; self-check {}",
        p.sequence,
        match p.check {
            Some(check) => format!(
                "{:?} → {} (margin {:.3})",
                check.input, check.expected, check.margin
            ),
            None => "none".to_owned(),
        }
    );
    println!(
        "arena       {} bytes for a context of {}",
        bundle.arena_bytes(args.context),
        args.context
    );
    println!("provenance  model sha256 {}", p.model_digest);
    if !p.model_licence.is_empty() {
        println!("            model licence {}", p.model_licence);
    }
    if !p.source.is_empty() {
        println!(
            "            pruned from {} (factors {}, genome {})",
            p.source, p.factors_digest, p.genome_digest
        );
    }
    println!(
        "            task {}, board {}, ε {:?}, seed {:?}",
        p.task,
        if p.board.is_empty() { "-" } else { p.board },
        p.epsilon,
        p.seed
    );
    println!(
        "            accuracy dense {:?}, pruned {:?}; whittle {}",
        p.dense_accuracy, p.pruned_accuracy, p.tool_version
    );
    Ok(())
}
