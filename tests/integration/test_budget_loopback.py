"""``start-relay --budget`` for real: a relay process on 127.0.0.1 relays until
its byte budget is spent, then ends its session, refuses a new one with the
reason, says so in its announcement and its /metrics, and still knows it
after a restart (the count is kept in the state directory)."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wg_packet
from tests.integration.relays import relay_process
from tests.metrics_text import samples
from wgrelay.client.events import DiscoveryAnswered, SessionEnded
from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import Capability, CloseReason

pytestmark = pytest.mark.timeout(90)

BUDGET_BYTES = 100_000
PAYLOAD = bytes(1000)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def budget_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {labels["state"]: v for labels, v in samples(text, "wgrelay_budget_bytes")}
    (_, end), *_ = samples(text, "wgrelay_budget_period_end_seconds")
    out["period_end"] = end
    return out


async def announced_budget(client: RelayClient) -> int | None:
    fut = client.expect(lambda e: isinstance(e, DiscoveryAnswered))
    client.link.query(client.now())
    client.poke()
    async with asyncio.timeout(10):
        ev = await fut
    assert isinstance(ev, DiscoveryAnswered)
    (ann,) = [a for a in ev.announcements if a.info.key == client.relay_key]
    assert ann.info.capabilities & Capability.BUDGET
    return ann.info.budget_left_pct


async def spend(relay_key: PublicKey, endpoint: tuple[str, int]) -> tuple[int, int]:
    """Relay traffic between two clients until the relay ends the session;
    (frames sent, frames that arrived)."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    arrived = 0

    def count(_peer: PublicKey, _frame: bytes) -> None:
        nonlocal arrived
        arrived += 1

    ca = RelayClient(a, relay_key, endpoint)
    cb = RelayClient(b, relay_key, endpoint, on_data=count)
    try:
        await ca.wait_registered()
        await cb.wait_registered()
        assert await announced_budget(ca) == 100
        await ca.open_session(b.public_key())
        ended = ca.expect(lambda e: isinstance(e, SessionEnded))
        sent = 0
        async with asyncio.timeout(30):
            while not ended.done():
                # a chunk, then wait until it arrived or the session ended
                for _ in range(10):
                    sent += ca.send(b.public_key(), wg_packet(PAYLOAD))
                target = sent
                while arrived < target and not ended.done():
                    await asyncio.wait({ended}, timeout=0.01)
        ev = ended.result()
        assert isinstance(ev, SessionEnded)
        assert ev.reason == CloseReason.SHUTDOWN
        return sent, arrived
    finally:
        await ca.close()
        await cb.close()


async def refused(relay_key: PublicKey, endpoint: tuple[str, int]) -> tuple[str, int | None]:
    """A new session asked for now: (why it failed, the budget announced)."""
    a, b = PrivateKey.generate(), PrivateKey.generate()
    ca = RelayClient(a, relay_key, endpoint)
    cb = RelayClient(b, relay_key, endpoint)
    try:
        await ca.wait_registered()
        await cb.wait_registered()
        with pytest.raises(RelayUnavailable) as e:
            await ca.open_session(b.public_key())
        return str(e.value), await announced_budget(ca)
    finally:
        await ca.close()
        await cb.close()


def test_spent_budget_stops_the_relay_and_survives_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wgrelay.client.link")
    state = tmp_path / "relay"
    metrics = free_tcp_port()
    args = ("--open", "--budget", "100kB/month", "--port-range", "off", "--max-bandwidth", "0")
    with relay_process(state, *args, "--metrics", f"127.0.0.1:{metrics}") as relay:
        sent, arrived = asyncio.run(spend(relay.key, relay.endpoint))
        frame = 10 + len(wg_packet(PAYLOAD))
        print(f"{arrived} of {sent} frames relayed before the budget ran out")
        # it served until the budget was spent (and noticed within its
        # one-second tick: on loopback that is several times this budget)
        assert arrived * frame >= BUDGET_BYTES
        m = budget_metrics(metrics)
        assert m["total"] == BUDGET_BYTES
        assert m["left"] == 0
        assert m["used"] == pytest.approx(arrived * frame, rel=0.02)  # what it relayed
        used_before = m["used"]
        why, left = asyncio.run(refused(relay.key, relay.endpoint))
        assert "RESOURCE_LIMIT" in why
        assert left == 0
        details = [r.getMessage() for r in caplog.records if "resource limit" in r.getMessage()]
        assert any("(budget 100kB/month spent until " in d for d in details), details
        assert relay.stop() == 0  # SIGTERM: the count is written at exit
    assert (state / "budget.db").is_file()

    # a restart in the same month: still spent, not a byte forgotten
    with relay_process(state, *args, "--metrics", f"127.0.0.1:{metrics}") as relay:
        m = budget_metrics(metrics)
        assert m["used"] == used_before
        assert m["left"] == 0
        why, left = asyncio.run(refused(relay.key, relay.endpoint))
        assert "RESOURCE_LIMIT" in why
        assert left == 0
    assert "carried over" in relay.log.read_text()
