"""The container image's parts without a container engine: the Dockerfile is linted
(hadolint), its dependency-layer stub compiles, the runtime stage's files (scripts/image.sh
rootfs) are complete and the Dockerfile's paths, port and user agree with them and with
Kubernetes. The server started from those files is tested in test_manifests.py; the image
built and run with podman in test_container.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

from conftest import REPO, one, tool

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    stages, current = {}, None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        elif current:
            stages[current].append((word, rest))
    return stages["runtime"]


def test_hadolint_passes():
    done = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_run_step_is_a_project_script():
    for word, rest in instructions():
        if word == "RUN":
            rest = re.sub(r"^(--\S+\s+)*", "", rest)  # --mount=... of the build's CA bundle
            assert rest.startswith("./scripts/"), f"RUN {rest}: make it a script CI runs too"
            script = rest.split()[0].removeprefix("./")
            assert (REPO / script).is_file(), script
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path"
    assert not [w for w, _ in runtime_stage() if w == "RUN"], "the runtime stage only copies"


def test_dependency_stub_compiles():
    """`image.sh deps` builds Cargo.toml's dependencies from stub sources: check that the
    stub (every declared target) resolves with the locked versions and compiles."""
    stub = REPO / "target" / "image-stub"
    shutil.rmtree(stub, ignore_errors=True)
    stub.mkdir(parents=True)
    shutil.copy(REPO / "Cargo.toml", stub)
    shutil.copy(REPO / "Cargo.lock", stub)
    subprocess.run([str(REPO / "scripts" / "image.sh"), "stub", str(stub)], check=True)
    done = subprocess.run(["cargo", "check", "--locked", "--quiet", "--manifest-path",
                           str(stub / "Cargo.toml"), "--target-dir", str(REPO / "target")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_runtime_files(rootfs, binary):
    expected = {
        "usr/local/bin/trendstory": 0o755,
        "usr/local/bin/trendstory-healthcheck": 0o755,
        "opt/onnxruntime/libonnxruntime.so.1.32.0": 0o755,
        "etc/trendstory/trendstory.toml": 0o644,
    }
    for path, mode in expected.items():
        assert (rootfs / path).is_file(), path
        assert (rootfs / path).stat().st_mode & 0o777 == mode, path
    assert (rootfs / "models/current").is_dir()
    assert (rootfs / "etc/trendstory/trendstory.toml").read_text() == \
        (REPO / "k8s/base/trendstory.toml").read_text()
    # Debug info is stripped, the symbol table kept.
    assert (rootfs / "usr/local/bin/trendstory").stat().st_size < binary.stat().st_size
    symbols = subprocess.run(["nm", "--defined-only", str(rootfs / "usr/local/bin/trendstory")],
                             capture_output=True, text=True).stdout
    assert "main" in symbols
    # Shared libraries it needs are in Debian slim's base (libc, libm, libgcc_s).
    ldd = subprocess.run(["ldd", str(rootfs / "usr/local/bin/trendstory")],
                         capture_output=True, text=True).stdout
    needed = {line.split()[0] for line in ldd.splitlines() if "=>" in line}
    assert needed <= {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libdl.so.2", "libpthread.so.0",
                      "librt.so.1"}, needed


def test_dockerfile_agrees_with_the_rootfs_and_kubernetes(rendered, rootfs):
    stage = dict(runtime_stage())
    config = tomllib.loads((rootfs / "etc/trendstory/trendstory.toml").read_text())
    assert stage["EXPOSE"] == str(config["server"]["port"])
    env = dict(re.findall(r"(\w+)=(\S+)", stage["ENV"]))
    assert (rootfs / env["TRENDSTORY_CONFIG"].lstrip("/")).is_file()
    assert (rootfs / env["ORT_DYLIB_PATH"].lstrip("/")).is_file()
    assert env["ORT_DYLIB_PATH"] == config["runtime"]["onnxruntime_library"]
    assert config["model"]["dir"] == "/models/current"
    health = re.search(r'CMD \["([^"]+)"\]', stage["HEALTHCHECK"]).group(1)
    assert (rootfs / health.lstrip("/")).is_file()
    entry = re.search(r'\["([^"]+)"\]', stage["ENTRYPOINT"]).group(1)
    assert (rootfs / entry.lstrip("/")).is_file()
    uid, gid = (int(x) for x in stage["USER"].split(":"))
    pod = one(rendered["small"], "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
