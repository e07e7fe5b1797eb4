//! Tasks that hand their arguments to the host binary or the host benchmark: one table, each
//! row a task name, its help line and the program that receives the arguments.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cargo;
use crate::workspace::{self, Executable};

/// A task whose arguments pass through verbatim (`--help` included).
#[derive(Debug, PartialEq, Eq)]
pub struct PassThrough {
    /// The task name (for `whittle`, also its subcommand).
    pub name: &'static str,
    /// The help line.
    pub about: &'static str,
    /// The program that receives the arguments.
    pub to: Receiver,
}

/// The program a [`PassThrough`] task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// `whittle <name> <args...>`.
    HostTool,
    /// The host prefill benchmark, with `args` for its harness (as `cargo bench` passes them).
    PrefillBench,
}

/// Every pass-through task, in the order `cargo xtask --help` lists them.
pub const PASS_THROUGH: [PassThrough; 11] = [
    host(
        "fetch-model",
        "Download the model into the cache (`whittle fetch-model`; arguments pass through)",
    ),
    host(
        "eval",
        "Evaluate the dense model on a task (`whittle eval`; arguments pass through)",
    ),
    host(
        "factorize",
        "Compare factorization methods: `whittle factorize --compare`",
    ),
    host("uniform", "The uniform baseline at ε: `whittle uniform`"),
    host(
        "sweep",
        "Accuracy against uniform keep fraction, as SVG: `whittle sweep`",
    ),
    host(
        "prune",
        "Prune the model for a task and a board: `whittle prune` (arguments pass through)",
    ),
    host(
        "pack",
        "Pack a bundle from a prune folder or the dense model: `whittle pack` (arguments pass through)",
    ),
    host(
        "inspect",
        "Validate a bundle and print its header and provenance: `whittle inspect` (arguments pass through)",
    ),
    host(
        "keygen",
        "Make an ed25519 signing key: `whittle keygen` (arguments pass through)",
    ),
    host(
        "parity",
        "Runtime against host on the task's test split: `whittle parity` (arguments pass through)",
    ),
    PassThrough {
        name: "bench-host",
        about: "Benchmark the host forward pass (`cargo bench --bench prefill`; arguments pass through)",
        to: Receiver::PrefillBench,
    },
];

const fn host(name: &'static str, about: &'static str) -> PassThrough {
    PassThrough {
        name,
        about,
        to: Receiver::HostTool,
    }
}

/// The pass-through task called `name`.
pub fn find(name: &str) -> Option<&'static PassThrough> {
    PASS_THROUGH.iter().find(|task| task.name == name)
}

impl PassThrough {
    /// The program the task runs and its arguments.
    pub fn invocation(&self, args: &[OsString]) -> (Executable, Vec<OsString>) {
        let (executable, first) = match self.to {
            Receiver::HostTool => (Executable::HostTool, self.name),
            Receiver::PrefillBench => (Executable::PrefillBench, "--bench"),
        };
        let argv = std::iter::once(OsString::from(first))
            .chain(args.iter().cloned())
            .collect();
        (executable, argv)
    }

    /// Builds the workspace, runs the task's program and exits as it does.
    pub fn run(&self, args: &[OsString]) -> anyhow::Result<ExitCode> {
        let (executable, argv) = self.invocation(args);
        let mut command = workspace::build()?.command(executable, argv)?;
        Ok(cargo::exit_code(cargo::status(&mut command)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, args: &[&str], expected: (Executable, &[&str])) {
        let Some(task) = find(name) else {
            panic!("no pass-through task `{name}`");
        };
        let os = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            task.invocation(&os(args)),
            (expected.0, os(expected.1)),
            "for {name} {args:?}"
        );
    }

    #[test]
    fn host_arguments_follow_the_subcommand_verbatim() {
        check(
            "eval",
            &["--task", "sst2", "--json"],
            (Executable::HostTool, &["eval", "--task", "sst2", "--json"]),
        );
        check("keygen", &[], (Executable::HostTool, &["keygen"]));
    }

    #[test]
    fn bench_arguments_go_to_the_harness() {
        check(
            "bench-host",
            &["--save-baseline", "main"],
            (
                Executable::PrefillBench,
                &["--bench", "--save-baseline", "main"],
            ),
        );
    }

    #[test]
    fn task_names_are_unique() {
        for (index, task) in PASS_THROUGH.iter().enumerate() {
            assert_eq!(find(task.name), Some(&PASS_THROUGH[index]));
        }
    }
}
