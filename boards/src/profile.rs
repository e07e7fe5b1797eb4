use serde::Deserialize;

/// What the cost model knows about one board, as read from a profile file.
///
/// Vendor figures are cited in [`BoardProfile::sources`]. `model_memory_share` and
/// `latency_budget_ms_per_token` are whittle's defaults for the board, not vendor figures.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Canonical name, lowercase words joined by `-` (`jetson-orin-nano-8gb`).
    pub name: String,
    /// Other names that select this board (`jetson-orin`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// One sentence: which product, which configuration.
    pub description: String,
    /// The application processor.
    pub cpu: CpuProfile,
    /// Main memory (shared by CPU and GPU where the board has one), in bytes.
    pub memory_bytes: u64,
    /// Fraction of `memory_bytes` the model (weights, KV cache, arena) may use, in (0, 1].
    pub model_memory_share: f64,
    /// Peak main-memory bandwidth, in bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// GPU single-precision throughput in FLOP/s, absent where no GPU is usable.
    #[serde(default)]
    pub gpu_fp32_flops: Option<f64>,
    /// Built-in non-volatile storage (eMMC, flash) in bytes, absent where it is external.
    #[serde(default)]
    pub storage_bytes: Option<u64>,
    /// Default decode latency budget per token, absent until one is chosen for the board.
    #[serde(default)]
    pub latency_budget_ms_per_token: Option<f64>,
    /// Rust target triple of the code that runs on the board.
    pub target_triple: String,
    /// Where the figures come from.
    pub sources: Vec<Source>,
}

/// The application processor of a board.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    /// Number of cores the runtime may use.
    pub cores: u32,
    /// Core microarchitecture, lowercase (`cortex-a78ae`).
    pub core: String,
    /// Highest sustained core clock, in GHz.
    pub clock_ghz: f64,
    /// ISA extensions, named as Rust's `target_feature` names them (`neon`, `dotprod`).
    pub isa_features: Vec<String>,
}

/// One cited document.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Which figures the document gives, or how a figure was computed from it.
    pub what: String,
    /// Where the document is.
    pub url: String,
    /// `false` when the figure is derived or the document could not be checked (for example
    /// behind a login); such figures are the first to confirm.
    #[serde(default = "verified_by_default")]
    pub verified: bool,
}

fn verified_by_default() -> bool {
    true
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
}

impl BoardProfile {
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
        if !is_positive(self.cpu.clock_ghz) {
            return Err(invalid("cpu.clock_ghz", "must be a positive number"));
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
        if self.target_triple.split('-').count() < 3 {
            return Err(invalid("target_triple", "is not a target triple"));
        }
        if self.sources.is_empty() {
            return Err(invalid("sources", "is empty, every figure needs a source"));
        }
        if self
            .sources
            .iter()
            .any(|source| source.what.trim().is_empty() || !source.url.starts_with("https://"))
        {
            return Err(invalid(
                "sources",
                "need a non-empty `what` and an https:// `url`",
            ));
        }
        Ok(())
    }

    /// Whether `name` is this board's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|alias| alias == name)
    }

    /// Bytes the model may occupy: `memory_bytes × model_memory_share`, rounded down.
    pub fn model_memory_bytes(&self) -> u64 {
        // f64 holds every memory size below 2^53 bytes exactly, far above any board.
        (self.memory_bytes as f64 * self.model_memory_share) as u64
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
