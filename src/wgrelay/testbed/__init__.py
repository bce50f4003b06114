"""A reusable network-namespace testbed: simulated internet, NAT routers, WireGuard.

Used by the system tests and by ``wgrelay demo``. Importing it needs nothing
special; using it needs root, ``ip``, ``nft``, ``conntrack``, ``wg`` and
``wireguard-go``. All traffic stays inside namespaces it creates, on the
documentation range 203.0.113.0/24 and private 10.x networks.

Typical use::

    with Testbed() as tb:
        relay = tb.add_relay()
        a = tb.add_peer("a", nat="symmetric")
        b = tb.add_peer("b", nat="symmetric")
        b.router.open_port_forward(b.listen_port)
        a.add_wireguard_peer(b, endpoint=b.wan_endpoint)
        b.add_wireguard_peer(a)
        assert a.ping(b.tunnel_address)

Modules: ``netns`` (namespaces, commands, background processes), ``nat``
(nftables rule sets), ``wireguard`` (wireguard-go interfaces), ``topology`` (the
``Testbed`` builder), ``leftovers`` (owner records, cleanup after crashes).
"""

from __future__ import annotations

from wgrelay.testbed.errors import CommandFailed, CommandTimeout, TestbedError
from wgrelay.testbed.leftovers import DEFAULT_STATE_ROOT, cleanup_stale_testbeds
from wgrelay.testbed.nat import NatKind
from wgrelay.testbed.netns import (
    BackgroundProcess,
    Namespace,
    list_namespaces,
    run_command,
    wait_until,
)
from wgrelay.testbed.topology import Node, Peer, Relay, Router, Testbed
from wgrelay.testbed.wireguard import WgDump, WgPeerStatus, WireGuardInterface, wg_dump

__all__ = [
    "DEFAULT_STATE_ROOT",
    "BackgroundProcess",
    "CommandFailed",
    "CommandTimeout",
    "Namespace",
    "NatKind",
    "Node",
    "Peer",
    "Relay",
    "Router",
    "Testbed",
    "TestbedError",
    "WgDump",
    "WgPeerStatus",
    "WireGuardInterface",
    "cleanup_stale_testbeds",
    "list_namespaces",
    "run_command",
    "wait_until",
    "wg_dump",
]
