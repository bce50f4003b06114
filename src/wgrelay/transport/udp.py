"""The production transport: real UDP sockets on a real asyncio loop.

The drain loop lives here once (the relay, the relay clients and the local
proxies all use it). It does not use asyncio's datagram transport, which reads
every datagram into a fresh 256 KiB buffer and alone makes a relay several
times slower: each socket is registered with ``loop.add_reader`` and drained
with plain ``recvfrom`` calls sized for the largest datagram we accept, at most
``DRAIN_BATCH`` per wake-up so one busy socket cannot starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from wgrelay.net import datagram_socket
from wgrelay.transport.base import Addr, DatagramReceiver

log = logging.getLogger(__name__)
T = TypeVar("T")

DRAIN_BATCH = 512
"""Datagrams handled per wake-up before yielding to the event loop (fairness)."""
RECV_SIZE = 9226 + 1
"""The largest datagram we accept (a jumbo data frame) plus one byte, so an
oversize one is seen as such instead of silently truncated."""
_QUIET_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED})


class UdpTransport:
    """A bound UDP socket read by the loop and handed to a ``DatagramReceiver``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, receiver: DatagramReceiver
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._receiver = receiver
        self._closed = False
        self.family = int(sock.family)
        self.local_address: Addr = sock.getsockname()
        self.send_errors = 0
        self.receiver_errors = 0
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        recvfrom = self._sock.recvfrom
        deliver = self._receiver.datagram_received
        got = False
        for _ in range(DRAIN_BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # e.g. a queued ICMP error; the socket is fine
            got = True
            try:
                deliver(data, addr)
            except Exception:  # a receiver bug must never stop the socket
                self._receiver_failed()
        if got and not self._closed:
            try:
                self._receiver.batch_done()
            except Exception:
                self._receiver_failed()

    def _receiver_failed(self) -> None:
        self.receiver_errors += 1
        if self.receiver_errors in (1, 10, 100) or self.receiver_errors % 1000 == 0:
            log.exception(
                "receiver on %s failed (%d so far)", self.local_address, self.receiver_errors
            )

    def sendto(self, data: bytes | memoryview, addr: Addr) -> bool:
        try:
            self._sock.sendto(data, addr)
        except OSError as e:
            self.send_errors += 1
            if e.errno not in _QUIET_ERRNOS:
                log.debug("send to %s failed: %s", addr, e)
            return False
        return True

    def fileno(self) -> int:
        """The socket's descriptor (for handing it to a load generator)."""
        return self._sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the loop may already be closed
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


class AsyncioRuntime:
    """Real clock, real loop, real sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.time()

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def open_udp(
        self, host: str, port: int, receiver: DatagramReceiver, *, buffer_bytes: int = 0
    ) -> UdpTransport:
        sock = datagram_socket(host, port, buffer_bytes)
        return UdpTransport(self.loop, sock, receiver)
