"""The fused-attention export (--attention gqa, the default): its graph contract, and its logits
against the explicit graph and against full recomputation when past and present share one slot
buffer, rows of different lengths, right padding and chunked prompts included."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from conftest import E
from test_export import cfg_of, dims


def test_gqa_graph_contract(tiny_gqa):
    m = onnx.load(str(tiny_gqa / "model.onnx"), load_external_data=False)
    ins = {i.name: i for i in m.graph.input}
    assert [i.name for i in m.graph.input] == ["input_ids", "seqlens_k", "total_sequence_length"] + [
        f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert ins["seqlens_k"].type.tensor_type.elem_type == TensorProto.INT32
    assert dims(ins["seqlens_k"]) == ["batch_size"]
    assert ins["total_sequence_length"].type.tensor_type.elem_type == TensorProto.INT32
    assert dims(ins["total_sequence_length"]) == []
    outs = {o.name: o for o in m.graph.output}
    assert dims(outs["present.0.key"]) == ["batch_size", 2, "present_sequence_length", 32]
    # one GroupQueryAttention per layer replaces RoPE, concat, mask, softmax and the reshapes
    layer0 = [n for n in m.graph.node if "layers.0." in n.name or n.name.startswith("/model.layers.0/")]
    assert sorted(n.op_type for n in layer0) == sorted(
        ["MatMulNBits"] * 4 + ["GroupQueryAttention", "Split", "QuickGelu", "Mul",
                              "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"])
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"RotaryEmbedding", "Softmax", "Concat", "Where", "Tile"}
    gqa = next(n for n in layer0 if n.op_type == "GroupQueryAttention")
    a = {x.name: onnx.helper.get_attribute_value(x) for x in gqa.attribute}
    assert a["num_heads"] == 4 and a["kv_num_heads"] == 2 and a["do_rotary"] == 1
    import json
    assert json.loads((tiny_gqa / "manifest.json").read_text())["attention"] == "gqa"


def test_gqa_matches_explicit_attention_fp32(tiny_fp32, tiny_gqa_fp32):
    cfg = cfg_of(tiny_fp32)
    ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], size=(2, 20))
    a = E.run_full(E.make_session(tiny_fp32 / "model.onnx"), cfg, ids)
    b = E.run_full(E.make_session(tiny_gqa_fp32 / "model.onnx"), cfg, ids)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_gqa_golden_ids_equal_explicit_ones(tiny_int4, tiny_gqa):
    import json
    ga = json.loads((tiny_int4 / "golden.json").read_text())["prompts"]
    gb = json.loads((tiny_gqa / "golden.json").read_text())["prompts"]
    for pa, pb in zip(ga, gb):
        assert pa["output_ids"] == pb["output_ids"], pa["text"]
        np.testing.assert_allclose(pb["top1_logits"], pa["top1_logits"], rtol=1e-3)


def test_gqa_slot_buffer_matches_recompute(tiny_gqa_fp32):
    """The engine's slot cache in miniature: per layer one [rows, kv_heads, capacity, head_dim]
    buffer bound as both past and present; rows of 5, 11 and 8 tokens; a first chunk of 4
    tokens for all rows at once, the rest one row at a time (GroupQueryAttention takes several
    new tokens over a past only with batch 1), right-padded to the longest rest; then 6 decode
    steps of all rows together. Every row's logits equal a full recomputation."""
    d = tiny_gqa_fp32
    cfg = cfg_of(d)
    dm = E.model_dims(cfg)
    sess = E.make_session(d / "model.onnx")
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(3, cfg["vocab_size"], size=n)) for n in (5, 11, 8)]
    rows, capacity = len(seqs), 32
    buffers = [np.zeros((rows, dm["kv_heads"], capacity, dm["head_dim"]), np.float32)
               for _ in range(2 * dm["layers"])]

    def run(first_row, ids, past_lens):
        n, s = len(ids), len(ids[0])
        views = [ort.OrtValue.ortvalue_from_numpy(b[first_row:first_row + n]) for b in buffers]
        io = sess.io_binding()
        io.bind_cpu_input("input_ids", np.asarray(ids, np.int64))
        io.bind_cpu_input("seqlens_k", np.asarray([p + s - 1 for p in past_lens], np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(max(past_lens) + s, np.int32))
        for i in range(dm["layers"]):
            for j, kv in enumerate(("key", "value")):
                v = views[2 * i + j]
                io.bind_ortvalue_input(f"past_key_values.{i}.{kv}", v)
                io.bind_ortvalue_output(f"present.{i}.{kv}", v)
        io.bind_output("logits")
        sess.run_with_iobinding(io)
        for b, v in zip(buffers, views):  # keep the buffers current, shared or copied
            b[first_row:first_row + n] = v.numpy()
        return io.copy_outputs_to_cpu()[-1]

    def reference(seq):
        return E.run_full(sess, cfg, np.array([seq]))[0, -1]

    run(0, [s[:4] for s in seqs], [0] * rows)
    rests = [s[4:] for s in seqs]
    width = max(map(len, rests))
    last = [run(r, [rest + [0] * (width - len(rest))], [4])[0, len(rest) - 1]
            for r, rest in enumerate(rests)]
    for r, s in enumerate(seqs):
        np.testing.assert_allclose(last[r], reference(s), atol=1e-3)
    for _ in range(6):
        nxt = [int(np.argmax(l)) for l in last]
        past = [len(s) for s in seqs]
        for s, t in zip(seqs, nxt):
            s.append(t)
        out = run(0, [[t] for t in nxt], past)
        last = [out[r, 0] for r in range(rows)]
        for r, s in enumerate(seqs):
            np.testing.assert_allclose(last[r], reference(s), atol=1e-3)
