"""The int4 formats an export can ask for: a block size and symmetric or asymmetric (zero
points) codes per matrix kind, the --quant spelling of them, and the manifest's record of
the choice. The arithmetic that produces the codes is in int4/quantizer.py."""
from __future__ import annotations

from dataclasses import dataclass

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
