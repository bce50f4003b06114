"""The agent daemon end to end without root: a fake WireGuard, a real relay.

Two `Agent`s run in this process, each over a `FakeBackend` interface whose
peer is the other; no handshake ever completes directly, so both must relay.
A plain UDP socket bound to each fake interface's listen port plays WireGuard:
what it sends to the proxy endpoint the agent configured must come out of the
other agent's proxy, from that proxy's address, to the other "WireGuard".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from tests.helpers import wg_packet
from tests.integration.relays import inproc_relay
from wgrelay.client.plan_state import PlanConfig
from wgrelay.client.privacy import PrivacyConfig
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.agent import AgentConfig
from wgrelay.mesh.backend.fake import FakeBackend, SetEndpointCall
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.daemon import Agent, AgentOptions

pytestmark = pytest.mark.timeout(60)

FAST = AgentConfig(direct_probe_s=0.5, initiate_delay_s=0.3)


def free_udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


async def recv(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        data, addr = await loop.sock_recvfrom(sock, 2048)
    return data, addr


def test_two_agents_relay_each_other_and_restore_on_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with inproc_relay() as relay:
            ka, kb = PrivateKey.generate(), PrivateKey.generate()
            wg_a, wg_b = free_udp_socket(), free_udp_socket()  # "WireGuard" of a and b
            dead_a, dead_b = ("198.51.100.1", 51820), ("198.51.100.2", 51820)
            agents = []
            backends = []
            events: list[asyncio.Event] = []
            for name, key, other, wg, dead in (
                ("wga", ka, kb, wg_a, dead_b),
                ("wgb", kb, ka, wg_b, dead_a),
            ):
                proxied = asyncio.Event()

                def on_set(
                    _b: FakeBackend, call: SetEndpointCall, ev: asyncio.Event = proxied
                ) -> None:
                    if call.endpoint[0] == "127.0.0.1":  # moved onto its relay proxy
                        ev.set()

                backend = FakeBackend(on_set_endpoint=on_set)
                events.append(proxied)
                backend.add_interface(name, private_key=key, listen_port=wg.getsockname()[1])
                backend.add_peer(
                    name, other.public_key(), endpoint=dead, allowed_ips=["10.0.0.9/32"]
                )
                info = backend.read(name)
                reg = RelayRegistry()
                reg.add_bootstrap(relay.key, relay.endpoint)
                opts = AgentOptions(interface=name, state_dir=tmp_path / name, config=FAST)
                opts.state_dir.mkdir()
                agents.append(Agent(opts, backend, info, reg, None, ConnectionCache(None)))
                backends.append(backend)
            tasks = [asyncio.create_task(a.run()) for a in agents]
            try:
                async with asyncio.timeout(15):
                    for ev in events:
                        await ev.wait()
                ep_a = backends[0].read("wga").peers[0].endpoint
                ep_b = backends[1].read("wgb").peers[0].endpoint
                assert ep_a is not None
                assert ep_b is not None
                assert ep_a[0] == "127.0.0.1"
                assert ep_b[0] == "127.0.0.1"
                # a's "WireGuard" sends a packet to b through a's proxy
                wg_a.sendto(wg_packet(b"handshake-or-data"), ep_a)
                data, src = await recv(wg_b)
                assert data == wg_packet(b"handshake-or-data")
                assert src == ep_b  # it arrives from b's proxy: b's endpoint for a
                wg_b.sendto(wg_packet(b"reply"), ep_b)
                data, src = await recv(wg_a)
                assert (data, src) == (wg_packet(b"reply"), ep_a)
                # a local process that is not WireGuard cannot use the proxy
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
                    intruder.sendto(wg_packet(b"inject"), ep_a)
                    with pytest.raises(TimeoutError):
                        await recv(wg_b, timeout=0.5)
            finally:
                for a in agents:
                    a.stop()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            # endpoints went back to what they were
            assert backends[0].read("wga").peers[0].endpoint == dead_b
            assert backends[1].read("wgb").peers[0].endpoint == dead_a
            wg_a.close()
            wg_b.close()

    asyncio.run(scenario())


def test_private_lookup_groups_follow_peers_added_while_running(tmp_path: Path) -> None:
    """--private names the interface's peers to the planner's lookup groups;
    a peer added while the agent runs joins them when the interface is read
    (asked about alone, its lookups would name it to the lookup relay)."""

    async def scenario() -> None:
        async with inproc_relay() as relay:
            await with_relay(relay.key, relay.endpoint)

    async def with_relay(relay_key: PublicKey, endpoint: tuple[str, int]) -> None:
        key, first, later = (PrivateKey.generate() for _ in range(3))
        wg = free_udp_socket()  # "WireGuard" of the interface
        backend = FakeBackend()
        backend.add_interface("wgp", private_key=key, listen_port=wg.getsockname()[1])
        backend.add_peer("wgp", first.public_key(), endpoint=None, allowed_ips=["10.0.0.2/32"])
        private = PlanConfig(private=PrivacyConfig(all_peers=True))
        opts = AgentOptions(
            interface="wgp", state_dir=tmp_path / "wgp", config=FAST, plan_config=private
        )
        opts.state_dir.mkdir()
        reg = RelayRegistry()
        reg.add_bootstrap(relay_key, endpoint)
        agent = Agent(opts, backend, backend.read("wgp"), reg, None, ConnectionCache(None))
        planner = agent.manager.planner
        assert planner.config.private.peers == {first.public_key()}
        backend.add_peer("wgp", later.public_key(), endpoint=None, allowed_ips=["10.0.0.3/32"])
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(10):
                while later.public_key() not in planner.config.private.peers:  # noqa: ASYNC110 (the agent's poll changes it; no event to wait on)
                    await asyncio.sleep(0.05)
        finally:
            agent.stop()
            await task
            wg.close()
        assert planner.config.private.peers == {first.public_key(), later.public_key()}
        assert planner.cover(later.public_key()) == sorted(
            (first.public_key(), later.public_key()), key=lambda k: k.raw
        )

    asyncio.run(scenario())


def test_a_private_peer_that_is_not_a_peer_is_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--private-peer with a mistyped key covered nothing and said nothing:
    the peer meant stayed on plain relayed paths."""
    key, peer, typo = (PrivateKey.generate() for _ in range(3))
    backend = FakeBackend()
    with free_udp_socket() as wg:  # (a port no one listens on once closed)
        port = wg.getsockname()[1]
    backend.add_interface("wgq", private_key=key, listen_port=port)
    backend.add_peer("wgq", peer.public_key(), endpoint=None, allowed_ips=["10.0.0.2/32"])
    covered = frozenset({peer.public_key(), typo.public_key()})
    opts = AgentOptions(
        interface="wgq",
        state_dir=tmp_path / "wgq",
        config=FAST,
        plan_config=PlanConfig(private=PrivacyConfig(peers=covered)),
    )
    opts.state_dir.mkdir()
    info = backend.read("wgq")

    async def start() -> None:  # (the agent takes the running loop's clock)
        async with inproc_relay() as relay:
            reg = RelayRegistry()
            reg.add_bootstrap(relay.key, relay.endpoint)
            agent = Agent(opts, backend, info, reg, None, ConnectionCache(None))
            task = asyncio.create_task(agent.run())
            try:
                async with asyncio.timeout(10):
                    while not agent._started:  # noqa: ASYNC110 (no event to wait on)
                        await asyncio.sleep(0.02)
            finally:
                agent.stop()  # (run's cleanup closes what the agent opened)
                await task

    with caplog.at_level("WARNING", logger="wgrelay.mesh.daemon"):
        asyncio.run(start())
    said = [r.getMessage() for r in caplog.records if "--private-peer" in r.getMessage()]
    assert said == [f"--private-peer {typo.public_key()} is not a peer of wgq"]
