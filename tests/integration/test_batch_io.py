"""Batched UDP I/O (recvmmsg/sendmmsg) and its plain fallback, on real 127.0.0.1 sockets.

Every test that moves datagrams runs on both I/O paths and asserts the same
outcome: what a receiver sees (bytes, source address, order, one
``batch_done`` per wake-up), what a deferred send delivers, and what the relay
counts. Bursts are queued before the loop gets to read them (loopback delivers
inside ``sendto``), so one wake-up sees more datagrams than one ``recvmmsg``
takes (64).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.helpers import until, wg_packet
from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.data import MAX_DATA_FRAME, data_header
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.relay.stats import DropReason
from wgrelay.transport.base import Addr, DeferredSender, QueueingSender
from wgrelay.transport.udp import (
    BATCH_IO_ENV,
    RECV_SIZE,
    AsyncioRuntime,
    IoPath,
    UdpTransport,
    choose_io_path,
    load_mmsg,
)

pytestmark = pytest.mark.timeout(60)

MMSG = load_mmsg()
BATCHED = choose_io_path({}, MMSG)
PLAIN = choose_io_path({BATCH_IO_ENV: "0"}, MMSG)
needs_extension = pytest.mark.skipif(
    not BATCHED.batched, reason=f"batched path unavailable: {BATCHED.description}"
)
BOTH_PATHS = [
    pytest.param(BATCHED, id="batched", marks=needs_extension),
    pytest.param(PLAIN, id="plain"),
]


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


class Recorder:
    """A DatagramReceiver that keeps every datagram and where each wake-up ended."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Addr]] = []
        self.batch_ends: list[int] = []
        self.echo_to: Addr | None = None
        self.transport: UdpTransport | None = None

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.got.append((data, addr))
        if self.echo_to is not None and self.transport is not None:
            self.transport.send_deferred(data, self.echo_to)

    def batch_done(self) -> None:
        self.batch_ends.append(len(self.got))


@pytest.fixture
def senders() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def numbered(i: int, size: int) -> bytes:
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_burst_larger_than_a_batch_arrives_intact_in_order_with_sources(
    io: IoPath, senders: list[socket.socket]
) -> None:
    async def scenario() -> None:
        rec = Recorder()
        t = AsyncioRuntime(io=io).open_udp("127.0.0.1", 0, rec, buffer_bytes=1 << 22)
        try:
            sizes = [1 + (i * 37) % 1500 for i in range(150)]
            sizes[70] = RECV_SIZE  # the largest we take whole
            want = []
            for i, size in enumerate(sizes):  # alternating sources, one burst
                s = senders[i % 2]
                s.sendto(numbered(i, size), t.local_address)
                want.append((numbered(i, size), s.getsockname()))
            await until(lambda: len(rec.got) >= len(want))
            assert rec.got == want
            assert all(type(addr) is tuple for _, addr in rec.got)
            # all 150 were queued before the loop read any: one wake-up, one batch_done
            assert rec.batch_ends == [150]
            assert t.receiver_errors == 0
        finally:
            t.close()

    run(scenario)


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_oversize_datagram_is_cut_to_recv_size_like_recvfrom(
    io: IoPath, senders: list[socket.socket]
) -> None:
    async def scenario() -> None:
        rec = Recorder()
        t = AsyncioRuntime(io=io).open_udp("127.0.0.1", 0, rec, buffer_bytes=1 << 22)
        try:
            big = numbered(7, RECV_SIZE + 500)
            senders[0].sendto(b"before", t.local_address)
            senders[0].sendto(big, t.local_address)
            senders[0].sendto(b"after", t.local_address)
            await until(lambda: len(rec.got) >= 3)
            src = senders[0].getsockname()
            assert rec.got == [(b"before", src), (big[:RECV_SIZE], src), (b"after", src)]
        finally:
            t.close()

    run(scenario)


def test_ipv6_sources_have_the_recvfrom_form() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")

    async def scenario(io: IoPath) -> list[tuple[bytes, Addr]]:
        rec = Recorder()
        t = AsyncioRuntime(io=io).open_udp("::1", 0, rec)
        try:
            for i in range(80):
                s.sendto(numbered(i, 100), t.local_address)
            await until(lambda: len(rec.got) >= 80)
            return rec.got
        finally:
            t.close()

    src = s.getsockname()
    try:
        paths = [PLAIN, BATCHED] if BATCHED.batched else [PLAIN]
        results = [asyncio.run(scenario(io)) for io in paths]
    finally:
        s.close()
    assert len(src) == 4
    for got in results:
        assert got == [(numbered(i, 100), src) for i in range(80)]


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_deferred_sends_leave_in_order_after_the_wake_up(
    io: IoPath, senders: list[socket.socket]
) -> None:
    """An echo receiver sends every datagram on with ``send_deferred``: all arrive,
    intact and in order, including bursts longer than one ``sendmmsg``."""

    async def scenario() -> None:
        sink = Recorder()
        runtime = AsyncioRuntime(io=io)
        out = runtime.open_udp("127.0.0.1", 0, sink, buffer_bytes=1 << 22)
        echo = Recorder()
        t = runtime.open_udp("127.0.0.1", 0, echo, buffer_bytes=1 << 22)
        echo.transport, echo.echo_to = t, out.local_address
        try:
            assert isinstance(t, DeferredSender)
            want = [numbered(i, 64 + i % 300) for i in range(200)]
            for i, data in enumerate(want):
                senders[0].sendto(data, t.local_address)
                if i % 100 == 99:  # two bursts of 100 (> 64 per sendmmsg)
                    await until(lambda n=i + 1: len(sink.got) >= n)  # type: ignore[misc]
            assert [d for d, _ in sink.got] == want
            assert {a for _, a in sink.got} == {t.local_address}
            assert t.send_errors == 0
            # outside a wake-up, a deferred send goes at once
            t.send_deferred(b"now", out.local_address)
            await until(lambda: len(sink.got) == 201)
            assert sink.got[-1] == (b"now", t.local_address)
        finally:
            t.close()
            out.close()

    run(scenario)


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_queued_datagrams_wait_for_flush_then_leave_in_order(io: IoPath) -> None:
    """Port mode: a burst received on one port leaves another port's socket
    together (``queue``, then ``flush`` when the receiving batch ends)."""

    async def scenario() -> None:
        sink = Recorder()
        runtime = AsyncioRuntime(io=io)
        out = runtime.open_udp("127.0.0.1", 0, sink, buffer_bytes=1 << 22)
        t = runtime.open_udp("127.0.0.1", 0, Recorder(), buffer_bytes=1 << 22)
        try:
            assert isinstance(t, QueueingSender)
            want = [numbered(i, 32 + i % 200) for i in range(150)]  # > 2 sendmmsg
            for data in want:
                t.queue(data, out.local_address)
            await asyncio.sleep(0)  # (any wake-up of the loop: nothing leaves)
            assert sink.got == []
            t.flush()
            await until(lambda: len(sink.got) == len(want))
            assert [d for d, _ in sink.got] == want
            t.flush()  # nothing held: nothing sent
            assert t.send_errors == 0
        finally:
            t.close()
            out.close()

    run(scenario)


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_deferred_send_failures_are_counted_and_odd_addresses_still_sent(
    io: IoPath, senders: list[socket.socket]
) -> None:
    """A datagram the kernel refuses is counted in ``send_errors`` (as by sendto)
    and does not stop the others; an address form the extension does not parse
    (a host name) is sent the plain way."""

    async def scenario() -> None:
        sink = Recorder()
        runtime = AsyncioRuntime(io=io)
        out = runtime.open_udp("127.0.0.1", 0, sink)
        port = out.local_address[1]
        t: UdpTransport | None = None

        class Mixed(Recorder):
            def datagram_received(self, data: bytes, addr: Addr) -> None:
                assert t is not None
                t.send_deferred(b"1", ("127.0.0.1", port))
                t.send_deferred(b"refused", ("127.0.0.1", 0))  # EINVAL: port 0
                t.send_deferred(b"2", ("localhost", port))
                t.send_deferred(b"3", ("127.0.0.1", port))

        t = runtime.open_udp("127.0.0.1", 0, Mixed())
        try:
            senders[0].sendto(b"go", t.local_address)
            await until(lambda: len(sink.got) >= 3)
            assert sorted(d for d, _ in sink.got) == [b"1", b"2", b"3"]
            assert t.send_errors == 1
            assert t.receiver_errors == 0
        finally:
            t.close()
            out.close()

    run(scenario)


# ---------------------------------------------------------------- the relay


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, peer: PublicKey, frame: bytes) -> None:
        self.frames.append(frame)


@pytest.mark.parametrize("io", BOTH_PATHS)
def test_relay_forwards_and_drops_the_same_on_both_paths(
    io: IoPath, caplog: pytest.LogCaptureFixture
) -> None:
    """One burst through a relay: 120 good frames (> 64 per call), a frame over
    the size limit, one longer than RECV_SIZE (cut, then dropped as oversize,
    as before batching), a non-WireGuard one and one from a spoofed source."""

    async def scenario() -> None:
        runtime = AsyncioRuntime(io=io)
        core = RelayCore(
            RelayIdentity.generate(),
            RelayConfig(max_bandwidth_kbps=0),
            OpenPolicy(),
            now=runtime.now(),
            wall=runtime.wall(),
        )
        server = RelayServer(core, runtime, [BindAddress("127.0.0.1", 0)], policy_refresh_s=0)
        with caplog.at_level(logging.INFO, logger="wgrelay.relay.server"):
            server.open()
        assert f"UDP I/O: {io.description}" in caplog.messages
        endpoint = ("127.0.0.1", server.port)
        ready = asyncio.Event()
        task = asyncio.create_task(server.serve(ready.set))
        await ready.wait()
        a, b = PrivateKey.generate(), PrivateKey.generate()
        sink = Sink()
        ca = RelayClient(a, core.identity.public, endpoint)
        cb = RelayClient(b, core.identity.public, endpoint, on_data=sink)
        spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await ca.wait_registered()
            await cb.wait_registered()
            sid = await ca.open_session(b.public_key())
            before = core.get_stats().drops.copy()  # the control plane's (cookies)
            hdr = data_header(sid)
            good = [hdr + wg_packet(i.to_bytes(4, "big") + bytes(i % 100)) for i in range(120)]
            bad = {
                30: hdr + wg_packet(bytes(MAX_DATA_FRAME)),  # over the limit
                60: hdr + wg_packet(bytes(RECV_SIZE + 100)),  # cut by the receive size
                90: hdr + b"\x09" + bytes(40),  # not a WireGuard message type
            }
            for i, frame in enumerate(good):
                if i in bad:
                    ca.send_frame(bad[i])
                if i == 100:
                    spoofer.sendto(frame, endpoint)
                ca.send_frame(frame)
            await until(lambda: len(sink.frames) >= len(good))
            await until(lambda: (core.get_stats().drops - before).total() >= 4)
            st = core.get_stats()
            assert sink.frames == good
            assert st.packets_forwarded == len(good)
            assert st.drops - before == {
                DropReason.OVERSIZE: 2,
                DropReason.NOT_WIREGUARD: 1,
                DropReason.SPOOFED_SOURCE: 1,
            }
        finally:
            spoofer.close()
            await ca.close()
            await cb.close()
            server.stop()
            await task

    run(scenario)


# ---------------------------------------------------------------- choosing the path


def test_the_batched_path_is_the_default_where_the_extension_loads() -> None:
    mmsg = load_mmsg()
    io = choose_io_path({}, mmsg)
    if isinstance(mmsg, str):
        assert not io.batched
        assert mmsg in io.description
    else:
        assert io.batched
        assert io.description.startswith("recvmmsg/sendmmsg")


def test_env_var_selects_the_plain_path() -> None:
    io = choose_io_path({BATCH_IO_ENV: "0"}, load_mmsg())
    assert not io.batched
    assert io.mmsg is None
    assert f"{BATCH_IO_ENV}=0" in io.description
    assert choose_io_path({BATCH_IO_ENV: "1"}, load_mmsg()).batched == BATCHED.batched


def test_missing_extension_falls_back_to_the_plain_path(senders: list[socket.socket]) -> None:
    io = choose_io_path({}, "extension not built (No module named '_mmsg')")
    assert not io.batched
    assert "extension not built" in io.description

    async def scenario() -> None:
        rec = Recorder()
        t = AsyncioRuntime(io=io).open_udp("127.0.0.1", 0, rec)
        try:
            assert t.io_path == io.description
            for i in range(100):
                senders[1].sendto(numbered(i, 50), t.local_address)
            await until(lambda: len(rec.got) >= 100)
            assert rec.got == [(numbered(i, 50), senders[1].getsockname()) for i in range(100)]
        finally:
            t.close()

    run(scenario)
