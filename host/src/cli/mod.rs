//! One module per subcommand.

mod eval;
mod factorize;
mod fetch;
mod inspect;
mod keygen;
mod pack;
mod parity;
mod prune;
mod session;
mod sweep;
mod uniform;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use whittle_host::fetch::{
    MODEL_DIR_ENV, default_model_dir, ensure_default_model, ensure_model, known_model,
};
use whittle_host::progress::progress_bar;

#[derive(Debug, Parser)]
#[command(
    name = "whittle",
    version,
    about = "Shrink an LLM to what one task needs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download and verify a model (default SmolLM2-135M-Instruct; `--model gemma3-270m`) into the cache.
    FetchModel(fetch::FetchArgs),
    /// Evaluate the dense model on one split of a task.
    Eval(eval::EvalArgs),
    /// Compare factorization methods by held-out output error (`--compare`).
    Factorize(factorize::FactorizeArgs),
    /// The uniform baseline: smallest single keep fraction within ε of dense accuracy.
    Uniform(uniform::UniformArgs),
    /// Accuracy against a uniform keep fraction for several methods, as an SVG figure.
    Sweep(sweep::SweepArgs),
    /// Board-aware genetic search for a rank per matrix; writes the pruned model and reports.
    Prune(prune::PruneArgs),
    /// Pack a bundle from a prune folder (or the dense model): dtype, head, signature.
    Pack(pack::PackArgs),
    /// Validate a bundle and print its header and provenance.
    Inspect(inspect::InspectArgs),
    /// Make an ed25519 signing key for `pack --sign`.
    Keygen(keygen::KeygenArgs),
    /// Compare the runtime with the host model on the task's test split.
    Parity(parity::ParityArgs),
}

/// Which model to use and where it runs.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A model by name, fetched on first use (`smollm2-135m`, the default, or `gemma3-270m`),
    /// a local GGUF file (architecture llama or gemma3), or a Hugging Face checkpoint folder
    /// (config.json, model.safetensors or its shards, tokenizer.json or Gemma's
    /// tokenizer.model; LlamaForCausalLM, Qwen2ForCausalLM or Gemma3ForCausalLM).
    #[arg(long, value_name = "NAME|PATH")]
    model: Option<PathBuf>,
    /// Cache folder of the default model [default: $WHITTLE_MODEL_DIR or ~/.cache/whittle/models].
    #[arg(long, value_name = "DIR", env = MODEL_DIR_ENV)]
    model_dir: Option<PathBuf>,
    /// Run on CUDA device 0 (builds with `--features cuda` only).
    #[arg(long)]
    cuda: bool,
}

impl ModelArgs {
    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone().unwrap_or_else(default_model_dir)
    }

    /// A short name of a model other than the default (`gemma3-270m`, or a file's or folder's
    /// name), for default output folders.
    pub fn slug(&self) -> Option<String> {
        let model = self.model.as_deref()?;
        let name = model.file_stem()?.to_str()?;
        match known_model(name) {
            Some(known) if std::ptr::eq(known, &whittle_host::fetch::SMOLLM2_135M) => None,
            _ => Some(name.to_owned()),
        }
    }

    /// The model file: a known model by name (fetched if missing), the given path, or the
    /// default model.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        let known = self
            .model
            .as_deref()
            .filter(|path| !path.exists())
            .and_then(|path| path.to_str())
            .and_then(known_model);
        match (&self.model, known) {
            (_, Some(model)) => Ok(ensure_model(&self.model_dir(), model)?),
            (Some(path), None) => Ok(path.clone()),
            (None, None) => Ok(ensure_default_model(&self.model_dir())?),
        }
    }
}

pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::FetchModel(args) => fetch::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Factorize(args) => factorize::run(args),
        Command::Uniform(args) => uniform::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Pack(args) => pack::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Parity(args) => parity::run(args),
    }
}
