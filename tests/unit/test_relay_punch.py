"""The relay's side of hole punching: PUNCH (mappings, GO, holds, limits)
and MAPPING_PROBE (the NAT's mapping kind, once per latch)."""

from __future__ import annotations

import os

from tests.unit.test_relay_ports import A_IP, B_IP, _init, _port, _session, _setup
from wgrelay.client.events import PunchTold
from wgrelay.proto.constants import MappingKind
from wgrelay.proto.messages import mapping_probe
from wgrelay.proto.wgmac import mac1_key
from wgrelay.relay.stats import DropReason
from wgrelay.sim.wgwire import encode_response
from wgrelay.testkit import Client, CoreNet

WG_A, WG_B = (A_IP, 51820), (B_IP, 61000)


def _latched(net: CoreNet, a: Client, b: Client) -> bytes:
    sid, pa, pb = _session(net, a, b)
    _port(net, pa, _init(a, b), WG_A)
    _port(net, pb, encode_response(1, 2, os.urandom(32), mac1_key(a.pub.raw)), WG_B)
    net.relay.port_notices(net.clock.now)
    net.run()
    return sid


def _told(c: Client) -> list[PunchTold]:
    return [e for e in c.events if isinstance(e, PunchTold)]


def test_both_sides_hear_both_mappings_once_both_ports_latched() -> None:
    net, a, b, _ = _setup()
    _latched(net, a, b)
    (ta,), (tb,) = _told(a), _told(b)
    assert (ta.go, ta.mine, ta.theirs) == (False, WG_A, WG_B)
    assert (tb.go, tb.mine, tb.theirs) == (False, WG_B, WG_A)
    assert ta.mine_kind is ta.theirs_kind is MappingKind.UNKNOWN


def test_a_punch_goes_to_both_sides_at_once_and_holds_both_ports() -> None:
    net, a, b, _ = _setup()
    sid = _latched(net, a, b)
    a.events.clear()
    b.events.clear()
    assert a.link.punch(b.pub, 7, net.clock.now)
    net.run()
    (ta,), (tb,) = _told(a), _told(b)
    assert (ta.go, ta.nonce, ta.theirs) == (True, 7, WG_B)
    assert (tb.go, tb.nonce, tb.theirs) == (True, 7, WG_A)
    ports = net.relay.ports
    assert ports is not None
    pair = ports.by_sid[sid]
    assert pair.a.hold_until > net.clock.now
    assert pair.b.hold_until > net.clock.now
    assert not pair.ready  # the kernel gives the path back meanwhile
    # one try per second at most
    a.link.punch(b.pub, 8, net.clock.now)
    net.run()
    assert net.relay.stats.drops[DropReason.PUNCH_TOO_SOON] == 1
    assert net.relay.get_stats().punches == 1


def test_a_punch_before_both_ports_latched_is_dropped() -> None:
    net, a, b, _ = _setup()
    _session(net, a, b)
    a.link.punch(b.pub, 1, net.clock.now)
    net.run()
    assert net.relay.stats.drops[DropReason.PUNCH_NOT_READY] == 1
    assert not _told(b)


def test_a_mapping_probe_sets_the_kind_once_per_latch_and_both_sides_hear_it() -> None:
    net, a, b, _ = _setup()
    sid = _latched(net, a, b)
    a.events.clear()
    b.events.clear()
    # from A's WireGuard socket to the main port: the same public port
    net.relay.receive_control(mapping_probe(sid), WG_A, net.clock.now)
    # from B's: another one (its NAT maps per destination)
    net.relay.receive_control(mapping_probe(sid), (B_IP, 61001), net.clock.now)
    net.run()
    last_a, last_b = _told(a)[-1], _told(b)[-1]
    assert (last_a.mine_kind, last_a.theirs_kind) == (
        MappingKind.INDEPENDENT,
        MappingKind.DEPENDENT,
    )
    assert (last_b.mine_kind, last_b.theirs_kind) == (
        MappingKind.DEPENDENT,
        MappingKind.INDEPENDENT,
    )
    told = len(_told(a))
    # a later probe that disagrees (spoofed, say) changes nothing, sends nothing
    net.relay.receive_control(mapping_probe(sid), (A_IP, 1234), net.clock.now)
    net.run()
    assert len(_told(a)) == told
    # from an IP no latched side has, or for no session: counted, dropped
    net.relay.receive_control(mapping_probe(sid), ("192.0.2.99", 51820), net.clock.now)
    net.relay.receive_control(mapping_probe(bytes(8)), WG_A, net.clock.now)
    assert net.relay.stats.drops[DropReason.MAPPING_PROBE_UNMATCHED] == 2


def test_a_new_latch_forgets_the_kind() -> None:
    net, a, b, _ = _setup()
    sid, pa, _pb = _session(net, a, b)
    _port(net, pa, _init(a, b), WG_A)
    ports = net.relay.ports
    assert ports is not None
    pair = ports.by_sid[sid]
    pair.a.mapping = MappingKind.DEPENDENT
    _port(net, pa, _init(a, b), (A_IP, 51999))  # A's NAT rebound: a new latch
    assert pair.a.latched == (A_IP, 51999)
    assert pair.a.mapping is MappingKind.UNKNOWN
