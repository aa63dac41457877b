"""Progress lines on stderr, each tagged with the tool that writes it ("[export_onnx] ...")."""
from __future__ import annotations

import sys


def log(msg: str, tool: str = "export_onnx") -> None:
    print(f"[{tool}] {msg}", file=sys.stderr, flush=True)
