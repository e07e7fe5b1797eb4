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
use whittle_host::fetch::{MODEL_DIR_ENV, default_model_dir, ensure_default_model};
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
    /// Download and verify the default model (SmolLM2-135M-Instruct) into the cache.
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
    /// A local Llama-family GGUF file, or a Hugging Face checkpoint folder (config.json,
    /// model.safetensors or its shards, tokenizer.json; LlamaForCausalLM); default:
    /// SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long, value_name = "PATH")]
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

    /// The model file: the given path, or the default model, fetched if missing.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(path) => Ok(path.clone()),
            None => Ok(ensure_default_model(&self.model_dir())?),
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
