"""The published HTTP contract, checked by a client nobody here wrote.

Schemathesis (pinned in scripts/requirements.txt) reads `GET /openapi.json` of the real
`trendstory serve` (target/debug, the tiny model, a free 127.0.0.1 port) and sends what the
document allows and what it forbids to every operation: all its checks (a 5xx, a status,
content type, header or body the document does not declare, a valid request refused, an
invalid one accepted, an undeclared method not answered 405 with `Allow`), a fixed seed,
up to MAX_EXAMPLES cases per operation in the fuzzing phase, then the stateful phase along
the document's links (a story -> the same story as a URL).

A failure prints Schemathesis's report: each case with a `curl` that reproduces it and its
`st replay` id. The server's log and the JUnit report are in target/contract/.

Server settings: `inference.max_new_tokens` 16 keeps the run short (the document publishes
it as `max_tokens`' maximum), and `stories.max_topic_chars` 40 keeps every topic's prompt
well within the tiny model's 512 positions (a prompt that fills the context is the one refusal
the document cannot state as a bound: it depends on how the topic tokenizes; a prompt that
leaves less room than `max_tokens` asks for gets a story cut where it fits).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TRENDSTORY_BIN", ROOT / "target" / "debug" / "trendstory"))
ARTIFACTS = ROOT / "target" / "contract"
SEED = 20261202
MAX_EXAMPLES = 100
# Only a guard against a hang: the run takes about 30-45 s here, printed below (a test
# asserts no timing: the machine is shared).
HANG_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """The server goes when pytest does (Linux PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "TRENDSTORY_MODEL__DIR": str(ROOT / "onnx" / "tiny"),
        "TRENDSTORY_SERVER__HOST": "127.0.0.1",
        "TRENDSTORY_SERVER__PORT": str(port),
        "TRENDSTORY_SERVER__HTTP_WORKERS": "2",
        "TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS": "0",
        "TRENDSTORY_INFERENCE__THREADS_PER_WORKER": "1",
        "TRENDSTORY_INFERENCE__MAX_NEW_TOKENS": "16",
        "TRENDSTORY_STORIES__DEFAULT_MAX_TOKENS": "8",
        "TRENDSTORY_STORIES__MAX_TOPIC_CHARS": "40",
        "TRENDSTORY_STORIES__TRENDING__ENABLED": "false",
    }
    server = subprocess.Popen(
        [str(BINARY), "serve"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited: see {log}"
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return server, base
        except OSError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError(f"the server was not ready within 60 s: see {log}")


def test_schemathesis_finds_no_disagreement_with_the_document():
    assert BINARY.is_file(), f"{BINARY} is missing: run `cargo build --bin trendstory`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server, base = start_server(ARTIFACTS / "server.log")
    try:
        command = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{base}/openapi.json",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--workers", "1",
            # No examples carried over from an earlier run: the seed alone decides.
            "--generation-database", "none",
            "--no-color",
            "--request-timeout", "30",
            "--output-sanitize", "false",
            "--report", "junit",
            "--report-junit-path", str(ARTIFACTS / "schemathesis-junit.xml"),
        ]
        started = time.monotonic()
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT_S,
            cwd=ARTIFACTS,
        )
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = run.stdout + run.stderr
    (ARTIFACTS / "schemathesis.txt").write_text(report)
    assert run.returncode == 0, f"Schemathesis found disagreements (exit {run.returncode}):\n{report}"
    summary = re.search(r"(\d+) generated, (\d+) passed", report)
    assert summary, f"no summary in Schemathesis's report:\n{report}"
    generated, passed = map(int, summary.groups())
    assert generated == passed and generated >= 7 * MAX_EXAMPLES, report
    # Shown by `pytest -s` (scripts/test.sh): the figures of the README's reliability section.
    phases = re.findall(r"^ *[✅❌⏭] +(\w+) \(in ([\d.]+)s\)", report, re.MULTILINE)
    print(
        f"\nschemathesis: {generated} cases generated, {generated - passed} failures, "
        f"seed {SEED}, {elapsed:.1f} s ({', '.join(f'{p} {s} s' for p, s in phases)})"
    )
