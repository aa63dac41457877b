#!/usr/bin/env python3
"""Export a Hugging Face Llama checkpoint to the ONNX graph the TrendStory engine runs.

No torch: weights are read from safetensors with our own parser (numpy has no bfloat16),
the graph is built with onnx.helper, linear layers are quantized to int4 for ONNX Runtime's
`com.microsoft.MatMulNBits` (a block size and symmetric or asymmetric, with a 4-bit zero point
per block, for each matrix kind; least-squares rounding by default), and golden greedy outputs
are computed with onnxruntime.

Modes (see --help):
  --hf-dir DIR --out onnx/NAME          export an existing HF Llama folder
  --random-init --preset tinyllama      TinyLlama-1.1B shape, random weights (same run cost)
  --random-init --preset tiny           2-layer model + self-trained 1k BPE tokenizer, for tests
  --linear-only                         only the int4 matmuls (a benchmark baseline)
  --block-size 32|64|128 --zero-points  one int4 format for every matrix kind (zero points:
                                        asymmetric int4); default: the per-kind DEFAULT_QUANT
  --quant KIND=BLOCK[:zp],...           the format of some kinds (qkv, o, gate_up, down, lm_head)
  --rounding absmax|search              scale rule (search: least squared error, the default)
  --attention packed|explicit|slots     one-pass packed graph (default), the optimum contract,
                                        or the engine's one-pass slot graph

Output folder: model.onnx + model.onnx.data, tokenizer.json (+tokenizer_config.json),
config.json, golden.json (not for slots graphs) and manifest.json (written last: marks a
complete export).

Graph contract (decoder-with-past, same names as optimum / transformers.js):
  inputs  input_ids, attention_mask, position_ids: int64; past_key_values.{i}.{key,value}
          float32 [batch_size, num_kv_heads, past_sequence_length, head_dim]
  outputs logits float32 [batch_size, sequence_length, vocab];
          present.{i}.{key,value} float32 [batch_size, num_kv_heads, total_sequence_length,
          head_dim] = Concat(past, new, axis=2)

PACKED_CONTRACT (--attention packed, the default): one pass per engine step. The tokens of
every row (one per decoding row, a prompt chunk per prefilling row) are packed into one
sequence, so every linear layer runs once over all of them; only attention is per row, through
ONNX Runtime's fused GroupQueryAttention over a slot KV cache (one [slots, kv_heads, capacity,
head_dim] buffer per layer and key/value, bound as both past and present, written in place):
  inputs  input_ids int64 [1, tokens]: the packed tokens, in any order;
          decode_rows int64 [rows]: per slot row, the packed position of its decode token
            (any position for a row that does not decode: its output is never read);
          decode_seqlens_k int32 [rows]: per row, its past length (where its token goes); for
            a row that does not decode, a position past its real ones (written, never read);
          decode_total int32 []: the largest decode_seqlens_k + 1;
          past_key_values.{i}.{key,value} float32 [rows, kv_heads, capacity, head_dim];
          per prefill lane k < prefill_lanes (manifest): lane.{k}.start, lane.{k}.end int64
            [1] (the lane's packed positions start..end), lane.{k}.seqlens_k int32 [1] (its
            row's past + chunk - 1), lane.{k}.total int32 [] (past + chunk), and
            lane.{k}.past.{i}.{key,value} float32 [1, kv_heads, capacity, head_dim]: ONE
            row's slot (bound to a view of the same buffer); an unused lane takes one token
            over a scratch slot of capacity 1 (seqlens_k 0, total 1);
          attn_order int64 [tokens]: for each packed position, its attention output's index
            in Concat(decode rows' outputs, lane 0's, lane 1's, ...);
          logits_index int64 [logit_positions]: the packed positions whose logits are needed
            (lm_head runs on those only).
  outputs logits float32 [1, logit_positions, vocab]; present.{i}.{key,value} and
          lane.{k}.present.{i}.{key,value}, bound to the same memory as their pasts.
GroupQueryAttention on the CPU takes several new tokens over a past only for batch 1
(group_query_attention_helper.h, CheckInputs), hence the batch-1 lanes beside the decode node.

SLOTS_CONTRACT (--attention slots): PACKED_CONTRACT's one pass per engine step, with all of a
layer's attention in one node of the engine's own, ai.trendstory.SlotAttention: inputs q|k|v
[1, tokens, (heads + 2 * kv_heads) * head_dim], rows, rope.cos, rope.sin (the [max_position,
head_dim / 2] tables; rotate-half RoPE, as GroupQueryAttention's do_rotary) and the layer's
key and value slot buffers; output [1, tokens, heads * head_dim]; attributes num_heads,
kv_num_heads, scale (1/sqrt(head_dim)). No decode gather, lanes, Concat or attn_order: a
decoding row (one token) and a prompt chunk (several, causal within the chunk over the row's
past) are the same kind of row.
  inputs  input_ids int64 [1, tokens]: every row's tokens, packed row after row;
          rows int64 [rows, 4]: per row [slot, past, start, count]: its slot in the KV
            buffers, the positions that slot holds before this pass (its tokens go to
            past..past+count, at RoPE positions past+j), its first packed position (its tokens
            are start..start+count) and its token count;
          logits_index int64 [logit_positions]: as in PACKED_CONTRACT;
          past_key_values.{i}.{key,value} float32 [slots, kv_heads, capacity, head_dim]: the
            engine's slot cache, bound once; the node writes each row's new keys and values
            there, at the row's positions, in place.
  outputs logits float32 [1, logit_positions, vocab] (no presents).
The op is the engine's own (registered on its ONNX Runtime session, see src/engine/attention):
stock ONNX Runtime cannot run this graph, so it has no golden.json (the engine's tests hold it
to the packed graph of the same weights); the packed graph stays the one for stock ONNX Runtime.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

EXPORTER_VERSION = 2
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_TINYLLAMA_CONFIG = SHARED_DIR / "models" / "tinyllama-1.1b-chat-v1.0"
SHARED_LLAMA2_TOKENIZER = SHARED_DIR / "models" / "llama2-tokenizer"
TOKENIZER_CORPUS = REPO_ROOT / "scripts" / "tokenizer_corpus.txt"

OPSET = 17
# The graph contracts of --attention (the module docstring); the first is the default.
ATTENTIONS = ("packed", "explicit", "slots")
# Prefill lanes of a packed graph: how many prompts can advance in one pass beside the
# decoding rows (each lane is one batch-1 GroupQueryAttention per layer; an unused one costs
# a one-token attention over a scratch slot, about 1.2 ms a pass for TinyLlama: BENCHMARKS.md,
# "One pass per step"). Story prompts arrive a few per second, so two lanes suffice.
DEFAULT_PREFILL_LANES = 2
MS_DOMAIN = "com.microsoft"
# The domain of the engine's own ops (SLOTS_CONTRACT's SlotAttention).
TRENDSTORY_DOMAIN = "ai.trendstory"
# Finite "minus infinity" for masked attention scores: Where(mask, scores, MASK_VALUE) keeps a
# fully-masked (left pad) row finite (uniform softmax, ignored by the caller), never NaN.
MASK_VALUE = float(np.finfo(np.float32).min)
# Tensors at least this big go to model.onnx.data, aligned for mmap.
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 4096

# TinyLlama-Chat's prompt format (tokenizer_config.json of the hub repo), used for the tiny
# tokenizer's config so the Rust side can render prompts the same way with either tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

GOLDEN_PROMPTS = [
    "The",
    "The weather today is",
    "Once upon a time, a curious robot lived in a lighthouse at the end of the island.",
    (
        "Breaking news: scientists at the observatory found a faint comet moving across the "
        "edge of the solar system, and engineers tested a new battery that charges in ten "
        "minutes. Fans waited outside the stadium for hours while the rain kept falling, and "
        "the final match was moved to Sunday."
    ),
    "Café ☕ in Zürich: naïve crème brûlée 🚀 東京の桜 🌸 is trending",
    "<|user|>\nWrite a short story about the trend: electric cars</s>\n<|assistant|>\n",
]


def log(msg: str) -> None:
    print(f"[export_onnx] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# safetensors (own reader/writer: bf16 support without torch)
# --------------------------------------------------------------------------------------------

_ST_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
_ST_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1}


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bits, round to nearest even (NaN stays NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    rounded = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


class SafeTensorsFile:
    """Lazy reader of one .safetensors file (memory-mapped; one tensor at a time)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", None)
        self.header = header
        self.data_start = 8 + n
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")

    def keys(self):
        return list(self.header.keys())

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def shape(self, name: str) -> list[int]:
        return list(self.header[name]["shape"])

    def raw(self, name: str) -> np.ndarray:
        info = self.header[name]
        dt = info["dtype"]
        if dt not in _ST_NP:
            raise ValueError(f"{self.path}: tensor {name}: unsupported dtype {dt}")
        a, b = info["data_offsets"]
        buf = self._mm[self.data_start + a: self.data_start + b]
        return buf.view(_ST_NP[dt]).reshape(info["shape"])

    def get_f32(self, name: str) -> np.ndarray:
        dt = self.dtype(name)
        raw = self.raw(name)
        if dt == "BF16":
            return bf16_bits_to_f32(raw)
        return np.asarray(raw, dtype=np.float32)


class SafeTensorsDir:
    """All *.safetensors shards of a HF folder as one name -> tensor map."""

    def __init__(self, hf_dir: Path):
        files = sorted(Path(hf_dir).glob("*.safetensors"))
        if not files:
            raise SystemExit(f"error: no *.safetensors file in {hf_dir}")
        self.files = [SafeTensorsFile(p) for p in files]
        self.where = {}
        for f in self.files:
            for k in f.keys():
                self.where[k] = f

    def __contains__(self, name):
        return name in self.where

    def get_f32(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise SystemExit(f"error: tensor {name!r} missing from the checkpoint")
        return self.where[name].get_f32(name)


def write_safetensors(path: Path, specs, produce, dtype: str = "F32") -> None:
    """Stream tensors into a safetensors file.

    specs: list of (name, shape) in file order; produce(name, shape) -> float32 array, called
    one tensor at a time so a 1.1B-parameter file never sits in memory at once.
    dtype: "F32" or "BF16" (round to nearest even).
    """
    elem = _ST_SIZE[dtype]
    header = {}
    off = 0
    for name, shape in specs:
        n = int(np.prod(shape)) * elem
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape in specs:
            arr = np.asarray(produce(name, shape), dtype=np.float32)
            assert list(arr.shape) == list(shape), (name, arr.shape, shape)
            if dtype == "BF16":
                f.write(f32_to_bf16_bits(arr).tobytes())
            elif dtype == "F32":
                f.write(np.ascontiguousarray(arr).tobytes())
            else:
                raise ValueError(dtype)
            del arr
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# int4 quantization (MatMulNBits: symmetric Q4_0 style, or asymmetric with zero points)
# --------------------------------------------------------------------------------------------

# The linear layers by kind: per layer the fused q/k/v matmul, o, the fused gate/up matmul and
# down, then the output head. A fused matmul is one MatMulNBits node, so its parts (q, k, v or
# gate, up) share one format.
MATRIX_KINDS = ("qkv", "o", "gate_up", "down", "lm_head")
BLOCK_SIZES = (32, 64, 128)
# absmax: the block's largest magnitude (symmetric) or its min/max (zero points) sets the scale.
# search: the scale (and zero point) of least squared error, see search_scales.
ROUNDINGS = ("absmax", "search")
# The default int4 layout (fetch-model.sh, run.sh, bench.sh and every export without
# --block-size/--zero-points/--quant), KIND=BLOCK[:zp] per kind as --quant reads it: chosen by
# BENCHMARKS.md "int4 quality" (not worse than llama.cpp's Q4_0, the most weights at block
# 128, the faster kernel): 89% of the weights at block 128; q/k/v, the kind most sensitive to
# block 128, stays at 32.
DEFAULT_QUANT = "qkv=32,o=128,gate_up=128,down=128,lm_head=128"
DEFAULT_ROUNDING = "search"


@dataclass(frozen=True)
class KindFormat:
    """One kind's int4 format: block size along K, and zero points (asymmetric) or not."""
    block_size: int
    zero_points: bool

    def spec(self) -> str:
        return f"{self.block_size}:zp" if self.zero_points else str(self.block_size)


@dataclass(frozen=True)
class Quantization:
    """How an int4 export quantizes its linear layers: a format per matrix kind (every kind of
    MATRIX_KINDS), the MatMulNBits accuracy level and the rounding rule; keep_native: the kinds
    whose weights, where they come quantized, keep their own blocks where MatMulNBits can hold
    them (see Linear)."""
    formats: tuple  # (kind, KindFormat) pairs in MATRIX_KINDS order
    accuracy_level: int = 4
    rounding: str = DEFAULT_ROUNDING
    keep_native: tuple = ()

    def of(self, kind: str) -> KindFormat:
        return dict(self.formats)[kind]

    def spec(self) -> str:
        """The formats as --quant writes them (KIND=BLOCK[:zp],...)."""
        return ",".join(f"{k}={f.spec()}" for k, f in self.formats)

    def manifest(self) -> dict:
        """manifest.json's "quantization" entry."""
        out = {"op": "com.microsoft.MatMulNBits", "bits": 4,
               "accuracy_level": self.accuracy_level, "rounding": self.rounding,
               "kinds": {k: {"block_size": f.block_size, "symmetric": not f.zero_points}
                         for k, f in self.formats}}
        if self.keep_native:
            out["keep_native"] = list(self.keep_native)
        return out


def parse_quant_spec(spec: str) -> dict:
    """--quant's KIND=BLOCK[:zp|:sym],... -> {kind: KindFormat} for the kinds it names.
    Raises ValueError naming the bad item."""
    out = {}
    for item in spec.split(","):
        kind, eq, fmt = item.strip().partition("=")
        if not eq or kind not in MATRIX_KINDS:
            raise ValueError(f"{item!r}: expected KIND=BLOCK[:zp], KIND one of {', '.join(MATRIX_KINDS)}")
        block, _, sym = fmt.partition(":")
        if not block.isdigit() or int(block) not in BLOCK_SIZES or sym not in ("", "zp", "sym"):
            raise ValueError(f"{item!r}: expected {kind}=BLOCK or {kind}=BLOCK:zp, BLOCK one of "
                             f"{', '.join(map(str, BLOCK_SIZES))}")
        if kind in out:
            raise ValueError(f"{item!r}: {kind} is given twice")
        out[kind] = KindFormat(int(block), sym == "zp")
    return out


def quantization(precision: str, block_size: int | None = None, zero_points: bool = False,
                 quant: str | None = None, accuracy_level: int = 4,
                 rounding: str = DEFAULT_ROUNDING) -> Quantization | None:
    """The exporter's options as one Quantization (None for fp32). Without block_size and
    zero_points every kind starts from DEFAULT_QUANT; with either, every kind gets block_size
    (default 32) and zero_points; `quant` (KIND=BLOCK[:zp],...) then sets the kinds it names."""
    if precision == "fp32":
        return None
    if block_size is None and not zero_points:
        formats = parse_quant_spec(DEFAULT_QUANT)
    else:
        formats = {k: KindFormat(block_size or 32, zero_points) for k in MATRIX_KINDS}
    formats.update(parse_quant_spec(quant) if quant else {})
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    return Quantization(tuple((k, formats[k]) for k in MATRIX_KINDS), accuracy_level, rounding)


def split_blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """float32 [N, n_blocks, block_size]: each row's K elements in blocks, the last one
    zero-padded when K is not a multiple of block_size."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = (k + block_size - 1) // block_size
    if nb * block_size != k:
        w = np.pad(w, ((0, 0), (0, nb * block_size - k)))
    return w.reshape(n, nb, block_size)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """4-bit values (uint8) -> two per byte along the last axis, the even one in the low nibble."""
    return np.ascontiguousarray((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8))


def quantize_q4(w: np.ndarray, block_size: int, rounding: str = "absmax"):
    """Quantize an HF linear weight [N, K] (out, in) for com.microsoft.MatMulNBits.

    Per block of `block_size` consecutive K elements of a row: m = the value of largest
    magnitude, d = m / -8, q = clip(round(w / d) + 8, 0, 15); zero point is the default 8.
    rounding "search": d is the scale of least squared error instead (search_scales).
    Returns (B uint8 [N, n_blocks, block_size/2] with the even element in the low nibble,
             scales float32 [N * n_blocks]).
    """
    blocks = split_blocks(w, block_size)
    idx = np.abs(blocks).argmax(axis=2)
    m = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    d = (m / np.float32(-8.0)).astype(np.float32)
    zp = np.full(d.shape, 8, dtype=np.uint8)
    if rounding == "search":
        q, d, _ = search_scales(blocks, lambda f: (d * np.float32(f), zp))
    else:
        q = q4_codes(blocks, d, zp)
    return pack_nibbles(q), np.ascontiguousarray(d.reshape(-1))


def q4_codes(blocks: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """uint8 codes clip(round(w / scale) + zp, 0, 15) of blocks [N, nb, B] (0 where scale is 0)."""
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv[..., None]) + zp[..., None]
    return np.clip(q, 0, 15).astype(np.uint8)


# search_scales' candidates: the absmax (or min/max) scale times each of these factors. Finer or
# wider grids (0.5-1.05 in 32 steps, a zero point +-1, re-rounding after the fit) lowered the
# error of Gaussian blocks by less than 0.1% more (BENCHMARKS.md "int4 quality").
SEARCH_FACTORS = np.linspace(0.7, 1.0, 16, dtype=np.float32)
SEARCH_ROWS = 256  # rows per chunk: keeps the candidates' temporaries small


def search_scales(blocks: np.ndarray, candidate):
    """Error-minimizing int4 rounding, per block (llama.cpp's make_qx_quants idea): for each
    factor f of SEARCH_FACTORS, candidate(f) gives (scale, zero point) per block; the codes
    q = clip(round(w / scale) + zp, 0, 15) are then fitted by least squares,
    d = sum(w * (q - zp)) / sum((q - zp)^2), and each block keeps the candidate whose
    (q - zp) * d is closest to w. Factor 1 is the plain absmax (min/max) rule and the fit only
    lowers a candidate's error, so no block gets worse than with rounding "absmax".
    Returns (codes uint8 [N, nb, B], scales float32 [N, nb], zero points uint8 [N, nb])."""
    n, nb, _ = blocks.shape
    best = np.zeros((n, nb), dtype=np.intp)
    best_gain = np.full((n, nb), -1.0, dtype=np.float32)  # sum(w^2) - squared error, >= 0
    for i, f in enumerate(SEARCH_FACTORS):
        scale, zp = candidate(f)
        for r0 in range(0, n, SEARCH_ROWS):
            rows = slice(r0, r0 + SEARCH_ROWS)
            x = blocks[rows]
            lv = q4_codes(x, scale[rows], zp[rows]).astype(np.float32) - zp[rows][..., None]
            xl = np.einsum("nbk,nbk->nb", x, lv)
            ll = np.einsum("nbk,nbk->nb", lv, lv)
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = np.where(ll > 0, xl * xl / ll, 0.0)
            better = gain > best_gain[rows]
            best_gain[rows] = np.where(better, gain, best_gain[rows])
            best[rows] = np.where(better, i, best[rows])
    q = np.empty(blocks.shape, dtype=np.uint8)
    d = np.empty((n, nb), dtype=np.float32)
    z = np.empty((n, nb), dtype=np.uint8)
    for i, f in enumerate(SEARCH_FACTORS):
        sel = best == i
        if not sel.any():
            continue
        scale, zp = candidate(f)
        x, zs = blocks[sel], zp[sel]
        qi = q4_codes(x[None], scale[sel][None], zs[None])[0]
        lv = qi.astype(np.float32) - zs[:, None]
        ll = (lv * lv).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d[sel] = np.where(ll > 0, (x * lv).sum(-1) / ll, 0.0)
        q[sel], z[sel] = qi, zs
    return q, d, z


def dequantize_q4(packed: np.ndarray, scales: np.ndarray, k: int,
                  zero_points: np.ndarray | None = None) -> np.ndarray:
    """Inverse of quantize_q4 (or, with zero_points, of quantize_q4_asym): float32 [N, K]."""
    n, nb, half = packed.shape
    q = np.empty((n, nb, half * 2), dtype=np.float32)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    if zero_points is None:
        zp = np.float32(8.0)
    else:
        zp = unpack_zero_points(zero_points, nb).astype(np.float32)[..., None]
    w = (q - zp) * scales.reshape(n, nb, 1)
    return w.reshape(n, nb * half * 2)[:, :k]


def quantize_q4_asym(w: np.ndarray, block_size: int, rounding: str = "absmax"):
    """Asymmetric int4 (min/max per block, with a zero point) for MatMulNBits' zero_points.

    Per block of `block_size` consecutive K elements of a row, with lo = min(min(w), 0) and
    hi = max(max(w), 0) (the range always holds 0, so the zero point fits in 4 bits):
    scale = (hi - lo) / 15, zp = clip(round(-lo / scale), 0, 15),
    q = clip(round(w / scale) + zp, 0, 15); ONNX Runtime dequantizes (q - zp) * scale.
    Every value is then within scale / 2 of its dequantized value. rounding "search": the
    scale of least squared error instead (search_scales), over ranges shrunk about the block's
    centre (the zero point follows).
    Returns (B uint8 [N, n_blocks, block_size/2] packed as in quantize_q4,
             scales float32 [N * n_blocks],
             zero_points uint8 [N, ceil(n_blocks / 2)]: the contrib-op contract's packed
             layout, two 4-bit zero points per byte along a row, block 2j in the low nibble,
             2j+1 in the high one; an odd row count pads the last high nibble with 8).
    """
    blocks = split_blocks(w, block_size)
    lo = np.minimum(blocks.min(axis=2), np.float32(0.0))
    hi = np.maximum(blocks.max(axis=2), np.float32(0.0))
    full = ((hi - lo) / np.float32(15.0)).astype(np.float32)

    def candidate(f):
        """Scale f * (hi - lo) / 15 and the zero point that centres it on the block's range."""
        scale = (full * np.float32(f)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            centre = np.where(scale != 0, (lo + hi) / (2 * scale), 0.0)
        return scale, np.clip(np.rint(np.float32(7.5) - centre), 0, 15).astype(np.uint8)

    if rounding == "search":
        q, scale, zp = search_scales(blocks, candidate)
    else:
        scale = full
        with np.errstate(divide="ignore"):
            inv = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
        zp = np.clip(np.rint(-lo * inv), 0, 15).astype(np.uint8)
        q = q4_codes(blocks, scale, zp)
    return pack_nibbles(q), np.ascontiguousarray(scale.reshape(-1)), pack_zero_points(zp)


def pack_zero_points(zp: np.ndarray) -> np.ndarray:
    """uint8 [N, n_blocks] of 4-bit values -> uint8 [N, ceil(n_blocks / 2)], low nibble first."""
    n, nb = zp.shape
    if nb % 2:
        zp = np.concatenate([zp, np.full((n, 1), 8, dtype=np.uint8)], axis=1)
    return pack_nibbles(zp)


def unpack_zero_points(packed: np.ndarray, n_blocks: int) -> np.ndarray:
    """Inverse of pack_zero_points: uint8 [N, n_blocks]."""
    packed = np.asarray(packed, dtype=np.uint8)
    packed = packed.reshape(packed.shape[0], -1)
    zp = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    zp[:, 0::2] = packed & 0x0F
    zp[:, 1::2] = packed >> 4
    return zp[:, :n_blocks]


# --------------------------------------------------------------------------------------------
# Graph building
# --------------------------------------------------------------------------------------------

class GraphBuilder:
    """Accumulates nodes/initializers; big initializers stream straight into model.onnx.data."""

    def __init__(self, data_path: Path | None):
        from onnx import helper  # noqa: F401
        self.nodes = []
        self.inits = []
        self.counter = 0
        self.data_path = data_path
        self.data_file = open(data_path, "wb") if data_path else None
        self.data_off = 0
        self.op_counts = {}

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import TensorProto, numpy_helper
        arr = np.ascontiguousarray(arr)
        if self.data_file is not None and arr.nbytes >= EXTERNAL_MIN_BYTES:
            pad = (-self.data_off) % EXTERNAL_ALIGN
            if pad:
                self.data_file.write(b"\0" * pad)
                self.data_off += pad
            t = TensorProto()
            t.name = name
            t.data_type = {np.dtype(np.float32): TensorProto.FLOAT,
                           np.dtype(np.uint8): TensorProto.UINT8,
                           np.dtype(np.int64): TensorProto.INT64}[arr.dtype]
            t.dims.extend(arr.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", self.data_path.name), ("offset", str(self.data_off)),
                         ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.data_file.write(arr.tobytes())
            self.data_off += arr.nbytes
        else:
            t = numpy_helper.from_array(arr, name)
        self.inits.append(t)
        return name

    def const_i64(self, values, base="c") -> str:
        return self.init(self.name(base), np.asarray(values, dtype=np.int64))

    def const_f32(self, value, base="cf") -> str:
        return self.init(self.name(base), np.asarray(value, dtype=np.float32))

    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", name=None, **attrs):
        from onnx import helper
        nm = name or self.name(op_type)
        outs = [f"{nm}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=nm,
                                           domain=domain or None, **attrs))
        self.op_counts[op_type] = self.op_counts.get(op_type, 0) + 1
        return outs[0] if n_out == 1 else outs

    def close(self):
        if self.data_file is not None:
            self.data_file.close()
            self.data_file = None


class Linear:
    """Emits one linear layer (int4 MatMulNBits or, with quant None, fp32 MatMul).

    Several HF weights that read the same input (q/k/v, gate/up) can be fused into one node:
    their rows are concatenated, so the output is the concatenation of the separate outputs.
    Quantization is per output row (blocks run along K), so quantizing the concatenated
    matrix gives exactly the blocks, scales, zero points and codes of quantizing each weight
    alone. The node's name says its matrix kind (KIND_OF_NAME), hence its int4 format.

    For the kinds of quant.keep_native, weights that arrive already quantized (a GGUF's
    blocks, see gguf_import.GGUFWeights.native) keep their own codes and scales where every
    part of the node has a MatMulNBits form of the same width (4 bits, else 8); the others are
    quantized to the kind's format. `encodings` counts the nodes by what they got, for the
    manifest.
    """

    def __init__(self, g: GraphBuilder, quant: Quantization | None, weights):
        self.g, self.quant, self.weights = g, quant, weights
        self.encodings: dict[str, int] = {}

    def __call__(self, x: str, names, name: str) -> str:
        g = self.g
        names = [names] if isinstance(names, str) else list(names)
        if self.quant is not None and kind_of(name) in self.quant.keep_native:
            native = self.native(names)
            if native is not None:
                return self.emit(x, name, native)
        w = np.concatenate([self.weights.get_f32(n) for n in names], axis=0)
        if self.quant is None:
            wt = g.init(f"{name}.weight_t", np.ascontiguousarray(w.T.astype(np.float32)))
            return g.op("MatMul", [x, wt], name=f"{name}/MatMul")
        fmt = self.quant.of(kind_of(name))
        if fmt.zero_points:
            packed, scales, zp = quantize_q4_asym(w, fmt.block_size, self.quant.rounding)
        else:
            (packed, scales), zp = quantize_q4(w, fmt.block_size, self.quant.rounding), None
        self.record(name, names, f"int4 block {fmt.block_size}"
                    + (" with zero points" if fmt.zero_points else "") + ", quantized here")
        return self.node(x, name, packed, scales, zp, w.shape[1], 4, fmt.block_size)

    def native(self, names) -> "NativeBlocks | None":
        """The parts' own blocks at the narrowest width they all have, concatenated."""
        source = getattr(self.weights, "native", None)
        if source is None:
            return None
        for bits in (4, 8):
            parts = [source(n, bits) for n in names]
            if all(p is not None for p in parts) and len({p.block_size for p in parts}) == 1:
                return NativeBlocks.concat(parts)
        return None

    def emit(self, x: str, name: str, b: "NativeBlocks") -> str:
        n, k = b.codes.shape
        blocks = b.codes.reshape(n, -1, b.block_size)
        packed = pack_nibbles(blocks) if b.bits == 4 else np.ascontiguousarray(blocks)
        zp = None
        if b.zero_points is not None:
            zp = pack_zero_points(b.zero_points) if b.bits == 4 else b.zero_points
        self.record(name, [], f"{b.bits}-bit block {b.block_size}, "
                    + ("the file's own codes and scales" if b.exact else b.note), b.sources)
        return self.node(x, name, packed, b.scales.reshape(-1), zp, k, b.bits, b.block_size)

    def node(self, x, name, packed, scales, zp, k, bits, block_size) -> str:
        g = self.g
        inputs = [x, g.init(f"{name}.qweight", packed), g.init(f"{name}.scales", scales)]
        if zp is not None:
            inputs.append(g.init(f"{name}.zero_points", zp))
        return g.op("MatMulNBits", inputs, domain=MS_DOMAIN, name=f"{name}/MatMulNBits",
                    K=k, N=packed.shape[0], bits=bits, block_size=block_size,
                    accuracy_level=self.quant.accuracy_level)

    def record(self, name: str, names, encoding: str, sources=()) -> None:
        """Counts nodes per (kind, encoding, source types) for the manifest."""
        types = sorted(set(sources) or {getattr(self.weights, "type_name", lambda _: "float")(n)
                                        for n in names})
        key = f"{kind_of(name)}: {encoding} ({'+'.join(types)})"
        self.encodings[key] = self.encodings.get(key, 0) + 1


@dataclass
class NativeBlocks:
    """A weight's own quantized blocks in MatMulNBits form: codes [N, K] (one value each),
    scales [N, K / block_size], zero points [N, K / block_size] or None (the default
    2^(bits-1)). `exact`: dequantizing gives the source's values bit for bit; otherwise `note`
    says what differs."""
    bits: int
    block_size: int
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    exact: bool
    note: str
    sources: tuple

    @staticmethod
    def concat(parts: list) -> "NativeBlocks":
        if len(parts) == 1:
            return parts[0]
        bits = parts[0].bits
        zps = None
        if any(p.zero_points is not None for p in parts):
            zps = np.concatenate([p.zero_points if p.zero_points is not None
                                  else np.full(p.scales.shape, 1 << (bits - 1), np.uint8)
                                  for p in parts])
        inexact = [p.note for p in parts if not p.exact]
        return NativeBlocks(bits, parts[0].block_size,
                            np.concatenate([p.codes for p in parts]),
                            np.concatenate([p.scales for p in parts]), zps,
                            not inexact, inexact[0] if inexact else "",
                            tuple(sorted({s for p in parts for s in p.sources})))


# A linear layer's node name ends with one of these; Linear reads its kind from it.
KIND_OF_NAME = {"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "gate_up",
                "down_proj": "down", "lm_head": "lm_head"}


def kind_of(name: str) -> str:
    """The matrix kind (MATRIX_KINDS) of a linear layer named like model.layers.0.mlp.down_proj."""
    kind = KIND_OF_NAME.get(name.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(f"linear layer {name!r} is of no known kind ({', '.join(KIND_OF_NAME)})")
    return kind


def rope_tables(cfg: dict, head_dim: int):
    theta = float(cfg.get("rope_theta", 10000.0))
    if cfg.get("rope_scaling"):
        raise SystemExit(f"error: rope_scaling={cfg['rope_scaling']!r} is not supported")
    max_pos = int(cfg["max_position_embeddings"])
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(max_pos, dtype=np.float64), inv)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def model_dims(cfg: dict) -> dict:
    h = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    kvh = int(cfg.get("num_key_value_heads", nh))
    hd = int(cfg.get("head_dim") or h // nh)
    return dict(layers=int(cfg["num_hidden_layers"]), hidden=h, inter=int(cfg["intermediate_size"]),
                heads=nh, kv_heads=kvh, head_dim=hd, vocab=int(cfg["vocab_size"]),
                eps=float(cfg.get("rms_norm_eps", 1e-6)),
                max_pos=int(cfg["max_position_embeddings"]))


def build_decoder(cfg: dict, weights: SafeTensorsDir, out_dir: Path, quant: Quantization | None,
                  attention: str = "packed", prefill_lanes: int = DEFAULT_PREFILL_LANES) -> dict:
    """Write out_dir/model.onnx (+ model.onnx.data) for a Llama decoder with past. Returns
    Linear.encodings (how each kind's nodes were quantized).

    On a small CPU a decode step is dominated by per-node dispatch overhead outside the int4
    matmuls, so the graph is built from as few nodes as the contract allows, using the fused
    ONNX Runtime ops directly instead of hoping the optimizer finds them:
      - RMSNorm + residual add: (Skip)SimplifiedLayerNormalization, one node per norm;
      - q/k/v and gate/up: one MatMulNBits each (rows concatenated, see Linear), then Split;
      - RoPE: com.microsoft.RotaryEmbedding on [B, heads, S, hd] with the caller's
        position_ids (so left padding keeps working);
      - attention "explicit" (the optimum contract, left padding): MatMul / Where / Softmax /
        MatMul over Concat(past, new). Per layer: 4 matmuls + 20 other nodes.
      - attention "packed": every row's tokens in one sequence (see PACKED_CONTRACT); per
        layer one com.microsoft.GroupQueryAttention over the decoding rows (their q|k|v
        gathered from the packed matmul output) and one per prefill lane (a slice of it),
        RoPE inside (do_rotary), per-row lengths (seqlens_k) instead of a mask, past and
        present bound to one slot buffer by the caller; their outputs concatenated and put
        back in packed order by one Gather. lm_head runs only on logits_index.
      - attention "slots": packed tokens too (see SLOTS_CONTRACT), with one
        ai.trendstory.SlotAttention per layer over every row (the engine's op, RoPE inside),
        writing into the slot buffers in place.
    """
    import onnx
    from onnx import TensorProto, helper

    dm = model_dims(cfg)
    L, V, eps = dm["layers"], dm["vocab"], dm["eps"]
    nh, kvh, hd = dm["heads"], dm["kv_heads"], dm["head_dim"]
    if nh % kvh:
        raise SystemExit(f"error: num_attention_heads {nh} not a multiple of kv heads {kvh}")
    groups = nh // kvh
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise SystemExit("error: linear biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise SystemExit(f"error: hidden_act {cfg.get('hidden_act')!r} is not supported")

    g = GraphBuilder(out_dir / "model.onnx.data")
    lin = Linear(g, quant, weights)
    W = weights.get_f32

    def norm(x, delta, wname, name):
        """RMSNorm of the residual stream x (+ delta, the sublayer output not yet added).

        Returns (normed, new residual stream). With a delta this is one
        SkipSimplifiedLayerNormalization, whose 4th output is x + delta: the residual add
        costs no node of its own."""
        w = g.init(wname, W(wname).astype(np.float32))
        if delta is None:
            return g.op("SimplifiedLayerNormalization", [x, w], name=f"{name}/SimplifiedLayerNorm",
                        axis=-1, epsilon=eps, stash_type=1), x
        nm = f"{name}/SkipSimplifiedLayerNorm"
        normed, total = f"{nm}_out0", f"{nm}_sum"
        g.nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [delta, x, w], [normed, "", "", total], name=nm,
            domain=MS_DOMAIN, epsilon=eps))
        g.op_counts["SkipSimplifiedLayerNormalization"] = \
            g.op_counts.get("SkipSimplifiedLayerNormalization", 0) + 1
        return normed, total

    # Embedding (float32 Gather).
    embed = g.init("model.embed_tokens.weight", W("model.embed_tokens.weight"))
    x = g.op("Gather", [embed, "input_ids"], name="embed/Gather", axis=0)

    # RoPE caches [max_pos, hd/2]; RotaryEmbedding looks rows up by position_ids itself.
    cos_t, sin_t = rope_tables(cfg, hd)
    cos_cache = g.init("rope.cos", cos_t)
    sin_cache = g.init("rope.sin", sin_t)

    if attention == "explicit":
        mask_value = g.const_f32(MASK_VALUE, "mask_value")
        mask = attention_mask_bool(g, groups)
        shape_qkv = g.const_i64([0, 0, nh + 2 * kvh, hd], "shape_qkv")
        split_qkv = g.const_i64([nh, kvh, kvh], "split_qkv")
        shape_qg = g.const_i64([0, kvh, -1, hd], "shape_qg")
        shape_heads = g.const_i64([0, nh, -1, hd], "shape_heads")
        shape_hidden = g.const_i64([0, 0, nh * hd], "shape_hidden")
    elif attention == "packed":
        shape_rows = g.const_i64([-1, 1, (nh + 2 * kvh) * hd], "shape_rows")
        shape_packed = g.const_i64([1, -1, nh * hd], "shape_packed")
        axis_tokens = g.const_i64([1], "axis_tokens")
    split_mlp = g.const_i64([dm["inter"], dm["inter"]], "split_mlp")

    def attention_block(qkv, i, pk, pv):
        """Explicit attention of layer i on its q|k|v [B, S, (nh+2kvh)*hd]: returns
        [B, S, nh*hd]; writes present.{i}.key|value."""
        p = f"model.layers.{i}"
        # One Reshape + Transpose for all heads: [B, S, nh+2kvh, hd] -> [B, nh+2kvh, S, hd].
        heads = g.op("Transpose", [g.op("Reshape", [qkv, shape_qkv], name=f"/{p}/qkv_reshape")],
                     name=f"/{p}/qkv_t", perm=[0, 2, 1, 3])
        q, k, v = g.op("Split", [heads, split_qkv], n_out=3, name=f"/{p}/qkv_split", axis=1)
        # HF rotate_half RoPE (interleaved=0) on [B, N, S, hd], positions from the caller.
        q = g.op("RotaryEmbedding", [q, "position_ids", cos_cache, sin_cache], domain=MS_DOMAIN,
                 name=f"/{p}/q_rope", interleaved=0)
        k = g.op("RotaryEmbedding", [k, "position_ids", cos_cache, sin_cache], domain=MS_DOMAIN,
                 name=f"/{p}/k_rope", interleaved=0)
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(helper.make_node("Concat", [pk, k], [present_k], name=f"/{p}/k_cat", axis=2))
        g.nodes.append(helper.make_node("Concat", [pv, v], [present_v], name=f"/{p}/v_cat", axis=2))
        # GQA without expanding K/V: head h uses kv head h // groups, so the nh query heads
        # reshape to [B, kvh, groups*S, hd] and share one MatMul per kv head. The 1/sqrt(hd)
        # scale and K's transpose ride on FusedMatMul.
        qg = g.op("Reshape", [q, shape_qg], name=f"/{p}/q_group")
        scores = g.op("FusedMatMul", [qg, present_k], domain=MS_DOMAIN, name=f"/{p}/scores",
                      transB=1, alpha=1.0 / math.sqrt(hd))  # [B, kvh, groups*S, T]
        scores = g.op("Where", [mask, scores, mask_value], name=f"/{p}/mask")
        probs = g.op("Softmax", [scores], name=f"/{p}/softmax", axis=-1)
        ctx = g.op("MatMul", [probs, present_v], name=f"/{p}/ctx")  # [B, kvh, groups*S, hd]
        ctx = g.op("Reshape", [ctx, shape_heads], name=f"/{p}/ctx_heads")  # [B, nh, S, hd]
        ctx = g.op("Transpose", [ctx], name=f"/{p}/ctx_t", perm=[0, 2, 1, 3])
        return g.op("Reshape", [ctx, shape_hidden], name=f"/{p}/ctx_merge")  # [B, S, H]

    def gqa_node(qkv, i, pk, pv, seqlens, total, out, present):
        """One GroupQueryAttention of layer i on a packed q|k|v input (Linear concatenates the
        q, k, v rows in that order, which is GQA's packed layout)."""
        g.nodes.append(helper.make_node(
            "GroupQueryAttention",
            [qkv, "", "", pk, pv, seqlens, total, cos_cache, sin_cache],
            [out, *present], name=out.removesuffix("_out"), domain=MS_DOMAIN,
            num_heads=nh, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0,
            scale=1.0 / math.sqrt(hd)))
        g.op_counts["GroupQueryAttention"] = g.op_counts.get("GroupQueryAttention", 0) + 1

    def packed_attention(qkv, i, pk, pv):
        """Layer i's attention over the packed tokens' q|k|v [1, T, (nh+2kvh)*hd]: the
        decoding rows' tokens (gathered, one per slot row) in one GroupQueryAttention over the
        whole slot buffer, each prefill lane's chunk (a slice) in a batch-1 one over its row's
        slot; the outputs concatenated and gathered back into packed order."""
        p = f"model.layers.{i}"
        rows = g.op("Gather", [qkv, "decode_rows"], name=f"/{p}/decode_gather", axis=1)
        rows = g.op("Reshape", [rows, shape_rows], name=f"/{p}/decode_rows")  # [R, 1, qkv]
        outs = [f"/{p}/decode_gqa_out"]
        gqa_node(rows, i, pk, pv, "decode_seqlens_k", "decode_total", outs[0],
                 [f"present.{i}.key", f"present.{i}.value"])
        outs[0] = g.op("Reshape", [outs[0], shape_packed], name=f"/{p}/decode_out")  # [1, R, H]
        for k in range(prefill_lanes):
            chunk = g.op("Slice", [qkv, f"lane.{k}.start", f"lane.{k}.end", axis_tokens],
                         name=f"/{p}/lane{k}_slice")
            out = f"/{p}/lane{k}_gqa_out"
            gqa_node(chunk, i, f"lane.{k}.past.{i}.key", f"lane.{k}.past.{i}.value",
                     f"lane.{k}.seqlens_k", f"lane.{k}.total", out,
                     [f"lane.{k}.present.{i}.key", f"lane.{k}.present.{i}.value"])
            outs.append(out)
        ctx = g.op("Concat", outs, name=f"/{p}/attn_concat", axis=1)
        return g.op("Gather", [ctx, "attn_order"], name=f"/{p}/attn_order", axis=1)

    def slot_attention(qkv, i, pk, pv):
        """Layer i's attention over the packed tokens' q|k|v, every row in one node of the
        engine's (SLOTS_CONTRACT), which writes the rows' new keys and values into pk, pv."""
        return g.op("SlotAttention", [qkv, "rows", cos_cache, sin_cache, pk, pv],
                    domain=TRENDSTORY_DOMAIN, name=f"/model.layers.{i}/slot_attention",
                    num_heads=nh, kv_num_heads=kvh, scale=1.0 / math.sqrt(hd))

    def self_attention(h, i, pk, pv):
        """Self-attention of layer i on the normed input h: q|k|v in one matmul (q, k, v rows
        in that order), the contract's attention, o_proj."""
        p = f"model.layers.{i}"
        qkv = lin(h, [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"], f"{p}.self_attn.qkv_proj")
        ctx = attend(qkv, i, pk, pv)
        return lin(ctx, f"{p}.self_attn.o_proj.weight", f"{p}.self_attn.o_proj")

    def mlp(h, i):
        """SwiGLU MLP: down(silu(gate(h)) * up(h)), gate and up as one matmul."""
        p = f"model.layers.{i}"
        gate_up = lin(h, [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                      f"{p}.mlp.gate_up_proj")
        gate, up = g.op("Split", [gate_up, split_mlp], n_out=2, name=f"/{p}/mlp/split", axis=-1)
        act = g.op("QuickGelu", [gate], domain=MS_DOMAIN, name=f"/{p}/mlp/silu", alpha=1.0)
        return lin(g.op("Mul", [act, up], name=f"/{p}/mlp/mul"),
                   f"{p}.mlp.down_proj.weight", f"{p}.mlp.down_proj")

    def value(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, shape)

    kv_shape = lambda batch, length: [batch, kvh, length, hd]  # noqa: E731
    if attention == "explicit":
        inputs = [
            value("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            value("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
            value("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        ]
        outputs = [value("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", V])]
        attend = attention_block
        past_shape = kv_shape("batch_size", "past_sequence_length")
        present_shape = kv_shape("batch_size", "total_sequence_length")
    elif attention == "packed":
        i64, i32 = TensorProto.INT64, TensorProto.INT32
        inputs = [
            value("input_ids", i64, [1, "tokens"]),
            value("decode_rows", i64, ["rows"]),
            value("decode_seqlens_k", i32, ["rows"]),
            value("decode_total", i32, []),
        ]
        for k in range(prefill_lanes):
            inputs += [value(f"lane.{k}.start", i64, [1]), value(f"lane.{k}.end", i64, [1]),
                       value(f"lane.{k}.seqlens_k", i32, [1]), value(f"lane.{k}.total", i32, [])]
        inputs += [value("attn_order", i64, ["tokens"]),
                   value("logits_index", i64, ["logit_positions"])]
        outputs = [value("logits", TensorProto.FLOAT, [1, "logit_positions", V])]
        attend = packed_attention
        past_shape = present_shape = kv_shape("rows", "capacity")
    else:
        inputs = [value("input_ids", TensorProto.INT64, [1, "tokens"]),
                  value("rows", TensorProto.INT64, ["rows", 4]),
                  value("logits_index", TensorProto.INT64, ["logit_positions"])]
        outputs = [value("logits", TensorProto.FLOAT, [1, "logit_positions", V])]
        attend = slot_attention
        past_shape = kv_shape("slots", "capacity")
    present_outputs, lane_kv_inputs, lane_kv_outputs = [], [], []

    delta = None  # the last sublayer's output, added to x by the next norm
    for i in range(L):
        p = f"model.layers.{i}"
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for kv in ("key", "value"):
            inputs.append(value(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, past_shape))
            if attention != "slots":  # SlotAttention writes into the past in place
                present_outputs.append(value(f"present.{i}.{kv}", TensorProto.FLOAT, present_shape))
            if attention == "packed":
                for k in range(prefill_lanes):
                    lane = kv_shape(1, f"lane_capacity_{k}")
                    lane_kv_inputs.append(value(f"lane.{k}.past.{i}.{kv}", TensorProto.FLOAT, lane))
                    lane_kv_outputs.append(value(f"lane.{k}.present.{i}.{kv}", TensorProto.FLOAT,
                                                 lane))
        h, x = norm(x, delta, f"{p}.input_layernorm.weight", f"/{p}/input_layernorm")
        delta = self_attention(h, i, pk, pv)
        h, x = norm(x, delta, f"{p}.post_attention_layernorm.weight", f"/{p}/post_attention_layernorm")
        delta = mlp(h, i)
        log(f"  layer {i + 1}/{L} done")
    inputs += lane_kv_inputs

    x, _ = norm(x, delta, "model.norm.weight", "/model/norm")
    if attention != "explicit":
        x = g.op("Gather", [x, "logits_index"], name="/model/logits_gather", axis=1)
    logits = lin(x, lm_head_name(cfg, weights), "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    g.close()

    graph = helper.make_graph(g.nodes, "trendstory_llama", inputs,
                              outputs + present_outputs + lane_kv_outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    if attention == "slots":
        opsets.append(helper.make_opsetid(TRENDSTORY_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="trendstory-export_onnx",
                              producer_version=str(EXPORTER_VERSION))
    model.ir_version = 8
    onnx.save_model(model, str(out_dir / "model.onnx"))
    return lin.encodings


def attention_mask_bool(g: GraphBuilder, groups: int) -> str:
    """Boolean mask [B, 1, groups*S, T]: causal (key j <= past + i) AND attention_mask[b, j].

    Built once per step from the input shapes and shared by all layers. Query rows are laid out
    [group, S] per kv head (see attention()), hence the Tile over groups."""
    from onnx import TensorProto
    zero = g.const_i64(0, "zero")
    one = g.const_i64(1, "one")
    ids_shape = g.op("Shape", ["input_ids"], name="mask/ids_shape")
    s_len = g.op("Gather", [ids_shape, one], name="mask/S", axis=0)
    am_shape = g.op("Shape", ["attention_mask"], name="mask/am_shape")
    t_len = g.op("Gather", [am_shape, one], name="mask/T", axis=0)
    past_len = g.op("Sub", [t_len, s_len], name="mask/past")
    q_pos = g.op("Range", [past_len, g.op("Add", [past_len, s_len], name="mask/end"), one],
                 name="mask/q_pos")
    k_pos = g.op("Range", [zero, t_len, one], name="mask/k_pos")
    q_col = g.op("Unsqueeze", [q_pos, g.const_i64([1], "axes_q")], name="mask/q_col")  # [S,1]
    k_row = g.op("Unsqueeze", [k_pos, g.const_i64([0], "axes_k")], name="mask/k_row")  # [1,T]
    causal = g.op("LessOrEqual", [k_row, q_col], name="mask/causal")  # [S, T]
    pad = g.op("Cast", ["attention_mask"], name="mask/pad_bool", to=TensorProto.BOOL)
    pad = g.op("Unsqueeze", [pad, g.const_i64([1, 2], "axes12")], name="mask/pad")  # [B,1,1,T]
    mask = g.op("And", [causal, pad], name="mask/and")  # [B, 1, S, T]
    if groups > 1:
        mask = g.op("Tile", [mask, g.const_i64([1, 1, groups, 1], "tile")], name="mask/tile")
    return mask


def lm_head_name(cfg: dict, weights: SafeTensorsDir) -> str:
    if "lm_head.weight" in weights:
        return "lm_head.weight"
    if not cfg.get("tie_word_embeddings", False):
        raise SystemExit("error: lm_head.weight missing and tie_word_embeddings is false")
    return "model.embed_tokens.weight"


def build_linear_only(cfg: dict, weights: SafeTensorsDir, out_dir: Path,
                      quant: Quantization) -> dict:
    """Benchmark baseline: exactly the decoder's int4 MatMulNBits nodes, nothing else.

    Per layer the same fused matmuls as build_decoder: qkv, o, gate_up, down. Only shape glue
    in between: qkv's first H columns (Split) feed o; gate * up (Split, Mul) feeds down.
    """
    import onnx
    from onnx import TensorProto, helper

    dm = model_dims(cfg)
    L, H, V = dm["layers"], dm["hidden"], dm["vocab"]
    kv_dim = dm["kv_heads"] * dm["head_dim"]
    g = GraphBuilder(out_dir / "model.onnx.data")
    lin = Linear(g, quant, weights)
    split_qkv = g.const_i64([H, 2 * kv_dim], "split_qkv")
    split_mlp = g.const_i64([dm["inter"], dm["inter"]], "split_mlp")
    x = "x"
    for i in range(L):
        p = f"model.layers.{i}"
        qkv = lin(x, [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"], f"{p}.self_attn.qkv_proj")
        q, _ = g.op("Split", [qkv, split_qkv], n_out=2, name=f"/{p}/qkv_split", axis=-1)
        a = lin(q, f"{p}.self_attn.o_proj.weight", f"{p}.self_attn.o_proj")
        gate_up = lin(a, [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                      f"{p}.mlp.gate_up_proj")
        gt, up = g.op("Split", [gate_up, split_mlp], n_out=2, name=f"/{p}/mlp/split", axis=-1)
        x = lin(g.op("Mul", [gt, up], name=f"/{p}/gu"), f"{p}.mlp.down_proj.weight",
                f"{p}.mlp.down_proj")
    logits = lin(x, lm_head_name(cfg, weights), "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    g.close()
    graph = helper.make_graph(
        g.nodes, "trendstory_linear_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "sequence_length", H])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", V])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="trendstory-export_onnx")
    model.ir_version = 8
    onnx.save_model(model, str(out_dir / "model.onnx"))
    return lin.encodings


# --------------------------------------------------------------------------------------------
# Tokenizer for the tiny preset
# --------------------------------------------------------------------------------------------

TINY_VOCAB_SIZE = 1024
SPECIALS = ["<unk>", "<s>", "</s>"]


def train_tiny_tokenizer(corpus: Path = TOKENIZER_CORPUS, vocab_size: int = TINY_VOCAB_SIZE) -> str:
    """Train a small byte-fallback BPE on the corpus, laid out like Llama 2's tokenizer.json.

    ids 0..2 = <unk> <s> </s> (special), 3..258 = <0x00>..<0xFF> (ordinary vocab entries, so
    decoding keeps them), then the learned symbols. Deterministic for a given corpus.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Train word by word ("▁word" pieces), like SentencePiece, so merges never span words.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=SPECIALS,
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(tok.to_str())
    tvocab = trained["model"]["vocab"]
    merges = trained["model"]["merges"]

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for sym, _ in sorted(tvocab.items(), key=lambda kv: kv[1]):
        if sym not in vocab:
            vocab[sym] = len(vocab)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    text = json.dumps(spec, ensure_ascii=False, indent=1)
    Tokenizer.from_str(text)  # validate
    return text


def tiny_tokenizer_config() -> dict:
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    return {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
            "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 512,
            "tokenizer_class": "LlamaTokenizer", "chat_template": CHAT_TEMPLATE}


# --------------------------------------------------------------------------------------------
# Random-init checkpoints
# --------------------------------------------------------------------------------------------

def tensor_specs(cfg: dict):
    dm = model_dims(cfg)
    H, I, V = dm["hidden"], dm["inter"], dm["vocab"]
    q_out, kv_out = dm["heads"] * dm["head_dim"], dm["kv_heads"] * dm["head_dim"]
    specs = [("model.embed_tokens.weight", (V, H))]
    for i in range(dm["layers"]):
        p = f"model.layers.{i}"
        specs += [(f"{p}.self_attn.q_proj.weight", (q_out, H)),
                  (f"{p}.self_attn.k_proj.weight", (kv_out, H)),
                  (f"{p}.self_attn.v_proj.weight", (kv_out, H)),
                  (f"{p}.self_attn.o_proj.weight", (H, q_out)),
                  (f"{p}.mlp.gate_proj.weight", (I, H)),
                  (f"{p}.mlp.up_proj.weight", (I, H)),
                  (f"{p}.mlp.down_proj.weight", (H, I)),
                  (f"{p}.input_layernorm.weight", (H,)),
                  (f"{p}.post_attention_layernorm.weight", (H,))]
    specs += [("model.norm.weight", (H,))]
    if not cfg.get("tie_word_embeddings", False):
        specs += [("lm_head.weight", (V, H))]
    return specs


# Tiny preset init. A plain random model has near-tied logits: for ANY hidden state h, the
# logits <w_v, h> of a Gaussian lm_head are iid Gaussian over the vocabulary, so the top-1/top-2
# gap is ~exponential with mean ~0.27 std and falls under 0.05 std at ~17% of steps; no init
# *scale* changes that ratio. Different kernel orders (KV cache vs recompute, padded batches,
# int8 activation blocks of accuracy_level 4) then flip greedy ids. So the tiny model gets a
# structured lm_head: row pi(t) = TINY_LM_ALIGN * embed[t] + noise (pi a fixed random
# permutation), with embeddings (std TINY_EMBED_STD) a large share of the residual stream while
# the layers (std TINY_LINEAR_STD, large enough that attention and MLP shift the logits
# visibly) add the rest. The next token is then decided by a clear spike, and golden.json's
# min_top2_margin (checked > 0.05 * logit std) says by how much. Tuned on seeds 0-1 with both
# tokenizers: linear std 0.06 gives min margins of 3-4.4 logit std (1,024 and 32,000 vocab);
# at 0.08 the 32,000-vocab model already drops to ~0.02 std, at 0.1+ it is a plain random
# model (margins ~0.001 std). The price: greedy ids follow the last token almost always
# (a permuted bigram), so context shows in the logit values (top1_logits in golden.json) more
# than in the ids.
TINY_EMBED_STD = 1.0
TINY_LINEAR_STD = 0.06
TINY_LM_ALIGN = 1.0
TINY_LM_NOISE_STD = 0.3


def random_init_producer(cfg: dict, preset: str, seed: int):
    """Returns produce(name, shape) -> float32 array (deterministic per name and seed)."""
    V, H = int(cfg["vocab_size"]), int(cfg["hidden_size"])
    perm = np.random.default_rng([seed, 7]).permutation(V)
    cache = {}

    def rng_for(name):
        h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        return np.random.default_rng([seed, h])

    def normal(name, shape, std):
        return rng_for(name).standard_normal(shape, dtype=np.float32) * np.float32(std)

    def produce(name, shape):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            return np.ones(shape, dtype=np.float32)
        if preset != "tiny":
            return normal(name, shape, float(cfg.get("initializer_range", 0.02)))
        if name == "model.embed_tokens.weight":
            e = normal(name, shape, TINY_EMBED_STD)
            cache["embed"] = e
            return e
        if name == "lm_head.weight":
            e = cache.get("embed")
            if e is None:
                e = normal("model.embed_tokens.weight", (V, H), TINY_EMBED_STD)
            lm = np.empty((V, H), dtype=np.float32)
            lm[perm] = e * np.float32(TINY_LM_ALIGN / TINY_EMBED_STD)
            return lm + normal(name, shape, TINY_LM_NOISE_STD)
        return normal(name, shape, TINY_LINEAR_STD)

    return produce


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": TINY_LINEAR_STD,
    "intermediate_size": 384,
    "max_position_embeddings": 512,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": None,
}


# Written into a --random-init checkpoint folder; its presence marks the weights as random.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def write_random_hf(preset: str, hf_dir: Path, dtype: str, seed: int, tokenizer_dir: Path | None):
    """Write a normal HF folder (config, model.safetensors, tokenizer files) with random weights."""
    hf_dir.mkdir(parents=True, exist_ok=True)
    if preset == "tinyllama":
        if not (SHARED_TINYLLAMA_CONFIG / "config.json").exists():
            raise SystemExit(
                f"error: {SHARED_TINYLLAMA_CONFIG}/config.json not found: the tinyllama preset "
                f"copies TinyLlama's config.json and the Llama 2 tokenizer from ../shared/models "
                f"(beside the repo). Use scripts/fetch-model.sh with internet, or --preset tiny.")
        tokenizer_dir = tokenizer_dir or SHARED_LLAMA2_TOKENIZER
        cfg = json.loads((SHARED_TINYLLAMA_CONFIG / "config.json").read_text())
        shutil.copyfile(SHARED_TINYLLAMA_CONFIG / "generation_config.json",
                        hf_dir / "generation_config.json")
    else:
        cfg = dict(TINY_CONFIG)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not (tokenizer_dir / "tokenizer.json").exists():
            raise SystemExit(f"error: {tokenizer_dir}/tokenizer.json not found")
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
            if (tokenizer_dir / f).exists():
                shutil.copyfile(tokenizer_dir / f, hf_dir / f)
    else:
        (hf_dir / "tokenizer.json").write_text(train_tiny_tokenizer(), encoding="utf-8")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(tiny_tokenizer_config(), indent=2))
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    if preset == "tiny":
        cfg["vocab_size"] = vocab
        cfg["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
        (hf_dir / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "max_length": cfg["max_position_embeddings"],
             "pad_token_id": 0}, indent=2))
    elif vocab != cfg["vocab_size"]:
        raise SystemExit(f"error: tokenizer has {vocab} tokens, config says {cfg['vocab_size']}")
    cfg["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    (hf_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    t0 = time.time()
    write_safetensors(hf_dir / "model.safetensors", tensor_specs(cfg),
                      random_init_producer(cfg, preset, seed),
                      dtype="BF16" if dtype == "bf16" else "F32")
    log(f"wrote {hf_dir}/model.safetensors ({dtype}) in {time.time() - t0:.1f}s")
    # Marks the checkpoint as noise, so a later --hf-dir export of it still says so.
    (hf_dir / RANDOM_WEIGHTS_MARKER).write_text(
        f"random-init:{preset} seed {seed}: random weights, every generated text is noise\n")
    return cfg


# --------------------------------------------------------------------------------------------
# Golden outputs (greedy, full recomputation)
# --------------------------------------------------------------------------------------------

def make_session(model_path: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def run_full(sess, cfg: dict, ids_2d: np.ndarray, mask_2d: np.ndarray | None = None,
             position_ids: np.ndarray | None = None) -> np.ndarray:
    """One forward pass with an empty past: returns logits [B, S, V]."""
    dm = model_dims(cfg)
    ids_2d = np.asarray(ids_2d, dtype=np.int64)
    b, s = ids_2d.shape
    if mask_2d is None:
        mask_2d = np.ones((b, s), dtype=np.int64)
    if position_ids is None:
        position_ids = np.clip(np.cumsum(mask_2d, axis=1) - 1, 0, None).astype(np.int64)
    names = {i.name for i in sess.get_inputs()}
    if "decode_rows" in names:
        # Packed contract: each row alone, its whole sequence in lane 0 over an empty past.
        if not np.all(mask_2d == 1):
            raise ValueError("a packed graph takes whole rows, not a mask")
        return np.concatenate([run_packed_row(sess, dm, names, row) for row in ids_2d])
    feed = {"input_ids": ids_2d, "attention_mask": np.asarray(mask_2d, dtype=np.int64),
            "position_ids": position_ids}
    empty = np.zeros((b, dm["kv_heads"], 0, dm["head_dim"]), dtype=np.float32)
    for i in range(dm["layers"]):
        feed[f"past_key_values.{i}.key"] = empty
        feed[f"past_key_values.{i}.value"] = empty
    return sess.run(["logits"], feed)[0]


def packed_lanes(input_names) -> int:
    """The number of prefill lanes a packed graph has."""
    return sum(1 for n in input_names if n.startswith("lane.") and n.endswith(".start"))


def run_packed_row(sess, dm: dict, names, ids: np.ndarray) -> np.ndarray:
    """One row through a packed graph with an empty past: lane 0 takes all its tokens (over a
    fresh slot of exactly that length), the decode node and the other lanes one dummy token
    over scratch slots. Returns logits [1, S, V] of every position."""
    s = len(ids)
    i32 = lambda v: np.asarray(v, dtype=np.int32)  # noqa: E731
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    feed = {"input_ids": i64([ids]), "decode_rows": i64([0]), "decode_seqlens_k": i32([0]),
            "decode_total": i32(1), "attn_order": i64(1 + np.arange(s)),
            "logits_index": i64(np.arange(s))}
    scratch = np.zeros((1, dm["kv_heads"], 1, dm["head_dim"]), dtype=np.float32)
    for k in range(packed_lanes(names)):
        start, end, total = (0, s, s) if k == 0 else (0, 1, 1)
        feed.update({f"lane.{k}.start": i64([start]), f"lane.{k}.end": i64([end]),
                     f"lane.{k}.seqlens_k": i32([total - 1]), f"lane.{k}.total": i32(total)})
        past = np.zeros((1, dm["kv_heads"], s, dm["head_dim"]), np.float32) if k == 0 else scratch
        for i in range(dm["layers"]):
            for kv in ("key", "value"):
                feed[f"lane.{k}.past.{i}.{kv}"] = past
    for i in range(dm["layers"]):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.{kv}"] = scratch
    return sess.run(["logits"], feed)[0]


def greedy_full_recompute(sess, cfg: dict, input_ids: list[int], max_new: int, eos: int):
    """Greedy decode re-running the whole sequence each step (no KV cache).

    Returns (output_ids, per-step top-2 margins, per-step logit std, per-step top-1 logit)."""
    seq = list(input_ids)
    out, margins, stds, tops = [], [], [], []
    for _ in range(max_new):
        logits = run_full(sess, cfg, np.array([seq]))[0, -1].astype(np.float64)
        order = np.argsort(-logits, kind="stable")
        nxt = int(order[0])
        margins.append(float(logits[order[0]] - logits[order[1]]))
        stds.append(float(logits.std()))
        tops.append(float(logits[order[0]]))
        out.append(nxt)
        seq.append(nxt)
        if nxt == eos:
            break
    return out, margins, stds, tops


def write_golden(out_dir: Path, cfg: dict, max_new: int, threads: int = 1) -> dict:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    sess = make_session(out_dir / "model.onnx", threads)
    eos = int(cfg.get("eos_token_id", 2))
    prompts, all_margins, rel = [], [], []
    for text in GOLDEN_PROMPTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        t0 = time.time()
        out, margins, stds, tops = greedy_full_recompute(sess, cfg, ids, max_new, eos)
        all_margins += margins
        rel += [m / s for m, s in zip(margins, stds)]
        prompts.append({"text": text, "input_ids": ids, "output_ids": out,
                        "top1_logits": [round(t, 4) for t in tops],
                        "top2_margins": [round(m, 4) for m in margins]})
        log(f"  golden: {len(ids)} prompt tokens -> {out} ({time.time() - t0:.1f}s)")
    golden = {"max_new_tokens": max_new, "eos_token_id": eos,
              "min_top2_margin": round(min(all_margins), 6),
              "min_top2_margin_over_logit_std": round(min(rel), 6),
              "prompts": prompts}
    (out_dir / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1))
    return golden


# --------------------------------------------------------------------------------------------
# Export driver
# --------------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def export_matches(out_dir: Path, exporter_args: list[str]) -> bool:
    """Whether out_dir/manifest.json records the graph these exporter arguments ask for: the
    quantization (--precision, --block-size, --zero-points, --quant, --rounding,
    --accuracy-level; exports from before --quant recorded no per-kind formats) and the
    attention (--attention, --prefill-lanes; exports from before --attention had the explicit
    one, and the old batched "gqa" one, are redone). Other arguments are ignored. For the shell
    scripts that skip an export already done: a different request, or an older export than the
    defaults ask for, means re-exporting."""
    try:
        man = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    a = parse_args(["--hf-dir", "-", "--out", "-", *exporter_args])
    quant = quantization_of_args(a)
    same_graph = man.get("linear_only", False) or (
        man.get("attention", "explicit") == a.attention
        and (a.attention != "packed" or man.get("prefill_lanes") == a.prefill_lanes))
    return man.get("quantization") == (quant.manifest() if quant else None) and same_graph


def quantization_manifest(q: Quantization | None, encodings: dict) -> dict | None:
    """manifest.json's "quantization": the requested formats and, where native blocks could be
    kept, what each kind's nodes really got (Linear.encodings: node counts)."""
    if q is None:
        return None
    out = q.manifest()
    if q.keep_native:
        out["nodes"] = encodings
    return out


def quantization_of_args(args) -> Quantization | None:
    return quantization(args.precision, args.block_size, args.zero_points, args.quant,
                        args.accuracy_level, args.rounding)


def export(hf_dir: Path, out_dir: Path, *, source: str, random_weights: bool, precision: str,
           block_size: int | None, accuracy_level: int, golden_tokens: int | None,
           linear_only: bool = False, threads: int = 1, zero_points: bool = False,
           attention: str = "packed", prefill_lanes: int = DEFAULT_PREFILL_LANES,
           quant: str | None = None,
           rounding: str = DEFAULT_ROUNDING, weights=None, keep_native=(),
           name: str | None = None) -> dict:
    """Export hf_dir to out_dir. The quantization arguments mean what the command line's
    options do (see quantization(): block_size None and no zero points start from
    DEFAULT_QUANT). weights: where the tensors come from instead of hf_dir's safetensors
    (anything with get_f32(name) and `name in weights`, e.g. gguf_import.GGUFWeights);
    keep_native: the matrix kinds for which an int4 export keeps the blocks such weights
    already have where it can (Linear). name: the manifest's model name (default: out_dir's)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.exists():
        raise SystemExit(f"error: {cfg_path} not found")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type", "llama") != "llama":
        raise SystemExit(f"error: model_type {cfg.get('model_type')!r} is not llama")
    if attention not in ATTENTIONS:
        raise SystemExit(f"error: attention {attention!r} is none of {', '.join(ATTENTIONS)}")
    dm = model_dims(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # incomplete until rewritten at the end
    for stale in ("golden.json", "model.onnx", "model.onnx.data"):
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()
    if (zero_points or quant) and precision != "int4":
        raise SystemExit("error: zero points and --quant are for int4 exports only")
    try:
        q = quantization(precision, block_size, zero_points, quant, accuracy_level, rounding)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if q is not None and keep_native:
        q = replace(q, keep_native=tuple(k for k in MATRIX_KINDS if k in keep_native))
    name = name or out_dir.name
    weights = weights if weights is not None else SafeTensorsDir(hf_dir)
    t0 = time.time()
    if linear_only:
        encodings = build_linear_only(cfg, weights, out_dir, q)
        manifest = {"name": name, "source": source, "random_weights": random_weights,
                    "linear_only": True, "precision": "int4",
                    "quantization": quantization_manifest(q, encodings),
                    "inputs": {"x": ["batch_size", "sequence_length", dm["hidden"]]},
                    "outputs": {"logits": ["batch_size", "sequence_length", dm["vocab"]]},
                    "num_hidden_layers": dm["layers"], "hidden_size": dm["hidden"],
                    "intermediate_size": dm["inter"], "num_attention_heads": dm["heads"],
                    "num_key_value_heads": dm["kv_heads"], "head_dim": dm["head_dim"],
                    "vocab_size": dm["vocab"],
                    "files": {f: sha256_file(out_dir / f) for f in ("model.onnx", "model.onnx.data")},
                    "exporter_version": EXPORTER_VERSION}
        manifest_path.write_text(json.dumps(manifest, indent=2))
        log(f"linear-only graph written to {out_dir} in {time.time() - t0:.1f}s")
        return manifest

    encodings = build_decoder(cfg, weights, out_dir, q, attention, prefill_lanes)
    log(f"graph written to {out_dir}/model.onnx in {time.time() - t0:.1f}s")
    if not (hf_dir / "tokenizer.json").exists():
        raise SystemExit(f"error: {hf_dir}/tokenizer.json not found")
    if hf_dir.resolve() != out_dir.resolve():
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "special_tokens_map.json"):
            if (hf_dir / f).exists():
                shutil.copyfile(hf_dir / f, out_dir / f)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if golden_tokens and attention == "slots":
        log("golden.json skipped: ONNX Runtime here cannot run the engine's SlotAttention (the "
            "engine's tests hold a slots graph to the packed graph of the same weights)")
    elif golden_tokens:
        t1 = time.time()
        golden = write_golden(out_dir, cfg, golden_tokens, threads)
        log(f"golden.json written in {time.time() - t1:.1f}s (min top-2 margin "
            f"{golden['min_top2_margin']:.4f}, {golden['min_top2_margin_over_logit_std']:.4f} std)")
    files = ["model.onnx", "model.onnx.data", "tokenizer.json", "config.json"]
    for extra in ("tokenizer_config.json", "golden.json"):
        if (out_dir / extra).exists():
            files.append(extra)
    manifest = {
        "name": name,
        "source": source,
        "random_weights": random_weights,
        "precision": precision,
        "attention": attention,
        **({"prefill_lanes": prefill_lanes} if attention == "packed" else {}),
        "quantization": quantization_manifest(q, encodings),
        "num_hidden_layers": dm["layers"],
        "hidden_size": dm["hidden"],
        "intermediate_size": dm["inter"],
        "num_attention_heads": dm["heads"],
        "num_key_value_heads": dm["kv_heads"],
        "head_dim": dm["head_dim"],
        "vocab_size": dm["vocab"],
        "max_position_embeddings": dm["max_pos"],
        "rms_norm_eps": dm["eps"],
        "rope_theta": float(cfg.get("rope_theta", 10000.0)),
        "bos_token_id": int(cfg.get("bos_token_id", 1)),
        "eos_token_id": int(cfg.get("eos_token_id", 2)),
        "opset": OPSET,
        "files": {f: sha256_file(out_dir / f) for f in files},
        "exporter_version": EXPORTER_VERSION,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log(f"export complete: {out_dir} ({time.time() - t0:.1f}s)")
    return manifest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-dir", type=Path, help="existing Hugging Face Llama folder to export")
    src.add_argument("--random-init", action="store_true", help="random weights (needs --preset)")
    ap.add_argument("--preset", choices=["tiny", "tinyllama"], help="model shape for --random-init")
    ap.add_argument("--out", type=Path, help="output folder (default onnx/tiny, onnx/tinyllama-bench)")
    ap.add_argument("--source", help="manifest 'source' override (e.g. hub:TinyLlama/...)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder for --random-init (tokenizer.json)")
    ap.add_argument("--dtype", choices=["bf16", "f32"], help="safetensors dtype for --random-init "
                    "(default: bf16 for tinyllama, f32 for tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["int4", "fp32"], default="int4")
    ap.add_argument("--block-size", type=int, choices=BLOCK_SIZES,
                    help="int4 block size of every matrix kind (default: the per-kind mix "
                    f"{DEFAULT_QUANT})")
    ap.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4)
    ap.add_argument("--attention", choices=ATTENTIONS, default=ATTENTIONS[0],
                    help="packed: every row's tokens in one pass, fused GroupQueryAttention over "
                         "a slot KV cache (PACKED_CONTRACT); explicit: the optimum "
                         "decoder-with-past contract (attention_mask, left padding); slots: the "
                         "packed pass with the engine's own SlotAttention, for TrendStory's "
                         "engine only (SLOTS_CONTRACT)")
    ap.add_argument("--prefill-lanes", type=int, default=DEFAULT_PREFILL_LANES,
                    help="packed graphs: prompts that can advance in one pass beside the "
                         f"decoding rows (default {DEFAULT_PREFILL_LANES})")
    ap.add_argument("--zero-points", action="store_true",
                    help="asymmetric int4: per-block min/max scale and a 4-bit zero point "
                    "(MatMulNBits input zero_points; manifest quantization.kinds.*.symmetric "
                    "false) for every matrix kind, at --block-size (default 32). Default: "
                    "the per-kind mix")
    ap.add_argument("--quant", metavar="KIND=BLOCK[:zp],...",
                    help=f"int4 format per matrix kind ({', '.join(MATRIX_KINDS)}): block size "
                    f"({'|'.join(map(str, BLOCK_SIZES))}) and ':zp' for zero points, over the "
                    f"default mix {DEFAULT_QUANT} (or over --block-size/--zero-points when "
                    "given), e.g. --quant gate_up=128:zp,down=128:zp")
    ap.add_argument("--rounding", choices=ROUNDINGS, default=DEFAULT_ROUNDING,
                    help="absmax: scale from each block's largest magnitude (min/max with zero "
                    "points); search: the scale (and zero point) of least squared error per "
                    "block (default %(default)s)")
    ap.add_argument("--golden-tokens", type=int, help="greedy tokens per golden prompt "
                    "(default 16 for tiny, 8 otherwise)")
    ap.add_argument("--no-golden", action="store_true")
    ap.add_argument("--linear-only", action="store_true",
                    help="write only the int4 linear layers (benchmark baseline), to NAME-linear")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for golden runs")
    args = ap.parse_args(argv)
    if args.random_init and not args.preset:
        ap.error("--random-init needs --preset tiny|tinyllama")
    if args.hf_dir and not args.out:
        ap.error("--hf-dir needs --out")
    if args.linear_only and args.precision != "int4":
        ap.error("--linear-only is int4 only")
    if args.zero_points and args.precision != "int4":
        ap.error("--zero-points is int4 only")
    if not 1 <= args.prefill_lanes <= 64:
        ap.error("--prefill-lanes must be between 1 and 64")
    if args.quant:
        if args.precision != "int4":
            ap.error("--quant is int4 only")
        try:
            parse_quant_spec(args.quant)
        except ValueError as e:
            ap.error(f"--quant: {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    if args.random_init:
        default_name = {"tiny": "tiny", "tinyllama": "tinyllama-bench"}[args.preset]
        if args.linear_only:
            default_name += "-linear"
        out = args.out or (REPO_ROOT / "onnx" / default_name)
        dtype = args.dtype or ("bf16" if args.preset == "tinyllama" else "f32")
        hf_dir = out / "hf"
        # --linear-only reuses the full export's random checkpoint when it is already there.
        base_hf = REPO_ROOT / "onnx" / default_name.removesuffix("-linear") / "hf"
        if args.linear_only and args.out is None and (base_hf / "model.safetensors").exists() \
                and args.tokenizer is None and args.seed == 0 and _hf_matches(base_hf, dtype):
            hf_dir = base_hf
            log(f"reusing random checkpoint {hf_dir}")
        else:
            write_random_hf(args.preset, hf_dir, dtype, args.seed, args.tokenizer)
        source = args.source or f"random-init:{args.preset}"
        random_weights = True
        golden_default = 16 if args.preset == "tiny" else 8
    else:
        out = args.out
        hf_dir = args.hf_dir
        source = args.source or f"hf-dir:{hf_dir}"
        random_weights = (hf_dir / RANDOM_WEIGHTS_MARKER).exists()
        golden_default = 8
    golden = None if (args.no_golden or args.linear_only) else (args.golden_tokens or golden_default)
    export(hf_dir, out, source=source, random_weights=random_weights, precision=args.precision,
           block_size=args.block_size, accuracy_level=args.accuracy_level, golden_tokens=golden,
           linear_only=args.linear_only, threads=args.threads, zero_points=args.zero_points,
           attention=args.attention, prefill_lanes=args.prefill_lanes, quant=args.quant,
           rounding=args.rounding)
    log(f"done in {time.time() - t0:.1f}s")
    return 0


def _hf_matches(hf_dir: Path, dtype: str) -> bool:
    try:
        cfg = json.loads((hf_dir / "config.json").read_text())
        return cfg.get("torch_dtype") == ("bfloat16" if dtype == "bf16" else "float32")
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
