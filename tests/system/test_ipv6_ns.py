"""IPv6: a dual-stack relay serves an IPv6-only peer and an IPv4-only peer in
one session (issue 15, item 6).

Real wireguard-go, relays and agents as real processes, in namespaces
(wgrelay/testbed/ipv6.py adds the second family). Peer a reaches the internet
over IPv6 only (its IPv4 default route is gone), peer b over IPv4 only (it has
no IPv6 address). Peer a knows the relay only from its signed announcement,
IPv4 endpoint first, as an agent that learned it through discovery would: it
must pass the IPv4 endpoint over and register over IPv6.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from wgrelay.discovery.registry import RegistryStore, RelayRegistry
from wgrelay.keys import RelayIdentity, load_key_file, relay_seed
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.proto.constants import Capability
from wgrelay.state import ensure_state_dir
from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.ipv6 import add_peer_ipv6, add_relay_ipv6, drop_peer_ipv4
from wgrelay.testbed.scenario import RELAY_PORT, MeshScenario, RunningRelay, two_peers
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

SESSION_PORTS = (52000, 52999)  # start-relay's default --port-range
MIXED_REASON = "its sides are of two address families (IPv4 and IPv6)"


def seed_announcement(sc: MeshScenario, peer: Peer, running: RunningRelay, v6: str) -> None:
    """Put the relay, from its signed announcement (IPv4 endpoint first), in
    ``peer``'s relays.db, the way discovery would have left it."""
    identity = RelayIdentity.from_seed(relay_seed(load_key_file(running.state_dir / "relay.key")))
    assert identity.public == running.key
    endpoints = ((running.relay.address, RELAY_PORT), (v6, RELAY_PORT))
    info = RelayNodeInfo(identity.public, endpoints, capabilities=int(Capability.UDP_RELAY))
    raw = encode_announcement(info, int(time.time() * 1000) - 1000, 600, identity)
    reg = RelayRegistry()
    assert reg.register_relay(decode_announcement(raw))
    RegistryStore(ensure_state_dir(sc.agent_state_dir(peer)) / "relays.db").save(reg)


def peer_entry(sc: MeshScenario, peer: Peer) -> dict[str, Any]:
    doc = sc.status(peer) or {}
    peers = doc.get("peers")
    if not isinstance(peers, list) or not peers:
        return {}
    entry: dict[str, Any] = peers[0]
    return entry


@pytest.fixture
def mixed() -> Iterator[tuple[MeshScenario, Relay, Peer, Peer, str]]:
    """The topology; each test starts the relay its way."""
    with Testbed() as tb:
        [relay], a, b = two_peers(tb, "symmetric")
        relay_v6 = add_relay_ipv6(tb, relay)
        add_peer_ipv6(tb, a)
        drop_peer_ipv4(a)
        sc = MeshScenario(tb)
        try:
            yield sc, relay, a, b, relay_v6
        finally:
            for name, proc in [*sc.agents.items(), *((n, r.process) for n, r in sc.relays.items())]:
                print(f"--- {name} log ---\n{proc.log_tail(40)}")


def test_ipv6_only_and_ipv4_only_peers_through_one_dual_stack_relay(
    mixed: tuple[MeshScenario, Relay, Peer, Peer, str],
) -> None:
    sc, relay, a, b, relay_v6 = mixed
    running = sc.start_relay(relay, "--announce", f"[{relay_v6}]:{RELAY_PORT}")
    relay_v4 = running.relay.address
    # the picture: a has IPv6 only, b IPv4 only
    assert a.ping(relay_v6)
    assert not a.ping(relay_v4, timeout=1.0)
    assert b.ping(relay_v4)
    assert not b.ping(relay_v6, timeout=1.0)

    seed_announcement(sc, a, running, relay_v6)
    sc.start_agent(a, relays=[])  # only the announcement: IPv4 first
    sc.start_agent(b)  # bootstrap relay at its IPv4 endpoint
    for p in (a, b):
        assert sc.agents[p.name].wait_for_log(" up; home relay", 30), sc.agent_log(p)
    # a passed the unroutable IPv4 endpoint over: home at once at the IPv6 one
    log_a = sc.agent_log(a)
    assert f"home relay {running.key.short()} at [{relay_v6}]:{RELAY_PORT}" in log_a
    assert "no answer" not in log_a

    assert sc.wait_ping(a, b, 30) is not None, (sc.agent_log(a), sc.agent_log(b))
    assert sc.wait_ping(b, a, 10) is not None
    # relayed (no direct path across families) through the one relay
    assert wait_until(
        lambda: peer_entry(sc, a).get("path") == peer_entry(sc, b).get("path") == "relayed", 15
    ), (peer_entry(sc, a), peer_entry(sc, b))
    ea, eb = peer_entry(sc, a), peer_entry(sc, b)
    assert ea["relay"] == eb["relay"] == str(running.key)
    assert ea["relay_endpoint"] == f"[{relay_v6}]:{RELAY_PORT}"
    assert eb["relay_endpoint"] == f"{relay_v4}:{RELAY_PORT}"

    # MTU advice where it applies: wireguard-go's 1420 does not fit a relayed
    # IPv6 path (1510 bytes), it fits a relayed IPv4 one (1490)
    assert "relayed packets are 1510 bytes over IPv6" in log_a
    assert "set the MTU to" not in sc.agent_log(b)


def test_kernel_offload_leaves_a_mixed_family_session_to_userspace(
    mixed: tuple[MeshScenario, Relay, Peer, Peer, str],
) -> None:
    """nftables rewrites addresses within one family: an IPv6 side and an IPv4
    side cannot share an offloaded path. The relay says so and forwards the
    session's port traffic itself; the tunnel keeps working."""
    sc, relay, a, b, relay_v6 = mixed
    relay.ns.sysctl("net.ipv4.ip_forward", "1")  # the test's own namespace
    relay.ns.sysctl("net.ipv6.conf.all.forwarding", "1")
    announce6 = f"[{relay_v6}]:{RELAY_PORT}"
    sc.start_relay(relay, "--announce", announce6, "--kernel-offload", "on")
    relay_log = sc.relays["r1"].process
    assert "kernel offload: nftables table inet wgrelay" in relay_log.read_log()
    sc.start_agent(a, "--relay", f"{announce6}={sc.relays['r1'].key}", relays=[])
    sc.start_agent(b)
    assert sc.wait_ping(a, b, 30) is not None, (sc.agent_log(a), sc.agent_log(b))

    def on_session_port(me: Peer, other: Peer, host: str) -> bool:
        a.ping(b.tunnel_address, timeout=0.5)  # traffic makes both sides latch
        ep = sc.wg_peer(me, other).endpoint
        return ep is not None and ep[0] == host and SESSION_PORTS[0] <= ep[1] <= SESSION_PORTS[1]

    assert wait_until(lambda: on_session_port(a, b, relay_v6), 20), sc.agent_log(a)
    assert wait_until(lambda: on_session_port(b, a, relay.address), 20), sc.agent_log(b)
    assert wait_until(lambda: MIXED_REASON in relay_log.read_log(), 20), relay_log.log_tail()
    table = relay.ns.run(["nft", "-j", "list", "table", "inet", "wgrelay"]).stdout
    assert '"elem"' not in table  # no path installed
    assert sc.wait_ping(a, b, 10) is not None
    assert sc.wait_ping(b, a, 10) is not None
    assert "Traceback" not in relay_log.read_log()
