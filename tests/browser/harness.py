"""Harness of the browser tests (its fixtures are registered by conftest.py): the real `trendstory serve` on a free 127.0.0.1 port with the
tiny model, a fake Hacker News upstream on another, and headless Chromium driven by Selenium.

Every server started here is killed when its test (or module) ends, and also when pytest
itself dies (Linux parent-death signal). Screenshots and server logs go to
`target/browser-artifacts/` (or `$TRENDSTORY_BROWSER_ARTIFACTS`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TRENDSTORY_BIN", ROOT / "target" / "debug" / "trendstory"))
TINY_MODEL = ROOT / "onnx" / "tiny"
# The same weights with explicit attention: a few times slower per token than the fused
# graph, so a story's text reaches the page over many reads, not one.
TINY_MODEL_EXPLICIT = ROOT / "onnx" / "tiny-explicit"
ARTIFACTS = Path(os.environ.get("TRENDSTORY_BROWSER_ARTIFACTS", ROOT / "target" / "browser-artifacts"))
READY_TIMEOUT_S = 60



def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# pytest tears the fixtures down (stopping the servers) when `timeout` sends SIGTERM.
signal.signal(signal.SIGTERM, _interrupt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """GET that returns (status, headers, body) for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_json(url: str, body: dict, timeout: float = 30.0) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


# ------------------------------------------------------------------ fake Hacker News


class FakeHackerNews:
    """`/topstories.json` and `/item/{id}.json`, like the Firebase API; `failing` turns every
    answer into a 500 (the trends it served then go stale on the server)."""

    STORIES = {
        101: {"title": "Rust 2.0 released", "url": "https://blog.example.org/rust-2", "score": 900},
        102: {"title": "A lighthouse keeper's diary, digitized", "url": "https://archive.example.net/diary", "score": 600},
        103: {"title": "Ask HN: What are you reading this winter?", "score": 300},
    }

    def __init__(self) -> None:
        self.failing = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if fake.failing:
                    return self._send(500, {"error": "upstream down"})
                if self.path == "/topstories.json":
                    return self._send(200, list(fake.STORIES))
                if self.path.startswith("/item/") and self.path.endswith(".json"):
                    item_id = int(self.path[len("/item/") : -len(".json")])
                    story = fake.STORIES.get(item_id)
                    if story is None:
                        return self._send(200, None)
                    return self._send(200, {"id": item_id, "type": "story", "by": "x", **story})
                return self._send(404, {"error": "not found"})

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_hn():
    fake = FakeHackerNews()
    yield fake
    fake.close()


# ------------------------------------------------------------------ the server


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Server:
    """One `trendstory serve` process with its own config file and log."""

    def __init__(self, name: str, config: str, workdir: Path) -> None:
        assert BINARY.is_file(), f"{BINARY} is missing: run `cargo build` first"
        for model in (TINY_MODEL, TINY_MODEL_EXPLICIT):
            assert (model / "manifest.json").is_file(), (
                f"{model} is missing: run ./scripts/test.sh (it builds the tiny models)"
            )
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config_path = workdir / f"{name}.toml"
        config_path.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nhttp_workers = 2\n'
            "shutdown_drain_secs = 0\nshutdown_timeout_secs = 1\n" + config
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"server-{name}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(BINARY), "--config", str(config_path), "serve"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def wait_until(self, ready: bool) -> None:
        """Until `/readyz` answers 200 (ready) or anything (just up)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = http_get(f"{self.base}/readyz", timeout=2)
                if status == 200 or not ready:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server {self.name} not {'ready' if ready else 'up'} within {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def readyz(self) -> dict:
        return json.loads(http_get(f"{self.base}/readyz")[2])

    def metrics(self) -> str:
        return http_get(f"{self.base}/metrics")[2].decode()

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL at once (a crash, as the browser sees it)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def model_config(model_dir: Path = TINY_MODEL, extra_inference: str = "") -> str:
    """`[model]` and `[inference]` for the tiny model on one thread."""
    return (
        f'[model]\ndir = "{model_dir}"\n'
        "[inference]\nthreads_per_worker = 1\nrestart_delay_ms = 200\n" + extra_inference
    )


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Starts servers for one test module; all are stopped when the module ends."""
    started: list[Server] = []
    workdir = tmp_path_factory.mktemp("servers")

    def start(name: str, config: str, ready: bool = True) -> Server:
        server = Server(name, config, workdir)
        started.append(server)
        server.wait_until(ready)
        return server

    start.workdir = workdir
    yield start
    for server in started:
        server.stop()


# ------------------------------------------------------------------ the browser


def _find(env: str, names: list[str]) -> str:
    path = os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)
    if not path:
        pytest.fail(
            f"{' or '.join(names)} not found (set {env}); on Debian: "
            "apt-get install chromium chromium-driver (./scripts/test.sh does it as root)"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("CHROMIUM", ["chromium", "chromium-browser", "google-chrome"])
    for argument in [
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(_find("CHROMEDRIVER", ["chromedriver"]))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
