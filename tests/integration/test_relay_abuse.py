"""Abuse of a real relay process: garbage floods and forged requests on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import select
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.relays import RelayProcess, relay_process
from tests.integration.test_relay_loopback import Sink, pump_in_order
from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, relay_x25519_public
from wgrelay.proto.constants import CONTROL_TYPES, MsgType
from wgrelay.proto.envelope import derive_client_keys, seal_control
from wgrelay.proto.messages import ConnectionRequest

pytestmark = pytest.mark.timeout(180)

GARBAGE_DATAGRAMS = 100_000
FORGED_REQUESTS = 3_000
SOURCE_PORTS = 100


class Senders:
    """Many UDP sockets (= many source ports) that record every reply they get."""

    def __init__(self, n: int) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        # what each datagram that could carry a nonce looked like, by nonce prefix:
        # a cookie reply echoes it, which ties every reply to its request
        self.sent_by_echo: dict[bytes, int] = {}
        self.sealed_sizes: dict[int, list[int]] = {i: [] for i in range(n)}
        self.replies: list[tuple[int, bytes]] = []

    def send(self, i: int, data: bytes, dst: tuple[str, int], sealed: bool = False) -> None:
        try:
            self.socks[i].sendto(data, dst)
        except BlockingIOError:
            return
        if len(data) >= 43:
            self.sent_by_echo[data[35:43]] = len(data)
        if sealed:
            self.sealed_sizes[i].append(len(data))

    def collect(self, timeout: float) -> None:
        by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        while True:
            ready, _, _ = select.select(self.socks, [], [], timeout)
            if not ready:
                return
            for s in ready:
                while True:
                    try:
                        data = s.recv(65535)
                    except BlockingIOError:
                        break
                    self.replies.append((by_fd[s.fileno()], data))

    def close(self) -> None:
        for s in self.socks:
            s.close()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def garbage(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:  # pure noise
        return rng.randbytes(rng.randint(0, 1400))
    if kind < 0.6:  # data frames with random session ids
        return bytes((MsgType.DATA, 0)) + rng.randbytes(rng.randint(0, 1400))
    if kind < 0.9:  # something that looks like a control header
        t = rng.choice(sorted(CONTROL_TYPES))
        return bytes((t, 1, rng.choice((0, 1, 2, 3)))) + rng.randbytes(rng.randint(80, 1300))
    return bytes((MsgType.ANNOUNCEMENT, 1)) + rng.randbytes(rng.randint(0, 1300))


async def _established_pair(rp: RelayProcess) -> tuple[RelayClient, RelayClient, Sink, PrivateKey]:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    sink = Sink()
    ca = RelayClient(a, rp.key, rp.endpoint)
    cb = RelayClient(b, rp.key, rp.endpoint, on_data=sink)
    await ca.wait_registered()
    await cb.wait_registered()
    await ca.open_session(b.public_key())
    return ca, cb, sink, b


def test_garbage_and_forged_requests_leave_the_relay_responsive(tmp_path: Path) -> None:
    rng = random.Random(1234)
    metrics_port = free_tcp_port()
    with relay_process(
        tmp_path / "relay",
        "--open",
        "--max-bandwidth",
        "0",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
    ) as rp:

        async def scenario() -> None:
            ca, cb, sink, b = await _established_pair(rp)
            await pump_in_order(ca, b.public_key(), sink, 200, b"before")
            rss_before = rp.rss_kib()
            senders = Senders(SOURCE_PORTS)
            loop = asyncio.get_running_loop()
            try:
                # 1. garbage from many ports, interleaved with real traffic
                for n in range(GARBAGE_DATAGRAMS):
                    senders.send(n % SOURCE_PORTS, garbage(rng), rp.endpoint)
                    if n % 2000 == 1999:
                        await loop.run_in_executor(None, senders.collect, 0.0)
                        await asyncio.sleep(0)
                # 2. validly sealed requests from thousands of fresh keys: each one
                #    would cost an X25519 operation, so the relay must turn to cookies
                relay_x = relay_x25519_public(rp.key)
                for n in range(FORGED_REQUESTS):
                    k = PrivateKey.generate()
                    keys = derive_client_keys(k.public_key().raw, k.raw, relay_x)
                    req = seal_control(
                        ConnectionRequest(n, PrivateKey.generate().public_key()),
                        sender=k.public_key().raw,
                        keys=keys,
                        timestamp_us=int(time.time() * 1e6),
                        nonce=os.urandom(24),
                    )
                    senders.send(n % SOURCE_PORTS, req, rp.endpoint, sealed=True)
                    if n % 500 == 499:
                        await loop.run_in_executor(None, senders.collect, 0.0)
                await loop.run_in_executor(None, senders.collect, 1.0)

                # every reply is no larger than the request that caused it
                cookies = 0
                for i, reply in senders.replies:
                    if reply[0] == MsgType.COOKIE_REPLY:
                        cookies += 1
                        request_len = senders.sent_by_echo[reply[2:10]]
                    else:
                        # only validly sealed requests can earn a sealed answer
                        request_len = min(senders.sealed_sizes[i])
                    assert len(reply) <= request_len, (reply[0], len(reply), request_len)
                assert cookies > 0, "under a flood of new keys the relay must send cookies"

                # still responsive, still forwarding, memory bounded
                rtt = await ca.ping(timeout=5)
                assert rtt < 1.0
                await pump_in_order(ca, b.public_key(), sink, 200, b"after")
                growth_mib = (rp.rss_kib() - rss_before) / 1024
                assert growth_mib < 40, f"relay grew by {growth_mib:.1f} MiB"
                assert rp.proc.poll() is None
                metrics = await loop.run_in_executor(None, scrape, metrics_port)
                dropped = sum(v for k, v in metrics.items() if k.startswith("wgrelay_drops_total"))
                assert dropped >= GARBAGE_DATAGRAMS * 0.9  # (a few may be lost in buffers)
                # (plus one each for the two honest peers: registering proves an address)
                assert metrics['wgrelay_cookies_total{event="sent"}'] == cookies + 2
                assert metrics["wgrelay_forwarded_packets_total"] >= 400
            finally:
                senders.close()
                await ca.close()
                await cb.close()

        asyncio.run(scenario())
