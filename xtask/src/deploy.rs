//! `cargo xtask flash --to ssh://…|dir:…`: a bundle onto a Linux board. The host checks the
//! bundle before anything is sent (checksums, the signature against `--key`, the board it was
//! pruned for, the board's memory), builds `whittle-device` for the board's target triple and
//! sends it when the device lacks it or has another build, then streams the bundle into
//! `whittle-device install --stdin --len N --sha256 H` over the system `ssh` (so the user's
//! ssh config, agent and jump hosts apply), or installs it into a mounted root file system or
//! SD card (`dir:`) with this machine's build of the tool. The device's store is `DIR`
//! (default `/var/lib/whittle`), its tool `DIR/bin/whittle-device`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use whittle_boards::BoardProfile;
use whittle_runtime::{AlignedBytes, Bundle};

use crate::cargo;

/// The device's store when `--to` names no folder (`whittle-device`'s default `--root`).
pub const DEFAULT_DIR: &str = "/var/lib/whittle";

/// The target triple of this machine's own builds.
const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Where a Linux board's bundles go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Over ssh: `destination` as ssh takes it (`user@host`), the port, the store folder.
    Ssh {
        /// `[user@]host`.
        destination: String,
        /// The port, when given.
        port: Option<u16>,
        /// The store on the device.
        dir: String,
    },
    /// A store folder on this machine (a mounted root file system or SD card).
    Dir(PathBuf),
}

impl Destination {
    /// Parses `ssh://[user@]host[:port][/dir]` or `dir:PATH`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("dir:") {
            if path.is_empty() {
                bail!("--to dir: needs a folder, for example dir:/mnt/sdcard/var/lib/whittle");
            }
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("ssh://") else {
            bail!(
                "--to {text}: give ssh://[user@]host[:port][/dir] or dir:/path/to/store (a mounted root file system or SD card)"
            );
        };
        let (authority, dir) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, DEFAULT_DIR),
        };
        let (destination, port) = match authority.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| {
                        format!("--to {text}: the port {port:?} is not a number from 1 to 65535")
                    })?;
                (host, Some(port))
            }
            None => (authority, None),
        };
        let host = destination.rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            bail!("--to {text}: no host; give ssh://[user@]host[:port][/dir]");
        }
        if dir.contains('\'') {
            bail!("--to {text}: the folder may not contain a quote");
        }
        Ok(Self::Ssh {
            destination: destination.to_owned(),
            port,
            dir: if dir == "/" { DEFAULT_DIR } else { dir }.to_owned(),
        })
    }
}

/// What a Linux flash is asked to do.
#[derive(Clone, Debug)]
pub struct Deploy<'a> {
    /// Where to.
    pub to: Destination,
    /// The board (required unless rolling back).
    pub board: Option<&'a str>,
    /// The bundle (required unless rolling back).
    pub bundle: Option<&'a Path>,
    /// The public key the bundle must be signed by.
    pub key: Option<&'a Path>,
    /// Send an unsigned (or unchecked) bundle.
    pub allow_unsigned: bool,
    /// Make the previous bundle current again instead.
    pub rollback: bool,
    /// `-o` options for ssh.
    pub ssh_options: &'a [String],
}

/// `cargo xtask flash --to …`.
pub fn run(deploy: &Deploy<'_>) -> anyhow::Result<()> {
    if deploy.rollback {
        return match &deploy.to {
            Destination::Ssh { dir, .. } => {
                let output = ssh(
                    deploy,
                    &format!("'{dir}/bin/whittle-device' rollback --root '{dir}'"),
                    None,
                )?;
                print!("{output}");
                Ok(())
            }
            Destination::Dir(dir) => {
                let mut command = Command::new(native_tool()?);
                command.arg("rollback").arg("--root").arg(dir);
                cargo::run(&mut command)
            }
        };
    }
    let (Some(board), Some(bundle_path)) = (deploy.board, deploy.bundle) else {
        bail!("give --board and --bundle (or --rollback)");
    };
    let profile = BoardProfile::resolve(board).with_context(|| {
        format!("--board {board}: give a board `cargo xtask boards` lists, or a profile .toml")
    })?;
    if !profile.target_triple.contains("linux") {
        bail!(
            "board {} is a microcontroller ({}): drop --to; `cargo xtask flash --board {board} --bundle B` builds firmware with the bundle",
            profile.name,
            profile.target_triple
        );
    }
    let bytes = std::fs::read(bundle_path).with_context(|| {
        format!(
            "cannot read --bundle {}; give a file written by `whittle prune` or `whittle pack`",
            bundle_path.display()
        )
    })?;
    let digest = hex(&Sha256::digest(&bytes));
    check_bundle(deploy, &profile, board, bundle_path, &bytes)?;
    match &deploy.to {
        Destination::Ssh { dir, .. } => {
            let probe = ssh(
                deploy,
                &format!(
                    "uname -m; sha256sum '{dir}/bin/whittle-device' 2>/dev/null || echo none; ls '{dir}/keys' 2>/dev/null | grep -c '[.]pub$' || true"
                ),
                None,
            )?;
            let mut lines = probe.lines().map(str::trim);
            let machine = lines.next().unwrap_or_default().to_owned();
            let installed_tool = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let trusted: usize = lines.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            check_architecture(&machine, &profile.target_triple, &profile.name)?;
            let tool = build_tool(&profile.target_triple)?;
            let tool_digest = hex(&Sha256::digest(
                std::fs::read(&tool).with_context(|| format!("cannot read {}", tool.display()))?,
            ));
            if installed_tool == tool_digest {
                println!("==> the device has this build of whittle-device");
            } else {
                println!("==> sending whittle-device to {dir}/bin");
                ssh(
                    deploy,
                    &format!(
                        "mkdir -p '{dir}/bin' && cat > '{dir}/bin/.whittle-device.new' && chmod 755 '{dir}/bin/.whittle-device.new' && mv '{dir}/bin/.whittle-device.new' '{dir}/bin/whittle-device'"
                    ),
                    Some(&tool),
                )?;
            }
            if let (Some(key), 0) = (deploy.key, trusted) {
                println!(
                    "==> the device trusts no key yet: trusting {}",
                    key.display()
                );
                let output = ssh(
                    deploy,
                    &format!("'{dir}/bin/whittle-device' trust /dev/stdin --root '{dir}'"),
                    Some(key),
                )?;
                print!("{output}");
            }
            println!(
                "==> sending {} ({} bytes, sha256 {digest})",
                bundle_path.display(),
                bytes.len()
            );
            let output = ssh(
                deploy,
                &format!(
                    "'{dir}/bin/whittle-device' install --root '{dir}' --stdin --len {} --sha256 {digest}{}",
                    bytes.len(),
                    if deploy.allow_unsigned {
                        " --allow-unsigned"
                    } else {
                        ""
                    }
                ),
                Some(bundle_path),
            )?;
            print!("{output}");
        }
        Destination::Dir(dir) => {
            let tool = build_tool(&profile.target_triple)?;
            let bin = dir.join("bin");
            let target = bin.join("whittle-device");
            let tool_bytes =
                std::fs::read(&tool).with_context(|| format!("cannot read {}", tool.display()))?;
            if std::fs::read(&target).ok().as_deref() != Some(tool_bytes.as_slice()) {
                println!("==> copying whittle-device to {}", bin.display());
                write_executable(&target, &tool_bytes)?;
            }
            let native = native_tool()?;
            if let Some(key) = deploy.key {
                let keys = std::fs::read_dir(dir.join("keys")).map_or(0, |entries| entries.count());
                if keys == 0 {
                    println!(
                        "==> the store trusts no key yet: trusting {}",
                        key.display()
                    );
                    cargo::run(
                        Command::new(&native)
                            .arg("trust")
                            .arg(key)
                            .arg("--root")
                            .arg(dir),
                    )?;
                }
            }
            let mut command = Command::new(&native);
            command
                .arg("install")
                .arg(bundle_path)
                .arg("--root")
                .arg(dir);
            if deploy.allow_unsigned {
                command.arg("--allow-unsigned");
            }
            cargo::run(&mut command)?;
        }
    }
    Ok(())
}

/// The host's checks before anything is sent.
fn check_bundle(
    deploy: &Deploy<'_>,
    profile: &BoardProfile,
    board: &str,
    path: &Path,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let aligned = AlignedBytes::new(bytes);
    let bundle = Bundle::parse(aligned.as_bytes()).map_err(|error| {
        anyhow::anyhow!(
            "--bundle {} is not a valid bundle: {error}; re-pack it",
            path.display()
        )
    })?;
    crate::flash::check_board(path, bundle.header().provenance.board, board)?;
    match (deploy.key, deploy.allow_unsigned) {
        (Some(key), _) => {
            let public = read_public_key(key)?;
            Bundle::parse_signed(aligned.as_bytes(), &public).map_err(|error| {
                anyhow::anyhow!(
                    "--bundle {} is not signed by {}: {error}; pack it with `whittle pack --sign KEY` for this KEY.pub",
                    path.display(),
                    key.display()
                )
            })?;
            println!("==> {} is signed by {}", path.display(), key.display());
        }
        (None, true) => eprintln!(
            "WARNING: --allow-unsigned: {} is sent without a signature check; the device installs it only if it trusts no key",
            path.display()
        ),
        (None, false) => bail!(
            "give --key KEY.pub (the public key of the key the bundle was signed with) or --allow-unsigned"
        ),
    }
    let needed = bytes.len() as u64 + bundle.arena_bytes(1024) as u64;
    let budget = profile.memory_budget_bytes();
    if needed > budget {
        bail!(
            "the bundle needs {:.1} MB with its arena, more than the {:.1} MB board {} gives a model: prune for it (`cargo xtask prune --board {board}`) or choose a larger board",
            needed as f64 / 1e6,
            budget as f64 / 1e6,
            profile.name
        );
    }
    Ok(())
}

/// The device's `uname -m` must be the board's architecture.
pub fn check_architecture(machine: &str, triple: &str, board: &str) -> anyhow::Result<()> {
    let wanted = triple.split('-').next().unwrap_or_default();
    let machine = match machine {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        other => other,
    };
    if machine != wanted {
        bail!(
            "the device is {machine}, but board {board} is {wanted} ({triple}): flash with the device's board (`--board`), or check that --to names the device you mean"
        );
    }
    Ok(())
}

/// Builds `whittle-device` for `triple` and returns the executable: on this machine's triple
/// the workspace's own release build (one feature set for every task), else a cross build.
fn build_tool(triple: &str) -> anyhow::Result<PathBuf> {
    if triple == HOST_TRIPLE {
        let built = crate::workspace::build()?;
        return Ok(built
            .path(crate::workspace::Executable::DeviceTool)?
            .to_owned());
    }
    let target_dir = cargo::target_dir()?;
    let mut command = cargo::cargo([
        "build",
        "--release",
        "-p",
        "whittle-device",
        "--target",
        triple,
    ]);
    cargo::run(&mut command).with_context(|| {
        format!(
            "cannot build whittle-device for {triple}: add the target (`rustup target add {triple}`) and its linker (for aarch64: `apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross`)"
        )
    })?;
    Ok(target_dir
        .join(triple)
        .join("release")
        .join("whittle-device"))
}

/// This machine's build of the tool (for `dir:`).
pub fn native_tool() -> anyhow::Result<PathBuf> {
    build_tool(HOST_TRIPLE)
}

fn write_executable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = dir.join(".whittle-device.new");
    let mut file = std::fs::File::create(&staged).with_context(|| {
        format!(
            "cannot write {}; is the card mounted writable?",
            staged.display()
        )
    })?;
    file.write_all(bytes)
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot replace {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

fn read_public_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --key {}", path.display()))?;
    whittle_runtime::format::public_key_from_hex(&text).with_context(|| {
        format!(
            "--key {} is not a public key (64 hex digits, the KEY.pub `whittle keygen` writes)",
            path.display()
        )
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `remote` (a shell command line) on the device with `stdin` from a file; returns its
/// standard output, and turns ssh's own failures into the cause and the fix.
fn ssh(deploy: &Deploy<'_>, remote: &str, stdin: Option<&Path>) -> anyhow::Result<String> {
    let Destination::Ssh {
        destination, port, ..
    } = &deploy.to
    else {
        bail!("not an ssh destination");
    };
    let mut command = Command::new("ssh");
    command.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]);
    for option in deploy.ssh_options {
        command.arg("-o").arg(option);
    }
    if let Some(port) = port {
        command.arg("-p").arg(port.to_string());
    }
    command.arg("--").arg(destination).arg(remote);
    command.stdin(match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => Stdio::null(),
    });
    let output = command
        .output()
        .context("cannot run ssh; install the OpenSSH client (`apt-get install openssh-client`)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        eprint!("{stderr}");
        return Ok(stdout);
    }
    let host = destination.rsplit('@').next().unwrap_or(destination);
    if output.status.code() == Some(255) {
        if stderr.contains("Permission denied") {
            bail!(
                "{destination} refused the ssh key: add your public key to ~/.ssh/authorized_keys on the device (ssh-copy-id {destination}) or load the right key into ssh-agent"
            );
        }
        if stderr.contains("Host key verification failed") {
            bail!(
                "the host key of {host} is not the one ssh knows: check that it is your device, then fix ~/.ssh/known_hosts"
            );
        }
        bail!(
            "cannot reach {host}{} over ssh ({}): check the address and port, that the device is on and that sshd runs there",
            port.map(|p| format!(":{p}")).unwrap_or_default(),
            stderr.trim().lines().last().unwrap_or("no answer")
        );
    }
    print!("{stdout}");
    let reason = stderr
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("Error:"))
        .map(|line| line.trim_start_matches("Error:").trim().to_owned())
        .or_else(|| stderr.trim().lines().last().map(str::to_owned))
        .unwrap_or_else(|| output.status.to_string());
    if reason.contains("whittle-device: not found") || reason.contains("No such file") {
        bail!(
            "whittle-device is missing on {host}: {reason}; flash a bundle first (it sends the tool)"
        );
    }
    bail!("the device refused: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_or_say_what_is_wrong() {
        assert_eq!(
            Destination::parse("ssh://pi@board.local").ok(),
            Some(Destination::Ssh {
                destination: "pi@board.local".into(),
                port: None,
                dir: DEFAULT_DIR.into()
            })
        );
        assert_eq!(
            Destination::parse("ssh://root@127.0.0.1:2222/tmp/store").ok(),
            Some(Destination::Ssh {
                destination: "root@127.0.0.1".into(),
                port: Some(2222),
                dir: "/tmp/store".into()
            })
        );
        assert_eq!(
            Destination::parse("dir:/mnt/sd/var/lib/whittle").ok(),
            Some(Destination::Dir("/mnt/sd/var/lib/whittle".into()))
        );
        for (text, fragment) in [
            ("scp://x", "give ssh://"),
            ("ssh://host:99999", "not a number"),
            ("ssh://user@", "no host"),
            ("dir:", "needs a folder"),
            ("ssh://h/it's", "quote"),
        ] {
            let error = Destination::parse(text).expect_err(text);
            assert!(error.to_string().contains(fragment), "{text}: {error}");
        }
    }

    #[test]
    fn the_device_must_have_the_board_architecture() {
        check_architecture("aarch64", "aarch64-unknown-linux-gnu", "rpi5").expect("aarch64");
        check_architecture("arm64", "aarch64-unknown-linux-gnu", "rpi5").expect("arm64");
        let error = check_architecture("x86_64", "aarch64-unknown-linux-gnu", "raspberry-pi-5-8gb")
            .expect_err("another architecture");
        assert!(
            error
                .to_string()
                .contains("the device is x86_64, but board raspberry-pi-5-8gb is aarch64")
        );
    }
}
