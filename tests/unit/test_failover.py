"""Failover rules on a fake clock: carrier probes, standby registrations.

* a link that carried traffic and falls silent probes its relay densely and
  declares it lost after ``carrier_lost_after_s``, not ``lost_after_s``;
* a registration's REGISTER flags say how the relay lists it: home, standby
  (offered second by lookups) or unlisted (no record);
* the planner keeps the next-best relay registered as its standby and makes
  it home, with one REGISTER, when the home dies.
"""

from __future__ import annotations

from tests.unit.test_plan import World
from wgrelay.client.events import DiscoveryAnswered, HomeChanged, LinkLost, SessionEstablished
from wgrelay.client.link import LinkState, Role
from wgrelay.proto.constants import MsgType
from wgrelay.testkit import Client, CoreNet, registered


def _relayed_pair(net: CoreNet) -> tuple[Client, Client]:
    a, b = net.client(), net.client()
    registered(net, a, b)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    assert any(isinstance(e, SessionEstablished) for e in a.events)
    return a, b


def _silent_advance(
    net: CoreNet, link_owner: Client, until: float, step: float = 0.05
) -> list[bytes]:
    """Time passes with the relay dead: what the link sends goes nowhere."""
    sent: list[bytes] = []
    while net.clock.now < until - 1e-9:
        net.clock.now = round(net.clock.now + step, 6)
        link_owner.link.handle_timer(net.clock.now)
        sent += link_owner.link.datagrams_to_send()
        while (ev := link_owner.link.next_event()) is not None:
            link_owner.events.append(ev)
        if link_owner.link.state == LinkState.LOST:
            break
    return sent


def _pings(datagrams: list[bytes]) -> int:
    # a control envelope's type byte is in the clear (docs/PROTOCOL.md)
    return sum(1 for d in datagrams if d[:1] == bytes((MsgType.PING,)))


def test_a_silent_carrying_relay_is_lost_in_two_seconds_not_nine() -> None:
    net = CoreNet()
    a, _ = _relayed_pair(net)
    net.clock.now += 0.01
    a.link.note_sent(net.clock.now)  # we sent our peer traffic through it
    start = net.clock.now
    sent = _silent_advance(net, a, start + 9.0)
    assert a.link.state == LinkState.LOST
    lost_at = net.clock.now - start
    assert 1.95 <= lost_at <= 2.05, lost_at  # 2 s after the first unanswered send
    assert any(isinstance(e, LinkLost) for e in a.events)
    # probes from 0.5 s of silence, every 0.25 s: at least the 6 required
    assert _pings(sent) >= a.link.config.carrier_probes


def test_probes_answered_keep_a_quiet_carrying_link() -> None:
    net = CoreNet()
    a, _ = _relayed_pair(net)
    net.clock.now += 0.01
    a.link.note_sent(net.clock.now)
    for _ in range(100):  # 5 s, the relay answering
        net.advance(0.05)
    assert a.link.state == LinkState.REGISTERED
    assert not any(isinstance(e, LinkLost) for e in a.events)


def test_an_idle_link_is_not_probed_and_keeps_the_slow_rule() -> None:
    net = CoreNet()
    a, _ = _relayed_pair(net)  # a session, but no data ever sent through it
    start = net.clock.now
    sent = _silent_advance(net, a, start + 4.0)
    assert a.link.state == LinkState.REGISTERED
    assert _pings(sent) == 0


def test_traffic_answered_in_time_costs_no_probe() -> None:
    net = CoreNet()
    a, _ = _relayed_pair(net)
    before = a.link.counters.sent
    for _ in range(20):  # a ping a second through the tunnel, answered at once
        a.link.note_sent(net.clock.now)
        net.advance(0.1)
        a.link.data_heard = net.clock.now
        net.advance(0.9)
    # 20 s: the heartbeats (every 5 s by default), no carrier probe
    assert a.link.counters.sent - before <= 4


def test_a_registration_is_listed_by_its_role() -> None:
    net = CoreNet()
    a = net.client()
    a.link.role = Role.STANDBY
    registered(net, a)
    book = net.relay.federation.locations
    assert book.is_listed(a.pub)
    assert not book.is_home_of(a.pub)  # a standby record, lookups offer it second
    a.link.set_role(Role.HOME, net.clock.now)  # promoted: one REGISTER
    net.run()
    assert book.is_home_of(a.pub)
    a.link.set_role(Role.UNLISTED, net.clock.now)  # only here to reach someone
    net.run()
    assert not book.is_listed(a.pub)


def test_a_peer_registered_as_standby_is_located_here() -> None:
    net = CoreNet()
    a, b = net.client(), net.client()
    b.link.role = Role.STANDBY
    registered(net, a, b)
    a.link.query(net.clock.now, locate=b.pub, want_relays=False)
    net.run()
    answers = [e for e in a.events if isinstance(e, DiscoveryAnswered)]
    assert answers
    assert answers[0].located is not None
    assert answers[0].located.relay == net.ident.public
    # and a session to it through here works
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    assert any(isinstance(e, SessionEstablished) for e in b.events)


def test_the_planner_keeps_a_standby_and_promotes_it_when_home_dies() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.005), w.relay(2, 0.020)
    a = w.peer(1, [r1, r2], link_idle_s=5.0)
    a.start(w.now)
    w.run_until(lambda: a.home == r1[0] and a.standby == r2[0])
    standby = a.link(r2[0])
    assert standby is not None
    w.run_until(lambda: standby.state == LinkState.REGISTERED)
    me = a.private_key.public_key()
    assert w.relays[r2[1]].federation.is_home_of(me) is False  # r1 holds our record
    assert w.relays[r1[1]].federation.is_home_of(me)
    w.run_until(lambda: w.now >= 30)  # idle: the standby stays
    assert r2[0] in a.links()
    died = w.now
    w.down.add(r1[1])
    w.run_until(lambda: a.home == r2[0])
    # lost_after_s is 3 s in World (no traffic carried): then at once, no pings
    assert w.now - died <= 3.0 + 0.1
    assert w.saw(a, HomeChanged)[-1] == HomeChanged(r2[0])
    w.run_until(lambda: w.relays[r2[1]].federation.is_home_of(me), limit_s=1.0)


def test_no_standby_when_only_one_relay_is_known() -> None:
    w = World()
    r1 = w.relay(1, 0.005)
    a = w.peer(1, [r1])
    a.start(w.now)
    w.run_until(lambda: a.home == r1[0])
    assert a.standby is None
