use serde::{Deserialize, Serialize};

/// What the cost model knows about one board, as read from a profile file.
///
/// Vendor figures are cited in [`BoardProfile::sources`]. `model_memory_share`,
/// `latency_budget_ms_per_token`, `objective_weight`, `context_length` and the two layer
/// overheads are whittle's defaults for the board, not vendor figures. The `host` profile is
/// measured on the machine by `whittle-device profile`, never written by hand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Canonical name, lowercase words joined by `-` (`jetson-orin-nano-8gb`).
    pub name: String,
    /// Other names that select this board (`jetson-orin`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// One sentence: which product, which configuration.
    pub description: String,
    /// Main memory (shared by CPU and GPU where the board has one), in bytes.
    pub memory_bytes: u64,
    /// Fraction of `memory_bytes` the model (weights, KV cache, arena) may use, in (0, 1].
    pub model_memory_share: f64,
    /// Main-memory read bandwidth, in bytes per second: the vendor's peak for a datasheet
    /// board, the sustained all-core figure for a measured one.
    pub bandwidth_bytes_per_s: u64,
    /// CPU single-precision matrix-multiply throughput of all cores together, in FLOP/s: the
    /// computed peak (cores × clock × FLOP per cycle) for a datasheet board, the sustained
    /// sgemm figure for a measured one.
    pub cpu_f32_flops: f64,
    /// GPU single-precision throughput in FLOP/s, absent where no GPU is usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_fp32_flops: Option<f64>,
    /// Built-in non-volatile storage (eMMC, flash) in bytes, absent where it is external.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    /// Default decode latency budget per token, absent until one is chosen for the board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms_per_token: Option<f64>,
    /// Weight `w` of bytes against latency in the search's objective
    /// `w·bytes/bytes_dense + (1 − w)·latency/latency_dense`, in [0, 1];
    /// default [`BoardProfile::DEFAULT_OBJECTIVE_WEIGHT`].
    #[serde(default = "default_objective_weight")]
    pub objective_weight: f64,
    /// Tokens of context the KV cache and the attention are sized for (prompt and generated
    /// tokens together; capped at the model's own limit); default
    /// [`BoardProfile::DEFAULT_CONTEXT_LENGTH`].
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// Fixed CPU time per transformer block per decoded token, in microseconds: thread
    /// hand-offs, norms, rotary embedding, softmax; default
    /// [`BoardProfile::DEFAULT_LAYER_OVERHEAD_US`].
    #[serde(default = "default_layer_overhead_us")]
    pub layer_overhead_us: f64,
    /// The same on the GPU (kernel launches); default
    /// [`BoardProfile::DEFAULT_GPU_LAYER_OVERHEAD_US`]. Unused without `gpu_fp32_flops`.
    #[serde(default = "default_gpu_layer_overhead_us")]
    pub gpu_layer_overhead_us: f64,
    /// Fixed CPU time of one matrix product of a decoded token, in microseconds: the thread
    /// hand-off and the wait for the slowest thread. The layer overhead already holds the
    /// seven products of a dense block; a low-rank pair is two products where the dense
    /// matrix was one, so each adds this once. Default
    /// [`BoardProfile::DEFAULT_PRODUCT_OVERHEAD_US`].
    #[serde(default = "default_product_overhead_us")]
    pub product_overhead_us: f64,
    /// The same on the GPU (one kernel launch); default
    /// [`BoardProfile::DEFAULT_GPU_PRODUCT_OVERHEAD_US`]. Unused without `gpu_fp32_flops`.
    #[serde(default = "default_gpu_product_overhead_us")]
    pub gpu_product_overhead_us: f64,
    /// Rust target triple of the code that runs on the board.
    pub target_triple: String,
    /// Rates of whittle's own kernels, measured on the board by `whittle-device profile`
    /// (absent for a datasheet board). Where present, the cost model uses them instead of the
    /// memory bandwidth and the sgemm throughput for the weight matrices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelRates>,
    /// The application processor.
    pub cpu: CpuProfile,
    /// Where the figures come from.
    pub sources: Vec<Source>,
}

/// Measured speed of the runtime's matrix products (the fastest kernel on a persistent pool,
/// the better of one thread and all threads), per weight dtype.
///
/// Decoding converts int8 weights (or, with int8 dot products, the activations) before
/// multiplying; on a core that cannot convert as fast as memory delivers, the weight stream
/// runs below the memory bandwidth, and prefill's packing adds to the multiply itself. These
/// figures include both effects, for the kernels of one [`KernelRates::revision`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRates {
    /// Weight bytes per second of one-token products over q8 matrices larger, in total, than
    /// the last-level cache.
    pub q8_decode_bytes_per_s: f64,
    /// The same for f32 matrices.
    pub f32_decode_bytes_per_s: f64,
    /// FLOP/s of prefill-chunk products (64 tokens) over q8 matrices, packing included.
    pub q8_prefill_flops: f64,
    /// The same for f32 matrices.
    pub f32_prefill_flops: f64,
    /// As `q8_decode_bytes_per_s`, q4 matrices. Absent (a profile measured before q4): q8's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q4_decode_bytes_per_s: Option<f64>,
    /// As `q8_prefill_flops`, q4 matrices. Absent: q8's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q4_prefill_flops: Option<f64>,
    /// FLOP/s of the runtime's attention (scores and the weighted sum of values, `4·hidden`
    /// FLOPs per attended position), key/value reads included; fitted from decode steps of a
    /// synthetic model at two context lengths. Absent: the roofline of the bandwidth and the
    /// sgemm throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_flops: Option<f64>,
    /// Fixed time per transformer block per prefilled token, in microseconds (norms, rotary
    /// embedding, SiLU, residuals, thread hand-offs); fitted from a synthetic model's prefill.
    /// Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_layer_overhead_us: Option<f64>,
    /// The runtime's `kernels::REVISION` these rates were measured with. Absent: measured
    /// before revisions were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Decode rates by working set, ascending by bytes, the last the sweep of the decode
    /// fields above: one-token products swept again and again over `bytes` of weights. Where
    /// the last-level cache is large (a server's hundreds of MiB), a small model's weights stay
    /// in it between tokens and stream faster than from memory; the cost model reads a decode
    /// step's rate off this curve at the step's working set (weights and cached keys and
    /// values). Empty (a profile measured before it, or a board's): the fields above for every
    /// working set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_by_working_set: Vec<WorkingSetRates>,
    /// The runtime's step times on the synthetic model the fixed costs above are fitted from.
    /// Absent: a board's profile, or one measured before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ModelProbe>,
    /// How many measurements of the machine each rate and time here is the best of
    /// (`whittle-device profile --merge` adds one). Absent: one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<u32>,
}

/// The runtime on the synthetic model `whittle-device profile` times (a dense q8 model of the
/// block shapes of SmolLM2-135M and a small vocabulary), each figure its fastest run: what
/// [`crate::fit_overheads`] and the low-rank pair overhead are fitted from, kept so that a
/// profile measured again can be combined with this one figure by figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProbe {
    /// Positions in the cache of the short decode steps, on average.
    pub short_context: usize,
    /// Seconds per token decoded at `short_context`.
    pub short_decode_s: f64,
    /// Positions in the cache of the long decode steps, on average.
    pub long_context: usize,
    /// Seconds per token decoded at `long_context`.
    pub long_decode_s: f64,
    /// Tokens of the prefilled prompt.
    pub prefill_tokens: usize,
    /// Seconds per token of prefilling it.
    pub prefill_s_per_token: f64,
    /// One-token low-rank pairs per timed pass.
    pub pairs: usize,
    /// Their q8 bytes.
    pub pair_bytes: u64,
    /// Seconds per pass.
    pub pairs_s: f64,
}

impl ModelProbe {
    /// The step times as [`crate::fit_overheads`] takes them.
    pub fn steps(&self) -> crate::StepTimes {
        crate::StepTimes {
            decode: [
                (self.short_context, self.short_decode_s),
                (self.long_context, self.long_decode_s),
            ],
            prefill: (self.prefill_tokens, self.prefill_s_per_token),
        }
    }
}

/// One point of [`KernelRates::decode_by_working_set`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingSetRates {
    /// Weight bytes swept.
    pub bytes: u64,
    /// Weight bytes per second of one-token products over q8 matrices.
    pub q8_decode_bytes_per_s: f64,
    /// The same for f32 matrices.
    pub f32_decode_bytes_per_s: f64,
    /// The same for q4 matrices.
    pub q4_decode_bytes_per_s: f64,
}

/// The application processor of a board.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    /// Number of cores the runtime may use.
    pub cores: u32,
    /// Core microarchitecture, lowercase (`cortex-a78ae`).
    pub core: String,
    /// Highest sustained core clock, in GHz; absent where the machine does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_ghz: Option<f64>,
    /// ISA extensions, named as Rust's `target_feature` names them (`neon`, `dotprod`).
    pub isa_features: Vec<String>,
}

/// One cited document, or one measurement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Which figures the document gives, or how a figure was computed or measured.
    pub what: String,
    /// Where the document is; required unless `measured` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `false` when the figure is derived or the document could not be checked (for example
    /// behind a login); such figures are the first to confirm.
    #[serde(default = "verified_by_default", skip_serializing_if = "is_true")]
    pub verified: bool,
    /// `true` when `whittle-device profile` measured the figures on the machine itself.
    #[serde(default, skip_serializing_if = "is_false")]
    pub measured: bool,
}

fn verified_by_default() -> bool {
    true
}

fn is_true(flag: &bool) -> bool {
    *flag
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

fn default_objective_weight() -> f64 {
    BoardProfile::DEFAULT_OBJECTIVE_WEIGHT
}

fn default_context_length() -> usize {
    BoardProfile::DEFAULT_CONTEXT_LENGTH
}

fn default_layer_overhead_us() -> f64 {
    BoardProfile::DEFAULT_LAYER_OVERHEAD_US
}

fn default_gpu_layer_overhead_us() -> f64 {
    BoardProfile::DEFAULT_GPU_LAYER_OVERHEAD_US
}

fn default_product_overhead_us() -> f64 {
    BoardProfile::DEFAULT_PRODUCT_OVERHEAD_US
}

fn default_gpu_product_overhead_us() -> f64 {
    BoardProfile::DEFAULT_GPU_PRODUCT_OVERHEAD_US
}

/// Why a board profile cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    /// No built-in profile has this name or alias.
    #[error("unknown board `{name}`; use one of: {known}")]
    UnknownBoard {
        /// The name asked for.
        name: String,
        /// The built-in names, comma-separated.
        known: String,
    },
    /// The text is not TOML of the profile schema.
    #[error(
        "board profile `{origin}` does not parse: {message}; fix it against the fields of BoardProfile"
    )]
    Parse {
        /// The profile's name or file.
        origin: String,
        /// The parser's message, on one line.
        message: String,
    },
    /// A figure is out of range.
    #[error("board profile `{name}`: {field} {problem}; correct the figure in the profile")]
    Invalid {
        /// The profile's name.
        name: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A profile file given by path cannot be read.
    #[error(
        "cannot read board profile {path}: {message}; check the path (or give a built-in board name)"
    )]
    FileUnreadable {
        /// The file asked for.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// `host` was asked for but has not been measured on this machine.
    #[error(
        "board `host` has not been measured on this machine (no {path}); run `cargo xtask boards --measure-host` (or `whittle-device profile --out {path}`)"
    )]
    HostNotMeasured {
        /// Where the measured profile is looked for.
        path: String,
    },
    /// The measured `host` profile exists but cannot be read.
    #[error(
        "cannot read the measured host profile {path}: {message}; measure it again with `cargo xtask boards --measure-host`"
    )]
    HostUnreadable {
        /// The profile's path.
        path: String,
        /// The operating system's message.
        message: String,
    },
}

impl BoardProfile {
    /// `objective_weight` when a profile does not set it: bytes and latency count alike.
    pub const DEFAULT_OBJECTIVE_WEIGHT: f64 = 0.5;
    /// `context_length` when a profile does not set it: a prompt with a passage and a short
    /// answer (the tasks of DESIGN section 4) fits.
    pub const DEFAULT_CONTEXT_LENGTH: usize = 2048;
    /// `layer_overhead_us` when a profile does not set it: a few thread hand-offs of a
    /// microsecond or two each, plus the norms, rotary embedding and softmax of one block.
    pub const DEFAULT_LAYER_OVERHEAD_US: f64 = 10.0;
    /// `gpu_layer_overhead_us` when a profile does not set it: about ten kernel launches of
    /// about 5 µs each per block.
    pub const DEFAULT_GPU_LAYER_OVERHEAD_US: f64 = 50.0;
    /// `product_overhead_us` when a profile does not set it: one thread hand-off and barrier
    /// of a persistent pool, a microsecond or two on a multi-core application processor.
    pub const DEFAULT_PRODUCT_OVERHEAD_US: f64 = 2.0;
    /// `gpu_product_overhead_us` when a profile does not set it: one kernel launch.
    pub const DEFAULT_GPU_PRODUCT_OVERHEAD_US: f64 = 5.0;

    /// Parses and validates a profile; `origin` names it in errors (a file name, say).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, BoardError> {
        let profile: Self = toml::from_str(text).map_err(|error| BoardError::Parse {
            origin: origin.to_owned(),
            message: one_line(error.message()),
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// Checks every figure is in range and every profile cites a source.
    pub fn validate(&self) -> Result<(), BoardError> {
        let invalid = |field, problem| BoardError::Invalid {
            name: self.name.clone(),
            field,
            problem,
        };
        if !is_kebab_name(&self.name) {
            return Err(invalid("name", "must be lowercase letters, digits and `-`"));
        }
        if !self.aliases.iter().all(|alias| is_kebab_name(alias)) {
            return Err(invalid(
                "aliases",
                "must be lowercase letters, digits and `-`",
            ));
        }
        if self.description.trim().is_empty() {
            return Err(invalid("description", "is empty"));
        }
        if self.cpu.cores == 0 {
            return Err(invalid("cpu.cores", "must be positive"));
        }
        if !is_kebab_name(&self.cpu.core) {
            return Err(invalid(
                "cpu.core",
                "must be lowercase letters, digits and `-`",
            ));
        }
        if self.cpu.clock_ghz.is_some_and(|ghz| !is_positive(ghz)) {
            return Err(invalid(
                "cpu.clock_ghz",
                "must be a positive number when present",
            ));
        }
        if self.memory_bytes == 0 {
            return Err(invalid("memory_bytes", "must be positive"));
        }
        if !(is_positive(self.model_memory_share) && self.model_memory_share <= 1.0) {
            return Err(invalid("model_memory_share", "must be in (0, 1]"));
        }
        if self.bandwidth_bytes_per_s == 0 {
            return Err(invalid("bandwidth_bytes_per_s", "must be positive"));
        }
        if !is_positive(self.cpu_f32_flops) {
            return Err(invalid("cpu_f32_flops", "must be a positive number"));
        }
        if self.gpu_fp32_flops.is_some_and(|flops| !is_positive(flops)) {
            return Err(invalid("gpu_fp32_flops", "must be positive when present"));
        }
        if self.storage_bytes == Some(0) {
            return Err(invalid("storage_bytes", "must be positive when present"));
        }
        if self
            .latency_budget_ms_per_token
            .is_some_and(|ms| !is_positive(ms))
        {
            return Err(invalid(
                "latency_budget_ms_per_token",
                "must be positive when present",
            ));
        }
        if !(0.0..=1.0).contains(&self.objective_weight) {
            return Err(invalid("objective_weight", "must be in [0, 1]"));
        }
        if self.context_length == 0 {
            return Err(invalid("context_length", "must be positive"));
        }
        if !(self.layer_overhead_us.is_finite() && self.layer_overhead_us >= 0.0) {
            return Err(invalid(
                "layer_overhead_us",
                "must be a number of at least 0",
            ));
        }
        for (field, value) in [
            ("gpu_layer_overhead_us", self.gpu_layer_overhead_us),
            ("product_overhead_us", self.product_overhead_us),
            ("gpu_product_overhead_us", self.gpu_product_overhead_us),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(field, "must be a number of at least 0"));
            }
        }
        if let Some(k) = &self.kernels
            && ![
                k.q8_decode_bytes_per_s,
                k.f32_decode_bytes_per_s,
                k.q8_prefill_flops,
                k.f32_prefill_flops,
            ]
            .into_iter()
            .chain(k.attention_flops)
            .chain(k.q4_decode_bytes_per_s)
            .chain(k.q4_prefill_flops)
            .all(is_positive)
        {
            return Err(invalid("kernels", "every rate must be a positive number"));
        }
        if let Some(k) = &self.kernels {
            let rates_positive = k.decode_by_working_set.iter().all(|point| {
                point.bytes > 0
                    && [
                        point.q8_decode_bytes_per_s,
                        point.f32_decode_bytes_per_s,
                        point.q4_decode_bytes_per_s,
                    ]
                    .into_iter()
                    .all(is_positive)
            });
            let ascending = k
                .decode_by_working_set
                .windows(2)
                .all(|pair| matches!(pair, [a, b] if a.bytes < b.bytes));
            if !(rates_positive && ascending) {
                return Err(invalid(
                    "kernels.decode_by_working_set",
                    "every point needs bytes above 0 and positive rates, in ascending order of bytes",
                ));
            }
        }
        if let Some(k) = &self.kernels
            && k.prefill_layer_overhead_us
                .is_some_and(|us| !(us.is_finite() && us >= 0.0))
        {
            return Err(invalid(
                "kernels.prefill_layer_overhead_us",
                "must be a number of at least 0",
            ));
        }
        if let Some(p) = self.kernels.as_ref().and_then(|k| k.probe.as_ref())
            && !([
                p.short_decode_s,
                p.long_decode_s,
                p.prefill_s_per_token,
                p.pairs_s,
            ]
            .into_iter()
            .all(is_positive)
                && p.short_context < p.long_context
                && p.prefill_tokens > 0
                && p.pairs > 0
                && p.pair_bytes > 0)
        {
            return Err(invalid(
                "kernels.probe",
                "needs positive times, a short context below the long one, and at least one prefilled token and one pair",
            ));
        }
        if self.kernels.as_ref().and_then(|k| k.measurements) == Some(0) {
            return Err(invalid("kernels.measurements", "must be at least 1"));
        }
        if self.target_triple.split('-').count() < 3 {
            return Err(invalid("target_triple", "is not a target triple"));
        }
        if self.sources.is_empty() {
            return Err(invalid("sources", "is empty, every figure needs a source"));
        }
        if !self.sources.iter().all(Source::is_well_formed) {
            return Err(invalid(
                "sources",
                "need a non-empty `what` and an https:// `url` (or `measured = true`)",
            ));
        }
        Ok(())
    }

    /// Whether `name` is this board's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|alias| alias == name)
    }

    /// Bytes the model (weights, KV cache, arena) may occupy:
    /// `memory_bytes × model_memory_share`, rounded down.
    pub fn memory_budget_bytes(&self) -> u64 {
        // f64 holds every memory size below 2^53 bytes exactly, far above any board.
        (self.memory_bytes as f64 * self.model_memory_share) as u64
    }
}

impl Source {
    fn is_well_formed(&self) -> bool {
        let url_ok = match &self.url {
            Some(url) => url.starts_with("https://"),
            None => self.measured,
        };
        !self.what.trim().is_empty() && url_ok
    }
}

fn is_positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn is_kebab_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
