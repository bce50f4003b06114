"""packaging/grafana/wgrelay.json: every panel's query names a metric the
exporters really export.

The exposition text comes from the real collectors over real state: a relayed
pair in the network simulator (production ``RelayCore`` and ``Agent``, run
flat out in virtual time), scraped with ``generate_latest`` exactly as the
HTTP endpoints do. The names a query may use are read from that text (each
family's type gives its sample suffixes: ``_total`` for counters, ``_bucket``,
``_sum``, ``_count`` for histograms), not from a list kept beside the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.metrics_text import exported_names, samples
from wgrelay.mesh.metrics import make_agent_registry
from wgrelay.mesh.peer_path import PathKind
from wgrelay.relay.metrics import make_registry
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh

DASHBOARD = Path(__file__).parents[2] / "packaging" / "grafana" / "wgrelay.json"

# PromQL words that are not metric names (functions are recognised by their
# "(", label lists of by/without/on/ignoring/group_* are cut out first)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("1", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or aggregation, or an operator word
        names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (instance, reason) (rate(wgrelay_drops_total{instance=~"$relay"}'
            "[$__rate_interval]))",
            {"wgrelay_drops_total"},
        ),
        ('time() - a_b{x="y{z}"} offset 5m', {"a_b"}),
        ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("a / on (peer) group_left (relay) b_info == 1 and c", {"a", "b_info", "c"}),
        ("rate(x[$__rate_interval]) * 8 > 1e3", {"x"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels") or [])  # collapsed rows hold theirs


def queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for p in _panels(dash["panels"]):
        for t in p.get("targets") or []:
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            assert m, f"variable {v['name']}: {q}"
            yield f"variable {v['name']}", m.group(1)


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """What a relay and an agent export while the agent relays a peer."""
    with Simulation(seed=5) as sim:
        mesh = SimMesh(sim, tmp_path_factory.mktemp("mesh"))
        relay = mesh.add_relay("relay", link=LinkSpec(delay_s=0.010))
        a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
        b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
        mesh.connect(a, b)
        mesh.start()
        sim.run_until(lambda: a.path(b) == PathKind.RELAYED, timeout_s=30)
        sim.run_for(5.0)  # pings measured, a direct try made
        assert relay.core is not None
        assert a.agent is not None
        relay_text = generate_latest(make_registry(relay.core.get_stats)).decode()
        agent_text = generate_latest(make_agent_registry(a.agent)).decode()
        assert not sim.loop_errors
    return relay_text, agent_text


def test_the_exposition_is_of_a_relayed_peer(exposition: tuple[str, str]) -> None:
    relay_text, agent_text = exposition
    [(_, active)] = [
        s for s in samples(relay_text, "wgrelay_sessions") if s[0]["state"] == "active"
    ]
    assert active == 1.0
    relayed = [lab for lab, v in samples(agent_text, "wgrelay_agent_peer_path") if v == 1.0]
    assert [lab["path"] for lab in relayed] == ["relayed"]
    assert samples(agent_text, "wgrelay_agent_relay_rtt_seconds")


def test_every_dashboard_query_names_an_exported_metric(exposition: tuple[str, str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    relay_names = exported_names(exposition[0])
    agent_names = exported_names(exposition[1])
    assert not relay_names & agent_names  # the agent's are all wgrelay_agent_*
    used: set[str] = set()
    for where, expr in queries(dash):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing = names - relay_names - agent_names
        assert not missing, f"{where}: {sorted(missing)} not exported ({expr!r})"
        used |= names
    # both exporters are on the dashboard, and most of what they export
    assert len(used & relay_names) >= 15
    assert len(used & agent_names) >= 15


def test_the_dashboard_is_importable(exposition: tuple[str, str]) -> None:
    """What Grafana's import needs: unique panel ids, a data source variable
    every query uses, and panels inside the 24-column grid."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "wgrelay"
    panels = list(_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
            assert p.get("description"), p["title"]
