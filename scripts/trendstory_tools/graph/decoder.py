"""The Llama decoder as one ONNX graph (model.onnx + model.onnx.data): embedding, per layer
RMSNorm, self-attention and the SwiGLU MLP, the final norm and the output head. How attention
reads and writes the KV cache, and so the graph's inputs and outputs, is the contract's
(--attention; graph/attention_contract.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from trendstory_tools.graph.attention_contract import AttentionContract
from trendstory_tools.graph.builder import MS_DOMAIN, GraphBuilder
from trendstory_tools.graph.explicit_contract import ExplicitAttention
from trendstory_tools.graph.linear import Linear
from trendstory_tools.graph.packed_contract import DEFAULT_PREFILL_LANES, PackedAttention
from trendstory_tools.graph.slots_contract import SlotAttentionContract
from trendstory_tools.int4.formats import Quantization
from trendstory_tools.llama_checkpoint import lm_head_name, model_dims, rope_tables
from trendstory_tools.log import log

# The graph contracts of --attention; the first is the default.
ATTENTIONS = ("packed", "explicit", "slots")
EXPORTER_VERSION = 2


def attention_contract(attention: str, g: GraphBuilder, dm: dict, rope: tuple[str, str],
                       prefill_lanes: int) -> AttentionContract:
    if attention == "explicit":
        return ExplicitAttention(g, dm, rope)
    if attention == "packed":
        return PackedAttention(g, dm, rope, prefill_lanes)
    return SlotAttentionContract(g, dm, rope)


def build_decoder(cfg: dict, weights, out_dir: Path, quant: Quantization | None,
                  attention: str = "packed", prefill_lanes: int = DEFAULT_PREFILL_LANES) -> dict:
    """Write out_dir/model.onnx (+ model.onnx.data) for a Llama decoder with past. weights:
    anything with get_f32(name) and `name in weights` (safetensors_io.SafeTensorsDir,
    gguf/weights.py's GGUFWeights). Returns Linear.encodings (how each kind's nodes were
    quantized).

    On a small CPU a decode step is dominated by per-node dispatch overhead outside the int4
    matmuls, so the graph is built from as few nodes as the contract allows, using the fused
    ONNX Runtime ops directly instead of hoping the optimizer finds them:
      - RMSNorm + residual add: (Skip)SimplifiedLayerNormalization, one node per norm;
      - q/k/v and gate/up: one MatMulNBits each (rows concatenated, see Linear), then Split;
      - RoPE: inside the contract's attention (com.microsoft.RotaryEmbedding, or the fused
        attention op's own);
      - attention: the contract's (explicit_contract.py, packed_contract.py,
        slots_contract.py); lm_head runs only on logits_index where the contract has it.
    """
    dm = model_dims(cfg)
    L, eps = dm["layers"], dm["eps"]
    nh, kvh = dm["heads"], dm["kv_heads"]
    if nh % kvh:
        raise SystemExit(f"error: num_attention_heads {nh} not a multiple of kv heads {kvh}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise SystemExit("error: linear biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise SystemExit(f"error: hidden_act {cfg.get('hidden_act')!r} is not supported")

    g = GraphBuilder(out_dir / "model.onnx.data")
    lin = Linear(g, quant, weights)
    W = weights.get_f32

    def norm(x, delta, wname, name):
        """RMSNorm of the residual stream x (+ delta, the sublayer output not yet added).

        Returns (normed, new residual stream). With a delta this is one
        SkipSimplifiedLayerNormalization, whose 4th output is x + delta: the residual add
        costs no node of its own."""
        w = g.init(wname, W(wname).astype(np.float32))
        if delta is None:
            return g.op("SimplifiedLayerNormalization", [x, w], name=f"{name}/SimplifiedLayerNorm",
                        axis=-1, epsilon=eps, stash_type=1), x
        nm = f"{name}/SkipSimplifiedLayerNorm"
        normed, total = f"{nm}_out0", f"{nm}_sum"
        g.node("SkipSimplifiedLayerNormalization", [delta, x, w], [normed, "", "", total], nm,
               MS_DOMAIN, epsilon=eps)
        return normed, total

    # Embedding (float32 Gather).
    embed = g.init("model.embed_tokens.weight", W("model.embed_tokens.weight"))
    x = g.op("Gather", [embed, "input_ids"], name="embed/Gather", axis=0)

    # RoPE caches [max_pos, hd/2], looked up by position by the attention ops.
    cos_t, sin_t = rope_tables(cfg, dm["head_dim"])
    rope = (g.init("rope.cos", cos_t), g.init("rope.sin", sin_t))
    contract = attention_contract(attention, g, dm, rope, prefill_lanes)
    split_mlp = g.const_i64([dm["inter"], dm["inter"]], "split_mlp")

    def self_attention(h, i, pk, pv):
        """Self-attention of layer i on the normed input h: q|k|v in one matmul (q, k, v rows
        in that order), the contract's attention, o_proj."""
        p = f"model.layers.{i}"
        qkv = lin(h, [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"], f"{p}.self_attn.qkv_proj")
        ctx = contract.attend(qkv, i, pk, pv)
        return lin(ctx, f"{p}.self_attn.o_proj.weight", f"{p}.self_attn.o_proj")

    def mlp(h, i):
        """SwiGLU MLP: down(silu(gate(h)) * up(h)), gate and up as one matmul."""
        p = f"model.layers.{i}"
        gate_up = lin(h, [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
                      f"{p}.mlp.gate_up_proj")
        gate, up = g.op("Split", [gate_up, split_mlp], n_out=2, name=f"/{p}/mlp/split", axis=-1)
        act = g.op("QuickGelu", [gate], domain=MS_DOMAIN, name=f"/{p}/mlp/silu", alpha=1.0)
        return lin(g.op("Mul", [act, up], name=f"/{p}/mlp/mul"),
                   f"{p}.mlp.down_proj.weight", f"{p}.mlp.down_proj")

    inputs = contract.inputs()
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, contract.logits_shape())]
    presents, extra_inputs, extra_outputs = [], [], []
    delta = None  # the last sublayer's output, added to x by the next norm
    for i in range(L):
        p = f"model.layers.{i}"
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}",
                                                        TensorProto.FLOAT, contract.past_shape()))
            present, more_inputs, more_outputs = contract.layer_values(i, kv)
            presents += present
            extra_inputs += more_inputs
            extra_outputs += more_outputs
        h, x = norm(x, delta, f"{p}.input_layernorm.weight", f"/{p}/input_layernorm")
        delta = self_attention(h, i, pk, pv)
        h, x = norm(x, delta, f"{p}.post_attention_layernorm.weight", f"/{p}/post_attention_layernorm")
        delta = mlp(h, i)
        log(f"  layer {i + 1}/{L} done")

    x, _ = norm(x, delta, "model.norm.weight", "/model/norm")
    if contract.logits_index:
        x = g.op("Gather", [x, "logits_index"], name="/model/logits_gather", axis=1)
    logits = lin(x, lm_head_name(cfg, weights), "lm_head")
    g.node("Identity", [logits], ["logits"], "logits")
    g.save(out_dir / "model.onnx", "trendstory_llama", inputs + extra_inputs,
           outputs + presents + extra_outputs, contract.extra_opsets,
           producer_version=str(EXPORTER_VERSION))
    return lin.encodings
