//! `cargo xtask`: the workspace's automation, in Rust. It drives cargo and never links the
//! heavy crates itself.

mod bench;
mod boards;
mod cargo;
mod host;
mod prerequisites;
mod test;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Workspace tasks for whittle. Run as `cargo xtask <task>`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Download the model into the cache (`whittle fetch-model`; arguments pass through).
    #[command(disable_help_flag = true)]
    FetchModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Evaluate the dense model on a task (`whittle eval`; arguments pass through).
    #[command(disable_help_flag = true)]
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Compare factorization methods: `whittle factorize --compare`.
    #[command(disable_help_flag = true)]
    Factorize {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The uniform baseline at ε: `whittle uniform`.
    #[command(disable_help_flag = true)]
    Uniform {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Accuracy against uniform keep fraction, as SVG: `whittle sweep`.
    #[command(disable_help_flag = true)]
    Sweep {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Prune the model for a task and a board: `whittle prune` (arguments pass through).
    #[command(disable_help_flag = true)]
    Prune {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Pack a bundle from a prune folder or the dense model: `whittle pack` (arguments pass through).
    #[command(disable_help_flag = true)]
    Pack {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Validate a bundle and print its header and provenance: `whittle inspect` (arguments pass through).
    #[command(disable_help_flag = true)]
    Inspect {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Make an ed25519 signing key: `whittle keygen` (arguments pass through).
    #[command(disable_help_flag = true)]
    Keygen {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Runtime against host on the task's test split: `whittle parity` (arguments pass through).
    #[command(disable_help_flag = true)]
    Parity {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmark the host forward pass (`cargo bench --bench prefill`; arguments pass through).
    #[command(disable_help_flag = true)]
    BenchHost {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// List the board profiles (`whittle-device boards`), with `host` once measured.
    Boards {
        /// First measure this machine into the `host` profile (`whittle-device profile
        /// --install`, about a minute).
        #[arg(long)]
        measure_host: bool,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The runtime against llama.cpp (cyllama 0.2.18, installed into its own virtual
    /// environment) on this machine, side by side: prefill 256 and greedy decode 64 tokens of
    /// the dense q8 bundle and a pruned q8 bundle, 1 and 2 threads; ratios of medians, the
    /// decode's fraction of the memory-bandwidth ceiling, and the host cost model's errors.
    BenchCompare {
        /// Output folder of `whittle prune` (packed as q8 with a full head, cached in
        /// ~/.cache/whittle/bench).
        #[arg(long, value_name = "DIR")]
        prune_dir: Option<PathBuf>,
        /// A pruned bundle already packed with `--head full` (instead of --prune-dir).
        #[arg(long, value_name = "FILE", conflicts_with = "prune_dir")]
        pruned_bundle: Option<PathBuf>,
        /// Rounds; every round runs every configuration once.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Prompt tokens.
        #[arg(long, default_value_t = 256)]
        prefill: usize,
        /// Greedy tokens decoded after the prompt.
        #[arg(long, default_value_t = 64)]
        decode: usize,
        /// Thread counts to compare (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Pack the bundles again even when cached.
        #[arg(long)]
        repack: bool,
        /// Compare the dense bundle only, when no pruned model is at hand (pruned ratios null).
        #[arg(long, conflicts_with_all = ["prune_dir", "pruned_bundle"])]
        dense_only: bool,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Refresh the measured `host` profile (with `--board host`), then benchmark the dense
    /// bundle (and a pruned one) against the board's cost model.
    Bench {
        /// The board profile whose cost model is checked.
        #[arg(long, default_value = "host")]
        board: String,
        /// Output folder of `whittle prune`, to benchmark its bundle too.
        #[arg(long, value_name = "DIR")]
        prune_dir: Option<PathBuf>,
        /// Measured repetitions.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Install what a fresh machine lacks, then run every check of the workspace.
    Test,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::FetchModel { args } => host::run_host("fetch-model", &args),
        Task::Eval { args } => host::run_host("eval", &args),
        Task::Factorize { args } => host::run_host("factorize", &args),
        Task::Uniform { args } => host::run_host("uniform", &args),
        Task::Sweep { args } => host::run_host("sweep", &args),
        Task::Prune { args } => host::run_host("prune", &args),
        Task::Pack { args } => host::run_host("pack", &args),
        Task::Inspect { args } => host::run_host("inspect", &args),
        Task::Keygen { args } => host::run_host("keygen", &args),
        Task::Parity { args } => host::run_host("parity", &args),
        Task::BenchHost { args } => host::run_bench(&args),
        Task::Boards { measure_host, json } => boards::run(measure_host, json),
        Task::BenchCompare {
            prune_dir,
            pruned_bundle,
            repeats,
            prefill,
            decode,
            threads,
            repack,
            dense_only,
            json,
        } => bench::compare(&bench::CompareArgs {
            prune_dir,
            pruned_bundle,
            repeats,
            prefill,
            decode,
            threads,
            repack,
            dense_only,
            json,
        }),
        Task::Bench {
            board,
            prune_dir,
            repeats,
        } => bench::bench(&board, prune_dir.as_deref(), repeats),
        Task::Test => test::run(),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pass_through(argv: &[&str], expected: &[&str]) {
        let cli = match Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(error) => panic!("{argv:?} does not parse: {error}"),
        };
        let args = match cli.task {
            Task::FetchModel { args }
            | Task::Eval { args }
            | Task::Factorize { args }
            | Task::Uniform { args }
            | Task::Sweep { args }
            | Task::Prune { args }
            | Task::Pack { args }
            | Task::Inspect { args }
            | Task::Keygen { args }
            | Task::Parity { args }
            | Task::BenchHost { args } => args,
            task @ (Task::Test
            | Task::Boards { .. }
            | Task::BenchCompare { .. }
            | Task::Bench { .. }) => panic!("{argv:?} parsed as {task:?}"),
        };
        let expected: Vec<OsString> = expected.iter().map(OsString::from).collect();
        assert_eq!(args, expected, "for {argv:?}");
    }

    #[test]
    fn trailing_arguments_pass_through_verbatim() {
        check_pass_through(
            &[
                "xtask", "eval", "--task", "sst2", "--split", "test", "--json",
            ],
            &["--task", "sst2", "--split", "test", "--json"],
        );
        check_pass_through(&["xtask", "eval", "--help"], &["--help"]);
        check_pass_through(
            &["xtask", "fetch-model", "--model-dir", "/tmp/m"],
            &["--model-dir", "/tmp/m"],
        );
        check_pass_through(&["xtask", "fetch-model"], &[]);
        check_pass_through(
            &["xtask", "prune", "--board", "jetson-orin"],
            &["--board", "jetson-orin"],
        );
        check_pass_through(
            &["xtask", "parity", "--bundle", "b.wbundle", "--json"],
            &["--bundle", "b.wbundle", "--json"],
        );
        check_pass_through(&["xtask", "inspect", "b.wbundle"], &["b.wbundle"]);
        check_pass_through(
            &["xtask", "bench-host", "--save-baseline", "main"],
            &["--save-baseline", "main"],
        );
    }

    fn check_boards(argv: &[&str], expected: Option<(bool, bool)>) {
        let parsed = match Cli::try_parse_from(argv) {
            Ok(Cli {
                task: Task::Boards { measure_host, json },
            }) => Some((measure_host, json)),
            Ok(cli) => panic!("{argv:?} parsed as {cli:?}"),
            Err(_) => None,
        };
        assert_eq!(parsed, expected, "for {argv:?}");
    }

    #[test]
    fn boards_takes_its_two_flags() {
        check_boards(&["xtask", "boards"], Some((false, false)));
        check_boards(&["xtask", "boards", "--measure-host"], Some((true, false)));
        check_boards(
            &["xtask", "boards", "--json", "--measure-host"],
            Some((true, true)),
        );
        check_boards(&["xtask", "boards", "--board", "rpi5"], None);
    }

    #[test]
    fn test_takes_no_arguments() {
        assert!(Cli::try_parse_from(["xtask", "test"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "test", "--fast"]).is_err());
    }
}
