"""The production transport: real UDP sockets on a real asyncio loop.

The drain loop lives here once (the relay, the relay clients and the local
proxies all use it). It does not use asyncio's datagram transport, which reads
every datagram into a fresh 256 KiB buffer and alone makes a relay several
times slower: each socket is registered with ``loop.add_reader`` and drained,
at most ``DRAIN_BATCH`` datagrams per wake-up so one busy socket cannot starve
the others, in one of two ways (``IoPath``, chosen once per runtime):

* **batched** (Linux, the ``_mmsg`` C extension built at install): one
  ``recvmmsg`` takes up to 64 datagrams, and what the receiver sends with
  ``send_deferred`` during the wake-up leaves after ``batch_done`` in one
  ``sendmmsg`` per 64. About a third fewer CPU cycles per relayed packet
  (docs/PERFORMANCE.md).
* **plain**: one ``recvfrom`` per datagram, ``send_deferred`` sends at once.
  Used when the extension is missing (not Linux, no compiler or Python headers
  at install) or when ``WGRELAY_BATCH_IO=0`` asks for it (to compare, or to
  rule the extension out).

Receivers see the same thing either way: the same bytes (a datagram longer than
``RECV_SIZE`` is cut to ``RECV_SIZE`` bytes, so the receiver sees it as
oversize), the same address tuples as ``recvfrom``, in arrival order, and one
``batch_done`` per wake-up that delivered something.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

from wgrelay.net import datagram_socket
from wgrelay.transport import stream
from wgrelay.transport.base import Accept, Addr, DatagramReceiver, StreamOptions, StreamReceiver
from wgrelay.transport.rawudp import send_from_port
from wgrelay.transport.stream import TcpListener, TcpStream

log = logging.getLogger(__name__)
T = TypeVar("T")

DRAIN_BATCH = 512
"""Datagrams handled per wake-up before yielding to the event loop (fairness)."""
RECV_SIZE = 9226 + 1
"""The largest datagram we accept (a jumbo data frame) plus one byte, so an
oversize one is seen as such instead of silently truncated."""
BATCH_IO_ENV = "WGRELAY_BATCH_IO"
"""``0`` selects the plain path even where the batched one is available."""
_QUIET_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED})
_ADDR_NOT_UNDERSTOOD = -1
"""``send_batch``'s errno for an address it does not parse: send it with sendto."""

Outgoing = tuple[bytes | memoryview, Addr]


@dataclass(frozen=True, slots=True)
class IoPath:
    """How a runtime's sockets are read and written."""

    mmsg: ModuleType | None
    """The loaded ``_mmsg`` extension: batched; None: plain."""
    description: str

    @property
    def batched(self) -> bool:
        return self.mmsg is not None


def load_mmsg() -> ModuleType | str:
    """The ``_mmsg`` extension, or why it is not there."""
    try:
        return importlib.import_module("wgrelay.transport._mmsg")
    except ImportError as e:
        return f"extension not built ({e.msg})"


def choose_io_path(environ: Mapping[str, str], mmsg: ModuleType | str) -> IoPath:
    """Batched when the extension loaded (``mmsg`` is the module, else the
    reason it did not) and ``WGRELAY_BATCH_IO`` does not say 0."""
    if environ.get(BATCH_IO_ENV, "1").strip() == "0":
        return IoPath(None, f"recvfrom/sendto, one datagram per call ({BATCH_IO_ENV}=0)")
    if isinstance(mmsg, str):
        return IoPath(None, f"recvfrom/sendto, one datagram per call ({mmsg})")
    return IoPath(mmsg, f"recvmmsg/sendmmsg, up to {mmsg.BATCH} datagrams per call")


class UdpTransport:
    """A bound UDP socket read by the loop and handed to a ``DatagramReceiver``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        receiver: DatagramReceiver,
        io: IoPath | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._receiver = receiver
        self._closed = False
        self.family = int(sock.family)
        self.local_address: Addr = sock.getsockname()
        self.send_errors = 0
        self.receiver_errors = 0
        self._io = io if io is not None else IoPath(None, "recvfrom/sendto, one datagram per call")
        self._draining = False
        """True while a batched wake-up delivers: send_deferred queues."""
        self._pending: list[Outgoing] = []
        mmsg = self._io.mmsg
        if mmsg is not None:
            self._recv_batch: Callable[[int, int], list[tuple[bytes, Addr]]] = mmsg.recv_batch
            self._send_batch: Callable[[int, int, list[Outgoing]], list[tuple[int, int]]] = (
                mmsg.send_batch
            )
            self._mmsg_batch = int(mmsg.BATCH)
            loop.add_reader(self._fd, self._on_readable_batched)
        else:
            loop.add_reader(self._fd, self._on_readable)

    @property
    def io_path(self) -> str:
        return self._io.description

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

    def _on_readable_batched(self) -> None:
        recv_batch = self._recv_batch
        fd = self._fd
        full = self._mmsg_batch
        deliver = self._receiver.datagram_received
        got = False
        self._draining = True
        try:
            for _ in range(DRAIN_BATCH // full):
                if self._closed:
                    break
                try:
                    batch = recv_batch(fd, RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # e.g. a queued ICMP error; the socket is fine
                got = True
                for data, addr in batch:
                    try:
                        deliver(data, addr)
                    except Exception:  # a receiver bug must never stop the socket
                        self._receiver_failed()
                if len(batch) < full:
                    break  # the queue is empty; the next wake-up takes what comes
            if got and not self._closed:
                try:
                    self._receiver.batch_done()
                except Exception:
                    self._receiver_failed()
        finally:
            self._draining = False
            if self._pending:
                self._flush_pending()

    def _flush_pending(self) -> None:
        pending = self._pending
        self._pending = []
        if self._closed:  # what sendto on a closed socket would have done
            self.send_errors += len(pending)
            return
        try:
            failures = self._send_batch(self._fd, self.family, pending)
        except Exception:  # a bad item (a bug upstream): send them one by one
            log.exception("batched send failed; sending one by one")
            failures = [(i, _ADDR_NOT_UNDERSTOOD) for i in range(len(pending))]
        for i, err in failures:
            if err == _ADDR_NOT_UNDERSTOOD:
                data, addr = pending[i]
                try:
                    self.sendto(data, addr)
                except Exception:  # sendto raises TypeError for a malformed address
                    self._receiver_failed()
                continue
            self.send_errors += 1
            if err not in _QUIET_ERRNOS:
                log.debug("send to %s failed: %s", pending[i][1], os.strerror(err))

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

    def send_deferred(self, data: bytes | memoryview, addr: Addr) -> None:
        if self._draining:
            self._pending.append((data, addr))
        else:
            self.sendto(data, addr)

    def queue(self, data: bytes | memoryview, addr: Addr) -> None:
        """Hold a datagram until ``flush``: what another socket's wake-up
        produced for this one (port mode: in on one port, out of another)."""
        self._pending.append((data, addr))

    def flush(self) -> None:
        """Send what ``queue`` held: one ``sendmmsg`` per 64 when batched."""
        if not self._pending or self._draining:
            return  # (a draining socket sends its queue when its wake-up ends)
        if self._io.mmsg is not None:
            self._flush_pending()
            return
        pending, self._pending = self._pending, []
        for data, addr in pending:
            self.sendto(data, addr)

    def fileno(self) -> int:
        """The socket's descriptor (for handing it to a load generator)."""
        return self._sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the loop may already be closed
            self._loop.remove_reader(self._fd)
        self._sock.close()


class AsyncioRuntime:
    """Real clock, real loop, real sockets.

    ``io`` says how sockets are read and written; by default the batched path
    when the extension is there and ``WGRELAY_BATCH_IO`` is not 0.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, io: IoPath | None = None
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.io = io if io is not None else choose_io_path(os.environ, load_mmsg())

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.time()

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def send_from_port(self, port: int, data: bytes, addr: Addr) -> None:
        send_from_port(port, data, addr)

    def open_udp(
        self, host: str, port: int, receiver: DatagramReceiver, *, buffer_bytes: int = 0
    ) -> UdpTransport:
        sock = datagram_socket(host, port, buffer_bytes)
        return UdpTransport(self.loop, sock, receiver, self.io)

    def connect_stream(
        self, host: str, port: int, receiver: StreamReceiver, options: StreamOptions
    ) -> TcpStream:
        return stream.connect_stream(host, port, receiver, options)

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
    ) -> TcpListener:
        return await stream.listen_stream(
            host,
            port,
            accept,
            tls=tls,
            send_buffer_bytes=send_buffer_bytes,
            admit=admit,
            release=release,
        )
