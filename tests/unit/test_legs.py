"""Multi-hop legs at the exit relay: only listed relays may open one, and a
key the policy stops allowing loses its multi-hop sessions (review findings:
a relay that introduced itself by gossip could name any initiator and take
over B's path; a revoked key's session through a leg lived on)."""

from __future__ import annotations

import os
from dataclasses import replace

from tests.unit.test_federation import WALL0, Prober, _announcement
from wgrelay.client.events import SessionEstablished
from wgrelay.keys import PrivateKey
from wgrelay.proto.constants import MsgType
from wgrelay.proto.federation import Gossip, LegOpen
from wgrelay.relay.stats import DropReason
from wgrelay.testkit import CoreNet, registered

FRAME = bytes(28)


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
