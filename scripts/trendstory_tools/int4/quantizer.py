"""int4 quantization for ONNX Runtime's com.microsoft.MatMulNBits: weights to packed codes,
scales and zero points (symmetric Q4_0 style, or asymmetric with a zero point per block;
absmax or least-squares rounding), and back. Which format each matrix kind gets is
int4/formats.py's business."""
from __future__ import annotations

import numpy as np


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
