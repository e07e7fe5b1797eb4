//! The bundles installed on this device: `whittle-device install`, `trust`, `rollback` and
//! `status`, and which bundle `run` and `bench` take by default.
//!
//! A store is one folder (`--root`, default [`DEFAULT_ROOT`]):
//!
//! ```text
//! ROOT/bundles/<sha256>.wbundle   installed bundles, named by their digest, never rewritten
//! ROOT/current, ROOT/previous     symbolic links to bundles/<sha256>.wbundle
//! ROOT/keys/<fingerprint>.pub     trusted ed25519 public keys (hex, as `whittle keygen` writes)
//! ROOT/releases.json              per task, the highest release number installed and its digest
//! ROOT/staging/                   a transfer in progress (emptied when the next install starts)
//! ROOT/lock                       held while the store changes
//! ```
//!
//! An install streams the bundle into `staging/` (exactly `--len` bytes, hashed on the way),
//! syncs it, checks its length, sha256, checksums, signature and release number, renames it
//! into `bundles/`, runs its self-check input and compares the answer the packer recorded,
//! then points `previous` at the old current and `current` at it (each link replaced by a
//! rename) and removes bundles past `--keep`. Every change is a rename followed by a sync of
//! its folder, so a power cut or a killed process leaves `current` at a complete bundle: the
//! old one until the last switch, the new one after it. `WHITTLE_FAILPOINT=<step>` stops the
//! process right after that step (one of [`STEPS`]), which is how the tests interrupt it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use whittle_boards::files::{sync_dir, write_atomically};
use whittle_device::stream::{ReceiveError, hex, receive};
use whittle_runtime::Bundle;
use whittle_runtime::writer::self_check_answers;

use crate::bench::{LoadedBundle, kernels};

/// Where the store lives unless `--root` (or `WHITTLE_DEVICE_ROOT`) says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/whittle";

/// The environment variable naming the store.
pub const ROOT_ENV: &str = "WHITTLE_DEVICE_ROOT";

/// Bundles kept by default (current and previous included).
pub const DEFAULT_KEEP: usize = 3;

/// The steps of an install, in order; `WHITTLE_FAILPOINT=<step>` stops right after one.
pub const STEPS: [&str; 8] = [
    "receive", "sync", "verify", "store", "check", "previous", "current", "tidy",
];

/// The environment variable of the test failpoints.
pub const FAILPOINT_ENV: &str = "WHITTLE_FAILPOINT";

/// Where an install reads the bundle from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A bundle file on the device.
    File(PathBuf),
    /// Standard input: exactly `len` bytes with this sha256 (hex).
    Stdin {
        /// Bytes announced.
        len: u64,
        /// sha256 announced (hex).
        sha256: String,
    },
}

/// What `whittle-device install` is asked to do.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The store.
    pub root: PathBuf,
    /// The bundle.
    pub source: Source,
    /// Install an unsigned bundle on a device that trusts no key.
    pub allow_unsigned: bool,
    /// Bundles kept, current and previous included (at least 2).
    pub keep: usize,
    /// Threads of the self-check.
    pub threads: usize,
}

/// Who signed a bundle, as far as this device can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "signature", content = "key", rename_all = "snake_case")]
pub enum Signer {
    /// Signed by this trusted key (its fingerprint).
    Trusted(String),
    /// Signed, by no key this device trusts.
    Untrusted,
    /// No signature.
    Unsigned,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Trusted(key) => write!(f, "signed by {key}"),
            Self::Untrusted => f.write_str("signed by a key this device does not trust"),
            Self::Unsigned => f.write_str("unsigned"),
        }
    }
}

/// A trusted public key.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    key: [u8; 32],
    fingerprint: String,
}

/// The first 16 hex digits of the key's sha256: how status and errors name a key.
pub fn fingerprint(key: &[u8; 32]) -> String {
    hex(&Sha256::digest(key)).chars().take(16).collect()
}

/// The highest release installed for one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Release {
    sequence: u64,
    digest: String,
}

/// The store at `root`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (nothing is created until something is installed or trusted).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn bundle_path(&self, digest: &str) -> PathBuf {
        self.path("bundles").join(format!("{digest}.wbundle"))
    }

    /// Creates the store's folders and takes its lock (held until the file is dropped).
    fn open_locked(&self) -> anyhow::Result<File> {
        for dir in ["bundles", "keys", "staging"] {
            let dir = self.path(dir);
            std::fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create {}; pass a writable --root (or run as a user who may write there)",
                    dir.display()
                )
            })?;
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("lock"))
            .with_context(|| format!("cannot open {}", self.path("lock").display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", self.path("lock").display()))?;
        Ok(lock)
    }

    /// The trusted keys (none when the store does not exist yet).
    pub fn trusted_keys(&self) -> anyhow::Result<Vec<TrustedKey>> {
        let dir = self.path("keys");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", dir.display()));
            }
        };
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "pub") {
                keys.push(read_public_key(&path)?);
            }
        }
        keys.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        Ok(keys)
    }

    /// The digest a link (`current`, `previous`) points at.
    fn link(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.path(name)).ok()?;
        let file = target.file_name()?.to_str()?;
        Some(file.strip_suffix(".wbundle")?.to_owned())
    }

    /// Points link `name` at the bundle `digest`: a new link beside it, renamed over it, the
    /// folder synced.
    fn set_link(&self, name: &str, digest: &str) -> anyhow::Result<()> {
        let staged = self.path(&format!(".{name}.new"));
        let _ = std::fs::remove_file(&staged);
        let target = Path::new("bundles").join(format!("{digest}.wbundle"));
        std::os::unix::fs::symlink(&target, &staged)
            .with_context(|| format!("cannot create {}", staged.display()))?;
        std::fs::rename(&staged, self.path(name))
            .with_context(|| format!("cannot replace {}", self.path(name).display()))?;
        sync_dir(&self.root).with_context(|| format!("cannot sync {}", self.root.display()))
    }

    /// The file `current` points at.
    pub fn current(&self) -> anyhow::Result<PathBuf> {
        match self.link("current") {
            Some(digest) => Ok(self.bundle_path(&digest)),
            None => bail!(
                "no bundle is installed in {}; name a bundle file, or install one with `whittle-device install` (or `cargo xtask flash` from the host)",
                self.root.display()
            ),
        }
    }

    fn releases(&self) -> anyhow::Result<BTreeMap<String, Release>> {
        let path = self.path("releases.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; restore it or remove it (the replay check then starts from the installed bundles)",
                    path.display()
                )
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Installed bundle files: digest and modification time, newest first.
    fn installed(&self) -> anyhow::Result<Vec<(String, std::time::SystemTime)>> {
        let dir = self.path("bundles");
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", dir.display()));
            }
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(digest) = name.strip_suffix(".wbundle") {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                found.push((digest.to_owned(), modified));
            }
        }
        found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(found)
    }
}

/// Reads a public key file (64 hex digits).
fn read_public_key(path: &Path) -> anyhow::Result<TrustedKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    let key = whittle_runtime::format::public_key_from_hex(&text);
    let Some(key) = key.filter(|key| VerifyingKey::from_bytes(key).is_ok()) else {
        bail!(
            "{} is not an ed25519 public key (64 hex digits, the KEY.pub `whittle keygen` writes)",
            path.display()
        );
    };
    Ok(TrustedKey {
        fingerprint: fingerprint(&key),
        key,
    })
}

/// Who signed `bundle`, among `keys`.
pub fn signer(bundle: &Bundle<'_>, keys: &[TrustedKey]) -> Signer {
    if !bundle.is_signed() {
        return Signer::Unsigned;
    }
    keys.iter()
        .find(|key| bundle.verify(&key.key).is_ok())
        .map_or(Signer::Untrusted, |key| {
            Signer::Trusted(key.fingerprint.clone())
        })
}

/// The signature policy: a device with trusted keys runs and installs only bundles signed by
/// one of them; a device without needs `allow_unsigned` (said loudly) for any bundle.
pub fn check_trust(
    bundle: &Bundle<'_>,
    keys: &[TrustedKey],
    allow_unsigned: bool,
    what: &str,
) -> anyhow::Result<Signer> {
    let signer = signer(bundle, keys);
    match (&signer, keys.is_empty()) {
        (Signer::Trusted(_), _) => Ok(signer),
        (Signer::Unsigned, false) => bail!(
            "{what} is unsigned, and this device only accepts bundles signed by a key it trusts; pack it with `whittle pack --sign KEY` (or `cargo xtask prune --sign KEY`)"
        ),
        (Signer::Untrusted, false) => bail!(
            "{what} is signed by a key this device does not trust; sign it with a trusted key, or trust its public key first with `whittle-device trust KEY.pub`"
        ),
        (_, true) if allow_unsigned => {
            eprintln!(
                "WARNING: {what} is accepted WITHOUT a signature check (--allow-unsigned; this device trusts no key): anyone who can reach this device can install a bundle"
            );
            Ok(signer)
        }
        (Signer::Unsigned, true) => bail!(
            "{what} is unsigned and this device trusts no key: trust your public key (`whittle-device trust KEY.pub`) and install a bundle packed with `--sign KEY`, or pass --allow-unsigned"
        ),
        (Signer::Untrusted, true) => bail!(
            "{what} is signed, but this device trusts no key yet: run `whittle-device trust KEY.pub` with the packer's public key first (or pass --allow-unsigned to skip the check)"
        ),
    }
}

/// Stops the process right after `step` when `WHITTLE_FAILPOINT` names it (tests).
fn failpoint(step: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|value| value == step) {
        eprintln!("whittle-device: failpoint after step {step}: stopping");
        std::process::abort();
    }
}

/// What an install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bundle is now current.
    Installed {
        /// Its sha256.
        digest: String,
    },
    /// The bundle was already current: nothing changed.
    AlreadyCurrent {
        /// Its sha256.
        digest: String,
    },
}

/// `whittle-device install`.
pub fn install(options: &InstallOptions) -> anyhow::Result<Outcome> {
    if options.keep < 2 {
        bail!("--keep must be at least 2 (the current bundle and the previous one)");
    }
    if let Ok(step) = std::env::var(FAILPOINT_ENV)
        && !STEPS.contains(&step.as_str())
    {
        bail!("{FAILPOINT_ENV}={step} names no install step; use one of {STEPS:?}, or unset it");
    }
    let store = Store::new(&options.root);
    let _lock = store.open_locked()?;
    let staging_dir = store.path("staging");
    for entry in std::fs::read_dir(&staging_dir)
        .with_context(|| format!("cannot read {}", staging_dir.display()))?
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    let staging = staging_dir.join(format!("incoming-{}", std::process::id()));
    let result = install_staged(&store, options, &staging);
    let _ = std::fs::remove_file(&staging);
    result
}

fn install_staged(
    store: &Store,
    options: &InstallOptions,
    staging: &Path,
) -> anyhow::Result<Outcome> {
    // receive
    let mut file = File::create(staging)
        .with_context(|| format!("cannot create {}; check --root", staging.display()))?;
    let received = match &options.source {
        Source::File(path) => {
            let mut source = File::open(path)
                .with_context(|| format!("cannot read {}; check the path", path.display()))?;
            let len = source
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            receive(&mut source, &mut file, len, None)
        }
        Source::Stdin { len, sha256 } => {
            receive(&mut std::io::stdin().lock(), &mut file, *len, Some(sha256))
        }
    };
    let digest = hex(&received.map_err(|error: ReceiveError| anyhow::anyhow!("{error}"))?);
    failpoint("receive");
    // sync
    file.sync_all()
        .map_err(|error| anyhow::anyhow!("{}", ReceiveError::Write(error)))?;
    drop(file);
    failpoint("sync");
    // verify
    if store.link("current").as_deref() == Some(digest.as_str()) {
        return Ok(Outcome::AlreadyCurrent { digest });
    }
    let loaded = LoadedBundle::read(staging)?;
    let bundle = Bundle::parse(loaded.as_bytes()).map_err(|error| {
        anyhow::anyhow!("the bundle received is not valid: {error}; re-pack it with `whittle pack` and send it again")
    })?;
    let keys = store.trusted_keys()?;
    let signer = check_trust(&bundle, &keys, options.allow_unsigned, "the bundle")?;
    let provenance = &bundle.header().provenance;
    let task = bundle.header().task.name.to_owned();
    let mut releases = store.releases()?;
    if let Some(release) = releases.get(&task)
        && (provenance.sequence < release.sequence
            || (provenance.sequence == release.sequence && release.digest != digest))
    {
        bail!(
            "the bundle is release {} of task {task}, but release {} is installed here: an older bundle (or a replayed one) is refused; pack a new release, or go back with `whittle-device rollback`",
            provenance.sequence,
            release.sequence
        );
    }
    failpoint("verify");
    // store
    let stored = store.bundle_path(&digest);
    std::fs::rename(staging, &stored)
        .with_context(|| format!("cannot move the bundle to {}", stored.display()))?;
    sync_dir(&store.path("bundles"))
        .with_context(|| format!("cannot sync {}", store.path("bundles").display()))?;
    failpoint("store");
    // check
    if let Err(error) = self_check(&bundle, options.threads) {
        let kept = [store.link("current"), store.link("previous")];
        if !kept.iter().flatten().any(|kept| *kept == digest) {
            let _ = std::fs::remove_file(&stored);
        }
        return Err(error);
    }
    failpoint("check");
    // previous
    let old = store.link("current");
    if let Some(old) = &old {
        store.set_link("previous", old)?;
    }
    failpoint("previous");
    // current
    let release = releases.entry(task.clone()).or_default();
    if provenance.sequence >= release.sequence {
        *release = Release {
            sequence: provenance.sequence,
            digest: digest.clone(),
        };
    }
    let json = serde_json::to_vec_pretty(&releases).context("cannot encode releases.json")?;
    write_atomically(&store.path("releases.json"), &json)?;
    store.set_link("current", &digest)?;
    failpoint("current");
    // tidy
    tidy(store, options.keep)?;
    failpoint("tidy");
    eprintln!(
        "installed {digest} as current: task {task}, release {}, {signer}, self-check passed{}",
        provenance.sequence,
        old.map(|old| format!("; previous {old}"))
            .unwrap_or_default()
    );
    Ok(Outcome::Installed { digest })
}

/// Runs the bundle's recorded self-check input and compares the answer.
fn self_check(bundle: &Bundle<'_>, threads: usize) -> anyhow::Result<()> {
    let Some(check) = bundle.header().provenance.check else {
        bail!(
            "the bundle records no self-check input (packed by an older whittle, or none of its inputs fit the context); re-pack it with this version's `whittle pack`"
        );
    };
    let answers = self_check_answers(bundle, kernels(threads), &[check.input])
        .map_err(|error| anyhow::anyhow!("the bundle does not run on this device: {error}"))?;
    let (answer, _) = answers
        .into_iter()
        .next()
        .context("no self-check answer")?
        .map_err(|error| anyhow::anyhow!("the bundle's self-check does not run: {error}"))?;
    if answer != check.expected {
        bail!(
            "self-check failed: the bundle answers {answer} for {:?} here, the packer recorded {} (margin {:.3}); it runs differently on this device: keep the current bundle and report it",
            check.input,
            check.expected,
            check.margin
        );
    }
    Ok(())
}

/// Removes installed bundles past `keep`, oldest first; current and previous stay.
fn tidy(store: &Store, keep: usize) -> anyhow::Result<()> {
    let kept: Vec<String> = [store.link("current"), store.link("previous")]
        .into_iter()
        .flatten()
        .collect();
    let mut room = keep.saturating_sub(kept.len());
    for (digest, _) in store.installed()? {
        if kept.contains(&digest) {
            continue;
        }
        if room > 0 {
            room -= 1;
            continue;
        }
        let path = store.bundle_path(&digest);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    sync_dir(&store.path("bundles"))
        .with_context(|| format!("cannot sync {}", store.path("bundles").display()))
}

/// `whittle-device trust KEY.pub`: adds a public key to the trusted keys.
pub fn trust(root: &Path, key: &Path) -> anyhow::Result<String> {
    let store = Store::new(root);
    let key = read_public_key(key)?;
    let _lock = store.open_locked()?;
    let path = store.path("keys").join(format!("{}.pub", key.fingerprint));
    write_atomically(&path, format!("{}\n", hex(&key.key)).as_bytes())?;
    Ok(key.fingerprint)
}

/// `whittle-device rollback`: makes the previous bundle current again (and the current one
/// previous).
pub fn rollback(root: &Path) -> anyhow::Result<String> {
    let store = Store::new(root);
    let _lock = store.open_locked()?;
    let (Some(current), Some(previous)) = (store.link("current"), store.link("previous")) else {
        bail!(
            "nothing to roll back to in {}: no previous bundle (one install so far); install another bundle instead",
            root.display()
        );
    };
    if !store.bundle_path(&previous).is_file() {
        bail!(
            "the previous bundle {previous} is missing from {}; install the bundle you want instead",
            store.path("bundles").display()
        );
    }
    store.set_link("previous", &current)?;
    store.set_link("current", &previous)?;
    Ok(previous)
}

/// One installed bundle, as `status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct InstalledBundle {
    /// sha256 of the file.
    pub digest: String,
    /// `current`, `previous` or `kept`.
    pub role: &'static str,
    /// Bytes.
    pub bytes: u64,
    /// Task name.
    pub task: String,
    /// Release number.
    pub sequence: u64,
    /// Who signed it.
    #[serde(flatten)]
    pub signer: Signer,
    /// Board it was pruned for.
    pub board: String,
    /// sha256 of the model it came from.
    pub model_digest: String,
    /// Pruned test accuracy the packer recorded.
    pub pruned_accuracy: Option<f64>,
    /// Version of the tool that packed it.
    pub tool_version: String,
    /// Why it cannot be read, if it cannot.
    pub error: Option<String>,
}

/// The store's state.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The store.
    pub root: PathBuf,
    /// Fingerprints of the trusted keys.
    pub trusted_keys: Vec<String>,
    /// The current bundle's digest.
    pub current: Option<String>,
    /// The previous bundle's digest.
    pub previous: Option<String>,
    /// Every installed bundle, current first.
    pub bundles: Vec<InstalledBundle>,
}

/// `whittle-device status`.
pub fn status(root: &Path) -> anyhow::Result<Status> {
    let store = Store::new(root);
    let keys = store.trusted_keys()?;
    let current = store.link("current");
    let previous = store.link("previous");
    let mut bundles = Vec::new();
    for (digest, _) in store.installed()? {
        let role = if current.as_deref() == Some(&digest) {
            "current"
        } else if previous.as_deref() == Some(&digest) {
            "previous"
        } else {
            "kept"
        };
        bundles.push(describe(&store.bundle_path(&digest), digest, role, &keys));
    }
    bundles.sort_by_key(|b| match b.role {
        "current" => 0,
        "previous" => 1,
        _ => 2,
    });
    Ok(Status {
        root: root.to_owned(),
        trusted_keys: keys.iter().map(|k| k.fingerprint.clone()).collect(),
        current,
        previous,
        bundles,
    })
}

fn describe(
    path: &Path,
    digest: String,
    role: &'static str,
    keys: &[TrustedKey],
) -> InstalledBundle {
    let mut entry = InstalledBundle {
        digest,
        role,
        bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
        task: String::new(),
        sequence: 0,
        signer: Signer::Unsigned,
        board: String::new(),
        model_digest: String::new(),
        pruned_accuracy: None,
        tool_version: String::new(),
        error: None,
    };
    let loaded = match LoadedBundle::read(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            entry.error = Some(format!("{error:#}"));
            return entry;
        }
    };
    match Bundle::parse(loaded.as_bytes()) {
        Ok(bundle) => {
            let header = bundle.header();
            entry.task = header.task.name.to_owned();
            entry.sequence = header.provenance.sequence;
            entry.signer = signer(&bundle, keys);
            entry.board = header.provenance.board.to_owned();
            entry.model_digest = header.provenance.model_digest.to_owned();
            entry.pruned_accuracy = header.provenance.pruned_accuracy;
            entry.tool_version = header.provenance.tool_version.to_owned();
        }
        Err(error) => entry.error = Some(format!("not a valid bundle: {error}")),
    }
    entry
}

/// Prints `status` as text.
pub fn print_status(status: &Status) {
    println!("store {}", status.root.display());
    match status.trusted_keys.as_slice() {
        [] => println!("trusted keys: none (bundles install only with --allow-unsigned)"),
        keys => println!("trusted keys: {}", keys.join(", ")),
    }
    if status.bundles.is_empty() {
        println!("no bundle installed");
    }
    for bundle in &status.bundles {
        let signed = &bundle.signer;
        match &bundle.error {
            Some(error) => println!("{:<8} {}  {error}", bundle.role, bundle.digest),
            None => println!(
                "{:<8} {}  task {}, release {}, {signed}, {:.1} MB{}, whittle {}",
                bundle.role,
                bundle.digest,
                bundle.task,
                bundle.sequence,
                bundle.bytes as f64 / 1e6,
                if bundle.board.is_empty() {
                    String::new()
                } else {
                    format!(", pruned for {}", bundle.board)
                },
                bundle.tool_version
            ),
        }
    }
}

/// The bundle `run` and `bench` take: the file named, else the store's current one; on a
/// device with trusted keys it must be signed by one of them.
pub fn bundle_to_run(root: &Path, named: Option<&Path>) -> anyhow::Result<LoadedBundle> {
    let store = Store::new(root);
    let path = match named {
        Some(path) => path.to_owned(),
        None => store.current()?,
    };
    let loaded = LoadedBundle::read(&path)?;
    let keys = store.trusted_keys()?;
    if !keys.is_empty() {
        let bundle = loaded.parse()?;
        check_trust(&bundle, &keys, false, &path.display().to_string())?;
    }
    Ok(loaded)
}
