//! The built-in task files, compiled in from `host/tasks/`.

use std::path::PathBuf;

/// The names of the built-in tasks.
pub const BUILTIN_TASKS: &[&str] = &[
    "sst2",
    "sst2-dev",
    "pubmedqa",
    "boolq",
    "xquad",
    "wikitext2",
];

const SOURCES: &[(&str, &str)] = &[
    ("sst2", include_str!("../../tasks/sst2.toml")),
    ("sst2-dev", include_str!("../../tasks/sst2-dev.toml")),
    ("pubmedqa", include_str!("../../tasks/pubmedqa.toml")),
    ("boolq", include_str!("../../tasks/boolq.toml")),
    ("xquad", include_str!("../../tasks/xquad.toml")),
    ("wikitext2", include_str!("../../tasks/wikitext2.toml")),
];

/// The TOML text of the built-in task `name`.
pub(crate) fn source(name: &str) -> Option<&'static str> {
    SOURCES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, text)| *text)
}

/// The directory the built-in task files' relative data paths are resolved against: the
/// source tree's `host/tasks`, since the repository is the install unit for now.
pub(crate) fn tasks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tasks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_name_has_a_source() {
        let names: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, BUILTIN_TASKS);
    }
}
