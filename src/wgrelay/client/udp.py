"""Drive a ``RelayLink`` over a real UDP socket with asyncio.

One ``RelayClient`` is one socket talking to one relay: its registration, its
heartbeats (which also keep our NAT mapping to the relay open) and every
session we hold there share that socket, so a NAT rebinding moves them all at
once when the next heartbeat re-announces us.

Like the relay, the socket is read with ``loop.add_reader`` and plain
``recvfrom`` calls (asyncio's datagram transport reads into 256 KiB buffers).
Data frames are handed to ``on_data(peer, frame)`` without copying the payload;
everything else goes through the link's pump: feed, send, drain events, re-arm
one timer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from wgrelay.client.link import (
    LinkConfig,
    LinkEvent,
    LinkRegistered,
    LinkRejected,
    LinkState,
    RelayLink,
    RttMeasured,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.net import datagram_socket
from wgrelay.proto.buffer import Endpoint
from wgrelay.proto.constants import DATA_HEADER_LEN, CloseReason, MsgType
from wgrelay.proto.data import MAX_DATA_FRAME, data_header

log = logging.getLogger(__name__)

_DATA = int(MsgType.DATA)
DRAIN_BATCH = 256
SOCKET_BUFFER_BYTES = 2 * 1024 * 1024

DataHandler = Callable[[PublicKey, bytes], None]
"""Called with the peer and the whole data frame (payload starts at byte 10)."""


def resolve_endpoint(ep: Endpoint) -> tuple[socket.AddressFamily, Endpoint]:
    host, port = ep
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


class RelayClient:
    def __init__(
        self,
        private_key: PrivateKey,
        relay_key: PublicKey,
        relay_endpoint: Endpoint,
        config: LinkConfig | None = None,
        accept_offer: Callable[[PublicKey], bool] = lambda _peer: True,
        on_data: DataHandler | None = None,
        on_event: Callable[[LinkEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        bind_host: str | None = None,
    ) -> None:
        self.relay_key = relay_key
        family, self.relay_addr = resolve_endpoint(relay_endpoint)
        self._clock = clock
        self._wall = wall
        self.link = RelayLink(
            private_key,
            relay_key,
            config or LinkConfig(),
            now=clock(),
            wall=wall(),
            accept_offer=accept_offer,
        )
        self.on_data = on_data
        self.on_event = on_event
        any_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        self._sock = datagram_socket(bind_host or any_host, 0, SOCKET_BUFFER_BYTES)
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[Callable[[LinkEvent], bool], asyncio.Future[LinkEvent]]] = []
        self._started = False
        self._closed = False
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0

    @property
    def local_port(self) -> int:
        return int(self._sock.getsockname()[1])

    # ------------------------------------------------------------ lifecycle

    def now(self) -> float:
        return self._clock()

    def start(self, register: bool = True) -> None:
        """Start reading; with ``register``, also register at the relay.

        Without it the client can still ping and query (the relay answers any
        allowed key), which is how relays are measured before one is chosen.
        """
        if self._closed:
            raise RelayUnavailable("client closed")
        if not self._started:
            self._started = True
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        if register and self.link.state != LinkState.REGISTERED:
            self.link.connect(self._clock())
        self._pump()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            self.link.shutdown(self._clock())
            self._flush()
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RelayUnavailable("client closed"))
        self._sock.close()

    # ------------------------------------------------------------ pump

    def _on_readable(self) -> None:
        recvfrom = self._sock.recvfrom
        relay = self.relay_addr
        sessions = self.link.sessions
        control = False
        for _ in range(DRAIN_BATCH):
            try:
                data, addr = recvfrom(MAX_DATA_FRAME + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if addr[0] != relay[0] or addr[1] != relay[1]:
                self.frames_dropped += 1  # only the relay talks to this socket
                continue
            if data and data[0] == _DATA:
                peer = sessions.get(data[2:DATA_HEADER_LEN])
                if peer is None or self.on_data is None:
                    self.frames_dropped += 1
                    continue
                self.frames_in += 1
                self.on_data(peer, data)
            else:
                self.link.receive(data, self._clock())
                control = True
        if control:
            self._pump()

    def _flush(self) -> None:
        for data in self.link.datagrams_to_send():
            try:
                self._sock.sendto(data, self.relay_addr)
            except OSError as e:
                log.debug("send to relay failed: %s", e)

    def _pump(self) -> None:
        if self._closed:
            return
        try:
            self._flush()
            while (ev := self.link.next_event()) is not None:
                for pred, fut in list(self._waiters):
                    if not fut.done() and pred(ev):
                        fut.set_result(ev)
                self._waiters = [(p, f) for p, f in self._waiters if not f.done()]
                if self.on_event is not None:
                    try:
                        self.on_event(ev)
                    except Exception:  # a listener's bug must not stop the link
                        log.exception("relay event handler failed on %s", type(ev).__name__)
            self._flush()
        finally:
            # whatever happened above, heartbeats and retransmissions go on
            self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.link.next_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when == float("inf"):
            return
        delay = max(0.0, when - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        self.link.sync_wall(now, self._wall())
        self.link.handle_timer(now)
        self._pump()

    def rebind(self) -> None:
        """Move to a fresh local port, keeping the link and its sessions.

        The relay only follows after our next authenticated heartbeat, exactly as
        when a NAT gives us a new mapping (which is how tests use this).
        """
        new = datagram_socket(self._sock.getsockname()[0], 0, SOCKET_BUFFER_BYTES)
        loop = asyncio.get_running_loop()
        if self._started:
            loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = new
        if self._started:
            loop.add_reader(new.fileno(), self._on_readable)

    def heartbeat_now(self) -> None:
        self.link.heartbeat_now(self._clock())
        self._pump()

    def poke(self) -> None:
        """Run the pump after calling a link API method directly."""
        self._pump()

    # ------------------------------------------------------------ API

    def expect(self, pred: Callable[[LinkEvent], bool]) -> asyncio.Future[LinkEvent]:
        """A future for the next event matching ``pred`` (registered at once)."""
        fut: asyncio.Future[LinkEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return fut

    async def wait_for(self, pred: Callable[[LinkEvent], bool], timeout: float) -> LinkEvent:
        fut = self.expect(pred)
        async with asyncio.timeout(timeout):
            return await fut

    async def wait_registered(self, timeout: float = 10.0) -> LinkRegistered:
        self.start()
        if self.link.state == LinkState.REGISTERED and self.link.observed is not None:
            return LinkRegistered(self.link.observed, int(self.link.heartbeat_s))
        try:
            ev = await self.wait_for(
                lambda e: isinstance(e, LinkRegistered | LinkRejected), timeout
            )
        except TimeoutError:
            raise RelayUnavailable(f"relay {self.relay_key.short()} did not answer") from None
        if not isinstance(ev, LinkRegistered):
            raise RelayUnavailable(f"relay {self.relay_key.short()} refused our key")
        return ev

    async def open_session(self, peer: PublicKey, timeout: float = 10.0) -> bytes:
        """Ask for a session to ``peer``; returns the session id or raises."""
        sid = self.link.session_of.get(peer)
        if sid is not None:
            return sid
        fut = self.expect(
            lambda e: isinstance(e, SessionEstablished | SessionFailed) and e.peer == peer
        )
        self.link.request_session(peer, self._clock())
        self._pump()
        try:
            async with asyncio.timeout(timeout):
                ev = await fut
        except TimeoutError:
            raise RelayUnavailable(f"no answer for a session to {peer.short()}") from None
        if not isinstance(ev, SessionEstablished):
            status = ev.status.name if isinstance(ev, SessionFailed) else "error"
            raise RelayUnavailable(f"session to {peer.short()} failed: {status}")
        return ev.session_id

    def close_session(self, peer: PublicKey, reason: CloseReason = CloseReason.NORMAL) -> None:
        self.link.close_session(peer, self._clock(), reason)
        self._pump()

    def send(self, peer: PublicKey, payload: bytes) -> bool:
        """Send one WireGuard packet to ``peer`` over its session; False if none."""
        sid = self.link.session_of.get(peer)
        if sid is None:
            return False
        self.send_frame(data_header(sid) + payload)
        return True

    def send_frame(self, frame: bytes) -> None:
        try:
            self._sock.sendto(frame, self.relay_addr)
            self.frames_out += 1
        except OSError:
            self.frames_dropped += 1

    async def ping(self, timeout: float = 5.0) -> float:
        fut = self.expect(lambda e: isinstance(e, RttMeasured))
        self.link.ping(self._clock())
        self._pump()
        async with asyncio.timeout(timeout):
            ev = await fut
        return ev.rtt_s if isinstance(ev, RttMeasured) else float("nan")
