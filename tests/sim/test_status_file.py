"""The status file (``wgrelay status``) as the agent writes it: at once when
a path changes, otherwise refreshed every ``status_refresh_s``, never on every
poll (building it reads the connection cache for every peer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgrelay.mesh.agent import PathKind
from wgrelay.mesh.daemon import DaemonConfig, status_path
from wgrelay.mesh.status import render_status
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import INTERFACE, SimMesh, SimPeer

POLL_S = 1.0
"""How often the daemon reads the interface when no direct attempt runs."""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=11) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def status_of(peer: SimPeer) -> dict[str, object]:
    doc: dict[str, object] = json.loads(status_path(peer.state_dir, INTERFACE).read_text())
    return doc


def path_in_file(peer: SimPeer) -> str | None:
    peers = status_of(peer)["peers"]
    assert isinstance(peers, list)
    return str(peers[0]["path"]) if peers else None


def test_a_path_change_is_in_the_file_by_the_next_poll_and_steady_state_is_not_rewritten(
    mesh: SimMesh,
) -> None:
    mesh.add_relay("relay", link=LinkSpec(delay_s=0.010))
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    mesh.connect(a, b)
    mesh.start()
    mesh.sim.run_until(lambda: a.path(b) == PathKind.RELAYED, timeout_s=30)
    relayed_at = mesh.sim.now()
    mesh.sim.run_until(lambda: path_in_file(a) == "relayed", timeout_s=5)
    assert mesh.sim.now() - relayed_at <= POLL_S + 0.01

    # steady (after the first direct try, 2 s after relaying, and what the
    # relay told of both NATs): the file is rewritten on the refresh
    # interval, not on every poll
    mesh.sim.run_for(5.0)
    refresh = DaemonConfig().status_refresh_s
    window = 4 * refresh
    seen: set[object] = set()
    end = mesh.sim.now() + window
    while mesh.sim.now() < end:
        mesh.sim.run_for(0.25)
        seen.add(status_of(a)["updated"])
    assert a.path(b) == PathKind.RELAYED  # nothing changed meanwhile
    assert 3 <= len(seen) <= window / refresh + 1, sorted(map(str, seen))


def test_status_shows_both_nat_kinds_the_candidates_and_the_last_direct_try(
    mesh: SimMesh,
) -> None:
    """Issue: status shows per peer the NAT kinds seen, the candidates, the
    last upgrade attempt and why it failed (a port-restricted cone against a
    symmetric NAT: a try cannot work)."""
    mesh.add_relay("relay", link=LinkSpec(delay_s=0.010))
    a = mesh.add_peer("a", behind=NatKind.PORT_RESTRICTED_CONE, link=LinkSpec(delay_s=0.020))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    mesh.connect(a, b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_for(10.0)  # the first try has come and gone
    for me, ours, theirs in ((a, "independent", "dependent"), (b, "dependent", "independent")):
        peers = status_of(me)["peers"]
        assert isinstance(peers, list)
        entry = peers[0]
        assert entry["path"] == "relayed"
        assert entry["nat"]["ours"] == ours
        assert entry["nat"]["peer"] == theirs
        assert entry["nat"]["ours_mapping"]
        assert entry["nat"]["peer_mapping"]
        assert entry["upgrade_tries"] >= 1
        assert "no answer within 0.8 s" in entry["last_upgrade"]
    # a's candidates: b's configured address first
    peers = status_of(a)["peers"]
    assert isinstance(peers, list)
    assert peers[0]["candidates"][0] == f"{b.host.nat.public_ip}:51820"  # type: ignore[union-attr]
    # and the table says it too
    doc = {"interfaces": [{**status_of(a), "agent_running": True}]}
    text = render_status(doc)
    assert "NAT: ours independent" in text
    assert "direct tries: " in text
