//! Writes `include/whittle.h` from the crate's `extern "C"` items with cbindgen.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    println!("cargo::rerun-if-changed=src/lib.rs");
    println!("cargo::rerun-if-changed=cbindgen.toml");
    let config = match cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")) {
        Ok(config) => config,
        Err(error) => {
            println!("cargo::error=cannot read cbindgen.toml: {error}");
            return;
        }
    };
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(format!("{crate_dir}/include/whittle.h"));
        }
        Err(error) => println!("cargo::error=cbindgen cannot generate include/whittle.h: {error}"),
    }
}
