"""Tests of scripts/export_onnx.py: graph contract, int4 layout, masks, KV cache, golden ids.

Run: .venv/bin/python -m pytest -q tests/python
"""
import contextlib
import io
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from tokenizers import Tokenizer

from conftest import REPO, build_tiny, export_matches
from trendstory_tools.cli.export_onnx import main as export_onnx_main
from trendstory_tools.digests import sha256_file
from trendstory_tools.export import export
from trendstory_tools.export_options import parse_args, quantization_of_args
from trendstory_tools.golden import greedy_full_recompute, make_session, run_full
from trendstory_tools.graph.linear import kind_of
from trendstory_tools.int4.formats import (
    DEFAULT_QUANT, DEFAULT_ROUNDING, KindFormat, parse_quant_spec, quantization)
from trendstory_tools.int4.quantizer import (
    dequantize_q4, quantize_q4, quantize_q4_asym, split_blocks, unpack_zero_points)
from trendstory_tools.llama_checkpoint import model_dims, rope_tables
from trendstory_tools.paths import SHARED_LLAMA2_TOKENIZER
from trendstory_tools.random_init import RANDOM_WEIGHTS_MARKER
from trendstory_tools.safetensors_io import (
    round_to_bf16, SafeTensorsDir, SafeTensorsFile, write_safetensors)
from trendstory_tools.tiny_tokenizer import train_tiny_tokenizer

TINY = dict(layers=2, hidden=128, inter=384, heads=4, kv_heads=2, head_dim=32)
KINDS = ("qkv", "o", "gate_up", "down", "lm_head")  # the exporter's matrix kinds


def cfg_of(d):
    return json.loads((d / "config.json").read_text())


def dims(vi):
    return [x.dim_param if x.dim_param else x.dim_value for x in vi.type.tensor_type.shape.dim]


def empty_past(cfg, b=1):
    dm = model_dims(cfg)
    z = np.zeros((b, dm["kv_heads"], 0, dm["head_dim"]), np.float32)
    return {f"past_key_values.{i}.{kv}": z for i in range(dm["layers"]) for kv in ("key", "value")}


def run_with_past(sess, cfg, ids, mask, pos, past):
    feed = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
            "position_ids": np.asarray(pos, np.int64), **past}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed)))
    dm = model_dims(cfg)
    present = {f"past_key_values.{i}.{kv}": out[f"present.{i}.{kv}"]
               for i in range(dm["layers"]) for kv in ("key", "value")}
    return out["logits"], present


def encode(d, text):
    return Tokenizer.from_file(str(d / "tokenizer.json")).encode(text).ids


# ---------------------------------------------------------------------------------------------
# Graph contract
# ---------------------------------------------------------------------------------------------

def test_graph_contract(tiny_int4):
    m = onnx.load(str(tiny_int4 / "model.onnx"), load_external_data=False)
    cfg = cfg_of(tiny_int4)
    V = cfg["vocab_size"]
    ins = {i.name: i for i in m.graph.input}
    outs = {o.name: o for o in m.graph.output}
    expected_in = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert [i.name for i in m.graph.input] == expected_in
    assert [o.name for o in m.graph.output] == ["logits"] + [
        f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    for n in ("input_ids", "position_ids"):
        assert ins[n].type.tensor_type.elem_type == TensorProto.INT64
        assert dims(ins[n]) == ["batch_size", "sequence_length"]
    assert ins["attention_mask"].type.tensor_type.elem_type == TensorProto.INT64
    assert dims(ins["attention_mask"]) == ["batch_size", "total_sequence_length"]
    for i in range(2):
        for kv in ("key", "value"):
            p = ins[f"past_key_values.{i}.{kv}"]
            assert p.type.tensor_type.elem_type == TensorProto.FLOAT
            assert dims(p) == ["batch_size", 2, "past_sequence_length", 32]
            q = outs[f"present.{i}.{kv}"]
            assert q.type.tensor_type.elem_type == TensorProto.FLOAT
            assert dims(q) == ["batch_size", 2, "total_sequence_length", 32]
    assert outs["logits"].type.tensor_type.elem_type == TensorProto.FLOAT
    assert dims(outs["logits"]) == ["batch_size", "sequence_length", V]
    opsets = {o.domain: o.version for o in m.opset_import}
    assert opsets[""] >= 17 and opsets["com.microsoft"] == 1
    mm = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    # per layer: fused qkv, o, fused gate_up, down; then lm_head
    assert sorted(n.name for n in mm if "layers.0." in n.name) == [
        f"model.layers.0.{x}/MatMulNBits" for x in
        ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj")]
    assert len(mm) == 2 * 4 + 1
    # per-node dispatch dominates a CPU decode step outside the matmuls: each layer is
    # 4 matmuls + 20 fused/attention nodes (RMSNorm, RoPE, residual adds are single nodes)
    layer0 = [n for n in m.graph.node if "layers.0." in n.name or n.name.startswith("/model.layers.0/")]
    assert len(layer0) == 24, sorted(n.op_type for n in layer0)
    assert {n.op_type for n in m.graph.node} >= {"SkipSimplifiedLayerNormalization", "RotaryEmbedding"}
    assert all(n.domain == "com.microsoft" for n in mm)
    assert not any(n.op_type == "MatMul" and "proj" in n.name for n in m.graph.node)
    for n in mm:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        assert a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 4
        assert len(n.input) == 3  # no zero_points: symmetric, default zero point 8
    # every initializer of size >= 1 KiB lives in the one external data file
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            assert {e.key: e.value for e in t.external_data}["location"] == "model.onnx.data"


def test_manifest(tiny_int4):
    man = json.loads((tiny_int4 / "manifest.json").read_text())
    cfg = cfg_of(tiny_int4)
    assert man["source"] == "random-init:tiny" and man["random_weights"] is True
    assert man["precision"] == "int4"
    assert man["quantization"] == {
        "op": "com.microsoft.MatMulNBits", "bits": 4, "accuracy_level": 4, "rounding": "absmax",
        "kinds": {k: {"block_size": 32, "symmetric": True}
                  for k in ("qkv", "o", "gate_up", "down", "lm_head")}}
    assert man["num_hidden_layers"] == 2 and man["hidden_size"] == 128
    assert man["intermediate_size"] == 384 and man["num_attention_heads"] == 4
    assert man["num_key_value_heads"] == 2 and man["head_dim"] == 32
    assert man["vocab_size"] == cfg["vocab_size"] == 1024
    assert man["max_position_embeddings"] == 512
    assert man["bos_token_id"] == 1 and man["eos_token_id"] == 2
    assert man["exporter_version"] == 2
    for f, digest in man["files"].items():
        assert sha256_file(tiny_int4 / f) == digest, f
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "config.json"} <= set(man["files"])


def test_session_runs_prompt(tiny_int4):
    cfg = cfg_of(tiny_int4)
    sess = make_session(tiny_int4 / "model.onnx")
    ids = encode(tiny_int4, "The weather today is sunny")
    S = len(ids)
    logits, present = run_with_past(sess, cfg, [ids], np.ones((1, S)), [list(range(S))],
                                    empty_past(cfg))
    assert logits.shape == (1, S, cfg["vocab_size"])
    assert np.isfinite(logits).all()
    for v in present.values():
        assert v.shape == (1, 2, S, 32)


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

def test_int4_dequantized_weights_match_checkpoint(tiny_int4):
    m = onnx.load(str(tiny_int4 / "model.onnx"))  # loads model.onnx.data too
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    st = SafeTensorsDir(tiny_int4 / "hf")
    # fused nodes: HF weights whose rows are concatenated into one MatMulNBits
    fused = {}
    for i in range(2):
        p = f"model.layers.{i}"
        fused[f"{p}.self_attn.qkv_proj"] = [f"{p}.self_attn.{x}_proj.weight" for x in "qkv"]
        fused[f"{p}.self_attn.o_proj"] = [f"{p}.self_attn.o_proj.weight"]
        fused[f"{p}.mlp.gate_up_proj"] = [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"]
        fused[f"{p}.mlp.down_proj"] = [f"{p}.mlp.down_proj.weight"]
    fused["lm_head"] = ["lm_head.weight"]
    names = sorted(n for parts in fused.values() for n in parts)
    assert names == sorted([n for n in st.where if n.endswith("_proj.weight")] + ["lm_head.weight"])
    assert len(names) == 15
    within_half = total = 0
    for base, parts in fused.items():
        w = np.concatenate([st.get_f32(x) for x in parts], axis=0)
        packed, scales = inits[f"{base}.qweight"], inits[f"{base}.scales"]
        n, k = w.shape
        # fusing is exact: the rows of each part quantize alone to the same nibbles/scales
        row = 0
        for part in parts:
            pw = st.get_f32(part)
            pp, ps = quantize_q4(pw, 32)
            np.testing.assert_array_equal(packed[row:row + len(pw)], pp)
            np.testing.assert_array_equal(scales[row * (k // 32):(row + len(pw)) * (k // 32)], ps)
            row += len(pw)
        assert packed.dtype == np.uint8 and packed.shape == (n, k // 32, 16)
        assert scales.dtype == np.float32 and scales.shape == (n * k // 32,)
        # unpack by hand (low nibble = even element): independent of dequantize_q4
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, k // 32, 32).astype(np.float32)
        d = scales.reshape(n, k // 32, 1)
        deq = ((q - 8.0) * d).reshape(n, k)
        np.testing.assert_array_equal(deq, dequantize_q4(packed, scales, k))
        err = np.abs(w - deq).reshape(n, k // 32, 32)
        assert (err <= np.abs(d) * 1.0001 + 1e-12).all(), base
        within_half += int((err <= np.abs(d) / 2 * 1.0001 + 1e-12).sum())
        total += err.size
        # the largest-magnitude value of each block is exact (q = 0)
        blocks = w.reshape(n, k // 32, 32)
        idx = np.abs(blocks).argmax(-1)
        np.testing.assert_allclose(np.take_along_axis(deq.reshape(n, k // 32, 32), idx[..., None], -1),
                                   np.take_along_axis(blocks, idx[..., None], -1), rtol=1e-6)
    assert within_half / total > 0.95


def test_matmulnbits_matches_numpy_reference():
    """One MatMulNBits node (accuracy_level 0) == x @ dequant(W).T; also block_size 128."""
    import onnxruntime as ort
    from onnx import helper
    rng = np.random.default_rng(3)
    for block in (32, 128):
        n, k = 48, 256
        w = rng.standard_normal((n, k)).astype(np.float32)
        packed, scales = quantize_q4(w, block)
        assert packed.shape == (n, k // block, block // 2)
        node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft",
                                K=k, N=n, bits=4, block_size=block, accuracy_level=0)
        g = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])],
                              [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((2, 3, k)).astype(np.float32)
        y = sess.run(None, {"x": x})[0]
        ref = x @ dequantize_q4(packed, scales, k).T
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Asymmetric int4 (--zero-points)
# ---------------------------------------------------------------------------------------------

def matmulnbits_session(packed, scales, zero_points, n, k, block, accuracy_level=0):
    """An ORT session of one MatMulNBits node y = x @ dequant(B).T, x float32 [2, 3, K]."""
    import onnxruntime as ort
    from onnx import helper
    names = ["x", "B", "S"] + (["Z"] if zero_points is not None else [])
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "Z"))
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=accuracy_level)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("block,k", [(32, 256), (32, 96), (128, 384), (128, 640)])
def test_asymmetric_q4_small_matrix(block, k):
    """quantize_q4_asym: error <= scale/2, the packed zero-point layout ONNX Runtime reads
    (checked by hand and by one MatMulNBits node), and a real gain on off-centre blocks."""
    rng = np.random.default_rng(block + k)
    n = 24
    # rows with an offset: their blocks sit off zero, where a zero point pays off
    w = (rng.standard_normal((n, k)) + rng.uniform(-3, 3, (n, 1))).astype(np.float32)
    w[0, :block] = 0.0  # an all-zero block: scale 0, dequantizes to exact zeros
    w[1, :block] = np.linspace(0.5, 2.0, block)  # all positive: lo is clamped to 0, zp 0
    packed, scales, zp = quantize_q4_asym(w, block)
    nb = k // block
    assert packed.dtype == np.uint8 and packed.shape == (n, nb, block // 2)
    assert scales.dtype == np.float32 and scales.shape == (n * nb,)
    assert zp.dtype == np.uint8 and zp.shape == (n, (nb + 1) // 2)  # (N, ceil(k_blocks*4/8))
    # by hand: block 2j in the low nibble, 2j+1 in the high one; odd counts pad with 8
    z = np.stack([zp & 0x0F, zp >> 4], -1).reshape(n, -1)
    if nb % 2:
        assert (z[:, nb] == 8).all()
    z = z[:, :nb].astype(np.float32)
    np.testing.assert_array_equal(z, unpack_zero_points(zp, nb))
    assert z.max() <= 15 and len(np.unique(z)) > 4  # zero points really vary
    assert z[1, 0] == 0
    q = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, nb, block).astype(np.float32)
    d = scales.reshape(n, nb, 1)
    deq = ((q - z[..., None]) * d).reshape(n, k)
    np.testing.assert_array_equal(deq, dequantize_q4(packed, scales, k, zp))
    assert scales[0] == 0 and (deq[0, :block] == 0).all()
    err = np.abs(w - deq).reshape(n, nb, block)
    assert (err <= d / 2 * 1.0001 + 1e-7).all()
    # the symmetric format spends half its levels on the wrong side of an off-centre block
    ps, ss = quantize_q4(w, block)
    rms_sym = np.sqrt(((w - dequantize_q4(ps, ss, k)) ** 2).mean())
    rms_asym = np.sqrt(((w - deq) ** 2).mean())
    assert rms_asym < 0.75 * rms_sym, (rms_asym, rms_sym)
    # ONNX Runtime reads the same zero points: one node, fp32 compute (accuracy_level 0)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    ref = x @ deq.T
    y = matmulnbits_session(packed, scales, zp, n, k, block).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # ... and would not with the nibbles swapped or without them (the test can fail)
    swapped = ((zp >> 4) | (zp << 4)).astype(np.uint8)
    y_bad = matmulnbits_session(packed, scales, swapped, n, k, block).run(None, {"x": x})[0]
    assert np.abs(y_bad - ref).max() > 0.1 * np.abs(ref).max()
    # int8 activations (accuracy_level 4, the exports' default) stay close too
    y4 = matmulnbits_session(packed, scales, zp, n, k, block, 4).run(None, {"x": x})[0]
    assert np.linalg.norm(y4 - ref) / np.linalg.norm(ref) < 0.02


def test_zero_points_export_graph_and_manifest(tiny_int4_zp):
    m = onnx.load(str(tiny_int4_zp / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    mm = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(mm) == 2 * 4 + 1
    st = SafeTensorsDir(tiny_int4_zp / "hf")
    parts = {"self_attn.qkv_proj": [f"self_attn.{x}_proj" for x in "qkv"],
             "self_attn.o_proj": ["self_attn.o_proj"],
             "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj": ["mlp.down_proj"]}
    for node in mm:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        assert a["bits"] == 4 and a["block_size"] == 128 and a["accuracy_level"] == 4
        base = node.name.removesuffix("/MatMulNBits")
        assert list(node.input[1:]) == [f"{base}.qweight", f"{base}.scales", f"{base}.zero_points"]
        n, k = a["N"], a["K"]
        nb = -(-k // 128)
        zp = inits[f"{base}.zero_points"]
        assert zp.dtype == np.uint8 and zp.shape == (n, (nb + 1) // 2)
        # fused rows quantize exactly as each weight alone, zero points included
        if base == "lm_head":
            names = ["lm_head.weight"]
        else:
            layer, kind = base.rsplit(".", 2)[0], ".".join(base.rsplit(".", 2)[1:])
            names = [f"{layer}.{p}.weight" for p in parts[kind]]
        w = np.concatenate([st.get_f32(x) for x in names], axis=0)
        packed, scales, z = quantize_q4_asym(w, 128)
        np.testing.assert_array_equal(inits[f"{base}.qweight"], packed)
        np.testing.assert_array_equal(inits[f"{base}.scales"], scales)
        np.testing.assert_array_equal(zp, z)
        row = 0
        for x in names:
            pw = st.get_f32(x)
            np.testing.assert_array_equal(zp[row:row + len(pw)], quantize_q4_asym(pw, 128)[2])
            row += len(pw)
    man = json.loads((tiny_int4_zp / "manifest.json").read_text())
    assert man["quantization"]["kinds"] == {
        k: {"block_size": 128, "symmetric": False} for k in ("qkv", "o", "gate_up", "down", "lm_head")}
    for f, digest in man["files"].items():
        assert sha256_file(tiny_int4_zp / f) == digest, f


def test_zero_points_graph_matches_numpy_dequantized_reference(tmp_path):
    d = build_tiny(tmp_path / "zp_acc0", accuracy_level=0, golden=None, block_size=32,
                   zero_points=True)
    cfg = cfg_of(d)
    ids = encode(d, "Scientists found a faint comet 🚀 in late autumn.")
    got = run_full(make_session(d / "model.onnx"), cfg, np.array([ids]))[0]
    ref = numpy_forward(d / "hf", ids, dequant_block=32, zero_points=True)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # and it is not the symmetric model: the references differ by far more than that
    sym = numpy_forward(d / "hf", ids, dequant_block=32)
    assert np.abs(sym - ref).max() > 0.05 * np.abs(ref).max()


def test_zero_points_logits_close_to_fp32(tiny_int4_zp, tiny_fp32, tmp_path):
    """The --zero-points export (block 128, accuracy level 4) runs in onnxruntime and its logits
    stay close to the fp32 export's: as close as the symmetric block-128 export's, or closer."""
    import contextlib
    import io
    sym = tmp_path / "sym128"
    with contextlib.redirect_stderr(io.StringIO()):
        export(tiny_fp32 / "hf", sym, source="x", random_weights=True, precision="int4",
               block_size=128, accuracy_level=4, golden_tokens=None)
    cfg = cfg_of(tiny_int4_zp)
    ids = encode(tiny_fp32, "The tennis final lasted almost four hours under heavy rain, and the "
                 "crowd stayed until the end.")
    ref = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, np.array([ids]))[0]
    a = run_full(make_session(tiny_int4_zp / "model.onnx"), cfg, np.array([ids]))[0]
    s = run_full(make_session(sym / "model.onnx"), cfg, np.array([ids]))[0]
    assert a.shape == ref.shape and np.isfinite(a).all()
    cos = (a * ref).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert (cos > 0.98).all(), cos
    rel = np.linalg.norm(a - ref) / np.linalg.norm(ref)
    rel_sym = np.linalg.norm(s - ref) / np.linalg.norm(ref)
    assert rel < 0.2 and rel < 1.25 * rel_sym, (rel, rel_sym)
    assert (a.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_zero_points_cli(tmp_path, tiny_int4):
    import contextlib
    import io
    with pytest.raises(SystemExit):
        parse_args(["--random-init", "--preset", "tiny", "--precision", "fp32", "--zero-points"])
    assert parse_args(["--random-init", "--preset", "tiny"]).zero_points is False
    out = tmp_path / "lin_zp"
    with contextlib.redirect_stderr(io.StringIO()):
        assert export_onnx_main(["--hf-dir", str(tiny_int4 / "hf"), "--out", str(out), "--linear-only",
                                 "--zero-points", "--block-size", "128", "--rounding", "search"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["quantization"]["kinds"]["down"] == {"block_size": 128, "symmetric": False}
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert all(len(n.input) == 4 for n in m.graph.node if n.op_type == "MatMulNBits")
    # what fetch-model.sh / run.sh ask before reusing an export
    assert export_matches(out, ["--zero-points", "--block-size", "128", "--rounding", "search"])
    assert not export_matches(out, ["--block-size", "128", "--rounding", "search"])
    assert not export_matches(out, [])
    assert not export_matches(out, ["--zero-points", "--block-size", "128", "--rounding", "absmax"])
    # tiny_int4: explicit attention, symmetric block 32 everywhere, absmax rounding
    b32 = ["--attention", "explicit", "--block-size", "32", "--rounding", "absmax"]
    assert export_matches(tiny_int4, b32)
    assert export_matches(tiny_int4, [*b32, "--quant", "down=32,lm_head=32:sym"])
    assert not export_matches(tiny_int4, [*b32, "--quant", "down=128"])
    assert not export_matches(tiny_int4, [*b32, "--zero-points"])
    assert not export_matches(tiny_int4, [*b32[:-2], "--rounding", "search"])
    assert export_matches(tiny_int4, b32[:2]) == (
        DEFAULT_QUANT == ",".join(f"{k}=32" for k in KINDS) and DEFAULT_ROUNDING == "absmax")
    # the default is the packed graph now: an explicit export is redone
    assert not export_matches(tiny_int4, b32[2:])
    assert not export_matches(tmp_path / "nothing-here", [])


# ---------------------------------------------------------------------------------------------
# Per-kind formats (--quant) and least-squares rounding (--rounding search)
# ---------------------------------------------------------------------------------------------

def test_quantization_options_resolve_per_kind():
    default = quantization("int4")
    assert default.spec() == DEFAULT_QUANT and default.rounding == DEFAULT_ROUNDING
    assert [k for k, _ in default.formats] == list(KINDS)
    assert quantization("fp32") is None
    # --block-size / --zero-points: one format for every kind (the meaning they always had)
    assert quantization("int4", 128).spec() == ",".join(f"{k}=128" for k in KINDS)
    assert quantization("int4", None, True).spec() == ",".join(f"{k}=32:zp" for k in KINDS)
    # --quant sets the kinds it names, over the default mix or over --block-size
    q = quantization("int4", 32, False, "gate_up=128:zp,down=64", 0, "absmax")
    assert q.spec() == "qkv=32,o=32,gate_up=128:zp,down=64,lm_head=32"
    assert q.of("gate_up") == KindFormat(128, True) and q.accuracy_level == 0
    over_default = quantization("int4", quant="lm_head=64:zp")
    assert over_default.of("lm_head") == KindFormat(64, True)
    assert [f for k, f in over_default.formats if k != "lm_head"] == \
        [f for k, f in default.formats if k != "lm_head"]
    assert q.manifest() == {
        "op": "com.microsoft.MatMulNBits", "bits": 4, "accuracy_level": 0, "rounding": "absmax",
        "kinds": {"qkv": {"block_size": 32, "symmetric": True}, "o": {"block_size": 32, "symmetric": True},
                  "gate_up": {"block_size": 128, "symmetric": False},
                  "down": {"block_size": 64, "symmetric": True},
                  "lm_head": {"block_size": 32, "symmetric": True}}}
    assert parse_quant_spec("down=128:sym") == {"down": KindFormat(128, False)}
    for bad, says in (("mlp=128", "KIND one of"), ("down=48", "BLOCK one of"), ("down=128:z", "BLOCK one of"),
                      ("down", "KIND one of"), ("down=32,down=64", "given twice"), ("", "KIND one of")):
        with pytest.raises(ValueError, match=says):
            parse_quant_spec(bad)
    with pytest.raises(ValueError, match="rounding"):
        quantization("int4", rounding="nearest")
    for argv in (["--quant", "mlp=128"], ["--precision", "fp32", "--quant", "down=128"],
                 ["--rounding", "nearest"], ["--block-size", "48"]):
        with pytest.raises(SystemExit):
            parse_args(["--random-init", "--preset", "tiny", *argv])


def blockwise_sq_error(w, deq, block):
    return ((split_blocks(w, block) - split_blocks(deq, block)) ** 2).sum(-1)


@pytest.mark.parametrize("block", [32, 64, 128])
def test_search_rounding_never_worse_than_absmax(block):
    """Per block, the least-squares search's error is at most absmax's (factor 1 is one of its
    candidates), and on Gaussian weights clearly lower; ONNX Runtime reads its scales and zero
    points as numpy dequantizes them."""
    rng = np.random.default_rng(block)
    n, k = 40, 384
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:8] = rng.standard_t(3, (8, k))  # heavy tails
    w[8:16] += rng.uniform(-3, 3, (8, 1)).astype(np.float32)  # off-centre rows
    w[16, :block] = 0.0  # an all-zero block stays exact
    w[17, :block] = 0.25  # a constant block is exact with a fitted scale
    for asym in (False, True):
        quant = quantize_q4_asym if asym else quantize_q4
        plain, found = quant(w, block, "absmax"), quant(w, block, "search")
        deq_plain = dequantize_q4(*plain[:2], k, *plain[2:])
        deq = dequantize_q4(*found[:2], k, *found[2:])
        e_plain, e = blockwise_sq_error(w, deq_plain, block), blockwise_sq_error(w, deq, block)
        assert (e <= e_plain * (1 + 1e-5) + 1e-12).all(), asym
        assert e[16, 0] == 0 and e[17, 0] < 1e-12
        gauss = slice(18, n)
        assert e[gauss].sum() < 0.95 * e_plain[gauss].sum(), (asym, e[gauss].sum() / e_plain[gauss].sum())
        assert found[0].shape == plain[0].shape and found[1].dtype == np.float32
        zp = found[2] if asym else None
        x = rng.standard_normal((2, 3, k)).astype(np.float32)
        y = matmulnbits_session(found[0], found[1], zp, n, k, block).run(None, {"x": x})[0]
        ref = x @ deq.T
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def matmul_initializers(d):
    """{node base name: (attributes, qweight, scales, zero points or None)} of an export."""
    m = onnx.load(str(d / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            base = n.name.removesuffix("/MatMulNBits")
            out[base] = ({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute},
                         *(inits[i] for i in n.input[1:3]),
                         inits[n.input[3]] if len(n.input) > 3 else None)
    return out


def test_per_kind_export_quantizes_each_kind_in_its_format(tmp_path, tiny_int4, tiny_fp32):
    """--quant with --rounding search through the CLI: every MatMulNBits node has its kind's
    block size and zero points, its initializers are exactly what quantize_q4(_asym) makes of
    the checkpoint, the linear-only baseline has the same matmuls, the manifest says so and
    the model stays close to fp32."""
    args = ["--block-size", "32", "--quant", "gate_up=128:zp,down=128:zp,lm_head=64",
            "--attention", "explicit", "--rounding", "search"]
    out, lin = tmp_path / "mix", tmp_path / "mix-linear"
    with contextlib.redirect_stderr(io.StringIO()):
        assert export_onnx_main(["--hf-dir", str(tiny_int4 / "hf"), "--out", str(out), "--no-golden", *args]) == 0
        assert export_onnx_main(["--hf-dir", str(tiny_int4 / "hf"), "--out", str(lin), "--linear-only", *args]) == 0
    want = {"qkv": (32, False), "o": (32, False), "gate_up": (128, True), "down": (128, True),
            "lm_head": (64, False)}
    st = SafeTensorsDir(tiny_int4 / "hf")
    parts = {"qkv": [f"self_attn.{x}_proj" for x in "qkv"], "o": ["self_attn.o_proj"],
             "gate_up": ["mlp.gate_proj", "mlp.up_proj"], "down": ["mlp.down_proj"]}
    nodes = matmul_initializers(out)
    assert len(nodes) == 2 * 4 + 1
    seen = set()
    for base, (attrs, packed, scales, zp) in nodes.items():
        kind = kind_of(base)
        seen.add(kind)
        block, asym = want[kind]
        assert attrs["block_size"] == block and attrs["accuracy_level"] == 4
        assert (zp is not None) == asym
        layer = base.rsplit(".", 2)[0]
        names = ["lm_head.weight"] if kind == "lm_head" else [f"{layer}.{p}.weight" for p in parts[kind]]
        w = np.concatenate([st.get_f32(x) for x in names], axis=0)
        expect = (quantize_q4_asym if asym else quantize_q4)(w, block, "search")
        np.testing.assert_array_equal(packed, expect[0])
        np.testing.assert_array_equal(scales, expect[1])
        if asym:
            np.testing.assert_array_equal(zp, expect[2])
    assert seen == set(KINDS)
    assert {b: a for b, (a, *_) in matmul_initializers(lin).items()} == \
        {b: a for b, (a, *_) in nodes.items()}
    for d in (out, lin):
        man = json.loads((d / "manifest.json").read_text())
        assert man["quantization"]["rounding"] == "search"
        assert {k: (f["block_size"], not f["symmetric"]) for k, f in man["quantization"]["kinds"].items()} == want
        assert export_matches(d, args)
        assert not export_matches(d, [*args[:2], "--quant", "gate_up=128:zp,down=128:zp", *args[4:]])
        assert not export_matches(d, [*args[:-1], "absmax"])
    cfg = cfg_of(out)
    ids = encode(out, "The harbour lights came on one by one as the ferry left.")
    a = run_full(make_session(out / "model.onnx"), cfg, np.array([ids]))[0]
    b = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, np.array([ids]))[0]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert (cos > 0.98).all(), cos


def test_kind_of_names_every_linear_layer():
    assert kind_of("model.layers.3.self_attn.qkv_proj") == "qkv"
    assert kind_of("model.layers.0.mlp.down_proj") == "down"
    assert kind_of("lm_head") == "lm_head"
    with pytest.raises(ValueError, match="no known kind"):
        kind_of("model.layers.0.mlp.gate_proj")


# ---------------------------------------------------------------------------------------------
# bf16 safetensors
# ---------------------------------------------------------------------------------------------

def test_bf16_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((7, 33)) * 3).astype(np.float32)
    b = np.array([1.0, -2.5, 0.0, 1e-30, 3.0e38, 1.00390625, 1.01171875], np.float32)
    specs = [("a", a.shape), ("b", b.shape)]
    write_safetensors(tmp_path / "x.safetensors", specs, lambda n, s: {"a": a, "b": b}[n], dtype="BF16")
    st = SafeTensorsFile(tmp_path / "x.safetensors")
    assert st.metadata == {"format": "pt"}
    assert st.dtype("a") == "BF16" and st.shape("a") == [7, 33]
    np.testing.assert_array_equal(st.get_f32("a"), round_to_bf16(a))
    np.testing.assert_array_equal(st.get_f32("b"), round_to_bf16(b))
    # exact bit patterns, incl. round-half-to-even (1+2^-8 -> 1.0, 1+3*2^-8 -> 1+2^-6)
    assert st.raw("b")[:2].tolist() == [0x3F80, 0xC020]
    assert st.get_f32("b")[5] == 1.0 and st.get_f32("b")[6] == np.float32(1.015625)
    # independent check: truncation error below half a bf16 ulp
    err = np.abs(st.get_f32("a") - a)
    assert (err <= np.abs(a) * 2.0 ** -8 + 1e-45).all()
    # independent reader: the safetensors package (bfloat16 via ml_dtypes, an onnx dependency)
    import ml_dtypes  # noqa: F401  (registers numpy's bfloat16 dtype)
    from safetensors.numpy import load_file
    loaded = load_file(str(tmp_path / "x.safetensors"))
    np.testing.assert_array_equal(loaded["a"].astype(np.float32), round_to_bf16(a))
    np.testing.assert_array_equal(loaded["b"].astype(np.float32), round_to_bf16(b))
    write_safetensors(tmp_path / "y.safetensors", specs, lambda n, s: {"a": a, "b": b}[n], dtype="F32")
    loaded = load_file(str(tmp_path / "y.safetensors"))
    np.testing.assert_array_equal(loaded["a"], a)


def test_bf16_tiny_export(tmp_path):
    d = build_tiny(tmp_path / "bf16", dtype="bf16", golden=4)
    st = SafeTensorsFile(d / "hf" / "model.safetensors")
    assert all(st.dtype(k) == "BF16" for k in st.keys())
    assert cfg_of(d)["torch_dtype"] == "bfloat16"
    g = json.loads((d / "golden.json").read_text())
    assert all(len(p["output_ids"]) >= 1 for p in g["prompts"])


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------

def numpy_forward(hf_dir, ids, dequant_block=None, zero_points=False):
    """Plain numpy Llama forward (float64), optionally with int4-dequantized linear weights
    (symmetric, or asymmetric with zero points)."""
    cfg = cfg_of(hf_dir)
    dm = model_dims(cfg)
    st = SafeTensorsDir(hf_dir)

    def W(n):
        w = st.get_f32(n).astype(np.float64)
        if dequant_block and n.endswith(("_proj.weight", "lm_head.weight")):
            if zero_points:
                p, s, z = quantize_q4_asym(w.astype(np.float32), dequant_block)
                w = dequantize_q4(p, s, w.shape[1], z).astype(np.float64)
            else:
                p, s = quantize_q4(w.astype(np.float32), dequant_block)
                w = dequantize_q4(p, s, w.shape[1]).astype(np.float64)
        return w

    def rms(x, n):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + dm["eps"]) * W(n)

    S, nh, kvh, hd = len(ids), dm["heads"], dm["kv_heads"], dm["head_dim"]
    cos, sin = rope_tables(cfg, hd)
    cos, sin = np.concatenate([cos[:S]] * 2, -1), np.concatenate([sin[:S]] * 2, -1)

    def rope(t):  # [heads, S, hd]
        x1, x2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + np.concatenate([-x2, x1], -1) * sin

    x = W("model.embed_tokens.weight")[ids]
    causal = np.tril(np.ones((S, S), bool))
    for i in range(dm["layers"]):
        p = f"model.layers.{i}"
        h = rms(x, f"{p}.input_layernorm.weight")
        q = (h @ W(f"{p}.self_attn.q_proj.weight").T).reshape(S, nh, hd).transpose(1, 0, 2)
        k = (h @ W(f"{p}.self_attn.k_proj.weight").T).reshape(S, kvh, hd).transpose(1, 0, 2)
        v = (h @ W(f"{p}.self_attn.v_proj.weight").T).reshape(S, kvh, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = nh // kvh
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)  # HF repeat_kv: head h -> kv h // rep
        sc = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        sc = np.where(causal, sc, -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        ctx = (pr @ v).transpose(1, 0, 2).reshape(S, nh * hd)
        x = x + ctx @ W(f"{p}.self_attn.o_proj.weight").T
        h2 = rms(x, f"{p}.post_attention_layernorm.weight")
        gt = h2 @ W(f"{p}.mlp.gate_proj.weight").T
        up = h2 @ W(f"{p}.mlp.up_proj.weight").T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ W(f"{p}.mlp.down_proj.weight").T
    return rms(x, "model.norm.weight") @ W("lm_head.weight").T


def test_fp32_graph_matches_numpy_reference(tiny_fp32):
    cfg = cfg_of(tiny_fp32)
    ids = encode(tiny_fp32, "Once upon a time, a robot counted ships near the old bridge.")
    got = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, np.array([ids]))[0]
    ref = numpy_forward(tiny_fp32 / "hf", ids)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_int4_graph_matches_numpy_dequantized_reference(tiny_int4_exact):
    cfg = cfg_of(tiny_int4_exact)
    ids = encode(tiny_int4_exact, "Scientists found a faint comet 🚀 in late autumn.")
    got = run_full(make_session(tiny_int4_exact / "model.onnx"), cfg, np.array([ids]))[0]
    ref = numpy_forward(tiny_int4_exact / "hf", ids, dequant_block=32)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_fp32_and_int4_logits_agree_in_direction(tiny_int4, tiny_fp32):
    cfg = cfg_of(tiny_int4)
    ids = encode(tiny_int4, "The tennis final lasted almost four hours under heavy rain.")
    a = run_full(make_session(tiny_int4 / "model.onnx"), cfg, np.array([ids]))[0]
    b = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, np.array([ids]))[0]
    for i in range(len(ids)):
        cos = float(a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]))
        assert cos > 0.9, (i, cos)


@pytest.mark.parametrize("which", ["tiny_int4", "tiny_fp32"])
def test_left_padded_batch_matches_single_rows(which, request):
    d = request.getfixturevalue(which)
    cfg = cfg_of(d)
    sess = make_session(d / "model.onnx")
    a = encode(d, "Hi there")
    b = encode(d, "Markets opened higher on Monday after a report on prices.")
    T = max(len(a), len(b))
    ids = np.zeros((2, T), np.int64)
    mask = np.zeros((2, T), np.int64)
    for r, seq in enumerate((a, b)):
        ids[r, T - len(seq):] = seq
        mask[r, T - len(seq):] = 1
    batched = run_full(sess, cfg, ids, mask)  # position_ids = clamp(cumsum(mask) - 1, 0)
    assert np.isfinite(batched).all()  # fully masked pad rows stay finite
    for r, seq in enumerate((a, b)):
        alone = run_full(sess, cfg, np.array([seq]))[0]
        np.testing.assert_allclose(batched[r, T - len(seq):], alone, atol=1e-4 * max(1, np.abs(alone).max()),
                                   rtol=1e-4)


@pytest.mark.parametrize("which", ["tiny_int4", "tiny_fp32"])
def test_kv_cache_decoding_matches_recompute(which, request):
    d = request.getfixturevalue(which)
    cfg = cfg_of(d)
    sess = make_session(d / "model.onnx")
    prompt = encode(d, "A spacecraft sent back clear pictures of a moon")
    extra = encode(d, "covered with ice")[1:]
    # prefill, then one token at a time with the cache, batch of 2 with left padding
    short = prompt[:4]
    seqs = [prompt, short]
    T = len(prompt)
    ids = np.zeros((2, T), np.int64)
    mask = np.zeros((2, T), np.int64)
    for r, s in enumerate(seqs):
        ids[r, T - len(s):] = s
        mask[r, T - len(s):] = 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, past = run_with_past(sess, cfg, ids, mask, pos, empty_past(cfg, 2))
    full = [list(s) for s in seqs]
    for tok in extra:
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        pos = (mask.sum(1, keepdims=True) - 1)
        logits, past = run_with_past(sess, cfg, [[tok], [tok]], mask, pos, past)
        for r in range(2):
            full[r].append(tok)
            ref = run_full(sess, cfg, np.array([full[r]]))[0, -1]
            np.testing.assert_allclose(logits[r, -1], ref, atol=1e-4 * max(1, np.abs(ref).max()),
                                       rtol=1e-4)
    for v in past.values():
        assert v.shape == (2, 2, T + len(extra), 32)


# ---------------------------------------------------------------------------------------------
# Golden outputs
# ---------------------------------------------------------------------------------------------

def test_golden_reproducible_and_decisive(tiny_int4):
    g = json.loads((tiny_int4 / "golden.json").read_text())
    cfg = cfg_of(tiny_int4)
    tok = Tokenizer.from_file(str(tiny_int4 / "tokenizer.json"))
    assert g["max_new_tokens"] == 16 and g["eos_token_id"] == 2
    lens = sorted(len(p["input_ids"]) for p in g["prompts"])
    assert len(lens) >= 5 and lens[0] <= 3 and lens[-1] >= 40
    assert any(len(p["input_ids"]) in range(4, 9) for p in g["prompts"])
    assert any(any(ord(c) > 0x2E80 for c in p["text"]) for p in g["prompts"])
    sess = make_session(tiny_int4 / "model.onnx")
    for p in g["prompts"]:
        assert p["input_ids"] == tok.encode(p["text"], add_special_tokens=True).ids
        assert p["input_ids"][0] == 1
        out, margins, stds, _ = greedy_full_recompute(sess, cfg, p["input_ids"], 16, 2)
        assert out == p["output_ids"]
        assert min(m / s for m, s in zip(margins, stds)) > 0.05
    assert g["min_top2_margin"] > 0
    assert g["min_top2_margin_over_logit_std"] > 0.05


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

def test_tiny_tokenizer_layout(tiny_int4):
    tok = Tokenizer.from_file(str(tiny_int4 / "tokenizer.json"))
    assert tok.get_vocab_size() == 1024
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.id_to_token(3) == "<0x00>" and tok.id_to_token(258) == "<0xFF>"
    spec = json.loads((tiny_int4 / "tokenizer.json").read_text())
    assert [t["id"] for t in spec["added_tokens"]] == [0, 1, 2]  # bytes are NOT added tokens
    enc = tok.encode("Hello world")
    assert enc.ids[0] == 1
    # a character absent from the corpus falls back to bytes and decodes back
    text = "Ω weather ✓"
    enc = tok.encode(text)
    assert any(3 <= i <= 258 for i in enc.ids)
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    assert train_tiny_tokenizer() == (tiny_int4 / "hf" / "tokenizer.json").read_text(encoding="utf-8")


def test_llama2_tokenizer_export(tmp_path):
    tok_dir = SHARED_LLAMA2_TOKENIZER
    if not (tok_dir / "tokenizer.json").exists():
        pytest.skip(f"!!! SKIPPED: {tok_dir} is absent (../shared beside the repo); the real Llama 2 "
                    f"tokenizer export path is NOT tested here !!!")
    d = build_tiny(tmp_path / "l2", tokenizer=tok_dir, golden=2)
    assert cfg_of(d)["vocab_size"] == 32000
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert tok.encode("Once upon a time").ids == [1, 9038, 2501, 263, 931]
    cfg = cfg_of(d)
    logits = run_full(make_session(d / "model.onnx"), cfg, np.array([[1, 9038, 2501, 263, 931]]))
    assert logits.shape == (1, 5, 32000)
    assert (d / "tokenizer_config.json").exists()
    # the decisive-logits init holds with a 32,000-token vocabulary too
    assert json.loads((d / "golden.json").read_text())["min_top2_margin_over_logit_std"] > 0.05


def test_linear_only(tmp_path, tiny_int4):
    d = tmp_path / "lin"
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):
        export(tiny_int4 / "hf", d, source="random-init:tiny", random_weights=True,
               precision="int4", block_size=32, accuracy_level=4, golden_tokens=None,
               linear_only=True)
    m = onnx.load(str(d / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    assert ops <= {"MatMulNBits", "Split", "Mul", "Identity"}, ops
    # the same (fused) matmuls as the decoder: names, K, N, bits, block, accuracy level
    full = onnx.load(str(tiny_int4 / "model.onnx"), load_external_data=False)

    def matmuls(model):
        return {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                for n in model.graph.node if n.op_type == "MatMulNBits"}
    mm = matmuls(m)
    assert mm == matmuls(full)
    assert len(mm) == 2 * 4 + 1
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["logits"]
    man = json.loads((d / "manifest.json").read_text())
    assert man["linear_only"] is True and man["hidden_size"] == 128
    sess = make_session(d / "model.onnx")
    y = sess.run(None, {"x": np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)})[0]
    assert y.shape == (2, 3, 1024) and np.isfinite(y).all()


def test_cli_help_and_errors():
    with pytest.raises(SystemExit):
        parse_args(["--random-init"])  # needs --preset
    with pytest.raises(SystemExit):
        parse_args(["--hf-dir", "x"])  # needs --out
    a = parse_args(["--random-init", "--preset", "tiny"])
    assert a.precision == "int4" and a.block_size is None and a.accuracy_level == 4
    assert quantization_of_args(a).spec() == DEFAULT_QUANT


def test_hf_dir_sharded_f16_checkpoint(tmp_path, tiny_int4):
    """--hf-dir with two shards (F16 + BF16) exports through the CLI and runs."""
    import shutil
    src = SafeTensorsDir(tiny_int4 / "hf")
    hf = tmp_path / "hf"
    hf.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_int4 / "hf" / f, hf / f)
    names = sorted(src.where)
    half = len(names) // 2
    for fname, part, dt in (("model-00001-of-00002.safetensors", names[:half], np.float16),
                            ("model-00002-of-00002.safetensors", names[half:], None)):
        arrays = {n: src.get_f32(n) for n in part}
        if dt is not None:
            from safetensors.numpy import save_file
            save_file({n: a.astype(dt) for n, a in arrays.items()}, str(hf / fname))
        else:
            write_safetensors(hf / fname, [(n, arrays[n].shape) for n in part],
                              lambda n, s: arrays[n], dtype="BF16")
    out = tmp_path / "out"
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):
        assert export_onnx_main(["--hf-dir", str(hf), "--out", str(out), "--golden-tokens", "3",
                                 "--block-size", "32", "--rounding", "absmax"]) == 0  # as tiny_int4
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"] == f"hf-dir:{hf}" and man["random_weights"] is False
    g = json.loads((out / "golden.json").read_text())
    assert g["max_new_tokens"] == 3
    # f16/bf16 rounding of the weights must not change the int4 model much
    cfg = cfg_of(out)
    ids = encode(out, "Rain again today, so bring an umbrella.")
    a = run_full(make_session(out / "model.onnx"), cfg, np.array([ids]))[0]
    b = run_full(make_session(tiny_int4 / "model.onnx"), cfg, np.array([ids]))[0]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert (cos > 0.99).all()


def test_hf_dir_export_of_a_random_checkpoint_says_random(tmp_path, tiny_int4):
    """A --random-init checkpoint re-exported with --hf-dir (e.g. at another block size) is
    still marked random, so the server keeps warning that its text is noise."""
    import contextlib
    import io
    assert (tiny_int4 / "hf" / RANDOM_WEIGHTS_MARKER).exists()
    out = tmp_path / "b128"
    with contextlib.redirect_stderr(io.StringIO()):
        assert export_onnx_main(["--hf-dir", str(tiny_int4 / "hf"), "--out", str(out), "--block-size", "128",
                                 "--no-golden"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["random_weights"] is True
    assert {f["block_size"] for f in man["quantization"]["kinds"].values()} == {128}
