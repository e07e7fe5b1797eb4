//! Chooses the bundle the firmware embeds and sizes its arena from it.
//!
//! - `WHITTLE_BUNDLE`: the bundle file (default: `tiny.wbundle` beside this script, a tiny
//!   random model made by the runtime's tests). It is parsed here, so a corrupt bundle or one
//!   whose task is not classification fails the build with the reason.
//! - `WHITTLE_INPUT`: the text the firmware classifies (default: "a charming film").
//! - The arena is `Bundle::arena_bytes(CONTEXT)` of that bundle; `memory.x` (the mps2-an386
//!   memory map) goes to the linker, which refuses a bundle larger than the flash.

use std::path::PathBuf;

/// Tokens of prompt and answer the firmware supports.
const CONTEXT: usize = 64;

fn main() {
    if let Err(message) = generate() {
        println!("cargo::error={message}");
    }
}

fn generate() -> Result<(), String> {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    println!("cargo::rerun-if-env-changed=WHITTLE_BUNDLE");
    println!("cargo::rerun-if-env-changed=WHITTLE_INPUT");
    println!("cargo::rerun-if-changed=memory.x");
    let bundle_path = std::env::var_os("WHITTLE_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("tiny.wbundle"));
    println!("cargo::rerun-if-changed={}", bundle_path.display());
    let bytes = std::fs::read(&bundle_path).map_err(|error| {
        format!(
            "WHITTLE_BUNDLE {} cannot be read ({error}); point it at a bundle made by `whittle pack` or `whittle prune`",
            bundle_path.display()
        )
    })?;
    let aligned = whittle_runtime::AlignedBytes::new(&bytes);
    let bundle = whittle_runtime::Bundle::parse(aligned.as_bytes()).map_err(|error| {
        format!(
            "WHITTLE_BUNDLE {} is not a valid bundle: {error}",
            bundle_path.display()
        )
    })?;
    if bundle.header().task.kind != whittle_runtime::format::TaskKind::Classification {
        return Err(format!(
            "WHITTLE_BUNDLE {} is not a classification bundle; the firmware classifies one input, give it a bundle of a classification task",
            bundle_path.display()
        ));
    }
    let arena = bundle.arena_bytes(CONTEXT);
    let input = std::env::var("WHITTLE_INPUT").unwrap_or_else(|_| "a charming film".to_owned());
    let write = |name: &str, contents: &[u8]| {
        std::fs::write(out.join(name), contents)
            .map_err(|error| format!("cannot write {name} into {}: {error}", out.display()))
    };
    write("bundle.wbundle", &bytes)?;
    write(
        "config.rs",
        format!(
            "/// Tokens of prompt and answer the firmware supports.\npub const CONTEXT: usize = {CONTEXT};\n/// `Bundle::arena_bytes(CONTEXT)` of the embedded bundle.\npub const ARENA_BYTES: usize = {arena};\n/// The text classified.\npub const INPUT: &str = {input:?};\n"
        )
        .as_bytes(),
    )?;
    let memory = std::fs::read_to_string(manifest.join("memory.x"))
        .map_err(|error| format!("cannot read memory.x: {error}"))?;
    // The linker refuses a bundle larger than the flash too; this says it in the user's terms.
    let flash = flash_bytes(&memory)?;
    if bytes.len() > flash {
        return Err(format!(
            "WHITTLE_BUNDLE {} is {} bytes; the board's flash holds {flash} (memory.x) with the code besides: prune for a smaller memory budget (`whittle prune --memory-budget-mb`) or choose a board with more flash",
            bundle_path.display(),
            bytes.len()
        ));
    }
    write("memory.x", memory.as_bytes())?;
    println!("cargo::rustc-link-search={}", out.display());
    Ok(())
}

/// The `LENGTH` of the `FLASH` region in a linker memory map (`4M`, `512K` or bytes).
fn flash_bytes(memory: &str) -> Result<usize, String> {
    let length = memory
        .lines()
        .find(|line| line.trim_start().starts_with("FLASH"))
        .and_then(|line| line.split("LENGTH").nth(1))
        .map(|rest| rest.trim_start_matches([' ', '=']).trim())
        .ok_or("memory.x has no `FLASH : ORIGIN = …, LENGTH = …` line")?;
    let (digits, scale) = match length.strip_suffix('M') {
        Some(digits) => (digits, 1024 * 1024),
        None => match length.strip_suffix('K') {
            Some(digits) => (digits, 1024),
            None => (length, 1),
        },
    };
    digits
        .trim()
        .parse::<usize>()
        .map(|n| n * scale)
        .map_err(|_| format!("memory.x's FLASH LENGTH {length} is not a size such as 4M"))
}
