"""Monitoring (k8s/monitoring): the alert rules checked and unit-tested by promtool, the
generated PrometheusRule and dashboard up to date, the Operator component and the adapter
rule rendered and validated, a scrape of the server linted by `promtool check metrics`, and
a real Prometheus (scripts/cluster.sh --with-prometheus: 2 tiny replicas behind nginx,
scraped every second) asked, after stories went through nginx, for every dashboard query,
every alert expression and the adapter's query: each must parse and return data, and name
only metrics the server exports. All local (Debian's prometheus; no internet)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import REPO, TINY_MODEL, free_port, free_port_run, http_get, one, tool

MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "alerts.rules.yaml"
KUBERNETES_VERSION = "1.37.0"
# What the dashboard's variables stand for when the test asks Prometheus directly.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$pod": ".*"}
# Metric names in a query: ours, the process families and Prometheus's own `up`.
METRIC_NAME = re.compile(r"\b(?:trendstory|process)_[a-z0-9_]+\b|\bup(?=\{)")
# A comparison with a number, which filters series out; `bool` keeps them all as 0 or 1.
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?[0-9][0-9.e+]*)")


def promtool(*args: str, stdin: str | None = None, cwd: Path = MONITORING):
    return subprocess.run(["promtool", *args], input=stdin, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


@pytest.fixture(autouse=True, scope="module")
def needs_promtool():
    from shutil import which

    if not which("promtool") or not which("prometheus"):
        pytest.fail("prometheus is missing: scripts/deploy-tools.sh installs it (Debian package)")


# Rule files, generated files, manifests: no server needed.

def test_rule_file_passes_promtool_check():
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_alert_unit_tests_pass():
    done = promtool("test", "rules", "alerts.test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_threshold_fails_the_unit_tests(tmp_path):
    """The unit tests can fail: the queue alert at 50 s instead of 5 s no longer fires."""
    text = RULES.read_text()
    assert ") > 5\n" in text
    (tmp_path / RULES.name).write_text(text.replace(") > 5\n", ") > 50\n"))
    (tmp_path / "alerts.test.yaml").write_text((MONITORING / "alerts.test.yaml").read_text())
    done = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert done.returncode != 0 and "TrendStoryQueueTimeHigh" in done.stdout + done.stderr


def test_every_alert_is_tested_both_ways_and_documented():
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    readme = (REPO / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test where it stays quiet"
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), name
        assert "{{ $value" in annotations["description"] and "{{ $labels." in annotations["description"], \
            f"{name}: the description shows no value or no label"
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        page, anchor = annotations["runbook"].split("#")
        assert page == "README.md" and anchor in anchors, f"{name}: no README section #{anchor}"
        assert COMPARISON.search(alert["expr"]), f"{name}: no comparison with a threshold"


def test_generated_files_are_up_to_date():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "monitoring.py"), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_prometheus_config_example_passes_promtool(tmp_path):
    """k8s/monitoring/prometheus.yml with its Kubernetes discovery swapped for a static
    target: Debian's Prometheus has no Kubernetes discovery; the rest (relabelling, rule
    file) is checked."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / RULES.name).write_text(RULES.read_text())
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    relabel = {tuple(r.get("source_labels", ())): r for r in config["scrape_configs"][0]["relabel_configs"]}
    assert relabel[("__meta_kubernetes_namespace",)]["target_label"] == "namespace"
    assert relabel[("__meta_kubernetes_pod_name",)]["target_label"] == "pod"


def render_with_component(tmp_path: Path) -> list[dict]:
    """overlays/large with the monitoring component, as an operator would add it."""
    rel = lambda p: os.path.relpath(REPO / "k8s" / p, tmp_path)  # noqa: E731
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": "trendstory",
        "resources": [rel("overlays/large")],
        "components": [rel("monitoring")],
    }))
    out = subprocess.run([tool("kubectl"), "kustomize", str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_operator_component_renders_with_the_production_overlay(tmp_path):
    docs = render_with_component(tmp_path)
    crds = {"PrometheusRule", "PodMonitor"}
    for doc in docs:
        if doc["kind"] not in crds:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # No schema for the Operator's kinds offline: check what they must agree with instead.
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    monitor = one(docs, "PodMonitor")
    pod = one(docs, "Deployment")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "trendstory", "the rules expect job=\"trendstory\""
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    dashboard = [d for d in docs if d["kind"] == "ConfigMap" and "dashboard.json" in d.get("data", {})]
    assert len(dashboard) == 1 and dashboard[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard[0]["data"]["dashboard.json"]) == json.loads(
        (MONITORING / "dashboard.json").read_text())


def adapter_rules() -> list[dict]:
    config_map = yaml.safe_load((MONITORING / "prometheus-adapter.yaml").read_text())
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def test_the_hpa_metric_is_what_the_adapter_serves(rendered):
    hpa = one(rendered["large"], "HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    pods = [m for m in metrics if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["pods"]["target"]["type"] == "AverageValue"
    served = {r["name"]["as"] for r in adapter_rules()}
    assert pods[0]["pods"]["metric"]["name"] in served
    cpu = [m for m in metrics if m["type"] == "Resource"]
    assert cpu and cpu[0]["resource"]["name"] == "cpu", "CPU stays as the secondary metric"
    # A generating replica sits at 90-94% CPU whatever its load. The HPA keeps the current
    # count for a metric within 10% of its target; CPU (at most 100% of the request, which
    # is the limit) must stay out of that band, or it blocks every scale-down.
    target = cpu[0]["resource"]["target"]["averageUtilization"]
    assert 100 < 0.9 * target, f"CPU target {target}% would hold the replica count"


# A real Prometheus scraping two replicas behind nginx.

class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict:
        body = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=body, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400 for a parse error, with a JSON body
            return json.load(e)

    def values(self, expr: str) -> list[float]:
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        return [float(s["value"][1]) for s in answer["data"]["result"]]

    def problem(self, expr: str) -> str | None:
        """Why `expr` is not a usable query: a parse error, or no series with a number."""
        answer = self.query(expr)
        if answer["status"] != "success":
            return f"{answer.get('errorType')}: {answer.get('error')}"
        values = [float(s["value"][1]) for s in answer["data"]["result"]]
        if not any(math.isfinite(v) for v in values):
            return f"no data ({len(values)} series, none with a number)"
        return None


@pytest.fixture(scope="module")
def monitored(binary, tmp_path_factory):
    """`cluster.sh up 2 --with-prometheus`, scraped every second, after the first scrapes
    and a few stories through nginx (new topics, a repeat, POSTs, a stream)."""
    if not (TINY_MODEL / "manifest.json").exists():
        pytest.fail(f"{TINY_MODEL} is missing (scripts/test.sh builds it)")
    state = tmp_path_factory.mktemp("monitored")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRENDSTORY_")}
    env.update({"CLUSTER_STATE_DIR": str(state), "TRENDSTORY_MODEL__DIR": str(TINY_MODEL),
                "TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS": "1"})
    port, base, prometheus_port = free_port(), free_port_run(2), free_port()
    cluster = str(REPO / "scripts" / "cluster.sh")
    up = subprocess.run([cluster, "up", "2", "--port", str(port), "--base-port", str(base),
                         "--binary", str(binary), "--with-prometheus", "--prometheus-port",
                         str(prometheus_port), "--scrape-interval", "1s"],
                        env=env, capture_output=True, text=True, timeout=180)
    print(up.stdout, up.stderr)
    try:
        assert up.returncode == 0, up.stderr
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        # Two scrapes of each replica before any story, so every counter has a before.
        wait_for(lambda: len(prometheus.values('count_over_time(up{job="trendstory"}[1m]) >= 2')) == 2
                 and len(prometheus.values('up{job="trendstory"} == 1')) == 2, "two scrapes of both replicas")
        nginx = f"http://127.0.0.1:{port}"
        replicas = [f"http://127.0.0.1:{base + i}" for i in (1, 2)]
        # Two rounds of stories, each scraped before the next: a labelled series (a route,
        # a status) first appears with its count, which rate() cannot see as an increase;
        # the second round's requests then show as one.
        for round_ in (1, 2):
            send_stories(nginx, round_)
            lookups = sum(scraped_value(r, "trendstory_story_cache_lookups_total") for r in replicas)
            wait_for(lambda: prometheus.values("sum(trendstory_story_cache_lookups_total)") == [lookups],
                     f"Prometheus to scrape the {lookups} story lookups of round {round_}")
        yield prometheus, replicas
    finally:
        subprocess.run([cluster, "down"], env=env, timeout=120)


def wait_for(condition, what: str, timeout: float = 60):
    """Polls until `condition` holds; a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.2)


def send_stories(nginx: str, round_: int):
    """New topics (by topic hash, so both replicas generate), one repeat (a cache hit),
    POSTs (round robin) and one stream, a few at a time."""
    def get(topic: str):
        q = urllib.parse.urlencode({"topic": topic, "max_tokens": 16, "seed": 1})
        status, body = http_get(f"{nginx}/v1/stories?{q}", timeout=60)
        assert status == 200, body[:300]

    def post(topic: str, stream: bool = False):
        request = urllib.request.Request(
            f"{nginx}/v1/stories", method="POST",
            data=json.dumps({"topic": topic, "max_tokens": 16, "seed": 2}).encode(),
            headers={"Content-Type": "application/json",
                     "Accept": "text/event-stream" if stream else "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
            r.read()

    topics = [f"round {round_} topic {i}" for i in range(6)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(get, topics))
        list(pool.map(post, [f"round {round_} post {i}" for i in range(3)]))
    get(topics[0])
    post(f"round {round_} stream", stream=True)


def scrape(replica: str) -> str:
    """The replica's /metrics text."""
    status, body = http_get(f"{replica}/metrics")
    assert status == 200
    return body.decode()


def scraped_value(replica: str, sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape(replica).splitlines()
               if line.startswith((sample + " ", sample + "{")))


def exported_samples(replica: str) -> set[str]:
    return {re.split(r"[ {]", line, maxsplit=1)[0] for line in scrape(replica).splitlines()
            if line and not line.startswith("#")} | {"up"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and variable, its variables filled in."""
    board = json.loads((MONITORING / "dashboard.json").read_text())
    found = [(f"panel {p['title']!r} {t['refId']}", t["expr"])
             for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert inner, variable["query"]
            found.append((f"variable ${variable['name']}", inner.group(1)))
    filled = []
    for where, expr in found:
        for name, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"{where}: unknown variable in {expr}"
        filled.append((where, expr))
    return filled


def alert_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert: the expression as written (it must parse; it is
    empty while nothing fires), and with `bool` comparisons (it must return data)."""
    queries = []
    for alert in alerts():
        queries.append((f"alert {alert['alert']}", alert["expr"]))
        queries.append((f"alert {alert['alert']} (bool)", COMPARISON.sub(r"\1 bool \2", alert["expr"])))
    return queries


def adapter_queries() -> list[tuple[str, str]]:
    """The adapter's metrics query as it would run for this cluster's two pods."""
    queries = []
    for rule in adapter_rules():
        series = re.match(r"[a-z_:][a-z0-9_:]*", rule["seriesQuery"]).group(0)
        expr = (rule["metricsQuery"].replace("<<.Series>>", series)
                .replace("<<.LabelMatchers>>", 'namespace="local",pod=~"replica-1|replica-2"')
                .replace("<<.GroupBy>>", "pod"))
        queries.append((f"adapter rule {series}", expr))
    return queries


def test_a_scrape_passes_promtool_check_metrics(monitored):
    _, replicas = monitored
    done = promtool("check", "metrics", stdin=scrape(replicas[0]))
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_prometheus_answers_every_dashboard_alert_and_adapter_query(monitored):
    prometheus, replicas = monitored
    exported = exported_samples(replicas[0])
    problems = []
    queries = dashboard_queries() + alert_queries() + adapter_queries()
    for where, expr in queries:
        missing = set(METRIC_NAME.findall(expr)) - exported
        if missing:
            problems.append(f"{where}: names {sorted(missing)}, which the server does not export")
            continue
        if where.startswith("alert") and not where.endswith("(bool)"):
            answer = prometheus.query(expr)
            if answer["status"] != "success":
                problems.append(f"{where}: {answer.get('error')}")
            continue
        problem = prometheus.problem(expr)
        if problem:
            problems.append(f"{where}: {problem}\n    {expr}")
    assert not problems, "\n".join(problems)
    assert len(queries) > 40
    # The adapter maps its answer to pods: one series per replica.
    for _, expr in adapter_queries():
        assert len(prometheus.values(expr)) == 2, expr


def test_the_checks_catch_a_missing_metric_and_a_parse_error(monitored):
    prometheus, replicas = monitored
    assert "no data" in prometheus.problem("sum(rate(trendstory_no_such_thing_total[1m]))")
    assert "parse error" in prometheus.problem("sum(rate(trendstory_ready[1m])")
    assert "trendstory_no_such_thing_total" not in exported_samples(replicas[0])
