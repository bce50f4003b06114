"""Port mode: one relay port per side of a session, latched to WireGuard's socket.

In framed mode a peer's WireGuard talks to the agent's 127.0.0.1 proxy, which
adds a 10-byte header and sends to the relay's main port. In port mode the
relay gives each side of a session its own UDP port (``a_port`` for the
initiator A, ``b_port`` for B), told to the agent in CONNECTION_RESPONSE and
SESSION_OFFER. The agent points its WireGuard endpoint for the peer straight
at ``relay:port``: no proxy, no header, the bytes on the wire are WireGuard's.
A packet arriving on ``a_port`` from A's latched address leaves ``b_port``
for B's latched address unchanged, and the reverse.

**Latching.** A port serves only the address it is latched to. It latches to
a source that is provably its side: the same public IP as that side's
authenticated registration, and a WireGuard handshake message (initiation or
response, exact size) whose mac1 verifies under the *other* peer's public key
(A's handshakes are addressed to B). A mac1 seen before on that port does not
latch again (a replayed handshake cannot steal the port from the same NAT's
other users). A fresh verified handshake from the registered IP re-latches,
so NAT rebinding is followed as WireGuard's roaming follows it. Everything
else arriving on a port is counted by reason and dropped.

**Modes per side.** Each side is UNKNOWN until it either latches (PORT) or
sends a framed data frame from its registered address (FRAMED): whatever it
did last. Delivery to a PORT side leaves its port for its latched address;
to any other side it is framed (header added) to its registered address, so
a side whose NAT sends WireGuard's packets from another public IP (never
latches) keeps working framed, and the two modes bridge within one session.
A handshake for a side still UNKNOWN while it is switching to port mode is
held (the latest one, up to ``HOLD_S``) and delivered when it latches, so the
first handshake of a session is not lost to the order of the two latches;
unless both are initiations (both agents switched at once), then only the
latching one goes on (crossed initiations would both fail).

Sans-I/O: ``PortTable`` never opens a socket. Ports come from ``PortPool``,
whose ``opener`` (the server's socket binder, a simulated one in tests) may
refuse a port that is taken; results the fast path cannot return directly go
to ``out`` (port 0: the relay's main socket), and changes of a session's
kernel-offloadable state go to ``changes`` for the server's offload.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from wgrelay.proto.constants import DATA_HEADER_LEN, MappingKind
from wgrelay.proto.data import data_header
from wgrelay.proto.wgmac import (
    KEEPALIVE_LEN,
    MESSAGE_INITIATION,
    is_handshake,
    mac1_key,
    mac1_of,
    verify_mac1,
)
from wgrelay.relay.admission import Addr
from wgrelay.relay.stats import DropReason

if TYPE_CHECKING:
    from wgrelay.relay.sessions import Session

log = logging.getLogger(__name__)

HOLD_S = 5.0
"""How long a held handshake stays deliverable: WireGuard's REKEY_TIMEOUT,
after which the sender retransmits anyway."""
RECENT_MAC1S = 8
MAX_PORT_PACKET = 65507
NOTICE_INTERVAL_S = 2.0
"""At most one PORT_NOT_LATCHED notice per side this often."""
MAX_OPEN_TRIES = 16
"""Ports tried per allocation when the opener refuses (taken by another program)."""

Opener = Callable[[int], bool]
Closer = Callable[[int], None]


class SideMode(Enum):
    UNKNOWN = "unknown"
    PORT = "port"
    FRAMED = "framed"


class PortPool:
    """The configured port range, handed out oldest-freed first (a port is
    not reused at once, so a late packet of an old session finds no new one)."""

    def __init__(self, lo: int, hi: int, opener: Opener, closer: Closer) -> None:
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad port range {lo}-{hi}")
        self.lo, self.hi = lo, hi
        self._free: deque[int] = deque(range(lo, hi + 1))
        self._opener = opener
        self._closer = closer
        self.in_use: set[int] = set()

    def __len__(self) -> int:
        return len(self._free)

    def allocate(self) -> int | None:
        for _ in range(min(MAX_OPEN_TRIES, len(self._free))):
            port = self._free.popleft()
            if self._opener(port):
                self.in_use.add(port)
                return port
            self._free.append(port)  # taken by someone else: try it again later
        return None

    def release(self, port: int) -> None:
        if port in self.in_use:
            self.in_use.discard(port)
            self._closer(port)
            self._free.append(port)


def is_stream_addr(addr: Addr) -> bool:
    """A TCP/TLS client's address (relay/streams.py): never a UDP source."""
    return len(addr) == 3


def _initial_mode(reg_addr: Addr) -> SideMode:
    # a side over a stream is framed from the start (its agent declines the
    # port): a handshake for it is delivered at once, not held for a latch
    return SideMode.FRAMED if is_stream_addr(reg_addr) else SideMode.UNKNOWN


@dataclass(slots=True)
class PortSide:
    port: int
    key: bytes
    reg_addr: Addr
    """The side's registered (control) address: framed delivery goes here,
    and only its IP may latch the port."""
    mac1_key: bytes
    """Verifies the handshakes this side sends (keyed by the other side's key)."""
    mode: SideMode = SideMode.UNKNOWN
    latched: Addr | None = None
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECENT_MAC1S))
    held: bytes | None = None
    """The latest handshake *for* this side that came while it was UNKNOWN."""
    held_at: float = 0.0
    latches: int = 0
    hold_until: float = 0.0
    """SESSION_HOLD: nothing is delivered to this side's port before then."""
    noticed_at: float = float("-inf")
    mapping: MappingKind = MappingKind.UNKNOWN
    """How the side's NAT maps WireGuard's socket (from a MAPPING_PROBE)."""
    pinned: bool = False
    """A multi-hop leg's side: latched to the other relay's session port, as
    that relay told us on our authenticated channel, never by a packet."""


@dataclass(slots=True)
class PortPair:
    session: Session
    a: PortSide
    b: PortSide
    established: bool = False
    offloaded: bool = False
    punched_at: float = float("-inf")
    """When a PUNCH last went to both sides (they are rate-limited)."""
    kernel_seen: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    """The offload's counters at the last reading (ab packets/bytes, ba
    packets/bytes, dropped over the bandwidth limit)."""

    @property
    def leg(self) -> bool:
        """One side is another relay (multi-hop): its latched address is that
        relay's port, not a peer's mapping, so it is never a direct candidate."""
        return self.a.pinned or self.b.pinned

    @property
    def ready(self) -> bool:
        """Both sides in port mode (and neither holding): the kernel can take
        the whole path."""
        a, b = self.a, self.b
        return (
            self.established
            and a.mode is SideMode.PORT
            and b.mode is SideMode.PORT
            and not a.hold_until
            and not b.hold_until
        )


@dataclass(frozen=True, slots=True)
class PathChange:
    """A session's port path became fully latched (``pair`` set) or stopped
    being so (``pair`` None): what the kernel offload installs or removes."""

    path_id: int
    pair: PortPair | None


class PortTable:
    def __init__(self, pool: PortPool, drops: dict[str, int]) -> None:
        self.pool = pool
        self._drops = drops
        self.by_port: dict[int, tuple[PortPair, PortSide, PortSide, bool]] = {}
        """port -> (pair, its side, the other side, True if it is A's port):
        the port data path's one lookup."""
        self.by_sid: dict[bytes, PortPair] = {}
        self.out: list[tuple[int, bytes | memoryview, Addr]] = []
        """(from port, datagram, to); port 0: the relay's main socket."""
        self.changes: list[PathChange] = []
        self.latches = 0
        self.notices: list[tuple[bytes, bytes, int]] = []
        """(session id, key, port) of sides to tell PORT_NOT_LATCHED (the core seals it)."""
        self.crossed = 0
        """Held initiations not delivered because the latching packet was one too."""
        self.mapped: dict[bytes, PortPair] = {}
        """Pairs whose latched addresses (WireGuard's public mappings) became
        known or changed with both sides latched: both sides are told (PUNCH
        without GO), they are the candidates of a direct try."""

    # ------------------------------------------------------------ lifecycle

    def open(self, s: Session) -> PortPair | None:
        """Two ports for a new session, or None (range exhausted: framed only)."""
        a_port = self.pool.allocate()
        if a_port is None:
            return None
        b_port = self.pool.allocate()
        if b_port is None:
            self.pool.release(a_port)
            return None
        pair = PortPair(
            s,
            PortSide(a_port, s.a_key, s.a_addr, mac1_key(s.b_key), _initial_mode(s.a_addr)),
            PortSide(b_port, s.b_key, s.b_addr, mac1_key(s.a_key), _initial_mode(s.b_addr)),
        )
        self.by_port[a_port] = (pair, pair.a, pair.b, True)
        self.by_port[b_port] = (pair, pair.b, pair.a, False)
        self.by_sid[s.sid] = pair
        s.ports = pair
        return pair

    def close(self, sid: bytes) -> None:
        pair = self.by_sid.pop(sid, None)
        if pair is None:
            return
        pair.session.ports = None
        if pair.offloaded:
            pair.offloaded = False
            self.changes.append(PathChange(pair.a.port, None))
        for side in (pair.a, pair.b):
            self.by_port.pop(side.port, None)
            self.pool.release(side.port)

    def establish(self, sid: bytes) -> None:
        pair = self.by_sid.get(sid)
        if pair is not None:
            pair.established = True
            self._check_ready(pair)

    def _check_ready(self, pair: PortPair) -> None:
        ready = pair.ready
        if ready:
            # (re)install: a re-latch changes the addresses; the kernel's
            # counters start again at 0
            pair.offloaded = True
            pair.kernel_seen = (0, 0, 0, 0, 0)
            self.changes.append(PathChange(pair.a.port, pair))
        elif pair.offloaded:
            pair.offloaded = False
            self.changes.append(PathChange(pair.a.port, None))

    def pin(self, pair: PortPair, side: PortSide, addr: Addr) -> None:
        """Latch a leg's side to the other relay's session port (relay/legs.py).
        The relays exchanged their ports on the authenticated relay channel,
        so no handshake is needed (nor could one be checked: a private
        session's keys are hidden from one of the relays), and no packet can
        move it later."""
        side.latched, side.mode, side.pinned = addr, SideMode.PORT, True
        self._check_ready(pair)

    # ------------------------------------------------------------ the port data path

    def moved(self, s: Session) -> None:
        """The session's registered addresses changed (a peer's NAT rebound)."""
        pair = s.ports
        if pair is not None:
            pair.a.reg_addr, pair.b.reg_addr = s.a_addr, s.b_addr
            for side in (pair.a, pair.b):
                if is_stream_addr(side.reg_addr) and side.mode is not SideMode.FRAMED:
                    # its agent went to TCP/TLS: its WireGuard's UDP does not
                    # reach the port any more; frames go on its stream
                    side.mode, side.latched = SideMode.FRAMED, None
                    self._check_ready(pair)

    def forward(
        self, port: int, data: bytes, addr: Addr, now: float, charge: int
    ) -> tuple[int, Addr] | None:
        """A datagram on a session port: (from port, to) when it goes on port
        to port (the fast path), else None (dropped and counted, or queued in
        ``out``). ``charge``: bytes counted per packet against the budget."""
        entry = self.by_port.get(port)
        drops = self._drops
        if entry is None:
            drops[DropReason.UNKNOWN_SESSION] += 1
            return None
        pair, src, dst, from_a = entry
        n = len(data)
        if n > MAX_PORT_PACKET:
            drops[DropReason.OVERSIZE] += 1
            return None
        if n < KEEPALIVE_LEN or not 1 <= data[0] <= 4 or data[1] | data[2] | data[3]:
            drops[DropReason.NOT_WIREGUARD] += 1
            return None
        if addr != src.latched:
            if src.pinned:
                drops[DropReason.PORT_FOREIGN_ADDRESS] += 1  # a leg's port serves its relay only
                return None
            if not self._latch(pair, src, data, addr, now):
                return None
        elif src.mode is not SideMode.PORT:
            # it sends from its latched address again (a framed frame in
            # flight at its switch made it look framed): whatever it did last
            src.mode = SideMode.PORT
            self._check_ready(pair)
        if src.hold_until and now >= src.hold_until:
            # its hold ran out and no resume came (a hold is cleared when
            # something is delivered to the side; a side that only sends
            # would keep the kernel path waiting)
            self.hold(pair, from_a, 0.0)
        if not pair.established:
            drops[DropReason.SESSION_NOT_READY] += 1
            return None
        s = pair.session
        bucket = s.ab if from_a else s.ba
        if bucket is not None and not bucket.take(n + charge, now):
            drops[DropReason.BANDWIDTH] += 1
            return None
        s.packets += 1
        s.bytes += n
        if dst.mode is SideMode.PORT and dst.latched is not None:
            if dst.hold_until:
                if now < dst.hold_until:
                    drops[DropReason.PORT_HELD] += 1
                    return None
                self.hold(pair, dst is pair.a, 0.0)  # the hold ran out
            return dst.port, dst.latched
        if dst.mode is SideMode.UNKNOWN:
            # switching to port mode (or never will: then its agent falls
            # back to framed and we hear a framed frame from it first)
            if is_handshake(data):
                dst.held, dst.held_at = data, now
            drops[DropReason.PORT_PEER_NOT_LATCHED] += 1
            return None
        self.out.append((0, data_header(s.sid) + data, dst.reg_addr))
        return None

    def _latch(self, pair: PortPair, side: PortSide, data: bytes, addr: Addr, now: float) -> bool:
        drops = self._drops
        if not is_handshake(data):
            drops[DropReason.PORT_NOT_LATCHED] += 1
            if (
                side.latched is not None
                and addr[0] == side.reg_addr[0]
                and now - side.noticed_at >= NOTICE_INTERVAL_S
            ):
                # WireGuard's packets from the side's own IP, another port: its
                # NAT rebound the socket. Only a handshake may re-latch; the
                # side's agent can have WireGuard send one at once
                side.noticed_at = now
                self.notices.append((pair.session.sid, side.key, side.port))
            return False
        if addr[0] != side.reg_addr[0] or not addr[1]:
            drops[DropReason.PORT_FOREIGN_ADDRESS] += 1  # (port 0: never an address)
            return False
        if not verify_mac1(side.mac1_key, data):
            drops[DropReason.PORT_BAD_MAC1] += 1
            return False
        mac = mac1_of(data)
        if mac in side.recent:
            drops[DropReason.REPLAYED] += 1
            return False
        side.recent.append(mac)
        if side.latched is not None:
            log.info(
                "session %s: port %d re-latched from %s to %s",
                pair.session.sid.hex(),
                side.port,
                side.latched,
                addr,
            )
        other = pair.b if side is pair.a else pair.a
        if addr != side.latched:
            if side.latched is not None:
                # a new mapping (the NAT rebound, or was replaced): how it
                # maps may have changed too; the side's next probe tells
                side.mapping = MappingKind.UNKNOWN
            if other.latched is not None:
                self.mapped[pair.session.sid] = pair
        side.latched = addr
        side.mode = SideMode.PORT
        side.latches += 1
        self.latches += 1
        if side.held is not None:
            held, side.held = side.held, None
            if held[0] == MESSAGE_INITIATION and data[0] == MESSAGE_INITIATION:
                # both sides initiated (both agents switched at once): the
                # latching one goes on and is answered; delivering the held
                # one too would cross them, and WireGuard keeps one handshake
                # state per peer, so both answers would be refused and the
                # tunnel would wait for the 5 s retry
                self.crossed += 1
            elif now - side.held_at < HOLD_S:
                self.out.append((side.port, held, addr))
        self._check_ready(pair)
        return True

    def probed(self, sid: bytes, addr: Addr) -> bool:
        """A MAPPING_PROBE for session ``sid`` from ``addr``: WireGuard's
        socket of the side at that IP, sent to our main port. The same public
        port as its latch (towards the session port) means its NAT maps
        independently of the destination; another port, per destination.
        False if it fits no latched side (counted by the caller)."""
        pair = self.by_sid.get(sid)
        if pair is None:
            return False
        sides = [(x, x.latched) for x in (pair.a, pair.b) if x.latched and x.latched[0] == addr[0]]
        if len(sides) != 1:
            return False  # none, or both sides behind one IP: cannot tell whose
        side, latched = sides[0]
        if side.mapping is not MappingKind.UNKNOWN:
            # one kind per latch (a new latch forgets it): probes that
            # disagree later (spoofed, say) change nothing and send nothing
            return True
        side.mapping = MappingKind.INDEPENDENT if latched[1] == addr[1] else MappingKind.DEPENDENT
        self.mapped[sid] = pair
        return True

    def hold(self, pair: PortPair, side_a: bool, until: float) -> None:
        """Deliver nothing to a side's port before ``until`` (0: resume).
        The kernel gives the path back meanwhile (it would deliver)."""
        side = pair.a if side_a else pair.b
        if not until and not side.hold_until:
            return  # nothing held: the kernel path stays as it is
        side.hold_until = until
        self._check_ready(pair)

    # ------------------------------------------------------------ the framed data path

    def framed_from(self, pair: PortPair, from_a: bool, frame: bytes, now: float) -> bool:
        """A framed data frame of this session from a side's registered
        address: that side is framed now. True if the frame was taken here
        (the other side is in port mode: it leaves that side's port)."""
        src, dst = (pair.a, pair.b) if from_a else (pair.b, pair.a)
        if src.mode is not SideMode.FRAMED:
            src.mode = SideMode.FRAMED
            self._check_ready(pair)
        if dst.mode is SideMode.PORT and dst.latched is not None:
            if dst.hold_until and now >= dst.hold_until:
                self.hold(pair, not from_a, 0.0)  # the hold ran out (a lost resume)
            if not dst.hold_until:
                self.out.append((dst.port, memoryview(frame)[DATA_HEADER_LEN:], dst.latched))
            else:
                self._drops[DropReason.PORT_HELD] += 1
            return True
        return False

    # ------------------------------------------------------------ kernel counters

    def kernel_counts(
        self, path_id: int, counts: tuple[int, int, int, int, int]
    ) -> tuple[int, int, int]:
        """The offload's cumulative (ab packets, ab bytes, ba packets, ba
        bytes, dropped) for a path; returns the (packets, bytes, dropped) new
        since the last reading."""
        entry = self.by_port.get(path_id)
        if entry is None:
            return 0, 0, 0
        pair = entry[0]
        last = pair.kernel_seen
        if any(c < s for c, s in zip(counts, last, strict=True)):
            last = (0, 0, 0, 0, 0)  # reinstalled: its counters started again
        pair.kernel_seen = counts
        d = [c - s for c, s in zip(counts, last, strict=True)]
        return d[0] + d[2], d[1] + d[3], d[4]
