//! The `host` profile: measured on the machine by `whittle-device profile`, kept in the cache,
//! never committed.

use std::path::{Path, PathBuf};

use crate::{BoardError, BoardProfile, default_cache_dir};

/// The name that selects the measured profile of the machine whittle runs on.
pub const HOST_BOARD_NAME: &str = "host";

/// Where the measured `host` profile lives inside a cache folder: `<cache>/boards/host.toml`.
pub fn host_profile_path_in(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("boards")
        .join(format!("{HOST_BOARD_NAME}.toml"))
}

/// Where [`BoardProfile::builtin`] looks for the measured `host` profile.
pub fn host_profile_path() -> PathBuf {
    host_profile_path_in(&default_cache_dir())
}

impl BoardProfile {
    /// The measured profile of this machine, from [`host_profile_path`].
    pub fn measured_host() -> Result<Self, BoardError> {
        Self::measured_host_at(&host_profile_path())
    }

    /// The measured profile of this machine, from `path`; it must be named `host`.
    pub fn measured_host_at(path: &Path) -> Result<Self, BoardError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(BoardError::HostNotMeasured { path: shown });
            }
            Err(error) => {
                return Err(BoardError::HostUnreadable {
                    path: shown,
                    message: error.to_string(),
                });
            }
        };
        let profile = Self::from_toml_str(&text, &shown)?;
        if profile.name != HOST_BOARD_NAME {
            return Err(BoardError::Invalid {
                name: profile.name,
                field: "name",
                problem: "must be `host` in the measured host profile",
            });
        }
        Ok(profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured_text() -> String {
        r#"
name = "host"
description = "The machine whittle runs on, as measured by whittle-device profile."
memory_bytes = 25_276_510_208
model_memory_share = 0.5
bandwidth_bytes_per_s = 12_000_000_000
cpu_f32_flops = 60_000_000_000.0
target_triple = "x86_64-unknown-linux-gnu"

[cpu]
cores = 2
core = "amd-epyc"
isa_features = ["avx2", "fma"]

[[sources]]
what = "every figure: measured by whittle-device profile on 2025-01-01, AMD EPYC"
measured = true
"#
        .to_owned()
    }

    fn check_loads(text: Option<&str>, expected: Result<&str, &str>) {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("no temporary folder: {error}"),
        };
        let path = host_profile_path_in(dir.path());
        if let Some(text) = text {
            let written = path
                .parent()
                .map(std::fs::create_dir_all)
                .and_then(Result::ok)
                .and_then(|()| std::fs::write(&path, text).ok());
            assert!(written.is_some(), "cannot write {}", path.display());
        }
        match (BoardProfile::measured_host_at(&path), expected) {
            (Ok(profile), Ok(name)) => assert_eq!(profile.name, name),
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
                assert!(!message.contains('\n'), "not one line: {message}");
            }
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn the_host_profile_lives_under_boards_in_the_cache() {
        assert_eq!(
            host_profile_path_in(Path::new("/c")),
            Path::new("/c/boards/host.toml")
        );
    }

    #[test]
    fn a_measured_profile_loads() {
        check_loads(Some(&measured_text()), Ok("host"));
    }

    #[test]
    fn a_missing_profile_says_how_to_measure_it() {
        check_loads(None, Err("run `cargo xtask boards --measure-host`"));
        check_loads(None, Err("(or `whittle-device profile --out "));
    }

    #[test]
    fn a_measured_profile_must_be_named_host() {
        let renamed = measured_text().replace("name = \"host\"", "name = \"my-laptop\"");
        check_loads(Some(&renamed), Err("must be `host`"));
    }

    #[test]
    fn a_measurement_needs_no_url_but_a_citation_does() {
        let cited = measured_text().replace("measured = true", "verified = false");
        check_loads(Some(&cited), Err("https:// `url` (or `measured = true`)"));
        check_loads(Some("name = "), Err("does not parse"));
    }
}
