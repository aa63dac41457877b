"""PACKED_CONTRACT (--attention packed, the default): one pass per engine step, for stock ONNX
Runtime. The tokens of every row (one per decoding row, a prompt chunk per prefilling row) are
packed into one sequence, so every linear layer runs once over all of them; only attention is
per row, through ONNX Runtime's fused GroupQueryAttention over a slot KV cache (one
[slots, kv_heads, capacity, head_dim] buffer per layer and key/value, bound as both past and
present, written in place):
  inputs  input_ids int64 [1, tokens]: the packed tokens, in any order;
          decode_rows int64 [rows]: per slot row, the packed position of its decode token
            (any position for a row that does not decode: its output is never read);
          decode_seqlens_k int32 [rows]: per row, its past length (where its token goes); for
            a row that does not decode, a position past its real ones (written, never read);
          decode_total int32 []: the largest decode_seqlens_k + 1;
          past_key_values.{i}.{key,value} float32 [rows, kv_heads, capacity, head_dim];
          per prefill lane k < prefill_lanes (manifest): lane.{k}.start, lane.{k}.end int64
            [1] (the lane's packed positions start..end), lane.{k}.seqlens_k int32 [1] (its
            row's past + chunk - 1), lane.{k}.total int32 [] (past + chunk), and
            lane.{k}.past.{i}.{key,value} float32 [1, kv_heads, capacity, head_dim]: ONE
            row's slot (bound to a view of the same buffer); an unused lane takes one token
            over a scratch slot of capacity 1 (seqlens_k 0, total 1);
          attn_order int64 [tokens]: for each packed position, its attention output's index
            in Concat(decode rows' outputs, lane 0's, lane 1's, ...);
          logits_index int64 [logit_positions]: the packed positions whose logits are needed
            (lm_head runs on those only).
  outputs logits float32 [1, logit_positions, vocab]; present.{i}.{key,value} and
          lane.{k}.present.{i}.{key,value}, bound to the same memory as their pasts.
GroupQueryAttention on the CPU takes several new tokens over a past only for batch 1
(group_query_attention_helper.h, CheckInputs), hence the batch-1 lanes beside the decode node.
Per layer: one GroupQueryAttention over the decoding rows (their q|k|v gathered from the
packed matmul output) and one per prefill lane (a slice of it), RoPE inside (do_rotary),
per-row lengths (seqlens_k) instead of a mask; their outputs concatenated and put back in
packed order by one Gather.
"""
from __future__ import annotations

import math

from onnx import TensorProto, helper

from trendstory_tools.graph.attention_contract import AttentionContract
from trendstory_tools.graph.builder import MS_DOMAIN, GraphBuilder

# Prefill lanes of a packed graph: how many prompts can advance in one pass beside the
# decoding rows (each lane is one batch-1 GroupQueryAttention per layer; an unused one costs
# a one-token attention over a scratch slot, about 1.2 ms a pass for TinyLlama: BENCHMARKS.md,
# "One pass per step"). Story prompts arrive a few per second, so two lanes suffice.
DEFAULT_PREFILL_LANES = 2


class PackedAttention(AttentionContract):
    def __init__(self, g: GraphBuilder, dm: dict, rope: tuple[str, str], prefill_lanes: int):
        super().__init__(g, dm, rope)
        nh, kvh, hd = dm["heads"], dm["kv_heads"], dm["head_dim"]
        self.prefill_lanes = prefill_lanes
        self.shape_rows = g.const_i64([-1, 1, (nh + 2 * kvh) * hd], "shape_rows")
        self.shape_packed = g.const_i64([1, -1, nh * hd], "shape_packed")
        self.axis_tokens = g.const_i64([1], "axis_tokens")

    def inputs(self) -> list:
        i64, i32 = TensorProto.INT64, TensorProto.INT32
        value = helper.make_tensor_value_info
        inputs = [
            value("input_ids", i64, [1, "tokens"]),
            value("decode_rows", i64, ["rows"]),
            value("decode_seqlens_k", i32, ["rows"]),
            value("decode_total", i32, []),
        ]
        for k in range(self.prefill_lanes):
            inputs += [value(f"lane.{k}.start", i64, [1]), value(f"lane.{k}.end", i64, [1]),
                       value(f"lane.{k}.seqlens_k", i32, [1]), value(f"lane.{k}.total", i32, [])]
        return inputs + [value("attn_order", i64, ["tokens"]),
                         value("logits_index", i64, ["logit_positions"])]

    def past_shape(self) -> list:
        return self.kv_shape("rows", "capacity")

    def layer_values(self, i: int, kv: str) -> tuple[list, list, list]:
        value, f32 = helper.make_tensor_value_info, TensorProto.FLOAT
        present = value(f"present.{i}.{kv}", f32, self.past_shape())
        lane_inputs, lane_outputs = [], []
        for k in range(self.prefill_lanes):
            lane = self.kv_shape(1, f"lane_capacity_{k}")
            lane_inputs.append(value(f"lane.{k}.past.{i}.{kv}", f32, lane))
            lane_outputs.append(value(f"lane.{k}.present.{i}.{kv}", f32, lane))
        return [present], lane_inputs, lane_outputs

    def attend(self, qkv: str, i: int, pk: str, pv: str) -> str:
        """Layer i's attention over the packed tokens' q|k|v [1, T, (nh+2kvh)*hd]: the
        decoding rows' tokens (gathered, one per slot row) in one GroupQueryAttention over the
        whole slot buffer, each prefill lane's chunk (a slice) in a batch-1 one over its row's
        slot; the outputs concatenated and gathered back into packed order."""
        g = self.g
        p = f"model.layers.{i}"
        rows = g.op("Gather", [qkv, "decode_rows"], name=f"/{p}/decode_gather", axis=1)
        rows = g.op("Reshape", [rows, self.shape_rows], name=f"/{p}/decode_rows")  # [R, 1, qkv]
        outs = [f"/{p}/decode_gqa_out"]
        self.gqa_node(rows, pk, pv, "decode_seqlens_k", "decode_total", outs[0],
                      [f"present.{i}.key", f"present.{i}.value"])
        outs[0] = g.op("Reshape", [outs[0], self.shape_packed], name=f"/{p}/decode_out")  # [1, R, H]
        for k in range(self.prefill_lanes):
            chunk = g.op("Slice", [qkv, f"lane.{k}.start", f"lane.{k}.end", self.axis_tokens],
                         name=f"/{p}/lane{k}_slice")
            out = f"/{p}/lane{k}_gqa_out"
            self.gqa_node(chunk, f"lane.{k}.past.{i}.key", f"lane.{k}.past.{i}.value",
                          f"lane.{k}.seqlens_k", f"lane.{k}.total", out,
                          [f"lane.{k}.present.{i}.key", f"lane.{k}.present.{i}.value"])
            outs.append(out)
        ctx = g.op("Concat", outs, name=f"/{p}/attn_concat", axis=1)
        return g.op("Gather", [ctx, "attn_order"], name=f"/{p}/attn_order", axis=1)

    def gqa_node(self, qkv, pk, pv, seqlens, total, out, present) -> None:
        """One GroupQueryAttention on a packed q|k|v input (Linear concatenates the q, k, v
        rows in that order, which is GQA's packed layout)."""
        cos_cache, sin_cache = self.rope
        dm = self.dm
        self.g.node("GroupQueryAttention",
                    [qkv, "", "", pk, pv, seqlens, total, cos_cache, sin_cache],
                    [out, *present], out.removesuffix("_out"), MS_DOMAIN,
                    num_heads=dm["heads"], kv_num_heads=dm["kv_heads"], do_rotary=1,
                    rotary_interleaved=0, scale=1.0 / math.sqrt(dm["head_dim"]))
