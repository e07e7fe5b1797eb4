/// Hyper-parameters of a Llama-family decoder, named as in the Hugging Face config.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Where the block departs from Llama's (Gemma 3: GELU, sandwich and query/key norms,
    /// local attention); [`Architecture::LLAMA`] for the Llama family itself.
    pub arch: Architecture,
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
    /// Width of one query, key or value head (`hidden_size / n_heads` in Llama; Gemma 3
    /// 270M: 4 heads of 256 on a 640-wide stream).
    pub head_dim: usize,
    /// Number of rows of the token embedding (and of the tied output head).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// RoPE base frequency (of the global layers when some attend locally).
    pub rope_theta: f32,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f32,
}

/// How a block computes where model families differ; data read by the one forward pass of
/// the host and of the runtime. Rotary embeddings always rotate interleaved pairs `(2i, 2i+1)`:
/// a model trained with half-split ("NEOX") pairs `(i, i + head_dim/2)` is loaded with its query
/// and key rows (and their norms' weights) permuted into that order, which leaves every score
/// unchanged (llama.cpp's converter permutes Llama's rows the other way).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Architecture {
    /// The MLP's gate activation: `act(gate · x) ⊙ (up · x)`.
    pub activation: Activation,
    /// RMSNorm of each sub-block's output before it joins the residual stream (Gemma 3's
    /// `post_attention_norm` and `post_feedforward_norm`).
    pub post_norms: bool,
    /// RMSNorm over each query and key head (weights of `head_dim`) before the rotation.
    pub qk_norm: bool,
    /// Biases added to q's, k's and v's outputs (Qwen2).
    pub qkv_bias: bool,
    /// Token embeddings multiplied by `√hidden_size` on input (not in the tied head).
    pub scale_embeddings: bool,
    /// Positions a local layer's query sees, its own included (0: every layer is global).
    pub sliding_window: usize,
    /// With a window, layer `l` is global when `(l + 1) % global_every == 0` (Gemma 3: 6).
    pub global_every: usize,
    /// RoPE base of the local layers.
    pub rope_theta_local: f32,
}

/// The activation of the MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// `x · σ(x)` (SwiGLU: Llama, Qwen2).
    Silu,
    /// GELU in its tanh approximation (GeGLU: Gemma).
    GeluTanh,
}

impl Architecture {
    /// A Llama block: SiLU, pre-norms only, no query/key norm, every layer global.
    pub const LLAMA: Architecture = Architecture {
        activation: Activation::Silu,
        post_norms: false,
        qk_norm: false,
        qkv_bias: false,
        scale_embeddings: false,
        sliding_window: 0,
        global_every: 0,
        rope_theta_local: 0.0,
    };

    /// A Qwen2 block: Llama's with biases on q, k and v (its half-split rotary pairs are
    /// permuted to interleaved ones on load).
    pub const QWEN2: Architecture = Architecture {
        qkv_bias: true,
        ..Architecture::LLAMA
    };

    /// Gemma 3's block with its `sliding_window` (local layers' RoPE base 10,000, every sixth
    /// layer global).
    pub const fn gemma3(sliding_window: usize) -> Architecture {
        Architecture {
            activation: Activation::GeluTanh,
            post_norms: true,
            qk_norm: true,
            qkv_bias: false,
            scale_embeddings: true,
            sliding_window,
            global_every: 6,
            rope_theta_local: 10_000.0,
        }
    }

    /// Whether layer `layer_idx` attends only to its last `sliding_window` positions.
    pub const fn is_local(&self, layer_idx: usize) -> bool {
        self.sliding_window > 0
            && (self.global_every == 0 || !(layer_idx + 1).is_multiple_of(self.global_every))
    }
}

/// Why a [`ModelConfig`] cannot describe a working model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// A size that must be positive is zero.
    ZeroSize,
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
            Self::HeadsNotDivisibleByKvHeads => {
                "head count is not a multiple of the key/value head count"
            }
            Self::OddHeadDim => "head dimension is odd, rotary embeddings need it even",
            Self::BadFloat => "a rope base or the RMSNorm epsilon is not a positive finite number",
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
        arch: Architecture::LLAMA,
        n_layers: 30,
        hidden_size: 576,
        intermediate_size: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
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
            self.head_dim,
            self.vocab_size,
            self.max_position_embeddings,
        ];
        if sizes.contains(&0) {
            return Err(ConfigError::ZeroSize);
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::HeadsNotDivisibleByKvHeads);
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::OddHeadDim);
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        let local_theta = self.arch.sliding_window == 0 || positive(self.arch.rope_theta_local);
        if !positive(self.rope_theta) || !positive(self.rms_norm_eps) || !local_theta {
            return Err(ConfigError::BadFloat);
        }
        Ok(())
    }

    /// Width of one attention head.
    pub const fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Width of the query projection's output (and of the attention output's input).
    pub const fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// RoPE base of layer `layer_idx`.
    pub const fn rope_theta_of(&self, layer_idx: usize) -> f32 {
        match self.arch.is_local(layer_idx) {
            true => self.arch.rope_theta_local,
            false => self.rope_theta,
        }
    }

    /// Width of the key (and value) projection's output.
    pub const fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// `(rows, cols)` = `(d_out, d_in)` of a prunable matrix.
    pub const fn matrix_shape(&self, kind: MatrixKind) -> (usize, usize) {
        match kind {
            MatrixKind::Q => (self.q_dim(), self.hidden_size),
            MatrixKind::O => (self.hidden_size, self.q_dim()),
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

    /// Parameters of one block's norms: the two pre-norms, with the architecture's post-norms
    /// and query/key norms.
    pub const fn block_norm_params(&self) -> usize {
        let post = if self.arch.post_norms {
            2 * self.hidden_size
        } else {
            0
        };
        let qk = if self.arch.qk_norm {
            2 * self.head_dim
        } else {
            0
        };
        2 * self.hidden_size + post + qk
    }

    /// Every parameter of the model with a tied output head: embedding, blocks, norms.
    pub fn total_params(&self) -> usize {
        let embedding = self.vocab_size * self.hidden_size;
        let norms_per_block = self.block_norm_params();
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
    fn gemma3_270m_has_the_published_parameter_count() {
        let config = ModelConfig {
            arch: Architecture::gemma3(512),
            n_layers: 18,
            hidden_size: 640,
            intermediate_size: 2048,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
            vocab_size: 262_144,
            max_position_embeddings: 32_768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
        };
        assert_eq!(config.validate(), Ok(()));
        // 268,098,176 is the parameter count Hugging Face reports for gemma-3-270m.
        assert_eq!(config.total_params(), 268_098_176);
        let local: Vec<bool> = (0..18).map(|l| config.arch.is_local(l)).collect();
        assert_eq!(local.iter().filter(|&&l| !l).count(), 3);
        assert!(!local[5] && !local[11] && !local[17] && local[0] && local[6]);
        assert_eq!(config.rope_theta_of(5), 1_000_000.0);
        assert_eq!(config.rope_theta_of(4), 10_000.0);
        assert_eq!(config.matrix_shape(MatrixKind::Q), (1024, 640));
        assert_eq!(config.matrix_shape(MatrixKind::O), (640, 1024));
    }

    #[test]
    fn invalid_configs_are_named() {
        check_invalid(|c| c.n_layers = 0, ConfigError::ZeroSize);
        check_invalid(|c| c.head_dim = 0, ConfigError::ZeroSize);
        check_invalid(
            |c| c.n_kv_heads = 2,
            ConfigError::HeadsNotDivisibleByKvHeads,
        );
        check_invalid(|c| c.head_dim = 63, ConfigError::OddHeadDim);
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
