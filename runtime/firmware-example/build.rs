//! Chooses the bundle the firmware embeds and sizes its arena from it.
//!
//! - `WHITTLE_BUNDLE`: the bundle file (default: `tiny.wbundle` beside this script, a tiny
//!   random model made by the runtime's tests). It is parsed here, so a corrupt bundle or one
//!   whose task is not classification fails the build with the reason.
//! - `WHITTLE_INPUT`: the text the firmware classifies (default: "a charming film").
//! - `WHITTLE_MEMORY`: the board's memory map, `memory/<name>.x` (default `mps2-an386`, QEMU's
//!   Cortex-M4F; `stm32h743`); it goes to the linker as `memory.x`, which refuses a bundle
//!   larger than the flash, and this script refuses one first, or an arena larger than the RAM.
//! - The arena is `Bundle::arena_bytes(CONTEXT)` of that bundle.

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
    println!("cargo::rerun-if-env-changed=WHITTLE_MEMORY");
    println!("cargo::rerun-if-changed=memory");
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
    let board = std::env::var("WHITTLE_MEMORY").unwrap_or_else(|_| "mps2-an386".to_owned());
    let map = manifest.join("memory").join(format!("{board}.x"));
    let memory = std::fs::read_to_string(&map).map_err(|error| {
        format!(
            "WHITTLE_MEMORY {board}: cannot read {} ({error}); the memory maps are in runtime/firmware-example/memory/",
            map.display()
        )
    })?;
    // The linker refuses a bundle larger than the flash too; this says it in the user's terms.
    let flash = region_bytes(&memory, "FLASH")?;
    if bytes.len() > flash {
        return Err(format!(
            "WHITTLE_BUNDLE {} is {} bytes; the {board} flash holds {flash} with the code besides: prune for a smaller memory budget (`whittle prune --memory-budget-mb`) or choose a board with more flash",
            bundle_path.display(),
            bytes.len()
        ));
    }
    let ram = region_bytes(&memory, "RAM")?;
    if arena > ram {
        return Err(format!(
            "WHITTLE_BUNDLE {}: its arena for {CONTEXT} tokens is {arena} bytes; the {board} RAM holds {ram}: prune for a smaller model or choose a board with more RAM",
            bundle_path.display()
        ));
    }
    write("memory.x", memory.as_bytes())?;
    println!("cargo::rustc-link-search={}", out.display());
    Ok(())
}

/// The `LENGTH` of region `name` in a linker memory map (`4M`, `512K` or bytes).
fn region_bytes(memory: &str, name: &str) -> Result<usize, String> {
    let length = memory
        .lines()
        .find(|line| line.trim_start().starts_with(name))
        .and_then(|line| line.split("LENGTH").nth(1))
        .map(|rest| rest.trim_start_matches([' ', '=']).trim())
        .ok_or(format!(
            "the memory map has no `{name} : ORIGIN = …, LENGTH = …` line"
        ))?;
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
        .map_err(|_| format!("the memory map's {name} LENGTH {length} is not a size such as 4M"))
}
