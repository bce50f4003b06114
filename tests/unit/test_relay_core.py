"""RelayCore and RelayLink as in-memory pairs under a fake clock (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wgrelay.client.events import LinkEvent, LinkRegistered, SessionEstablished, SessionFailed
from wgrelay.client.link import LinkConfig, RelayLink
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.constants import MsgType, Status
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore

WALL0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        return WALL0 + self.now


class Allow:
    description = "test"

    def __init__(self) -> None:
        self.denied: set[bytes] = set()

    def allows(self, key: bytes) -> bool:
        return key not in self.denied

    def refresh(self) -> None:
        return None


@dataclass
class Client:
    key: PrivateKey
    link: RelayLink
    addr: tuple[str, int]
    events: list[LinkEvent] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)

    @property
    def pub(self) -> PublicKey:
        return self.key.public_key()


class Net:
    """One relay core and any number of links, datagrams moved by hand."""

    def __init__(self, config: RelayConfig | None = None) -> None:
        self.clock = Clock()
        self.ident = RelayIdentity.generate()
        self.policy = Allow()
        self.relay = RelayCore(
            self.ident, config or RelayConfig(), self.policy, now=0.0, wall=WALL0
        )
        self.clients: list[Client] = []
        self.to_relay: list[tuple[bytes, tuple[str, int]]] = []
        self.replies: list[tuple[bytes, tuple[object, ...]]] = []

    def client(self, accept: bool = True) -> Client:
        key = PrivateKey.generate()
        link = RelayLink(
            key,
            self.ident.public,
            LinkConfig(),
            now=self.clock.now,
            wall=self.clock.wall(),
            accept_offer=lambda _p: accept,
        )
        c = Client(key, link, ("198.51.100.1", 40000 + len(self.clients)))
        self.clients.append(c)
        return c

    def run(self, rounds: int = 10) -> None:
        now = self.clock.now
        for _ in range(rounds):
            moved = False
            for c in self.clients:
                for d in c.link.datagrams_to_send():
                    c.sent.append(d)
                    self.to_relay.append((d, c.addr))
            for d, addr in self.to_relay:
                moved = True
                self.relay.receive(d, addr, now)
            self.to_relay.clear()
            for d, dst in self.relay.datagrams_to_send():
                self.replies.append((d, dst))
                for c in self.clients:
                    if c.addr == dst:
                        moved = True
                        c.link.receive(d, now)
            for c in self.clients:
                while (ev := c.link.next_event()) is not None:
                    c.events.append(ev)
            if not moved:
                return

    def advance(self, dt: float) -> None:
        self.clock.now += dt
        self.relay.handle_timer(self.clock.now)
        for c in self.clients:
            c.link.handle_timer(self.clock.now)
        self.run()


def registered(net: Net, *clients: Client) -> None:
    for c in clients:
        c.link.connect(net.clock.now)
    net.run()
    for c in clients:
        assert any(isinstance(e, LinkRegistered) for e in c.events)


def test_session_flow_in_memory() -> None:
    net = Net()
    a, b = net.client(), net.client()
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    est = [e for e in a.events if isinstance(e, SessionEstablished)]
    assert len(est) == 1
    assert b.link.session_of[a.pub] == est[0].session_id
    assert net.relay.get_stats().sessions_active == 1


def test_under_load_unknown_senders_get_cookies_no_larger_than_their_message() -> None:
    net = Net(RelayConfig(handshakes_before_cookies=1))
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
    net = Net(RelayConfig(handshakes_before_cookies=0))
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
    net = Net(RelayConfig(registration_ttl_s=10, heartbeat_interval_s=5))
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
    net = Net()
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
    net = Net(RelayConfig(key_cache_size=2))
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
