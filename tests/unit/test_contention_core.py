"""Contention in the relay core, in memory under a fake clock: a full relay
gives slots to members with more credit down to the reserve, displaced ends
hear PREEMPTED, and the capacity is shared by credit on the data path."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_legs import _deliver_offers, _introduced
from wgrelay import cli
from wgrelay.client.events import SessionEnded, SessionEstablished, SessionFailed
from wgrelay.config_file import parse_args
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.body import Body
from wgrelay.proto.constants import CloseReason, Status
from wgrelay.proto.data import data_header
from wgrelay.proto.federation import LegClose, LegOpen
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.contention import WEIGHT_REFRESH_S, StaticCredits
from wgrelay.relay.limits import MeteredBucket, TokenBucket
from wgrelay.relay.ports import PathChange, PortPair, PortPool, PortTable, SideMode
from wgrelay.relay.reload import reloaded_config
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


def _full_of_free_riders(net: CoreNet, credits: StaticCredits) -> list[tuple[Client, Client]]:
    riders = [_pair(net, credits, 0) for _ in range(4)]
    for a, b in riders:
        net.advance(0.1)
        assert _connect(net, a, b)
    return riders


def test_a_target_that_refuses_costs_no_one_a_slot() -> None:
    # a stranger asks for a contributor (the larger credit of the pair), a
    # contributor for a stranger: both targets refuse (not their WireGuard
    # peers), so neither request may end a free rider's session
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    riders = _full_of_free_riders(net, credits)
    stranger, refusing_rich = net.client(), net.client(accept=False)
    rich, refusing = net.client(), net.client(accept=False)
    credits.balances[refusing_rich.pub.raw] = credits.balances[rich.pub.raw] = 100 * GB
    registered(net, stranger, refusing_rich, rich, refusing)
    for a, b in ((stranger, refusing_rich), (rich, refusing)):
        a.link.request_session(b.pub, net.clock.now)
        net.run()
        failed = [e for e in a.events if isinstance(e, SessionFailed)]
        assert [e.status for e in failed] == [Status.REJECTED]
    assert not any(_preempted(c) for p in riders for c in p)
    st = net.relay.get_stats()
    assert st.sessions_active == 4
    assert "displaced_higher_credit" not in st.contention
    assert not net.relay.table.claims  # nothing left over


def test_a_claim_whose_offer_times_out_costs_no_one_a_slot() -> None:
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    riders = _full_of_free_riders(net, credits)
    rich, silent = _pair(net, credits, 100 * GB)
    net.clients.remove(silent)  # its datagrams go nowhere: it never answers
    rich.link.request_session(silent.pub, net.clock.now)
    net.run()
    # while the offer is out, the claimed slot is no one else's
    assert len(net.relay.table.claims) == 1
    other = _pair(net, credits, 100 * GB)
    assert _connect(net, *other)  # it claims (and takes) another rider's slot
    for _ in range(int(net.relay.config.offer_timeout_s) + 2):
        net.advance(1.0)
    # the youngest rider's slot was claimed for the silent target: it kept it
    assert [_preempted(a) for a, _ in riders] == [False, False, True, False]
    assert not net.relay.table.claims
    assert len(net.relay.sessions) == 4


def test_a_claimed_slot_freed_first_is_the_claimers() -> None:
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    riders = _full_of_free_riders(net, credits)
    rich, target = _pair(net, credits, 100 * GB)
    net.clients.remove(target)  # holds its answer
    rich.link.request_session(target.pub, net.clock.now)
    net.run()
    (claim,) = net.relay.table.claims.values()
    victim = net.relay.sessions[claim.victim]
    owner = next(p for p in riders if victim.a_key == p[0].pub.raw)
    owner[0].link.close_session(owner[1].pub, net.clock.now)  # it leaves by itself
    net.run()
    assert not net.relay.table.claims
    net.clients.append(target)
    net.advance(net.relay.config.offer_retransmit_s)  # the offer again, answered
    assert rich.link.session_of.get(target.pub) is not None
    assert not any(_preempted(c) for p in riders for c in p)
    assert len(net.relay.sessions) == 4


def test_slots_follow_balances_without_a_capacity() -> None:
    # no --capacity (the default): the weights a full relay compares must
    # still follow the balances, not stay what they were at each session's start
    net = CoreNet(RelayConfig(max_connections=4, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    riders = _full_of_free_riders(net, credits)
    credits.balances[riders[3][0].pub.raw] = 100 * GB  # the youngest's receipts arrived
    for _ in range(int(WEIGHT_REFRESH_S) + 1):
        net.advance(1.0)
    assert _connect(net, *_pair(net, credits, 100 * GB))
    # the youngest weighs as much as the newcomer now: the next youngest gave way
    assert [_preempted(a) for a, _ in riders] == [False, False, True, False]


def spy_relay_messages(net: CoreNet) -> list[tuple[PublicKey, Body]]:
    """What the relay sends other relays from now on (still sent)."""
    told: list[tuple[PublicKey, Body]] = []
    send = net.relay._to_relay

    def spy(key: PublicKey, body: Body, now: float) -> None:
        told.append((key, body))
        send(key, body, now)

    net.relay._to_relay = spy  # type: ignore[method-assign]
    return told


def test_a_displaced_leg_tells_the_other_relay() -> None:
    # the exit relay of a multi-hop session is full: a contributor's pair
    # takes the leg's slot; the entry relay hears LEG_CLOSE PREEMPTED (its
    # side, and its peer, end too), the local end SESSION_CLOSE PREEMPTED
    net = CoreNet(RelayConfig(max_connections=2, min_share=0.25))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rider = _pair(net, credits, 0)
    assert _connect(net, *rider)
    b = net.client()
    registered(net, b)
    r1 = _introduced(net, listed=True)
    sid = os.urandom(8)
    net.advance(0.1)  # (the leg is the younger session)
    r1.send(LegOpen(sid, PrivateKey.generate().public_key(), b.pub, 2), net.clock.now)
    _deliver_offers(net, r1)
    assert sid in net.relay.sessions
    told = spy_relay_messages(net)
    assert _connect(net, *_pair(net, credits, 100 * GB))
    assert sid not in net.relay.sessions
    assert told == [(r1.ident.public, LegClose(sid, CloseReason.PREEMPTED))]
    assert _preempted(b)
    assert not _preempted(rider[0])
    assert net.relay.leg_stats()["closed_exit"] == 1


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


def test_without_credits_a_full_relay_names_the_same_limit_as_before() -> None:
    # full, and the requester holds all its sessions too: the refusal was
    # counted against max_connections before contention, and still is
    net = CoreNet(RelayConfig(max_connections=2, max_sessions_per_peer=1))
    a, b, c, d, e = (net.client() for _ in range(5))
    registered(net, a, b, c, d, e)
    assert _connect(net, a, b)
    assert _connect(net, c, d)
    assert not _connect(net, a, e)
    hits = net.relay.get_stats().quota_hits
    assert (hits["max_connections"], hits["sessions_per_peer"]) == (1, 0)


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


def test_idle_sessions_leave_the_capacity_to_the_busy_one() -> None:
    # 30 idle tunnels (keepalives at most) and one that sends flat out, over
    # a small capacity: the idle ones must not hold it back (each direction
    # was given room for 2 kB/s it never used: 120 kB/s nobody wanted)
    capacity = 100_000
    net = CoreNet(RelayConfig(max_bandwidth_kbps=1000, capacity_bytes_per_s=capacity))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    for _ in range(30):
        assert _connect(net, *_pair(net, credits, 0))
        net.advance(1.0)  # (the control rate per address)
    busy = _pair(net, credits, 0)
    assert _connect(net, *busy)
    _offer(net, [busy], 3.0)
    (passed,) = _offer(net, [busy], 4.0)
    print(f"busy session: {passed / 4.0:.0f} B/s of {capacity}")
    assert passed / 4.0 >= 0.6 * capacity


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


# ---------------------------------------------------------------- reloads and the kernel path


def test_a_capacity_set_then_taken_away_by_reload() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))  # unlimited sessions, no capacity
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rich, poor = _pair(net, credits, 100 * GB), _pair(net, credits, 0)
    assert _connect(net, *rich)
    assert _connect(net, *poor)
    _offer(net, [rich, poor], 2.0)
    s_rich, s_poor = (net.relay.sessions[_sid(*p)] for p in (rich, poor))
    assert s_rich.ab is None  # today's relay: no bucket, nothing measured
    config = reloaded_config(net.relay.config, RelayConfig(capacity_bytes_per_s=300_000))
    net.relay.reconfigure(config=config)
    _offer(net, [rich, poor], 3.0)
    passed = _offer(net, [rich, poor], 4.0)
    assert net.relay.get_stats().contention["contended"] == 1
    assert sum(passed) / 4.0 <= 300_000
    assert passed[0] > 3 * passed[1]
    net.relay.reconfigure(config=reloaded_config(config, RelayConfig()))
    _offer(net, [rich, poor], 1.5)
    assert s_rich.ab is None  # unlimited again
    assert s_poor.ab is None
    assert net.relay.get_stats().contention["contended"] == 0
    passed = _offer(net, [rich, poor], 1.0)
    frame = len(data_header(_sid(*rich)) + FRAME)
    assert passed[0] == passed[1] == 100 * 10 * frame  # every frame offered


def test_the_data_path_counts_nothing_without_a_capacity() -> None:
    # the per-packet count is what measures demand under --capacity: a relay
    # without one (the default) forwards through buckets that do not count,
    # as before contention; a reload that sets one, and takes it away, swaps
    # them (rates and tokens carried over)
    net = CoreNet(RelayConfig(max_bandwidth_kbps=200))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rich, poor = _pair(net, credits, 100 * GB), _pair(net, credits, 0)
    assert _connect(net, *rich)
    assert _connect(net, *poor)
    sessions = [net.relay.sessions[_sid(*p)] for p in (rich, poor)]

    def kinds() -> set[type]:
        return {type(b) for s in sessions for b in (s.ab, s.ba)}

    _offer(net, [rich, poor], 2.0)
    assert kinds() == {TokenBucket}
    limited = RelayConfig(max_bandwidth_kbps=200, capacity_bytes_per_s=150_000)
    net.relay.reconfigure(config=reloaded_config(net.relay.config, limited))
    _offer(net, [rich, poor], 3.0)
    assert kinds() == {MeteredBucket}
    passed = _offer(net, [rich, poor], 4.0)
    assert net.relay.get_stats().contention["contended"] == 1
    assert sum(passed) / 4.0 <= 150_000
    assert passed[0] > 3 * passed[1]
    net.relay.reconfigure(config=reloaded_config(limited, RelayConfig(max_bandwidth_kbps=200)))
    _offer(net, [rich, poor], 1.5)
    assert kinds() == {TokenBucket}
    assert {b.rate for s in sessions for b in (s.ab, s.ba) if b is not None} == {200_000}
    passed = _offer(net, [rich, poor], 4.0)
    for p in passed:  # both at the cap again (charged 1074 per 1010-byte frame)
        assert 0.9 * 200_000 * 1010 / 1074 <= p / 4.0 <= 1.05 * 200_000


def test_reload_carries_capacity_and_min_share() -> None:
    new = RelayConfig(capacity_bytes_per_s=5_000_000, min_share=0.5, max_connections=7)
    got = reloaded_config(RelayConfig(port_range=(50000, 50100)), new)
    assert (got.capacity_bytes_per_s, got.min_share, got.max_connections) == (5_000_000, 0.5, 7)
    assert got.port_range == (50000, 50100)  # (what needs a restart stays)


def _rich_and_poor_with_ports(
    net: CoreNet,
) -> tuple[PortTable, tuple[Client, Client], tuple[Client, Client], PortPair]:
    """Port mode on, a 100 GB pair and a free-rider pair connected: the
    port table, both pairs, and the free riders' port pair."""
    net.relay.enable_port_mode(PortPool(52000, 52099, lambda _p: True, lambda _p: None))
    ports = net.relay.ports
    assert ports is not None
    credits = StaticCredits()
    net.relay.contention.credits = credits
    rich, poor = _pair(net, credits, 100 * GB), _pair(net, credits, 0)
    assert _connect(net, *rich)
    assert _connect(net, *poor)
    pair = net.relay.sessions[_sid(*poor)].ports
    assert pair is not None
    return ports, rich, poor, pair


def _in_kernel(pair: PortPair, peers: tuple[Client, Client]) -> None:
    """As ports.py marks a path the kernel took (both sides latched)."""
    pair.a.mode = pair.b.mode = SideMode.PORT
    pair.a.latched, pair.b.latched = peers[0].addr, peers[1].addr
    pair.offloaded = True


def test_an_offloaded_path_is_counted_and_reinstalled_at_its_share() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=1000, capacity_bytes_per_s=400_000))
    ports, rich, poor, pair = _rich_and_poor_with_ports(net)
    _in_kernel(pair, poor)
    assert net.relay.offload_rate(pair) == 1_000_000  # free capacity: the configured cap
    ports.changes.clear()
    # the kernel carries 600 kB/s for the poor session (its counters, read
    # each second), the rich one's framed frames ask for 1 MB/s: over capacity
    kernel_bytes = reinstalls = 0
    for _ in range(4):
        start = net.clock.now
        frame = data_header(_sid(*rich)) + FRAME
        for i in range(100):
            for _ in range(10):
                net.relay.forward_data(frame, rich[0].addr, start + i * 0.01)
        net.clock.now = net.relay.next_timer()
        kernel_bytes += 600_000
        pair.kernel_seen = (kernel_bytes // 1000, kernel_bytes, 0, 0, 0)
        net.relay.handle_timer(net.clock.now)
        if ports.changes:
            assert ports.changes == [PathChange(pair.a.port, pair)]
            ports.changes.clear()
            net.relay.offload_rate(pair)  # the server re-installs it
            reinstalls += 1
    assert reinstalls >= 1
    st = net.relay.get_stats()
    assert st.contention["contended"] == 1
    assert st.contention["used_bytes_per_s"] >= 600_000  # the kernel's part counted
    s = pair.session
    assert s.ab is not None
    assert s.ba is not None
    rate = net.relay.offload_rate(pair)
    assert rate == int(max(s.ab.rate, s.ba.rate))  # the share of its larger direction
    assert 400_000 * 0.25 / 4 <= rate < 400_000 / 2  # at least its floor, less than half


def test_a_path_offloaded_before_a_capacity_is_reinstalled_at_its_share() -> None:
    # unlimited sessions (--max-bandwidth 0) in the kernel, then a SIGHUP
    # sets --capacity: the path must leave the kernel's no-limit install
    net = CoreNet(RelayConfig(max_bandwidth_kbps=0))
    ports, rich, poor, pair = _rich_and_poor_with_ports(net)
    _in_kernel(pair, poor)
    assert net.relay.offload_rate(pair) == 0  # installed with no limit
    ports.changes.clear()
    unlimited = RelayConfig(max_bandwidth_kbps=0)
    config = reloaded_config(unlimited, replace(unlimited, capacity_bytes_per_s=400_000))
    net.relay.reconfigure(config=config)
    kernel_bytes, installed = 0, [0]
    for _ in range(4):
        start = net.clock.now
        frame = data_header(_sid(*rich)) + FRAME
        for i in range(100):
            for _ in range(10):
                net.relay.forward_data(frame, rich[0].addr, start + i * 0.01)
        net.clock.now = net.relay.next_timer()
        kernel_bytes += 600_000
        pair.kernel_seen = (kernel_bytes // 1000, kernel_bytes, 0, 0, 0)
        net.relay.handle_timer(net.clock.now)
        if ports.changes:
            assert ports.changes == [PathChange(pair.a.port, pair)]
            ports.changes.clear()
            installed.append(net.relay.offload_rate(pair))  # the server re-installs it
    assert net.relay.get_stats().contention["contended"] == 1
    assert 0 < installed[-1] < 400_000  # limited now, at its share
    # the capacity taken away again: back to no limit, once
    net.relay.reconfigure(config=reloaded_config(config, unlimited))
    net.clock.now = net.relay.next_timer()
    net.relay.handle_timer(net.clock.now)
    assert ports.changes == [PathChange(pair.a.port, pair)]
    ports.changes.clear()
    assert net.relay.offload_rate(pair) == 0
    net.clock.now = net.relay.next_timer()
    net.relay.handle_timer(net.clock.now)
    assert not ports.changes
    # a path whose install was queued as its session closed leaves nothing behind
    poor[0].link.close_session(poor[1].pub, net.clock.now)
    net.run()
    assert pair.session.ports is None
    net.relay.offload_rate(pair)
    assert pair.session.sid not in net.relay.contention._installed


def test_start_relay_bad_capacity_exits_with_one_line(tmp_path: Path) -> None:
    for flag, value, says in (
        ("--capacity", "10Mbps", "unit 'mbps'"),
        ("--min-share", "80%", "at most 50%"),
    ):
        argv = [sys.executable, "-m", "wgrelay", "--state-dir", str(tmp_path)]
        run = subprocess.run(
            [*argv, "start-relay", "--open", flag, value],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith("wgrelay: error: argument " + flag), run.stderr
        assert says in lines[0]


def test_capacity_and_min_share_options_and_config_keys(tmp_path: Path) -> None:
    args = parse_args(cli.build_parser(), ["start-relay", "--open", "--capacity", "100Mbit/s"])
    assert args.capacity == 12_500_000
    assert args.min_share == 0.25
    conf = tmp_path / "relay.toml"
    conf.write_text('open = true\ncapacity = "2MB/s"\nmin-share = "10%"\n')
    args = parse_args(cli.build_parser(), ["start-relay", "--config", str(conf)])
    config = cli.relay_options(args).config
    assert config.capacity_bytes_per_s == 2_000_000
    assert config.min_share == pytest.approx(0.1)


def test_shares_follow_balances_as_they_change() -> None:
    net = CoreNet(RelayConfig(max_bandwidth_kbps=1000, capacity_bytes_per_s=400_000))
    credits = StaticCredits()
    net.relay.contention.credits = credits
    one, two = _pair(net, credits, 0), _pair(net, credits, 0)
    assert _connect(net, *one)
    assert _connect(net, *two)
    _offer(net, [one, two], 3.0)
    even = _offer(net, [one, two], 3.0)
    assert abs(even[0] - even[1]) <= 0.05 * even[0]  # equal credit, equal shares
    credits.balances[one[0].pub.raw] = 100 * GB  # its receipts arrived
    _offer(net, [one, two], WEIGHT_REFRESH_S + 2.0)
    after = _offer(net, [one, two], 3.0)
    assert after[0] > 3 * after[1]
