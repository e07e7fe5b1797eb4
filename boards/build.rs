//! Embeds every `profiles/*.toml` file: writes `$OUT_DIR/profiles.rs`, a table of (file name,
//! `include_str!` of the file) sorted by file name, so that a new profile needs no listing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let profiles_dir = manifest_dir.join("profiles");
    println!("cargo:rerun-if-changed={}", profiles_dir.display());
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&profiles_dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", profiles_dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|error| panic!("cannot list {}: {error}", profiles_dir.display()))
                .path()
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| (file_name(&path), path))
        .collect();
    files.sort();
    let mut table = format!("const PROFILES: [(&str, &str); {}] = [\n", files.len());
    for (name, path) in &files {
        let path = path
            .to_str()
            .unwrap_or_else(|| panic!("{} is not UTF-8; rename the profile", path.display()));
        // `{:?}` writes a Rust string literal (quotes and escapes).
        let _ = writeln!(table, "    ({name:?}, include_str!({path:?})),");
    }
    table.push_str("];\n");
    let out = PathBuf::from(env_var("OUT_DIR")).join("profiles.rs");
    std::fs::write(&out, table)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", out.display()));
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_else(|| panic!("{} has no UTF-8 file name", path.display()))
        .to_owned()
}
