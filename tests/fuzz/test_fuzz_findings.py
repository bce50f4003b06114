"""What the structure-aware fuzzer found in src/, one minimal test each.

Each failed when the fuzzer found it (committed as a strict xfail) and
passes since its fix; they stay as regression tests. Those still marked
``xfail(strict=True)`` are open: fixing one makes its test pass, and the
strict mark then fails the suite until it is removed. The fuzzer's oracle
recognises each precisely (oracle.py, ``known_*``) and counts any that
comes (back) in ``known``, so the fuzzing runs stay green while it is open
and a regression shows in them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import pytest

from tests.fuzz.fuzzer import PRESETS
from tests.fuzz.layout import ControlDraft, open_draft
from tests.fuzz.world import ADDRESS_POOL, World
from wgrelay.client.link import LinkState
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    QUERY_FLAG_WANT_RELAYS,
    SERVER_TO_CLIENT,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.envelope import FLAG_FROM_SERVER, MAX_CLOCK_SKEW_S
from wgrelay.proto.federation import ProbeRequest
from wgrelay.proto.location import encode_location
from wgrelay.proto.messages import (
    Body,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    HeartbeatAck,
    PeerLocation,
    Ping,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionOffer,
    decode_body,
    encode_body,
)
from wgrelay.relay.admission import Addr

K = TypeVar("K")

ELSEWHERE = ADDRESS_POOL[0]
"""An address p0 has not proven it receives at."""


def world() -> World:
    """The fuzzer's world: six registered peers, two sessions, one pending offer."""
    w = World(PRESETS["deep"]).setup()
    for p in w.peers:
        while p.link.next_event() is not None:
            pass  # what setting it up told the links
    return w


def from_peer(w: World, name: str, body: Body, ts_offset_s: float = 0.0) -> bytes:
    """``body`` sealed by peer ``name`` for the relay, a little newer than its last."""
    p = w.by_name[name]
    return ControlDraft(
        int(body.TYPE), 0, p.public, bytes(range(24)), None,
        w.wall_us() + 1000 + int(ts_offset_s * 1_000_000), encode_body(body), p.to_relay,
    ).build()  # fmt: skip


def from_relay(w: World, name: str, body: Body, n: int = 0) -> bytes:
    """``body`` sealed by the relay for peer ``name`` (as the relay would send it)."""
    p = w.by_name[name]
    flags = FLAG_FROM_SERVER if body.TYPE in SERVER_TO_CLIENT else 0
    return ControlDraft(
        int(body.TYPE), flags, w.identity.x25519_public, bytes([n]) * 24, None,
        w.wall_us() + 1000 + n, encode_body(body), p.from_relay,
    ).build()  # fmt: skip


def grown(before: Mapping[K, int], after: Mapping[K, int]) -> dict[K, int]:
    """The counters that went up, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def drops_for(w: World, data: bytes, src: Addr) -> dict[str, int]:
    """What one datagram adds to the relay's drop counters."""
    drops = w.relay.stats.drops
    before = dict(drops)
    w.relay.receive(data, src, w.now)
    w.relay.datagrams_to_send()
    return grown(before, drops)


# ---------------------------------------------------------------- relay


@pytest.mark.parametrize(
    "case", ["stale_timestamp", "replayed", "not_allowed", "late_session_answer"]
)
def test_a_dropped_message_answered_with_a_cookie_counts_one_drop(case: str) -> None:
    """Every dropped datagram is counted under exactly one reason (issue 8).

    A registered peer's message from an address it has not proven is refused
    (its clock is off, it is a replay, its key is not allowed, or it accepts a
    session the relay does not know); the refusal's answer is replaced by a
    cookie, and both the refusal and ``unproven_address`` are counted: the
    relay's drop counters add up to more datagrams than it received.
    """
    w = world()
    name, skew = "p0", 0.0
    body: Body = Ping(1)
    if case == "stale_timestamp":
        skew = -2 * MAX_CLOCK_SKEW_S
    elif case == "not_allowed":
        name = "d0"
    elif case == "late_session_answer":
        body = SessionAnswer(bytes(8), accept=True)
    data = from_peer(w, name, body, skew)
    if case == "replayed":
        w.relay.receive(data, w.peer["p0"].addr, w.now)  # accepted once, at home
        w.relay.datagrams_to_send()
    delta = drops_for(w, data, ELSEWHERE)
    assert sum(delta.values()) == 1, delta


@pytest.mark.parametrize("case", ["probe_request", "locate"])
def test_a_deferred_answer_to_an_unproven_address_counts_no_drop(case: str) -> None:
    """Found by the fuzzer after relays began to talk (2f29b25), fixed in
    d5469df.

    Some requests are answered later, not while the relay handles them: a
    PROBE_REQUEST from a known relay (answered when the target's PONG comes,
    or at the probe timeout) and a peer's locate for a peer the relay does
    not know (answered when the peer's holders answer, or at the lookup
    deadline). From an address its sender has not proven, the request is
    handled (no drop; the relay pings the target, or asks the holders), and
    when the answer is due ``Admission.reply`` replaces it with a cookie
    reply and counts ``unproven_address``: a second count for a datagram
    already counted as handled, made inside ``handle_timer`` (or while the
    relay handles the target's or a holder's answer, from another address),
    so the drop counters add up to more than the datagrams received, and a
    cookie goes out that no datagram asked for just then (its echo is a
    request's long gone). The unproven sender should be challenged when its
    request arrives (a cookie then, counted for that datagram) or its late
    answer dropped without a count. Now it is challenged on arrival: one
    cookie, one ``unproven_address`` for that datagram, nothing later."""
    w = world()
    if case == "probe_request":
        r1, r2 = w.relays
        request = from_peer(w, "r1", ProbeRequest(r2.identity.public, 7))
        src = r1.addr
    else:
        stranger = PublicKey(w.by_name["s0"].public)  # registered nowhere
        request = from_peer(w, "p0", DiscoveryQuery(5, QUERY_FLAG_WANT_RELAYS, 6, locate=stranger))
        src = ELSEWHERE
    # fixed: challenged when it arrives (one cookie, one drop for this datagram)
    arrival = drops_for(w, request, src)
    assert [(getattr(k, "value", k), v) for k, v in arrival.items()] == [("unproven_address", 1)]
    w.now += 5.0  # nobody answers: the probe times out, the lookup gives up
    drops = w.relay.stats.drops
    before = dict(drops)
    w.relay.handle_timer(w.now)
    late = [
        d for d, dst in w.relay.datagrams_to_send() if dst == src and d[0] == MsgType.COOKIE_REPLY
    ]
    delta = {k: v - before.get(k, 0) for k, v in drops.items() if v != before.get(k, 0)}
    assert delta == {}, f"{delta} counted by a timer; {len(late)} cookie(s) to {src}"


def test_a_locate_answer_with_another_peers_record_is_no_internal_error() -> None:
    """Found by the fuzzer after relays began to talk (2f29b25), fixed in
    fb98684.

    p0 asks its relay where s0 is; the relay does not know and asks s0's
    holders (r1 and r2, DISCOVERY_QUERY with locate). r1 answers with a
    location and a valid LOCATION record, signed by r1 (a relay the relay
    knows), but for another peer, s1. The old ``_on_locate_answer`` held the
    record (filed under s1) and then read the record of s0: ``KeyError``,
    counted as ``internal_error``; p0 got its answer only when the lookup
    timed out, and the relay held a record for s1 it never asked about. Now
    the record is refused (``location_wrong_peer``), not filed, and the
    lookup goes on waiting for r2."""
    w = world()
    s0, s1 = (PublicKey(w.by_name[n].public) for n in ("s0", "s1"))
    query = from_peer(w, "p0", DiscoveryQuery(5, 0, 0, locate=s0))
    w.relay.receive(query, w.peer["p0"].addr, w.now)
    r1 = w.relays[0]
    asked = None
    for d, dst in w.relay.datagrams_to_send():
        draft = open_draft(d, {w.identity.x25519_public: r1.answers.rx})
        if dst == r1.addr and isinstance(draft, ControlDraft):
            asked = decode_body(MsgType(draft.msg_type), draft.body)
    assert isinstance(asked, DiscoveryQuery)
    assert asked.locate == s0
    record = encode_location(s1, int(w.wall() * 1000), 120, r1.identity)
    where = PeerLocation(r1.identity.public, ("192.0.2.2", 51820))
    answer = ControlDraft(
        int(MsgType.DISCOVERY_RESPONSE), FLAG_FROM_SERVER, r1.party.public, bytes(24), None,
        w.wall_us() + 1000, encode_body(DiscoveryResponse(asked.query_id, (), where, record)),
        r1.answers.tx,
    ).build()  # fmt: skip
    counters = w.relay.federation.counters
    refused = counters.get("location_wrong_peer", 0)
    assert drops_for(w, answer, r1.addr) == {}
    assert counters.get("location_wrong_peer", 0) == refused + 1
    book = w.relay.federation.locations
    assert book.held(s1, w.now) == ()  # not filed under the peer it names
    assert book.held(s0, w.now) == ()
    assert s0 in book._lookups  # still waiting for r2


NO_RELAY_ANSWER: dict[str, Body] = {
    "registered": Registered(30, 5, 1, ("192.0.2.1", 51820)),
    "heartbeat_ack": HeartbeatAck(1, HeartbeatStatus.OK, 1),
    "connection_response": ConnectionResponse(1, Status.SUCCESS, bytes(8), 180, 1000),
    "session_offer": SessionOffer(bytes(8), PublicKey(bytes(range(32)))),
    "session_close": SessionClose(bytes(8), CloseReason.NORMAL),
}
"""Server-to-client bodies a relay never answers another relay with."""


@pytest.mark.parametrize("case", sorted(NO_RELAY_ANSWER))
def test_an_answer_no_relay_sends_is_counted(case: str) -> None:
    """Found by the fuzzer after the wire format change (fb98684), in the
    long run under "deep" (60k inputs, seed 20240808: twice, a mutated
    answer re-typed CONNECTION_RESPONSE); fixed in dcedb3f.

    r1, a relay the relay knows, answers on the relay's own channel to it
    (FROM_SERVER, sealed with r1's side of that channel, fresh, not replayed)
    with a body no relay ever sends another: REGISTERED, HEARTBEAT_ACK,
    CONNECTION_RESPONSE, SESSION_OFFER or SESSION_CLOSE. ``RelayChannel.open``
    accepts any server-to-client type, ``Federation.receive_answer`` marks r1
    alive and hands it to ``_on_answer``, which has no branch for it and
    returns: ``control_received`` goes up, and no drop reason, neither the
    core's nor the channel's. Every other datagram nobody uses is counted
    (a peer's body without a handler is ``unexpected``): this one should
    be too, at the core or at the channel. Now ``_on_answer`` says it took
    nothing and the channel counts ``unexpected``."""
    w = world()
    r1 = w.relays[0]
    channel = w.relay.federation._channels[r1.identity.public]
    before = dict(channel.drops)
    body = NO_RELAY_ANSWER[case]
    answer = ControlDraft(
        int(body.TYPE), FLAG_FROM_SERVER, r1.party.public, bytes(24), None,
        w.wall_us() + 1000, encode_body(body), r1.answers.tx,
    ).build()  # fmt: skip
    received = w.relay.stats.control_received
    core = drops_for(w, answer, r1.addr)
    at_channel = grown(before, channel.drops)
    assert w.relay.stats.control_received == received + 1
    assert sum(core.values()) + sum(at_channel.values()) == 1, (core, at_channel)
    assert at_channel == {"unexpected": 1}


RELAY_ERRORS: dict[str, Error] = {
    "replayed": Error(ErrorCode.REPLAYED, MsgType.GOSSIP, "timestamp not new", 1),
    "resource_limit": Error(ErrorCode.RESOURCE_LIMIT, MsgType.DIGEST, "control rate limit"),
    "malformed": Error(ErrorCode.MALFORMED, MsgType.PULL, "trailing bytes"),
    "auth_failed": Error(ErrorCode.AUTH_FAILED, MsgType.LOCATION_STORE),
}
"""ERRORs any relay's admission answers another relay's request with
(admission.py; STALE_TIMESTAMP the channel counts itself)."""


@pytest.mark.parametrize("case", sorted(RELAY_ERRORS))
def test_an_error_a_relay_answers_with_is_not_counted_unexpected(case: str) -> None:
    """Found by the fuzzer right after dcedb3f (every fast run under every
    preset: the answers the corpus and the mutators seal as r1's ERRORs no
    longer reached ``_on_answer`` as taken; each now counted
    ``channel_unexpected``).

    r1, a relay the relay knows, answers on the relay's channel to it with
    an ERROR its admission sends any sender, relays too: REPLAYED, a
    RESOURCE_LIMIT from its per-relay token bucket, MALFORMED, AUTH_FAILED.
    dcedb3f made ``Federation._on_answer`` say False for any body it has no
    branch for, meant for those no relay sends another (REGISTERED,
    SESSION_OFFER, ...), and ERROR has none: the channel counts it as
    ``unexpected``, the reason for a body that should never come, so a
    neighbour rate-limiting us reads as one sending nonsense. Before
    dcedb3f it was taken (a sign of life, nothing more). It should be taken
    again, or counted under a reason of its own (as the channel already
    does for STALE_TIMESTAMP), but not as ``unexpected``. Fixed: taken, and
    counted as the federation event ``refused_<code>``."""
    w = world()
    r1 = w.relays[0]
    channel = w.relay.federation._channels[r1.identity.public]
    before = dict(channel.drops)
    answer = ControlDraft(
        int(MsgType.ERROR), FLAG_FROM_SERVER, r1.party.public, bytes(24), None,
        w.wall_us() + 1000, encode_body(RELAY_ERRORS[case]), r1.answers.tx,
    ).build()  # fmt: skip
    core = drops_for(w, answer, r1.addr)
    at_channel = grown(before, channel.drops)
    assert core == {}
    assert "unexpected" not in at_channel, at_channel
    assert w.relay.get_stats().federation.get(f"refused_{case}") == 1


# ---------------------------------------------------------------- client


def test_a_stale_timestamp_error_near_the_top_of_u64_cannot_break_the_link() -> None:
    """A relay's authenticated ERROR(STALE_TIMESTAMP, value=2**64 - 1) is
    accepted as the relay's clock; the next timestamp the link computes rounds
    to 2**64, and ``struct.error: int too large to convert`` escapes
    ``RelayLink.receive`` (via ``_resend``) and from then on every call that
    sends (``handle_timer``, ``ping``, ``connect``): the link is dead until
    the process restarts. A relay's clock value must be range-checked (or
    the offset bounded) like ``_fix_floor`` does for REPLAYED."""
    w = world()
    p0 = w.peer["p0"]
    p0.link.ping(w.now)  # a request of the type the error refers to
    p0.link.datagrams_to_send()
    error = Error(ErrorCode.STALE_TIMESTAMP, int(MsgType.PING), "", 2**64 - 1)
    p0.link.receive(from_relay(w, "p0", error), w.now)
    p0.link.ping(w.now)
    assert p0.link.datagrams_to_send()


def test_a_link_follows_the_relay_clock_back() -> None:
    """The relay's clock was 10 minutes fast, it said so (STALE_TIMESTAMP), then
    it was corrected and said so again. The link sets its offset back to 0 but
    ``Timestamper.next`` never returns less than its last value: every message
    is 10 minutes ahead, refused as stale, for 10 minutes (forever for a
    value far ahead). Meanwhile the relay's STALE_TIMESTAMP notices count as
    hearing from it, so the link stays REGISTERED and never notices that the
    relay dropped its registration and sessions."""
    w = world()
    p0 = w.peer["p0"]
    ahead = Error(ErrorCode.STALE_TIMESTAMP, int(MsgType.PING), "", w.wall_us() + 600_000_000)
    p0.link.receive(from_relay(w, "p0", ahead, 1), w.now)
    p0.link.ping(w.now)  # sent on the relay's fast clock
    p0.link.datagrams_to_send()
    right = Error(ErrorCode.STALE_TIMESTAMP, int(MsgType.PING), "", w.wall_us())
    p0.link.receive(from_relay(w, "p0", right, 2), w.now)
    assert abs(p0.link.clock_offset_s) < 1.0  # the offset did come back
    p0.link.datagrams_to_send()
    p0.link.ping(w.now)
    w.pump()
    assert p0.link.state == LinkState.REGISTERED
    assert p0.link.rtt_s is not None, "the relay refused our ping"


def test_a_session_id_offered_twice_leaves_no_dangling_session() -> None:
    """Two SESSION_OFFERs from the relay with one session id and two different
    initiators: ``sessions`` maps the id to the second peer while
    ``session_of`` still maps the first peer to it, so frames of one are
    taken for the other's, and closing the first later closes the second's
    session. (Needs a relay that reuses an id: a buggy or hostile one.)"""
    w = world()
    p0 = w.peer["p0"]
    sid = bytes.fromhex("00000000000000aa")
    q, r = PublicKey(w.by_name["s0"].public), PublicKey(w.by_name["s1"].public)
    p0.link.receive(from_relay(w, "p0", SessionOffer(sid, q), 1), w.now)
    p0.link.receive(from_relay(w, "p0", SessionOffer(sid, r), 2), w.now)
    assert p0.link.sessions[sid] == r
    for peer, s in p0.link.session_of.items():
        assert p0.link.sessions.get(s) == peer, f"session_of[{peer}] dangles"


def test_a_restarted_peer_whose_clock_was_ahead_can_move() -> None:
    """Found over UDP: p0's clock ran 100 s fast for a while (within the skew
    window, so the relay accepted its messages). p0 restarts with its clock
    right, behind a NAT that gave it a new port. Its REGISTER from there, with
    a valid cookie, passes the replay window (it is above the window's floor)
    but is older than the newest p0 message, so ``_bind_check`` drops it as
    ``stale_rebind`` and answers nothing: unlike after REPLAYED, the link
    cannot move its timestamps past ``newest``, and stays unregistered until
    its old registration expires (``registration_ttl_s``), its sessions with it."""
    w = world()
    peer = w.peer["p0"]
    peer.link.sync_wall(w.now, w.wall() + 100.0)  # its clock, 100 s fast
    for _ in range(20):
        w.advance(0.5)  # heartbeats: the relay's newest from p0 is 100 s ahead
    w.renew_link(peer)  # restarted, its clock right again
    del w.by_addr[peer.addr]
    peer.addr = ("198.51.100.10", 41234)  # and a new port from its NAT
    w.by_addr[peer.addr] = peer
    peer.link.connect(w.now)
    for _ in range(6):
        w.advance(0.5)
    assert w.relay.registered_addr(peer.pub) == peer.addr
