//! `cargo xtask test`: prepares a fresh machine, then runs every check of the workspace.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use whittle_boards::files::default_cache_dir;

use crate::workspace::{self, Built, Executable, WORKSPACE_BUILD};
use crate::{cargo, cuda, firmware, prerequisites};

/// One stage of the suite.
struct Step {
    title: &'static str,
    run: fn() -> anyhow::Result<()>,
}

const STEPS: [Step; 14] = [
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
        title: "fetch the models (SmolLM2-135M-Instruct, Gemma 3 270M) and record llama.cpp's Gemma 3 logits",
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
        title: "Cortex-M firmware in qemu-system-arm (M4F mps2-an386, M7 mps2-an500) classifies as the host runtime",
        run: firmware_under_qemu,
    },
    Step {
        title: "C API: a C program (arm-none-eabi-gcc) on the static library in qemu-system-arm classifies as the host runtime",
        run: capi_under_qemu,
    },
    Step {
        title: "coverage-guided fuzzing, short runs (cargo-fuzz: bundle parser and session, tokenizer, install stream reader)",
        run: fuzz_short_runs,
    },
    Step {
        title: "aarch64 device tool under qemu (info, and the install tests with every fault)",
        run: device_under_qemu,
    },
    Step {
        title: "deploy to Linux boards: flash over ssh to an sshd on 127.0.0.1 and into a dir: store, with faults; install on a full 1 MiB tmpfs",
        run: deploy_to_linux_boards,
    },
    Step {
        title: "aarch64 runtime tests (NEON kernels) under qemu",
        run: runtime_tests_under_qemu,
    },
    Step {
        title: "real sst2 q8 and q4 bundles: aarch64 under qemu predicts as x86_64",
        run: real_bundle_under_qemu,
    },
    Step {
        title: "whittle-host builds with --features cuda (CUDA 13.0 from PyPI wheels, kernels for sm_90; no GPU used)",
        run: cuda::build,
    },
];

const DEVICE_TARGET: &str = "aarch64-unknown-linux-gnu";
const QEMU_SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Test examples replayed under qemu: about 30 s of CPU each there (the whole model, q8, a
/// 70-token prompt), so few.
const REPLAY_EXAMPLES: &str = "2";

/// Runs the steps in order (with `only`, the prerequisites and the steps whose title contains
/// it), stops at the first failure, and prints a timed summary.
pub fn run(only: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut finished: Vec<(&Step, Duration)> = Vec::new();
    let mut skipped = Vec::new();
    let mut failure = None;
    for (index, step) in STEPS.iter().enumerate() {
        let wanted = only.is_none_or(|text| index < 2 || step.title.contains(text));
        if !wanted {
            finished.push((step, Duration::ZERO));
            skipped.push(index);
            continue;
        }
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
            (Some(_), _) if skipped.contains(&index) => format!("{:<6} {:>8}", "-", "skipped"),
            (Some((_, elapsed)), _) => format!("ok     {:>8}", seconds(*elapsed)),
            (None, _) => format!("{:<6} {:>8}", "-", "not run"),
        };
        println!("  {outcome}  {}", step.title);
    }
    match failure {
        None => {
            let total: Duration = finished.iter().map(|(_, elapsed)| *elapsed).sum();
            if skipped.is_empty() {
                println!("all {} steps passed in {}", STEPS.len(), seconds(total));
            } else {
                println!(
                    "{} of {} steps passed in {} (--only: the others were not run)",
                    STEPS.len() - skipped.len(),
                    STEPS.len(),
                    seconds(total)
                );
            }
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

/// Runs the one workspace build every task shares ([`workspace::build`]; `cargo test
/// --workspace --release` next resolves the same features and compiles nothing again), then
/// fetches the models with the built binary and records llama.cpp's logits for Gemma 3 (the
/// reference of `tests/tests/real_model_gemma3.rs`; cyllama in its virtual environment, with
/// the `gguf` package that dequantizes the file), once per model digest.
fn fetch_model() -> anyhow::Result<()> {
    println!("    $ cargo {}", WORKSPACE_BUILD.join(" "));
    let built = workspace::build()?;
    cargo::run(&mut built.command(Executable::HostTool, ["fetch-model"])?)?;
    let mut gemma = built.command(Executable::HostTool, ["fetch-model", "--model", GEMMA3])?;
    let output = gemma.output().context("cannot run whittle fetch-model")?;
    if !output.status.success() {
        bail!(
            "whittle fetch-model --model {GEMMA3} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let model = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    println!(
        "    $ whittle fetch-model --model {GEMMA3}\n{}",
        model.display()
    );
    let reference = default_cache_dir()
        .join("references")
        .join(format!("llamacpp-logits-v2-{GEMMA3_DIGEST_PREFIX}.json"));
    if reference.is_file() {
        println!("    llama.cpp's logits: {} (recorded)", reference.display());
        return Ok(());
    }
    let python = crate::bench::venv_python()?;
    cargo::run(&mut cargo::program(
        &python,
        ["-m", "pip", "install", "--quiet", GGUF_PACKAGE],
    ))
    .with_context(|| format!("cannot install {GGUF_PACKAGE} from PyPI"))?;
    if let Some(folder) = reference.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let script = cargo::workspace_root().join("tests/data/record_llamacpp_gemma3_logits.py");
    cargo::run(cargo::program(&python, [script.as_os_str(), model.as_os_str()]).arg(&reference))
        .context("cannot record llama.cpp's Gemma 3 logits")
}

/// The second model's name for `whittle --model`.
const GEMMA3: &str = "gemma3-270m";
/// The first 16 hex digits of its sha256 (`whittle_host::fetch::GEMMA3_270M`), naming the
/// recorded reference.
const GEMMA3_DIGEST_PREFIX: &str = "a5fd3b62230aa5ec";
/// What dequantizes the GGUF for the reference on f32 weights.
const GGUF_PACKAGE: &str = "gguf==0.19.0";

fn workspace_tests() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo(["test", "--workspace", "--release"]))
}

/// Builds the runtime for a real `no_std` target, then holds its non-test code to the
/// no-panic lints (`unwrap`, `expect`, `panic`, unchecked indexing) with clippy, there, with
/// `std` on the host, and with `std` for aarch64 (the NEON kernels); and checks that a runtime
/// without the `q4` feature refuses a q4 bundle.
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
    // Without the `q4` feature (as the firmware and the C API build it) a q4 bundle is refused
    // with its own error.
    cargo::run(&mut cargo::cargo([
        "test",
        "--release",
        "-p",
        "whittle-runtime",
        "--no-default-features",
        "--features",
        "std",
        "--lib",
        "a_q4_bundle_needs_the_q4_feature",
    ]))
}

/// `cargo xtask flash --board qemu-mps2-an386` of the tiny bundle: the firmware
/// (`runtime/firmware-example`) built for the Cortex-M4F and run on QEMU's mps2-an386 under a
/// time limit; its label and the exact
/// bits of its label scores must equal the host runtime's (portable kernels, the same bundle,
/// input and context).
fn firmware_under_qemu() -> anyhow::Result<()> {
    let output = crate::flash::flash_qemu(None, FIRMWARE_INPUT)?;
    require_core(&output, "cortex-m4")?;
    firmware::check_against_host(&output, &firmware::tiny_bundle(), FIRMWARE_INPUT)?;
    // The same image on the Cortex-M7 of mps2-an500 (the same memory map).
    let elf = firmware::build(None, FIRMWARE_INPUT, "mps2-an386")?;
    let output = firmware::run_in_qemu_on(&elf, "mps2-an500")?;
    require_core(&output, "cortex-m7")?;
    firmware::check_against_host(&output, &firmware::tiny_bundle(), FIRMWARE_INPUT)
}

/// The firmware must report running on `core` (its CPUID line).
fn require_core(output: &str, core: &str) -> anyhow::Result<()> {
    if !output.contains(&format!("whittle-firmware: cpu={core} ")) {
        bail!("the firmware did not report cpu={core}; its output is above");
    }
    Ok(())
}

/// The C API (`runtime/capi`, its own workspace) built as a static library for the Cortex-M4F,
/// its header regenerated by cbindgen (and required to equal the committed one), the C example
/// compiled and linked against it with arm-none-eabi-gcc and run on QEMU's mps2-an386; its
/// label and score bits must equal the host runtime's for the same bundle and input.
fn capi_under_qemu() -> anyhow::Result<()> {
    let dir = cargo::workspace_root().join("runtime").join("capi");
    let header = dir.join("include").join("whittle.h");
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    let target_dir = cargo::target_dir()?.join("capi");
    let mut build = cargo::cargo(["build", "--release", "--target", "thumbv7em-none-eabihf"]);
    build.current_dir(&dir).env("CARGO_TARGET_DIR", &target_dir);
    cargo::run(&mut build)?;
    let generated = std::fs::read_to_string(&header)
        .with_context(|| format!("cbindgen wrote no {}", header.display()))?;
    if generated != committed {
        bail!(
            "{} was out of date with runtime/capi/src/lib.rs; the build regenerated it: commit it",
            header.display()
        );
    }
    let library = target_dir
        .join("thumbv7em-none-eabihf")
        .join("release")
        .join("libwhittle_capi.a");
    let bundle = firmware::tiny_bundle();
    let elf = target_dir.join("capi-example.elf");
    let example = dir.join("example");
    let mut compile = cargo::program(
        "arm-none-eabi-gcc",
        [
            "-mcpu=cortex-m4",
            "-mthumb",
            "-mfloat-abi=hard",
            "-mfpu=fpv4-sp-d16",
            "-Os",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffreestanding",
            "-fno-builtin",
            "-nostdlib",
            "-Wl,-z,noexecstack",
        ],
    );
    compile
        .arg("-I")
        .arg(dir.join("include"))
        .arg(format!("-DBUNDLE_PATH=\"\\\"{}\\\"\"", bundle.display()))
        .arg(format!("-DINPUT=\"{FIRMWARE_INPUT}\""))
        .arg("-T")
        .arg(example.join("link.ld"))
        .arg(example.join("startup.c"))
        .arg(example.join("main.c"))
        .arg(&library)
        .arg("-lgcc")
        .arg("-o")
        .arg(&elf);
    cargo::run(&mut compile)?;
    let output = firmware::run_in_qemu(&elf)?;
    firmware::check_against_host(&output, &bundle, FIRMWARE_INPUT)
}

/// Executions of each fuzz target in the suite's short run (the long runs are in
/// docs/RESULTS.md, "Fuzzing").
const FUZZ_RUNS: [(&str, &str); 3] = [
    ("bundle", "30000"),
    ("tokenizer", "300000"),
    ("install_stream", "300000"),
];

/// `cargo fuzz run` (nightly, libFuzzer with AddressSanitizer) of each target in `fuzz/`, from
/// its committed seeds, into a corpus under the target folder; a crash, a hang past 10 s or
/// more than 2 GiB of memory fails the step and leaves the input in `fuzz/artifacts/`.
fn fuzz_short_runs() -> anyhow::Result<()> {
    prerequisites::ensure_fuzzer()?;
    let dir = cargo::workspace_root().join("fuzz");
    let corpora = cargo::target_dir()?.join("fuzz-corpus");
    for (target, runs) in FUZZ_RUNS {
        let corpus = corpora.join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut command = prerequisites::nightly_cargo(["fuzz", "run", "--release", target]);
        command
            .current_dir(&dir)
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .args(["--", "-max_len=16384", "-timeout=10", "-rss_limit_mb=2048"])
            .arg(format!("-runs={runs}"));
        cargo::run(&mut command).with_context(|| {
            format!("fuzz target {target} failed: the input is in fuzz/artifacts/{target}/; reproduce with `cargo +nightly fuzz run {target} ARTIFACT` in fuzz/")
        })?;
    }
    Ok(())
}

/// The text the firmware step classifies.
const FIRMWARE_INPUT: &str = "a charming film";

/// The one aarch64 build the qemu steps share: the runtime (with `std`, its unit tests and
/// the `replay` example) and the device tool, in one invocation so that they resolve one
/// feature set.
fn aarch64_build() -> anyhow::Result<Built> {
    let args = [
        "build",
        "--release",
        "--target",
        DEVICE_TARGET,
        "-p",
        "whittle-runtime",
        "-p",
        "whittle-device",
        "--features",
        "whittle-runtime/std",
        "--lib",
        "--bins",
        "--tests",
        "--examples",
        "--message-format=json-render-diagnostics",
    ];
    println!("    $ cargo {}", args.join(" "));
    workspace::build_with(args)
}

/// `executable` of the aarch64 build under `qemu-aarch64`, on `cpu` (qemu's default without).
fn under_qemu(built: &Built, executable: Executable, cpu: Option<&str>) -> anyhow::Result<Command> {
    let mut command = cargo::program("qemu-aarch64", ["-L", QEMU_SYSROOT]);
    if let Some(cpu) = cpu {
        command.args(["-cpu", cpu]);
    }
    command.arg(built.path(executable)?);
    Ok(command)
}

fn device_under_qemu() -> anyhow::Result<()> {
    let built = aarch64_build()?;
    let mut command = under_qemu(&built, Executable::DeviceTool, None)?;
    command.args(["info", "--json"]);
    println!("    $ {}", cargo::describe(&command));
    let stdout = cargo::stdout_of(&mut command)?;
    print!("{stdout}");
    check_device_info(&stdout)?;
    // The install tests of the aarch64 build, the tool they start under qemu too.
    let mut tests = under_qemu(&built, Executable::DeviceInstallTests, None)?;
    tests
        .current_dir(Executable::DeviceInstallTests.working_dir())
        .env(
            "WHITTLE_DEVICE_RUNNER",
            format!("qemu-aarch64 -L {QEMU_SYSROOT}"),
        );
    cargo::run(&mut tests)
}

/// `cargo xtask flash` to Linux boards ([`crate::deploy_suite`]), after the install test that
/// needs root: a full disk, on a 1 MiB tmpfs.
fn deploy_to_linux_boards() -> anyhow::Result<()> {
    cargo::run(&mut cargo::cargo([
        "test",
        "--release",
        "-p",
        "whittle-device",
        "--test",
        "install",
        "--",
        "--ignored",
    ]))
    .context("the full-disk install test failed (it mounts a tmpfs: run the suite as root)")?;
    crate::deploy_suite::check()
}

/// The runtime's unit tests, NEON kernels included, for aarch64 under qemu.
fn runtime_tests_under_qemu() -> anyhow::Result<()> {
    let built = aarch64_build()?;
    let mut command = under_qemu(&built, Executable::RuntimeUnitTests, None)?;
    // qemu's default CPU has the int8 dot product: require its kernel, so that its suite
    // cannot skip unnoticed.
    command
        .current_dir(Executable::RuntimeUnitTests.working_dir())
        .env("WHITTLE_REQUIRE_KERNELS", "neon-dotprod");
    cargo::run(&mut command)
}

/// `$WHITTLE_CACHE_DIR/bundles`, else `<cache root>/cache/bundles` (`~/.cache/whittle/cache/
/// bundles` on Linux unless `XDG_CACHE_HOME` is set): where the host keeps derived caches,
/// never inside the repository.
fn bundle_cache_dir() -> PathBuf {
    default_cache_dir().join("bundles")
}

/// Real bundles (sst2, q8 and q4, task head, packed once by `whittle pack` from the real model
/// and cached outside the repository); `whittle parity --record` runs a few test examples
/// through the x86_64 runtime (portable kernels) and records predictions and label logits; the
/// runtime's `replay` example, built for x86_64 (best kernels) and for aarch64 (NEON, under
/// qemu), must reproduce them.
fn real_bundle_under_qemu() -> anyhow::Result<()> {
    let built = workspace::build()?;
    let dir = bundle_cache_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}; set WHITTLE_CACHE_DIR", dir.display()))?;
    let aarch64 = aarch64_build()?;
    for dtype in ["q8", "q4"] {
        let bundle = dir.join(format!("sst2-{dtype}-task.wbundle"));
        let record = dir.join(format!("sst2-{dtype}-task.record.json"));
        let pack = || -> anyhow::Result<()> {
            let mut command = built.command(
                Executable::HostTool,
                [
                    "pack", "--task", "sst2", "--dtype", dtype, "--head", "task", "--out",
                ],
            )?;
            cargo::run(command.arg(&bundle))
        };
        let record_parity = || -> anyhow::Result<()> {
            let mut command = built.command(
                Executable::HostTool,
                ["parity", "--limit", REPLAY_EXAMPLES, "--bundle"],
            )?;
            cargo::run(command.arg(&bundle).arg("--record").arg(&record))
        };
        if !bundle.is_file() {
            pack()?;
            record_parity()?;
        } else if record_parity().is_err() {
            println!(
                "    the cached bundle was refused (older format or model?); packing it again"
            );
            pack()?;
            record_parity()?;
        }
        let mut replay = built.command(Executable::ReplayExample, [&bundle, &record])?;
        cargo::run(replay.args(["--threads", "1"]))?;
        // A Cortex-A72 has no int8 dot product (the NEON kernels, within 2e-3); qemu's default
        // CPU has it (the dot-product kernels, which round activations).
        for cpu in [Some("cortex-a72"), None] {
            let mut command = under_qemu(&aarch64, Executable::ReplayExample, cpu)?;
            cargo::run(command.arg(&bundle).arg(&record).args(["--threads", "2"]))?;
        }
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
