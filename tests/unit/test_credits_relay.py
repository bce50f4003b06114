"""Credits between a relay core and its peers' links (fake clock, no sockets):
requests, receipts signed for no more than observed, refusals counted."""

from __future__ import annotations

import pytest

from wgrelay.client.events import SessionEstablished
from wgrelay.client.receipts import CLOSED_KEEP_S, Observed, ReceiptSigner, tolerance
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import Capability, CloseReason
from wgrelay.proto.data import data_header
from wgrelay.proto.messages import SessionClose
from wgrelay.proto.receipts import Receipt, ReceiptBody, ReceiptRequest, make_claim
from wgrelay.relay.credits import ASK_INTERVAL_S
from wgrelay.relay.ledger import Ledger
from wgrelay.testkit import Client, CoreNet, registered

PACKET = bytes((4,)) + bytes(99)  # a 100-byte WireGuard transport message


class Counts:
    """What a peer's agent observed (its proxy's counters), set by the test."""

    def __init__(self) -> None:
        self.seen: dict[PublicKey, Observed] = {}

    def __call__(self, peer: PublicKey) -> Observed:
        return self.seen.get(peer, Observed())


def setup() -> tuple[CoreNet, Ledger, Client, Client, Counts, Counts, bytes, PrivateKey]:
    net = CoreNet()
    led = Ledger(None, allows=net.policy.allows)
    operator = PrivateKey.generate()
    net.relay.enable_credits(led, make_claim(operator, net.ident.public, 1), 0.0)
    a, b = net.client(), net.client()
    counts_a, counts_b = Counts(), Counts()
    a.link.receipts = ReceiptSigner(a.key, counts_a)
    b.link.receipts = ReceiptSigner(b.key, counts_b)
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    sid = next(e.session_id for e in a.events if isinstance(e, SessionEstablished))
    for c, other in ((a, b), (b, a)):
        assert c.link.receipts is not None
        c.link.receipts.session_started(net.ident.public, other.pub, sid, net.clock.now)
    return net, led, a, b, counts_a, counts_b, sid, operator


def wait(net: CoreNet, seconds: float) -> None:
    """Time passes a second at a time (heartbeats keep the peers registered)."""
    for _ in range(int(seconds)):
        net.advance(1.0)


def relay_frames(net: CoreNet, c: Client, sid: bytes, n: int) -> None:
    for _ in range(n):
        net.relay.receive(data_header(sid) + PACKET, c.addr, net.clock.now)
    net.relay.datagrams_to_send()  # (the frames went to the other side)


def test_relay_asks_both_sides_and_stores_what_they_signed() -> None:
    net, led, a, b, counts_a, counts_b, sid, operator = setup()
    assert net.relay.capabilities() & Capability.CREDITS
    relay_frames(net, a, sid, 50)  # 50 frames of 110 bytes, a -> b
    carried = net.relay.sessions[sid].bytes
    assert carried == 50 * 110
    # each side saw the WireGuard packets (100 bytes) go out / come in
    counts_a.seen[b.pub] = Observed(proxy_bytes=5000, proxy_packets=50)
    counts_b.seen[a.pub] = Observed(proxy_bytes=5000, proxy_packets=50)
    wait(net, ASK_INTERVAL_S + 1)
    # the 10-byte framing is within the tolerance: both sign the relay's count
    assert led.statement(a.pub.raw).used == carried
    assert led.statement(b.pub.raw).used == carried
    st = led.statement(operator.public_key().raw)
    assert (st.earned, st.relays[0].receipts) == (2 * carried, 2)
    assert net.relay.credit_counters()["receipts_taken"] == 2
    # contention orders members by this ledger's balances
    credits = net.relay.contention.credits
    assert credits.balance(operator.public_key().raw) == 2 * carried
    assert credits.balance(a.pub.raw) == -carried


def test_an_inflated_claim_is_signed_only_for_what_the_peer_saw() -> None:
    net, led, a, _b, counts_a, _cb, sid, _op = setup()
    relay_frames(net, a, sid, 10)
    net.relay.sessions[sid].bytes += 50_000_000  # the relay claims 50 MB it never carried
    counts_a.seen[next(iter(a.link.session_of))] = Observed(proxy_bytes=1000, proxy_packets=10)
    wait(net, ASK_INTERVAL_S + 1)
    used = led.statement(a.pub.raw).used
    assert used == 1000 + tolerance(1000, 10)
    assert a.link.receipts is not None
    assert a.link.receipts.trimmed == 1


def test_forged_and_replayed_receipts_from_a_peer_are_refused() -> None:
    net, led, a, b, counts_a, counts_b, sid, _op = setup()
    relay_frames(net, a, sid, 20)
    counts_a.seen[b.pub] = Observed(proxy_bytes=2000, proxy_packets=20)
    counts_b.seen[a.pub] = Observed(proxy_bytes=2000, proxy_packets=20)
    wait(net, ASK_INTERVAL_S + 1)
    good = led.statement(a.pub.raw).used
    now, ms = net.clock.now, int(net.clock.wall() * 1000)
    # forged: b sends a receipt in a's name; a's own, changed after signing
    fake = Receipt(net.ident.public, a.pub, sid, 1, 2200, ms).signed_by(a.key)
    b.link._send(ReceiptBody(fake), now)
    tampered = Receipt(net.ident.public, a.pub, sid, 1, 2100, ms, fake.signature)
    a.link._send(ReceiptBody(tampered), now)
    # replayed: a (freshly sealed) receipt for the request already answered;
    # one for a request never made; an exact copy (a duplicate, not news)
    older = Receipt(net.ident.public, a.pub, sid, 1, 2100, ms).signed_by(a.key)
    a.link._send(ReceiptBody(older), now)
    unasked = Receipt(net.ident.public, a.pub, sid, 9, 2100, ms).signed_by(a.key)
    a.link._send(ReceiptBody(unasked), now)
    # dated back (what a used would leave the window early): refused
    old = Receipt(net.ident.public, b.pub, sid, 1, 2200, ms - 86_400_000).signed_by(b.key)
    b.link._send(ReceiptBody(old), now)
    net.run()
    counters = net.relay.credit_counters()
    assert counters["refused_wrong_relay"] == 1
    assert counters["refused_bad_signature"] == 1
    assert counters["refused_replayed"] == 2
    assert counters["refused_misdated"] == 1
    assert led.statement(a.pub.raw).used == good
    # a request it answered is never answered again, nor for less
    relay_frames(net, a, sid, 10)
    counts_a.seen[b.pub] = Observed(proxy_bytes=3000, proxy_packets=30)
    wait(net, ASK_INTERVAL_S + 1)
    assert led.statement(a.pub.raw).used > good


def test_the_close_asks_once_more_and_the_signer_froze_the_count() -> None:
    net, led, a, b, counts_a, counts_b, sid, _op = setup()
    relay_frames(net, b, sid, 30)
    counts_a.seen[b.pub] = Observed(proxy_bytes=3000, proxy_packets=30)
    counts_b.seen[a.pub] = Observed(proxy_bytes=3000, proxy_packets=30)
    a.link.close_session(b.pub, net.clock.now, CloseReason.NORMAL)
    net.run()
    assert sid not in net.relay.sessions
    # both sides answered the last request (a closed it, b heard of the close after)
    assert led.statement(a.pub.raw).used == 30 * 110
    assert led.statement(b.pub.raw).used == 30 * 110
    assert b.link.receipts is not None
    b.link.receipts.session_ended(net.ident.public, a.pub, net.clock.now)
    counts_b.seen[a.pub] = Observed(proxy_bytes=10**9, proxy_packets=30)  # later traffic
    assert b.link.receipts.observed(net.ident.public, sid) == (3000, 30)


def test_a_credit_query_reports_the_statement() -> None:
    from wgrelay.client.events import CreditReported

    net, _led, a, b, counts_a, counts_b, sid, operator = setup()
    relay_frames(net, a, sid, 10)
    counts_a.seen[b.pub] = Observed(proxy_bytes=1000, proxy_packets=10)
    counts_b.seen[a.pub] = Observed(proxy_bytes=1000, proxy_packets=10)
    wait(net, ASK_INTERVAL_S + 1)
    qid = a.link.credit_query(operator.public_key(), net.clock.now)
    net.run()
    rep = next(e.report for e in a.events if isinstance(e, CreditReported))
    assert rep.query_id == qid
    assert (rep.earned, rep.used, rep.balance) == (2200, 0, 2200)
    assert rep.relays[0].relay == net.ident.public
    assert rep.relays[0].receipts == 2


def test_metrics_show_credit_events_and_refusals() -> None:
    from prometheus_client import generate_latest

    from wgrelay.relay.metrics import make_registry

    net, _led, a, b, counts_a, _counts_b, sid, _op = setup()
    relay_frames(net, a, sid, 10)
    counts_a.seen[b.pub] = Observed(proxy_bytes=1000, proxy_packets=10)
    wait(net, ASK_INTERVAL_S + 1)
    ms = int(net.clock.wall() * 1000)
    stale = Receipt(net.ident.public, a.pub, sid, 9, 1, ms).signed_by(a.key)
    a.link._send(ReceiptBody(stale), net.clock.now)
    net.run()
    text = generate_latest(make_registry(net.relay.get_stats)).decode()
    assert 'wgrelay_credits_events_total{event="receipts_taken"} 2.0' in text
    # (counted since the claims were built, never shown before)
    assert 'wgrelay_credits_events_total{event="claims_sent"} 0.0' in text
    assert 'wgrelay_credits_refused_total{reason="replayed"} 1.0' in text
    assert "wgrelay_credits_receipts 2.0" in text


def test_a_session_we_left_stops_counting_whoever_asks_later() -> None:
    """a closes the session itself (it went direct, or moved to another
    relay): no event tells the daemon (the planner forgets the route first),
    so the session's meter kept following a's WireGuard counters, which go on
    counting the peer's traffic on the new path, and a relay asking later
    (a new request number, any claim) got it signed as its own."""
    net, led, a, b, counts_a, _counts_b, sid, _op = setup()
    relay_frames(net, a, sid, 10)
    counts_a.seen[b.pub] = Observed(proxy_bytes=1000, proxy_packets=10, wireguard_bytes=1000)
    a.link.close_session(b.pub, net.clock.now, CloseReason.NORMAL)
    net.run()
    assert led.statement(a.pub.raw).used == 10 * 110  # the close's request, answered
    # direct now: WireGuard counts on, nothing passes the relay
    counts_a.seen[b.pub] = Observed(proxy_bytes=1000, proxy_packets=10, wireguard_bytes=10**9)
    signer = a.link.receipts
    assert signer is not None
    late = signer.answer(net.ident.public, ReceiptRequest(sid, 99, 10**12), 0)
    assert late is not None
    assert late.nbytes == 1000 + tolerance(1000, 10)
    # and once CLOSED_KEEP_S has passed, nothing is signed for it
    signer.expire(net.clock.now + CLOSED_KEEP_S)
    assert signer.answer(net.ident.public, ReceiptRequest(sid, 100, 10**12), 0) is None


def test_the_link_lost_or_the_relay_closing_freezes_the_count() -> None:
    net, _led, a, b, counts_a, counts_b, sid, _op = setup()
    counts_b.seen[a.pub] = Observed(wireguard_bytes=500)
    b.link._on_session_close(SessionClose(sid, CloseReason.IDLE), net.clock.now)
    counts_a.seen[b.pub] = Observed(wireguard_bytes=700)
    a.link._lose(net.clock.now, "test")
    counts_a.seen[b.pub] = counts_b.seen[a.pub] = Observed(wireguard_bytes=10**9)
    assert b.link.receipts is not None
    assert a.link.receipts is not None
    assert b.link.receipts.observed(net.ident.public, sid) == (500, 0)
    assert a.link.receipts.observed(net.ident.public, sid) == (700, 0)


def test_a_reused_session_id_gets_a_new_meter() -> None:
    net, _led, a, b, counts_a, _counts_b, sid, _op = setup()
    other = PrivateKey.generate().public_key()
    counts_a.seen[b.pub] = Observed(wireguard_bytes=10**6)
    assert a.link.receipts is not None
    a.link.receipts.session_started(net.ident.public, other, sid, net.clock.now)
    counts_a.seen[other] = Observed(wireguard_bytes=10)
    assert a.link.receipts.observed(net.ident.public, sid) == (10, 0)


def test_private_sessions_are_never_signed_nor_stored_from_gossip() -> None:
    """The relays do not ask for receipts of a private session, but an agent
    signed whatever a relay asked, and a relay stored whatever the gossip
    brought: a relay that asks anyway (B's exit relay, here) had B sign
    (relay, B, session id) and spread it to the entry relay, which holds
    that id for A. B refuses now, and a relay refuses a receipt naming a
    session it carries privately."""
    from tests.unit.test_federation import WALL0
    from tests.unit.test_private_legs import _other_relay, _private_client
    from wgrelay.client.link_private import PrivateLink
    from wgrelay.proto.receipts import Receipts
    from wgrelay.proto.sealed import LegOpenSealed, seal_request

    net = CoreNet()
    led = Ledger(None, allows=net.policy.allows)
    net.relay.enable_credits(led, None, 0.0)
    b = _private_client(net)
    counts = Counts()
    b.link.receipts = ReceiptSigner(b.key, counts)
    registered(net, b)
    r1 = _other_relay(net)
    a, sid = PrivateKey.generate(), bytes(range(8))
    box = seal_request(a.public_key(), b.pub, net.ident.public, int(WALL0 * 1000))
    r1.send(LegOpenSealed(sid, box), 0.0)
    for data, dst in r1.to_others:
        if dst == b.addr:
            b.link.receive(data, 0.0)
    net.run()
    assert sid in net.relay.sessions
    b.link.receipts.session_started(net.ident.public, a.public_key(), sid, net.clock.now)
    counts.seen[a.public_key()] = Observed(proxy_bytes=5000, proxy_packets=50)
    # the exit relay asks anyway (B only sees a sealed message from it)
    b.link._on_receipt_request(ReceiptRequest(sid, 1, 5000), net.clock.now)
    assert b.link.receipts.signed == 0
    assert b.link.receipts.refused["private"] == 1
    # A's side: a session asked for privately at its entry relay
    a_link = _private_client(net).link
    assert isinstance(a_link, PrivateLink)
    a_link.receipts = ReceiptSigner(a, counts)
    a_link.private_exit[b.pub] = r1.ident.public
    a_link._bind(b.pub, b"A" * 8, incoming=False, port=0)
    a_link.receipts.session_started(net.ident.public, b.pub, b"A" * 8, net.clock.now)
    a_link._on_receipt_request(ReceiptRequest(b"A" * 8, 1, 5000), net.clock.now)
    assert a_link.receipts.signed == 0
    # a receipt of the private session from the gossip (a relay naming
    # itself, signed by a): the entry relay would learn whom it names
    ms = int(net.clock.wall() * 1000)
    leaked = Receipt(r1.ident.public, a.public_key(), sid, 1, 5000, ms).signed_by(a)
    r1.send(Receipts((leaked,)), 0.5)
    assert led.receipts_count() == 0
    assert led.refused["private"] == 1


def test_an_operator_claim_dated_ahead_is_taken_once_the_clock_gets_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A claim signed on a machine whose clock is ahead is refused as from
    the future (so no one can date a claim past the relay's next owner's):
    the relay says so, and takes it at a resend once its clock gets there."""
    from wgrelay.relay.credits import CLAIM_RESEND_S

    net = CoreNet()
    led = Ledger(None, allows=net.policy.allows)
    operator = PrivateKey.generate()
    ahead_ms = int((net.clock.wall() + 1200) * 1000)
    with caplog.at_level("WARNING"):
        net.relay.enable_credits(led, make_claim(operator, net.ident.public, ahead_ms), 0.0)
    assert "operator claim not taken here: future" in caplog.text
    assert led.operator_of(net.ident.public) is None
    net.advance(1.0)
    net.advance(CLAIM_RESEND_S + 1)
    net.advance(CLAIM_RESEND_S + 1)
    assert led.operator_of(net.ident.public) == operator.public_key()
