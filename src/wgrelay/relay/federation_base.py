"""The federation's state and plumbing: its configuration, the directory,
channels to other relays (what we send, what we asked), and learning
announcements. Spreading news and liveness build on it
(federation_spread.py); federation.py routes requests and answers and runs
the timers. The design is in federation.py's docstring."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.discovery.directory import RelayDirectory, Verdict
from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity, relay_x25519_public
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import (
    COOKIE_LEN,
    MAX_CONTROL_SIZE,
)
from wgrelay.proto.cookie import CookieReply
from wgrelay.proto.envelope import MIN_CONTROL_SIZE
from wgrelay.proto.federation import (
    Digest,
    Pull,
)
from wgrelay.proto.messages import Body, Ping
from wgrelay.relay.channels import RelayChannel
from wgrelay.relay.limits import TokenBucket
from wgrelay.relay.locations import LocationBook
from wgrelay.relay.relay_rtts import RelayRtts

log = logging.getLogger(__name__)

Addr = tuple[object, ...]
Send = Callable[[bytes, Endpoint], None]
Reply = Callable[[Body], None]

MAX_ASKED = 16
"""DIGEST_REPLYs and PULL_REPLYs we take from one relay before it answered
those in flight (a sync asks one digest and a few pulls)."""
INTRODUCTIONS_PER_S = 0.5
INTRODUCTION_BURST = 20
"""How fast relays unknown to anyone we know may introduce themselves: a
federation grows by a few relays a minute, not by thousands a second."""
MAX_BODY = MAX_CONTROL_SIZE - MIN_CONTROL_SIZE - COOKIE_LEN
"""The most body bytes one control datagram carries (with a cookie in its
header: a channel repeats the relay's cookie for 100 s once asked)."""
GOSSIP_MOST = 5
PULL_REPLY_ROOM = MAX_BODY - 1  # a count, then the announcements
RESPONSE_ROOM = MAX_BODY - 450
"""What a DISCOVERY_RESPONSE leaves for announcements: besides its fixed
fields it may carry a location and an alternate, each with a 145-byte record."""


def packed(anns: list[bytes], room: int, most: int) -> list[list[bytes]]:
    """Announcements in order, cut into runs that fit ``room`` body bytes
    (each costs its length and a u16 prefix) and hold at most ``most``.
    (An announcement is at most about 310 bytes: eight endpoints and a
    32-byte region; counting alone overflowed 1,200 bytes.)"""
    runs: list[list[bytes]] = []
    run: list[bytes] = []
    used = 0
    for raw in anns:
        cost = len(raw) + 2
        if run and (used + cost > room or len(run) == most):
            runs.append(run)
            run, used = [], 0
        run.append(raw)
        used += cost
    if run:
        runs.append(run)
    return runs


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """Every timer and fan-out of relay-to-relay traffic, in one place."""

    gossip_fanout: int = 3
    gossip_interval_s: float = 1.0
    sync_interval_s: float = 10.0
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 1.0
    indirect_probes: int = 2
    suspect_timeout_s: float = 4.0
    dead_notice_rounds: int = 3
    """Gossip rounds a relay repeats each death it declared in."""
    announce_refresh_s: float = 60.0
    max_sync_pages: int = 16
    """DIGEST_REPLY pages taken one after another in one sync (25 relays a
    page), while each names relays we did not know."""
    replicas: int = 3
    location_ttl_s: int = 120
    location_refresh_s: float = 40.0
    locate_timeout_s: float = 1.0
    max_records: int = 200_000
    """Location records held for others, at most (a bound, not a quota)."""
    rtt_interval_s: float = 10.0
    """Relays agents weigh legs to are pinged at least this often (relay_rtts.py)."""


@dataclass(slots=True)
class _Probe:
    target: PublicKey
    echo: int
    deadline: float
    indirect: bool = False
    corroborate: bool = False
    """A notice named the target dead: no answer to this probe and we agree."""


@dataclass(slots=True)
class _ProbeOnBehalf:
    requester_reply: Reply
    target: PublicKey
    nonce: int
    echo: int
    deadline: float


class FederationBase:
    def __init__(
        self,
        identity: RelayIdentity,
        config: FederationConfig,
        out: list[tuple[bytes, Addr]],
        now: float,
        wall: Callable[[float], float],
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.key = identity.public
        self.config = config
        self._out = out
        self._wall = wall
        self._rng = rng
        # choosing gossip targets and probe order, not keys: seeded from rng so
        # simulated runs repeat
        self._random = random.Random(int.from_bytes(rng(8), "big"))  # noqa: S311
        self.directory = RelayDirectory(identity.public)
        self._channels: dict[PublicKey, RelayChannel] = {}
        self._bootstrap: dict[PublicKey, Endpoint] = {}
        self._push: list[tuple[PublicKey, bytes]] = []
        """Announcements to gossip next round, with the key of the relay each is about."""
        self._acquainted: set[PublicKey] = set()
        """Relays that answered a relay-only request of ours since we last sent
        them a DIGEST: they know us (a relay unknown to them is not answered)."""
        self._next_page: dict[PublicKey, tuple[int, int]] = {}
        """Relays whose partial DIGEST_REPLY named what we lacked: (PULLs still
        unanswered, pages so far); then we ask for the next page at once."""
        self._pages: dict[PublicKey, int] = {}
        """Pages asked of a relay in the sync under way (its DIGEST is out)."""
        self._dead_notices: dict[tuple[PublicKey, int], int] = {}
        """Relays we declared dead (key, the version we held) and the gossip
        rounds each notice is still sent in."""
        self._probes: dict[int, _Probe] = {}
        self._probe_order: list[PublicKey] = []
        self._on_behalf: dict[int, _ProbeOnBehalf] = {}
        self._next_id = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self.locations = LocationBook(
            identity,
            self.directory,
            self._send,
            self._wall_ms,
            self._new_id,
            self._count,
            replicas=config.replicas,
            ttl_s=config.location_ttl_s,
            locate_timeout_s=config.locate_timeout_s,
            max_records=config.max_records,
        )
        self._next_push = now
        self._next_sync = now
        self._next_probe = now + config.probe_interval_s
        self._next_announce = now
        self._next_place = now + config.location_refresh_s
        self._live_changed = False
        self.counters: dict[str, int] = {}
        self.channel_drops: dict[str, int] = {}
        """Answers from other relays refused on our channels, by reason."""
        self._asked: dict[PublicKey, int] = {}
        """DIGESTs and PULLs in flight, per relay: only an answer to one of
        them may make us send (a DIGEST_REPLY marking every bucket would
        otherwise have us gossip the whole directory wherever its sender's
        announcement points, as often as it likes)."""
        self._refute = False
        """A notice said we are dead: sign a newer announcement at once."""
        self._refusal = "unexpected"
        """Why ``_on_answer`` refused the answer it was just handed."""
        self._introductions = TokenBucket(INTRODUCTIONS_PER_S, INTRODUCTION_BURST, now)
        self.rtts = RelayRtts(config.rtt_interval_s)
        """Our RTT to other relays, from every PING we send them (relay_rtts.py)."""

    # ------------------------------------------------------------ setup

    def add_bootstrap(self, key: PublicKey, endpoint: Endpoint) -> None:
        """A relay to contact first (its announcement comes with its answers)."""
        if key != self.key:
            self._bootstrap[key] = endpoint

    def set_own(self, raw: bytes) -> None:
        """Our freshly signed announcement: hold it and gossip it."""
        try:
            ann = decode_announcement(raw)
        except RemoteProtocolError:  # ours: cannot happen, but never raise
            return
        old = self.directory.own_announcement
        if old is None or ann.issued_ms > old.issued_ms:
            self.directory.set_own(ann)
            self._push.append((self.key, raw))

    def is_relay(self, x25519: bytes) -> bool:
        return self.directory.by_x25519(x25519) is not None

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # ------------------------------------------------------------ channels

    def _wall_ms(self, now: float) -> int:
        return int(self._wall(now) * 1000)

    def _addr_of(self, key: PublicKey) -> Endpoint | None:
        """Where to reach a relay: the first endpoint it announces in an
        address family we announce too (an IPv6-first relay is not out of
        reach of an IPv4-only one); for a relay we hold no announcement of,
        the endpoint we were given (bootstrap) or last knew (a lapsed one)."""
        m = self.directory.get(key)
        if m is None:
            return self._bootstrap.get(key)
        endpoints = m.announcement.info.endpoints
        own = self.directory.own_announcement
        if own is not None:
            ours = {":" in host for host, _ in own.info.endpoints}
            for ep in endpoints:
                if (":" in ep[0]) in ours:
                    return ep
        return endpoints[0]

    def _channel(self, key: PublicKey) -> RelayChannel | None:
        ch = self._channels.get(key)
        addr = self._addr_of(key)
        if addr is None:
            return None
        if ch is None or ch.addr != addr:
            ch = self._channels[key] = RelayChannel(
                self.identity, key, addr, self._rng, self.channel_drops
            )
        return ch

    def _send(self, key: PublicKey, body: Body, now: float) -> bool:
        ch = self._channel(key)
        if ch is None:
            return False
        try:
            sealed = ch.seal(body, now, self._wall(now))
        except LocalProtocolError:  # too large (a bug): one message, not the timer
            log.exception("cannot send %s to relay %s", type(body).__name__, key.short())
            self._count("send_failed")
            return False
        self._out.append((sealed, ch.addr))
        self._count(f"sent_{type(body).__name__}")
        if isinstance(body, Ping):
            self.rtts.sent(key, body.echo_id, now)
        if isinstance(body, Digest | Pull):
            self._asked[key] = min(self._asked.get(key, 0) + 1, MAX_ASKED)
        return True

    def _answers_asked(self, key: PublicKey) -> bool:
        """Is an answer that makes us send (DIGEST_REPLY, PULL_REPLY) one we asked for?"""
        n = self._asked.get(key, 0)
        if n == 0:
            self._refusal = "unsolicited"
            return False
        if n == 1:
            del self._asked[key]
        else:
            self._asked[key] = n - 1
        return True

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _bootstrap_by_x(self, x25519: bytes) -> PublicKey | None:
        for key in self._bootstrap:
            ch = self._channels.get(key)
            if ch is not None and ch.peer_x25519 == x25519:
                return key
        return None

    def receive_cookie(self, reply: CookieReply, now: float) -> bool:
        for ch in self._channels.values():
            if ch.sent_nonce(reply.echo):
                body = ch.sent_body(reply.echo)
                data = ch.on_cookie(reply, now, self._wall(now))
                if data is not None:
                    self._out.append((data, ch.addr))
                    if isinstance(body, Ping):  # timed from the repeat: this PING only
                        self.rtts.sent(ch.peer, body.echo_id, now)
                return True
        return False

    # ------------------------------------------------------------ learning

    def learn(self, raw: bytes, now: float) -> bool:
        """A signed announcement from anywhere; True if it was news."""
        try:
            ann = decode_announcement(raw)
        except RemoteProtocolError:
            self._count("bad_announcement")
            return False
        verdict = self.directory.learn(ann, now, self._wall_ms(now))
        self._count(f"announcement_{verdict.value}")
        if verdict.changed:
            self._push.append((ann.info.key, ann.raw))
            if verdict is Verdict.NEW:
                log.info("relay %s joined the federation", ann.info.key.short())
                self._live_changed = True
        return verdict.changed

    def heard_from(self, key: PublicKey, now: float) -> None:
        """A known relay spoke to us (a PING, a request): it lives."""
        self._alive(key, now)

    def _alive(self, key: PublicKey, now: float) -> None:
        if self.directory.acked(key, now):
            log.info("relay %s is alive again", key.short())
            self._live_changed = True

    def introduced_by(self, x25519: bytes, anns: tuple[bytes, ...], now: float) -> bool:
        """A GOSSIP from an unknown sender: does it carry the sender's own
        announcement? (the only way a relay introduces itself). Only that one
        is learned: anyone can sign announcements, and a stranger must not
        fill the directory with relays that point at a victim; the others
        come from relays we know. Introductions are rate-limited too."""
        for raw in anns:
            try:
                ann = decode_announcement(raw)
            except RemoteProtocolError:
                continue
            if relay_x25519_public(ann.info.key) != x25519:
                continue
            known = self.directory.get(ann.info.key) is not None
            if not known and not self._introductions.take(1, now):
                self._count("introduction_refused")
                return False
            if self.learn(raw, now):
                self._count("introduced")
            break
        return self.is_relay(x25519)
