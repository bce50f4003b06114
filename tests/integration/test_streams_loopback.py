"""Relays over TCP and TLS on 127.0.0.1: the agent's fallback, both ways, for real.

UDP "blocked" is a gate in front of the relay's UDP socket: a forwarder on the
port number the agents know, which drops everything while closed. The relay's
TCP listener has that same number (start-relay's default: TCP on the UDP
port's number), so the agent finds it there by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest

from tests.helpers import wg_packet
from tests.integration.relays import InProcRelay, Peer, inproc_relay
from wgrelay.client import streams as client_streams
from wgrelay.client.events import PeerRelayed
from wgrelay.client.fallback import Carrier, FallbackConfig
from wgrelay.client.link import LinkConfig
from wgrelay.client.manager import STREAM_COST_MS
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.relay.server import BindAddress
from wgrelay.relay.tls import tls_context

pytestmark = pytest.mark.timeout(60)

FAST = LinkConfig(lost_after_s=4.0, request_timeout_s=3.0)
QUICK_RETRY = FallbackConfig(udp_retry_s=1.0, udp_retry_max_s=2.0, switch_grace_s=1.0)


class UdpGate(asyncio.DatagramProtocol):
    """Forwards UDP between agents and the relay while open; drops while closed."""

    def __init__(self, relay: tuple[str, int]) -> None:
        self.relay = relay
        self.open = False
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.open:
            self.dropped += 1
            return
        up = self._upstreams.get(addr)
        if up is None:
            asyncio.get_running_loop().create_task(self._start(addr, data))
        else:
            up.sendto(data, self.relay)

    async def _start(self, client: tuple[str, int], first: bytes) -> None:
        gate = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if gate.open and gate.transport is not None:
                    gate.transport.sendto(data, client)
                else:
                    gate.dropped += 1

        loop = asyncio.get_running_loop()
        up, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        self._upstreams[client] = up
        up.sendto(first, self.relay)

    def close(self) -> None:
        for up in self._upstreams.values():
            up.close()
        if self.transport is not None:
            self.transport.close()


def _free_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@contextlib.asynccontextmanager
async def gated_relay(
    tls_dir: Path | None = None,
) -> AsyncIterator[tuple[InProcRelay, UdpGate, int]]:
    """A relay whose UDP is behind a (closed) gate on port N, with TCP on N
    (and TLS on another port when ``tls_dir`` is given)."""
    async with inproc_relay() as relay:
        port = _free_port()
        gate = UdpGate(relay.endpoint)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: gate, local_addr=("127.0.0.1", port))
        binds = [("tcp", BindAddress("127.0.0.1", port))]
        tls = None
        if tls_dir is not None:
            binds = [("tls", BindAddress("127.0.0.1", 0))]
            tls = tls_context(None, None, True, tls_dir)
        await relay.server.open_streams(binds, tls)
        try:
            yield relay, gate, port
        finally:
            gate.close()


def Agent(relay: PublicKey, endpoint: tuple[str, int]) -> Peer:
    """An agent that knows one relay, at ``endpoint``."""
    return Peer([(relay, endpoint)], link_config=FAST, fallback=QUICK_RETRY)


async def until(cond: Callable[[], bool], *agents: Peer, timeout: float = 15.0) -> None:
    """Wait until ``cond()`` holds, re-checking whenever an agent saw something
    (and at least every 0.2 s: some conditions change without an event)."""
    async with asyncio.timeout(timeout):
        while not cond():
            for a in agents:
                a.changed.clear()
            waits = [asyncio.create_task(a.changed.wait()) for a in agents]
            try:
                await asyncio.wait(waits, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


async def _relayed_pair(relay: InProcRelay, a: Peer, b: Peer) -> None:
    """a and b home on the relay; a asks for b; a packet each way arrives."""
    await a.manager.start(timeout=15)
    await b.manager.start(timeout=15)
    assert a.manager.home == relay.key
    assert b.manager.home == relay.key
    got = await a.manager.relay_peer(b.pub, timeout=15)
    assert got == relay.key
    await until(lambda: any(isinstance(e, PeerRelayed) for e in b.events), b)
    ping, pong = wg_packet(b"over the stream"), wg_packet(b"and back")
    assert a.manager.send_packet(b.pub, ping)
    await until(lambda: ping in b.frames, b)
    assert b.manager.send_packet(a.pub, pong)
    await until(lambda: pong in a.frames, a)


def test_udp_blocked_falls_back_to_tcp_and_returns_to_udp_when_it_opens() -> None:
    async def scenario() -> None:
        async with gated_relay() as (relay, gate, port):
            a = Agent(relay.key, ("127.0.0.1", port))  # UDP behind the closed gate
            b = Agent(relay.key, relay.endpoint)  # plain UDP
            try:
                await _relayed_pair(relay, a, b)
                assert a.manager.carrier(relay.key) == Carrier.TCP
                assert b.manager.carrier(relay.key) == Carrier.UDP
                assert a.manager.fallback.udp_blocked
                # selection prefers UDP paths: this relay costs more while over TCP
                known = a.manager.registry.get(relay.key)
                assert known is not None
                over_tcp = a.manager.planner.selector.score(known)
                assert relay.core.get_stats().streams_open == 1
                assert gate.dropped > 0
                # the session offered a port to a: it must not use it (framed)
                ev = next(e for e in a.events if isinstance(e, PeerRelayed))
                assert ev.port == 0

                gate.open = True  # the network lets UDP through again
                await until(lambda: a.manager.carrier(relay.key) == Carrier.UDP, a)
                await until(lambda: relay.core.get_stats().streams_open == 0, a, b)
                ping = wg_packet(b"over UDP again")
                assert a.manager.send_packet(b.pub, ping)
                await until(lambda: ping in b.frames, b)
                pong = wg_packet(b"back over UDP")
                assert b.manager.send_packet(a.pub, pong)
                await until(lambda: pong in a.frames, a)
                assert not a.manager.fallback.udp_blocked
                back = a.manager.planner.selector.score(known)
                assert over_tcp - back == pytest.approx(STREAM_COST_MS, abs=50.0)
            finally:
                await a.manager.close()
                await b.manager.close()

    asyncio.run(scenario())


def test_only_tls_reachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No TCP where the agent looks first (the UDP port's number): TLS next,
    on the port a bootstrap-only agent assumes (443 for real; here the
    listener's port, patched in)."""

    async def scenario() -> None:
        async with gated_relay(tls_dir=tmp_path) as (relay, _gate, port):
            tls_port = relay.core.stream_ports[1]
            monkeypatch.setattr(client_streams, "DEFAULT_TLS_PORT", tls_port)
            a = Agent(relay.key, ("127.0.0.1", port))
            b = Agent(relay.key, relay.endpoint)
            try:
                await _relayed_pair(relay, a, b)
                assert a.manager.carrier(relay.key) == Carrier.TLS
                assert relay.core.get_stats().streams_open == 1
                assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
            finally:
                await a.manager.close()
                await b.manager.close()

    asyncio.run(scenario())


def test_no_stream_either_keeps_trying_and_says_why() -> None:
    """A relay that takes neither UDP nor streams: nothing moves, the errors are kept."""

    async def scenario() -> None:
        port = _free_port()  # nobody there at all
        a = Agent(RelayIdentity.generate().public, ("127.0.0.1", port))
        try:
            a.manager.begin()
            addr = ("127.0.0.1", port)
            await until(lambda: a.manager.fallback.last_error(addr) is not None, a)
            await until(lambda: "tls" in (a.manager.fallback.last_error(addr) or ""), a)
            assert a.manager.fallback.carrier(addr) == Carrier.UDP
            assert a.manager.home is None
        finally:
            await a.manager.close()

    asyncio.run(scenario())
