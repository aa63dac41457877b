#!/usr/bin/env python3
"""Times ONNX Runtime's int4 MatMulNBits alone for each TinyLlama layer shape.

This is the profile behind the engine's ceiling: the decode step of the int4 model is
dominated by these matmuls, so their speed at batch 1 and 16 on the machine at hand bounds
single-stream and aggregate tokens/s. Weights are random (speed does not depend on them).

    .venv/bin/python scripts/profile_matmulnbits.py [--threads 2] [--block-size 32 128]

--forms times other weight forms of one shape (--shape K N) instead: FORMS, the ways a
GGUF's blocks can be held (scripts/gguf_import.py): 4 or 8 bits, no zero points, uint8 ones,
or float ones (what Q4_1's per-block minimum needs to be exact). A form ONNX Runtime refuses
is printed with its error.

    .venv/bin/python scripts/profile_matmulnbits.py --forms --shape 576 1536 --block-size 32
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


# --forms: name -> (bits, zero points: None, "uint8" or "float")
FORMS = {
    "4-bit, no zero points": (4, None),
    "4-bit, uint8 zero points": (4, "uint8"),
    "4-bit, float zero points": (4, "float"),
    "8-bit, no zero points": (8, None),
    "8-bit, uint8 zero points": (8, "uint8"),
    "8-bit, float zero points": (8, "float"),
}


def graph(k, n, block, accuracy_level, bits=4, zero_points=None):
    blocks = (k + block - 1) // block
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 255, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = rng.random(n * blocks, dtype=np.float32) * 0.01
    inits = [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(scales, "S")]
    if zero_points == "uint8":
        per_row = (blocks * bits + 7) // 8
        inits.append(numpy_helper.from_array(
            rng.integers(0, 255, size=(n, per_row), dtype=np.uint8), "Z"))
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(
            (rng.random(n * blocks, dtype=np.float32) * (2 ** bits - 1)), "Z"))
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "S"] + (["Z"] if zero_points else []), ["Y"],
        domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
        accuracy_level=accuracy_level)
    g = helper.make_graph(
        [node], "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 1, n])], inits)
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
    ap.add_argument("--forms", action="store_true", help="time FORMS of one --shape instead")
    ap.add_argument("--shape", type=int, nargs=2, metavar=("K", "N"), default=[576, 1536])
    args = ap.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    if args.forms:
        k, n = args.shape
        for block in args.block_size:
            for name, (bits, zp) in FORMS.items():
                try:
                    session = ort.InferenceSession(graph(k, n, block, 4, bits, zp), options,
                                                   providers=["CPUExecutionProvider"])
                except Exception as e:  # ONNX Runtime refuses the form: say why
                    print(f"block {block:>3} {k}x{n} {name:<26} refused: {str(e).splitlines()[-1][:160]}")
                    continue
                cells = [f"batch {b:>2}: {seconds_per_run(session, b, k, 200) * 1e6:8.1f} us"
                         for b in args.batches]
                print(f"block {block:>3} {k}x{n} {name:<26} " + "  ".join(cells), flush=True)
        return
    for block in args.block_size:
        totals = dict.fromkeys(args.batches, 0.0)
        for name, (k, n, count) in SHAPES.items():
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
