//! `cargo xtask flash`: puts a bundle on a microcontroller inside firmware. The firmware
//! (`runtime/firmware-example`) is built with the bundle for the board's memory map, then run:
//! in QEMU for `qemu-mps2-an386` (what `cargo xtask test` does), with probe-rs on a board with
//! a debug probe. Linux boards take bundles through `whittle-device install`, which is not
//! built yet.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use whittle_boards::BoardProfile;
use whittle_runtime::{AlignedBytes, Bundle};

use crate::{cargo, firmware};

#[derive(Debug, Args)]
pub struct FlashArgs {
    /// `qemu-mps2-an386` (QEMU's Cortex-M4F, no hardware needed) or `stm32h743` (with a debug
    /// probe and probe-rs).
    #[arg(long)]
    board: String,
    /// The bundle to embed (`whittle prune` or `whittle pack` output).
    #[arg(long)]
    bundle: PathBuf,
    /// The text the firmware classifies once at start.
    #[arg(long, default_value = "a charming film")]
    input: String,
}

/// Where a flashed firmware runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// QEMU's mps2-an386.
    Qemu,
    /// A board behind a debug probe, `chip` as probe-rs names it.
    Probe { chip: &'static str },
}

/// The target and memory map (`runtime/firmware-example/memory/<name>.x`) of `board`.
pub fn target(board: &str) -> anyhow::Result<(Target, &'static str)> {
    if board == "qemu-mps2-an386" {
        return Ok((Target::Qemu, "mps2-an386"));
    }
    let profile = BoardProfile::resolve(board).with_context(|| {
        format!(
            "--board {board}: give qemu-mps2-an386, stm32h743 or a board `cargo xtask boards` lists"
        )
    })?;
    match profile.name.as_str() {
        "stm32h743" => Ok((
            Target::Probe {
                chip: "STM32H743ZITx",
            },
            "stm32h743",
        )),
        name if profile.target_triple.contains("linux") => bail!(
            "board {name} runs Linux: its bundles go on with `whittle-device install`, which is not built yet (issue 15); copy the bundle over and run `whittle-device run BUNDLE --text TEXT` there"
        ),
        name => bail!(
            "board {name} has no firmware memory map yet; the firmware targets qemu-mps2-an386 and stm32h743"
        ),
    }
}

/// Refuses a bundle pruned for another board than `board` (a dense bundle names none).
pub fn check_board(bundle: &Path, pruned_for: &str, board: &str) -> anyhow::Result<()> {
    let same = pruned_for.is_empty()
        || pruned_for == board
        || BoardProfile::resolve(board).is_ok_and(|profile| profile.answers_to(pruned_for));
    if !same {
        bail!(
            "{} was pruned for board {pruned_for}, not {board}: prune for {board} (`cargo xtask prune --board {board}`) or flash it to {pruned_for}",
            bundle.display()
        );
    }
    Ok(())
}

pub fn run(args: &FlashArgs) -> anyhow::Result<()> {
    let (target, memory) = target(&args.board)?;
    let bytes = std::fs::read(&args.bundle).with_context(|| {
        format!(
            "cannot read --bundle {}; give a file written by `whittle prune` or `whittle pack`",
            args.bundle.display()
        )
    })?;
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|error| {
        anyhow::anyhow!(
            "--bundle {} is not a valid bundle: {error}",
            args.bundle.display()
        )
    })?;
    check_board(&args.bundle, bundle.header().provenance.board, &args.board)?;
    match target {
        Target::Qemu => {
            flash_qemu(Some(&args.bundle), &args.input)?;
        }
        Target::Probe { chip } => {
            let elf = firmware::build(Some(&args.bundle), &args.input, memory)?;
            flash_probe(&elf, chip)?;
        }
    }
    Ok(())
}

/// Builds the firmware with `bundle` (the tiny test bundle when `None`) and runs it in QEMU's
/// mps2-an386; returns what it printed.
pub fn flash_qemu(bundle: Option<&Path>, input: &str) -> anyhow::Result<String> {
    let elf = firmware::build(bundle, input, "mps2-an386")?;
    firmware::run_in_qemu(&elf)
}

/// What to tell a user whose machine lacks probe-rs.
pub const PROBE_RS_MISSING: &str = "probe-rs is not on PATH; install it with `cargo install probe-rs-tools --locked` (https://probe.rs), connect the board's debug probe over USB and run this again";

/// Flashes `elf` with `probe-rs run` (which also carries the firmware's semihosting output).
fn flash_probe(elf: &Path, chip: &str) -> anyhow::Result<()> {
    if !cargo::on_path("probe-rs") {
        bail!("{PROBE_RS_MISSING}");
    }
    let mut command = cargo::program("probe-rs", ["run", "--chip", chip]);
    command.arg(elf);
    println!("    $ {}", cargo::describe(&command));
    let output = command
        .output()
        .with_context(|| format!("cannot start `{}`", cargo::describe(&command)))?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("No probe") || stderr.contains("no probe") {
            bail!(
                "no debug probe is attached: connect the {chip} board's probe (ST-LINK) over USB and run this again"
            );
        }
        eprint!("{stderr}");
        bail!(
            "probe-rs could not flash {} ({}); see its output above",
            elf.display(),
            output.status
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_map_to_targets_or_say_why_not() {
        assert_eq!(
            target("qemu-mps2-an386").expect("qemu"),
            (Target::Qemu, "mps2-an386")
        );
        assert_eq!(
            target("stm32h743").expect("stm32"),
            (
                Target::Probe {
                    chip: "STM32H743ZITx"
                },
                "stm32h743"
            )
        );
        let linux = target("jetson-orin").expect_err("a Linux board");
        assert!(
            format!("{linux:#}").contains("whittle-device install"),
            "{linux:#}"
        );
        let unknown = target("no-such-board").expect_err("an unknown board");
        assert!(
            format!("{unknown:#}").contains("qemu-mps2-an386"),
            "{unknown:#}"
        );
    }

    #[test]
    fn a_bundle_for_another_board_is_refused() {
        let bundle = Path::new("b.wbundle");
        check_board(bundle, "", "stm32h743").expect("a dense bundle names no board");
        check_board(bundle, "stm32h743", "stm32h743").expect("the same board");
        check_board(bundle, "jetson-orin-nano-8gb", "jetson-orin").expect("an alias");
        let error =
            check_board(bundle, "jetson-orin-nano-8gb", "stm32h743").expect_err("another board");
        assert!(
            format!("{error:#}").contains("pruned for board jetson-orin-nano-8gb, not stm32h743"),
            "{error:#}"
        );
    }
}
