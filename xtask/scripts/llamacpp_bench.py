"""llama.cpp side of `cargo xtask bench-compare` (run in the venv that command creates).

With `--label-prompts FILE` (a JSON list of whole prompt texts) and `--label-tokens A,B`: time
to label, as a user of llama.cpp classifies a text: tokenize the prompt (special tokens parsed,
nothing added), run it from an empty KV cache with logits for the last token, over the full
vocabulary. The seconds of each prompt (tokenizing and the forward pass; reading the label
logits out of cyllama's Python list of 49,152 floats is not timed) and its label (the argmax
over the label tokens' logits plus `--label-bias`, the bundle's calibrated bias) are printed
as one JSON object.

Without them:

Prefill of the given prompt token ids (one batch, logits for the last token only), then greedy
decode of `--decode` tokens (llama.cpp's own greedy sampler, so no Python argmax is timed), on
`--threads` threads. Every repetition starts from an empty KV cache. Prints one JSON object:
the seconds of every measured prefill and decode, and what was run.

The token ids come from whittle's tokenizer (the bundle's tables, which equal the GGUF's), so
both sides run the same prompt.
"""

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--tokens", help="prompt token ids, comma-separated")
    parser.add_argument("--label-prompts", help="a JSON file: a list of whole prompt texts")
    parser.add_argument("--label-tokens", help="the label token ids, comma-separated")
    parser.add_argument(
        "--label-bias", help="each label's bias (the bundle's calibration), comma-separated"
    )
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    from cyllama.llama.llama_cpp import (
        LlamaBatch,
        LlamaContext,
        LlamaContextParams,
        LlamaModel,
        LlamaModelParams,
        LlamaSampler,
        LlamaSamplerChainParams,
        disable_logging,
        ggml_backend_load_all,
    )

    import cyllama

    disable_logging()
    ggml_backend_load_all()
    if args.label_prompts:
        return time_to_label(args)
    tokens = [int(t) for t in (args.tokens or "").split(",") if t]
    if not tokens:
        print("llamacpp_bench: --tokens is empty", file=sys.stderr)
        return 2
    model_params = LlamaModelParams()
    model_params.n_gpu_layers = 0
    model = LlamaModel(args.model, model_params)
    ctx_params = LlamaContextParams()
    ctx_params.n_ctx = len(tokens) + args.decode + 16
    ctx_params.n_batch = max(len(tokens), 1)
    ctx_params.n_ubatch = max(len(tokens), 1)
    ctx_params.n_threads = args.threads
    ctx_params.n_threads_batch = args.threads
    ctx = LlamaContext(model, ctx_params)
    batch = LlamaBatch(n_tokens=max(len(tokens), 1), embd=0, n_seq_max=1)

    def run_once():
        ctx.kv_cache_clear()
        sampler = LlamaSampler(LlamaSamplerChainParams())
        sampler.add_greedy()
        batch.clear()
        for i, token in enumerate(tokens):
            batch.add(token, i, [0], i == len(tokens) - 1)
        started, cpu = time.perf_counter(), time.process_time()
        ctx.decode(batch)
        prefill_s = time.perf_counter() - started
        prefill_cpu_s = time.process_time() - cpu
        position = len(tokens)
        generated = []
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.decode):
            token = sampler.sample(ctx, -1)
            generated.append(token)
            batch.clear()
            batch.add(token, position, [0], True)
            ctx.decode(batch)
            position += 1
        decode_s = time.perf_counter() - started
        decode_cpu_s = time.process_time() - cpu
        return prefill_s, decode_s, prefill_cpu_s, decode_cpu_s, generated

    for _ in range(args.warmup):
        run_once()
    prefill, decode, prefill_cpu, decode_cpu, generated = [], [], [], [], []
    for _ in range(args.repeats):
        p, d, pc, dc, generated = run_once()
        prefill.append(p)
        decode.append(d)
        prefill_cpu.append(pc)
        decode_cpu.append(dc)
    print(
        json.dumps(
            {
                "engine": "llama.cpp",
                "cyllama": getattr(cyllama, "__version__", "unknown"),
                "model": args.model,
                "threads": args.threads,
                "prefill_tokens": len(tokens),
                "decode_tokens": args.decode,
                "prefill_s": prefill,
                "decode_s": decode,
                "prefill_cpu_s": prefill_cpu,
                "decode_cpu_s": decode_cpu,
                "generated": generated,
            }
        )
    )
    return 0


def time_to_label(args) -> int:
    from cyllama.llama.llama_cpp import (
        LlamaBatch,
        LlamaContext,
        LlamaContextParams,
        LlamaModel,
        LlamaModelParams,
    )

    class Model(LlamaModel):
        # cyllama 0.2.18's get_logits_ith reads `model.n_vocab`, which its LlamaModel lacks.
        @property
        def n_vocab(self):
            return self.get_vocab().n_vocab

    with open(args.label_prompts, encoding="utf-8") as file:
        prompts = json.load(file)
    labels = [int(t) for t in (args.label_tokens or "").split(",") if t]
    bias = [float(b) for b in (args.label_bias or "").split(",") if b] or [0.0] * len(labels)
    if not prompts or len(labels) < 2:
        print("llamacpp_bench: need prompts and at least two label tokens", file=sys.stderr)
        return 2
    model_params = LlamaModelParams()
    model_params.n_gpu_layers = 0
    model = Model(args.model, model_params)
    vocab = model.get_vocab()
    ctx_params = LlamaContextParams()
    ctx_params.n_ctx = 1024
    ctx_params.n_batch = 1024
    ctx_params.n_ubatch = 1024
    ctx_params.n_threads = args.threads
    ctx_params.n_threads_batch = args.threads
    ctx = LlamaContext(model, ctx_params)
    batch = LlamaBatch(n_tokens=1024, embd=0, n_seq_max=1)

    def classify(prompt):
        started = time.perf_counter()
        tokens = vocab.tokenize(prompt, add_special=False, parse_special=True)
        ctx.kv_cache_clear()
        batch.clear()
        for i, token in enumerate(tokens):
            batch.add(token, i, [0], i == len(tokens) - 1)
        ctx.decode(batch)
        seconds = time.perf_counter() - started
        logits = ctx.get_logits_ith(-1)
        scores = [logits[t] + b for t, b in zip(labels, bias)]
        return seconds, scores.index(max(scores)), len(tokens)

    for prompt in prompts[: args.warmup]:
        classify(prompt)
    label_s, predicted, lengths = [], [], []
    for prompt in prompts:
        seconds, label, length = classify(prompt)
        label_s.append(seconds)
        predicted.append(label)
        lengths.append(length)
    print(
        json.dumps(
            {
                "engine": "llama.cpp",
                "cyllama": getattr(cyllama_module(), "__version__", "unknown"),
                "threads": args.threads,
                "label_s": label_s,
                "labels": predicted,
                "prompt_tokens": lengths,
            }
        )
    )
    return 0


def cyllama_module():
    import cyllama

    return cyllama


if __name__ == "__main__":
    sys.exit(main())
