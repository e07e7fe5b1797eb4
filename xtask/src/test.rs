//! `cargo xtask test`: prepares a fresh machine, then runs every check of the workspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{cargo, prerequisites};

/// One stage of the suite.
struct Step {
    title: &'static str,
    run: fn() -> anyhow::Result<()>,
}

const STEPS: [Step; 10] = [
    Step {
        title: "rustup targets",
        run: prerequisites::ensure_targets,
    },
    Step {
        title: "Debian cross tools",
        run: prerequisites::ensure_cross_tools,
    },
    Step {
        title: "formatting",
        run: check_formatting,
    },
    Step {
        title: "fetch the model",
        run: fetch_model,
    },
    Step {
        title: "workspace tests",
        run: workspace_tests,
    },
    Step {
        title: "no_std build and lints of the runtime",
        run: runtime_no_std_build,
    },
    Step {
        title: "thumbv7em firmware example (no_std, include_bytes! bundle, fixed arena)",
        run: firmware_example_build,
    },
    Step {
        title: "aarch64 device tool under qemu",
        run: device_under_qemu,
    },
    Step {
        title: "aarch64 runtime tests (NEON kernels) under qemu",
        run: runtime_tests_under_qemu,
    },
    Step {
        title: "real sst2 q8 bundle: aarch64 under qemu predicts as x86_64",
        run: real_bundle_under_qemu,
    },
];

const DEVICE_TARGET: &str = "aarch64-unknown-linux-gnu";
const QEMU_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Test examples replayed under qemu: about 30 s of CPU each there (the whole model, q8, a
/// 70-token prompt), so few.
const REPLAY_EXAMPLES: &str = "2";

/// Runs the steps in order, stops at the first failure, and prints a timed summary.
pub fn run() -> anyhow::Result<ExitCode> {
    let mut finished: Vec<(&Step, Duration)> = Vec::new();
    let mut failure = None;
    for (index, step) in STEPS.iter().enumerate() {
        println!("==> [{}/{}] {}", index + 1, STEPS.len(), step.title);
        let started = Instant::now();
        let result = (step.run)();
        finished.push((step, started.elapsed()));
        if let Err(error) = result {
            failure = Some((index, error));
            break;
        }
    }
    println!("\nxtask test summary:");
    for (index, step) in STEPS.iter().enumerate() {
        let outcome = match (finished.get(index), &failure) {
            (Some((_, elapsed)), Some((failed, _))) if *failed == index => {
                format!("FAILED {:>8}", seconds(*elapsed))
            }
            (Some((_, elapsed)), _) => format!("ok     {:>8}", seconds(*elapsed)),
            (None, _) => format!("{:<6} {:>8}", "-", "not run"),
        };
        println!("  {outcome}  {}", step.title);
    }
    match failure {
        None => {
            let total: Duration = finished.iter().map(|(_, elapsed)| *elapsed).sum();
            println!("all {} steps passed in {}", STEPS.len(), seconds(total));
            Ok(ExitCode::SUCCESS)
        }
        Some((index, error)) => {
            eprintln!(
                "xtask test: step {}/{} ({}) failed: {error:#}",
                index + 1,
                STEPS.len(),
                STEPS[index].title
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn check_formatting() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo(["fmt", "--all", "--", "--check"]))
        .context("the code is not formatted; run `cargo fmt --all`")
}

/// Builds the whole workspace with the test build's feature set (building `-p whittle-host`
/// alone would unify features differently and compile candle a second time), then fetches the
/// model with the built binary.
fn fetch_model() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo([
        "build",
        "--workspace",
        "--release",
        "--all-targets",
    ]))?;
    let whittle = cargo::target_dir().join("release").join("whittle");
    cargo::run(&mut cargo::program(
        &whittle.to_string_lossy(),
        ["fetch-model"],
    ))
}

fn workspace_tests() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo(["test", "--workspace", "--release"]))
}

/// Builds the runtime for a real `no_std` target, then holds its non-test code to the
/// no-panic lints (`unwrap`, `expect`, `panic`, unchecked indexing) with clippy, there, with
/// `std` on the host, and with `std` for aarch64 (the NEON kernels).
fn runtime_no_std_build() -> anyhow::Result<()> {
    let thumb = ["--target", "thumbv7em-none-eabihf", "--release"];
    cargo::run(&mut cargo::cargo(
        ["build", "-p", "whittle-runtime"].into_iter().chain(thumb),
    ))?;
    let host = ["--release", "--features", "std"];
    let aarch64 = ["--release", "--features", "std", "--target", DEVICE_TARGET];
    for (target, args) in [
        ("thumbv7em", &thumb[..]),
        ("host", &host[..]),
        ("aarch64", &aarch64[..]),
    ] {
        cargo::run(&mut cargo::cargo(
            ["clippy", "-p", "whittle-runtime"]
                .into_iter()
                .chain(args.iter().copied())
                .chain(["--", "-D", "warnings"]),
        ))
        .with_context(|| {
            format!("the runtime's code for {target} breaks its lints; see the clippy output above")
        })?;
    }
    Ok(())
}

/// The example app is its own workspace (a `no_main` binary); its `.cargo/config.toml` sets
/// the entry symbol, so cargo runs in its folder.
fn firmware_example_build() -> anyhow::Result<()> {
    let dir = cargo::workspace_root()
        .join("runtime")
        .join("firmware-example");
    let mut command = cargo::cargo(["build", "--release", "--target", "thumbv7em-none-eabihf"]);
    command.current_dir(&dir).env(
        "CARGO_TARGET_DIR",
        cargo::target_dir().join("firmware-example"),
    );
    cargo::run(&mut command)
}

fn device_under_qemu() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo([
        "build",
        "-p",
        "whittle-device",
        "--target",
        DEVICE_TARGET,
        "--release",
    ]))?;
    let binary = cargo::target_dir()
        .join(DEVICE_TARGET)
        .join("release")
        .join("whittle-device");
    let mut command = cargo::program("qemu-aarch64", ["-L", QEMU_SYSROOT]);
    command.arg(&binary).args(["info", "--json"]);
    println!("    $ {}", cargo::describe(&command));
    let stdout = cargo::stdout_of(&mut command)?;
    print!("{stdout}");
    check_device_info(&stdout)
}

/// The runtime's unit tests, NEON kernels included, for aarch64 under qemu (the runner in
/// `.cargo/config.toml`).
fn runtime_tests_under_qemu() -> anyhow::Result<()> {
    // qemu's default CPU has the int8 dot product: require its kernel, so that its suite
    // cannot skip unnoticed.
    cargo::run(
        cargo::cargo([
            "test",
            "-p",
            "whittle-runtime",
            "--target",
            DEVICE_TARGET,
            "--release",
            "--features",
            "std",
            "--lib",
        ])
        .env("WHITTLE_REQUIRE_KERNELS", "neon-dotprod"),
    )
}

/// `$WHITTLE_CACHE_DIR/bundles`, else `~/.cache/whittle/cache/bundles` (where the host keeps
/// derived caches; never inside the repository).
fn bundle_cache_dir() -> anyhow::Result<PathBuf> {
    let cache = match std::env::var_os("WHITTLE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(|home| {
                PathBuf::from(home)
                    .join(".cache")
                    .join("whittle")
                    .join("cache")
            })
            .context("neither WHITTLE_CACHE_DIR nor HOME is set; set WHITTLE_CACHE_DIR")?,
    };
    Ok(cache.join("bundles"))
}

/// A real bundle (sst2, q8, task head, packed once by `whittle pack` from the real model and
/// cached outside the repository); `whittle parity --record` runs a few test examples through
/// the x86_64 runtime (portable kernels) and records predictions and label logits; the
/// runtime's `replay` example, built for x86_64 (best kernels) and for aarch64 (NEON, under
/// qemu), must reproduce them.
fn real_bundle_under_qemu() -> anyhow::Result<()> {
    let whittle = cargo::target_dir().join("release").join("whittle");
    let whittle = whittle.to_string_lossy().into_owned();
    let dir = bundle_cache_dir()?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}; set WHITTLE_CACHE_DIR", dir.display()))?;
    let bundle = dir.join("sst2-q8-task.wbundle");
    let record = dir.join("sst2-q8-task.record.json");
    let pack = || {
        cargo::run(
            cargo::program(&whittle, ["pack", "--task", "sst2", "--dtype", "q8"])
                .args(["--head", "task", "--out"])
                .arg(&bundle),
        )
    };
    let record_parity = || {
        cargo::run(
            cargo::program(&whittle, ["parity", "--limit", REPLAY_EXAMPLES, "--bundle"])
                .arg(&bundle)
                .arg("--record")
                .arg(&record),
        )
    };
    if !bundle.is_file() {
        pack()?;
        record_parity()?;
    } else if record_parity().is_err() {
        println!("    the cached bundle was refused (older format or model?); packing it again");
        pack()?;
        record_parity()?;
    }
    cargo::run(&mut cargo::cargo([
        "build",
        "-p",
        "whittle-runtime",
        "--release",
        "--features",
        "std",
        "--example",
        "replay",
    ]))?;
    cargo::run(
        cargo::program(
            &cargo::target_dir()
                .join("release")
                .join("examples")
                .join("replay")
                .to_string_lossy(),
            [&bundle, &record],
        )
        .arg("--threads")
        .arg("1"),
    )?;
    cargo::run(&mut cargo::cargo([
        "build",
        "-p",
        "whittle-runtime",
        "--target",
        DEVICE_TARGET,
        "--release",
        "--features",
        "std",
        "--example",
        "replay",
    ]))?;
    let replay = cargo::target_dir()
        .join(DEVICE_TARGET)
        .join("release")
        .join("examples")
        .join("replay");
    // A Cortex-A72 has no int8 dot product (the NEON kernels, within 2e-3); qemu's default CPU
    // has it (the dot-product kernels, which round activations).
    for cpu in [Some("cortex-a72"), None] {
        let mut command = cargo::program("qemu-aarch64", ["-L", QEMU_SYSROOT]);
        if let Some(cpu) = cpu {
            command.args(["-cpu", cpu]);
        }
        command
            .arg(&replay)
            .arg(&bundle)
            .arg(&record)
            .args(["--threads", "2"]);
        cargo::run(&mut command)?;
    }
    Ok(())
}

/// The device tool's `info --json` output must end in a JSON object for an aarch64 machine.
fn check_device_info(stdout: &str) -> anyhow::Result<()> {
    let Some(last_line) = stdout.lines().map(str::trim).rfind(|line| !line.is_empty()) else {
        bail!("whittle-device info --json printed nothing");
    };
    if !(last_line.starts_with('{') && last_line.ends_with('}')) {
        bail!("the last line of whittle-device info --json is not a JSON object: {last_line}");
    }
    if !last_line.contains(r#""arch":"aarch64""#) {
        bail!("whittle-device info --json does not report \"arch\":\"aarch64\": {last_line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stdout: &str, expected: Result<(), &str>) {
        match (check_device_info(stdout), expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
            }
            (got, expected) => panic!("{stdout:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn device_info_must_be_aarch64_json() {
        check(r#"{"arch":"aarch64","os":"linux"}"#, Ok(()));
        check(
            "warming up\n{\"arch\":\"aarch64\",\"os\":\"linux\"}\n\n",
            Ok(()),
        );
        check(r#"{"arch":"x86_64","os":"linux"}"#, Err("does not report"));
        check("arch: aarch64\n", Err("not a JSON object"));
        check("", Err("printed nothing"));
    }

    #[test]
    fn every_step_has_a_distinct_title() {
        let mut titles: Vec<_> = STEPS.iter().map(|step| step.title).collect();
        titles.sort_unstable();
        titles.dedup();
        assert_eq!(titles.len(), STEPS.len());
    }
}
