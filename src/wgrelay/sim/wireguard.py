"""A WireGuard stand-in that behaves, on the wire and to the agent, like the real one.

``SimWireGuard`` is one WireGuard interface on a simulated host. To the agent
it is a ``WireGuardBackend`` (synchronous, no threads); to the network it is a
UDP socket on the listen port sending WireGuard's real message sizes and
layouts with real mac1s (``wgwire``), driven by wireguard-go's rules for
handshakes, timers and roaming (``wgdevice``); to a scenario it is a tunnel
that carries application packets (``send_app``) and pings (``ping``), with
counters to assert on (``stats``).

A ``crash()`` of the host powers the interface off (sessions and counters are
lost); ``restore()`` brings it up again with its configured peers, like a
reboot that runs ``wg-quick up``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from wgrelay.endpoint import Endpoint
from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.backend.base import (
    InterfaceInfo,
    PeerInfo,
    WireGuardBackend,
    check_interface_name,
    format_endpoint,
    parse_endpoint,
    sort_peers,
)
from wgrelay.sim.topology import Host
from wgrelay.sim.wgdevice import WireGuardDevice
from wgrelay.sim.wgpeer import (
    INNER_DATA,
    INNER_PING,
    MIN_INNER_LEN,
    PING_LEN,
    Peer,
    PeerStats,
    make_inner,
)

DEFAULT_MTU = 1420
DEFAULT_LISTEN_PORT = 51820


class SimWireGuard(WireGuardDevice):
    """One simulated WireGuard interface; a ``WireGuardBackend`` for it."""

    name = "sim"
    """The backend kind, as ``WireGuardBackend.name`` defines it; the
    interface's name is ``interface``."""

    def __init__(
        self,
        host: Host,
        interface: str,
        private_key: PrivateKey,
        listen_port: int = DEFAULT_LISTEN_PORT,
        *,
        mtu: int = DEFAULT_MTU,
        rekey_jitter: bool = False,
    ) -> None:
        check_interface_name(interface)
        network = host.network
        super().__init__(
            network.loop,
            network.derive_rng(f"wireguard/{host.name}/{interface}"),
            private_key,
            mtu=mtu,
            rekey_jitter=rekey_jitter,
        )
        self.host = host
        self.interface = interface
        self.listen_port = listen_port
        self._power_on()
        host.on_power(self._power_off, self._power_on)

    def __repr__(self) -> str:
        return f"<SimWireGuard {self.host.name}/{self.interface} {self.public_key.short()}>"

    # ------------------------------------------------------------ scenario API

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        endpoint: Endpoint | None = None,
        keepalive: int | None = None,
        allowed_ips: tuple[str, ...] = (),
    ) -> None:
        """Configure a peer (``wg set ... peer``); with a keepalive, a first
        keepalive (so a handshake) goes out at once, as in WireGuard."""
        if public_key in self._peers:
            raise ValueError(f"peer {public_key.short()} is already on {self.interface}")
        if endpoint is not None:
            endpoint = parse_endpoint(format_endpoint(endpoint))
        peer = self._new_peer(public_key, endpoint, allowed_ips, keepalive or 0)
        if peer.keepalive_s and self._up:
            self._send_keepalive(peer)

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self._peer(public_key)
        self._forget_sessions(peer)
        del self._peers[public_key]
        del self._by_static[public_key.raw]

    def send_app(self, peer: PublicKey, nbytes: int = 1000) -> None:
        """Send one application packet of ``nbytes`` (an IP packet's size)
        through the tunnel, queuing it (and handshaking) if there is no session."""
        if not MIN_INNER_LEN <= nbytes <= self._mtu:
            raise ValueError(f"app packets are {MIN_INNER_LEN}..{self._mtu} bytes, not {nbytes}")
        self._send_inner(self._peer(peer), make_inner(INNER_DATA, nbytes, 0, self._mtu))

    async def ping(
        self, peer: PublicKey, *, timeout_s: float = 5.0, nbytes: int = PING_LEN
    ) -> float | None:
        """The round-trip time of one ping through the tunnel; None on timeout."""
        p = self._peer(peer)
        ping_id = next(self._ping_ids)
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[ping_id] = (future, self._loop.time(), p)
        try:
            self._send_inner(p, make_inner(INNER_PING, nbytes, ping_id, self._mtu))
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return None
        finally:
            del self._pings[ping_id]

    def stats(self, peer: PublicKey) -> PeerStats:
        return self._peer(peer).stats()

    def has_session(self, peer: PublicKey) -> bool:
        """Whether data to ``peer`` would go out now without a handshake."""
        return self._peer(peer).session_usable(self._loop.time()) is not None

    def _peer(self, key: PublicKey) -> Peer:
        peer = self._peers.get(key)
        if peer is None:
            raise ValueError(f"{key.short()} is not a peer of {self!r}")
        return peer

    # ------------------------------------------------------------ WireGuardBackend

    def read(self, interface: str) -> InterfaceInfo:
        self._check_interface(interface)
        peers = [
            PeerInfo(
                public_key=p.public_key,
                endpoint=p.endpoint,
                allowed_ips=p.allowed_ips,
                latest_handshake=p.latest_handshake,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
                persistent_keepalive=p.keepalive_s or None,
            )
            for p in self._peers.values()
        ]
        return InterfaceInfo(
            name=interface,
            private_key=self.private_key,
            public_key=self.public_key,
            listen_port=self.listen_port,
            fwmark=None,
            peers=sort_peers(peers),
        )

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        self._check_interface(interface)
        stored = parse_endpoint(format_endpoint(endpoint))
        self._backend_peer(interface, peer).endpoint = stored

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        self._check_interface(interface)
        p = self._backend_peer(interface, peer)
        if not 0 <= seconds <= 0xFFFF:
            raise BackendError(f"persistent keepalive {seconds} is not in 0..65535")
        if kick:
            p.keepalive_s = 0
        was_off = p.keepalive_s == 0
        p.keepalive_s = seconds
        if was_off and seconds:
            self._send_keepalive(p)

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        self._check_interface(interface)
        key = peer.public_key
        self._backend_peer(interface, key)
        self.remove_peer(key)
        self.add_peer(
            key, endpoint=endpoint, keepalive=keepalive_s or None, allowed_ips=peer.allowed_ips
        )

    def exists(self, interface: str) -> bool:
        check_interface_name(interface)
        return self._up and interface == self.interface

    def mtu(self, interface: str) -> int | None:
        return self._mtu if self.exists(interface) else None

    def _check_interface(self, interface: str) -> None:
        if not self.exists(interface):
            raise BackendError(f"interface {interface} not found (sim host {self.host.name})")

    def _backend_peer(self, interface: str, key: PublicKey) -> Peer:
        peer = self._peers.get(key)
        if peer is None:
            raise BackendError(f"peer {key.short()} is not on interface {interface}")
        return peer

    # ------------------------------------------------------------ power

    def _power_on(self) -> None:
        """Bind the listen port(s) and (re)start every configured peer afresh."""
        host = self.host
        if host.addresses:
            self._sock4 = host.bind("0.0.0.0", self.listen_port, self)
            self.listen_port = self._sock4.port
        if host.ipv6_addresses:
            self._sock6 = host.bind("::", self.listen_port, self)
            self.listen_port = self._sock6.port
        self._up = True
        for old in list(self._peers.values()):
            endpoint, keepalive_s = old.configured
            peer = self._new_peer(old.public_key, endpoint, old.allowed_ips, keepalive_s)
            if peer.keepalive_s:
                self._send_keepalive(peer)

    def _power_off(self) -> None:
        self._up = False
        for sock in (self._sock4, self._sock6):
            if sock is not None:
                sock.close()
        self._sock4 = self._sock6 = None
        for peer in self._peers.values():
            self._forget_sessions(peer)
        # Pings in flight are left to time out (None), as on a dead machine.


if TYPE_CHECKING:
    # mypy proves the stand-in keeps up with the interface the agent drives.
    _CONFORMS: type[WireGuardBackend] = SimWireGuard
