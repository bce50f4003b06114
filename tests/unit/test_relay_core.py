"""RelayCore and RelayLink as in-memory pairs under a fake clock (no sockets)."""

from __future__ import annotations

from wgrelay.client.events import LinkRegistered, SessionEstablished, SessionFailed
from wgrelay.keys import RelayIdentity
from wgrelay.proto.constants import MsgType, Status
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.testkit import WALL0, Allow, CoreNet, registered


def test_session_flow_in_memory() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    est = [e for e in a.events if isinstance(e, SessionEstablished)]
    assert len(est) == 1
    assert b.link.session_of[a.pub] == est[0].session_id
    assert net.relay.get_stats().sessions_active == 1


def test_under_load_unknown_senders_get_cookies_no_larger_than_their_message() -> None:
    net = CoreNet(RelayConfig(handshakes_before_cookies=1))
    a, b = net.client(), net.client()
    a.link.connect(0.0)
    net.run()  # the first one is free and counts as the one handshake
    b.link.connect(0.0)
    for d in b.link.datagrams_to_send():
        net.relay.receive(d, b.addr, 0.0)
        out = net.relay.datagrams_to_send()
        assert len(out) == 1
        assert out[0][0][0] == MsgType.COOKIE_REPLY
        assert len(out[0][0]) <= len(d)
        b.link.receive(out[0][0], 0.0)  # b repeats with the cookie
    net.run()
    assert any(isinstance(e, LinkRegistered) for e in b.events)
    assert net.relay.get_stats().cookies_accepted == 1


def test_cookie_for_another_address_gets_a_fresh_one() -> None:
    net = CoreNet(RelayConfig(handshakes_before_cookies=0))
    b = net.client()
    b.link.connect(0.0)
    net.run()  # cookie reply, repeat with cookie, registered
    assert any(isinstance(e, LinkRegistered) for e in b.events)
    # new key on the same link: force the cookie path again from a new address
    c = net.client()
    c.link._cookie = (b"\x00" * 16, 0.0)  # a stale cookie it believes in
    c.link.connect(0.0)
    net.run()
    assert any(isinstance(e, LinkRegistered) for e in c.events)
    assert net.relay.get_stats().drops["bad_cookie"] == 1


def test_replayed_register_after_expiry_is_rejected() -> None:
    net = CoreNet(RelayConfig(registration_ttl_s=10, heartbeat_interval_s=5))
    a = net.client()
    registered(net, a)
    register = a.sent[-1]  # the REGISTER that carried the cookie and bound a
    assert register[0] == MsgType.REGISTER
    net.clock.now = 11.0
    net.relay.handle_timer(11.0)  # a went quiet: its registration expires
    assert not net.relay.is_registered(a.pub)
    net.relay.receive(register, ("203.0.113.66", 1), 11.0)  # an attacker replays it
    assert not net.relay.is_registered(a.pub)
    assert net.relay.get_stats().drops["replayed"] == 1


def test_policy_change_answers_a_pending_requester() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    registered(net, a, b)
    b.link._accept_offer = lambda _p: True
    a.link.request_session(b.pub, 0.0)
    # deliver the request but hold the offer back: the session stays pending
    for d in a.link.datagrams_to_send():
        net.relay.receive(d, a.addr, 0.0)
    net.relay.datagrams_to_send()
    net.policy.denied.add(b.pub.raw)
    net.relay.policy_changed(0.0)
    for d, dst in net.relay.datagrams_to_send():
        if dst == a.addr:
            a.link.receive(d, 0.0)
    while (ev := a.link.next_event()) is not None:
        a.events.append(ev)
    failed = [e for e in a.events if isinstance(e, SessionFailed)]
    assert failed
    assert failed[0].status == Status.AUTH_FAILED


def test_announcement_is_signed_once_then_reused() -> None:
    ident = RelayIdentity.generate()
    core = RelayCore(
        ident,
        RelayConfig(),
        Allow(),
        now=0.0,
        wall=WALL0,
        announce_endpoints=(("203.0.113.10", 51821),),
    )
    first = core.announcement(0.0)
    assert core.announcement(30.0) is first  # no new signature for every query
    assert core.announcement(61.0) != first


def test_key_cache_is_least_recently_used() -> None:
    net = CoreNet(RelayConfig(key_cache_size=2))
    a, b, c = net.client(), net.client(), net.client()
    for cl in (a, b):
        cl.link.ping(0.0)
        net.run()
    a.link.ping(0.0)  # a used again: b is now the oldest
    net.run()
    c.link.ping(0.0)
    net.run()
    cache = net.relay._admission.key_cache
    assert a.pub.raw in cache
    assert c.pub.raw in cache
    assert b.pub.raw not in cache
