"""A Llama checkpoint's layout as the tools read it: the dimensions in its config.json, the
names and shapes of its tensors, the output head (its own or the tied embeddings) and the
RoPE tables."""
from __future__ import annotations

import numpy as np


def model_dims(cfg: dict) -> dict:
    h = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    kvh = int(cfg.get("num_key_value_heads", nh))
    hd = int(cfg.get("head_dim") or h // nh)
    return dict(layers=int(cfg["num_hidden_layers"]), hidden=h, inter=int(cfg["intermediate_size"]),
                heads=nh, kv_heads=kvh, head_dim=hd, vocab=int(cfg["vocab_size"]),
                eps=float(cfg.get("rms_norm_eps", 1e-6)),
                max_pos=int(cfg["max_position_embeddings"]))


def tensor_specs(cfg: dict):
    dm = model_dims(cfg)
    H, I, V = dm["hidden"], dm["inter"], dm["vocab"]
    q_out, kv_out = dm["heads"] * dm["head_dim"], dm["kv_heads"] * dm["head_dim"]
    specs = [("model.embed_tokens.weight", (V, H))]
    for i in range(dm["layers"]):
        p = f"model.layers.{i}"
        specs += [(f"{p}.self_attn.q_proj.weight", (q_out, H)),
                  (f"{p}.self_attn.k_proj.weight", (kv_out, H)),
                  (f"{p}.self_attn.v_proj.weight", (kv_out, H)),
                  (f"{p}.self_attn.o_proj.weight", (H, q_out)),
                  (f"{p}.mlp.gate_proj.weight", (I, H)),
                  (f"{p}.mlp.up_proj.weight", (I, H)),
                  (f"{p}.mlp.down_proj.weight", (H, I)),
                  (f"{p}.input_layernorm.weight", (H,)),
                  (f"{p}.post_attention_layernorm.weight", (H,))]
    specs += [("model.norm.weight", (H,))]
    if not cfg.get("tie_word_embeddings", False):
        specs += [("lm_head.weight", (V, H))]
    return specs


# Tiny preset init. A plain random model has near-tied logits: for ANY hidden state h, the
# logits <w_v, h> of a Gaussian lm_head are iid Gaussian over the vocabulary, so the top-1/top-2
# gap is ~exponential with mean ~0.27 std and falls under 0.05 std at ~17% of steps; no init
# *scale* changes that ratio. Different kernel orders (KV cache vs recompute, padded batches,
# int8 activation blocks of accuracy_level 4) then flip greedy ids. So the tiny model gets a
# structured lm_head: row pi(t) = TINY_LM_ALIGN * embed[t] + noise (pi a fixed random
# permutation), with embeddings (std TINY_EMBED_STD) a large share of the residual stream while
# the layers (std TINY_LINEAR_STD, large enough that attention and MLP shift the logits
# visibly) add the rest. The next token is then decided by a clear spike, and golden.json's
# min_top2_margin (checked > 0.05 * logit std) says by how much. Tuned on seeds 0-1 with both
# tokenizers: linear std 0.06 gives min margins of 3-4.4 logit std (1,024 and 32,000 vocab);
# at 0.08 the 32,000-vocab model already drops to ~0.02 std, at 0.1+ it is a plain random
# model (margins ~0.001 std). The price: greedy ids follow the last token almost always


def lm_head_name(cfg: dict, weights) -> str:
    if "lm_head.weight" in weights:
        return "lm_head.weight"
    if not cfg.get("tie_word_embeddings", False):
        raise SystemExit("error: lm_head.weight missing and tie_word_embeddings is false")
    return "model.embed_tokens.weight"


def rope_tables(cfg: dict, head_dim: int):
    theta = float(cfg.get("rope_theta", 10000.0))
    if cfg.get("rope_scaling"):
        raise SystemExit(f"error: rope_scaling={cfg['rope_scaling']!r} is not supported")
    max_pos = int(cfg["max_position_embeddings"])
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(max_pos, dtype=np.float64), inv)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)
