"""The one way wgrelay opens a UDP socket (relay, relay clients, local proxies)."""

from __future__ import annotations

import contextlib
import socket


def datagram_socket(host: str, port: int, buffer_bytes: int) -> socket.socket:
    """A bound, non-blocking UDP socket with big kernel buffers.

    The buffers absorb bursts between two wake-ups of the event loop (the kernel
    caps them at net.core.[rw]mem_max, which is fine). IPv6 sockets are IPv6
    only, so each socket sees one address form. Raises OSError; nothing leaks.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF) if buffer_bytes else ():
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
