"""Links: what one attachment (a host's access link, a NAT's WAN side) does to packets.

A ``LinkSpec`` describes one link; each link carries traffic in two
independent directions (a ``Pipe`` each), like a full-duplex access line: a
transmit queue with its own serialisation clock, then propagation delay.
Per packet, in order:

1. loss: dropped with probability ``loss``;
2. bandwidth (if ``bandwidth_bps``): the packet waits behind the bytes already
   queued and takes ``wire_bytes * 8 / bandwidth_bps`` to serialise; if more
   than ``queue_bytes`` would be waiting, it is dropped (tail drop);
3. delay: ``delay_s`` plus uniform jitter in ``[0, jitter_s)``; with
   probability ``reorder`` a further ``reorder_delay_s``, so later packets
   overtake it (jitter larger than the packet spacing reorders too, as netem
   does);
4. duplication: with probability ``duplicate`` an identical copy arrives right
   after the original and continues on its own.

Every draw comes from the pipe's own seeded ``random.Random``, so adding a
host to a scenario does not change what another link drops.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IPV4_UDP_OVERHEAD_BYTES = 28
"""IPv4 (20) + UDP (8) headers, counted on the wire for serialisation."""
IPV6_UDP_OVERHEAD_BYTES = 48
"""IPv6 (40) + UDP (8) headers."""

LOST = -1.0
"""``Pipe.transit`` result: dropped by random loss."""
QUEUE_FULL = -2.0
"""``Pipe.transit`` result: tail-dropped, the transmit queue was full."""
_QUEUE_SLACK_BYTES = 1e-6


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction's behaviour, applied to both directions of a link."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    bandwidth_bps: float | None = None
    """None: unlimited (no serialisation delay, no queue)."""
    queue_bytes: int = 64 * 1024
    """Transmit queue size in wire bytes (only with a bandwidth)."""
    reorder_delay_s: float = 0.010
    """Extra delay of a packet picked for reordering."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"LinkSpec.{name} must be a probability in [0, 1], got {p}")
        for name in ("delay_s", "jitter_s", "reorder_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"LinkSpec.{name} must not be negative")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("LinkSpec.bandwidth_bps must be positive (None: unlimited)")
        if self.queue_bytes < 0:
            raise ValueError("LinkSpec.queue_bytes must not be negative")


class Pipe:
    """One direction of a link: its spec, its queue state and its random stream."""

    __slots__ = (
        "_busy_until",
        "_jitter_s",
        "_loss",
        "_reorder",
        "_reorder_delay_s",
        "bandwidth_bps",
        "delay_s",
        "duplicate",
        "name",
        "queue_bytes",
        "rng",
        "spec",
    )

    def __init__(self, name: str, spec: LinkSpec, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self._busy_until = 0.0
        self.set_spec(spec)

    def set_spec(self, spec: LinkSpec) -> None:
        """Change the link's behaviour from now on (the queue keeps its backlog)."""
        self.spec = spec
        # Copied into slots: transit() runs for every packet on every hop.
        self.delay_s = spec.delay_s
        self._jitter_s = spec.jitter_s
        self._loss = spec.loss
        self.duplicate = spec.duplicate
        self._reorder = spec.reorder
        self._reorder_delay_s = spec.reorder_delay_s
        self.bandwidth_bps = spec.bandwidth_bps
        self.queue_bytes = spec.queue_bytes

    def transit(self, t: float, wire_bytes: int) -> float:
        """The time a packet entering at ``t`` leaves the far end, or ``LOST``
        / ``QUEUE_FULL``. With a bandwidth, calls must come in entry order."""
        rng = self.rng
        if self._loss and rng.random() < self._loss:
            return LOST
        bandwidth = self.bandwidth_bps
        if bandwidth is not None:
            busy = self._busy_until
            if busy > t:
                backlog_bytes = (busy - t) * bandwidth / 8.0
                # The slack keeps float sums from dropping a packet that fits exactly.
                if backlog_bytes + wire_bytes > self.queue_bytes + _QUEUE_SLACK_BYTES:
                    return QUEUE_FULL
                t = busy
            t += wire_bytes * 8.0 / bandwidth
            self._busy_until = t
        t += self.delay_s
        if self._jitter_s:
            t += rng.random() * self._jitter_s
        if self._reorder and rng.random() < self._reorder:
            t += self._reorder_delay_s
        return t

    def duplicates(self) -> bool:
        """Whether this packet is duplicated (one draw; only when enabled)."""
        return bool(self.duplicate) and self.rng.random() < self.duplicate
