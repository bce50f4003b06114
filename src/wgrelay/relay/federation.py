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
from collections.abc import Callable

from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    MAX_ANNOUNCEMENTS_PER_RESPONSE,
    MAX_PULL_KEYS,
    RTT_UNKNOWN,
)
from wgrelay.proto.envelope import ControlHeader
from wgrelay.proto.federation import (
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
from wgrelay.proto.messages import Body, DiscoveryResponse, Error, Ping, Pong
from wgrelay.proto.receipts import ReceiptsAck
from wgrelay.relay.federation_base import (
    PULL_REPLY_ROOM,
    RESPONSE_ROOM,
    FederationConfig,
    Reply,
    packed,
)
from wgrelay.relay.federation_spread import FederationSpread
from wgrelay.relay.locations import Found

log = logging.getLogger(__name__)

__all__ = ["Federation", "FederationConfig"]


class Federation(FederationSpread):
    # ------------------------------------------------------------ inputs

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
        elif not isinstance(body, GossipAck | ReceiptsAck):  # (credits.py: RECEIPTS)
            return False  # (an ack needs nothing: it was the sign of life)
        return True

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
        for key in self.rtts.due(now):  # leg relays agents weigh (relay_rtts.py)
            self._send(key, Ping(int.from_bytes(self._rng(8), "big")), now)
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
            self.rtts.forget(key)
            self._live_changed = True
        self.locations.expire(wall_ms)

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
