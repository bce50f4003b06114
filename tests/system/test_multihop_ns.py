"""Multi-hop with real WireGuard behind real NAT (issue 14's acceptance).

Peer a's router forwards nothing but to and from relay 1, peer b's nothing
but to and from relay 2 (UDP and TCP alike: no stream fallback to the other
relay); relay 2 joins the federation through relay 1 (``--bootstrap``); each
agent knows only its own relay. The tunnel must come up by itself over both
relays (A-R1-R2-B), carry ping and a short iperf3, and both relays' metrics
must show the leg.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.system.test_failover_ns import _add_bootstrap
from tests.system.test_metrics_ns import scrape
from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.nat import BLOCK_CHAIN, NAT_TABLE
from wgrelay.testbed.scenario import MeshScenario, RunningRelay, two_peers
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

METRICS = "127.0.0.1:9821"


def _only_to(peer: Peer, relay: Relay) -> None:
    """The router forwards nothing but to and from ``relay`` (both ways:
    the block chain runs before the router's "established" accept)."""
    peer.router.ns.nft(
        f"flush chain ip {NAT_TABLE} {BLOCK_CHAIN}\n"
        f"add rule ip {NAT_TABLE} {BLOCK_CHAIN} ip daddr != {relay.address} "
        f"ip saddr != {relay.address} drop\n"
    )
    peer.router.flush_conntrack()


def _metric(relay: Relay, name: str, role: str, label: str = "role") -> float:
    text = scrape(relay, METRICS)
    m = re.search(rf'^{name}{{{label}="{role}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def _relay_key(sc: MeshScenario, relay: Relay) -> str:
    """Make the relay's key where start_relay will find it; its public key."""
    state = sc.tb.work_dir / f"relay-{relay.name}"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = subprocess.run(
        [sc.python, "-m", "wgrelay", "keygen", "--relay", "--out", str(state / "relay.key")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def test_tunnel_comes_up_over_two_relays_each_reachable_from_one_side() -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed")
    with Testbed() as tb:
        [r1, r2], a, b = two_peers(tb, "symmetric", relays=("r1", "r2"))
        _only_to(a, r1)
        _only_to(b, r2)
        sc = MeshScenario(tb)
        # both relays forward in the kernel: the leg runs port to port, so
        # the whole multi-hop session can leave userspace at each relay
        for r in (r1, r2):
            r.ns.sysctl("net.ipv4.ip_forward", "1")
        metrics = ("--metrics", METRICS, "--kernel-offload", "on")
        # the operators list each other's relay for legs (--leg-relay): keys first
        keys = {r.name: _relay_key(sc, r) for r in (r1, r2)}
        first = sc.start_relay(r1, "--leg-relay", keys["r2"], *metrics)
        sc.start_relay(
            r2,
            "--bootstrap",
            f"{first.endpoint}={first.key}",
            "--leg-relay",
            keys["r1"],
            *metrics,
        )
        second = sc.relays["r2"]
        _add_bootstrap(sc, a, "r1")
        _add_bootstrap(sc, b, "r2")
        for p in (a, b):
            sc.start_agent(p, relays=[])  # nothing on the command line
        try:
            took = sc.wait_ping(a, b, timeout=45.0)
            assert took is not None, sc.agent_log(a)[-3000:] + sc.agent_log(b)[-3000:]
            print(f"tunnel up over two relays: first ping answered after {took:.1f} s")

            # each carried by its own relay (the status file follows within a second)
            def carried(p: Peer, relay: RunningRelay) -> bool:
                st = sc.status(p)
                return st is not None and st["peers"][0]["relay"] == str(relay.key)  # type: ignore[index]

            assert wait_until(lambda: carried(a, first) and carried(b, second), 10), (
                sc.status(a),
                sc.status(b),
            )
            server = b.popen(
                ["iperf3", "-s", "-1", "--forceflush", "-B", b.tunnel_address], name="iperf-s"
            )
            assert server.wait_for_log("listening", 5)
            client = a.ns.run(
                ["iperf3", "-c", b.tunnel_address, "-t", "3", "-J"], timeout=30, check=False
            )
            assert client.returncode == 0, client.stdout[-2000:] + client.stderr[-2000:]
            bps = json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"]
            print(f"iperf3 over A-R1-R2-B: {bps / 1e6:.1f} Mbit/s")
            assert bps > 1e6
            # one leg, the entry at one relay and the exit at the other
            roles = {
                name: {role: _metric(r, "wgrelay_legs", role) for role in ("entry", "exit")}
                for name, r in (("r1", r1), ("r2", r2))
            }
            assert sorted(sum(v.values()) for v in roles.values()) == [1.0, 1.0], roles
            assert roles["r1"]["entry"] == roles["r2"]["exit"], roles
            for r in (r1, r2):
                moved = max(_metric(r, "wgrelay_leg_bytes_total", x) for x in ("entry", "exit"))
                assert moved > 1_000_000, (r.name, moved)
                # the session's path is in the kernel at both relays
                assert _metric(r, "wgrelay_port_sessions", "in_kernel", "state") == 1.0, r.name
        finally:
            for name, proc in sc.agents.items():
                if proc.running():
                    print(f"--- agent {name} log ---\n{proc.log_tail(40)}")
