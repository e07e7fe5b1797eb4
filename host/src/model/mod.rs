//! The host's Llama-family model: one block definition, a [`Linear`] that holds dense and
//! low-rank forms, an [`Observer`] hook on every linear input, and a KV cache for decoding.

mod linear;
mod llama;
mod observe;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use candle_core::Device;

pub use linear::Linear;
pub use llama::{Batch, KvCache, Llama, log_softmax};
pub use observe::{InputSite, Observer};

use crate::gguf::{GgufFile, ModelError, read_llama_tensors};
use crate::tokenizer::TextTokenizer;

/// A model and its tokenizer, loaded from one GGUF file. Cloning shares every weight.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// The decoder with f32 weights.
    pub llama: Llama,
    /// The tokenizer and chat template from the file's metadata.
    pub tokenizer: TextTokenizer,
}

impl LoadedModel {
    /// The same tokenizer with another decoder (e.g. a pruned variant of this one).
    pub fn with_llama(&self, llama: Llama) -> Self {
        Self {
            llama,
            tokenizer: self.tokenizer.clone(),
        }
    }
}

/// The base model a pruning run starts from: the loaded model, its file, and the file's
/// sha256, which keys every derived cache and is recorded in bundles.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// The model and tokenizer.
    pub model: LoadedModel,
    /// The GGUF file it was loaded from.
    pub path: PathBuf,
    /// Lowercase hex sha256 of that file.
    pub digest: String,
}

impl BaseModel {
    /// Loads `path` onto `device` and hashes it.
    pub fn open(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let model = load(path, device)?;
        let digest = match path.is_dir() {
            true => crate::hf::digest(path)?,
            false => crate::fetch::sha256_file(path)?,
        };
        Ok(Self {
            model,
            path: path.to_owned(),
            digest,
        })
    }

    /// The default model (fetched into the default model folder on first use) on the CPU.
    pub fn open_default() -> anyhow::Result<Self> {
        let path = crate::fetch::ensure_default_model(&crate::fetch::default_model_dir())?;
        Self::open(&path, &device(false)?)
    }
}

/// Loads a Llama-family GGUF file (validated, every weight dequantized to f32, the tokenizer
/// from its metadata) or, for a folder, a Hugging Face checkpoint ([`crate::hf`]).
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel, ModelError> {
    if path.is_dir() {
        return crate::hf::load(path, device);
    }
    let mut gguf = GgufFile::open(path)?;
    let config = gguf.config()?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let tensors = read_llama_tensors(&mut gguf, &config, device)?;
    let llama =
        Llama::from_tensors(config, &tensors, device).map_err(|source| ModelError::Tensor {
            path: path.to_owned(),
            source,
        })?;
    Ok(LoadedModel { llama, tokenizer })
}

/// The compute device: CPU, or CUDA device 0 in builds with the `cuda` feature.
pub fn device(cuda: bool) -> anyhow::Result<Device> {
    if !cuda {
        return Ok(Device::Cpu);
    }
    if !cfg!(feature = "cuda") {
        anyhow::bail!(
            "this build of whittle lacks CUDA; rebuild with `--features cuda` (needs the CUDA toolkit) or drop --cuda"
        );
    }
    Device::new_cuda(0).map_err(|error| {
        anyhow::anyhow!(
            "--cuda: no usable CUDA device 0 ({error}); check that an NVIDIA GPU and its driver (R580 or later, for CUDA 13) are present (`nvidia-smi`), or drop --cuda to run on the CPU"
        )
    })
}
