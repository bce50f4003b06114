"""Metrics and the live view with real WireGuard (wireguard-go) behind real NAT.

``wgrelay start-relay --metrics`` and ``wgrelay up IFACE --metrics`` run as
processes in their namespaces; once the relayed tunnel carries a ping, each
exporter is scraped over HTTP from inside its namespace. The agent must show
the peer relayed in port mode through that relay, with a fresh handshake and
bytes; the relay one active session; and every metric the Grafana dashboard
queries must be in one of the two scrapes. Then ``wgrelay status --watch``
runs against the agent's state directory for two frames that show the peer,
and is ended by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.metrics_text import exported_names, samples
from tests.unit.test_grafana_dashboard import DASHBOARD, metric_names, queries
from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Node, Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

RELAY_METRICS = "127.0.0.1:9821"
AGENT_METRICS = "127.0.0.1:9822"
SCRAPE = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(f'http://{sys.argv[1]}/metrics', timeout=5).read().decode())"
)


def scrape(node: Node, where: str) -> str:
    return node.ns.run([sys.executable, "-c", SCRAPE, where], timeout=10).stdout


@pytest.fixture
def mesh() -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        sc.start_relay(relay, "--metrics", RELAY_METRICS)
        try:
            yield sc, a, b
        finally:
            for name, proc in sc.agents.items():
                if proc.running():
                    print(f"--- agent {name} log ---\n{proc.log_tail(40)}")


def test_exporters_and_status_watch_of_a_relayed_tunnel(
    mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = mesh
    sc.start_agent(a, "--metrics", AGENT_METRICS)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=15.0) is not None, sc.agent_log(a)[-3000:]
    relay = sc.relays["r1"]
    peer_b = str(b.wireguard().public_key)
    me = {"interface": a.wireguard().name, "peer": peer_b}

    def relayed_in_port_mode(text: str) -> bool:
        info = samples(text, "wgrelay_agent_peer_relay_info")
        return [(lab.get("mode"), lab.get("relay")) for lab, _ in info] == [
            ("port", str(relay.key))
        ]

    agent_text = ""

    def agent_ready() -> bool:
        nonlocal agent_text
        agent_text = scrape(a, AGENT_METRICS)
        return relayed_in_port_mode(agent_text)

    assert wait_until(agent_ready, 10), agent_text
    paths = {lab["path"]: v for lab, v in samples(agent_text, "wgrelay_agent_peer_path")}
    assert paths["relayed"] == 1.0
    [(lab, age)] = samples(agent_text, "wgrelay_agent_peer_handshake_age_seconds")
    assert lab == me
    assert 0 <= age < 30
    [(_, rx)] = samples(agent_text, "wgrelay_agent_peer_received_bytes_total")
    assert rx > 0
    relay_text = scrape(relay.relay, RELAY_METRICS)
    active = [v for lab, v in samples(relay_text, "wgrelay_sessions") if lab["state"] == "active"]
    assert active == [1.0]

    # the dashboard against what real processes export
    exported = exported_names(relay_text) | exported_names(agent_text)
    dash = json.loads(DASHBOARD.read_text())
    for where, expr in queries(dash):
        missing = metric_names(expr) - exported
        assert not missing, f"{where}: {sorted(missing)} not exported"

    _watch_two_frames(sc.agent_state_dir(a), a.wireguard().name, peer_b)


def _watch_two_frames(state_dir: object, iface: str, peer: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "wgrelay", "status", "--watch", "--interval", "0.5",
         "--state-dir", str(state_dir), iface],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:  # fmt: skip
        assert watch.stdout is not None
        assert watch.stderr is not None
        frames: list[str] = []
        try:
            current: list[str] = []
            # (a frame comes every 0.5 s, so a read never waits long; the
            # test's timeout guards against a watch that stops drawing)
            while sum(peer[:10] in f for f in frames) < 2:
                line = watch.stdout.readline()
                assert line, f"the watch ended: {frames}"
                if line.startswith("--- ") and current:
                    frames.append("".join(current))
                    current = []
                current.append(line)
        finally:
            os.kill(watch.pid, signal.SIGTERM)
            rc = watch.wait(timeout=10)
        assert rc == 0, watch.stderr.read()
        line = next(ln for ln in frames[-1].splitlines() if peer[:10] in ln)
        assert "relayed (port)" in line
        assert f"{iface}: agent running" in frames[-1]
