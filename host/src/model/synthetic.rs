//! Tiny Llama models with seeded random weights, for tests that must not download anything.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};
use whittle_runtime::{Architecture, ModelConfig};

use crate::gguf::llama_tensor_shapes;

/// A 2-layer config with grouped-query attention, small enough for unit tests.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Architecture::LLAMA,
        n_layers: 2,
        hidden_size: 32,
        intermediate_size: 48,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 64,
        max_position_embeddings: 128,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    }
}

/// Seeded weights for every tensor of `config`, keyed by GGUF name. Norm weights are near 1,
/// biases within ±0.5, matrices are scaled by `1/sqrt(d_in)` so activations stay of order one.
pub fn tiny_tensors(
    config: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tensors = HashMap::new();
    for (name, shape) in llama_tensor_shapes(config) {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".bias") {
            (0..count).map(|_| 0.5 * next()).collect()
        } else if shape.len() == 1 {
            (0..count).map(|_| 1.0 + 0.1 * next()).collect()
        } else {
            let scale = 1.7 / (shape[1] as f32).sqrt();
            (0..count).map(|_| scale * next()).collect()
        };
        tensors.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(tensors)
}
