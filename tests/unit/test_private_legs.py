"""Private legs at each relay, on a fake clock (relay/private_legs.py): the
entry relay opens a leg without ever holding the target's key, the exit
relay offers it without ever holding the initiator's, the target's agent
opens the box and takes only its own peers; bad boxes are refused and
counted by reason."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.unit.test_federation import WALL0, Prober
from wgrelay.client.events import SessionEstablished, SessionFailed
from wgrelay.client.link_private import PrivateLink
from wgrelay.client.receipts import Observed, ReceiptSigner
from wgrelay.errors import InvalidKey
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import Capability, MsgType, Status
from wgrelay.proto.envelope import derive_server_keys, open_control, parse_control_header
from wgrelay.proto.federation import Gossip, LegAnswer
from wgrelay.proto.sealed import (
    ConnectionRequestSealed,
    LegOpenSealed,
    seal_for_peer,
    seal_request,
)
from wgrelay.relay.core import RelayCore
from wgrelay.relay.ledger import Ledger
from wgrelay.relay.metrics import make_registry
from wgrelay.testkit import Client, CoreNet, registered

_CAPS = Capability.UDP_RELAY | Capability.MULTI_HOP | Capability.PRIVATE_PATHS


def _private_client(net: CoreNet, accept: bool = True) -> Client:
    return net.client(accept, link_class=PrivateLink)


def _other_relay(net: CoreNet, announced: tuple[str, int] = ("192.0.2.66", 40000)) -> Prober:
    """A relay this one runs legs with, announcing private paths (at
    ``announced``: where this relay sends what it starts on its own channel)."""
    other = Prober(net.relay, ("192.0.2.66", 40000))
    info = RelayNodeInfo(other.ident.public, (announced,), capabilities=_CAPS)
    ann = encode_announcement(info, int(WALL0 * 1000), 600, other.ident)
    other.send(Gossip((ann,)), 0.0)
    config = replace(net.relay.config, leg_relays=frozenset({other.ident.public.raw}))
    net.relay.reconfigure(config=config)
    return other


def _everything(core: RelayCore) -> bytes:
    """All a relay holds about sessions, as bytes to search: tables, legs,
    private state, statistics, the metrics page."""
    from prometheus_client import generate_latest

    parts: list[bytes] = []
    t = core.table
    parts += list(t.regs)
    for s in [*t.sessions.values(), *t.pending.values()]:
        parts += [s.a_key, s.b_key, repr(s.waiters).encode()]
    parts += [a + b for a, b in t.by_pair]
    parts += [repr(leg).encode() for leg in core.legs.values()]
    parts += [p.token + p.box + repr(p.request).encode() for p in core.sealed.values()]
    parts.append(repr(core.get_stats()).encode())
    parts.append(generate_latest(make_registry(core.get_stats)))
    return b"|".join(parts)


def _leaks(blob: bytes, key: PublicKey) -> list[str]:
    forms = {"raw": key.raw, "base64": str(key).encode(), "hex": key.raw.hex().encode()}
    forms["short"] = key.short().encode()
    return [name for name, form in forms.items() if form in blob]


def test_exit_relay_offers_the_target_without_learning_the_initiator() -> None:
    net = CoreNet()
    b = _private_client(net)
    registered(net, b)
    r1 = _other_relay(net)
    a = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    box = seal_request(a, b.pub, net.ident.public, int(WALL0 * 1000))
    r1.send(LegOpenSealed(sid, box), 0.0)
    for data, dst in r1.to_others:
        if dst == b.addr:
            b.link.receive(data, 0.0)
    net.run()
    est = [e for e in b.events if isinstance(e, SessionEstablished)]
    assert [e.peer for e in est] == [a]  # B learned A from its box
    assert sid in net.relay.sessions
    assert net.relay.leg_stats()["private_open"] == 1
    assert _leaks(_everything(net.relay), a) == []
    assert net.relay.capabilities() & Capability.PRIVATE_PATHS


def test_the_target_declines_a_non_peer_and_the_exit_relay_says_so() -> None:
    net = CoreNet()
    b = _private_client(net, accept=False)  # A is not one of B's WireGuard peers
    registered(net, b)
    r1 = _other_relay(net)
    sid = os.urandom(8)
    box = seal_request(
        PrivateKey.generate().public_key(), b.pub, net.ident.public, int(WALL0 * 1000)
    )
    r1.send(LegOpenSealed(sid, box), 0.0)
    for data, dst in r1.to_others:
        if dst == b.addr:
            b.link.receive(data, 0.0)
    r1.to_others.clear()
    net.run()
    assert not [e for e in b.events if isinstance(e, SessionEstablished)]
    assert isinstance(b.link, PrivateLink)
    assert b.link.declined == {"not_peer": 1}
    assert sid not in net.relay.sessions
    assert sid not in net.relay.table.pending
    assert net.relay.sealed == {}
    assert net.relay.private_tokens() == frozenset()


def test_bad_boxes_are_refused_and_counted_by_reason() -> None:
    net = CoreNet()
    b = _private_client(net)
    registered(net, b)
    r1 = _other_relay(net)
    now_ms = int(WALL0 * 1000)
    good = seal_request(PrivateKey.generate().public_key(), b.pub, net.ident.public, now_ms)
    r1.send(LegOpenSealed(os.urandom(8), good), 0.0)
    # the same box under another session id: a copy
    r1.send(LegOpenSealed(os.urandom(8), good), 0.0)
    # a box for another relay, and garbage of the right size
    elsewhere = seal_request(b.pub, b.pub, RelayIdentity.generate().public, now_ms)
    r1.send(LegOpenSealed(os.urandom(8), elsewhere), 0.0)
    r1.send(LegOpenSealed(os.urandom(8), bytes(len(good))), 0.0)
    # sealed long ago
    old = seal_request(
        PrivateKey.generate().public_key(), b.pub, net.ident.public, now_ms - 600_000
    )
    r1.send(LegOpenSealed(os.urandom(8), old), 0.0)
    st = net.relay.leg_stats()
    assert st["refused_replayed"] == 1, st
    assert st["refused_undecryptable"] == 2, st
    assert st["refused_stale"] == 1, st
    assert len(net.relay.table.pending) == 1  # the first one only
    text = make_registry(net.relay.get_stats)
    from prometheus_client import generate_latest

    page = generate_latest(text).decode()
    assert 'wgrelay_legs_refused_total{reason="undecryptable"} 2.0' in page


def test_entry_relay_opens_a_sealed_leg_without_learning_the_target() -> None:
    net = CoreNet()
    a = _private_client(net)
    registered(net, a)
    r2 = _other_relay(net)
    b = PrivateKey.generate().public_key()
    a_link = a.link
    assert isinstance(a_link, PrivateLink)
    a_link.request_private(b, r2.ident.public, net.clock.now)
    net.run()
    # the leg opens towards r2: a LEG_OPEN_SEALED on the entry relay's channel
    keys = derive_server_keys(
        r2.ident.x25519_public, r2.ident.x25519_private, net.ident.x25519_public
    )
    opens = []
    for data, _dst in net.relay.datagrams_to_send() + net.replies:
        if data[0] == MsgType.LEG_OPEN_SEALED:
            opens.append(open_control(data, parse_control_header(data), keys)[1])
    assert len(opens) == 1
    leg_open = opens[0]
    assert isinstance(leg_open, LegOpenSealed)
    assert _leaks(_everything(net.relay), b) == []
    # a retransmission joins it; the same box under another request is a copy
    a_link.handle_timer(net.clock.now + 0.6)
    net.run()
    assert len(net.relay.table.pending) == 1
    sent = [
        r.body for r in a_link._requests.values() if isinstance(r.body, ConnectionRequestSealed)
    ]
    copy = replace(sent[0], request_id=sent[0].request_id + 1)
    a_link._send(copy, net.clock.now)
    net.run()
    assert net.relay.leg_stats()["refused_replayed"] == 1
    assert len(net.relay.table.pending) == 1
    # r2 answers: A's session comes up
    r2.send(LegAnswer(leg_open.session_id, Status.SUCCESS), 0.1)
    for data, dst in r2.to_others:
        if dst == a.addr:
            a.link.receive(data, 0.1)
    net.run()
    est = [e for e in a.events if isinstance(e, SessionEstablished)]
    assert [e.peer for e in est] == [b]
    assert leg_open.session_id in net.relay.sessions
    assert _leaks(_everything(net.relay), b) == []


def test_a_retransmitted_refusal_is_answered_again_not_counted_again() -> None:
    """The entry relay repeats LEG_OPEN_SEALED until it hears an answer: a
    refused one (here: the target is not registered) is refused again the
    same way, neither counted twice nor taken for a replay."""
    net = CoreNet()
    r1 = _other_relay(net, announced=("192.0.2.67", 40000))  # (its answers, kept apart)
    nobody = PrivateKey.generate().public_key()
    sid = os.urandom(8)
    box = seal_request(
        PrivateKey.generate().public_key(), nobody, net.ident.public, int(WALL0 * 1000)
    )
    for t in (0.0, 0.5, 1.0):
        r1.send(LegOpenSealed(sid, box), t)
    st = net.relay.leg_stats()
    assert st["refused_not_here"] == 1, st
    assert "refused_replayed" not in st, st
    answers = [d for d, dst in r1.to_others if d[0] == MsgType.LEG_ANSWER]
    assert len(answers) == 3  # each copy answered


def test_a_private_session_is_never_receipted() -> None:
    """Review finding: with credits on, the exit relay asked B for receipts
    of the private session and spread them (relay key, B's key, session id)
    with its gossip to every relay taking credits, the entry relay among
    them, which holds the same session id for A: the entry relay learned B,
    and A's receipts taught the exit relay A. Neither relay asks for one."""
    net = CoreNet()
    ledger = Ledger(None, allows=net.policy.allows)
    net.relay.enable_credits(ledger, None, 0.0)
    b = _private_client(net)
    seen = {"bytes": 0}

    def observed(_peer: PublicKey) -> Observed:
        return Observed(proxy_bytes=seen["bytes"], proxy_packets=seen["bytes"] // 100)

    b.link.receipts = ReceiptSigner(b.key, observed)
    registered(net, b)
    r1 = _other_relay(net)
    a, sid = PrivateKey.generate().public_key(), os.urandom(8)
    r1.send(LegOpenSealed(sid, seal_request(a, b.pub, net.ident.public, int(WALL0 * 1000))), 0.0)
    for data, dst in r1.to_others:
        if dst == b.addr:
            b.link.receive(data, 0.0)
    net.run()
    assert sid in net.relay.sessions
    b.link.receipts.session_started(net.ident.public, a, sid, net.clock.now)
    # well past what makes the relay ask (ASK_EVERY_BYTES), seen by B too
    net.relay.sessions[sid].bytes = seen["bytes"] = 9_000_000
    for _ in range(8):
        net.advance(1.0)
    b.link.close_session(a, net.clock.now)  # and the last count, asked at the close
    net.run()
    assert sid not in net.relay.sessions
    assert net.relay.credit_counters().get("requests_sent", 0) == 0
    assert b.link.receipts.signed == 0
    assert ledger.statement(b.pub.raw).used == 0


def test_the_link_never_sends_a_plain_request_for_a_covered_peer() -> None:
    """The fail-closed rule rested on every caller of request_session
    checking --private (a re-request after the planner's state moved on,
    a new path choice): the link now refuses a plain request for a covered
    peer itself, and says so with SessionFailed."""
    net = CoreNet()
    a = _private_client(net)
    registered(net, a)
    link = a.link
    assert isinstance(link, PrivateLink)
    covered, other = (PrivateKey.generate().public_key() for _ in range(2))
    link.covers = lambda p: p == covered
    link.request_session(covered, net.clock.now)
    link.request_session(covered, net.clock.now, via=RelayIdentity.generate().public)
    sent = link.datagrams_to_send()
    assert sent == []  # nothing named it to the relay
    net.run()
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert [(e.peer, e.status) for e in failed] == [(covered, Status.ERROR)] * 2
    assert covered not in link.wanted
    # a peer it does not cover is asked for as ever (here: not registered)
    link.request_session(other, net.clock.now)
    net.run()
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert (failed[-1].peer, failed[-1].status) == (other, Status.TARGET_UNREACHABLE)
    # and a private request for the covered peer is sealed, as ever
    link.request_private(covered, RelayIdentity.generate().public, net.clock.now)
    assert [d[0] for d in link.datagrams_to_send()] == [MsgType.CONNECTION_REQUEST_SEALED]


def test_a_late_retransmission_of_a_refused_request_hears_the_refusal_again() -> None:
    """The entry relay dropped a retransmission of a request it had answered
    (so as not to open a second leg with the same box): when its refusal was
    lost, the agent heard nothing more and waited out its request's timeout
    before trying another pair. A refused request is answered again, the
    same way, still without a second leg."""
    net = CoreNet()
    a = _private_client(net)
    registered(net, a)
    r2 = _other_relay(net)
    link = a.link
    assert isinstance(link, PrivateLink)
    b = PrivateKey.generate().public_key()
    link.request_private(b, r2.ident.public, net.clock.now)
    net.run()
    (sid,) = net.relay.sealed
    net.relay.datagrams_to_send()  # (the LEG_OPEN_SEALED)
    r2.send(LegAnswer(sid, Status.TARGET_UNREACHABLE), 0.1)  # its answer to A is lost
    assert [d for d, dst in r2.to_others if dst == a.addr]
    assert net.relay.sealed == {}
    link.handle_timer(net.clock.now + 5.0)  # A asks again, the same request
    net.run()
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert [(e.peer, e.status) for e in failed] == [(b, Status.TARGET_UNREACHABLE)]
    assert net.relay.sealed == {}  # no second leg
    assert not [d for d, _ in net.relay.datagrams_to_send() if d[0] == MsgType.LEG_OPEN_SEALED]


def test_a_peer_key_nothing_can_be_sealed_to_fails_the_request_not_the_agent() -> None:
    """A WireGuard peer with a low-order public key (the zero key, say: a
    bad configuration) under --private: sealing to it raised libsodium's
    RuntimeError out of the link, through the planner, into the agent's
    pump. The request fails instead, and nothing is sent."""
    net = CoreNet()
    a = _private_client(net)
    registered(net, a)
    link = a.link
    assert isinstance(link, PrivateLink)
    zero = PublicKey(bytes(32))
    link.request_private(zero, RelayIdentity.generate().public, net.clock.now)
    assert link.datagrams_to_send() == []
    net.run()
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert [(e.peer, e.status) for e in failed] == [(zero, Status.ERROR)]
    assert zero not in link.wanted
    with pytest.raises(InvalidKey):
        seal_for_peer(zero, a.pub, RelayIdentity.generate().public, 0)
