#!/usr/bin/env python3
"""Records how llama.cpp tokenizes a set of texts for a GGUF file, as the oracle that
tests/python/test_real_text.py holds gguf_import.py's tokenizer.json to.

    scripts/loadtest/peer-llama-server.sh build      # builds llama-server (minutes, once)
    .venv/bin/python scripts/record_llama_tokens.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --pre smollm --pre gpt-2 --pre llama-bpe --out tests/fixtures/gguf/smollm2-llama-cpp-tokens.json

For each --pre name, the file is served by llama-server with its tokenizer.ggml.pre set to
that name (a copy, same vocabulary, merges and tensors; the file's own value is recorded
as is), and every text of TEXTS (and the lines of scripts/quality_text.txt) goes through
its /tokenize endpoint with add_special true and false (parse_special true: special tokens in
the text are recognized, as our tokenizer.json's added tokens are).
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from trendstory_tools.digests import sha256_file
from trendstory_tools.paths import QUALITY_TEXT, REPO_ROOT as ROOT

PEER = ROOT / "scripts" / "loadtest" / "peer-llama-server.sh"

# Texts where pre-tokenizers differ: digits and numbers of every Unicode kind, contractions in
# both cases, runs of spaces, tabs and newlines, letters with marks, scripts without spaces,
# emoji sequences, and special tokens inside text, whole and cut.
TEXTS = [
    "Hello world", " leading space", "trailing space ", "  two  spaces  ", "\ttab\tseparated\t",
    "line one\nline two\n\nafter a blank line\r\nwindows line", "\n\n\n", "   \n  \n",
    "The year 2024 had 365 days; 1,000,000.50 dollars and 3.14159 pi",
    "½ ² ٣ Ⅻ ① 0x1F 1e-9 007", "I'm sure they'll say it's what we'd've DON'T YOU'LL",
    "Café naïve crème brûlée Zürich São Paulo Ångström", "e\u0301 combining accent",
    "東京の桜が満開です。北京欢迎你", "안녕하세요 세계", "Привет, мир! Ελληνικά", "مرحبا بالعالم",
    "🚀🌸👨‍👩‍👧‍👦 ☕ 🇬🇧", "non\u00a0breaking\u2009thin\u200bzero width",
    "<|im_start|>user\nWrite a story<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|<|im_end|> |im_end|> <|endoftext|> <repo_name>x", "a<|im_end|>b 12345",
    "earthquake", "Write a short news story about the trend: Taylor Swift's Eras Tour (2024)",
    "C++ && Rust's `impl Trait` -> {x: [1, 2]} // ok?! #hashtag @user $100 50% ~tilde",
    "https://example.com/path?q=1&r=two#frag", "user@example.com", "...!!!???",
    "CamelCaseWordsAndSHOUTING snake_case_words kebab-case-words",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_pre(src: Path, pre: str, dest: Path) -> None:
    """A copy of the GGUF src whose tokenizer.ggml.pre is `pre` (all else the same)."""
    import gguf
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dest), r.get_field("general.architecture").contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tokenize_all(server: str, model: Path, texts: list[str]) -> list[dict]:
    """llama-server's /tokenize of each text (it only tokenizes: no warm-up run, and no
    weight repacking, whose AMX path crashed on one host)."""
    port = free_port()
    proc = subprocess.Popen([server, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-c", "512", "-np", "1", "--no-webui", "--no-warmup", "--no-repack"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"llama-server did not become ready on {base}")
        out = []
        for text in texts:
            row = {"text": text}
            for add in (False, True):
                body = json.dumps({"content": text, "add_special": add, "parse_special": True})
                req = urllib.request.Request(f"{base}/tokenize", body.encode(),
                                             {"Content-Type": "application/json"})
                row["add_special" if add else "plain"] = json.load(urllib.request.urlopen(req))["tokens"]
            out.append(row)
        return out
    finally:
        proc.terminate()
        proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--pre", action="append", required=True,
                    help="a tokenizer.ggml.pre value to record (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    paths = dict(line.split("=", 1) for line in
                 subprocess.run(["bash", str(PEER), "path"], capture_output=True, text=True,
                                check=True).stdout.split())
    server = paths["server"]
    if not Path(server).is_file():
        raise SystemExit(f"{server} is missing: run scripts/loadtest/peer-llama-server.sh build")
    texts = TEXTS + [ln for ln in QUALITY_TEXT.read_text().splitlines()
                     if ln.strip()]
    import gguf
    own = gguf.GGUFReader(str(args.gguf)).get_field("tokenizer.ggml.pre").contents()
    record = {"gguf": args.gguf.name,
              "gguf_sha256": sha256_file(args.gguf),
              "llama_cpp": Path(server).parent.parent.name, "file_pre": own,
              "command": "scripts/record_llama_tokens.py " + " ".join(
                  sys.argv[1:] if argv is None else argv), "pre": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in args.pre:
            model = args.gguf
            if pre != own:
                model = Path(tmp) / f"{pre}.gguf"
                with_pre(args.gguf, pre, model)
            record["pre"][pre] = tokenize_all(server, model, texts)
            print(f"record_llama_tokens: {pre}: {len(texts)} texts", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
