"""What kind of endpoint a peer's address is: public or private, IPv4 or IPv6.

The connection cache ranks a peer's direct candidates by it, public first
(``cache_score`` says why), and stores it with each direct entry.

"Private" means not reachable across the internet: RFC 1918, CGNAT
(100.64.0.0/10), loopback, link-local, ULA, plus addresses that are never a
peer's endpoint (unspecified, multicast, reserved). Documentation and
benchmarking ranges are deliberately absent: the testbed and the simulator use
them as the public internet. An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``)
is classified as the IPv4 host it reaches.

This is a ranking, not a policy: no address is refused for its kind. (Nor is it
``endpoint.is_loopback``, which spots our own relay proxies by their text.)
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from wgrelay.endpoint import Endpoint


class EndpointType(StrEnum):
    """The seed's endpoint kinds (4.4). ``classify`` answers for an IP endpoint;
    RELAY is never an address's kind: the cache gives it to relay entries."""

    PUBLIC_V4 = "public-v4"
    PUBLIC_V6 = "public-v6"
    PRIVATE_V4 = "private-v4"
    PRIVATE_V6 = "private-v6"
    RELAY = "relay"


def normalize_endpoint(endpoint: Endpoint) -> Endpoint:
    """``(canonical IP text, port)``; ValueError if it is not an IP endpoint.

    Canonical like ``backend.base.parse_endpoint``, so an endpoint read from
    WireGuard and one from discovery compare equal.
    """
    host, port = endpoint
    if not isinstance(host, str):
        raise ValueError(f"endpoint host {host!r} is not text")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"endpoint host {host!r} is not an IP address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"endpoint port {port!r} is not in 1..65535")
    return str(ip), port


# The private ranges of the module docstring.
_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_PRIVATE_V6 = tuple(
    ipaddress.IPv6Network(n) for n in ("::/127", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")
)


def classify(endpoint: Endpoint) -> EndpointType:
    """Public or private, v4 or v6 (never RELAY); ValueError for a non-IP host."""
    host, _ = normalize_endpoint(endpoint)
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d reaches an IPv4 host
    if isinstance(ip, ipaddress.IPv4Address):
        private = any(ip in net for net in _PRIVATE_V4)
        return EndpointType.PRIVATE_V4 if private else EndpointType.PUBLIC_V4
    private = any(ip in net for net in _PRIVATE_V6)
    return EndpointType.PRIVATE_V6 if private else EndpointType.PUBLIC_V6
