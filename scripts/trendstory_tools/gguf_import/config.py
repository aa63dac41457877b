"""A GGUF's Hugging Face config.json and generation_config.json, from its llama.* metadata,
its special token ids and its sampling defaults (general.sampling.*, --sampling)."""
from __future__ import annotations

from trendstory_tools.gguf_import.gguf_file import GGUFError, GGUFFile

SUPPORTED_ARCHITECTURES = ("llama",)
# Keys of the Llama architecture whose presence means a model the graph does not build.
UNSUPPORTED_KEYS = {
    "llama.expert_count": "mixture of experts",
    "llama.rope.scaling.type": "RoPE scaling",
    "llama.attention.sliding_window": "sliding-window attention",
}


def hf_config(f: GGUFFile) -> dict:
    """The Hugging Face config.json of the file's model."""
    arch = f.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f.path, "general.architecture",
                        f"{arch!r} is not supported (only {', '.join(SUPPORTED_ARCHITECTURES)})")
    for key, what in UNSUPPORTED_KEYS.items():
        value = f.get(key, None)
        if value not in (None, "none", 0):
            raise GGUFError(f.path, key, f"{value!r}: {what} is not supported")
    hidden = f.get_int("llama.embedding_length")
    heads = f.get_int("llama.attention.head_count")
    kv_heads = f.get_int("llama.attention.head_count_kv", heads)
    if heads == 0 or kv_heads == 0 or heads % kv_heads or hidden % heads:
        raise GGUFError(f.path, "llama.attention.head_count_kv",
                        f"{heads} heads over {kv_heads} KV heads and embedding {hidden} "
                        "do not divide evenly")
    head_dim = hidden // heads
    for key in ("llama.rope.dimension_count", "llama.attention.key_length",
                "llama.attention.value_length"):
        value = f.get_int(key, head_dim)
        if value != head_dim:
            raise GGUFError(f.path, key, f"{value}: only a full head of {head_dim} is supported")
    vocab = f.get_int("llama.vocab_size", len(f.tokens))
    if vocab != len(f.tokens):
        raise GGUFError(f.path, "llama.vocab_size",
                        f"{vocab}, but tokenizer.ggml.tokens has {len(f.tokens)} tokens")
    bos, eos = special_ids(f)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": f.get_int("llama.feed_forward_length"),
        "num_hidden_layers": f.get_int("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": f.get_int("llama.context_length"),
        "rms_norm_eps": float(f.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(f.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def special_ids(f: GGUFFile) -> tuple[int, int]:
    """(BOS, EOS). The end of a turn (tokenizer.ggml.eot_token_id, where the file names one)
    is what a chat model writes last, so it is the EOS the engine stops at."""
    n = len(f.tokens)
    out = []
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        value = f.get_int(key)
        if key.endswith("eos_token_id"):
            value = f.get_int("tokenizer.ggml.eot_token_id", value)
        if value >= n:
            raise GGUFError(f.path, key, f"{value} is past the vocabulary ({n} tokens)")
        out.append(value)
    return out[0], out[1]


# general.sampling.* (llama.cpp's sampling defaults in the file) -> generation_config.json.
SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                 "general.sampling.top_k": "top_k",
                 "general.sampling.penalty_repeat": "repetition_penalty"}
SAMPLING_NAMES = ("temperature", "top_p", "top_k", "repetition_penalty")


def parse_sampling(spec: str) -> dict:
    """--sampling's NAME=VALUE,... -> {name: number}. Raises ValueError naming the bad item."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, eq, value = item.partition("=")
        if not eq or name not in SAMPLING_NAMES:
            raise ValueError(f"{item!r}: expected NAME=VALUE, NAME one of "
                             f"{', '.join(SAMPLING_NAMES)}")
        try:
            out[name] = int(value) if name == "top_k" else float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a number") from None
    return out


def generation_config(f: GGUFFile, cfg: dict, sampling: dict) -> dict:
    out = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    pad = f.get("tokenizer.ggml.padding_token_id", None)
    if pad is not None:
        out["pad_token_id"] = int(pad)
    for key, name in SAMPLING_KEYS.items():
        value = f.get(key, None)
        if value is not None:
            out[name] = int(value) if name == "top_k" else float(value)
    out.update(sampling)
    if any(name in out for name in SAMPLING_NAMES):
        out["do_sample"] = True
    return out
