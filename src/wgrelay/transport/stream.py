"""Streams for networks that drop UDP: TCP, TLS, through an HTTP CONNECT proxy.

A stream carries exactly the messages a UDP socket would, each behind a u16
big-endian length (docs/PROTOCOL.md, "Stream transport"): the relay and the
agent keep one code path for every message, and only the socket under it
changes. ``FrameReader`` is the (pure) framing; ``TcpStream`` the asyncio
protocol for one connection, either side; ``connect_stream`` and
``listen_stream`` the ``Runtime`` methods of ``AsyncioRuntime``.

Back-pressure: asyncio never blocks on a write, it buffers. A reader that
stops reading would make that buffer grow without bound, so ``send_frame``
refuses (and counts) frames while more than ``send_buffer_bytes`` are unsent.
The relay thus drops a slow client's own traffic and keeps serving everyone
else at full speed. Every connection sets TCP_NODELAY: the frames are
WireGuard packets and control messages that must not wait for Nagle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import cast

from wgrelay.transport.base import (
    Accept,
    Addr,
    StreamOptions,
    StreamReceiver,
    StreamTransport,
)

log = logging.getLogger(__name__)

_LEN = struct.Struct("!H")
MAX_FRAME = 0xFFFF
PROXY_REPLY_MAX = 8192
"""Bytes of an HTTP CONNECT reply's head we read before giving up on it."""


class Refused:
    """The receiver of a connection refused over a limit: closed as soon as
    it is up, nothing read (the relay's stream table, the simulator)."""

    __slots__ = ("stream",)

    def __init__(self, stream: StreamTransport) -> None:
        self.stream = stream

    def stream_connected(self) -> None:
        self.stream.close()

    def frame_received(self, data: bytes) -> None:
        pass

    def frames_done(self) -> None:
        pass

    def stream_closed(self, error: str | None) -> None:
        pass


class FramingError(ValueError):
    pass


class FrameReader:
    """Splits a byte stream into frames: ``u16 length || message``, length >= 1."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole frames completed by ``data``. Raises ``FramingError`` on
        a zero length (no message is empty: the sender is not ours)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            (n,) = _LEN.unpack_from(buf, pos)
            if n == 0:
                raise FramingError("empty frame")
            if end - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def encode_frame(data: bytes | memoryview) -> bytes:
    n = len(data)
    if not 0 < n <= MAX_FRAME:
        raise FramingError(f"a frame carries 1 to {MAX_FRAME} bytes, not {n}")
    return _LEN.pack(n) + bytes(data)


USER_TIMEOUT_MS = 20_000
"""Unacknowledged data this long ends the connection (TCP_USER_TIMEOUT);
without it a path that died under a full send queue takes the kernel's
retransmission schedule, about 15 minutes, to notice."""
KEEPALIVE = ((socket.TCP_KEEPIDLE, 10), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 3))
"""An idle connection whose other end vanished is found within 25 s (the
agent's heartbeats make a live one busy long before)."""


def _tune(sock: socket.socket | None) -> None:
    """TCP_NODELAY, keepalive and a user timeout on a stream's socket."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


class TcpStream(asyncio.Protocol):
    """One stream connection (``StreamTransport``), connecting or accepted."""

    def __init__(self, peer: Addr, send_buffer_bytes: int) -> None:
        self._peer = peer
        self._limit = send_buffer_bytes
        self._transport: asyncio.Transport | None = None
        self.receiver: StreamReceiver | None = None
        self._reader = FrameReader()
        self._dropped = 0
        self._closed = False
        self._reported = False
        self._task: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        """Frames queued in this loop round: written in one call (``_write``)."""
        self._pending_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------- StreamTransport

    @property
    def peer_address(self) -> Addr:
        return self._peer

    @property
    def frames_dropped(self) -> int:
        return self._dropped

    def send_frame(self, data: bytes | memoryview) -> bool:
        t = self._transport
        n = len(data)
        if t is None or self._closed or not 0 < n <= MAX_FRAME:
            self._dropped += 1
            return False
        if t.get_write_buffer_size() + self._pending_bytes > self._limit:
            self._dropped += 1
            return False
        # one write() per loop round, not per frame: a relay forwarding a
        # recvmmsg batch into a stream made a system call for each of them
        if not self._pending and self._loop is not None:
            self._loop.call_soon(self._write)
        self._pending.append(_LEN.pack(n))
        self._pending.append(bytes(data))
        self._pending_bytes += n + 2
        return True

    def _write(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        t = self._transport
        if t is not None and pending and not t.is_closing():
            t.write(b"".join(pending))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()  # still connecting: its handler reports
        if self._transport is not None:
            # gracefully: what is queued (a relay's shutdown notices) still
            # leaves; a peer that never reads holds it at most until
            # TCP_USER_TIMEOUT. connection_lost reports.
            self._write()
            self._transport.close()
        elif self._task is None:
            self._report(None)

    # ---------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports quack like asyncio.Transport without subclassing it)
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        _tune(transport.get_extra_info("socket"))
        if self.receiver is not None:
            self.receiver.stream_connected()

    def data_received(self, data: bytes) -> None:
        receiver = self.receiver
        if receiver is None or self._closed:
            return
        try:
            frames = self._reader.feed(data)
        except FramingError as e:
            log.debug("stream from %s: %s; closing it", self._peer, e)
            self._report(f"bad framing: {e}")
            self.close()
            return
        for frame in frames:
            receiver.frame_received(frame)
        if frames:
            receiver.frames_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None
        self._report(None if exc is None else _why(exc))

    def _report(self, error: str | None) -> None:
        if self._reported:
            return
        self._reported = True
        if self.receiver is not None:
            try:
                self.receiver.stream_closed(error)
            except Exception:  # a receiver's bug must not escape into asyncio
                log.exception("stream close handler failed")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def client_tls_context() -> ssl.SSLContext:
    """TLS only to look like HTTPS to a middlebox: the relay proves itself by
    its key in the control channel (every control message is sealed to and
    from it), so its certificate is not checked (docs/SECURITY.md)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # see the docstring
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def _open_socket(host: str, port: int, options: StreamOptions) -> socket.socket:
    """A connected TCP socket to ``host:port``, through the proxy if any."""
    loop = asyncio.get_running_loop()
    target = options.proxy or (host, port)
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, target)
        if options.proxy is not None:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 1)  # byte by byte: nothing past the head
                if not chunk or len(head) > PROXY_REPLY_MAX:
                    raise ConnectionError("the proxy closed the connection")
                head += chunk
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status.split(" ", 2)
            if len(parts) < 2 or parts[1] != "200":
                raise ConnectionError(f"the proxy refused: {status}")
    except BaseException:
        sock.close()
        raise
    return sock


def connect_stream(
    host: str, port: int, receiver: StreamReceiver, options: StreamOptions
) -> TcpStream:
    loop = asyncio.get_running_loop()
    stream = TcpStream((host, port), options.send_buffer_bytes)
    stream.receiver = receiver

    async def run() -> None:
        try:
            async with asyncio.timeout(options.connect_timeout_s):
                sock = await _open_socket(host, port, options)
                try:
                    await loop.create_connection(
                        lambda: stream,
                        sock=sock,
                        ssl=client_tls_context() if options.tls else None,
                        server_hostname=host if options.tls else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except asyncio.CancelledError:
            stream._report(None)  # closed by us while connecting
        except Exception as e:
            stream._closed = True
            stream._report(_why(e))

    stream._task = loop.create_task(run())
    return stream


class TcpListener:
    """A listening TCP socket: served by asyncio's server (plain TCP) or by
    our accept loop (TLS), whose tasks it ends on ``close``."""

    def __init__(self, server: asyncio.Server | None, sock: socket.socket | None = None) -> None:
        self._server = server
        self._sock = sock
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def local_address(self) -> Addr:
        if self._server is not None:
            return tuple(self._server.sockets[0].getsockname())
        assert self._sock is not None  # noqa: S101 -- one of the two, by construction
        return tuple(self._sock.getsockname())

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.tasks):
            task.cancel()
        if self._sock is not None:
            self._sock.close()


HANDSHAKE_TIMEOUT_S = 5.0
"""A TLS handshake not done by then is dropped (asyncio's default is 60 s)."""
ACCEPT_RETRY_S = 0.1
"""After accept() failed (out of file descriptors): try again this much later."""

Admit = Callable[[Addr], bool]
Release = Callable[[Addr], None]


async def listen_stream(
    host: str,
    port: int,
    accept: Accept,
    *,
    tls: ssl.SSLContext | None = None,
    send_buffer_bytes: int = 256 * 1024,
    admit: Admit | None = None,
    release: Release | None = None,
) -> TcpListener:
    """``admit`` is asked when a connection arrives, before any TLS
    handshake (False closes it unread); ``release`` gives its slot back when
    it ends before it is accepted (a handshake that failed)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if tls is None:

        def factory() -> asyncio.Protocol:
            return _Accepted(accept, send_buffer_bytes, admit, release)

        server = await loop.create_server(
            factory, host, port, family=family, reuse_address=True, backlog=256
        )
        return TcpListener(server)
    # TLS: our own accept loop, so a connection is admitted (counted, or
    # refused) before its handshake; asyncio's server runs the handshake
    # first, and handshakes that never finish were held unlimited for 60 s
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(256)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    listener = TcpListener(None, sock)
    task = loop.create_task(
        _accept_tls(listener, sock, accept, tls, send_buffer_bytes, admit, release)
    )
    listener.tasks.add(task)
    return listener


async def _accept_tls(
    listener: TcpListener,
    sock: socket.socket,
    accept: Accept,
    tls: ssl.SSLContext,
    send_buffer_bytes: int,
    admit: Admit | None,
    release: Release | None,
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, peer = await loop.sock_accept(sock)
        except OSError as e:  # EMFILE and the like: the listener goes on
            log.warning("accepting a TLS connection failed: %s", e)
            await asyncio.sleep(ACCEPT_RETRY_S)
            continue
        addr: Addr = (str(peer[0]), int(peer[1]))
        if admit is not None and not admit(addr):
            conn.close()  # over a limit: closed unread
            continue
        proto = _Accepted(accept, send_buffer_bytes, None, release)
        proto.hold(addr)
        task = loop.create_task(_handshake(conn, proto, tls))
        listener.tasks.add(task)
        task.add_done_callback(listener.tasks.discard)


async def _handshake(conn: socket.socket, proto: _Accepted, tls: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(
            lambda: proto, conn, ssl=tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
        )
    except BaseException as e:
        conn.close()
        proto.give_back()
        if isinstance(e, asyncio.CancelledError):
            raise
        log.debug("TLS handshake from %s failed: %s", proto.peer_address, _why(e))


class _Accepted(TcpStream):
    """An accepted connection (admitted, and handshaken for TLS), handed to
    ``accept`` when it is made, which gives its receiver."""

    def __init__(
        self,
        accept: Accept,
        send_buffer_bytes: int,
        admit: Admit | None,
        release: Release | None,
    ) -> None:
        super().__init__(("", 0), send_buffer_bytes)
        self._accept = accept
        self._admit = admit
        self._release = release
        self._held = False
        """Admitted and not yet accepted: a slot to give back if it ends."""

    def hold(self, peer: Addr) -> None:
        """Admitted already (by the TLS accept loop)."""
        self._peer = peer
        self._held = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._held:
            peer = transport.get_extra_info("peername")
            self._peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
            if self._admit is not None:
                if not self._admit(self._peer):
                    self._closed = True
                    cast(asyncio.Transport, transport).abort()  # over a limit: closed unread
                    return
                self._held = True
        try:
            self.receiver = self._accept(self._peer, self)
        except Exception:
            log.exception("accepting a stream from %s failed", self._peer)
            transport.close()
            self.give_back()
            return
        self._held = False  # the receiver's now
        super().connection_made(transport)

    def give_back(self) -> None:
        if self._held:
            self._held = False
            if self._release is not None:
                self._release(self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.give_back()
        super().connection_lost(exc)
