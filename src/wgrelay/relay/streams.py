"""Agents over TCP and TLS: each accepted stream becomes an address of the core.

A network that drops UDP still lets an agent reach the relay over TCP (or TLS
on 443). The core must not care: every stream connection is given an address
``(host, port, "tcp"|"tls")``, a 3-tuple no UDP socket ever reports, so the
core registers, authenticates, rate-limits (by host, like UDP) and forwards to
it exactly as to a UDP peer, and the server sends to 3-tuples through
``RelayStreams.send``. A session can join a stream side and a UDP side
(framed, or in port mode on the UDP side): the core bridges them as it bridges
two UDP sides, since each side's frames go to its own registered address.

Limits, all counted in /metrics: connections at once (``max_streams``) and per
source host (``max_streams_per_source``), counted from the moment a
connection arrives, before its TLS handshake (``admitter``): handshakes that
never finish are held to the same limits (and the transport gives a
handshake 5 s). A connection must carry a registration within
``register_within_s`` (an agent registers in its first round trip), else it
is closed: junk keeps nobody's slot. A registered one silent for
``idle_close_s`` is closed too. A stream whose reader stops lets its unsent
bytes reach the transport's limit and then loses its own frames
(``stream_backpressure``) while everyone else's flow on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

from wgrelay.relay.admission import source_group
from wgrelay.relay.stats import DropReason, RelayStats
from wgrelay.transport.base import Addr, StreamReceiver, StreamTransport
from wgrelay.transport.stream import Refused

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_streams: int = 4096
    max_streams_per_source: int = 64
    """Per IPv4 address or IPv6 /64, like registrations."""
    idle_close_s: float = 60.0
    """Close a connection that sent nothing this long (an agent heartbeats
    every few seconds; registrations expire after 30 s)."""
    register_within_s: float = 10.0
    """Close a connection that has no registration this long after it came."""


class RelayStreams:
    """The open stream connections of one relay, by core address."""

    def __init__(
        self,
        deliver: Callable[[bytes, Addr], None],
        batch_done: Callable[[], None],
        stats: RelayStats,
        now: Callable[[], float],
        limits: StreamLimits | None = None,
    ) -> None:
        self._deliver = deliver
        self._batch_done = batch_done
        self._stats = stats
        self._now = now
        self.limits = limits or StreamLimits()
        self.conns: dict[Addr, StreamTransport] = {}
        self._heard: dict[Addr, float] = {}
        self._since: dict[Addr, float] = {}
        self._pending: set[Addr] = set()
        """Admitted, not accepted yet (a TLS handshake under way): they count."""
        self._per_source: Counter[str] = Counter()
        self.accepted = 0

    def acceptor(self, kind: str) -> Callable[[Addr, StreamTransport], StreamReceiver]:
        """The ``accept`` callback for a listener of ``kind`` ("tcp" or "tls")."""

        def accept(addr: Addr, stream: StreamTransport) -> StreamReceiver:
            return self._accept(_key(addr, kind), stream)

        return accept

    def admitter(self, kind: str) -> tuple[Callable[[Addr], bool], Callable[[Addr], None]]:
        """The ``admit`` and ``release`` callbacks for a listener of ``kind``."""

        def admit(addr: Addr) -> bool:
            return self._admit(_key(addr, kind))

        def release(addr: Addr) -> None:
            key = _key(addr, kind)
            if key in self._pending:
                self._pending.discard(key)
                if key not in self.conns:
                    self._unsource(key)

        return admit, release

    def _admit(self, key: Addr) -> bool:
        if key in self.conns or key in self._pending:
            # the same source port again: one 4-tuple is one connection, so
            # the old one is dead; the new one takes its place within the
            # limits, which a dead one must not hold until it is swept
            self._pending.add(key)
            return True
        if (
            len(self.conns) + len(self._pending) >= self.limits.max_streams
            or self._per_source[source_group(key)] >= self.limits.max_streams_per_source
        ):
            self._stats.drops[DropReason.STREAM_LIMIT] += 1
            return False
        self._pending.add(key)
        self._per_source[source_group(key)] += 1
        return True

    def _accept(self, key: Addr, stream: StreamTransport) -> StreamReceiver:
        if key not in self._pending and not self._admit(key):  # (no admission step)
            return Refused(stream)
        self._pending.discard(key)
        old = self.conns.pop(key, None)
        if old is not None:
            old.close()  # the dead one (its close report no longer matches: ignored)
        now = self._now()
        self.conns[key] = stream
        self._heard[key] = self._since[key] = now
        self.accepted += 1
        self._stats.streams_open = len(self.conns)
        return _Client(self, key, stream)

    def send(self, data: bytes | memoryview, dst: Addr) -> None:
        """The server's sender for 3-tuple addresses."""
        stream = self.conns.get(dst)
        if stream is None:
            self._stats.drops[DropReason.STREAM_CLOSED] += 1
        elif not stream.send_frame(data):
            self._stats.drops[DropReason.STREAM_BACKPRESSURE] += 1

    def sweep(self, now: float, registered: Collection[Addr]) -> None:
        """Close connections silent for ``idle_close_s``, and those without a
        registration (``registered``: the addresses registered now) for
        ``register_within_s`` since they came."""
        lim = self.limits
        silent = now - lim.idle_close_s
        unregistered = now - lim.register_within_s
        for key in [
            k
            for k, t in self._heard.items()
            if t < silent or (self._since.get(k, now) < unregistered and k not in registered)
        ]:
            stream = self.conns.get(key)
            self._forget(key)
            if stream is not None:
                log.debug("closing stream %s: silent, or no registration on it", key)
                stream.close()

    def close(self) -> None:
        for stream in list(self.conns.values()):
            stream.close()
        self.conns.clear()
        self._heard.clear()
        self._since.clear()
        self._pending.clear()
        self._per_source.clear()
        self._stats.streams_open = 0

    def _forget(self, key: Addr) -> None:
        if self.conns.pop(key, None) is not None:
            self._unsource(key)
        self._heard.pop(key, None)
        self._since.pop(key, None)
        self._stats.streams_open = len(self.conns)

    def _unsource(self, key: Addr) -> None:
        group = source_group(key)
        self._per_source[group] -= 1
        if self._per_source[group] <= 0:
            del self._per_source[group]

    # the receiver callbacks, per connection (``_Client``)

    def frame(self, key: Addr, stream: StreamTransport, data: bytes) -> None:
        if self.conns.get(key) is stream:  # not a connection replaced or swept
            self._deliver(data, key)

    def done(self, key: Addr, stream: StreamTransport) -> None:
        """After a read's frames: heard from now (once per read, not per frame)."""
        if self.conns.get(key) is stream:
            self._heard[key] = self._now()
        self._batch_done()

    def closed(self, key: Addr, stream: StreamTransport, error: str | None) -> None:
        if error is not None and error.startswith("bad framing"):
            self._stats.drops[DropReason.STREAM_BAD_FRAMING] += 1
        if self.conns.get(key) is stream:
            self._forget(key)


def _key(addr: Addr, kind: str) -> Addr:
    return (str(addr[0]), int(addr[1]), kind)


class _Client:
    """``StreamReceiver`` of one accepted connection."""

    __slots__ = ("key", "stream", "streams")

    def __init__(self, streams: RelayStreams, key: Addr, stream: StreamTransport) -> None:
        self.streams = streams
        self.key = key
        self.stream = stream

    def stream_connected(self) -> None:
        pass  # accepted connections are up when accepted

    def frame_received(self, data: bytes) -> None:
        self.streams.frame(self.key, self.stream, data)

    def frames_done(self) -> None:
        self.streams.done(self.key, self.stream)

    def stream_closed(self, error: str | None) -> None:
        self.streams.closed(self.key, self.stream, error)
