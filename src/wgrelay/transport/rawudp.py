"""Send a UDP datagram from a port another socket holds (WireGuard's).

The agent asks the relay how its NAT maps *WireGuard's* socket: a datagram
must leave from WireGuard's own address and port, so that the NAT treats it
as that socket's traffic (same conntrack source). WireGuard's socket is not
ours and is not bound with SO_REUSEPORT, so the datagram goes out through a
raw socket (CAP_NET_RAW) with a UDP header we write. The kernel picks the
source address by routing, as it does for WireGuard's packets; answers (the
relay sends none) would reach WireGuard's socket, which drops what is not
WireGuard.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from wgrelay.transport.base import Addr

_UDP_HEADER = struct.Struct("!HHHH")
_UDP_CHECKSUM_OFFSET = 6


def send_from_port(src_port: int, data: bytes, addr: Addr) -> None:
    """Raises OSError (no CAP_NET_RAW: EPERM; no route) or ValueError."""
    host, port = str(addr[0]), int(addr[1])
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not (0 < src_port <= 0xFFFF and 0 < port <= 0xFFFF):
        raise ValueError(f"bad ports {src_port} -> {port}")
    header = _UDP_HEADER.pack(src_port, port, _UDP_HEADER.size + len(data), 0)
    if ip.version == 4:
        # IPv4 allows a zero UDP checksum (none computed)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as s:
            s.sendto(header + data, (str(ip), 0))
        return
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP) as s:
        # IPv6 requires one: the kernel computes it at this offset
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, _UDP_CHECKSUM_OFFSET)
        s.sendto(header + data, (str(ip), 0))
