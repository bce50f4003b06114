"""The multi-hop picture on the namespace testbed: each peer reaches one relay.

Peer a's router forwards nothing but to and from relay r1, b's nothing but to
and from r2 (UDP and TCP alike, so no stream fallback reaches the other
relay); r2 joins the federation through r1 (``--bootstrap``); the operators
list each other's relay for legs (``--leg-relay``); each agent knows only its
own relay, from its state directory. Used by tests/system/test_multihop_ns.py
and bench/multihop_iperf.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from wgrelay.testbed.errors import TestbedError
from wgrelay.testbed.nat import BLOCK_CHAIN, NAT_TABLE
from wgrelay.testbed.scenario import MeshScenario, RunningRelay, two_peers
from wgrelay.testbed.topology import Peer, Relay, Testbed


def only_to(peer: Peer, relay: Relay) -> None:
    """``peer``'s router forwards nothing but to and from ``relay`` (both
    ways: the block chain runs before the router's "established" accept)."""
    peer.router.ns.nft(
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} ip daddr != {relay.address} "
        f"ip saddr != {relay.address} drop\n"
    )
    peer.router.flush_conntrack()


def relay_key(sc: MeshScenario, relay: Relay) -> str:
    """Make the relay's key where ``start_relay`` will find it; its public key
    (an operator lists the other relay's key before either starts)."""
    state = sc.tb.work_dir / f"relay-{relay.name}"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = _wgrelay(sc, "keygen", "--relay", "--out", str(state / "relay.key"))
    return out.strip()


def add_bootstrap(sc: MeshScenario, peer: Peer, relay: str) -> None:
    """Give ``peer``'s agent ``relay`` as a bootstrap relay in its state directory."""
    r = sc.relays[relay]
    _wgrelay(sc, "add-bootstrap-relay", "--state-dir", str(sc.agent_state_dir(peer)),
             r.endpoint, str(r.key))  # fmt: skip


def _wgrelay(sc: MeshScenario, *args: str) -> str:
    res = subprocess.run(
        [sc.python, "-m", "wgrelay", *args], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise TestbedError(f"wgrelay {args[0]} failed: {res.stderr.strip()}")
    return res.stdout


@dataclass(frozen=True)
class TwoRelays:
    sc: MeshScenario
    r1: Relay
    r2: Relay
    a: Peer
    b: Peer
    first: RunningRelay
    second: RunningRelay


def start_two_relays(tb: Testbed, *relay_args: str, kernel: bool = False) -> TwoRelays:
    """Both relays running and listing each other for legs, a and b fenced in,
    each agent given only its own relay (the agents are not started).
    ``kernel``: forwarding on in both relays' namespaces, for ``--kernel-offload``."""
    [r1, r2], a, b = two_peers(tb, "symmetric", relays=("r1", "r2"))
    only_to(a, r1)
    only_to(b, r2)
    if kernel:
        for r in (r1, r2):
            r.ns.sysctl("net.ipv4.ip_forward", "1")
    sc = MeshScenario(tb)
    keys = {r.name: relay_key(sc, r) for r in (r1, r2)}
    first = sc.start_relay(r1, "--leg-relay", keys["r2"], *relay_args)
    second = sc.start_relay(
        r2, "--bootstrap", f"{first.endpoint}={first.key}", "--leg-relay", keys["r1"], *relay_args
    )
    add_bootstrap(sc, a, "r1")
    add_bootstrap(sc, b, "r2")
    return TwoRelays(sc, r1, r2, a, b, first, second)
