//! Reading a Llama-family GGUF file: validated header, model config, and f32 tensors
//! dequantized on load (candle's quantized matmuls are scalar for Q4_1 and far too slow).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use whittle_runtime::{Architecture, ConfigError, MatrixKind, ModelConfig};

/// The values of `general.architecture` whittle reads.
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["llama", "gemma3"];

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file cannot be opened.
    #[error(
        "cannot open model file {path}: {source}; pass --model PATH to an existing GGUF file, or drop --model to use the default model"
    )]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The header is not valid GGUF.
    #[error(
        "{path} is not a readable GGUF file ({reason}); pass a GGUF model file (llama.cpp format), or run `cargo xtask fetch-model` to restore the default one"
    )]
    NotGguf { path: PathBuf, reason: String },
    /// The tensor data ends before the header says it should.
    #[error(
        "{path} is truncated: its tensors need {needed} bytes but the file has {actual}; download the model again (`cargo xtask fetch-model` for the default one)"
    )]
    Truncated {
        path: PathBuf,
        needed: u64,
        actual: u64,
    },
    /// The file holds a model whose architecture the forward pass does not implement.
    #[error(
        "{path} holds a `{architecture}` model; whittle supports GGUF architectures llama and gemma3: convert or choose such a model"
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    /// The model is Llama-shaped but uses a variant the forward pass does not implement.
    #[error("{path}: {what} is not supported; choose a standard Llama-family model")]
    UnsupportedVariant { path: PathBuf, what: String },
    /// A metadata key the loader needs is absent or of the wrong type.
    #[error(
        "{path} lacks usable metadata `{key}`; the file is incomplete or not a Llama GGUF: re-export it with llama.cpp's convert script"
    )]
    Metadata { path: PathBuf, key: String },
    /// A weight tensor is absent.
    #[error(
        "{path} has no tensor `{name}`; the file is incomplete or not a Llama GGUF: re-export it with llama.cpp's convert script"
    )]
    MissingTensor { path: PathBuf, name: String },
    /// A weight tensor has a shape that does not match the config.
    #[error(
        "{path}: tensor `{name}` has shape {actual:?}, the config implies {expected:?}; the file is inconsistent: re-export it"
    )]
    BadShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// The hyper-parameters in the header contradict each other.
    #[error("{path}: invalid model config: {source}; the file's metadata is inconsistent")]
    Config { path: PathBuf, source: ConfigError },
    /// The tokenizer in the metadata cannot be built.
    #[error(
        "{path}: cannot build the tokenizer from the GGUF metadata ({reason}); whittle reads byte-level BPE (tokenizer.ggml.model = gpt2) and SentencePiece (llama) tokenizers"
    )]
    Tokenizer { path: PathBuf, reason: String },
    /// A Hugging Face checkpoint folder lacks a file or holds one that cannot be read.
    #[error(
        "{path}: {reason}; pass --model a Hugging Face checkpoint folder (config.json, model.safetensors or its shards, tokenizer.json) or a GGUF file"
    )]
    Checkpoint { path: PathBuf, reason: String },
    /// A shard the checkpoint's index names is not in the folder.
    #[error(
        "{path}: shard {shard} named by model.safetensors.index.json is missing; download the whole checkpoint"
    )]
    MissingShard { path: PathBuf, shard: String },
    /// A checkpoint tensor is stored in a dtype the loader does not read.
    #[error(
        "{path}: tensor `{name}` is {dtype}; whittle reads bf16, f16 and f32 checkpoints: convert it (a quantized checkpoint cannot be read)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A tensor operation failed while loading.
    #[error("{path}: {source}")]
    Tensor {
        path: PathBuf,
        source: candle_core::Error,
    },
}

/// An open GGUF file with its parsed header.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    content: gguf_file::Content,
}

impl GgufFile {
    /// Opens and validates the header and the extent of the tensor data.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let mut file = File::open(path).map_err(|source| ModelError::Open {
            path: path.to_owned(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::NotGguf {
            path: path.to_owned(),
            reason: first_line(&e.to_string()),
        })?;
        let actual = file
            .seek(SeekFrom::End(0))
            .map_err(|source| ModelError::Open {
                path: path.to_owned(),
                source,
            })?;
        let needed = content
            .tensor_infos
            .values()
            .map(|info| {
                let elements = info.shape.elem_count() as u64;
                let block = info.ggml_dtype.block_size() as u64;
                content.tensor_data_offset
                    + info.offset
                    + elements.div_ceil(block) * info.ggml_dtype.type_size() as u64
            })
            .max()
            .unwrap_or(content.tensor_data_offset);
        if needed > actual {
            return Err(ModelError::Truncated {
                path: path.to_owned(),
                needed,
                actual,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            content,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (metadata and tensor directory).
    pub fn content(&self) -> &gguf_file::Content {
        &self.content
    }

    /// A metadata value, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// Reads the model hyper-parameters of a `llama` or `gemma3` file; refuses other
    /// architectures, naming the supported ones.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let architecture = self.metadata_string("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                architecture,
            });
        }
        let key = |name: &str| format!("{architecture}.{name}");
        let n_heads = self.metadata_usize(&key("attention.head_count"))?;
        let hidden_size = self.metadata_usize(&key("embedding_length"))?;
        let vocab_size = match self.metadata_usize(&key("vocab_size")) {
            Ok(n) => n,
            Err(_) => self
                .content
                .tensor_infos
                .get("token_embd.weight")
                .and_then(|info| info.shape.dims().first().copied())
                .ok_or_else(|| self.metadata_error(&key("vocab_size")))?,
        };
        let head_dim = self
            .optional_usize(&key("attention.key_length"))?
            .unwrap_or(hidden_size / n_heads.max(1));
        if let Some(value_length) = self.optional_usize(&key("attention.value_length"))?
            && value_length != head_dim
        {
            return Err(ModelError::UnsupportedVariant {
                path: self.path.clone(),
                what: format!("value heads of {value_length} with key heads of {head_dim}"),
            });
        }
        let arch = match architecture.as_str() {
            // llama.cpp's Gemma 3: local layers with RoPE base 10,000, every sixth global.
            "gemma3" => {
                Architecture::gemma3(self.metadata_usize(&key("attention.sliding_window"))?)
            }
            _ => Architecture::LLAMA,
        };
        let config = ModelConfig {
            arch,
            n_layers: self.metadata_usize(&key("block_count"))?,
            hidden_size,
            intermediate_size: self.metadata_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads: self
                .optional_usize(&key("attention.head_count_kv"))?
                .unwrap_or(n_heads),
            head_dim,
            vocab_size,
            max_position_embeddings: self.metadata_usize(&key("context_length"))?,
            rope_theta: self
                .optional_f32(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
            rms_norm_eps: self
                .optional_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        };
        config.validate().map_err(|source| ModelError::Config {
            path: self.path.clone(),
            source,
        })?;
        if let Some(rope_dims) = self.optional_usize(&key("rope.dimension_count"))?
            && rope_dims != config.head_dim()
        {
            return Err(ModelError::UnsupportedVariant {
                path: self.path.clone(),
                what: format!(
                    "partial rotary embedding ({rope_dims} of {} head dims)",
                    config.head_dim()
                ),
            });
        }
        for unsupported in [
            "rope.scaling.type",
            "rope.scaling.factor",
            "final_logit_softcapping",
        ] {
            if self.metadata(&key(unsupported)).is_some() {
                return Err(ModelError::UnsupportedVariant {
                    path: self.path.clone(),
                    what: format!("`{}` ({unsupported})", key(unsupported)),
                });
            }
        }
        Ok(config)
    }

    /// Reads one tensor, dequantized to f32, checking its shape.
    pub fn tensor_f32(
        &mut self,
        name: &str,
        expected: &[usize],
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            });
        };
        if info.shape.dims() != expected {
            return Err(ModelError::BadShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: expected.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        let tensor_error = |source| ModelError::Tensor {
            path: self.path.clone(),
            source,
        };
        let quantized = self
            .content
            .tensor(&mut self.file, name, device)
            .map_err(tensor_error)?;
        quantized.dequantize(device).map_err(tensor_error)
    }

    /// Whether the file has a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn metadata_error(&self, key: &str) -> ModelError {
        ModelError::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
        }
    }

    fn metadata_string(&self, key: &str) -> Result<String, ModelError> {
        self.metadata(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| self.metadata_error(key))
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        let Some(value) = self.metadata(key) else {
            return Ok(None);
        };
        value_as_u64(value)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.metadata_error(key))
    }

    fn metadata_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.optional_usize(key)?
            .ok_or_else(|| self.metadata_error(key))
    }

    fn optional_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(_) => Err(self.metadata_error(key)),
        }
    }
}

fn value_as_u64(value: &Value) -> Option<u64> {
    match *value {
        Value::U8(n) => Some(n.into()),
        Value::U16(n) => Some(n.into()),
        Value::U32(n) => Some(n.into()),
        Value::U64(n) => Some(n),
        Value::I8(n) => u64::try_from(n).ok(),
        Value::I16(n) => u64::try_from(n).ok(),
        Value::I32(n) => u64::try_from(n).ok(),
        Value::I64(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

/// Reads every weight of a Llama-family GGUF as f32, keyed by GGUF tensor name, with query
/// and key rows in the interleaved rotary order ([`Architecture`]): Gemma's half-split rows
/// (and its query/key norms) are permuted on load.
pub fn read_llama_tensors(
    gguf: &mut GgufFile,
    config: &ModelConfig,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut tensors = HashMap::new();
    let half_split = config.arch != Architecture::LLAMA;
    for (name, shape) in llama_tensor_shapes(config) {
        let mut tensor = gguf.tensor_f32(&name, &shape, device)?;
        if half_split && is_rotated(&name) {
            tensor = interleave_rotary_rows(&tensor, config.head_dim()).map_err(|source| {
                ModelError::Tensor {
                    path: gguf.path().to_owned(),
                    source,
                }
            })?;
        }
        tensors.insert(name, tensor);
    }
    if gguf.has_tensor("output.weight") {
        let shape = [config.vocab_size, config.hidden_size];
        let head = gguf.tensor_f32("output.weight", &shape, device)?;
        tensors.insert("output.weight".to_owned(), head);
    }
    Ok(tensors)
}

/// Names and shapes (rows, cols) of the tensors a Llama GGUF must hold; `output.weight` is
/// optional (absent when the head is tied to `token_embd.weight`).
pub fn llama_tensor_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let hidden = config.hidden_size;
    let mut shapes = vec![
        (
            "token_embd.weight".to_owned(),
            vec![config.vocab_size, hidden],
        ),
        ("output_norm.weight".to_owned(), vec![hidden]),
    ];
    for layer_idx in 0..config.n_layers {
        shapes.push((format!("blk.{layer_idx}.attn_norm.weight"), vec![hidden]));
        shapes.push((format!("blk.{layer_idx}.ffn_norm.weight"), vec![hidden]));
        if config.arch.post_norms {
            shapes.push((post_norm_name(layer_idx, PostNorm::Attention), vec![hidden]));
            shapes.push((post_norm_name(layer_idx, PostNorm::Mlp), vec![hidden]));
        }
        if config.arch.qk_norm {
            for kind in [MatrixKind::Q, MatrixKind::K] {
                shapes.push((qk_norm_name(layer_idx, kind), vec![config.head_dim()]));
            }
        }
        for kind in MatrixKind::ALL {
            let (rows, cols) = config.matrix_shape(kind);
            shapes.push((gguf_matrix_name(layer_idx, kind), vec![rows, cols]));
        }
        if config.arch.qkv_bias {
            for kind in [MatrixKind::Q, MatrixKind::K, MatrixKind::V] {
                let rows = config.matrix_shape(kind).0;
                shapes.push((bias_name(layer_idx, kind), vec![rows]));
            }
        }
    }
    shapes
}

/// GGUF tensor name of a block's q, k or v bias ([`Architecture::qkv_bias`]).
pub fn bias_name(layer_idx: usize, kind: MatrixKind) -> String {
    gguf_matrix_name(layer_idx, kind).replace(".weight", ".bias")
}

/// The two sub-block outputs a post-norm ([`Architecture::post_norms`]) follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostNorm {
    /// After the attention's output projection.
    Attention,
    /// After the MLP's down projection.
    Mlp,
}

/// GGUF tensor name of a block's post-norm.
pub fn post_norm_name(layer_idx: usize, which: PostNorm) -> String {
    match which {
        PostNorm::Attention => format!("blk.{layer_idx}.post_attention_norm.weight"),
        PostNorm::Mlp => format!("blk.{layer_idx}.post_ffw_norm.weight"),
    }
}

/// GGUF tensor name of a block's query (`Q`) or key (any other kind) head norm.
pub fn qk_norm_name(layer_idx: usize, kind: whittle_runtime::MatrixKind) -> String {
    match kind {
        whittle_runtime::MatrixKind::Q => format!("blk.{layer_idx}.attn_q_norm.weight"),
        _ => format!("blk.{layer_idx}.attn_k_norm.weight"),
    }
}

/// Whether a tensor's rows (or, for a head norm, its entries) are rotated by RoPE.
fn is_rotated(name: &str) -> bool {
    [
        "attn_q.weight",
        "attn_k.weight",
        "attn_q_norm.weight",
        "attn_k_norm.weight",
    ]
    .iter()
    .any(|suffix| name.ends_with(suffix))
}

/// Rows (or entries, for a vector) in half-split rotary order `[x_0 … x_{d/2−1}, y_0 …]` per
/// head of `head_dim`, reordered to interleaved pairs `[x_0, y_0, x_1, y_1, …]`.
pub fn interleave_rotary_rows(tensor: &Tensor, head_dim: usize) -> candle_core::Result<Tensor> {
    let rows = tensor.dim(0)?;
    let half = head_dim / 2;
    let order: Vec<u32> = (0..rows)
        .map(|row| {
            let (head, lane) = (row / head_dim, row % head_dim);
            (head * head_dim + (lane % 2) * half + lane / 2) as u32
        })
        .collect();
    let order = Tensor::from_vec(order, rows, tensor.device())?;
    tensor.index_select(&order, 0)
}

/// GGUF tensor name of a prunable matrix.
pub fn gguf_matrix_name(layer_idx: usize, kind: whittle_runtime::MatrixKind) -> String {
    let suffix = match kind {
        MatrixKind::Q => "attn_q",
        MatrixKind::K => "attn_k",
        MatrixKind::V => "attn_v",
        MatrixKind::O => "attn_output",
        MatrixKind::Gate => "ffn_gate",
        MatrixKind::Up => "ffn_up",
        MatrixKind::Down => "ffn_down",
    };
    format!("blk.{layer_idx}.{suffix}.weight")
}
