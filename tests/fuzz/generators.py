"""Generators of valid datagrams of every kind, with real keys and live values.

``RelayInputs`` speaks to the relay as any party of the world (registered
peers from their registered address or elsewhere, strangers, a refused key,
the relay's own key, weak keys): every control body type, with a cookie when
the relay already sent one for that key and address (so strangers do get
registered and reach the handlers), data frames for live, pending and unknown
sessions, announcements, cookie replies, WireGuard's own packets.

It also speaks as the other relays of the federation: relay-to-relay
requests (GOSSIP, DIGEST, PULL, LOCATION_STORE, PROBE_REQUEST, and the
PINGs and locates relays send) sealed by r1 and r2, which the relay knows,
and by rb, which it does not until it introduces itself; and answers to
what the relay itself asked them (PONG, GOSSIP_ACK, DIGEST_REPLY,
PULL_REPLY, LOCATION_ACK, PROBE_ANSWER, DISCOVERY_RESPONSE and cookie
replies), sealed FROM_SERVER on the relay's own channels with the echo
ids, nonces, query ids and keys it really sent (learned by opening what it
sends them). Signed announcements and LOCATION records come valid, newer,
replayed, forged, future-dated, expired, of an unknown home relay; records
as a home or a standby, with the peer's RTT or "unknown", some with flag
bits nobody defined. REGISTERs ask to be listed as home, standby or not at
all, REGISTERs and HEARTBEATs report RTTs, and a DISCOVERY_RESPONSE may
offer an alternate place (the peer's standby) with its own record.

``LinkInputs`` speaks to one link as its relay: every body type sealed with
the relay's keys for that peer, carrying the request ids, heartbeat
sequence numbers, ping echoes, query ids and nonces the link really sent
(learned by opening what it sends), so the answers match what it waits for.

Both serve as the mutators' ``Context``: the values that make a mutated
field interesting come from the world's live state.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.exceptions

from tests.fuzz.layout import (
    LOCATION_SIGNED,
    ControlDraft,
    DataDraft,
    Draft,
    RawDraft,
    open_draft,
    signed_location,
)
from tests.fuzz.oracle import host_port
from tests.fuzz.world import (
    ADDRESS_POOL,
    RELAYS,
    UNKNOWN_RELAY,
    WALL0,
    Party,
    Peer,
    World,
    answer_keys,
    make_party,
    party_named,
    relay_identity,
)
from wgrelay.endpoint import Endpoint
from wgrelay.errors import InvalidKey, RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity, clamp
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import (
    BOTH_DIRECTIONS,
    CONTROL_TYPES,
    DIGEST_BUCKETS,
    MAX_PULL_KEYS,
    MAX_RECORDS_PER_MESSAGE,
    MAX_REGION_LEN,
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
    RELAY_TO_RELAY,
    RTT_UNKNOWN,
    SERVER_TO_CLIENT,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import encode_cookie_reply
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
    MAX_HOLD_S,
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
    decode_body,
    encode_body,
)
from wgrelay.proto.receipts import (
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
    EXIT_SEALED_LEN,
    PEER_SEALED_LEN,
    ConnectionRequestSealed,
    LegOpenSealed,
    SessionOfferSealed,
    seal_for_exit,
    seal_for_peer,
)
from wgrelay.relay.admission import Addr

CLIENT_TYPES = sorted(t for t in CONTROL_TYPES if t not in SERVER_TO_CLIENT)
SERVER_TYPES = sorted(SERVER_TO_CLIENT)
ALL_TYPES = sorted(CONTROL_TYPES)
PEER_TYPES = [t for t in CLIENT_TYPES if t not in RELAY_TO_RELAY]
PEER_ANSWERS = [t for t in SERVER_TYPES if t not in RELAY_TO_RELAY] + sorted(BOTH_DIRECTIONS)
"""What a relay sends its peers (the rest of SERVER_TYPES only other relays),
and what either side sends (SESSION_CLOSE, PUNCH): a PUNCH came only from the
15 % of picks among every type, and reached the link a few times a run, or
not at all as more types came."""
RELAY_REQUESTS = [
    *(t for t in CLIENT_TYPES if t in RELAY_TO_RELAY),
    MsgType.GOSSIP,
    MsgType.GOSSIP,
    MsgType.LOCATION_STORE,
    MsgType.PING,
    MsgType.DISCOVERY_QUERY,
]
"""What one relay asks another (as the client of a channel; gossip and
records, which carry the most to check, more often)."""
RELAY_ANSWERS = [
    *(t for t in SERVER_TYPES if t in RELAY_TO_RELAY),
    MsgType.PONG,
    MsgType.DISCOVERY_RESPONSE,
    MsgType.ERROR,
]
"""What a relay answers another (FROM_SERVER)."""
OTHER_RELAY = relay_identity(UNKNOWN_RELAY[0])
"""A relay identity the fuzzer holds that the fuzzed relay does not know."""
NOBODY = relay_identity("z")
"""A relay identity nobody knows or ever announces (an unknown home relay)."""
RELAY_NAMES = (*(n for n, _ in RELAYS), UNKNOWN_RELAY[0])
REGIONS = ("", "fuzz", "eu-west", "x" * MAX_REGION_LEN, "é" * 16, "\x00")
_ACCEPT, _STANDBY, _UNLISTED = (
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
)
REGISTER_FLAGS = (
    0,
    _ACCEPT,
    _ACCEPT,
    _ACCEPT,
    _ACCEPT | _STANDBY,
    _ACCEPT | _STANDBY,
    _ACCEPT | _UNLISTED,
    _ACCEPT | _STANDBY | _UNLISTED,
    _STANDBY,
    _UNLISTED,
    0xFF,
)
"""Home (accept), standby, unlisted, both, either without accept, unknown bits."""
RECORD_KINDS = ("valid",) * 3 + ("future", "expired", "unknown_home", "forged", "ttl", "flags")
"""What a generated LOCATION record is like (mostly valid)."""

_CREDIT_TYPES = frozenset(
    {
        MsgType.RECEIPT_REQUEST,
        MsgType.RECEIPT,
        MsgType.CREDIT_QUERY,
        MsgType.CREDIT_REPORT,
        MsgType.RECEIPTS,
        MsgType.RECEIPTS_ACK,
        MsgType.LEG_RTT_QUERY,
        MsgType.LEG_RTT_REPLY,
    }
)
"""Made by ``credit_body`` (with the whole-path RTT messages, as small)."""


def wg_payload(rng: random.Random, size: int | None = None) -> bytes:
    """Something shaped like a WireGuard message (types 1-4, >= 32 bytes)."""
    n = size if size is not None else rng.choice([32, 32, 64, 92, 148, 1452, rng.randint(32, 1500)])
    return bytes((rng.choice([1, 2, 3, 4]), 0, 0, 0)) + rng.randbytes(max(0, n - 4))


def endpoint(rng: random.Random) -> Endpoint:
    return rng.choice(
        [
            ("198.51.100.10", 40000),
            ("2001:db8:1::11", 40001),
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            ("::", 1),
            (f"10.{rng.randrange(256)}.{rng.randrange(256)}.1", rng.randrange(65536)),
        ]
    )


_SEALED_TYPES = frozenset(
    {MsgType.CONNECTION_REQUEST_SEALED, MsgType.LEG_OPEN_SEALED, MsgType.SESSION_OFFER_SEALED}
)


def rng_choice_relay(rng: random.Random, idents: dict[str, RelayIdentity]) -> PublicKey:
    return rng.choice([idents[n] for n in sorted(idents)]).public


class _Common:
    """Values both generators draw on (the mutators' Context)."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.src: Addr = ADDRESS_POOL[0]
        self.vary_announcement: Callable[[bytes], bytes] | None = None
        """Mutates an announcement along its layout (set by the fuzzer)."""
        self.nonces: deque[bytes] = deque(maxlen=64)
        self.closed_sids: deque[bytes] = deque(maxlen=16)
        self.idents = {n: relay_identity(n) for n in RELAY_NAMES}
        self.relay_keys = [
            world.identity.public.raw,
            *(i.public.raw for i in self.idents.values()),
            NOBODY.public.raw,
        ]
        self.announcement = encode_announcement(
            RelayNodeInfo(
                key=world.identity.public,
                endpoints=(("192.0.2.1", 51820), ("2001:db8::1", 51820)),
                region="fuzz",
                capabilities=0x1F,
                load_pct=3,
                max_sessions=100,
                tcp_port=51820,
            ),
            int(WALL0 * 1000),
            600,
            world.identity,
        )

    # ------------------------------------------------------------ Context

    def now_us(self) -> int:
        return self.world.wall_us()

    def some_key(self) -> bytes:
        w, rng = self.world, self.rng
        if rng.random() < 0.15:  # a relay's Ed25519 key (relay-to-relay bodies name relays)
            return rng.choice(self.relay_keys)
        pick = rng.randrange(10)
        if pick < 4 and w.relay.table.regs:
            return rng.choice(list(w.relay.table.regs))
        if pick < 7:
            return rng.choice(w.parties).public
        if pick == 7:
            return w.identity.public.raw
        if pick == 8:
            return w.identity.x25519_public
        return rng.choice([bytes(32), b"\xff" * 32, rng.randbytes(32)])

    def some_sid(self) -> bytes:
        w, rng = self.world, self.rng
        pick = rng.randrange(10)
        table = w.relay.table
        if pick < 4 and table.sessions:
            return rng.choice(list(table.sessions))
        if pick < 6 and table.pending:
            return rng.choice(list(table.pending))
        if pick < 7 and self.closed_sids:
            return rng.choice(self.closed_sids)
        if pick < 8:
            return bytes(8)
        return rng.randbytes(8)

    def some_party(self) -> tuple[bytes, bytes | None]:
        p = self.rng.choice(self.world.parties)
        return p.public, p.to_relay

    def cookie_for(self, sender: bytes) -> bytes | None:
        return self.world.oracle.cookies.get((sender, host_port(self.src)))

    def old_nonce(self) -> bytes | None:
        return self.rng.choice(self.nonces) if self.nonces else None

    def newest_ts(self, sender: bytes) -> int | None:
        reg = self.world.relay.table.regs.get(sender)
        return reg.ks.replay.newest if reg is not None else None

    def signer(self, key: bytes) -> RelayIdentity | None:
        for ident in (self.world.identity, *self.idents.values(), NOBODY):
            if ident.public.raw == key:
                return ident
        return None

    def some_body(self, msg_type: int) -> bytes:
        return encode_body(self.body(MsgType(msg_type)))

    # ------------------------------------------------------------ bodies

    def body(self, t: MsgType) -> Body:
        rng = self.rng
        w = self.world
        if t == MsgType.REGISTER:
            return Register(
                rng.choice(REGISTER_FLAGS), rng.choice([0, 5, 25, 0xFFFF]), self.some_rtt()
            )
        if t == MsgType.REGISTERED:
            epoch = w.relay.epoch if rng.random() < 0.7 else rng.randrange(2**64)
            return Registered(
                rng.choice([0, 30, 0xFFFF]), rng.choice([0, 1, 5, 0xFFFF]), epoch, endpoint(rng)
            )
        if t == MsgType.HEARTBEAT:
            return Heartbeat(rng.randrange(2**32), self.some_rtt())
        if t == MsgType.HEARTBEAT_ACK:
            epoch = w.relay.epoch if rng.random() < 0.7 else rng.randrange(2**64)
            return HeartbeatAck(rng.randrange(2**32), rng.choice(list(HeartbeatStatus)), epoch)
        if t == MsgType.CONNECTION_REQUEST:
            # now and then through another relay (multi-hop), known or not
            via = PublicKey(rng.choice(self.relay_keys)) if rng.random() < 0.2 else None
            return ConnectionRequest(rng.randrange(2**32), PublicKey(self.some_key()), via)
        if t == MsgType.CONNECTION_RESPONSE:
            return ConnectionResponse(
                rng.randrange(2**32),
                rng.choice(list(Status)),
                self.some_sid(),
                rng.choice([0, 180, 0xFFFF]),
                rng.choice([0, 1000, 2**32 - 1]),
            )
        if t == MsgType.SESSION_OFFER:
            return SessionOffer(self.some_sid(), PublicKey(self.some_key()))
        if t == MsgType.SESSION_ANSWER:
            return SessionAnswer(self.some_sid(), rng.random() < 0.7)
        if t == MsgType.SESSION_CLOSE:
            return SessionClose(self.some_sid(), rng.choice(list(CloseReason)))
        if t == MsgType.SESSION_HOLD:
            return SessionHold(self.some_sid(), rng.choice([0, 1, 4, MAX_HOLD_S]))
        if t == MsgType.PUNCH:
            eps = rng.choice([(), (("198.51.100.7", 40001), ("203.0.113.9", 61820))])
            return Punch(self.some_sid(), rng.randrange(2**32), rng.random() < 0.3, eps)
        if t == MsgType.ERROR:
            return Error(
                rng.choice(list(ErrorCode)),
                rng.choice([*ALL_TYPES, 0, 0xFF]),
                rng.choice(["", "x", "relay says no", "é" * 60]),
                rng.choice([0, self.now_us(), self.now_us() + 300_000_000, 2**64 - 1]),
            )
        if t == MsgType.PING:
            return Ping(rng.randrange(2**64))
        if t == MsgType.PONG:
            return Pong(rng.randrange(2**64), rng.randrange(101))
        if t == MsgType.DISCOVERY_QUERY:
            locate = PublicKey(self.locate_key()) if rng.random() < 0.5 else None
            return DiscoveryQuery(
                rng.randrange(2**32),
                rng.choice([0, 1, 1, 0xFD, 0xFF]),
                rng.choice([0, 1, 1, 2, 6, 255]),
                rng.choice([0, 0, 1, 0x1F, 2**32 - 1]),
                rng.choice(REGIONS),
                locate,
                rng.choice([0, 0, 1, 2, 3, 0xFFFF]),
            )
        if t == MsgType.DISCOVERY_RESPONSE:
            return self.discovery_response(rng.randrange(2**32))
        if t in _SEALED_TYPES:
            return self.sealed_body(t)
        if t in _CREDIT_TYPES:
            return self.credit_body(t)
        return self.federation_body(t)

    def credit_body(self, t: MsgType) -> Body:
        """Credits (proto/receipts.py) and whole-path RTTs (proto/leg_rtts.py):
        the fuzzer makes these itself, not only from corpus seeds (a handler
        reached from seeds alone is reached or not by the luck of a run)."""
        rng, w = self.rng, self.world
        if t == MsgType.LEG_RTT_QUERY:
            return LegRttQuery(rng.randrange(2**32))
        if t == MsgType.LEG_RTT_REPLY:
            rtts = tuple((self.some_relay(), rng.choice([0, 22, 0xFFFF])) for _ in range(3))
            return LegRttReply(rng.randrange(2**32), rtts[: rng.randint(0, 3)])
        if t == MsgType.RECEIPT_REQUEST:
            return ReceiptRequest(self.some_sid(), rng.randrange(2**32), rng.choice([0, 1, 10**6]))
        if t == MsgType.CREDIT_QUERY:
            return CreditQuery(rng.randrange(2**32), PublicKey(self.some_key()))
        if t == MsgType.RECEIPTS_ACK:
            return ReceiptsAck(rng.randrange(256), rng.randrange(256))
        if t == MsgType.CREDIT_REPORT:
            earned = tuple(
                RelayEarning(self.some_relay(), rng.randrange(2**40), 1) for _ in range(2)
            )
            n = rng.randint(0, 2)
            return CreditReport(
                rng.randrange(2**32), PublicKey(self.some_key()), 30, 5, 9, n, earned[:n]
            )
        relay = w.identity.public if rng.random() < 0.7 else self.some_relay()
        receipts = tuple(
            Receipt(relay, PublicKey(self.some_key()), self.some_sid(), rng.randrange(2**32),
                    rng.choice([0, 1500, 10**9]), self.now_ms(), rng.randbytes(64))
            for _ in range(rng.randint(1, 3))
        )  # fmt: skip
        if t == MsgType.RECEIPT:
            return ReceiptBody(receipts[0])
        claim = Claim(
            PublicKey(self.some_key()), relay, self.now_ms(), rng.randbytes(64), rng.randbytes(64)
        )
        return Receipts(receipts, (claim,) if rng.random() < 0.3 else ())

    def sealed_body(self, t: MsgType) -> Body:
        """Private paths: boxes that open (for the fuzzed relay as the exit,
        for a peer as the target), stale ones, and noise. Ephemeral keys from
        the fuzzer's own stream: a run repeats exactly."""
        rng, w = self.rng, self.world
        now_ms = self.now_ms() + rng.choice([0, 0, 0, -200_000, 200_000])
        if t == MsgType.SESSION_OFFER_SEALED:
            target = PublicKey(w.by_name[rng.choice(["p0", "p0", "p1", "p2"])].public)
            exit_relay = w.identity.public if rng.random() < 0.8 else self.some_relay()
            box = self._box(
                lambda: seal_for_peer(
                    target, PublicKey(self.some_key()), exit_relay, now_ms, rng.randbytes(32)
                ),
                PEER_SEALED_LEN,
            )
            return SessionOfferSealed(self.some_sid(), box, rng.choice([0, 0, 52000]))
        exit_relay = w.identity.public if t == MsgType.LEG_OPEN_SEALED else self.some_relay()
        regs = list(w.relay.table.regs)
        target = PublicKey(rng.choice(regs) if regs and rng.random() < 0.7 else self.some_key())
        initiator = PublicKey(self.some_key())
        box = self._box(
            lambda: seal_for_exit(
                exit_relay,
                target,
                seal_for_peer(target, initiator, exit_relay, now_ms, rng.randbytes(32)),
                now_ms,
                rng.randbytes(32),
            ),
            EXIT_SEALED_LEN,
        )
        if t == MsgType.LEG_OPEN_SEALED:
            return LegOpenSealed(self.some_sid(), box, rng.choice([2, 2, 3]))
        return ConnectionRequestSealed(rng.randrange(2**32), exit_relay, box)

    def some_relay(self) -> PublicKey:
        return rng_choice_relay(self.rng, self.idents)

    def _box(self, seal: Callable[[], bytes], size: int) -> bytes:
        """A sealed box, or noise of its size (now and then, or when the
        recipient's key is not a usable point: the zero and low-order keys)."""
        if self.rng.random() < 0.15:
            return self.rng.randbytes(size)
        try:
            return seal()
        except (nacl.exceptions.CryptoError, InvalidKey):
            return self.rng.randbytes(size)

    def some_rtt(self) -> int:
        """A peer's reported RTT to the relay: unknown, steady, moved a little
        or a lot (a record is re-signed past 25 % and 10 ms), the edges."""
        rng = self.rng
        return rng.choice([RTT_UNKNOWN, RTT_UNKNOWN, 0, 1, 23, 24, 40, 400, 0xFFFE])

    def locate_key(self) -> bytes:
        """A peer to look for: registered here, not registered here (so the
        relay asks the peer's holders, and the fuzzer can answer them),
        known to the world, or nobody."""
        rng = self.rng
        regs = self.world.relay.table.regs
        pick = rng.random()
        if pick < 0.3 and regs:
            return rng.choice(list(regs))
        if pick < 0.55:
            away = [p.public for p in self.world.parties if p.public not in regs]
            if away:
                return rng.choice(away)
        if pick < 0.85:
            return rng.choice(self.world.parties).public
        return self.some_key()

    def discovery_response(self, qid: int, locate: bytes | None = None) -> DiscoveryResponse:
        rng = self.rng
        cut = self.announcement[: rng.randrange(len(self.announcement))]
        choices = [self.announcement, self.announcement, rng.randbytes(40), cut]
        if self.vary_announcement is not None:
            choices += [self.vary_announcement(self.announcement) for _ in range(3)]
        anns = [rng.choice(choices) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        location = record = alternate = alternate_record = None
        if rng.random() < (0.8 if locate is not None else 0.4):
            home = rng.choice(RELAY_NAMES)
            location = PeerLocation(self.idents[home].public, endpoint(rng))
            if rng.random() < 0.6:
                peer = locate if locate is not None and rng.random() < 0.7 else None
                record = self.location_record(peer, home if rng.random() < 0.7 else None)
            if record is not None and rng.random() < 0.5:
                # a second place (the peer's standby, mostly): another relay or
                # the same one, its record for the same peer or not, named by
                # the relay that signed it or not
                alt = rng.choice(RELAY_NAMES)
                alternate = PeerLocation(self.idents[alt].public, endpoint(rng))
                same = locate if locate is not None and rng.random() < 0.8 else None
                alternate_record = self.location_record(
                    same, alt if rng.random() < 0.7 else None, rng.random() < 0.8
                )
        return DiscoveryResponse(
            qid,
            tuple(anns),
            location,
            record,
            rng.random() < 0.2,
            alternate,
            alternate_record,
        )

    # ------------------------------------------------------------ the federation

    def now_ms(self) -> int:
        return self.now_us() // 1000

    def relay_announcement(self, name: str, fresh: bool = True) -> bytes:
        """A relay's announcement: its own, at its real address, signed now (a
        newer one) or one of the interesting wrong ones."""
        rng = self.rng
        w = self.world
        now = self.now_ms()
        if name == "self":
            ident, addr = w.identity, ("192.0.2.1", 51820)
        else:
            ident = self.idents[name]
            other = w.relay_named.get(name)
            addr = host_port(other.addr if other is not None else UNKNOWN_RELAY[1])
        issued, ttl = now, 600
        endpoints: tuple[Endpoint, ...] = (addr,)
        if not fresh:
            issued, ttl = rng.choice(
                [
                    (now - 700_000, 600),  # expired
                    (now + 200_000, 600),  # from the future
                    (now - 1, 1),  # expires now
                    (int(WALL0 * 1000), 600),  # the first one (a replay, by now)
                ]
            )
            if rng.random() < 0.3:
                endpoints = (endpoint(rng), addr)  # another address first
        info = RelayNodeInfo(
            ident.public, endpoints, "fuzz", 0x1F, rng.choice([0, 3, 100]), 100, tcp_port=443
        )
        return encode_announcement(info, max(0, issued), ttl, ident)

    def some_announcement(self) -> bytes:
        """An announcement for a GOSSIP or PULL_REPLY."""
        rng = self.rng
        pick = rng.random()
        name = rng.choice([*RELAY_NAMES, *RELAY_NAMES, "self"])
        if pick < 0.15:
            held = self.world.relay.federation.directory.raw_announcement(
                PublicKey(self.relay_keys[rng.randrange(len(self.relay_keys))])
            )
            if held is not None:
                return held  # exactly what the relay holds: a repeat
        if pick < 0.45:
            return self.relay_announcement(name)
        if pick < 0.85:
            return self.relay_announcement(name, fresh=False)
        if pick < 0.95 and self.vary_announcement is not None:
            return self.vary_announcement(self.relay_announcement(name))
        return rng.randbytes(rng.choice([0, 40, 170]))

    def location_record(
        self, peer: bytes | None = None, home: str | None = None, standby: bool | None = None
    ) -> bytes:
        """A LOCATION record, home or standby (``standby`` None: either) with
        the peer's RTT or none: valid (a known home, now, a sane ttl) or
        forged, future, expired, of an unknown home, with a ttl out of range,
        with flag bits nobody defined."""
        rng = self.rng
        now = self.now_ms()
        if peer is None:
            peer = self.locate_key()
        if standby is None:
            standby = rng.random() < 0.3
        kind = rng.choice(RECORD_KINDS)
        name = home or rng.choice(["r1", "r1", "r2", "rb", "self"])
        if kind == "unknown_home":
            name = rng.choice(["rb", "nobody"])  # rb: unknown until it introduces itself
        ident = {"self": self.world.identity, "nobody": NOBODY}.get(name) or self.idents[name]
        issued, ttl = rng.choice([(now, 120), (now, 600), (now - 10_000, 120), (now + 1, 1)])
        if kind == "future":
            issued = now + rng.choice([121_000, 200_000, 2**63])
        elif kind == "expired":
            issued, ttl = rng.choice([(now - 700_000, 600), (now - 120_000, 120), (0, 600)])
        elif kind == "ttl":
            ttl = rng.choice([0, 601, 2**32 - 1])
        flags = int(standby)
        if kind == "flags":
            flags = rng.choice([0x02, 0x03, 0x80, 0xFF])
        rec = signed_location(peer, ident, issued, ttl, flags=flags, rtt_ms=self.some_rtt())
        if kind == "forged":  # a bit of the signature, or someone else's
            signed, sig = rec[:LOCATION_SIGNED], rec[LOCATION_SIGNED:]
            rec = signed + rng.choice([sig[:-1] + bytes((sig[-1] ^ 1,)), NOBODY.sign(signed)])
        return rec

    def versions(self, n: int) -> tuple[tuple[PublicKey, int], ...]:
        """(relay key, issued_ms) pairs: what a directory holds, older, newer."""
        rng = self.rng
        fed = self.world.relay.federation
        out = []
        for _ in range(n):
            key = PublicKey(rng.choice(self.relay_keys))
            held = fed.directory.issued(key)
            base = held if held is not None else self.now_ms()
            out.append((key, rng.choice([base, base, base - 1, base + 1, 0, 2**64 - 1])))
        return tuple(out)

    def federation_body(self, t: MsgType) -> Body:
        rng = self.rng
        fed = self.world.relay.federation
        if t == MsgType.GOSSIP:
            anns = tuple(self.some_announcement() for _ in range(rng.choice([0, 1, 2, 3, 5])))
            return Gossip(anns, self.versions(rng.choice([0, 0, 0, 1, 2, 8])))
        if t == MsgType.GOSSIP_ACK:
            return GossipAck(rng.choice([0, 1, 255]))
        if t == MsgType.DIGEST:
            buckets = list(fed.directory.digest())
            for _ in range(rng.choice([0, 1, 1, 2, 16])):
                i = rng.randrange(DIGEST_BUCKETS)
                buckets[i] = (rng.choice([0, 1, 2, 0xFFFF]), rng.randbytes(8))
            return Digest(tuple(buckets))
        if t == MsgType.DIGEST_REPLY:
            entries = self.versions(rng.choice([0, 1, 2, 3, 25]))
            return DigestReply(entries, rng.randrange(1 << 16), rng.random() < 0.2)
        if t == MsgType.PULL:
            keys = (PublicKey(rng.choice(self.relay_keys)) for _ in range(rng.randint(0, 5)))
            return Pull(tuple(keys)[:MAX_PULL_KEYS])
        if t == MsgType.PULL_REPLY:
            return PullReply(tuple(self.some_announcement() for _ in range(rng.randint(0, 3))))
        if t == MsgType.LOCATION_STORE:
            n = rng.choice([0, 1, 1, 1, 2, MAX_RECORDS_PER_MESSAGE])
            return LocationStore(tuple(self.location_record() for _ in range(n)))
        if t == MsgType.LOCATION_ACK:
            return LocationAck(rng.choice([0, 1, 7, 255]))
        if t == MsgType.PROBE_REQUEST:
            return ProbeRequest(PublicKey(rng.choice(self.relay_keys)), rng.randrange(2**64))
        if t == MsgType.LEG_OPEN:
            ends = (PublicKey(self.some_key()), PublicKey(self.some_key()))
            return LegOpen(self.some_sid(), *ends, rng.choice([2, 2, 3]))
        if t == MsgType.LEG_ANSWER:
            return LegAnswer(self.some_sid(), rng.choice(list(Status)))
        if t == MsgType.LEG_CLOSE:
            return LegClose(self.some_sid(), rng.choice(list(CloseReason)))
        # PROBE_ANSWER
        return ProbeAnswer(
            PublicKey(rng.choice(self.relay_keys)), rng.randrange(2**64), rng.random() < 0.5
        )

    def draft(self, t: MsgType, party: Party, key: bytes | None, body: Body) -> ControlDraft:
        rng = self.rng
        flags = FLAG_FROM_SERVER if t in SERVER_TO_CLIENT else 0
        return ControlDraft(
            msg_type=int(t),
            flags=flags,
            sender=party.public,
            nonce=rng.randbytes(24),
            cookie=None,
            ts=self.now_us() + rng.choice([0, 0, 1, 1000, -1000]),
            body=encode_body(body),
            key=key,
        )

    def raw(self) -> RawDraft:
        rng = self.rng
        pick = rng.randrange(8)
        if pick == 0:
            return RawDraft(self.announcement)
        if pick == 1:
            data = encode_announcement(
                RelayNodeInfo(OTHER_RELAY.public, (endpoint(rng),), "b", 1, 0, 1),
                int(self.world.wall() * 1000),
                rng.choice([0, 600, 2**32 - 1]),
                OTHER_RELAY,
            )
            return RawDraft(data)
        if pick == 2:
            echo = self.old_nonce() or rng.randbytes(24)
            return RawDraft(encode_cookie_reply(echo[:8], rng.randbytes(16)))
        if pick == 3:  # WireGuard's own: initiation, response, cookie, transport
            size = {1: 148, 2: 92, 3: 64, 4: 32}
            t = rng.choice([1, 2, 3, 4])
            return RawDraft(bytes((t, 0, 0, 0)) + rng.randbytes(size[t] - 4))
        if pick == 4:
            return RawDraft(rng.choice([b"", b"\x10", b"\x20", b"\x31", b"\x20\x01"]))
        return RawDraft(bytes((rng.choice(ALL_TYPES),)) + rng.randbytes(rng.randint(0, 120)))


FLOOD_SOURCES: tuple[Addr, ...] = (
    ("203.0.113.99", 6666),
    ("2001:db8:ff::99", 6666, 0, 0),  # the /64 of other pool addresses
    ("198.51.100.10", 40999),  # p0's IP, another port (a neighbour behind its NAT)
)
CROWD = tuple(f"crowd{i}" for i in range(6))
"""Keys that register from the flood's sources while it lasts (``crowd``)."""


class RelayInputs(_Common):
    """Datagrams for the relay, from every kind of party and address."""

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__(world, rng)
        self.honest = [p.party for p in world.peers]
        names = {p.name for p in self.honest}
        self.others = [p for p in world.parties if p.name not in names]
        self.flood = ""
        """"control": control messages from few addresses and many new keys;
        "data": full-size frames on live sessions."""
        self.answer_keys = {n: answer_keys(n, world.identity) for n in RELAY_NAMES}
        self.relay_asked: dict[tuple[str, int], deque[Body]] = {}
        """(relay, type) -> what the fuzzed relay asked that relay lately."""
        self.relay_nonces: deque[tuple[str, bytes]] = deque(maxlen=32)
        self.crowd = [party_named(n, world.identity, FLOOD_SOURCES[0]) for n in CROWD]
        for party in self.crowd:
            if party.client is not None:
                world.oracle.client_keys[party.public] = party.client

    def ephemeral(self) -> Party:
        """A key nobody has seen (public-key work for the relay)."""
        private = clamp(self.rng.randbytes(32))
        public = bytes(sodium.crypto_scalarmult_base(private))
        party = make_party("new", private, public, self.world.identity, FLOOD_SOURCES[0])
        if party.client is not None:
            self.world.oracle.client_keys[public] = party.client
        return party

    def source(self, party: Party) -> Addr:
        rng = self.rng
        w = self.world
        if self.flood == "control" and rng.random() < 0.85:
            return rng.choice(FLOOD_SOURCES)
        pick = rng.random()
        reg = w.relay.table.regs.get(party.public)
        if pick < 0.6:
            return reg.addr if reg is not None else party.home
        if pick < 0.7:
            return rng.choice(w.peers).addr
        if pick < 0.75:
            return (f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", 9000)
        return rng.choice(ADDRESS_POOL)

    def lookup(self) -> tuple[Draft, str]:
        """An honest peer asks, from where it registered, where a peer not
        registered here is: unless the relay holds its record, it asks the
        peer's holders (r1, r2), and the fuzzer's answers to those queries
        (``relay_answer``) find a lookup waiting."""
        rng = self.rng
        party = rng.choice(self.honest)
        regs = self.world.relay.table.regs
        reg = regs.get(party.public)
        self.src = reg.addr if reg is not None else party.home
        away = [p.public for p in self.world.parties if p.public not in regs]
        target = PublicKey(rng.choice(away) if away else self.locate_key())
        flags = rng.choice([0, QUERY_FLAG_WANT_RELAYS])
        body = DiscoveryQuery(rng.randrange(2**32), flags, rng.choice([0, 6]), locate=target)
        d = self.draft(MsgType.DISCOVERY_QUERY, party, party.to_relay, body)
        cookie = self.cookie_for(party.public)
        if cookie is not None and rng.random() < 0.85:
            d.cookie, d.flags = cookie, d.flags | FLAG_COOKIE
        return d, "control/discovery_query/lookup"

    def crowd_register(self) -> tuple[Draft, str]:
        """A key of the crowd registers from a flood source, with the cookie
        the relay sent it there once it has one: within a flood (no
        registration expires) they fill the table, the sources fill up
        unevenly, and a newcomer from a smaller source evicts an idle entry
        of the fullest one, or is refused (the "crowded" preset)."""
        rng = self.rng
        party = rng.choice(self.crowd)
        self.src = rng.choice(FLOOD_SOURCES)
        d = self.draft(MsgType.REGISTER, party, party.to_relay, self.body(MsgType.REGISTER))
        cookie = self.cookie_for(party.public)
        if cookie is not None:
            d.cookie, d.flags = cookie, d.flags | FLAG_COOKIE
        return d, "control/register/crowd"

    def control(self) -> tuple[Draft, str]:
        rng = self.rng
        if not self.flood and rng.random() < 0.08:
            return self.lookup()
        pick = rng.random() if self.flood == "control" else 1.0
        if pick < 0.2:
            return self.crowd_register()
        if pick < 0.6:
            party = self.ephemeral()
        elif rng.random() < 0.55:
            party = rng.choice(self.honest)
        else:
            party = rng.choice(self.others)
        r = rng.random()
        t = MsgType(
            rng.choice(PEER_TYPES)
            if r < 0.8
            else rng.choice(CLIENT_TYPES)
            if r < 0.88
            else rng.choice(SERVER_TYPES)
        )
        body = self.body(t)
        table = self.world.relay.table
        if (
            t
            in (MsgType.SESSION_ANSWER, MsgType.SESSION_CLOSE, MsgType.SESSION_HOLD, MsgType.PUNCH)
            and rng.random() < 0.5
        ):
            # as an end of a live or pending session: the handlers' deep paths
            pool = table.pending if t == MsgType.SESSION_ANSWER else table.sessions
            s = rng.choice(list(pool.values())) if pool else None
            end = self.world.by_key.get(rng.choice([s.a_key, s.b_key])) if s else None
            if s is not None and end is not None:
                party = end
                if t == MsgType.SESSION_ANSWER:
                    body = SessionAnswer(s.sid, rng.random() < 0.5)
                elif t == MsgType.SESSION_HOLD:
                    body = SessionHold(s.sid, rng.choice([0, 3]))
                elif t == MsgType.PUNCH:
                    body = Punch(s.sid, rng.randrange(2**32))
                else:
                    body = SessionClose(s.sid, rng.choice(list(CloseReason)))
        self.src = self.source(party)
        key = party.to_relay
        if t in SERVER_TO_CLIENT and party.from_relay is not None and rng.random() < 0.5:
            key = party.from_relay  # as if the peer were the relay of the channel
        d = self.draft(t, party, key, body)
        cookie = self.cookie_for(party.public)
        if cookie is not None and rng.random() < 0.85:
            d.cookie, d.flags = cookie, d.flags | FLAG_COOKIE
        return d, f"control/{t.name.lower()}"

    def data(self) -> tuple[Draft, str]:
        rng = self.rng
        table = self.world.relay.table
        pick = rng.random()
        if pick < 0.6 and table.sessions:
            s = rng.choice(list(table.sessions.values()))
            if rng.random() < 0.8:
                self.src = rng.choice([s.a_addr, s.b_addr])
                kind = "data/session"
            else:
                self.src = rng.choice([*ADDRESS_POOL, *(p.addr for p in self.world.peers)])
                kind = "data/spoofed"
            size = 1452 if self.flood == "data" else None
            return DataDraft(0, s.sid, wg_payload(rng, size)), kind
        self.src = rng.choice([*ADDRESS_POOL, *(p.addr for p in self.world.peers)])
        if pick < 0.75 and table.pending:
            return DataDraft(0, rng.choice(list(table.pending)), wg_payload(rng)), "data/pending"
        return DataDraft(0, self.some_sid(), wg_payload(rng)), "data/unknown"

    def other(self) -> tuple[Draft, str]:
        rng = self.rng
        self.src = rng.choice([*ADDRESS_POOL, *(p.addr for p in self.world.peers)])
        if rng.random() < 0.2:
            return RawDraft(self.location_record()), "raw/location"
        d = self.raw()
        return d, f"raw/{d.data[:1].hex() or 'empty'}"

    # ------------------------------------------------------------ as other relays

    def relay_source(self, name: str) -> Addr:
        """Mostly the address the relay announces (where the fuzzed relay
        answers it), sometimes anywhere."""
        rng = self.rng
        other = self.world.relay_named.get(name)
        home = other.addr if other is not None else UNKNOWN_RELAY[1]
        if rng.random() < 0.8:
            return home
        return rng.choice([*ADDRESS_POOL, *(p.addr for p in self.world.peers)])

    def relay_request(self) -> tuple[Draft, str]:
        """What a relay asks the fuzzed relay (as the client of a channel)."""
        rng = self.rng
        w = self.world
        pick = rng.random()
        if pick < 0.75:
            name = rng.choice([n for n, _ in RELAYS])
        elif pick < 0.9:
            name = UNKNOWN_RELAY[0]
        else:
            name = ""
        t = MsgType(rng.choice(RELAY_REQUESTS) if rng.random() < 0.9 else rng.choice(RELAY_ANSWERS))
        if name:
            party = w.by_name[name]
            self.src = self.relay_source(name)
        else:  # not a relay at all
            party = rng.choice([*self.honest, *self.others])
            self.src = self.source(party)
        body = self.body(t)
        if t == MsgType.GOSSIP and name and rng.random() < 0.5:
            # carrying its own announcement: how an unknown relay introduces itself
            assert isinstance(body, Gossip)
            body = Gossip((self.relay_announcement(name), *body.announcements[:4]), body.dead)
        d = self.draft(t, party, party.to_relay, body)
        d.flags &= ~FLAG_FROM_SERVER
        cookie = self.cookie_for(party.public)
        if cookie is not None and rng.random() < 0.85:
            d.cookie, d.flags = cookie, d.flags | FLAG_COOKIE
        return d, f"relay/{t.name.lower()}"

    def observe_out(self, data: bytes, dst: Addr) -> None:
        """A datagram the fuzzed relay sent: what it asked another relay (the
        echo ids, nonces, query ids and keys its answers must carry)."""
        if len(data) < 59 or data[3:35] != self.world.identity.x25519_public:
            return
        if data[0] not in CONTROL_TYPES or data[2] & FLAG_FROM_SERVER:
            return
        other = self.world.relay_at.get(host_port(dst))
        names = [other.name] if other is not None else [UNKNOWN_RELAY[0]]
        for name in names:
            keys = self.answer_keys[name]
            d = open_draft(data, {self.world.identity.x25519_public: keys.rx})
            if not isinstance(d, ControlDraft):
                continue
            self.relay_nonces.append((name, d.nonce))
            try:
                body = decode_body(MsgType(d.msg_type), d.body)
            except (RemoteProtocolError, ValueError):
                return
            self.relay_asked.setdefault((name, d.msg_type), deque(maxlen=8)).append(body)
            return

    def relay_answer(self) -> tuple[Draft, str]:
        """An answer on one of the fuzzed relay's own channels (FROM_SERVER),
        to what it asked, mostly."""
        rng = self.rng
        asked = [k for k, v in self.relay_asked.items() if v]
        pending = self.world.relay.federation.locations._queries
        waiting = [
            (name, q)
            for (name, t), sent in sorted(self.relay_asked.items())
            if t == MsgType.DISCOVERY_QUERY
            for q in sent
            if isinstance(q, DiscoveryQuery) and q.query_id in pending
        ]
        question: Body | None
        if waiting and rng.random() < 0.7:
            name, question = rng.choice(waiting)  # a lookup still waiting for its holders
        elif asked and rng.random() < 0.8:
            name, t_asked = rng.choice(sorted(asked))
            question = rng.choice(self.relay_asked[(name, t_asked)])
        else:
            name, question = rng.choice(RELAY_NAMES), None
        body = self.answer_to(question) if question is not None else None
        if body is None:
            body = self.body(MsgType(rng.choice(RELAY_ANSWERS)))
        party = self.world.by_name[name]
        self.src = self.relay_source(name)
        d = self.draft(body.TYPE, party, self.answer_keys[name].tx, body)
        d.flags |= FLAG_FROM_SERVER
        return d, f"answer/{body.TYPE.name.lower()}"

    def answer_to(self, q: Body) -> Body | None:
        rng = self.rng
        if isinstance(q, Ping):
            return Pong(q.echo_id, rng.randrange(101))
        if isinstance(q, ProbeRequest):
            return ProbeAnswer(q.target, q.nonce, rng.random() < 0.7)
        if isinstance(q, DiscoveryQuery):
            locate = q.locate.raw if q.locate is not None else None
            return self.discovery_response(q.query_id, locate)
        if isinstance(q, Digest):
            n = rng.choice([0, 1, 2, 3])
            return DigestReply(self.versions(n), rng.randrange(1 << 16), rng.random() < 0.2)
        if isinstance(q, Pull):
            anns = tuple(
                self.relay_announcement(n)
                for k in q.keys
                for n in RELAY_NAMES
                if self.idents[n].public == k
            )
            return PullReply(anns)
        if isinstance(q, Gossip):
            return GossipAck(len(q.announcements))
        if isinstance(q, LocationStore):
            return LocationAck(len(q.records))
        return None

    def relay_cookie(self) -> tuple[Draft, str]:
        """A cookie reply to a message the fuzzed relay sent another relay."""
        rng = self.rng
        if self.relay_nonces and rng.random() < 0.85:
            name, nonce = rng.choice(self.relay_nonces)
            echo = nonce[:8]
        else:
            name, echo = rng.choice(RELAY_NAMES), rng.randbytes(8)
        self.src = self.relay_source(name)
        return RawDraft(encode_cookie_reply(echo, rng.randbytes(16))), "answer/cookie_reply"

    def relay(self) -> tuple[Draft, str]:
        pick = self.rng.random()
        if pick < 0.55:
            return self.relay_request()
        if pick < 0.9:
            return self.relay_answer()
        return self.relay_cookie()

    def fresh(self) -> tuple[Draft, str]:
        pick = self.rng.random()
        if self.flood:
            pick = 0.0 if self.flood == "control" else 0.8
        elif self.world.relay.federation.locations._queries and self.rng.random() < 0.25:
            # a lookup waits for the peer's holders (they are slow or lost):
            # answer it as them, with records of that peer or another
            return self.relay_answer()
        if pick < 0.5:
            return self.control()
        if pick < 0.75:
            return self.relay()
        if pick < 0.92:
            return self.data()
        return self.other()

    def observe(self, data: bytes) -> None:
        if len(data) >= 59:
            self.nonces.append(bytes(data[35:59]))


class LinkInputs(_Common):
    """Datagrams for one link, as its relay (mostly) would send them."""

    def __init__(self, world: World, rng: random.Random, target: Peer) -> None:
        super().__init__(world, rng)
        self.target = target
        self.sent: dict[int, deque[Body]] = {}
        self.echoes: deque[bytes] = deque(maxlen=16)
        self.relay_party = Party(
            "relay",
            world.identity.x25519_public,
            world.identity.x25519_private,
            None,
            None,
            world.peers[0].addr,
        )

    def observe(self, data: bytes) -> None:
        """A datagram the link sent: remember what it asked, to answer it."""
        server = self.target.party.server
        if server is None:
            return
        d = open_draft(data, {self.target.party.public: server.rx})
        if isinstance(d, ControlDraft):
            self.echoes.append(d.nonce[:8])
            self.nonces.append(d.nonce)
            try:
                body = decode_body(MsgType(d.msg_type), d.body)
            except (RemoteProtocolError, ValueError):
                return
            self.sent.setdefault(d.msg_type, deque(maxlen=8)).append(body)

    def _asked(self, t: MsgType) -> Body | None:
        q = self.sent.get(int(t))
        return self.rng.choice(q) if q else None

    def now_us(self) -> int:
        return self.world.wall_us()

    def some_party(self) -> tuple[bytes, bytes | None]:
        if self.rng.random() < 0.5:
            return self.world.identity.x25519_public, self.target.party.from_relay
        p = self.rng.choice(self.world.parties)
        return p.public, p.from_relay

    def cookie_for(self, sender: bytes) -> bytes | None:
        return self.rng.randbytes(16)

    def newest_ts(self, sender: bytes) -> int | None:
        return None

    def some_sid(self) -> bytes:
        link = self.target.link
        if link.sessions and self.rng.random() < 0.5:
            return self.rng.choice(list(link.sessions))
        return super().some_sid()

    def body(self, t: MsgType) -> Body:
        rng = self.rng
        asked = self._asked
        if t == MsgType.HEARTBEAT_ACK and (hb := asked(MsgType.HEARTBEAT)) is not None:
            assert isinstance(hb, Heartbeat)
            epoch = self.world.relay.epoch if rng.random() < 0.7 else rng.randrange(2**64)
            return HeartbeatAck(hb.seq, rng.choice(list(HeartbeatStatus)), epoch)
        if t == MsgType.CONNECTION_RESPONSE and (rq := asked(MsgType.CONNECTION_REQUEST)):
            assert isinstance(rq, ConnectionRequest)
            return ConnectionResponse(
                rq.request_id,
                rng.choice(list(Status)),
                self.some_sid() if rng.random() < 0.3 else rng.randbytes(8),
                rng.choice([0, 180, 0xFFFF]),
                rng.choice([0, 1000]),
            )
        if t == MsgType.PONG and (ping := asked(MsgType.PING)) is not None:
            assert isinstance(ping, Ping)
            return Pong(ping.echo_id, rng.randrange(101))
        if t == MsgType.DISCOVERY_RESPONSE and (q := asked(MsgType.DISCOVERY_QUERY)):
            assert isinstance(q, DiscoveryQuery)
            waiting = [
                w
                for w in self.sent[int(MsgType.DISCOVERY_QUERY)]
                if isinstance(w, DiscoveryQuery) and w.locate is not None
                if (MsgType.DISCOVERY_QUERY, w.query_id) in self.target.link._requests
            ]
            if waiting and rng.random() < 0.7:
                q = rng.choice(waiting)  # a lookup still waiting: its records are checked
            locate = q.locate.raw if q.locate is not None else None
            return self.discovery_response(q.query_id, locate)
        if t == MsgType.ERROR and rng.random() < 0.6:
            sent = [k for k, v in self.sent.items() if v]
            ref = rng.choice(sent) if sent else int(MsgType.PING)
            now = self.now_us()
            value = rng.choice([0, now, now + 200_000_000, now - 200_000_000, 2**63, 2**64 - 1])
            code = rng.choice([ErrorCode.STALE_TIMESTAMP, ErrorCode.REPLAYED, *list(ErrorCode)])
            return Error(code, ref, rng.choice(["", "no"]), value)
        if t == MsgType.SESSION_OFFER and rng.random() < 0.5:
            return SessionOffer(rng.randbytes(8), PublicKey(rng.choice(self.world.parties).public))
        return super().body(t)

    def control(self) -> tuple[Draft, str]:
        rng = self.rng
        t = MsgType(rng.choice(PEER_ANSWERS) if rng.random() < 0.85 else rng.choice(ALL_TYPES))
        key = self.target.party.from_relay
        sender = self.relay_party
        pick = rng.random()
        if pick < 0.04:
            sender = rng.choice(self.world.parties)  # not the relay
        elif pick < 0.08:
            key = rng.choice(self.world.parties).from_relay  # the relay, to someone else
        d = self.draft(t, sender, key, self.body(t))
        if t == MsgType.SESSION_CLOSE:
            d.flags |= FLAG_FROM_SERVER
        return d, f"control/{t.name.lower()}"

    def cookie_reply(self) -> tuple[Draft, str]:
        rng = self.rng
        echo = rng.choice(self.echoes) if self.echoes and rng.random() < 0.8 else rng.randbytes(8)
        return RawDraft(encode_cookie_reply(echo, rng.randbytes(16))), "cookie_reply"

    def fresh(self) -> tuple[Draft, str]:
        pick = self.rng.random()
        if pick < 0.8:
            return self.control()
        if pick < 0.9:
            return self.cookie_reply()
        d = self.raw()
        return d, f"raw/{d.data[:1].hex() or 'empty'}"
