"""Issue 14's parts together on the simulator: a multi-hop session whose
initiator reaches its relay over TLS only (the stream fallback), with
credits on at both relays.

A's network lets only TCP 443 out, and only relay 1 serves streams; B's lets
UDP out to relay 2 only. The tunnel comes up A-(TLS)-R1-R2-B, and each relay
asks only the side registered with it for a receipt (A's over the TLS
stream), each stores both receipts (the gossip), and the two receipts name
the same session id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sim.test_multihop import _only_to, _trust
from wgrelay.relay.credits import ASK_INTERVAL_S
from wgrelay.relay.ledger import Ledger
from wgrelay.relay.server import RelayServer
from wgrelay.sim import LinkSpec, Simulation
from wgrelay.sim.mesh import SimMesh
from wgrelay.sim.nat import Dependence, NatBehavior

_APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=11) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def test_a_tls_only_initiator_over_two_relays_signs_for_its_own(
    mesh: SimMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    r1 = mesh.add_relay("relay1", link=LinkSpec(delay_s=0.010))

    async def no_streams(_self: RelayServer, *_args: Any, **_kw: Any) -> None:
        return None  # relay 2 serves no TCP/TLS: A cannot register there

    with monkeypatch.context() as m:
        m.setattr(RelayServer, "open_streams", no_streams)
        r2 = mesh.add_relay("relay2", link=LinkSpec(delay_s=0.015), bootstrap=[r1])
    _trust(r1, r2.key)
    _trust(r2, r1.key)
    for relay in (r1, r2):
        assert relay.core is not None
        relay.core.enable_credits(Ledger(None), None, mesh.sim.now())
    tls_only = NatBehavior(
        mapping=_APDM, filtering=_APDM, port_preservation=False, udp_blocked=True,
        tcp_443_only=True,
    )  # fmt: skip
    a = mesh.add_peer("a", behind=tls_only, link=LinkSpec(delay_s=0.020), relays=[r1])
    b = mesh.add_peer("b", behind=_only_to(r2), link=LinkSpec(delay_s=0.020), relays=[r2])
    mesh.connect(a, b)
    mesh.start()
    took = mesh.wait_connected(a, b, timeout_s=60)
    assert (a.relay_for(b), b.relay_for(a)) == (r1.key, r2.key)
    assert not r2.holds(a)
    traffic = mesh.ping_every(a, b, interval_s=0.1, timeout_s=1.0)
    mesh.sim.run_for(ASK_INTERVAL_S + 10)
    answered = [rtt for _, rtt in traffic.results if rtt is not None]
    assert len(answered) == len(traffic.results) > 300
    s1, s2 = r1.stats(), r2.stats()
    assert s1 is not None
    assert s2 is not None
    assert (s1.legs["open_entry"], s2.legs["open_exit"]) == (1, 1)
    held = {}
    for relay, own, far in ((r1, a, b), (r2, b, a)):
        assert relay.core is not None
        led = relay.core.ledger
        assert led is not None
        assert relay.core.credit_counts["receipts_taken"] >= 1
        rows = led._conn.execute("SELECT relay, peer, session FROM receipts").fetchall()
        held[relay.name] = {(bytes(r), bytes(p), bytes(s)) for r, p, s in rows}
        # its own side signed for it; the far side (another relay's) never asked
        assert {p for r, p, _ in held[relay.name] if r == relay.key.raw} == {own.public.raw}
        assert far.public.raw not in {p for r, p, _ in held[relay.name] if r == relay.key.raw}
    assert held["relay1"] == held["relay2"]  # spread by the gossip
    assert len({s for _, _, s in held["relay1"]}) == 1  # the same session id at both
    print(f"A over TLS, two relays: up after {took:.1f} s, {len(answered)} pings answered")
