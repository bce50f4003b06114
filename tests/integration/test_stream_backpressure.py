"""A stream client that stops reading costs the relay nothing but its own frames.

A real in-process relay with a TCP listener. Agent C's UDP is gated shut, so
it registers over TCP; D (UDP) opens a session with C; then C stops reading
its socket (``pause_reading``: the kernel buffers fill, then the relay's
transport buffer) while D floods it. Meanwhile E and F (UDP, another session)
exchange numbered frames. The relay must deliver every E<->F frame, in order,
keep C's unsent bytes at its limit (dropping and counting the rest as
``stream_backpressure``) and go on serving. How fast E<->F go meanwhile is
measured, not asserted: ``bench/stream_backpressure.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import pytest

from tests.helpers import until, wg_packet
from tests.integration.relays import InProcRelay, inproc_relay
from tests.integration.test_streams_loopback import UdpGate, _free_port
from wgrelay.client.events import PeerRelayed
from wgrelay.client.fallback import Carrier, FallbackConfig
from wgrelay.client.manager import ManagerEvent, RelayManager
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.server import BindAddress
from wgrelay.relay.stats import DropReason
from wgrelay.transport.stream import TcpStream

pytestmark = pytest.mark.timeout(90)

SEND_BUFFER = 256 * 1024
"""The relay's per-stream limit of unsent bytes (listen_stream's default)."""
FLOOD_FRAME = wg_packet(b"x" * 1300)
FLOOD_BATCH = 64
"""Frames D sends before yielding to the loop: the relay's UDP socket then
never holds more than this many of them, so E's and F's datagrams are never
dropped by a full socket buffer (which would be the kernel, not the relay)."""
EF_FRAMES = 300
EF_WINDOW = 8
"""E<->F frames in flight at once, each way."""


class Peer:
    """An agent (``RelayManager``) with default timers that records its frames."""

    def __init__(self, relay: PublicKey, endpoint: tuple[str, int]) -> None:
        self.key = PrivateKey.generate()
        reg = RelayRegistry()
        reg.add_bootstrap(relay, endpoint)
        self.events: list[ManagerEvent] = []
        self.frames: list[bytes] = []
        self.manager = RelayManager(
            self.key,
            reg,
            accept_peer=lambda _k: True,
            on_event=self.events.append,
            on_data=lambda _peer, frame: self.frames.append(frame[10:]),
            fallback=FallbackConfig(switch_grace_s=1.0),
        )

    @property
    def pub(self) -> PublicKey:
        return self.key.public_key()


@contextlib.asynccontextmanager
async def tcp_relay() -> AsyncIterator[tuple[InProcRelay, int]]:
    """An uncapped relay (the bandwidth quota would drop D's flood first) with
    its UDP behind a closed gate on port N and TCP on N."""
    async with inproc_relay(RelayConfig(max_bandwidth_kbps=0)) as relay:
        port = _free_port()
        gate = UdpGate(relay.endpoint)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: gate, local_addr=("127.0.0.1", port))
        try:
            await relay.server.open_streams([("tcp", BindAddress("127.0.0.1", port))], None)
            yield relay, port
        finally:
            gate.close()


async def pair(a: Peer, b: Peer) -> None:
    """a asks for b; both have the relayed route."""
    await a.manager.relay_peer(b.pub, timeout=15)
    await until(lambda: any(isinstance(e, PeerRelayed) for e in b.events), 15)
    await until(lambda: b.pub in a.manager.routes and a.pub in b.manager.routes, 15)


def transport_of(stream: object) -> asyncio.Transport:
    t = cast(TcpStream, stream)._transport
    assert t is not None, "the stream is not connected"
    return t


def numbered(direction: bytes, i: int) -> bytes:
    return wg_packet(direction + i.to_bytes(4, "big"))


def test_stuck_stream_client_drops_its_own_frames_and_nobody_elses() -> None:
    async def scenario() -> None:
        async with tcp_relay() as (relay, port):
            c = Peer(relay.key, ("127.0.0.1", port))  # UDP gated shut: TCP
            d, e, f = (Peer(relay.key, relay.endpoint) for _ in range(3))
            peers = (c, d, e, f)
            try:
                for p in peers:
                    await p.manager.start(timeout=15)
                assert c.manager.carrier(relay.key) == Carrier.TCP
                await pair(d, c)
                await pair(e, f)
                assert relay.server.streams is not None
                [relay_side] = relay.server.streams.conns.values()
                hello = wg_packet(b"before")
                assert d.manager.send_packet(c.pub, hello)
                await until(lambda: hello in c.frames, 15)

                # C stops reading; D floods it until the relay holds its limit
                [c_stream] = c.manager.streams.streams.values()
                transport_of(c_stream).pause_reading()
                unsent = transport_of(relay_side)
                stats = relay.core.get_stats
                worst = 0

                async def flood_some() -> None:
                    nonlocal worst
                    for _ in range(FLOOD_BATCH):
                        d.manager.send_packet(c.pub, FLOOD_FRAME)
                    await asyncio.sleep(0)  # the relay's turn
                    worst = max(worst, unsent.get_write_buffer_size())

                async with asyncio.timeout(30):
                    while stats().drops[DropReason.STREAM_BACKPRESSURE] == 0:
                        await flood_some()
                drops_at_start = stats().drops[DropReason.STREAM_BACKPRESSURE]
                c_got = len(c.frames)

                # E <-> F while the flood goes on: numbered frames, both ways
                sent_ef = sent_fe = 0
                async with asyncio.timeout(30):
                    while len(f.frames) < EF_FRAMES or len(e.frames) < EF_FRAMES:
                        while sent_ef < min(EF_FRAMES, len(f.frames) + EF_WINDOW):
                            assert e.manager.send_packet(f.pub, numbered(b"ef", sent_ef))
                            sent_ef += 1
                        while sent_fe < min(EF_FRAMES, len(e.frames) + EF_WINDOW):
                            assert f.manager.send_packet(e.pub, numbered(b"fe", sent_fe))
                            sent_fe += 1
                        await flood_some()

                assert f.frames == [numbered(b"ef", i) for i in range(EF_FRAMES)]
                assert e.frames == [numbered(b"fe", i) for i in range(EF_FRAMES)]
                drops = stats().drops[DropReason.STREAM_BACKPRESSURE]
                assert drops > drops_at_start, "the flood went on: more of C's frames dropped"
                # bounded: the limit is checked before each write, so at most
                # one frame (2-byte length + frame) goes over it
                assert worst <= SEND_BUFFER + 2 + 10 + len(FLOOD_FRAME), worst
                assert len(c.frames) == c_got  # C really read nothing meanwhile
                assert stats().streams_open == 1  # and is still connected
                print(
                    f"\nrelay held {worst} unsent bytes for C at most; dropped {drops} of"
                    f" C's frames; E<->F delivered {2 * EF_FRAMES} frames in order"
                )

                # C reads again: the backlog drains and new frames arrive
                transport_of(c_stream).resume_reading()
                late = wg_packet(b"after the backlog")
                async with asyncio.timeout(20):
                    while late not in c.frames:
                        d.manager.send_packet(c.pub, late)
                        await asyncio.sleep(0.05)
            finally:
                for p in peers:
                    await p.manager.close()

    asyncio.run(scenario())
