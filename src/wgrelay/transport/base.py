"""Interfaces of the transport seam (no implementation here).

A ``Runtime`` is what a shell needs from the world: an asyncio event loop whose
``time()`` is the monotonic clock every core is driven with, the wall clock
(control-message timestamps, announcements), and UDP sockets. The production
runtime (``wgrelay.transport.udp.AsyncioRuntime``) wraps a real loop and real
sockets; the simulator's (``wgrelay.sim``) wraps a virtual-time loop and an
in-memory network, so the same shells and cores run in both.

Receiving follows asyncio's ``DatagramProtocol`` shape: the transport calls
``datagram_received`` for every datagram of one wake-up, then ``batch_done``
once, so a shell can flush its core's output once per burst instead of once per
datagram.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

Addr = tuple[Any, ...]
"""A socket address exactly as ``recvfrom`` returns it: ``(host, port)`` for
IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6. Cores compare these
tuples, so a transport must always give the same form for the same peer."""


class DatagramReceiver(Protocol):
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        """One datagram. Must not raise: count and drop what is wrong."""

    def batch_done(self) -> None:
        """Called after a burst of ``datagram_received`` calls (one wake-up)."""


class DatagramTransport(Protocol):
    """One bound UDP socket, real or simulated."""

    @property
    def local_address(self) -> Addr:
        """The bound address (with the port the system picked for port 0)."""

    @property
    def family(self) -> int:
        """``socket.AF_INET`` or ``socket.AF_INET6``."""

    def sendto(self, data: bytes | memoryview, addr: Addr) -> bool:
        """Send one datagram; False if it was dropped locally (full buffer,
        unreachable, closed). Never raises."""

    def close(self) -> None:
        """Stop receiving and release the socket; idempotent."""


@runtime_checkable
class DeferredSender(Protocol):
    """A transport that can send a wake-up's datagrams together (optional).

    The real UDP transport implements it; a shell that never looks at
    ``sendto``'s result (the relay's data path) sends with ``send_deferred``
    instead, and the datagrams of one wake-up leave in order, in a few system
    calls, right after ``batch_done``. Outside a wake-up it sends at once.
    """

    @property
    def io_path(self) -> str:
        """How this socket is read and written, for the start-up log."""

    def send_deferred(self, data: bytes | memoryview, addr: Addr) -> None:
        """Queue one datagram (or send it now outside a wake-up). Never raises;
        a datagram dropped locally is counted like a failed ``sendto``."""


@runtime_checkable
class QueueingSender(Protocol):
    """A transport that holds datagrams until told to send them together
    (optional; the relay's port mode queues a wake-up's output per port)."""

    def queue(self, data: bytes | memoryview, addr: Addr) -> None:
        """Hold one datagram until ``flush``. Never raises."""

    def flush(self) -> None:
        """Send every held datagram. Never raises."""


class Runtime(Protocol):
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop; ``loop.time()`` is the monotonic ``now`` of the cores."""

    def now(self) -> float:
        """Monotonic seconds: ``loop.time()``."""

    def wall(self) -> float:
        """Seconds since the epoch (control timestamps, announcements)."""

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run a call that may block (a WireGuard backend, a file): in a
        worker thread for real, inline in the simulator (no threads there:
        they would break determinism)."""

    def send_from_port(self, port: int, data: bytes, addr: Addr) -> None:
        """Send one datagram from local UDP ``port`` although another socket
        (WireGuard's) holds it, so a NAT maps it as that socket's traffic.
        Raises ``OSError`` when it cannot (for real: a raw socket, which
        needs CAP_NET_RAW)."""

    def open_udp(
        self, host: str, port: int, receiver: DatagramReceiver, *, buffer_bytes: int = 0
    ) -> DatagramTransport:
        """Bind a UDP socket and start delivering to ``receiver``.

        ``host`` is a literal address (``0.0.0.0``/``::`` for any); ``port`` 0
        picks a free port. IPv6 sockets are IPv6-only. ``buffer_bytes`` asks
        for kernel buffers of that size (0: the system default). Raises
        ``OSError`` when the address cannot be bound.
        """

    def connect_stream(
        self, host: str, port: int, receiver: StreamReceiver, options: StreamOptions
    ) -> StreamTransport:
        """Start connecting a stream to ``host:port`` (a literal address);
        returns at once, ``receiver.stream_connected`` or ``stream_closed``
        follows. Never raises for network errors (they arrive as
        ``stream_closed``)."""

    async def listen_stream(
        self,
        host: str,
        port: int,
        accept: Accept,
        *,
        tls: ssl.SSLContext | None = None,
        send_buffer_bytes: int = 256 * 1024,
        admit: Callable[[Addr], bool] | None = None,
        release: Callable[[Addr], None] | None = None,
    ) -> StreamListener:
        """Accept streams on ``host:port``. Raises ``OSError`` when the
        address cannot be bound. ``admit`` is asked as a connection arrives,
        before any TLS handshake (False: closed unread; True holds a slot,
        which ``accept`` takes or ``release`` gives back if the connection
        ends first): limits then hold for handshakes that never finish."""


# ---------------------------------------------------------------- streams (TCP, TLS)


class StreamReceiver(Protocol):
    """What a stream transport reports to (issue 13: networks that block UDP).

    A stream carries the same messages as UDP datagrams, one per frame
    (docs/PROTOCOL.md, "Stream transport"); the transport delivers whole
    frames, then ``frames_done`` once per wake-up, like a datagram batch."""

    def stream_connected(self) -> None:
        """The connection (and its TLS handshake, and proxy tunnel) is up."""

    def frame_received(self, data: bytes) -> None:
        """One message. Must not raise: count and drop what is wrong."""

    def frames_done(self) -> None:
        """After the frames of one wake-up."""

    def stream_closed(self, error: str | None) -> None:
        """Connecting failed or the connection ended (``error`` None: closed
        cleanly by the other end or by us). Called once; nothing after it."""


class StreamTransport(Protocol):
    """One connected (or connecting) stream, real or simulated."""

    @property
    def peer_address(self) -> Addr:
        """The other end: for an accepted connection, its source address."""

    @property
    def frames_dropped(self) -> int:
        """Frames refused by ``send_frame`` (its send buffer full, or closed)."""

    def send_frame(self, data: bytes | memoryview) -> bool:
        """Queue one message. False (and counted) when the connection is not
        up, or when more than its buffer limit is still unsent: a reader that
        stopped reading loses its own frames and holds up nobody else."""

    def close(self) -> None:
        """Close (idempotent); ``stream_closed`` follows unless already reported."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """How a stream to a relay is made."""

    tls: bool = False
    """TLS over the TCP connection: there to pass middleboxes that let only
    HTTPS out; the relay is authenticated by its key inside, not by its
    certificate (docs/SECURITY.md)."""
    proxy: tuple[str, int] | None = None
    """An HTTP CONNECT proxy to go through (``https_proxy``)."""
    connect_timeout_s: float = 5.0
    send_buffer_bytes: int = 256 * 1024
    """Unsent bytes a stream may hold before ``send_frame`` drops."""


class StreamListener(Protocol):
    @property
    def local_address(self) -> Addr: ...

    def close(self) -> None: ...


Accept = Callable[[Addr, StreamTransport], StreamReceiver]
"""Called for each accepted connection with its source address; returns the
receiver for its frames."""
