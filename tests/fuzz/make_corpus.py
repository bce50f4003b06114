"""Write the fuzzing corpus (tests/fuzz/corpus/), byte for byte the same every time.

    python -m tests.fuzz.make_corpus            write relay/, client/ and world.json
    python -m tests.fuzz.make_corpus --check    exit 1 if the files differ from a fresh build
    python -m tests.fuzz.make_corpus --explore N [--seed S]
        fuzz N inputs into each core (the relay under every preset) under line
        coverage and keep, in found/, every input that reached a line of
        src/wgrelay/{proto,relay,client} no earlier input reached (cov-*), a
        few inputs that hit each known bug (known-*) and every input behind
        a new finding (crash-*)

The seeds depend only on the wire format and the world's fixed keys
(world.py): each is sealed with a fixed nonce at a fixed time just after
``WALL0`` (the world's clock at its start), never taken from a running relay,
so a change inside the relay does not change them; a change of the wire
format does, like docs/PROTOCOL.md's vectors. Cookies in the seeds are made
with a fixed secret of their own: the fuzzer swaps in one the relay really
sent when it re-seals a seed. ``found/`` is only ever added to, under names
made from the content.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from tests.fuzz import seeds as corpus_io
from tests.fuzz.layout import ControlDraft, signed_location
from tests.fuzz.world import (
    ADDRESS_POOL,
    OWN_ADDRESSES,
    RELAY_SEED,
    RELAYS,
    UNKNOWN_RELAY,
    WALL0,
    WORLD_SEED,
    Party,
    all_parties,
    answer_keys,
    derive,
    relay_identity,
)
from wgrelay import xeddsa
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import (
    DIGEST_BUCKETS,
    MAX_DETAIL_LEN,
    MAX_REGION_LEN,
    PROTOCOL_VERSION,
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
    RTT_UNKNOWN,
    SERVER_TO_CLIENT,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import cookie_mac, encode_cookie_reply
from wgrelay.proto.data import encode_data
from wgrelay.proto.envelope import FLAG_COOKIE, FLAG_FROM_SERVER
from wgrelay.proto.federation import (
    Digest,
    DigestReply,
    Gossip,
    GossipAck,
    LegAnswer,
    LegClose,
    LegOpen,
    LocationAck,
    LocationStore,
    ProbeAnswer,
    ProbeRequest,
    Pull,
    PullReply,
)
from wgrelay.proto.leg_rtts import LegRttQuery, LegRttReply
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    PeerLocation,
    Ping,
    Pong,
    Punch,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionHold,
    SessionOffer,
    encode_body,
    mapping_probe,
)
from wgrelay.proto.receipts import (
    CLAIM_DOMAIN,
    RECEIPT_DOMAIN,
    Claim,
    CreditQuery,
    CreditReport,
    Receipt,
    ReceiptBody,
    ReceiptRequest,
    Receipts,
    ReceiptsAck,
    RelayEarning,
)
from wgrelay.proto.sealed import (
    ConnectionRequestSealed,
    LegOpenSealed,
    SessionOfferSealed,
    seal_for_exit,
    seal_for_peer,
)
from wgrelay.relay.admission import Addr

CORPUS_COOKIE_SECRET = derive("corpus cookie secret")
TS0 = int(WALL0 * 1_000_000) + 1_000
"""The seeds' timestamps: a millisecond after the world's start, one microsecond apart."""
MS0 = int(WALL0 * 1000)
"""When the seeds' announcements and location records are signed (Unix ms)."""
SID_A = bytes.fromhex("5e55104a00000001")
SID_B = bytes.fromhex("5e55104b00000002")
EPOCH = 0x0123456789ABCDEF

Entry = tuple[str, str, str, bytes, Addr | None]
"""(core, file name, kind, datagram, source address)."""


class _Sealer:
    """Fixed nonces and strictly increasing timestamps, in call order."""

    def __init__(self) -> None:
        self.n = 0

    def seal(
        self,
        body: Body,
        sender: bytes,
        key: bytes | None,
        *,
        cookie: bytes | None = None,
        msg_type: MsgType | None = None,
        flags: int | None = None,
    ) -> bytes:
        self.n += 1
        t = msg_type if msg_type is not None else body.TYPE
        if flags is None:
            flags = FLAG_FROM_SERVER if t in SERVER_TO_CLIENT else 0
        if cookie is not None:
            flags |= FLAG_COOKIE
        return ControlDraft(
            msg_type=int(t),
            flags=flags,
            sender=sender,
            nonce=hashlib.sha256(b"corpus nonce %d" % self.n).digest()[:24],
            cookie=cookie,
            ts=TS0 + self.n,
            body=encode_body(body),
            key=key,
        ).build()


def _announcement(
    ident: RelayIdentity,
    endpoints: tuple[Addr, ...] = OWN_ADDRESSES,
    issued_ms: int = MS0,
    ttl_s: int = 600,
) -> bytes:
    info = RelayNodeInfo(
        key=ident.public,
        endpoints=tuple((str(a[0]), int(a[1])) for a in endpoints),
        region="fuzz",
        capabilities=0x09 if ttl_s == 600 else 0x1F,
        load_pct=3,
        max_sessions=100,
        tcp_port=0 if ttl_s == 600 else 51820,
    )
    return encode_announcement(info, issued_ms, ttl_s, ident)


def _record(
    peer: bytes,
    home: RelayIdentity,
    issued_ms: int = MS0,
    ttl_s: int = 120,
    *,
    standby: bool = False,
    rtt_ms: int = RTT_UNKNOWN,
    flags: int | None = None,
) -> bytes:
    """A LOCATION record, by hand (so a ttl out of range or unknown flags can be signed too)."""
    return signed_location(
        peer, home, issued_ms, ttl_s, standby=standby, rtt_ms=rtt_ms, flags=flags
    )


def _records(peer: bytes, known: RelayIdentity) -> list[tuple[str, bytes]]:
    """One LOCATION record of each kind a holder must tell apart."""
    good = _record(peer, known)
    return [
        ("valid", good),
        ("forged", good[:-1] + bytes((good[-1] ^ 1,))),
        ("future", _record(peer, known, MS0 + 300_000)),
        ("expired", _record(peer, known, MS0 - 700_000, 600)),
        ("unknown_home", _record(peer, relay_identity("z"))),
        ("ttl_zero", _record(peer, known, MS0, 0)),
        ("ttl_too_long", _record(peer, known, MS0, 601)),
    ]


def _role_records(
    peer: bytes, known: RelayIdentity, other: RelayIdentity
) -> list[tuple[str, bytes]]:
    """LOCATION records of a peer's two places, in the order a holder gets
    them: its home's with its RTT, its standby's at another relay, the
    home relay's record turned standby (the same relay in the other role),
    and one with a flag bit nobody defined."""
    return [
        ("home_rtt", _record(peer, known, MS0 + 1, rtt_ms=23)),
        ("standby", _record(peer, other, MS0 + 1, standby=True, rtt_ms=41)),
        ("standby_same_relay", _record(peer, known, MS0 + 2, standby=True, rtt_ms=0)),
        ("unknown_flags", _record(peer, known, MS0 + 3, flags=0x02, rtt_ms=23)),
    ]


def _federation_requests(
    own: RelayIdentity, r1: RelayIdentity, r2: RelayIdentity, rb: RelayIdentity, peer: bytes
) -> list[tuple[str, Body]]:
    """What one relay asks another, one of each (and a few of the variants)."""
    anns = (_announcement(r1, (RELAYS[0][1],), MS0 + 1), _announcement(r2, (RELAYS[1][1],)))
    return [
        ("gossip", Gossip(anns, ((r2.public, MS0),))),
        ("gossip_empty", Gossip()),
        ("gossip_dead_notices", Gossip((), ((r2.public, MS0 + 5), (rb.public, MS0)))),
        ("gossip_expired", Gossip((_announcement(rb, (UNKNOWN_RELAY[1],), MS0 - 900_000),))),
        (
            "gossip_future_self_garbage",
            Gossip(
                (
                    _announcement(r2, (RELAYS[1][1],), MS0 + 300_000),
                    _announcement(own),
                    bytes((MsgType.ANNOUNCEMENT, PROTOCOL_VERSION)) + bytes(40),
                )
            ),
        ),
        ("digest", Digest(tuple((i, bytes([i]) * 8) for i in range(DIGEST_BUCKETS)))),
        ("pull", Pull((r1.public, r2.public, rb.public))),
        ("location_store", LocationStore(tuple(rec for _, rec in _records(peer, r1)))),
        ("probe_request", ProbeRequest(r2.public, 0x0102030405060708)),
        ("probe_request_self", ProbeRequest(r1.public, 9)),
        # multi-hop: a leg for a peer registered at the fuzzed relay, its
        # answer for a session of the corpus, a close
        ("leg_open", LegOpen(SID_B, PublicKey(bytes(range(32))), PublicKey(peer), 2, 52001)),
        ("leg_answer", LegAnswer(SID_A, Status.SUCCESS, 52002)),
        ("leg_close", LegClose(SID_A, CloseReason.PEER_GONE)),
        ("ping", Ping(0x5EED)),
        ("discovery_query_locate", DiscoveryQuery(11, 0, 0, locate=PublicKey(peer), page=0)),
        ("location_store_roles", LocationStore(tuple(r for _, r in _role_records(peer, r1, r2)))),
    ]


def _federation_answers(
    r1: RelayIdentity, r2: RelayIdentity, peer: bytes, other_peer: bytes
) -> list[tuple[str, Body]]:
    """What a relay answers another (FROM_SERVER), one of each; a lookup's
    answer also with the peer's standby as an alternate, and with a record
    of another peer than the one asked about."""
    where = PeerLocation(r1.public, ("192.0.2.2", 51820))
    standby = PeerLocation(r2.public, ("192.0.2.3", 51820))
    home_rec = _record(peer, r1, rtt_ms=23)
    standby_rec = _record(peer, r2, standby=True, rtt_ms=41)
    return [
        ("gossip_ack", GossipAck(1)),
        ("digest_reply", DigestReply(((r2.public, MS0 + 10), (r1.public, MS0)), 0x8001, False)),
        ("digest_reply_more", DigestReply(((r1.public, MS0),), 0xFFFF, True)),
        ("pull_reply", PullReply((_announcement(r2, (RELAYS[1][1],), MS0 + 2),))),
        ("location_ack", LocationAck(1)),
        ("probe_answer", ProbeAnswer(r2.public, 0x0102030405060708, True)),
        ("pong", Pong(0x5EED, 0)),
        ("discovery_response_record", DiscoveryResponse(11, (), where, _record(peer, r1))),
        ("discovery_response_more", DiscoveryResponse(11, (), None, None, True)),
        (
            "discovery_response_alternate",
            DiscoveryResponse(11, (), where, home_rec, False, standby, standby_rec),
        ),
        (
            "discovery_response_wrong_peer",
            DiscoveryResponse(11, (), where, _record(other_peer, r1, rtt_ms=23)),
        ),
        ("error", Error(ErrorCode.REPLAYED, int(MsgType.GOSSIP), "", TS0)),
    ]


def _relay_bodies(p1: bytes) -> list[tuple[str, Body]]:
    target = PublicKey(p1)
    accept = REGISTER_FLAG_ACCEPT_INCOMING
    return [
        ("register", Register(accept, 25)),
        ("heartbeat", Heartbeat(7)),
        ("connection_request", ConnectionRequest(42, target)),
        # multi-hop: through relay r2 (which the fuzzed relay knows)
        ("connection_request_via", ConnectionRequest(43, target, relay_identity("r2").public)),
        ("session_answer", SessionAnswer(SID_A, True)),
        ("session_close", SessionClose(SID_A, CloseReason.NORMAL)),
        ("session_hold", SessionHold(SID_A, 4)),
        ("punch", Punch(SID_A, 7)),
        ("ping", Ping(0x1122334455667788)),
        ("discovery_query", DiscoveryQuery(9, QUERY_FLAG_WANT_RELAYS, 6, 0, "fuzz", target, 1)),
        # how the relay lists a registration, and the RTT it signs into the record
        ("register_standby", Register(accept | REGISTER_FLAG_STANDBY, 25, 41)),
        ("register_unlisted", Register(accept | REGISTER_FLAG_UNLISTED, 25, 12)),
        ("heartbeat_rtt", Heartbeat(8, 23)),
    ]


def _client_bodies(
    home: Addr,
    p2: bytes,
    ann: bytes,
    relay_pub: bytes,
    record: bytes,
    alternate: PeerLocation,
    alternate_record: bytes,
) -> list[tuple[str, Body]]:
    """What a relay sends a peer; ``record`` is the relay's own for p1,
    ``alternate_record`` p1's standby at ``alternate``."""
    observed = (str(home[0]), int(home[1]))
    here = PeerLocation(PublicKey(relay_pub), ("192.0.2.1", 51820))
    bodies: list[tuple[str, Body]] = [
        ("registered", Registered(30, 5, EPOCH, observed)),
        ("registered_v6", Registered(30, 5, EPOCH, ("2001:db8:1::11", 40001))),
        ("heartbeat_ack", HeartbeatAck(1, HeartbeatStatus.OK, EPOCH)),
        ("heartbeat_ack_not_registered", HeartbeatAck(1, HeartbeatStatus.NOT_REGISTERED, EPOCH)),
        ("heartbeat_ack_new_epoch", HeartbeatAck(1, HeartbeatStatus.OK, EPOCH + 1)),
        ("session_offer", SessionOffer(SID_B, PublicKey(p2))),
        ("punch_go", Punch(SID_B, 7, True, (("198.51.100.7", 40001), ("203.0.113.9", 61820)))),
        ("session_close", SessionClose(SID_A, CloseReason.IDLE)),
        ("pong", Pong(0x1122334455667788, 12)),
        (
            "discovery_response",
            DiscoveryResponse(9, (ann,), PeerLocation(PublicKey(relay_pub), ("192.0.2.1", 51820))),
        ),
        ("discovery_response_empty", DiscoveryResponse(9)),
        ("discovery_response_record", DiscoveryResponse(9, (ann,), here, record, more=True)),
        (
            "discovery_response_alternate",
            DiscoveryResponse(9, (ann,), here, record, False, alternate, alternate_record),
        ),
        (
            "discovery_response_alternate_mismatch",
            DiscoveryResponse(9, (), here, record, False, alternate, record),
        ),
    ]
    bodies += [
        (f"connection_response_{s.name.lower()}", ConnectionResponse(42, s, SID_A, 180, 1000))
        for s in Status
    ]
    for code in ErrorCode:
        value = TS0 + 300_000_000 if code == ErrorCode.STALE_TIMESTAMP else 0
        value = TS0 - 1 if code == ErrorCode.REPLAYED else value
        bodies.append((f"error_{code.name.lower()}", Error(code, int(MsgType.PING), "", value)))
    bodies.append(("error_long_detail", Error(ErrorCode.MALFORMED, 0x20, "d" * MAX_DETAIL_LEN)))
    return bodies


def entries() -> list[Entry]:
    """Every seed, in a fixed order."""
    ident = RelayIdentity.from_seed(RELAY_SEED)
    parties = {p.name: p for p in all_parties(ident)}
    s = _Sealer()
    out: list[Entry] = []

    def to_relay(name: str, kind: str, data: bytes, src: Addr | None) -> None:
        out.append(("relay", f"{name}.hex", kind, data, src))

    def key(p: Party) -> bytes | None:
        return p.to_relay

    p0, p1, s0, d0 = parties["p0"], parties["p1"], parties["s0"], parties["d0"]
    relay_bodies = _relay_bodies(p1.public)
    for name, body in relay_bodies:
        to_relay(
            f"{name}-p0-home",
            f"control/{name}/registered",
            s.seal(body, p0.public, key(p0)),
            p0.home,
        )
        to_relay(
            f"{name}-s0", f"control/{name}/stranger", s.seal(body, s0.public, key(s0)), s0.home
        )
        cookie = cookie_mac(CORPUS_COOKIE_SECRET, s0.public, (str(s0.home[0]), int(s0.home[1])))
        data = s.seal(body, s0.public, key(s0), cookie=cookie)
        to_relay(f"{name}-s0-cookie", f"control/{name}/stranger-cookie", data, s0.home)
    for name, body in relay_bodies[:2]:
        to_relay(f"{name}-p1-v6", f"control/{name}/ipv6", s.seal(body, p1.public, key(p1)), p1.home)
        to_relay(f"{name}-d0", f"control/{name}/denied", s.seal(body, d0.public, key(d0)), d0.home)
    register = Register(REGISTER_FLAG_ACCEPT_INCOMING, 25)
    for who in ("self", "zero", "low", "x0"):
        p = parties[who]
        to_relay(
            f"register-{who}", f"control/register/{who}", s.seal(register, p.public, key(p)), p.home
        )
    for i, src in enumerate(ADDRESS_POOL[12:]):
        to_relay(
            f"ping-p0-from-pool{i:02d}",
            "control/ping/elsewhere",
            s.seal(Ping(i), p0.public, key(p0)),
            src,
        )
    # server-to-client bodies sent to the relay: right flag with the peer's keys, and wrong flag
    ann = _announcement(ident)
    one_of_each: dict[MsgType, tuple[str, Body]] = {}
    record = _record(parties["p1"].public, ident, rtt_ms=23)
    r1, r2, rb = (relay_identity(n) for n in ("r1", "r2", "rb"))
    alternate = PeerLocation(r1.public, ("192.0.2.2", 51820))
    standby = _record(parties["p1"].public, r1, standby=True, rtt_ms=41)
    client_bodies = _client_bodies(
        p0.home, parties["p2"].public, ann, ident.public.raw, record, alternate, standby
    )
    for name, body in client_bodies:
        one_of_each.setdefault(body.TYPE, (name, body))
    for name, body in one_of_each.values():
        to_relay(
            f"s2c-{name}", f"control/{name}/to-relay", s.seal(body, p0.public, key(p0)), p0.home
        )
        data = s.seal(body, p0.public, key(p0), flags=0)
        to_relay(f"s2c-{name}-wrong-direction", f"control/{name}/wrong-direction", data, p0.home)
    edge_query = DiscoveryQuery(
        0xFFFFFFFF, 0xFD, 255, 0xFFFFFFFF, "r" * MAX_REGION_LEN, None, 0xFFFF
    )
    to_relay(
        "discovery_query-edges",
        "control/discovery_query/edges",
        s.seal(edge_query, p0.public, key(p0)),
        p0.home,
    )
    # the federation: what r1 and r2 (relays the fuzzed relay knows) ask it,
    # from their announced address, without and with a cookie; the same from
    # rb (a relay it does not know: its GOSSIP of its own announcement
    # introduces it) and from p0 (no relay at all)
    pr1, prb = parties["r1"], parties["rb"]
    requests = _federation_requests(ident, r1, r2, rb, p1.public)
    r1_home = (str(pr1.home[0]), int(pr1.home[1]))
    for name, body in requests:
        to_relay(f"{name}-r1", f"relay/{name}/known", s.seal(body, pr1.public, key(pr1)), pr1.home)
        cookie = cookie_mac(CORPUS_COOKIE_SECRET, pr1.public, r1_home)
        data = s.seal(body, pr1.public, key(pr1), cookie=cookie)
        to_relay(f"{name}-r1-cookie", f"relay/{name}/known-cookie", data, pr1.home)
    for name, body in requests[5:9]:
        data = s.seal(body, prb.public, key(prb))
        to_relay(f"{name}-rb", f"relay/{name}/unknown-relay", data, prb.home)
        data = s.seal(body, p0.public, key(p0))
        to_relay(f"{name}-p0", f"relay/{name}/not-a-relay", data, p0.home)
    introduce = Gossip((_announcement(rb, (UNKNOWN_RELAY[1],)),))
    to_relay(
        "gossip-rb-introduces",
        "relay/gossip/introduces",
        s.seal(introduce, prb.public, key(prb)),
        prb.home,
    )
    # answers to the fuzzed relay's own channels (FROM_SERVER, r1's side of them)
    from_r1 = answer_keys("r1", ident).tx
    for name, body in _federation_answers(r1, r2, p1.public, s0.public):
        data = s.seal(body, pr1.public, from_r1, flags=FLAG_FROM_SERVER)
        to_relay(f"answer-{name}-r1", f"answer/{name}", data, pr1.home)
    data = s.seal(GossipAck(0), prb.public, answer_keys("rb", ident).tx, flags=FLAG_FROM_SERVER)
    to_relay("answer-gossip_ack-rb", "answer/gossip_ack/no-channel", data, prb.home)
    # locates and pages, from peers and from a relay
    s0_key = PublicKey(s0.public)
    queries = [
        ("p0", "page2", DiscoveryQuery(21, QUERY_FLAG_WANT_RELAYS, 1, page=2)),
        ("p0", "last_page", DiscoveryQuery(22, QUERY_FLAG_WANT_RELAYS, 2, page=0xFFFF)),
        ("p0", "locate_registered", DiscoveryQuery(23, 0, 0, locate=PublicKey(p1.public))),
        ("p0", "locate_unknown", DiscoveryQuery(24, QUERY_FLAG_WANT_RELAYS, 6, locate=s0_key)),
        ("s0", "locate_unknown", DiscoveryQuery(25, 0, 0, locate=PublicKey(p0.public))),
        ("r1", "locate_unknown", DiscoveryQuery(26, QUERY_FLAG_WANT_RELAYS, 6, locate=s0_key)),
    ]
    for who, name, query in queries:
        p = parties[who]
        data = s.seal(query, p.public, key(p))
        to_relay(f"discovery_query-{name}-{who}", f"control/discovery_query/{name}", data, p.home)
    for name, rec in [*_records(p1.public, r1), *_role_records(p1.public, r1, r2)]:
        to_relay(f"raw-location-{name}", f"raw/location/{name}", rec, ADDRESS_POOL[0])
    # data frames
    wg = bytes((4, 0, 0, 0))
    frames = {
        "keepalive": encode_data(SID_A, wg + bytes(28)),
        "initiation": encode_data(SID_A, bytes((1, 0, 0, 0)) + bytes(144)),
        "mtu": encode_data(SID_A, wg + bytes(1448)),
        "jumbo": encode_data(SID_A, wg + bytes(9212)),
        "not_wireguard": encode_data(SID_A, bytes((0x45,)) + bytes(40)),
        "tiny": encode_data(SID_A, wg),
        "header_only": encode_data(SID_A, b""),
        "short": encode_data(SID_A, b"")[:9],
    }
    for name, frame in frames.items():
        out.append(("relay", f"data-{name}.hex", f"data/{name}", frame, p0.home))
    out.append(
        (
            "relay",
            "data-keepalive-spoofed.hex",
            "data/spoofed",
            frames["keepalive"],
            ADDRESS_POOL[0],
        )
    )
    raw = {
        "announcement": ann,
        "cookie_reply": encode_cookie_reply(bytes(8), bytes(16)),
        "mapping_probe": mapping_probe(SID_A),
        "wg_initiation": bytes((1, 0, 0, 0)) + bytes(144),
        "wg_cookie": bytes((3, 0, 0, 0)) + bytes(60),
        "empty": b"",
        "register_type_only": bytes((MsgType.REGISTER,)),
        "register_header_only": bytes((MsgType.REGISTER, 1)),
    }
    for name, data in raw.items():
        out.append(("relay", f"raw-{name}.hex", f"raw/{name}", data, ADDRESS_POOL[0]))

    # the client side: what p0's relay sends it
    relay_pub = ident.x25519_public
    to_p0 = p0.from_relay
    for name, body in client_bodies:
        out.append(
            ("client", f"{name}.hex", f"control/{name}", s.seal(body, relay_pub, to_p0), None)
        )
    out += _private_offers(s, ident, parties)
    for name, body in relay_bodies:
        data = s.seal(body, relay_pub, to_p0, flags=FLAG_FROM_SERVER)
        out.append(("client", f"c2s-{name}.hex", f"control/{name}/from-relay", data, None))
    ping = Pong(1, 0)
    out.append(
        (
            "client",
            "pong-wrong-sender.hex",
            "control/pong/wrong-sender",
            s.seal(ping, p1.public, to_p0),
            None,
        )
    )
    out.append(
        (
            "client",
            "pong-for-p1.hex",
            "control/pong/for-p1",
            s.seal(ping, relay_pub, p1.from_relay),
            None,
        )
    )
    echo = hashlib.sha256(b"corpus nonce 1").digest()[:8]
    out.append(
        (
            "client",
            "cookie_reply.hex",
            "cookie_reply",
            encode_cookie_reply(echo, bytes(range(16))),
            None,
        )
    )
    for name, body in [
        *(
            (n, b)
            for n, b in _federation_requests(ident, r1, r2, rb, p1.public)
            if n
            in (
                "gossip",
                "digest",
                "pull",
                "location_store",
                "probe_request",
                "leg_open",
                "leg_answer",
                "leg_close",
            )
        ),
        *_federation_answers(r1, r2, p1.public, s0.public),
    ]:
        data = s.seal(body, relay_pub, to_p0, flags=FLAG_FROM_SERVER)
        out.append(("client", f"r2r-{name}.hex", f"relay/{name}/to-peer", data, None))
    out.append(("client", "announcement.hex", "raw/announcement", ann, None))
    out.append(("client", "location.hex", "raw/location", record, None))
    out.append(("client", "location-standby.hex", "raw/location/standby", standby, None))
    out.append(("client", "data-keepalive.hex", "raw/data", frames["keepalive"], None))
    out.append(("client", "mapping_probe.hex", "raw/mapping_probe", mapping_probe(SID_A), None))
    out += _private_paths(s, ident, parties)
    out += _leg_rtts(ident, parties)
    out += _credits(ident, parties)
    return out


def _private_offers(s: _Sealer, ident: RelayIdentity, parties: dict[str, Party]) -> list[Entry]:
    """A private offer to p0 from p2: a box p0 opens, and one it cannot
    (fixed ephemeral keys: the corpus regenerates byte for byte)."""
    p0, p2 = parties["p0"], parties["p2"]
    theirs = seal_for_peer(PublicKey(p2.public), PublicKey(p2.public), ident.public, MS0, bytes(32))
    ours = seal_for_peer(PublicKey(p0.public), PublicKey(p2.public), ident.public, MS0, bytes(32))
    out: list[Entry] = []
    for name, body in (
        ("session_offer_sealed-opens", SessionOfferSealed(SID_A, ours)),
        ("session_offer_sealed-not-ours", SessionOfferSealed(SID_B, theirs)),
    ):
        data = s.seal(body, ident.x25519_public, p0.from_relay)
        out.append(("client", f"private-{name}.hex", f"control/{name}", data, None))
    return out


def _private_paths(s: _Sealer, ident: RelayIdentity, parties: dict[str, Party]) -> list[Entry]:
    """Private paths (proto/sealed.py), sealed last so that no earlier seed
    changes: p0 asks the fuzzed relay (its entry) for p1 through r2; r1 asks
    it (the exit) to carry a session to p1, whose box it opens; the fuzzed
    relay offers p0 a session from p2 (a box p0 opens, and one it cannot).
    Boxes from fixed ephemeral keys: the corpus regenerates byte for byte."""
    p0, p1, p2, pr1 = (parties[n] for n in ("p0", "p1", "p2", "r1"))
    r2 = relay_identity("r2")

    def box(exit_relay: RelayIdentity, target: bytes, initiator: bytes) -> bytes:
        inner = seal_for_peer(
            PublicKey(target), PublicKey(initiator), exit_relay.public, MS0, bytes(32)
        )
        return seal_for_exit(exit_relay.public, PublicKey(target), inner, MS0, bytes([1]) * 32)

    request = ConnectionRequestSealed(44, r2.public, box(r2, p1.public, p0.public))
    leg_open = LegOpenSealed(SID_B, box(ident, p1.public, p2.public))
    theirs = seal_for_peer(PublicKey(p2.public), PublicKey(p2.public), ident.public, MS0, bytes(32))
    relay_pub = ident.x25519_public
    to_p0 = p0.from_relay
    out: list[Entry] = [
        (
            "relay",
            "private-connection_request_sealed-p0-home.hex",
            "control/connection_request_sealed/registered",
            s.seal(request, p0.public, p0.to_relay),
            p0.home,
        ),
        (
            "relay",
            "private-leg_open_sealed-r1.hex",
            "relay/leg_open_sealed/known",
            s.seal(leg_open, pr1.public, pr1.to_relay),
            pr1.home,
        ),
        (
            "relay",
            "private-session_offer_sealed-to-relay.hex",
            "control/session_offer_sealed/to-relay",
            s.seal(SessionOfferSealed(SID_B, theirs), p0.public, p0.to_relay),
            p0.home,
        ),
    ]
    for name, body, flags in (
        ("connection_request_sealed-from-relay", request, FLAG_FROM_SERVER),
        ("leg_open_sealed-from-relay", leg_open, FLAG_FROM_SERVER),
    ):
        data = s.seal(body, relay_pub, to_p0, flags=flags)
        out.append(("client", f"private-{name}.hex", f"control/{name}", data, None))
    return out


def _leg_rtts(ident: RelayIdentity, parties: dict[str, Party]) -> list[Entry]:
    """Whole-path choice (proto/leg_rtts.py), sealed by a sealer of their own
    (timestamps above the main seeds', below the credit seeds'): p0 asks the
    fuzzed relay which relays it carries legs to, and the relay answers (r1
    measured, r2 not yet); each also the wrong way (an answer to the relay, a
    query from it). The link's clock is put back on the relay's first
    (earlier seeds moved it), so the answer arrives in time when the corpus
    is replayed in order; so does a PUNCH (the main seeds' one arrives while
    the link's clock is off: only the random inputs reached the handler)."""
    s = _Sealer()
    s.n = 40_000
    p0 = parties["p0"]
    query = LegRttQuery(45)
    reply = LegRttReply(
        45, ((relay_identity("r1").public, 22), (relay_identity("r2").public, 0xFFFF))
    )
    relay_pub, to_p0 = ident.x25519_public, p0.from_relay
    in_step = Error(ErrorCode.STALE_TIMESTAMP, int(MsgType.PING), "", TS0 + 40_000)
    punch = Punch(SID_B, 8, True, (("198.51.100.7", 40001), ("203.0.113.9", 61820)))
    return [
        ("relay", "legs-leg_rtt_query-p0-home.hex", "control/leg_rtt_query/registered",
         s.seal(query, p0.public, p0.to_relay), p0.home),
        ("relay", "legs-leg_rtt_reply-to-relay.hex", "control/leg_rtt_reply/to-relay",
         s.seal(reply, p0.public, p0.to_relay), p0.home),
        ("client", "legs-clock.hex", "control/clock", s.seal(in_step, relay_pub, to_p0), None),
        ("client", "legs-leg_rtt_reply.hex", "control/leg_rtt_reply",
         s.seal(reply, relay_pub, to_p0), None),
        ("client", "legs-leg_rtt_query-from-relay.hex", "control/leg_rtt_query",
         s.seal(query, relay_pub, to_p0, flags=FLAG_FROM_SERVER), None),
        ("client", "legs-punch_go.hex", "control/punch_go", s.seal(punch, relay_pub, to_p0), None),
    ]  # fmt: skip


def _credits(ident: RelayIdentity, parties: dict[str, Party]) -> list[Entry]:
    """Credits (proto/receipts.py), sealed by a sealer of their own (nonces and
    timestamps far above the others', so that adding seeds elsewhere changes
    none of these): p0's receipt and balance query to the fuzzed relay, r1's
    RECEIPTS and its answer to our RECEIPTS; the relay's request, report and
    ack to p0; each also the wrong way. Signatures from fixed randomness."""
    s = _Sealer()
    s.n = 50_000
    p0, pr1 = parties["p0"], parties["r1"]
    assert p0.private is not None
    peer = PublicKey(p0.public)
    unsigned = Receipt(ident.public, peer, SID_A, 2, 123_456, MS0)
    rsig = xeddsa.sign(p0.private, RECEIPT_DOMAIN + unsigned.signed_part(), bytes(64))
    receipt = Receipt(ident.public, peer, SID_A, 2, 123_456, MS0, rsig)
    unclaimed = Claim(peer, ident.public, MS0, bytes(64))
    csig = xeddsa.sign(p0.private, CLAIM_DOMAIN + unclaimed.member_part(), bytes(64))
    claim = Claim(peer, ident.public, MS0, csig).endorsed_by(ident)
    query = CreditQuery(46, peer)
    request = ReceiptRequest(SID_A, 3, 200_000)
    report = CreditReport(46, peer, 30, 123_456, 0, 0, (RelayEarning(ident.public, 123_456, 1),))
    batch = Receipts((receipt,), (claim,))
    ack = ReceiptsAck(1, 0)
    relay_pub, to_p0 = ident.x25519_public, p0.from_relay
    out: list[Entry] = [
        ("relay", "credits-receipt-p0-home.hex", "control/receipt/registered",
         s.seal(ReceiptBody(receipt), p0.public, p0.to_relay), p0.home),
        ("relay", "credits-credit_query-p0-home.hex", "control/credit_query/registered",
         s.seal(query, p0.public, p0.to_relay), p0.home),
        ("relay", "credits-receipts-r1.hex", "relay/receipts/known",
         s.seal(batch, pr1.public, pr1.to_relay), pr1.home),
        ("relay", "credits-answer-receipts_ack-r1.hex", "answer/receipts_ack",
         s.seal(ack, pr1.public, answer_keys("r1", ident).tx, flags=FLAG_FROM_SERVER), pr1.home),
    ]  # fmt: skip
    wrong_way: tuple[tuple[str, Body], ...] = (
        ("receipt_request", request),
        ("credit_report", report),
    )  # (RECEIPTS_ACK reaches it as an answer above)
    for name, body in wrong_way:
        data = s.seal(body, p0.public, p0.to_relay)
        kind = f"control/{name}/to-relay"
        out.append(("relay", f"credits-{name}-to-relay.hex", kind, data, p0.home))
    # the link's clock back on the relay's first (earlier seeds moved it):
    # the seeds below arrive in time when the corpus is replayed in order
    in_step = Error(ErrorCode.STALE_TIMESTAMP, int(MsgType.PING), "", TS0 + 50_000)
    to_client: tuple[tuple[str, Body, int | None], ...] = (
        ("clock", in_step, None),
        ("receipts_ack", ack, None),
        ("receipt_request", request, None),
        ("receipts-from-relay", batch, FLAG_FROM_SERVER),
        ("credit_query-from-relay", query, FLAG_FROM_SERVER),
        ("credit_report", report, None),
        ("receipt-from-relay", ReceiptBody(receipt), FLAG_FROM_SERVER),
    )
    for name, body, flags in to_client:
        data = s.seal(body, relay_pub, to_p0, flags=flags)
        out.append(("client", f"credits-{name}.hex", f"control/{name}", data, None))
    return out


def world_json() -> str:
    ident = RelayIdentity.from_seed(RELAY_SEED)
    doc: dict[str, Any] = {
        "about": "keys, addresses and clock of tests/fuzz/world.py; the seeds are sealed with them",
        "wall0": WALL0,
        "seeds_timestamp_us": TS0,
        "world_seed": WORLD_SEED,
        "relay_seed": RELAY_SEED.hex(),
        "relay_public": str(ident.public),
        "relay_x25519_public": ident.x25519_public.hex(),
        "own_addresses": [list(a) for a in OWN_ADDRESSES],
        "corpus_cookie_secret": CORPUS_COOKIE_SECRET.hex(),
        "parties": [
            {
                "name": p.name,
                "private": p.private.hex() if p.private is not None else None,
                "public": p.public.hex(),
                "home": list(p.home),
            }
            for p in all_parties(ident)
        ],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def files() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    out = {"world.json": world_json()}
    index: Counter[str] = Counter()
    for core, name, kind, data, src in entries():
        # numbered in the order they were sealed: loaded in that order, a
        # peer's seeds arrive with increasing timestamps
        index[core] += 1
        path = f"{core}/{index[core]:03d}-{name}"
        if path in out:
            raise RuntimeError(f"two seeds named {path}")
        out[path] = corpus_io.encode_seed(kind, data, src)
    return out


def write(root: Path) -> None:
    wanted = files()
    for core in corpus_io.CORES:
        d = root / core
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.hex"):
            if f"{core}/{old.name}" not in wanted:
                old.unlink()
    for rel, text in wanted.items():
        (root / rel).write_text(text)


def check(root: Path) -> list[str]:
    """What differs between ``root`` and a fresh build (nothing: [])."""
    wanted = files()
    problems = []
    for rel, text in wanted.items():
        path = root / rel
        if not path.exists():
            problems.append(f"missing {rel}")
        elif path.read_text() != text:
            problems.append(f"differs {rel}")
    for core in corpus_io.CORES:
        extra = [p.name for p in sorted((root / core).glob("*.hex"))]
        problems += [f"extra {core}/{n}" for n in extra if f"{core}/{n}" not in wanted]
    return problems


# ---------------------------------------------------------------- exploring


class LineCoverage:
    """Lines of the fuzzed code reached so far (sys.settrace: slow, explore only)."""

    def __init__(self) -> None:
        import wgrelay

        base = Path(wgrelay.__file__).parent
        self.prefixes = tuple(str(base / d) for d in ("proto", "relay", "client"))
        self.seen: set[tuple[str, int]] = set()
        self._new = False

    def _global(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if frame.f_code.co_filename.startswith(self.prefixes):
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno)
            if key not in self.seen:
                self.seen.add(key)
                self._new = True
        return self._local

    def __call__(self, thunk: Callable[[], object]) -> bool:
        self._new = False
        sys.settrace(self._global)
        try:
            thunk()
        finally:
            sys.settrace(None)
        return self._new


def explore(inputs: int, seed: int, root: Path) -> Iterator[str]:
    from tests.fuzz.fuzzer import fuzz_client, fuzz_relay

    saved: list[Path] = []
    known: Counter[str] = Counter()

    def keep(core: str, kind: str, data: bytes, src: Addr | None) -> None:
        tag = "cov"
        if kind.startswith("known:"):
            known[kind] += 1
            if known[kind] > 3:
                return  # a few of each known bug are enough
            tag = "known"
        path = corpus_io.save_found(core, tag, kind, data, src, root)
        if path is not None:
            saved.append(path)

    from tests.fuzz.fuzzer import PRESETS

    runs: list[tuple[str, str]] = [("relay", p) for p in PRESETS] + [("client", "deep")]
    coverage = {core: LineCoverage() for core in corpus_io.CORES}
    for core, preset in runs:
        cov = coverage[core]
        seeds = corpus_io.load(core, root)
        if core == "relay":
            report = fuzz_relay(
                inputs, seed, preset, corpus=seeds, coverage=cov, found=keep, world_seed=WORLD_SEED
            )
        else:
            report = fuzz_client(
                inputs, seed, corpus=seeds, coverage=cov, found=keep, world_seed=WORLD_SEED
            )
        for f in report.findings:
            path = corpus_io.save_found(f.core, "crash", f.rule, f.data, f.src, root)
            if path is not None:
                saved.append(path)
        yield f"{report.summary()}\n  {len(cov.seen)} lines reached"
    yield f"{len(saved)} new inputs in {root / 'found'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.make_corpus")
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    ap.add_argument("--explore", type=int, metavar="N", help="fuzz N inputs a core, keep finds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", type=Path, default=corpus_io.CORPUS_DIR)
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for p in problems:
            print(p)
        return 1 if problems else 0
    if args.explore:
        if os.environ.get("PYTHONHASHSEED") != "0":
            # the relay iterates sets of keys: fix their order so a run repeats
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            argv = [sys.executable, "-m", "tests.fuzz.make_corpus", *sys.argv[1:]]
            os.execve(sys.executable, argv, env)  # noqa: S606 (our own interpreter, no shell)
        import logging

        logging.disable(logging.WARNING)
        for line in explore(args.explore, args.seed, args.root):
            print(line)
        return 0
    write(args.root)
    print(f"wrote {len(files())} files to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
