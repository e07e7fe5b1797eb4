//! The `cuda` feature of `whittle-host` compiles on any Linux machine, with or without a GPU:
//! NVIDIA's CUDA 13.0 compiler, headers and libraries come from pinned PyPI wheels in a cached
//! virtual environment, and a link-only stub stands in for the driver. Nothing here runs on a
//! GPU; the binaries it builds need the real driver (R580 or later) to run.
//!
//! What candle-core 0.11.1's `cuda` feature needs: `nvcc` with the runtime and CCCL headers
//! (candle-kernels compiles its `.cu` files to PTX and a static library at build time, for one
//! compute capability), and at link time `libcudart` (candle-kernels), `libcuda`, `libnvrtc`,
//! `libcublas`, `libcublasLt` and `libcurand` (cudarc 0.19 with `dynamic-linking`, which
//! candle sets; its `dynamic-loading` cannot be chosen beside it). The CUDA 12 compiler wheels
//! carry only `ptxas`; the CUDA 13 ones carry the whole `nvcc`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::{cargo, prerequisites};

/// The wheels, pinned to their versions in `cuda-toolkit==13.0.3.0` (its extras `nvcc`,
/// `cudart`, `cccl`, `nvrtc`, `cublas`, `curand`); all install into one prefix,
/// `site-packages/nvidia/cu13`, laid out as a toolkit (`bin`, `include`, `lib`, `nvvm`).
pub const WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.1.1.3",
    "nvidia-curand==10.4.0.35",
];

/// The CUDA version in cudarc's spelling; its build script takes it from `CUDARC_CUDA_VERSION`
/// instead of asking `nvcc --version`, so the bindings match the wheels.
const CUDARC_CUDA_VERSION: &str = "13000";

/// The compute capability candle's kernels are compiled for (`CUDA_COMPUTE_CAP`), since there
/// is no GPU to ask: 9.0, the H100 and H200.
pub const COMPUTE_CAP: &str = "90";

/// The cuda build: the host's library, binaries, tests, examples and benches (the suite builds
/// them in the dev profile without debug information, which is what proves they compile at
/// the least compile time; `gpu-check` adds `--release`).
pub const BUILD: [&str; 6] = [
    "build",
    "-p",
    "whittle-host",
    "--features",
    "cuda",
    "--all-targets",
];

/// The real-model test `cargo xtask gpu-check` runs on a GPU, built beside [`BUILD`].
pub const BUILD_GPU_TEST: [&str; 7] = [
    "build",
    "-p",
    "whittle-tests",
    "--features",
    "cuda",
    "--test",
    "real_model_cuda",
];

/// Libraries linked by name whose wheels hold only the versioned file: the link needs
/// `lib<name>.so`, a symbolic link to it.
const VERSIONED_LIBRARIES: [(&str, &str); 5] = [
    ("cudart", "libcudart.so.13"),
    ("nvrtc", "libnvrtc.so.13"),
    ("cublas", "libcublas.so.13"),
    ("cublasLt", "libcublasLt.so.13"),
    ("curand", "libcurand.so.10"),
];

/// `CUDA_ERROR_STUB_LIBRARY`, what every function of the driver stub returns.
const STUB_LIBRARY_ERROR: u32 = 34;

/// The installed wheels: the toolkit prefix and the folder the link searches first.
pub struct Toolkit {
    root: PathBuf,
    link_dir: PathBuf,
}

/// Installs the toolkit when needed and builds `whittle-host --features cuda` ([`BUILD`], and
/// [`BUILD_GPU_TEST`]) into
/// its own target folder (`<target>/cuda`), so the normal build's artifacts stay valid.
pub fn build() -> anyhow::Result<()> {
    for program in ["g++", "gcc"] {
        if !cargo::on_path(program) {
            bail!(
                "{program} is not on PATH: nvcc needs g++ as its host compiler and the link libstdc++; install g++ (Debian: apt-get install g++)"
            );
        }
    }
    let toolkit = ensure_toolkit()?;
    let target_dir = cargo::target_dir()?.join("cuda");
    println!(
        "    CUDA 13.0 from {}; kernels for compute capability {COMPUTE_CAP} (CUDA_COMPUTE_CAP); no GPU is used",
        toolkit.root.display()
    );
    for build in [&BUILD[..], &BUILD_GPU_TEST[..]] {
        let mut command = cargo::cargo(build);
        toolkit.configure(&mut command);
        command
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_PROFILE_DEV_DEBUG", "false");
        cargo::run(&mut command).context(
            "whittle-host does not build with --features cuda; the compiler output is above (reproduce with `cargo xtask test --only cuda`)",
        )?;
    }
    Ok(())
}

impl Toolkit {
    /// Points a cargo command at the wheels: nvcc by `NVCC` and first on `PATH`, the prefix by
    /// `CUDA_HOME` and `CUDA_PATH`, the version by `CUDARC_CUDA_VERSION`, the compute
    /// capability by `CUDA_COMPUTE_CAP`, the unversioned libraries and the driver stub by a
    /// link search path.
    pub fn configure(&self, command: &mut std::process::Command) {
        let bin = self.root.join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path =
            std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))
                .unwrap_or_else(|_| bin.clone().into_os_string());
        let mut search = OsString::from("native=");
        search.push(&self.link_dir);
        let mut rustflags = OsString::from("-L\u{1f}");
        rustflags.push(search);
        command
            .env("PATH", path)
            .env("NVCC", bin.join("nvcc"))
            .env("CUDA_HOME", &self.root)
            .env("CUDA_PATH", &self.root)
            .env("CUDARC_CUDA_VERSION", CUDARC_CUDA_VERSION)
            .env("CUDA_COMPUTE_CAP", COMPUTE_CAP)
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    }
}

/// The toolkit in `<cache root>/venvs/cuda`: the [`WHEELS`] installed with pip (about 1.2 GB,
/// once) and the link folder written, unless a record of exactly these wheels is there.
pub fn ensure_toolkit() -> anyhow::Result<Toolkit> {
    let python = prerequisites::virtual_environment("cuda")?;
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the virtual environment's python is not in <venv>/bin")?;
    let record = venv.join("whittle-wheels.txt");
    let wanted = WHEELS.join("\n");
    let root = site_packages(&python)?.join("nvidia").join("cu13");
    let link_dir = venv.join("link");
    let toolkit = Toolkit { root, link_dir };
    let installed = std::fs::read_to_string(&record).unwrap_or_default();
    let complete = toolkit.root.join("bin").join("nvcc").is_file()
        && toolkit.link_dir.join("libcuda.so").is_file();
    if installed == wanted && complete {
        println!("    the CUDA wheels are installed: {}", WHEELS.join(" "));
        return Ok(toolkit);
    }
    let mut install = cargo::program(
        &python,
        [
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-cache-dir",
            "--no-deps",
        ],
    );
    install.args(WHEELS);
    cargo::run(&mut install).with_context(|| {
        format!(
            "cannot install the CUDA wheels from PyPI into {}: check that pip reaches pypi.org, or remove that folder and retry",
            venv.display()
        )
    })?;
    let nvcc = toolkit.root.join("bin").join("nvcc");
    if !nvcc.is_file() {
        bail!(
            "pip installed the CUDA wheels but {} is missing; remove {} and retry",
            nvcc.display(),
            venv.display()
        );
    }
    toolkit.write_link_dir()?;
    whittle_boards::files::write_atomically(&record, wanted.as_bytes())
        .with_context(|| format!("cannot write {}", record.display()))?;
    Ok(toolkit)
}

impl Toolkit {
    /// The link folder: `lib<name>.so` links to the wheels' versioned libraries, and
    /// `libcuda.so`, a stub of the driver API compiled from the wheels' `cuda.h` (NVIDIA ships
    /// one in the toolkit's `lib64/stubs`, but in no wheel). Its soname is the driver's,
    /// `libcuda.so.1`, so a binary loads the real driver at run time.
    fn write_link_dir(&self) -> anyhow::Result<()> {
        let dir = &self.link_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, file) in VERSIONED_LIBRARIES {
            let target = self.root.join("lib").join(file);
            if !target.is_file() {
                bail!(
                    "the CUDA wheels lack {}; their versions changed: update cuda::WHEELS and VERSIONED_LIBRARIES together",
                    target.display()
                );
            }
            let link = dir.join(format!("lib{name}.so"));
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
        let header = self.root.join("include").join("cuda.h");
        let declarations = std::fs::read_to_string(&header)
            .with_context(|| format!("cannot read {}", header.display()))?;
        let source = dir.join("libcuda-stub.c");
        whittle_boards::files::write_atomically(&source, driver_stub(&declarations).as_bytes())
            .with_context(|| format!("cannot write {}", source.display()))?;
        let mut compile = cargo::program(
            "gcc",
            ["-shared", "-fPIC", "-O0", "-Wl,-soname,libcuda.so.1", "-o"],
        );
        compile.arg(dir.join("libcuda.so")).arg(&source);
        cargo::run(&mut compile).context("cannot compile the libcuda link stub with gcc")
    }
}

/// C source of a stub driver library: every driver API function that `cuda_h` names (`cu`
/// then a capital letter, `_v2` and later versions included), returning
/// `CUDA_ERROR_STUB_LIBRARY`. Only the names matter to the linker.
pub fn driver_stub(cuda_h: &str) -> String {
    let mut names: Vec<&str> = Vec::new();
    let bytes = cuda_h.as_bytes();
    let is_identifier = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut start = 0;
    while start < bytes.len() {
        if !is_identifier(bytes[start]) {
            start += 1;
            continue;
        }
        let end = bytes[start..]
            .iter()
            .position(|&byte| !is_identifier(byte))
            .map_or(bytes.len(), |length| start + length);
        let word = &cuda_h[start..end];
        if word.len() > 2 && word.starts_with("cu") && word.as_bytes()[2].is_ascii_uppercase() {
            names.push(word);
        }
        start = end;
    }
    names.sort_unstable();
    names.dedup();
    let mut source = String::from(
        "/* Link-only stub of libcuda.so, generated by `cargo xtask test` from cuda.h. */\n",
    );
    for name in names {
        source.push_str(&format!(
            "int {name}(void) {{ return {STUB_LIBRARY_ERROR}; }}\n"
        ));
    }
    source
}

/// The virtual environment's `site-packages`, as its Python reports it.
fn site_packages(python: &Path) -> anyhow::Result<PathBuf> {
    let stdout = cargo::stdout_of(&mut cargo::program(
        python,
        [
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
    ))
    .with_context(|| format!("{} cannot name its site-packages", python.display()))?;
    Ok(PathBuf::from(stdout.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cuda_h: &str, expected: &[&str]) {
        let stub = driver_stub(cuda_h);
        let functions: Vec<&str> = stub
            .lines()
            .filter_map(|line| line.strip_prefix("int "))
            .filter_map(|line| line.split('(').next())
            .collect();
        assert_eq!(functions, expected, "{stub}");
        assert!(
            stub.lines()
                .skip(1)
                .all(|line| line.ends_with("return 34; }"))
        );
    }

    #[test]
    fn the_stub_defines_each_driver_function_once() {
        check(
            "CUresult CUDAAPI cuInit(unsigned int Flags);\n#define cuMemAlloc cuMemAlloc_v2\nCUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr);",
            &["cuInit", "cuMemAlloc", "cuMemAlloc_v2"],
        );
    }

    #[test]
    fn types_macros_and_other_prefixes_are_not_functions() {
        check(
            "typedef enum cudaError_enum { CUDA_SUCCESS = 0 } CUresult; PFN_cuInit cuda cu cuuint32_t",
            &[],
        );
        check("(cuDeviceGet)", &["cuDeviceGet"]);
    }

    #[test]
    fn the_wheels_are_pinned_exactly() {
        assert!(WHEELS.iter().all(|wheel| wheel.split_once("==").is_some()));
    }
}
