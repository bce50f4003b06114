"""TLS on the relay: mismatched clients fail cleanly, and start-relay's TLS options.

A TLS client at a plain TCP listener, or a plain client at a TLS listener,
must end in ``stream_closed`` (no exception escaping, no socket left open on
either side). The CLI checks run the real ``wgrelay start-relay`` on
127.0.0.1 and end it by PID.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path

import pytest

from tests.helpers import until
from tests.integration.relays import InProcRelay, inproc_relay, relay_process
from tests.integration.test_streams_loopback import Agent, gated_relay
from wgrelay.client.fallback import Carrier
from wgrelay.relay.server import BindAddress
from wgrelay.relay.stats import DropReason
from wgrelay.relay.streams import StreamLimits
from wgrelay.relay.tls import tls_context
from wgrelay.transport.base import StreamOptions
from wgrelay.transport.stream import connect_stream

pytestmark = pytest.mark.timeout(60)


class Outcome:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: str | None = None
        self.frames: list[bytes] = []

    def stream_connected(self) -> None:
        self.connected.set()

    def frame_received(self, data: bytes) -> None:
        self.frames.append(data)

    def frames_done(self) -> None:
        pass

    def stream_closed(self, error: str | None) -> None:
        assert not self.closed.is_set()  # reported once
        self.error = error
        self.closed.set()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_leaving_nothing_open(scenario: Callable[[], Coroutine[None, None, None]]) -> None:
    """Run an async scenario; every socket it opened is closed when it ends."""
    before = _open_fds()
    asyncio.run(scenario())
    assert _open_fds() == before


async def _relay_streams(relay: InProcRelay, kind: str, tls_dir: Path | None) -> int:
    tls = tls_context(None, None, True, tls_dir) if tls_dir is not None else None
    await relay.server.open_streams([(kind, BindAddress("127.0.0.1", 0))], tls)
    ports = relay.core.stream_ports
    return ports[0] if kind == "tcp" else ports[1]


def test_tls_client_at_a_plain_listener_times_out_cleanly() -> None:
    """The relay reads the ClientHello as the start of a long frame and waits;
    the client's handshake waits too: its connect timeout ends both."""

    async def scenario() -> None:
        async with inproc_relay() as relay:
            port = await _relay_streams(relay, "tcp", None)
            outcome = Outcome()
            stream = connect_stream(
                "127.0.0.1", port, outcome, StreamOptions(tls=True, connect_timeout_s=0.5)
            )
            async with asyncio.timeout(10):
                await outcome.closed.wait()
            assert outcome.error == "timed out"
            assert not outcome.connected.is_set()
            assert not stream.send_frame(b"\x01late")  # closed: refused and counted
            assert stream.frames_dropped == 1
            assert relay.server.streams is not None
            assert relay.server.streams.accepted == 1
            await until(lambda: relay.core.get_stats().streams_open == 0)

    _run_leaving_nothing_open(scenario)


def test_plain_client_at_a_tls_listener_is_closed(tmp_path: Path) -> None:
    """The TCP connection is up, the relay's TLS handshake fails on the first
    bytes and drops it: the client hears a close and the relay never took it
    as a stream."""

    async def scenario() -> None:
        async with inproc_relay() as relay:
            port = await _relay_streams(relay, "tls", tmp_path)
            outcome = Outcome()
            stream = connect_stream(
                "127.0.0.1", port, outcome, StreamOptions(tls=False, connect_timeout_s=5.0)
            )
            async with asyncio.timeout(10):
                await outcome.connected.wait()
                assert stream.send_frame(b"\x01not a TLS record")
                await outcome.closed.wait()
            assert outcome.frames == []
            assert relay.server.streams is not None
            assert relay.server.streams.accepted == 0
            assert relay.core.get_stats().streams_open == 0

    _run_leaving_nothing_open(scenario)


def test_tls_both_ends_carry_frames(tmp_path: Path) -> None:
    """The control: the same listener with a TLS client takes it as a stream."""

    async def scenario() -> None:
        async with inproc_relay() as relay:
            port = await _relay_streams(relay, "tls", tmp_path)
            outcome = Outcome()
            stream = connect_stream(
                "127.0.0.1", port, outcome, StreamOptions(tls=True, connect_timeout_s=5.0)
            )
            async with asyncio.timeout(10):
                await outcome.connected.wait()
            await until(lambda: relay.core.get_stats().streams_open == 1)
            stream.close()
            await outcome.closed.wait()
            assert outcome.error is None  # closed by us
            await until(lambda: relay.core.get_stats().streams_open == 0)

    _run_leaving_nothing_open(scenario)


def test_an_agent_at_a_relay_at_its_stream_limit_does_not_hammer_it() -> None:
    """The relay accepts and closes at once (over its limit): the agent takes
    that as a failed connect and moves on to TLS, then waits, instead of
    reconnecting in a tight loop (thousands of connections a second)."""

    async def scenario() -> None:
        async with gated_relay() as (relay, _gate, port):
            relay.server.close_streams()
            await relay.server.open_streams(
                [("tcp", BindAddress("127.0.0.1", port))], None, StreamLimits(max_streams=0)
            )
            addr = ("127.0.0.1", port)
            a = Agent(relay.key, addr)  # its UDP goes to the shut gate
            try:
                a.manager.begin()
                await until(lambda: relay.core.stats.drops[DropReason.STREAM_LIMIT] >= 1, 10)
                # then TLS (nothing on 443 here) fails, and the next try is stream_retry_s away
                await until(lambda: "tls" in (a.manager.fallback.last_error(addr) or ""), 10)
                assert relay.core.stats.drops[DropReason.STREAM_LIMIT] == 1
                assert a.manager.fallback.carrier(addr) == Carrier.UDP
            finally:
                await a.manager.close()

    asyncio.run(scenario())


# ------------------------------------------------------------ start-relay's TLS options


def _start_relay(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wgrelay", "start-relay", "--open", "--state-dir", str(state)]
    return subprocess.run(
        [*cmd, "--bind", "127.0.0.1", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


_TOGETHER = "--tls-cert and --tls-key go together"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--tls-port", "8443"],
            "wgrelay: error: --tls-port needs --tls-cert and --tls-key, or --tls-self-signed",
        ),
        (
            ["--tls-cert", "/nonexistent.pem"],
            "wgrelay: error: --tls-cert and --tls-key go together",
        ),
        (["--tls-key", "/nonexistent.pem"], "wgrelay: error: --tls-cert and --tls-key go together"),
    ],
)
def test_tls_options_that_do_not_fit_are_one_line(
    tmp_path: Path, args: list[str], line: str
) -> None:
    done = _start_relay(tmp_path / "state", *args)
    assert done.returncode == 1
    assert done.stderr == line + "\n"
    assert done.stdout == ""
    assert not (tmp_path / "state" / "relay.key").exists()  # failed before any side effect


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served_certificate(port: int) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed: compared by its bytes below
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="wgrelay") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_self_signed_is_made_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key, cert = state / "tls.key", state / "tls.crt"
    port = _free_tcp_port()
    with relay_process(state, "--open", "--tls-self-signed", "--tls-port", str(port)):
        assert key.stat().st_mode & 0o777 == 0o600
        first_key, first_cert = key.read_bytes(), cert.read_text()
        assert b"PRIVATE KEY" in first_key
        served = _served_certificate(port)
        assert served == ssl.PEM_cert_to_DER_cert(first_cert)
    assert not list(state.glob("*.tmp"))
    with relay_process(state, "--open", "--tls-self-signed", "--tls-port", str(port)):
        assert key.read_bytes() == first_key
        assert cert.read_text() == first_cert
        assert key.stat().st_mode & 0o777 == 0o600
        assert _served_certificate(port) == served
