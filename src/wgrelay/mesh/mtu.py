"""MTU advice for relayed paths: how big a full-MTU WireGuard packet gets
once it carries the 10-byte relay header (framed mode), and the warning the
agent gives at start when that no longer fits a 1500-byte path."""

from __future__ import annotations

import logging

from wgrelay.discovery.registry import RelayRegistry
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


def mtu_warning(backend: WireGuardBackend, iface: str, registry: RelayRegistry) -> None:
    """Warn when a full-MTU packet, relayed framed, exceeds a 1500-byte path."""
    mtu = backend.mtu(iface)
    if mtu is None:
        return
    ipv6 = any(":" in r.endpoint[0] for r in registry.all())
    size = relayed_packet_size(mtu, ipv6)
    if size > PATH_MTU:
        log.warning(
            "interface %s has MTU %d: relayed packets are %d bytes over %s, more than a"
            " 1500-byte path carries unfragmented; set the MTU to %d or less",
            iface,
            mtu,
            size,
            "IPv6" if ipv6 else "IPv4",
            PATH_MTU - (size - mtu),
        )
