"""Networks that drop UDP: the agent reaches the relay over TCP or TLS by itself.

wireguard-go behind real nftables NATs; peer a's router drops every UDP packet
(and in the TLS case every TCP connection except to port 443). Both agents get
only the bootstrap relay; nothing tells them about TCP or TLS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.nat import BLOCK_CHAIN, NAT_TABLE
from wgrelay.testbed.scenario import MeshScenario, two_peers
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def only_tcp_443_rules(lan_if: str) -> str:
    """A network that lets nothing out but TCP to port 443 (HTTPS)."""
    return (
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} meta l4proto udp drop\n"
        f'add rule ip {NAT_TABLE} {BLOCK_CHAIN} iifname "{lan_if}" tcp dport != 443 drop\n'
    )


def entry(sc: MeshScenario, peer: Peer) -> dict[str, Any]:
    doc = sc.status(peer) or {}
    peers = doc.get("peers")
    return dict(peers[0]) if isinstance(peers, list) and peers else {}


def iperf3(a: Peer, b: Peer, seconds: int = 3) -> float:
    """Mbit/s b received from a over the tunnel."""
    server = b.popen(
        ["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf3-server"
    )
    try:
        assert wait_until(lambda: "listening" in server.read_log().lower(), 5)
        res = a.ns.run(["iperf3", "-c", b.tunnel_address, "-t", str(seconds), "-J"], timeout=60)
        received = json.loads(res.stdout)["end"]["sum_received"]
        assert received["bytes"] > 0
        return float(received["bits_per_second"]) / 1e6
    finally:
        server.stop()


@pytest.fixture
def mesh() -> Iterator[tuple[MeshScenario, Relay, Peer, Peer]]:
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        sc = MeshScenario(tb)
        try:
            yield sc, relay, a, b
        finally:
            for name, proc in [*sc.agents.items(), *((n, r.process) for n, r in sc.relays.items())]:
                print(f"--- {name} log ---\n{proc.log_tail(30)}")


def _up_within_10s(sc: MeshScenario, a: Peer, b: Peer) -> float:
    t0 = time.monotonic()
    sc.start_agent(a)
    sc.start_agent(b)
    assert wait_until(lambda: a.ping(b.tunnel_address, timeout=1.0), 10, interval=0.0), (
        sc.agent_log(a)[-3000:]
    )
    return time.monotonic() - t0


def test_udp_blocked_tunnel_over_tcp_then_back_to_udp(
    mesh: tuple[MeshScenario, Relay, Peer, Peer],
) -> None:
    sc, relay, a, b = mesh
    sc.start_relay(relay)  # TCP on its UDP port's number, by default
    a.block_udp()
    took = _up_within_10s(sc, a, b)
    print(f"tunnel over TCP: first ping {took:.1f} s after the agents started")
    assert wait_until(lambda: entry(sc, a).get("relay_mode") == "tcp", 10), entry(sc, a)
    assert (sc.status(a) or {}).get("udp_blocked") is True
    assert wait_until(lambda: entry(sc, b).get("path") == "relayed", 10), entry(sc, b)
    print(f"iperf3 over TCP: {iperf3(a, b):.1f} Mbit/s")

    a.block_udp(False)  # the network lets UDP through again
    t0 = time.monotonic()
    # the agent's next UDP try (5 s after falling back, doubling to 60 s) finds it
    assert wait_until(lambda: (sc.status(a) or {}).get("udp_blocked") is False, 70), sc.agent_log(
        a
    )[-3000:]
    assert wait_until(lambda: entry(sc, a).get("relay_mode") != "tcp", 10), entry(sc, a)
    print(f"back on UDP {time.monotonic() - t0:.1f} s after UDP was allowed again")
    assert wait_until(lambda: a.ping(b.tunnel_address, timeout=1.0), 10, interval=0.0)


def test_only_https_out_tunnel_over_tls(mesh: tuple[MeshScenario, Relay, Peer, Peer]) -> None:
    sc, relay, a, b = mesh
    sc.start_relay(relay, "--tls-self-signed")  # TLS on 443
    a.router.ns.nft(only_tcp_443_rules(a.router.LAN_IF))
    took = _up_within_10s(sc, a, b)
    print(f"tunnel over TLS: first ping {took:.1f} s after the agents started")
    assert wait_until(lambda: entry(sc, a).get("relay_mode") == "tls", 10), entry(sc, a)
    log = sc.agent_log(a)
    assert "trying TCP" in log  # TCP first (blocked here), then TLS
    assert "trying TLS" in log
    print(f"iperf3 over TLS: {iperf3(a, b):.1f} Mbit/s")
