"""A benchmark baseline (--linear-only): exactly the decoder's int4 MatMulNBits nodes and
nothing else, to time the matmuls apart from attention and the other ops."""
from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from trendstory_tools.graph.builder import GraphBuilder
from trendstory_tools.graph.linear import Linear
from trendstory_tools.int4.formats import Quantization
from trendstory_tools.llama_checkpoint import lm_head_name, model_dims


def build_linear_only(cfg: dict, weights, out_dir: Path, quant: Quantization) -> dict:
    """Per layer the same fused matmuls as build_decoder: qkv, o, gate_up, down. Only shape
    glue in between: qkv's first H columns (Split) feed o; gate * up (Split, Mul) feeds down.
    Returns Linear.encodings."""
    dm = model_dims(cfg)
    L, H, V = dm["layers"], dm["hidden"], dm["vocab"]
    kv_dim = dm["kv_heads"] * dm["head_dim"]
    g = GraphBuilder(out_dir / "model.onnx.data")
    lin = Linear(g, quant, weights)
    split_qkv = g.const_i64([H, 2 * kv_dim], "split_qkv")
    split_mlp = g.const_i64([dm["inter"], dm["inter"]], "split_mlp")
    x = "x"
    for i in range(L):
        p = f"model.layers.{i}"
        qkv = lin(x, [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"], f"{p}.self_attn.qkv_proj")
        q, _ = g.op("Split", [qkv, split_qkv], n_out=2, name=f"/{p}/qkv_split", axis=-1)
        a = lin(q, f"{p}.self_attn.o_proj.weight", f"{p}.self_attn.o_proj")
        gate_up = lin(a, [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                      f"{p}.mlp.gate_up_proj")
        gt, up = g.op("Split", [gate_up, split_mlp], n_out=2, name=f"/{p}/mlp/split", axis=-1)
        x = lin(g.op("Mul", [gt, up], name=f"/{p}/gu"), f"{p}.mlp.down_proj.weight",
                f"{p}.mlp.down_proj")
    logits = lin(x, lm_head_name(cfg, weights), "lm_head")
    g.node("Identity", [logits], ["logits"], "logits")
    shape = ["batch_size", "sequence_length"]
    g.save(out_dir / "model.onnx", "trendstory_linear_only",
           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape, H])],
           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*shape, V])])
    return lin.encodings
