"""The monitoring kit in ``etc/``: alert rules, their promtool unit tests, the dashboard.

An alert or panel on a misspelt or renamed metric is not an error anywhere: it is
silently empty for ever. So every metric name the rules and the dashboard use is
checked against the ``/metrics`` of a real daemon running a relationship to a slave
over SSH (link and relationship series present) that has seen a transfer succeed
and an activity fail (counters and histograms with samples), never against a list
kept by hand. A name must not only be declared there but have samples, so a panel
is known to draw something; a rule on a metric only some rare situation fills
needs that situation added to the scrape below.

No YAML parser is among the dependencies; promtool validates the files' syntax, and
the small readers here only pull out what the name checks need.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, SLOW, DaemonProcess, SshServer, post_json, wait_until, zfs
from .seaweed import WeedServer

RULES = REPO / "etc/prometheus/cerssd-alerts.yml"
RULE_TESTS = REPO / "etc/prometheus/cerssd-alerts.test.yml"
DASHBOARD = REPO / "etc/grafana/cerssd-dashboard.json"
PROMTOOL = "/usr/bin/promtool"
# Series Prometheus itself makes for every target; the daemon-down rules need ``up``.
PROMETHEUS_SERIES = {"up"}
# Series that exist only after a rare event, declared by every scrape: test_failover.py
# checks their samples after a real unplanned failover.
AFTER_FAILOVER = {"cerssd_relationship_fenced"}
# What issue 7 asks each of them to cover, by the metric that carries it.
ALERTED = {"cerssd_replication_lag_seconds", "cerssd_link_up", "cerssd_activity_errors_total",
           "cerssd_activity_progress_done", "cerssd_backup_last_success_timestamp_seconds",
           "up"}
CHARTED = {"cerssd_replication_lag_seconds", "cerssd_replication_bytes_total",
           "cerssd_link_up", "cerssd_activities", "cerssd_activity_errors_total",
           "cerssd_backup_last_success_timestamp_seconds"}


# -- PromQL: which metrics does an expression read? ------------------------------------

_TOKENS = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^{}"'])*\})
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<other>\S)
""", re.VERBOSE)
# Followed by a parenthesised list of label names, not of expressions.
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*"([^"]+)\"""")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed in it).

    A name is an identifier that is no keyword and is not called like a function;
    label names hide inside ``{...}`` and grouping lists, durations inside ``[...]``.
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKENS.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        # ``f(`` is a function, ``sum by (`` an aggregation: neither selects anything.
        called = after == "(" or after in ("by", "without")
        if kind == "matchers":
            names.update(_NAME_MATCHER.findall(text))
        elif kind == "ident" and text in _GROUPING and after == "(":
            i = _after_parentheses(tokens, i + 1)
            continue
        elif kind == "ident" and text not in _KEYWORDS and not called:
            names.add(text)
        i += 1
    return names


def _after_parentheses(tokens: list[tuple[str | None, str]], start: int) -> int:
    depth = 0
    for j in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[j][1], 0)
        if depth == 0:
            return j + 1
    return len(tokens)


def grafana_query(query: str) -> str:
    """The PromQL inside a Grafana variable query: ``label_values(EXPR, LABEL)`` → EXPR."""
    call = re.fullmatch(r"\s*(label_values|query_result)\((.*)\)\s*", query, re.DOTALL)
    if call is None:
        return query
    if call.group(1) == "query_result":
        return call.group(2)
    inner, _, _label = call.group(2).rpartition(",")
    return inner  # label_values(LABEL) alone reads no metric: inner is ""


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (le, destination) (rate(h_bucket{instance=~"$instance", a="}("}'
     "[$__rate_interval]))", {"h_bucket"}),
    ("histogram_quantile(0.9, sum(rate(h_bucket[5m])) by (le))", {"h_bucket"}),
    ("count(a == 0) or vector(0)", {"a"}),
    ("a / on(id) group_left(kind) b > bool 1e3", {"a", "b"}),
    ('absent(up{job="cerssd"})', {"up"}),
    ("changes(x[15m]) == 0 and y offset 15m unless z @ 1700000000", {"x", "y", "z"}),
    ('time() - ts{r=~"${relationship}"} + {__name__="by_name"}', {"ts", "by_name"}),
    ("sum without (reason) (increase(errors_total[1h:1m])) >= 3", {"errors_total"}),
    ("max_over_time(deriv(g[$__range])[[interval]])", {"g"}),
])
def test_metric_names_finds_selectors_only(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_grafana_variable_queries() -> None:
    assert grafana_query('label_values(m{i=~"$i"}, relationship)') == 'm{i=~"$i"}'
    assert grafana_query("label_values(relationship)") == ""
    assert grafana_query("query_result(topk(3, m))") == "topk(3, m)"
    assert metric_names(grafana_query("label_values(cerssd_info, instance)")) == {"cerssd_info"}


# -- the files ---------------------------------------------------------------------------

def alert_expressions(text: str) -> dict[str, str]:
    """``alert name → expr`` of a rules file, inline or block (``>-``, ``|``) scalars."""
    rules: dict[str, str] = {}
    lines = text.splitlines()
    alert = None
    for n, line in enumerate(lines):
        if m := re.match(r"\s*- alert:\s*(\S+)", line):
            alert = m.group(1)
        elif (m := re.match(r"(\s*)expr:\s*(.*)$", line)) and alert is not None:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value[:1] in ("|", ">"):
                block = []
                for more in lines[n + 1:]:
                    if more.strip() and len(more) - len(more.lstrip()) <= indent:
                        break
                    block.append(more.strip())
                value = " ".join(block).strip()
            quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "'\""
            rules[alert] = value[1:-1] if quoted else value
    return rules


def test_alert_expressions_reads_inline_quoted_and_block_scalars() -> None:
    text = ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: 'a{b=\"c\"} > 1'\n"
            "      - alert: B\n        expr: b{c=\"d\"}\n      - alert: C\n        expr: >-\n"
            "          sum(c)\n            > 1\n        for: 5m\n")
    assert alert_expressions(text) == {"A": 'a{b="c"} > 1', "B": 'b{c="d"}', "C": "sum(c) > 1"}


def rule_test_cases(text: str) -> dict[str, set[bool]]:
    """``alert name → {fires?}`` over the cases of a promtool test file."""
    cases: dict[str, set[bool]] = {}
    lines = [line.strip() for line in text.splitlines()]
    for n, line in enumerate(lines):
        if m := re.fullmatch(r"alertname:\s*(\S+)", line):
            expected = lines[n + 1]
            assert expected.startswith("exp_alerts:"), (n, expected)
            cases.setdefault(m.group(1), set()).add(expected != "exp_alerts: []")
    return cases


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every query variable."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # a collapsed row's own

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", grafana_query(query)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=REPO)


def test_promtool_checks_the_rules() -> None:
    alerts = alert_expressions(RULES.read_text())
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout, result.stdout
    assert not ALERTED - set().union(*map(metric_names, alerts.values())), alerts


def test_promtool_rule_tests_pass_and_cover_every_alert() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout, result.stdout
    cases = rule_test_cases(RULE_TESTS.read_text())
    for alert in alert_expressions(RULES.read_text()):
        assert cases.get(alert) == {True, False}, f"{alert}: needs a firing and a quiet case"


def test_dashboard_is_a_grafana_model_on_a_datasource_variable(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["relationship"]["type"] == "query"
    charts = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in charts:
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    queries = dict(dashboard_queries(dashboard))
    assert not CHARTED - set().union(*map(metric_names, queries.values())), queries
    assert any("$relationship" in q and "cerssd_replication_lag_seconds" in q
               for q in queries.values())
    # PromQL syntax: the queries, Grafana variables filled in, as recording rules.
    fill = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*",
            "$relationship": ".*"}
    rules = []
    for n, query in enumerate(queries.values()):
        for variable, value in fill.items():
            query = query.replace(variable, value)
        rules.append(f"      - record: dashboard:query{n}\n        expr: {json.dumps(query)}\n")
    path = tmp_path / "dashboard-queries.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- against a real daemon's scrape ------------------------------------------------------

def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(names a query may use, names with samples) in a Prometheus text exposition.

    A counter family ``x`` is queried as ``x_total``, a histogram as ``x_bucket``,
    ``x_sum`` and ``x_count`` (plus ``x_created`` where the client exposes it); a
    family declared without samples yet still counts as exported.
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",)}
    declared: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        declared.update(family.name + s for s in suffixes.get(family.type, ("",)))
        sampled.update(sample.name for sample in family.samples)
    return declared | sampled, sampled


@pytest.fixture
def scrape(start_daemon: Any, make_pool: Any, sshd: SshServer, s3_server: WeedServer,
           s3_bucket: str, tmp_path: Path) -> str:
    """/metrics of a daemon whose relationship reached its slave over SSH and backed up
    to a store, after a failure."""
    from .test_backups import store_section

    master, slave = make_pool(), make_pool()
    zfs("create", f"{master}/data")
    zfs("create", f"{master}/tree")  # a tree relationship too: its series per slave
    config = (sshd.config("remote") + '[servers.local]\nkind = "local"\n'
              + store_section(s3_server, s3_bucket, tmp_path / "s3.key")
              + f'[relationships.web]\nvolume = "{master}/data"\ninterval = "1h"\n'
              'stores = ["s3"]\n'
              f'slaves = [{{server = "remote", target_volume = "{slave}/data"}}]\n'
              f'[relationships.tree]\nvolume = "{master}/tree"\ninterval = "1h"\n'
              'recursive = true\n'
              f'slaves = [{{server = "remote", target_volume = "{slave}/tree"}}]\n')
    d: DaemonProcess = start_daemon(extra=config)
    wait_until(lambda: d.api("GET", "/v1/relationships/web")["slaves"][0]["state"]
               == "in-sync", SLOW, interval=0.2, what="the slave in sync")
    wait_until(lambda: "cerssd_backup_last_success_timestamp_seconds{" in d.api(
        "GET", "/metrics"), SLOW, interval=0.2, what="the relationship's backup")
    zfs("snapshot", f"{master}/data@taken")
    taken = post_json(d, f"/v1/volumes/{master}/data/snapshots", {"name": "taken"})
    assert taken.status == 202, taken.body
    assert d.wait_done(taken.body["id"])["state"] == "failed"  # it already exists
    text: str = d.api("GET", "/metrics")
    return text


def test_rules_and_dashboard_use_only_exported_metrics(scrape: str) -> None:
    exported, sampled = exported_names(scrape)
    assert {"cerssd_link_up", "cerssd_replication_lag_seconds",
            "cerssd_activity_errors_total", "cerssd_replication_duration_seconds_bucket"} \
        <= sampled, "the scrape lacks the series the fixture was meant to produce"
    uses = {f"alert {name}": expr for name, expr in
            alert_expressions(RULES.read_text()).items()}
    uses |= dict(dashboard_queries(json.loads(DASHBOARD.read_text())))
    for where, expr in uses.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr}"
        # Clustered managers' series: checked on a clustered daemon (test_cluster.py).
        ours = {n for n in names - PROMETHEUS_SERIES if not n.startswith("cerssd_cluster_")}
        assert ours <= exported, f"{where}: not exported: {ours - exported}"
        unsampled = ours - sampled - AFTER_FAILOVER
        assert not unsampled, f"{where}: exported but without samples: {unsampled}"
