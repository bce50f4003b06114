"""The simulation's trace: what happened to every packet, in processing order.

The network appends plain tuples on the hot path (one per send, one per fate)
and turns them into ``TraceRecord`` objects only when asked. Records are in the
order the simulator decided them; ``time`` is the virtual time the event
happens on the path (a loss on a far link is decided when the packet enters
it, with the time it would have reached that link). ``digest()`` hashes the
exact reprs, so two runs agree only if every time, address, size and verdict
agrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Kinds of record.
SEND = "send"
"""A socket handed a datagram to the network (src/dst as the sender wrote them)."""
DELIVER = "deliver"
"""A datagram reached a socket (src as the receiver sees it)."""
DROP = "drop"
"""A datagram was dropped; ``verdict`` is the reason, ``at`` where."""
NAT_MAP = "nat_map"
"""A NAT created a mapping: src = inside endpoint, dst = outside endpoint."""
NAT_EXPIRE = "nat_expire"
HOST_DOWN = "host_down"
HOST_UP = "host_up"
PARTITION = "partition"
HEAL = "heal"

DELIVERED = "delivered"
"""``verdict`` of a delivery and of a send."""

RawRecord = tuple[float, str, Any, Any, int, str, str]


@dataclass(frozen=True, slots=True)
class TraceRecord:
    time: float
    kind: str
    src: tuple[Any, ...] | None
    dst: tuple[Any, ...] | None
    size: int
    """UDP payload bytes (0 for events that are not packets)."""
    verdict: str
    """``delivered`` or a drop reason (``loss``, ``nat_filtered``, ...)."""
    at: str
    """The host, link or box where it happened."""


class Trace:
    """An append-only log of raw records (or nothing, when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.raw: list[RawRecord] = []

    def __len__(self) -> int:
        return len(self.raw)

    def __iter__(self) -> Iterator[TraceRecord]:
        for r in self.raw:
            yield TraceRecord(*r)

    def event(self, time: float, kind: str, at: str, detail: str = "") -> None:
        """A non-packet event (host down, partition...)."""
        if self.enabled:
            self.raw.append((time, kind, None, None, 0, detail, at))

    def digest(self) -> str:
        """SHA-256 over every record, hex."""
        h = hashlib.sha256()
        for r in self.raw:
            h.update(repr(r).encode())
            h.update(b"\n")
        return h.hexdigest()
