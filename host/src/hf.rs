//! Hugging Face checkpoints: a folder with `config.json`, `model.safetensors` (or shards named
//! by `model.safetensors.index.json`), `tokenizer.json` and `tokenizer_config.json`, for
//! Llama-family models (`LlamaForCausalLM`), Qwen2 (`Qwen2ForCausalLM`: Llama's block with
//! biases on q, k and v) and Gemma 3 (`Gemma3ForCausalLM`, its SentencePiece `tokenizer.model`
//! instead of `tokenizer.json`). Tensors may be bf16, f16 or f32; they load as f32 under the
//! GGUF names the model uses, q's and k's rows (their biases, Gemma's head norms) permuted from
//! Hugging Face's half-split rotary layout to the interleaved one exactly as llama.cpp's
//! converter does for Llama (it keeps Qwen2's and Gemma's half-split rows and rotates them
//! NEOX-style; the scores are the same), and Gemma's norm weights `w` (applied as `1 + w`)
//! stored as `1 + w`, as llama.cpp's converter stores them.
//! [`write_checkpoint`] is the inverse (what the test of this module writes from a GGUF).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use whittle_runtime::{Activation, Architecture, MatrixKind, ModelConfig};

use crate::gguf::{
    ModelError, PostNorm, bias_name, gguf_matrix_name, llama_tensor_shapes, post_norm_name,
    qk_norm_name,
};
use crate::model::{Linear, Llama, LoadedModel};
use crate::tokenizer::TextTokenizer;

/// The architectures (`config.json` `architectures`) this loader reads.
pub const SUPPORTED: &[&str] = &["LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"];

/// The `architectures` entry of a Qwen2 checkpoint.
const QWEN2: &str = "Qwen2ForCausalLM";

/// The `architectures` entry of a Gemma 3 text checkpoint (270M, 1B).
const GEMMA3: &str = "Gemma3ForCausalLM";

/// The fields of `config.json` the loader reads (others are ignored).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HfConfig {
    /// Model classes, e.g. `["LlamaForCausalLM"]`.
    pub architectures: Vec<String>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention), `num_attention_heads` if absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head, `hidden_size / num_attention_heads` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Whether the output head is the embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// RoPE scaling (Llama 3.x `llama3`, YaRN, …): not implemented, so it must be absent.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on q/k/v/o: not implemented for Llama, so absent or false (Qwen2 has q/k/v
    /// biases without this key).
    #[serde(default)]
    pub attention_bias: bool,
    /// Qwen2's sliding-window attention: not implemented, so absent or false.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The MLP's activation: `silu` (SwiGLU) if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Gemma 3's name for the activation: `gelu_pytorch_tanh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma 3: positions a local layer sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is global (older configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3: `sliding_attention` or `full_attention` per layer (newer configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: the local layers' RoPE base (10,000 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f32>,
    /// Gemma 3: queries are scaled by `query_pre_attn_scalar^-½`; only `head_dim` is
    /// implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 2's logit soft-capping: not implemented, so absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<serde_json::Value>,
    /// Gemma 2's attention soft-capping: not implemented, so absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<serde_json::Value>,
    /// Biases in the MLP: not implemented, so absent or false.
    #[serde(default)]
    pub mlp_bias: bool,
    /// End-of-sequence token id (a number or a list; the first is used).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl HfConfig {
    fn model_config(&self, path: &Path) -> Result<ModelConfig, ModelError> {
        let refuse = |what: &str| ModelError::UnsupportedVariant {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        if !self
            .architectures
            .iter()
            .any(|a| SUPPORTED.contains(&a.as_str()))
        {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_owned(),
                architecture: format!(
                    "{} (Hugging Face; supported: {})",
                    self.architectures.join(", "),
                    SUPPORTED.join(", ")
                ),
            });
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse("rope_scaling in config.json"));
        }
        if self.attention_bias || self.mlp_bias {
            return Err(refuse("attention or MLP biases"));
        }
        if self.use_sliding_window {
            return Err(refuse("use_sliding_window in config.json"));
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        let arch = match (self.is_gemma3(), self.is_qwen2()) {
            (true, _) => self.gemma3().map_err(|what| refuse(&what))?,
            (false, true) => Architecture::QWEN2,
            (false, false) => Architecture::LLAMA,
        };
        let activation = match arch.activation {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        for act in [&self.hidden_act, &self.hidden_activation]
            .into_iter()
            .flatten()
        {
            if act != activation {
                return Err(refuse(&format!(
                    "activation {act} (this family's is {activation})"
                )));
            }
        }
        if self
            .query_pre_attn_scalar
            .is_some_and(|scalar| scalar != head_dim as f32)
        {
            return Err(refuse("query_pre_attn_scalar other than head_dim"));
        }
        let capped =
            |value: &Option<serde_json::Value>| value.as_ref().is_some_and(|v| !v.is_null());
        if capped(&self.final_logit_softcapping) || capped(&self.attn_logit_softcapping) {
            return Err(refuse("logit soft-capping (Gemma 2)"));
        }
        let config = ModelConfig {
            arch,
            n_layers: self.num_hidden_layers,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: self.rope_theta.unwrap_or(match arch.sliding_window {
                0 => 10_000.0,
                _ => 1_000_000.0,
            }),
            rms_norm_eps: self.rms_norm_eps,
        };
        config.validate().map_err(|source| ModelError::Config {
            path: path.to_owned(),
            source,
        })?;
        Ok(config)
    }

    fn is_qwen2(&self) -> bool {
        self.architectures.iter().any(|a| a == QWEN2)
    }

    fn is_gemma3(&self) -> bool {
        self.architectures.iter().any(|a| a == GEMMA3)
    }

    /// Gemma 3's block: its window, and the period of its global layers from `layer_types`
    /// (or `sliding_window_pattern`), which must be periodic.
    fn gemma3(&self) -> Result<Architecture, String> {
        let window = self
            .sliding_window
            .ok_or("a Gemma 3 config without sliding_window")?;
        let every = match &self.layer_types {
            Some(types) => {
                let every = types
                    .iter()
                    .position(|t| t == "full_attention")
                    .map_or(0, |i| i + 1);
                let periodic = types.len() == self.num_hidden_layers
                    && types.iter().enumerate().all(|(l, t)| {
                        let global = every > 0 && (l + 1) % every == 0;
                        t == if global {
                            "full_attention"
                        } else {
                            "sliding_attention"
                        }
                    });
                if !periodic {
                    return Err("layer_types that are not every n-th layer global".into());
                }
                every
            }
            None => self.sliding_window_pattern.unwrap_or(6),
        };
        Ok(Architecture {
            global_every: every,
            rope_theta_local: self.rope_local_base_freq.unwrap_or(10_000.0),
            ..Architecture::gemma3(window)
        })
    }

    fn eos(&self) -> Option<u32> {
        let value = self.eos_token_id.as_ref()?;
        let id = value
            .as_u64()
            .or_else(|| value.as_array()?.first()?.as_u64())?;
        u32::try_from(id).ok()
    }
}

/// The Hugging Face name of block `layer_idx`'s matrix `kind`.
fn hf_matrix_name(layer_idx: usize, kind: MatrixKind) -> String {
    let name = match kind {
        MatrixKind::Q => "self_attn.q_proj",
        MatrixKind::K => "self_attn.k_proj",
        MatrixKind::V => "self_attn.v_proj",
        MatrixKind::O => "self_attn.o_proj",
        MatrixKind::Gate => "mlp.gate_proj",
        MatrixKind::Up => "mlp.up_proj",
        MatrixKind::Down => "mlp.down_proj",
    };
    format!("model.layers.{layer_idx}.{name}.weight")
}

/// `(GGUF name, Hugging Face name)` of every tensor of `config`'s model, the output head
/// last (optional: absent when tied).
fn names(config: &ModelConfig) -> Vec<(String, String)> {
    let mut names = vec![
        (
            "token_embd.weight".to_owned(),
            "model.embed_tokens.weight".to_owned(),
        ),
        (
            "output_norm.weight".to_owned(),
            "model.norm.weight".to_owned(),
        ),
    ];
    for layer_idx in 0..config.n_layers {
        let layer = format!("model.layers.{layer_idx}");
        names.push((
            format!("blk.{layer_idx}.attn_norm.weight"),
            format!("{layer}.input_layernorm.weight"),
        ));
        if config.arch.post_norms {
            // Gemma 3's sandwich: "post_attention" is the attention's output norm there.
            for (gguf, hf) in [
                (
                    post_norm_name(layer_idx, PostNorm::Attention),
                    "post_attention_layernorm",
                ),
                (
                    format!("blk.{layer_idx}.ffn_norm.weight"),
                    "pre_feedforward_layernorm",
                ),
                (
                    post_norm_name(layer_idx, PostNorm::Mlp),
                    "post_feedforward_layernorm",
                ),
            ] {
                names.push((gguf, format!("{layer}.{hf}.weight")));
            }
        } else {
            names.push((
                format!("blk.{layer_idx}.ffn_norm.weight"),
                format!("{layer}.post_attention_layernorm.weight"),
            ));
        }
        if config.arch.qk_norm {
            for (kind, hf) in [(MatrixKind::Q, "q_norm"), (MatrixKind::K, "k_norm")] {
                names.push((
                    qk_norm_name(layer_idx, kind),
                    format!("{layer}.self_attn.{hf}.weight"),
                ));
            }
        }
        for kind in MatrixKind::ALL {
            names.push((
                gguf_matrix_name(layer_idx, kind),
                hf_matrix_name(layer_idx, kind),
            ));
        }
        if config.arch.qkv_bias {
            for kind in [MatrixKind::Q, MatrixKind::K, MatrixKind::V] {
                names.push((
                    bias_name(layer_idx, kind),
                    hf_matrix_name(layer_idx, kind).replace(".weight", ".bias"),
                ));
            }
        }
    }
    names.push(("output.weight".to_owned(), "lm_head.weight".to_owned()));
    names
}

/// Heads whose rows the rotary layout permutes: q's (and its bias's) query heads, k's key/value
/// heads.
fn rotary_heads(gguf_name: &str, config: &ModelConfig) -> Option<usize> {
    if gguf_name.ends_with(".attn_q_norm.weight") || gguf_name.ends_with(".attn_k_norm.weight") {
        // A query or key head norm: one head's entries.
        Some(1)
    } else if gguf_name.ends_with(".attn_q.weight") || gguf_name.ends_with(".attn_q.bias") {
        Some(config.n_heads)
    } else if gguf_name.ends_with(".attn_k.weight") || gguf_name.ends_with(".attn_k.bias") {
        Some(config.n_kv_heads)
    } else {
        None
    }
}

/// Whether `config` is Gemma 3's (of the families read here, the one with post-norms).
fn is_gemma3(config: &ModelConfig) -> bool {
    config.arch.post_norms
}

/// Whether `gguf_name` is an RMSNorm weight that Gemma's checkpoints store as `w − 1` (Gemma
/// multiplies by `1 + w`; llama.cpp's converter adds the one, as the loader does).
fn offset_by_one(gguf_name: &str, config: &ModelConfig) -> bool {
    is_gemma3(config) && gguf_name.ends_with("norm.weight")
}

/// Hugging Face's rotary rows (each head's first half, then its second) to the interleaved
/// order the GGUF uses: llama.cpp's `permute`, `w.reshape(heads, 2, rows/heads/2, cols)
/// .swapaxes(1, 2)`; a bias is a matrix of one column.
fn to_interleaved(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let rows = weight.dim(0)?;
    let cols = weight.elem_count() / rows.max(1);
    weight
        .reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(weight.shape())
}

/// The inverse of [`to_interleaved`].
fn to_half_split(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let rows = weight.dim(0)?;
    let cols = weight.elem_count() / rows.max(1);
    weight
        .reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(weight.shape())
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The safetensors files of the checkpoint in `dir`: `model.safetensors`, or the shards its
/// index names (each must exist).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let bad = |reason: String| ModelError::Checkpoint {
        path: dir.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(&index_path)
        .map_err(|_| bad("no model.safetensors and no model.safetensors.index.json".to_owned()))?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "model.safetensors.index.json is not a shard index ({e})"
        ))
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in index.weight_map.values() {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(ModelError::MissingShard {
                path: dir.to_owned(),
                shard: shard.clone(),
            });
        }
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Reads `config.json` of the checkpoint in `dir`.
pub fn read_config(dir: &Path) -> Result<HfConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Open {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
        path: path.clone(),
        reason: format!("config.json is not a model config ({e})"),
    })
}

/// Loads the Llama, Qwen2 or Gemma 3 checkpoint in `dir` onto `device` as f32.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel, ModelError> {
    let hf = read_config(dir)?;
    let config = hf.model_config(&dir.join("config.json"))?;
    let tokenizer = match hf.is_gemma3() {
        true => TextTokenizer::from_sentencepiece_dir(dir, hf.eos())?,
        false => TextTokenizer::from_hf_dir(dir, hf.eos())?,
    };
    let mut raw: HashMap<String, Tensor> = HashMap::new();
    for file in weight_files(dir)? {
        let tensors = candle_core::safetensors::load(&file, device).map_err(|source| {
            ModelError::Checkpoint {
                path: file.clone(),
                reason: format!("not a readable safetensors file ({source})"),
            }
        })?;
        raw.extend(tensors);
    }
    let shapes: HashMap<String, Vec<usize>> = llama_tensor_shapes(&config).into_iter().collect();
    let mut tensors = HashMap::new();
    for (gguf_name, hf_name) in names(&config) {
        let Some(tensor) = raw.get(&hf_name) else {
            if gguf_name == "output.weight" {
                continue; // tied to the embedding
            }
            return Err(ModelError::MissingTensor {
                path: dir.to_owned(),
                name: hf_name,
            });
        };
        if !matches!(tensor.dtype(), DType::BF16 | DType::F16 | DType::F32) {
            return Err(ModelError::UnsupportedDtype {
                path: dir.to_owned(),
                name: hf_name,
                dtype: format!("{:?}", tensor.dtype()),
            });
        }
        let expected = match gguf_name.as_str() {
            "output.weight" => vec![config.vocab_size, config.hidden_size],
            name => shapes.get(name).cloned().unwrap_or_default(),
        };
        if tensor.dims() != expected.as_slice() {
            return Err(ModelError::BadShape {
                path: dir.join("config.json"),
                name: hf_name,
                expected,
                actual: tensor.dims().to_vec(),
            });
        }
        let tensor_error = |source| ModelError::Tensor {
            path: dir.to_owned(),
            source,
        };
        let mut tensor = tensor.to_dtype(DType::F32).map_err(tensor_error)?;
        if offset_by_one(&gguf_name, &config) {
            tensor = (tensor + 1.0).map_err(tensor_error)?;
        }
        if let Some(heads) = rotary_heads(&gguf_name, &config) {
            tensor = to_interleaved(&tensor, heads).map_err(tensor_error)?;
        }
        tensors.insert(gguf_name, tensor);
    }
    let llama =
        Llama::from_tensors(config, &tensors, device).map_err(|source| ModelError::Tensor {
            path: dir.to_owned(),
            source,
        })?;
    Ok(LoadedModel { llama, tokenizer })
}

/// sha256 over the checkpoint's files (config, tokenizer and every weight file, each as its
/// name and its own digest): what keys caches and bundles for a folder model.
pub fn digest(dir: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = vec![dir.join("config.json")];
    for name in ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"] {
        if dir.join(name).is_file() {
            files.push(dir.join(name));
        }
    }
    files.extend(weight_files(dir)?);
    let mut hasher = Sha256::new();
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update(crate::fetch::sha256_file(file)?.as_bytes());
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Writes `model` as a Hugging Face checkpoint into `dir` (f32 tensors under their Hugging
/// Face names, q and k rows in the half-split rotary order, Gemma's norms as `w − 1`,
/// `config.json`, the tokenizer with `chat_template`): the inverse of [`load`].
pub fn write_checkpoint(
    model: &LoadedModel,
    chat_template: Option<&str>,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let llama = &model.llama;
    let config = *llama.config();
    let mut by_gguf_name: HashMap<String, Tensor> = HashMap::from([
        ("token_embd.weight".to_owned(), llama.embedding().clone()),
        ("output_norm.weight".to_owned(), llama.final_norm().clone()),
        ("output.weight".to_owned(), llama.head().clone()),
    ]);
    for layer_idx in 0..config.n_layers {
        let missing = || anyhow::anyhow!("the model has no block {layer_idx}");
        let (attn_norm, ffn_norm) = llama.norms(layer_idx).ok_or_else(missing)?;
        by_gguf_name.insert(
            format!("blk.{layer_idx}.attn_norm.weight"),
            attn_norm.clone(),
        );
        by_gguf_name.insert(format!("blk.{layer_idx}.ffn_norm.weight"), ffn_norm.clone());
        if let Some((attention, mlp)) = llama.post_norms(layer_idx) {
            by_gguf_name.insert(
                post_norm_name(layer_idx, PostNorm::Attention),
                attention.clone(),
            );
            by_gguf_name.insert(post_norm_name(layer_idx, PostNorm::Mlp), mlp.clone());
        }
        if let Some((q, k)) = llama.qk_norms(layer_idx) {
            by_gguf_name.insert(qk_norm_name(layer_idx, MatrixKind::Q), q.clone());
            by_gguf_name.insert(qk_norm_name(layer_idx, MatrixKind::K), k.clone());
        }
        if let Some(biases) = llama.qkv_bias(layer_idx) {
            for (kind, bias) in [MatrixKind::Q, MatrixKind::K, MatrixKind::V]
                .into_iter()
                .zip(biases)
            {
                by_gguf_name.insert(bias_name(layer_idx, kind), bias.clone());
            }
        }
        for kind in MatrixKind::ALL {
            match llama.linear(layer_idx, kind).ok_or_else(missing)? {
                Linear::Dense { weight } => {
                    by_gguf_name.insert(gguf_matrix_name(layer_idx, kind), weight.clone());
                }
                Linear::LowRank { .. } => anyhow::bail!(
                    "block {layer_idx}'s {} is low-rank; a checkpoint holds dense matrices: write the base model",
                    kind.name()
                ),
            }
        }
    }
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (gguf_name, hf_name) in names(&config) {
        if gguf_name == "output.weight" && llama.head_is_tied() {
            continue;
        }
        let tensor = by_gguf_name
            .remove(&gguf_name)
            .ok_or_else(|| anyhow::anyhow!("the model has no tensor {gguf_name}"))?;
        let tensor = match rotary_heads(&gguf_name, &config) {
            Some(heads) => to_half_split(&tensor, heads)?,
            None => tensor,
        };
        let tensor = match offset_by_one(&gguf_name, &config) {
            true => (tensor - 1.0)?,
            false => tensor,
        };
        tensors.insert(hf_name, crate::prune::folder::host_copy(&tensor)?);
    }
    let bytes = safetensors::serialize(&tensors, None)?;
    whittle_boards::files::write_atomically(&dir.join("model.safetensors"), &bytes)?;
    let gemma3 = is_gemma3(&config);
    let hf = HfConfig {
        architectures: vec![
            match (gemma3, config.arch.qkv_bias) {
                (true, _) => GEMMA3,
                (false, true) => QWEN2,
                (false, false) => "LlamaForCausalLM",
            }
            .to_owned(),
        ],
        hidden_size: config.hidden_size,
        intermediate_size: config.intermediate_size,
        num_attention_heads: config.n_heads,
        num_key_value_heads: Some(config.n_kv_heads),
        head_dim: Some(config.head_dim),
        num_hidden_layers: config.n_layers,
        vocab_size: config.vocab_size,
        max_position_embeddings: config.max_position_embeddings,
        rope_theta: Some(config.rope_theta),
        rms_norm_eps: config.rms_norm_eps,
        tie_word_embeddings: llama.head_is_tied(),
        rope_scaling: None,
        attention_bias: false,
        use_sliding_window: false,
        hidden_act: None,
        hidden_activation: gemma3.then(|| "gelu_pytorch_tanh".to_owned()),
        sliding_window: gemma3.then_some(config.arch.sliding_window),
        sliding_window_pattern: None,
        layer_types: gemma3.then(|| {
            (0..config.n_layers)
                .map(|l| match config.arch.is_local(l) {
                    true => "sliding_attention".to_owned(),
                    false => "full_attention".to_owned(),
                })
                .collect()
        }),
        rope_local_base_freq: gemma3.then_some(config.arch.rope_theta_local),
        query_pre_attn_scalar: gemma3.then_some(config.head_dim as f32),
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        mlp_bias: false,
        eos_token_id: model
            .tokenizer
            .stop_ids()
            .first()
            .map(|&id| serde_json::Value::from(id)),
    };
    whittle_boards::files::write_atomically(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&hf)?.as_bytes(),
    )?;
    model.tokenizer.save_hf(dir, chat_template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotary_permutation_is_llama_cpps_and_inverts() -> anyhow::Result<()> {
        // Two heads of four rows (two rotary pairs each), one column: Hugging Face keeps each
        // head's first half then its second (rows 0, 1 | 2, 3); llama.cpp interleaves them.
        let rows: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let weight = Tensor::from_vec(rows, (8, 1), &Device::Cpu)?;
        let interleaved = to_interleaved(&weight, 2)?;
        assert_eq!(
            interleaved.flatten_all()?.to_vec1::<f32>()?,
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
        let back = to_half_split(&interleaved, 2)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            weight.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    fn config_json(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Result<HfConfig> {
        let mut json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 300,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5
        });
        edit(&mut json);
        serde_json::from_value(json)
    }

    fn refusal(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        match config_json(edit).map(|c| c.model_config(Path::new("ckpt/config.json"))) {
            Ok(Err(error)) => error.to_string(),
            _ => "accepted".to_owned(),
        }
    }

    #[test]
    fn configs_it_cannot_run_are_refused_with_the_reason() -> anyhow::Result<()> {
        assert!(config_json(|_| {})?.model_config(Path::new("c")).is_ok());
        let message = refusal(|j| j["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]));
        assert!(
            message.contains("Qwen3ForCausalLM") && message.contains("LlamaForCausalLM"),
            "{message}"
        );
        let message = refusal(|j| j["rope_scaling"] = serde_json::json!({"rope_type": "llama3"}));
        assert!(message.contains("rope_scaling"), "{message}");
        let message = refusal(|j| j["attention_bias"] = serde_json::json!(true));
        assert!(message.contains("biases"), "{message}");
        let qwen2 = |j: &mut serde_json::Value| {
            j["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        };
        let config = config_json(qwen2)?.model_config(Path::new("c"))?;
        assert_eq!(config.arch, Architecture::QWEN2);
        let message = refusal(|j| {
            qwen2(j);
            j["use_sliding_window"] = serde_json::json!(true);
        });
        assert!(message.contains("use_sliding_window"), "{message}");
        let gemma3 = |j: &mut serde_json::Value| {
            j["architectures"] = serde_json::json!(["Gemma3ForCausalLM"]);
            j["sliding_window"] = serde_json::json!(16);
            j["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
            j["hidden_activation"] = serde_json::json!("gelu_pytorch_tanh");
        };
        let config = config_json(gemma3)?.model_config(Path::new("c"))?;
        assert_eq!(
            config.arch,
            Architecture {
                global_every: 2,
                ..Architecture::gemma3(16)
            }
        );
        assert_eq!(config.rope_theta, 1_000_000.0);
        let message = refusal(|j| {
            gemma3(j);
            j["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
        });
        assert!(message.contains("layer_types"), "{message}");
        let message = refusal(|j| {
            gemma3(j);
            j["final_logit_softcapping"] = serde_json::json!(30.0);
        });
        assert!(message.contains("soft-capping"), "{message}");
        let message = refusal(|j| {
            gemma3(j);
            j["query_pre_attn_scalar"] = serde_json::json!(144);
        });
        assert!(message.contains("query_pre_attn_scalar"), "{message}");
        let message = refusal(|j| j["hidden_act"] = serde_json::json!("gelu"));
        assert!(message.contains("activation gelu"), "{message}");
        let message = refusal(|j| j["num_key_value_heads"] = serde_json::json!(3));
        assert!(message.contains("invalid model config"), "{message}");
        Ok(())
    }

    #[test]
    fn a_missing_shard_or_weights_are_named() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("whittle-hf-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let message = weight_files(&dir).map_or_else(|e| e.to_string(), |_| String::new());
        assert!(message.contains("no model.safetensors"), "{message}");
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )?;
        let message = weight_files(&dir).map_or_else(|e| e.to_string(), |_| String::new());
        assert!(
            message.contains("model-00001-of-00002.safetensors"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
