"""A GGUF's tensors under their Hugging Face names: dequantized to float32, or as MatMulNBits
blocks where the block format allows (Q4_0, Q8_0 exactly, Q4_1 within a small offset), for
the exporter's Linear to keep."""
from __future__ import annotations

import numpy as np

from trendstory_tools.graph.linear import NativeBlocks
from trendstory_tools.gguf_import.gguf_file import GGUFError, GGUFFile
from trendstory_tools.llama_checkpoint import tensor_specs


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
        for hf, shape in tensor_specs(cfg):
            g = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
            t = left.pop(g, None)
            if t is None:
                raise GGUFError(f.path, f"tensor {g}", f"missing (the model's {hf})")
            got = tuple(int(x) for x in reversed(t.shape[:len(shape)]))
            if got != tuple(shape) or any(int(x) != 1 for x in t.shape[len(shape):]):
                raise GGUFError(f.path, f"tensor {g}", f"shape {list(t.shape)} (GGUF order), "
                                f"expected {list(reversed(shape))} for {hf}")
            # The gguf package's registry of block formats it can dequantize.
            if t.tensor_type.name not in ("F32", "F16") and \
                    t.tensor_type not in gguf.quants._type_traits:
                raise GGUFError(f.path, f"tensor {g}", f"type {t.tensor_type.name} cannot be "
                                "dequantized by the gguf package")
            self.tensors[hf] = t
        if left:
            raise GGUFError(f.path, "tensors", f"{sorted(left)} belong to no part of a "
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
        """The tensor's own blocks as NativeBlocks of `bits` bits (block 32), or None where
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
        return NativeBlocks(bits, 32, rows(codes.reshape(codes.shape[0], -1)), rows(d),
                            None if zp is None else rows(zp), exact, note, (kind,))
