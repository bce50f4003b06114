"""An in-memory WireGuard, for testing the agent without a device.

Like wireguard-go's ``ChannelBind`` or httpcore's mock backends, it ships in
the package so every test (ours and a user's) drives the agent through the same
``WireGuardBackend`` interface the real backends implement. It behaves like
them where the agent can tell: reads are snapshots, ``set_endpoint`` changes
only that endpoint and refuses a peer that is not there, a missing interface
raises ``BackendError``.

A test plays the part of the network and the remote peer: it sets handshake
times and byte counters, and may install ``on_set_endpoint`` to react when the
agent moves an endpoint (e.g. "a handshake completes if the agent picked the
relay proxy"). Every ``set_endpoint`` call is recorded, failed ones included,
in order. ``fail_with`` makes ``read``, ``set_endpoint`` and ``exists`` raise
(and ``mtu`` return None, as sysfs would), as when the daemon dies.

The agent calls backends from worker threads (``asyncio.to_thread``) while the
test mutates the fake from the event loop, so all state sits behind one lock.
The hook runs under it too (a re-entrant lock), so it may call the fake's
methods and sees a consistent state.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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

DEFAULT_MTU = 1420
"""What wg-quick and wireguard-go give a new interface."""


@dataclass(frozen=True, slots=True)
class SetEndpointCall:
    """One ``set_endpoint`` call as the fake received it."""

    interface: str
    peer: PublicKey
    endpoint: Endpoint


SetEndpointHook = Callable[["FakeBackend", SetEndpointCall], None]


@dataclass(slots=True)
class _FakeInterface:
    private_key: PrivateKey | None
    listen_port: int | None
    fwmark: int | None
    mtu: int | None
    peers: dict[PublicKey, PeerInfo] = field(default_factory=dict)


class FakeBackend:
    """``WireGuardBackend`` holding interfaces in memory."""

    name = "fake"

    def __init__(self, on_set_endpoint: SetEndpointHook | None = None) -> None:
        self._lock = threading.RLock()
        self._interfaces: dict[str, _FakeInterface] = {}
        self._calls: list[SetEndpointCall] = []
        self.kicks: list[tuple[str, PublicKey]] = []
        """Every (interface, peer) a handshake was kicked for, oldest first."""
        self.restarts: list[tuple[str, PublicKey, Endpoint]] = []
        """Every ``restart_peer`` call, oldest first."""
        self._failure: BackendError | None = None
        self.on_set_endpoint = on_set_endpoint

    # ------------------------------------------------ the backend interface

    def read(self, interface: str) -> InterfaceInfo:
        with self._lock:
            self._check_failure()
            iface = self._get(interface)
            return InterfaceInfo(
                name=interface,
                private_key=iface.private_key,
                public_key=iface.private_key.public_key() if iface.private_key else None,
                listen_port=iface.listen_port,
                fwmark=iface.fwmark,
                peers=sort_peers(list(iface.peers.values())),
            )

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        with self._lock:
            call = SetEndpointCall(interface, peer, endpoint)
            self._calls.append(call)
            self._check_failure()
            # Store what a real backend would read back (canonical host form).
            stored = parse_endpoint(format_endpoint(endpoint))
            info = self._get_peer(interface, peer)
            self._interfaces[interface].peers[peer] = dataclasses.replace(info, endpoint=stored)
            if self.on_set_endpoint is not None:
                self.on_set_endpoint(self, call)

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        with self._lock:
            self._check_failure()
            info = self._get_peer(interface, peer)
            self._interfaces[interface].peers[peer] = dataclasses.replace(
                info, persistent_keepalive=seconds or None
            )
            if kick and seconds:
                self.kicks.append((interface, peer))

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        with self._lock:
            self._check_failure()
            key = peer.public_key
            self._get_peer(interface, key)
            self.restarts.append((interface, key, endpoint))
            stored = parse_endpoint(format_endpoint(endpoint))
            self._interfaces[interface].peers[key] = dataclasses.replace(
                peer,
                endpoint=stored,
                latest_handshake=None,
                rx_bytes=0,
                tx_bytes=0,
                persistent_keepalive=keepalive_s or None,
            )

    def exists(self, interface: str) -> bool:
        check_interface_name(interface)
        with self._lock:
            self._check_failure()
            return interface in self._interfaces

    def mtu(self, interface: str) -> int | None:
        check_interface_name(interface)
        with self._lock:
            iface = self._interfaces.get(interface)
            if iface is None or self._failure is not None:
                return None
            return iface.mtu

    # ------------------------------------------------ test controls

    @property
    def set_endpoint_calls(self) -> tuple[SetEndpointCall, ...]:
        """Every ``set_endpoint`` call so far, oldest first."""
        with self._lock:
            return tuple(self._calls)

    def add_interface(
        self,
        name: str,
        *,
        private_key: PrivateKey | None = None,
        listen_port: int | None = 51820,
        fwmark: int | None = None,
        mtu: int | None = DEFAULT_MTU,
    ) -> None:
        check_interface_name(name)
        with self._lock:
            if name in self._interfaces:
                raise ValueError(f"interface {name} already exists")
            self._interfaces[name] = _FakeInterface(private_key, listen_port, fwmark, mtu)

    def remove_interface(self, name: str) -> None:
        with self._lock:
            self._get(name)
            del self._interfaces[name]

    def add_peer(
        self,
        interface: str,
        public_key: PublicKey,
        *,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[str] = (),
        persistent_keepalive: int | None = None,
    ) -> None:
        with self._lock:
            iface = self._get(interface)
            if public_key in iface.peers:
                raise ValueError(f"peer {public_key.short()} already on {interface}")
            iface.peers[public_key] = PeerInfo(
                public_key=public_key,
                endpoint=endpoint,
                allowed_ips=tuple(allowed_ips),
                latest_handshake=None,
                rx_bytes=0,
                tx_bytes=0,
                persistent_keepalive=persistent_keepalive,
            )

    def remove_peer(self, interface: str, public_key: PublicKey) -> None:
        with self._lock:
            self._get_peer(interface, public_key)
            del self._interfaces[interface].peers[public_key]

    def set_handshake(self, interface: str, peer: PublicKey, when: float | None) -> None:
        """Record a completed handshake at ``when`` (Unix seconds); None: never."""
        self._update_peer(interface, peer, lambda p: dataclasses.replace(p, latest_handshake=when))

    def set_transfer(
        self, interface: str, peer: PublicKey, *, rx_bytes: int, tx_bytes: int
    ) -> None:
        """Set the byte counters (absolute values, like WireGuard reports them)."""
        if rx_bytes < 0 or tx_bytes < 0:
            raise ValueError("byte counters are never negative")
        self._update_peer(
            interface, peer, lambda p: dataclasses.replace(p, rx_bytes=rx_bytes, tx_bytes=tx_bytes)
        )

    def set_peer_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint | None) -> None:
        """Change an endpoint the way roaming would, without recording a call."""
        self._update_peer(interface, peer, lambda p: dataclasses.replace(p, endpoint=endpoint))

    def fail_with(self, error: BackendError | None) -> None:
        """Make backend calls fail with ``error`` (None: work again)."""
        with self._lock:
            self._failure = error

    # ------------------------------------------------ internals

    def _check_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _get(self, interface: str) -> _FakeInterface:
        check_interface_name(interface)
        iface = self._interfaces.get(interface)
        if iface is None:
            raise BackendError(f"interface {interface} not found (fake backend)")
        return iface

    def _get_peer(self, interface: str, peer: PublicKey) -> PeerInfo:
        info = self._get(interface).peers.get(peer)
        if info is None:
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")
        return info

    def _update_peer(
        self,
        interface: str,
        peer: PublicKey,
        change: Callable[[PeerInfo], PeerInfo],
    ) -> None:
        with self._lock:
            info = self._get_peer(interface, peer)
            self._interfaces[interface].peers[peer] = change(info)


if TYPE_CHECKING:
    # mypy proves the fake keeps up with the interface the real backends implement.
    _CONFORMS: type[WireGuardBackend] = FakeBackend
