//! `cargo xtask boards`: lists the board profiles through `whittle-device boards`, after
//! measuring this machine's `host` profile with `--measure-host`.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cargo;

/// Cargo arguments that run `whittle-device <subcommand> <args...>` from a release build.
pub fn device_cargo_args(subcommand: &str, args: &[&str]) -> Vec<OsString> {
    ["run", "--release", "--quiet", "-p", "whittle-device", "--"]
        .into_iter()
        .chain(std::iter::once(subcommand))
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

/// Measures `host` into the cache first when asked, then lists every board.
pub fn run(measure_host: bool, json: bool) -> anyhow::Result<ExitCode> {
    if measure_host {
        cargo::run(&mut cargo::cargo(device_cargo_args(
            "profile",
            &["--install"],
        )))?;
    }
    let list_args: &[&str] = if json { &["--json"] } else { &[] };
    let mut list = cargo::cargo(device_cargo_args("boards", list_args));
    Ok(cargo::exit_code(cargo::status(&mut list)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(subcommand: &str, args: &[&str], expected: &[&str]) {
        let expected: Vec<OsString> = expected.iter().map(OsString::from).collect();
        assert_eq!(device_cargo_args(subcommand, args), expected);
    }

    #[test]
    fn the_device_tool_runs_from_a_release_build() {
        check(
            "boards",
            &[],
            &[
                "run",
                "--release",
                "--quiet",
                "-p",
                "whittle-device",
                "--",
                "boards",
            ],
        );
        check(
            "profile",
            &["--install"],
            &[
                "run",
                "--release",
                "--quiet",
                "-p",
                "whittle-device",
                "--",
                "profile",
                "--install",
            ],
        );
    }
}
