//! The record `whittle-device bench --json` prints and `cargo xtask bench-compare` reads: one
//! type for both sides, so that a field the reader needs and the writer lacks is an error that
//! names it. The JSON field names are an interface (scripts read them): keep them.

use serde::{Deserialize, Serialize};
use whittle_runtime::format::Dtype;

/// One `whittle-device bench` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// The bundle file.
    pub bundle: String,
    /// Whether the bundle is the dense model or a pruned one (from its provenance).
    pub variant: BundleVariant,
    /// How the bundle stores its weights (`"f32"` or `"q8"`).
    pub dtype: Dtype,
    /// The single-threaded kernel underneath.
    pub kernel: String,
    /// Threads sharing each product.
    pub threads: usize,
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// Greedy tokens after the prompt.
    pub decode_tokens: usize,
    /// Seconds of every measured prefill.
    pub prefill_s: Vec<f64>,
    /// Seconds of every measured decode (all `decode_tokens` of it).
    pub decode_s: Vec<f64>,
    /// Process CPU seconds (every thread, user + system; 10 ms ticks) of every prefill.
    pub prefill_cpu_s: Vec<f64>,
    /// Process CPU seconds of every decode.
    pub decode_cpu_s: Vec<f64>,
    /// Median prefill throughput.
    pub prefill_tok_s: f64,
    /// Median decode throughput.
    pub decode_tok_s: f64,
    /// The generated token ids (last repetition).
    pub generated: Vec<u32>,
    /// The cost model's figures, when the board profile is available (`null` otherwise).
    #[serde(deserialize_with = "Option::deserialize")]
    pub predicted: Option<BenchPrediction>,
    /// Why there is no prediction (`null` when there is one).
    #[serde(deserialize_with = "Option::deserialize")]
    pub predicted_error: Option<String>,
}

/// Whether a benchmarked bundle holds the dense model or a pruned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleVariant {
    /// Packed from the dense model (an empty provenance source).
    Dense,
    /// Packed from a prune run.
    Pruned,
}

impl BundleVariant {
    /// `dense` or `pruned`, as the JSON writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Pruned => "pruned",
        }
    }
}

/// The cost model's figures for one bundle, at the benchmark's context lengths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchPrediction {
    /// The board.
    pub board: String,
    /// Its memory bandwidth, bytes/s.
    pub bandwidth_bytes_per_s: u64,
    /// Weight bytes read per decoded token.
    pub bytes_read_per_token: u64,
    /// Decode latency at context `prefill + decode / 2`, ms per token.
    pub decode_ms_per_token: f64,
    /// Prefill latency for a `prefill`-token prompt, ms per token.
    pub prefill_ms_per_token: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> BenchRecord {
        BenchRecord {
            bundle: "dense.wbundle".to_owned(),
            variant: BundleVariant::Dense,
            dtype: Dtype::Q8,
            kernel: "avx2".to_owned(),
            threads: 2,
            prompt_tokens: vec![1, 2],
            decode_tokens: 1,
            prefill_s: vec![0.5],
            decode_s: vec![0.25],
            prefill_cpu_s: vec![1.0],
            decode_cpu_s: vec![0.5],
            prefill_tok_s: 4.0,
            decode_tok_s: 4.0,
            generated: vec![7],
            predicted: Some(BenchPrediction {
                board: "host".to_owned(),
                bandwidth_bytes_per_s: 10,
                bytes_read_per_token: 5,
                decode_ms_per_token: 1.5,
                prefill_ms_per_token: 0.5,
            }),
            predicted_error: None,
        }
    }

    /// The record as `whittle-device bench --json` has always printed it.
    const GOLDEN: &str = concat!(
        r#"{"bundle":"dense.wbundle","variant":"dense","dtype":"q8","kernel":"avx2","threads":2,"#,
        r#""prompt_tokens":[1,2],"decode_tokens":1,"prefill_s":[0.5],"decode_s":[0.25],"#,
        r#""prefill_cpu_s":[1.0],"decode_cpu_s":[0.5],"prefill_tok_s":4.0,"decode_tok_s":4.0,"#,
        r#""generated":[7],"predicted":{"board":"host","bandwidth_bytes_per_s":10,"#,
        r#""bytes_read_per_token":5,"decode_ms_per_token":1.5,"prefill_ms_per_token":0.5},"#,
        r#""predicted_error":null}"#
    );

    #[test]
    fn the_json_keeps_its_field_names_and_round_trips() -> serde_json::Result<()> {
        assert_eq!(serde_json::to_string(&record())?, GOLDEN);
        for variant in [BundleVariant::Dense, BundleVariant::Pruned] {
            assert_eq!(
                serde_json::to_string(&variant)?,
                format!("{:?}", variant.name())
            );
        }
        assert_eq!(serde_json::from_str::<BenchRecord>(GOLDEN)?, record());
        Ok(())
    }

    fn check_rejected(json: &str, fragment: &str) {
        match serde_json::from_str::<BenchRecord>(json) {
            Ok(record) => panic!("accepted {record:?}"),
            Err(error) => assert!(error.to_string().contains(fragment), "{error}"),
        }
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it() {
        check_rejected(
            &GOLDEN.replace(r#""decode_cpu_s":[0.5],"#, ""),
            "missing field `decode_cpu_s`",
        );
        check_rejected(
            &GOLDEN.replace(r#","predicted_error":null"#, ""),
            "missing field `predicted_error`",
        );
        check_rejected(
            &GOLDEN.replace(r#""variant":"dense""#, r#""variant":"sparse""#),
            "unknown variant `sparse`",
        );
    }
}
