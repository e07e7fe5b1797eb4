use super::*;

fn facts() -> MachineFacts {
    MachineFacts {
        cpu_model: "AMD EPYC".to_owned(),
        cores: 2,
        clock_ghz: Some(2.596),
        isa_features: vec!["avx2".to_owned(), "fma".to_owned()],
        memory_bytes: 25_276_510_208,
        last_level_cache_bytes: Some(32 << 20),
        target_triple: "x86_64-unknown-linux-gnu".to_owned(),
    }
}

fn measured_profile() -> BoardProfile {
    let bandwidth = Bandwidth {
        buffer_bytes: 512 << 20,
        threads: 2,
        runs: 5,
        one_thread_bytes_per_s: 9.5e9,
        all_threads_bytes_per_s: 14.25e9,
    };
    let throughput = Throughput {
        size: 512,
        products_per_run: 10,
        threads: 2,
        runs: 5,
        one_thread_flops: 80e9,
        all_threads_flops: 150e9,
    };
    host_profile(&facts(), &bandwidth, &throughput, None, "2026-05-01")
}

#[test]
fn the_written_profile_parses_back_as_the_host_board() {
    let profile = measured_profile();
    let text = match toml::to_string(&profile) {
        Ok(text) => text,
        Err(error) => panic!("{error}"),
    };
    let parsed = match BoardProfile::from_toml_str(&text, "host.toml") {
        Ok(parsed) => parsed,
        Err(error) => panic!("{error}\n{text}"),
    };
    assert_eq!(parsed, profile);
    assert_eq!(parsed.name, "host");
    assert_eq!(parsed.bandwidth_bytes_per_s, 14_250_000_000);
    assert_eq!(parsed.cpu_f32_flops, 150e9);
    assert_eq!(parsed.cpu.core, "amd-epyc");
    assert_eq!(parsed.memory_budget_bytes(), 12_638_255_104);
    assert!(parsed.sources.iter().all(|source| source.measured));
    for source in &parsed.sources {
        assert!(
            source
                .what
                .ends_with("measured by whittle-device profile on 2026-05-01, AMD EPYC"),
            "{}",
            source.what
        );
    }
    assert!(
        parsed.sources[1]
            .what
            .contains("1 thread (9.5 GB/s) and 2 threads at once (14.2 GB/s)")
    );
    assert!(
        parsed.sources[2]
            .what
            .contains("1 thread (80.0 GFLOP/s) and 2 threads")
    );
}

/// A busy machine where all threads at once lose to one.
fn slow_all_threads() -> (Bandwidth, Throughput) {
    let bandwidth = Bandwidth {
        buffer_bytes: 512 << 20,
        threads: 2,
        runs: 5,
        one_thread_bytes_per_s: 19e9,
        all_threads_bytes_per_s: 12e9,
    };
    let throughput = Throughput {
        size: 512,
        products_per_run: 10,
        threads: 2,
        runs: 5,
        one_thread_flops: 200.4e9,
        all_threads_flops: 150e9,
    };
    (bandwidth, throughput)
}

#[test]
fn a_busy_machine_keeps_its_one_thread_figures() {
    let (bandwidth, throughput) = slow_all_threads();
    let profile = host_profile(&facts(), &bandwidth, &throughput, None, "2026-05-01");
    assert_eq!(profile.bandwidth_bytes_per_s, 19_000_000_000);
    assert_eq!(profile.cpu_f32_flops, 200_400_000_000.0);
}

#[test]
fn the_profile_is_written_atomically_where_the_host_board_is_read() {
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temporary folder");
    };
    let path = whittle_boards::host_profile_path_in(dir.path());
    let text = match toml::to_string(&measured_profile()) {
        Ok(text) => text,
        Err(error) => panic!("{error}"),
    };
    for _ in 0..2 {
        if let Err(error) = write_profile(&path, &text) {
            panic!("{error:#}");
        }
    }
    match BoardProfile::measured_host_at(&path) {
        Ok(profile) => assert_eq!(profile, measured_profile()),
        Err(error) => panic!("{error}"),
    }
    let leftovers = std::fs::read_dir(path.parent().unwrap_or(dir.path()))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 1, "temporary files left beside the profile");
}

fn check_cpu_model(cpuinfo: &str, expected: Option<&str>) {
    assert_eq!(parse_cpu_model(cpuinfo).as_deref(), expected, "{cpuinfo:?}");
}

#[test]
fn cpu_models_come_from_x86_or_arm_fields() {
    check_cpu_model(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.122\n",
        Some("AMD EPYC"),
    );
    check_cpu_model(
        "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n",
        Some("Arm implementer 0x41 part 0xd42"),
    );
    check_cpu_model("processor\t: 0\nmodel name\t: \n", None);
    check_cpu_model("", None);
}

fn check_ghz(cpuinfo: &str, expected: Option<f64>) {
    assert_eq!(parse_cpuinfo_ghz(cpuinfo), expected, "{cpuinfo:?}");
}

#[test]
fn the_clock_is_the_fastest_core() {
    check_ghz("cpu MHz\t\t: 2596.122\n", Some(2.596122));
    check_ghz("cpu MHz : 1200\ncpu MHz : 3400\ncpu MHz : 800\n", Some(3.4));
    check_ghz("cpu MHz : fast\n", None);
    check_ghz("cpu MHz : 0\n", None);
    check_ghz("", None);
    assert_eq!(parse_khz_as_ghz("1510400\n"), Some(1.5104));
    assert_eq!(parse_khz_as_ghz("0"), None);
    assert_eq!(parse_khz_as_ghz("n/a"), None);
}

fn check_cache_size(text: &str, expected: Option<usize>) {
    assert_eq!(parse_cache_size(text), expected, "{text:?}");
}

#[test]
fn cache_sizes_read_sysfs_units() {
    check_cache_size("32768K\n", Some(32 << 20));
    check_cache_size("1M", Some(1 << 20));
    check_cache_size("512", Some(512));
    check_cache_size("2G", Some(2 << 30));
    check_cache_size("48KiB", None);
    check_cache_size("", None);
    check_cache_size("K", None);
    check_cache_size("99999999999999999999999K", None);
}

#[test]
fn the_last_level_cache_is_the_highest_level() {
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temporary folder");
    };
    for (index, level, size) in [(0, "1", "48K"), (2, "2", "1024K"), (3, "3", "32768K")] {
        let folder = dir.path().join(format!("index{index}"));
        let written = std::fs::create_dir_all(&folder)
            .and_then(|()| std::fs::write(folder.join("level"), level))
            .and_then(|()| std::fs::write(folder.join("size"), size));
        assert!(written.is_ok(), "{written:?}");
    }
    assert_eq!(last_level_cache_bytes(dir.path()), Some(32 << 20));
    assert_eq!(last_level_cache_bytes(&dir.path().join("none")), None);
}

#[test]
fn the_buffer_outgrows_the_cache_but_not_the_memory() {
    let gib = 1u64 << 30;
    assert_eq!(bandwidth_buffer_bytes(Some(32 << 20), 24 * gib), 512 << 20);
    assert_eq!(bandwidth_buffer_bytes(Some(128 << 20), 24 * gib), 1 << 30);
    assert_eq!(bandwidth_buffer_bytes(None, 24 * gib), 512 << 20);
    assert_eq!(bandwidth_buffer_bytes(Some(128 << 20), gib), 256 << 20);
    assert_eq!(bandwidth_buffer_bytes(None, 0), 1 << 20);
}

#[test]
fn names_become_kebab_case() {
    assert_eq!(
        kebab_case("Intel(R) Xeon(R) Platinum 8488C"),
        "intel-r-xeon-r-platinum-8488c"
    );
    assert_eq!(kebab_case("AMD EPYC"), "amd-epyc");
    assert_eq!(
        kebab_case("Arm implementer 0x41 part 0xd42"),
        "arm-implementer-0x41-part-0xd42"
    );
    assert_eq!(kebab_case("(?)"), "unknown");
}

#[test]
fn dates_are_utc_calendar_days() {
    let at = |seconds: u64| utc_date(UNIX_EPOCH + std::time::Duration::from_secs(seconds));
    assert_eq!(at(0), "1970-01-01");
    assert_eq!(at(86_399), "1970-01-01");
    assert_eq!(at(951_782_400), "2000-02-29");
    assert_eq!(at(1_709_164_800), "2024-02-29");
    assert_eq!(at(1_735_689_599), "2024-12-31");
    assert_eq!(at(1_735_689_600), "2025-01-01");
    assert_eq!(
        utc_date(UNIX_EPOCH - std::time::Duration::from_secs(1)),
        "1970-01-01"
    );
}

/// `measured_profile`'s machine with kernel rates of `rate` (twice that for the curve's
/// smallest working set) and a synthetic model that took `seconds` a short decode step.
fn with_kernels(rate: f64, seconds: f64) -> BoardProfile {
    let point = |bytes: u64, rate: f64| whittle_boards::WorkingSetRates {
        bytes,
        q8_decode_bytes_per_s: rate,
        f32_decode_bytes_per_s: rate,
        q4_decode_bytes_per_s: rate,
    };
    let mut profile = measured_profile();
    profile.kernels = Some(whittle_boards::KernelRates {
        q8_decode_bytes_per_s: rate,
        f32_decode_bytes_per_s: rate,
        q8_prefill_flops: 10.0 * rate,
        f32_prefill_flops: 10.0 * rate,
        q4_decode_bytes_per_s: Some(rate),
        q4_prefill_flops: Some(10.0 * rate),
        attention_flops: None,
        prefill_layer_overhead_us: None,
        revision: Some(whittle_runtime::kernels::REVISION),
        decode_by_working_set: vec![point(16 << 20, 2.0 * rate), point(512 << 20, rate)],
        probe: Some(whittle_boards::ModelProbe {
            short_context: 24,
            short_decode_s: seconds,
            long_context: 264,
            long_decode_s: 1.5 * seconds,
            prefill_tokens: 256,
            prefill_s_per_token: seconds / 4.0,
            pairs: 100,
            pair_bytes: 128 << 20,
            pairs_s: 3.0 * seconds,
        }),
        measurements: None,
    });
    profile
}

fn merged(installed: &BoardProfile, measured: BoardProfile) -> BoardProfile {
    match fastest_of(installed, measured) {
        Ok(profile) => profile,
        Err(error) => panic!("{error:#}"),
    }
}

#[test]
fn a_merged_profile_keeps_each_figures_best() {
    // One measurement saw the memory at its quietest, the other the synthetic model.
    let quiet_memory = with_kernels(30e9, 0.006);
    let mut quiet_model = with_kernels(20e9, 0.004);
    quiet_model.bandwidth_bytes_per_s = 20_000_000_000;
    if let Some(k) = quiet_model.kernels.as_mut() {
        k.decode_by_working_set[0].q8_decode_bytes_per_s = 100e9;
    }
    let both = merged(&quiet_memory, quiet_model);
    assert!(both.validate().is_ok());
    assert_eq!(both.bandwidth_bytes_per_s, 20_000_000_000);
    let Some(k) = both.kernels.clone() else {
        panic!("no kernel rates");
    };
    assert_eq!(k.q8_decode_bytes_per_s, 30e9);
    assert_eq!(k.q4_prefill_flops, Some(300e9));
    let curve: Vec<[f64; 2]> = k
        .decode_by_working_set
        .iter()
        .map(|p| [p.q8_decode_bytes_per_s, p.f32_decode_bytes_per_s])
        .collect();
    assert_eq!(curve, [[100e9, 60e9], [30e9, 30e9]]);
    let Some(probe) = k.probe else {
        panic!("no probe");
    };
    assert_eq!(
        [probe.short_decode_s, probe.long_decode_s, probe.pairs_s],
        [0.004, 0.006, 0.012]
    );
    assert_eq!(k.measurements, Some(2));
    // A slow third measurement changes no figure and counts.
    let three = merged(&both, with_kernels(1e9, 1.0));
    assert_eq!(
        three.kernels.as_ref().map(|k| k.q8_decode_bytes_per_s),
        Some(30e9)
    );
    assert_eq!(three.kernels.as_ref().and_then(|k| k.measurements), Some(3));
    let notes: Vec<&str> = three
        .sources
        .iter()
        .map(|s| s.what.as_str())
        .filter(|what| what.contains("--merge"))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("of 3 measurements"), "{}", notes[0]);
}

#[test]
fn the_fixed_costs_are_fitted_from_the_merged_times() {
    let mut both = merged(&with_kernels(30e9, 0.004), with_kernels(20e9, 0.006));
    let Some(probe) = both.kernels.as_ref().and_then(|k| k.probe.clone()) else {
        panic!("no probe");
    };
    let expected = match whittle_boards::fit_overheads(
        &both,
        &PROBE_MODEL,
        whittle_boards::Dtype::Q8,
        &probe.steps(),
    ) {
        Ok(fitted) => fitted,
        Err(error) => panic!("{error}"),
    };
    // This run's own (slower) times are not what is fitted.
    let slow = measure::ModelSteps {
        config: PROBE_MODEL,
        threads: 2,
        runs: 5,
        times: whittle_boards::StepTimes {
            decode: [(24, 0.006), (264, 0.009)],
            prefill: (256, 0.0015),
        },
        pairs: measure::PairSpeed {
            pairs: 100,
            bytes: 128 << 20,
            seconds: 0.018,
        },
    };
    if let Err(error) = add_overheads(&mut both, &slow, "by a test") {
        panic!("{error:#}");
    }
    assert_eq!(both.layer_overhead_us, expected.layer_overhead_us);
    assert!(expected.layer_overhead_us > 0.0);
    assert_eq!(
        both.kernels.as_ref().and_then(|k| k.attention_flops),
        expected.attention_flops.map(f64::round)
    );
}

#[test]
fn a_profile_of_other_kernels_or_shapes_is_not_merged() {
    type Change = fn(&mut BoardProfile);
    let cases: [(Change, &str); 5] = [
        (
            |p| p.target_triple = "aarch64-unknown-linux-gnu".to_owned(),
            "another machine",
        ),
        (
            |p| p.kernels.iter_mut().for_each(|k| k.revision = Some(0)),
            "other kernels",
        ),
        (
            |p| p.kernels.iter_mut().for_each(|k| k.probe = None),
            "does not keep",
        ),
        (
            |p| {
                p.kernels
                    .iter_mut()
                    .for_each(|k| k.decode_by_working_set[0].bytes = 32 << 20)
            },
            "working sets",
        ),
        (
            |p| {
                p.kernels
                    .iter_mut()
                    .flat_map(|k| k.probe.as_mut())
                    .for_each(|probe| probe.long_context = 512)
            },
            "synthetic model",
        ),
    ];
    for (change, why) in cases {
        let mut installed = with_kernels(20e9, 0.004);
        change(&mut installed);
        match fastest_of(&installed, with_kernels(20e9, 0.004)) {
            Ok(_) => panic!("merged a profile that should be refused for {why}"),
            Err(error) => {
                let message = format!("{error:#}");
                assert!(message.contains(why), "{message}");
                assert!(
                    message.contains("whittle-device profile --install"),
                    "{message}"
                );
            }
        }
    }
}
