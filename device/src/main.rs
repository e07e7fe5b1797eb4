//! `whittle-device`: the tool that runs on the board itself.
//!
//! It reports the machine facts a board profile records (`info`), measures the machine into
//! the `host` board profile (`profile`), lists the board profiles the cost model knows
//! (`boards`), runs a bundle on a text (`run`) and benchmarks prefill and decode against the
//! cost model's prediction (`bench`).

mod bench;
mod boards;
mod info;
mod measure;
mod profile;

use std::path::PathBuf;

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
    /// Measure this machine (memory read bandwidth, f32 matrix throughput, memory, cores) into
    /// the `host` board profile; prints it as TOML unless it writes a file.
    Profile {
        /// Print the profile as one JSON object.
        #[arg(long)]
        json: bool,
        /// Write the profile (TOML) to this file, atomically.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Write the profile where the board named `host` is read from:
        /// $WHITTLE_CACHE_DIR/boards/host.toml, by default
        /// $XDG_CACHE_HOME/whittle/cache/boards/host.toml (~/.cache/whittle/cache/boards/host.toml
        /// when XDG_CACHE_HOME is unset).
        #[arg(long)]
        install: bool,
    },
    /// List the board profiles: every built-in one and, once measured, `host`.
    Boards {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a bundle: print the label (classification) or the answer (generation) of one
    /// `--text`, or of every line of `--file` (`-`: standard input) as JSON lines
    /// (`{"line", "label", "scores"}` or `{"line", "answer"}`), loading the bundle once.
    Run {
        /// The bundle file.
        bundle: PathBuf,
        /// The input text.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// A file of inputs, one per line (`-`: standard input).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Threads sharing each matrix product.
        #[arg(long, default_value_t = default_threads())]
        threads: usize,
        /// Most tokens to generate [default: the bundle's task setting].
        #[arg(long)]
        max_new_tokens: Option<usize>,
    },
    /// Time prefill and greedy decode of a bundle (medians) beside the cost model's prediction.
    Bench(bench::BenchArgs),
}

pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info { json } => info::run(json),
        Command::Profile { json, out, install } => profile::run(json, out, install),
        Command::Boards { json } => boards::run(json),
        Command::Run {
            bundle,
            text,
            file,
            threads,
            max_new_tokens,
        } => {
            let inputs = match (text, file) {
                (Some(text), _) => bench::Inputs::Text(text),
                (None, Some(file)) => bench::Inputs::Lines(file),
                (None, None) => anyhow::bail!("give --text TEXT or --file PATH (- for stdin)"),
            };
            bench::run(&bundle, &inputs, threads, max_new_tokens)
        }
        Command::Bench(args) => bench::bench(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parses(argv: &[&str], expected: &str) {
        match Cli::try_parse_from(argv) {
            Ok(cli) => assert_eq!(format!("{:?}", cli.command), expected, "for {argv:?}"),
            Err(error) => panic!("{argv:?} does not parse: {error}"),
        }
    }

    #[test]
    fn subcommands_parse() {
        check_parses(&["whittle-device", "info", "--json"], "Info { json: true }");
        check_parses(
            &["whittle-device", "profile", "--out", "/tmp/h.toml"],
            "Profile { json: false, out: Some(\"/tmp/h.toml\"), install: false }",
        );
        check_parses(
            &["whittle-device", "profile", "--install", "--json"],
            "Profile { json: true, out: None, install: true }",
        );
        check_parses(&["whittle-device", "boards"], "Boards { json: false }");
        check_parses(
            &["whittle-device", "run", "b.wbundle", "--file", "-"],
            "Run { bundle: \"b.wbundle\", text: None, file: Some(\"-\"), threads: THREADS, max_new_tokens: None }"
                .replace("THREADS", &default_threads().to_string())
                .as_str(),
        );
        assert!(Cli::try_parse_from(["whittle-device", "run", "b.wbundle"]).is_err());
        assert!(
            Cli::try_parse_from(["whittle-device", "run", "b", "--text", "t", "--file", "f"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["whittle-device", "boards", "--measure"]).is_err());
    }
}
