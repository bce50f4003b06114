"""Endpoints: the (host, port) form every module uses for UDP addresses.

The wire codec (proto/buffer.py) encodes and decodes them; everything else
(backends, the agent, the relay registry, the cache) only passes them around,
prints them and asks whether one is on this host.
"""

from __future__ import annotations

Endpoint = tuple[str, int]
"""A UDP endpoint as (host, port), the form the socket module uses."""


def is_loopback(ep: tuple[object, ...] | None) -> bool:
    """Loopback endpoints are our relay proxies, never a direct path to a peer."""
    if ep is None:
        return False
    host = str(ep[0])
    return host.startswith("127.") or host == "::1"


def endpoint_str(ep: tuple[object, ...] | None) -> str:
    """``host:port``, ``[v6]:port`` for logs, tables and JSON (any socket address)."""
    if ep is None:
        return "-"
    host, port = str(ep[0]), ep[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
