"""ONNX graph assembly: nodes and initializers accumulated in order, the large initializers
streamed straight into model.onnx.data (aligned, so the engine can map them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"
# Tensors at least this big go to model.onnx.data, aligned for mmap.
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 4096


class GraphBuilder:
    """Accumulates nodes/initializers; big initializers stream straight into model.onnx.data."""

    def __init__(self, data_path: Path):
        self.nodes = []
        self.inits = []
        self.counter = 0
        self.data_path = data_path
        self.data_file = open(data_path, "wb")
        self.data_off = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def init(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        if arr.nbytes >= EXTERNAL_MIN_BYTES:
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
        """A node whose outputs are named after it; returns the output (or the n_out outputs)."""
        nm = name or self.name(op_type)
        outs = [f"{nm}_out{i}" for i in range(n_out)]
        self.node(op_type, inputs, outs, nm, domain, **attrs)
        return outs[0] if n_out == 1 else outs

    def node(self, op_type: str, inputs, outputs, name: str, domain: str = "", **attrs) -> None:
        """A node with outputs named by the caller (graph outputs, skipped optional ones)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name,
                                           domain=domain or None, **attrs))

    def save(self, path: Path, graph_name: str, inputs, outputs, extra_opsets=(),
             **model_fields) -> None:
        """Closes model.onnx.data and writes the model (ONNX opset OPSET and com.microsoft's,
        plus extra_opsets: (domain, version) pairs) to path."""
        self.data_file.close()
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, initializer=self.inits)
        opsets = [helper.make_opsetid(domain, version)
                  for domain, version in (("", OPSET), (MS_DOMAIN, 1), *extra_opsets)]
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="trendstory-export_onnx", **model_fields)
        model.ir_version = 8
        onnx.save_model(model, str(path))
