"""Location records: where each peer accepts sessions (sans-I/O).

A relay signs a record for every peer registered at it with the accept bit,
as its home or as its standby (``REGISTER_FLAG_STANDBY``; a registration made
only to reach another peer is unlisted and gets none), and stores it at the
``replicas`` relays that rendezvous hashing picks for the peer over the live
set. Records are re-signed every ``location_refresh_s`` (with the peer's
latest reported RTT) and sent to every holder then, in LOCATION_STOREs of up
to seven records per holder. When the live set changes, only the records
whose holders changed move, unchanged (not re-signed), to the new holders
only: a relay joining or leaving costs about k/N of the records, not all.

A holder keeps one record per (peer, signing relay), the newest that relay
signed, and at most ``MAX_RECORDS_PER_PEER`` per peer: no relay can displace
another's record for a peer by signing one of its own (any relay can sign a
record for any peer; only the asker can find out which is true). A lookup
offers them best first (``held``): home records before standby ones, the
freshest home first, then the home record held the longest without a break,
then the rest freshest first. A record counts as dated no later than it
arrived and lives at most its ttl from then, so dating one ahead buys
nothing. Each signing relay may hold at most ``quota()`` records here, its
expected share with generous headroom, so one relay cannot fill the store
(``max_records``, the last resort) and lock out everyone else's peers.

A lookup asks the peer's holders (one DISCOVERY_QUERY each, so O(k) whatever
the number of relays) and answers with the first reply that brings a record
*for that peer*: a signed record for another peer is refused, not filed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from wgrelay.discovery.directory import Liveness, RelayDirectory
from wgrelay.discovery.rendezvous import holders, weight
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.constants import (
    COOKIE_LEN,
    LOCATION_RECORD_LEN,
    MAX_CONTROL_SIZE,
    MAX_RECORDS_PER_MESSAGE,
    RTT_UNKNOWN,
)
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S, MIN_CONTROL_SIZE
from wgrelay.proto.federation import LocationStore
from wgrelay.proto.location import LocationRecord, decode_location, encode_location
from wgrelay.proto.messages import Body, DiscoveryQuery, DiscoveryResponse

log = logging.getLogger(__name__)

RTT_REPLACE_FRACTION = 0.25
"""A peer's reported RTT that moved by more than this re-signs its record
before the next refresh (and by at least RTT_REPLACE_MIN_MS)."""
RTT_REPLACE_MIN_MS = 10

MAX_RECORDS_PER_PEER = 4
"""Records held for one peer, one per signing relay. An honest federation
needs two (home, standby) and briefly three or four (a peer that moved: its
old places' records live out their ttl)."""

EXPECTED_MAX_PEERS_PER_RELAY = 100_000
"""Peers one relay may list, as holders see it: ten times the default
``RelayConfig.max_registrations`` (10,000)."""
QUOTA_FLOOR = 1_000
"""Records any relay may hold here, however large the federation: rendezvous
hashing spreads a signer's records unevenly over few expected ones."""

RECORDS_PER_STORE = min(
    MAX_RECORDS_PER_MESSAGE,
    (MAX_CONTROL_SIZE - MIN_CONTROL_SIZE - COOKIE_LEN - 1) // LOCATION_RECORD_LEN,
)
"""Records in one LOCATION_STORE: as many as the envelope (header, cookie,
tag, timestamp: 99 B) and the count byte leave room for in 1,200 B: 7."""


@dataclass(slots=True)
class _Held:
    """A record held for another relay, and what we make of it."""

    rec: LocationRecord
    fresh_ms: int
    """When it was signed as far as we believe: never later than it arrived."""
    expires_ms: int
    """Its ttl from ``fresh_ms``: a record dated ahead does not live longer."""
    since_ms: int
    """Since when its relay's records for this peer have been here without a break."""


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
"""Where a peer may be, best first (``LocationBook.held``); empty if unknown."""


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

STORE_ACK_WAIT_S = 2.0
STORE_RETRIES = 3
"""A holder that does not acknowledge a LOCATION_STORE within STORE_ACK_WAIT_S
gets our records for it again, up to STORE_RETRIES times: a relay drops the
requests of relays it does not know yet (one that joined a moment ago), and
only what changes is sent any more, so a lost store would stay lost until
the next refresh."""


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
        """Our peers' holders when last placed, best first."""
        self._placed_over: frozenset[PublicKey] = frozenset()
        """The live set the holders in ``_placed`` were chosen from..."""
        self._placed_since: set[PublicKey] = set()
        """...except for these peers, placed since (registered, RTT moved)."""
        self._held: dict[PublicKey, dict[PublicKey, _Held]] = {}
        """peer -> signing relay -> the newest record it signed for the peer."""
        self._per_signer: dict[PublicKey, int] = {}
        self._n_held = 0
        self._next_expiry_ms = 0
        self._lookups: dict[PublicKey, _Lookup] = {}
        self._queries: dict[int, PublicKey] = {}
        self._unacked: dict[PublicKey, tuple[float, int]] = {}
        """Holder -> (when to send again, retries so far)."""

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
        self._placed_since.discard(peer)

    def place_all(self, now: float) -> None:
        """Refresh: re-sign every record and store it at all its holders."""
        out: dict[PublicKey, list[bytes]] = {}
        for peer, _, chosen in self._replace():
            self._sign(peer, now)
            raw = self._own[peer].raw
            for holder in chosen:
                out.setdefault(holder, []).append(raw)
        self._store(out, now)

    def place_moved(self, now: float) -> None:
        """The live set changed: the records whose holders changed go to
        their new holders only, as they are (signed at most a refresh ago,
        so still good for ttl - refresh); the others stay where they are."""
        out: dict[PublicKey, list[bytes]] = {}
        for peer, old, chosen in self._replace():
            if chosen != old:
                raw = self._own[peer].raw
                for holder in chosen:
                    if holder not in old:
                        out.setdefault(holder, []).append(raw)
        self._store(out, now)

    def _replace(self) -> list[tuple[PublicKey, tuple[PublicKey, ...], tuple[PublicKey, ...]]]:
        """(peer, holders when last placed, holders now) for each of our peers.

        Only peers whose holders may have changed are hashed over the whole
        live set: those with a holder that left, or one that a relay that
        joined outranks (rendezvous: nobody else's weight changed). The
        others cost one hash per joining relay, not one per live relay."""
        live = self.directory.live()
        now_over = frozenset(live)
        joined = [(j, j.raw) for j in now_over - self._placed_over]
        left = self._placed_over - now_over
        out = []
        for peer in self._own:
            old = self._placed.get(peer, ())
            if peer in self._placed_since or self._may_move(peer, old, joined, left):
                chosen = tuple(holders(peer, live, self.replicas))
                self._placed[peer] = chosen
            else:
                chosen = old
            out.append((peer, old, chosen))
        self._placed_over = now_over
        self._placed_since.clear()
        return out

    def _may_move(
        self,
        peer: PublicKey,
        old: tuple[PublicKey, ...],
        joined: list[tuple[PublicKey, bytes]],
        left: frozenset[PublicKey],
    ) -> bool:
        if len(old) < self.replicas or any(h in left for h in old):
            return True
        if not joined:
            return False
        last = (weight(peer, old[-1]), old[-1].raw)
        return any((weight(peer, j), raw) > last for j, raw in joined)

    def _store(self, out: dict[PublicKey, list[bytes]], now: float) -> None:
        """Records to their holders, as few LOCATION_STOREs as fit."""
        for holder, raws in out.items():
            if holder == self.key:
                for raw in raws:
                    self.hold(raw, now)
                continue
            for i in range(0, len(raws), RECORDS_PER_STORE):
                self._send(holder, LocationStore(tuple(raws[i : i + RECORDS_PER_STORE])), now)
            tries = self._unacked.get(holder, (0.0, 0))[1]
            self._unacked[holder] = (now + STORE_ACK_WAIT_S, tries)

    def acked(self, holder: PublicKey) -> None:
        """A holder acknowledged a LOCATION_STORE of ours."""
        self._unacked.pop(holder, None)

    def _store_again(self, now: float) -> None:
        for holder, (due, tries) in list(self._unacked.items()):
            if now < due:
                continue
            del self._unacked[holder]
            if tries >= STORE_RETRIES:
                continue  # dead or refusing: liveness and the refresh take over
            raws = [
                self._own[p].raw
                for p, hs in self._placed.items()
                if holder in hs and p in self._own
            ]
            if raws:
                self._count("location_store_again")
                self._unacked[holder] = (0.0, tries + 1)
                self._store({holder: raws}, now)

    def _sign(self, peer: PublicKey, now: float) -> None:
        own = self._own[peer]
        own.raw = encode_location(
            peer, self._wall_ms(now), self.ttl_s, self.identity, own.standby, own.rtt_ms
        )

    def _place(self, peer: PublicKey, now: float, force: bool) -> None:
        live = self.directory.live()
        chosen = tuple(holders(peer, live, self.replicas))
        if not force and self._placed.get(peer) == chosen:
            return
        self._placed[peer] = chosen
        if frozenset(live) != self._placed_over:
            self._placed_since.add(peer)  # chosen over another live set
        self._store({holder: [self._own[peer].raw] for holder in chosen}, now)

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

    def quota(self) -> int:
        """Records one relay (other than us) may hold here.

        A relay with P_s peers stores each at k of the N relays, so a holder
        expects k * P_s / N of its records; with P_s up to
        ``EXPECTED_MAX_PEERS_PER_RELAY`` that is the quota, never under
        ``QUOTA_FLOOR`` nor over half the store. (N: the relays we know.)"""
        n = len(self.directory) + 1
        share = -(-self.replicas * EXPECTED_MAX_PEERS_PER_RELAY // n)
        return max(1, min(self.max_records // 2, max(QUOTA_FLOOR, share)))

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
        fresh_ms = min(rec.issued_ms, wall_ms)
        slots = self._held.get(rec.peer)
        old = slots.get(rec.home) if slots is not None else None
        if old is not None:
            # the same relay again (a refresh, or the peer changed role there)
            if rec.issued_ms <= old.rec.issued_ms:
                self._count("location_not_newer")
                return False
            since = old.since_ms if old.expires_ms > wall_ms else wall_ms
            old.rec, old.fresh_ms, old.since_ms = rec, fresh_ms, since
            old.expires_ms = fresh_ms + rec.ttl_s * 1000
            return True
        if rec.home != self.key and self._per_signer.get(rec.home, 0) >= self.quota():
            self._count("location_quota")
            return False
        if slots is not None and len(slots) >= MAX_RECORDS_PER_PEER:
            victim = self._victim(slots, wall_ms)
            if victim is None or slots[victim].fresh_ms >= fresh_ms:
                self._count("location_peer_full")
                return False
            self._drop_held(slots, victim)
        elif self._n_held >= self.max_records:
            self._count("location_store_full")
            return False
        if slots is None:
            slots = self._held[rec.peer] = {}
        held = _Held(rec, fresh_ms, fresh_ms + rec.ttl_s * 1000, wall_ms)
        slots[rec.home] = held
        self._per_signer[rec.home] = self._per_signer.get(rec.home, 0) + 1
        self._n_held += 1
        self._next_expiry_ms = min(self._next_expiry_ms or held.expires_ms, held.expires_ms)
        return True

    def _victim(self, slots: dict[PublicKey, _Held], wall_ms: int) -> PublicKey | None:
        """The record to give up for a newcomer: an expired one or one of a
        relay gone or dead, else the stalest, but never the home record held
        the longest (see ``held``)."""
        for k, h in slots.items():
            m = self.directory.get(k)
            if h.expires_ms <= wall_ms or (
                k != self.key and (m is None or m.liveness is Liveness.DEAD)
            ):
                return k
        homes = [h for h in slots.values() if not h.rec.standby]
        keep = min(homes, key=lambda h: h.since_ms).rec.home if homes else None
        rest = [h for h in slots.values() if h.rec.home != keep]
        return min(rest, key=lambda h: h.fresh_ms).rec.home if rest else None

    def _drop_held(self, slots: dict[PublicKey, _Held], signer: PublicKey) -> None:
        del slots[signer]
        self._n_held -= 1
        left = self._per_signer[signer] - 1
        if left:
            self._per_signer[signer] = left
        else:
            del self._per_signer[signer]

    def held(self, peer: PublicKey, now: float) -> Found:
        """The records we hold for ``peer`` that still count, best first.

        Any relay can sign a record for any peer, so a lookup offers several
        and the asker tries them (two fit a DISCOVERY_RESPONSE): home records
        before standby ones; first the freshest home record (the peer's
        current home, if it moved lately); second the home record held the
        longest without a break (the peer's home, if a relay that lies is
        refreshing its claim more often); then the rest, freshest first."""
        slots = self._held.get(peer)
        if not slots:
            return ()
        wall_ms = self._wall_ms(now)
        alive: list[tuple[_Held, Endpoint]] = []
        for h in slots.values():
            if h.expires_ms <= wall_ms:
                continue
            if h.rec.home == self.key:
                ann = self.directory.own_announcement
                endpoint = ann.info.endpoints[0] if ann is not None else None
            else:
                m = self.directory.get(h.rec.home)
                live = m is not None and m.liveness is not Liveness.DEAD
                endpoint = m.announcement.info.endpoints[0] if m is not None and live else None
            if endpoint is not None:
                alive.append((h, endpoint))
        alive.sort(key=lambda he: (he[0].rec.standby, -he[0].fresh_ms, he[0].since_ms))
        homes = [i for i, (h, _) in enumerate(alive) if not h.rec.standby]
        if len(homes) > 2:
            longest = min(homes[1:], key=lambda i: alive[i][0].since_ms)
            alive.insert(1, alive.pop(longest))
        return tuple(
            Located(h.rec.home, endpoint, h.rec.raw, h.rec.standby, h.rec.rtt_ms)
            for h, endpoint in alive
        )

    def local(self, peer: PublicKey, now: float) -> Found:
        """What we know without asking: our own record first, then held ones."""
        mine = self.own(peer)
        held = tuple(h for h in self.held(peer, now) if mine is None or h.home != self.key)
        return ((mine,) if mine is not None else ()) + held[: 2 - (mine is not None)]

    def expire(self, wall_ms: int) -> None:
        if not self._n_held or wall_ms < self._next_expiry_ms:
            return
        nxt = 0
        for peer, slots in list(self._held.items()):
            for signer, h in list(slots.items()):
                if h.expires_ms <= wall_ms:
                    self._drop_held(slots, signer)
                else:
                    nxt = min(nxt or h.expires_ms, h.expires_ms)
            if not slots:
                del self._held[peer]
        self._next_expiry_ms = nxt

    def count(self) -> int:
        """Records held for others."""
        return self._n_held

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
        """A holder's answer to one of our lookups (only the relay asked
        may answer its query: ids are sequential, easy to guess)."""
        peer = self._queries.get(body.query_id)
        lk = self._lookups.get(peer) if peer is not None else None
        if lk is None or peer is None or lk.asked.get(body.query_id) != key:
            self._count("locate_answer_unasked")
            return
        del self._queries[body.query_id]
        del lk.asked[body.query_id]
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
        lookups = min((lk.deadline for lk in self._lookups.values()), default=float("inf"))
        stores = min((due for due, _ in self._unacked.values()), default=float("inf"))
        return min(lookups, stores)

    def handle_timer(self, now: float) -> None:
        self._store_again(now)
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
