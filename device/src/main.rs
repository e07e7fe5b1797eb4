//! `whittle-device`: the tool that runs on the board itself.
//!
//! Today it reports the machine facts the cost model needs (`info`); running and benchmarking
//! bundles arrive with the bundle and runtime issues.

mod info;

use clap::{Parser, Subcommand};

/// The whittle tool for the board the model runs on.
#[derive(Debug, Parser)]
#[command(name = "whittle-device", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this machine's architecture, cores, SIMD features and memory.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info { json } => info::run(json),
    }
}
