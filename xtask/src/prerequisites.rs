//! What a fresh machine needs before the suite can run: rustup targets, the Debian
//! cross-compilation tools, and the virtual environments of Python packages.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use whittle_boards::files::cache_root;

use crate::cargo;

/// Targets the suite builds for besides the host.
pub const TARGETS: [&str; 2] = ["aarch64-unknown-linux-gnu", "thumbv7em-none-eabihf"];

/// Debian packages that provide the aarch64 linker, C library and user-mode emulator, the
/// system emulator the Cortex-M firmware runs in, the C compiler of the C API's example and the
/// sshd the deployment check flashes to.
pub const CROSS_PACKAGES: [&str; 6] = [
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user",
    "qemu-system-arm",
    "gcc-arm-none-eabi",
    "openssh-server",
];

/// Programs the cross builds and runs need on `PATH`.
pub const CROSS_PROGRAMS: [&str; 5] = [
    "aarch64-linux-gnu-gcc",
    "qemu-aarch64",
    "qemu-system-arm",
    "arm-none-eabi-gcc",
    "sshd",
];

/// What to do about the cross tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossToolsPlan {
    /// They are on `PATH` already.
    Present,
    /// Install them with apt-get (running as root).
    Install,
    /// Stop and tell the user what to install.
    AskUser,
}

/// Adds the rustup targets that `rustup target list --installed` does not show, and the
/// clippy and rustfmt components the suite runs.
pub fn ensure_targets() -> anyhow::Result<()> {
    let installed = cargo::stdout_of(&mut cargo::program(
        "rustup",
        ["target", "list", "--installed"],
    ))
    .context(
        "cannot ask rustup for the installed targets; install rustup from https://rustup.rs",
    )?;
    let missing = missing_targets(&installed, &TARGETS);
    if missing.is_empty() {
        println!("    targets already installed: {}", TARGETS.join(", "));
    } else {
        cargo::run(&mut cargo::program(
            "rustup",
            ["target", "add"].into_iter().chain(missing),
        ))?;
    }
    // A minimal toolchain profile lacks these; `component add` is a no-op when present.
    cargo::run(&mut cargo::program(
        "rustup",
        ["component", "add", "clippy", "rustfmt"],
    ))
}

/// The `wanted` targets absent from the output of `rustup target list --installed`.
pub fn missing_targets<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|target| !installed.lines().any(|line| line.trim() == *target))
        .collect()
}

/// Makes sure the cross tools are on `PATH`, installing them when running as root.
pub fn ensure_cross_tools() -> anyhow::Result<()> {
    let plan = plan_cross_tools(cross_programs_present(), running_as_root());
    match plan {
        CrossToolsPlan::Present => {
            println!("    already on PATH: {}", CROSS_PROGRAMS.join(", "));
            Ok(())
        }
        CrossToolsPlan::AskUser => bail!(
            "{} missing and not running as root; run: sudo apt-get install {}",
            CROSS_PROGRAMS.join(" or "),
            CROSS_PACKAGES.join(" ")
        ),
        CrossToolsPlan::Install => {
            cargo::run(
                cargo::program("apt-get", ["update"]).env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            cargo::run(
                cargo::program(
                    "apt-get",
                    ["install", "-y", "--no-install-recommends"]
                        .into_iter()
                        .chain(CROSS_PACKAGES),
                )
                .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            if !cross_programs_present() {
                bail!(
                    "apt-get installed {} but {} is still not on PATH; check the packages' contents for this Debian release",
                    CROSS_PACKAGES.join(" "),
                    CROSS_PROGRAMS.join(" or ")
                );
            }
            Ok(())
        }
    }
}

/// `cargo` of the nightly toolchain (through rustup) with `args`, free of the stable
/// toolchain's environment that `cargo xtask` runs in.
pub fn nightly_cargo<I, S>(args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let mut command = cargo::program("rustup", ["run", "nightly", "cargo"]);
    command.args(args.into_iter().map(Into::into));
    for variable in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(variable);
    }
    command
}

/// Makes sure the nightly toolchain and cargo-fuzz are there for the fuzz step: installs the
/// toolchain with rustup and cargo-fuzz from crates.io when missing (a few minutes, once).
pub fn ensure_fuzzer() -> anyhow::Result<()> {
    let toolchains = cargo::stdout_of(&mut cargo::program("rustup", ["toolchain", "list"]))
        .context("cannot list rustup's toolchains; install rustup from https://rustup.rs")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        cargo::run(&mut cargo::program(
            "rustup",
            ["toolchain", "install", "nightly", "--profile", "minimal"],
        ))
        .context("the fuzz step needs the nightly toolchain (libFuzzer's sanitizers); install it with `rustup toolchain install nightly`")?;
    }
    if cargo::stdout_of(&mut nightly_cargo(["fuzz", "--version"])).is_err() {
        cargo::run(&mut nightly_cargo(["install", "cargo-fuzz", "--locked"])).context(
            "cannot install cargo-fuzz; run `cargo +nightly install cargo-fuzz --locked`",
        )?;
    }
    Ok(())
}

/// The Python of the virtual environment `name` (`<cache root>/venvs/<name>`), created with
/// `python3 -m venv` when missing; what goes into it is the caller's.
pub fn virtual_environment(name: &str) -> anyhow::Result<PathBuf> {
    let venv = cache_root().join("venvs").join(name);
    let python = venv.join("bin").join("python");
    if !python.exists() {
        cargo::run(&mut cargo::program(
            "python3",
            [OsString::from("-m"), "venv".into(), venv.clone().into()],
        ))
        .with_context(|| {
            format!(
                "cannot create the virtual environment {}; install python3 with venv (Debian: python3-venv)",
                venv.display()
            )
        })?;
    }
    Ok(python)
}

/// The decision, from whether the programs are present and whether we are root.
pub fn plan_cross_tools(present: bool, root: bool) -> CrossToolsPlan {
    match (present, root) {
        (true, _) => CrossToolsPlan::Present,
        (false, true) => CrossToolsPlan::Install,
        (false, false) => CrossToolsPlan::AskUser,
    }
}

/// Whether the output of `id -u` names the root user.
pub fn is_root_uid(id_u_output: &str) -> bool {
    id_u_output.trim() == "0"
}

fn cross_programs_present() -> bool {
    CROSS_PROGRAMS.iter().all(|name| cargo::on_path(name))
}

fn running_as_root() -> bool {
    cargo::stdout_of(&mut cargo::program("id", ["-u"])).is_ok_and(|uid| is_root_uid(&uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absent_targets_are_added() {
        let installed = "x86_64-unknown-linux-gnu\naarch64-unknown-linux-gnu\n";
        assert_eq!(
            missing_targets(installed, &TARGETS),
            vec!["thumbv7em-none-eabihf"]
        );
        assert_eq!(missing_targets("", &TARGETS), TARGETS.to_vec());
        let all =
            "aarch64-unknown-linux-gnu\r\nthumbv7em-none-eabihf\r\nx86_64-unknown-linux-gnu\r\n";
        assert!(missing_targets(all, &TARGETS).is_empty());
        assert_eq!(
            missing_targets(
                "aarch64-unknown-linux-gnux\n",
                &["aarch64-unknown-linux-gnu"]
            ),
            vec!["aarch64-unknown-linux-gnu"]
        );
    }

    #[test]
    fn cross_tools_are_installed_only_when_missing_and_root() {
        assert_eq!(plan_cross_tools(true, true), CrossToolsPlan::Present);
        assert_eq!(plan_cross_tools(true, false), CrossToolsPlan::Present);
        assert_eq!(plan_cross_tools(false, true), CrossToolsPlan::Install);
        assert_eq!(plan_cross_tools(false, false), CrossToolsPlan::AskUser);
    }

    #[test]
    fn root_is_uid_zero() {
        assert!(is_root_uid("0\n"));
        assert!(is_root_uid("0"));
        assert!(!is_root_uid("1000\n"));
        assert!(!is_root_uid("10\n"));
        assert!(!is_root_uid(""));
    }
}
