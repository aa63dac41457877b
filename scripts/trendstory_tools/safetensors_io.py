"""safetensors read and written with our own code: bfloat16 support without torch (numpy has no
bfloat16, so bf16 tensors travel as uint16 bit patterns)."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

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
