"""The slots export (--attention slots): the packed one-pass graph with each layer's attention
in one SlotAttention node of the engine's own (SLOTS_CONTRACT). Stock ONNX Runtime cannot run
it, so these tests hold its graph contract and its weights (those of the packed export from the
same seed, which the engine's tests compare it with)."""
import json
import math

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import export_matches
from test_export import dims
from trendstory_tools.graph.slots_contract import TRENDSTORY_DOMAIN


def test_slots_graph_contract(tiny_slots):
    m = onnx.load(str(tiny_slots / "model.onnx"), load_external_data=False)
    man = json.loads((tiny_slots / "manifest.json").read_text())
    assert man["attention"] == "slots" and "prefill_lanes" not in man
    assert not (tiny_slots / "golden.json").exists() and "golden.json" not in man["files"]
    layers, kvh, hd = man["num_hidden_layers"], man["num_key_value_heads"], man["head_dim"]
    kv = [f"past_key_values.{i}.{x}" for i in range(layers) for x in ("key", "value")]
    assert [i.name for i in m.graph.input] == ["input_ids", "rows", "logits_index"] + kv
    ins = {i.name: i for i in m.graph.input}
    assert dims(ins["input_ids"]) == [1, "tokens"] and dims(ins["rows"]) == ["rows", 4]
    assert dims(ins["logits_index"]) == ["logit_positions"]
    for name in ("input_ids", "rows", "logits_index"):
        assert ins[name].type.tensor_type.elem_type == TensorProto.INT64
    for name in kv:
        assert dims(ins[name]) == ["slots", kvh, "capacity", hd]
        assert ins[name].type.tensor_type.elem_type == TensorProto.FLOAT
    # no presents: the node writes into the slot buffers in place
    assert [o.name for o in m.graph.output] == ["logits"]
    assert dims(m.graph.output[0]) == [1, "logit_positions", man["vocab_size"]]
    assert {(o.domain, o.version) for o in m.opset_import} >= {(TRENDSTORY_DOMAIN, 1)}

    slots = [n for n in m.graph.node if n.op_type == "SlotAttention"]
    assert len(slots) == layers
    for i, n in enumerate(slots):
        p = f"model.layers.{i}"
        assert n.domain == TRENDSTORY_DOMAIN and n.name == f"/{p}/slot_attention"
        assert list(n.input) == [f"{p}.self_attn.qkv_proj/MatMulNBits_out0", "rows", "rope.cos",
                                 "rope.sin", f"past_key_values.{i}.key",
                                 f"past_key_values.{i}.value"]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.keys() == {"num_heads", "kv_num_heads", "scale"}
        assert (attrs["num_heads"], attrs["kv_num_heads"]) == (man["num_attention_heads"], kvh)
        assert attrs["scale"] == pytest.approx(1 / math.sqrt(hd))
        o_proj = next(x for x in m.graph.node if x.name == f"{p}.self_attn.o_proj/MatMulNBits")
        assert list(n.output) == [o_proj.input[0]]
    rope = {t.name: list(t.dims) for t in m.graph.initializer if t.name.startswith("rope.")}
    assert rope == {"rope.cos": [man["max_position_embeddings"], hd // 2],
                    "rope.sin": [man["max_position_embeddings"], hd // 2]}
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"GroupQueryAttention", "Concat", "Slice", "RotaryEmbedding", "Softmax"}
    assert [n.name for n in m.graph.node if n.op_type == "Gather"] == ["embed/Gather",
                                                                       "/model/logits_gather"]
    with pytest.raises(Exception, match="SlotAttention"):
        ort.InferenceSession(str(tiny_slots / "model.onnx"), providers=["CPUExecutionProvider"])
    # scripts skip an export only when it is a slots one (--prefill-lanes does not apply)
    quant = ["--block-size", "32", "--rounding", "absmax"]
    assert export_matches(tiny_slots, [*quant, "--attention", "slots"])
    assert export_matches(tiny_slots, [*quant, "--attention", "slots", "--prefill-lanes", "3"])
    assert not export_matches(tiny_slots, quant)
    assert not export_matches(tiny_slots, [*quant, "--attention", "packed"])


def test_slots_weights_are_the_packed_ones(tiny_slots, tiny_packed):
    """The same seed gives the same weights whatever the attention: the engine's tests run a
    slots export against the packed one."""
    slots, packed = (json.loads((d / "manifest.json").read_text())
                     for d in (tiny_slots, tiny_packed))
    assert slots["files"]["model.onnx.data"] == packed["files"]["model.onnx.data"]
    assert slots["quantization"] == packed["quantization"]

    def weights(d):
        m = onnx.load(str(d / "model.onnx"))
        return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
                if t.name.startswith(("model.", "lm_head", "rope."))}

    a, b = weights(tiny_slots), weights(tiny_packed)
    assert a.keys() == b.keys() and any(".qkv_proj." in n for n in a)
    for name in a:
        assert a[name].dtype == b[name].dtype and (a[name] == b[name]).all(), name
