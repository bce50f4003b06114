"""Location records: where each peer accepts sessions (sans-I/O).

A relay signs a record for every peer registered at it with the accept bit,
as its home or as its standby (``REGISTER_FLAG_STANDBY``; a registration made
only to reach another peer is unlisted and gets none), and stores it at the
``replicas`` relays that rendezvous hashing picks for the peer over the live
set. Records are re-signed every ``location_refresh_s`` (with the peer's
latest reported RTT) and re-placed at once when the live set changes.

A holder keeps at most two records per peer: the newest home record and the
newest standby record. A newer home record from another relay replaces the
old home's (the peer moved), and a relay whose record changes role replaces
its own. So a lookup can offer the asker both places, each with the peer's
RTT to it, and the asker weighs the whole path (docs/ARCHITECTURE.md).

A lookup asks the peer's holders (one DISCOVERY_QUERY each, so O(k) whatever
the number of relays) and answers with the first reply that brings a record
*for that peer*: a signed record for another peer is refused, not filed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wgrelay.discovery.directory import Liveness, RelayDirectory
from wgrelay.discovery.rendezvous import holders
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.constants import RTT_UNKNOWN
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S
from wgrelay.proto.federation import LocationStore
from wgrelay.proto.location import LocationRecord, decode_location, encode_location
from wgrelay.proto.messages import Body, DiscoveryQuery, DiscoveryResponse

log = logging.getLogger(__name__)

RTT_REPLACE_FRACTION = 0.25
"""A peer's reported RTT that moved by more than this re-signs its record
before the next refresh (and by at least RTT_REPLACE_MIN_MS)."""
RTT_REPLACE_MIN_MS = 10


@dataclass(frozen=True, slots=True)
class Located:
    """A place a peer accepts sessions: the relay, an endpoint there, the
    signed record (None only for a relay that announces no record), and
    what the record says."""

    home: PublicKey
    endpoint: Endpoint
    record: bytes | None
    standby: bool = False
    rtt_ms: int = RTT_UNKNOWN


Found = tuple[Located, ...]
"""Where a peer is: its home first, then its standby; empty if unknown."""


@dataclass(slots=True)
class _Own:
    raw: bytes
    standby: bool
    rtt_ms: int


@dataclass(slots=True)
class _Lookup:
    peer: PublicKey
    deadline: float
    asked: dict[int, PublicKey] = field(default_factory=dict)
    waiters: list[Callable[[Found], None]] = field(default_factory=list)


SendTo = Callable[[PublicKey, Body, float], bool]


class LocationBook:
    """Our peers' records (signed, placed) and the records we hold for others."""

    def __init__(
        self,
        identity: RelayIdentity,
        directory: RelayDirectory,
        send: SendTo,
        wall_ms: Callable[[float], int],
        new_id: Callable[[], int],
        count: Callable[[str], None],
        *,
        replicas: int,
        ttl_s: int,
        locate_timeout_s: float,
        max_records: int,
    ) -> None:
        self.identity = identity
        self.key = identity.public
        self.directory = directory
        self._send = send
        self._wall_ms = wall_ms
        self._new_id = new_id
        self._count = count
        self.replicas = replicas
        self.ttl_s = ttl_s
        self.locate_timeout_s = locate_timeout_s
        self.max_records = max_records
        self._own: dict[PublicKey, _Own] = {}
        self._placed: dict[PublicKey, tuple[PublicKey, ...]] = {}
        self._held: dict[PublicKey, dict[bool, LocationRecord]] = {}
        """peer -> {standby?: record}: its home's and its standby's, newest each."""
        self._lookups: dict[PublicKey, _Lookup] = {}
        self._queries: dict[int, PublicKey] = {}

    # ------------------------------------------------------------ our peers

    def registered(self, peer: PublicKey, now: float, standby: bool, rtt_ms: int) -> None:
        """A peer registered here (or changed role): sign and place its record now."""
        self._own[peer] = _Own(b"", standby, rtt_ms)
        self._sign(peer, now)
        self._place(peer, now, force=True)

    def reported_rtt(self, peer: PublicKey, rtt_ms: int, now: float) -> None:
        """The peer's RTT to us, from its heartbeat: re-placed if it moved much."""
        own = self._own.get(peer)
        if own is None or rtt_ms == RTT_UNKNOWN or rtt_ms == own.rtt_ms:
            return
        old = own.rtt_ms
        own.rtt_ms = rtt_ms
        if old == RTT_UNKNOWN or (
            abs(rtt_ms - old) >= max(RTT_REPLACE_MIN_MS, RTT_REPLACE_FRACTION * old)
        ):
            self._sign(peer, now)
            self._place(peer, now, force=True)

    def gone(self, peer: PublicKey) -> None:
        self._own.pop(peer, None)
        self._placed.pop(peer, None)  # its records expire where they are

    def place_all(self, now: float) -> None:
        """Refresh: re-sign every record and place it where it now belongs."""
        for peer in list(self._own):
            self._sign(peer, now)
            self._place(peer, now, force=True)

    def _sign(self, peer: PublicKey, now: float) -> None:
        own = self._own[peer]
        own.raw = encode_location(
            peer, self._wall_ms(now), self.ttl_s, self.identity, own.standby, own.rtt_ms
        )

    def _place(self, peer: PublicKey, now: float, force: bool) -> None:
        chosen = tuple(holders(peer, self.directory.live(), self.replicas))
        if not force and self._placed.get(peer) == chosen:
            return
        self._placed[peer] = chosen
        raw = self._own[peer].raw
        for holder in chosen:
            if holder == self.key:
                self.hold(raw, now)
            else:
                self._send(holder, LocationStore((raw,)), now)

    def is_listed(self, peer: PublicKey) -> bool:
        """Whether we place a record for ``peer`` (home or standby here)."""
        return peer in self._own

    def is_home_of(self, peer: PublicKey) -> bool:
        own = self._own.get(peer)
        return own is not None and not own.standby

    def own(self, peer: PublicKey) -> Located | None:
        """Our signed record for a peer registered here (home or standby)."""
        own = self._own.get(peer)
        ann = self.directory.own_announcement
        if own is None or ann is None:
            return None
        return Located(self.key, ann.info.endpoints[0], own.raw, own.standby, own.rtt_ms)

    # ------------------------------------------------------------ held for others

    def hold(self, raw: bytes, now: float) -> bool:
        """Keep a record for a peer, if it checks out (counted by reason if not)."""
        try:
            rec = decode_location(raw)
        except RemoteProtocolError:
            self._count("bad_location")
            return False
        return self._hold(rec, now)

    def _hold(self, rec: LocationRecord, now: float) -> bool:
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
        slots = self._held.get(rec.peer)
        if slots is None:
            if len(self._held) >= self.max_records:
                self._count("location_store_full")
                return False
            slots = self._held[rec.peer] = {}
        old = slots.get(rec.standby)
        if old is not None and rec.issued_ms <= old.issued_ms:
            self._count("location_not_newer")
            return False
        other = slots.get(not rec.standby)
        if other is not None and other.home == rec.home:
            if other.issued_ms >= rec.issued_ms:
                self._count("location_not_newer")
                return False
            del slots[not rec.standby]  # the same relay, now in the other role
        slots[rec.standby] = rec
        return True

    def held(self, peer: PublicKey, now: float) -> Found:
        """The records we hold for ``peer`` that still count, home first."""
        slots = self._held.get(peer)
        if not slots:
            return ()
        wall_ms = self._wall_ms(now)
        out: list[Located] = []
        for standby in (False, True):
            rec = slots.get(standby)
            if rec is None or rec.expires_ms() <= wall_ms:
                continue
            if rec.home == self.key:
                ann = self.directory.own_announcement
                endpoint = ann.info.endpoints[0] if ann is not None else None
            else:
                m = self.directory.get(rec.home)
                alive = m is not None and m.liveness is not Liveness.DEAD
                endpoint = m.announcement.info.endpoints[0] if m is not None and alive else None
            if endpoint is not None:
                out.append(Located(rec.home, endpoint, rec.raw, rec.standby, rec.rtt_ms))
        return tuple(out)

    def local(self, peer: PublicKey, now: float) -> Found:
        """What we know without asking: our own record first, then held ones."""
        mine = self.own(peer)
        held = tuple(h for h in self.held(peer, now) if mine is None or h.home != self.key)
        return ((mine,) if mine is not None else ()) + held[: 2 - (mine is not None)]

    def expire(self, wall_ms: int) -> None:
        for peer, slots in list(self._held.items()):
            for standby, rec in list(slots.items()):
                if rec.expires_ms() <= wall_ms:
                    del slots[standby]
            if not slots:
                del self._held[peer]

    def count(self) -> int:
        """Records held for others."""
        return sum(len(s) for s in self._held.values())

    # ------------------------------------------------------------ lookups

    def locate(self, peer: PublicKey, now: float, on_answer: Callable[[Found], None]) -> Found:
        """Where is ``peer``? Answers at once when we know; else asks its
        holders and calls ``on_answer`` later (and returns ())."""
        known = self.local(peer, now)
        if known:
            return known
        lk = self._lookups.get(peer)
        if lk is None:
            lk = self._lookups[peer] = _Lookup(peer, now + self.locate_timeout_s)
            for holder in holders(peer, self.directory.live(), self.replicas):
                if holder == self.key:
                    continue
                qid = self._new_id()
                if self._send(holder, DiscoveryQuery(qid, 0, 0, locate=peer), now):
                    lk.asked[qid] = holder
                    self._queries[qid] = peer
            if not lk.asked:
                del self._lookups[peer]
                on_answer(())
                return ()
        lk.waiters.append(on_answer)
        return ()

    def on_answer(self, key: PublicKey, body: DiscoveryResponse, now: float) -> None:
        """A holder's answer to one of our lookups."""
        peer = self._queries.pop(body.query_id, None)
        lk = self._lookups.get(peer) if peer is not None else None
        if lk is None or peer is None:
            return
        lk.asked.pop(body.query_id, None)
        found = False
        for raw in (body.record, body.alternate_record):
            if raw is None:
                continue
            try:
                rec = decode_location(raw)
            except RemoteProtocolError:
                self._count("bad_location")
                continue
            if rec.peer != peer:
                self._count("location_wrong_peer")  # signed, but not what we asked
                continue
            self._hold(rec, now)
            found = True
        result = self.held(peer, now) if found else ()
        if result:
            self._finish(peer, result)
        elif not lk.asked:
            self._finish(peer, ())

    def next_timer(self) -> float:
        return min((lk.deadline for lk in self._lookups.values()), default=float("inf"))

    def handle_timer(self, now: float) -> None:
        for peer, lk in list(self._lookups.items()):
            if now >= lk.deadline:
                self._finish(peer, ())

    def _finish(self, peer: PublicKey, found: Found) -> None:
        lk = self._lookups.pop(peer, None)
        if lk is None:
            return
        for qid in lk.asked:
            self._queries.pop(qid, None)
        for waiter in lk.waiters:
            waiter(found)
