"""MTU advice for relayed paths: how big a full-MTU WireGuard packet gets
once it carries the 10-byte relay header (framed mode), and the warning the
agent gives at start when that no longer fits a 1500-byte path.

The family matters: IPv6 headers are 20 bytes bigger, so WireGuard's default
MTU of 1420 fits a relayed IPv4 path (1490 bytes) but not an IPv6 one (1510).
The warning is about the paths this host will really use: each relay at the
first of its endpoints the host has a route for, as the planner picks it (an
IPv4-only host is not told about IPv6 relays it never reaches, an IPv6-only
one is told even if the relays announce IPv4 first). ``mtu_advice`` is the
same sentence for one relay address, for whatever shows a relayed peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wgrelay.discovery.reach import has_route
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.endpoint import Endpoint
from wgrelay.mesh.backend.base import WireGuardBackend
from wgrelay.proto.constants import DATA_HEADER_LEN

log = logging.getLogger(__name__)

WIREGUARD_OVERHEAD = 32  # WireGuard's own framing on top of the inner packet
IPV4_UDP_HEADERS = 28
IPV6_UDP_HEADERS = 48
PATH_MTU = 1500


def relayed_packet_size(mtu: int, ipv6: bool = False) -> int:
    """IP packet size of a full-MTU WireGuard packet carried through a relay."""
    headers = IPV6_UDP_HEADERS if ipv6 else IPV4_UDP_HEADERS
    return mtu + WIREGUARD_OVERHEAD + DATA_HEADER_LEN + headers


def mtu_advice(mtu: int, relay_addr: Endpoint) -> str | None:
    """What to do when a full-MTU packet relayed (framed) to ``relay_addr``
    exceeds a 1500-byte path; None when it fits."""
    ipv6 = ":" in relay_addr[0]
    size = relayed_packet_size(mtu, ipv6)
    if size <= PATH_MTU:
        return None
    return (
        f"relayed packets are {size} bytes over {'IPv6' if ipv6 else 'IPv4'}, more than a"
        f" 1500-byte path carries unfragmented; set the MTU to {PATH_MTU - (size - mtu)} or less"
    )


def relay_addresses(
    registry: RelayRegistry, reachable: Callable[[Endpoint], bool] = has_route
) -> list[Endpoint]:
    """Where each known relay would be reached: its first routed endpoint (the
    planner's choice, client/plan_links.py), else its first."""
    out = []
    for relay in registry.all():
        routed = [e for e in relay.endpoints if reachable(e)]
        out.append((routed or list(relay.endpoints))[0])
    return out


def mtu_warning(
    backend: WireGuardBackend,
    iface: str,
    registry: RelayRegistry,
    reachable: Callable[[Endpoint], bool] = has_route,
) -> None:
    """Warn when a full-MTU packet, relayed framed, exceeds a 1500-byte path
    on one of the paths this host would use (IPv6 first: its headers are bigger)."""
    mtu = backend.mtu(iface)
    if mtu is None:
        return
    addrs = sorted(relay_addresses(registry, reachable), key=lambda a: ":" not in a[0])
    if not addrs:
        return
    advice = mtu_advice(mtu, addrs[0])
    if advice is not None:
        log.warning("interface %s has MTU %d: %s", iface, mtu, advice)
