"""The explicit contract (--attention explicit): the decoder-with-past graph optimum and
transformers.js export, with the same names, left padding through attention_mask. The engine
runs it for optimum-format models.

  inputs  input_ids, attention_mask, position_ids: int64; past_key_values.{i}.{key,value}
          float32 [batch_size, num_kv_heads, past_sequence_length, head_dim]
  outputs logits float32 [batch_size, sequence_length, vocab];
          present.{i}.{key,value} float32 [batch_size, num_kv_heads, total_sequence_length,
          head_dim] = Concat(past, new, axis=2)

Per layer: RotaryEmbedding on q and k with the caller's position_ids (so left padding keeps
working), then MatMul / Where / Softmax / MatMul over Concat(past, new): 4 matmuls and 20
other nodes a layer, with the linear layers.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from trendstory_tools.graph.attention_contract import AttentionContract
from trendstory_tools.graph.builder import MS_DOMAIN, GraphBuilder

# Finite "minus infinity" for masked attention scores: Where(mask, scores, MASK_VALUE) keeps a
# fully-masked (left pad) row finite (uniform softmax, ignored by the caller), never NaN.
MASK_VALUE = float(np.finfo(np.float32).min)


class ExplicitAttention(AttentionContract):
    logits_index = False

    def __init__(self, g: GraphBuilder, dm: dict, rope: tuple[str, str]):
        super().__init__(g, dm, rope)
        nh, kvh, hd = dm["heads"], dm["kv_heads"], dm["head_dim"]
        self.mask_value = g.const_f32(MASK_VALUE, "mask_value")
        self.mask = attention_mask_bool(g, nh // kvh)
        self.shape_qkv = g.const_i64([0, 0, nh + 2 * kvh, hd], "shape_qkv")
        self.split_qkv = g.const_i64([nh, kvh, kvh], "split_qkv")
        self.shape_qg = g.const_i64([0, kvh, -1, hd], "shape_qg")
        self.shape_heads = g.const_i64([0, nh, -1, hd], "shape_heads")
        self.shape_hidden = g.const_i64([0, 0, nh * hd], "shape_hidden")

    def inputs(self) -> list:
        return [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                          ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                          ["batch_size", "total_sequence_length"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                          ["batch_size", "sequence_length"]),
        ]

    def logits_shape(self) -> list:
        return ["batch_size", "sequence_length", self.dm["vocab"]]

    def past_shape(self) -> list:
        return self.kv_shape("batch_size", "past_sequence_length")

    def layer_values(self, i: int, kv: str) -> tuple[list, list, list]:
        present = helper.make_tensor_value_info(
            f"present.{i}.{kv}", TensorProto.FLOAT,
            self.kv_shape("batch_size", "total_sequence_length"))
        return [present], [], []

    def attend(self, qkv: str, i: int, pk: str, pv: str) -> str:
        """Explicit attention of layer i on its q|k|v [B, S, (nh+2kvh)*hd]: returns
        [B, S, nh*hd]; writes present.{i}.key|value."""
        g, (cos_cache, sin_cache) = self.g, self.rope
        p = f"model.layers.{i}"
        # One Reshape + Transpose for all heads: [B, S, nh+2kvh, hd] -> [B, nh+2kvh, S, hd].
        heads = g.op("Reshape", [qkv, self.shape_qkv], name=f"/{p}/qkv_reshape")
        heads = g.op("Transpose", [heads], name=f"/{p}/qkv_t", perm=[0, 2, 1, 3])
        q, k, v = g.op("Split", [heads, self.split_qkv], n_out=3, name=f"/{p}/qkv_split", axis=1)
        # HF rotate_half RoPE (interleaved=0) on [B, N, S, hd], positions from the caller.
        q = g.op("RotaryEmbedding", [q, "position_ids", cos_cache, sin_cache], domain=MS_DOMAIN,
                 name=f"/{p}/q_rope", interleaved=0)
        k = g.op("RotaryEmbedding", [k, "position_ids", cos_cache, sin_cache], domain=MS_DOMAIN,
                 name=f"/{p}/k_rope", interleaved=0)
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        g.node("Concat", [pk, k], [present_k], f"/{p}/k_cat", axis=2)
        g.node("Concat", [pv, v], [present_v], f"/{p}/v_cat", axis=2)
        # GQA without expanding K/V: head h uses kv head h // groups, so the nh query heads
        # reshape to [B, kvh, groups*S, hd] and share one MatMul per kv head. The 1/sqrt(hd)
        # scale and K's transpose ride on FusedMatMul.
        qg = g.op("Reshape", [q, self.shape_qg], name=f"/{p}/q_group")
        scores = g.op("FusedMatMul", [qg, present_k], domain=MS_DOMAIN, name=f"/{p}/scores",
                      transB=1, alpha=1.0 / math.sqrt(self.dm["head_dim"]))
        # scores: [B, kvh, groups*S, T]
        scores = g.op("Where", [self.mask, scores, self.mask_value], name=f"/{p}/mask")
        probs = g.op("Softmax", [scores], name=f"/{p}/softmax", axis=-1)
        ctx = g.op("MatMul", [probs, present_v], name=f"/{p}/ctx")  # [B, kvh, groups*S, hd]
        ctx = g.op("Reshape", [ctx, self.shape_heads], name=f"/{p}/ctx_heads")  # [B, nh, S, hd]
        ctx = g.op("Transpose", [ctx], name=f"/{p}/ctx_t", perm=[0, 2, 1, 3])
        return g.op("Reshape", [ctx, self.shape_hidden], name=f"/{p}/ctx_merge")  # [B, S, H]


def attention_mask_bool(g: GraphBuilder, groups: int) -> str:
    """Boolean mask [B, 1, groups*S, T]: causal (key j <= past + i) AND attention_mask[b, j].

    Built once per step from the input shapes and shared by all layers. Query rows are laid out
    [group, S] per kv head (see ExplicitAttention.attend), hence the Tile over groups."""
    zero = g.const_i64(0, "zero")
    one = g.const_i64(1, "one")
    ids_shape = g.op("Shape", ["input_ids"], name="mask/ids_shape")
    s_len = g.op("Gather", [ids_shape, one], name="mask/S", axis=0)
    am_shape = g.op("Shape", ["attention_mask"], name="mask/am_shape")
    t_len = g.op("Gather", [am_shape, one], name="mask/T", axis=0)
    past_len = g.op("Sub", [t_len, s_len], name="mask/past")
    q_pos = g.op("Range", [past_len, g.op("Add", [past_len, s_len], name="mask/end"), one],
                 name="mask/q_pos")
    k_pos = g.op("Range", [zero, t_len, one], name="mask/k_pos")
    q_col = g.op("Unsqueeze", [q_pos, g.const_i64([1], "axes_q")], name="mask/q_col")  # [S,1]
    k_row = g.op("Unsqueeze", [k_pos, g.const_i64([0], "axes_k")], name="mask/k_row")  # [1,T]
    causal = g.op("LessOrEqual", [k_row, q_col], name="mask/causal")  # [S, T]
    pad = g.op("Cast", ["attention_mask"], name="mask/pad_bool", to=TensorProto.BOOL)
    pad = g.op("Unsqueeze", [pad, g.const_i64([1, 2], "axes12")], name="mask/pad")  # [B,1,1,T]
    mask = g.op("And", [causal, pad], name="mask/and")  # [B, 1, S, T]
    if groups > 1:
        mask = g.op("Tile", [mask, g.const_i64([1, 1, groups, 1], "tile")], name="mask/tile")
    return mask
