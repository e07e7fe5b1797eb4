//! The one build of the workspace that every task shares, and the programs it makes.
//!
//! Every task that needs a host program (`whittle`, `whittle-device`, the `replay` example, the
//! `prefill` benchmark) runs [`build`]: `cargo build --workspace --release --all-targets`, then
//! runs the program from where cargo reports it. One invocation means one feature resolution,
//! the one `cargo test --workspace --release` also resolves (both include the dev-dependencies),
//! so that after `cargo xtask test` no task compiles anything again. `cargo run -p whittle-host`
//! would resolve the features of that package alone and compile candle a second time.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cargo;

/// The cargo arguments of the one host build.
pub const WORKSPACE_BUILD: [&str; 5] = [
    "build",
    "--workspace",
    "--release",
    "--all-targets",
    "--message-format=json-render-diagnostics",
];

/// A program the workspace build makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executable {
    /// `whittle`, the pruner (package `whittle-host`).
    HostTool,
    /// `whittle-device`, the tool for the board.
    DeviceTool,
    /// The runtime's `replay` example.
    ReplayExample,
    /// The host `prefill` benchmark (package `whittle-tests`, no test harness).
    PrefillBench,
    /// The runtime library's unit tests (a test-harness program).
    RuntimeUnitTests,
    /// The device tool's install tests (`device/tests/install.rs`).
    DeviceInstallTests,
    /// The real-model CUDA test (`tests/tests/real_model_cuda.rs`) of the cuda build
    /// ([`crate::gpu_check`]).
    CudaTest,
}

impl Executable {
    /// Cargo's target kind and name.
    fn target(self) -> (&'static str, &'static str) {
        match self {
            Self::HostTool => ("bin", "whittle"),
            Self::DeviceTool => ("bin", "whittle-device"),
            Self::ReplayExample => ("example", "replay"),
            Self::PrefillBench => ("bench", "prefill"),
            Self::RuntimeUnitTests => ("lib", "whittle_runtime"),
            Self::DeviceInstallTests => ("test", "install"),
            Self::CudaTest => ("test", "real_model_cuda"),
        }
    }

    /// Whether cargo builds it in test mode (`--all-targets` builds benchmarks so; a binary's
    /// test-mode build is its unit tests, not the program).
    fn test_mode(self) -> bool {
        matches!(
            self,
            Self::PrefillBench | Self::RuntimeUnitTests | Self::DeviceInstallTests | Self::CudaTest
        )
    }

    /// The folder it runs in: the workspace root, or, for a benchmark or unit tests, its
    /// package's folder (where `cargo bench` and `cargo test` run them).
    pub fn working_dir(self) -> PathBuf {
        let root = cargo::workspace_root();
        match self {
            Self::PrefillBench => root.join("tests"),
            Self::RuntimeUnitTests => root.join("runtime"),
            Self::DeviceInstallTests => root.join("device"),
            Self::CudaTest => root.join("tests"),
            Self::HostTool | Self::DeviceTool | Self::ReplayExample => root,
        }
    }
}

/// The programs a build made, as cargo reported them.
#[derive(Debug, Default)]
pub struct Built {
    artifacts: Vec<Artifact>,
}

/// One program cargo built.
#[derive(Debug)]
struct Artifact {
    target: ArtifactTarget,
    test_mode: bool,
    executable: PathBuf,
}

/// A line of cargo's JSON output; only `compiler-artifact` lines have the other fields.
#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    target: Option<ArtifactTarget>,
    profile: Option<ArtifactProfile>,
    executable: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct ArtifactTarget {
    name: String,
    kind: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ArtifactProfile {
    test: bool,
}

impl Built {
    /// Reads cargo's JSON messages (one a line); keeps the artifacts that are programs.
    pub fn from_messages(stdout: &str) -> anyhow::Result<Self> {
        let mut artifacts = Vec::new();
        for line in stdout.lines().filter(|line| line.starts_with('{')) {
            let message: Message = serde_json::from_str(line)
                .with_context(|| format!("cannot read cargo's message {line}"))?;
            if let ("compiler-artifact", Some(target), Some(profile), Some(executable)) = (
                message.reason.as_str(),
                message.target,
                message.profile,
                message.executable,
            ) {
                artifacts.push(Artifact {
                    target,
                    test_mode: profile.test,
                    executable,
                });
            }
        }
        Ok(Self { artifacts })
    }

    /// Adds what another build made.
    pub fn extend(&mut self, other: Self) {
        self.artifacts.extend(other.artifacts);
    }

    /// Where `executable` is.
    pub fn path(&self, executable: Executable) -> anyhow::Result<&Path> {
        let (kind, name) = executable.target();
        self.artifacts
            .iter()
            .find(|artifact| {
                artifact.target.name == name
                    && artifact.target.kind.iter().any(|k| k == kind)
                    && artifact.test_mode == executable.test_mode()
            })
            .map(|artifact| artifact.executable.as_path())
            .with_context(|| format!("the build made no {kind} `{name}`; see cargo's output above"))
    }

    /// `executable` with `args`, in its working folder.
    pub fn command<I, S>(&self, executable: Executable, args: I) -> anyhow::Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut command = cargo::program(self.path(executable)?, args);
        command.current_dir(executable.working_dir());
        Ok(command)
    }
}

/// Runs the one host build ([`WORKSPACE_BUILD`]); cargo's progress and errors go to stderr.
pub fn build() -> anyhow::Result<Built> {
    build_with(WORKSPACE_BUILD)
}

/// Runs `cargo <args>` (a build that prints JSON messages) and collects what it made.
pub fn build_with<I, S>(args: I) -> anyhow::Result<Built>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    built_by(&mut cargo::cargo(args))
}

/// Runs `command` (a cargo build that prints JSON messages) and collects what it made.
pub fn built_by(command: &mut Command) -> anyhow::Result<Built> {
    let stdout = cargo::stdout_of(command)?;
    let built = Built::from_messages(&stdout)?;
    if built.artifacts.is_empty() {
        bail!("`{}` made no programs", cargo::describe(command));
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGES: &str = concat!(
        r#"{"reason":"compiler-artifact","package_id":"path+file:///w/host#whittle-host@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"whittle","src_path":"/w/host/src/main.rs"},"profile":{"opt_level":"3","test":true},"executable":"/t/release/deps/whittle-0123","fresh":true}"#,
        "\n",
        r#"{"reason":"compiler-artifact","package_id":"path+file:///w/host#whittle-host@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"whittle","src_path":"/w/host/src/main.rs"},"profile":{"opt_level":"3","test":false},"executable":"/t/release/whittle","fresh":true}"#,
        "\n",
        r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#whittle-tests@0.1.0","target":{"kind":["bench"],"crate_types":["bin"],"name":"prefill","src_path":"/w/tests/benches/prefill.rs"},"profile":{"opt_level":"3","test":true},"executable":"/t/release/deps/prefill-4567","fresh":false}"#,
        "\n",
        r#"{"reason":"compiler-artifact","package_id":"path+file:///w/runtime#whittle-runtime@0.1.0","target":{"kind":["lib"],"crate_types":["lib"],"name":"whittle_runtime","src_path":"/w/runtime/src/lib.rs"},"profile":{"opt_level":"3","test":false},"executable":null,"fresh":true}"#,
        "\n",
        r#"{"reason":"build-finished","success":true}"#,
        "\n",
    );

    fn check(executable: Executable, expected: Option<&str>) {
        let built = match Built::from_messages(MESSAGES) {
            Ok(built) => built,
            Err(error) => panic!("{error:#}"),
        };
        let found = built.path(executable).ok().map(Path::to_path_buf);
        assert_eq!(found, expected.map(PathBuf::from), "{executable:?}");
    }

    #[test]
    fn programs_are_found_where_cargo_reports_them() {
        check(Executable::HostTool, Some("/t/release/whittle"));
        check(
            Executable::PrefillBench,
            Some("/t/release/deps/prefill-4567"),
        );
        check(Executable::DeviceTool, None);
        check(Executable::ReplayExample, None);
    }

    #[test]
    fn every_task_builds_the_whole_workspace_with_all_targets() {
        assert_eq!(
            WORKSPACE_BUILD[..4],
            ["build", "--workspace", "--release", "--all-targets"]
        );
    }
}
