//! The suite's deployment check: `cargo xtask flash` to a Linux board over a real ssh, to an
//! sshd on 127.0.0.1 (a throwaway host key and client key, a free port, never 22; started and
//! stopped here), and into a `dir:` store for an aarch64 board whose tool then runs under
//! qemu-aarch64; with the faults of a transfer (cut at half, the sender killed, a flipped byte,
//! an untrusted signer, a replayed older release) and the bad inputs (an unreachable host, a
//! refused ssh key, a device of another architecture). Each fault must leave `current` at the
//! complete bundle it pointed at before.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};
use whittle_runtime::{Architecture, ModelConfig, writer};

use crate::cargo;
use crate::deploy::{Deploy, Destination, hex};

/// The synthetic model the deployed releases carry.
const CONFIG: ModelConfig = ModelConfig {
    arch: Architecture::LLAMA,
    n_layers: 1,
    hidden_size: 32,
    intermediate_size: 48,
    n_heads: 2,
    n_kv_heads: 1,
    head_dim: 16,
    vocab_size: 300,
    max_position_embeddings: 2048,
    rope_theta: 10_000.0,
    rms_norm_eps: 1e-5,
};

/// A board profile for the x86_64 machine the sshd runs on.
const X86_BOARD: &str = r#"
name = "suite-x86-linux"
description = "This machine, as the Linux board the deployment check flashes over ssh."
memory_bytes = 4_000_000_000
model_memory_share = 0.5
bandwidth_bytes_per_s = 10_000_000_000
cpu_f32_flops = 50_000_000_000.0
target_triple = "x86_64-unknown-linux-gnu"

[cpu]
cores = 2
core = "x86-64"
isa_features = ["avx2"]

[[sources]]
what = "a stand-in for the suite: figures are not used"
measured = true
"#;

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// An sshd on 127.0.0.1, killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    cargo::run(cargo::program("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path))
        .context("ssh-keygen failed; install openssh-client")
}

fn start_sshd(work: &Path) -> anyhow::Result<Sshd> {
    keygen(&work.join("host_key"))?;
    keygen(&work.join("client_key"))?;
    keygen(&work.join("stranger_key"))?;
    std::fs::copy(work.join("client_key.pub"), work.join("authorized_keys"))?;
    std::fs::create_dir_all("/run/sshd")
        .context("cannot create /run/sshd (sshd's privilege separation folder); run as root")?;
    let port = free_port()?;
    let config = work.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {w}/host_key\nPidFile {w}/sshd.pid\nAuthorizedKeysFile {w}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n",
            w = work.display()
        ),
    )?;
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("sshd.log"))?)
        .spawn()
        .context("cannot start /usr/sbin/sshd; install openssh-server")?;
    let sshd = Sshd { child, port };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(15) {
            bail!(
                "sshd did not listen on 127.0.0.1:{port} within 15 s; see {}",
                work.join("sshd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("    sshd listening on 127.0.0.1:{port}");
    Ok(sshd)
}

/// The signed synthetic release `sequence` of task `sst2`.
fn release(key: &SigningKey, sequence: u64) -> anyhow::Result<Vec<u8>> {
    let sign = |bytes: &[u8]| key.sign(bytes).to_bytes();
    writer::synthetic_release(&CONFIG, "sst2", sequence, Some(&sign))
        .map_err(|error| anyhow::anyhow!("cannot write a release: {error}"))
}

/// The digest `current` points at in a store on this machine, after checking that the file is
/// complete (its sha256 is its name).
fn current(store: &Path) -> anyhow::Result<String> {
    let link = store.join("current");
    let bytes = std::fs::read(&link).with_context(|| format!("no {}", link.display()))?;
    let digest = sha256(&bytes);
    let target = std::fs::read_link(&link)?;
    if target.file_name().and_then(|n| n.to_str()) != Some(&format!("{digest}.wbundle")) {
        bail!("{} points at an incomplete or changed file", link.display());
    }
    Ok(digest)
}

fn expect_current(store: &Path, bytes: &[u8], after: &str) -> anyhow::Result<()> {
    let found = current(store)?;
    if found != sha256(bytes) {
        bail!("after {after}, current is {found}, not {}", sha256(bytes));
    }
    println!("    ok: {after}: current is {}", &found[..12]);
    Ok(())
}

fn expect_refused(result: anyhow::Result<()>, fragment: &str, what: &str) -> anyhow::Result<()> {
    match result {
        Ok(()) => bail!("{what} was accepted"),
        Err(error) => {
            let message = format!("{error:#}");
            if !message.contains(fragment) {
                bail!("{what}: the error `{message}` does not say `{fragment}`");
            }
            println!("    ok: {what}: {message}");
            Ok(())
        }
    }
}

/// An ssh command to the suite's sshd running `remote`.
fn raw_ssh(work: &Path, port: u16, user: &str, remote: &str) -> Command {
    let mut command = Command::new("ssh");
    for option in ssh_options(work, "client_key") {
        command.arg("-o").arg(option);
    }
    command
        .args(["-o", "BatchMode=yes", "-p"])
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(remote);
    command
}

fn ssh_options(work: &Path, key: &str) -> Vec<String> {
    vec![
        format!("IdentityFile={}", work.join(key).display()),
        "IdentitiesOnly=yes".to_owned(),
        "UserKnownHostsFile=/dev/null".to_owned(),
        "StrictHostKeyChecking=no".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ]
}

/// `cargo xtask flash --board BOARD --bundle BUNDLE --key KEY --to TO` with these ssh options.
fn flash_to(
    to: &str,
    ssh_options: &[String],
    board: &str,
    bundle: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    crate::deploy::run(&Deploy {
        to: Destination::parse(to)?,
        board: Some(board),
        bundle: Some(bundle),
        key: Some(key),
        allow_unsigned: false,
        rollback: false,
        ssh_options,
    })
}

/// The whole check (a step of `cargo xtask test`).
pub fn check() -> anyhow::Result<()> {
    let work = cargo::target_dir()?.join("deploy-suite");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let user = cargo::stdout_of(&mut cargo::program("id", ["-un"]))?
        .trim()
        .to_owned();
    let signer = SigningKey::from_bytes(&[7; 32]);
    let stranger = SigningKey::from_bytes(&[8; 32]);
    let key = work.join("release.pub");
    let stranger_key = work.join("stranger.pub");
    std::fs::write(&key, hex(&signer.verifying_key().to_bytes()))?;
    std::fs::write(&stranger_key, hex(&stranger.verifying_key().to_bytes()))?;
    let board = work.join("suite-x86-linux.toml");
    std::fs::write(&board, X86_BOARD)?;
    let board = board.to_string_lossy().into_owned();
    let files: Vec<PathBuf> = (1..=4)
        .map(|sequence| -> anyhow::Result<PathBuf> {
            let path = work.join(format!("release-{sequence}.wbundle"));
            std::fs::write(&path, release(&signer, sequence)?)?;
            Ok(path)
        })
        .collect::<anyhow::Result<_>>()?;
    let untrusted = work.join("untrusted.wbundle");
    std::fs::write(&untrusted, release(&stranger, 9)?)?;
    let bytes = |path: &Path| std::fs::read(path).with_context(|| format!("no {}", path.display()));

    let sshd = start_sshd(&work)?;
    let store = work.join("device-store");
    let to = format!("ssh://{user}@127.0.0.1:{}{}", sshd.port, store.display());
    let options = ssh_options(&work, "client_key");
    let flash =
        |bundle: &Path, key: &Path, board: &str| flash_to(&to, &options, board, bundle, key);

    println!("==> flash over ssh");
    flash(&files[0], &key, &board)?;
    expect_current(
        &store,
        &bytes(&files[0])?,
        "the first flash (the tool sent, the key trusted)",
    )?;
    flash(&files[1], &key, &board)?;
    expect_current(&store, &bytes(&files[1])?, "a newer release")?;
    flash(&files[1], &key, &board)?;
    expect_current(&store, &bytes(&files[1])?, "the same release again")?;

    println!("==> faults over ssh");
    let next = bytes(&files[2])?;
    let remote = |len: usize, digest: &str| {
        format!(
            "'{s}/bin/whittle-device' install --root '{s}' --stdin --len {len} --sha256 {digest}",
            s = store.display()
        )
    };
    // A transfer cut at half its length.
    let mut cut = raw_ssh(&work, sshd.port, &user, &remote(next.len(), &sha256(&next)));
    let mut child = cut.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&next[..next.len() / 2])?;
    }
    let output = child.wait_with_output()?;
    if output.status.success()
        || !String::from_utf8_lossy(&output.stderr).contains("the transfer ended after")
    {
        bail!("a transfer cut at half was not refused as one: {output:?}");
    }
    expect_current(
        &store,
        &bytes(&files[1])?,
        "a transfer cut at half its length",
    )?;
    // The sender killed mid-stream (the ssh process on this side).
    let mut killed = raw_ssh(&work, sshd.port, &user, &remote(next.len(), &sha256(&next)));
    let mut child = killed.stdin(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut stdin = child.stdin.take().context("a pipe to ssh")?;
    stdin.write_all(&next[..next.len() / 3])?;
    std::thread::sleep(Duration::from_millis(500));
    child.kill()?;
    let _ = child.wait();
    drop(stdin);
    std::thread::sleep(Duration::from_millis(500));
    expect_current(&store, &bytes(&files[1])?, "the sender killed mid-stream")?;
    // One flipped byte on the way.
    let mut flipped = next.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let mut changed = raw_ssh(&work, sshd.port, &user, &remote(next.len(), &sha256(&next)));
    let mut child = changed
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&flipped)?;
    }
    let output = child.wait_with_output()?;
    if output.status.success()
        || !String::from_utf8_lossy(&output.stderr).contains("changed on the way")
    {
        bail!("a flipped byte was not refused: {output:?}");
    }
    expect_current(&store, &bytes(&files[1])?, "one flipped byte")?;
    expect_refused(
        flash(&untrusted, &stranger_key, &board),
        "does not trust",
        "a bundle signed by an untrusted key",
    )?;
    expect_refused(
        flash(&files[0], &key, &board),
        "is refused",
        "a replayed older release",
    )?;
    expect_current(&store, &bytes(&files[1])?, "the refused bundles")?;
    crate::deploy::run(&Deploy {
        to: Destination::parse(&to)?,
        board: None,
        bundle: None,
        key: None,
        allow_unsigned: false,
        rollback: true,
        ssh_options: &options,
    })?;
    expect_current(&store, &bytes(&files[0])?, "flash --rollback")?;
    flash(&files[2], &key, &board)?;
    expect_current(
        &store,
        &bytes(&files[2])?,
        "a newer release after the rollback",
    )?;

    println!("==> bad destinations");
    let unreachable = format!("ssh://{user}@127.0.0.1:{}{}", free_port()?, store.display());
    expect_refused(
        flash_to(&unreachable, &options, &board, &files[3], &key),
        "cannot reach 127.0.0.1",
        "an unreachable host",
    )?;
    let stranger_options = ssh_options(&work, "stranger_key");
    expect_refused(
        flash_to(&to, &stranger_options, &board, &files[3], &key),
        "refused the ssh key",
        "a refused ssh key",
    )?;
    expect_refused(
        flash(&files[3], &key, "raspberry-pi-5"),
        "the device is x86_64, but board raspberry-pi-5-8gb is aarch64",
        "a device of another architecture",
    )?;
    expect_current(&store, &bytes(&files[2])?, "the bad destinations")?;
    drop(sshd);

    println!("==> flash into a dir: store for an aarch64 board (its tool under qemu-aarch64)");
    let card = work.join("sdcard").join("var").join("lib").join("whittle");
    flash_to(
        &format!("dir:{}", card.display()),
        &[],
        "rpi5",
        &files[3],
        &key,
    )?;
    expect_current(&card, &bytes(&files[3])?, "flash --to dir: for rpi5")?;
    let mut status = cargo::program("qemu-aarch64", ["-L", "/usr/aarch64-linux-gnu"]);
    status
        .arg(card.join("bin").join("whittle-device"))
        .args(["status", "--json", "--root"])
        .arg(&card);
    let status = cargo::stdout_of(&mut status)?;
    if !status.contains(&format!("\"current\":\"{}\"", sha256(&bytes(&files[3])?))) {
        bail!("the aarch64 whittle-device does not see the installed bundle: {status}");
    }
    let mut run = cargo::program("qemu-aarch64", ["-L", "/usr/aarch64-linux-gnu"]);
    run.arg(card.join("bin").join("whittle-device"))
        .args(["run", "--text", "a fine film", "--threads", "2", "--root"])
        .arg(&card);
    cargo::run(&mut run)?;
    println!("    ok: the aarch64 tool (under qemu) reads the store and runs its current bundle");
    Ok(())
}
