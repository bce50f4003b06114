"""Addresses the relay must never send to: itself, nobody, everybody.

A peer is registered only at an address the relay may send to: not
unspecified, multicast or the broadcast address, not port 0, and not one of
the relay's own sockets (a session pointed at the relay would forward to
itself forever). Any loopback address on one of our ports counts as ourselves,
since a wildcard-bound socket answers there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Addr = tuple[Any, ...]


class OwnAddresses:
    def __init__(self, announced: Iterable[tuple[str, int]] = ()) -> None:
        self._ports: set[int] = set()
        self._hosts: set[str] = {h for h, _ in announced}

    def add(self, addresses: Iterable[Addr]) -> None:
        for addr in addresses:
            self._ports.add(int(addr[1]))
            self._hosts.add(str(addr[0]))

    def usable_peer_address(self, addr: Addr) -> bool:
        host, port = str(addr[0]), int(addr[1])
        if port == 0:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
            return False
        return not (
            port in self._ports
            and (host in self._hosts or str(ip) in self._hosts or ip.is_loopback)
        )
