"""llama.cpp's logits for Gemma 3 270M on four prompts: the reference of
tests/tests/real_model_gemma3.rs (candle's quantized_gemma3 is not one: its MLP uses SiLU, not
GELU; huggingface/candle#3745).

    <python with cyllama==0.2.18 and gguf==0.19.0> record_llamacpp_gemma3_logits.py MODEL.gguf OUT.json

Each prompt is tokenized as llama.cpp does for this model (add_special=True: the BOS it asks for;
parse_special=True), run from an empty KV cache on one thread, and the last position's logits over
the whole vocabulary are written with the token ids, twice: for the file as given ("quantized":
llama.cpp multiplies its Q4_K/Q5_0/Q6_K/Q8_0 weights with 8-bit-quantized activations), and for
the same weights dequantized to f32 with the `gguf` package into a temporary GGUF beside OUT
("dequantized": what whittle computes with, so the two forward passes compare directly). `cargo
xtask test` runs this once per model digest into the cache (the file is 32 MB of JSON, too large to commit).
"""
import os
import json
import sys

PROMPTS = [
    "The capital of France is",
    "Review: a gripping, moving and sometimes funny film.\nSentiment:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    # Longer than the 512-position window of the local layers (about 800 tokens): their masks
    # decide these logits.
    " ".join(
        f"Item {i} is {['red', 'green', 'blue', 'old', 'new', 'large', 'small'][i * 3 % 7]}."
        for i in range(1, 101)
    )
    + " Item 1 is",
]

# Context and batch: room for the longest prompt.
N_CTX = 1024


def dequantized_copy(source, target):
    """The GGUF `source` with every tensor dequantized to f32, metadata unchanged."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), kind)
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data.reshape(tuple(int(n) for n in reversed(tensor.shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def record(path):
    from cyllama.llama.llama_cpp import (
        LlamaBatch,
        LlamaContext,
        LlamaContextParams,
        LlamaModel,
        LlamaModelParams,
        disable_logging,
        ggml_backend_load_all,
    )

    class Model(LlamaModel):
        # cyllama 0.2.18's get_logits_ith reads `model.n_vocab`, which its LlamaModel lacks.
        @property
        def n_vocab(self):
            return self.get_vocab().n_vocab

    disable_logging()
    ggml_backend_load_all()
    model_params = LlamaModelParams()
    model_params.n_gpu_layers = 0
    model = Model(path, model_params)
    vocab = model.get_vocab()
    ctx_params = LlamaContextParams()
    ctx_params.n_ctx = N_CTX
    ctx_params.n_batch = N_CTX
    ctx_params.n_ubatch = N_CTX
    ctx_params.n_threads = 1
    ctx_params.n_threads_batch = 1
    ctx = LlamaContext(model, ctx_params)
    batch = LlamaBatch(n_tokens=N_CTX, embd=0, n_seq_max=1)
    cases = []
    for prompt in PROMPTS:
        ids = list(vocab.tokenize(prompt, add_special=True, parse_special=True))
        ctx.kv_cache_clear()
        batch.clear()
        for i, token in enumerate(ids):
            batch.add(token, i, [0], i == len(ids) - 1)
        ctx.decode(batch)
        logits = [float(x) for x in ctx.get_logits_ith(-1)]
        cases.append({"prompt": prompt, "ids": ids, "logits": logits})
    return cases


def main() -> int:
    source, out_path = sys.argv[1], sys.argv[2]
    f32 = out_path + ".f32.gguf"
    try:
        dequantized_copy(source, f32)
        out = {
            "source": "llama.cpp via cyllama 0.2.18 (llama.cpp b9190)",
            "quantized": record(source),
            "dequantized": record(f32),
        }
    finally:
        if os.path.exists(f32):
            os.remove(f32)
    with open(out_path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(out, file)
    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
