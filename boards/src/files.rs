//! Where whittle keeps its files, and how it writes them: one resolver for the cache folders
//! (host, device and xtask all call it) and one atomic writer.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Environment variable naming the folder of derived caches (calibration statistics, the
/// measured `host` profile, packed test bundles).
pub const CACHE_DIR_ENV: &str = "WHITTLE_CACHE_DIR";
/// Environment variable naming the folder of downloaded models.
pub const MODEL_DIR_ENV: &str = "WHITTLE_MODEL_DIR";

/// whittle's root in the user cache: `<user cache dir>/whittle`, where the user cache dir is
/// `$XDG_CACHE_HOME` or `~/.cache` on Linux (the `dirs` crate's rule), else the temp folder.
pub fn cache_root() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("whittle")
}

/// The folder of derived caches: `$WHITTLE_CACHE_DIR` when set and non-empty, else
/// `<cache root>/cache` (`~/.cache/whittle/cache` on Linux).
pub fn default_cache_dir() -> PathBuf {
    from_env(CACHE_DIR_ENV).unwrap_or_else(|| cache_root().join("cache"))
}

/// The folder of downloaded models: `$WHITTLE_MODEL_DIR` when set and non-empty, else
/// `<cache root>/models` (`~/.cache/whittle/models` on Linux).
pub fn default_model_dir() -> PathBuf {
    from_env(MODEL_DIR_ENV).unwrap_or_else(|| cache_root().join("models"))
}

/// An environment variable as a path; unset and empty are the same.
fn from_env(name: &str) -> Option<PathBuf> {
    folder_from(std::env::var_os(name))
}

/// A variable's value as a folder: `None` when unset or empty.
fn folder_from(value: Option<std::ffi::OsString>) -> Option<PathBuf> {
    value.filter(|dir| !dir.is_empty()).map(PathBuf::from)
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same folder, fsync, rename over `path`, fsync the folder. Creates
/// the folder when missing. Errors name the path and what to do.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`] for content produced by a writer (for example a library that writes
/// to a path): `fill` writes into the temporary file, which is then synced and renamed.
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let context = |what: &str, error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("{what}: {error}; choose a writable folder with free space"),
        )
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| context(&format!("cannot create {}", dir.display()), e))?;
    let mut staging = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| context(&format!("cannot write in {}", dir.display()), e))?;
    let shown = path.display().to_string();
    fill(staging.as_file_mut()).map_err(|e| context(&format!("cannot write {shown}"), e))?;
    staging
        .as_file()
        .sync_all()
        .map_err(|e| context(&format!("cannot sync {shown}"), e))?;
    staging
        .persist(path)
        .map_err(|e| context(&format!("cannot rename into {shown}"), e.error))?;
    sync_dir(dir).map_err(|e| context(&format!("cannot sync {}", dir.display()), e))
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform; the rename is still atomic.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub").join("out.txt");
        write_atomically(&path, b"first version, longer")?;
        write_atomically(&path, b"second")?;
        assert_eq!(std::fs::read(&path)?, b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap_or(dir.path()))?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")]);
        Ok(())
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out.txt");
        write_atomically(&path, b"kept")?;
        let result = write_atomically_with(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("cut"))
        });
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("out.txt") && error.contains("cut"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path)?, b"kept");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn an_empty_variable_means_unset() {
        // The value is passed in rather than set in the process environment (tests run in
        // parallel threads).
        assert_eq!(folder_from(None), None);
        assert_eq!(folder_from(Some("".into())), None);
        assert_eq!(
            folder_from(Some("/data/whittle".into())),
            Some(PathBuf::from("/data/whittle"))
        );
        assert_eq!(from_env("WHITTLE_TEST_SURELY_UNSET_VARIABLE"), None);
    }
}
