"""The agent's streams to relays: the I/O half of ``StreamFallback``.

One stream per relay address at most, made through the ``Runtime`` (real TCP
and TLS, or the simulator's). Frames from a stream are handed to the manager
as if they were datagrams from the relay's UDP address: the planner and the
links never learn what carried them. Where the relay listens: the ports its
announcement gives (``Capability.TCP_FALLBACK`` / ``TLS_FALLBACK``), else the
defaults every relay uses unless told otherwise: TCP on its UDP port's number,
TLS on 443.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from wgrelay.client.fallback import Carrier
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import ConfigError
from wgrelay.transport.base import Runtime, StreamOptions, StreamTransport

log = logging.getLogger(__name__)

DEFAULT_TLS_PORT = 443

StreamPorts = Callable[[Endpoint], tuple[int, int]]
"""The relay at a UDP address -> (TCP port, TLS port); 0: it does not listen."""


def default_stream_ports(addr: Endpoint) -> tuple[int, int]:
    return addr[1], DEFAULT_TLS_PORT


def proxy_from_environ(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """``https_proxy`` (or ``HTTPS_PROXY``) as a literal (host, port), or None.

    Resolved once, at start: the proxy is how we reach anything at all."""
    text = environ.get("https_proxy") or environ.get("HTTPS_PROXY")
    if not text:
        return None
    url = urlsplit(text if "://" in text else f"http://{text}")
    if url.scheme not in ("http", "") or not url.hostname:
        raise ConfigError(f"https_proxy={text!r}: only an http://HOST:PORT proxy is supported")
    try:
        port = url.port or 8080
        infos = socket.getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as e:
        raise ConfigError(f"https_proxy={text!r}: {e}") from None
    return str(infos[0][4][0]), int(infos[0][4][1])


class _StreamReceiver:
    __slots__ = ("addr", "carrier", "owner", "stream")

    def __init__(self, owner: RelayStreams, addr: Endpoint, carrier: Carrier) -> None:
        self.owner = owner
        self.addr = addr
        self.carrier = carrier
        self.stream: StreamTransport | None = None

    def _current(self) -> bool:
        return self.owner.streams.get(self.addr) is self.stream

    def stream_connected(self) -> None:
        if self._current():
            self.owner.on_connected(self.addr, self.carrier)

    def frame_received(self, data: bytes) -> None:
        if self._current():
            self.owner.on_frame(self.addr, data)

    def frames_done(self) -> None:
        if self._current():
            self.owner.on_frames_done()

    def stream_closed(self, error: str | None) -> None:
        if self._current():
            del self.owner.streams[self.addr]
            self.owner.on_closed(self.addr, self.carrier, error)


class RelayStreams:
    """Streams by relay address; the callbacks go back to the manager."""

    def __init__(
        self,
        runtime: Runtime,
        on_connected: Callable[[Endpoint, Carrier], None],
        on_frame: Callable[[Endpoint, bytes], object],
        on_frames_done: Callable[[], None],
        on_closed: Callable[[Endpoint, Carrier, str | None], None],
        ports: StreamPorts = default_stream_ports,
        proxy: tuple[str, int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.on_connected = on_connected
        self.on_frame = on_frame
        self.on_frames_done = on_frames_done
        self.on_closed = on_closed
        self.ports = ports
        self.proxy = proxy
        self.streams: dict[Endpoint, StreamTransport] = {}
        self.frames_dropped = 0

    def connect(self, addr: Endpoint, carrier: Carrier, timeout_s: float = 5.0) -> None:
        self.close(addr)
        tcp_port, tls_port = self.ports(addr)
        port = tls_port if carrier == Carrier.TLS else tcp_port
        receiver = _StreamReceiver(self, addr, carrier)
        if not port:
            # the relay says it does not listen that way: a failure, reported
            # like any other so the fallback moves on (TCP -> TLS -> later)
            self.on_closed(addr, carrier, "not offered by the relay")
            return
        log.info(
            "UDP to relays gets no answer: trying %s to %s port %d%s",
            carrier.upper(),
            addr[0],
            port,
            f" through proxy {endpoint_str(self.proxy)}" if self.proxy else "",
        )
        options = StreamOptions(
            tls=carrier == Carrier.TLS, proxy=self.proxy, connect_timeout_s=timeout_s
        )
        stream = self.runtime.connect_stream(addr[0], port, receiver, options)
        receiver.stream = stream
        self.streams[addr] = stream

    def close(self, addr: Endpoint) -> None:
        stream = self.streams.pop(addr, None)
        if stream is not None:
            stream.close()  # its receiver is no longer current: no callbacks

    def close_all(self) -> None:
        for addr in list(self.streams):
            self.close(addr)

    def send(self, addr: Endpoint, data: bytes | memoryview) -> bool:
        stream = self.streams.get(addr)
        if stream is None or not stream.send_frame(data):
            self.frames_dropped += 1
            return False
        return True

    def sender(self, addr: Endpoint) -> Callable[[bytes | memoryview, object], bool]:
        """A ``sendto``-shaped function for the data path's routes."""

        def send(data: bytes | memoryview, _addr: object) -> bool:
            return self.send(addr, data)

        return send


def environ_proxy() -> tuple[str, int] | None:
    return proxy_from_environ(os.environ)
