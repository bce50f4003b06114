"""Whether this host can send to an address at all: a route lookup, no traffic.

A relay announces every endpoint it has, often one per address family, but a
host may have only one family (an IPv6-only mobile network, an IPv4-only LAN).
Sending to an address the kernel has no route for fails at once
(ENETUNREACH), yet the agent would only notice it as a relay that never
answers, a connect timeout later. ``has_route`` asks first: ``connect()`` on a
UDP socket makes the kernel choose a route and a source address, and sends
nothing. The planner takes it as an injected predicate (sans-I/O), so the
simulator and the unit tests decide reachability themselves.
"""

from __future__ import annotations

import ipaddress
import socket

from wgrelay.endpoint import Endpoint


def has_route(endpoint: Endpoint) -> bool:
    """True if the kernel would send a datagram to ``endpoint`` (a route exists
    and this host has an address of its family); never raises."""
    host, port = endpoint
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True  # not ours to judge: a name is resolved (and may fail) elsewhere
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((str(ip), port))
    except OSError:
        return False
    return True
