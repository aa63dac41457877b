"""The packed one-pass export (--attention packed, the default): its graph contract, and its
logits against the explicit graph and against full recomputation when one pass mixes decoding
rows with prompt chunks in prefill lanes, every lane bound to its row's slot inside the same
buffer as the decode node."""
import contextlib
import io
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from conftest import export_matches
from test_export import cfg_of, dims
from trendstory_tools.cli.export_onnx import main as export_onnx_main
from trendstory_tools.golden import make_session, packed_lanes, run_full
from trendstory_tools.graph.packed_contract import DEFAULT_PREFILL_LANES
from trendstory_tools.llama_checkpoint import model_dims


def test_packed_graph_contract(tiny_packed):
    m = onnx.load(str(tiny_packed / "model.onnx"), load_external_data=False)
    man = json.loads((tiny_packed / "manifest.json").read_text())
    assert man["attention"] == "packed" and man["prefill_lanes"] == DEFAULT_PREFILL_LANES
    lanes, layers = man["prefill_lanes"], 2
    names = [i.name for i in m.graph.input]
    lane_scalars = [f"lane.{k}.{n}" for k in range(lanes) for n in ("start", "end", "seqlens_k", "total")]
    kv = [f"past_key_values.{i}.{x}" for i in range(layers) for x in ("key", "value")]
    lane_kv = [f"lane.{k}.past.{i}.{x}" for i in range(layers) for x in ("key", "value")
               for k in range(lanes)]
    assert names == (["input_ids", "decode_rows", "decode_seqlens_k", "decode_total"] + lane_scalars
                     + ["attn_order", "logits_index"] + kv + lane_kv)
    ins = {i.name: i for i in m.graph.input}
    assert dims(ins["input_ids"]) == [1, "tokens"]
    assert ins["decode_seqlens_k"].type.tensor_type.elem_type == TensorProto.INT32
    assert dims(ins["decode_total"]) == [] and dims(ins["lane.0.start"]) == [1]
    assert dims(ins["past_key_values.0.key"]) == ["rows", 2, "capacity", 32]
    outs = {o.name: o for o in m.graph.output}
    assert dims(outs["logits"]) == [1, "logit_positions", man["vocab_size"]]
    assert f"lane.{lanes - 1}.present.1.value" in outs
    layer0 = [n for n in m.graph.node if n.name.startswith("/model.layers.0/")
              or "layers.0." in n.name]
    ops = sorted(n.op_type for n in layer0)
    assert ops.count("MatMulNBits") == 4
    assert ops.count("GroupQueryAttention") == 1 + lanes and ops.count("Slice") == lanes
    assert not {n.op_type for n in m.graph.node} & {"RotaryEmbedding", "Softmax", "Where", "Tile"}
    # lm_head sees only the gathered positions
    lm_head = next(n for n in m.graph.node if n.name == "lm_head/MatMulNBits")
    assert lm_head.input[0] == "/model/logits_gather_out0"
    # scripts skip an export only when it has the lanes asked for (the fixture's quantization:
    # block 32, absmax)
    quant = ["--block-size", "32", "--rounding", "absmax"]
    assert export_matches(tiny_packed, quant)
    assert export_matches(tiny_packed, [*quant, "--prefill-lanes", str(lanes)])
    assert not export_matches(tiny_packed, [*quant, "--prefill-lanes", str(lanes + 1)])


def test_check_current_writes_nothing_and_says_what_differs(tiny_packed, tmp_path):
    """--check-current (what bench.sh and fetch-model.sh ask before exporting): exit 0 only
    when the folder's manifest records the command line's graph, quantization and source and
    every file it lists is unchanged; otherwise 1 and the reason. It writes nothing."""
    def check(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = export_onnx_main(["--check-current", "--block-size", "32", "--rounding", "absmax",
                                   *args])
        return rc, err.getvalue()

    def hub(out, *args):
        return check("--hf-dir", str(tmp_path / "not-downloaded"), "--out", str(out),
                     "--source", "random-init:tiny", *args)

    written = {p: p.stat().st_mtime_ns for p in tiny_packed.rglob("*")}
    assert check("--random-init", "--preset", "tiny", "--out", str(tiny_packed))[0] == 0
    assert hub(tiny_packed)[0] == 0
    rc, why = hub(tiny_packed, "--attention", "slots")
    assert rc == 1 and "another graph than requested" in why, why
    rc, why = hub(tiny_packed, "--source", "hub:someone/else")
    assert rc == 1 and "exported from random-init:tiny, not hub:someone/else" in why, why
    changed = tmp_path / "changed"
    shutil.copytree(tiny_packed, changed)
    (changed / "tokenizer.json").write_text("{}")
    rc, why = hub(changed)
    assert rc == 1 and "tokenizer.json is missing or not the file manifest.json lists" in why, why
    rc, why = hub(tmp_path / "nothing")
    assert rc == 1 and "no readable manifest.json" in why, why
    assert {p: p.stat().st_mtime_ns for p in tiny_packed.rglob("*")} == written


def test_packed_matches_explicit_attention_fp32(tiny_fp32, tiny_packed_fp32):
    cfg = cfg_of(tiny_fp32)
    ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], size=(2, 20))
    a = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, ids)
    b = run_full(make_session(tiny_packed_fp32 / "model.onnx"), cfg, ids)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_packed_golden_ids_equal_explicit_ones(tiny_int4, tiny_packed):
    ga = json.loads((tiny_int4 / "golden.json").read_text())["prompts"]
    gb = json.loads((tiny_packed / "golden.json").read_text())["prompts"]
    for pa, pb in zip(ga, gb):
        assert pa["output_ids"] == pb["output_ids"], pa["text"]
        np.testing.assert_allclose(pb["top1_logits"], pa["top1_logits"], rtol=1e-3)


class SlotCache:
    """The engine's slot cache in miniature: per layer and key/value one
    [rows, kv_heads, capacity, head_dim] buffer; the decode node is bound to all rows, each
    lane to one row's slice (aliased, not copied); unused lanes to a scratch slot."""

    def __init__(self, sess, dm, rows, capacity):
        self.sess, self.dm = sess, dm
        self.lanes = packed_lanes({i.name for i in sess.get_inputs()})
        self.buffers = [np.zeros((rows, dm["kv_heads"], capacity, dm["head_dim"]), np.float32)
                        for _ in range(2 * dm["layers"])]

    def step(self, decode, chunks, lane_offset_error=0):
        """decode: {row: (past, token)}; chunks: [(row, past, tokens)] (one lane each).
        Returns the logits of each decode row (row order), then of each chunk's last token."""
        dm, rows = self.dm, self.buffers[0].shape[0]
        i32 = lambda v: np.asarray(v, np.int32)  # noqa: E731
        i64 = lambda v: np.asarray(v, np.int64)  # noqa: E731
        # packed tokens: decode tokens in row order, then each lane's chunk
        ids, attn_order = [], []
        decode_rows, seqlens = [0] * rows, [0] * rows
        for row in sorted(decode):
            past, token = decode[row]
            decode_rows[row], seqlens[row] = len(ids), past
            attn_order.append(row)  # the decode node's output row
            ids.append(token)
        logits_index = list(range(len(ids)))
        io, views, concat_at = self.sess.io_binding(), [], rows
        io.bind_output("logits")  # first: get_outputs() follows the binding order
        for k in range(self.lanes):
            if k < len(chunks):
                row, past, tokens = chunks[k]
                seqlens[row] = past + len(tokens)  # its decode write: past the chunk, unread
                start, n = len(ids), len(tokens)
                seq = past + n - 1 + (lane_offset_error if k == 0 else 0)
                kv = [b[row:row + 1] for b in self.buffers]
                ids += list(tokens)
                attn_order += [concat_at + j for j in range(n)]
                logits_index.append(start + n - 1)
            else:
                start, n, seq = 0, 1, 0
                kv = [np.zeros((1, dm["kv_heads"], 1, dm["head_dim"]), np.float32)
                      for _ in self.buffers]
            concat_at += n
            for name, v in ((f"lane.{k}.start", i64([start])), (f"lane.{k}.end", i64([start + n])),
                            (f"lane.{k}.seqlens_k", i32([seq])), (f"lane.{k}.total", i32(seq + 1))):
                io.bind_cpu_input(name, v)
            views += self.bind_kv(io, f"lane.{k}.past.{{i}}.{{x}}", f"lane.{k}.present.{{i}}.{{x}}", kv)
        for name, v in (("input_ids", i64([ids])), ("decode_rows", i64(decode_rows)),
                        ("decode_seqlens_k", i32(seqlens)), ("decode_total", i32(max(seqlens) + 1)),
                        ("attn_order", i64(attn_order)), ("logits_index", i64(logits_index))):
            io.bind_cpu_input(name, v)
        views += self.bind_kv(io, "past_key_values.{i}.{x}", "present.{i}.{x}", self.buffers)
        self.sess.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()[0]

    def bind_kv(self, io, past, present, arrays):
        """Binds each layer's key/value array (aliased) as both the past and the present."""
        views = []
        for i in range(self.dm["layers"]):
            for j, x in enumerate(("key", "value")):
                view = ort.OrtValue.ortvalue_from_numpy(arrays[2 * i + j])
                io.bind_ortvalue_input(past.format(i=i, x=x), view)
                io.bind_ortvalue_output(present.format(i=i, x=x), view)
                views.append(view)
        return views


def test_mixed_steps_match_recompute(tiny_packed_fp32):
    """One pass per step over one slot buffer: two prompts in lanes (one cut into two chunks),
    then a decoding row beside the second chunk and a third prompt, then every row decoding
    with the lanes unused. Every row's logits equal a full recomputation; a lane whose
    seqlens_k is one off does not."""
    d = tiny_packed_fp32
    cfg = cfg_of(d)
    dm = model_dims(cfg)
    sess = make_session(d / "model.onnx")
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(3, cfg["vocab_size"], size=n)) for n in (7, 12, 5)]
    cache = SlotCache(sess, dm, rows=3, capacity=40)

    def reference(seq):
        return run_full(sess, cfg, np.array([seq]))[0, -1]

    out = cache.step({}, [(0, 0, seqs[0]), (1, 0, seqs[1][:6])])
    np.testing.assert_allclose(out[0], reference(seqs[0]), atol=1e-3)
    nxt = int(np.argmax(out[0]))
    out = cache.step({0: (7, nxt)}, [(1, 6, seqs[1][6:]), (2, 0, seqs[2])])
    seqs[0].append(nxt)
    for got, seq in zip(out, seqs):
        np.testing.assert_allclose(got, reference(seq), atol=1e-3)
    for _ in range(4):
        nxt = [int(np.argmax(x)) for x in out]
        out = cache.step({r: (len(s), t) for r, (s, t) in enumerate(zip(seqs, nxt))}, [])
        for s, t in zip(seqs, nxt):
            s.append(t)
        for got, seq in zip(out, seqs):
            np.testing.assert_allclose(got, reference(seq), atol=1e-3)

    # the same second step with lane 0's seqlens_k one too large: its row's logits differ
    bad = SlotCache(sess, dm, rows=3, capacity=40)
    first = bad.step({}, [(0, 0, seqs[0][:7]), (1, 0, seqs[1][:6])])
    out = bad.step({0: (7, int(np.argmax(first[0])))}, [(1, 6, seqs[1][6:12]), (2, 0, seqs[2][:5])],
                   lane_offset_error=1)
    assert np.abs(out[1] - reference(seqs[1][:12])).max() > 1e-2
