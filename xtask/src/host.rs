//! Tasks that hand their arguments to the host binary or the host benchmark.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cargo;

/// Cargo arguments that run `whittle <subcommand> <args...>` from a release build.
pub fn host_cargo_args(subcommand: &str, args: &[OsString]) -> Vec<OsString> {
    let mut cargo_args: Vec<OsString> = vec!["run".into(), "--release".into(), "--quiet".into()];
    cargo_args.extend(
        ["-p", "whittle-host", "--bin", "whittle", "--", subcommand]
            .into_iter()
            .map(OsString::from),
    );
    cargo_args.extend(args.iter().cloned());
    cargo_args
}

/// Cargo arguments that run the host prefill benchmark with `args` for its harness.
pub fn bench_cargo_args(args: &[OsString]) -> Vec<OsString> {
    let mut cargo_args: Vec<OsString> =
        ["bench", "-p", "whittle-tests", "--bench", "prefill", "--"]
            .into_iter()
            .map(OsString::from)
            .collect();
    cargo_args.extend(args.iter().cloned());
    cargo_args
}

/// Runs `whittle <subcommand> <args...>` and exits as it does.
pub fn run_host(subcommand: &str, args: &[OsString]) -> anyhow::Result<ExitCode> {
    let mut command = cargo::cargo(host_cargo_args(subcommand, args));
    Ok(cargo::exit_code(cargo::status(&mut command)?))
}

/// Runs the host prefill benchmark and exits as it does.
pub fn run_bench(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let mut command = cargo::cargo(bench_cargo_args(args));
    Ok(cargo::exit_code(cargo::status(&mut command)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn host_arguments_follow_the_subcommand_verbatim() {
        assert_eq!(
            host_cargo_args("eval", &os(&["--task", "sst2", "--json"])),
            os(&[
                "run",
                "--release",
                "--quiet",
                "-p",
                "whittle-host",
                "--bin",
                "whittle",
                "--",
                "eval",
                "--task",
                "sst2",
                "--json",
            ])
        );
    }

    #[test]
    fn bench_arguments_go_to_the_harness() {
        assert_eq!(
            bench_cargo_args(&os(&["--save-baseline", "main"])),
            os(&[
                "bench",
                "-p",
                "whittle-tests",
                "--bench",
                "prefill",
                "--",
                "--save-baseline",
                "main",
            ])
        );
    }
}
