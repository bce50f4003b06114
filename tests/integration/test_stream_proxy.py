"""Streams through a real HTTP CONNECT proxy on 127.0.0.1, and ``https_proxy`` parsing.

The proxy is written here (an asyncio server): it reads the CONNECT request,
and either connects upstream, answers 200 and pipes both ways, or answers
403. The agent is a ``RelayManager`` whose UDP to the relay is gated shut, so
it reaches the relay over TCP through the proxy by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from tests.helpers import until
from tests.integration.test_streams_loopback import QUICK_RETRY, gated_relay
from wgrelay.client.fallback import Carrier
from wgrelay.client.link import LinkConfig
from wgrelay.client.manager import ManagerEvent, RelayManager
from wgrelay.client.streams import proxy_from_environ
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.errors import ConfigError
from wgrelay.keys import PrivateKey
from wgrelay.transport.base import StreamOptions
from wgrelay.transport.stream import connect_stream

pytestmark = pytest.mark.timeout(60)


class ConnectProxy:
    """A minimal HTTP CONNECT proxy: ``refuse`` answers 403, ``hang_up`` closes unanswered."""

    def __init__(self, refuse: bool = False, hang_up: bool = False) -> None:
        self.refuse = refuse
        self.hang_up = hang_up
        self.requests: list[str] = []
        self.tunnels = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        request = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(request)
        method, authority, _version = request.split(" ")
        if self.hang_up:
            writer.close()
            return
        if method != "CONNECT" or self.refuse:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, port = authority.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        self._writers.append(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.tunnels += 1
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self._writers:
            w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def connect_proxy(refuse: bool = False, hang_up: bool = False) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(refuse, hang_up)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


class Outcome:
    """A ``StreamReceiver`` that records what one connection did."""

    def __init__(self) -> None:
        self.connected = False
        self.error: str | None = None
        self.done = asyncio.Event()

    def stream_connected(self) -> None:
        self.connected = True

    def frame_received(self, data: bytes) -> None:
        pass

    def frames_done(self) -> None:
        pass

    def stream_closed(self, error: str | None) -> None:
        self.error = error
        self.done.set()


def test_agent_registers_over_tcp_through_the_proxy() -> None:
    async def scenario() -> None:
        async with gated_relay() as (relay, gate, port), connect_proxy() as proxy:
            reg = RelayRegistry()
            reg.add_bootstrap(relay.key, ("127.0.0.1", port))  # UDP: behind the shut gate
            events: list[ManagerEvent] = []
            manager = RelayManager(
                PrivateKey.generate(),
                reg,
                accept_peer=lambda _k: True,
                on_event=events.append,
                on_data=lambda _p, _f: None,
                link_config=LinkConfig(lost_after_s=4.0, request_timeout_s=3.0),
                fallback=QUICK_RETRY,
                proxy=proxy.address,
            )
            try:
                await manager.start(timeout=15)
                assert manager.home == relay.key
                assert manager.carrier(relay.key) == Carrier.TCP
                assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
                assert proxy.tunnels == 1
                assert relay.core.get_stats().streams_open == 1
                assert gate.dropped > 0
            finally:
                await manager.close()
            # the agent closed its stream: the proxy's tunnel and the relay's side follow
            await until(lambda: relay.core.get_stats().streams_open == 0)

    asyncio.run(scenario())


async def _through(proxy: ConnectProxy, port: int) -> Outcome:
    outcome = Outcome()
    options = StreamOptions(proxy=proxy.address, connect_timeout_s=5.0)
    connect_stream("127.0.0.1", port, outcome, options)
    async with asyncio.timeout(10):
        await outcome.done.wait()
    return outcome


def test_a_refusing_proxy_is_a_clear_stream_error() -> None:
    async def scenario() -> None:
        async with connect_proxy(refuse=True) as proxy:
            outcome = await _through(proxy, 9)
            assert not outcome.connected
            assert outcome.error == "the proxy refused: HTTP/1.1 403 Forbidden"
            assert proxy.requests == ["CONNECT 127.0.0.1:9 HTTP/1.1"]

    asyncio.run(scenario())


def test_a_proxy_that_hangs_up_is_a_clear_stream_error() -> None:
    async def scenario() -> None:
        async with connect_proxy(hang_up=True) as proxy:
            outcome = await _through(proxy, 9)
            assert not outcome.connected
            assert outcome.error == "the proxy closed the connection"

    asyncio.run(scenario())


def test_a_proxy_whose_upstream_is_refused() -> None:
    """Nothing listens where the relay should: the proxy says so (502)."""

    async def scenario() -> None:
        with socket.socket() as s:  # a port just freed: nothing listens there
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        async with connect_proxy() as proxy:
            outcome = await _through(proxy, port)
            assert not outcome.connected
            assert outcome.error == "the proxy refused: HTTP/1.1 502 Bad Gateway"
            assert proxy.tunnels == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("environ", "want"),
    [
        ({}, None),
        ({"https_proxy": ""}, None),
        ({"https_proxy": "http://127.0.0.1:3128"}, ("127.0.0.1", 3128)),
        ({"https_proxy": "http://127.0.0.1:3128/"}, ("127.0.0.1", 3128)),
        ({"https_proxy": "127.0.0.1:3128"}, ("127.0.0.1", 3128)),
        ({"HTTPS_PROXY": "http://127.0.0.1:8000"}, ("127.0.0.1", 8000)),
        ({"https_proxy": "http://127.0.0.1"}, ("127.0.0.1", 8080)),
        ({"https_proxy": "http://[::1]:3128"}, ("::1", 3128)),
        (
            {"https_proxy": "http://127.0.0.2:1", "HTTPS_PROXY": "http://127.0.0.3:2"},
            ("127.0.0.2", 1),
        ),
    ],
)
def test_proxy_from_environ(environ: dict[str, str], want: tuple[str, int] | None) -> None:
    assert proxy_from_environ(environ) == want


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("socks5://127.0.0.1:1080", "only an http://HOST:PORT proxy is supported"),
        ("https://127.0.0.1:3128", "only an http://HOST:PORT proxy is supported"),
        ("http://", "only an http://HOST:PORT proxy is supported"),
        ("http://127.0.0.1:99999", "https_proxy='http://127.0.0.1:99999': "),
        ("http://127.0.0.1:port", "https_proxy='http://127.0.0.1:port': "),
    ],
)
def test_a_bad_proxy_is_one_clear_line(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        proxy_from_environ({"https_proxy": value})
    assert says in str(err.value)
    assert "\n" not in str(err.value)
