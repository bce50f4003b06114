"""Multi-hop on the simulator: A reaches only relay 1, B only relay 2.

Each peer's NAT lets UDP out to its own relay only (and no TCP at all, so no
stream fallback to the other relay); relay 2 joins the federation through
relay 1; each agent knows only its own relay. A finds B at relay 2 (B's
record), cannot register there, and asks relay 1 to go through relay 2: the
tunnel comes up over both relays, deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.sim import LinkSpec, Simulation
from wgrelay.sim.mesh import SimMesh, SimRelay
from wgrelay.sim.nat import Dependence, NatBehavior

_APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT


def _only_to(relay: SimRelay) -> NatBehavior:
    """A symmetric NAT whose firewall lets UDP out to ``relay`` only."""
    return NatBehavior(
        mapping=_APDM,
        filtering=_APDM,
        port_preservation=False,
        tcp_blocked=True,
        udp_only_to=frozenset({relay.host.address}),
    )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=11) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def _trust(relay: SimRelay, *others: PublicKey) -> None:
    """``start-relay --leg-relay``: the relays this one runs legs with."""
    relay.config = replace(relay.config, leg_relays=frozenset(k.raw for k in others))
    if relay.core is not None:
        relay.core.reconfigure(config=relay.config)


def _relays(mesh: SimMesh, *, trusted: bool = True) -> tuple[SimRelay, SimRelay]:
    r1 = mesh.add_relay("relay1", link=LinkSpec(delay_s=0.010))
    r2 = mesh.add_relay("relay2", link=LinkSpec(delay_s=0.015), bootstrap=[r1])
    _trust(r1, r2.key)
    # not trusted: relay 2 runs legs (it says so), but with another relay only
    _trust(r2, r1.key if trusted else RelayIdentity.generate().public)
    return r1, r2


def _run(mesh: SimMesh) -> tuple[float, list[tuple[float, float | None]]]:
    r1, r2 = _relays(mesh)
    a = mesh.add_peer("a", behind=_only_to(r1), link=LinkSpec(delay_s=0.020), relays=[r1])
    b = mesh.add_peer("b", behind=_only_to(r2), link=LinkSpec(delay_s=0.020), relays=[r2])
    mesh.connect(a, b)
    mesh.start()
    took = mesh.wait_connected(a, b, timeout_s=60)
    assert a.relay_for(b) == r1.key
    assert b.relay_for(a) == r2.key
    # neither could reach the other's relay
    assert not r2.holds(a)
    assert not r1.holds(b)
    traffic = mesh.ping_every(a, b, interval_s=0.1, timeout_s=1.0)
    mesh.sim.run_for(5.0)
    # whichever agent asked first, its relay is the entry, the other the exit
    s1, s2 = r1.stats(), r2.stats()
    assert s1 is not None
    assert s2 is not None
    entry, exit_ = (s1, s2) if s1.legs["open_entry"] else (s2, s1)
    for st, role in ((entry, "entry"), (exit_, "exit")):
        assert st.legs[f"open_{role}"] == 1, (s1.legs, s2.legs)
        assert st.legs[f"packets_{role}"] > 40, st.legs
    for relay in (r1, r2):
        # every side in port mode, the leg's pinned to the other relay's
        # port: the relay forwards port to port, and its kernel offload
        # would take the whole path
        assert relay.core is not None
        (sid,) = relay.core.legs
        pair = relay.core.sessions[sid].ports
        assert pair is not None
        assert pair.ready, (pair.a, pair.b)
        assert pair.leg
    return took, [(s, rtt) for s, rtt in traffic.results]


def test_tunnel_comes_up_over_two_relays_when_each_peer_reaches_one(mesh: SimMesh) -> None:
    took, results = _run(mesh)
    answered = [rtt for _, rtt in results if rtt is not None]
    assert len(answered) >= 40, results
    assert len(answered) == len(results)  # a loss-free network: every ping answered
    # A-R1 20+10 ms, R1-R2 10+15, R2-B 15+20, each way: about 180 ms round trip
    assert all(0.15 < rtt < 0.25 for rtt in answered), answered
    print(f"tunnel up over two relays after {took:.1f} s")


def test_leg_failure_closes_the_entry_side(mesh: SimMesh) -> None:
    """Relay 2 dies: relay 1 closes A's session (the federation declares it
    dead), and A's agent no longer counts the path as relayed there."""
    _run(mesh)
    r1, r2 = mesh.relays["relay1"], mesh.relays["relay2"]
    a, b = mesh.peers["a"], mesh.peers["b"]
    r2.kill()
    mesh.sim.run_until(lambda: a.relay_for(b) is None, timeout_s=30)
    st = r1.stats()
    assert st is not None
    assert st.legs["open_entry"] == st.legs["open_exit"] == 0, st.legs
    assert st.legs.get("closed_entry", 0) + st.legs.get("closed_exit", 0) == 1, st.legs


def test_no_leg_with_a_relay_the_operator_did_not_list(mesh: SimMesh) -> None:
    """Relay 2 does not list relay 1 (``--leg-relay``): it opens no leg for
    it, whatever initiator relay 1 names, and the pair stays unconnected
    (each reaches only its own relay). A relay that introduced itself by
    gossip could otherwise claim any initiator and take over a pair."""
    r1, r2 = _relays(mesh, trusted=False)
    a = mesh.add_peer("a", behind=_only_to(r1), link=LinkSpec(delay_s=0.020), relays=[r1])
    b = mesh.add_peer("b", behind=_only_to(r2), link=LinkSpec(delay_s=0.020), relays=[r2])
    mesh.connect(a, b)
    mesh.start()
    mesh.sim.run_for(40.0)
    assert not mesh.connected(a, b)
    st1, st2 = r1.stats(), r2.stats()
    assert st1 is not None
    assert st2 is not None
    # relay 1 asked (it trusts relay 2); relay 2 refused the unlisted relay
    assert st2.legs.get("refused_not_trusted", 0) > 0, (st1.legs, st2.legs)
    assert st1.legs.get("open_entry", 0) == st2.legs.get("open_exit", 0) == 0


def test_same_seed_same_run(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        with Simulation(seed=11) as sim:
            took, results = _run(SimMesh(sim, tmp_path / str(i)))
            runs.append((took, results))
    assert runs[0] == runs[1]
