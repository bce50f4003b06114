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
  each side then pulls what it lacks and pushes what the other lacks. Lost
  gossip, partitions that heal, and a new relay's first contact with one
  bootstrap relay all converge this way.
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
from dataclasses import dataclass, field

from wgrelay.discovery.directory import Liveness, RelayDirectory, Verdict
from wgrelay.discovery.rendezvous import holders
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import (
    MAX_ANNOUNCEMENTS_PER_RESPONSE,
    MAX_DIGEST_ENTRIES,
    MAX_PULL_KEYS,
)
from wgrelay.proto.cookie import CookieReply
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S, ControlHeader
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
from wgrelay.proto.location import LocationRecord, decode_location, encode_location
from wgrelay.proto.messages import Body, DiscoveryQuery, DiscoveryResponse, Ping, Pong
from wgrelay.relay.channels import RelayChannel

log = logging.getLogger(__name__)

Addr = tuple[object, ...]
Send = Callable[[bytes, Endpoint], None]
Reply = Callable[[Body], None]


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
    announce_refresh_s: float = 60.0
    replicas: int = 3
    location_ttl_s: int = 120
    location_refresh_s: float = 40.0
    locate_timeout_s: float = 1.0
    max_records: int = 200_000
    """Location records held for others, at most (a bound, not a quota)."""


@dataclass(frozen=True, slots=True)
class Located:
    """Where a peer is: its home relay, an endpoint there, the signed record."""

    home: PublicKey
    endpoint: Endpoint
    record: bytes | None


@dataclass(slots=True)
class _Probe:
    target: PublicKey
    echo: int
    deadline: float
    indirect: bool = False


@dataclass(slots=True)
class _Lookup:
    peer: PublicKey
    deadline: float
    asked: dict[int, PublicKey] = field(default_factory=dict)
    """query id -> the holder asked."""
    waiters: list[Callable[[Located | None], None]] = field(default_factory=list)


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
        self._push: list[bytes] = []
        self._dead_notices: list[tuple[PublicKey, int]] = []
        self._probes: dict[int, _Probe] = {}
        self._probe_order: list[PublicKey] = []
        self._on_behalf: dict[int, _ProbeOnBehalf] = {}
        self._records: dict[PublicKey, LocationRecord] = {}
        """Location records we hold for other relays' peers (newest per peer)."""
        self._own_records: dict[PublicKey, bytes] = {}
        """Signed records of our registered peers."""
        self._placed: dict[PublicKey, tuple[PublicKey, ...]] = {}
        self._lookups: dict[PublicKey, _Lookup] = {}
        self._queries: dict[int, PublicKey] = {}
        self._next_id = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self._next_push = now
        self._next_sync = now
        self._next_probe = now + config.probe_interval_s
        self._next_announce = now
        self._next_place = now + config.location_refresh_s
        self._live_changed = False
        self.counters: dict[str, int] = {}

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
            self._push.append(raw)

    def is_relay(self, x25519: bytes) -> bool:
        return self.directory.by_x25519(x25519) is not None

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # ------------------------------------------------------------ channels

    def _wall_ms(self, now: float) -> int:
        return int(self._wall(now) * 1000)

    def _addr_of(self, key: PublicKey) -> Endpoint | None:
        m = self.directory.get(key)
        if m is not None:
            return m.announcement.info.endpoints[0]
        return self._bootstrap.get(key)

    def _channel(self, key: PublicKey) -> RelayChannel | None:
        ch = self._channels.get(key)
        addr = self._addr_of(key)
        if addr is None:
            return None
        if ch is None or ch.addr != addr:
            ch = self._channels[key] = RelayChannel(self.identity, key, addr, self._rng)
        return ch

    def _send(self, key: PublicKey, body: Body, now: float) -> bool:
        ch = self._channel(key)
        if ch is None:
            return False
        self._out.append((ch.seal(body, now, self._wall(now)), ch.addr))
        self._count(f"sent_{type(body).__name__}")
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
        self._on_answer(key, body, now)
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
            self._push.append(ann.raw)
            if verdict is Verdict.NEW:
                log.info("relay %s joined the federation", ann.info.key.short())
                self._live_changed = True
        return verdict.changed

    def _alive(self, key: PublicKey, now: float) -> None:
        if self.directory.acked(key, now):
            log.info("relay %s is alive again", key.short())
            self._live_changed = True

    def introduced_by(self, x25519: bytes, anns: tuple[bytes, ...], now: float) -> bool:
        """A GOSSIP from an unknown sender: does it carry the sender's own
        announcement? (the only way a relay introduces itself)"""
        for raw in anns:
            try:
                ann = decode_announcement(raw)
            except RemoteProtocolError:
                continue
            if self.directory.learn(ann, now, self._wall_ms(now)).changed:
                self._push.append(ann.raw)
                self._live_changed = True
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
            reply(PullReply(anns[:MAX_PULL_KEYS]))
        elif isinstance(body, LocationStore):
            reply(LocationAck(sum(self._hold(raw, now) for raw in body.records)))
        elif isinstance(body, ProbeRequest):
            self._probe_on_behalf(body, reply, now)

    def _digest_reply(self, body: Digest) -> DigestReply:
        differ = self.directory.differing(body.buckets)
        mask = sum(1 << i for i in differ)
        entries = self.directory.versions_in(differ)
        return DigestReply(
            tuple(entries[:MAX_DIGEST_ENTRIES]), mask, len(entries) > MAX_DIGEST_ENTRIES
        )

    def _hold(self, raw: bytes, now: float) -> bool:
        """Keep a location record for another relay's peer, if it checks out."""
        try:
            rec = decode_location(raw)
        except RemoteProtocolError:
            self._count("bad_location")
            return False
        wall_ms = self._wall_ms(now)
        if rec.home != self.key and self.directory.get(rec.home) is None:
            self._count("location_unknown_home")
            return False
        if rec.issued_ms > wall_ms + int(MAX_CLOCK_SKEW_S * 1000):
            self._count("location_future")
            return False
        if rec.expires_ms() <= wall_ms:
            self._count("location_expired")
            return False
        old = self._records.get(rec.peer)
        if old is not None and rec.issued_ms <= old.issued_ms:
            self._count("location_not_newer")
            return False
        if old is None and len(self._records) >= self.config.max_records:
            self._count("location_store_full")
            return False
        self._records[rec.peer] = rec
        return True

    def _probe_on_behalf(self, body: ProbeRequest, reply: Reply, now: float) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if body.target == self.key or not self._send(body.target, Ping(echo), now):
            reply(ProbeAnswer(body.target, body.nonce, body.target == self.key))
            return
        self._on_behalf[echo] = _ProbeOnBehalf(
            reply, body.target, body.nonce, echo, now + self.config.probe_timeout_s
        )

    def _on_dead_notices(self, dead: tuple[tuple[PublicKey, int], ...], now: float) -> None:
        for key, issued in dead:
            if key == self.key:
                self._next_announce = now  # refute: a newer announcement of ours
                continue
            m = self.directory.get(key)
            if m is None or m.issued_ms > issued or m.liveness is Liveness.DEAD:
                continue  # refuted already, or news to nobody
            if not any(p.target == key for p in self._probes.values()):
                self._probe(key, now)  # see for ourselves before believing it

    # ------------------------------------------------------------ client side

    def _on_answer(self, key: PublicKey, body: Body, now: float) -> None:
        if isinstance(body, Pong):
            self._on_pong(key, body, now)
        elif isinstance(body, DigestReply):
            self._on_digest_reply(key, body, now)
        elif isinstance(body, PullReply):
            for raw in body.announcements:
                self.learn(raw, now)
        elif isinstance(body, ProbeAnswer):
            self._on_probe_answer(body, now)
        elif isinstance(body, DiscoveryResponse):
            self._on_locate_answer(key, body, now)
        elif isinstance(body, GossipAck | LocationAck):
            pass  # the answer itself was the sign of life

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
        for start in range(0, len(want), MAX_PULL_KEYS):
            self._send(key, Pull(tuple(want[start : start + MAX_PULL_KEYS])), now)
        if body.more:
            return  # their page is partial: what they lack is unknown yet
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
        for lk in self._lookups.values():
            t = min(t, lk.deadline)
        return t

    def handle_timer(self, now: float, own_announcement: Callable[[float], bytes | None]) -> None:
        if now >= self._next_announce:
            self._next_announce = now + self.config.announce_refresh_s
            raw = own_announcement(now)
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
        if now >= self._next_place or self._live_changed:
            self._live_changed = False
            self._next_place = now + self.config.location_refresh_s
            self._place_all(now)
        for peer, lk in list(self._lookups.items()):
            if now >= lk.deadline:
                self._finish_lookup(peer, None)

    def _expire(self, now: float) -> None:
        wall_ms = self._wall_ms(now)
        for key in self.directory.expire(wall_ms):
            log.info("relay %s left the federation (announcement expired)", key.short())
            self._channels.pop(key, None)
            self._live_changed = True
        self._records = {p: r for p, r in self._records.items() if r.expires_ms() > wall_ms}

    # ------------------------------------------------------------ gossip

    def _others(self) -> list[PublicKey]:
        return [k for k in self.directory.live() if k != self.key]

    def _flush_gossip(self, now: float) -> None:
        anns, self._push = self._push, []
        dead, self._dead_notices = self._dead_notices[:MAX_DEAD_NOTICES], []
        targets = self._others()
        self._random.shuffle(targets)
        for key in targets[: self.config.gossip_fanout] or list(self._bootstrap):
            self._gossip_to(key, anns, now, dead)

    def _gossip_to(
        self,
        key: PublicKey,
        anns: list[bytes],
        now: float,
        dead: list[tuple[PublicKey, int]] | None = None,
    ) -> None:
        # a few per datagram (each ~170-190 bytes, 1200 at most)
        chunks = [anns[i : i + 5] for i in range(0, len(anns), 5)] or [[]]
        for i, chunk in enumerate(chunks):
            notices = tuple(dead or ()) if i == 0 else ()
            if chunk or notices:
                self._send(key, Gossip(tuple(chunk), notices), now)

    def _sync(self, now: float) -> None:
        others = self._others()
        if others:
            peer = self._random.choice(others)
        elif self._bootstrap:
            peer = self._random.choice(sorted(self._bootstrap, key=lambda k: k.raw))
            own = self.directory.own_announcement
            if own is not None:  # introduce ourselves first
                self._send(peer, Gossip((own.raw,)), now)
        else:
            return
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

    def _probe(self, key: PublicKey, now: float) -> None:
        echo = int.from_bytes(self._rng(8), "big")
        if self._send(key, Ping(echo), now):
            self._probes[echo] = _Probe(key, echo, now + self.config.probe_timeout_s)

    def _check_probes(self, now: float) -> None:
        for echo, p in list(self._probes.items()):
            if now < p.deadline:
                continue
            del self._probes[echo]
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
                self.directory.declare_dead(m.key, now)
                log.warning("relay %s declared dead", m.key.short())
                self._dead_notices.append((m.key, m.issued_ms))
                self._live_changed = True
        for echo, b in list(self._on_behalf.items()):
            if now >= b.deadline:
                del self._on_behalf[echo]
                b.requester_reply(ProbeAnswer(b.target, b.nonce, False))

    # ------------------------------------------------------------ locations

    def peer_registered(self, peer: PublicKey, now: float) -> None:
        """A peer registered (or moved) here: sign and place its record now."""
        self._own_records[peer] = encode_location(
            peer, self._wall_ms(now), self.config.location_ttl_s, self.identity
        )
        self._place(peer, now, force=True)

    def peer_gone(self, peer: PublicKey) -> None:
        self._own_records.pop(peer, None)
        self._placed.pop(peer, None)  # its records expire where they are

    def _place_all(self, now: float) -> None:
        wall_ms = self._wall_ms(now)
        for peer in list(self._own_records):
            self._own_records[peer] = encode_location(
                peer, wall_ms, self.config.location_ttl_s, self.identity
            )
            self._place(peer, now, force=True)

    def _place(self, peer: PublicKey, now: float, force: bool) -> None:
        chosen = tuple(holders(peer, self.directory.live(), self.config.replicas))
        if not force and self._placed.get(peer) == chosen:
            return
        self._placed[peer] = chosen
        raw = self._own_records[peer]
        for holder in chosen:
            if holder == self.key:
                self._hold(raw, now)
            else:
                self._send(holder, LocationStore((raw,)), now)

    def locate(
        self, peer: PublicKey, now: float, on_answer: Callable[[Located | None], None]
    ) -> Located | None:
        """Where is ``peer``? Answers at once when we know; else asks its
        holders and calls ``on_answer`` later (and returns None)."""
        known = self.local_location(peer, now)
        if known is not None:
            return known
        lk = self._lookups.get(peer)
        if lk is None:
            lk = self._lookups[peer] = _Lookup(peer, now + self.config.locate_timeout_s)
            for holder in holders(peer, self.directory.live(), self.config.replicas):
                if holder == self.key:
                    continue
                qid = self._new_id()
                if self._send(holder, DiscoveryQuery(qid, 0, 0, locate=peer), now):
                    lk.asked[qid] = holder
                    self._queries[qid] = peer
            if not lk.asked:
                del self._lookups[peer]
                on_answer(None)
                return None
        lk.waiters.append(on_answer)
        return None

    def is_home_of(self, peer: PublicKey) -> bool:
        """Whether we place ``peer``'s location record (it registered here
        as its home, not as a standby)."""
        return peer in self._own_records

    def own_location(self, peer: PublicKey) -> Located | None:
        """Our signed record for a peer registered here as its home."""
        raw = self._own_records.get(peer)
        own = self.directory.own_announcement
        if raw is None or own is None:
            return None
        return Located(self.key, own.info.endpoints[0], raw)

    def local_location(self, peer: PublicKey, now: float) -> Located | None:
        """From our own registrations' records or the records we hold."""
        mine = self.own_location(peer)
        if mine is not None:
            return mine
        rec = self._records.get(peer)
        if rec is not None and rec.expires_ms() > self._wall_ms(now):
            m = self.directory.get(rec.home)
            if m is not None and m.liveness is not Liveness.DEAD:
                return Located(rec.home, m.announcement.info.endpoints[0], rec.raw)
        return None

    def _on_locate_answer(self, key: PublicKey, body: DiscoveryResponse, now: float) -> None:
        peer = self._queries.pop(body.query_id, None)
        lk = self._lookups.get(peer) if peer is not None else None
        if lk is None or peer is None:
            return
        lk.asked.pop(body.query_id, None)
        if body.location is not None and body.record is not None and self._hold(body.record, now):
            rec = self._records[peer]
            m = self.directory.get(rec.home)
            endpoint = m.announcement.info.endpoints[0] if m is not None else body.location.endpoint
            self._finish_lookup(peer, Located(rec.home, endpoint, rec.raw))
        elif not lk.asked:
            self._finish_lookup(peer, None)

    def _finish_lookup(self, peer: PublicKey, found: Located | None) -> None:
        lk = self._lookups.pop(peer, None)
        if lk is None:
            return
        for qid in lk.asked:
            self._queries.pop(qid, None)
        for waiter in lk.waiters:
            waiter(found)

    # ------------------------------------------------------------ views

    def live_announcements(
        self, page: int, per_page: int, region: str, caps: int
    ) -> tuple[tuple[bytes, ...], bool]:
        """A page of the live relays' announcements, filtered; and whether more follow."""
        out: list[bytes] = []
        for raw in self.directory.live_announcements():
            try:
                info = decode_announcement(raw).info
            except RemoteProtocolError:
                continue
            if region and info.region and info.region != region:
                continue
            if info.capabilities & caps != caps:
                continue
            out.append(raw)
        per_page = max(1, min(per_page, MAX_ANNOUNCEMENTS_PER_RESPONSE))
        start = page * per_page
        return tuple(out[start : start + per_page]), len(out) > start + per_page

    def record_count(self) -> int:
        return len(self._records)
