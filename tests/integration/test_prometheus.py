"""Prometheus for real: Debian's `prometheus` scrapes a live daemon; samples/prometheus and
samples/grafana are checked by promtool and against the daemon's /metrics, so they cannot rot.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto
from support.procs import free_port
from support.prometheus import Prometheus, config_for, promtool
from support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PROM_CONFIG = SAMPLES / "prometheus" / "prometheus.yml"
RULES = SAMPLES / "prometheus" / "vistream.rules.yml"
RULES_TEST = SAMPLES / "prometheus" / "vistream.rules.test.yml"
DASHBOARD = SAMPLES / "grafana" / "vistream.json"
CAMERAS = ("crowd1", "crowd2")
# What Grafana puts in for its variables, as a live query would see them: every instance and camera
# (the variables' allValue), and a window of several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__range": "1m", "$instance": ".*", "$camera": ".*"}
# Series Prometheus makes itself, per target, that rules may use: `up` is how a dead daemon is noticed.
PROMETHEUS_OWN = {"up"}

# --- Metric names in PromQL and in /metrics -----------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_WORDS = re.compile(r"[A-Za-z_:][\w:]*|\d[\w.]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    What is left after removing strings, label matchers, ranges and label lists (`by (...)` and the
    like), numbers, keywords and words followed by `(` (functions, aggregations).
    """
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _LABEL_LISTS):
        expr = pattern.sub(" ", expr)
    names = set()
    for m in _WORDS.finditer(expr):
        word = m.group()
        if word[0].isdigit() or word.lower() in _KEYWORDS or expr[m.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def exposed_names(page: str) -> set[str]:
    """Series names a /metrics page offers: its samples, and those of families without samples yet
    (`vistream_events_total` before the first event): counters `_total`, histograms `_bucket`,
    `_sum`, `_count` (never the bare family name), gauges their name."""
    names = set()
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            family, kind = line.split()[2:4]
            if kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            elif kind == "counter":
                names.add(family if family.endswith("_total") else f"{family}_total")
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def grafana(expr: str) -> str:
    """A dashboard query as Grafana sends it, its variables filled in."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def dashboard_variable_metrics() -> set[str]:
    """Metrics the template variables' `label_values(metric{...}, label)` queries read."""
    names = set()
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert m, f"variable {var['name']}: expected label_values(metric, label), got {query!r}"
            names |= metric_names(m.group(1))
    return names


def rule_exprs() -> list[tuple[str, str]]:
    """(alert name, PromQL) for every rule of the sample rule file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("vistream_camera_up == 0", {"vistream_camera_up"}),
        (
            'sum without (reason) (rate(vistream_frames_dropped_total{camera=~"a|b"}[5m]))'
            " / rate(vistream_frames_sampled_total[5m]) > 0.5",
            {"vistream_frames_dropped_total", "vistream_frames_sampled_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(vistream_e2e_latency_seconds_bucket[5m])))",
            {"vistream_e2e_latency_seconds_bucket"},
        ),
        ("sum(rate(x_total[1m])) by (job) and on (job) max(y) == 1e3 offset 5m", {"x_total", "y"}),
        ('label_replace(up, "a", "$1", "job", "(.*)")', {"up"}),
    ],
)
def test_metric_names_of_a_query(expr: str, names: set[str]) -> None:
    """The extraction the checks below rely on: metric names in, functions, labels, numbers out."""
    assert metric_names(expr) == names


# --- The samples alone --------------------------------------------------------------------------


def test_promtool_accepts_the_samples(_prometheus_available: None) -> None:
    """1. `promtool check config` on the sample prometheus.yml (it checks the rule file it names too).
    2. `promtool check rules` on the rule file.
    3. `promtool test rules`: each alert fires when it should and not before, on made-up series."""
    for args in (("check", "config", PROM_CONFIG), ("check", "rules", RULES), ("test", "rules", RULES_TEST)):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"
    alerts = {name for name, _ in rule_exprs()}
    assert {"VistreamCameraDown", "VistreamFramesDropped", "VistreamSchedulerStalled"} <= alerts
    assert {"VistreamOutboxGrowing", "VistreamDown"} <= alerts
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested = {case["alertname"] for t in cases for case in t["alert_rule_test"]}
    assert tested == alerts, "every alert has a promtool test case"


def test_dashboard_is_an_importable_grafana_model() -> None:
    """The JSON model Grafana imports: a Prometheus datasource variable every panel uses (so it
    works whatever the datasource is called), unique panel ids, panels inside the 24-column grid,
    and queries with their own refId."""
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


# --- A live daemon scraped by a real Prometheus ---------------------------------------------------


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    _prometheus_available: None,
    rtsp_server: RtspServer,
    mosquitto: Mosquitto,
    model_path: Path,
) -> Iterator[tuple[DaemonProcess, Prometheus]]:
    """A daemon with two RTSP cameras, scraped every second by a Prometheus that runs the sample
    prometheus.yml (its job, its rule file) pointed at the daemon."""
    workdir = tmp_path_factory.mktemp("prometheus")
    cams = [{"name": n, "url": rtsp_server.url(n), "detect_fps": 2} for n in CAMERAS]
    cfg = base_config(model_path, mosquitto.port, free_port(), "itestprom", cams)
    with DaemonProcess(cfg, workdir) as daemon:
        daemon.metrics(timeout=90)  # up before Prometheus looks, so its first scrapes succeed
        target = f"127.0.0.1:{cfg['metrics']['port']}"
        with Prometheus(config_for(target, PROM_CONFIG)) as prom:
            yield daemon, prom


def _all(result: list[dict[str, Any]], test: Any) -> bool:
    cams = {s["metric"].get("camera"): float(s["value"][1]) for s in result}
    return set(cams) == set(CAMERAS) and all(test(v) for v in cams.values())


def test_prometheus_sees_cameras_up_and_frames_inferred(live: tuple[DaemonProcess, Prometheus]) -> None:
    """1. Prometheus scrapes the daemon (target `up`, job `vistream` from the sample config).
    2. Through its HTTP API: `vistream_camera_up` is 1 for both cameras, their
       `vistream_frames_inferred_total` counts frames, and its rate() is above 0 for each.
    3. The sample rules are loaded and evaluate without error on the live series; none fires."""
    _, prom = live
    prom.wait_for('up{job="vistream"} == 1', bool, timeout=30)
    prom.wait_for("vistream_camera_up", lambda r: _all(r, lambda v: v == 1), timeout=90)
    prom.wait_for("vistream_frames_inferred_total", lambda r: _all(r, lambda v: v > 0), timeout=60)
    rates = prom.wait_for(
        "rate(vistream_frames_inferred_total[10s])", lambda r: _all(r, lambda v: v > 0), timeout=30
    )
    assert all(s["metric"]["job"] == "vistream" for s in rates)

    def evaluated(groups: list[dict[str, Any]]) -> bool:
        return all(r["health"] != "unknown" for g in groups for r in g["rules"])

    deadline = time.monotonic() + 15  # rules run every second; until then their health is unknown
    while not evaluated(groups := prom.api("rules")["groups"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {name for name, _ in rule_exprs()}
    assert {name: (r["health"], r.get("lastError")) for name, r in rules.items()} == {
        name: ("ok", None) for name in rules
    }
    assert prom.query('ALERTS{alertstate="firing"}') == []


def test_dashboard_and_rules_use_only_metrics_the_daemon_exposes(
    live: tuple[DaemonProcess, Prometheus],
) -> None:
    """Every metric name in the dashboard's queries and variables and in the alert rules is a series
    of the live daemon's /metrics (a rule may also use Prometheus' own `up`)."""
    daemon, _ = live
    exposed = exposed_names(daemon.metrics())
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_queries(), *rule_exprs()]:
        names = metric_names(grafana(expr))
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    for name in dashboard_variable_metrics():
        used.setdefault(name, set()).add("variables")
    rules_only = {name for name, _ in rule_exprs()}
    unknown = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exposed and not (name in PROMETHEUS_OWN and where <= rules_only)
    }
    assert unknown == {}, f"not on the daemon's /metrics: {unknown}"


def test_dashboard_queries_run_on_live_data(live: tuple[DaemonProcess, Prometheus]) -> None:
    """Each dashboard query, its variables filled in as Grafana does, runs in Prometheus without
    error and returns series, unless a metric it reads has no samples on this daemon (events: no
    rules are configured here)."""
    daemon, prom = live
    prom.wait_for(
        "rate(vistream_frames_inferred_total[10s])", lambda r: _all(r, lambda v: v > 0), timeout=120
    )
    prom.wait_for("vistream_e2e_latency_seconds_count > 0", bool, timeout=30)
    page = daemon.metrics()
    with_samples = {re.split(r"[{\s]", line, maxsplit=1)[0] for line in page.splitlines() if line[:1] != "#"}
    empty = []
    for title, expr in dashboard_queries():
        query = grafana(expr)
        result = prom.query(query)  # raises with Prometheus' message when the query is bad
        if not result and metric_names(query) <= with_samples:
            empty.append((title, query))
    assert empty == []
