"""The relay with real UDP sockets on 127.0.0.1 (issue: the relay node)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.helpers import until, wg_packet
from tests.integration.relays import inproc_relay, relay_process, start_relay_process
from wgrelay.client.events import (
    LinkEvent,
    LinkRegistered,
    LinkRejected,
    SessionEnded,
    SessionEstablished,
)
from wgrelay.client.link import LinkConfig
from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import CloseReason
from wgrelay.relay.config import RelayConfig

pytestmark = pytest.mark.timeout(90)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


class Sink:
    """Collects payloads a client receives, per peer, in arrival order."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.arrived = asyncio.Event()
        self.want = 0

    def __call__(self, peer: PublicKey, frame: bytes) -> None:
        self.payloads.append(frame[10:])
        if len(self.payloads) >= self.want:
            self.arrived.set()

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        self.want = n
        if len(self.payloads) >= n:
            return
        self.arrived.clear()
        async with asyncio.timeout(timeout):
            await self.arrived.wait()


async def pump_in_order(
    sender: RelayClient, peer: PublicKey, sink: Sink, count: int, tag: bytes, chunk: int = 250
) -> None:
    """Send ``count`` numbered datagrams in chunks, waiting for each chunk to land."""
    base = len(sink.payloads)
    for start in range(0, count, chunk):
        for i in range(start, min(count, start + chunk)):
            assert sender.send(peer, wg_packet(tag + i.to_bytes(4, "big") + bytes(i % 200)))
        await sink.wait_for(base + min(count, start + chunk))


def test_ten_thousand_datagrams_each_way_arrive_intact_and_in_order() -> None:
    async def scenario() -> None:
        # unlimited bandwidth: this test is about integrity and order, not quotas
        async with inproc_relay(RelayConfig(max_bandwidth_kbps=0)) as relay:
            a, b = PrivateKey.generate(), PrivateKey.generate()
            sink_a, sink_b = Sink(), Sink()
            ca = RelayClient(a, relay.key, relay.endpoint, on_data=sink_a)
            cb = RelayClient(b, relay.key, relay.endpoint, on_data=sink_b)
            await ca.wait_registered()
            await cb.wait_registered()
            sid = await ca.open_session(b.public_key())
            assert cb.link.session_of[a.public_key()] == sid  # B was told, and agreed
            await pump_in_order(ca, b.public_key(), sink_b, 10_000, b"A")
            await pump_in_order(cb, a.public_key(), sink_a, 10_000, b"B")
            for tag, sink in ((b"A", sink_b), (b"B", sink_a)):
                assert sink.payloads == [
                    wg_packet(tag + i.to_bytes(4, "big") + bytes(i % 200)) for i in range(10_000)
                ]
            st = relay.core.get_stats()
            assert st.packets_forwarded == 20_000
            assert st.sessions_active == 1
            await ca.close()
            await cb.close()

    run(scenario)


def test_target_rejecting_gives_rejected() -> None:
    async def scenario() -> None:
        async with inproc_relay() as relay:
            a, b = PrivateKey.generate(), PrivateKey.generate()
            ca = RelayClient(a, relay.key, relay.endpoint)
            cb = RelayClient(b, relay.key, relay.endpoint, accept_offer=lambda _p: False)
            await ca.wait_registered()
            await cb.wait_registered()
            with pytest.raises(RelayUnavailable, match="REJECTED"):
                await ca.open_session(b.public_key())
            assert relay.core.get_stats().sessions_active == 0
            await ca.close()
            await cb.close()

    run(scenario)


def test_unregistered_target_gives_target_unreachable() -> None:
    async def scenario() -> None:
        async with inproc_relay() as relay:
            a = PrivateKey.generate()
            ca = RelayClient(a, relay.key, relay.endpoint)
            await ca.wait_registered()
            with pytest.raises(RelayUnavailable, match="TARGET_UNREACHABLE"):
                await ca.open_session(PrivateKey.generate().public_key())
            await ca.close()

    run(scenario)


def test_unknown_key_with_allow_file_gets_auth_failed(tmp_path: Path) -> None:
    member, other, stranger = (PrivateKey.generate() for _ in range(3))
    allow = tmp_path / "allow"
    allow.write_text(f"# mesh members\n{member.public_key()}\n{other.public_key()}  # b\n")

    async def scenario(relay_key: PublicKey, endpoint: tuple[str, int]) -> None:
        cm = RelayClient(member, relay_key, endpoint)
        co = RelayClient(other, relay_key, endpoint)
        await cm.wait_registered()
        await co.wait_registered()
        # a member asking for a non-member: AUTH_FAILED in the ConnectionResponse
        with pytest.raises(RelayUnavailable, match="AUTH_FAILED"):
            await cm.open_session(stranger.public_key())
        # the non-member itself: refused, with an authenticated answer
        cs = RelayClient(stranger, relay_key, endpoint)
        with pytest.raises(RelayUnavailable, match="refused"):
            await cs.wait_registered(timeout=5)
        # members still work
        await cm.open_session(other.public_key())
        for c in (cm, co, cs):
            await c.close()

    with relay_process(tmp_path / "relay", "--allow-file", str(allow)) as rp:
        asyncio.run(scenario(rp.key, rp.endpoint))


def test_max_connections_reached_gives_resource_limit() -> None:
    async def scenario() -> None:
        async with inproc_relay(RelayConfig(max_connections=2)) as relay:
            keys = [PrivateKey.generate() for _ in range(4)]
            clients = [RelayClient(k, relay.key, relay.endpoint) for k in keys]
            for c in clients:
                await c.wait_registered()
            await clients[0].open_session(keys[1].public_key())
            await clients[2].open_session(keys[3].public_key())
            with pytest.raises(RelayUnavailable, match="RESOURCE_LIMIT"):
                await clients[0].open_session(keys[2].public_key())
            assert relay.core.get_stats().quota_hits["max_connections"] == 1
            # closing one frees a slot
            clients[0].close_session(keys[1].public_key())
            await until(lambda: relay.core.get_stats().sessions_active == 1)
            await clients[0].open_session(keys[2].public_key())
            for c in clients:
                await c.close()

    run(scenario)


def test_idle_session_expires_and_both_ends_are_told() -> None:
    async def scenario() -> None:
        config = RelayConfig(session_idle_timeout_s=1)
        async with inproc_relay(config) as relay:
            a, b = PrivateKey.generate(), PrivateKey.generate()
            ca = RelayClient(a, relay.key, relay.endpoint)
            cb = RelayClient(b, relay.key, relay.endpoint)
            await ca.wait_registered()
            await cb.wait_registered()
            ended_a = ca.expect(lambda e: isinstance(e, SessionEnded))
            ended_b = cb.expect(lambda e: isinstance(e, SessionEnded))
            await ca.open_session(b.public_key())
            async with asyncio.timeout(5):
                ev_a, ev_b = await ended_a, await ended_b
            assert isinstance(ev_a, SessionEnded)
            assert ev_a.reason == CloseReason.IDLE
            assert isinstance(ev_b, SessionEnded)
            assert ev_b.reason == CloseReason.IDLE
            assert relay.core.get_stats().sessions_active == 0
            await ca.close()
            await cb.close()

    run(scenario)


def test_nat_rebinding_of_b_keeps_the_session() -> None:
    async def scenario() -> None:
        async with inproc_relay() as relay:
            a, b = PrivateKey.generate(), PrivateKey.generate()
            sink_a, sink_b = Sink(), Sink()
            ca = RelayClient(a, relay.key, relay.endpoint, on_data=sink_a)
            cb = RelayClient(b, relay.key, relay.endpoint, on_data=sink_b)
            await ca.wait_registered()
            await cb.wait_registered()
            sid = await ca.open_session(b.public_key())
            await pump_in_order(ca, b.public_key(), sink_b, 100, b"1")
            old_port = cb.local_port
            cb.rebind()  # B's NAT gives it a new port: same link state, new socket
            assert cb.local_port != old_port
            # frames from the new address are not accepted until B re-announces itself
            cb.send(a.public_key(), wg_packet(b"too early"))
            await until(lambda: relay.core.get_stats().drops["spoofed_source"] == 1)
            cb.heartbeat_now()  # (one cookie round trip proves the new address)
            await until(
                lambda: relay.core.registered_addr(b.public_key()) == ("127.0.0.1", cb.local_port)
            )
            await pump_in_order(ca, b.public_key(), sink_b, 100, b"2")
            await pump_in_order(cb, a.public_key(), sink_a, 100, b"3")
            assert relay.core.sessions[sid].packets == 300  # the early frame was dropped
            await ca.close()
            await cb.close()

    run(scenario)


def test_relay_restart_clients_reregister_and_sessions_come_back(tmp_path: Path) -> None:
    state = tmp_path / "relay"
    rp = start_relay_process(state, "--open")
    port = rp.endpoint[1]

    async def scenario() -> None:
        nonlocal rp
        a, b = PrivateKey.generate(), PrivateKey.generate()
        sink_b = Sink()
        events_a: list[LinkEvent] = []
        ca = RelayClient(a, rp.key, rp.endpoint, on_event=events_a.append)
        cb = RelayClient(b, rp.key, rp.endpoint, on_data=sink_b)
        await ca.wait_registered()
        await cb.wait_registered()
        sid1 = await ca.open_session(b.public_key())
        await pump_in_order(ca, b.public_key(), sink_b, 50, b"x")
        back = ca.expect(lambda e: isinstance(e, SessionEstablished) and e.session_id != sid1)
        rp.stop(signal.SIGKILL)  # a crash: no goodbye
        rp = start_relay_process(state, "--open", port=port)  # same key file, same port
        async with asyncio.timeout(30):
            ev = await back
        assert isinstance(ev, SessionEstablished)
        assert ev.peer == b.public_key()
        assert cb.link.session_of[a.public_key()] == ev.session_id
        await pump_in_order(ca, b.public_key(), sink_b, 50, b"y")
        assert any(isinstance(e, SessionEnded) for e in events_a)
        assert sum(isinstance(e, LinkRegistered) for e in events_a) == 2
        await ca.close()
        await cb.close()

    try:
        asyncio.run(scenario())
    finally:
        rp.stop()


def test_graceful_shutdown_tells_clients() -> None:
    async def scenario() -> None:
        events: list[LinkEvent] = []
        async with inproc_relay() as relay:
            a, b = PrivateKey.generate(), PrivateKey.generate()
            ca = RelayClient(
                a,
                relay.key,
                relay.endpoint,
                on_event=events.append,
                config=LinkConfig(reregister_backoff_max_s=1.0),
            )
            cb = RelayClient(b, relay.key, relay.endpoint)
            await ca.wait_registered()
            await cb.wait_registered()
            await ca.open_session(b.public_key())
            ended = ca.expect(lambda e: isinstance(e, SessionEnded))
        async with asyncio.timeout(2):
            ev = await ended
        assert isinstance(ev, SessionEnded)
        assert ev.reason == CloseReason.SHUTDOWN
        await ca.close()
        await cb.close()
        assert not any(isinstance(e, LinkRejected) for e in events)

    run(scenario)
