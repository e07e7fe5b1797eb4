"""Records llama.cpp's token ids for Gemma 3 270M, for tests/tests/real_model_gemma3_tokenizer.rs.

How the committed llamacpp_gemma3_token_ids.json was made (once, by hand):
    python3 -m venv /tmp/cyl && /tmp/cyl/bin/pip install cyllama==0.2.18
    /tmp/cyl/bin/python tests/data/record_llamacpp_gemma3_token_ids.py \
        ~/.cache/whittle/models/gemma-3-270m-q4_k_m.gguf > tests/data/llamacpp_gemma3_token_ids.json
cyllama 0.2.18 bundles llama.cpp b9190. Tokenized with add_special=True (Gemma adds BOS) and
parse_special=True, so control tokens written in the text map to their ids. The strings are
those of record_llamacpp_token_ids.py and a few Gemma-specific ones (text and ids), and every
sentence of data/sst2/dev.tsv, the sst2 task's test split (ids only, in file order; the test
reads the sentences from the data file as the task does: the `sentence` column, verbatim).
"""
import hashlib
import json
import sys
from pathlib import Path

import cyllama
import cyllama.llama.llama_cpp as L

sys.path.insert(0, str(Path(__file__).parent))
from record_llamacpp_token_ids import STRINGS  # noqa: E402

GEMMA_STRINGS = [
    "<start_of_turn>user\nIs this review positive?<end_of_turn>\n<start_of_turn>model\n",
    "tabs\t\tand   spaces\n\n\n<b>bold</b> [multimodal] </s>",
    "<0x41> is not a byte token in text",
]

SST2 = Path(__file__).parents[2] / "data" / "sst2" / "dev.tsv"


def sst2_sentences():
    lines = [line for line in SST2.read_text(encoding="utf-8").split("\n") if line]
    header = lines[0].split("\t")
    column = header.index("sentence")
    return [line.split("\t")[column] for line in lines[1:]]


def main():
    path = sys.argv[1]
    params = L.LlamaModelParams()
    model = L.LlamaModel(path_model=path, params=params)
    vocab = model.get_vocab()

    def ids(text):
        return list(vocab.tokenize(text, add_special=True, parse_special=True))

    cases = [json.dumps({"text": text, "ids": ids(text)}, ensure_ascii=False) for text in STRINGS + GEMMA_STRINGS]
    sst2 = [json.dumps(ids(text)) for text in sst2_sentences()]
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    source = f"llama.cpp via cyllama {getattr(cyllama, '__version__', '0.2.18')} (llama.cpp b9190)"
    # One case per line; the SST-2 entries hold ids only, in the order of data/sst2/dev.tsv.
    sys.stdout.write("{\n")
    sys.stdout.write(f' "source": {json.dumps(source)},\n')
    sys.stdout.write(f' "model": {json.dumps(Path(path).name)},\n')
    sys.stdout.write(f' "model_sha256": "{digest}",\n')
    sys.stdout.write(' "cases": [\n  ' + ",\n  ".join(cases) + "\n ],\n")
    sys.stdout.write(' "sst2_dev": [\n  ' + ",\n  ".join(sst2) + "\n ]\n")
    sys.stdout.write("}\n")


if __name__ == "__main__":
    main()
