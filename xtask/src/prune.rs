//! `cargo xtask prune`: the product's main command, once the search exists.

use std::ffi::OsString;
use std::process::ExitCode;

/// Says plainly that pruning is not implemented and what works today; exits with status 2.
pub fn run(_args: &[OsString]) -> ExitCode {
    eprintln!(
        "prune: not yet implemented — the board-aware search lands with issue #4; \
         today: cargo xtask eval --task sst2 --split test"
    );
    ExitCode::from(2)
}
