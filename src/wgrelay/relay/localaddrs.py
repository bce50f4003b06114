"""The addresses of this host a relay can announce when it was not told.

A relay bound to the wildcard address does not know by which address peers
reach it. Without ``--announce`` it announces the addresses of its interfaces
(IPv4 from the kernel's interface list, IPv6 of global scope from
/proc/net/if_inet6), skipping loopback, link-local, unspecified and multicast
ones, public addresses first: private ones stay (a mesh on one site reaches
its relay by them) but come last. A
relay behind NAT or a load balancer must say ``--announce``: what it sees on
its interfaces is not what peers reach. Nothing here sends a packet.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915
IF_INET6 = Path("/proc/net/if_inet6")


def _ipv4_addresses() -> list[str]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
                out.append(socket.inet_ntoa(res[20:24]))
    return out


def _ipv6_addresses(path: Path = IF_INET6) -> list[str]:
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "00":  # scope: global
            raw = bytes.fromhex(fields[0])
            out.append(str(ipaddress.IPv6Address(raw)))
    return out


def announceable(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def local_announce_endpoints(port: int, limit: int) -> tuple[tuple[str, int], ...]:
    """Addresses of this host's interfaces with ``port``: public ones first
    (agents try a relay's endpoints in order, and a private address, a
    container bridge's say, only answers inside its own network), IPv4
    first within each kind."""
    hosts = [h for h in _ipv4_addresses() + _ipv6_addresses() if announceable(h)]
    unique = list(dict.fromkeys(hosts))
    unique.sort(key=lambda h: not ipaddress.ip_address(h).is_global)
    return tuple((h, port) for h in unique[:limit])
