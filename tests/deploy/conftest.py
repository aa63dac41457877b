"""Shared fixtures of the deploy tests: the rendered Kubernetes overlays, the server binary
(through scripts/image.sh build, the image's build step), free loopback ports, and a server
started from the image's file layout with the ConfigMap's config.

Run by scripts/test.sh after `cargo test` (which has built the debug binary):
    .venv/bin/python -m pytest -q tests/deploy
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ["small", "large"]
TINY_MODEL = REPO / "onnx" / "tiny"


def tool(name: str) -> str:
    """A tool from the venv (kubectl, hadolint: pinned in scripts/requirements.txt) or PATH."""
    venv = REPO / ".venv" / "bin" / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (scripts/python-env.sh installs it)")
    return found


def render(overlay: str) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """A base port B such that B..B+n are all free on 127.0.0.1."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        try:
            sockets = []
            for p in range(base, base + n + 1):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    pytest.fail("no run of free ports")


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {o: render(o) for o in OVERLAYS}


@pytest.fixture(scope="session")
def binary() -> Path:
    """The debug binary, through the image's build step (`scripts/image.sh build dev`)."""
    out = subprocess.run([str(REPO / "scripts" / "image.sh"), "build", "dev"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    path = REPO / out.splitlines()[-1]
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def rootfs(binary, tmp_path_factory) -> Path:
    """The runtime stage's files (`scripts/image.sh rootfs`), laid out under a folder."""
    dest = tmp_path_factory.mktemp("rootfs")
    done = subprocess.run([str(REPO / "scripts" / "image.sh"), "rootfs", str(binary), str(dest)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    return dest


class Served:
    """A server started from the rootfs, with a config file, on a free loopback port."""

    def __init__(self, rootfs: Path, config_file: Path, log: Path):
        self.port = free_port()
        self.config = tomllib.loads(config_file.read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRENDSTORY_")}
        env.update({
            "TRENDSTORY_CONFIG": str(config_file),
            # Paths of the image, found here under the rootfs; a local port.
            "ORT_DYLIB_PATH": str(rootfs / "opt/onnxruntime/libonnxruntime.so.1.32.0"),
            "TRENDSTORY_MODEL__DIR": str(TINY_MODEL),
            "TRENDSTORY_SERVER__HOST": "127.0.0.1",
            "TRENDSTORY_SERVER__PORT": str(self.port),
        })
        # Tests reach no address but loopback: network trend sources off.
        for name, source in self.config.get("trends", {}).get("sources", {}).items():
            if name != "file" and source.get("enabled"):
                env[f"TRENDSTORY_TRENDS__SOURCES__{name.upper()}__ENABLED"] = "false"
        self.env = env
        self.log = log
        self.proc = subprocess.Popen([str(rootfs / "usr/local/bin/trendstory"), "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=log.open("wb"))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if http_get(self.url("/readyz"), timeout=2)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


@pytest.fixture(scope="module")
def configmap_server(rendered, rootfs, tmp_path_factory):
    """The server from the image layout, configured by the small overlay's ConfigMap."""
    if not (TINY_MODEL / "manifest.json").exists():
        pytest.fail(f"{TINY_MODEL} is missing (scripts/test.sh builds it)")
    tmp = tmp_path_factory.mktemp("configmap")
    config_map = one(rendered["small"], "ConfigMap")
    config_file = tmp / "trendstory.toml"
    config_file.write_text(config_map["data"]["trendstory.toml"])
    server = Served(rootfs, config_file, tmp / "server.log")
    server.wait_ready()
    yield server
    if server.proc.poll() is None:
        server.stop()
