#!/usr/bin/env python3
"""A Llama checkpoint (Hugging Face folder: config.json, model.safetensors, tokenizer.model,
tokenizer_config.json) written as an F16 GGUF with llama.cpp's `gguf` package, without torch.

    PYTHONPATH=<llama.cpp>/gguf-py python scripts/trendstory_tools/loadtest/hf_to_gguf.py \
        HF_DIR OUT.gguf

Run by scripts/loadtest/peer-llama-server.sh (which then quantizes the file to Q4_0 with
llama-quantize) as a file, in the peer's converter venv: it imports nothing of this package,
which that venv does not hold. It does for a plain `LlamaForCausalLM` what llama.cpp's
convert_hf_to_gguf.py does (that script imports torch, which is not practical here: see
peer-llama-server.sh): the same metadata keys, tensor names from gguf's own name map, the
rotary row permutation of q and k, 1-D tensors (norms) in F32 and the rest in F16, and the
SentencePiece vocabulary with its special tokens and chat template. bf16 is widened to f32
with numpy (safetensors' numpy loader has no bf16).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path: Path):
    """Yields (name, float32 array) for each tensor of one safetensors file."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            yield name, (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            yield name, raw.astype(np.float32)


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotary halves to llama.cpp's pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def main(hf_dir: Path, out: Path) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("architectures") != ["LlamaForCausalLM"]:
        sys.exit(f"hf_to_gguf: {hf_dir} is not a LlamaForCausalLM checkpoint")
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads", n_head)
    n_layer = config["num_hidden_layers"]

    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(hf_dir.resolve().parent.name)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // n_head)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokenizer_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    if (add_prefix_space := tokenizer_config.get("add_prefix_space")) is not None:
        writer.add_add_space_prefix(add_prefix_space)
    vocab = gguf.SentencePieceVocab(hf_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, n_vocab=len(tokens)).add_to_gguf(writer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    files = sorted(hf_dir.glob("*.safetensors"))
    for file in files:
        for name, tensor in read_safetensors(file):
            if name.endswith(".rotary_emb.inv_freq"):
                continue
            if name.endswith("q_proj.weight"):
                tensor = permute(tensor, n_head)
            elif name.endswith("k_proj.weight"):
                tensor = permute(tensor, n_head_kv)
            new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                sys.exit(f"hf_to_gguf: no GGUF name for tensor {name}")
            data = tensor if tensor.ndim == 1 else tensor.astype(np.float16)
            writer.add_tensor(new_name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"hf_to_gguf: wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
