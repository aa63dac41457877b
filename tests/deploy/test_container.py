"""The container image built and run for real with podman: the image scripts/test.sh builds
(`scripts/image.sh podman tiny`, named in CONTAINER_IMAGE) runs as Kubernetes runs it (a
non-root user, a read-only root file system, no capabilities) and turns ready; it writes a
story over HTTP and over SSE, serves /metrics, passes its own HEALTHCHECK, has the size the
README says, and `podman stop` (SIGTERM) drains it to exit 0 within the grace period.

The container shares the host's network (port chosen free here): rootful podman's bridge
needs firewall rules these machines do not always allow, and nothing here needs isolation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from conftest import REPO, free_port, http_get, one

CONTAINERS_CONF = REPO / "scripts" / "podman" / "containers.conf"


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    name = os.environ.get("CONTAINER_IMAGE", "")
    if not shutil.which("podman"):
        pytest.fail("podman is not installed (scripts/deploy-tools.sh installs it)")
    if not name:
        pytest.fail("CONTAINER_IMAGE is not set: scripts/test.sh builds the image "
                    "(scripts/image.sh podman tiny) and names it there")
    assert podman("image", "exists", name).returncode == 0, f"no image {name}"
    return name


class Container:
    def __init__(self, name: str, port: int):
        self.name, self.port = name, port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        done = podman("logs", self.name)
        return done.stdout + done.stderr

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *args)


@pytest.fixture(scope="module")
def container(image):
    """The image as the Deployment runs it, on a free loopback port."""
    port = free_port()
    name = f"trendstory-test-{port}"
    done = podman("run", "--detach", "--name", name, "--network", "host", "--read-only",
                  "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                  "--env", "TRENDSTORY_SERVER__HOST=127.0.0.1",
                  "--env", f"TRENDSTORY_SERVER__PORT={port}",
                  # No address but loopback is reachable here: the live trend sources off.
                  "--env", "TRENDSTORY_TRENDS__SOURCES__HACKERNEWS__ENABLED=false",
                  "--env", "TRENDSTORY_TRENDS__SOURCES__WIKIPEDIA__ENABLED=false",
                  image)
    assert done.returncode == 0, done.stderr
    box = Container(name, port)
    try:
        deadline = time.monotonic() + 120
        while True:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                pytest.fail(f"the container is {state}: {box.logs()[-3000:]}")
            try:
                if http_get(box.url("/readyz"), timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after 120 s: {box.logs()[-3000:]}")
            time.sleep(0.2)
        yield box
    finally:
        podman("rm", "--force", "--time", "0", name)


def test_runs_as_a_non_root_user_on_a_read_only_root(container):
    assert container.exec("id", "-u").stdout.strip() == "10001"
    written = container.exec("touch", "/etc/trendstory/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr


def post_story(container, body: dict, accept: str) -> tuple[int, bytes]:
    request = urllib.request.Request(container.url("/v1/stories"), data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              "accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def test_a_story_over_http(container):
    status, body = post_story(container, {"topic": "container images", "max_tokens": 16},
                              "application/json")
    answer = json.loads(body)
    assert status == 200 and answer["topic"] == "container images"
    assert answer["story"] and answer["tokens"] > 0


def test_a_story_over_sse(container):
    status, body = post_story(container, {"topic": "read-only roots", "max_tokens": 16},
                              "text/event-stream")
    text = body.decode()
    assert status == 200
    assert "event: token" in text and "event: done" in text, text[:2000]
    done = text.split("event: done", 1)[1].split("data: ", 1)[1].split("\n", 1)[0]
    assert json.loads(done)["topic"] == "read-only roots"


def test_metrics_scrape(container):
    status, body = http_get(container.url("/metrics"))
    text = body.decode()
    assert status == 200
    assert "# TYPE trendstory_" in text
    assert re.search(r"^trendstory_\w+(\{[^}]*\})? [0-9.e+-]+$", text, re.M)


def test_the_image_healthcheck_passes(container):
    done = podman("healthcheck", "run", container.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_size_matches_the_readme(image, container):
    """The README's figure is the image without a model: the baked-in tiny model is left out."""
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    model = int(container.exec("du", "-sb", "/models/current").stdout.split()[0])
    without_model_mb = (size - model) / 1e6
    readme = (REPO / "README.md").read_text()
    claimed = int(re.search(r"Expected size: about (\d+) MB unpacked", readme).group(1))
    print(f"image {size / 1e6:.1f} MB, tiny model {model / 1e6:.1f} MB, "
          f"without it {without_model_mb:.1f} MB; README: about {claimed} MB")
    assert abs(without_model_mb - claimed) <= 0.1 * claimed


def test_sigterm_drains_and_exits_0_within_the_grace_period(container, rendered):
    """Last: `podman stop` sends SIGTERM; the server drains (the image's config: 5 s) and
    exits 0 before the Deployment's grace period would have killed it."""
    deployment = one(rendered["small"], "Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    done = podman("stop", "--time", str(grace), container.name, timeout=grace + 30)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    assert code == "0", container.logs()[-3000:]
    assert took < grace, f"took {took:.1f} s"
    assert "stopped" in container.logs()
