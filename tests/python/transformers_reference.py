"""The reference for test_real_text.py: Hugging Face transformers loading a GGUF file itself
(its own dequantization, its own Llama), run by the reference venv
(scripts/requirements-reference.txt: torch is kept out of .venv).

    .cache/venv-reference/bin/python tests/python/transformers_reference.py FILE.gguf IN.json OUT.npz

IN.json: a list of token id sequences (tokenized by our tokenizer.json, so transformers'
own tokenizer plays no part). OUT.npz: logits_<i> float32 [len, vocab], every position's
next-token logits of sequence i from one full forward pass in fp32.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main(gguf: Path, sequences: Path, out: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.eval()
    result = {}
    with torch.no_grad():
        for i, ids in enumerate(json.loads(sequences.read_text())):
            logits = model(torch.tensor([ids])).logits[0]
            result[f"logits_{i}"] = logits.float().numpy()
    np.savez(out, **result)


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
