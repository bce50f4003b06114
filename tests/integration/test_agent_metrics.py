"""The agent's /metrics and ``wgrelay status --watch`` against running agents.

Two agents over fake WireGuard interfaces relay each other through a real
in-process relay (as in test_agent_fake_backend.py). Agent a serves its
metrics (``AgentOptions.metrics``, what ``up --metrics`` sets) on 127.0.0.1:
a scrape over HTTP must show peer b relayed through that relay, with the
handshake and byte counters the fake WireGuard reports. Then ``wgrelay status
--watch`` runs as a real subprocess against a's state directory; its frames
(stdout is a pipe: plain frames) must show the peer relayed, its totals and,
once the counters moved between two of the agent's writes, a rate. It is
ended by its PID with SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.integration.relays import inproc_relay
from tests.metrics_text import http_get, samples
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.errors import ConfigError
from wgrelay.keys import PrivateKey
from wgrelay.mesh.agent import AgentConfig
from wgrelay.mesh.backend.fake import FakeBackend, SetEndpointCall
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.daemon import Agent, AgentOptions, DaemonConfig

pytestmark = pytest.mark.timeout(60)

FAST = AgentConfig(direct_probe_s=0.5, initiate_delay_s=0.3)
# the status file rewritten often, so that the watch sees counters move quickly
QUICK_STATUS = DaemonConfig(status_refresh_s=0.2)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def _frames(stream: asyncio.StreamReader, want: int, match: str) -> list[str]:
    """Read the watch's frames until ``want`` of them contain ``match``."""
    frames: list[str] = []
    current: list[str] = []
    async with asyncio.timeout(15):
        while sum(match in f for f in frames) < want:
            line = (await stream.readline()).decode()
            assert line, f"the watch ended early; frames so far: {frames}"
            if line.startswith("--- ") and current:
                frames.append("".join(current))
                current = []
            current.append(line)
    return frames


def test_metrics_and_watch_of_a_relayed_agent(tmp_path: Path) -> None:
    metrics_port = free_tcp_port()

    async def scenario() -> None:
        async with inproc_relay() as relay:
            ka, kb = PrivateKey.generate(), PrivateKey.generate()
            wg_a, wg_b = udp_socket(), udp_socket()
            agents: list[Agent] = []
            backends: list[FakeBackend] = []
            proxied: list[asyncio.Event] = []
            for name, key, other, wg in (("wga", ka, kb, wg_a), ("wgb", kb, ka, wg_b)):
                moved = asyncio.Event()

                def on_set(
                    _b: FakeBackend, call: SetEndpointCall, ev: asyncio.Event = moved
                ) -> None:
                    if call.endpoint[0] == "127.0.0.1":  # onto its relay proxy
                        ev.set()

                backend = FakeBackend(on_set_endpoint=on_set)
                backend.add_interface(name, private_key=key, listen_port=wg.getsockname()[1])
                backend.add_peer(name, other.public_key(), endpoint=("198.51.100.9", 51820))
                reg = RelayRegistry()
                reg.add_bootstrap(relay.key, relay.endpoint)
                opts = AgentOptions(
                    interface=name,
                    state_dir=tmp_path / name,
                    config=FAST,
                    daemon=QUICK_STATUS,
                    # framed: the fake WireGuard cannot latch a relay port
                    port_mode=False,
                    metrics=("127.0.0.1", metrics_port) if name == "wga" else None,
                )
                opts.state_dir.mkdir()
                info = backend.read(name)
                agents.append(Agent(opts, backend, info, reg, None, ConnectionCache(None)))
                backends.append(backend)
                proxied.append(moved)
            tasks = [asyncio.create_task(a.run()) for a in agents]
            peer_b = str(kb.public_key())
            try:
                async with asyncio.timeout(15):
                    for ev in proxied:
                        await ev.wait()
                handshake = time.time() - 3
                backends[0].set_handshake("wga", kb.public_key(), handshake)
                backends[0].set_transfer("wga", kb.public_key(), rx_bytes=12345, tx_bytes=678)
                text = await _scrape_until(
                    metrics_port,
                    lambda t: (
                        samples(t, "wgrelay_agent_peer_received_bytes_total")
                        == [({"interface": "wga", "peer": peer_b}, 12345.0)]
                    ),
                )
                _check_peer_series(text, peer_b, str(relay.key), handshake)
                code, _ = await http_get("127.0.0.1", metrics_port, "/other")
                assert code == 404
                await _watch(tmp_path / "wga", backends[0], kb, peer_b)
            finally:
                for a in agents:
                    a.stop()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                wg_a.close()
                wg_b.close()
            # the server went with the agent
            with pytest.raises(ConnectionRefusedError):
                await http_get("127.0.0.1", metrics_port)

    asyncio.run(scenario())


async def _scrape_until(port: int, ok: object) -> str:
    assert callable(ok)
    async with asyncio.timeout(10):
        while True:
            code, text = await http_get("127.0.0.1", port)
            assert code == 200
            if ok(text):
                return text
            await asyncio.sleep(0.1)  # the agent reads its interface about once a second


def _check_peer_series(text: str, peer: str, relay: str, handshake: float) -> None:
    me = {"interface": "wga", "peer": peer}
    paths = {lab["path"]: v for lab, v in samples(text, "wgrelay_agent_peer_path")}
    assert paths == {"relayed": 1.0, "direct": 0.0, "probing": 0.0, "relay-pending": 0.0}
    [(info, one)] = samples(text, "wgrelay_agent_peer_relay_info")
    assert one == 1.0
    assert info == {
        **me,
        "relay": relay,
        "relay_endpoint": info["relay_endpoint"],
        "mode": "framed",
    }
    assert info["relay_endpoint"].startswith("127.0.0.1:")
    [(_, age)] = samples(text, "wgrelay_agent_peer_handshake_age_seconds")
    assert 3.0 <= age < time.time() - handshake + 1
    assert samples(text, "wgrelay_agent_peer_sent_bytes_total") == [(me, 678.0)]
    assert samples(text, "wgrelay_agent_peer_upgrade_attempts_total")[0][0] == me
    registered = samples(text, "wgrelay_agent_relay_registered")
    assert registered == [
        (
            {
                "interface": "wga",
                "relay": relay,
                "endpoint": info["relay_endpoint"],
                "role": "home",
            },
            1.0,
        )
    ]
    [(_, sessions)] = samples(text, "wgrelay_agent_relay_sessions")
    assert sessions == 1.0
    sent = {lab["direction"]: v for lab, v in samples(text, "wgrelay_agent_proxy_packets_total")}
    assert set(sent) == {"to_relay", "to_wireguard"}
    assert samples(text, "wgrelay_agent_info") == [({"interface": "wga", "backend": "fake"}, 1.0)]
    # what relays asked this agent to sign (credits)
    outcomes = {lab["outcome"] for lab, _ in samples(text, "wgrelay_agent_receipts_total")}
    assert {"signed", "trimmed"} <= outcomes


async def _watch(state_dir: Path, backend: FakeBackend, kb: PrivateKey, peer: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wgrelay",
        "status",
        "--watch",
        "--interval",
        "0.2",
        "--state-dir",
        str(state_dir),
        "wga",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        short = peer[:10] + ".."
        frames = await _frames(proc.stdout, 2, short)
        line = next(ln for ln in frames[-1].splitlines() if short in ln)
        assert "relayed (framed)" in line
        assert "12.1KiB/678B" in line  # the totals
        assert "wga: agent running" in frames[-1]
        assert "\x1b" not in "".join(frames)  # not a terminal: no escape codes
        # the counters move: once two of the agent's writes differ, a rate shows
        backend.set_transfer("wga", kb.public_key(), rx_bytes=12345 + 100_000, tx_bytes=678)
        frames = await _frames(proc.stdout, 1, "kbit/s")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        async with asyncio.timeout(10):
            rc = await proc.wait()
        err = await proc.stderr.read()
    assert rc == 0, err
    assert err == b""


def test_a_metrics_port_in_use_is_a_one_line_error_and_the_agent_cleans_up(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            backend = FakeBackend()
            backend.add_interface("wgm", private_key=PrivateKey.generate())
            backend.add_peer("wgm", PrivateKey.generate().public_key())
            reg = RelayRegistry()
            reg.add_bootstrap(PrivateKey.generate().public_key(), ("127.0.0.1", 9))
            opts = AgentOptions(interface="wgm", state_dir=tmp_path, metrics=("127.0.0.1", port))
            agent = Agent(opts, backend, backend.read("wgm"), reg, None, ConnectionCache(None))
            with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{port}: "):
                await agent.run()
        assert not (tmp_path / "status-wgm.json").exists()

    asyncio.run(scenario())
