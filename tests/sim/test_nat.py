"""NAT boxes per RFC 4787, observed the way a STUN client would observe them.

One inside socket (port 5000) talks to two outside hosts with two ports each.
Mapping behaviour shows in the source addresses the outside sockets see;
filtering in which outside sockets can answer on the mapping one of them saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.sim.simhelpers import Recorder
from wgrelay.sim import Dependence, Host, NatBehavior, NatKind, Simulation
from wgrelay.sim.nat import (
    DROP_FILTERED,
    DROP_NO_MAPPING,
    DROP_PORTS_EXHAUSTED,
    NAT_PRESETS,
    NatTable,
)
from wgrelay.sim.socket import SimUdpTransport

EIM = Dependence.ENDPOINT_INDEPENDENT
ADM = Dependence.ADDRESS_DEPENDENT
APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT
INSIDE_PORT = 5000
OUTSIDE_PORTS = (1000, 2000)


@dataclass
class World:
    sim: Simulation
    inside: Host
    inside_sock: SimUdpTransport
    inside_rx: Recorder
    outside: dict[str, tuple[SimUdpTransport, Recorder]]
    """"s1:1000" -> socket and what it received."""
    addresses: dict[str, tuple[str, int]]

    def send_out(self, *targets: str) -> None:
        for name in targets:
            self.inside_sock.sendto(b"from-inside", self.addresses[name])
        self.sim.run_for(1.0)

    def seen_by(self, name: str) -> tuple[str, int]:
        return self.outside[name][1].sources[-1]

    def send_in(self, name: str, to: tuple[str, int]) -> None:
        self.outside[name][0].sendto(name.encode(), to)


def make_world(sim: Simulation, behind: NatKind | NatBehavior) -> World:
    inside = sim.add_host("h", behind=behind)
    rx = Recorder(sim)
    sock = inside.runtime().open_udp("0.0.0.0", INSIDE_PORT, rx)
    outside: dict[str, tuple[SimUdpTransport, Recorder]] = {}
    addresses = {}
    for host_name in ("s1", "s2"):
        host = sim.add_host(host_name)
        for port in OUTSIDE_PORTS:
            r = Recorder(sim)
            name = f"{host_name}:{port}"
            outside[name] = (host.runtime().open_udp("0.0.0.0", port, r), r)
            addresses[name] = (host.address, port)
    return World(sim, inside, sock, rx, outside, addresses)


CASES = [
    pytest.param(NatKind.FULL_CONE, EIM, EIM, id="full-cone"),
    pytest.param(NatKind.RESTRICTED_CONE, EIM, ADM, id="restricted-cone"),
    pytest.param(NatKind.PORT_RESTRICTED_CONE, EIM, APDM, id="port-restricted-cone"),
    pytest.param(NatKind.SYMMETRIC, APDM, APDM, id="symmetric"),
    pytest.param(NatBehavior(mapping=ADM, filtering=EIM), ADM, EIM, id="adm-eif"),
    pytest.param(NatBehavior(mapping=APDM, filtering=ADM), APDM, ADM, id="apdm-adf"),
]


@pytest.mark.parametrize(("behind", "mapping", "filtering"), CASES)
def test_mapping_behaviour(
    sim: Simulation, behind: NatKind | NatBehavior, mapping: Dependence, filtering: Dependence
) -> None:
    w = make_world(sim, behind)
    w.send_out("s1:1000", "s1:2000", "s2:1000")
    same_host_other_port = w.seen_by("s1:1000") == w.seen_by("s1:2000")
    other_host = w.seen_by("s1:1000") == w.seen_by("s2:1000")
    expected = {EIM: (True, True), ADM: (True, False), APDM: (False, False)}[mapping]
    assert (same_host_other_port, other_host) == expected
    assert w.inside.nat is not None
    assert {w.seen_by(n)[0] for n in ("s1:1000", "s1:2000", "s2:1000")} == {w.inside.nat.public_ip}


@pytest.mark.parametrize(("behind", "mapping", "filtering"), CASES)
def test_filtering_behaviour(
    sim: Simulation, behind: NatKind | NatBehavior, mapping: Dependence, filtering: Dependence
) -> None:
    w = make_world(sim, behind)
    w.send_out("s1:1000")
    mapped = w.seen_by("s1:1000")
    for name in ("s1:1000", "s1:2000", "s2:1000"):
        w.send_in(name, mapped)
    sim.run_for(1.0)
    expected = {
        EIM: [b"s1:1000", b"s1:2000", b"s2:1000"],
        ADM: [b"s1:1000", b"s1:2000"],
        APDM: [b"s1:1000"],
    }[filtering]
    assert w.inside_rx.payloads == expected
    assert sim.drops == ({DROP_FILTERED: 3 - len(expected)} if len(expected) < 3 else {})


@pytest.mark.parametrize(
    ("kind", "preserves"),
    [
        (NatKind.FULL_CONE, True),
        (NatKind.RESTRICTED_CONE, True),
        (NatKind.PORT_RESTRICTED_CONE, False),
        (NatKind.SYMMETRIC, False),
    ],
)
def test_port_preservation(sim: Simulation, kind: NatKind, preserves: bool) -> None:
    w = make_world(sim, kind)
    w.send_out("s1:1000")
    port = w.seen_by("s1:1000")[1]
    assert (port == INSIDE_PORT) is preserves
    assert 1024 <= port <= 65535


def test_a_preserved_port_already_taken_gets_another(sim: Simulation) -> None:
    nat = sim.add_nat("home", NatKind.FULL_CONE)
    server = sim.add_host("server")
    r = Recorder(sim)
    server.runtime().open_udp("0.0.0.0", 3478, r)
    for name in ("h1", "h2"):
        host = sim.add_host(name, behind=nat)
        host.runtime().open_udp("0.0.0.0", INSIDE_PORT, Recorder(sim)).sendto(
            name.encode(), (server.address, 3478)
        )
    sim.run_for(1.0)
    [first, second] = r.sources
    assert first == (nat.public_ip, INSIDE_PORT)
    assert second[0] == nat.public_ip
    assert second[1] != INSIDE_PORT


# ---------------------------------------------------------------- timeouts

SHORT = NatBehavior(mapping=EIM, filtering=APDM, mapping_timeout_s=30.0)


def _at(sim: Simulation, when: float, action: Callable[[], object]) -> None:
    sim.loop.call_at(when, action)


def test_mapping_expires_after_the_timeout_without_inbound_refresh(sim: Simulation) -> None:
    w = make_world(sim, SHORT)
    w.send_out("s1:1000")  # at t=0
    mapped = w.seen_by("s1:1000")
    for when in (10.0, 20.0, 29.0, 30.0):
        _at(sim, when, lambda: w.send_in("s1:1000", mapped))
    sim.run_for(40.0)
    assert [t for t, _, _ in w.inside_rx.got] == [10.0, 20.0, 29.0]
    assert sim.drops == {DROP_NO_MAPPING: 1}
    assert [(r.time, r.kind) for r in sim.trace if r.kind.startswith("nat_")] == [
        (0.0, "nat_map"),
        (30.0, "nat_expire"),
    ]


def test_outbound_packets_refresh_the_mapping(sim: Simulation) -> None:
    w = make_world(sim, SHORT)
    w.send_out("s1:1000")
    mapped = w.seen_by("s1:1000")
    for when in (20.0, 40.0, 60.0):
        _at(sim, when, lambda: w.inside_sock.sendto(b"refresh", w.addresses["s1:1000"]))
    _at(sim, 89.0, lambda: w.send_in("s1:1000", mapped))
    _at(sim, 90.5, lambda: w.send_in("s1:1000", mapped))
    sim.run_for(100.0)
    assert [t for t, _, _ in w.inside_rx.got] == [89.0]
    assert w.seen_by("s1:1000") == mapped


def test_inbound_refresh_when_enabled(sim: Simulation) -> None:
    w = make_world(
        sim, NatBehavior(mapping=EIM, filtering=APDM, mapping_timeout_s=30.0, inbound_refresh=True)
    )
    w.send_out("s1:1000")
    mapped = w.seen_by("s1:1000")
    for when in (20.0, 40.0, 60.0, 80.0):
        _at(sim, when, lambda: w.send_in("s1:1000", mapped))
    sim.run_for(100.0)
    assert [t for t, _, _ in w.inside_rx.got] == [20.0, 40.0, 60.0, 80.0]


def test_an_expired_mapping_comes_back_on_a_new_port(sim: Simulation) -> None:
    """What a WireGuard peer sees as its NATed peer roaming."""
    w = make_world(sim, NatBehavior(mapping=EIM, port_preservation=False, mapping_timeout_s=30.0))
    w.send_out("s1:1000")
    before = w.seen_by("s1:1000")
    sim.run_for(40.0)
    w.send_out("s1:1000")
    after = w.seen_by("s1:1000")
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_reset_forgets_every_mapping(sim: Simulation) -> None:
    w = make_world(sim, NatKind.FULL_CONE)
    w.send_out("s1:1000")
    assert w.inside.nat is not None
    w.inside.nat.reset()
    w.send_in("s1:1000", w.seen_by("s1:1000"))
    sim.run_for(1.0)
    assert w.inside_rx.got == []
    assert sim.drops == {DROP_NO_MAPPING: 1}


# ---------------------------------------------------------------- hairpinning, blocking, nesting


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(sim: Simulation, hairpinning: bool) -> None:
    nat = sim.add_nat("home", NatBehavior(mapping=EIM, filtering=EIM, hairpinning=hairpinning))
    server = sim.add_host("server")
    server.runtime().open_udp("0.0.0.0", 3478, Recorder(sim))
    h1, h2 = sim.add_host("h1", behind=nat), sim.add_host("h2", behind=nat)
    r2 = Recorder(sim)
    s2 = h2.runtime().open_udp("0.0.0.0", 6000, r2)
    s1 = h1.runtime().open_udp("0.0.0.0", 7000, Recorder(sim))
    s2.sendto(b"open a mapping", (server.address, 3478))
    s1.sendto(b"learn my mapping", (server.address, 3478))
    sim.run_for(1.0)
    s1.sendto(b"hairpin", (nat.public_ip, 6000))  # h2's public endpoint (port preserved)
    sim.run_for(1.0)
    if hairpinning:
        assert r2.got == [(1.0, b"hairpin", (nat.public_ip, 7000))]
    else:
        assert r2.got == []
        assert sim.drops == {"nat_no_hairpin": 1}


def test_hosts_on_one_lan_talk_without_translation(sim: Simulation) -> None:
    nat = sim.add_nat("home", NatKind.SYMMETRIC)
    h1, h2 = sim.add_host("h1", behind=nat), sim.add_host("h2", behind=nat)
    r2 = Recorder(sim)
    h2.runtime().open_udp("0.0.0.0", 6000, r2)
    h1.runtime().open_udp("0.0.0.0", 7000, Recorder(sim)).sendto(b"lan", (h2.address, 6000))
    sim.run_for(1.0)
    assert r2.sources == [(h1.address, 7000)]
    assert len(nat.table) == 0


def test_udp_blocked_lets_nothing_out_or_in(sim: Simulation) -> None:
    w = make_world(sim, NatKind.UDP_BLOCKED)
    w.send_out("s1:1000", "s2:2000")
    assert all(rx.got == [] for _, rx in w.outside.values())
    assert w.inside.nat is not None
    w.send_in("s1:1000", (w.inside.nat.public_ip, INSIDE_PORT))
    sim.run_for(1.0)
    assert w.inside_rx.got == []
    assert sim.drops == {"nat_udp_blocked": 2, DROP_NO_MAPPING: 1}


def test_carrier_grade_nat(sim: Simulation) -> None:
    cgn = sim.add_nat("cgn", NatKind.PORT_RESTRICTED_CONE, lan="100.64.0.0/16")
    home = sim.add_nat("home", NatKind.FULL_CONE, behind=cgn)
    h = sim.add_host("h", behind=home)
    server = sim.add_host("server")
    rs, rh = Recorder(sim), Recorder(sim)
    srv = server.runtime().open_udp("0.0.0.0", 3478, rs)
    h.runtime().open_udp("0.0.0.0", INSIDE_PORT, rh).sendto(b"up", (server.address, 3478))
    sim.run_for(1.0)
    [src] = rs.sources
    assert home.public_ip.startswith("100.64.")
    assert src[0] == cgn.public_ip
    assert sim.public_endpoint(h, INSIDE_PORT, (server.address, 3478)) == src
    srv.sendto(b"down", src)
    sim.run_for(1.0)
    assert rh.got == [(1.0, b"down", (server.address, 3478))]


def test_none_means_on_the_internet(sim: Simulation) -> None:
    h = sim.add_host("h", behind=NatKind.NONE)
    assert h.nat is None
    assert h.address.startswith("198.18.")
    assert sim.public_endpoint(h, 1, ("198.18.0.9", 1)) == (h.address, 1)
    with pytest.raises(ValueError, match="no NAT box"):
        sim.add_nat("x", NatKind.NONE)


# ---------------------------------------------------------------- the table alone


def test_table_expiry_boundary_is_exact() -> None:
    table = NatTable(NAT_PRESETS[NatKind.FULL_CONE], "198.18.0.1", random.Random(1))
    port = table.outbound(("10.0.0.2", 5000), ("198.18.0.9", 1), now=100.0)
    assert port == 5000
    assert table.inbound(5000, ("203.0.113.1", 9), now=219.999) == ("10.0.0.2", 5000)
    assert table.inbound(5000, ("203.0.113.1", 9), now=220.0) == DROP_NO_MAPPING
    assert len(table) == 0


def test_table_runs_out_of_ports() -> None:
    behavior = NatBehavior(mapping=APDM, port_range=(40000, 40001))
    table = NatTable(behavior, "198.18.0.1", random.Random(1))
    inside = ("10.0.0.2", 5000)
    ports = {table.outbound(inside, ("198.18.0.9", p), now=0.0) for p in (1, 2)}
    assert ports == {40000, 40001}
    assert table.outbound(inside, ("198.18.0.9", 3), now=0.0) == DROP_PORTS_EXHAUSTED
    # Expired mappings give their ports back.
    assert table.outbound(inside, ("198.18.0.9", 3), now=500.0) in (40000, 40001)


def test_table_sweep_drops_expired_mappings() -> None:
    table = NatTable(NatBehavior(mapping=APDM), "198.18.0.1", random.Random(1))
    for p in range(10):
        table.outbound(("10.0.0.2", 5000), ("198.18.0.9", p + 1), now=float(p))
    table.sweep(now=125.5)
    assert len(table) == 4  # those refreshed at 6..9 s are still alive
