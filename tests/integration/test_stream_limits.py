"""Stream limits hold from a connection's arrival, before its TLS handshake.

A TLS listener behind asyncio's server ran each handshake before anything
could count the connection, and held connections that never sent a
ClientHello for 60 s without limit (found in review: 300 raw connects from
one address, all held, none counted)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.helpers import until
from wgrelay.relay.stats import DropReason, RelayStats
from wgrelay.relay.streams import RelayStreams, StreamLimits
from wgrelay.relay.tls import tls_context
from wgrelay.transport.stream import listen_stream

pytestmark = pytest.mark.timeout(60)


def test_connections_that_never_handshake_are_held_to_the_per_source_limit(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stats = RelayStats()
        streams = RelayStreams(
            lambda _d, _a: None,
            lambda: None,
            stats,
            loop.time,
            StreamLimits(max_streams=8, max_streams_per_source=2),
        )
        admit, release = streams.admitter("tls")
        listener = await listen_stream(
            "127.0.0.1",
            0,
            streams.acceptor("tls"),
            tls=tls_context(None, None, True, tmp_path),
            admit=admit,
            release=release,
        )
        port = int(listener.local_address[1])
        clients = []
        try:
            for _ in range(30):  # raw TCP: no ClientHello, ever
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                clients.append(s)
            await until(lambda: stats.drops[DropReason.STREAM_LIMIT] == 28, timeout=10)
            assert streams.conns == {}  # none accepted: no handshake done
            # the two admitted give their slots back when they go
            for s in clients:
                s.close()
            clients.clear()
            s = socket.socket()
            s.setblocking(False)
            clients.append(s)
            await until(lambda: admit(("127.0.0.1", 1)), timeout=10)
            release(("127.0.0.1", 1))
        finally:
            for s in clients:
                s.close()
            listener.close()

    asyncio.run(scenario())
