//! `whittle-device boards`: every built-in board profile and, once measured, `host`, with the
//! figures the cost model reads.

use serde::Serialize;
use whittle_boards::{BoardError, BoardProfile};

/// One board's key figures, as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct BoardSummary {
    name: String,
    aliases: Vec<String>,
    memory_bytes: u64,
    model_memory_share: f64,
    memory_budget_bytes: u64,
    bandwidth_bytes_per_s: u64,
    cpu_f32_flops: f64,
    gpu_fp32_flops: Option<f64>,
    latency_budget_ms_per_token: Option<f64>,
    context_length: usize,
    objective_weight: f64,
    target_triple: String,
    measured: bool,
}

impl BoardSummary {
    fn of(profile: &BoardProfile) -> Self {
        Self {
            name: profile.name.clone(),
            aliases: profile.aliases.clone(),
            memory_bytes: profile.memory_bytes,
            model_memory_share: profile.model_memory_share,
            memory_budget_bytes: profile.memory_budget_bytes(),
            bandwidth_bytes_per_s: profile.bandwidth_bytes_per_s,
            cpu_f32_flops: profile.cpu_f32_flops,
            gpu_fp32_flops: profile.gpu_fp32_flops,
            latency_budget_ms_per_token: profile.latency_budget_ms_per_token,
            context_length: profile.context_length,
            objective_weight: profile.objective_weight,
            target_triple: profile.target_triple.clone(),
            measured: profile.sources.iter().any(|source| source.measured),
        }
    }
}

/// Prints the list as a table, or as one JSON array with `json`.
pub fn run(json: bool) -> anyhow::Result<()> {
    let mut profiles = BoardProfile::all();
    let host_note = match BoardProfile::measured_host() {
        Ok(host) => {
            profiles.push(host);
            None
        }
        Err(error @ BoardError::HostNotMeasured { .. }) => Some(error.to_string()),
        Err(error) => return Err(error.into()),
    };
    let summaries: Vec<BoardSummary> = profiles.iter().map(BoardSummary::of).collect();
    if json {
        println!("{}", serde_json::to_string(&summaries)?);
    } else {
        print!("{}", table(&summaries));
        if let Some(note) = host_note {
            println!("\n{note}");
        }
    }
    Ok(())
}

const HEADER: [&str; 11] = [
    "board",
    "aliases",
    "memory",
    "share",
    "budget",
    "bandwidth",
    "cpu f32",
    "gpu fp32",
    "latency budget",
    "context",
    "target",
];

fn row(summary: &BoardSummary) -> [String; 11] {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    [
        summary.name.clone(),
        if summary.aliases.is_empty() {
            "-".to_owned()
        } else {
            summary.aliases.join(", ")
        },
        binary_bytes(summary.memory_bytes),
        format!("{}", summary.model_memory_share),
        binary_bytes(summary.memory_budget_bytes),
        si(summary.bandwidth_bytes_per_s as f64, "B/s"),
        si(summary.cpu_f32_flops, "FLOP/s"),
        or_dash(summary.gpu_fp32_flops.map(|flops| si(flops, "FLOP/s"))),
        or_dash(
            summary
                .latency_budget_ms_per_token
                .map(|ms| format!("{ms} ms/token")),
        ),
        summary.context_length.to_string(),
        summary.target_triple.clone(),
    ]
}

/// Left-aligned columns two spaces apart.
fn table(summaries: &[BoardSummary]) -> String {
    let rows: Vec<[String; 11]> = std::iter::once(HEADER.map(str::to_owned))
        .chain(summaries.iter().map(row))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|column| {
            rows.iter()
                .map(|cells| cells[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for cells in &rows {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Memory sizes in binary units, as boards are sold: `8.0 GiB`, `768.0 KiB`.
fn binary_bytes(bytes: u64) -> String {
    const PREFIXES: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    PREFIXES
        .iter()
        .find(|(scale, _)| bytes >= *scale)
        .map_or_else(
            || format!("{bytes} B"),
            |(scale, unit)| format!("{:.1} {unit}", bytes as f64 / *scale as f64),
        )
}

/// A value with a decimal SI prefix and one decimal: `68.0 GB/s`, `1.3 TFLOP/s`.
fn si(value: f64, unit: &str) -> String {
    const PREFIXES: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    PREFIXES
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map_or_else(
            || format!("{value:.0} {unit}"),
            |(scale, prefix)| format!("{:.1} {prefix}{unit}", value / scale),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_si(value: f64, unit: &str, expected: &str) {
        assert_eq!(si(value, unit), expected);
    }

    #[test]
    fn figures_get_decimal_prefixes() {
        check_si(68e9, "B/s", "68.0 GB/s");
        check_si(1_280_000_000_000.0, "FLOP/s", "1.3 TFLOP/s");
        check_si(960e6, "FLOP/s", "960.0 MFLOP/s");
        check_si(12.0, "B/s", "12 B/s");
    }

    #[test]
    fn memory_gets_binary_prefixes() {
        assert_eq!(binary_bytes(8_589_934_592), "8.0 GiB");
        assert_eq!(binary_bytes(5_153_960_755), "4.8 GiB");
        assert_eq!(binary_bytes(786_432), "768.0 KiB");
        assert_eq!(binary_bytes(1_048_576), "1.0 MiB");
        assert_eq!(binary_bytes(1_000), "1000 B");
    }

    #[test]
    fn every_built_in_board_is_a_row() {
        let summaries: Vec<BoardSummary> =
            BoardProfile::all().iter().map(BoardSummary::of).collect();
        let text = table(&summaries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), summaries.len() + 1);
        assert!(lines[0].starts_with("board"));
        let orin = lines
            .iter()
            .find(|line| line.starts_with("jetson-orin-nano-8gb "))
            .copied()
            .unwrap_or_default();
        for figure in [
            "jetson-orin",
            "8.0 GiB",
            "0.6",
            "4.8 GiB",
            "68.0 GB/s",
            "144.0 GFLOP/s",
            "1.3 TFLOP/s",
            "2048",
            "aarch64-unknown-linux-gnu",
        ] {
            assert!(orin.contains(figure), "`{orin}` lacks `{figure}`");
        }
        assert!(summaries.iter().all(|summary| !summary.measured));
    }

    #[test]
    fn json_is_one_array_of_boards() {
        let summaries: Vec<BoardSummary> =
            BoardProfile::all().iter().map(BoardSummary::of).collect();
        let json = serde_json::to_string(&summaries).unwrap_or_default();
        assert!(json.starts_with("[{\"name\":\"jetson-orin-nano-4gb\""));
        assert!(json.contains("\"memory_budget_bytes\":5153960755"));
        assert!(!json.contains('\n'));
    }
}
