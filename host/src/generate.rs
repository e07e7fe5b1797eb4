//! Greedy decoding with a KV cache.

use candle_core::{Result, Tensor};

use crate::model::{KvCache, Llama};

/// Generates up to `max_new_tokens` greedily after `prompt`, stopping before any of
/// `stop_ids`. Returns the new token ids only.
pub fn greedy(
    llama: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        candle_core::bail!("cannot generate from an empty prompt");
    }
    let mut cache = KvCache::default();
    let mut input = Tensor::new(prompt, llama.device())?.unsqueeze(0)?;
    let mut generated = Vec::with_capacity(max_new_tokens);
    let context = llama.config().max_position_embeddings;
    while generated.len() < max_new_tokens && prompt.len() + generated.len() < context {
        let logits = llama.forward_cached(&input, &mut cache)?;
        let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        if stop_ids.contains(&next) {
            break;
        }
        generated.push(next);
        input = Tensor::new(&[next], llama.device())?.unsqueeze(0)?;
    }
    Ok(generated)
}
