"""Where the tools find the repository's files and the shared models beside it (../shared)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_TINYLLAMA_CONFIG = SHARED_DIR / "models" / "tinyllama-1.1b-chat-v1.0"
SHARED_LLAMA2_TOKENIZER = SHARED_DIR / "models" / "llama2-tokenizer"
TOKENIZER_CORPUS = REPO_ROOT / "scripts" / "tokenizer_corpus.txt"
QUALITY_TEXT = REPO_ROOT / "scripts" / "quality_text.txt"
