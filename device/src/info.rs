//! `whittle-device info`: the facts about this machine that a board profile records.

use anyhow::{Context, bail};
use serde::Serialize;

/// Where Linux reports the memory size.
pub const MEMINFO_PATH: &str = "/proc/meminfo";

/// The machine facts, as printed by `info`.
#[derive(Debug, Serialize)]
struct MachineInfo {
    arch: &'static str,
    os: &'static str,
    logical_cores: Option<usize>,
    simd_features: Vec<&'static str>,
    /// The runtime's kernels this machine can run, the one `run` and `bench` use first.
    kernels: Vec<&'static str>,
    memory_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_error: Option<String>,
    runtime_version: &'static str,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let info = MachineInfo::detect();
    if json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print!("{}", info.to_text());
    }
    Ok(())
}

impl MachineInfo {
    fn detect() -> Self {
        let memory = read_mem_total_bytes(MEMINFO_PATH);
        Self {
            arch: std::env::consts::ARCH,
            os: std::env::consts::OS,
            logical_cores: std::thread::available_parallelism().ok().map(|n| n.get()),
            simd_features: detected_simd_features(),
            kernels: whittle_runtime::kernels::available()
                .map(|k| whittle_runtime::kernels::Kernels::name(&k))
                .collect(),
            memory_error: memory.as_ref().err().map(|error| format!("{error:#}")),
            memory_total_bytes: memory.ok(),
            // The runtime takes its version from the workspace, like this crate.
            runtime_version: env!("CARGO_PKG_VERSION"),
        }
    }

    fn to_text(&self) -> String {
        let cores = self
            .logical_cores
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        let simd = if self.simd_features.is_empty() {
            "none detected".to_owned()
        } else {
            self.simd_features.join(" ")
        };
        let memory = match (self.memory_total_bytes, &self.memory_error) {
            (Some(bytes), _) => format!("{bytes} bytes ({:.1} GiB)", bytes as f64 / GIB),
            (None, Some(error)) => format!("unknown ({error})"),
            (None, None) => "unknown".to_owned(),
        };
        format!(
            "arch: {}\nos: {}\nlogical cores: {cores}\nsimd: {simd}\nkernels: {} (first: used)\nmemory: {memory}\nwhittle-runtime: {}\n",
            self.arch,
            self.os,
            self.kernels.join(", "),
            self.runtime_version
        )
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn read_mem_total_bytes(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {path}; total memory is reported on Linux only"))?;
    parse_mem_total_bytes(&text).with_context(|| format!("unexpected contents in {path}"))
}

/// Total memory in bytes from the text of `/proc/meminfo` (its `MemTotal:` line, in kB).
fn parse_mem_total_bytes(meminfo: &str) -> anyhow::Result<u64> {
    let Some(line) = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
    else {
        bail!("no `MemTotal:` line");
    };
    let mut fields = line.split_whitespace();
    let (Some(value), Some(unit), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("`MemTotal:{line}` is not `MemTotal: <number> kB`");
    };
    if unit != "kB" {
        bail!("`MemTotal:` is in `{unit}`, expected `kB`");
    }
    let kib: u64 = value
        .parse()
        .with_context(|| format!("`MemTotal:` value `{value}` is not a whole number"))?;
    kib.checked_mul(1024)
        .with_context(|| format!("`MemTotal:` value `{value}` kB overflows a byte count"))
}

#[cfg(target_arch = "x86_64")]
pub fn detected_simd_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if std::arch::is_x86_feature_detected!("avx2") {
        features.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("fma") {
        features.push("fma");
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        features.push("avx512f");
    }
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        features.push("avx512vnni");
    }
    features
}

#[cfg(target_arch = "aarch64")]
pub fn detected_simd_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if std::arch::is_aarch64_feature_detected!("neon") {
        features.push("neon");
    }
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        features.push("dotprod");
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        features.push("i8mm");
    }
    if std::arch::is_aarch64_feature_detected!("sve") {
        features.push("sve");
    }
    features
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn detected_simd_features() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(meminfo: &str, expected: Result<u64, &str>) {
        match (parse_mem_total_bytes(meminfo), expected) {
            (Ok(bytes), Ok(expected_bytes)) => assert_eq!(bytes, expected_bytes),
            (Err(error), Err(fragment)) => {
                let message = format!("{error:#}");
                assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
            }
            (got, expected) => panic!("{meminfo:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        check(
            "MemTotal:       16318844 kB\nMemFree:         1186472 kB\n",
            Ok(16_318_844 * 1024),
        );
        check(
            "MemFree:  10 kB\nMemTotal: 7990528 kB\n",
            Ok(7_990_528 * 1024),
        );
        check("MemTotal: 0 kB", Ok(0));
    }

    #[test]
    fn bad_meminfo_is_an_error() {
        check("", Err("no `MemTotal:` line"));
        check("MemFree: 10 kB\n", Err("no `MemTotal:` line"));
        check("MemTotal: lots kB\n", Err("not a whole number"));
        check("MemTotal: -5 kB\n", Err("not a whole number"));
        check("MemTotal: 1024 MB\n", Err("expected `kB`"));
        check("MemTotal: 1024\n", Err("is not `MemTotal: <number> kB`"));
        check(
            "MemTotal: 1 kB extra\n",
            Err("is not `MemTotal: <number> kB`"),
        );
        check(
            "MemTotal: 18446744073709551615 kB\n",
            Err("overflows a byte count"),
        );
    }

    #[test]
    fn json_has_the_arch_key_first() {
        let info = MachineInfo::detect();
        let json = serde_json::to_string(&info).expect("MachineInfo serializes");
        assert!(json.starts_with(&format!("{{\"arch\":\"{}\"", std::env::consts::ARCH)));
        assert!(!json.contains('\n'));
    }

    #[test]
    fn unreadable_meminfo_is_an_error_not_a_panic() {
        let error = read_mem_total_bytes("/nonexistent/meminfo").expect_err("no such file");
        assert!(format!("{error:#}").contains("cannot read /nonexistent/meminfo"));
    }
}
