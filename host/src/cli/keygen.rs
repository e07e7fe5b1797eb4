//! `whittle keygen --out KEY`: an ed25519 signing key (KEY, hex, keep it secret) and its
//! public key (KEY.pub, hex) for devices that only accept signed bundles.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ed25519_dalek::SigningKey;
use whittle_boards::files::write_atomically;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key; the public key goes to the same path + `.pub`.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads a secret key written by `keygen`.
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read key {}; make one with `cargo xtask keygen`",
            path.display()
        )
    })?;
    let bytes = unhex::<32>(&text).with_context(|| {
        format!(
            "{} is not a whittle signing key (64 hex digits); make one with `cargo xtask keygen`",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads a public key (`KEY.pub`) written by `keygen`.
pub fn read_public_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read public key {}; pass the KEY.pub that keygen wrote",
            path.display()
        )
    })?;
    unhex::<32>(&text).with_context(|| {
        format!(
            "{} is not a whittle public key (64 hex digits); pass the KEY.pub that keygen wrote",
            path.display()
        )
    })
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let public = PathBuf::from(format!("{}.pub", args.out.display()));
    if !args.force && (args.out.exists() || public.exists()) {
        anyhow::bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    write_atomically(&args.out, format!("{}\n", hex(&key.to_bytes())).as_bytes())?;
    write_atomically(
        &public,
        format!("{}\n", hex(key.verifying_key().as_bytes())).as_bytes(),
    )?;
    println!(
        "secret key {} (keep it private), public key {}",
        args.out.display(),
        public.display()
    );
    Ok(())
}
