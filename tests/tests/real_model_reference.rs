//! Real model (downloads SmolLM2-135M-Instruct, 98 MB, once): the host's forward pass against
//! candle-transformers' `quantized_llama` run with every weight dequantized to f32.

use candle_core::{Device, Tensor};
use whittle_host::model::Batch;
use whittle_tests::real_model_and_reference;

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "<|im_start|>user\nIs this review positive or negative? A gripping, moving film.<|im_end|>\n<|im_start|>assistant\nThe sentiment of this review is",
    "In 1905, Albert Einstein published four papers that changed physics: the photoelectric effect, Brownian motion, special relativity and",
];

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(5);
    order
}

#[test]
fn real_model_logits_match_dequantized_quantized_llama() -> anyhow::Result<()> {
    let (ours, mut reference) = real_model_and_reference()?;
    let device = Device::Cpu;

    for prompt in PROMPTS {
        let ids = ours.tokenizer.encode(prompt)?;
        let hidden =
            ours.llama
                .last_hidden(&Batch::new(std::slice::from_ref(&ids), 0, &device)?)?;
        let our_logits: Vec<f32> = ours.llama.logits(&hidden)?.squeeze(0)?.to_vec1()?;
        let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
        let their_logits: Vec<f32> = reference.forward(&input, 0)?.squeeze(0)?.to_vec1()?;
        let max_diff = our_logits
            .iter()
            .zip(&their_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{prompt:?}: {} tokens, max |Δlogit| = {max_diff:.2e}",
            ids.len()
        );
        assert!(
            max_diff <= 1e-3,
            "{prompt:?}: max abs difference {max_diff}"
        );
        assert_eq!(top5(&our_logits), top5(&their_logits), "{prompt:?}");
    }
    Ok(())
}
