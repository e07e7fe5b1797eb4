//! Running cargo and other programs from the workspace root.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, bail};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .map_or_else(|| xtask_dir.join(".."), Path::to_path_buf)
}

/// Where cargo writes build outputs, as `cargo metadata` reports it (`CARGO_TARGET_DIR`,
/// `build.target-dir` or `<root>/target`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let stdout = stdout_of(&mut cargo([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let metadata: Metadata =
        serde_json::from_str(&stdout).context("cannot read the output of `cargo metadata`")?;
    Ok(metadata.target_directory)
}

/// A cargo command (the cargo that runs xtask, by `CARGO`) in the workspace root.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(program);
    command
        .args(args.into_iter().map(Into::into))
        .current_dir(workspace_root());
    command
}

/// Any program, run in the workspace root.
pub fn program<I, S>(name: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut command = Command::new(name);
    command
        .args(args.into_iter().map(Into::into))
        .current_dir(workspace_root());
    command
}

/// The command line as a person would type it, for headers and errors.
pub fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdio and returns its exit status.
pub fn status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(command)))
}

/// Runs a command with inherited stdio; an unsuccessful exit is an error.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    println!("    $ {}", describe(command));
    let exit = status(command)?;
    if !exit.success() {
        bail!("`{}` failed ({exit})", describe(command));
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr goes to the terminal.
pub fn stdout_of(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(command)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(command), output.status);
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8 output", describe(command)))
}

/// The exit code to hand on for a child's exit status (1 when a signal ended it).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// Whether an executable named `name` is on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name))))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }

    #[test]
    fn the_target_folder_is_where_cargo_says() -> anyhow::Result<()> {
        assert!(target_dir()?.is_absolute());
        Ok(())
    }

    #[test]
    fn commands_are_described_as_typed() {
        let command = program("qemu-aarch64", ["-L", "/usr/aarch64-linux-gnu", "a.out"]);
        assert_eq!(
            describe(&command),
            "qemu-aarch64 -L /usr/aarch64-linux-gnu a.out"
        );
    }

    #[test]
    fn sh_is_on_path_and_nonsense_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-whittle-xtask"));
    }
}
