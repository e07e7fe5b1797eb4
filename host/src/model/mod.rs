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

/// What a CUDA failure deep in a run means, by the driver's, cuBLAS's or cuRAND's status code
/// in its message: the cause and the fix in one line, or `None` for anything else.
///
/// The codes come from cudarc's `Debug` of the failing call (`DriverError(CUDA_ERROR_…, …)`,
/// `CublasError(CUBLAS_STATUS_…)`), which candle keeps in its error text.
pub fn cuda_cause(message: &str) -> Option<&'static str> {
    const CAUSES: [(&[&str], &str); 3] = [
        (
            &[
                "CUDA_ERROR_OUT_OF_MEMORY",
                "CUBLAS_STATUS_ALLOC_FAILED",
                "CURAND_STATUS_ALLOCATION_FAILED",
            ],
            "the GPU ran out of memory; free it (`nvidia-smi` lists what holds it), use a GPU with more memory, or drop --cuda to run on the CPU",
        ),
        (
            &[
                "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
                "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
                "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
                "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
                "CURAND_STATUS_VERSION_MISMATCH",
            ],
            "a CUDA version mismatch: this build's kernels are CUDA 13.0 and need an NVIDIA driver of R580 or later (`nvidia-smi` shows the driver's CUDA version); update the driver, or rebuild on this machine with `cargo xtask gpu-check`",
        ),
        (
            &[
                "CUDA_ERROR_NO_BINARY_FOR_GPU",
                "CUDA_ERROR_INVALID_PTX",
                "CUDA_ERROR_INVALID_IMAGE",
                "CUBLAS_STATUS_ARCH_MISMATCH",
                "CURAND_STATUS_ARCH_MISMATCH",
            ],
            "this build's kernels were compiled for another GPU generation; rebuild with CUDA_COMPUTE_CAP set to this GPU's compute capability (`nvidia-smi --query-gpu=compute_cap --format=csv`), as `cargo xtask gpu-check` does",
        ),
    ];
    CAUSES
        .iter()
        .find(|(codes, _)| codes.iter().any(|code| message.contains(code)))
        .map(|(_, cause)| *cause)
}
