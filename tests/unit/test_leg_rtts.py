"""What a path over two relays is weighed with: LEG_RTT_QUERY/REPLY on the
wire, a relay's RTTs to other relays (relay/relay_rtts.py), the two-relay
cost (discovery/selection.py)."""

from __future__ import annotations

import pytest

from tests.unit.test_federation import WALL0, World, _announcement
from wgrelay.discovery.registry import KnownRelay
from wgrelay.discovery.selection import (
    FAILURE_PENALTY_MS,
    TWO_RELAY_EXTRA_MS,
    UNAVAILABLE_PENALTY_MS,
    Selector,
    relay_burden,
)
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.constants import RTT_UNKNOWN, MsgType
from wgrelay.proto.cookie import CookieReply
from wgrelay.proto.federation import Digest
from wgrelay.proto.leg_rtts import MAX_LEG_RTTS, LegRttQuery, LegRttReply
from wgrelay.proto.messages import Ping, Pong, decode_body, encode_body
from wgrelay.relay.relay_rtts import SRTT_WEIGHT, STALE_S, WANTED_FOR_S, RelayRtts


def _key() -> PublicKey:
    return RelayIdentity.generate().public


# ------------------------------------------------------------ the wire


def test_query_and_reply_round_trip() -> None:
    k1, k2 = _key(), _key()
    q = LegRttQuery(7)
    assert encode_body(q) == bytes.fromhex("00000007")
    decoded: object = decode_body(MsgType.LEG_RTT_QUERY, encode_body(q))  # (BODY_TYPES)
    assert decoded == q
    r = LegRttReply(7, ((k1, 22), (k2, RTT_UNKNOWN)))
    raw = encode_body(r)
    assert len(raw) == 5 + 2 * 34
    decoded_reply: object = decode_body(MsgType.LEG_RTT_REPLY, raw)
    assert decoded_reply == r
    assert r.rtts_ms() == {k1: 22.0, k2: None}


def test_a_reply_is_bounded_both_ways() -> None:
    many = tuple((_key(), 1) for _ in range(MAX_LEG_RTTS + 1))
    with pytest.raises(LocalProtocolError):
        encode_body(LegRttReply(1, many))
    raw = bytes.fromhex("00000001") + bytes([MAX_LEG_RTTS + 1]) + bytes(34 * (MAX_LEG_RTTS + 1))
    with pytest.raises(Malformed):
        decode_body(MsgType.LEG_RTT_REPLY, raw)
    # the largest fits one control datagram with room to spare
    assert len(encode_body(LegRttReply(1, many[:MAX_LEG_RTTS]))) == 1025


# ------------------------------------------------------------ a relay's RTTs


def test_pings_give_samples_smoothed() -> None:
    rtts, k = RelayRtts(10.0), _key()
    rtts.sent(k, 1, 100.0)
    rtts.answered(k, 1, 100.020)
    assert rtts.rtt_ms(k, 100.1) == pytest.approx(20.0)
    rtts.sent(k, 2, 101.0)
    rtts.answered(k, 2, 101.620)  # the route got slow: a quarter of the way at once
    assert rtts.rtt_ms(k, 102.0) == pytest.approx(20 + SRTT_WEIGHT * 600)
    rtts.answered(k, 2, 101.7)  # a duplicate PONG is no second sample
    assert rtts.rtt_ms(k, 102.0) == pytest.approx(20 + SRTT_WEIGHT * 600)


def test_a_pong_from_another_relay_or_for_nothing_is_no_sample() -> None:
    rtts, k, other = RelayRtts(10.0), _key(), _key()
    rtts.sent(k, 1, 0.0)
    rtts.answered(other, 1, 0.010)
    rtts.answered(k, 99, 0.010)
    assert rtts.rtt_ms(k, 1.0) is None


def test_a_ping_repeated_with_a_cookie_is_timed_from_the_repeat_and_only_that_one() -> None:
    """A cookie reply names the message it answers (the nonce's echo): that
    one is repeated, and only if it is a PING is it timed from the repeat.
    A late cookie reply for another message (a DIGEST sent before the
    channel had the cookie) moved every PING in flight to that relay to
    its own time, so a PING sent with the cookie since came out short."""
    w = World()
    core, _ = w.relay(1)
    fed = core.federation
    peer = RelayIdentity.generate()
    k = peer.public
    fed.learn(_announcement(peer, int(WALL0 * 1000)), 0.0)
    channel = fed._channels.get(k) or fed._channel(k)
    assert channel is not None
    fed._send(k, Digest(fed.directory.digest()), 0.0)  # no cookie yet: both answered
    fed._send(k, Ping(1), 0.0)  # with a cookie reply
    digest_echo, ping_echo = list(channel._sent)[-2:]
    assert fed.receive_cookie(CookieReply(ping_echo, b"C" * 16), 0.030)  # repeated now
    fed._send(k, Ping(2), 0.040)  # with the cookie: no detour
    assert fed.receive_cookie(CookieReply(digest_echo, b"C" * 16), 0.045)  # a late one
    core.datagrams_to_send()
    fed._on_pong(k, Pong(1, 0), 0.060)
    assert fed.rtts.rtt_ms(k, 0.1) == pytest.approx(30.0)  # from its repeat (not the late one's)
    fed._on_pong(k, Pong(2, 0), 0.070)
    assert fed.rtts.rtt_ms(k, 0.1) == pytest.approx(30.0)  # 30 again, not 25


def test_an_old_figure_is_no_figure() -> None:
    rtts, k = RelayRtts(10.0), _key()
    rtts.sent(k, 1, 0.0)
    rtts.answered(k, 1, 0.010)
    assert rtts.rtt_ms(k, STALE_S - 1) is not None
    assert rtts.rtt_ms(k, STALE_S + 0.01) is None
    rtts.sent(k, 2, STALE_S + 1)
    rtts.answered(k, 2, STALE_S + 1.5)  # a fresh start, not smoothed into the old
    assert rtts.rtt_ms(k, STALE_S + 2) == pytest.approx(500.0)


def test_relays_asked_about_are_pinged_every_interval_while_wanted() -> None:
    rtts, k, other = RelayRtts(10.0), _key(), _key()
    assert rtts.due(0.0) == []  # nobody asked: SWIM's probes only
    rtts.want([k], 0.0)
    assert rtts.due(0.0) == [k]
    rtts.sent(k, 1, 0.0)
    assert rtts.due(9.9) == []
    rtts.sent(k, 2, 5.0)  # a SWIM probe counts as a ping
    assert rtts.due(14.9) == []
    assert rtts.due(15.0) == [k]
    assert other not in rtts.due(15.0)
    assert rtts.due(WANTED_FOR_S + 1) == []  # no agent asked for an hour


def test_the_reply_lists_measured_relays_nearest_first_and_wants_them_all() -> None:
    rtts = RelayRtts(10.0)
    far, near, unknown = _key(), _key(), _key()
    for echo, (k, rtt) in enumerate(((far, 0.150), (near, 0.020))):
        rtts.sent(k, echo, 0.0)
        rtts.answered(k, echo, rtt)
    reply = rtts.reply(5, [unknown, far, near, far], 1.0)
    assert reply.query_id == 5
    assert reply.relays == ((near, 20), (far, 150), (unknown, RTT_UNKNOWN))
    assert rtts.due(1.0) == [unknown]  # the others were pinged within the interval
    assert rtts.due(10.0) == [unknown, far, near]


def test_a_relay_that_left_is_forgotten() -> None:
    rtts, k = RelayRtts(10.0), _key()
    rtts.want([k], 0.0)
    rtts.sent(k, 1, 0.0)
    rtts.answered(k, 1, 0.010)
    rtts.sent(k, 2, 1.0)
    rtts.forget(k)
    rtts.answered(k, 2, 1.010)
    assert rtts.rtt_ms(k, 2.0) is None
    assert rtts.due(20.0) == []


# ------------------------------------------------------------ the cost


def _relay(rtt_ms: float, load: int = 0, budget_left: int | None = None) -> KnownRelay:
    return KnownRelay(_key(), (("203.0.113.1", 51821),), rtt_ms=rtt_ms, load_pct=load,
                      budget_left_pct=budget_left)  # fmt: skip


def test_the_two_relay_cost_adds_the_leg_and_the_second_relay_s_burden() -> None:
    sel = Selector(PrivateKey.generate().public_key())
    home, exit_relay = _relay(12.0, load=10), _relay(400.0, load=5, budget_left=80)
    assert relay_burden(exit_relay) == 2 * 5 + 20
    cost = sel.two_relay_cost(home, exit_relay, 22.0, 12)
    # our RTT to home and its load, the leg, the peer's RTT, the exit's
    # load and budget (not our 400 ms to it: we never talk to it), the extra
    assert cost == 12 + 20 + 22 + 12 + 30 + TWO_RELAY_EXTRA_MS
    # the same relays as one path, each alone
    assert sel.path_cost(exit_relay, 12) == 400 + 30 + 12


def test_a_full_exit_relay_or_failed_sessions_weigh_on_a_two_relay_path() -> None:
    peer = PrivateKey.generate().public_key()
    home, exit_relay = _relay(10.0), _relay(10.0, load=100)
    lost = {(peer, home.key): 2}
    sel = Selector(PrivateKey.generate().public_key(), history=lambda p, r: lost.get((p, r), 0))
    base = 10 + 20 + 10 + TWO_RELAY_EXTRA_MS + 200
    assert sel.two_relay_cost(home, exit_relay, 20.0, 10) == base + UNAVAILABLE_PENALTY_MS
    ok = _relay(10.0)
    assert sel.two_relay_cost(home, ok, 20.0, 10, peer) == base - 200 + 2 * FAILURE_PENALTY_MS
