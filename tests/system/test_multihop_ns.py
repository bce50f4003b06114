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

import pytest

from tests.system.test_metrics_ns import scrape
from wgrelay.testbed import Testbed, wait_until
from wgrelay.testbed.multihop import start_two_relays
from wgrelay.testbed.scenario import RunningRelay
from wgrelay.testbed.topology import Peer, Relay

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

METRICS = "127.0.0.1:9821"


def _metric(relay: Relay, name: str, role: str, label: str = "role") -> float:
    text = scrape(relay, METRICS)
    m = re.search(rf'^{name}{{{label}="{role}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def test_tunnel_comes_up_over_two_relays_each_reachable_from_one_side() -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed")
    with Testbed() as tb:
        # both relays forward in the kernel: the leg runs port to port, so
        # the whole multi-hop session can leave userspace at each relay
        net = start_two_relays(tb, "--metrics", METRICS, "--kernel-offload", "on", kernel=True)
        sc, r1, r2, a, b = net.sc, net.r1, net.r2, net.a, net.b
        first, second = net.first, net.second
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
