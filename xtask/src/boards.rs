//! `cargo xtask boards`: lists the board profiles through `whittle-device boards`, after
//! measuring this machine's `host` profile with `--measure-host`.

use std::process::ExitCode;

use crate::cargo;
use crate::workspace::{self, Executable};

/// Measures `host` into the cache first when asked, then lists every board; exits as the
/// listing does.
pub fn run(measure_host: bool, json: bool) -> anyhow::Result<ExitCode> {
    let built = workspace::build()?;
    if measure_host {
        cargo::run(&mut built.command(Executable::DeviceTool, ["profile", "--install"])?)?;
    }
    let list: &[&str] = if json {
        &["boards", "--json"]
    } else {
        &["boards"]
    };
    let mut list = built.command(Executable::DeviceTool, list)?;
    Ok(cargo::exit_code(cargo::status(&mut list)?))
}
