"""A home relay tells its agent which relays it runs legs with and how far
they are, for real: two start-relay processes on 127.0.0.1 that list each
other (``--leg-relay``) and a third that neither lists; an agent's relay
manager homes at the first and asks it (LEG_RTT_QUERY), as its planner does
when the home announces multi-hop. The RTT is the first relay's own
measurement (its pings to the second), well under a second on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.relays import Peer, RelayProcess, start_relay_process
from tests.integration.test_relay_federation import SYNC_INTERVAL_S, cli, free_udp_port
from wgrelay.client.events import HomeChanged
from wgrelay.client.link_legs import LegsLink
from wgrelay.keys import PublicKey

pytestmark = pytest.mark.timeout(120)


def _keygen(state: Path) -> PublicKey:
    """The relay's key, made before it starts (the other lists it)."""
    state.mkdir(mode=0o700, parents=True)
    out = subprocess.run(
        [sys.executable, "-m", "wgrelay", "keygen", "--relay", "--out", str(state / "relay.key")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return PublicKey.from_base64(out.stdout.strip())


async def _until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if cond():
                return
            await asyncio.sleep(0.1)  # a link's state, no manager event: look again shortly


def test_a_home_relay_tells_its_agent_its_rtt_to_its_leg_relays(tmp_path: Path) -> None:
    k1, k2 = _keygen(tmp_path / "r1"), _keygen(tmp_path / "r2")
    relays: list[RelayProcess] = []
    try:
        p1 = free_udp_port()
        r1 = start_relay_process(
            tmp_path / "r1", "--open", "--announce", f"127.0.0.1:{p1}", "--leg-relay", str(k2),
            port=p1,
        )  # fmt: skip
        relays.append(r1)
        boot = f"127.0.0.1:{p1}={r1.key}"
        for name, legs in (("r2", ["--leg-relay", str(k1)]), ("r3", [])):
            port = free_udp_port()
            args = ["--open", "--announce", f"127.0.0.1:{port}", "--bootstrap", boot, *legs]
            relays.append(start_relay_process(tmp_path / name, *args, port=port))
        r2, r3 = relays[1], relays[2]
        assert (r1.key, r2.key) == (k1, k2)
        # relay 1 knows both others live (it lists them to anyone who asks)
        state = tmp_path / "lister"
        state.mkdir(mode=0o700)
        res = cli(state, "add-bootstrap-relay", f"127.0.0.1:{p1}", str(r1.key))
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 3 * SYNC_INTERVAL_S
        listed: set[str] = set()
        while not {str(r2.key), str(r3.key)} <= listed:
            assert time.monotonic() < deadline, listed
            res = cli(state, "list-relays", "--refresh", "--json")
            assert res.returncode == 0, res.stderr
            listed = {r["public_key"] for r in json.loads(res.stdout)}
        asyncio.run(_agent_asks(r1, r2))
    finally:
        for r in relays:
            r.stop()
        for r in relays:
            assert "Traceback" not in r.log.read_text(), r.log.read_text()[-2000:]


async def _agent_asks(r1: RelayProcess, r2: RelayProcess) -> None:
    """An agent homes at relay 1, whose answer names relay 2 with a figure,
    and not relay 3 (in the federation, but not a relay 1 runs legs with)."""
    peer = Peer([(r1.key, r1.endpoint)])
    await peer.manager.start()
    try:
        await peer.wait(lambda ev: isinstance(ev, HomeChanged) and ev.relay == r1.key)
        link = peer.manager.planner.link(r1.key)
        assert isinstance(link, LegsLink)
        # the planner asks when the home's announcement comes (MULTI_HOP),
        # again while a relay has no figure, and every measuring round
        await _until(lambda: link.leg_rtts.get(r2.key) is not None)
        assert set(link.leg_rtts) == {r2.key}
        rtt = link.leg_rtts[r2.key]
        assert rtt is not None
        assert 0 <= rtt < 100  # loopback, two Python processes
        print(f"relay 1's RTT to relay 2 as it told its agent: {rtt:.0f} ms")
    finally:
        await peer.manager.close()
