"""What every WireGuard backend reports, and the interface the agent drives.

The agent needs four things from WireGuard, whichever implementation runs it:
the peers of an interface with their endpoints and handshake times (to tell a
working path from a dead one), a way to move one peer's endpoint (onto a local
relay proxy and back), whether the interface exists, and its MTU (to warn when
relay framing would fragment). ``WireGuardBackend`` is exactly that, and
nothing more; kernel, userspace and the in-memory fake all implement it, so the
agent's tests run unchanged against any of them.

Backends are synchronous: each call is one short exchange with ``wg`` or a UAPI
socket, bounded by a timeout. The asyncio agent runs them with
``asyncio.to_thread`` rather than every backend growing an async twin.

Both ``wg`` and the UAPI print endpoints the same way (``1.2.3.4:51820``,
``[::1]:51820``, ``[fe80::1%eth0]:51820``), so the endpoint text codec and the
interface-name check live here, shared.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wgrelay.endpoint import Endpoint
from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey

SYS_CLASS_NET = Path("/sys/class/net")
"""Where Linux shows network devices; per network namespace."""

IFNAMSIZ = 16
"""Linux interface names are at most IFNAMSIZ - 1 bytes."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One peer of a WireGuard interface, as the backend last reported it."""

    public_key: PublicKey
    endpoint: Endpoint | None
    """Where WireGuard currently sends this peer's packets; None if unknown."""
    allowed_ips: tuple[str, ...]
    """CIDRs as WireGuard prints them, e.g. ``10.0.0.2/32``."""
    latest_handshake: float | None
    """Unix seconds of the last completed handshake; None if there never was one."""
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None
    """Seconds between keepalives; None when off."""
    preshared_key: bytes | None = field(default=None, repr=False, compare=False)
    """The peer's preshared key, if it has one (kept so ``restart_peer`` can put
    it back; never shown)."""


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """A snapshot of one WireGuard interface.

    Peers are sorted by public key, so two reads of an unchanged interface
    compare equal whichever backend (or daemon map order) produced them.
    """

    name: str
    private_key: PrivateKey | None
    public_key: PublicKey | None
    listen_port: int | None
    fwmark: int | None
    peers: tuple[PeerInfo, ...]

    def peer(self, key: PublicKey) -> PeerInfo | None:
        """The peer with this key, or None. A linear scan: callers that look up
        many peers per snapshot should build their own dict once."""
        for p in self.peers:
            if p.public_key == key:
                return p
        return None


class WireGuardBackend(Protocol):
    """The agent's view of a WireGuard implementation.

    Every failure (daemon gone, tool missing, garbage output, timeout) raises
    ``BackendError`` with a one-line message; nothing else escapes.
    """

    @property
    def name(self) -> str:
        """``"kernel"``, ``"userspace"`` or ``"fake"``: shown in status and logs."""
        ...

    def read(self, interface: str) -> InterfaceInfo:
        """Snapshot the interface: keys, port and every peer with its counters."""
        ...

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        """Point ``peer``'s WireGuard endpoint at ``endpoint``.

        Touches nothing else of that peer or of any other peer. A peer that is not
        on the interface is not created: ``BackendError`` is raised instead.
        """
        ...

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        """Set ``peer``'s persistent keepalive (0 = off).

        With ``kick`` the value goes through 0 first: both WireGuard
        implementations send a keepalive at once when keepalive is switched on,
        and with no session that starts a handshake now instead of at the next
        packet (WireGuard still sends at most one initiation per 5 s). The agent
        uses this to probe a path without waiting for traffic.
        """
        ...

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        """Remove ``peer`` and add it back as ``peer`` says it was (allowed
        IPs, preshared key; a snapshot from ``read``), with ``endpoint`` and
        ``keepalive_s``: WireGuard forgets its session with the peer and, with
        keepalive on, handshakes again at once. Its transfer counters start
        again from 0. Done in one transaction where the implementation allows,
        so a failure leaves the peer as it was.

        Port mode needs a fresh handshake through the relay's session port to
        latch it, and WireGuard offers no other way to ask for one.
        """
        ...

    def exists(self, interface: str) -> bool:
        """Whether this backend can reach a WireGuard interface of that name."""
        ...

    def mtu(self, interface: str) -> int | None:
        """The interface MTU, or None if it cannot be read."""
        ...


def sort_peers(peers: list[PeerInfo]) -> tuple[PeerInfo, ...]:
    return tuple(sorted(peers, key=lambda p: p.public_key.raw))


# Linux's dev_valid_name(): non-empty, shorter than IFNAMSIZ, not "." or "..",
# no '/', ':' or whitespace. Checking it up front also keeps an interface name
# from walking out of the socket directory or /sys/class/net.
_BAD_IFNAME_CHARS = re.compile(r"[/:\s]")


def check_interface_name(interface: str) -> None:
    """Raise ``BackendError`` unless ``interface`` is a valid Linux device name."""
    if (
        not interface
        or len(interface.encode("utf-8", "surrogateescape")) >= IFNAMSIZ
        or interface in (".", "..")
        or _BAD_IFNAME_CHARS.search(interface)
    ):
        raise BackendError(f"invalid interface name {interface!r}")


def read_mtu(interface: str, sys_class_net: Path = SYS_CLASS_NET) -> int | None:
    """The MTU from ``/sys/class/net/IFACE/mtu``; None if absent or unreadable.

    Sysfs is per network namespace: this sees only devices of the namespace the
    process runs in (a userspace socket in the shared /var/run/wireguard can
    belong to a device elsewhere).
    """
    check_interface_name(interface)
    try:
        text = (sys_class_net / interface / "mtu").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return int(text)


# ------------------------------------------------------------ endpoint text

_PORT_RE = re.compile(r"[0-9]{1,5}")


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``1.2.3.4:51820`` or ``[v6(%scope)]:51820`` into (host, port).

    The host comes back in canonical form (``str(ip_address(...))``), so an
    endpoint that was set and then read back compares equal.
    Raises ``ValueError`` with a short reason; callers add context.
    """
    if text.startswith("["):
        close = text.find("]:")
        if close < 0:
            raise ValueError("unterminated [IPv6] endpoint")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("bad IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("missing :port")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("bad IPv4 address") from None
    if not _PORT_RE.fullmatch(port_text) or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError("bad port")
    return str(ip), int(port_text)


def format_endpoint(endpoint: Endpoint) -> str:
    """Print an endpoint the way ``wg set`` and the UAPI take it.

    Only IP literals are accepted: a host name would make ``wg`` resolve it
    (DNS traffic we did not ask for), and endpoints reach us from the network.
    """
    host, port = endpoint
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise BackendError(f"endpoint host {host!r} is not an IP address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise BackendError(f"endpoint port {port!r} is not in 1..65535")
    if ip.version == 6:
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def is_cidr(text: str) -> bool:
    """Whether ``text`` is an allowed-ip as WireGuard prints it (``10.0.0.0/24``)."""
    if "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
