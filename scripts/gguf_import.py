#!/usr/bin/env python3
"""A llama.cpp GGUF of the Llama architecture as a TrendStory model folder (or as a Hugging
Face folder). Run through scripts/import-gguf.sh:

  scripts/import-gguf.sh FILE.gguf --out onnx/NAME [exporter options, e.g. --precision fp32]
  scripts/import-gguf.sh FILE.gguf --hf-out DIR     # config, tokenizer, bf16 safetensors

From the file alone (no Hugging Face download):
- config.json and generation_config.json from its metadata (llama.* keys, the special token
  ids; general.sampling.* and --sampling as sampling defaults);
- tokenizer.json built from tokenizer.ggml.{model,tokens,token_type,merges,pre} so that it
  tokenizes as llama.cpp does for the same file (PRE_TOKENIZERS: the pre-tokenizers whose
  llama.cpp rules we reproduce; BOS only where tokenizer.ggml.add_bos_token says so), and
  tokenizer_config.json with the chat template and special tokens;
- the weights: an int4 export keeps the file's own blocks where MatMulNBits can hold them
  (GGUFWeights.native: Q4_0 at 4 bits, Q8_0 and Q4_0 at 8 bits exactly; Q4_1 at 8 bits within
  a small offset, because ONNX Runtime 1.32 runs float zero points on a slow path) and
  quantizes the rest with the exporter's own formats; the manifest's quantization.nodes says
  which node got what. --requantize [KIND,...] quantizes those kinds (all by default, and
  all when any of --block-size, --zero-points, --quant is given) with our formats from the
  dequantized weights; --precision fp32 dequantizes.
Anything else (another architecture, a truncated or corrupt file, a tokenizer we cannot
build) is an error naming the file and the field. The folder is written beside its final
place and renamed into it only when complete: nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export_onnx as E  # noqa: E402


class ImportError_(Exception):
    """A problem with the file, named by path and field."""

    def __init__(self, path: Path, field: str, problem: str):
        super().__init__(f"{path}: {field}: {problem}")


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------

MISSING = object()


class GGUFFile:
    """A GGUF file's metadata and tensors, checked to be complete."""

    def __init__(self, path: Path):
        import gguf
        self.gguf, self.path = gguf, Path(path)
        if not self.path.is_file():
            raise ImportError_(self.path, "file", "not found")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ImportError_(self.path, "magic", f"not a GGUF file (it starts with {magic!r}, "
                               "not b'GGUF')")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # the reader fails in many ways on a cut or damaged file
            raise ImportError_(self.path, "file", "truncated or corrupt: the reader stopped "
                               f"with {type(e).__name__}: {e}") from None
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ImportError_(self.path, f"tensor {t.name}", "truncated: its data ends at "
                                   f"byte {t.data_offset + t.n_bytes}, the file at {size}")
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.tokens = self.get("tokenizer.ggml.tokens", [])
        file_type = self.get("general.file_type", None)
        # llama.cpp's name of the file's quantization (Q4_1, Q4_K_M, ...).
        self.file_type = (gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
                          if file_type is not None else "unknown")

    def get(self, key: str, default=MISSING):
        """A metadata value (arrays as lists), or default; missing without one: an error."""
        field = self.reader.get_field(key)
        if field is None:
            if default is MISSING:
                raise ImportError_(self.path, key, "missing")
            return default
        return field.contents()

    def get_int(self, key: str, default=MISSING) -> int:
        value = self.get(key, default)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ImportError_(self.path, key, f"expected a whole number, got {value!r}")
        return int(value)


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------

SUPPORTED_ARCHITECTURES = ("llama",)
# Keys of the Llama architecture whose presence means a model the graph does not build.
UNSUPPORTED_KEYS = {
    "llama.expert_count": "mixture of experts",
    "llama.rope.scaling.type": "RoPE scaling",
    "llama.attention.sliding_window": "sliding-window attention",
}


def hf_config(f: GGUFFile) -> dict:
    """The Hugging Face config.json of the file's model."""
    arch = f.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ImportError_(f.path, "general.architecture",
                           f"{arch!r} is not supported (only {', '.join(SUPPORTED_ARCHITECTURES)})")
    for key, what in UNSUPPORTED_KEYS.items():
        value = f.get(key, None)
        if value not in (None, "none", 0):
            raise ImportError_(f.path, key, f"{value!r}: {what} is not supported")
    hidden = f.get_int("llama.embedding_length")
    heads = f.get_int("llama.attention.head_count")
    kv_heads = f.get_int("llama.attention.head_count_kv", heads)
    if heads == 0 or kv_heads == 0 or heads % kv_heads or hidden % heads:
        raise ImportError_(f.path, "llama.attention.head_count_kv",
                           f"{heads} heads over {kv_heads} KV heads and embedding {hidden} "
                           "do not divide evenly")
    head_dim = hidden // heads
    for key in ("llama.rope.dimension_count", "llama.attention.key_length",
                "llama.attention.value_length"):
        value = f.get_int(key, head_dim)
        if value != head_dim:
            raise ImportError_(f.path, key, f"{value}: only a full head of {head_dim} is supported")
    vocab = f.get_int("llama.vocab_size", len(f.tokens))
    if vocab != len(f.tokens):
        raise ImportError_(f.path, "llama.vocab_size",
                           f"{vocab}, but tokenizer.ggml.tokens has {len(f.tokens)} tokens")
    bos, eos = special_ids(f)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": f.get_int("llama.feed_forward_length"),
        "num_hidden_layers": f.get_int("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": f.get_int("llama.context_length"),
        "rms_norm_eps": float(f.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(f.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def special_ids(f: GGUFFile) -> tuple[int, int]:
    """(BOS, EOS). The end of a turn (tokenizer.ggml.eot_token_id, where the file names one)
    is what a chat model writes last, so it is the EOS the engine stops at."""
    n = len(f.tokens)
    out = []
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        value = f.get_int(key)
        if key.endswith("eos_token_id"):
            value = f.get_int("tokenizer.ggml.eot_token_id", value)
        if value >= n:
            raise ImportError_(f.path, key, f"{value} is past the vocabulary ({n} tokens)")
        out.append(value)
    return out[0], out[1]


# general.sampling.* (llama.cpp's sampling defaults in the file) -> generation_config.json.
SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                 "general.sampling.top_k": "top_k",
                 "general.sampling.penalty_repeat": "repetition_penalty"}
SAMPLING_NAMES = ("temperature", "top_p", "top_k", "repetition_penalty")


def parse_sampling(spec: str) -> dict:
    """--sampling's NAME=VALUE,... -> {name: number}. Raises ValueError naming the bad item."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, eq, value = item.partition("=")
        if not eq or name not in SAMPLING_NAMES:
            raise ValueError(f"{item!r}: expected NAME=VALUE, NAME one of "
                             f"{', '.join(SAMPLING_NAMES)}")
        try:
            out[name] = int(value) if name == "top_k" else float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a number") from None
    return out


def generation_config(f: GGUFFile, cfg: dict, sampling: dict) -> dict:
    out = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    pad = f.get("tokenizer.ggml.padding_token_id", None)
    if pad is not None:
        out["pad_token_id"] = int(pad)
    for key, name in SAMPLING_KEYS.items():
        value = f.get(key, None)
        if value is not None:
            out[name] = int(value) if name == "top_k" else float(value)
    out.update(sampling)
    if any(name in out for name in SAMPLING_NAMES):
        out["do_sample"] = True
    return out


# --------------------------------------------------------------------------------------------
# tokenizer.json
# --------------------------------------------------------------------------------------------

# llama.cpp's token types (llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# GPT-2's split rule, as Hugging Face's ByteLevel pre-tokenizer applies it (use_regex) and
# llama.cpp's unicode_regex_split_custom_gpt2 implements it.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}
# Llama 3's split rule (llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3, the pattern of its
# tokenizer.json), then bytes without a second split.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                  r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (Hugging Face pre_tokenizer, add_bos default, ignore_merges), for the
# pre-tokenizers llama.cpp's llama-vocab.cpp defines and whose rules these reproduce, each
# checked against llama-server's /tokenize (tests/fixtures/gguf/). llama.cpp's "smollm"
# splits every digit apart ("\p{N}"), then applies GPT-2's rule.
PRE_TOKENIZERS = {
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, False, False),
    "gpt-2": (BYTE_LEVEL, False, False),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
         "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]}, True, True),
}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-v3"] = PRE_TOKENIZERS["llama-bpe"]


def build_tokenizer(f: GGUFFile, cfg: dict) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config.json) for the file's byte-level BPE vocabulary."""
    from tokenizers import Tokenizer
    model = f.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ImportError_(f.path, "tokenizer.ggml.model",
                           f"{model!r}: only 'gpt2' (byte-level BPE) vocabularies can be built")
    pre = f.get("tokenizer.ggml.pre", "")
    if pre not in PRE_TOKENIZERS:
        raise ImportError_(f.path, "tokenizer.ggml.pre",
                           f"{pre!r}: no reproduction of llama.cpp's rules for it (known: "
                           f"{', '.join(sorted(PRE_TOKENIZERS))})")
    pre_tokenizer, bos_default, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = f.tokens
    types = f.get("tokenizer.ggml.token_type")
    if len(types) != len(tokens):
        raise ImportError_(f.path, "tokenizer.ggml.token_type",
                           f"{len(types)} types for {len(tokens)} tokens")
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ImportError_(f.path, "tokenizer.ggml.tokens",
                               f"token {i} {t!r} repeats token {vocab[t]}")
        vocab[t] = i
    merges = []
    for i, m in enumerate(f.get("tokenizer.ggml.merges")):
        parts = m.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab \
                or parts[0] + parts[1] not in vocab:
            raise ImportError_(f.path, "tokenizer.ggml.merges",
                               f"entry {i} {m!r} is not two tokens of the vocabulary merging "
                               "into a third")
        merges.append(parts)
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": int(types[i]) != USER_DEFINED}
             for i in range(len(tokens)) if int(types[i]) in (CONTROL, USER_DEFINED, UNKNOWN)]
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token", bos_default))
    add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = tokens[cfg["bos_token_id"]], tokens[f.get_int("tokenizer.ggml.eos_token_id")]
    if add_bos or add_eos:
        single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos else []) \
            + [{"Sequence": {"id": "A", "type_id": 0}}] \
            + ([{"SpecialToken": {"id": eos, "type_id": 0}}] if add_eos else [])
        specials = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]}
                    for t, on in ((bos, add_bos), (eos, add_eos)) if on}
        post = {"type": "TemplateProcessing", "single": single,
                "pair": single + [{"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": specials}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                "use_regex": True}
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    }
    text = json.dumps(spec, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as e:
        raise ImportError_(f.path, "tokenizer.ggml.*", f"the built tokenizer does not load: {e}")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "bos_token": bos, "eos_token": tokens[cfg["eos_token_id"]],
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in (
            "content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added},
    }
    for key, name in (("tokenizer.ggml.unknown_token_id", "unk_token"),
                      ("tokenizer.ggml.padding_token_id", "pad_token")):
        i = f.get(key, None)
        if i is not None and 0 <= int(i) < len(tokens):
            config[name] = tokens[int(i)]
    template = f.get("tokenizer.chat_template", None)
    if template is not None:
        config["chat_template"] = template
    return text, config


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's converter permutation of q and k rows (its rotary pairs back to
    Hugging Face's halves). Rows are whole quantization rows, so it applies to codes and
    scales alike."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def q4_1_as_8bit(d: np.ndarray, m: np.ndarray, q: np.ndarray):
    """Q4_1 blocks (w = d * q + m, q in 0..15) as 8-bit MatMulNBits blocks,
    w' = (d / k) * (k * q + c - z), per block the k in 1..17 (and c, z) whose offset
    (d / k) * (c - z) is closest to m: the codes and scale keep the file's steps, and only
    the minimum moves, by at most d / (2k). Returns (codes, scales, zero points) as uint8,
    float32, uint8, or None when a block's minimum lies too far from zero for 8 bits
    (|m| > 255 d: values far from zero with a tiny spread), which then goes to the exporter."""
    d64, m64 = d.astype(np.float64), m.astype(np.float64)
    best = np.full(d.shape, np.inf)
    ks, cs, zs = (np.ones(d.shape, np.int32) for _ in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(1, 18):
            r = np.rint(k * m64 / d64)
            c = np.maximum(r, 0)
            z = c - r
            err = np.abs(m64 - d64 / k * r)
            better = (d != 0) & (c + 15 * k <= 255) & (z <= 255) & (err < best)
            best = np.where(better, err, best)
            ks, cs, zs = (np.where(better, v, old) for v, old in ((k, ks), (c, cs), (z, zs)))
    if np.isinf(best[d != 0]).any():
        return None
    scales = (d / ks).astype(np.float32)
    # A block of equal values (d == 0) is its minimum: one code at scale m.
    flat = d == 0
    scales = np.where(flat, m, scales).astype(np.float32)
    codes = np.where(flat[..., None], 1, ks[..., None] * q + cs[..., None])
    zs = np.where(flat, 0, zs)
    return codes.astype(np.uint8), scales, zs.astype(np.uint8)


class GGUFWeights:
    """The file's tensors under their Hugging Face names: dequantized to float32 (get_f32),
    or as MatMulNBits blocks where the block format allows (native). Every tensor the config's
    model needs must be there with its shape, and no other."""

    def __init__(self, f: GGUFFile, cfg: dict):
        gguf = f.gguf
        self.f, self.gguf = f, gguf
        self.n_head = int(cfg["num_attention_heads"])
        self.n_head_kv = int(cfg.get("num_key_value_heads", self.n_head))
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))
        left = dict(f.tensors)
        self.tensors = {}
        for hf, shape in E.tensor_specs(cfg):
            g = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
            t = left.pop(g, None)
            if t is None:
                raise ImportError_(f.path, f"tensor {g}", f"missing (the model's {hf})")
            got = tuple(int(x) for x in reversed(t.shape[:len(shape)]))
            if got != tuple(shape) or any(int(x) != 1 for x in t.shape[len(shape):]):
                raise ImportError_(f.path, f"tensor {g}", f"shape {list(t.shape)} (GGUF order), "
                                   f"expected {list(reversed(shape))} for {hf}")
            # The gguf package's registry of block formats it can dequantize.
            if t.tensor_type.name not in ("F32", "F16") and \
                    t.tensor_type not in gguf.quants._type_traits:
                raise ImportError_(f.path, f"tensor {g}", f"type {t.tensor_type.name} cannot be "
                                   "dequantized by the gguf package")
            self.tensors[hf] = t
        if left:
            raise ImportError_(f.path, "tensors", f"{sorted(left)} belong to no part of a "
                               "Llama model this importer builds")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def rows_in_hf_order(self, name: str, a: np.ndarray) -> np.ndarray:
        if name.endswith("self_attn.q_proj.weight"):
            return unpermute(a, self.n_head)
        if name.endswith("self_attn.k_proj.weight"):
            return unpermute(a, self.n_head_kv)
        return a

    def get_f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        w = np.asarray(self.gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        return self.rows_in_hf_order(name, w.reshape(tuple(reversed(t.shape.tolist()))))

    def native(self, name: str, bits: int):
        """The tensor's own blocks as E.NativeBlocks of `bits` bits (block 32), or None where
        its format has no such form: Q4_0 (4 and 8 bits, exact), Q8_0 (8 bits, exact), Q4_1
        (8 bits, q4_1_as_8bit)."""
        t = self.tensors[name]
        kind = t.tensor_type.name
        if kind not in ("Q4_0", "Q4_1", "Q8_0") or (bits == 4 and kind != "Q4_0"):
            return None
        raw = np.asarray(t.data, dtype=np.uint8).reshape(int(t.shape[1]), -1)
        head = 4 if kind == "Q4_1" else 2
        blocks = raw.reshape(raw.shape[0], -1, head + (32 if kind == "Q8_0" else 16))
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        body = blocks[..., head:]
        if kind == "Q8_0":
            codes = (body.view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            zp, exact, note = None, True, ""
        else:
            q = np.concatenate([body & 0x0F, body >> 4], axis=-1)  # low nibbles: 0..15
            if kind == "Q4_0":
                codes, zp, exact, note = (q if bits == 4 else q + 120), None, True, ""
            else:
                m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
                encoded = q4_1_as_8bit(d, m, q.astype(np.int32))
                if encoded is None:
                    return None
                codes, d, zp = encoded
                exact = False
                note = "Q4_1's codes times k at scale d/k, its minimum rounded to d/(2k)"
        rows = lambda a: self.rows_in_hf_order(name, a)  # noqa: E731
        return E.NativeBlocks(bits, 32, rows(codes.reshape(codes.shape[0], -1)), rows(d),
                              None if zp is None else rows(zp), exact, note, (kind,))


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------

def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_metadata(f: GGUFFile, folder: Path, sampling: dict) -> dict:
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json; returns
    the config."""
    cfg = hf_config(f)
    tokenizer, tokenizer_config = build_tokenizer(f, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", cfg)
    write_json(folder / "generation_config.json", generation_config(f, cfg, sampling))
    (folder / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
    write_json(folder / "tokenizer_config.json", tokenizer_config)
    return cfg


def write_hf_folder(f: GGUFFile, folder: Path, sampling: dict) -> None:
    """A Hugging Face folder of the model: the metadata files and model.safetensors (bf16,
    as Hugging Face publishes Llama checkpoints), for a stand-in of the hub."""
    cfg = write_metadata(f, folder, sampling)
    cfg["torch_dtype"] = "bfloat16"
    write_json(folder / "config.json", cfg)
    weights = GGUFWeights(f, cfg)
    E.write_safetensors(folder / "model.safetensors", E.tensor_specs(cfg),
                        lambda name, _shape: weights.get_f32(name), dtype="BF16")


def import_gguf(f: GGUFFile, folder: Path, sampling: dict, export_args,
                requantize: tuple = ()) -> dict:
    """The TrendStory model folder (export_args: export_onnx's parsed options); the matrix
    kinds in `requantize` are quantized with our formats, the others keep the file's blocks
    where they can."""
    cfg = write_metadata(f, folder, sampling)
    weights = GGUFWeights(f, cfg)
    a = export_args
    golden = None if (a.no_golden or a.linear_only) else (a.golden_tokens or 8)
    man = E.export(folder, folder, source=f"gguf:{f.path.name}", random_weights=False,
                   precision=a.precision, block_size=a.block_size,
                   accuracy_level=a.accuracy_level, golden_tokens=golden,
                   linear_only=a.linear_only, threads=a.threads, zero_points=a.zero_points,
                   attention=a.attention, prefill_lanes=a.prefill_lanes, quant=a.quant,
                   rounding=a.rounding, weights=weights,
                   keep_native=tuple(k for k in E.MATRIX_KINDS if k not in requantize),
                   name=a.out.name)
    man["gguf"] = {
        "file": f.path.name, "sha256": E.sha256_file(f.path), "size_bytes": f.path.stat().st_size,
        "file_type": f.file_type,
        "tensor_types": {k: sorted({weights.type_name(n) for n in weights.tensors
                                    if kind_of_tensor(n) == k})
                         for k in sorted({kind_of_tensor(n) for n in weights.tensors})},
        "requantized": list(requantize),
    }
    write_json(folder / "manifest.json", man)
    return man


def kind_of_tensor(name: str) -> str:
    """model.layers.3.mlp.down_proj.weight -> mlp.down_proj; lm_head.weight -> lm_head."""
    parts = name.removesuffix(".weight").split(".")
    return ".".join(parts[3:]) if parts[:2] == ["model", "layers"] else ".".join(parts)


def replace_folder(out: Path, write) -> None:
    """Runs write(tmp) on a fresh folder beside `out`, then puts it in out's place; on any
    failure the fresh folder goes and `out` stays as it was."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


# Exporter options that make no sense for a file that brings its own weights and tokenizer.
NOT_FOR_GGUF = ("--hf-dir", "--random-init", "--preset", "--tokenizer", "--dtype", "--seed",
                "--source", "--out")
# Options that ask for our own int4 formats (so nothing of the file's blocks is kept).
REQUANTIZING = ("--block-size", "--zero-points", "--quant", "--rounding")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other options go to scripts/export_onnx.py (see its --help): --precision, "
        "--block-size, --zero-points, --quant, --rounding, --accuracy-level, --attention, "
        "--prefill-lanes, --golden-tokens, --no-golden, --linear-only, --threads.")
    ap.add_argument("gguf", type=Path, help="a llama.cpp GGUF file of the Llama architecture")
    out = ap.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="the TrendStory model folder to write")
    out.add_argument("--hf-out", type=Path, help="write a Hugging Face folder instead (config, "
                     "tokenizer, bf16 model.safetensors)")
    ap.add_argument("--requantize", nargs="?", const=",".join(E.MATRIX_KINDS), default="",
                    metavar="KIND,...",
                    help="quantize these matrix kinds (default: all of "
                    f"{','.join(E.MATRIX_KINDS)}) with our int4 formats (export_onnx.py's "
                    "defaults or options) instead of keeping the file's own blocks; any of "
                    "--block-size, --zero-points, --quant, --rounding alone means all")
    ap.add_argument("--sampling", default="", metavar="NAME=VALUE,...",
                    help="sampling defaults for generation_config.json (temperature, top_p, "
                    "top_k, repetition_penalty), over the file's general.sampling.*")
    args, rest = ap.parse_known_args(argv)
    for option in rest:
        if option.split("=")[0] in NOT_FOR_GGUF:
            ap.error(f"{option}: not an option for a GGUF import (the file brings the weights "
                     "and the tokenizer)")
    try:
        sampling = parse_sampling(args.sampling)
    except ValueError as e:
        ap.error(f"--sampling: {e}")
    target = args.out or args.hf_out
    export_args = E.parse_args(["--hf-dir", str(args.gguf), "--out", str(target), *rest])
    requantize = tuple(filter(None, args.requantize.split(",")))
    if bad := [k for k in requantize if k not in E.MATRIX_KINDS]:
        ap.error(f"--requantize: {', '.join(bad)}: the kinds are {', '.join(E.MATRIX_KINDS)}")
    if not requantize and any(o.split("=")[0] in REQUANTIZING for o in rest):
        requantize = E.MATRIX_KINDS
    try:
        f = GGUFFile(args.gguf)
        if args.hf_out:
            replace_folder(args.hf_out, lambda d: write_hf_folder(f, d, sampling))
        else:
            replace_folder(args.out, lambda d: import_gguf(f, d, sampling, export_args, requantize))
    except ImportError_ as e:
        print(f"import-gguf: error: {e}", file=sys.stderr)
        return 1
    E.log(f"imported {args.gguf} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
