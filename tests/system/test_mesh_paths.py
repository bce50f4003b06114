"""Direct when possible, relayed when not, and back (issue: mesh integration).

Real wireguard-go, real nftables NAT in namespaces, relays and agents as real
processes; decisions are read from `wgrelay status --json` and agent logs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wgrelay.testbed import NatKind, Testbed, wait_until
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

PROBE_BACK_S = 30  # AgentConfig.probe_back_s: the documented default


def status_json(sc: MeshScenario, peer: Peer) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "wgrelay", "status", "--json",
         "--state-dir", str(sc.agent_state_dir(peer))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def peer_status(sc: MeshScenario, peer: Peer) -> dict[str, Any] | None:
    doc = status_json(sc, peer)
    for iface in doc["interfaces"]:
        if iface["agent_running"] and iface["peers"]:
            p: dict[str, Any] = iface["peers"][0]
            return p
    return None


def path_of(sc: MeshScenario, peer: Peer) -> str | None:
    p = peer_status(sc, peer)
    return None if p is None else str(p["path"])


@pytest.fixture
def cone_mesh() -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "cone")
        sc = MeshScenario(tb)
        sc.start_relay(relay, "--metrics", f"{relay.address}:9821")
        yield sc, a, b


@pytest.fixture
def symmetric_mesh() -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        sc.start_relay(relay)
        try:
            yield sc, a, b
        finally:
            for name, proc in sc.agents.items():
                print(f"--- agent {name} ---\n{proc.log_tail(30)}")


def test_port_preserving_nat_is_relayed_at_once_then_direct_and_the_session_closes(
    cone_mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = cone_mesh
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    assert wait_until(lambda: path_of(sc, a) == "direct" and path_of(sc, b) == "direct", 15)
    st = sc.wg_peer(a, b)
    assert st.endpoint == b.wan_endpoint
    # relay first, then the coordinated try moved the pair: the session closed
    relay = sc.relays["r1"].relay

    def active_sessions() -> str:
        return relay.ns.run(
            ["python3", "-c", "import urllib.request as u;"
             f"print(u.urlopen('http://{relay.address}:9821/metrics').read().decode())"]
        ).stdout  # fmt: skip

    assert wait_until(lambda: 'wgrelay_sessions{state="active"} 0.0' in active_sessions(), 10)
    for p in (a, b):
        assert "relaying at once, direct tried in the background" in sc.agent_log(p)
    assert sc.wait_ping(a, b, timeout=5.0) is not None


def test_symmetric_nat_relays_then_goes_back_to_direct_when_the_nat_opens(
    symmetric_mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = symmetric_mesh
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    assert wait_until(lambda: path_of(sc, a) == "relayed" and path_of(sc, b) == "relayed", 10)
    relayed, relayed_b = peer_status(sc, a), peer_status(sc, b)
    assert relayed is not None
    assert relayed_b is not None
    assert relayed["relay"] == str(sc.relays["r1"].key)
    # whichever side asked for the session says why
    why = " ".join(relayed["history"] + relayed_b["history"])
    assert "relaying at once, direct tried in the background" in why

    # the operator makes B's NAT a full cone (it keeps WireGuard's port and
    # lets anyone in): B's WireGuard latches anew at the relay, whose probe
    # finds the new mapping kind and tells both agents; their next
    # coordinated try goes direct (both kinds per destination: none before)
    opened = time.monotonic()
    b.router.reconfigure(NatKind.FULL_CONE, b.listen_port)
    assert wait_until(
        lambda: path_of(sc, a) == "direct" and path_of(sc, b) == "direct",
        PROBE_BACK_S + 15,
    ), sc.agent_log(a)[-3000:]
    took = time.monotonic() - opened
    back = peer_status(sc, a)
    assert back is not None
    assert back["endpoint"] == f"{b.wan_endpoint[0]}:{b.wan_endpoint[1]}"
    assert back["relay"] is None
    reasons = " ".join(back["history"]) + " " + str((peer_status(sc, b) or {}).get("reason"))
    assert "direct path works again" in reasons or "reached us directly" in reasons
    assert sc.wait_ping(a, b, timeout=5.0) is not None
    assert sc.wg_peer(a, b).endpoint == b.wan_endpoint
    print(f"back to direct {took:.1f} s after B's NAT became a full cone")


def test_restarted_agent_goes_straight_to_the_path_that_worked(
    symmetric_mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = symmetric_mesh
    sc.start_agent(a)
    sc.start_agent(b)
    assert wait_until(lambda: path_of(sc, a) == "relayed", 15)
    first_log = sc.agent_log(a)
    assert sc.stop_agent(a) == 0
    sc.start_agent(a)
    assert wait_until(lambda: path_of(sc, a) == "relayed", 15)
    assert sc.wait_ping(a, b, timeout=10.0) is not None
    second = sc.agent_log(a)[len(first_log) :]
    agent_lines = [ln for ln in second.splitlines() if "wgrelay.mesh.agent" in ln]
    # order of attempts: relay first from the cache, no direct attempt before it
    assert "cache: relayed last time" in agent_lines[0], agent_lines
    relayed_at = next(i for i, ln in enumerate(agent_lines) if ": relayed (" in ln)
    assert not any("probing" in ln for ln in agent_lines[:relayed_at]), agent_lines


def test_disabled_relay_is_never_used_and_status_says_so(
    symmetric_mesh: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = symmetric_mesh
    iface = a.wireguard().name
    res = subprocess.run(
        [sys.executable, "-m", "wgrelay", "configure-relay", "--disable", iface,
         "--state-dir", str(sc.agent_state_dir(a))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    sc.start_agent(a)
    sc.start_agent(b)
    time.sleep(8)  # long enough for b to relay if a would accept; a must not
    doc = status_json(sc, a)["interfaces"][0]
    assert doc["relay_enabled"] is False
    assert doc["peers"][0]["path"] == "probing"
    assert not a.ping(b.tunnel_address, timeout=2.0)
    # enabling it takes effect in the running agent
    subprocess.run(
        [sys.executable, "-m", "wgrelay", "configure-relay", "--enable", iface,
         "--state-dir", str(sc.agent_state_dir(a))],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert sc.wait_ping(a, b, timeout=20.0) is not None
    assert status_json(sc, a)["interfaces"][0]["relay_enabled"] is True
