use crate::{BoardError, BoardProfile, HOST_BOARD_NAME};

// Every built-in profile: `PROFILES`, (file name, text) of each `profiles/*.toml`, sorted by
// file name; written by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

impl BoardProfile {
    /// The built-in profile with this name or alias; `host` is the measured profile of this
    /// machine ([`BoardProfile::measured_host`]).
    pub fn builtin(name_or_alias: &str) -> Result<Self, BoardError> {
        if name_or_alias == HOST_BOARD_NAME {
            return Self::measured_host();
        }
        Self::all()
            .into_iter()
            .find(|profile| profile.answers_to(name_or_alias))
            .ok_or_else(|| BoardError::UnknownBoard {
                name: name_or_alias.to_owned(),
                known: format!(
                    "{}, or {HOST_BOARD_NAME} (this machine, once measured)",
                    Self::builtin_names().join(", ")
                ),
            })
    }

    /// A built-in profile by name or alias, or a profile file of the same schema when the
    /// argument ends in `.toml` (a board of the user's own).
    pub fn resolve(name_or_path: &str) -> Result<Self, BoardError> {
        if !name_or_path.ends_with(".toml") {
            return Self::builtin(name_or_path);
        }
        let text =
            std::fs::read_to_string(name_or_path).map_err(|error| BoardError::FileUnreadable {
                path: name_or_path.to_owned(),
                message: error.to_string(),
            })?;
        Self::from_toml_str(&text, name_or_path)
    }

    /// Every profile committed with the crate (never `host`), grouped by maker (the first word
    /// of the name, in alphabetical order), smallest memory first within a maker.
    pub fn all() -> Vec<Self> {
        let mut profiles: Vec<Self> = PROFILES
            .iter()
            .map(|(file, text)| {
                // The tests parse and validate every embedded file, so this cannot fail in a
                // released build.
                Self::from_toml_str(text, file)
                    .unwrap_or_else(|error| panic!("built-in profile is broken: {error}"))
            })
            .collect();
        profiles.sort_by(|a, b| a.listing_key().cmp(&b.listing_key()));
        profiles
    }

    /// Where a profile stands in [`BoardProfile::all`].
    fn listing_key(&self) -> (&str, u64, &str) {
        let maker = self.name.split('-').next().unwrap_or_default();
        (maker, self.memory_bytes, &self.name)
    }

    /// Canonical names of the profiles committed with the crate.
    pub fn builtin_names() -> Vec<String> {
        Self::all()
            .into_iter()
            .map(|profile| profile.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_profile_file_resolves_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("my-board.toml");
        let text =
            profile_text("raspberry-pi-5-8gb.toml").replace("raspberry-pi-5-8gb", "my-board");
        std::fs::write(&path, text).expect("write");
        let board = BoardProfile::resolve(path.to_str().expect("utf-8")).expect("resolves");
        assert_eq!(board.name, "my-board");
        let missing = BoardProfile::resolve("/nonexistent/board.toml").expect_err("missing");
        assert!(
            missing.to_string().contains("/nonexistent/board.toml"),
            "{missing}"
        );
        assert!(BoardProfile::resolve("jetson-orin").is_ok());
    }

    fn check_resolves(name_or_alias: &str, expected: &str) {
        match BoardProfile::builtin(name_or_alias) {
            Ok(profile) => assert_eq!(profile.name, expected, "for `{name_or_alias}`"),
            Err(error) => panic!("`{name_or_alias}` does not resolve: {error}"),
        }
    }

    fn check_rejected(text: &str, expected_fragment: &str) {
        match BoardProfile::from_toml_str(text, "test.toml") {
            Ok(profile) => panic!("accepted a bad profile: {profile:?}"),
            Err(error) => {
                let message = error.to_string();
                assert!(
                    message.contains(expected_fragment),
                    "`{message}` lacks `{expected_fragment}`"
                );
                assert!(!message.contains('\n'), "not one line: {message}");
            }
        }
    }

    /// The embedded text of `profiles/<file>`.
    fn profile_text(file: &str) -> &'static str {
        match PROFILES.iter().find(|(name, _)| *name == file) {
            Some((_, text)) => text,
            None => panic!("{file} is not embedded"),
        }
    }

    fn good_profile() -> String {
        profile_text("jetson-orin-nano-8gb.toml").to_owned()
    }

    #[test]
    fn every_file_in_the_profiles_folder_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut files: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".toml"))
                .collect(),
            Err(error) => panic!("{}: {error}", dir.display()),
        };
        files.sort();
        let embedded: Vec<&str> = PROFILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, files);
    }

    #[test]
    fn the_list_is_grouped_by_maker_smallest_memory_first() {
        let all = BoardProfile::all();
        assert!(
            all.windows(2)
                .all(|pair| pair[0].listing_key() < pair[1].listing_key())
        );
        let names = BoardProfile::builtin_names();
        assert_eq!(
            names.first().map(String::as_str),
            Some("jetson-orin-nano-4gb")
        );
        assert_eq!(names.last().map(String::as_str), Some("stm32h743"));
    }

    #[test]
    fn every_builtin_profile_parses_and_validates() {
        for (file, text) in PROFILES {
            let profile = match BoardProfile::from_toml_str(text, file) {
                Ok(profile) => profile,
                Err(error) => panic!("{file}: {error}"),
            };
            assert_eq!(format!("{}.toml", profile.name), file);
            assert!(!profile.sources.is_empty());
            assert!(profile.model_memory_share > 0.0 && profile.model_memory_share <= 1.0);
            assert!(profile.memory_budget_bytes() > 0);
        }
        assert_eq!(BoardProfile::all().len(), PROFILES.len());
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = HashSet::new();
        for profile in BoardProfile::all() {
            for key in std::iter::once(&profile.name).chain(&profile.aliases) {
                assert!(seen.insert(key.clone()), "`{key}` names two boards");
            }
        }
    }

    #[test]
    fn names_and_aliases_resolve() {
        check_resolves("jetson-orin", "jetson-orin-nano-8gb");
        check_resolves("jetson-orin-nano-8gb", "jetson-orin-nano-8gb");
        check_resolves("jetson-orin-nano-super", "jetson-orin-nano-super-8gb");
        check_resolves("jetson-agx-orin", "jetson-agx-orin-64gb");
        check_resolves("rpi5", "raspberry-pi-5-8gb");
        check_resolves("stm32h743", "stm32h743");
        for profile in BoardProfile::all() {
            for alias in &profile.aliases {
                check_resolves(alias, &profile.name);
            }
        }
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let message = match BoardProfile::builtin("jetson-nano-classic") {
            Ok(profile) => panic!("resolved to {}", profile.name),
            Err(error) => error.to_string(),
        };
        assert!(message.contains("unknown board `jetson-nano-classic`"));
        for name in BoardProfile::builtin_names() {
            assert!(message.contains(&name), "`{message}` lacks `{name}`");
        }
    }

    #[test]
    fn the_mcu_is_too_small_for_smollm2() {
        let board = BoardProfile::builtin("stm32h743").expect("stm32h743 is built in");
        assert!(board.memory_budget_bytes() < 135_000_000);
        assert_eq!(board.gpu_fp32_flops, None);
    }

    #[test]
    fn bad_profiles_are_rejected_on_one_line() {
        let good = good_profile();
        let share = "model_memory_share = 0.6";
        // (text replaced in the good profile, its replacement, what the error must say)
        let edits = [
            (
                share,
                "model_memory_share = 1.5",
                "model_memory_share must be in (0, 1]",
            ),
            (share, "model_memory_share = 0.0", "model_memory_share"),
            (
                "bandwidth_bytes_per_s = 68_000_000_000",
                "bandwidth_bytes_per_s = 0",
                "bandwidth_bytes_per_s must be positive",
            ),
            ("cores = 6", "cores = 0", "cpu.cores"),
            ("clock_ghz = 1.5", "clock_ghz = -1.5", "cpu.clock_ghz"),
            (
                "gpu_fp32_flops = 1_280_000_000_000.0",
                "gpu_fp32_flops = 0.0",
                "gpu_fp32_flops",
            ),
            (
                "name = \"jetson-orin-nano-8gb\"",
                "name = \"Jetson Orin\"",
                "name must be lowercase",
            ),
            ("https://", "http://", "https://"),
            (
                "cpu_f32_flops = 144_000_000_000.0",
                "cpu_f32_flops = 0.0",
                "cpu_f32_flops must be a positive number",
            ),
            (
                "cpu_f32_flops = 144_000_000_000.0\n",
                "",
                "missing field `cpu_f32_flops`",
            ),
        ];
        for (from, to, fragment) in edits {
            check_rejected(&good.replace(from, to), fragment);
        }
        // (a line added after `model_memory_share`, what the error must say)
        let additions = [
            (
                "objective_weight = 1.5",
                "objective_weight must be in [0, 1]",
            ),
            ("context_length = 0", "context_length must be positive"),
            ("layer_overhead_us = -1.0", "layer_overhead_us"),
            ("product_overhead_us = -1.0", "product_overhead_us"),
        ];
        for (line, fragment) in additions {
            check_rejected(&good.replace(share, &format!("{share}\n{line}")), fragment);
        }
        check_rejected(
            &format!("{good}\nfavourite_colour = \"green\"\n"),
            "unknown field",
        );
        check_rejected("name = \"x\"", "does not parse");
    }

    #[test]
    fn unset_whittle_defaults_take_the_documented_values() {
        let board = match BoardProfile::from_toml_str(&good_profile(), "good.toml") {
            Ok(board) => board,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(
            board.objective_weight,
            BoardProfile::DEFAULT_OBJECTIVE_WEIGHT
        );
        assert_eq!(board.context_length, BoardProfile::DEFAULT_CONTEXT_LENGTH);
        assert_eq!(
            board.layer_overhead_us,
            BoardProfile::DEFAULT_LAYER_OVERHEAD_US
        );
        assert_eq!(
            board.gpu_layer_overhead_us,
            BoardProfile::DEFAULT_GPU_LAYER_OVERHEAD_US
        );
        assert_eq!(
            board.product_overhead_us,
            BoardProfile::DEFAULT_PRODUCT_OVERHEAD_US
        );
        assert_eq!(
            board.gpu_product_overhead_us,
            BoardProfile::DEFAULT_GPU_PRODUCT_OVERHEAD_US
        );
        assert_eq!(board.memory_budget_bytes(), 5_153_960_755);
    }

    #[test]
    fn host_is_measured_never_committed() {
        for profile in BoardProfile::all() {
            assert!(!profile.answers_to(HOST_BOARD_NAME), "{}", profile.name);
            assert!(profile.sources.iter().all(|source| !source.measured));
        }
        let message = match BoardProfile::builtin("no-such-board") {
            Ok(profile) => panic!("resolved to {}", profile.name),
            Err(error) => error.to_string(),
        };
        assert!(message.contains("or host (this machine, once measured)"));
    }

    #[test]
    fn a_profile_round_trips_through_toml() {
        for profile in BoardProfile::all() {
            let text = match toml::to_string(&profile) {
                Ok(text) => text,
                Err(error) => panic!("{}: {error}", profile.name),
            };
            match BoardProfile::from_toml_str(&text, &profile.name) {
                Ok(parsed) => assert_eq!(parsed, profile),
                Err(error) => panic!("{}: {error}\n{text}", profile.name),
            }
        }
    }

    #[test]
    fn a_profile_without_sources_is_rejected() {
        let good = good_profile();
        let Some(first_source) = good.find("[[sources]]") else {
            panic!("the fixture has no sources");
        };
        // A top-level key must come before the first table header.
        let without_sources = format!("sources = []\n{}", &good[..first_source]);
        check_rejected(&without_sources, "sources is empty");
    }
}
