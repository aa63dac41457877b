"""A llama.cpp GGUF file opened and checked to be complete (every tensor's data inside the
file), its metadata read by key; every problem an error naming the file and the field."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class GGUFError(Exception):
    """A problem with the file, named by path and field."""

    def __init__(self, path: Path, field: str, problem: str):
        super().__init__(f"{path}: {field}: {problem}")


MISSING = object()


class GGUFFile:
    """A GGUF file's metadata and tensors, checked to be complete."""

    def __init__(self, path: Path):
        import gguf
        self.gguf, self.path = gguf, Path(path)
        if not self.path.is_file():
            raise GGUFError(self.path, "file", "not found")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise GGUFError(self.path, "magic", f"not a GGUF file (it starts with {magic!r}, "
                            "not b'GGUF')")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # the reader fails in many ways on a cut or damaged file
            raise GGUFError(self.path, "file", "truncated or corrupt: the reader stopped "
                            f"with {type(e).__name__}: {e}") from None
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise GGUFError(self.path, f"tensor {t.name}", "truncated: its data ends at "
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
                raise GGUFError(self.path, key, "missing")
            return default
        return field.contents()

    def get_int(self, key: str, default=MISSING) -> int:
        value = self.get(key, default)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise GGUFError(self.path, key, f"expected a whole number, got {value!r}")
        return int(value)
