"""Multi-hop legs at the exit relay: only listed relays may open one, and a
key the policy stops allowing loses its multi-hop sessions (review findings:
a relay that introduced itself by gossip could name any initiator and take
over B's path; a revoked key's session through a leg lived on)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import cast

from tests.unit.test_federation import WALL0, Prober, _announcement
from tests.unit.test_relay_ports import HI, LO, Ports
from wgrelay.client.events import PunchTold, SessionEstablished
from wgrelay.keys import PrivateKey
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.body import Body
from wgrelay.proto.constants import DATA_HEADER_LEN, Capability, MsgType, Status
from wgrelay.proto.cookie import decode_cookie_reply
from wgrelay.proto.federation import Gossip, LegAnswer, LegOpen
from wgrelay.proto.wgmac import mac1_key
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.ports import PortPool, SideMode
from wgrelay.relay.stats import DropReason
from wgrelay.sim.wgwire import encode_initiation, tai64n
from wgrelay.testkit import CoreNet, registered

FRAME = bytes(28)
_LEG_CAPS = Capability.UDP_RELAY | Capability.MULTI_HOP


def _introduced(net: CoreNet, *, listed: bool) -> Prober:
    """Another relay that introduces itself by gossip; ``listed``: the
    operator runs legs with it (``--leg-relay``)."""
    other = Prober(net.relay, ("192.0.2.66", 40000))
    other.send(Gossip((_announcement(other.ident, int(WALL0 * 1000)),)), 0.0)
    assert net.relay.federation.directory.by_x25519(other.ident.x25519_public) is not None
    if listed:
        config = replace(net.relay.config, leg_relays=frozenset({other.ident.public.raw}))
        net.relay.reconfigure(config=config)
    return other


def _deliver_offers(net: CoreNet, other: Prober) -> None:
    for c in net.clients:
        for data, dst in other.to_others:
            if dst == c.addr:
                c.link.receive(data, net.clock.now)
    other.to_others.clear()
    net.run()


def test_a_relay_not_listed_cannot_open_a_leg() -> None:
    net = CoreNet()
    b = net.client()
    registered(net, b)
    stranger = _introduced(net, listed=False)
    a_key = PrivateKey.generate().public_key()  # B's real partner, never involved
    sid = os.urandom(8)
    drops = net.relay.stats.drops[DropReason.NOT_ALLOWED]
    stranger.send(LegOpen(sid, a_key, b.pub, 2), 0.0)
    assert not [d for d, dst in stranger.to_others if dst == b.addr]  # no offer to B
    assert sid not in net.relay.sessions
    assert sid not in net.relay.table.pending
    assert net.relay.stats.drops[DropReason.NOT_ALLOWED] == drops + 1
    assert net.relay.leg_stats()["refused_not_trusted"] == 1


def test_a_listed_relay_opens_a_leg_and_a_revoked_key_loses_it() -> None:
    net = CoreNet()
    b = net.client()
    registered(net, b)
    r1 = _introduced(net, listed=True)
    a_key = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    r1.send(LegOpen(sid, a_key, b.pub, 2), 0.0)
    _deliver_offers(net, r1)
    est = [e for e in b.events if isinstance(e, SessionEstablished)]
    assert est, b.events
    assert est[0].peer == a_key
    assert sid in net.relay.sessions
    frame = bytes((MsgType.DATA, 1)) + sid + b"\x04\x00\x00\x00" + FRAME
    assert net.relay.forward_data(frame, r1.at, 0.1) == b.addr  # the leg carries

    net.policy.denied.add(a_key.raw)  # the operator revokes A
    net.relay.policy_changed(0.2)
    assert sid not in net.relay.sessions
    assert net.relay.forward_data(frame, r1.at, 0.3) is None


def test_a_leg_runs_port_to_port_pinned_to_the_other_relays_port() -> None:
    """LEG_OPEN names the entry relay's session port for the leg: the exit
    relay pins its leg side there (port mode without a handshake), nothing
    from another address moves it, and a framed frame from B leaves the leg
    side's port for the entry relay's, raw."""
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    bound = Ports()
    net.relay.enable_port_mode(PortPool(LO, HI, bound.open, bound.close))
    b = net.client()
    registered(net, b)
    r1 = _introduced(net, listed=True)
    a_key = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    r1.send(LegOpen(sid, a_key, b.pub, 2, port=51000), 0.0)
    _deliver_offers(net, r1)
    pair = net.relay.sessions[sid].ports
    assert pair is not None
    assert pair.a.pinned
    assert pair.a.mode is SideMode.PORT
    assert pair.a.latched == (r1.at[0], 51000)
    assert pair.leg

    packet = b"\x04\x00\x00\x00" + FRAME
    foreign = net.relay.stats.drops[DropReason.PORT_FOREIGN_ADDRESS]
    assert net.relay.forward_port(pair.a.port, packet, ("198.51.100.9", 51000), 0.1) is None
    assert net.relay.forward_port(pair.a.port, packet, (r1.at[0], 51001), 0.1) is None
    assert net.relay.stats.drops[DropReason.PORT_FOREIGN_ADDRESS] == foreign + 2
    assert pair.a.latched == (r1.at[0], 51000)

    frame = bytes((MsgType.DATA, 0)) + sid + packet
    assert net.relay.forward_data(frame, b.addr, 0.2) is None  # taken by the port path
    ((from_port, data, to),) = net.relay.port_output()
    assert (from_port, bytes(data), to) == (pair.a.port, packet, (r1.at[0], 51000))
    # and the leg's packets from the entry relay's port go on towards B
    assert net.relay.forward_port(pair.a.port, packet, (r1.at[0], 51000), 0.3) is None
    ((from_port, data, to),) = net.relay.port_output()
    assert (from_port, bytes(data)[DATA_HEADER_LEN:], to) == (0, packet, b.addr)  # B is framed


def test_a_leg_without_a_port_stays_framed() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    bound = Ports()
    net.relay.enable_port_mode(PortPool(LO, HI, bound.open, bound.close))
    b = net.client()
    registered(net, b)
    r1 = _introduced(net, listed=True)
    sid = os.urandom(8)
    r1.send(LegOpen(sid, PrivateKey.generate().public_key(), b.pub, 2), 0.0)
    _deliver_offers(net, r1)
    pair = net.relay.sessions[sid].ports
    assert pair is not None
    assert not pair.a.pinned
    assert pair.a.mode is SideMode.FRAMED
    frame = bytes((MsgType.DATA, 1)) + sid + b"\x04\x00\x00\x00" + FRAME
    assert net.relay.forward_data(frame, r1.at, 0.1) == b.addr


class _V6Prober(Prober):
    """A relay reached over IPv6: the core sees its datagrams from a
    four-field source (host, port, flowinfo, scope id), as recvfrom gives."""

    def send(self, body: Body, now: float) -> None:
        wall = WALL0 + now
        pending = [self.channel.seal(body, now, wall)]
        while pending:
            self.core.receive(pending.pop(), self.at, now)
            for data, dst in self.core.datagrams_to_send():
                if tuple(dst[:2]) == self.at[:2] and data[0] == MsgType.COOKIE_REPLY:
                    again = self.channel.on_cookie(decode_cookie_reply(data), now, wall)
                    if again is not None:
                        pending.append(again)
                elif tuple(dst[:2]) != self.at[:2]:
                    self.to_others.append((data, (str(dst[0]), int(dst[1]))))


def _v6_relay(net: CoreNet) -> Prober:
    # (Prober's address type is a plain (host, port))
    other = _V6Prober(net.relay, cast("tuple[str, int]", ("2001:db8::66", 40000, 0, 0)))
    info = RelayNodeInfo(other.ident.public, (("2001:db8::66", 40000),), capabilities=_LEG_CAPS)
    other.send(Gossip((encode_announcement(info, int(WALL0 * 1000), 600, other.ident),)), 0.0)
    config = replace(net.relay.config, leg_relays=frozenset({other.ident.public.raw}))
    net.relay.reconfigure(config=config)
    return other


def _port_mode(net: CoreNet) -> None:
    bound = Ports()
    net.relay.enable_port_mode(PortPool(LO, HI, bound.open, bound.close))


def test_an_ipv6_leg_is_pinned_in_the_form_its_packets_come_from() -> None:
    """Review finding: the leg side was pinned to (host, port) while an IPv6
    socket's packets come from (host, port, flowinfo, scope id): every packet
    of an IPv6 leg was refused as from a foreign address (both relays), and
    the pair's two sides looked like two address families to the offload."""
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    _port_mode(net)
    b = net.client()
    registered(net, b)
    r1 = _v6_relay(net)
    sid = os.urandom(8)
    r1.send(LegOpen(sid, PrivateKey.generate().public_key(), b.pub, 2, port=51000), 0.0)
    _deliver_offers(net, r1)
    pair = net.relay.sessions[sid].ports
    assert pair is not None
    assert pair.a.latched == ("2001:db8::66", 51000, 0, 0)
    packet = b"\x04\x00\x00\x00" + FRAME
    # B's packets leave the leg's port for an IPv6 destination (the server
    # picks the socket by the address's length)
    assert net.relay.forward_data(bytes((MsgType.DATA, 0)) + sid + packet, b.addr, 0.1) is None
    ((from_port, data, to),) = net.relay.port_output()
    assert (from_port, bytes(data), to) == (pair.a.port, packet, pair.a.latched)
    # and the entry relay's packets from that port are taken
    foreign = net.relay.stats.drops[DropReason.PORT_FOREIGN_ADDRESS]
    net.relay.forward_port(pair.a.port, packet, ("2001:db8::66", 51000, 0, 0), 0.2)
    assert net.relay.stats.drops[DropReason.PORT_FOREIGN_ADDRESS] == foreign
    ((from_port, data, to),) = net.relay.port_output()
    assert (from_port, bytes(data)[DATA_HEADER_LEN:], to) == (0, packet, b.addr)


def test_the_entry_relay_pins_an_ipv6_leg_in_the_same_form() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    _port_mode(net)
    a = net.client()
    registered(net, a)
    r2 = _v6_relay(net)
    target = PrivateKey.generate().public_key()
    a.link.request_session(target, net.clock.now, via=r2.ident.public)
    net.run()
    (sid,) = net.relay.legs
    r2.send(LegAnswer(sid, Status.SUCCESS, 52000), 0.1)
    pair = net.relay.sessions[sid].ports
    assert pair is not None
    assert pair.b.pinned
    assert pair.b.latched == ("2001:db8::66", 52000, 0, 0)


def test_no_punch_across_a_leg() -> None:
    """The leg's side is latched to the other relay's port, not to a peer's
    NAT mapping: B must never hear it as a direct candidate, neither when
    its own side latches (PUNCH without GO) nor when it asks for a try."""
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    _port_mode(net)
    b = net.client()
    registered(net, b)
    r1 = _introduced(net, listed=True)
    a_key = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    r1.send(LegOpen(sid, a_key, b.pub, 2, port=51000), 0.0)
    _deliver_offers(net, r1)
    pair = net.relay.sessions[sid].ports
    assert pair is not None
    # B's WireGuard latches its port: both sides are latched now
    init = encode_initiation(1, os.urandom(32), b.pub.raw, tai64n(1.7e9), mac1_key(a_key.raw))
    net.relay.forward_port(pair.b.port, init, (b.addr[0], 61000), net.clock.now)
    assert pair.b.latched == (b.addr[0], 61000)
    assert pair.a.latched is not None
    net.relay.port_notices(net.clock.now)
    net.run()
    assert b.link.punch(a_key, 7, net.clock.now)
    net.run()
    assert not [e for e in b.events if isinstance(e, PunchTold)]
    assert net.relay.stats.drops[DropReason.PUNCH_NOT_READY] == 1
    assert not [d for d, _ in r1.to_others if d[0] == MsgType.PUNCH]
