"""Relays that know each other: gossip, liveness, location records (sans-I/O).

Theory of operation
-------------------
Every relay knows every live relay, and finds any peer in O(k) messages
(docs/ARCHITECTURE.md, "Discovery at scale"):

* **Membership** is the set of signed announcements (``RelayDirectory``). A
  relay re-signs its own every ``announce_refresh_s`` (and when its facts
  change), and pushes what is new to ``gossip_fanout`` random live relays once
  a second: every relay forwards each announcement version once, so news
  reaches all N relays in O(log N) rounds for about fanout x N messages.
* **Anti-entropy** every ``sync_interval_s``: a DIGEST (16 bucket hashes) to a
  random relay, which answers with its entries in the buckets that differ;
  each side then pulls what it lacks and pushes what the other lacks. A
  reply holds 25 entries: while a page brings something we lacked, the next
  is asked for once its pulls are answered, so a new relay learns a whole
  federation from its bootstrap relay in one sync. Lost gossip, partitions
  that heal, and a new relay's first contact all converge this way. Only
  known relays are answered, so a relay sends its own announcement first to
  one that has not answered it yet (in GOSSIP, or before a DIGEST).
* **Liveness**, SWIM-style: a PING to one member a second, in shuffled round
  robin; no answer within ``probe_timeout_s`` and ``indirect_probes`` other
  relays are asked to ping it (PROBE_REQUEST); still nothing and it is
  SUSPECT; suspect for ``suspect_timeout_s`` and it is DEAD, and a notice goes
  out with the gossip. A relay receiving a notice probes the relay itself
  before believing it; the named relay refutes it with a newer announcement.
* **Location records**: for each peer registered here, a record signed by us
  ("P is at this relay until T") is stored at the ``replicas`` relays that
  rendezvous hashing picks for P over the live set, refreshed every
  ``location_refresh_s`` and re-placed when the live set changes.
* **Lookups**: an agent asks its home relay where P is; the home answers from
  its registrations or its store, or asks P's k holders (one DISCOVERY_QUERY
  each) and answers with the first signed record it gets. An agent's lookup
  costs it one request and the federation at most k more, whatever N is.

The core (core.py) routes to this class: relay-to-relay requests it receives
(server side), answers to our own requests (FROM_SERVER datagrams) and cookie
replies addressed to our channels (client side). Output goes to the core's
datagram queue; ``next_timer()`` joins the core's.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.discovery.directory import Liveness, RelayDirectory, Verdict
from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity, relay_x25519_public
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import (
    COOKIE_LEN,
    MAX_ANNOUNCEMENTS_PER_RESPONSE,
    MAX_CONTROL_SIZE,
    MAX_DIGEST_ENTRIES,
    MAX_PULL_KEYS,
    RTT_UNKNOWN,
)
from wgrelay.proto.cookie import CookieReply
from wgrelay.proto.envelope import MIN_CONTROL_SIZE, ControlHeader
from wgrelay.proto.federation import (
    MAX_DEAD_NOTICES,
    Digest,
    DigestReply,
    Gossip,
    GossipAck,
    LocationAck,
    LocationStore,
    ProbeAnswer,
    ProbeRequest,
    Pull,
    PullReply,
)
from wgrelay.proto.messages import Body, DiscoveryResponse, Error, Ping, Pong, encode_body
from wgrelay.relay.channels import RelayChannel
from wgrelay.relay.limits import TokenBucket
from wgrelay.relay.locations import Found, LocationBook

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


class Federation:
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

    def receive_answer(self, hdr: ControlHeader, data: bytes, now: float) -> bool:
        """A FROM_SERVER datagram: an answer to one of our channels (or not ours)."""
        m = self.directory.by_x25519(hdr.sender.raw)
        key = m.key if m is not None else self._bootstrap_by_x(hdr.sender.raw)
        ch = self._channels.get(key) if key is not None else None
        if ch is None or key is None:
            return False
        body = ch.open(hdr, data, self._wall(now))
        if body is None:
            return True
        self._alive(key, now)
        self._refusal = "unexpected"
        if not self._on_answer(key, body, now):
            # a server-to-client body no relay sends another (REGISTERED,
            # SESSION_OFFER, ...), or an answer to nothing we asked
            ch.drop(self._refusal)
        return True

    def _bootstrap_by_x(self, x25519: bytes) -> PublicKey | None:
        for key in self._bootstrap:
            ch = self._channels.get(key)
            if ch is not None and ch.peer_x25519 == x25519:
                return key
        return None

    def receive_cookie(self, reply: CookieReply, now: float) -> bool:
        for ch in self._channels.values():
            if ch.sent_nonce(reply.echo):
                data = ch.on_cookie(reply, now, self._wall(now))
                if data is not None:
                    self._out.append((data, ch.addr))
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

    # ------------------------------------------------------------ server side

    def on_request(self, sender: PublicKey, body: Body, reply: Reply, now: float) -> None:
        """A relay-to-relay request from ``sender`` (a known relay)."""
        self._alive(sender, now)
        if isinstance(body, Gossip):
            new = sum(self.learn(raw, now) for raw in body.announcements)
            self._on_dead_notices(body.dead, now)
            reply(GossipAck(min(new, 255)))
        elif isinstance(body, Digest):
            reply(self._digest_reply(body))
        elif isinstance(body, Pull):
            anns = tuple(
                raw for k in body.keys if (raw := self.directory.raw_announcement(k)) is not None
            )
            runs = packed(list(anns), PULL_REPLY_ROOM, MAX_PULL_KEYS)
            reply(PullReply(tuple(runs[0]) if runs else ()))  # the rest at the next sync
        elif isinstance(body, LocationStore):
            reply(LocationAck(sum(self.locations.hold(raw, now) for raw in body.records)))
        elif isinstance(body, ProbeRequest):
            self._probe_on_behalf(body, reply, now)

    def _digest_reply(self, body: Digest) -> DigestReply:
        differ = self.directory.differing(body.buckets)
        mask = sum(1 << i for i in differ)
        # A page holds 25 entries: fewer than the differing buckets of a large
        # federation hold (announcements are re-signed all the time, so most
        # buckets differ by some version). The buckets where the asker counts
        # fewer relays than we do come first (it lacks members there), the
        # others in random order, each bucket's entries shuffled: a cut page
        # is a different page each time. (Cut in key order, the buckets of
        # high keys were never offered and their relays stayed unknown.)
        mine = self.directory.digest()
        self._random.shuffle(differ)
        differ.sort(key=lambda i: body.buckets[i][0] - mine[i][0])
        entries: list[tuple[PublicKey, int]] = []
        for i in differ:
            chunk = self.directory.versions_in((i,))
            self._random.shuffle(chunk)
            entries += chunk
        more = len(entries) > MAX_DIGEST_ENTRIES
        return DigestReply(tuple(entries[:MAX_DIGEST_ENTRIES]), mask, more)

    def _probe_on_behalf(self, body: ProbeRequest, reply: Reply, now: float) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if body.target == self.key or not self._send(body.target, Ping(echo), now):
            reply(ProbeAnswer(body.target, body.nonce, body.target == self.key))
            return
        self._on_behalf[echo] = _ProbeOnBehalf(
            reply, body.target, body.nonce, echo, now + self.config.probe_timeout_s
        )

    def _on_dead_notices(self, dead: tuple[tuple[PublicKey, int], ...], now: float) -> None:
        for key, _issued in dead:
            if key == self.key:
                self._next_announce = now  # refute: a newer announcement of ours
                self._refute = True
                continue
            m = self.directory.get(key)
            if m is None or m.liveness is Liveness.DEAD:
                continue  # news to nobody
            # See for ourselves before believing it: one probe. The relay
            # that sent the notice probed it directly and through others and
            # suspected it for suspect_timeout_s; if it is silent to us too,
            # it is dead, with no suspicion of our own (each relay passing
            # the notice on after a suspicion period of its own took ~6 s a
            # hop). Even when we hold a newer announcement than the notice
            # names: a relay re-signs when its load changes, so its last
            # version may be newer than its declarer's and still be from
            # before it died. An answer refutes a notice.
            probing = [p for p in self._probes.values() if p.target == key]
            for p in probing:
                p.corroborate = True
            if not probing:
                self._probe(key, now, corroborate=True)

    # ------------------------------------------------------------ client side

    def _on_answer(self, key: PublicKey, body: Body, now: float) -> bool:
        """Act on an answer; False if no relay answers another with this body."""
        if isinstance(body, DigestReply | PullReply) and not self._answers_asked(key):
            return False
        if isinstance(body, DigestReply | PullReply | GossipAck | LocationAck | ProbeAnswer):
            if (
                isinstance(body, GossipAck)
                and key not in self._acquainted
                and self._asked.get(key)
                and key not in self._pages
            ):
                # our introduction went through only now (it had to prove our
                # address first): the DIGEST that followed it was dropped by a
                # relay that did not know us yet. Ask again, not a sync later.
                self._send(key, Digest(self.directory.digest()), now)
            self._acquainted.add(key)  # answered as a relay: it knows us
        if isinstance(body, Pong):
            self._on_pong(key, body, now)
        elif isinstance(body, DigestReply):
            self._on_digest_reply(key, body, now)
        elif isinstance(body, PullReply):
            for raw in body.announcements:
                self.learn(raw, now)
            self._pulled(key, now)
        elif isinstance(body, ProbeAnswer):
            self._on_probe_answer(body, now)
        elif isinstance(body, DiscoveryResponse):
            self.locations.on_answer(key, body, now)
        elif isinstance(body, Error):
            # a refusal (its rate limit, a replay, ...): a sign of life that
            # says why; counted apart from bodies no relay sends another
            code = body.code
            self._count(f"refused_{getattr(code, 'name', str(int(code))).lower()}")
        elif isinstance(body, LocationAck):
            self.locations.acked(key)
        elif not isinstance(body, GossipAck):
            return False  # (an ack needs nothing: it was the sign of life)
        return True

    def _pulled(self, key: PublicKey, now: float) -> None:
        waiting = self._next_page.get(key)
        if waiting is None:
            return
        left, pages = waiting
        if left > 1:
            self._next_page[key] = (left - 1, pages)
            return
        del self._next_page[key]
        self._pages[key] = pages
        self._send(key, Digest(self.directory.digest()), now)

    def _on_pong(self, key: PublicKey, body: Pong, now: float) -> None:
        probe = self._probes.pop(body.echo_id, None)
        if probe is not None:
            self._alive(probe.target, now)
        behalf = self._on_behalf.pop(body.echo_id, None)
        if behalf is not None:
            behalf.requester_reply(ProbeAnswer(behalf.target, behalf.nonce, True))

    def _on_probe_answer(self, body: ProbeAnswer, now: float) -> None:
        probe = self._probes.get(body.nonce)
        if probe is not None and body.alive and probe.target == body.target:
            del self._probes[body.nonce]
            self._alive(body.target, now)

    def _on_digest_reply(self, key: PublicKey, body: DigestReply, now: float) -> None:
        theirs = dict(body.entries)
        want = [k for k, i in body.entries if (self.directory.issued(k) or -1) < i]
        pulls = 0
        for start in range(0, len(want), MAX_PULL_KEYS):
            pulls += self._send(key, Pull(tuple(want[start : start + MAX_PULL_KEYS])), now)
        # relays it lists as live that we declared dead: tell it (it probes
        # for itself). A notice a relay missed in the gossip rounds (a few in
        # a thousand relay pairs when a fifth of 200 relays die at once) is
        # made good at its next sync, not by its own probing (up to N s).
        dead = [
            (k, m.issued_ms)
            for k, _ in body.entries
            if (m := self.directory.get(k)) is not None and m.liveness is Liveness.DEAD
        ]
        if dead:
            self._send(key, Gossip((), tuple(dead[:MAX_DEAD_NOTICES])), now)
        pages = self._pages.pop(key, 0) + 1
        if body.more:
            # their page is partial: what they lack is unknown yet. If it
            # named relays new to us, the next page follows once the pulls
            # are answered: a page is 25 relays, and one page a sync interval
            # left a relay joining a federation of N unaware of most of it for
            # N/25 intervals. (Newer versions alone do not: gossip brings
            # those, and in a federation that re-signs all the time nearly
            # every page has one; following them doubled the DIGESTs.)
            new = any(self.directory.issued(k) is None for k in want)
            if new and pulls and pages < self.config.max_sync_pages:
                self._next_page[key] = (pulls, pages)
            return
        buckets = {i for i in range(16) if body.buckets >> i & 1}
        give = [
            raw
            for k, i in self.directory.versions_in(buckets)
            if theirs.get(k, -1) < i and (raw := self.directory.raw_announcement(k)) is not None
        ]
        self._gossip_to(key, give, now)

    # ------------------------------------------------------------ timers

    def next_timer(self) -> float:
        t = min(self._next_sync, self._next_probe, self._next_announce, self._next_place)
        if self._push or self._dead_notices:
            t = min(t, self._next_push)
        for p in self._probes.values():
            t = min(t, p.deadline)
        for b in self._on_behalf.values():
            t = min(t, b.deadline)
        return min(t, self.locations.next_timer())

    def handle_timer(
        self, now: float, own_announcement: Callable[[float, bool], bytes | None]
    ) -> None:
        if now >= self._next_announce:
            self._next_announce = now + self.config.announce_refresh_s
            raw = own_announcement(now, self._refute)
            self._refute = False
            if raw is not None:
                self.set_own(raw)
        self._expire(now)
        self._check_probes(now)
        if now >= self._next_probe:
            self._next_probe = now + self.config.probe_interval_s
            self._probe_next(now)
        if now >= self._next_push and (self._push or self._dead_notices):
            self._next_push = now + self.config.gossip_interval_s
            self._flush_gossip(now)
        if now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval_s
            self._sync(now)
        if now >= self._next_place:
            self._live_changed = False
            self._next_place = now + self.config.location_refresh_s
            self.locations.place_all(now)  # re-signed, to every holder
        elif self._live_changed:
            # only the ~k/N of the records whose holders changed, as they
            # are, to their new holders (not a re-signing of everything)
            self._live_changed = False
            self.locations.place_moved(now)
        self.locations.handle_timer(now)

    def _expire(self, now: float) -> None:
        wall_ms = self._wall_ms(now)
        for key in self.directory.expire(wall_ms):
            log.info("relay %s left the federation (announcement expired)", key.short())
            self._channels.pop(key, None)
            self._acquainted.discard(key)
            self._next_page.pop(key, None)
            self._pages.pop(key, None)
            self._asked.pop(key, None)
            self._live_changed = True
        self.locations.expire(wall_ms)

    # ------------------------------------------------------------ gossip

    def _others(self) -> list[PublicKey]:
        return [k for k in self.directory.live() if k != self.key]

    def _flush_gossip(self, now: float) -> None:
        anns, self._push = self._push, []
        # each notice goes out in dead_notice_rounds rounds, to fanout relays
        # each time: sent once, as announcements are, it died out before
        # reaching everyone (receivers pass it on only once they agree), and
        # the last relays learned of a death from their own probing, up to N s
        dead = list(self._dead_notices)[:MAX_DEAD_NOTICES]
        for notice in dead:
            left = self._dead_notices.pop(notice) - 1
            if left > 0:
                self._dead_notices[notice] = left
        targets = self._others()
        self._random.shuffle(targets)
        fanout = self.config.gossip_fanout
        if len(targets) < fanout:
            # a relay that knows few others yet (the federation is starting):
            # its bootstrap relays too, known or not (else news that reaches
            # a relay knowing only the newcomer dies there)
            targets += [k for k in self._bootstrap if self.directory.get(k) is None]
        for key in targets[:fanout]:
            # never a relay's own announcement to it: a copy that dies there
            self._gossip_to(key, [raw for k, raw in anns if k != key], now, dead)

    def _gossip_to(
        self,
        key: PublicKey,
        anns: list[bytes],
        now: float,
        dead: list[tuple[PublicKey, int]] | None = None,
    ) -> None:
        own = self.directory.own_announcement
        if anns and key not in self._acquainted and own is not None and own.raw not in anns:
            # it may not know us, and would drop the lot (only known relays
            # speak federation): ours first, so news spreads from us too
            anns = [own.raw, *anns]
        notices = tuple(dead or ())
        room = MAX_BODY - len(encode_body(Gossip((), notices)))
        for i, chunk in enumerate(packed(anns, room, GOSSIP_MOST) or [[]]):
            if chunk or (notices and i == 0):
                self._send(key, Gossip(tuple(chunk), notices if i == 0 else ()), now)

    def _sync(self, now: float) -> None:
        others = self._others()
        if others:
            peer = self._random.choice(others)
        elif self._bootstrap:
            peer = self._random.choice(sorted(self._bootstrap, key=lambda k: k.raw))
        else:
            return
        own = self.directory.own_announcement
        if peer not in self._acquainted and own is not None:
            # a relay that does not know us drops our DIGEST (only known
            # relays speak federation): introduce ourselves first. (We may
            # know it from others' gossip while ours never reached it.)
            self._send(peer, Gossip((own.raw,)), now)
        self._acquainted.discard(peer)  # until its answer shows it still knows us
        self._pages.pop(peer, None)
        self._next_page.pop(peer, None)
        self._send(peer, Digest(self.directory.digest()), now)

    # ------------------------------------------------------------ liveness

    def _probe_next(self, now: float) -> None:
        if not self._probe_order:
            self._probe_order = [k for k in self._others()]
            self._random.shuffle(self._probe_order)
        while self._probe_order:
            key = self._probe_order.pop()
            m = self.directory.get(key)
            if m is not None and m.liveness is not Liveness.DEAD:
                self._probe(key, now)
                return

    def _probe(self, key: PublicKey, now: float, corroborate: bool = False) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if self._send(key, Ping(echo), now):
            deadline = now + self.config.probe_timeout_s
            self._probes[echo] = _Probe(key, echo, deadline, corroborate=corroborate)

    def _check_probes(self, now: float) -> None:
        for echo, p in list(self._probes.items()):
            if now < p.deadline:
                continue
            del self._probes[echo]
            if p.corroborate:
                self._declare_dead(p.target, now)
                continue
            if not p.indirect:
                helpers = [k for k in self._others() if k != p.target]
                self._random.shuffle(helpers)
                asked = 0
                for h in helpers[: self.config.indirect_probes]:
                    asked += self._send(h, ProbeRequest(p.target, echo), now)
                if asked:
                    self._probes[echo] = _Probe(
                        p.target, echo, now + self.config.probe_timeout_s, indirect=True
                    )
                    continue
            if self.directory.suspect(p.target, now):
                log.info("relay %s suspected (no answer to probes)", p.target.short())
        for m in self.directory.members():
            if m.liveness is Liveness.SUSPECT and now >= m.since + self.config.suspect_timeout_s:
                self._declare_dead(m.key, now)
        for echo, b in list(self._on_behalf.items()):
            if now >= b.deadline:
                del self._on_behalf[echo]
                b.requester_reply(ProbeAnswer(b.target, b.nonce, False))

    def _declare_dead(self, key: PublicKey, now: float) -> None:
        m = self.directory.get(key)
        if m is None or not self.directory.declare_dead(key, now):
            return
        log.warning("relay %s declared dead", key.short())
        self._dead_notices[(key, m.issued_ms)] = self.config.dead_notice_rounds
        self._live_changed = True

    # ------------------------------------------------------------ locations

    def peer_registered(
        self, peer: PublicKey, now: float, standby: bool = False, rtt_ms: int = RTT_UNKNOWN
    ) -> None:
        """A peer registered (or changed role) here: sign and place its record now."""
        self.locations.registered(peer, now, standby, rtt_ms)

    def peer_gone(self, peer: PublicKey) -> None:
        self.locations.gone(peer)

    def locate(self, peer: PublicKey, now: float, on_answer: Callable[[Found], None]) -> Found:
        return self.locations.locate(peer, now, on_answer)

    def is_home_of(self, peer: PublicKey) -> bool:
        """Whether ``peer`` registered here as its home (not standby, not unlisted)."""
        return self.locations.is_home_of(peer)

    def local_location(self, peer: PublicKey, now: float) -> Found:
        """From our own registrations' records or the records we hold."""
        return self.locations.local(peer, now)

    # ------------------------------------------------------------ views

    def live_announcements(
        self, page: int, per_page: int, region: str, caps: int
    ) -> tuple[tuple[bytes, ...], bool]:
        """A page of the live relays' announcements, filtered; and whether
        more follow. Pages are cut by size as well as count, the same way
        for every asker, so page numbers hold. (Filtered on what the
        directory decoded when it verified them: no signature checked here.)"""
        out = [
            ann.raw
            for ann in self.directory.live_members_announcements()
            if not (region and ann.info.region and ann.info.region != region)
            and ann.info.capabilities & caps == caps
        ]
        per_page = max(1, min(per_page, MAX_ANNOUNCEMENTS_PER_RESPONSE))
        pages = packed(out, RESPONSE_ROOM, per_page)
        if page >= len(pages):
            return (), False
        return tuple(pages[page]), page + 1 < len(pages)

    def record_count(self) -> int:
        return self.locations.count()
