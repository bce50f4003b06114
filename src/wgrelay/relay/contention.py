"""Under contention, contributors come first (issue 14, item 5), sans-I/O.

Theory of operation
-------------------
A relay has two things to share: its session slots (``--max-connections``)
and, when the operator states one, its bandwidth (``--capacity``). While
there is enough of both nothing here changes anything: every request that
passes the quotas gets a slot, every session its per-session cap
(``--max-bandwidth``), as before. Only when a relay is at capacity does
credit decide, and then never all of it:

**Credit.** A ``CreditSource`` says what a member (a WireGuard public key)
has earned for the mesh, in bytes, possibly negative (relay/ledger.py keeps
the signed receipts). A balance becomes a *weight*: ``1 + log2(1 + b / 1 GB)``
for a positive balance, capped at ``MAX_WEIGHT``, and exactly 1 for zero or
less. The floor of 1 is what keeps a newcomer served; the logarithm keeps a
member who relayed a petabyte from outweighing a thousand who relayed a
gigabyte each.

**A session's credit** is the larger of its two ends' weights. A session
serves both ends alike, and which end asked first is a race between their
agents, so the initiator's credit alone would rank one tunnel differently by
chance; the smaller would make a contributor pay for talking to a newcomer.
The larger cannot be borrowed by a stranger: the other end must accept the
session, and an agent accepts only its own WireGuard peers (a contributor may
lend priority to the peers it chose; that is its credit to spend).

**Slots.** At ``max_connections`` a request may take the slot of a session
whose credit is lower by at least one weight step (twice the balance, so
near-equals do not churn each other out), the lowest first, the youngest
among equals. But ``reserve = ceil(min_share * max_connections)`` slots (at most
half of two or more: ``reserve_slots``) stay
with the lowest-credit sessions: a displacement never leaves fewer than
``reserve`` sessions at or below the displaced one's weight, and a request
from a member whose class holds fewer than ``reserve`` slots takes one back
from the lowest-credit session above it. So free riders always keep (or get
back) their minimum share of slots and are never cut off, and a full relay
of free riders still makes room for contributors. The request only
*claims* the slot: its session is offered to the target over the limit, and
the victim is displaced when the target accepts (a refused or unanswered
offer ends no one's session; the credit of a target that did not accept
was never the requester's to use). A claimed victim is no one else's to
take, a claimer no one's to displace. The displaced ends hear SESSION_CLOSE
with reason PREEMPTED and fail over as for any lost session.

**Bandwidth.** Each direction of each established session is a *flow*. Every
housekeeping tick (1 s) measures what each flow used (its token bucket's
``taken`` count, plus the kernel offload's counters for an offloaded path)
and estimates what it wants: a flow that used 90 % or more of its rate wants
its cap (it was held back), any other wants what it used plus 25 % (room to
grow) and at least ``MIN_WANT_BYTES_PER_S`` or its part of the minimum
share, whichever is less (so idle tunnels, however many, reserve no more
than ``min_share`` of the capacity). When the wants fit in the capacity
every flow gets its cap. Otherwise the capacity is divided:

1. a floor: ``min_share * capacity`` split equally among the flows, each
   floor no more than what the flow wants (so the lowest-credit members keep
   at least their share of the ``min_share`` part, whatever the others' credit);
2. the rest by weighted max-min fairness (water-filling): every flow that
   wants more than ``level * weight`` gets that, the others get what they
   want, and the level rises until the capacity is used, so share that one
   flow leaves unused goes to the others in proportion to their credit.

The shares are set as the flows' token bucket rates (userspace paths,
framed and port mode alike); an offloaded path is re-installed in the kernel
at the larger of its two directions' shares when that moved by more than
``KERNEL_STEP`` (nftables has one limit for both directions of a path, so an
offloaded session busy both ways may use up to its smaller share more than
its part). Sum of shares <= capacity; each flow >= its floor.

Cost: while a capacity is set, one float add per relayed packet (the
bucket's count, ``limits.MeteredBucket``: some 30 ns, 6 % of the framed
data path; without a capacity the buckets count nothing), and per tick
O(n log n) in the established sessions (3.4 ms a tick for 1,000
sessions); the credit lookups only every ``WEIGHT_REFRESH_S``, and
at a full relay one sort of the slots per request it refuses or claims a
slot for (``choose_victim``: 0.17 ms at 1,000 sessions, 2.4 ms at 10,000).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from wgrelay.relay.limits import MeteredBucket, TokenBucket

if TYPE_CHECKING:
    from wgrelay.relay.config import RelayConfig
    from wgrelay.relay.sessions import Session

CREDIT_UNIT_BYTES = 1_000_000_000
"""A balance of this much (1 GB relayed for the mesh) adds one weight step."""
MAX_WEIGHT = 16.0
"""A balance of about 32 TB and more: no one outweighs a newcomer 16 times over."""
WEIGHT_STEP = 1.0
"""A displacing request's weight must be this much above its victim's."""
BUSY_FRACTION = 0.9
"""A flow that used this much of its rate in a tick was held back by it."""
HEADROOM = 1.25
"""A flow that was not held back wants this much more than it used."""
MIN_WANT_BYTES_PER_S = 2_000.0
"""What an idle flow is still given room for (keepalives, a handshake), if
its part of the minimum share is as much."""
MIN_BURST_BYTES = 2 * 9226.0
"""Two maximum-size frames: a bucket must ever pass a jumbo packet."""
WEIGHT_REFRESH_S = 10.0
"""How often the sessions' weights follow their members' balances."""
KERNEL_STEP = 0.1
"""An offloaded path is re-installed when its share moved by more than this."""


class CreditSource(Protocol):
    """What a member has earned for the mesh (relay/ledger.py's Ledger)."""

    def balance(self, member: bytes) -> int:
        """``member``'s balance in bytes (a WireGuard public key; may be negative)."""
        ...


class NoCredits:
    """Every balance 0: every session weighs the same (the relay without a ledger)."""

    def balance(self, member: bytes) -> int:
        return 0


class StaticCredits:
    """Balances held in memory (tests, the simulator, the bench)."""

    def __init__(self, balances: Mapping[bytes, int] | None = None) -> None:
        self.balances: dict[bytes, int] = dict(balances or {})

    def balance(self, member: bytes) -> int:
        return self.balances.get(member, 0)


def weight(balance: int) -> float:
    """1 for zero or less, one step more per doubling above 1 GB, at most 16."""
    if balance <= 0:
        return 1.0
    return min(MAX_WEIGHT, 1.0 + math.log2(1.0 + balance / CREDIT_UNIT_BYTES))


def reserve_slots(max_connections: int, min_share: float) -> int:
    """Slots kept for the lowest-credit sessions: the share rounded up (a
    newcomer is never cut off, even at a one-slot relay), but never more than
    half of two or more slots (rounding up an odd count at 50 % would let the
    reserve outnumber the contributors' slots, which the 50 % cap forbids)."""
    wanted = math.ceil(min_share * max_connections - 1e-9)
    return min(wanted, max(1, max_connections // 2), max_connections)


# ---------------------------------------------------------------- the shares


@dataclass(frozen=True, slots=True)
class Flow:
    """One direction of one session, as the share computation sees it."""

    want: float
    """Bytes/s it would use (already no more than its cap)."""
    weight: float


def floors(flows: Sequence[Flow], capacity: float, min_share: float) -> list[float]:
    """The guaranteed part: ``min_share * capacity`` split equally among the
    flows that want anything, none above what it wants."""
    active = sum(1 for f in flows if f.want > 0)
    if not active:
        return [0.0] * len(flows)
    each = min_share * capacity / active
    return [min(f.want, each) for f in flows]


def fair_shares(flows: Sequence[Flow], capacity: float, min_share: float) -> list[float]:
    """Each flow's rate: its floor, then the rest of ``capacity`` by weighted
    max-min fairness. Never more than a flow wants, in all at most ``capacity``."""
    base = floors(flows, capacity, min_share)
    left = max(0.0, capacity - sum(base))
    residual = [f.want - b for f, b in zip(flows, base, strict=True)]
    # water-filling: visit flows by how soon they are satisfied (residual per
    # unit of weight); each takes the current level or all it still wants
    order = sorted(
        (i for i, r in enumerate(residual) if r > 0), key=lambda i: residual[i] / flows[i].weight
    )
    total_w = sum(flows[i].weight for i in order)
    extra = [0.0] * len(flows)
    for n, i in enumerate(order):
        level = left / total_w
        if residual[i] <= level * flows[i].weight:
            extra[i] = residual[i]
            left -= residual[i]
            total_w -= flows[i].weight
            continue
        for j in order[n:]:
            extra[j] = level * flows[j].weight
        break
    shares = [b + e for b, e in zip(base, extra, strict=True)]
    total = sum(shares)
    if total > capacity > 0:  # float rounding only; never exceed what was stated
        shares = [s * (capacity / total) for s in shares]
    return shares


# ---------------------------------------------------------------- admission


@dataclass(frozen=True, slots=True)
class Slot:
    """A session holding a slot, as the displacement rule sees it."""

    weight: float
    created: float
    """Youngest goes first among equal weights."""
    sid: bytes
    movable: bool = True
    """False for a pending session that claims a slot already: it holds
    that slot (it counts), but is not displaced before its target answers."""


@dataclass(frozen=True, slots=True)
class Displacement:
    victim: bytes
    """Its session id."""
    reason: str
    """``higher_credit``: the request outranks it; ``reserve``: the request's
    class holds fewer than its reserved slots."""


def choose_victim(slots: Sequence[Slot], want: float, reserve: int) -> Displacement | None:
    """Whose slot a request of weight ``want`` takes at a full relay, if anyone's."""
    if sum(1 for s in slots if s.weight <= want) < reserve:
        # the request's class holds fewer than its reserved slots: it takes
        # one back from the lowest-credit session above it
        above = [s for s in slots if s.weight > want and s.movable]
        if not above:
            return None
        v = min(above, key=lambda s: (s.weight, -s.created))
        return Displacement(v.sid, "reserve")
    if reserve >= len(slots):
        return None
    # the reserve: a displacement leaves at least ``reserve`` sessions at or
    # below the displaced one's weight (the lowest ones keep theirs), so the
    # victim weighs at least the (reserve+1)-th lowest weight. (One sort: a
    # count per distinct weight cost O(n * reserve), 0.4 s at 10,000 sessions
    # of distinct balances, at every request a full relay refused.)
    least = sorted(s.weight for s in slots)[reserve]
    candidates = [
        s for s in slots if s.movable and least <= s.weight and s.weight + WEIGHT_STEP <= want
    ]
    if not candidates:
        return None
    v = min(candidates, key=lambda s: (s.weight, -s.created))  # the youngest of the lowest
    return Displacement(v.sid, "higher_credit")


# ---------------------------------------------------------------- the relay's state


@dataclass(slots=True)
class _FlowState:
    cap: float
    """The session's cap in this direction (its bucket's rate at its start;
    infinite without a per-session cap: then the capacity is its cap)."""
    taken: float = 0.0
    """The bucket's ``taken`` at the last tick."""
    kernel: tuple[int, int] = (0, 0)
    """The kernel's (packets, charged bytes) for this direction at the last tick."""


@dataclass(slots=True)
class _SessionState:
    ab: _FlowState
    ba: _FlowState
    weight: float = 1.0


@dataclass(slots=True)
class ContentionReport:
    """The last tick's figures (``/metrics``)."""

    contended: bool = False
    demand: float = 0.0
    """Bytes/s the flows wanted (what they used, or their caps when held back)."""
    used: float = 0.0
    """Bytes/s they used (charged: each packet's size plus the per-packet charge)."""
    counts: Counter[str] = field(default_factory=Counter)


class Contention:
    """Credit-weighted admission and bandwidth shares of one relay core."""

    def __init__(self, credits: CreditSource | None = None) -> None:
        self.credits: CreditSource = credits or NoCredits()
        self._state: dict[bytes, _SessionState] = {}
        self._installed: dict[bytes, int] = {}
        """Session id -> the per-direction limit (0: none) its kernel path
        was last installed with: kept apart from ``_state``, which a session
        without a per-session cap has only while a capacity is set (its path
        may have gone to the kernel before, with no limit)."""
        self._last_tick: float | None = None
        self._shaped = False
        """Some bucket runs at another rate than its cap (a share)."""
        self._weights_at = -math.inf
        self.report = ContentionReport()

    # ------------------------------------------------------------ weights

    def member_weight(self, member: bytes) -> float:
        return weight(self.credits.balance(member))

    def session_weight(self, a_key: bytes, b_key: bytes) -> float:
        """The larger of its ends' weights (the module's docstring says why)."""
        return max(self.member_weight(a_key), self.member_weight(b_key))

    # ------------------------------------------------------------ admission

    def victim(
        self,
        sessions: Iterable[Session],
        a_key: bytes,
        b_key: bytes,
        config: RelayConfig,
        claims: Mapping[bytes, Displacement] | None = None,
    ) -> Displacement | None:
        """At a full relay: whose slot a request for ``a_key``-``b_key`` takes.

        ``claims``: pending sessions' claims on other slots (sessions.py):
        a claimer holds the slot it claimed, its victim holds none."""
        want = self.session_weight(a_key, b_key)
        claims = claims or {}
        victims = {d.victim for d in claims.values()}
        slots = []
        for s in sessions:
            if s.sid in victims:
                continue
            st = self._state.get(s.sid)
            w = st.weight if st is not None else self.session_weight(s.a_key, s.b_key)
            slots.append(Slot(w, s.created, s.sid, s.sid not in claims))
        reserve = reserve_slots(config.max_connections, config.min_share)
        return choose_victim(slots, want, reserve)

    def count(self, what: str) -> None:
        self.report.counts[what] += 1

    # ------------------------------------------------------------ bandwidth

    def established(self, s: Session, config: RelayConfig, now: float) -> None:
        """A session is established: remember its caps; with a capacity and no
        per-session cap, give it buckets (the capacity is its cap)."""
        capacity = float(config.capacity_bytes_per_s)
        if capacity and (s.ab is None or s.ba is None):
            burst = max(capacity * config.bandwidth_burst_s, MIN_BURST_BYTES)
            s.ab = MeteredBucket(capacity, burst, now)
            s.ba = MeteredBucket(capacity, burst, now)
            self._state[s.sid] = _SessionState(
                _FlowState(math.inf), _FlowState(math.inf), self.session_weight(s.a_key, s.b_key)
            )
            return
        if s.ab is None or s.ba is None:
            return
        if capacity:  # measured from now on
            s.ab, s.ba = _metered(s.ab), _metered(s.ba)
        self._state[s.sid] = _SessionState(
            _FlowState(s.ab.rate, _taken(s.ab)),
            _FlowState(s.ba.rate, _taken(s.ba)),
            self.session_weight(s.a_key, s.b_key),
        )

    def forget(self, sid: bytes) -> None:
        self._state.pop(sid, None)
        self._installed.pop(sid, None)

    def kernel_rate(self, s: Session, default: int) -> int:
        """The per-direction limit (bytes/s, 0: none) to install ``s``'s
        kernel path with: ``default`` (the configured cap) unless shares
        are in force, then the larger of its two directions' shares."""
        rate = self._kernel_target(s, default)
        if s.ports is not None:  # (None: closed since the install was queued)
            self._installed[s.sid] = rate
        return rate

    def _kernel_target(self, s: Session, default: int) -> int:
        if not self._shaped or s.ab is None or s.ba is None or s.sid not in self._state:
            return default
        return max(1, int(max(s.ab.rate, s.ba.rate)))

    def rebalance(
        self, sessions: Mapping[bytes, Session], config: RelayConfig, now: float
    ) -> list[Session]:
        """Measure every flow's last tick and set its rate for the next.

        Returns the offloaded sessions whose kernel limit should change
        (the caller re-installs their paths)."""
        last, self._last_tick = self._last_tick, now
        dt = now - last if last is not None else 0.0
        capacity = float(config.capacity_bytes_per_s)
        # balances move slowly (receipts): weights are looked up again every
        # WEIGHT_REFRESH_S (a new session's at its start), not every tick;
        # with or without a capacity (a full relay's choice of victim uses them)
        if now - self._weights_at >= WEIGHT_REFRESH_S:
            self._weights_at = now
            for sid, state in self._state.items():
                s = sessions.get(sid)
                if s is not None:
                    state.weight = self.session_weight(s.a_key, s.b_key)
        if not capacity and not self._shaped:
            self.report.contended = False
            self._last_tick = None  # (a capacity set later starts measuring afresh)
            return []  # nothing to share: nothing to do (today's relay)
        entries: list[tuple[Session, _SessionState]] = []
        for sid, s in sessions.items():
            if sid not in self._state and capacity:
                self.established(s, config, now)  # (a capacity set by a reload)
            st = self._state.get(sid)
            if st is None or s.ab is None or s.ba is None:
                continue
            if capacity and not isinstance(s.ab, MeteredBucket):
                # (a capacity set by a reload: measured from now on; both
                # directions' buckets are converted together)
                s.ab, s.ba = _metered(s.ab), _metered(s.ba)
                st.ab.taken = st.ba.taken = 0.0
            entries.append((s, st))
        if not capacity:
            self._restore(entries, config.bandwidth_burst_s)
            return self._kernel_moved(entries, config)
        flows: list[Flow] = []
        buckets: list[tuple[TokenBucket, _FlowState]] = []
        used_total = 0.0
        overhead = config.packet_overhead_bytes
        # an idle flow's room (keepalives, a handshake) is at most its part of
        # the minimum share: many idle tunnels must not hold the capacity
        # against the busy ones (each bucket's burst, MIN_BURST_BYTES, passes
        # a flow that wakes up until the next tick gives it its share)
        idle = min(MIN_WANT_BYTES_PER_S, config.min_share * capacity / max(1, 2 * len(entries)))
        for s, st in entries:
            kernel = _kernel_counts(s, overhead) if s.ports is not None else _NOT_OFFLOADED
            for bucket, fs, k in ((s.ab, st.ab, kernel[0]), (s.ba, st.ba, kernel[1])):
                if bucket is None:  # (never: entries have both buckets)
                    continue
                taken = _taken(bucket)
                used = taken - fs.taken
                fs.taken = taken
                if k is not None:
                    if k[0] >= fs.kernel[0] and k[1] >= fs.kernel[1]:
                        used += k[1] - fs.kernel[1]
                    else:  # re-installed: its counters started again
                        used += k[1]
                    fs.kernel = k
                rate = used / dt if dt > 0 else 0.0
                used_total += rate
                cap = min(fs.cap, capacity)
                if dt > 0 and rate >= BUSY_FRACTION * bucket.rate:
                    want = cap  # held back by its rate: it wants more
                else:
                    want = min(cap, max(rate * HEADROOM, idle))
                flows.append(Flow(want, st.weight))
                buckets.append((bucket, fs))
        demand = sum(f.want for f in flows)
        rep = self.report
        rep.demand, rep.used = demand, used_total
        rep.contended = dt > 0 and demand > capacity
        if rep.contended:
            rep.counts["ticks_contended"] += 1
            shares = fair_shares(flows, capacity, config.min_share)
        else:
            shares = [min(fs.cap, capacity) for _, fs in buckets]
        self._shaped = True  # (even the caps: an unlimited session runs at the capacity)
        for (bucket, _), rate in zip(buckets, shares, strict=True):
            _set_rate(bucket, rate, config.bandwidth_burst_s)
        return self._kernel_moved(entries, config)

    def _restore(self, entries: list[tuple[Session, _SessionState]], burst_s: float) -> None:
        """The capacity was taken away (SIGHUP): every session its cap again."""
        self._shaped = False
        self.report.contended = False
        for s, st in entries:
            if math.isinf(st.ab.cap):  # no per-session cap: no bucket, as before
                s.ab = s.ba = None
                self._state.pop(s.sid, None)
                continue
            if s.ab is None or s.ba is None:  # (never: entries have both buckets)
                continue
            # as before: buckets that count nothing on the data path
            s.ab, s.ba = _plain(s.ab), _plain(s.ba)
            st.ab.taken = st.ba.taken = 0.0
            _set_rate(s.ab, st.ab.cap, burst_s)
            _set_rate(s.ba, st.ba.cap, burst_s)

    def _kernel_moved(
        self, entries: list[tuple[Session, _SessionState]], config: RelayConfig
    ) -> list[Session]:
        default = config.max_bandwidth_kbps * 1000
        moved = []
        for s, _ in entries:
            pair = s.ports
            old = self._installed.get(s.sid)
            if pair is None or not pair.offloaded or old is None:
                continue  # (None: never installed, no kernel offload)
            target = self._kernel_target(s, default)
            if (target == 0) != (old == 0) or abs(target - old) > KERNEL_STEP * old:
                moved.append(s)
        return moved


def _metered(bucket: TokenBucket) -> MeteredBucket:
    """``bucket`` as one that counts what passes (its state carried over)."""
    if isinstance(bucket, MeteredBucket):
        return bucket
    return bucket.copy_to(MeteredBucket(0.0, 0.0, 0.0))


def _plain(bucket: TokenBucket) -> TokenBucket:
    """``bucket`` as one that counts nothing (its state carried over)."""
    if type(bucket) is TokenBucket:
        return bucket
    return bucket.copy_to(TokenBucket(0.0, 0.0, 0.0))


def _taken(bucket: TokenBucket) -> float:
    return bucket.taken if isinstance(bucket, MeteredBucket) else 0.0


def _set_rate(bucket: TokenBucket, rate: float, burst_s: float) -> None:
    rate = max(rate, 1.0)  # a zero rate would never pass a packet again
    bucket.rate = rate
    bucket.burst = max(rate * burst_s, MIN_BURST_BYTES)
    if bucket.tokens > bucket.burst:
        bucket.tokens = bucket.burst


_NOT_OFFLOADED: tuple[None, None] = (None, None)


def _kernel_counts(
    s: Session, overhead: int
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The kernel's cumulative (packets, charged bytes) per direction of an
    offloaded session (None: not offloaded)."""
    pair = s.ports
    if pair is None or not pair.offloaded:
        return None, None
    k = pair.kernel_seen
    return (k[0], k[1] + k[0] * overhead), (k[2], k[3] + k[2] * overhead)
