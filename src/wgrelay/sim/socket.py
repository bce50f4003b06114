"""Simulated UDP sockets and the ``Runtime`` a host hands to production shells.

``SimUdpTransport`` and ``SimRuntime`` implement ``wgrelay.transport.base``'s
``DatagramTransport`` and ``Runtime`` exactly, so a shell written against the
seam runs on a simulated host unchanged. Receiving follows the seam's contract:
the network calls ``datagram_received`` for each datagram of one wake-up (all
datagrams that arrive at the same virtual instant), then ``batch_done`` once.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from wgrelay.transport.base import (
    Accept,
    Addr,
    DatagramReceiver,
    DatagramTransport,
    Runtime,
    StreamListener,
    StreamOptions,
    StreamReceiver,
    StreamTransport,
)
from wgrelay.transport.stream import Refused

_T = TypeVar("_T")

if TYPE_CHECKING:
    from wgrelay.sim.loop import VirtualTimeLoop
    from wgrelay.sim.stream import SimStreamListener
    from wgrelay.sim.streamconn import SimStream
    from wgrelay.sim.topology import Host


class SimUdpTransport:
    """One bound UDP socket on a simulated host."""

    __slots__ = (
        "batch_pending",
        "bound_ip",
        "closed",
        "family",
        "host",
        "local_address",
        "loopback",
        "port",
        "receiver",
        "receiver_errors",
        "send_errors",
        "wildcard",
    )

    def __init__(
        self, host: Host, family: int, bound_ip: str, port: int, receiver: DatagramReceiver
    ) -> None:
        self.host = host
        self.family = family
        self.bound_ip = bound_ip
        self.port = port
        self.receiver = receiver
        self.wildcard = bound_ip in ("0.0.0.0", "::")
        self.loopback = bound_ip.startswith("127.") or bound_ip == "::1"
        self.local_address: Addr = (
            (bound_ip, port, 0, 0) if family == socket.AF_INET6 else (bound_ip, port)
        )
        self.closed = False
        self.send_errors = 0
        self.receiver_errors = 0
        self.batch_pending = False
        """Set while the network owes this socket a ``batch_done`` call."""

    def sendto(self, data: bytes | memoryview, addr: Addr) -> bool:
        if self.closed:
            return False
        return self.host.network.send(self, data, addr)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.unbind(self)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<SimUdpTransport {self.host.name} {self.bound_ip}:{self.port}{state}>"


class _Unbound:
    """The receiver of a sender that is never bound (nothing reaches it)."""

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        pass

    def batch_done(self) -> None:
        pass


class SimRuntime:
    """``wgrelay.transport.base.Runtime`` for one simulated host."""

    def __init__(self, host: Host, loop: VirtualTimeLoop) -> None:
        self.host = host
        self.loop = loop
        self._vloop = loop

    def now(self) -> float:
        return self._vloop.time()

    def wall(self) -> float:
        return self._vloop.wall()

    async def run_blocking(self, fn: Callable[[], _T]) -> _T:
        """Call ``fn`` inline. No threads in a simulation: a worker thread
        finishes at a wall-clock moment and would make runs differ; simulated
        backends (``SimWireGuard``) never block."""
        return fn()

    def send_from_port(self, port: int, data: bytes, addr: Addr) -> None:
        # what a raw socket does for real: the datagram leaves from that port
        # of this host, whichever socket holds it (replies go to that one)
        family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        sender = SimUdpTransport(self.host, family, wildcard, port, _Unbound())
        if not self.host.network.send(sender, data, addr):
            raise OSError(f"cannot send from port {port} to {addr}")

    def open_udp(
        self, host: str, port: int, receiver: DatagramReceiver, *, buffer_bytes: int = 0
    ) -> SimUdpTransport:
        # buffer_bytes has nothing to size: a simulated socket delivers each
        # datagram as it arrives and never overflows.
        return self.host.bind(host, port, receiver)

    def connect_stream(
        self, host: str, port: int, receiver: StreamReceiver, options: StreamOptions
    ) -> SimStream:
        """A simulated TCP (or TLS) connection (``wgrelay.sim.stream``)."""
        return self.host.streams.connect(self.host, host, port, receiver, options)

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
    ) -> SimStreamListener:
        """Accept simulated connections; ``tls`` only marks the listener as
        TLS (no crypto in a simulation: see ``wgrelay.sim.stream``). A
        simulated handshake cannot hang, so ``admit`` is asked right before
        ``accept`` (``release`` is then never needed)."""
        if admit is not None:
            gate = admit

            def admitted(addr: Addr, s: StreamTransport) -> StreamReceiver:
                if not gate(addr):
                    return Refused(s)
                return accept(addr, s)

            return self.host.streams.listen(self.host, host, port, admitted, tls, send_buffer_bytes)
        return self.host.streams.listen(self.host, host, port, accept, tls, send_buffer_bytes)


if TYPE_CHECKING:
    # mypy proves these implement the transport seam exactly.
    _TRANSPORT: type[DatagramTransport] = SimUdpTransport
    _RUNTIME: type[Runtime] = SimRuntime

    def _stream_types(s: SimStream, listener: SimStreamListener) -> None:
        _s: StreamTransport = s
        _l: StreamListener = listener
