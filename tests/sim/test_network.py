"""Hosts, sockets, links, partitions and determinism of the simulated network."""

from __future__ import annotations

import asyncio
import errno

import pytest

from tests.sim.simhelpers import Recorder
from wgrelay.sim import LinkSpec, NatKind, Simulation, SimulationError
from wgrelay.transport.base import Addr

# ---------------------------------------------------------------- sockets


def test_bind_rules_like_a_real_socket(sim: Simulation) -> None:
    h = sim.add_host("h", ipv6=True)
    rt = h.runtime()
    r = Recorder(sim)
    first = rt.open_udp("0.0.0.0", 0, r)
    second = rt.open_udp("0.0.0.0", 0, r)
    assert first.local_address == ("0.0.0.0", 32768)
    assert second.local_address == ("0.0.0.0", 32769)
    fixed = rt.open_udp(h.address, 51820, r)
    assert fixed.local_address == (h.address, 51820)
    v6 = rt.open_udp("::", 51820, r)  # IPv6-only: its own port space
    assert v6.local_address == ("::", 51820, 0, 0)
    for host, port in (("0.0.0.0", 51820), (h.address, 51820), ("0.0.0.0", 32768)):
        with pytest.raises(OSError, match="in use") as e:
            rt.open_udp(host, port, r)
        assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError, match="not an address of h") as e:
        rt.open_udp("198.51.100.7", 1, r)
    assert e.value.errno == errno.EADDRNOTAVAIL
    fixed.close()
    fixed.close()  # idempotent
    assert fixed.sendto(b"x", (h.address, 1)) is False
    assert rt.open_udp("0.0.0.0", 51820, r).local_address == ("0.0.0.0", 51820)


def test_one_way_delay_is_the_sum_of_the_links(sim: Simulation) -> None:
    server = sim.add_host("server", link=LinkSpec(delay_s=0.010))
    client = sim.add_host(
        "client",
        behind=NatKind.FULL_CONE,
        link=LinkSpec(delay_s=0.002),
        nat_link=LinkSpec(delay_s=0.020),
    )
    at_server, at_client = Recorder(sim), Recorder(sim)
    srv = server.runtime().open_udp("0.0.0.0", 3478, at_server)
    cli = client.runtime().open_udp("0.0.0.0", 40000, at_client)
    assert cli.sendto(b"ping", (server.address, 3478)) is True
    sim.run_for(1.0)
    assert client.nat is not None
    [(t, data, src)] = at_server.got
    assert t == pytest.approx(0.032)
    assert (data, src) == (b"ping", (client.nat.public_ip, 40000))
    srv.sendto(b"pong", src)
    sim.run_for(1.0)
    [(t, data, src)] = at_client.got
    assert t - 1.0 == pytest.approx(0.032)
    assert (data, src) == (b"pong", (server.address, 3478))


def test_same_instant_arrivals_form_one_batch_in_send_order(sim: Simulation) -> None:
    a, b = sim.add_host("a", link=LinkSpec(delay_s=0.01)), sim.add_host("b")
    r = Recorder(sim)
    b.runtime().open_udp("0.0.0.0", 9, r)
    s = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    for i in range(5):
        s.sendto(bytes([i]), (b.address, 9))
    sim.run_for(0.5)
    s.sendto(b"later", (b.address, 9))
    sim.run_for(0.5)
    assert r.payloads == [bytes([i]) for i in range(5)] + [b"later"]
    assert r.batches == [5, 1]


def test_loopback_and_own_address(sim: Simulation) -> None:
    h = sim.add_host("h", link=LinkSpec(delay_s=0.5, loss=1.0))  # the link is never used
    rt = h.runtime()
    r = Recorder(sim)
    rt.open_udp("0.0.0.0", 7, r)
    s = rt.open_udp("127.0.0.1", 0, Recorder(sim))
    s.sendto(b"lo", ("127.0.0.1", 7))
    t = rt.open_udp("0.0.0.0", 0, Recorder(sim))
    t.sendto(b"self", (h.address, 7))
    assert r.got == []  # never inside sendto
    assert s.sendto(b"out", ("198.18.9.9", 7)) is False  # a loopback socket has no route out
    sim.run_for(0.0)
    assert r.got == [
        (0.0, b"lo", ("127.0.0.1", s.local_address[1])),
        (0.0, b"self", (h.address, t.local_address[1])),
    ]


def test_ipv6_delivers_four_tuples_and_crosses_nats_untranslated(sim: Simulation) -> None:
    server = sim.add_host("server", ipv6=True)
    client = sim.add_host("client", behind=NatKind.SYMMETRIC, ipv6=True)
    r = Recorder(sim)
    server.runtime().open_udp("::", 443, r)
    s = client.runtime().open_udp("::", 5000, Recorder(sim))
    assert s.sendto(b"six", (server.ipv6_addresses[0], 443)) is True
    assert s.sendto(b"four", (server.address, 443)) is False  # IPv6 sockets are v6-only
    sim.run_for(1.0)
    assert r.sources == [(client.ipv6_addresses[0], 5000, 0, 0)]


def test_unreachable_port_and_unknown_address_are_dropped_and_traced(sim: Simulation) -> None:
    a, b = sim.add_host("a"), sim.add_host("b")
    s = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    s.sendto(b"x", (b.address, 9))
    s.sendto(b"y", ("203.0.113.1", 9))
    s.sendto(b"z", ("10.0.0.2", 9))
    sim.run_for(1.0)
    assert sim.drops == {"port_unreachable": 1, "no_route": 2}
    assert [(r.kind, r.verdict, r.at) for r in sim.trace if r.kind == "drop"] == [
        ("drop", "no_route", "internet"),
        ("drop", "no_route", "internet"),
        ("drop", "port_unreachable", "b"),
    ]


def test_crash_drops_sockets_and_traffic_until_restored(sim: Simulation) -> None:
    a, b = sim.add_host("a", link=LinkSpec(delay_s=0.1)), sim.add_host("b")
    rb = Recorder(sim)
    sb = b.runtime().open_udp("0.0.0.0", 9, rb)
    sa = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    sa.sendto(b"in flight", (b.address, 9))
    b.crash()
    assert sb.closed
    assert sb.sendto(b"x", (a.address, 1)) is False
    with pytest.raises(OSError, match="is down") as e:
        b.runtime().open_udp("0.0.0.0", 9, rb)
    assert e.value.errno == errno.ENETDOWN
    sim.run_for(1.0)
    assert sim.drops == {"host_down": 1}
    b.restore()
    b.runtime().open_udp("0.0.0.0", 9, rb)
    sa.sendto(b"after", (b.address, 9))
    sim.run_for(1.0)
    assert rb.payloads == [b"after"]
    assert [r.kind for r in sim.trace if r.kind in ("host_down", "host_up")] == [
        "host_down",
        "host_up",
    ]


def test_a_raising_receiver_fails_the_run(sim: Simulation) -> None:
    class Broken:
        def datagram_received(self, data: bytes, addr: Addr) -> None:
            raise ValueError("bug")

        def batch_done(self) -> None:
            pass

    a, b = sim.add_host("a"), sim.add_host("b")
    b.runtime().open_udp("0.0.0.0", 9, Broken())
    a.runtime().open_udp("0.0.0.0", 0, Recorder(sim)).sendto(b"x", (b.address, 9))
    with pytest.raises(SimulationError, match="receiver raised") as e:
        sim.run_for(1.0)
    assert isinstance(e.value.__cause__, ValueError)
    sim.run_for(1.0)  # reported once


# ---------------------------------------------------------------- links

N_PACKETS = 4000


def _blast(sim: Simulation, spec: LinkSpec, interval_s: float = 0.001) -> Recorder:
    """Send N_PACKETS numbered packets a -> b across ``spec`` (a's uplink only)."""
    a, b = sim.add_host("a", link=spec), sim.add_host("b")
    r = Recorder(sim)
    b.runtime().open_udp("0.0.0.0", 9, r)
    s = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))

    async def sender() -> None:
        for i in range(N_PACKETS):
            s.sendto(i.to_bytes(4, "big"), (b.address, 9))
            await asyncio.sleep(interval_s)
        await asyncio.sleep(1.0)

    sim.run(sender())
    return r


def _out_of_order(r: Recorder) -> int:
    highest, late = -1, 0
    for data in r.payloads:
        n = int.from_bytes(data, "big")
        if n < highest:
            late += 1
        highest = max(highest, n)
    return late


def test_loss_rate_within_tolerance(sim: Simulation) -> None:
    r = _blast(sim, LinkSpec(loss=0.1))
    lost = N_PACKETS - len(r.got)
    assert 0.085 * N_PACKETS < lost < 0.115 * N_PACKETS
    assert sim.drops == {"loss": lost}


def test_duplication_rate_within_tolerance(sim: Simulation) -> None:
    r = _blast(sim, LinkSpec(duplicate=0.05))
    extra = len(r.got) - N_PACKETS
    assert 0.04 * N_PACKETS < extra < 0.06 * N_PACKETS
    assert set(r.payloads) == {i.to_bytes(4, "big") for i in range(N_PACKETS)}


def test_reordering_rate_within_tolerance(sim: Simulation) -> None:
    r = _blast(sim, LinkSpec(delay_s=0.005, reorder=0.05, reorder_delay_s=0.01))
    late = _out_of_order(r)
    # Each packet held back is overtaken by the ones behind it: it arrives late once.
    assert 0.04 * N_PACKETS < late < 0.06 * N_PACKETS
    assert len(r.got) == N_PACKETS


def test_no_reordering_without_jitter_or_reorder(sim: Simulation) -> None:
    r = _blast(sim, LinkSpec(delay_s=0.030))
    assert _out_of_order(r) == 0
    assert r.got[0][0] == pytest.approx(0.030)


def test_jitter_stays_within_its_bounds(sim: Simulation) -> None:
    r = _blast(sim, LinkSpec(delay_s=0.020, jitter_s=0.010), interval_s=0.05)
    delays = [t - int.from_bytes(d, "big") * 0.05 for t, d, _ in r.got]
    assert min(delays) >= 0.020 - 1e-9
    assert max(delays) < 0.030
    assert max(delays) - min(delays) > 0.009


def test_bandwidth_serialises_packets(sim: Simulation) -> None:
    a = sim.add_host("a", link=LinkSpec(bandwidth_bps=1_000_000, queue_bytes=10_000))
    b = sim.add_host("b")
    r = Recorder(sim)
    b.runtime().open_udp("0.0.0.0", 9, r)
    s = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    for _ in range(12):
        s.sendto(bytes(972), (b.address, 9))  # 1000 bytes on the wire
    sim.run_for(1.0)
    # 8 ms per packet; the queue holds ten packets' worth, the rest is tail-dropped.
    times = [t for t, _, _ in r.got]
    assert times == pytest.approx([0.008 * (i + 1) for i in range(10)])
    assert sim.drops == {"queue_full": 2}


def test_set_link_changes_behaviour_from_now_on(sim: Simulation) -> None:
    a, b = sim.add_host("a"), sim.add_host("b")
    r = Recorder(sim)
    b.runtime().open_udp("0.0.0.0", 9, r)
    s = a.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    s.sendto(b"1", (b.address, 9))
    a.set_link(LinkSpec(loss=1.0))
    s.sendto(b"2", (b.address, 9))
    a.set_link(LinkSpec(delay_s=0.25))
    s.sendto(b"3", (b.address, 9))
    sim.run_for(1.0)
    assert [(t, d) for t, d, _ in r.got] == [(0.0, b"1"), (0.25, b"3")]
    assert a.link == LinkSpec(delay_s=0.25)


def test_a_route_delay_is_added_once_both_ways_also_before_a_bandwidth_limit(
    sim: Simulation,
) -> None:
    """``set_route_delay``: 50 ms one way between a and b on top of their
    links, both ways, once, also when the receiver's link has a bandwidth
    (its queue wakes the packet up again: the delay was added at every
    wake-up, so the packet never arrived); c, not on the route, is not slowed."""
    a = sim.add_host("a", link=LinkSpec(delay_s=0.001))
    b = sim.add_host("b", link=LinkSpec(delay_s=0.001, bandwidth_bps=1_000_000))
    c = sim.add_host("c", link=LinkSpec(delay_s=0.001))
    at_b, at_a, at_c = Recorder(sim), Recorder(sim), Recorder(sim)
    b.runtime().open_udp("0.0.0.0", 9, at_b)
    sa = a.runtime().open_udp("0.0.0.0", 9, at_a)
    c.runtime().open_udp("0.0.0.0", 9, at_c)
    sim.set_route_delay([a], [b], 0.050)
    sa.sendto(bytes(97), (b.address, 9))  # 125 bytes on the wire: 1 ms at b's link
    sa.sendto(b"c", (c.address, 9))
    sim.run_for(1.0)
    [(t, _, src)] = at_b.got
    assert t == pytest.approx(0.001 + 0.050 + 0.001 + 0.001)
    assert [t for t, _, _ in at_c.got] == [pytest.approx(0.002)]
    b.runtime().open_udp("0.0.0.0", 0, Recorder(sim)).sendto(b"back", src)
    sim.run_for(1.0)
    [(t, _, _)] = at_a.got
    assert t - 1.0 == pytest.approx(0.050 + 0.002, abs=1e-3)
    sim.set_route_delay([a], [b], 0.0)  # removed
    assert sim.network.route_delays == {}


# ---------------------------------------------------------------- partitions


def test_partition_drops_both_ways_until_healed(sim: Simulation) -> None:
    a, b, c = (sim.add_host(n, link=LinkSpec(delay_s=0.01)) for n in "abc")
    recorders = {h.name: Recorder(sim) for h in (a, b, c)}
    socks = {h.name: h.runtime().open_udp("0.0.0.0", 9, recorders[h.name]) for h in (a, b, c)}

    def everyone_sends(tag: bytes) -> None:
        for src in (a, b, c):
            for dst in (a, b, c):
                if src is not dst:
                    socks[src.name].sendto(tag + src.name.encode(), (dst.address, 9))

    split = sim.partition([a], [b, c])
    assert split.active
    everyone_sends(b"1")
    sim.run_for(1.0)
    assert recorders["a"].payloads == []
    assert sorted(recorders["b"].payloads) == [b"1c"]
    sim.run_for(0.0)
    everyone_sends(b"2")
    split.heal()  # packets already in flight get through again
    assert not split.active
    sim.run_for(1.0)
    assert sorted(recorders["a"].payloads) == [b"2b", b"2c"]
    assert sim.drops == {"partition": 4}


def test_heal_all(sim: Simulation) -> None:
    a, b, c = (sim.add_host(n) for n in "abc")
    sim.partition([a], [b])
    sim.partition([a], [c])
    sim.heal()
    assert sim.network.partitions == []
    assert [r.kind for r in sim.trace] == ["partition", "partition", "heal", "heal"]


# ---------------------------------------------------------------- determinism


def _messy_scenario(seed: int) -> tuple[str, int]:
    with Simulation(seed=seed) as sim:
        lossy = LinkSpec(delay_s=0.02, jitter_s=0.01, loss=0.05, duplicate=0.02, reorder=0.02)
        relay = sim.add_host("relay", link=lossy)
        peers = [
            sim.add_host(f"p{i}", behind=kind, link=lossy, nat_link=lossy)
            for i, kind in enumerate(
                (NatKind.FULL_CONE, NatKind.SYMMETRIC, NatKind.PORT_RESTRICTED_CONE)
            )
        ]
        echo = Recorder(sim)
        server = relay.runtime().open_udp("0.0.0.0", 3478, echo)
        socks = [p.runtime().open_udp("0.0.0.0", 0, Recorder(sim)) for p in peers]

        async def traffic() -> None:
            for _ in range(200):
                sock = sim.rng.choice(socks)
                sock.sendto(bytes(sim.rng.randrange(32, 200)), (relay.address, 3478))
                for _, data, src in echo.got:
                    server.sendto(data[:8], src)
                echo.got.clear()
                await asyncio.sleep(sim.rng.random() * 0.05)

        sim.run(traffic())
        sim.run_for(5.0)
        return sim.trace_digest(), len(sim.trace)


def test_same_seed_same_trace_different_seed_different_trace() -> None:
    digest, records = _messy_scenario(42)
    assert records > 600
    assert _messy_scenario(42) == (digest, records)
    assert _messy_scenario(43)[0] != digest


def test_trace_can_be_turned_off() -> None:
    with Simulation(seed=1, trace=False) as sim:
        a, b = sim.add_host("a"), sim.add_host("b")
        r = Recorder(sim)
        b.runtime().open_udp("0.0.0.0", 9, r)
        a.runtime().open_udp("0.0.0.0", 0, Recorder(sim)).sendto(b"x", (b.address, 9))
        sim.run_for(1.0)
        assert r.payloads == [b"x"]
        assert sim.trace == []
        assert (sim.network.sent, sim.network.delivered) == (1, 1)
