//! `cargo xtask boards`: lists the board profiles through `whittle-device boards`, after
//! measuring this machine's `host` profile with `--measure-host`.

use std::process::ExitCode;

use crate::cargo;
use crate::workspace::{self, Built, Executable};

/// Measures `host` into the cache first when asked, then lists every board; exits as the
/// listing does.
pub fn run(measure_host: bool, json: bool) -> anyhow::Result<ExitCode> {
    let built = workspace::build()?;
    if measure_host {
        measure_host_profile(&built, false)?;
    }
    let list: &[&str] = if json {
        &["boards", "--json"]
    } else {
        &["boards"]
    };
    let mut list = built.command(Executable::DeviceTool, list)?;
    Ok(cargo::exit_code(cargo::status(&mut list)?))
}

/// Measures this machine into the cached `host` profile (`whittle-device profile --install`)
/// and reads it back, so that what follows predicts from the machine as it is now. With
/// `merge`, each figure is the better of this measurement and the profile already installed
/// (`--merge`).
pub fn measure_host_profile(built: &Built, merge: bool) -> anyhow::Result<()> {
    let args: &[&str] = if merge {
        &["profile", "--install", "--merge"]
    } else {
        &["profile", "--install"]
    };
    cargo::run(&mut built.command(Executable::DeviceTool, args)?)?;
    whittle_boards::BoardProfile::measured_host().map_err(|error| {
        anyhow::anyhow!("the host profile is unreadable after measuring it: {error}")
    })?;
    Ok(())
}
