"""Local proxies: the 127.0.0.1 endpoints that stand in for relayed peers.

Kernel WireGuard can only send UDP to an endpoint, so for a relayed peer the
agent binds a socket on 127.0.0.1 and makes it that peer's WireGuard endpoint.
Packets WireGuard sends there get the session's 10-byte header and go to the
relay; frames arriving from the relay lose the header and are sent to
WireGuard's listen port *from this socket*, so WireGuard sees every packet of
the peer coming from its endpoint. The same socket stays the peer's endpoint
when the relay behind it changes, which is why failover does not disturb the
WireGuard session.

Only datagrams from WireGuard's own listen port on 127.0.0.1 are accepted; a
local process cannot use a proxy to inject traffic towards the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.client.manager import Route
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import DATA_HEADER_LEN
from wgrelay.transport.base import Addr, DatagramTransport, Runtime
from wgrelay.transport.udp import AsyncioRuntime

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
SOCKET_BUFFER_BYTES = 2 * 1024 * 1024


@dataclass(slots=True)
class ProxyCounters:
    to_relay_packets: int = 0
    to_relay_bytes: int = 0
    to_wg_packets: int = 0
    to_wg_bytes: int = 0
    no_route: int = 0
    foreign_source: int = 0
    held: int = 0
    """Frames from the relay not given to WireGuard while a direct probe runs."""


class _Proxy:
    """One peer's 127.0.0.1 socket: WireGuard's packets in, relay frames out."""

    __slots__ = ("counters", "endpoint", "hold", "peer", "sent", "table", "transport")

    def __init__(self, table: ProxyTable, peer: PublicKey) -> None:
        self.table = table
        self.peer = peer
        self.hold = False
        self.sent = False
        """Sent to the relay in this batch (reported once, in batch_done)."""
        self.counters = ProxyCounters()
        self.transport: DatagramTransport = table.runtime.open_udp(
            LOCALHOST, 0, self, buffer_bytes=SOCKET_BUFFER_BYTES
        )
        host, port = self.transport.local_address[:2]
        self.endpoint: Endpoint = (host, port)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        table = self.table
        c = self.counters
        if addr != table.wg_addr:
            c.foreign_source += 1
            return
        route = table.routes.get(self.peer)
        if route is None:
            c.no_route += 1
            if table.on_no_route is not None:
                table.on_no_route(self.peer)
            return
        route[0](route[2] + data, route[1])
        c.to_relay_packets += 1
        c.to_relay_bytes += len(data)
        self.sent = True

    def batch_done(self) -> None:
        # once per batch, not per packet: the relay link wants to know that
        # traffic went out (it then expects some back), not how much
        if self.sent:
            self.sent = False
            if self.table.on_sent is not None:
                self.table.on_sent(self.peer)


class ProxyTable:
    def __init__(
        self,
        wg_port: int,
        routes: dict[PublicKey, Route],
        on_no_route: Callable[[PublicKey], None] | None = None,
        runtime: Runtime | None = None,
        on_sent: Callable[[PublicKey], None] | None = None,
    ) -> None:
        self.runtime = runtime if runtime is not None else AsyncioRuntime()
        self.wg_addr: Endpoint = (LOCALHOST, wg_port)
        self.routes = routes
        self.on_no_route = on_no_route
        self.on_sent = on_sent
        self._proxies: dict[PublicKey, _Proxy] = {}

    def set_wg_port(self, port: int) -> None:
        if port != self.wg_addr[1]:
            log.info("WireGuard listen port is now %d", port)
            self.wg_addr = (LOCALHOST, port)

    def endpoint(self, peer: PublicKey) -> Endpoint | None:
        p = self._proxies.get(peer)
        return p.endpoint if p else None

    def endpoints(self) -> set[Endpoint]:
        return {p.endpoint for p in self._proxies.values()}

    def counters(self, peer: PublicKey) -> ProxyCounters | None:
        p = self._proxies.get(peer)
        return p.counters if p else None

    def ensure(self, peer: PublicKey) -> Endpoint:
        """The peer's proxy endpoint, creating the socket the first time."""
        p = self._proxies.get(peer)
        if p is None:
            p = self._proxies[peer] = _Proxy(self, peer)
            log.debug("proxy for %s on %s:%d", peer.short(), *p.endpoint)
        return p.endpoint

    def hold(self, peer: PublicKey, hold: bool) -> None:
        """While a direct probe runs, frames from the relay are not given to
        WireGuard: one would make it roam straight back to the proxy."""
        p = self._proxies.get(peer)
        if p is not None:
            p.hold = hold

    def remove(self, peer: PublicKey) -> None:
        p = self._proxies.pop(peer, None)
        if p is not None:
            p.transport.close()

    def close(self) -> None:
        for peer in list(self._proxies):
            self.remove(peer)

    # ------------------------------------------------------------ data path

    def deliver(self, peer: PublicKey, frame: bytes) -> None:
        """A data frame from the relay: hand its WireGuard packet to WireGuard."""
        p = self._proxies.get(peer)
        if p is None:
            return
        if p.hold:
            p.counters.held += 1
            return
        payload = memoryview(frame)[DATA_HEADER_LEN:]
        if p.transport.sendto(payload, self.wg_addr):
            p.counters.to_wg_packets += 1
            p.counters.to_wg_bytes += len(payload)
