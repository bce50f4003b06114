"""Registrations and sessions at a relay, with their quotas (sans-I/O, no messages).

The table knows who is registered from where and which sessions join whom; the
core (core.py) decides what to tell whom. Every quota lives here, so each rule
is one readable check:

* ``max_registrations`` in all and ``max_registrations_per_source`` per IPv4
  address or IPv6 /64. When the table is full a newcomer may evict an *idle*
  registration (no sessions) from the source holding the most registrations,
  if that source holds more than the newcomer's: a host that filled the table
  loses its idle entries first, and no one is refused while idle entries of a
  bigger source remain.
* the operator's byte budget (budget.py): once spent, no new session.
* ``max_connections`` sessions in all (pending or established), and
  ``max_sessions_per_source`` with an end in one source. A pending session
  that *claims* another's slot (contention.py: a full relay, more credit) is
  not counted: it takes that slot only if its target accepts, so a request
  the target refuses ends no one's session.
* ``max_sessions_per_peer`` per peer, counting the sessions it holds and the
  offers it made, never offers it received and has not accepted: strangers
  cannot use up a target's share by asking for sessions it will refuse.
  ``max_pending_per_peer`` bounds the offers a peer has outstanding.

A peer's address changes only through ``move`` (the core calls it once the
new address is proven), and its sessions move with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from wgrelay.proto.constants import (
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
    RTT_UNKNOWN,
)
from wgrelay.relay.admission import Addr, KeyState, source_group
from wgrelay.relay.budget import BudgetMeter
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.contention import Displacement
from wgrelay.relay.limits import TokenBucket

if TYPE_CHECKING:
    from wgrelay.relay.ports import PortPair


class Listing(Enum):
    """How a registration is published (REGISTER flags)."""

    HOME = "home"
    STANDBY = "standby"
    UNLISTED = "unlisted"


def listing_of(register_flags: int) -> Listing:
    if not register_flags & REGISTER_FLAG_ACCEPT_INCOMING:
        return Listing.UNLISTED  # it takes no sessions: nothing to find
    if register_flags & REGISTER_FLAG_UNLISTED:
        return Listing.UNLISTED
    if register_flags & REGISTER_FLAG_STANDBY:
        return Listing.STANDBY
    return Listing.HOME


@dataclass(slots=True)
class Registration:
    key: bytes
    addr: Addr
    source: str
    ks: KeyState
    expires: float
    accept_incoming: bool = True
    listing: Listing | None = None
    """What its location record says (None: none placed yet)."""
    rtt_ms: int = RTT_UNKNOWN
    """The peer's round trip to us, as it last reported it."""
    sessions: dict[bytes, None] = field(default_factory=dict)
    """Every session it is part of, pending or established (a dict used as an
    ordered set: iteration order must not depend on hashing, or runs of the
    simulator would differ between processes)."""


class Session:
    """A relayed connection between peers A (initiator) and B (target)."""

    __slots__ = (
        "a_addr",
        "a_key",
        "ab",
        "b_addr",
        "b_key",
        "ba",
        "bytes",
        "created",
        "last_active",
        "last_packets",
        "offer_deadline",
        "offer_next",
        "packets",
        "ports",
        "sid",
        "sources",
        "waiters",
    )

    def __init__(
        self, sid: bytes, a: Registration, b: Registration, now: float, offer_deadline: float
    ) -> None:
        self.sid = sid
        self.a_key = a.key
        self.b_key = b.key
        self.a_addr = a.addr
        self.b_addr = b.addr
        self.sources = frozenset((a.source, b.source))
        self.created = now
        self.last_active = now
        self.packets = 0
        self.bytes = 0
        self.last_packets = 0
        self.ab: TokenBucket | None = None
        self.ba: TokenBucket | None = None
        self.waiters: dict[bytes, int] = {}  # key -> request_id awaiting a response
        self.offer_next = 0.0
        self.offer_deadline = offer_deadline
        self.ports: PortPair | None = None
        """Its session ports in port mode (ports.py), if the relay has them."""

    def other(self, key: bytes) -> bytes:
        return self.b_key if key == self.a_key else self.a_key


class Refusal(Enum):
    """Why a registration or session could not be had (the core picks the reply)."""

    RELAY_FULL = "registrations"
    SOURCE_FULL = "registrations_per_source"
    MAX_CONNECTIONS = "max_connections"
    SOURCE_SESSIONS = "sessions_per_source"
    PEER_SESSIONS = "sessions_per_peer"
    PEER_PENDING = "pending_per_peer"
    BUDGET = "budget"


def pair_of(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a < b else (b, a)


class SessionTable:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.regs: dict[bytes, Registration] = {}
        self.sessions: dict[bytes, Session] = {}
        """Established sessions by id: the data path's only lookup."""
        self.pending: dict[bytes, Session] = {}
        self.by_pair: dict[tuple[bytes, bytes], Session] = {}
        self._regs_per_source: Counter[str] = Counter()
        self._sessions_per_source: Counter[str] = Counter()
        self.budget: BudgetMeter | None = None
        """The byte budget's count (``RelayConfig.budget``), None without one."""
        self.claims: dict[bytes, Displacement] = {}
        """Pending session id -> the slot it takes once established (the
        core then closes the victim); over ``max_connections`` meanwhile."""
        self._claimed: dict[bytes, bytes] = {}
        """Victim's session id -> its claimer's."""

    # ------------------------------------------------------------ registrations

    def admit_registration(self, addr: Addr) -> tuple[Refusal | None, Registration | None]:
        """May a new peer register from ``addr``? (refusal, registration to evict)."""
        source = source_group(addr)
        if self._regs_per_source[source] >= self.config.max_registrations_per_source:
            return Refusal.SOURCE_FULL, None
        if len(self.regs) < self.config.max_registrations:
            return None, None
        victim = self._eviction_candidate(source)
        if victim is None:
            return Refusal.RELAY_FULL, None
        return None, victim

    def _eviction_candidate(self, newcomer_source: str) -> Registration | None:
        # O(n), but only when the table is full
        mine = self._regs_per_source[newcomer_source]
        best: Registration | None = None
        best_count = mine + 1
        for reg in self.regs.values():
            if reg.sessions:
                continue
            count = self._regs_per_source[reg.source]
            if count > best_count or (
                best is not None and count == best_count and reg.expires < best.expires
            ):
                best, best_count = reg, count
        return best

    def add(self, key: bytes, addr: Addr, ks: KeyState, expires: float) -> Registration:
        reg = Registration(key=key, addr=addr, source=source_group(addr), ks=ks, expires=expires)
        self.regs[key] = reg
        self._regs_per_source[reg.source] += 1
        return reg

    def remove_registration(self, reg: Registration) -> None:
        """Forget the registration only; the caller ends its sessions first."""
        del self.regs[reg.key]
        self._decrement(self._regs_per_source, reg.source)

    def move(self, reg: Registration, addr: Addr) -> list[Session]:
        """The peer now receives at ``addr``: move it and its sessions.

        Returns the sessions that would now join an address to itself (both
        peers behind one address, or a confused NAT); the caller closes them.
        """
        source = source_group(addr)
        if source != reg.source:
            self._decrement(self._regs_per_source, reg.source)
            self._regs_per_source[source] += 1
        reg.addr = addr
        reg.source = source
        looped = []
        for sid in reg.sessions:
            s = self.find(sid)
            if s is None:
                continue
            self._count_session(s, -1)
            if s.a_key == reg.key:
                s.a_addr = addr
            else:
                s.b_addr = addr
            s.sources = frozenset((source_group(s.a_addr), source_group(s.b_addr)))
            self._count_session(s, +1)
            if s.a_addr == s.b_addr:
                looped.append(s)
        return looped

    # ------------------------------------------------------------ sessions

    def admit_session(self, a: Registration, b: Registration) -> Refusal | None:
        """May ``a`` ask for a session to ``b``?"""
        c = self.config
        if self.budget is not None and self.budget.spent:
            return Refusal.BUDGET
        if len(self.sessions) + len(self.pending) - len(self.claims) >= c.max_connections:
            return Refusal.MAX_CONNECTIONS
        for source in {a.source, b.source}:
            if self._sessions_per_source[source] >= c.max_sessions_per_source:
                return Refusal.SOURCE_SESSIONS
        if self.held(a) >= c.max_sessions_per_peer or self.held(b) >= c.max_sessions_per_peer:
            return Refusal.PEER_SESSIONS
        outstanding = sum(1 for sid in a.sessions if self._offered_by(sid, a.key))
        if outstanding >= c.max_pending_per_peer:
            return Refusal.PEER_PENDING
        return None

    def held(self, reg: Registration) -> int:
        """Sessions that count against a peer: not offers it has yet to answer."""
        return sum(1 for sid in reg.sessions if not self._offered_to(sid, reg.key))

    def _offered_to(self, sid: bytes, key: bytes) -> bool:
        s = self.pending.get(sid)
        return s is not None and s.b_key == key

    def _offered_by(self, sid: bytes, key: bytes) -> bool:
        s = self.pending.get(sid)
        return s is not None and s.a_key == key

    def open(self, sid: bytes, a: Registration, b: Registration, now: float) -> Session:
        s = Session(sid, a, b, now, now + self.config.offer_timeout_s)
        self.pending[sid] = s
        self.by_pair[pair_of(a.key, b.key)] = s
        a.sessions[sid] = None
        b.sessions[sid] = None
        self._count_session(s, +1)
        return s

    def establish(self, s: Session, now: float) -> None:
        del self.pending[s.sid]
        self.sessions[s.sid] = s
        c = self.config
        if c.max_bandwidth_kbps:
            s.ab = TokenBucket(c.bandwidth_bytes_per_s, c.bandwidth_burst_bytes, now)
            s.ba = TokenBucket(c.bandwidth_bytes_per_s, c.bandwidth_burst_bytes, now)
        s.last_active = now

    def claim(self, claimer: bytes, d: Displacement) -> None:
        """A pending session takes ``d.victim``'s slot once established."""
        self.claims[claimer] = d
        self._claimed[d.victim] = claimer

    def unclaim(self, claimer: bytes) -> Displacement | None:
        """The claim of a session being established (or ended), if any."""
        d = self.claims.pop(claimer, None)
        if d is not None:
            self._claimed.pop(d.victim, None)
        return d

    def remove(self, s: Session) -> bool:
        """Forget a session; True if it was established (False: pending or unknown)."""
        established = self.sessions.pop(s.sid, None) is not None
        if not established and self.pending.pop(s.sid, None) is None:
            return False
        self.unclaim(s.sid)  # refused or gone before its target accepted
        claimer = self._claimed.pop(s.sid, None)
        if claimer is not None:  # the victim left first: its slot is the claimer's
            del self.claims[claimer]
        self.by_pair.pop(pair_of(s.a_key, s.b_key), None)
        self._count_session(s, -1)
        for k in (s.a_key, s.b_key):
            reg = self.regs.get(k)
            if reg is not None:
                reg.sessions.pop(s.sid, None)
        return established

    def find(self, sid: bytes) -> Session | None:
        """An established or pending session."""
        return self.sessions.get(sid) or self.pending.get(sid)

    def new_id_free(self, sid: bytes) -> bool:
        return sid not in self.sessions and sid not in self.pending

    # ------------------------------------------------------------ counting

    def _count_session(self, s: Session, delta: int) -> None:
        for source in s.sources:
            if delta > 0:
                self._sessions_per_source[source] += 1
            else:
                self._decrement(self._sessions_per_source, source)

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        n = counter[key] - 1
        if n > 0:
            counter[key] = n
        else:
            del counter[key]
