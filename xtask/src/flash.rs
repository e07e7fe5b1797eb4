//! `cargo xtask flash`: puts a bundle on a board. A microcontroller gets it inside firmware:
//! `runtime/firmware-example` is built with the bundle for the board's memory map, then run in
//! QEMU for `qemu-mps2-an386` (what `cargo xtask test` does), or with probe-rs on a board with
//! a debug probe. A Linux board gets it through `whittle-device install`, over ssh or into a
//! mounted store (`--to`, [`crate::deploy`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use whittle_boards::BoardProfile;
use whittle_runtime::{AlignedBytes, Bundle};

use crate::{cargo, firmware};

#[derive(Debug, Args)]
#[command(after_help = "\
Linux boards (Jetson Orin, Raspberry Pi 5):
  cargo xtask flash --board jetson-orin --bundle B --key KEY.pub --to ssh://user@host[:port][/dir]
  cargo xtask flash --board rpi5 --bundle B --key KEY.pub --to dir:/mnt/sdcard/var/lib/whittle
  cargo xtask flash --to ssh://user@host --rollback
  The bundle must be signed (`whittle pack --sign KEY`) by KEY.pub, which a device that trusts
  no key yet is told to trust; the device checks it again, runs its self-check and switches
  atomically (`whittle-device status` there shows what is installed).
Microcontrollers:
  cargo xtask flash --board qemu-mps2-an386 --bundle B   (QEMU's Cortex-M4F, no hardware)
  cargo xtask flash --board stm32h743 --bundle B         (a debug probe and probe-rs)")]
pub struct FlashArgs {
    /// The board: a Linux board (with --to), `qemu-mps2-an386` (QEMU's Cortex-M4F, no
    /// hardware needed) or `stm32h743` (with a debug probe and probe-rs).
    #[arg(long, required_unless_present = "rollback")]
    board: Option<String>,
    /// The bundle (`whittle prune` or `whittle pack` output).
    #[arg(long, required_unless_present = "rollback")]
    bundle: Option<PathBuf>,
    /// A Linux board's store: `ssh://[user@]host[:port][/dir]` (dir default /var/lib/whittle)
    /// or `dir:PATH` (a mounted root file system or SD card).
    #[arg(long, value_name = "DESTINATION")]
    to: Option<String>,
    /// The public key (KEY.pub) the bundle must be signed by.
    #[arg(long, value_name = "KEY.pub", conflicts_with = "allow_unsigned")]
    key: Option<PathBuf>,
    /// Send a bundle without checking a signature (a device that trusts a key still refuses it).
    #[arg(long)]
    allow_unsigned: bool,
    /// Make the device's previous bundle current again (with --to).
    #[arg(long, requires = "to", conflicts_with_all = ["bundle", "board"])]
    rollback: bool,
    /// An ssh option (`-o`), for example `IdentityFile=~/.ssh/board`; repeatable.
    #[arg(long, value_name = "OPTION")]
    ssh_option: Vec<String>,
    /// The text the firmware classifies once at start (microcontrollers).
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
            "board {name} runs Linux: say where its store is with --to ssh://user@host[:port][/dir] or --to dir:/mounted/store (the bundle goes on through whittle-device install)"
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
    if let Some(to) = &args.to {
        return crate::deploy::run(&crate::deploy::Deploy {
            to: crate::deploy::Destination::parse(to)?,
            board: args.board.as_deref(),
            bundle: args.bundle.as_deref(),
            key: args.key.as_deref(),
            allow_unsigned: args.allow_unsigned,
            rollback: args.rollback,
            ssh_options: &args.ssh_option,
        });
    }
    let (Some(board), Some(path)) = (args.board.as_deref(), args.bundle.as_deref()) else {
        bail!("give --board and --bundle");
    };
    let (target, memory) = target(board)?;
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read --bundle {}; give a file written by `whittle prune` or `whittle pack`",
            path.display()
        )
    })?;
    let aligned = AlignedBytes::new(&bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|error| {
        anyhow::anyhow!("--bundle {} is not a valid bundle: {error}", path.display())
    })?;
    check_board(path, bundle.header().provenance.board, board)?;
    match target {
        Target::Qemu => {
            flash_qemu(Some(path), &args.input)?;
        }
        Target::Probe { chip } => {
            let elf = firmware::build(Some(path), &args.input, memory)?;
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
        assert!(format!("{linux:#}").contains("--to ssh://"), "{linux:#}");
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
