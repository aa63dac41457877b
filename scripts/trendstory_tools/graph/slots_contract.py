"""SLOTS_CONTRACT (--attention slots): PACKED_CONTRACT's one pass per engine step, with all of
a layer's attention in one node of the engine's own, ai.trendstory.SlotAttention: inputs q|k|v
[1, tokens, (heads + 2 * kv_heads) * head_dim], rows, rope.cos, rope.sin (the [max_position,
head_dim / 2] tables; rotate-half RoPE, as GroupQueryAttention's do_rotary) and the layer's
key and value slot buffers; output [1, tokens, heads * head_dim]; attributes num_heads,
kv_num_heads, scale (1/sqrt(head_dim)). No decode gather, lanes, Concat or attn_order: a
decoding row (one token) and a prompt chunk (several, causal within the chunk over the row's
past) are the same kind of row.
  inputs  input_ids int64 [1, tokens]: every row's tokens, packed row after row;
          rows int64 [rows, 4]: per row [slot, past, start, count]: its slot in the KV
            buffers, the positions that slot holds before this pass (its tokens go to
            past..past+count, at RoPE positions past+j), its first packed position (its tokens
            are start..start+count) and its token count;
          logits_index int64 [logit_positions]: as in PACKED_CONTRACT;
          past_key_values.{i}.{key,value} float32 [slots, kv_heads, capacity, head_dim]: the
            engine's slot cache, bound once; the node writes each row's new keys and values
            there, at the row's positions, in place.
  outputs logits float32 [1, logit_positions, vocab] (no presents).
The op is the engine's own (registered on its ONNX Runtime session, see src/engine/attention):
stock ONNX Runtime cannot run this graph, so it has no golden.json (the engine's tests hold it
to the packed graph of the same weights); the packed graph stays the one for stock ONNX Runtime.
"""
from __future__ import annotations

import math

from onnx import TensorProto, helper

from trendstory_tools.graph.attention_contract import AttentionContract

# The domain of the engine's own ops.
TRENDSTORY_DOMAIN = "ai.trendstory"


class SlotAttentionContract(AttentionContract):
    extra_opsets = ((TRENDSTORY_DOMAIN, 1),)

    def inputs(self) -> list:
        value, i64 = helper.make_tensor_value_info, TensorProto.INT64
        return [value("input_ids", i64, [1, "tokens"]),
                value("rows", i64, ["rows", 4]),
                value("logits_index", i64, ["logit_positions"])]

    def past_shape(self) -> list:
        return self.kv_shape("slots", "capacity")

    def attend(self, qkv: str, i: int, pk: str, pv: str) -> str:
        """Layer i's attention over the packed tokens' q|k|v, every row in one node, which
        writes the rows' new keys and values into pk, pv (no presents)."""
        cos_cache, sin_cache = self.rope
        dm = self.dm
        return self.g.op("SlotAttention", [qkv, "rows", cos_cache, sin_cache, pk, pv],
                         domain=TRENDSTORY_DOMAIN, name=f"/model.layers.{i}/slot_attention",
                         num_heads=dm["heads"], kv_num_heads=dm["kv_heads"],
                         scale=1.0 / math.sqrt(dm["head_dim"]))
