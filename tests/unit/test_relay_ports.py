"""Port mode in the relay core (ports.py): ports per side, latching only to a
verified WireGuard handshake from the registered IP, bridging with framed
mode, freeing ports, and what the kernel offload is told."""

from __future__ import annotations

import os

import pytest

from wgrelay.client.events import PortNotLatched, SessionEstablished
from wgrelay.proto.constants import DATA_HEADER_LEN, Capability
from wgrelay.proto.data import data_header
from wgrelay.proto.wgmac import mac1_key
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.ports import PathChange, PortPool, SideMode
from wgrelay.relay.stats import DropReason
from wgrelay.sim.wgwire import encode_initiation, encode_response, encode_transport, tai64n
from wgrelay.testkit import Client, CoreNet, registered

A_IP = "198.51.100.10"
B_IP = "203.0.113.20"
LO, HI = 52000, 52009


class Ports:
    """The pool's opener and closer: which ports the 'server' has bound."""

    def __init__(self, refuse: set[int] | None = None) -> None:
        self.bound: set[int] = set()
        self.refuse = refuse or set()

    def open(self, port: int) -> bool:
        if port in self.refuse:
            return False
        self.bound.add(port)
        return True

    def close(self, port: int) -> None:
        self.bound.discard(port)


def _setup(
    config: RelayConfig | None = None, refuse: set[int] | None = None
) -> tuple[CoreNet, Client, Client, Ports]:
    net = CoreNet(config or RelayConfig(max_bandwidth_kbps=0))
    bound = Ports(refuse)
    net.relay.enable_port_mode(PortPool(LO, HI, bound.open, bound.close))
    a, b = net.client(), net.client()
    a.addr, b.addr = (A_IP, 40000), (B_IP, 40000)
    registered(net, a, b)
    return net, a, b, bound


def _session(net: CoreNet, a: Client, b: Client) -> tuple[bytes, int, int]:
    """A session from a to b: (session id, a's port, b's port)."""
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    (ea,) = [e for e in a.events if isinstance(e, SessionEstablished)]
    (eb,) = [e for e in b.events if isinstance(e, SessionEstablished)]
    assert ea.session_id == eb.session_id
    return ea.session_id, ea.port, eb.port


def _init(sender: Client, to: Client) -> bytes:
    """A handshake initiation from ``sender`` to ``to`` (mac1 keyed by ``to``)."""
    return encode_initiation(
        int.from_bytes(os.urandom(4), "little"),
        os.urandom(32),
        sender.pub.raw,
        tai64n(1.7e9),
        mac1_key(to.pub.raw),
    )


def _port(net: CoreNet, port: int, data: bytes, src: tuple[str, int]) -> tuple[int, object] | None:
    return net.relay.forward_port(port, data, src, net.clock.now)


def test_each_side_is_told_its_own_port_and_the_relay_announces_port_mode() -> None:
    net, a, b, bound = _setup()
    _sid, pa, pb = _session(net, a, b)
    assert LO <= pa <= HI
    assert LO <= pb <= HI
    assert pa != pb
    assert bound.bound == {pa, pb}
    assert net.relay.capabilities() & Capability.PORT_MODE


def test_a_session_latches_both_sides_then_forwards_unchanged_port_to_port() -> None:
    net, a, b, _ = _setup()
    sid, pa, pb = _session(net, a, b)
    wg_a, wg_b = (A_IP, 51820), (B_IP, 61000)  # WireGuard's own sockets' mappings
    first = _init(a, b)
    # A latches first; B has not: A's initiation is held for B, not lost
    assert _port(net, pa, first, wg_a) is None
    assert net.relay.stats.drops[DropReason.PORT_PEER_NOT_LATCHED] == 1
    resp = encode_response(1, 2, os.urandom(32), mac1_key(a.pub.raw))
    assert _port(net, pb, resp, wg_b) == (pa, wg_a)  # B latches; its packet goes on
    assert net.relay.port_output() == [(pb, first, wg_b)]  # and the held one reaches B
    data = encode_transport(7, 1, b"x" * 64)
    assert _port(net, pa, data, wg_a) == (pb, wg_b)
    assert _port(net, pb, data, wg_b) == (pa, wg_a)
    ports = net.relay.ports
    assert ports is not None
    assert [c.path_id for c in ports.changes] == [pa]  # the kernel may take it now
    pair = ports.by_sid[sid]
    assert pair.ready
    assert pair.a.latched == wg_a
    assert pair.b.latched == wg_b
    assert net.relay.get_stats().port_latches == 2


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("transport from an unlatched source", DropReason.PORT_NOT_LATCHED),
        ("handshake from another IP", DropReason.PORT_FOREIGN_ADDRESS),
        ("handshake with mac1 for another peer", DropReason.PORT_BAD_MAC1),
        ("handshake with mac1 for the sender itself", DropReason.PORT_BAD_MAC1),
        ("not WireGuard", DropReason.NOT_WIREGUARD),
        ("a truncated initiation", DropReason.PORT_NOT_LATCHED),
    ],
)
def test_nothing_but_a_verified_handshake_from_the_registered_ip_latches(
    what: str, reason: DropReason
) -> None:
    net, a, b, _ = _setup()
    stranger = net.client()
    _sid, pa, _pb = _session(net, a, b)
    packet, src = {
        "transport from an unlatched source": (encode_transport(1, 1, b""), (A_IP, 51820)),
        "handshake from another IP": (_init(a, b), ("192.0.2.66", 51820)),
        "handshake with mac1 for another peer": (_init(a, stranger), (A_IP, 51820)),
        "handshake with mac1 for the sender itself": (_init(b, a), (A_IP, 51820)),
        "not WireGuard": (b"\x05" + bytes(100), (A_IP, 51820)),
        "a truncated initiation": (_init(a, b)[:-1], (A_IP, 51820)),
    }[what]
    assert _port(net, pa, packet, src) is None
    assert net.relay.stats.drops[reason] == 1
    ports = net.relay.ports
    assert ports is not None
    assert ports.latches == 0


def test_a_replayed_handshake_does_not_move_the_latch() -> None:
    net, a, b, _ = _setup()
    sid, pa, pb = _session(net, a, b)
    hs = _init(a, b)
    _port(net, pa, hs, (A_IP, 51820))
    # someone else behind A's NAT replays it from another port
    assert _port(net, pa, hs, (A_IP, 9999)) is None
    assert net.relay.stats.drops[DropReason.REPLAYED] == 1
    ports = net.relay.ports
    assert ports is not None
    assert ports.by_sid[sid].a.latched == (A_IP, 51820)
    # a fresh handshake from a new mapping (NAT rebinding) re-latches
    _port(net, pb, _init(b, a), (B_IP, 61000))
    assert _port(net, pa, _init(a, b), (A_IP, 51999)) == (pb, (B_IP, 61000))
    assert ports.by_sid[sid].a.latched == (A_IP, 51999)
    assert _port(net, pa, encode_transport(1, 1, b""), (A_IP, 51820)) is None  # the old one


def test_port_mode_and_framed_mode_bridge_within_one_session() -> None:
    net, a, b, _ = _setup()
    sid, pa, _pb = _session(net, a, b)
    wg_a = (A_IP, 51820)
    # B stays framed (its NAT sends WireGuard from another IP, say): it sends framed
    frame = data_header(sid) + encode_transport(3, 1, b"y" * 32)
    assert net.relay.forward_data(frame, b.addr, 0.0) == a.addr  # A has not latched yet
    hs = _init(a, b)
    _port(net, pa, hs, wg_a)  # A latches; its handshake reaches B framed
    assert net.relay.port_output() == [(0, data_header(sid) + hs, b.addr)]
    # A latched: B's framed frames leave A's port without their header
    assert net.relay.forward_data(frame, b.addr, 0.0) is None
    assert net.relay.port_output() == [(pa, frame[DATA_HEADER_LEN:], wg_a)]
    # and A's port packets reach B framed, at B's registered address
    pkt = encode_transport(9, 2, b"z" * 32)
    assert _port(net, pa, pkt, wg_a) is None
    assert net.relay.port_output() == [(0, data_header(sid) + pkt, b.addr)]
    ports = net.relay.ports
    assert ports is not None
    assert ports.by_sid[sid].b.mode is SideMode.FRAMED
    assert not ports.changes


def test_a_side_that_goes_back_to_framed_takes_the_path_from_the_kernel() -> None:
    net, a, b, _ = _setup()
    sid, pa, _pb = _latched(net, a, b)
    ports = net.relay.ports
    assert ports is not None
    frame = data_header(sid) + encode_transport(3, 1, b"")
    assert net.relay.forward_data(frame, b.addr, 0.0) is None  # to A's port still
    assert ports.changes == [PathChange(pa, None)]


def test_closing_a_session_frees_its_ports_and_removes_its_path() -> None:
    net, a, b, bound = _setup()
    sid, pa, _pb = _latched(net, a, b)
    ports = net.relay.ports
    assert ports is not None
    a.link.close_session(b.pub, net.clock.now)
    net.run()
    assert bound.bound == set()
    assert ports.changes == [PathChange(pa, None)]
    assert len(ports.pool) == HI - LO + 1
    assert _port(net, pa, _init(a, b), (A_IP, 51820)) is None
    assert net.relay.stats.drops[DropReason.UNKNOWN_SESSION] >= 1
    assert sid not in ports.by_sid


def test_ports_taken_by_other_programs_are_skipped_and_an_empty_range_means_framed() -> None:
    net, a, b, _bound = _setup(refuse={LO, LO + 1})
    _sid, pa, pb = _session(net, a, b)
    assert {pa, pb} == {LO + 2, LO + 3}
    net2, c, d, _ = _setup(refuse=set(range(LO, HI + 1)))
    _sid2, pc, pd = _session(net2, c, d)
    assert (pc, pd) == (0, 0)  # no port: the session is framed only, and still works
    assert net2.relay.get_stats().sessions_active == 1


def test_the_bandwidth_cap_holds_on_ports() -> None:
    net, a, b, _ = _setup(RelayConfig(max_bandwidth_kbps=10, bandwidth_burst_s=0.25))
    _sid, pa, pb = _session(net, a, b)
    _port(net, pa, _init(a, b), (A_IP, 51820))
    _port(net, pb, _init(b, a), (B_IP, 61000))
    pkt = encode_transport(1, 1, b"p" * 1000)
    charged = 0
    for _ in range(4000):  # 40 s of 100 packets/s of ~1 kB, 10 kB/s allowed
        if _port(net, pa, pkt, (A_IP, 51820)) is not None:
            charged += len(pkt) + RelayConfig().packet_overhead_bytes
        net.clock.now += 0.01
    rate = charged / 40.0
    assert 10_000 * 0.9 <= rate <= 10_000 * 1.1  # the burst allowance included
    assert net.relay.stats.drops[DropReason.BANDWIDTH] > 0


def test_kernel_counters_keep_an_offloaded_session_from_idling_out() -> None:
    net, a, b, _ = _setup(RelayConfig(session_idle_timeout_s=5, max_bandwidth_kbps=0))
    sid, pa, pb = _session(net, a, b)
    _port(net, pa, _init(a, b), (A_IP, 51820))
    _port(net, pb, _init(b, a), (B_IP, 61000))
    for t in range(1, 10):
        net.relay.kernel_counts(pa, (t * 10, t * 1000, t * 5, t * 500, t))
        net.advance(1.0)
    assert sid in net.relay.sessions
    s = net.relay.sessions[sid]
    assert s.packets >= 9 * 15
    assert s.bytes >= 9 * 1500
    assert net.relay.stats.drops[DropReason.BANDWIDTH] == 9  # the kernel's limit
    net.advance(7.0)  # the counters stop moving: idle
    assert sid not in net.relay.sessions


def test_crossed_initiations_deliver_only_the_later_one() -> None:
    """Both agents restart WireGuard at once: each initiation alone gets
    answered; both delivered would cross and both fail (5 s retry)."""
    net, a, b, _ = _setup()
    _sid, pa, pb = _session(net, a, b)
    wg_a, wg_b = (A_IP, 51820), (B_IP, 61000)
    assert _port(net, pa, _init(a, b), wg_a) is None  # held for B
    init_b = _init(b, a)
    assert _port(net, pb, init_b, wg_b) == (pa, wg_a)  # B's goes to A
    assert net.relay.port_output() == []  # A's held one does not go to B
    ports = net.relay.ports
    assert ports is not None
    assert ports.crossed == 1


def _latched(net: CoreNet, a: Client, b: Client) -> tuple[bytes, int, int]:
    sid, pa, pb = _session(net, a, b)
    _port(net, pa, _init(a, b), (A_IP, 51820))
    _port(net, pb, _init(b, a), (B_IP, 61000))
    net.relay.port_output()
    ports = net.relay.ports
    assert ports is not None
    ports.changes.clear()
    return sid, pa, pb


def test_a_side_trying_direct_holds_its_port_and_the_kernel_gives_the_path_back() -> None:
    net, a, b, _ = _setup()
    _sid, pa, pb = _latched(net, a, b)
    ports = net.relay.ports
    assert ports is not None
    a.link.hold_session(b.pub, 4, net.clock.now)
    net.run()
    pkt = encode_transport(1, 1, b"h" * 32)
    assert _port(net, pb, pkt, (B_IP, 61000)) is None  # not to A while it holds
    assert net.relay.stats.drops[DropReason.PORT_HELD] == 1
    assert _port(net, pa, pkt, (A_IP, 51820)) == (pb, (B_IP, 61000))  # A's still go on
    assert ports.changes == [PathChange(pa, None)]
    ports.changes.clear()
    net.clock.now += 4.0  # the hold runs out by itself (a lost resume)
    assert _port(net, pb, pkt, (B_IP, 61000)) == (pa, (A_IP, 51820))
    assert [c.path_id for c in ports.changes] == [pa]  # back to the kernel
    a.link.hold_session(b.pub, 4, net.clock.now)
    net.run()
    a.link.hold_session(b.pub, 0, net.clock.now)  # resumed early
    net.run()
    assert _port(net, pb, pkt, (B_IP, 61000)) == (pa, (A_IP, 51820))


def test_a_nat_rebinding_is_noticed_and_told_to_its_side_at_once() -> None:
    net, a, b, _ = _setup()
    _latched(net, a, b)
    ports = net.relay.ports
    assert ports is not None
    pa = a.link.session_port[b.pub]
    pkt = encode_transport(1, 1, b"r" * 32)
    # A's NAT gave WireGuard's socket a new port: its packets do not latch...
    assert _port(net, pa, pkt, (A_IP, 40999)) is None
    assert _port(net, pa, pkt, (A_IP, 40999)) is None
    net.run()
    # ...but A's agent is told (once per NOTICE_INTERVAL_S), so it can have
    # WireGuard handshake at once instead of after 15 s of silence
    assert [e for e in a.events if isinstance(e, PortNotLatched)] == [PortNotLatched(b.pub)]
    assert not [e for e in b.events if isinstance(e, PortNotLatched)]
    # from another IP: nothing to tell (no rebinding of A's)
    _port(net, pa, pkt, ("192.0.2.9", 40999))
    net.clock.now += 5.0
    net.run()
    assert len([e for e in a.events if isinstance(e, PortNotLatched)]) == 1
    assert _port(net, pa, _init(a, b), (A_IP, 40999)) is not None  # the handshake re-latches


def test_a_hold_runs_out_for_framed_frames_too() -> None:
    """A in port mode holds, B is framed, A's resume is lost: B's frames reach
    A again once the hold's time is up."""
    net, a, b, _ = _setup()
    sid, pa, _pb = _session(net, a, b)
    _port(net, pa, _init(a, b), (A_IP, 51820))
    frame = data_header(sid) + encode_transport(3, 1, b"f" * 32)
    net.relay.forward_data(frame, b.addr, net.clock.now)  # B is framed
    net.relay.port_output()
    a.link.hold_session(b.pub, 4, net.clock.now)
    net.run()
    assert net.relay.forward_data(frame, b.addr, net.clock.now) is None
    assert net.relay.port_output() == []
    assert net.relay.stats.drops[DropReason.PORT_HELD] == 1
    net.clock.now += 4.0
    assert net.relay.forward_data(frame, b.addr, net.clock.now) is None
    assert net.relay.port_output() == [(pa, frame[DATA_HEADER_LEN:], (A_IP, 51820))]


def test_a_stray_framed_frame_does_not_leave_a_latched_side_framed() -> None:
    net, a, b, _ = _setup()
    sid, pa, pb = _latched(net, a, b)
    # a frame from A's proxy still in flight when A switched to its port
    net.relay.forward_data(data_header(sid) + encode_transport(1, 1, b""), a.addr, 0.0)
    net.relay.port_output()
    pkt = encode_transport(1, 2, b"s" * 32)
    assert _port(net, pa, pkt, (A_IP, 51820)) == (pb, (B_IP, 61000))  # A sends from its port
    # so traffic to A goes to its port again, not framed to its proxy
    assert _port(net, pb, pkt, (B_IP, 61000)) == (pa, (A_IP, 51820))
    ports = net.relay.ports
    assert ports is not None
    assert ports.by_sid[sid].ready


def test_port_zero_never_latches() -> None:
    net, a, b, _ = _setup()
    _sid, pa, _pb = _session(net, a, b)
    assert _port(net, pa, _init(a, b), (A_IP, 0)) is None
    assert net.relay.stats.drops[DropReason.PORT_FOREIGN_ADDRESS] == 1
