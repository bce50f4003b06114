"""``start-relay --capacity`` and a full ``--max-connections`` for real: a
relay process on 127.0.0.1 with its own credit source (every balance 0
without a ledger), real UDP sockets. Two sessions offering more than the
capacity share it (what both deliver stays within it, each keeps well above
its minimum share), a third request at the full relay is refused (equal
credit displaces no one), and /metrics says so."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wg_packet
from tests.integration.relays import relay_process
from tests.metrics_text import samples
from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey

pytestmark = pytest.mark.timeout(90)

CAPACITY = 200_000  # bytes/s, --capacity 200kB/s
PAYLOAD = wg_packet(bytes(990))  # 1006 bytes; a 1016-byte frame
FRAME = len(PAYLOAD) + 10
CHARGE = 64
OFFERED = 300_000  # bytes/s per session, more than the whole capacity
MIN_SHARE = 0.25


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def value(text: str, name: str) -> float:
    (_, v), *_ = samples(text, name)
    return v


async def share(relay_key: PublicKey, endpoint: tuple[str, int]) -> tuple[list[float], str]:
    """Two sessions send flat out; a third is asked for at the full relay.
    Returns each session's delivered bytes/s and why the third failed."""
    keys = [PrivateKey.generate() for _ in range(6)]
    arrived = [0, 0, 0]

    def counter(i: int) -> Callable[[PublicKey, bytes], None]:
        def count(_peer: PublicKey, frame: bytes) -> None:
            arrived[i] += len(frame)

        return count

    clients = []
    for i in range(3):
        clients.append(RelayClient(keys[2 * i], relay_key, endpoint))
        clients.append(RelayClient(keys[2 * i + 1], relay_key, endpoint, on_data=counter(i)))
    try:
        for c in clients:
            await c.wait_registered()
        senders = [(clients[2 * i], keys[2 * i + 1].public_key()) for i in range(2)]
        for c, peer in senders:
            await c.open_session(peer)
        with pytest.raises(RelayUnavailable) as refused:
            await clients[4].open_session(keys[5].public_key())
        loop = asyncio.get_running_loop()
        step = 0.01
        per_step = round(OFFERED * step / len(PAYLOAD))

        async def send_for(seconds: float) -> None:
            end = loop.time() + seconds
            nxt = loop.time()
            while loop.time() < end:
                for c, peer in senders:
                    for _ in range(per_step):
                        c.send(peer, PAYLOAD)
                nxt += step
                await asyncio.sleep(max(0.0, nxt - loop.time()))

        await send_for(3.0)  # the shares settle (one housekeeping tick each second)
        before, t0 = arrived[:2], loop.time()
        await send_for(4.0)
        await asyncio.sleep(0.05)  # the last frames on loopback
        elapsed = loop.time() - t0
        return [(arrived[i] - before[i]) / elapsed for i in range(2)], str(refused.value)
    finally:
        for c in clients:
            await c.close()


def test_capacity_is_enforced_and_each_session_keeps_its_share(tmp_path: Path) -> None:
    port = free_tcp_port()
    args = (
        "--open",
        "--capacity",
        "200kB/s",
        "--max-connections",
        "2",
        "--max-bandwidth",
        "1000",
        "--port-range",
        "off",
        "--metrics",
        f"127.0.0.1:{port}",
    )
    with relay_process(tmp_path / "relay", *args) as relay:
        rates, why = asyncio.run(share(relay.key, relay.endpoint))
        text = metrics(port)
    print(f"delivered bytes/s per session: {[round(r) for r in rates]}; third: {why}")
    assert "RESOURCE_LIMIT" in why
    payload_capacity = CAPACITY * FRAME / (FRAME + CHARGE)
    # the capacity holds (a tick's burst of slack), and is used
    assert sum(rates) <= 1.1 * payload_capacity
    assert sum(rates) >= 0.7 * payload_capacity
    # equal credit, equal shares; far above the floor (min-share of the
    # capacity over the four flows, both directions of two sessions)
    floor = MIN_SHARE * CAPACITY / 4
    assert min(rates) >= 2 * floor
    assert abs(rates[0] - rates[1]) <= 0.25 * max(rates)
    assert value(text, "wgrelay_capacity_bytes_per_second") == CAPACITY
    assert value(text, "wgrelay_contended") == 1
    assert value(text, "wgrelay_contention_seconds_total") >= 3
    assert value(text, "wgrelay_contention_refused_total") == 1
    admitted = {
        labels["reason"]: v for labels, v in samples(text, "wgrelay_contention_admitted_total")
    }
    assert admitted == {"free_slot": 2, "higher_credit": 0, "reserve": 0}


def test_sighup_changes_capacity_and_min_share(tmp_path: Path) -> None:
    port = free_tcp_port()
    conf = tmp_path / "relay.toml"
    conf.write_text(f'open = true\ncapacity = "200kB/s"\nmetrics = "127.0.0.1:{port}"\n')
    with relay_process(tmp_path / "relay", "--config", str(conf)) as relay:
        assert value(metrics(port), "wgrelay_capacity_bytes_per_second") == CAPACITY
        conf.write_text(
            f'open = true\ncapacity = "8Mbit/s"\nmin-share = "40%"\nmetrics = "127.0.0.1:{port}"\n'
        )
        os.kill(relay.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "reloaded:" not in (log := relay.log.read_text()):
            assert relay.proc.poll() is None, log
            assert time.monotonic() < deadline, log
            time.sleep(0.02)
        assert "--capacity 200000 -> 1000000" in log
        assert "--min-share 0.25 -> 0.4" in log
        assert value(metrics(port), "wgrelay_capacity_bytes_per_second") == 1_000_000
