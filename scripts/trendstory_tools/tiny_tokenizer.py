"""The tiny preset's own tokenizer: a 1k byte-fallback BPE trained on
scripts/tokenizer_corpus.txt, laid out like Llama 2's tokenizer.json, with TinyLlama-Chat's
prompt format, so tests run the Rust side's tokenizer code without a download."""
from __future__ import annotations

import json
from pathlib import Path

from trendstory_tools.paths import TOKENIZER_CORPUS

# TinyLlama-Chat's prompt format (tokenizer_config.json of the hub repo), used for the tiny
# tokenizer's config so the Rust side can render prompts the same way with either tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

TINY_VOCAB_SIZE = 1024
SPECIALS = ["<unk>", "<s>", "</s>"]


def train_tiny_tokenizer(corpus: Path = TOKENIZER_CORPUS, vocab_size: int = TINY_VOCAB_SIZE) -> str:
    """Train a small byte-fallback BPE on the corpus, laid out like Llama 2's tokenizer.json.

    ids 0..2 = <unk> <s> </s> (special), 3..258 = <0x00>..<0xFF> (ordinary vocab entries, so
    decoding keeps them), then the learned symbols. Deterministic for a given corpus.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Train word by word ("▁word" pieces), like SentencePiece, so merges never span words.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=SPECIALS,
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(tok.to_str())
    tvocab = trained["model"]["vocab"]
    merges = trained["model"]["merges"]

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for sym, _ in sorted(tvocab.items(), key=lambda kv: kv[1]):
        if sym not in vocab:
            vocab[sym] = len(vocab)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    text = json.dumps(spec, ensure_ascii=False, indent=1)
    Tokenizer.from_str(text)  # validate
    return text


def tiny_tokenizer_config() -> dict:
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    return {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
            "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 512,
            "tokenizer_class": "LlamaTokenizer", "chat_template": CHAT_TEMPLATE}
