"""Relayed within a second, hole punching through the relay, upgrades without
outages, and the grid of real NAT kinds (issue: paths).

Real wireguard-go behind real nftables NATs of every kind the testbed has
(wgrelay/testbed/nat.py), relays and agents as real processes. What the
agents decided is read from their status files; what the network did from
wireguard-go (`wg show`) and ping.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wgrelay.sim.nat import NatKind as SimKind
from wgrelay.sim.natmatrix import expected_connected, expected_direct
from wgrelay.testbed import NatKind, Testbed, wait_until
from wgrelay.testbed.nat import REMAP_OFFSET
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

SIM_KIND = {
    NatKind.FULL_CONE: SimKind.FULL_CONE,
    NatKind.RESTRICTED_CONE: SimKind.RESTRICTED_CONE,
    NatKind.PORT_RESTRICTED_CONE: SimKind.PORT_RESTRICTED_CONE,
    NatKind.SYMMETRIC: SimKind.SYMMETRIC,
    NatKind.UDP_BLOCKED: SimKind.UDP_BLOCKED,
}
"""The testbed's NATs and the simulator's presets of the same behaviour."""


def peer_entry(sc: MeshScenario, peer: Peer) -> dict[str, Any] | None:
    doc = sc.status(peer)
    peers = doc.get("peers") if doc else None
    if not isinstance(peers, list) or not peers:
        return None
    entry: dict[str, Any] = peers[0]
    return entry


def path_of(sc: MeshScenario, peer: Peer) -> str | None:
    entry = peer_entry(sc, peer)
    return None if entry is None else str(entry["path"])


def wait_ready(sc: MeshScenario, peer: Peer, timeout: float = 15.0) -> None:
    assert sc.agents[peer.name].wait_for_log(" up; home relay", timeout), sc.agent_log(peer)


@pytest.fixture
def mesh_of(request: pytest.FixtureRequest) -> Iterator[tuple[MeshScenario, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, request.param)
        sc = MeshScenario(tb)
        sc.start_relay(relay, "--metrics", f"{relay.address}:9821")
        try:
            yield sc, a, b
        finally:
            for name, proc in [*sc.agents.items(), *((n, r.process) for n, r in sc.relays.items())]:
                if proc.running():
                    print(f"--- {name} log ---\n{proc.log_tail(40)}")


def relay_metrics(sc: MeshScenario) -> str:
    relay = sc.relays["r1"].relay
    return relay.ns.run(
        [sc.python, "-c", "import urllib.request as u;"
         f"print(u.urlopen('http://{relay.address}:9821/metrics').read().decode())"]
    ).stdout  # fmt: skip


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m is not None, name
    return float(m.group(1))


@pytest.mark.parametrize("mesh_of", ["symmetric"], indirect=True)
def test_symmetric_pair_pings_within_a_second_of_both_agents_up(
    mesh_of: tuple[MeshScenario, Peer, Peer],
) -> None:
    sc, a, b = mesh_of
    sc.start_agent(a)
    sc.start_agent(b)
    wait_ready(sc, a)
    wait_ready(sc, b)
    t0 = time.monotonic()
    assert wait_until(lambda: a.ping(b.tunnel_address, timeout=1.0), 15, interval=0.0)
    took = time.monotonic() - t0
    print(f"first ping answered {took:.2f} s after both agents were up (relay first)")
    assert took <= 3.0  # about a second; loose for a loaded machine
    assert wait_until(lambda: path_of(sc, a) == path_of(sc, b) == "relayed", 5)

    # both NATs map per destination, as the relay saw from each side's probe
    # from WireGuard's port: no try towards the mappings
    def both_dependent(p: Peer) -> bool:
        nat = (peer_entry(sc, p) or {}).get("nat") or {}
        return bool(nat.get("ours") == nat.get("peer") == "dependent")

    assert wait_until(lambda: both_dependent(a) and both_dependent(b), 10), (
        peer_entry(sc, a),
        peer_entry(sc, b),
    )


@pytest.mark.parametrize("mesh_of", ["port-restricted-cone"], indirect=True)
def test_remapping_cone_nats_end_direct_on_the_learned_mappings(
    mesh_of: tuple[MeshScenario, Peer, Peer],
) -> None:
    """Both NATs map WireGuard's 51820 onto 61820 for every destination; each
    peer is configured with the other's NAT address and port 51820, which
    reaches nothing. The relay tells both agents the real mappings; their
    coordinated try goes direct and the relay session closes."""
    sc, a, b = mesh_of
    assert sc.wg_peer(a, b).endpoint == (b.router.wan_address, b.listen_port)
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=15.0) is not None, sc.agent_log(a)[-3000:]
    assert wait_until(lambda: path_of(sc, a) == "direct" and path_of(sc, b) == "direct", 20), (
        peer_entry(sc, a),
        peer_entry(sc, b),
    )
    for me, other in ((a, b), (b, a)):
        learned = (other.router.wan_address, other.listen_port + REMAP_OFFSET)
        assert sc.wg_peer(me, other).endpoint == learned
        entry = peer_entry(sc, me)
        assert entry is not None
        assert entry["nat"]["ours"] == "independent", entry
    assert sc.wait_ping(a, b, timeout=5.0) is not None
    assert wait_until(
        lambda: metric(relay_metrics(sc), 'wgrelay_sessions{state="active"}') == 0, 10
    )
    assert metric(relay_metrics(sc), "wgrelay_punches_total") >= 1
    log = sc.relays["r1"].process.read_log()
    assert "closed (normal)" in log


@pytest.mark.parametrize("mesh_of", ["symmetric"], indirect=True)
@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(60, id="60s"),
        pytest.param(600, id="600s", marks=[pytest.mark.slow, pytest.mark.timeout(800)]),
    ],
)
def test_symmetric_pair_loses_at_most_one_percent_over_time(
    mesh_of: tuple[MeshScenario, Peer, Peer], seconds: int
) -> None:
    """Issue acceptance: in-tunnel ping loss during upgrade attempts <= 1 %
    (600 s under make test-slow; 60 s in the suite, which covers the first
    two tries). Each is coordinated (both sides hold the relay's frames in
    the same 0.8 s) and goes to the configured endpoints only: both NATs
    map per destination."""
    sc, a, b = mesh_of
    sc.start_agent(a)
    sc.start_agent(b)
    assert sc.wait_ping(a, b, timeout=15.0) is not None
    count = seconds * 5
    res = a.ns.run(
        ["ping", "-n", "-q", "-i", "0.2", "-W", "1", "-c", str(count), b.tunnel_address],
        check=False,
        timeout=seconds + 30,
    )
    m = re.search(r"(\d+) packets transmitted, (\d+) received", res.stdout)
    assert m is not None, res.stdout
    sent, received = int(m.group(1)), int(m.group(2))
    loss = 1 - received / sent
    print(f"{sent} pings over {seconds} s through the relayed tunnel: {100 * loss:.2f} % lost")
    assert loss <= 0.01, res.stdout
    assert path_of(sc, a) == path_of(sc, b) == "relayed"


GRID = [
    NatKind.FULL_CONE,
    NatKind.RESTRICTED_CONE,
    NatKind.PORT_RESTRICTED_CONE,
    NatKind.SYMMETRIC,
]
GRID_PAIRS = [(x, y) for i, x in enumerate(GRID) for y in GRID[i:]] + [
    (NatKind.UDP_BLOCKED, NatKind.FULL_CONE)
]


def test_real_nat_grid_matches_the_simulated_one() -> None:
    """Every pair of real NAT kinds, side by side in one testbed with one
    relay: the pairs the simulator's matrix (docs/NAT_MATRIX.md) says end
    direct end direct, the others stay relayed, UDP blocked is relayed over TCP."""
    with Testbed() as tb:
        relay = tb.add_relay("r1")
        pairs: list[tuple[NatKind, NatKind, Peer, Peer]] = []
        for i, (ka, kb) in enumerate(GRID_PAIRS):
            a = tb.add_peer(f"a{i}", nat=ka)
            b = tb.add_peer(f"b{i}", nat=kb)
            a.add_wireguard_peer(b, endpoint=b.wan_endpoint)
            b.add_wireguard_peer(a, endpoint=a.wan_endpoint)
            pairs.append((ka, kb, a, b))
        sc = MeshScenario(tb)
        sc.start_relay(relay)
        try:
            for *_, a, b in pairs:
                sc.start_agent(a)
                sc.start_agent(b)
            _check_grid(sc, pairs)
        finally:
            for name, proc in sc.agents.items():
                if proc.running():
                    print(f"--- {name} log ---\n{proc.log_tail(15)}")


def _check_grid(sc: MeshScenario, pairs: list[tuple[NatKind, NatKind, Peer, Peer]]) -> None:
    def want(ka: NatKind, kb: NatKind) -> str:
        sa, sb = SIM_KIND[ka], SIM_KIND[kb]
        if not expected_connected(sa, sb):
            return "none"
        return "direct" if expected_direct(sa, sb) else "relayed"

    def settled() -> bool:
        for ka, kb, a, b in pairs:
            w = want(ka, kb)
            if w != "none" and not (path_of(sc, a) == path_of(sc, b) == w):
                return False
        return True

    ok = wait_until(settled, 60)
    got = {
        f"{ka.value}/{kb.value}": (want(ka, kb), path_of(sc, a), path_of(sc, b))
        for ka, kb, a, b in pairs
    }
    print("\n".join(f"{k}: want {v[0]}, agents say {v[1]} / {v[2]}" for k, v in got.items()))
    assert ok, got
    for ka, kb, a, b in pairs:
        w = want(ka, kb)
        answered = a.ping(b.tunnel_address, count=2, timeout=3.0)
        assert answered == (w != "none"), (ka, kb, w)
        if w == "none":
            assert path_of(sc, a) != "direct"
            assert path_of(sc, b) != "direct"
