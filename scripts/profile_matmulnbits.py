#!/usr/bin/env python3
"""Times ONNX Runtime's int4 MatMulNBits alone for each TinyLlama layer shape.

This is the profile behind the engine's ceiling: the decode step of the int4 model is
dominated by these matmuls, so their speed at batch 1 and 16 on the machine at hand bounds
single-stream and aggregate tokens/s. Weights are random (speed does not depend on them).

    .venv/bin/python scripts/profile_matmulnbits.py [--threads 2] [--block-size 32 128]
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HIDDEN, INTERMEDIATE, KV, VOCAB, LAYERS = 2048, 5632, 256, 32000, 22
# name: (K, N, matmuls of this shape per token)
SHAPES = {
    "q, o 2048x2048": (HIDDEN, HIDDEN, 2 * LAYERS),
    "k, v 2048x256": (HIDDEN, KV, 2 * LAYERS),
    "gate, up 2048x5632": (HIDDEN, INTERMEDIATE, 2 * LAYERS),
    "down 5632x2048": (INTERMEDIATE, HIDDEN, LAYERS),
    "lm_head 2048x32000": (HIDDEN, VOCAB, 1),
}


def graph(k, n, block, accuracy_level):
    blocks = (k + block - 1) // block
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 255, size=(n, blocks, block // 2), dtype=np.uint8)
    scales = rng.random(n * blocks, dtype=np.float32) * 0.01
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level)
    g = helper.make_graph(
        [node], "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1, n])],
        [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(scales, "S")])
    model = helper.make_model(g, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def seconds_per_run(session, batch, k, runs=20):
    a = np.random.rand(batch, 1, k).astype(np.float32)
    for _ in range(3):
        session.run(None, {"A": a})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"A": a})
    return (time.perf_counter() - start) / runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    for block in args.block_size:
        totals = dict.fromkeys(args.batches, 0.0)
        for name, (k, n, count) in SHAPES.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(graph(k, n, block, 4), options, providers=["CPUExecutionProvider"])
            cells = []
            for batch in args.batches:
                t = seconds_per_run(session, batch, k)
                totals[batch] += t * count
                cells.append(f"batch {batch:>2}: {t * 1e3:7.3f} ms {2 * batch * k * n / t / 1e9:5.0f} GFLOP/s")
            print(f"block {block:>3} {name:<20} " + "  ".join(cells), flush=True)
        summary = ", ".join(
            f"batch {b}: {t * 1e3:.1f} ms/step = {b / t:.1f} tokens/s at most" for b, t in totals.items())
        print(f"block {block:>3} all matmuls of one decode step: {summary}")


if __name__ == "__main__":
    main()
