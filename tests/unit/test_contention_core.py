"""Contention in the relay core, in memory under a fake clock: a full relay
gives slots to members with more credit down to the reserve, displaced ends
hear PREEMPTED, and the capacity is shared by credit on the data path."""

from __future__ import annotations

from wgrelay.client.events import SessionEnded, SessionEstablished, SessionFailed
from wgrelay.proto.constants import CloseReason, Status
from wgrelay.proto.data import data_header
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.contention import StaticCredits
from wgrelay.testkit import Client, CoreNet, registered

GB = 1_000_000_000


def _pair(net: CoreNet, credits: StaticCredits, balance: int) -> tuple[Client, Client]:
    a, b = net.client(), net.client()
    credits.balances[a.pub.raw] = balance
    registered(net, a, b)
    return a, b


def _connect(net: CoreNet, a: Client, b: Client) -> bool:
    seen = len(a.events)
    a.link.request_session(b.pub, net.clock.now)
    net.run()
    new = a.events[seen:]
    if any(isinstance(e, SessionEstablished) and e.peer == b.pub for e in new):
        return True
    failed = [e for e in new if isinstance(e, SessionFailed) and e.peer == b.pub]
    assert failed, "neither established nor refused"
    assert failed[-1].status == Status.RESOURCE_LIMIT
    return False


def _preempted(c: Client) -> bool:
    return any(isinstance(e, SessionEnded) and e.reason == CloseReason.PREEMPTED for e in c.events)


def test_contributors_take_slots_from_free_riders_down_to_the_reserve() -> None:
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))  # reserve: 1 slot
    credits = StaticCredits()
    net.relay.contention.credits = credits
    riders = [_pair(net, credits, 0) for _ in range(4)]
    for a, b in riders:
        net.advance(0.1)  # distinct ages: the youngest goes first
        assert _connect(net, a, b)
    contributors = [_pair(net, credits, 100 * GB) for _ in range(4)]
    for a, b in contributors[:3]:
        assert _connect(net, a, b)
    # the three youngest free riders gave their slots, both ends were told
    assert [_preempted(a) and _preempted(b) for a, b in riders] == [False, True, True, True]
    # the oldest keeps the reserve: a fourth contributor is refused
    assert not _connect(net, *contributors[3])
    assert not _preempted(riders[0][0])
    st = net.relay.get_stats()
    assert st.sessions_active == 4
    assert st.contention["admitted_free_slot"] == 4
    assert st.contention["admitted_higher_credit"] == 3
    assert st.contention["displaced_higher_credit"] == 3
    assert st.contention["refused_full"] == 1
    # a free rider asking now is refused too (its class holds its reserve)...
    assert not _connect(net, *riders[1])


def test_a_newcomer_at_a_relay_full_of_contributors_gets_a_slot_back() -> None:
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    contributors = [_pair(net, credits, 100 * GB) for _ in range(4)]
    for a, b in contributors:
        net.advance(0.1)
        assert _connect(net, a, b)
    newcomer = _pair(net, credits, 0)
    assert _connect(net, *newcomer)  # never cut off
    assert [_preempted(a) for a, _ in contributors] == [False, False, False, True]
    st = net.relay.get_stats()
    assert st.contention["admitted_reserve"] == 1
    assert st.contention["displaced_reserve"] == 1


def test_without_credits_a_full_relay_refuses_as_before() -> None:
    net = CoreNet(RelayConfig(max_connections=2))
    pairs = [(net.client(), net.client()) for _ in range(3)]
    for a, b in pairs:
        registered(net, a, b)
    assert _connect(net, *pairs[0])
    assert _connect(net, *pairs[1])
    assert not _connect(net, *pairs[2])
    assert not any(_preempted(c) for p in pairs for c in p)
    assert net.relay.get_stats().quota_hits["max_connections"] == 1


def _sid(c: Client, peer: Client) -> bytes:
    return c.link.session_of[peer.pub]


FRAME = b"\x04\x00\x00\x00" + bytes(936)  # a WireGuard data message; +10 header, +64 charge


def _offer(net: CoreNet, flows: list[tuple[Client, Client]], seconds: float) -> list[int]:
    """Each flow offers 1 MB/s of frames for ``seconds``; bytes that passed."""
    passed = [0] * len(flows)
    step = 0.01
    for _ in range(round(seconds / step)):
        net.clock.now += step
        now = net.clock.now
        for i, (a, b) in enumerate(flows):
            frame = data_header(_sid(a, b)) + FRAME
            for _ in range(10):  # 10 frames of 1010 bytes every 10 ms
                if net.relay.forward_data(frame, a.addr, now) is not None:
                    passed[i] += len(frame)
        if now >= net.relay.next_timer():
            net.relay.handle_timer(now)
    return passed


def test_capacity_is_shared_by_credit_and_the_free_rider_keeps_its_floor() -> None:
    capacity = 400_000
    net = CoreNet(RelayConfig(max_bandwidth_kbps=1000, capacity_bytes_per_s=capacity))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rich, poor = _pair(net, credits, 100 * GB), _pair(net, credits, 0)
    assert _connect(net, *rich)
    assert _connect(net, *poor)
    _offer(net, [rich, poor], 3.0)  # the shares settle
    passed = _offer(net, [rich, poor], 5.0)
    rates = [p / 5.0 for p in passed]
    st = net.relay.get_stats()
    assert st.contention["contended"] == 1
    # each frame is charged 64 bytes more than its size: what passed is below
    assert sum(rates) <= capacity * 1.03
    assert rates[0] > 4 * rates[1]  # weight 7.66 against 1 (and the floor)
    # the floor: the free rider's flow keeps 25 % of the capacity split
    # between the two active flows... and one idle direction each
    assert rates[1] >= 0.9 * 0.25 * capacity / 4
    s_rich = net.relay.sessions[_sid(*rich)]
    assert s_rich.ab is not None
    assert s_rich.ab.rate > 5 * 2_000  # the idle direction keeps little, the busy one the most


def test_free_capacity_leaves_every_session_its_cap() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=100, capacity_bytes_per_s=10_000_000))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rich, poor = _pair(net, credits, 100 * GB), _pair(net, credits, 0)
    assert _connect(net, *rich)
    assert _connect(net, *poor)
    _offer(net, [rich, poor], 2.0)
    passed = _offer(net, [rich, poor], 5.0)
    assert net.relay.get_stats().contention["contended"] == 0
    for p in passed:  # both at the 100 kB/s cap (charged 1074 per 1010-byte frame)
        assert 0.9 * 100_000 * 1010 / 1074 <= p / 5.0 <= 1.05 * 100_000
    for pair in (rich, poor):
        s = net.relay.sessions[_sid(*pair)]
        assert s.ab is not None
        assert s.ab.rate == 100_000
