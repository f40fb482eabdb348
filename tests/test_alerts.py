"""Alert rules and the Grafana dashboard in deploy/: they name only metrics the broker
exports (and Prometheus' own ``up``), every alert is unit-tested by promtool (fires in its
scenario, once per deployment, silent when healthy) and has its runbook section in
docs/operations.md, and the dashboard shows every metric of broker/metrics.py.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without it the
promtool tests skip, except under CI (``CI`` set), where a skip would hide broken rules.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from broker import metrics, metrics_gateway
from broker.cli import build_parser
from broker.loop_metrics import LoopMetric

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = ROOT / "helm" / "hubspot-token-broker" / "files" / "alerts.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hubspot-token-broker.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# --- PromQL: which metric names an expression reads -----------------------------------------
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    *("and", "or", "unless", "offset", "bool", "inf", "nan"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
}
_BUCKET_LE = re.compile(r'(\w+_bucket)\{[^{}]*\ble="([^"]+)"')


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (functions, keywords, labels left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(broker_refresh_seconds_bucket{job=~"$job"}'
        "[$__rate_interval]))) / on() group_left sum(up offset 1h) and vector(0) > 1e3"
    )
    assert metric_names(expr) == {"broker_refresh_seconds_bucket", "up"}


# --- what the broker exports -----------------------------------------------------------------
def _metric_objects() -> Iterator[MetricWrapperBase | LoopMetric]:
    """The metrics of broker/metrics.py and broker/metrics_gateway.py: prometheus_client's
    own kinds and the custom collectors (the token route's lock-free counters, histograms)."""
    kinds = (MetricWrapperBase, LoopMetric)
    found = {**vars(metrics), **vars(metrics_gateway)}.values()
    return (m for m in found if isinstance(m, kinds))


def metric_families() -> dict[str, set[str]]:
    """Each metric in broker/metrics.py -> the sample names /metrics shows for it."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    families: dict[str, set[str]] = {}
    for metric in _metric_objects():
        for family in metric.describe():
            families[family.name] = {family.name + suffix for suffix in suffixes[family.type]}
    return families


def exported_names() -> set[str]:
    """Every sample name /metrics shows for the metrics in broker/metrics.py."""
    return set().union(*metric_families().values())


def histogram_buckets() -> dict[str, set[str]]:
    """``<name>_bucket`` -> its ``le`` label values, as the client exposes them ("120.0")."""
    buckets: dict[str, set[str]] = {}
    for metric in _metric_objects():
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.setdefault(sample.name, set()).add(sample.labels["le"])
    return buckets


def test_exported_names_cover_every_kind() -> None:
    names = exported_names()
    assert {
        "broker_refreshes_total",
        "broker_portals",
        "broker_refresh_seconds_bucket",
        "broker_token_remaining_ttl_seconds_count",
    } <= names
    assert "broker_refreshes" not in names
    assert "120.0" in histogram_buckets()["broker_token_remaining_ttl_seconds_bucket"]


# Series Prometheus writes itself for every target, beside what the target exports.
PROMETHEUS_SERIES = {"up"}


def check_expression(expr: str) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - exported_names() - PROMETHEUS_SERIES
    assert not unknown, f"{sorted(unknown)} are not exported by broker/metrics.py: {expr!r}"
    buckets = histogram_buckets()
    for bucket_metric, le in _BUCKET_LE.findall(expr):
        assert le in buckets[bucket_metric], f"{bucket_metric} has no bucket le={le!r}"


# --- alert rules -----------------------------------------------------------------------------
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_use_only_exported_metrics_and_are_documented() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) >= 10
    for rule in rules:
        check_expression(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, rule["alert"]
        assert all(text.strip() for text in annotations.values()), rule["alert"]
        anchor = f"docs/operations.md#{rule['alert'].lower()}"
        assert anchor in annotations["runbook"], f"{rule['alert']}: runbook must point at {anchor}"


_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*"
    r"(?:(by|without)\s*\(([^()]*)\)\s*)?\("
)


def test_alerts_aggregate_per_deployment() -> None:
    """Every aggregation keeps `namespace` and `job`: a deployment alerts once however many
    replicas it runs, and each deployment alerts on its own."""
    for rule in alert_rules():
        aggregations = _AGGREGATION.findall(rule["expr"])
        assert aggregations, f"{rule['alert']}: one alert per pod; aggregate by (namespace, job)"
        for op, kind, grouping in aggregations:
            labels = {label.strip() for label in grouping.split(",")}
            hint = f"{rule['alert']}: `{op}` must keep the deployment: {op} by (namespace, job)"
            assert kind == "by", hint
            assert {"namespace", "job"} <= labels, hint


def test_up_selector_finds_the_broker_however_it_is_scraped() -> None:
    """Rules on Prometheus' `up` select the broker's targets by one job regex, which matches
    compose's job (prometheus.yml) and the chart's ServiceMonitor job: the internal Service's
    name, i.e. the release's full name (tests/test_helm.py renders it for release htb)."""
    selector = re.compile(r'\bup\{job=~"([^"]+)"\}')
    found: set[str] = set()
    for rule in alert_rules():
        expr = rule["expr"]
        uses = len(re.findall(r"\bup\b(?!_)", _STRING.sub('""', expr)))
        matches = selector.findall(expr)
        assert len(matches) == uses, f"{rule['alert']}: every `up` needs the job selector"
        found.update(matches)
    (regex,) = found
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    chart = yaml.safe_load((CHART_ALERTS.parent.parent / "Chart.yaml").read_text())["name"]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    # the Service is named after the release ("htb-" + chart), or the release when it
    # contains the chart's name (_helpers.tpl, "fullname")
    for job in [*jobs, f"htb-{chart}", chart, f"{chart}-production"]:
        assert re.fullmatch(regex, job), f"job {job!r} escapes the alerts' selector {regex!r}"
    assert not re.fullmatch(regex, "node-exporter")


def test_chart_ships_the_same_rules() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "the chart's files/alerts.yaml must be a byte copy of deploy/prometheus/alerts.yaml"
    )


def test_every_alert_has_a_runbook_section() -> None:
    headings = {
        line.lstrip("#").strip() for line in OPERATIONS.read_text().splitlines() if line[:1] == "#"
    }
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in headings]
    assert not missing, f"docs/operations.md has no section for {missing}"


def _shell_lines(markdown: str) -> list[str]:
    """Lines of the ```sh blocks, with backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


def test_operations_commands_are_the_real_cli() -> None:
    """Every `broker ...` command in docs/operations.md parses with the real CLI parser."""
    parser = build_parser()
    seen = set()
    for line in _shell_lines(OPERATIONS.read_text()):
        for match in re.finditer(r"(?:^|\s)broker\s+(.*)", line):
            words = []
            for word in shlex.split(match.group(1), comments=True):
                if word in {"|", "<", ">", "&&", ";"}:
                    break
                words.append(word.rstrip(")"))
            try:
                args = parser.parse_args(words)
            except SystemExit:
                pytest.fail(f"not a command of the real CLI: broker {' '.join(words)}")
            seen.add(" ".join(filter(None, (args.command, getattr(args, "sub", None)))))
    assert {"migrate", "check-config", "apps add", "callers create", "portals list"} <= seen


def test_unit_tests_cover_every_alert() -> None:
    """Each alert fires in some scenario, with the `job` of the deployment it concerns, and
    some scenario checks all of them stay silent."""
    names = {rule["alert"] for rule in alert_rules()}
    spec = yaml.safe_load(ALERT_TESTS.read_text())
    assert spec["rule_files"] == [ALERTS.name]
    fired: set[str] = set()
    silent_everywhere = False
    for group in spec["tests"]:
        checks = group["alert_rule_test"]
        fired |= {
            c["alertname"]
            for c in checks
            if any("job" in alert["exp_labels"] for alert in c["exp_alerts"])
        }
        by_time: dict[str, set[str]] = {}
        for check in checks:
            if not check["exp_alerts"]:
                by_time.setdefault(check["eval_time"], set()).add(check["alertname"])
        silent_everywhere |= any(silent == names for silent in by_time.values())
    assert fired == names, f"never seen firing for one deployment: {sorted(names - fired)}"
    assert silent_everywhere, "no scenario checks that every alert stays silent"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing under CI: .ci/run installs Debian's prometheus package")
    pytest.skip("promtool not installed (apt-get install prometheus)")


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("replacement", "what"),
    [("vector(0) > 1", "never fires"), ("vector(1)", "always fires")],
)
def test_promtool_unit_tests_catch_every_broken_alert(
    promtool: str, tmp_path: Path, replacement: str, what: str
) -> None:
    """With every expression replaced by one that {what}, each alert's checks must fail."""
    spec = yaml.safe_load(ALERTS.read_text())
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule["expr"] = replacement
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(spec))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = run_promtool(promtool, "test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert result.returncode != 0
    report = result.stdout + result.stderr
    uncaught = [r["alert"] for r in alert_rules() if f"alertname: {r['alert']}," not in report]
    assert not uncaught, f"an alert that {what} passes its unit tests: {uncaught}"


# --- Grafana dashboard -----------------------------------------------------------------------
def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_variables_select_a_deployment() -> None:
    """`namespace` and `job` pick deployments by broker_build_info, which every replica
    exports from its start (under compose `namespace` is absent and "All" matches that)."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("namespace", "job"):
        variable = variables[name]
        assert variable["includeAll"], name
        assert variable["allValue"] == ".*", name
        query = variable["query"]["query"]
        assert query.startswith("label_values("), query
        assert query.endswith(f", {name})"), query
        check_expression(query.removeprefix("label_values(").removesuffix(f", {name})"))
    assert '{namespace=~"$namespace"}' in variables["job"]["query"]["query"]


_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^{}]*)\}")


def test_dashboard_queries_follow_the_variables() -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for name, matchers in _SELECTOR.findall(expr):
                assert 'namespace=~"$namespace"' in matchers, f"{panel['title']}: {name}"
                assert 'job=~"$job"' in matchers, f"{panel['title']}: {name}"
            unfiltered = metric_names(_SELECTOR.sub(" ", expr))
            assert not unfiltered, f"{panel['title']}: {sorted(unfiltered)} without a selector"


def test_dashboard_uses_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard_panels():
        assert panel["datasource"] == expected, panel["title"]
        assert all(t["datasource"] == expected for t in panel["targets"]), panel["title"]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels)
    read: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            check_expression(target["expr"])
            read |= metric_names(target["expr"])
    # The signals the dashboard exists for (DESIGN.md, "Metrics").
    for needed in (
        "broker_token_requests_total",
        "broker_refreshes_total",
        "broker_refresh_seconds_bucket",
        "broker_lock_wait_seconds_bucket",
        "broker_token_remaining_ttl_seconds_bucket",
        "broker_portals",
        "broker_fenced_writes_total",
        "broker_upstream_requests_total",
        "broker_backend_errors_total",
    ):
        assert needed in read, f"the dashboard shows nothing of {needed}"
    # The runbook promises a panel for every signal: each metric of broker/metrics.py.
    unseen = [name for name, samples in metric_families().items() if not samples & read]
    assert not unseen, f"no dashboard panel shows {unseen}"
