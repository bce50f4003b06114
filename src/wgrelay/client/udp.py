"""Drive a ``RelayLink`` over one UDP socket of a ``Runtime``.

One ``RelayClient`` is one socket talking to one relay: its registration, its
heartbeats (which also keep our NAT mapping to the relay open) and every
session we hold there share that socket, so a NAT rebinding moves them all at
once when the next heartbeat re-announces us.

The socket comes from the runtime (real, or simulated in ``wgrelay.sim``), whose
drain loop calls ``datagram_received``. Data frames are handed to
``on_data(peer, frame)`` without copying the payload; everything else goes
through the link's pump: feed, send, drain events, re-arm one timer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from wgrelay.client.events import (
    LinkEvent,
    LinkRegistered,
    LinkRejected,
    RttMeasured,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.client.link import LinkConfig, LinkState, RelayLink
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import DATA_HEADER_LEN, CloseReason, MsgType
from wgrelay.proto.data import data_header
from wgrelay.transport.base import Addr, DatagramTransport, Runtime
from wgrelay.transport.udp import AsyncioRuntime

log = logging.getLogger(__name__)

_DATA = int(MsgType.DATA)
SOCKET_BUFFER_BYTES = 2 * 1024 * 1024

DataHandler = Callable[[PublicKey, bytes], None]
"""Called with the peer and the whole data frame (payload starts at byte 10)."""


def resolve_endpoint(ep: Endpoint) -> tuple[socket.AddressFamily, Endpoint]:
    """A literal address in the form recvfrom will report it (no DNS)."""
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
        runtime: Runtime | None = None,
        bind_host: str | None = None,
    ) -> None:
        self.relay_key = relay_key
        family, self.relay_addr = resolve_endpoint(relay_endpoint)
        self.runtime = runtime if runtime is not None else AsyncioRuntime()
        self.link = RelayLink(
            private_key,
            relay_key,
            config or LinkConfig(),
            now=self.runtime.now(),
            wall=self.runtime.wall(),
            accept_offer=accept_offer,
        )
        self.on_data = on_data
        self.on_event = on_event
        self._bind_host = bind_host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        self._transport: DatagramTransport = self.runtime.open_udp(
            self._bind_host, 0, self, buffer_bytes=SOCKET_BUFFER_BYTES
        )
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[tuple[Callable[[LinkEvent], bool], asyncio.Future[LinkEvent]]] = []
        self._control_pending = False
        self._closed = False
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0

    @property
    def local_port(self) -> int:
        return int(self._transport.local_address[1])

    @property
    def transport(self) -> DatagramTransport:
        return self._transport

    # ------------------------------------------------------------ lifecycle

    def now(self) -> float:
        return self.runtime.now()

    def start(self, register: bool = True) -> None:
        """Register at the relay (``register``), or just run the pump.

        Without registering the client can still ping and query (the relay
        answers any allowed key), which is how relays are measured before one
        is chosen.
        """
        if self._closed:
            raise RelayUnavailable("client closed")
        if register and self.link.state != LinkState.REGISTERED:
            self.link.connect(self.now())
        self._pump()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.link.shutdown(self.now())
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RelayUnavailable("client closed"))
        self._transport.close()

    # ------------------------------------------------------------ receiving (DatagramReceiver)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        relay = self.relay_addr
        if addr[0] != relay[0] or addr[1] != relay[1]:
            self.frames_dropped += 1  # only the relay talks to this socket
            return
        if data and data[0] == _DATA:
            peer = self.link.sessions.get(data[2:DATA_HEADER_LEN])
            if peer is None or self.on_data is None:
                self.frames_dropped += 1
                return
            self.frames_in += 1
            self.link.data_heard = self.now()  # the relay is alive
            self.on_data(peer, data)
            return
        self.link.receive(data, self.now())
        self._control_pending = True

    def batch_done(self) -> None:
        if self._control_pending:
            self._control_pending = False
            self._pump()

    # ------------------------------------------------------------ pump

    def _flush(self) -> None:
        for data in self.link.datagrams_to_send():
            self._transport.sendto(data, self.relay_addr)

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
        self._timer = self.runtime.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now()
        self.link.sync_wall(now, self.runtime.wall())
        self.link.handle_timer(now)
        self._pump()

    def rebind(self) -> None:
        """Move to a fresh local port, keeping the link and its sessions.

        The relay only follows after our next authenticated heartbeat, exactly as
        when a NAT gives us a new mapping (which is how tests use this).
        """
        old = self._transport
        self._transport = self.runtime.open_udp(
            self._bind_host, 0, self, buffer_bytes=SOCKET_BUFFER_BYTES
        )
        old.close()

    def heartbeat_now(self) -> None:
        self.link.heartbeat_now(self.now())
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
        self.link.request_session(peer, self.now())
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
        self.link.close_session(peer, self.now(), reason)
        self._pump()

    def send(self, peer: PublicKey, payload: bytes) -> bool:
        """Send one WireGuard packet to ``peer`` over its session; False if none."""
        sid = self.link.session_of.get(peer)
        if sid is None:
            return False
        if self.link.note_sent(self.now()):
            self._arm_timer()
        self.send_frame(data_header(sid) + payload)
        return True

    def send_frame(self, frame: bytes) -> None:
        if self._transport.sendto(frame, self.relay_addr):
            self.frames_out += 1
        else:
            self.frames_dropped += 1

    async def ping(self, timeout: float = 5.0) -> float:
        fut = self.expect(lambda e: isinstance(e, RttMeasured))
        self.link.ping(self.now())
        self._pump()
        async with asyncio.timeout(timeout):
            ev = await fut
        return ev.rtt_s if isinstance(ev, RttMeasured) else float("nan")
