//! Hands the target triple to the crate: the measured `host` profile records it.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown-unknown-unknown".to_owned());
    println!("cargo:rustc-env=WHITTLE_DEVICE_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
