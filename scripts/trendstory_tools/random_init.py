"""Random-weight checkpoints (--random-init): a Hugging Face folder with the tiny preset's or
TinyLlama's shape, seeded and deterministic per tensor, so tests and benchmarks need no
download."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from trendstory_tools.llama_checkpoint import tensor_specs
from trendstory_tools.log import log
from trendstory_tools.paths import SHARED_LLAMA2_TOKENIZER, SHARED_TINYLLAMA_CONFIG
from trendstory_tools.safetensors_io import write_safetensors
from trendstory_tools.tiny_tokenizer import tiny_tokenizer_config, train_tiny_tokenizer


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
# (a permuted bigram), so context shows in the logit values (top1_logits in golden.json) more
# than in the ids.
TINY_EMBED_STD = 1.0
TINY_LINEAR_STD = 0.06
TINY_LM_ALIGN = 1.0
TINY_LM_NOISE_STD = 0.3


def random_init_producer(cfg: dict, preset: str, seed: int):
    """Returns produce(name, shape) -> float32 array (deterministic per name and seed)."""
    V, H = int(cfg["vocab_size"]), int(cfg["hidden_size"])
    perm = np.random.default_rng([seed, 7]).permutation(V)
    cache = {}

    def rng_for(name):
        h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        return np.random.default_rng([seed, h])

    def normal(name, shape, std):
        return rng_for(name).standard_normal(shape, dtype=np.float32) * np.float32(std)

    def produce(name, shape):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            return np.ones(shape, dtype=np.float32)
        if preset != "tiny":
            return normal(name, shape, float(cfg.get("initializer_range", 0.02)))
        if name == "model.embed_tokens.weight":
            e = normal(name, shape, TINY_EMBED_STD)
            cache["embed"] = e
            return e
        if name == "lm_head.weight":
            e = cache.get("embed")
            if e is None:
                e = normal("model.embed_tokens.weight", (V, H), TINY_EMBED_STD)
            lm = np.empty((V, H), dtype=np.float32)
            lm[perm] = e * np.float32(TINY_LM_ALIGN / TINY_EMBED_STD)
            return lm + normal(name, shape, TINY_LM_NOISE_STD)
        return normal(name, shape, TINY_LINEAR_STD)

    return produce


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": TINY_LINEAR_STD,
    "intermediate_size": 384,
    "max_position_embeddings": 512,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": None,
}


# Written into a --random-init checkpoint folder; its presence marks the weights as random.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def write_random_hf(preset: str, hf_dir: Path, dtype: str, seed: int, tokenizer_dir: Path | None):
    """Write a normal HF folder (config, model.safetensors, tokenizer files) with random weights."""
    hf_dir.mkdir(parents=True, exist_ok=True)
    if preset == "tinyllama":
        if not (SHARED_TINYLLAMA_CONFIG / "config.json").exists():
            raise SystemExit(
                f"error: {SHARED_TINYLLAMA_CONFIG}/config.json not found: the tinyllama preset "
                f"copies TinyLlama's config.json and the Llama 2 tokenizer from ../shared/models "
                f"(beside the repo). Use scripts/fetch-model.sh with internet, or --preset tiny.")
        tokenizer_dir = tokenizer_dir or SHARED_LLAMA2_TOKENIZER
        cfg = json.loads((SHARED_TINYLLAMA_CONFIG / "config.json").read_text())
        shutil.copyfile(SHARED_TINYLLAMA_CONFIG / "generation_config.json",
                        hf_dir / "generation_config.json")
    else:
        cfg = dict(TINY_CONFIG)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not (tokenizer_dir / "tokenizer.json").exists():
            raise SystemExit(f"error: {tokenizer_dir}/tokenizer.json not found")
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
            if (tokenizer_dir / f).exists():
                shutil.copyfile(tokenizer_dir / f, hf_dir / f)
    else:
        (hf_dir / "tokenizer.json").write_text(train_tiny_tokenizer(), encoding="utf-8")
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(tiny_tokenizer_config(), indent=2))
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    if preset == "tiny":
        cfg["vocab_size"] = vocab
        cfg["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
        (hf_dir / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "max_length": cfg["max_position_embeddings"],
             "pad_token_id": 0}, indent=2))
    elif vocab != cfg["vocab_size"]:
        raise SystemExit(f"error: tokenizer has {vocab} tokens, config says {cfg['vocab_size']}")
    cfg["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    (hf_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    t0 = time.time()
    write_safetensors(hf_dir / "model.safetensors", tensor_specs(cfg),
                      random_init_producer(cfg, preset, seed),
                      dtype="BF16" if dtype == "bf16" else "F32")
    log(f"wrote {hf_dir}/model.safetensors ({dtype}) in {time.time() - t0:.1f}s")
    # Marks the checkpoint as noise, so a later --hf-dir export of it still says so.
    (hf_dir / RANDOM_WEIGHTS_MARKER).write_text(
        f"random-init:{preset} seed {seed}: random weights, every generated text is noise\n")
    return cfg
