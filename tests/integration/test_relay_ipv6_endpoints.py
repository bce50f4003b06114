"""A relay reaches another at an IPv6 endpoint it announces, over real sockets.

Announced endpoints are (host, port) pairs in both families; the server
picked its socket by the tuple's length, so an IPv6 endpoint went to the IPv4
socket and was lost (or nowhere, with only an IPv6 socket bound).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from wgrelay.keys import RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import MsgType
from wgrelay.proto.messages import Ping
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.transport.udp import AsyncioRuntime


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_relay_is_reached_at_its_announced_ipv6_endpoint() -> None:
    async def scenario() -> bytes:
        runtime = AsyncioRuntime()
        core = RelayCore(
            RelayIdentity.generate(),
            RelayConfig(),
            OpenPolicy(),
            now=runtime.now(),
            wall=runtime.wall(),
            announce_endpoints=(("::1", 51821), ("127.0.0.1", 51821)),
        )
        core._refresh_own(runtime.now())
        server = RelayServer(
            core, runtime, [BindAddress("127.0.0.1", 0), BindAddress("::1", 0)], policy_refresh_s=0
        )
        server.open()
        other = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        other.bind(("::1", 0))
        other.setblocking(False)
        try:
            ident = RelayIdentity.generate()
            ep = ("::1", other.getsockname()[1])
            info = RelayNodeInfo(ident.public, (ep, ("127.0.0.1", 9)))
            ann = encode_announcement(info, int(runtime.wall() * 1000), 600, ident)
            assert core.federation.learn(ann, runtime.now())
            core.federation._send(ident.public, Ping(1), runtime.now())
            server._flush()
            loop = asyncio.get_running_loop()
            data = await asyncio.wait_for(loop.sock_recv(other, 2048), timeout=5.0)
            return data
        finally:
            other.close()
            server.close_transports()

    data = asyncio.run(scenario())
    assert data[0] == MsgType.PING
