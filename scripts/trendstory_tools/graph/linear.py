"""Linear layers as graph nodes: int4 MatMulNBits (quantized here, or a source's own blocks
kept) or fp32 MatMul, fused where several weights read the same input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trendstory_tools.graph.builder import MS_DOMAIN, GraphBuilder
from trendstory_tools.int4.formats import Quantization
from trendstory_tools.int4.quantizer import (
    pack_nibbles, pack_zero_points, quantize_q4, quantize_q4_asym)


class Linear:
    """Emits one linear layer (int4 MatMulNBits or, with quant None, fp32 MatMul).

    Several HF weights that read the same input (q/k/v, gate/up) can be fused into one node:
    their rows are concatenated, so the output is the concatenation of the separate outputs.
    Quantization is per output row (blocks run along K), so quantizing the concatenated
    matrix gives exactly the blocks, scales, zero points and codes of quantizing each weight
    alone. The node's name says its matrix kind (KIND_OF_NAME), hence its int4 format.

    For the kinds of quant.keep_native, weights that arrive already quantized (a GGUF's
    blocks, see gguf/weights.py, GGUFWeights.native) keep their own codes and scales where every
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
