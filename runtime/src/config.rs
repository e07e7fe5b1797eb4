/// Hyper-parameters of a Llama-family decoder, named as in the Hugging Face config.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when below `n_heads`).
    pub n_kv_heads: usize,
    /// Number of rows of the token embedding (and of the tied output head).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f32,
}

/// Why a [`ModelConfig`] cannot describe a working model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// A size that must be positive is zero.
    ZeroSize,
    /// `hidden_size` is not a multiple of `n_heads`.
    HiddenNotDivisibleByHeads,
    /// `n_heads` is not a multiple of `n_kv_heads`.
    HeadsNotDivisibleByKvHeads,
    /// The head dimension is odd, so rotary embeddings cannot pair its lanes.
    OddHeadDim,
    /// `rope_theta` or `rms_norm_eps` is not a positive finite number.
    BadFloat,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::ZeroSize => "a layer count, width, head count or vocabulary size is zero",
            Self::HiddenNotDivisibleByHeads => "hidden size is not a multiple of the head count",
            Self::HeadsNotDivisibleByKvHeads => {
                "head count is not a multiple of the key/value head count"
            }
            Self::OddHeadDim => "head dimension is odd, rotary embeddings need it even",
            Self::BadFloat => "rope base or RMSNorm epsilon is not a positive finite number",
        })
    }
}

impl core::error::Error for ConfigError {}

/// The seven prunable weight matrices of a Llama block, in data-flow order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum MatrixKind {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl MatrixKind {
    /// Every kind, in data-flow order.
    pub const ALL: [MatrixKind; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// Short lowercase name (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::O => "o",
            Self::Gate => "gate",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// Position in [`MatrixKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses a name written by [`MatrixKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// Index of a prunable matrix in rank plans, genomes, banks and bundles: layer-major, then
/// [`MatrixKind::ALL`] order (`layer_idx · 7 + kind`). The one definition of this order.
pub const fn matrix_index(layer_idx: usize, kind: MatrixKind) -> usize {
    layer_idx * MatrixKind::ALL.len() + kind.index()
}

/// The matrix at `index` in [`matrix_index`] order: `(layer_idx, kind)`.
pub const fn matrix_at(index: usize) -> (usize, MatrixKind) {
    let kind = match index % MatrixKind::ALL.len() {
        0 => MatrixKind::Q,
        1 => MatrixKind::K,
        2 => MatrixKind::V,
        3 => MatrixKind::O,
        4 => MatrixKind::Gate,
        5 => MatrixKind::Up,
        _ => MatrixKind::Down,
    };
    (index / MatrixKind::ALL.len(), kind)
}

/// What a block keeps of its two sub-blocks: `mlp` of the MLP's `intermediate_size` neurons,
/// `value` of each key/value head's `head_dim` value dimensions and `pairs` of each query/key
/// head's `head_dim / 2` rotary pairs. Zero `mlp` or `value` skips the sub-block (DESIGN
/// section 2, units that cost nothing to store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BlockWidths {
    /// Neurons the MLP keeps (0: the MLP is skipped).
    pub mlp: usize,
    /// Value dimensions per key/value head (0: the attention is skipped).
    pub value: usize,
    /// Rotary pairs per query/key head (`head_dim / 2` unless pruned; 0 with a skipped
    /// attention).
    pub pairs: usize,
}

impl ModelConfig {
    /// The shape of SmolLM2-135M(-Instruct), the default model: the one constant tests,
    /// examples and docs use for it (`whittle_host` reads the real one from the GGUF file).
    pub const SMOLLM2_135M: ModelConfig = ModelConfig {
        n_layers: 30,
        hidden_size: 576,
        intermediate_size: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        vocab_size: 49152,
        max_position_embeddings: 8192,
        rope_theta: 100_000.0,
        rms_norm_eps: 1e-5,
    };

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            self.n_layers,
            self.hidden_size,
            self.intermediate_size,
            self.n_heads,
            self.n_kv_heads,
            self.vocab_size,
            self.max_position_embeddings,
        ];
        if sizes.contains(&0) {
            return Err(ConfigError::ZeroSize);
        }
        if !self.hidden_size.is_multiple_of(self.n_heads) {
            return Err(ConfigError::HiddenNotDivisibleByHeads);
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::HeadsNotDivisibleByKvHeads);
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::OddHeadDim);
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.rope_theta) || !positive(self.rms_norm_eps) {
            return Err(ConfigError::BadFloat);
        }
        Ok(())
    }

    /// Width of one attention head.
    pub const fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads
    }

    /// Width of the key (and value) projection's output.
    pub const fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// `(rows, cols)` = `(d_out, d_in)` of a prunable matrix.
    pub const fn matrix_shape(&self, kind: MatrixKind) -> (usize, usize) {
        match kind {
            MatrixKind::Q | MatrixKind::O => (self.hidden_size, self.hidden_size),
            MatrixKind::K | MatrixKind::V => (self.kv_dim(), self.hidden_size),
            MatrixKind::Gate | MatrixKind::Up => (self.intermediate_size, self.hidden_size),
            MatrixKind::Down => (self.hidden_size, self.intermediate_size),
        }
    }

    /// `(rows, cols)` of a prunable matrix in a block of `widths`: its MLP keeps `widths.mlp`
    /// of its `intermediate_size` neurons (rows of gate and up, columns of down), each
    /// key/value head `widths.value` of its `head_dim` value dimensions (rows of v, columns of
    /// o) and each query/key head `widths.pairs` rotary pairs (two rows of q and k each). A
    /// sub-block of width zero is skipped: its matrices have no rows (q and k with the
    /// attention's values, gate and up with the MLP's neurons) or no columns (o, down).
    pub const fn matrix_shape_in(&self, kind: MatrixKind, widths: BlockWidths) -> (usize, usize) {
        let attention = widths.value > 0;
        match kind {
            MatrixKind::Q | MatrixKind::K if !attention => (0, self.hidden_size),
            MatrixKind::Q => (self.n_heads * 2 * widths.pairs, self.hidden_size),
            MatrixKind::K => (self.n_kv_heads * 2 * widths.pairs, self.hidden_size),
            MatrixKind::V => (self.n_kv_heads * widths.value, self.hidden_size),
            MatrixKind::O => (self.hidden_size, self.n_heads * widths.value),
            MatrixKind::Gate | MatrixKind::Up => (widths.mlp, self.hidden_size),
            MatrixKind::Down => (self.hidden_size, widths.mlp),
        }
    }

    /// The widths of an unpruned block.
    pub const fn full_widths(&self) -> BlockWidths {
        BlockWidths {
            mlp: self.intermediate_size,
            value: self.head_dim(),
            pairs: self.head_dim() / 2,
        }
    }

    /// Number of prunable matrices in the whole model.
    pub const fn n_prunable_matrices(&self) -> usize {
        self.n_layers * MatrixKind::ALL.len()
    }

    /// Parameters of the prunable matrices of one block.
    pub fn block_linear_params(&self) -> usize {
        MatrixKind::ALL
            .into_iter()
            .map(|kind| {
                let (rows, cols) = self.matrix_shape(kind);
                rows * cols
            })
            .sum()
    }

    /// Every parameter of the model with a tied output head: embedding, blocks, norms.
    pub fn total_params(&self) -> usize {
        let embedding = self.vocab_size * self.hidden_size;
        let norms_per_block = 2 * self.hidden_size;
        embedding
            + self.n_layers * (self.block_linear_params() + norms_per_block)
            + self.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> ModelConfig {
        ModelConfig::SMOLLM2_135M
    }

    fn check_invalid(edit: impl FnOnce(&mut ModelConfig), expected: ConfigError) {
        let mut config = smollm2_135m();
        edit(&mut config);
        assert_eq!(config.validate(), Err(expected));
    }

    #[test]
    fn smollm2_has_the_published_parameter_count() {
        let config = smollm2_135m();
        assert_eq!(config.validate(), Ok(()));
        // 134,515,008 is the parameter count Hugging Face reports for SmolLM2-135M.
        assert_eq!(config.total_params(), 134_515_008);
    }

    #[test]
    fn invalid_configs_are_named() {
        check_invalid(|c| c.n_layers = 0, ConfigError::ZeroSize);
        check_invalid(|c| c.n_heads = 7, ConfigError::HiddenNotDivisibleByHeads);
        check_invalid(
            |c| c.n_kv_heads = 2,
            ConfigError::HeadsNotDivisibleByKvHeads,
        );
        check_invalid(
            |c| {
                c.hidden_size = 63;
                c.n_heads = 1;
                c.n_kv_heads = 1
            },
            ConfigError::OddHeadDim,
        );
        check_invalid(|c| c.rope_theta = f32::NAN, ConfigError::BadFloat);
        check_invalid(|c| c.rms_norm_eps = 0.0, ConfigError::BadFloat);
    }

    #[test]
    fn matrix_names_and_indices_round_trip() {
        for (position, kind) in MatrixKind::ALL.into_iter().enumerate() {
            assert_eq!(MatrixKind::from_name(kind.name()), Some(kind));
            assert_eq!(kind.index(), position);
        }
        let config = smollm2_135m();
        for index in 0..config.n_prunable_matrices() {
            let (layer_idx, kind) = matrix_at(index);
            assert_eq!(matrix_index(layer_idx, kind), index);
        }
        assert_eq!(matrix_index(2, MatrixKind::V), 16);
        assert_eq!(MatrixKind::from_name("qkv"), None);
    }
}
