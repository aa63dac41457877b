"""The Kubernetes overlays: rendered by `kubectl kustomize`, every object validated offline
against the Kubernetes schemas (kubernetes-validate, strict), and checked against the server
itself: the ConfigMap's config loads (unknown keys are errors there), the probe paths and
ports answer, the shutdown timings fit the grace period, the autoscaling metric exists."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib

import kubernetes_validate
import pytest

from conftest import OVERLAYS, http_get, one

# The oldest Kubernetes these manifests claim (autoscaling/v2, policy/v1, named
# NetworkPolicy ports, ...) and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]


def container(deployment: dict) -> dict:
    return one_container(deployment, "trendstory")


def one_container(deployment: dict, name: str) -> dict:
    found = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid(rendered, overlay, version):
    kinds = []
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    for kind in ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ConfigMap", "NetworkPolicy", "Ingress", "Namespace"]:
        assert kind in kinds, f"{overlay} renders no {kind}"


def test_validation_catches_a_bad_field(rendered):
    """The validator is strict: a misspelt probe field is an error, not a warning."""
    doc = json.loads(json.dumps(one(rendered["small"], "Deployment")))
    container(doc)["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_and_shape(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname"
               for t in pod["topologySpreadConstraints"])
    assert deployment["spec"]["replicas"] >= 3
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["/models/current"]["readOnly"] is True
    # The model comes from an init container or a read-only volume.
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = volumes[mounts["/models/current"]["name"]]
    if "persistentVolumeClaim" in models:
        assert models["persistentVolumeClaim"]["readOnly"] is True
    else:
        assert [c for c in pod["initContainers"] if any(
            m["name"] == models["name"] for m in c["volumeMounts"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_annotations_agree_with_the_config(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    config = tomllib.loads(one(docs, "ConfigMap")["data"]["trendstory.toml"])
    port = config["server"]["port"]
    c = container(deployment)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named["http"] == port
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        assert c[probe]["httpGet"]["port"] in ("http", port), probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    for service in [d for d in docs if d["kind"] == "Service"]:
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["targetPort"] in ("http", port)
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] in ("http", port)
    # The ConfigMap is mounted where the image's TRENDSTORY_CONFIG points.
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_volume = [n for n, v in volumes.items()
                     if v.get("configMap", {}).get("name") == one(docs, "ConfigMap")["metadata"]["name"]]
    assert config_volume and env["TRENDSTORY_CONFIG"] == mounts[config_volume[0]] + "/trendstory.toml"
    assert config["server"]["log_format"] == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_drain_and_streams(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    server = tomllib.loads(one(docs, "ConfigMap")["data"]["trendstory.toml"])["server"]
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + server["shutdown_drain_secs"] + server["shutdown_timeout_secs"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert needed < grace, f"preStop + drain + stream timeout = {needed}s >= grace {grace}s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_and_disruption_budget(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
               for m in hpa["spec"]["metrics"])
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_story_ingress_hashes_the_topic(rendered):
    docs = rendered["small"]
    stories = one(docs, "Ingress", "trendstory-stories")
    assert stories["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_topic"
    path = stories["spec"]["rules"][0]["http"]["paths"][0]
    assert (path["path"], path["pathType"]) == ("/v1/stories", "Exact")
    # Its own Service: ingress-nginx keeps one balancing method per Service.
    other = one(docs, "Ingress", "trendstory")
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in other["metadata"]["annotations"]
    assert (path["backend"]["service"]["name"]
            != other["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"])


def test_the_configmap_config_runs_the_image_layout(configmap_server, rendered):
    """The ConfigMap's file loaded into the server (started from the image's files): every
    key is known, and each probe path the Deployment uses answers 200 once ready."""
    deployment = one(rendered["small"], "Deployment")
    c = container(deployment)
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        path = c[probe]["httpGet"]["path"]
        status, body = http_get(configmap_server.url(path))
        assert status == 200, f"{probe} {path}: {status} {body[:200]!r}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    status, body = http_get(configmap_server.url(annotations["prometheus.io/path"]))
    assert status == 200
    # The metric the large overlay autoscales on exists.
    metric = [m for m in one(rendered["large"], "HorizontalPodAutoscaler")["spec"]["metrics"]
              if m["type"] == "Pods"][0]["pods"]["metric"]["name"]
    assert f"\n{metric} " in body.decode() or f"\n{metric}{{" in body.decode(), metric
    # JSON logs, as the ConfigMap asks.
    first = configmap_server.log.read_text().splitlines()[0]
    assert json.loads(first)["level"] in ("INFO", "WARN"), first


def test_the_image_healthcheck_script(configmap_server, rootfs):
    check = rootfs / "usr/local/bin/trendstory-healthcheck"
    ok = subprocess.run([str(check), str(configmap_server.port)], timeout=10)
    assert ok.returncode == 0
    ready = subprocess.run([str(check), str(configmap_server.port), "/readyz"], timeout=10)
    assert ready.returncode == 0
    missing = subprocess.run([str(check), str(configmap_server.port), "/nope"], timeout=10)
    assert missing.returncode != 0
    closed = subprocess.run([str(check), "1"], timeout=10, capture_output=True)
    assert closed.returncode != 0


def test_sigterm_stops_within_the_grace_period(configmap_server, rendered):
    """Last in this module: SIGTERM with the ConfigMap's drain and timeout exits 0 before
    the grace period (less the preStop sleep) runs out."""
    deployment = one(rendered["small"], "Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container(deployment)["lifecycle"]["preStop"]["exec"]["command"][1])
    started = time.monotonic()
    assert configmap_server.stop() == 0
    took = time.monotonic() - started
    assert took < grace - pre_stop, f"took {took:.1f}s"
