"""A GGUF's tokenizer.json and tokenizer_config.json, built from tokenizer.ggml.* so that it
tokenizes as llama.cpp does for the same file (PRE_TOKENIZERS: the pre-tokenizers whose
llama.cpp rules we reproduce)."""
from __future__ import annotations

import json

from trendstory_tools.gguf_import.gguf_file import GGUFError, GGUFFile

# llama.cpp's token types (llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# GPT-2's split rule, as Hugging Face's ByteLevel pre-tokenizer applies it (use_regex) and
# llama.cpp's unicode_regex_split_custom_gpt2 implements it.
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}
# Llama 3's split rule (llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3, the pattern of its
# tokenizer.json), then bytes without a second split.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                  r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (Hugging Face pre_tokenizer, add_bos default, ignore_merges), for the
# pre-tokenizers llama.cpp's llama-vocab.cpp defines and whose rules these reproduce, each
# checked against llama-server's /tokenize (tests/fixtures/gguf/). llama.cpp's "smollm"
# splits every digit apart ("\p{N}"), then applies GPT-2's rule.
PRE_TOKENIZERS = {
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}, False, False),
    "gpt-2": (BYTE_LEVEL, False, False),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
         "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]}, True, True),
}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-v3"] = PRE_TOKENIZERS["llama-bpe"]


def build_tokenizer(f: GGUFFile, cfg: dict) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config.json) for the file's byte-level BPE vocabulary."""
    from tokenizers import Tokenizer
    model = f.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f.path, "tokenizer.ggml.model",
                        f"{model!r}: only 'gpt2' (byte-level BPE) vocabularies can be built")
    pre = f.get("tokenizer.ggml.pre", "")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f.path, "tokenizer.ggml.pre",
                        f"{pre!r}: no reproduction of llama.cpp's rules for it (known: "
                        f"{', '.join(sorted(PRE_TOKENIZERS))})")
    pre_tokenizer, bos_default, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = f.tokens
    types = f.get("tokenizer.ggml.token_type")
    if len(types) != len(tokens):
        raise GGUFError(f.path, "tokenizer.ggml.token_type",
                        f"{len(types)} types for {len(tokens)} tokens")
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise GGUFError(f.path, "tokenizer.ggml.tokens",
                            f"token {i} {t!r} repeats token {vocab[t]}")
        vocab[t] = i
    merges = []
    for i, m in enumerate(f.get("tokenizer.ggml.merges")):
        parts = m.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab \
                or parts[0] + parts[1] not in vocab:
            raise GGUFError(f.path, "tokenizer.ggml.merges",
                            f"entry {i} {m!r} is not two tokens of the vocabulary merging "
                            "into a third")
        merges.append(parts)
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": int(types[i]) != USER_DEFINED}
             for i in range(len(tokens)) if int(types[i]) in (CONTROL, USER_DEFINED, UNKNOWN)]
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token", bos_default))
    add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = tokens[cfg["bos_token_id"]], tokens[f.get_int("tokenizer.ggml.eos_token_id")]
    if add_bos or add_eos:
        single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos else []) \
            + [{"Sequence": {"id": "A", "type_id": 0}}] \
            + ([{"SpecialToken": {"id": eos, "type_id": 0}}] if add_eos else [])
        specials = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]}
                    for t, on in ((bos, add_bos), (eos, add_eos)) if on}
        post = {"type": "TemplateProcessing", "single": single,
                "pair": single + [{"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": specials}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                "use_regex": True}
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges},
    }
    text = json.dumps(spec, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as e:
        raise GGUFError(f.path, "tokenizer.ggml.*", f"the built tokenizer does not load: {e}")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "bos_token": bos, "eos_token": tokens[cfg["eos_token_id"]],
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in (
            "content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added},
    }
    for key, name in (("tokenizer.ggml.unknown_token_id", "unk_token"),
                      ("tokenizer.ggml.padding_token_id", "pad_token")):
        i = f.get(key, None)
        if i is not None and 0 <= int(i) < len(tokens):
            config[name] = tokens[int(i)]
    template = f.get("tokenizer.chat_template", None)
    if template is not None:
        config["chat_template"] = template
    return text, config
