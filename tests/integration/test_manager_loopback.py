"""RelayManager with two real relays on 127.0.0.1: locate, relay, failover."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from tests.helpers import wg_packet
from tests.integration.relays import Peer as SharedPeer
from tests.integration.relays import inproc_relay
from wgrelay.client.events import HomeChanged, PeerRelayed, PeerRelayLost, RelaysLearned
from wgrelay.client.link import LinkConfig
from wgrelay.keys import PublicKey

pytestmark = pytest.mark.timeout(60)

FAST = LinkConfig(lost_after_s=2.0, request_timeout_s=2.0)


def Peer(relays: list[tuple[PublicKey, tuple[str, int]]]) -> SharedPeer:
    return SharedPeer(relays, link_config=FAST)


async def _until(cond: Callable[[], bool], *peers: SharedPeer, timeout: float = 5.0) -> None:
    """Wait, without polling, until ``cond()`` holds after some peer saw something."""
    async with asyncio.timeout(timeout):
        while not cond():
            for p in peers:
                p.changed.clear()
            waits = [asyncio.create_task(p.changed.wait()) for p in peers]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


def test_relay_peer_locates_the_target_and_data_flows_then_fails_over() -> None:
    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            r1 = await stack.enter_async_context(inproc_relay())
            r2 = await stack.enter_async_context(inproc_relay())
            relays = [(r1.key, r1.endpoint), (r2.key, r2.endpoint)]
            a, b = Peer(relays), Peer(relays)
            await a.manager.start()
            await b.manager.start()
            assert a.manager.home in (r1.key, r2.key)
            # b accepts sessions at its home and at its standby (the other
            # relay): a finds it at one of them (its own home answers for a
            # standby registered there: no detour)
            await _until(lambda: b.manager.standby is not None, a, b)
            places = {b.manager.home, b.manager.standby}
            assert places == {r1.key, r2.key}
            assert await a.manager.locate(b.pub) in places
            used = await a.manager.relay_peer(b.pub)
            await b.wait(lambda e: isinstance(e, PeerRelayed) and e.incoming)
            for i in range(50):
                assert a.manager.send_packet(b.pub, wg_packet(b"a%d" % i))
                assert b.manager.send_packet(a.pub, wg_packet(b"b%d" % i))
            await _until(lambda: len(a.frames) == 50 and len(b.frames) == 50, a, b)
            assert b.frames == [wg_packet(b"a%d" % i) for i in range(50)]

            # the relay carrying the session dies
            dead = r1 if used == r1.key else r2
            alive = r2 if dead is r1 else r1
            dead.server.stop()
            await dead.task
            await a.wait(lambda e: isinstance(e, PeerRelayLost), timeout=10)
            await b.wait(lambda e: isinstance(e, HomeChanged) and e.relay == alive.key, timeout=15)
            a.frames.clear()
            b.frames.clear()
            assert await a.manager.relay_peer(b.pub) == alive.key
            await _until(lambda: b.pub in a.manager.routes and a.pub in b.manager.routes, a, b)
            assert a.manager.send_packet(b.pub, wg_packet(b"after"))
            await _until(lambda: b.frames == [wg_packet(b"after")], a, b)
            await a.manager.close()
            await b.manager.close()

    asyncio.run(scenario())


def test_manager_learns_signed_announcements_of_its_relays() -> None:
    async def scenario() -> None:
        async with inproc_relay(region="eu-test") as relay:
            a = Peer([(relay.key, relay.endpoint)])
            await a.manager.start()
            await a.wait(lambda e: isinstance(e, RelaysLearned))
            known = a.manager.registry.get(relay.key)
            assert known is not None
            assert known.region == "eu-test"
            assert known.announcement is not None  # the verified, signed bytes
            assert known.bootstrap  # still the operator's entry, now enriched
            await a.manager.close()

    asyncio.run(scenario())
