"""Records llama.cpp's token ids for SmolLM2-135M-Instruct, for tests/tests/real_model_tokenizer.rs.

How the committed llamacpp_token_ids.json was made (once, by hand):
    python3 -m venv /tmp/cyl && /tmp/cyl/bin/pip install cyllama==0.2.18
    /tmp/cyl/bin/python tests/data/record_llamacpp_token_ids.py \
        ~/.cache/whittle/models/SmolLM2-135M-Instruct.Q4_1.gguf > tests/data/llamacpp_token_ids.json
cyllama 0.2.18 bundles llama.cpp b9190. Tokenized with add_special=False (SmolLM2 adds no BOS)
and parse_special=True, so chat markers map to their special ids.
"""
import json
import sys

import cyllama
import cyllama.llama.llama_cpp as L

STRINGS = [
    "Hello, world!",
    "What is the capital of France?",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\ttabbed",
    "It's a don't-can't WON'T situation, isn't it?",
    "naïve café — résumé ✓ 日本語 😀",
    "<|im_start|>user\nIs this review positive?<|im_end|>\n<|im_start|>assistant\n",
    "a gripping , moving and sometimes funny film .",
    "Context: Mitochondria are the powerhouse of the cell.\nQuestion: yes or no?",
    "1234567890 12 345",
]


def main():
    path = sys.argv[1]
    params = L.LlamaModelParams()
    model = L.LlamaModel(path_model=path, params=params)
    vocab = model.get_vocab()
    cases = []
    for text in STRINGS:
        ids = vocab.tokenize(text, add_special=False, parse_special=True)
        cases.append({"text": text, "ids": list(ids)})
    out = {
        "source": f"llama.cpp via cyllama {getattr(cyllama, '__version__', '0.2.18')} (llama.cpp b9190)",
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "cases": cases,
    }
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
