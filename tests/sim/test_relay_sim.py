"""The production relay and relay clients on the simulator: exact, instant, no flakes.

What used to be measured in wall time on loopback (and flaked on a busy
machine) is measured in virtual time here: the same RelayServer, RelayCore
and RelayClient, on simulated hosts.
"""

from __future__ import annotations

import asyncio

from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, RelayIdentity, clamp
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.sim import Host, LinkSpec, Simulation

PORT = 51821


def start_relay(sim: Simulation, host: Host, config: RelayConfig) -> RelayCore:
    rt = host.runtime()
    core = RelayCore(
        RelayIdentity.from_seed(sim.rng.randbytes(32)),
        config,
        OpenPolicy(),
        now=rt.now(),
        wall=rt.wall(),
        rng=sim.rng.randbytes,
    )
    server = RelayServer(core, rt, [BindAddress("0.0.0.0", PORT)], policy_refresh_s=0)
    server.open()
    sim.spawn(server.serve())
    return core


def key(sim: Simulation) -> PrivateKey:
    return PrivateKey(clamp(sim.rng.randbytes(32)))


def test_bandwidth_cap_holds_exactly_in_virtual_time() -> None:
    """Offer 3x the per-session cap for 20 virtual seconds: what arrives is
    the cap, charged per frame its size plus 64 bytes (within 2 %)."""
    cap_kbps = 100
    frame_payload = 1186  # 1200-byte frames
    with Simulation(seed=3, trace=False) as sim:
        relay_host = sim.add_host("relay", link=LinkSpec(delay_s=0.005))
        core = start_relay(sim, relay_host, RelayConfig(max_bandwidth_kbps=cap_kbps))
        ha = sim.add_host("a", link=LinkSpec(delay_s=0.010))
        hb = sim.add_host("b", link=LinkSpec(delay_s=0.010))
        ka, kb = key(sim), key(sim)
        received = [0]

        def count(_peer: object, frame: bytes) -> None:
            received[0] += len(frame)

        async def scenario() -> float:
            endpoint = (relay_host.address, PORT)
            ca = RelayClient(ka, core.identity.public, endpoint, runtime=ha.runtime())
            cb = RelayClient(
                kb, core.identity.public, endpoint, runtime=hb.runtime(), on_data=count
            )
            await ca.wait_registered()
            await cb.wait_registered()
            await ca.open_session(kb.public_key())
            payload = b"\x04\x00\x00\x00" + bytes(frame_payload - 4)
            start = sim.now()
            duration = 20.0
            while sim.now() - start < duration:
                for _ in range(25):  # 25 x 1200 B every 100 ms: 3x the cap
                    ca.send(kb.public_key(), payload)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.1)  # virtual: the last frames' one-way delay
            await ca.close()
            await cb.close()
            return received[0] / duration

        rate = sim.run(scenario())
        frame = frame_payload + 10
        expected = cap_kbps * 1000 * frame / (frame + 64)
        assert abs(rate - expected) / expected < 0.02, (rate, expected)
        assert core.get_stats().drops["bandwidth"] > 0
