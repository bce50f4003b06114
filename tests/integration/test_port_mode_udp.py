"""Port mode with real UDP sockets on loopback: two WireGuard-like sockets
talk through the relay's session ports, and nothing but a verified handshake
from the registered IP latches a port (issue: zero-overhead relaying)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from tests.helpers import until
from tests.integration.relays import inproc_relay
from wgrelay.client.udp import RelayClient
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.wgmac import mac1_key
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.metrics import make_registry
from wgrelay.sim.wgwire import encode_initiation, encode_response, encode_transport, tai64n

pytestmark = pytest.mark.timeout(60)

PORTS = (53100, 53199)


def _udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    try:
        yield made
    finally:
        for s in made:
            s.close()


def _init(sender: PublicKey, to: PublicKey) -> bytes:
    return encode_initiation(
        int.from_bytes(os.urandom(4), "little"), os.urandom(32), sender.raw, tai64n(1.7e9),
        mac1_key(to.raw),
    )  # fmt: skip


async def _recv(s: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            data, addr = await loop.sock_recvfrom(s, 65535)
            return data, addr
    except TimeoutError:
        return None


def test_wireguard_sockets_talk_through_session_ports_and_strangers_never_latch(
    sockets: list[socket.socket],
) -> None:
    async def scenario() -> None:
        config = RelayConfig(max_bandwidth_kbps=0, port_range=PORTS)
        async with inproc_relay(config) as relay:
            ka, kb = PrivateKey.generate(), PrivateKey.generate()
            a, b = ka.public_key(), kb.public_key()
            ca = RelayClient(ka, relay.key, relay.endpoint)
            cb = RelayClient(kb, relay.key, relay.endpoint)
            await ca.wait_registered()
            await cb.wait_registered()
            await ca.open_session(b)
            await until(lambda: a in cb.link.session_port)
            pa, pb = ca.link.session_port[b], cb.link.session_port[a]
            assert PORTS[0] <= pa <= PORTS[1]
            assert PORTS[0] <= pb <= PORTS[1]
            wg_a, wg_b = _udp(), _udp()  # WireGuard's own sockets
            attacker, stranger_ip = _udp(), _udp("127.0.0.2")
            sockets.extend((wg_a, wg_b, attacker, stranger_ip))
            relay_ip = relay.endpoint[0]

            # what must never latch, each counted by its reason
            hs = _init(a, b)
            stranger_ip.sendto(hs, (relay_ip, pa))  # another IP than A's registration
            attacker.sendto(_init(a, PrivateKey.generate().public_key()), (relay_ip, pa))
            attacker.sendto(encode_transport(1, 1, b"hello"), (relay_ip, pa))
            st = relay.core.get_stats
            await until(lambda: sum(st().drops.values()) >= 3)
            assert st().drops["port_foreign_address"] == 1
            assert st().drops["port_bad_mac1"] == 1
            assert st().drops["port_not_latched"] == 1
            assert st().port_latches == 0

            # A's WireGuard latches a's port; its initiation waits for B's latch
            wg_a.sendto(hs, (relay_ip, pa))
            await until(lambda: st().port_latches == 1)
            resp = encode_response(7, 9, os.urandom(32), mac1_key(a.raw))
            wg_b.sendto(resp, (relay_ip, pb))
            got_b = await _recv(wg_b)
            assert got_b == (hs, (relay_ip, pb))  # the held initiation, from B's port
            got_a = await _recv(wg_a)
            assert got_a == (resp, (relay_ip, pa))  # unchanged, from A's port
            for i in range(100):
                pkt = encode_transport(9, i, os.urandom(64))
                wg_a.sendto(pkt, (relay_ip, pa))
                assert await _recv(wg_b) == (pkt, (relay_ip, pb))
                wg_b.sendto(pkt, (relay_ip, pb))
                assert await _recv(wg_a) == (pkt, (relay_ip, pa))

            # the latching handshake replayed from another socket behind A's IP
            attacker.sendto(hs, (relay_ip, pa))
            attacker.sendto(encode_transport(9, 1000, b"x" * 32), (relay_ip, pa))
            await until(lambda: st().drops["replayed"] >= 1)
            await until(lambda: st().drops["port_not_latched"] >= 2)
            assert await _recv(wg_b, timeout=0.3) is None  # nothing reached B
            text = generate_latest(make_registry(st)).decode()
            for reason in ("port_foreign_address", "port_bad_mac1", "port_not_latched"):
                assert f'wgrelay_drops_total{{reason="{reason}"}}' in text
            assert "wgrelay_port_latches_total 2.0" in text
            assert 'wgrelay_port_sessions{state="both_latched"} 1.0' in text

            # closing the session closes its ports
            ca.close_session(b)
            await until(lambda: st().sessions_active == 0)
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(probe)
            probe.bind((relay_ip, pa))  # free again
            await ca.close()
            await cb.close()

    asyncio.run(scenario())
