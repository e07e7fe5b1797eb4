//! The Cortex-M firmware's check: what it printed over semihosting, and the host runtime's
//! answer for the same bundle and input to compare it with.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use whittle_runtime::kernels::Portable;
use whittle_runtime::{AlignedBytes, Bundle, Session};

/// `qemu-system-arm` arguments before the firmware's ELF (as the firmware's cargo runner has
/// them): the mps2-an386 board (Cortex-M4F), no display, monitor or serial port, semihosting
/// to the host's standard output, the ELF to load next.
pub const QEMU_ARGS: [&str; 10] = [
    "-M",
    "mps2-an386",
    "-nographic",
    "-monitor",
    "none",
    "-serial",
    "none",
    "-semihosting-config",
    "enable=on,target=native",
    "-kernel",
];

/// Builds the firmware (`runtime/firmware-example`, its own workspace) with `bundle` (the
/// tiny test bundle when `None`) classifying `input`, for the memory map `memory/<memory>.x`;
/// returns the ELF.
pub fn build(bundle: Option<&Path>, input: &str, memory: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::cargo::workspace_root()
        .join("runtime")
        .join("firmware-example");
    let target_dir = crate::cargo::target_dir()?.join(format!("firmware-{memory}"));
    let mut command = crate::cargo::cargo(["build", "--release"]);
    command
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("WHITTLE_INPUT", input)
        .env("WHITTLE_MEMORY", memory);
    match bundle {
        Some(bundle) => {
            let bundle = std::path::absolute(bundle)
                .with_context(|| format!("cannot resolve {}", bundle.display()))?;
            command.env("WHITTLE_BUNDLE", bundle)
        }
        None => command.env_remove("WHITTLE_BUNDLE"),
    };
    crate::cargo::run(&mut command)
        .context("the firmware did not build; its build script's message above names the cause")?;
    Ok(target_dir
        .join("thumbv7em-none-eabihf")
        .join("release")
        .join("whittle-firmware-example"))
}

/// The tiny test bundle the firmware embeds by default.
pub fn tiny_bundle() -> PathBuf {
    crate::cargo::workspace_root()
        .join("runtime")
        .join("firmware-example")
        .join("tiny.wbundle")
}

/// What the firmware printed.
#[derive(Clone, Debug, PartialEq)]
pub struct FirmwareRun {
    /// Label index and name.
    pub label: usize,
    pub name: String,
    /// The label scores, exactly.
    pub scores: Vec<f32>,
    /// Bytes of flash used (code, read-only data, `.data`'s initial values).
    pub flash: usize,
    /// Bytes of the embedded bundle.
    pub bundle: usize,
    /// Bytes of the arena.
    pub arena: usize,
    /// Bytes of RAM taken by statics.
    pub statics: usize,
    /// Tokens of context the session was opened with.
    pub context: usize,
}

/// The host runtime's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct HostAnswer {
    pub label: usize,
    pub name: String,
    pub scores: Vec<f32>,
}

/// Reads the firmware's two `whittle-firmware:` lines; anything else it printed is ignored.
pub fn parse_output(output: &str) -> anyhow::Result<FirmwareRun> {
    let fields = |prefix: &str| -> Option<Vec<(&str, &str)>> {
        output
            .lines()
            .filter_map(|line| line.trim().strip_prefix("whittle-firmware: "))
            .find(|rest| rest.starts_with(prefix))
            .map(|rest| {
                rest.split(' ')
                    .filter_map(|field| field.split_once('='))
                    .collect()
            })
    };
    let get = |fields: &[(&str, &str)], key: &str| -> anyhow::Result<String> {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
            .with_context(|| format!("the firmware printed no {key}= field"))
    };
    let number = |fields: &[(&str, &str)], key: &str| -> anyhow::Result<usize> {
        let value = get(fields, key)?;
        value
            .parse()
            .with_context(|| format!("the firmware's {key}={value} is not a number"))
    };
    let Some(answer) = fields("label=") else {
        bail!("the firmware printed no `whittle-firmware: label=…` line; see its output above");
    };
    let Some(memory) = fields("flash=") else {
        bail!("the firmware printed no `whittle-firmware: flash=…` line; see its output above");
    };
    let scores = get(&answer, "scores")?
        .split(',')
        .map(|bits| {
            u32::from_str_radix(bits, 16)
                .map(f32::from_bits)
                .with_context(|| format!("the firmware's score {bits} is not 8 hex digits"))
        })
        .collect::<anyhow::Result<Vec<f32>>>()?;
    Ok(FirmwareRun {
        label: number(&answer, "label")?,
        name: get(&answer, "name")?,
        scores,
        flash: number(&memory, "flash")?,
        bundle: number(&memory, "bundle")?,
        arena: number(&memory, "arena")?,
        statics: number(&memory, "statics")?,
        context: number(&memory, "context")?,
    })
}

/// The host runtime's label and scores for `input` with the bundle in `bytes`, on the
/// portable kernels the firmware runs, in a session of `context` tokens (64, what the Rust
/// firmware and the C example open; 128 besides).
pub fn host_answer(bytes: &[u8], input: &str, context: usize) -> anyhow::Result<HostAnswer> {
    match context {
        64 => answer_in::<64>(bytes, input),
        128 => answer_in::<128>(bytes, input),
        other => bail!(
            "the firmware ran with {other} tokens of context; the host check knows 64 and 128 (runtime/firmware-example/build.rs, runtime/capi/example/main.c)"
        ),
    }
}

fn answer_in<const CONTEXT: usize>(bytes: &[u8], input: &str) -> anyhow::Result<HostAnswer> {
    let aligned = AlignedBytes::new(bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|error| {
        anyhow::anyhow!("the firmware's bundle is not valid on the host: {error}")
    })?;
    let mut arena = AlignedBytes::zeroed(bundle.arena_bytes(CONTEXT));
    let mut session = Session::<_, CONTEXT>::new(&bundle, Portable, arena.as_bytes_mut())
        .map_err(|error| anyhow::anyhow!("cannot open a host session: {error}"))?;
    let scores = session
        .label_scores(input)
        .map_err(|error| anyhow::anyhow!("the host runtime cannot classify {input:?}: {error}"))?;
    let label = session
        .classify_scores(&scores)
        .map_err(|error| anyhow::anyhow!("the host runtime cannot classify {input:?}: {error}"))?;
    Ok(HostAnswer {
        label: label.label_index,
        name: label.label.to_owned(),
        scores: scores.to_vec(),
    })
}

/// Runs `elf` on QEMU's mps2-an386 under a time limit and returns what it printed on either
/// stream (QEMU sends SYS_WRITE0 to its standard error, SYS_WRITE on handle 1 to its
/// standard output); a firmware that hangs fails instead of the suite.
pub fn run_in_qemu(elf: &Path) -> anyhow::Result<String> {
    run_in_qemu_on(elf, "mps2-an386")
}

/// [`run_in_qemu`] on another QEMU machine of the same memory map (`mps2-an500`: a Cortex-M7).
pub fn run_in_qemu_on(elf: &Path, machine: &str) -> anyhow::Result<String> {
    let mut run = crate::cargo::program(
        "timeout",
        ["--kill-after=10", "300", "qemu-system-arm"]
            .into_iter()
            .chain(QEMU_ARGS)
            .map(|arg| if arg == "mps2-an386" { machine } else { arg }),
    );
    run.arg(elf);
    println!("    $ {}", crate::cargo::describe(&run));
    let output = run
        .output()
        .with_context(|| format!("cannot start `{}`", crate::cargo::describe(&run)))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{printed}");
    if !output.status.success() {
        bail!(
            "the firmware failed in QEMU ({}; 124: it ran past 300 s); its output is above",
            output.status
        );
    }
    Ok(printed)
}

/// Compares what `output` says with the host runtime's answer for `bundle` and `input`, and
/// prints both.
pub fn check_against_host(
    output: &str,
    bundle: &std::path::Path,
    input: &str,
) -> anyhow::Result<()> {
    let firmware = parse_output(output)?;
    let bytes =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let host = host_answer(&bytes, input, firmware.context)?;
    compare(&firmware, &host)?;
    println!(
        "    equal to the host runtime: label {} ({}), scores {:?}; flash {} B (bundle {} B), arena {} B, statics {} B, context {}",
        host.label,
        host.name,
        host.scores,
        firmware.flash,
        firmware.bundle,
        firmware.arena,
        firmware.statics,
        firmware.context
    );
    Ok(())
}

/// Fails unless the firmware's label and scores are the host's, bit for bit.
pub fn compare(firmware: &FirmwareRun, host: &HostAnswer) -> anyhow::Result<()> {
    let bits = |scores: &[f32]| scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
    if firmware.label != host.label
        || firmware.name != host.name
        || bits(&firmware.scores) != bits(&host.scores)
    {
        bail!(
            "the firmware answered label {} ({}) with scores {:?}; the host runtime answers {} ({}) with {:?}",
            firmware.label,
            firmware.name,
            firmware.scores,
            host.label,
            host.name,
            host.scores
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "whittle-firmware: label=1 name=positive scores=3f800000,c0000000\n\
        whittle-firmware: flash=70000 bundle=60000 arena=16384 statics=0 context=64\n";

    #[test]
    fn the_firmware_output_is_read_and_compared_exactly() -> anyhow::Result<()> {
        let run = parse_output(OUTPUT)?;
        assert_eq!(run.label, 1);
        assert_eq!(run.name, "positive");
        assert_eq!(run.scores, vec![1.0, -2.0]);
        assert_eq!(
            (run.flash, run.bundle, run.arena, run.statics, run.context),
            (70000, 60000, 16384, 0, 64)
        );
        let host = HostAnswer {
            label: 1,
            name: "positive".to_owned(),
            scores: vec![1.0, -2.0],
        };
        compare(&run, &host)?;
        let off = HostAnswer {
            scores: vec![1.0, -2.000_000_2],
            ..host.clone()
        };
        assert!(
            compare(&run, &off).is_err(),
            "one ulp apart is a difference"
        );
        let other = HostAnswer { label: 0, ..host };
        assert!(compare(&run, &other).is_err());
        Ok(())
    }

    #[test]
    fn missing_or_malformed_lines_are_errors() {
        for (output, expected) in [
            ("", "no `whittle-firmware: label="),
            (
                "whittle-firmware: error: bundle refused\n",
                "no `whittle-firmware: label=",
            ),
            (
                "whittle-firmware: label=1 name=x scores=3f800000\n",
                "no `whittle-firmware: flash=",
            ),
            (
                "whittle-firmware: label=1 name=x scores=zz\nwhittle-firmware: flash=1 bundle=1 arena=1 statics=0 context=64\n",
                "not 8 hex digits",
            ),
            (
                "whittle-firmware: label=1 name=x scores=3f800000\nwhittle-firmware: flash=1 bundle=1 arena=1 context=64\n",
                "no statics= field",
            ),
        ] {
            let error = parse_output(output).expect_err(output);
            assert!(
                format!("{error:#}").contains(expected),
                "{output:?}: {error:#}"
            );
        }
    }
}
